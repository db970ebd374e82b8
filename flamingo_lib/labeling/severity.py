"""Read how severe a report says each positive observation is: small / moderate / large.

A follow-up's report says "the effusion has increased" when the effusion is larger than on the
prior study, so a reader of the films that is to state the change needs each finding's size on
both studies. Real datasets carry no size labels (MIMIC-CXR-JPG's CheXpert table, IU X-Ray's MeSH
terms say only present or not), but their reports state it: "small left pleural effusion",
"moderate pulmonary edema", "the effusion has increased, now large". This reader takes it from the
text, so a head can learn it from any dataset's reports.

How a report is read: :func:`~flamingo_lib.labeling.labeler.label_report` decides which
observations are positive (negated and hedged mentions state no severity). Each sentence is cut
into clauses at ";", ":" and commas; a clause naming no observation joins the one before, so "The
effusion has increased, now large." is one statement. In each clause, every positive observation
mentioned (:data:`~flamingo_lib.labeling.phrases.MENTIONS`) takes the level of the nearest severity
word (:data:`SEVERITY_WORDS`). A report stating several levels for one observation (one per side)
gives the largest. Observations with no severity word stay unstated ("Stable right pleural
effusion."), and a learner masks them out.

Levels are returned as 0.0 (small, mild), 0.5 (moderate) and 1.0 (large, severe): the scale of a
probability, so a head learns them with a sigmoid and binary cross-entropy on soft targets.

A follow-up's report often states no size but a comparison: "Stable right pleural effusion." Its
size is then the prior study's (:meth:`SeverityTargets.study_row`), read the same way, down the
patient's studies: that way a size is known for most kept findings, and a head learns that an
unchanged finding reads the same on both films.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# the change reader's sentences and the labeler's mention patterns, compiled once for the package
from flamingo_lib.labeling.changes import _SENTENCES, change_statements
from flamingo_lib.labeling.labeler import _MENTION_RES, POSITIVE, label_report

#: Level (0 small/mild, 1 moderate, 2 large/severe) -> the words that state it. "Patchy" and
#: "diffuse" say how a finding is spread, not how severe it is, and are left out.
SEVERITY_WORDS: dict[int, tuple[str, ...]] = {
    0: ("small", "smaller", "trace", "tiny", "minimal", "minimally", "mild", "mildly", "slight", "slightly",
        "faint", "minor", "subtle"),
    1: ("moderate", "moderately", "medium"),
    2: ("large", "larger", "severe", "severely", "marked", "markedly", "extensive", "massive", "substantial",
        "sizable", "sizeable", "big"),
}
#: The level's value on the [0, 1] scale a head predicts.
LEVEL_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0)

_WORD_LEVEL = {word: level for level, words in SEVERITY_WORDS.items() for word in words}
_SEVERITY_RE = re.compile(r"\b(" + "|".join(sorted(_WORD_LEVEL, key=len, reverse=True)) + r")\b")
#: Findings named by :func:`~flamingo_lib.labeling.changes.change_statements` -> their observation.
CHANGE_OBSERVATIONS: dict[str, str] = {
    "pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax", "cardiomegaly": "Cardiomegaly",
    "edema": "Edema", "consolidation": "Consolidation", "pneumonia": "Pneumonia", "atelectasis": "Atelectasis",
    "opacity": "Lung Opacity", "nodule": "Lung Lesion", "mass": "Lung Lesion", "granuloma": "Lung Lesion",
    "fracture": "Fracture",
}
_CLAUSES = re.compile(r"[;:,]")


def _clauses(sentence: str) -> list[str]:
    """``sentence`` cut at clause breaks, a clause naming no observation joined to the one before."""
    merged: list[str] = []
    for part in _CLAUSES.split(sentence):
        if merged and not any(r.search(part) for r in _MENTION_RES.values()):
            merged[-1] += " , " + part
        else:
            merged.append(part)
    return merged


def severity_reading(report: str, labels: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Observation -> stated level (0.0, 0.5 or 1.0) for each positive observation the report
    gives a severity word to (see the module docstring).

    Args:
        report: the report text (any case).
        labels: the labeler's reading of ``report`` when already at hand (observation -> 1.0 positive).
    """
    labels = label_report(report) if labels is None else labels
    positive = {obs for obs, value in labels.items() if value == POSITIVE and obs in _MENTION_RES}
    levels: dict[str, int] = {}
    for sentence in _SENTENCES.split(report.lower()):
        for clause in _clauses(sentence):
            words = [(m.start(), m.end(), _WORD_LEVEL[m.group(1)]) for m in _SEVERITY_RE.finditer(clause)]
            if not words:
                continue
            for obs in positive:
                mention = _MENTION_RES[obs].search(clause)
                if mention is None:
                    continue
                level = min(words, key=lambda w: max(w[0] - mention.end(), mention.start() - w[1], 0))[2]
                levels[obs] = max(level, levels.get(obs, 0))
    return {obs: LEVEL_VALUES[level] for obs, level in levels.items()}


class SeverityTargets:
    """Reports -> (K,) severity targets per observation: :func:`severity_reading`'s levels, NaN where
    the report states none (the observation is absent, or present without a severity word).

    Args:
        observations: the head's observations, in order.
        labeler: report text -> labels (the rule-based labeler by default).
    """

    def __init__(self, observations: Sequence[str], labeler: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        self.observations, self.labeler = tuple(observations), labeler or label_report
        self._read: dict[str, list[float]] = {}

    def study_row(self, sample: Any) -> list[float]:
        """(K,) the levels of a study (anything with ``report`` and ``prior``, a study or None): its
        report's (:meth:`row`), and where it states none for an observation it states "unchanged"
        of, its prior study's, read the same way down the patient's studies."""
        row = list(self.row(sample.report))
        prior = getattr(sample, "prior", None)
        if prior is None or not any(math.isnan(v) for v in row):
            return row
        unchanged = {CHANGE_OBSERVATIONS[f] for f, change in change_statements(sample.report).items()
                     if change == "unchanged" and f in CHANGE_OBSERVATIONS}
        if not unchanged:
            return row
        before = self.study_row(prior)
        return [before[j] if math.isnan(v) and obs in unchanged else v
                for j, (obs, v) in enumerate(zip(self.observations, row))]

    def row(self, report: str) -> list[float]:
        """(K,) the levels of one report, NaN where unstated (memoised: training reads each report once
        per epoch)."""
        if report not in self._read:
            if len(self._read) >= 50_000:
                self._read.clear()
            stated = severity_reading(report, self.labeler(report))
            self._read[report] = [stated.get(obs, float("nan")) for obs in self.observations]
        return self._read[report]
