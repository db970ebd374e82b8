"""The change-guided probe: the joint verdict's changes, their agreement with a report, and the two
choices among candidates (the verdict's and the truth's oracle)."""

from __future__ import annotations

import torch

from experiments.change_guided import (accuracy_of, agreement, change_guided_choice, observation_of, oracle_choice,
                                       verdict_changes)


def test_findings_map_to_their_observation_and_the_joint_presence_gives_the_change():
    assert observation_of("central line") == observation_of("support device") == "Support Devices"
    assert observation_of("consolidation") == "Consolidation" and observation_of("nodule") == "Lung Lesion"
    assert observation_of("scoliosis") is None
    now, before = {"Pleural Effusion", "Cardiomegaly"}, {"Cardiomegaly", "Pneumothorax"}
    assert verdict_changes(now, before, ["pleural effusion", "cardiomegaly", "pneumothorax", "edema", "scoliosis"]) \
        == {"pleural effusion": "new", "cardiomegaly": "unchanged", "pneumothorax": "resolved"}


def test_agreement_counts_the_changes_stated_as_the_verdict_has_them_and_forgives_severity():
    now, before = {"Pleural Effusion", "Cardiomegaly"}, {"Cardiomegaly"}
    assert agreement({"pleural effusion": "new", "cardiomegaly": "unchanged"}, now, before) == 2
    assert agreement({"pleural effusion": "unchanged"}, now, before) == -1
    assert agreement({"cardiomegaly": "increased"}, now, before) == 0  # the verdict knows no severity
    assert agreement({"pneumothorax": "resolved"}, now, before) == -1  # neither study has it
    assert agreement({}, now, before) == 0


def _candidates(options, observations=("Pleural Effusion", "Cardiomegaly"), belief=(0.9, 0.9)):
    from flamingo_lib.inference.guided_decoding import Candidates
    from flamingo_lib.labeling.labeler import label_report

    stated = torch.tensor([[float(label_report(t).get(o) == 1.0) for o in observations] for t in options])
    return Candidates([options], [stated], torch.tensor([belief]), tuple(observations))


def test_the_change_guided_choice_takes_the_report_agreeing_with_the_verdict_and_the_oracle_the_truth():
    options = ["Stable right pleural effusion. Stable cardiomegaly.",  # greedy: calls the new effusion stable
               "New right pleural effusion. Stable cardiomegaly.",
               "Moderate cardiomegaly.",
               "New right pleural effusion. Cardiomegaly has increased."]
    verdict = [({"Pleural Effusion", "Cardiomegaly"}, {"Cardiomegaly"})]
    # option 1 agrees twice (+2); option 3 once, its increase forgiven (+1), and only the truth prefers it
    assert change_guided_choice(_candidates(options), verdict) == [options[1]]
    truth = [{"pleural effusion": "new", "cardiomegaly": "increased"}]
    assert oracle_choice(_candidates(options), truth) == [options[3]]
    # ties of agreement go to the findings the heads believe: the report naming both beats the one naming one
    tied = ["Moderate cardiomegaly.", "Moderate cardiomegaly. Small right pleural effusion."]
    assert change_guided_choice(_candidates(tied), verdict) == [tied[1]]


def test_accuracy_counts_every_true_change_once_and_an_unstated_one_as_wrong():
    from flamingo_lib.labeling.changes import change_accuracy, change_statements

    reports = ["New right pleural effusion. Stable cardiomegaly.", "The pneumothorax has resolved."]
    truths = [{"pleural effusion": "new", "cardiomegaly": "increased"}, {"pneumothorax": "resolved", "edema": "new"}]
    assert accuracy_of([change_statements(r) for r in reports], truths) == change_accuracy(reports, truths)["accuracy"] == 0.5


def test_a_severity_that_moved_past_half_a_level_makes_a_kept_finding_increased_or_decreased():
    from experiments.change_guided import moved_between, stated_reports, true_severity
    from flamingo_lib.data.sample import Finding

    now, before = {"Pleural Effusion", "Cardiomegaly"}, {"Pleural Effusion", "Cardiomegaly"}
    findings = ["pleural effusion", "cardiomegaly"]
    moved = moved_between({"Pleural Effusion": 0.9, "Cardiomegaly": 0.6},
                          {"Pleural Effusion": 0.3, "Cardiomegaly": 0.5})
    assert verdict_changes(now, before, findings, moved) == {"pleural effusion": "increased",
                                                             "cardiomegaly": "unchanged"}  # 0.1: not past 0.25
    assert verdict_changes(now, before, findings, {"Pleural Effusion": -0.5})["pleural effusion"] == "decreased"
    assert verdict_changes({"Cardiomegaly"}, before, findings, {"Pleural Effusion": 0.9})["pleural effusion"] \
        == "resolved"  # severity moves only what both studies keep
    # with the severity known, a stated increase is held to it, not forgiven
    assert agreement({"pleural effusion": "increased"}, now, before, moved) == 1
    assert agreement({"cardiomegaly": "increased"}, now, before, moved) == -1
    truth = [{"pleural effusion": "increased", "cardiomegaly": "unchanged"}]
    assert accuracy_of(stated_reports([(now, before, moved)], truth), truth) == 1.0
    assert accuracy_of(stated_reports([(now, before)], truth), truth) == 0.5
    small = Finding(name="pleural effusion", side="left", zone=None, severity="small", source="effusion")
    large = Finding(name="pleural effusion", side="right", zone=None, severity="large", source="effusion")
    assert true_severity([small]) == {"Pleural Effusion": 0.0}
    assert true_severity([small, large]) == {"Pleural Effusion": 1.0}
