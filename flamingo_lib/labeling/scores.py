"""Precision, recall and F1 from counts: the one definition every table and choice here uses.

F1 is computed as ``2 tp / (2 tp + fp + fn)`` rather than from the rounded precision and recall,
so two count triples with the same F1 as a fraction get the same float: a choice between them
(findings-guided decoding's threshold on its validation split) is a true tie, decided by its
tie rule and never by rounding. An empty denominator scores 0.
"""

from __future__ import annotations

import torch


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """``(precision, recall, f1)`` of the counts (each 0 where its denominator is 0)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


def micro_f1(stated: torch.Tensor, truth: torch.Tensor) -> float:
    """Micro-F1 of 0/1 tensors of the same shape (e.g. ``(studies, observations)``), pooled over
    every entry."""
    stated, truth = stated.bool(), truth.bool()
    tp = int((stated & truth).sum())
    fp = int((stated & ~truth).sum())
    fn = int((~stated & truth).sum())
    return precision_recall_f1(tp, fp, fn)[2]
