"""The findings head's training targets: a study's own labels, the labeler's reading of its report,
or both (:class:`FindingTargets`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from flamingo_lib.labeling.labeler import label_report

#: Where the head's targets come from (:meth:`FindingTargets.for_samples`).
FINDINGS_TARGET_SOURCES: tuple[str, ...] = ("labels", "reports", "both")


class FindingTargets:
    """Report text -> (K,) targets: 1.0 where the labeler reads the observation as positive
    (uncertain and negative mentions are 0, as in the clinical-efficacy convention); memoised,
    since a training run reads each report once per epoch. :meth:`for_samples` prefers a study's
    own labels.

    Args:
        observations: the head's observations, in order.
        labeler: report text -> labels; defaults to the rule-based labeler.
    """

    #: readings kept (~100 bytes each with the text's key): the phantom's and IU X-Ray's reports all fit
    MEMO_SIZE = 50_000

    def __init__(self, observations: Sequence[str], labeler: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        if labeler is None:
            labeler = label_report
        self.observations, self.labeler = tuple(observations), labeler
        self._read: dict[str, torch.Tensor] = {}  # report -> reading, least recently read first
        self._severity: Any = None  # the severity reader, made when first asked

    def __call__(self, reports: Sequence[str]) -> torch.Tensor:
        """(B,) reports -> (B, K) float targets."""
        return self._stack([self._reading(report) for report in reports])

    def _positives(self, labels: Mapping[str, Any]) -> torch.Tensor:
        """(K,): 1.0 where ``labels`` says positive (exactly 1.0)."""
        return torch.tensor([float(labels.get(obs) == 1.0) for obs in self.observations])

    def _reading(self, report: str) -> torch.Tensor:
        """(K,) positives of the labeler's reading of ``report``, read once while it is among the
        ``MEMO_SIZE`` most recently read (bounded: MIMIC-CXR has ~220k distinct reports)."""
        reading = self._read.pop(report, None)
        if reading is None:
            reading = self._positives(self.labeler(report))
            if len(self._read) >= self.MEMO_SIZE:
                del self._read[next(iter(self._read))]  # the least recently read (dicts keep insertion order)
        self._read[report] = reading  # re-inserted: now the most recent
        return reading

    def _stack(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(rows)) if rows else torch.zeros(0, len(self.observations))

    def for_samples(self, samples: Sequence[Any], source: str = "labels") -> torch.Tensor:
        """(B,) studies -> (B, K) float targets.

        Args:
            source: ``"reports"``: the labeler's reading of each report. ``"labels"``: each study's own
                ``labels`` (the dataset's: the phantom's image truth, MIMIC-CXR-JPG's CheXpert table,
                IU X-Ray's MeSH terms; positive = 1.0). ``"both"``: their mean, so the head learns the
                average of the two probabilities (0.5 where they disagree). A study with no labels at
                all (every value ``None``) gets the reading whatever the source.

        Why the labels: the head is the judge of findings-guided decoding, and a report's wording is
        a noisy copy of what the image shows (hedged findings read as uncertain, a parent observation
        left unnamed). Why both: a report is scored against the image and against the reference's
        wording, and with the mean the judge weighs the two equally.
        """
        if source not in FINDINGS_TARGET_SOURCES:
            raise ValueError(f"findings targets come from one of {FINDINGS_TARGET_SOURCES}, got {source!r}")
        rows = []
        for sample in samples:
            labels = getattr(sample, "labels", None) or {}
            if source == "reports" or not any(value is not None for value in labels.values()):
                rows.append(self._reading(sample.report))
                continue
            own = self._positives(labels)
            rows.append(own if source == "labels" else (own + self._reading(sample.report)) / 2)
        return self._stack(rows)

    def severities(self, samples: Sequence[Any]) -> torch.Tensor:
        """(B,) studies -> (B, K) the severity each report states per observation (0, 0.5 or 1;
        :mod:`flamingo_lib.labeling.severity`; the prior study's where the report calls the finding
        unchanged without a size), NaN where none is known: the targets of a severity
        head (``FlamingoConfig.severity_head``), read from the report on every dataset, since none
        labels sizes."""
        if self._severity is None:
            from flamingo_lib.labeling.severity import SeverityTargets

            self._severity = SeverityTargets(self.observations, self.labeler)
        rows = [torch.tensor(self._severity.study_row(sample)) for sample in samples]
        return torch.stack(rows) if rows else torch.zeros(0, len(self.observations))

    def with_readings(self, samples: Sequence[Any], source: str = "labels") -> torch.Tensor:
        """(B,) studies -> (B, 2K) targets of a head with readings (``FlamingoConfig.reading_head``):
        those of ``source`` (:meth:`for_samples`), then the labeler's reading of each report."""
        return torch.cat([self.for_samples(samples, source), self.for_samples(samples, "reports")], 1)
