"""A run written before the settings were composed of one object per layer is read back as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flamingo_lib.pipeline import Pipeline, PipelineSettings
from pipeline_runs import SMALL

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "flat-settings-run"


def _mtimes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_a_run_saved_with_flat_settings_is_served_without_retraining_or_rescoring(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    before = _mtimes(run)
    pipeline = Pipeline(run_dir=str(run), **SMALL)
    assert pipeline.is_trained()  # its saved training key reads as today's settings' key
    assert pipeline.train()["steps"] == 4
    table = pipeline.evaluate()
    assert "flamingo" in table.index and table.loc["flamingo"].notna().any()
    grounding = pipeline.grounding()
    assert len(grounding) > 0 and "iou" in grounding.columns  # its table from before the box measures: rescored
    model, _ = pipeline.model_and_processor
    assert model.config.reading_head and model.config.findings_head is not None
    after = _mtimes(run)  # nothing retrained, recomputed or rewritten but the grounding; the films' reference added
    rescored = {"grounding.csv", "grounding.csv.key.json"}
    assert {name: after[name] for name in before if name not in rescored} == {
        name: time for name, time in before.items() if name not in rescored}
    assert set(after) - set(before) == {"train/model/training_films.safetensors"}


def test_a_saved_training_key_gives_back_the_settings_it_was_trained_with(tmp_path):
    saved = json.loads((FIXTURE / "train" / "summary.json").read_text())["config"]["extra"]["pipeline"]
    settings = PipelineSettings.from_training_key(saved, tmp_path)
    assert settings.training_key() == PipelineSettings.from_flat(run_dir=str(tmp_path), **SMALL).training_key()
    assert (settings.data.source, settings.train.max_steps, settings.model.preset) == ("phantom:templated", 4, "tiny-random")
    assert settings.train.out_dir == str(tmp_path / "train")


def test_a_changed_setting_retrains_the_saved_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    assert not Pipeline(run_dir=str(run), **{**SMALL, "weight_decay": 0.01}).is_trained()  # a knob it lacked
    assert not Pipeline(run_dir=str(run), **{**SMALL, "max_steps": 5}).is_trained()


def test_a_run_opens_with_the_settings_it_was_trained_with_and_is_not_retrained(tmp_path):
    from flamingo_lib.pipeline import Pipeline

    trained = Pipeline(run_dir=str(tmp_path / "run"), **SMALL)
    trained.train()
    weights = tmp_path / "run" / "train" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    opened = Pipeline.from_run(tmp_path / "run", max_new_tokens=9)
    assert opened.settings.training_key() == trained.settings.training_key()
    assert opened.settings.eval.max_new_tokens == 9  # overrides win
    opened.model_and_processor
    assert weights.stat().st_mtime_ns == stamp, "nothing retrained"
    # the defaults would have retrained it: that is what from_run is for
    assert Pipeline(run_dir=str(tmp_path / "run")).settings.training_key() != trained.settings.training_key()
    with pytest.raises(FileNotFoundError, match="is not a trained pipeline run"):
        Pipeline.from_run(tmp_path / "nothing-here")


def test_a_run_opens_without_the_keys_this_checkout_retired(tmp_path):
    (tmp_path / "train").mkdir()
    saved = {"data": "phantom:templated", "seed": 3, "retired_knob": 1, "run_dir": "/elsewhere"}
    (tmp_path / "train" / "summary.json").write_text(json.dumps({"config": {"extra": {"pipeline": saved}}}))
    settings = Pipeline.from_run(tmp_path, progress=False).settings
    assert (settings.data.source, settings.train.seed, settings.run_dir, settings.train.progress) == (
        "phantom:templated", 3, str(tmp_path), False)
    assert Pipeline.from_run(tmp_path, run_dir=str(tmp_path / "other")).settings.run_dir == str(tmp_path / "other")


def test_a_run_reopens_with_the_settings_its_results_were_scored_with_and_is_not_rescored(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    results = run / "eval" / "results.csv"
    before = results.stat().st_mtime_ns
    opened = Pipeline.from_run(run, progress=False)
    # the fixture was scored on 6 test studies with 6 new tokens and 5 val studies for the threshold;
    # the defaults (the whole split, 60 tokens, 250 studies) would rescore it and overwrite its table
    assert (opened.settings.data.max_test_samples, opened.settings.eval.max_new_tokens,
            opened.settings.eval.guided_val_samples) == (6, 6, 5)
    assert PipelineSettings.from_flat().data.max_test_samples is None
    table = opened.evaluate()
    assert "flamingo" in table.index
    assert results.stat().st_mtime_ns == before, "the run's results were recomputed"
    assert Pipeline.from_run(run, max_test_samples=3).settings.data.max_test_samples == 3  # overrides still win


def test_a_stamp_that_is_not_a_settings_record_is_refused_by_name(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "eval" / "results.csv.key.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"results\.csv\.key\.json: expected a JSON object"):
        Pipeline.from_run(run)
