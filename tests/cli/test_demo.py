"""The demo command: every pipeline setting is a flag, and credentialed data are refused before any work."""

from __future__ import annotations

import pytest

from data_fixtures import build_mimic
from flamingo_lib.cli.demo import main, parse


def test_every_setting_is_a_flag_with_the_recipes_default():
    settings, options = parse(["--steps", "300", "--data", "phantom", "--preset", "tiny-random", "--run-dir", "runs/x"])
    assert (settings.train.max_steps, settings.data.source, settings.model.preset) == (300, "phantom", "tiny-random")
    assert settings.train.out_dir == "runs/x/train" and options.report == "reports/demo/report.html"
    defaults, _ = parse([])
    assert defaults.train.lr == 3e-3 and defaults.eval.guided_candidates == 32  # the recipe's, declared once


def test_credentialed_data_are_refused_before_any_work(tmp_path):
    root = build_mimic(tmp_path / "mimic")
    run = tmp_path / "run"
    with pytest.raises(PermissionError, match="--allow_credentialed"):
        main(["--preset", "tiny-random", "--data", f"mimic:{root}", "--run-dir", str(run),
              "--report", str(tmp_path / "report.html")])
    assert not (run / "train").exists() and not (tmp_path / "report.html").exists()
