"""The reward of a sampled report: how well it states the findings of the study's *reference
report*, read by the offline labeler (what a real dataset has: never the phantom's image truth).

``clinical_reward`` is the clinical-efficacy F1 of one report against its reference, over the
CheXpert observations (positive = labelled 1.0, as :mod:`flamingo_lib.evaluation.metrics` counts);
two reports that both state nothing agree perfectly (1.0). An optional fluency term adds a weighted
per-report text score (e.g. sentence BLEU-4, :func:`flamingo_lib.evaluation.metrics.sentence_bleu`,
passed in by the caller: evaluation sits above training) so that the wording is rewarded too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS

Labels = Mapping[str, Any]


def stated(labels: Labels, observations: Sequence[str] = CHEXPERT_OBSERVATIONS) -> torch.Tensor:
    """(K,) bool: the observations a reading states as present (labelled 1.0)."""
    return torch.tensor([labels.get(obs) == 1.0 for obs in observations], dtype=torch.bool)


def clinical_reward(report: Labels, reference: Labels, observations: Sequence[str] = CHEXPERT_OBSERVATIONS) -> float:
    """F1 of the findings ``report`` states against those ``reference`` states (both labeler
    readings); 1.0 when neither states any."""
    said, truth = stated(report, observations), stated(reference, observations)
    tp, wrong = int((said & truth).sum()), int((said ^ truth).sum())
    return 1.0 if tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


#: A per-report text score: (references, reports) -> one score per report.
Fluency = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def rewards(reports: Sequence[str], references: Sequence[str], labeler: Callable[[str], Labels],
            reference_labels: Sequence[Labels] | None = None, fluency: Fluency | None = None,
            fluency_weight: float = 0.0) -> torch.Tensor:
    """(N,) the reward of each report against its reference: :func:`clinical_reward`, plus
    ``fluency_weight`` x ``fluency(references, reports)`` when the weight is not 0.

    Args:
        reference_labels: the references' readings, when already known (else read here).

    Raises:
        ValueError: lists of other lengths, or a fluency weight without a fluency scorer.
    """
    if len(reports) != len(references):
        raise ValueError(f"{len(reports)} reports for {len(references)} references")
    truth = reference_labels if reference_labels is not None else [labeler(r) for r in references]
    values = torch.tensor([clinical_reward(labeler(r), t) for r, t in zip(reports, truth)], dtype=torch.float32)
    if fluency_weight:
        if fluency is None:
            raise ValueError(f"fluency_weight={fluency_weight} needs a fluency scorer "
                             "(e.g. flamingo_lib.evaluation.metrics.sentence_bleu)")
        values = values + fluency_weight * torch.tensor(list(fluency(references, reports)), dtype=torch.float32)
    return values
