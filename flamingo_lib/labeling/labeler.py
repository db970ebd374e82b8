"""An offline, rule-based CheXpert-style labeler for chest X-ray reports.

``label_report`` maps a report to the 14 CheXpert observations: 1.0 positive, 0.0 negative,
-1.0 uncertain, ``None`` not mentioned. The phrase lists are our own. It works sentence by
sentence (full stops, new lines, numbered items) and clause by clause:

1. Mentions of each observation are found with :data:`MENTIONS`.
2. Each mention is graded by the nearest cue before it in its clause, a negation or an
   uncertainty (:data:`NEGATION_PRE`, :data:`UNCERTAINTY_PRE`) at most :data:`SCOPE_WORDS`
   words away; a list carries the cue of its first item along while items stay within
   :data:`CHAIN_WORDS` words of each other, so "no consolidation, suspicious opacity, large
   effusion, or pneumothorax" negates all four. A cue just after the mention also counts
   (:data:`NEGATION_POST`, :data:`UNCERTAINTY_POST`: "is not seen", "cannot be excluded"), and
   so does one inside a predicate mention ("the heart is not enlarged"). Uncertainty beats
   negation. Clauses end at ";", ":", "but", "however", ... (:data:`SCOPE_BREAKS`), so no scope
   crosses them. Look-alikes such as "no change" or "age-indeterminate" are masked first
   (:data:`PSEUDO_NEGATION`). "To suggest" and kin (:data:`SUGGESTION`) are uncertain unless a
   negation governs them: "no consolidation to suggest pneumonia" negates pneumonia.
3. Normal statements ("heart size is normal", "lungs are clear") give 0.0 (:data:`NORMALS`).
4. Mentions are aggregated as the CheXpert labeler's aggregator does: any positive mention
   wins, else any uncertain one, else negative.
5. "No Finding" is derived as CheXpert derives it: 1.0 when no observation other than Support
   Devices is positive or uncertain, else ``None`` (CheXpert never writes 0 there). A text with
   no words at all gets ``None`` everywhere.

Choices of our own: "borderline" cardiomegaly is a degree, hence positive (as the IU MeSH
annotators and :class:`~flamingo_lib.data.sample.Finding` severities treat it), not a hedge;
and unlike the CheXpert labeler we add no uncertain Cardiomegaly for "heart failure", which
speaks of the lungs' congestion (Edema here), not of the heart's size on the film.

De-identification tokens (``XXXX`` in IU reports) stay plain words: they never match a phrase
and count as one word of scope, so "no XXXX of pleural effusion" is still negated.

``label_reports(..., backend="chexbert")`` runs CheXbert through the ``f1chexbert`` package
when it and its weights are already on this machine; it never downloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Label
from flamingo_lib.labeling.phrases import (
    CHAIN_WORDS,
    MENTIONS,
    NEGATION_POST,
    NEGATION_PRE,
    NORMALS,
    POST_WORDS,
    PSEUDO_NEGATION,
    SCOPE_BREAKS,
    SCOPE_WORDS,
    SUGGESTION,
    UNCERTAINTY_POST,
    UNCERTAINTY_PRE,
)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

# "Upper limits of normal" reads as borderline enlargement, not as a normal heart.
_NOT_NORMAL = re.compile(r"\b(?:upper|high|top)\b")


def _alternation(phrases: Iterable[str]) -> str:
    return r"\b(?:" + "|".join(f"(?:{p})" for p in phrases) + r")(?!\w)"


_MENTION_RES = {obs: re.compile(_alternation(p)) for obs, p in MENTIONS.items()}
_NORMAL_RES = {obs: re.compile(_alternation(p)) for obs, p in NORMALS.items()}
# Uncertainty is tried first so that "cannot exclude" is not read as the negation "not".
_PRE_CUE_RE = re.compile(
    "(?P<unc>" + _alternation(UNCERTAINTY_PRE)
    + ")|(?P<sug>" + _alternation(SUGGESTION)
    + ")|(?P<neg>" + _alternation(NEGATION_PRE) + ")"
)
_POST_CUE_RE = re.compile(
    "(?P<unc>" + _alternation(UNCERTAINTY_POST) + ")|(?P<neg>" + _alternation(NEGATION_POST) + ")"
)
_PSEUDO_RE = re.compile(_alternation(PSEUDO_NEGATION))
_SCOPE_BREAK_RE = re.compile("|".join(SCOPE_BREAKS))
_IN_SPAN_NEG = re.compile(r"\b(?:not|no|without)\b")
_IN_SPAN_UNC = re.compile(r"\b(?:possibl[ey]|questionabl[ey]|may|might|could)\b")
# Sentence ends: a full stop before space or end (not a decimal point), "!", "?" kept as a cue,
# newlines, and numbered-list markers ("... disease 2. Cardiomegaly").
_SENTENCE_RE = re.compile(r"\.(?=\s|$)|!|\n+|\s\d{1,2}[.)]\s")
_WORD_RE = re.compile(r"[\w?]+")
_ADJACENT_ONLY = re.compile(r"versus|vs|\?")
_PREDICATE_OBSERVATIONS = frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum", "Edema"})
# (start, end, kind) of a cue in a clause; kind is "neg", "unc" or "sug".
_Cue = tuple[int, int, str]


def _words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _pre_kind(clause: str, cues: list[_Cue], start: int) -> str | None:
    """Kind of the nearest cue governing a mention at ``start``, or None."""
    before = [c for c in cues if c[1] <= start and _words(clause[c[1]:start]) <= SCOPE_WORDS]
    if not before:
        return None
    cue_start, _, kind = before[-1]
    if kind == "sug":
        governed = any(
            k == "neg" and e <= cue_start and _words(clause[e:cue_start]) <= SCOPE_WORDS
            for _, e, k in cues
        )
        kind = "neg" if governed else "unc"
    return kind


def _post_kind(clause: str, posts: list[_Cue], end: int) -> str | None:
    """Kind of a cue right after a mention ending at ``end``, or None."""
    after = [p for p in posts if p[0] >= end and _words(clause[end:p[0]]) <= POST_WORDS]
    if not after:
        return None
    cue_start, cue_end, kind = after[0]
    # "A versus B" hedges A only when the two are adjacent.
    if _ADJACENT_ONLY.fullmatch(clause[cue_start:cue_end]) and _words(clause[end:cue_start]):
        return None
    return kind


def _label_clause(clause: str, found: dict[str, list[float]]) -> None:
    masked = _PSEUDO_RE.sub(lambda m: " " * len(m.group()), clause)
    cues = [(m.start(), m.end(), m.lastgroup or "") for m in _PRE_CUE_RE.finditer(masked)]
    posts = [(m.start(), m.end(), m.lastgroup or "") for m in _POST_CUE_RE.finditer(masked)]
    mentions = sorted(
        (m.start(), m.end(), obs) for obs, regex in _MENTION_RES.items() for m in regex.finditer(masked)
    )
    chain: str | None = None
    chain_end = 0
    for start, end, obs in mentions:
        kind = _pre_kind(masked, cues, start)
        # A list carries its cue along: "no consolidation, suspicious opacity, large effusion,
        # or pneumothorax" negates every item however long the list grows.
        if kind is None and chain and _words(masked[chain_end:start]) <= CHAIN_WORDS:
            kind = chain
        chain, chain_end = kind, max(end, chain_end)
        kinds = {kind, _post_kind(masked, posts, end)}
        span = masked[start:end]
        # Predicate mentions ("the heart is not enlarged") hold their own cue.
        if " " in span and obs in _PREDICATE_OBSERVATIONS:
            kinds.add("neg" if _IN_SPAN_NEG.search(span) else None)
            kinds.add("unc" if _IN_SPAN_UNC.search(span) else None)
        grade = UNCERTAIN if "unc" in kinds else NEGATIVE if "neg" in kinds else POSITIVE
        found.setdefault(obs, []).append(grade)
    for obs, regex in _NORMAL_RES.items():
        for m in regex.finditer(masked):
            if not _NOT_NORMAL.search(m.group()):
                found.setdefault(obs, []).append(NEGATIVE)


def _aggregate(grades: list[float]) -> float:
    # CheXpert's rule: any positive mention wins, then any uncertain one, else negative.
    if POSITIVE in grades:
        return POSITIVE
    return UNCERTAIN if UNCERTAIN in grades else NEGATIVE


def label_report(text: str) -> dict[str, Label]:
    """Label one report with the 14 CheXpert observations.

    Args:
        text: report text (any case; ``XXXX`` de-identification tokens allowed).

    Returns:
        Observation -> 1.0 / 0.0 / -1.0 / ``None``, keyed by all of
        :data:`CHEXPERT_OBSERVATIONS` in order.

    Raises:
        TypeError: if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"report text must be a str, got {type(text).__name__}")
    # Collapse spaces but keep line breaks: a new line ends a sentence.
    lowered = re.sub(r"[^\S\n]+", " ", text.lower())
    labels: dict[str, Label] = dict.fromkeys(CHEXPERT_OBSERVATIONS)
    if not re.search(r"[a-z]", lowered.replace("xxxx", "")):
        return labels
    found: dict[str, list[float]] = {}
    for sentence in _SENTENCE_RE.split(lowered):
        for clause in _SCOPE_BREAK_RE.split(sentence):
            if clause and clause.strip():
                _label_clause(clause, found)
    for obs, grades in found.items():
        labels[obs] = _aggregate(grades)
    findings = [labels[o] for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    if not any(v in (POSITIVE, UNCERTAIN) for v in findings):
        labels["No Finding"] = POSITIVE
    return labels


def label_reports(texts: Iterable[str], backend: str = "rules") -> list[dict[str, Label]]:
    """Label many reports.

    Args:
        texts: report texts.
        backend: ``"rules"`` for :func:`label_report`, or ``"chexbert"`` for CheXbert via
            the ``f1chexbert`` package, which must be installed with its weights already in
            the local Hugging Face cache.

    Returns:
        One label dict per text, in order, as :func:`label_report` returns.

    Raises:
        ValueError: for an unknown backend.
        TypeError: if ``texts`` is a single string.
        RuntimeError: if the chexbert backend's package or weights are missing.
    """
    if isinstance(texts, str):
        raise TypeError("label_reports expects an iterable of texts, not a single str")
    if backend == "rules":
        return [label_report(t) for t in texts]
    if backend == "chexbert":
        from flamingo_lib.labeling.chexbert import chexbert_label, chexbert_labeler

        model = chexbert_labeler()
        return [chexbert_label(model, t) for t in texts]
    raise ValueError(f"unknown labeler backend {backend!r}; use 'rules' or 'chexbert'")
