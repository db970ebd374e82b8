"""A trained run's pipeline settings, as the probes that reopen a run need them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flamingo_lib.pipeline import PipelineSettings


def saved_settings(run: str | Path, /, **overrides: Any) -> PipelineSettings:
    """The settings the run in directory ``run`` was trained with (its ``train/summary.json``), with
    ``run_dir=run``; keys this checkout no longer knows are dropped, ``overrides`` (flat setting
    names, ``run_dir`` too) win.

    Raises:
        FileNotFoundError: the run has not been trained.
    """
    path = Path(run) / "train" / "summary.json"
    saved = json.loads(path.read_text())["config"]["extra"]["pipeline"]
    return PipelineSettings.from_training_key(saved, run, **overrides)
