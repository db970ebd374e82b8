"""Read the comparison statements of a follow-up report: which finding it says changed, and how.

:func:`change_statements` maps a report to ``{finding: change}``, with ``change`` one of
:data:`CHANGES` and ``finding`` a name of the phantom's finding vocabulary (the keys of
``meta["changes"]`` of :class:`~flamingo_lib.data.phantom.longitudinal.LongitudinalPhantomCXR`):
``"pleural effusion"``, ``"cardiomegaly"``, ``"consolidation"``, ... and, for support devices,
their type (``"central line"``, ``"endotracheal tube"``, ``"nasogastric tube"``,
``"pacemaker"``; an untyped ``"support device"`` otherwise). :func:`change_accuracy` scores
reports against such ground truth.

How a report is read, sentence by sentence:

1. Finding mentions are found with :data:`FINDING_PATTERNS` (for most findings the
   labeler's own phrases, :data:`~flamingo_lib.labeling.phrases.MENTIONS`), change words with
   :data:`CHANGE_PATTERNS` and their synonyms ("stable", "no change", "again seen",
   "persistent" -> unchanged; "larger", "worse", "enlarging" -> increased; "smaller",
   "improved", "decreasing" -> decreased; "no longer seen", "removed", "cleared" -> resolved;
   "interval placement" -> new).
2. A sentence is cut into clauses at ";", ":", commas, "but", "however", "whereas", "while";
   a clause that mentions no finding joins the clause before it, so "The effusion, now
   moderate, has increased" stays one statement.
3. A mention directly negated ("no pleural effusion", "no new consolidation", "without
   effusion") states no change. Every other mention takes the change word of its clause,
   the nearest one when the clause has several; a mention in a clause without a change word
   states no change ("Small left pleural effusion." describes, it does not compare).
4. A generic mention yields to a specific one in the same sentence: "opacity" to any
   named lung finding ("airspace opacity, concerning for pneumonia" is pneumonia),
   "consolidation" to "pneumonia", "support device" to a named device.
5. When a report states several changes for one finding (e.g. per side), a change other
   than "unchanged" wins, else the first stated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flamingo_lib.labeling.phrases import MENTIONS

#: The changes a comparison statement can make, in the words of ``meta["changes"]``.
CHANGES: tuple[str, ...] = ("new", "increased", "decreased", "unchanged", "resolved")

#: Finding name -> regular expressions (lower-cased text, between word boundaries) mentioning it.
FINDING_PATTERNS: dict[str, tuple[str, ...]] = {
    "pleural effusion": MENTIONS["Pleural Effusion"],
    "pneumothorax": MENTIONS["Pneumothorax"],
    "cardiomegaly": MENTIONS["Cardiomegaly"],
    "edema": MENTIONS["Edema"],
    "consolidation": MENTIONS["Consolidation"],
    "pneumonia": MENTIONS["Pneumonia"][:1],  # not "infection", which names no film finding
    "atelectasis": MENTIONS["Atelectasis"],
    "fracture": MENTIONS["Fracture"],
    "opacity": (
        r"opaci(?:ty|ties|fication|fications|fied)", r"infiltrat(?:e|es|ion|ions|ive)",
        r"air[- ]?space (?:disease|process|filling)", r"haz(?:y|iness)", r"ground[- ]glass",
    ),
    "nodule": (r"nodules?", r"nodular (?:densit(?:y|ies)|opaci(?:ty|ties|fication))"),
    "mass": (r"mass(?:es)?(?! effect)",),
    "granuloma": (r"granulomas?|granulomata|granulomatous (?:disease|calcifications?|nodules?)",),
    "emphysema": (r"emphysema(?:tous)?", r"hyperinflat(?:ed|ion)", r"hyperexpan(?:ded|sion)", r"copd"),
    "scoliosis": (r"scolio(?:sis|tic)",),
    "pacemaker": (r"pacemakers?|pacers?|(?:pacing|pacer) (?:leads?|wires?|device)|aicd|defibrillators?",),
    "central line": (
        r"(?:central|venous|picc|jugular|subclavian|dialysis) (?:venous )?(?:line|catheter)s?",
        r"picc|cvc|port-?a-?cath|portacath",
    ),
    "endotracheal tube": (r"endotracheal tubes?|et tubes?|ett",),
    "nasogastric tube": (r"(?:nasogastric|orogastric|enteric|feeding|ng|og) tubes?|dobhoff",),
    "support device": (r"support devices?|lines and tubes|tubes and lines",),
}

#: Change -> regular expressions of the words stating it.
CHANGE_PATTERNS: dict[str, tuple[str, ...]] = {
    "new": (
        r"new(?:ly)?(?: (?:placed|inserted|seen|appearing))?",
        r"interval (?:placement|insertion|development|appearance)",
        r"(?:has|have) (?:been )?(?:placed|inserted|developed)",
    ),
    "increased": (r"increas(?:ed|ing|e)", r"larger", r"worse(?:ned|ning)?", r"enlarging",
                  r"progress(?:ed|ing|ion)"),
    "decreased": (r"decreas(?:ed|ing|e)", r"smaller", r"improv(?:ed|ing|ement)", r"reduc(?:ed|tion)",
                  r"resolving", r"diminish(?:ed|ing)"),
    "unchanged": (
        r"unchanged|stable|similar", r"no (?:significant |appreciable |substantial |interval )?change",
        r"not (?:significantly )?changed", r"without (?:significant |interval )?change",
        r"again (?:seen|noted|demonstrated|visualized)", r"redemonstrat(?:ed|es|ion)",
        r"persist(?:s|ent|ently|ing)?",
    ),
    "resolved": (
        r"resolved|resolution|cleared",
        r"no longer (?:seen|visible|visualized|present|identified|evident|demonstrated)",
        r"(?:has |have )?been removed|removal|removed",
    ),
}

# Specific -> the generic names it overrides within a sentence.
_GENERIC: dict[str, frozenset[str]] = {
    "opacity": frozenset({"pneumonia", "consolidation", "edema", "atelectasis", "nodule", "mass", "granuloma"}),
    "consolidation": frozenset({"pneumonia"}),
    "support device": frozenset({"pacemaker", "central line", "endotracheal tube", "nasogastric tube"}),
}


def _alternation(patterns: Iterable[str]) -> str:
    return r"\b(?:" + "|".join(f"(?:{p})" for p in patterns) + r")(?!\w)"


_FINDING_RES = {name: re.compile(_alternation(p)) for name, p in FINDING_PATTERNS.items()}
_CHANGE_RE = re.compile("|".join(f"(?P<{c}>{_alternation(p)})" for c, p in CHANGE_PATTERNS.items()))
# A negation right before a mention or a "new" ("no pleural effusion", "no new consolidation").
_NEGATED = re.compile(r"\b(?:no|without|negative for|free of|absence of)\b(?:\W+\w+){0,3}\W*$")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSES = re.compile(r"[;:,]|\b(?:but|however|whereas|while)\b")


def finding_mentions(text: str) -> set[str]:
    """The finding names (keys of :data:`FINDING_PATTERNS`) that ``text`` mentions at all,
    negated or not."""
    lower = text.lower()
    return {name for name, pattern in _FINDING_RES.items() if pattern.search(lower)}


def _clauses(sentence: str) -> list[str]:
    """Cut at clause breaks, then join every clause that mentions no finding to the one before."""
    parts, start = [], 0
    for m in _CLAUSES.finditer(sentence):
        parts.append(sentence[start:m.start()])
        start = m.end()
    parts.append(sentence[start:])
    merged: list[str] = []
    for part in parts:
        if merged and not any(p.search(part) for p in _FINDING_RES.values()):
            merged[-1] += " " + part
        elif merged and not any(p.search(merged[-1]) for p in _FINDING_RES.values()):
            merged[-1] += " " + part  # a leading clause without a finding ("Compared with the prior, ...")
        else:
            merged.append(part)
    return merged


def _clause_statements(clause: str) -> list[tuple[str, str]]:
    """(finding, change) stated in one clause, in order of mention."""
    cues = []
    for m in _CHANGE_RE.finditer(clause):
        if m.lastgroup == "new" and _NEGATED.search(clause[: m.start()]):
            continue  # "no new effusion" says there is none
        cues.append((m.lastgroup, m.start(), m.end()))
    if not cues:
        return []
    out: list[tuple[int, str, str]] = []
    for name, pattern in _FINDING_RES.items():
        for m in pattern.finditer(clause):
            before = clause[max((e for _, _, e in cues if e <= m.start()), default=0): m.start()]
            if _NEGATED.search(before):
                continue
            change = min(cues, key=lambda c: max(c[1] - m.end(), m.start() - c[2], 0))[0]
            out.append((m.start(), name, str(change)))
            break  # one statement per finding and clause: its first mention
    return [(name, change) for _, name, change in sorted(out)]


def change_statements(report: str) -> dict[str, str]:
    """For each finding ``report`` states a change of, that change (see the module docstring).

    Args:
        report: a report text (any case; sentences end with ".", "!", "?" or a new line).

    Returns:
        Finding name -> one of :data:`CHANGES`; findings mentioned without a change word, or
        only negated, are absent.
    """
    result: dict[str, str] = {}
    for sentence in _SENTENCES.split(report.lower()):
        stated = [s for clause in _clauses(sentence) for s in _clause_statements(clause)]
        named = {name for name, _ in stated}
        for name, change in stated:
            if named & _GENERIC.get(name, frozenset()):
                continue
            if name not in result or (result[name] == "unchanged" and change != "unchanged"):
                result[name] = change
    return result


def change_accuracy(reports: Sequence[str], truths: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """How often ``reports`` state the true change of each finding: :func:`statement_accuracy` of
    the changes :func:`change_statements` reads in each report.

    Raises:
        ValueError: when the lengths differ or a truth holds a change outside :data:`CHANGES`.
    """
    if len(reports) != len(truths):
        raise ValueError(f"{len(reports)} reports but {len(truths)} truths")
    return statement_accuracy([change_statements(report) for report in reports], truths)


def statement_accuracy(stated: Sequence[Mapping[str, str]], truths: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """How often the changes ``stated`` per study (finding -> change) are the true ones.

    What counts: every (study, finding) pair of ``truths`` (e.g. ``meta["changes"]``), once.
    A pair is correct when the study's statements give that finding exactly the true change; a
    study that states another change, or none, for it is wrong. Statements about findings absent
    from the study's truth are not scored, only counted (``"extra"``). Studies with empty truth
    (first studies) add no pairs.

    Args:
        stated: one mapping per study, e.g. :func:`change_statements` of its report.
        truths: per study, finding -> true change (one of :data:`CHANGES`).

    Returns:
        ``{"accuracy": correct / pairs (nan without pairs), "n": pairs, "correct": ...,
        "unstated": pairs whose finding the study states no change of, "extra": ...,
        "per_change": {change: {"accuracy": ..., "n": ..., "correct": ...}} for every change
        of :data:`CHANGES` (accuracy nan where n is 0)}``.

    Raises:
        ValueError: when the lengths differ or a truth holds a change outside :data:`CHANGES`.
    """
    if len(stated) != len(truths):
        raise ValueError(f"{len(stated)} studies' statements but {len(truths)} truths")
    n = {c: 0 for c in CHANGES}
    correct = {c: 0 for c in CHANGES}
    unstated = extra = 0
    for said, truth in zip(stated, truths):
        for finding, change in truth.items():
            if change not in n:
                raise ValueError(f"unknown change {change!r} for {finding!r}; expected one of {CHANGES}")
            n[change] += 1
            correct[change] += said.get(finding) == change
            unstated += finding not in said
        extra += sum(finding not in truth for finding in said)
    total, right = sum(n.values()), sum(correct.values())
    return {
        "accuracy": right / total if total else math.nan,
        "n": total,
        "correct": right,
        "unstated": unstated,
        "extra": extra,
        "per_change": {c: {"accuracy": correct[c] / n[c] if n[c] else math.nan, "n": n[c], "correct": correct[c]}
                       for c in CHANGES},
    }
