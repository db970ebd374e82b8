"""The guided-draws diagnostic: the library's rule on one draw, scored against both yardsticks."""

from __future__ import annotations

import pytest
import torch

from experiments.guided_draws import score_draw
from flamingo_lib.inference.guided_decoding import Candidates

OBS = ("Edema", "Pleural Effusion")


def _candidates(reports: list[list[str]], probabilities: list[list[float]]) -> Candidates:
    def stated(text: str) -> list[float]:
        return [float("edema" in text), float("effusion" in text)]

    return Candidates(reports, [torch.tensor([stated(t) for t in options]) for options in reports],
                      torch.tensor(probabilities), OBS)


def labeler(text: str) -> dict[str, float]:
    return {"Edema": float("edema" in text), "Pleural Effusion": float("effusion" in text)}


def test_the_threshold_comes_from_val_and_the_test_reports_are_scored_against_both_yardsticks():
    # val: the head is right at 0.6 and the sampled report states it: a threshold above 0.6 loses it
    val = _candidates([["normal.", "edema."]], [[0.6, 0.0]])
    val_truth = [{"Edema": 1.0}]
    # test: the head believes in effusion (0.9) and doubts edema (0.2)
    test = _candidates([["normal.", "effusion.", "edema and effusion."]], [[0.2, 0.9]])
    row = score_draw(val, val_truth, test, [{"Pleural Effusion": 1.0}], [{"Edema": 1.0, "Pleural Effusion": 1.0}],
                     labeler=labeler)
    assert row["threshold"] < 0.6 and row["val"] == 1.0
    # threshold 0.1 (ties go to the smallest): "edema and effusion." scores 0.1 + 0.8 > 0.8
    assert row["threshold"] == 0.1
    assert row["vs image truth"] == pytest.approx(2 / 3)  # edema is a false positive against the image
    assert row["vs reference"] == 1.0  # the reference's reading names both
