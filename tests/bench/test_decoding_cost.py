"""The decoding-cost bench on a small trained run: its rows, their ratios and the run's own settings."""

from __future__ import annotations

import json

import pytest

from pipeline_runs import SMALL


def test_the_three_decodings_are_timed_per_report_on_the_runs_own_test_studies(tmp_path):
    from bench.decoding_cost import markdown, run
    from flamingo_lib.pipeline import Pipeline

    Pipeline(run_dir=str(tmp_path), **SMALL).train()
    results = run(tmp_path, studies=2, beams=2, threads=1, reps=2)
    rows = results["rows"]
    assert list(rows) == ["greedy", "beam search (2 beams)", "findings-guided"]
    assert rows["greedy"]["vs_greedy"] == 1.0 and results["studies"] == 2
    for row in rows.values():
        assert 0 < row["wall_s_per_report_min"] <= row["wall_s_per_report"] <= row["wall_s_per_report_max"]
        assert row["vs_greedy"] == pytest.approx(row["wall_s_per_report"] / rows["greedy"]["wall_s_per_report"])
    assert "threshold 0.5" in rows["findings-guided"]["settings"]  # the run was not evaluated: no threshold of its own
    table = markdown(results)
    assert table.count("\n| ") == 3 + 1 and "findings-guided" in table
    json.dumps(results)  # what main writes
