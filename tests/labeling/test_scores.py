"""One precision/recall/F1 for every table and choice."""

from __future__ import annotations

import torch

from flamingo_lib.labeling.scores import micro_f1, precision_recall_f1


def test_counts_give_precision_recall_and_f1() -> None:
    assert precision_recall_f1(3, 1, 2) == (0.75, 0.6, 6 / 9)
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)  # nothing stated, nothing true
    assert precision_recall_f1(0, 2, 0) == (0.0, 0.0, 0.0)


def test_equal_fractions_are_equal_floats_so_ties_stay_ties() -> None:
    # F1 = 1/3 both times; through rounded precision (1) and recall (1/5) the second came out
    # 0.33333333333333337, which would break a tie between them by rounding.
    assert precision_recall_f1(1, 2, 2)[2] == precision_recall_f1(1, 0, 4)[2] == 1 / 3


def test_micro_f1_pools_every_entry_of_the_tables() -> None:
    stated = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    truth = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert micro_f1(stated, truth) == precision_recall_f1(2, 1, 1)[2] == 2 / 3
