"""The workbench pipeline: idempotent steps, retraining on changed settings, report and sharing rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data_fixtures import build_mimic
from pipeline_runs import SMALL
from flamingo_lib.pipeline.steps import Pipeline
from flamingo_lib.reporting.html import write_html_report
from flamingo_lib.reporting.run_page import build_run_report, headline
from flamingo_lib.cli.write_reports import main as write_reports_main
from flamingo_lib.inference.guided_decoding import SYSTEM_NAME



def protocol_text(tmp_path) -> str:
    return (tmp_path / "run" / "eval" / "PROTOCOL.md").read_text()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small run taken through every step once (report included); tests that change it copy it."""
    run = tmp_path_factory.mktemp("pipeline") / "run"
    pipeline = Pipeline(run_dir=str(run), **SMALL)
    build_run_report(pipeline)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def test_the_report_holds_every_section_and_the_headline_every_measure(trained_run):
    pipeline = Pipeline(run_dir=str(trained_run), **SMALL)
    text = (trained_run / "report.html").read_text()
    assert text.startswith("<!doctype html>") and "Metrics (test split) against baselines" in text
    assert "data:image/png;base64," in text and "nearest neighbour" in text
    assert "Which findings does the text follow?" in text and "Findings-guided:" in text  # in the cases too
    # the grounding section: the sentence's sharpened map, its cell game and its game within 15 px
    assert "evidence for the sentence naming a finding" in text and "Within 15 px of the mask" in text
    line = headline(pipeline)
    assert "pointing game" in line and "findings the text follows" in line and "findings-guided" in line


def test_the_trained_model_carries_a_reference_of_its_training_films(trained_run, tmp_path):
    from flamingo_lib.inference.film_reference import REFERENCE_FILE, reference_for

    pipeline = Pipeline(run_dir=str(trained_run), **SMALL)
    model, processor = pipeline.model_and_processor
    reference = reference_for(model, processor, trained_run / "train" / "model")
    assert len(reference.embeddings) == SMALL["max_train_samples"] and reference.validation_films == 4
    run = _copy(trained_run, tmp_path)  # a run trained before references were kept gets one, not retraining
    (run / "train" / "model" / REFERENCE_FILE).unlink()
    weights = _mtime(run / "train" / "model" / "model.safetensors")
    Pipeline(run_dir=str(run), **SMALL).train()
    assert torch.equal(reference_for(model, processor, run / "train" / "model").embeddings, reference.embeddings)
    assert _mtime(run / "train" / "model" / "model.safetensors") == weights


def test_guided_decoding_is_a_system_tuned_on_its_own_val_studies(trained_run):
    pipeline = Pipeline(run_dir=str(trained_run), **SMALL)
    assert SYSTEM_NAME in pipeline.evaluate().index  # the default run has a findings head
    protocol = (trained_run / "eval" / "PROTOCOL.md").read_text()
    assert "picked on the val split (5 studies" in protocol  # guided_val_samples, not max_val_samples
    setup = json.loads((trained_run / "eval" / "guided_decoding.json").read_text())
    assert f"threshold {setup['threshold']} picked" in protocol
    assert setup["candidates"] == pipeline.settings.eval.guided_candidates
    # with a reading head, the guided score weighs what the report would say too
    assert pipeline.model_and_processor[0].config.reading_head and "the reading head's probabilities" in protocol


def test_reports_for_the_test_films_on_disk_are_the_evaluations_own(trained_run, tmp_path):
    pipeline = Pipeline(run_dir=str(trained_run), **SMALL)
    films = tmp_path / "films"
    films.mkdir()
    for i, sample in enumerate(pipeline.splits["test"]):
        sample.images[0].save(films / f"{i:03d}.png")
    generations = pipeline.generations()
    common = [str(trained_run), str(films), "--one-per-image", "--max-new-tokens", "6", "--no-progress"]
    greedy = write_reports_main(common + ["--out", str(tmp_path / "greedy.csv"), "--batch-size", "8"])
    assert greedy["report"].tolist() == generations["flamingo"].tolist()
    assert set(greedy["provenance"]) == {"research model, not for diagnosis: trained on synthetic phantom films only "
                                         "(phantom:templated), never on a patient's film"}
    guided = write_reports_main(common + ["--out", str(tmp_path / "guided.csv"), "--guided"])
    assert guided["report"].tolist() == generations[SYSTEM_NAME].tolist()


