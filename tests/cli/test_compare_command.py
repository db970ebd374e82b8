"""flamingo-compare: the files it writes, and a refusal that names the difference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flamingo_lib.cli.compare import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "flat-settings-run"


def test_the_command_writes_one_table_one_page_and_the_intervals(tmp_path, capsys):
    other = tmp_path / "int8"
    shutil.copytree(FIXTURE, other)
    generations = other / "eval" / "generations.jsonl"
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    generations.write_text("".join(json.dumps(row | {"flamingo": "The lungs are clear."}) + "\n" for row in rows))
    main([str(FIXTURE), str(other), "--names", "fp16", "int8", "--out", str(tmp_path / "out"),
          "--n-resamples", "50", "--n-permutations", "100"])
    table = pd.read_csv(tmp_path / "out" / "comparison.csv", index_col="system")
    assert {"fp16: flamingo", "int8: flamingo"} <= set(table.index)
    assert "p_vs_fp16: flamingo" in pd.read_csv(tmp_path / "out" / "uncertainty.csv").columns
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "int8: flamingo" in page and "against fp16: flamingo" in page and "6 test studies" in page
    assert "against fp16: flamingo" in capsys.readouterr().out


def test_runs_on_other_studies_are_refused_by_the_command(tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(FIXTURE, other)
    generations = other / "eval" / "generations.jsonl"
    generations.write_text("".join(generations.read_text().splitlines(keepends=True)[:4]))
    with pytest.raises(SystemExit):
        main([str(FIXTURE), str(other), "--out", str(tmp_path / "out")])
    assert "other was scored on other studies than flat-settings-run (4 against 6" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
