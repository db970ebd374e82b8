"""Reports for new films: studies found on disk, the same reports and head verdicts as the library's
calls, the command line's outputs, its refusals, unreadable films and resuming after a kill."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.errors import DataError
from flamingo_lib.data.study_files import find_studies, load_study
from flamingo_lib.inference.study_reports import study_reports
from flamingo_lib.pipeline.run_records import model_directory
from flamingo_lib.cli.write_reports import main, partial_path
from data_fixtures import write_dicom

OBS = ["Pleural Effusion", "Cardiomegaly", "Lung Lesion"]


def save_png(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    xray_like(seed).save(path)
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny model with findings and reading heads, gates open, saved as a run's train/model."""
    config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS, reading_head=True)
    model = FlamingoModel(config).eval()
    open_gates(model)
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "train" / "model", processor=FlamingoProcessor(config))
    return run, model, FlamingoProcessor(config)


def test_a_folder_of_study_folders_is_a_study_per_folder_and_files_given_by_name_are_one_each(tmp_path):
    root = tmp_path / "files" / "p10" / "p10000032"
    save_png(root / "s1" / "b.png", 1), save_png(root / "s1" / "a.png", 2), save_png(root / "s2" / "c.jpg", 3)
    loose = save_png(tmp_path / "loose.png", 4)
    studies = find_studies([tmp_path / "files", loose])
    assert [s.id for s in studies] == [str(root / "s1"), str(root / "s2"), str(tmp_path / "loose")]
    assert [p.name for p in studies[0].paths] == ["a.png", "b.png"]  # name order without view headers
    singles = find_studies([tmp_path / "files"], one_per_image=True)
    assert [len(s.paths) for s in singles] == [1, 1, 1]
    sample = load_study(studies[0], image_size=64)
    assert len(sample.images) == 2 and max(sample.images[0].size) == 64 and sample.report == ""


def test_frontal_views_come_first_when_the_dicom_header_names_them(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 4000, (40, 32))
    (tmp_path / "study").mkdir()
    write_dicom(tmp_path / "study" / "a.dcm", pixels, ViewPosition="LATERAL")
    write_dicom(tmp_path / "study" / "b.dcm", pixels, ViewPosition="PA")
    (study,) = find_studies([tmp_path / "study"])
    assert [p.name for p in study.paths] == ["b.dcm", "a.dcm"] and study.views == ("PA", "LATERAL")
    assert load_study(study).images[0].mode == "L"
    singles = find_studies([tmp_path / "study"], one_per_image=True)  # one film each: no header read
    assert [s.views for s in singles] == [("",), ("",)]


def test_bad_inputs_are_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    image = save_png(tmp_path / "films" / "a.png", 0)
    cases = [([tmp_path / "absent"], "missing_input"), ([tmp_path / "notes.txt"], "not_an_image"),
             ([tmp_path / "empty"], "no_images"), ([tmp_path / "films", image], "duplicate_image")]
    for inputs, reason in cases:
        with pytest.raises(DataError) as error:
            find_studies(inputs)
        assert error.value.reason == reason and str(inputs[-1]) in str(error.value)


def test_reports_and_head_verdicts_are_those_of_each_study_alone(saved_model, tmp_path):
    _, model, processor = saved_model
    save_png(tmp_path / "two" / "a.png", 5), save_png(tmp_path / "two" / "b.png", 6)
    save_png(tmp_path / "one" / "a.png", 7)
    studies = find_studies([tmp_path / "one", tmp_path / "two"])
    table = study_reports(model, processor, studies, max_new_tokens=8, batch_size=2, image_size=224, progress=False)
    assert list(table["study"]) == [s.id for s in studies]
    for study, row in zip(studies, table.itertuples()):
        images = load_study(study, 224).images
        assert row.report == model.generate_captions(processor, [images], max_length=8)[0]
        alone = model.predict_findings(pixel_values=processor([processor.study_prompt(len(images))], [images])["pixel_values"])
        for obs in OBS:  # the one-view study sits beside a two-view one in its batch: same verdict
            assert table.at[row.Index, f"p {obs}"] == pytest.approx(float(alone[obs][0]), abs=1e-4)
    assert {f"p stated {obs}" for obs in OBS} <= set(table.columns)