def test_finding_usage_is_scored_against_the_image_truth_beside_both_heads(trained_run):
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS

    pipeline = Pipeline(run_dir=str(trained_run), **SMALL)
    usage = pipeline.finding_usage()
    assert list(usage.index) == list(RENDERED_OBSERVATIONS)
    assert "classifier AUROC" in usage  # the findings head: what the latents carry
    assert "reading head AUROC (vs reference)" in usage  # the reading head: what a report would state
    assert usage["positives"].tolist() == [sum(s.labels.get(o) == 1.0 for s in pipeline.splits["test"])
                                           for o in RENDERED_OBSERVATIONS]


def test_the_next_notebook_reuses_the_model_and_every_result(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    results, usage, grounding = run / "eval" / "results.csv", run / "eval" / "finding_usage.csv", run / "grounding.csv"
    model = run / "train" / "model" / "model.safetensors"
    before = {p: _mtime(p) for p in (results, usage, grounding, model)}
    again = Pipeline(run_dir=str(run), **SMALL)
    assert again.train()["steps"] == 4
    again.evaluate()
    again.grounding()
    again.finding_usage()
    assert {p: _mtime(p) for p in before} == before  # reused, not recomputed


def test_an_evaluation_setting_recomputes_its_own_results_only(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    results, usage, grounding = run / "eval" / "results.csv", run / "eval" / "finding_usage.csv", run / "grounding.csv"
    model = run / "train" / "model" / "model.safetensors"
    trained, grounded = _mtime(model), _mtime(grounding)
    unguided = Pipeline(run_dir=str(run), **{**SMALL, "guided_candidates": 0})
    results_before = _mtime(results)
    assert SYSTEM_NAME not in unguided.evaluate().index and _mtime(results) != results_before
    results_before, usage_before = _mtime(results), _mtime(usage)
    Pipeline(run_dir=str(run), **{**SMALL, "guided_candidates": 0, "usage_samples": 3}).finding_usage()
    assert _mtime(usage) != usage_before and _mtime(results) == results_before
    retuned = Pipeline(run_dir=str(run), **{**SMALL, "guided_val_samples": 3})
    assert SYSTEM_NAME in retuned.evaluate().index  # another tuning set rescores, without retraining
    assert "picked on the val split (3 studies" in (run / "eval" / "PROTOCOL.md").read_text()
    assert (_mtime(model), _mtime(grounding)) == (trained, grounded)


def test_radeval_metrics_rescore_the_results_and_reach_the_report(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("radeval")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no weights: bertscore is listed, not scored
    run = _copy(trained_run, tmp_path)
    results = run / "eval" / "results.csv"
    before = _mtime(results)
    Pipeline(run_dir=str(run), **SMALL).evaluate()
    assert _mtime(results) == before  # asking for no RadEval metric keeps the table
    with pytest.warns(UserWarning, match="not computed: weights for bertscore"):
        table = Pipeline(run_dir=str(run), **{**SMALL, "metrics": ["rouge", "bertscore"]}).evaluate()
    assert {"RadEval rouge1", "RadEval rougeL"} <= set(table.columns) and _mtime(results) != before
    page = build_run_report(Pipeline(run_dir=str(run), **{**SMALL, "metrics": ["rouge", "bertscore"]})).read_text()
    assert "RadEval rougeL" in page and "Not computed: bertscore: weights for bertscore" in page
    with pytest.raises(ValueError, match="unknown metric"):
        Pipeline(run_dir=str(run), **{**SMALL, "metrics": ["cider"]})


def test_the_uncertainty_step_is_the_evaluations_own_and_reaches_the_headline_and_report(trained_run, tmp_path):
    import pandas as pd

    from flamingo_lib.evaluation.evaluate import evaluate

    run = _copy(trained_run, tmp_path)
    pipeline = Pipeline(run_dir=str(run), **SMALL)
    rows = pipeline.uncertainty()
    stamp = _mtime(run / "eval" / "uncertainty.csv")
    assert Pipeline(run_dir=str(run), **SMALL).uncertainty().equals(rows)  # reused, not recomputed
    assert _mtime(run / "eval" / "uncertainty.csv") == stamp
    # computed from the saved reports, it is what evaluate computes beside its own decoding
    model, processor = pipeline.model_and_processor
    generations = pipeline.generations()
    direct = evaluate(model, processor, pipeline.splits["train"], pipeline.splits["test"], max_new_tokens=6,
                      progress=False, labels_are_image_truth=True, n_resamples=100, n_permutations=200,
                      extra_systems={c: generations[c].tolist() for c in generations.columns
                                     if c not in ("id", "reference", "flamingo", "most frequent report",
                                                  "nearest neighbour", "LM without image")}).attrs["uncertainty"]
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), direct.reset_index(drop=True), check_exact=False)
    assert "CE micro-F1 (rendered findings, vs image truth): flamingo" in headline(pipeline)
    flamingo_ce = rows[(rows["system"] == "flamingo") & (rows["metric"] == "CE micro-F1 (14, vs reference)")].iloc[0]
    assert f"[{flamingo_ce.low:.3f}, {flamingo_ce.high:.3f}]" in headline(pipeline)
    assert "95% bootstrap intervals over test studies" in build_run_report(pipeline).read_text()


def test_an_impossible_evaluation_setting_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="guided_val_samples must be >= 1"):
        Pipeline(run_dir=str(tmp_path / "run"), **{**SMALL, "guided_val_samples": 0})
    assert not (tmp_path / "run").exists()


