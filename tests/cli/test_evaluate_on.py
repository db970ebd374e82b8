"""Cross-dataset evaluation of a trained run: on its own test split it scores what the pipeline
scored; on another source it scores against the references only; what it cannot do it refuses."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from data_fixtures import build_mimic
from flamingo_lib.cli.evaluate_on import evaluation_dir, main
from flamingo_lib.pipeline.run_records import training_record
from flamingo_lib.inference.guided_decoding import SYSTEM_NAME as GUIDED
from flamingo_lib.pipeline.steps import Pipeline
from pipeline_runs import SMALL

COMMON = ["--max-new-tokens", str(SMALL["max_new_tokens"]), "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cross") / "run"
    pipeline = Pipeline(run_dir=str(run), **SMALL)
    pipeline.evaluate()
    return run, pipeline


def test_on_its_own_test_split_it_scores_what_the_pipeline_scored(evaluated_run):
    run, pipeline = evaluated_run
    assert training_record(run / "train" / "model") == {
        "data": SMALL["source"], "image_size": SMALL["image_size"], "max_train_samples": SMALL["max_train_samples"],
        "seed": 0, "feature_storage": "float16"}
    table = main([str(run), "--data", SMALL["source"], "--max-samples", str(SMALL["max_test_samples"]), "--guided",
                  *COMMON])
    expected = pipeline.evaluate()
    assert list(table.index) == list(expected.index)  # the guided row and the reference ceiling included
    pd.testing.assert_frame_equal(table.astype(float), expected.astype(float), check_exact=False, rtol=1e-9)
    out = evaluation_dir(run, SMALL["source"], "test", SMALL["max_test_samples"])
    own = pd.read_json(run / "eval" / "generations.jsonl", lines=True)
    pd.testing.assert_frame_equal(pd.read_json(out / "generations.jsonl", lines=True), own)
    protocol = (out / "PROTOCOL.md").read_text()
    assert "trained on 'phantom:templated'" in protocol and "nothing tuned on this source" in protocol


def test_on_another_source_it_scores_against_the_references(evaluated_run, tmp_path):
    run, _ = evaluated_run
    root = build_mimic(tmp_path / "mimic")
    with pytest.warns(UserWarning, match="credentialed"):
        table = main([str(run), "--data", f"mimic:{root}", "--out", str(tmp_path / "out"), *COMMON])
    assert "CE micro-F1 (14, vs reference)" in table and not any("image truth" in c for c in table.columns)
    assert set(table.index) == {"flamingo", "most frequent report", "nearest neighbour", "LM without image"}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["n_test"] == 1  # the fixture's one test study
    assert "tested on 'mimic:" in (tmp_path / "out" / "PROTOCOL.md").read_text()


def test_what_it_cannot_do_is_refused_by_name(evaluated_run, tmp_path, capsys):
    run, _ = evaluated_run
    bare = tmp_path / "model"
    (bare).mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((run / "train" / "model" / name).read_bytes())
    setup = run / "eval" / "guided_decoding.json"
    kept = setup.read_text()
    setup.unlink()
    try:
        cases = [([str(bare), "--data", "phantom"], "no training summary"),
                 ([str(run), "--data", "phantom", "--guided"], "recorded no findings-guided threshold"),
                 ([str(run), "--data", "nosuch:/x"], "unknown data source")]
        for argv, message in cases:
            with pytest.raises(SystemExit) as stop:
                main(argv + COMMON)
            assert stop.value.code == 2 and message in capsys.readouterr().err
        given = main([str(run), "--data", SMALL["source"], "--max-samples", "2", "--threshold", "0.3",
                      "--out", str(tmp_path / "given"), *COMMON])
        assert GUIDED in given.index and "threshold 0.3 given on the command line" in (tmp_path / "given" / "PROTOCOL.md").read_text()
    finally:
        setup.write_text(kept)


def test_on_credentialed_data_it_warns_first_and_marks_the_folder_private(evaluated_run, tmp_path):
    from flamingo_lib.cli.evaluate_on import CREDENTIALED_NOTE, CredentialedDataWarning

    run, _ = evaluated_run
    root = build_mimic(tmp_path / "mimic")
    with pytest.warns(CredentialedDataWarning, match="keep it private"):
        main([str(run), "--data", f"mimic:{root}", "--out", str(tmp_path / "out"), *COMMON])
    assert "never share it" in (tmp_path / "out" / CREDENTIALED_NOTE).read_text()
    main([str(run), "--data", SMALL["source"], "--max-samples", "2", "--out", str(tmp_path / "public"), *COMMON])
    assert not (tmp_path / "public" / CREDENTIALED_NOTE).exists()  # a public source is not marked