def test_the_command_writes_csv_or_jsonl_and_records_what_each_study_states(saved_model, tmp_path):
    run, model, processor = saved_model
    save_png(tmp_path / "films" / "x.png", 8), save_png(tmp_path / "films" / "y.png", 9)
    csv = main([str(run), str(tmp_path / "films"), "--one-per-image", "--out", str(tmp_path / "r.csv"),
                "--max-new-tokens", "6", "--no-progress", "--device", "cpu"])
    on_disk = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert list(on_disk["study"]) == [str(tmp_path / "films" / "x"), str(tmp_path / "films" / "y")]
    assert list(on_disk["report"]) == list(csv["report"])
    from flamingo_lib.labeling.labeler import label_report

    for row in on_disk.itertuples():
        assert row.stated == "; ".join(o for o, v in label_report(row.report).items() if v == 1.0)
    main([str(run / "train" / "model"), str(tmp_path / "films" / "x.png"), "--out", str(tmp_path / "r.jsonl"),
          "--max-new-tokens", "6", "--no-progress", "--device", "cpu"])
    (record,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert record["report"] == csv["report"][0] and 0 < record["p Cardiomegaly"] < 1
    # every row says what made it: this model's run recorded no training data
    assert set(on_disk["provenance"]) == {"research model, not for diagnosis: its training data are not recorded"}
    assert record["provenance"] == on_disk["provenance"][0]


def test_guided_decoding_takes_the_runs_recorded_threshold_and_matches_the_library(saved_model, tmp_path):
    run, model, processor = saved_model
    film = save_png(tmp_path / "films" / "x.png", 10)
    args = [str(run), str(film), "--out", str(tmp_path / "g.csv"), "--max-new-tokens", "6", "--no-progress",
            "--device", "cpu", "--candidates", "3"]
    with pytest.raises(SystemExit):  # no run record and no --threshold: refused before any work
        main(args + ["--guided"])
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "guided_decoding.json").write_text(json.dumps({"threshold": 0.3, "candidates": 3,
                                                                   "temperature": 0.7, "top_p": 1.0}))
    try:
        table = main(args + ["--guided"])
    finally:
        (run / "eval" / "guided_decoding.json").unlink()
    from flamingo_lib.data.study_files import find_studies as studies_of
    from flamingo_lib.inference.guided_decoding import choose, sample_candidates

    samples = [load_study(s, 224) for s in studies_of([film])]
    drawn = sample_candidates(model, processor, samples, 3, max_new_tokens=6, seed=0, progress=False, temperature=0.7)
    assert table["report"].tolist() == choose(drawn, 0.3)


