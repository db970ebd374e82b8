"""Runs compared on the same studies: the table evaluate() wrote, paired tests against the first run's
model, and refusals that name the difference when the studies are not the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flamingo_lib.evaluation.compare import compare_runs
from flamingo_lib.pipeline.run_records import phantom_test_truth

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "flat-settings-run"
TEXTS = ["The heart is enlarged.", "Small left pleural effusion.", "The lungs are clear.", "Mild pulmonary edema.",
         "Right lower lobe opacity.", "No acute process."]


def write_run(folder: Path, ids, references, **systems) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": i, "reference": r, **{k: v[n] for k, v in systems.items()}})
             for n, (i, r) in enumerate(zip(ids, references, strict=True))]
    (folder / "generations.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_the_comparison_of_a_run_gives_back_the_table_its_evaluation_wrote(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(FIXTURE, other)
    truth, shown = phantom_test_truth([FIXTURE, other])
    assert truth is not None and len(truth) == 6  # the phantom's test labels, no film rendered
    comparison = compare_runs([FIXTURE, other], ["a", "b"], image_truth=truth, shown_observations=shown,
                              n_resamples=0, n_permutations=0)
    saved = pd.read_csv(FIXTURE / "eval" / "results.csv", index_col="system")
    columns = list(comparison.table.columns)
    assert any("vs image truth" in c for c in columns)
    pd.testing.assert_series_equal(comparison.table.loc["a: flamingo"].astype(float),
                                   saved.loc["flamingo", columns].astype(float), check_names=False)
    # the baselines wrote the same reports in both runs: once each, unprefixed; the model once per run
    assert {"most frequent report", "nearest neighbour", "a: flamingo", "b: flamingo"} <= set(comparison.table.index)


def test_paired_tests_run_against_the_first_runs_model(tmp_path):
    ids, references = [f"s{i}" for i in range(30)], [TEXTS[i % 6] for i in range(30)]
    good = write_run(tmp_path / "good" / "eval", ids, references, flamingo=references,
                     **{"nearest neighbour": [TEXTS[0]] * 30})
    bad = write_run(tmp_path / "bad", ids, references, flamingo=[TEXTS[2]] * 30,
                    **{"nearest neighbour": [TEXTS[0]] * 30})
    comparison = compare_runs([good.parent, bad], n_resamples=200, n_permutations=500)
    rows = comparison.uncertainty.set_index(["system", "metric"])
    metric = "CE micro-F1 (14, vs reference)"
    assert comparison.reference_system == "good: flamingo"
    assert rows.loc[("good: flamingo", metric), "value"] == 1.0
    assert rows.loc[("bad: flamingo", metric), "p_vs_good: flamingo"] < 0.01  # always 'clear' is worse
    assert pd.isna(rows.loc[("good: flamingo", metric), "p_vs_good: flamingo"])
    low, high = rows.loc[("bad: flamingo", metric), ["low", "high"]]
    assert low <= rows.loc[("bad: flamingo", metric), "value"] <= high
    assert "nearest neighbour" in comparison.table.index and "good: nearest neighbour" not in comparison.table.index


def test_runs_on_other_studies_or_other_references_are_refused_naming_the_difference(tmp_path):
    ids, references = [f"s{i}" for i in range(6)], TEXTS
    base = write_run(tmp_path / "base", ids, references, flamingo=references)
    fewer = write_run(tmp_path / "fewer", ids[:4] + ["x9"], references[:5], flamingo=references[:5])
    with pytest.raises(ValueError, match=r"fewer was scored on other studies than base \(5 against 6; 2 only in base "
                                         r"\(first: 's4'\); 1 only in fewer \(first: 'x9'\)\)"):
        compare_runs([base, fewer])
    shuffled = write_run(tmp_path / "shuffled", ids[::-1], references[::-1], flamingo=references[::-1])
    with pytest.raises(ValueError, match="in another order"):
        compare_runs([base, shuffled])
    rewritten = write_run(tmp_path / "rewritten", ids, [r.upper() for r in references], flamingo=references)
    with pytest.raises(ValueError, match=r"share their study ids but not their reference reports \(6 differ, first: "
                                         r"study 's0'\)"):
        compare_runs([base, rewritten])
    with pytest.raises(FileNotFoundError, match=r"nothing: no generations.jsonl in .*evaluate the run first"):
        compare_runs([base, tmp_path / "nothing"])
    with pytest.raises(ValueError, match="each with its own name"):
        compare_runs([base, base])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "generations.jsonl").write_text('{"id": "s0", "reference": "x"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"broken/generations.jsonl, line 2: expected an object with 'id'"):
        compare_runs([base, tmp_path / "broken"])
