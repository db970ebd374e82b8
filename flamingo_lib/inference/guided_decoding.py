"""Findings-guided decoding: choose among sampled reports the one the findings head agrees with.

Greedy decoding writes a finding only when its phrasing beats every normal phrasing, and the
text follows fewer findings than the resampled latents carry (docs/results.md). The model's own findings head (:mod:`flamingo_lib.modeling.heads.findings`) reads the latents
directly. For each study, the greedy report and ``num_candidates`` sampled reports are read by
the labeler, and the one with the highest

    score = sum over the head's observations the report states of (probability - threshold)

is kept: each stated finding earns what the head believes of it beyond the threshold, and costs
where the head doubts it. Ties keep the greedy report. The threshold is picked on a validation
split (:func:`tune_threshold`), never on the test split.

A model with a reading head (``FlamingoConfig.reading_head``) also predicts, per observation, the
probability that the study's report *states* it, and the belief in the score is then the mean of
the two probabilities: a report is weighed equally against what the image shows and against what
a radiologist writes (a hedged atelectasis, an enlarged cardiomediastinum left unnamed beside
cardiomegaly), the two yardsticks of clinical efficacy (the image's labels, and the labeler's
reading of the reference report). (Two thresholds, one per head, would add nothing: with equal
weights the score depends on their sum only.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from flamingo_lib.inference.batched import generate_in_batches
from flamingo_lib.labeling.scores import micro_f1

Labels = Mapping[str, Any]

#: The name of the findings-guided system in evaluation tables (beside "flamingo": greedy).
SYSTEM_NAME = "flamingo, findings-guided"
#: Where a run records how its guided reports were made (``eval/``; threshold, candidates, temperature).
GUIDED_SETUP_FILE = "guided_decoding.json"


@dataclass
class Candidates:
    """Per study: its candidate reports (greedy first), their labels and the head's probabilities."""

    reports: list[list[str]]
    stated: list[torch.Tensor]  # per study (1 + num_candidates, K): 1.0 where a report states it
    probabilities: torch.Tensor  # (N, K): the findings head's
    observations: tuple[str, ...]
    reading_probabilities: torch.Tensor | None = None  # (N, K): the reading head's, when the model has one

    @property
    def belief(self) -> torch.Tensor:
        """(N, K) what the score weighs: the findings head's probabilities, or with a reading head
        the mean of both heads' (image and report weighed equally)."""
        if self.reading_probabilities is None:
            return self.probabilities
        return (self.probabilities + self.reading_probabilities) / 2


@torch.no_grad()
def sample_candidates(model: Any, processor: Any, samples: Sequence[Any], num_candidates: int = 16,
                      labeler: Callable[[str], Labels] | None = None, batch_size: int = 4,
                      max_new_tokens: int = 60, seed: int = 0, progress: bool = True,
                      temperature: float = 1.0, top_p: float = 1.0) -> Candidates:
    """The greedy report, ``num_candidates`` sampled reports (``temperature``, nucleus ``top_p``)
    and the findings head's probabilities (and the reading head's, when the model has one) of every
    study; the caller's RNG state is left alone.

    Raises:
        ValueError: the model has no findings head, ``num_candidates`` < 1, ``temperature`` <= 0 or
            ``top_p`` outside (0, 1].
    """
    if model.config.findings_head is None:
        raise ValueError("findings-guided decoding needs a model with a findings head (config.findings_head)")
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    observations = tuple(model.config.findings_head)
    device = next(model.parameters()).device
    # Greedy decoding and the heads draw no random numbers: the sampled candidates are those of a
    # loop that interleaves the three per batch.
    greedy = generate_in_batches(model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 heads=True, progress=progress, desc="guided decoding: greedy and heads")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        sampled = generate_in_batches(model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                      progress=progress, desc="guided decoding: candidates", do_sample=True, top_k=0,
                                      top_p=top_p, temperature=temperature, num_return_sequences=num_candidates).reports
    reports, stated = [], []
    for i in range(len(samples)):
        options = [greedy.reports[i], *sampled[i * num_candidates:(i + 1) * num_candidates]]
        reports.append(options)
        read = [labeler(text) for text in options]
        stated.append(torch.tensor([[float(r.get(obs) == 1.0) for obs in observations] for r in read]))
    return Candidates(reports, stated, greedy.findings, observations, greedy.readings)


