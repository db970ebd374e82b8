"""Text and labels for the phantom: random finding sets, templated reports, CheXpert labels.

* :func:`sample_findings` draws a realistic finding set for a synthetic patient
  (about 40% normal), always stating side and severity so the text and the image
  agree on them.
* :func:`templated_report` writes a radiology-style FINDINGS paragraph for a set,
  with several phrasings per finding and the usual negative statements for key
  findings that are absent ("No pleural effusion or pneumothorax.").
* :func:`findings_to_labels` gives the image ground truth: the 14 CheXpert
  observations implied by the findings the renderer actually draws
  (:data:`~flamingo_lib.data.phantom.render.RENDERABLE_FINDINGS`); every other name
  is ignored, because it is not on the film.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flamingo_lib.data.phantom.render import RENDERABLE_FINDINGS
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Finding, Label

#: Drawn finding name -> the CheXpert observations it makes positive. Follows the
#: IU MeSH mapping (granuloma is a Lung Lesion) with two choices of our own, both
#: from CheXpert's label hierarchy and because of how the phantom draws them:
#: cardiomegaly also enlarges the cardiomediastinal silhouette (parent "Enlarged
#: Cardiomediastinum"), and consolidation and pneumonia are drawn as dense airspace
#: opacities (parent "Lung Opacity"). Hyper-/hypoinflation and scoliosis have no
#: CheXpert observation, so a film showing only them is "No Finding".
PHANTOM_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "pleural effusion": ("Pleural Effusion",),
    "costophrenic angle blunting": ("Pleural Effusion",),
    "opacity": ("Lung Opacity",),
    "airspace disease": ("Lung Opacity",),
    "infiltrate": ("Lung Opacity",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "pneumonia": ("Pneumonia", "Lung Opacity"),
    "edema": ("Edema",),
    "nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "granuloma": ("Lung Lesion",),
    "granulomatous disease": ("Lung Lesion",),
    "scarring": ("Lung Opacity",),
    "atelectasis": ("Atelectasis",),
    "pneumothorax": ("Pneumothorax",),
    "support device": ("Support Devices",),
    "surgical clips": ("Support Devices",),
    "sutures": ("Support Devices",),
    "fracture": ("Fracture",),
}

#: The CheXpert observations a phantom film can show: the findings it draws, in CheXpert order
#: ("No Finding" is an absence, not a drawn finding; nothing maps to "Pleural Other").
RENDERED_OBSERVATIONS: tuple[str, ...] = tuple(
    obs for obs in CHEXPERT_OBSERVATIONS if any(obs in v for v in PHANTOM_TO_CHEXPERT.values()))

#: (name, relative frequency) of findings in abnormal synthetic studies.
_FREQUENCY: tuple[tuple[str, float], ...] = (
    ("cardiomegaly", 0.16), ("pleural effusion", 0.14), ("atelectasis", 0.1), ("opacity", 0.09),
    ("granuloma", 0.08), ("support device", 0.08), ("consolidation", 0.06), ("nodule", 0.06),
    ("pneumonia", 0.05), ("pneumothorax", 0.05), ("emphysema", 0.05), ("edema", 0.05),
    ("scoliosis", 0.04), ("mass", 0.03), ("fracture", 0.03),
)  # fmt: skip
NORMAL_FRACTION = 0.4
_LUNG_ZONES = ("upper", "middle", "lower", "base")
_DEVICES = ("pacemaker", "central line", "endotracheal tube", "nasogastric tube")
ZONE_WORDS = {
    "upper": "upper lobe", "middle": "mid lung", "lower": "lower lobe",
    "base": "base", "apex": "apex", "hilum": "perihilar region",
}  # fmt: skip
_SIZE = {"mild": "small", "moderate": "moderate", "severe": "large", "small": "small", "large": "large"}
_EXTENT = {"mild": "faint", "moderate": "patchy", "severe": "extensive"}
_GRADE = {"small": "mild", "large": "severe", "mild": "mild", "moderate": "moderate", "severe": "severe"}


def sample_findings(rng: random.Random) -> tuple[Finding, ...]:
    """A random finding set for one synthetic study: none with probability 0.4, else 1-3.

    Every lateralised finding gets a side, every finding a severity, and lung lesions
    a zone, so nothing is left for the renderer to guess that the text would not say.
    """
    if rng.random() < NORMAL_FRACTION:
        return ()
    names, weights = zip(*_FREQUENCY)
    chosen: list[str] = []
    for _ in range(rng.choices((1, 2, 3), (0.55, 0.3, 0.15))[0]):
        name = rng.choices(names, weights)[0]
        if name not in chosen:
            chosen.append(name)
    findings = []
    for name in chosen:
        side: str | None = rng.choice(("left", "right"))
        zone: str | None = None
        severity: str | None = rng.choice(("mild", "moderate", "severe"))
        source = name
        if name == "pleural effusion":
            side = rng.choices(("left", "right", "bilateral"), (0.35, 0.35, 0.3))[0]
            severity = rng.choice(("small", "moderate", "large"))
        elif name in ("opacity", "consolidation", "pneumonia", "nodule", "mass", "granuloma", "atelectasis"):
            zone = rng.choice(("base", "lower") if name == "atelectasis" else _LUNG_ZONES)
            if name in ("nodule", "mass", "granuloma"):
                severity = rng.choice(("small", "moderate", "large"))
        elif name == "pneumothorax":
            severity = rng.choice(("small", "moderate", "large"))
        elif name in ("cardiomegaly", "edema", "emphysema", "scoliosis"):
            side = "bilateral" if name == "edema" else None
        elif name == "support device":
            source = rng.choice(_DEVICES)
            side = "left" if source == "pacemaker" else side
            severity = None
        findings.append(Finding(name=name, side=side, zone=zone, severity=severity, source=source))
    return tuple(findings)


# Phrasings per finding name. Fields: {where} side and zone ("right lower lobe"),
# {side}, {size} (small/moderate/large), {grade} (mild/moderate/severe), {extent}
# (faint/patchy/extensive), {eff} (e.g. "small right pleural effusion"), {a} ("a "
# or "", for plurals), {s} ("s" for bilateral, else "").
_PHRASES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "The heart is {grade}ly enlarged.",
        "{Grade} cardiomegaly.",
        "The cardiac silhouette is enlarged, consistent with {grade} cardiomegaly.",
    ),
    "pleural effusion": (
        "There {is} {a}{eff}.",
        "{Eff}.",
        "Blunting of the {side} costophrenic angle{s} from {a}{eff}.",
    ),
    "opacity": (
        "There is {an} {extent} opacity in the {where}.",
        "Patchy {where} opacity.",
        "Hazy airspace opacity projects over the {where}.",
    ),
    "consolidation": (
        "Focal consolidation in the {where}.",
        "There is dense {where} consolidation with air bronchograms.",
        "{Grade} airspace consolidation in the {where}.",
    ),
    "pneumonia": (
        "{Where} airspace opacity, concerning for pneumonia.",
        "Patchy consolidation in the {where} consistent with pneumonia.",
    ),
    "edema": (
        "{Grade} pulmonary edema with perihilar haziness.",
        "Bilateral perihilar opacities consistent with {grade} pulmonary edema.",
        "Interstitial edema with indistinct pulmonary vessels and Kerley B lines.",
    ),
    "nodule": (
        "A {size} nodule is seen in the {where}.",
        "There is a {size} pulmonary nodule in the {where}.",
        "{Size} rounded nodular opacity in the {where}.",
    ),
    "mass": ("There is a {size} mass in the {where}.", "A lobulated {where} mass is present."),
    "granuloma": (
        "Calcified granuloma in the {where}.",
        "A small calcified granuloma projects over the {where}.",
    ),
    "atelectasis": (
        "Plate-like atelectasis at the {where}.",
        "{Grade} linear atelectasis in the {where}.",
        "Streaky {where} opacity, likely atelectasis.",
    ),
    "pneumothorax": (
        "There is a {size} {side} pneumothorax.",
        "{Size} {side} apical pneumothorax.",
        "A {side} pleural line is seen with absent lung markings peripherally, "
        "consistent with a {size} pneumothorax.",
    ),
    "emphysema": (
        "The lungs are hyperinflated with flattened hemidiaphragms, consistent with emphysema.",
        "Hyperinflated lungs compatible with emphysema.",
    ),
    "hyperinflation": ("The lungs are hyperinflated.", "Hyperinflation with flattening of the diaphragm."),
    "fracture": ("There is a displaced {side} rib fracture.", "Acute fracture of a {side} lateral rib."),
    "scoliosis": ("Scoliosis of the thoracic spine.", "{Grade} thoracic scoliosis."),
    "pacemaker": (
        "{Side} chest wall pacemaker with leads in the right heart.",
        "A cardiac pacemaker is in place with leads terminating in the right atrium and ventricle.",
    ),
    "central line": (
        "{Side} central venous catheter with tip in the superior vena cava.",
        "A {side} subclavian line terminates in the SVC.",
    ),
    "endotracheal tube": ("Endotracheal tube in place with tip above the carina.",),
    "nasogastric tube": ("Nasogastric tube courses below the diaphragm into the stomach.",),
    "support device": ("Support device in place.",),
}
NORMAL_HEART = (
    "Heart size is normal.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Normal heart size.",
)
CLEAR_LUNGS = ("The lungs are clear.", "No focal airspace consolidation.", "Lungs are clear bilaterally.")
_NO_PLEURAL = ("No pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion.")
_NORMAL_BONES = ("No acute bony abnormality.", "The osseous structures are intact.", "")
LUNG_NAMES = frozenset({
    "opacity", "consolidation", "pneumonia", "edema", "nodule",
    "mass", "atelectasis", "granuloma", "emphysema",
})  # fmt: skip


def _sentence(f: Finding, rng: random.Random) -> str:
    """One sentence stating ``f``, in one of several phrasings."""
    side = f.side or ""
    zone = ZONE_WORDS.get(f.zone or "", "")
    grade = _GRADE.get(f.severity or "", "moderate")
    both = side == "bilateral"
    fields = {
        "where": " ".join(w for w in (side, zone) if w) or "lung",
        "side": side,
        "size": _SIZE.get(f.severity or "", "moderate"),
        "grade": grade,
        "extent": _EXTENT[grade],
        "an": "an" if grade == "severe" else "a",
        "eff": f"{_SIZE.get(f.severity or '', 'moderate')} {side} pleural effusion{'s' if both else ''}",
        "is": "are" if both else "is",
        "a": "" if both else "a ",
        "s": "s" if both else "",
    }
    fields.update({k.capitalize(): v.capitalize() for k, v in list(fields.items())})
    key = f.source if f.name == "support device" and f.source in _DEVICES else f.name
    phrases = _PHRASES.get(key, (f"{f.name.capitalize()} is noted.",))
    return " ".join(rng.choice(phrases).format(**fields).split())  # also drops doubled spaces


def templated_report(findings: Iterable[Finding], rng: random.Random) -> str:
    """A radiology-style FINDINGS paragraph describing ``findings`` (and the key negatives).

    Args:
        findings: the study's findings (any names; unknown ones get a generic sentence).
        rng: chooses the phrasings and the order of the negative statements.

    Returns:
        The report text, one sentence per finding plus normal statements.
    """
    findings = list(findings)
    for f in findings:
        if not isinstance(f, Finding):
            raise TypeError(f"findings must be Finding objects, got {type(f).__name__}")
    names = {f.name for f in findings}
    heart = [f for f in findings if f.name == "cardiomegaly"]
    devices = [f for f in findings if f.name in ("support device", "surgical clips", "sutures")]
    others = [f for f in findings if f not in heart and f not in devices]
    # The usual reading order: lines and tubes, heart, lungs, pleura, bones.
    sentences = [_sentence(f, rng) for f in devices]
    sentences += [_sentence(f, rng) for f in heart] or [rng.choice(NORMAL_HEART)]
    sentences += [_sentence(f, rng) for f in others]
    if not names & LUNG_NAMES:
        sentences.append(rng.choice(CLEAR_LUNGS))
    sentences += normal_closing(names, rng)
    return " ".join(s for s in sentences if s)


def normal_closing(names: set[str], rng: random.Random) -> list[str]:
    """The closing sentences of a report whose findings are ``names``: the pleura (what of effusion
    and pneumothorax is absent) and the bones when no fracture, in that order."""
    sentences = []
    effusion, ptx = "pleural effusion" in names, "pneumothorax" in names
    if not effusion and not ptx:
        sentences.append(rng.choice(_NO_PLEURAL))
    elif not ptx:
        sentences.append("No pneumothorax.")
    elif not effusion:
        sentences.append("No pleural effusion.")
    if "fracture" not in names:
        sentences.append(rng.choice(_NORMAL_BONES))
    return sentences


def findings_to_labels(findings: Iterable[Finding]) -> dict[str, Label]:
    """The 14 CheXpert observations the *drawn* findings imply (image ground truth).

    Only names in :data:`RENDERABLE_FINDINGS` count. Every observation is decided
    (1.0 or 0.0, never uncertain or missing) because the image holds exactly what
    was drawn. "No Finding" follows CheXpert: 1.0 when nothing but Support Devices
    is positive.

    Returns:
        Observation -> label, keyed by all of :data:`CHEXPERT_OBSERVATIONS` in order.
    """
    present: set[str] = set()
    for f in findings:
        if not isinstance(f, Finding):
            raise TypeError(f"findings must be Finding objects, got {type(f).__name__}")
        if f.name in RENDERABLE_FINDINGS:
            present.update(PHANTOM_TO_CHEXPERT.get(f.name, ()))
    labels: dict[str, Label] = {obs: (1.0 if obs in present else 0.0) for obs in CHEXPERT_OBSERVATIONS}
    labels["No Finding"] = 0.0 if present - {"Support Devices"} else 1.0
    return labels
