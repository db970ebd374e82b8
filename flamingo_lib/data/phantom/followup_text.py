"""Text of a longitudinal phantom study: a comparison report and a clinical indication.

* :func:`comparison_report` writes a follow-up FINDINGS paragraph: one sentence per finding
  in either study stating its change (:func:`~flamingo_lib.data.phantom.evolution.compare`)
  in one of 2-3 phrasings, each using one unambiguous change word ("new", "increased",
  "decreased", "unchanged"/"stable", "resolved"/"removed"), plus the usual negatives for what
  neither study shows. One finding per sentence, so a reader never has to guess which
  finding a change word belongs to.
* :func:`indication` writes why the film was taken from what the clinician knows: the
  prior study's findings, and a line or tube they have just placed. It never names a
  finding of the current study that the prior study did not show (that is what the film
  is for); a placement is named by its purpose ("Line placement."), not as a finding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from flamingo_lib.data.phantom.evolution import compare, change_key, scale
from flamingo_lib.data.phantom.render import severity_level
from flamingo_lib.data.phantom.text import CLEAR_LUNGS, LUNG_NAMES, NORMAL_HEART, ZONE_WORDS, normal_closing
from flamingo_lib.data.sample import Finding

_DEVICE_NOUNS = {
    "pacemaker": "{side} chest wall pacemaker",
    "central line": "{side} central venous catheter",
    "endotracheal tube": "endotracheal tube",
    "nasogastric tube": "nasogastric tube",
}
_DEVICE_TIPS = {
    "pacemaker": " with leads in the right atrium and ventricle",
    "central line": " with tip in the superior vena cava",
    "endotracheal tube": " with tip above the carina",
    "nasogastric tube": " coursing into the stomach",
}
# Findings named without an article ("Cardiomegaly is unchanged.").
_MASS_NOUNS = frozenset({"cardiomegaly", "edema", "emphysema", "scoliosis", "atelectasis"})

# change -> phrasings. Fields: {the} "the " or "", {np} noun phrase, {sized} noun phrase with
# its severity, {a} indefinite article, {is}/{has} verb agreeing with the noun, {now} ", now
# <severity>" or "".
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "new": ("New {sized}.", "There {is} {a}new {sized}.", "Interval development of {a}{sized}."),
    "increased": ("{the}{np} {has} increased{now}.", "Increased {np}{now}.", "Worsening {np}{now}."),
    "decreased": ("{the}{np} {has} decreased{now}.", "Decreased {np}{now}.", "Improving {np}{now}."),
    "unchanged": ("{the}{np} {is} unchanged.", "Stable {np}.", "Unchanged {np}."),
    "resolved": ("{the}{np} {has} resolved.", "Interval resolution of the {np}.", "{the}{np} {is} no longer seen."),
}
_DEVICE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "new": ("Interval placement of {a}{np}{tip}.", "New {np}{tip}.", "{a}{np} has been placed{tip}."),
    "unchanged": ("The {np} is unchanged in position.", "Stable position of the {np}.",
                  "The {np} is again seen in unchanged position."),
    "resolved": ("The {np} has been removed.", "Interval removal of the {np}.", "The {np} is no longer seen."),
}
# Indications: presenting complaints by the finding that prompted them, never naming it.
_COMPLAINTS = {
    "pleural effusion": ("Shortness of breath.", "Dyspnea."),
    "edema": ("Shortness of breath.", "Dyspnea and leg swelling."),
    "cardiomegaly": ("Shortness of breath.", "Dyspnea on exertion."),
    "pneumonia": ("Cough and fever.", "Productive cough."),
    "consolidation": ("Cough and fever.", "Productive cough."),
    "opacity": ("Cough.", "Cough and fever."),
    "pneumothorax": ("Chest pain.", "Sudden onset chest pain."),
    "fracture": ("Fall.", "Chest wall pain after a fall."),
}
_ROUTINE = ("Cough.", "Chest pain.", "Shortness of breath.", "Preoperative evaluation.", "Routine examination.")
_PLACEMENT = {
    "central line": ("Line placement.", "Assess line position."),
    "endotracheal tube": ("Tube placement.", "Assess tube position."),
    "nasogastric tube": ("Tube placement.", "Assess tube position."),
    "pacemaker": ("Status post device implantation.",),
}
# Short names for "Evaluate <x>." of a finding known from the prior study.
_SHORT = {"pleural effusion": "effusion", "pneumothorax": "pneumothorax", "pneumonia": "pneumonia",
          "consolidation": "consolidation", "edema": "edema", "atelectasis": "atelectasis"}


def _article(word: str) -> str:
    return "an " if word[:1] in "aeiou" else "a "


def noun_phrase(finding: Finding) -> tuple[str, bool]:
    """(noun phrase naming ``finding`` without its severity, whether it is plural)."""
    side = finding.side or ""
    where = " ".join(w for w in (side, ZONE_WORDS.get(finding.zone or "", "")) if w) or "lung"
    key = change_key(finding)
    if key in _DEVICE_NOUNS:
        return _DEVICE_NOUNS[key].format(side=side or "right"), False
    name = finding.name
    if name == "pleural effusion":
        return (("bilateral pleural effusions", True) if side == "bilateral" else (f"{side} pleural effusion", False))
    phrase = {
        "pneumothorax": f"{side} pneumothorax", "edema": "pulmonary edema", "emphysema": "emphysema",
        "scoliosis": "thoracic scoliosis", "fracture": f"{side} rib fracture", "cardiomegaly": "cardiomegaly",
        "granuloma": f"calcified {where} granuloma", "atelectasis": f"{where} atelectasis",
    }.get(name, f"{where} {name}")
    return " ".join(phrase.split()), False


def _severity_word(finding: Finding) -> str:
    return scale(finding)[severity_level(finding.severity)]


def _change_sentence(finding: Finding, change: str, rng: random.Random) -> str:
    np_, plural = noun_phrase(finding)
    key = change_key(finding)
    device = key in _DEVICE_NOUNS
    sized = np_ if device or finding.name in ("emphysema", "scoliosis", "fracture") else \
        f"{_severity_word(finding)} {np_}"
    graded = finding.name in ("pleural effusion", "pneumothorax", "edema")
    fields = {
        "np": np_, "sized": sized, "tip": _DEVICE_TIPS.get(key, ""),
        "the": "" if finding.name in _MASS_NOUNS else "the ",
        "a": "" if plural or finding.name in _MASS_NOUNS else
             _article(sized if change == "new" and not device else np_),
        "is": "are" if plural else "is", "has": "have" if plural else "has",
        "now": f", now {_severity_word(finding)}" if graded and rng.random() < 0.6 else "",
    }
    templates = (_DEVICE_TEMPLATES if device else _TEMPLATES)[change]
    text = " ".join(rng.choice(templates).format(**fields).split())
    return text[0].upper() + text[1:]


def comparison_report(prior: Sequence[Finding], current: Sequence[Finding], rng: random.Random) -> str:
    """A follow-up FINDINGS paragraph comparing ``current`` with ``prior``.

    Reading order as in :func:`~flamingo_lib.data.phantom.text.templated_report`: lines and
    tubes, heart, lungs and pleura, bones; then the negatives for findings neither study has.
    A finding that changed is described as it is now (a resolved one as it was).
    """
    changes = compare(prior, current)
    latest = {change_key(f): f for f in prior} | {change_key(f): f for f in current}
    order = sorted(changes, key=lambda k: (latest[k].name != "support device", latest[k].name != "cardiomegaly"))
    sentences = [_change_sentence(latest[k], changes[k], rng) for k in order]
    names = {f.name for f in latest.values()}
    if "cardiomegaly" not in names:
        sentences.insert(sum(latest[k].name == "support device" for k in order), rng.choice(NORMAL_HEART))
    if not {f.name for f in current} & LUNG_NAMES:
        sentences.append(rng.choice(CLEAR_LUNGS))
    sentences += normal_closing(names, rng)
    return " ".join(s for s in sentences if s)


def indication(prior: Sequence[Finding] | None, current: Sequence[Finding], rng: random.Random) -> str:
    """Why the study was ordered, from the prior study's findings (``None`` for a first study)
    and any device placed since; never names a finding the prior study did not show."""
    parts: list[str] = []
    if prior is None:
        device = next((change_key(f) for f in current if f.name == "support device"), None)
        if device in _PLACEMENT:
            parts.append(rng.choice(_PLACEMENT[device]))
        # The complaint that brought the patient in follows from what the film will show.
        causes = [f.name for f in current if f.name in _COMPLAINTS]
        if causes:
            parts.append(rng.choice(_COMPLAINTS[causes[0]]))
        elif not parts:
            parts.append(rng.choice(_ROUTINE))
        return " ".join(parts)
    placed = [k for k, c in compare(prior, current).items() if c == "new" and k in _PLACEMENT]
    if placed:
        parts.append(rng.choice(_PLACEMENT[placed[0]]))
    acute = [f for f in prior if f.name in _SHORT]
    known = acute or [f for f in prior if f.name != "support device"]
    if known:
        f = rng.choice(known)
        options = [f"Follow-up of known {noun_phrase(f)[0]}.", f"History of {noun_phrase(f)[0]}."]
        if f.name in _SHORT:
            options.append(f"{rng.choice(_COMPLAINTS.get(f.name, ('Follow-up.',)))} Evaluate {_SHORT[f.name]}.")
        parts.append(rng.choice(options))
    elif not parts:
        # A normal prior: the new symptom follows from what the film will show, unnamed.
        causes = [f.name for f in current if f.name in _COMPLAINTS]
        parts.append(rng.choice(_COMPLAINTS[causes[0]] if causes else ("Follow-up.", *_ROUTINE)))
    return " ".join(parts)
