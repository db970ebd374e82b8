"""The unstated-findings probe: observations no training report states, found from the reports, and
the F1 with and without them."""

from __future__ import annotations

import pytest

from experiments.unstated_findings import scores_row, unstated_observations


def test_the_unstated_observations_are_those_no_training_report_is_read_positive_for():
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.labeling.labeler import label_report

    reports = ["Moderate cardiomegaly. Small right pleural effusion.", "No cardiomegaly. No pneumothorax.",
               "There is a displaced right rib fracture."]
    unstated = unstated_observations(reports, RENDERED_OBSERVATIONS, label_report)
    assert {"Cardiomegaly", "Pleural Effusion", "Fracture"}.isdisjoint(unstated)  # each stated once
    assert {"Pneumothorax", "Enlarged Cardiomediastinum", "Edema"} <= set(unstated)  # negated or never named
    named = reports + ["The cardiomediastinal silhouette is enlarged."]
    assert unstated_observations(named, ["Enlarged Cardiomediastinum"], label_report) == []


def test_a_report_missing_only_an_unstated_observation_scores_one_once_it_is_left_out():
    observations = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Edema"]
    truth = [{"Enlarged Cardiomediastinum": 1.0, "Cardiomegaly": 1.0}, {"Edema": 1.0}]
    stated = [{"Cardiomegaly": 1.0}, {"Edema": 1.0}]
    row = scores_row(stated, truth, stated, observations, ["Enlarged Cardiomediastinum"])
    assert row["vs image truth"] == pytest.approx(2 * 2 / (2 * 2 + 1))  # the parent observation is a miss
    assert row["vs image truth, unstated left out"] == 1.0 and row["vs reference"] == 1.0
    wrong = [{"Edema": 1.0}, {}]  # a real miss and a false finding still count without the unstated one
    assert scores_row(wrong, truth, stated, observations, ["Enlarged Cardiomediastinum"])[
        "vs image truth, unstated left out"] == 0.0
