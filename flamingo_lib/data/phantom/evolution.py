"""How a synthetic patient's findings evolve from one chest film to the next.

A patient's first study draws its findings as the templated phantom does
(:func:`~flamingo_lib.data.phantom.text.sample_findings`); :func:`evolve` derives each
later study's findings from the study before:

* chronic findings (cardiomegaly, emphysema, scoliosis, nodules, masses, granulomas,
  fractures) stay exactly as they were;
* acute graded findings (pleural effusion, pneumothorax, edema, airspace disease,
  atelectasis) stay, grow or shrink by one severity step, or resolve; the renderer draws
  each severity step at a different size, so the change is on the film;
* a support device stays or is removed, and a patient without one may have one placed
  (at most one device at a time: the renderer seeds each device by its occurrence, so a
  second device would move when the first is removed);
* a few acute findings may appear, mostly at their smaller sizes (a pneumothorax more
  often right after a central line is placed).

Every finding keeps its side and zone for as long as it exists, and the renderer seeds a
finding's shape from the patient and its name only, so an unchanged finding is drawn
identically on every film of the patient. :func:`compare` reads the change of every
finding between two studies off their finding sets; it is the ground truth the
comparison reports are written from.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flamingo_lib.data.phantom.render import severity_level
from flamingo_lib.data.sample import Finding

#: The change of a finding between two consecutive studies, in the words reports use.
CHANGES: tuple[str, ...] = ("new", "increased", "decreased", "unchanged", "resolved")

#: Findings that never change once present (and never appear after the first study).
CHRONIC: frozenset[str] = frozenset(
    {"cardiomegaly", "emphysema", "scoliosis", "nodule", "mass", "granuloma", "fracture"})

# Severity words by step, per scale; a finding keeps the scale it was drawn with.
_SIZES = ("small", "moderate", "large")
_GRADES = ("mild", "moderate", "severe")
_SIZED = frozenset({"pleural effusion", "pneumothorax", "nodule", "mass", "granuloma"})

# name -> probabilities of (unchanged, increased, decreased, resolved) for a present acute finding.
_COURSE: dict[str, tuple[float, float, float, float]] = {
    "pleural effusion": (0.3, 0.25, 0.25, 0.2),
    "pneumothorax": (0.3, 0.15, 0.25, 0.3),
    "edema": (0.3, 0.2, 0.25, 0.25),
    "consolidation": (0.35, 0.2, 0.2, 0.25),
    "pneumonia": (0.35, 0.2, 0.2, 0.25),
    "opacity": (0.35, 0.2, 0.2, 0.25),
    "atelectasis": (0.45, 0.15, 0.15, 0.25),
}
# Probability that a support device in place is removed before the next study.
_DEVICE_REMOVAL = 0.3
# name -> probability of appearing at a study when absent from the one before.
_ONSET: dict[str, float] = {
    "pleural effusion": 0.1, "consolidation": 0.04, "pneumonia": 0.03, "opacity": 0.03,
    "edema": 0.04, "atelectasis": 0.04, "pneumothorax": 0.02,
}  # fmt: skip
_DEVICE_PLACEMENT = 0.1
_DEVICE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("central line", 0.4), ("endotracheal tube", 0.25), ("nasogastric tube", 0.25), ("pacemaker", 0.1))
# A subclavian line puncture is the classic cause of an iatrogenic pneumothorax.
_PNEUMOTHORAX_AFTER_LINE = 0.15


def change_key(finding: Finding) -> str:
    """The name a finding's change is reported under: its name, or for a support device its
    type (``"central line"``, ``"endotracheal tube"``, ...), since a tube can be removed while a
    line stays."""
    if finding.name == "support device" and finding.source and finding.source != "support device":
        return finding.source
    return finding.name


def scale(finding: Finding) -> tuple[str, ...]:
    """The severity words of a finding's scale: sizes for collections and lesions, grades else."""
    return _SIZES if finding.name in _SIZED else _GRADES