def findings_scores(stated: torch.Tensor, belief: torch.Tensor, threshold: float) -> torch.Tensor:
    """(C,) each candidate's score: the sum, over the findings it states ((C, K) ``stated``), of
    (``belief`` - ``threshold``), ``belief`` (K,) the heads' (:attr:`Candidates.belief`)."""
    return (stated * (belief - threshold)).sum(1)


def _pick(stated: torch.Tensor, belief: torch.Tensor, threshold: float) -> int:
    """Index of the best-scoring candidate; ``argmax`` returns the first maximum (greedy first)."""
    return int(findings_scores(stated, belief, threshold).argmax())


def choose(candidates: Candidates, threshold: float) -> list[str]:
    """One report per study: the candidate with the highest score (ties: the earliest, greedy first)."""
    return [options[_pick(stated, belief, threshold)]
            for options, stated, belief in zip(candidates.reports, candidates.stated, candidates.belief)]


def tune_threshold(candidates: Candidates, truth: Sequence[Labels], observations: Sequence[str] | None = None,
                   grid: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)) -> tuple[float, dict[float, float]]:
    """The threshold of ``grid`` whose chosen reports score the best micro-F1 against ``truth``
    over ``observations`` (default: the head's), on a validation split.

    Returns:
        (best threshold, {threshold: micro-F1}); ties go to the smaller threshold.
    """
    columns = [candidates.observations.index(obs) for obs in (observations or candidates.observations)]
    target = torch.tensor([[float(t.get(candidates.observations[j]) == 1.0) for j in columns] for t in truth])
    scores = {}
    for threshold in grid:
        picked = [stated[_pick(stated, belief, threshold)]
                  for stated, belief in zip(candidates.stated, candidates.belief)]
        scores[threshold] = micro_f1(torch.stack(picked)[:, columns], target)
    best = max(grid, key=lambda t: (scores[t], -t))
    return best, scores


class GuidedReports(NamedTuple):
    """What :func:`guided_reports` made: one report per test study, the protocol note, and the
    threshold picked on the val split with the micro-F1 of every threshold tried there."""

    reports: list[str]
    note: str
    threshold: float
    val_micro_f1: dict[float, float]


def guided_reports(model: Any, processor: Any, val_samples: Sequence[Any], val_truth: Sequence[Labels],
                   test_samples: Sequence[Any], observations: Sequence[str] | None = None,
                   num_candidates: int = 16, temperature: float = 1.0, top_p: float = 1.0,
                   **sampling: Any) -> GuidedReports:
    """Findings-guided reports for ``test_samples``, the threshold picked on ``val_samples``.

    Args:
        val_truth: the val studies' labels (image truth, or the labeler's reading of the reference).
        observations: the ones the threshold is picked on (default: the head's).
        temperature, top_p: how the candidates are sampled.
        sampling: passed to :func:`sample_candidates` (``max_new_tokens``, ``seed``, ``progress``...).

    Returns:
        :class:`GuidedReports`: the reports, a protocol note saying how they were made, the threshold.
    """
    sampling |= {"temperature": temperature, "top_p": top_p}
    val = sample_candidates(model, processor, val_samples, num_candidates, **sampling)
    threshold, scores = tune_threshold(val, val_truth, observations)
    test = sample_candidates(model, processor, test_samples, num_candidates, **sampling)
    belief = ("the mean of the findings head's and the reading head's probabilities"
              if val.reading_probabilities is not None else "findings-head probability")
    note = (f"'{SYSTEM_NAME}': per study, the greedy report and {num_candidates} sampled reports "
            f"(temperature {temperature}, top-p {top_p}), read by the labeler; kept: the one maximising the sum, "
            f"over the findings it states, of ({belief} - threshold); threshold {threshold} picked on the val "
            f"split ({len(val_samples)} studies; findings micro-F1 per threshold: "
            + ", ".join(f"{t}: {f:.3f}" for t, f in scores.items()) + ").")
    return GuidedReports(choose(test, threshold), note, threshold, scores)