def test_a_changed_training_setting_retrains_and_no_old_result_is_served(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    results, grounding = run / "eval" / "results.csv", run / "grounding.csv"
    before = (_mtime(results), _mtime(grounding))
    changed = Pipeline(run_dir=str(run), **{**SMALL, "max_steps": 5})
    assert changed.train()["steps"] == 5
    changed.evaluate()
    changed.grounding()
    assert _mtime(results) != before[0] and _mtime(grounding) != before[1]


def test_report_from_credentialed_data_needs_an_explicit_opt_in(tmp_path):
    root = build_mimic(tmp_path / "mimic")
    pipeline = Pipeline(run_dir=str(tmp_path / "run"), **{**SMALL, "source": f"mimic:{root}"})
    assert pipeline.credentialed
    with pytest.raises(PermissionError, match="data use agreement"):
        build_run_report(pipeline)
    with pytest.raises(PermissionError, match="allow_credentialed=True"):
        write_html_report(tmp_path / "r.html", "t", [], credentialed=True)
    with pytest.warns(UserWarning, match="forbids sharing"):
        path = write_html_report(tmp_path / "r.html", "t", [], credentialed=True, allow_credentialed=True)
    assert "keep this file private" in path.read_text()


def test_iu_derived_reports_carry_the_licence_credit(tmp_path):
    path = write_html_report(tmp_path / "r.html", "t", [("A", "<p>x</p>")], credentialed=False, iu_text=True)
    assert "CC BY-NC-ND 4.0" in path.read_text()


def test_compile_setting_reaches_the_trainer_without_changing_the_training_key(tmp_path, monkeypatch):
    import flamingo_lib.training.trainer as train_module

    seen = []

    class Recording(train_module.Trainer):
        def __init__(self, model, train_set, val_set, collator, config, record=None, num_workers=0):
            seen.append(config.compile)
            raise RuntimeError("stop before training")

    monkeypatch.setattr(train_module, "Trainer", Recording)
    pipeline = Pipeline(run_dir=str(tmp_path / "run"), **{**SMALL, "compile": True})
    assert pipeline.settings.training_key() == Pipeline(**SMALL, run_dir=str(tmp_path)).settings.training_key()
    with pytest.raises(RuntimeError, match="stop before training"):
        pipeline.train()
    assert seen == [True]


def test_a_model_trained_on_another_encoder_build_is_retrained_not_served(tmp_path):
    import json

    run = tmp_path / "run"
    first = Pipeline(run_dir=str(run), **SMALL)
    first.train()
    config_path = run / "train" / "model" / "config.json"
    mtime = (run / "train" / "model" / "model.safetensors").stat().st_mtime_ns
    assert Pipeline(run_dir=str(run), **SMALL).train()["steps"] == 4  # same settings, same builds: reused
    assert (run / "train" / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    config = json.loads(config_path.read_text())
    config["embedded_builds"] = {"clip_model_type": "tiny-vit-0123456789abcdef"}  # trained on another build
    config_path.write_text(json.dumps(config))
    Pipeline(run_dir=str(run), **SMALL).train()
    assert (run / "train" / "model" / "model.safetensors").stat().st_mtime_ns != mtime


def test_a_run_trained_before_a_setting_existed_is_reused_at_that_settings_default(tmp_path):
    """A knob added later (absent from the saved key) counts as its default, which is the
    behaviour the run had; a saved key with a different value, or an unknown extra key, retrains."""
    import json

    run = tmp_path / "run"
    Pipeline(run_dir=str(run), **SMALL).train()
    summary_path = run / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["config"]["extra"]["pipeline"]["repeat_factor_threshold"]  # as written before the knob existed
    summary_path.write_text(json.dumps(summary))
    assert Pipeline(run_dir=str(run), **SMALL).is_trained()
    assert not Pipeline(run_dir=str(run), **{**SMALL, "repeat_factor_threshold": 0.3}).is_trained()
    assert summary["config"]["extra"]["pipeline"]["findings_tokens"] is False
    del summary["config"]["extra"]["pipeline"]["findings_tokens"]  # before the knob: no findings tokens
    summary_path.write_text(json.dumps(summary))
    assert Pipeline(run_dir=str(run), **SMALL).is_trained()
    assert not Pipeline(run_dir=str(run), **{**SMALL, "findings_tokens": True}).is_trained()
    assert summary["config"]["extra"]["pipeline"]["reading_head"] is True
    del summary["config"]["extra"]["pipeline"]["reading_head"]  # before the knob: no reading head
    summary_path.write_text(json.dumps(summary))
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()
    assert Pipeline(run_dir=str(run), **{**SMALL, "reading_head": False}).is_trained()
    summary["config"]["extra"]["pipeline"]["reading_head"] = True
    del summary["config"]["extra"]["pipeline"]["findings_targets"]  # before the knob: the reports' readings
    summary_path.write_text(json.dumps(summary))
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()
    assert Pipeline(run_dir=str(run), **{**SMALL, "findings_targets": "reports"}).is_trained()
    del summary["config"]["extra"]["pipeline"]["findings_loss_weight"]  # before the findings head: none
    summary_path.write_text(json.dumps(summary))
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()
    assert Pipeline(run_dir=str(run), **{**SMALL, "findings_loss_weight": 0.0})._saved_training_key(
        summary["config"]["extra"]["pipeline"]) == Pipeline(run_dir=str(run), **{**SMALL, "findings_loss_weight": 0.0}
                                                               ).settings.training_key()
    summary["config"]["extra"]["pipeline"]["retired_knob"] = 1
    summary_path.write_text(json.dumps(summary))
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()


def test_a_run_with_findings_tokens_trains_them_and_maps_attention_past_them(tmp_path):
    pipeline = Pipeline(run_dir=str(tmp_path / "run"), **{**SMALL, "findings_tokens": True})
    pipeline.train()
    model, _ = pipeline.model_and_processor
    assert model.config.findings_tokens and model.flamingo.findings_tokens is not None
    from flamingo_lib.inference.guided_decoding import SYSTEM_NAME

    assert SYSTEM_NAME in pipeline.evaluate().index  # greedy, guided and the baselines all decode with them
    assert len(pipeline.grounding()) > 0  # the maps slice each image's latents out of latents + tokens


def test_a_run_trained_on_features_of_an_older_format_is_retrained(tmp_path):
    import json

    from flamingo_lib.data.feature_cache import FEATURE_FORMAT_VERSION

    run = tmp_path / "run"
    Pipeline(run_dir=str(run), **SMALL).train()
    summary_path = run / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["config"]["extra"]["pipeline"]["feature_format"] == FEATURE_FORMAT_VERSION
    assert Pipeline(run_dir=str(run), **SMALL).is_trained()
    del summary["config"]["extra"]["pipeline"]["feature_format"]  # written before the format was recorded: 1
    summary_path.write_text(json.dumps(summary))
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()


def test_a_labeler_change_retrains_the_findings_head_and_rescores_every_result(tmp_path, monkeypatch):
    """The findings head learns the labeler's readings and every clinical-efficacy score is the
    labeler's: a change of its rules retrains a run with the head (not one without) and
    recomputes results; a run saved before the labeler was recorded counts as trained on an
    unknown labeler."""
    import json

    import flamingo_lib.labeling.version as labeler_version

    run = tmp_path / "run"
    pipeline = Pipeline(run_dir=str(run), **SMALL)
    pipeline.train()
    result = run / "eval" / "dummy.csv"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text("x")
    pipeline._stamp(result)
    assert pipeline._up_to_date(result)
    without_head = Pipeline(run_dir=str(tmp_path / "plain"), **{**SMALL, "findings_loss_weight": 0.0})
    without_head.train()
    monkeypatch.setattr(labeler_version, "rules_version", lambda: "other-rules")
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()
    assert not Pipeline(run_dir=str(run), **SMALL)._up_to_date(result)
    assert Pipeline(run_dir=str(tmp_path / "plain"), **{**SMALL, "findings_loss_weight": 0.0}
                    ).is_trained()
    monkeypatch.undo()
    summary_path = run / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["config"]["extra"]["pipeline"]["labeler"]  # written before the labeler was recorded
    summary_path.write_text(json.dumps(summary))
    assert not Pipeline(run_dir=str(run), **SMALL).is_trained()


def test_the_embedded_encoder_fingerprint_follows_the_labeler_when_its_trunk_learns_labels(monkeypatch):
    import dataclasses

    import flamingo_lib.labeling.version as labeler_version
    from flamingo_lib.encoders.embedded import _spec, recipes

    _, clip = recipes()
    before, contrastive = _spec("vit", clip, 0), _spec("vit", dataclasses.replace(clip, trunk_objective="clip"), 0)
    monkeypatch.setattr(labeler_version, "rules_version", lambda: "other-rules")
    assert _spec("vit", clip, 0) != before
    assert _spec("vit", dataclasses.replace(clip, trunk_objective="clip"), 0) == contrastive


def test_case_heatmap_shows_the_tokens_that_name_a_masked_finding(tmp_path):
    import numpy as np
    from flamingo_lib.evaluation.grounding import FINDING_WORDS, pointing_game
    from flamingo_lib.reporting.run_page import case_heatmap, named_finding_case

    pipeline = Pipeline(run_dir=str(tmp_path / "run"), **{**SMALL, "max_test_samples": 40})
    pipeline.train()
    test = [pipeline.splits["test"][i] for i in range(len(pipeline.splits["test"]))]
    named = next(s for s in test if any(w in s.report.lower() for f in s.masks for w in FINDING_WORDS.get(f, ())))
    heatmap, mask, title, finding, peak = case_heatmap(pipeline, named)
    width, height = named.images[0].size
    assert heatmap.shape == (height, width) and heatmap.min() >= 0 and abs(heatmap.sum() - 1) < 1e-4
    assert finding in named.masks and mask is named.masks[finding] and f"'{finding}'" in title
    # the marked peak is the pixel game's: inside the mask exactly where the game scores a hit
    model, processor = pipeline.model_and_processor
    games = pointing_game(model, processor, test)
    cases = {s.id: case_heatmap(pipeline, s) for s in test if s.masks}  # a study without a mask names none
    for sample_id, case in cases.items():
        if case.finding is not None:
            row = games[(games["id"] == sample_id) & (games["finding"] == case.finding)]
            assert len(row) == 1 and bool(row["hit"].iloc[0]) == bool(case.mask[case.peak])

    normal = next(s for s in test if not s.masks)
    heatmap, mask, title, finding, peak = case_heatmap(pipeline, normal)
    assert mask is None and finding is None and title == "evidence for the report's words"
    assert abs(heatmap.sum() - 1) < 1e-4 and 0 <= peak[0] < height and 0 <= peak[1] < width
    # a study with a mask whose finding its report does not name is mapped over the whole report,
    # so the figure of grounding is the first study whose report names a masked finding
    unnamed = {i for i, case in cases.items() if case.finding is None}
    sample, case = named_finding_case(pipeline)
    assert case.finding in sample.masks and any(w in sample.report.lower() for w in FINDING_WORDS[case.finding])
    assert sample.id == next(s.id for s in test if s.masks and s.id not in unnamed)


def test_metrics_figure_draws_one_labelled_bar_per_system_and_metric_and_none_for_missing_values():
    import pandas as pd
    from flamingo_lib.reporting.html import metrics_figure

    table = pd.DataFrame({"BLEU_4": [0.3, float("nan")], "CIDEr": [1.6, float("nan")], "CE micro-F1 (14)": [0.4, 0.8]},
                         index=["flamingo", "reference report (ceiling)"])
    figure = metrics_figure(table, list(table.columns))
    language, clinical = figure.axes
    assert [t.get_text() for t in language.get_yticklabels()] == ["BLEU_4", "CIDEr"]
    assert language.get_xlim()[1] > 1.6  # CIDEr is not clipped at 1
    labels = lambda ax: sorted(t.get_text() for t in ax.texts if t.get_text())  # noqa: E731
    assert labels(language) == ["0.30", "1.60"] and labels(clinical) == ["0.40", "0.80"]
    assert [p.get_width() for p in clinical.patches] == [0.4, 0.8]
    # readable labels, and a legend outside every panel, where it can hide no bar
    assert all(t.get_fontsize() >= 8 and t.get_rotation() == 0 for ax in figure.axes for t in ax.texts)
    assert language.get_legend() is None and clinical.get_legend() is None and len(figure.legends) == 1
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    legend_box = figure.legends[0].get_window_extent(renderer)
    assert all(not legend_box.overlaps(ax.get_window_extent(renderer)) for ax in figure.axes)


def test_a_run_with_bfloat16_frozen_parts_trains_them_so_and_is_not_served_a_float32_model(tmp_path):
    import json

    import torch

    run = tmp_path / "run"
    Pipeline(run_dir=str(run), **SMALL).train()
    summary_path = run / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["config"]["extra"]["pipeline"]["frozen_dtype"] == "float32"
    del summary["config"]["extra"]["pipeline"]["frozen_dtype"]  # a run trained before the knob: float32
    summary_path.write_text(json.dumps(summary))
    assert Pipeline(run_dir=str(run), **SMALL).is_trained()
    half = Pipeline(run_dir=str(run), **{**SMALL, "frozen_dtype": "bfloat16"})
    assert not half.is_trained()  # another model: retrained, not served
    assert half.train()["steps"] == 4
    model, _ = half.model_and_processor
    assert model.config.frozen_dtype == "bfloat16" and model.flamingo.vision_encoder.dtype == torch.bfloat16
    assert Pipeline(run_dir=str(run), **{**SMALL, "frozen_dtype": "bfloat16"}).is_trained()
    with pytest.raises(ValueError, match="frozen_dtype='half'; allowed: float32, bfloat16, float16"):
        Pipeline(run_dir=str(run), **{**SMALL, "frozen_dtype": "half"})


def test_attending_every_view_is_a_training_setting_that_reaches_the_model(tmp_path):
    """A run trained before the knob attended the latest image only (the default); asking for
    every earlier image (multi-view studies) is another model: retrained, and its config says so."""
    import json

    run = tmp_path / "run"
    pipeline = Pipeline(run_dir=str(run), **SMALL)
    pipeline.evaluate()
    summary_path, stamp_path = run / "train" / "summary.json", run / "eval" / "results.csv.key.json"
    summary, stamp = json.loads(summary_path.read_text()), json.loads(stamp_path.read_text())
    assert summary["config"]["extra"]["pipeline"]["only_attend_immediate_media"] is True
    del summary["config"]["extra"]["pipeline"]["only_attend_immediate_media"]  # as written before the knob
    del stamp["training"]["only_attend_immediate_media"]
    summary_path.write_text(json.dumps(summary))
    stamp_path.write_text(json.dumps(stamp))
    assert Pipeline(run_dir=str(run), **SMALL).is_trained()
    # ... and its results are served too, not recomputed: read as training reads the key
    assert Pipeline(run_dir=str(run), **SMALL)._up_to_date(run / "eval" / "results.csv", **pipeline._guided_key())
    every_view = Pipeline(run_dir=str(run), **{**SMALL, "only_attend_immediate_media": False})
    assert not every_view.is_trained()
    assert every_view.train()["steps"] == SMALL["max_steps"]
    model, _ = every_view.model_and_processor
    assert not model.config.only_attend_immediate_media
    from flamingo_lib.modeling.lm_injection import flamingo_layers

    rules = [layer.gated_cross_attn.attn.only_attend_immediate_media for layer in flamingo_layers(model)]
    assert rules and not any(rules)


def test_a_killed_training_continues_from_its_checkpoint_to_the_same_weights(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    import flamingo_lib.training.trainer as train_module

    settings = {**SMALL, "save_every": 2}
    Pipeline(run_dir=str(tmp_path / "straight"), **settings).train()
    save = train_module.Trainer.save

    def save_then_die(self):
        save(self)
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    monkeypatch.setattr(train_module.Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(run_dir=str(tmp_path / "killed"), **settings).train()
    monkeypatch.setattr(train_module.Trainer, "save", save)
    resume, resumed_at = train_module.Trainer.resume, []

    def recorded_resume(self):
        resume(self)
        resumed_at.append(self.progress["step"])

    monkeypatch.setattr(train_module.Trainer, "resume", recorded_resume)
    again = Pipeline(run_dir=str(tmp_path / "killed"), **settings)
    assert not again.is_trained()
    assert again.train()["steps"] == 4 and resumed_at == [2]  # continued from step 2, not restarted
    steps = [line.split(",")[0] for line in (tmp_path / "killed" / "train" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]
    straight = load_file(tmp_path / "straight" / "train" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "train" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    # under other settings the checkpoint is not continued: a new training replaces it
    other = Pipeline(run_dir=str(tmp_path / "killed"), **{**settings, "max_steps": 3})
    assert other.train()["steps"] == 3 and resumed_at == [2]