def _with_level(finding: Finding, level: int) -> Finding:
    return Finding(finding.name, finding.side, finding.zone, scale(finding)[level], finding.source)


def compare(prior: Iterable[Finding], current: Iterable[Finding]) -> dict[str, str]:
    """The change of every finding in either study: change key -> one of :data:`CHANGES`.

    A finding in both studies has ``"increased"``/``"decreased"`` when its severity step
    (:func:`~flamingo_lib.data.phantom.render.severity_level`) went up/down, else
    ``"unchanged"``; one only in ``current`` is ``"new"``, one only in ``prior`` ``"resolved"``.
    """
    before = {change_key(f): f for f in prior}
    after = {change_key(f): f for f in current}
    changes: dict[str, str] = {}
    for key in [*before, *(k for k in after if k not in before)]:
        if key not in after:
            changes[key] = "resolved"
        elif key not in before:
            changes[key] = "new"
        else:
            step = severity_level(after[key].severity) - severity_level(before[key].severity)
            changes[key] = "increased" if step > 0 else "decreased" if step < 0 else "unchanged"
    return changes


def _onset(name: str, rng: random.Random) -> Finding:
    """A newly appearing acute finding, mostly at its smaller sizes."""
    level = rng.choices((0, 1, 2), (0.55, 0.35, 0.1))[0]
    side: str | None = rng.choice(("left", "right"))
    zone: str | None = None
    if name == "pleural effusion":
        side = rng.choices(("left", "right", "bilateral"), (0.35, 0.35, 0.3))[0]
    elif name == "edema":
        side = "bilateral"
    elif name == "atelectasis":
        zone = rng.choice(("base", "lower"))
    elif name != "pneumothorax":
        zone = rng.choice(("upper", "middle", "lower", "base"))
    finding = Finding(name=name, side=side, zone=zone, severity="moderate", source=name)
    return _with_level(finding, level)


def _device(rng: random.Random) -> Finding:
    names, weights = zip(*_DEVICE_WEIGHTS)
    kind = rng.choices(names, weights)[0]
    side = "left" if kind == "pacemaker" else rng.choice(("left", "right"))
    return Finding(name="support device", side=side, zone=None, severity=None, source=kind)


def evolve(findings: Iterable[Finding], rng: random.Random) -> tuple[Finding, ...]:
    """The findings of a patient's next study, given those of the study before.

    Keeps the order of the surviving findings (new ones go last), so a finding keeps its
    occurrence index and hence its drawn shape.
    """
    out: list[Finding] = []
    removed_device = False
    for f in findings:
        if f.name == "support device":
            if rng.random() < _DEVICE_REMOVAL:
                removed_device = True
            else:
                out.append(f)
            continue
        course = _COURSE.get(f.name)
        if f.name in CHRONIC or course is None:
            out.append(f)
            continue
        step = rng.choices(("unchanged", "increased", "decreased", "resolved"), course)[0]
        level = severity_level(f.severity)
        if step == "increased" and level < 2:
            out.append(_with_level(f, level + 1))
        elif step == "decreased" and level > 0:
            out.append(_with_level(f, level - 1))
        elif step == "resolved" or step == "decreased":  # a smallest finding that shrinks is gone
            continue
        else:
            out.append(f)
    names = {f.name for f in out} | {f.name for f in findings}  # nothing reappears the study it resolved
    placed = None
    if not removed_device and "support device" not in names and rng.random() < _DEVICE_PLACEMENT:
        placed = _device(rng)
        out.append(placed)
    for name, p in _ONSET.items():
        if name == "pneumothorax" and placed is not None and placed.source == "central line":
            p = _PNEUMOTHORAX_AFTER_LINE
        if name not in names and rng.random() < p:
            out.append(_onset(name, rng))
            names.add(name)
    return tuple(out)