def test_the_command_refuses_what_it_cannot_do_before_working(saved_model, tmp_path, capsys):
    run, _, _ = saved_model
    film = save_png(tmp_path / "x.png", 11)
    plain = tmp_path / "plain"
    config = FlamingoConfig.from_preset("tiny-random")
    FlamingoModel(config).save_pretrained(plain, processor=FlamingoProcessor(config))
    cases = [([str(run), str(film), "--out", str(tmp_path / "r.xlsx")], "write reports to a .csv or .jsonl"),
             ([str(tmp_path), str(film), "--out", str(tmp_path / "r.csv")], "no saved model in"),
             ([str(run), str(tmp_path / "nope.png"), "--out", str(tmp_path / "r.csv")], "no such file"),
             ([str(plain), str(film), "--out", str(tmp_path / "r.csv"), "--threshold", "0.3"], "needs a model with a findings head")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
    with pytest.raises(FileNotFoundError, match="train/model"):
        model_directory(tmp_path)


def test_an_unreadable_film_stops_the_run_or_is_skipped_with_its_reason(saved_model, tmp_path, capsys):
    run, _, _ = saved_model
    save_png(tmp_path / "films" / "a.png", 12)
    (tmp_path / "films" / "b.png").write_bytes(b"not a png at all")
    args = [str(run), str(tmp_path / "films"), "--one-per-image", "--out", str(tmp_path / "r.csv"),
            "--max-new-tokens", "4", "--no-progress", "--device", "cpu"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and "b.png" in capsys.readouterr().err and not (tmp_path / "r.csv").exists()
    table = main(args + ["--on-error", "skip"])
    assert table["report"].str.len().tolist()[0] > 0 and table["report"][1] == ""
    assert "b.png" in table["error"][1] and "cannot decode" in table["error"][1] and table["error"][0] == ""
    assert not partial_path(tmp_path / "r.csv").exists()  # finished: only the table is left


def test_a_killed_run_resumes_after_its_last_whole_chunk_to_the_uninterrupted_table(saved_model, tmp_path,
                                                                                  monkeypatch, capsys):
    import flamingo_lib.cli.write_reports as command
    from flamingo_lib.inference.study_reports import CHUNK_STUDIES, report_chunks

    run, _, _ = saved_model
    for i in range(CHUNK_STUDIES + 3):  # two chunks
        save_png(tmp_path / "films" / f"{i:02d}.png", 100 + i)
    args = [str(run), str(tmp_path / "films"), "--one-per-image", "--max-new-tokens", "4", "--no-progress",
            "--device", "cpu", "--guided", "--threshold", "0.3", "--candidates", "2"]
    whole = main(args + ["--out", str(tmp_path / "whole.csv")])
    out = tmp_path / "killed.csv"
    started = []

    def killed_after_one_chunk(*a, first_chunk=0, **k):
        started.append(first_chunk)
        for rows in report_chunks(*a, first_chunk=first_chunk, **k):
            yield rows
            raise KeyboardInterrupt  # the kill, once the first chunk is saved

    monkeypatch.setattr(command, "report_chunks", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--out", str(out)])
    partial = partial_path(out)
    assert len(partial.read_text().splitlines()) == 1 + CHUNK_STUDIES and not out.exists()
    with partial.open("a") as handle:
        handle.write('{"chunk": 1, "study": "torn')  # killed while appending the second chunk
    with pytest.raises(SystemExit):  # other settings: refused, naming them
        main(args + ["--out", str(out), "--seed", "1"])
    assert "seed differ" in capsys.readouterr().err
    started_again = []
    monkeypatch.setattr(command, "report_chunks", lambda *a, first_chunk=0, **k: started_again.append(first_chunk)
                        or report_chunks(*a, first_chunk=first_chunk, **k))
    resumed = main(args + ["--out", str(out)])
    assert started == [0] and started_again == [1]  # the first chunk was not decoded again
    pd.testing.assert_frame_equal(resumed, whole)
    pd.testing.assert_frame_equal(pd.read_csv(out, keep_default_na=False), pd.read_csv(tmp_path / "whole.csv",
                                                                                       keep_default_na=False))
    assert not partial.exists()


def test_the_page_shows_each_studys_film_report_and_verdict_and_warns_of_private_films(saved_model, tmp_path):
    run, _, _ = saved_model
    save_png(tmp_path / "films" / "x.png", 13), save_png(tmp_path / "films" / "y.png", 14)
    (tmp_path / "films" / "z.png").write_bytes(b"broken")
    args = [str(run), str(tmp_path / "films"), "--one-per-image", "--out", str(tmp_path / "r.csv"),
            "--max-new-tokens", "6", "--no-progress", "--device", "cpu", "--on-error", "skip",
            "--html", str(tmp_path / "page.html"), "--html-studies", "2"]
    with pytest.warns(UserWarning, match="private"):
        table = main(args)
    page = (tmp_path / "page.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "2 of 3 studies shown" in page
    assert "do not share it" in page and "Greedy decoding" in page and "research model, not for diagnosis" in page
    import html as html_module

    assert html_module.escape(table["report"][0]) in page and "Findings head" in page
    table = main(args[:-1] + ["3", "--films-shareable"])  # the broken film's reason is shown; no warning
    page = (tmp_path / "page.html").read_text()
    assert "do not share it" not in page and "cannot decode" in page


def test_the_page_marks_the_peak_the_pointing_game_scores_on_each_studys_film(saved_model, tmp_path, monkeypatch):
    from flamingo_lib.evaluation.grounding import peak_pixel
    from flamingo_lib.reporting import html as html_figures
    from flamingo_lib.reporting.study_page import report_map

    run, model, processor = saved_model
    save_png(tmp_path / "films" / "x.png", 13)
    drawn = []
    figure = html_figures.case_figure
    monkeypatch.setattr(html_figures, "case_figure", lambda *a, **k: drawn.append(k.get("peak")) or figure(*a, **k))
    table = main([str(run), str(tmp_path / "films"), "--one-per-image", "--out", str(tmp_path / "r.csv"),
                  "--max-new-tokens", "6", "--no-progress", "--device", "cpu", "--films-shareable",
                  "--html", str(tmp_path / "page.html")])
    words, _ = report_map(model, processor, [xray_like(13)], str(table["report"][0]))
    assert drawn == [words.peak]
    words, title = report_map(model, processor, [xray_like(13)], "Moderate cardiomegaly. No effusion.")
    assert words.heatmap.shape == xray_like(13).size[::-1] and abs(words.heatmap.sum() - 1) < 1e-4
    assert "naming findings" in title
    # the mark is the pixel game's point: the grid map's peak sharpened by the words' pixel gradient,
    # placed finer than the 16-px cell the upsampled grid map alone could
    assert words.peak == peak_pixel(words.sharpened) and not np.allclose(words.sharpened, words.heatmap)


def test_the_guided_setup_is_the_runs_record_with_given_values_in_their_place(saved_model):
    from flamingo_lib.pipeline.settings import EvalSettings
    from flamingo_lib.pipeline.run_records import guided_setup

    run, _, _ = saved_model
    model_dir = run / "train" / "model"
    assert guided_setup(model_dir) is None  # nothing recorded, nothing given
    assert guided_setup(model_dir, threshold=0.4) == {
        "threshold": 0.4, "candidates": EvalSettings.guided_candidates,
        "temperature": EvalSettings.guided_temperature, "top_p": 1.0, "threshold_from": "given on the command line"}
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "guided_decoding.json").write_text(json.dumps({"threshold": 0.3, "candidates": 8,
                                                                   "temperature": 0.9, "top_p": 0.95}))
    try:
        assert guided_setup(model_dir) == {"threshold": 0.3, "candidates": 8, "temperature": 0.9, "top_p": 0.95}
        assert guided_setup(model_dir, candidates=2)["candidates"] == 2
    finally:
        (run / "eval" / "guided_decoding.json").unlink()


def test_a_run_folders_mistyped_records_are_refused_naming_the_file_and_field(saved_model, tmp_path, capsys):
    run, _, _ = saved_model
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy)
    save_png(tmp_path / "films" / "x.png", 3)
    args = [str(copy), str(tmp_path / "films"), "--out", str(tmp_path / "r.csv"), "--no-progress", "--device", "cpu"]
    (copy / "eval").mkdir(exist_ok=True)
    (copy / "eval" / "guided_decoding.json").write_text(json.dumps({"threshold": "0.3"}))  # a string, not a number
    with pytest.raises(SystemExit):
        main([*args, "--guided"])
    assert "guided_decoding.json: threshold must be a number in [0, 1], got '0.3'" in capsys.readouterr().err
    (copy / "eval" / "guided_decoding.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main([*args, "--guided"])
    assert "guided_decoding.json: not readable JSON" in capsys.readouterr().err
    (copy / "train" / "summary.json").write_text(json.dumps({"config": {"extra": {"data": "phantom",
                                                                                  "image_size": True}}}))
    with pytest.raises(SystemExit):
        main(args)
    assert "summary.json: image_size must be an integer >= 1, got True" in capsys.readouterr().err
    (copy / "train" / "summary.json").write_text(json.dumps({"config": {"extra": {"data": "phantom",
                                                                                  "feature_storage": "int4"}}}))
    with pytest.raises(SystemExit):
        main(args)
    assert "summary.json: feature_storage must be a feature storage float16 or int8, got 'int4'" in \
        capsys.readouterr().err


def test_the_indication_and_the_prior_study_reach_the_prompt_of_a_model_trained_to_read_them(
        saved_model, tmp_path, capsys, monkeypatch):
    _, model, _ = saved_model
    context_run = tmp_path / "context"
    model.save_pretrained(context_run, processor=FlamingoProcessor(model.config, context="indication,prior"))
    film, prior_film = save_png(tmp_path / "now" / "x.png", 12), save_png(tmp_path / "before" / "p.png", 13)
    (tmp_path / "before" / "report.txt").write_text("Small left pleural effusion.\n")
    from flamingo_lib.inference import batched

    asked = []
    real = batched.generate_in_batches
    monkeypatch.setattr("flamingo_lib.inference.study_reports.generate_in_batches",
                        lambda m, p, samples, **kw: asked.append([p.study_inputs(s) for s in samples]) or
                        real(m, p, samples, **kw))
    base = [str(context_run), str(film), "--max-new-tokens", "4", "--no-progress", "--device", "cpu"]
    main(base + ["--out", str(tmp_path / "a.csv"), "--indication", "Shortness of breath.", "--prior",
                 str(tmp_path / "before")])
    (inputs,) = asked[-1]
    assert inputs.prompt == ("Indication: Shortness of breath.\n<image>Prior: Small left pleural effusion.<EOC>"
                             "<image>Findings:")
    assert len(inputs.images) == 2 and inputs.own_images == 1
    main(base + ["--out", str(tmp_path / "b.csv")])  # none given: a first study, said so
    assert asked[-1][0].prompt == "Indication: none.\nPrior: none.<EOC><image>Findings:"
    assert "read as a patient's first" in capsys.readouterr().out
    # context the model does not read, or a prior without the report it reads, is refused before any work
    plain_run = saved_model[0]
    cases = [([str(plain_run), str(film), "--indication", "Cough."], "trained without the indication"),
             ([str(plain_run), str(film), "--prior", str(tmp_path / "before")], "trained without the prior study"),
             ([str(context_run), str(film), "--prior", str(tmp_path / "now")], "reads the prior study's report"),
             ([str(context_run), str(film), "--prior-report", "Normal."], "reads the prior study's films too")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv + ["--out", str(tmp_path / "c.csv"), "--no-progress", "--device", "cpu"])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()
