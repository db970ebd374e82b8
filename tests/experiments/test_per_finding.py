"""The per-finding diagnostic: counts per observation against both yardsticks, from a run's generations."""

from __future__ import annotations

import json

import pytest

from experiments.per_finding import counts_markdown, micro_f1, per_finding_counts, run_tables
from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
from flamingo_lib.data.sources import open_source
from flamingo_lib.labeling.labeler import label_report
from flamingo_lib.evaluation.metrics import clinical_efficacy


def test_counts_per_finding_add_up_to_the_micro_f1_of_clinical_efficacy():
    truth = [{"Edema": 1.0, "Atelectasis": 1.0}, {"Edema": 0.0}, {"Pneumothorax": 1.0}]
    stated = [{"Edema": 1.0, "Atelectasis": -1.0}, {"Edema": 1.0}, {"Pneumothorax": 1.0}]  # uncertain: not stated
    counts = per_finding_counts(stated, truth)
    assert counts.loc["Edema"].tolist() == [1, 2, 1, 1, 0]  # positives, stated, tp, fp, fn
    assert counts.loc["Atelectasis"].tolist() == [1, 0, 0, 0, 1]
    assert counts.loc["all"].tolist() == [3, 3, 2, 1, 1]
    assert micro_f1(counts) == pytest.approx(clinical_efficacy(truth, stated, RENDERED_OBSERVATIONS)["micro_f1"])
    assert counts_markdown(counts).splitlines()[-1] == "| all | 3 | 3 | 2 | 1 | 1 |"
    with pytest.raises(ValueError, match="2 read reports but 3 truths"):
        per_finding_counts(stated[:2], truth)


def _fake_run(tmp_path, systems):
    """A run directory holding only what the diagnostic reads: its settings and test generations."""
    split = open_source("phantom:templated", "test", 64, None, seed=0)
    ids, references = split.ids[:20], split.reports[:20]
    (tmp_path / "train").mkdir(parents=True)
    (tmp_path / "eval").mkdir()
    settings = {"data": "phantom:templated", "image_size": 64, "seed": 0}
    (tmp_path / "train" / "summary.json").write_text(json.dumps({"config": {"extra": {"pipeline": settings}}}))
    rows = [{"id": i, "reference": r, **{name: write(r) for name, write in systems.items()}}
            for i, r in zip(ids, references)]
    (tmp_path / "eval" / "generations.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return split.label_frame().loc[ids], references


def test_run_tables_score_each_system_against_the_image_truth_and_the_reference(tmp_path):
    truth, references = _fake_run(tmp_path, {"copy": lambda r: r, "normal": lambda r: "The lungs are clear."})
    tables = run_tables(tmp_path)
    assert list(tables) == ["reference report", "copy", "normal"]
    assert micro_f1(tables["copy"]["vs reference"]) == 1.0  # the reference agrees with itself
    assert tables["normal"]["vs image truth"].loc["all", "stated"] == 0
    expected = clinical_efficacy(truth.to_dict("records"), [label_report(r) for r in references], RENDERED_OBSERVATIONS)
    assert micro_f1(tables["copy"]["vs image truth"]) == pytest.approx(expected["micro_f1"])
    assert tables["copy"]["vs image truth"].equals(tables["reference report"]["vs image truth"])
    assert list(run_tables(tmp_path, ["normal"])) == ["reference report", "normal"]
    with pytest.raises(ValueError, match=r"no system \['beam'\] .* it has: copy, normal"):
        run_tables(tmp_path, ["beam"])


def test_a_run_without_generations_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no test generations; run the pipeline's evaluate"):
        run_tables(tmp_path)
