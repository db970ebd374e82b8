"""The severity reader: the level a report states for each positive observation, read from its words."""

from __future__ import annotations

import math

import pytest

from flamingo_lib.labeling.severity import SeverityTargets, severity_reading


@pytest.mark.parametrize("report, expected", [
    ("Small left pleural effusion. Moderate cardiomegaly.", {"Pleural Effusion": 0.0, "Cardiomegaly": 0.5}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 0.0}),
    ("Extensive airspace consolidation in the right lower lobe.", {"Consolidation": 1.0}),
    # a clause naming no observation belongs to the one before: the follow-up's "now large"
    ("The right pleural effusion has increased, now large.", {"Pleural Effusion": 1.0}),
    ("Decreased pulmonary edema, now mild.", {"Edema": 0.0}),
    # one level per observation: the largest the report states (one per side)
    ("Small left and large right pleural effusions.", {"Pleural Effusion": 1.0}),
])
def test_the_stated_level_of_each_positive_observation(report, expected):
    assert severity_reading(report) == expected


@pytest.mark.parametrize("report", [
    "Stable right pleural effusion.",  # present, but no size stated
    "No large pleural effusion.",  # negated: nothing to size
    "Patchy opacity in the left base, possibly small atelectasis.",  # hedged; "patchy" is a distribution
    "Small bowel gas pattern is normal. Lungs are clear.",  # a size word with no observation beside it
])
def test_nothing_is_stated_without_a_positive_mention_and_a_size_word_in_its_clause(report):
    assert severity_reading(report) == {}


def test_targets_are_nan_where_the_report_states_no_level():
    targets = SeverityTargets(["Pleural Effusion", "Cardiomegaly", "Edema"])
    row = targets.row("Moderate right pleural effusion. Stable cardiomegaly.")
    assert row[0] == 0.5 and math.isnan(row[1]) and math.isnan(row[2])


def test_an_unchanged_finding_without_a_size_takes_the_priors_down_the_patients_studies():
    from types import SimpleNamespace as Study

    first = Study(report="Moderate right pleural effusion. Small left pneumothorax.", prior=None)
    second = Study(report="Stable right pleural effusion. The pneumothorax has increased.", prior=first)
    third = Study(report="The pleural effusion is unchanged. No pneumothorax.", prior=second)
    targets = SeverityTargets(["Pleural Effusion", "Pneumothorax", "Edema"])
    assert targets.study_row(first)[:2] == [0.5, 0.0]
    for study in (second, third):  # kept through two follow-ups; an increase says no size, nor a negation
        row = targets.study_row(study)
        assert row[0] == 0.5 and math.isnan(row[1]) and math.isnan(row[2])
    stated = Study(report="The right pleural effusion is unchanged, now large.", prior=first)
    assert targets.study_row(stated)[0] == 1.0  # the report's own size wins


def test_on_the_phantom_every_stated_level_is_the_films_own():
    """The longitudinal phantom's reports state a size for most graded findings (always on a first study,
    with "now ..." on some follow-ups); where they do, the reader must give the rendered level."""
    from flamingo_lib.data.phantom.evolution import change_key
    from flamingo_lib.data.phantom.render import severity_level
    from flamingo_lib.data.phantom.text import PHANTOM_TO_CHEXPERT
    from flamingo_lib.data.sources import open_source

    graded = {"pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax", "edema": "Edema"}
    data = open_source("phantom:longitudinal", "train", 64, 150, seed=0)
    observations = list(graded.values())
    targets = SeverityTargets(observations)
    stated = known = 0
    for i in range(len(data)):
        sample = data[i]
        truth: dict[str, int] = {}
        for finding in sample.findings:
            name = change_key(finding)
            if name in graded:
                assert graded[name] in PHANTOM_TO_CHEXPERT[name]
                truth[graded[name]] = max(truth.get(graded[name], 0), severity_level(finding.severity))
        read = severity_reading(sample.report)
        for observation, level in truth.items():
            if observation in read:
                stated += 1
                assert read[observation] == level / 2, (sample.report, observation, level)
            carried = targets.study_row(sample)[observations.index(observation)]
            if not math.isnan(carried):
                known += 1
                assert carried == level / 2, (sample.report, observation, level)
    assert stated >= 20 and known > stated  # the prior's sizes add to what the reports state


def test_the_recorded_severity_version_names_todays_reader() -> None:
    # Fails when the severity reader's logic changed: give it a new SEVERITY_RULES_VERSION and record
    # the new SEVERITY_RULES_DIGEST in flamingo_lib/labeling/version.py (runs with the head retrain).
    from flamingo_lib.labeling import version

    assert version.severity_rules_digest() == version.SEVERITY_RULES_DIGEST, (
        f"the severity reader changed (digest {version.severity_rules_digest()}, "
        f"recorded {version.SEVERITY_RULES_DIGEST})")
    assert version.severity_rules_version() == version.SEVERITY_RULES_VERSION
