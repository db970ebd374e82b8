"""The reward stage in the pipeline: on at reward_steps > 0, after the supervised stage it leaves
alone; its model becomes the run's, its settings key the run's results, and switching it off serves
the supervised model again without retraining."""

from __future__ import annotations

import json

import pytest

from pipeline_runs import SMALL
from flamingo_lib.pipeline.run_records import model_directory
from flamingo_lib.pipeline.steps import Pipeline

REWARD = dict(reward_steps=2, reward_batch_size=2, reward_samples=2)


def _mtime(path):
    return path.stat().st_mtime_ns


def test_the_reward_stage_fine_tunes_the_supervised_model_and_becomes_the_runs_model(tmp_path):
    run = tmp_path / "run"
    pipeline = Pipeline(run_dir=str(run), **SMALL, **REWARD)
    summary = pipeline.train()
    assert summary["steps"] == 2 and pipeline.model_dir == run / "reward" / "model" and pipeline.is_trained()
    curves = pipeline.training_curves("reward")
    assert list(curves["step"]) == [1, 2] and curves["reward"].between(0, 1).all()
    saved = json.loads((run / "reward" / "summary.json").read_text())["config"]
    assert saved["samples_per_study"] == 2 and saved["extra"]["pipeline"]["reward"]["reward_steps"] == 2
    assert model_directory(run) == run / "reward" / "model"  # what flamingo-evaluate and write-reports read
    supervised = _mtime(run / "train" / "summary.json")
    results = pipeline.evaluate()
    assert "flamingo" in results.index

    # another reward setting: only the reward stage runs again, and the results are recomputed
    changed = Pipeline(run_dir=str(run), **SMALL, **{**REWARD, "reward_lr": 1e-4})
    assert not changed.is_trained()
    changed.train()
    assert _mtime(run / "train" / "summary.json") == supervised
    stamp = run / "eval" / "results.csv.key.json"
    before = _mtime(stamp)
    changed.evaluate()
    assert _mtime(stamp) != before

    # the stage off: the supervised model is the run's, with no training at all
    off = Pipeline(run_dir=str(run), **SMALL)
    assert off.is_trained() and off.model_dir == run / "train" / "model"
    off.train()
    assert _mtime(run / "train" / "summary.json") == supervised
    assert model_directory(run) == run / "reward" / "model"  # fine-tuned from the run's supervised model

    # the supervised stage retrained under other settings: the reward model of the old one is not the run's
    Pipeline(run_dir=str(run), **{**SMALL, "lr": 5e-4}).train()
    assert _mtime(run / "train" / "summary.json") != supervised
    assert model_directory(run) == run / "train" / "model"


def test_impossible_reward_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="baseline must be one of"):
        Pipeline(run_dir=str(tmp_path / "run"), **SMALL, reward_steps=2, reward_baseline="best")
