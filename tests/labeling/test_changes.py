"""Reading comparison statements from follow-up reports, and scoring them."""

from __future__ import annotations

import math

import pytest

from flamingo_lib.labeling.changes import CHANGES, change_accuracy, change_statements, finding_mentions


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ("New small right pleural effusion.", {"pleural effusion": "new"}),
        ("The left pleural effusion has increased.", {"pleural effusion": "increased"}),
        ("Cardiomegaly is unchanged.", {"cardiomegaly": "unchanged"}),
        ("The right pleural effusion has resolved.", {"pleural effusion": "resolved"}),
        ("Stable cardiomegaly.", {"cardiomegaly": "unchanged"}),
        ("No change in the small left pleural effusion.", {"pleural effusion": "unchanged"}),
        ("Left basilar atelectasis is again seen.", {"atelectasis": "unchanged"}),
        ("Persistent right lower lobe consolidation.", {"consolidation": "unchanged"}),
        ("The right pneumothorax is larger.", {"pneumothorax": "increased"}),
        ("Worse pulmonary edema.", {"edema": "increased"}),
        ("Enlarging left upper lobe mass.", {"mass": "increased"}),
        ("The left effusion is smaller.", {"pleural effusion": "decreased"}),
        ("Improved aeration with decreasing right lower lobe pneumonia.", {"pneumonia": "decreased"}),
        ("The right pneumothorax is no longer seen.", {"pneumothorax": "resolved"}),
        ("The endotracheal tube has been removed.", {"endotracheal tube": "resolved"}),
        ("The left mid lung opacity has cleared.", {"opacity": "resolved"}),
        ("Interval placement of a right internal jugular central venous catheter with tip in the SVC.",
         {"central line": "new"}),
        ("Interval removal of the nasogastric tube.", {"nasogastric tube": "resolved"}),
        ("Stable position of the left chest wall pacemaker.", {"pacemaker": "unchanged"}),
        ("Right lower lobe airspace opacity, concerning for pneumonia, has increased.", {"pneumonia": "increased"}),
        ("Stable cardiomegaly and bilateral pleural effusions.",
         {"cardiomegaly": "unchanged", "pleural effusion": "unchanged"}),
        ("Cardiomegaly is unchanged, the left pleural effusion has increased.",
         {"cardiomegaly": "unchanged", "pleural effusion": "increased"}),
        ("Compared with the prior study, there is a new left lower lobe consolidation.",
         {"consolidation": "new"}),
        ("Decreased right pleural effusion. Unchanged emphysema. New ET tube.",
         {"pleural effusion": "decreased", "emphysema": "unchanged", "endotracheal tube": "new"}),
    ],
)
def test_statements(report: str, expected: dict[str, str]) -> None:
    assert change_statements(report) == expected


@pytest.mark.parametrize(
    "report",
    [
        "No pleural effusion.",
        "No pleural effusion or pneumothorax. Heart size is normal. The lungs are clear.",
        "No new consolidation.",
        "There is no evidence of new pleural effusion.",
        "Small left pleural effusion.",  # describes, does not compare
        "The heart is mildly enlarged. Patchy consolidation in the right base consistent with pneumonia.",
        "Stable appearance of the chest.",  # a change word about no finding
        "",
    ],
)
def test_no_statement(report: str) -> None:
    assert change_statements(report) == {}


def test_negated_finding_in_a_clause_with_a_change() -> None:
    assert change_statements("Stable cardiomegaly without pleural effusion.") == {"cardiomegaly": "unchanged"}
    assert change_statements("The right pneumothorax has resolved. No new pneumothorax.") == {
        "pneumothorax": "resolved"}


def test_a_change_beats_unchanged_for_one_finding() -> None:
    report = "The right pleural effusion is unchanged. The left pleural effusion has increased."
    assert change_statements(report) == {"pleural effusion": "increased"}


def test_finding_mentions() -> None:
    assert finding_mentions("Shortness of breath. Evaluate effusion.") == {"pleural effusion"}
    assert finding_mentions("Line placement.") == set()
    assert finding_mentions("Follow-up of known right lower lobe pneumonia.") == {"pneumonia"}


def test_change_accuracy_counts_every_true_pair() -> None:
    reports = [
        "Normal heart size. The lungs are clear.",  # a first study: no truth
        "New small right pleural effusion. Stable cardiomegaly.",  # both right
        "The left pleural effusion has decreased. New right lower lobe consolidation.",  # effusion wrong
        "Cardiomegaly.",  # states no change: wrong
    ]
    truths = [
        {},
        {"pleural effusion": "new", "cardiomegaly": "unchanged"},
        {"pleural effusion": "increased"},  # the consolidation statement is extra
        {"cardiomegaly": "unchanged"},
    ]
    result = change_accuracy(reports, truths)
    assert result["n"] == 4 and result["correct"] == 2 and result["accuracy"] == pytest.approx(0.5)
    assert result["unstated"] == 1 and result["extra"] == 1
    per = result["per_change"]
    assert set(per) == set(CHANGES)
    assert per["new"] == {"accuracy": 1.0, "n": 1, "correct": 1}
    assert per["unchanged"] == {"accuracy": 0.5, "n": 2, "correct": 1}
    assert per["increased"] == {"accuracy": 0.0, "n": 1, "correct": 0}
    assert per["resolved"]["n"] == 0 and math.isnan(per["resolved"]["accuracy"])


def test_change_accuracy_edge_cases() -> None:
    assert math.isnan(change_accuracy([], [])["accuracy"])
    with pytest.raises(ValueError, match="reports"):
        change_accuracy(["a"], [])
    with pytest.raises(ValueError, match="unknown change"):
        change_accuracy(["Stable cardiomegaly."], [{"cardiomegaly": "same"}])
