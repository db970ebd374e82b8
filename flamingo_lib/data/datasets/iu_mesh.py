"""The IU reports' human MeSH annotation: its vocabulary, terms parsed into findings, and the
CheXpert observations those findings imply (a reference for checking a report labeler).

Terms look like ``Pleural Effusion/right/small``: a head, then qualifiers (side, zone, severity,
state). :mod:`flamingo_lib.data.datasets.iu_reports` reads the reports that carry them.
"""

from __future__ import annotations

from collections.abc import Iterable

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Finding, Label

# ---------------------------------------------------------------------------------------------
# MeSH vocabulary. Terms are ``Head/qualifier/qualifier/...``; matching is case-insensitive with
# whitespace collapsed (the corpus has "Thoracic vertebrae" and a trailing-space variant).

#: Terms that say "nothing to report" rather than naming a finding.
MESH_NO_FINDING_TERMS: frozenset[str] = frozenset({"normal", "no indexing"})
#: The term the annotators used for a report they did not index; its report has no reference.
MESH_NOT_INDEXED = "no indexing"

#: Qualifiers giving the side.
MESH_SIDES: frozenset[str] = frozenset({"left", "right", "bilateral"})

#: Qualifier -> zone. The lingula is the left lung's counterpart of the right middle lobe.
MESH_ZONES: dict[str, str] = {
    "upper lobe": "upper",
    "middle lobe": "middle",
    "lingula": "middle",
    "lower lobe": "lower",
    "base": "base",
    "apex": "apex",
    "hilum": "hilum",
    "retrocardiac": "retrocardiac",
    "paratracheal": "paratracheal",
    "costophrenic angle": "costophrenic angle",
}

#: Qualifiers giving a size or severity, kept verbatim.
MESH_SEVERITIES: frozenset[str] = frozenset(
    {"borderline", "mild", "small", "moderate", "large", "severe"}
)

#: Heads naming a finding directly: lower-case MeSH head -> canonical finding name.
MESH_HEAD_NAMES: dict[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural effusion",
    "opacity": "opacity",
    "density": "opacity",  # radiologists use "density" for an opacity
    "airspace disease": "airspace disease",
    "infiltrate": "infiltrate",
    "consolidation": "consolidation",
    "pulmonary atelectasis": "atelectasis",
    "nodule": "nodule",
    "mass": "mass",
    "calcified granuloma": "granuloma",
    "granuloma": "granuloma",
    "granulomatous disease": "granulomatous disease",
    "cysts": "cyst",
    "cavitation": "cavity",
    "pneumothorax": "pneumothorax",
    "hydropneumothorax": "hydropneumothorax",
    "hemopneumothorax": "hemopneumothorax",
    "hemothorax": "hemothorax",
    "emphysema": "emphysema",
    "pulmonary emphysema": "emphysema",
    "bullous emphysema": "emphysema",
    "blister": "bulla",  # MeSH files pulmonary bullae under "Blister"
    "pulmonary disease, chronic obstructive": "copd",
    "lung, hyperlucent": "hyperlucency",
    "pulmonary edema": "edema",
    "pulmonary congestion": "vascular congestion",
    "heart failure": "heart failure",
    "pneumonia": "pneumonia",
    "tuberculosis": "tuberculosis",
    "bronchitis": "bronchitis",
    "bronchiolitis": "bronchiolitis",
    "fractures, bone": "fracture",
    "catheters, indwelling": "support device",
    "implanted medical device": "support device",
    "medical device": "support device",
    "tube, inserted": "support device",
    "stents": "support device",
    "surgical instruments": "surgical clips",  # IU indexes surgical clips under this head
    "sutures": "sutures",
    "cicatrix": "scarring",
    "thickening": "thickening",
    "pulmonary fibrosis": "fibrosis",
    "fibrosis": "fibrosis",
    "lung diseases, interstitial": "interstitial lung disease",
    "bronchiectasis": "bronchiectasis",
    "cystic fibrosis": "cystic fibrosis",
    "sarcoidosis": "sarcoidosis",
    "calcinosis": "calcification",
    "atherosclerosis": "atherosclerosis",
    "aortic aneurysm": "aortic aneurysm",
    "scoliosis": "scoliosis",
    "kyphosis": "kyphosis",
    "spondylosis": "spondylosis",
    "osteophyte": "osteophyte",
    "arthritis": "arthritis",
    "deformity": "deformity",
    "bone diseases, metabolic": "osteopenia",
    "osteoporosis": "osteopenia",
    "spinal fusion": "spinal fusion",
    "hyperostosis, diffuse idiopathic skeletal": "dish",
    "dislocations": "dislocation",
    "expansile bone lesions": "bone lesion",
    "sclerosis": "sclerosis",
    "hernia, hiatal": "hiatal hernia",
    "hernia, diaphragmatic": "diaphragmatic hernia",
    "diaphragmatic eventration": "diaphragmatic eventration",
    "foreign bodies": "foreign body",
    "breast implants": "breast implant",
    "mastectomy": "mastectomy",
    "pneumonectomy": "pneumonectomy",
    "nipple shadow": "nipple shadow",
    "pericardial effusion": "pericardial effusion",
    "hypertension, pulmonary": "pulmonary hypertension",
    "subcutaneous emphysema": "subcutaneous emphysema",
    "mediastinal emphysema": "pneumomediastinum",
    "pneumoperitoneum": "pneumoperitoneum",
    "funnel chest": "pectus excavatum",
    "pectus carinatum": "pectus carinatum",
    "volume loss": "volume loss",
    "shift": "mediastinal shift",
    "lucency": "lucency",
    "epicardial fat": "epicardial fat",
    "adipose tissue": "fat",
    "contrast media": "contrast",
    "cholelithiasis": "gallstones",
    "colonic interposition": "colonic interposition",
    "hypovolemia": "hypovolemia",
    "technical quality of image unsatisfactory": "suboptimal image",
}

#: Heads naming an anatomical structure: the finding is in a qualifier, e.g. ``Lung/hypoinflation``
#: or ``Aorta/tortuous``. State qualifier -> finding name, where the structure does not matter.
MESH_STATE_NAMES: dict[str, str] = {
    "degenerative": "degenerative change",
    "hypoinflation": "hypoinflation",
    "hyperdistention": "hyperinflation",
    "tortuous": "tortuous aorta",
    "elevated": "elevated diaphragm",
    "flattened": "flattened diaphragm",
    "blunted": "costophrenic angle blunting",
    "interstitial": "interstitial markings",
    "bronchovascular": "increased markings",
    "obscured": "obscured margin",
    "azygos lobe": "azygos lobe",
}

#: "Enlarged"/"prominent" anatomy heads -> finding name.
MESH_ENLARGED_NAMES: dict[str, str] = {
    "cardiac shadow": "cardiomegaly",
    "heart": "cardiomegaly",
    "heart atria": "cardiac chamber enlargement",
    "heart ventricles": "cardiac chamber enlargement",
    "mediastinum": "widened mediastinum",
    "lung": "hilar prominence",
    "aorta": "aortic enlargement",
    "aorta, thoracic": "aortic enlargement",
    "pulmonary artery": "pulmonary artery enlargement",
}
_ENLARGED_STATES = frozenset({"enlarged", "prominent", "borderline"})

#: Canonical finding name -> the CheXpert observations a human annotation of it implies.
MESH_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "widened mediastinum": ("Enlarged Cardiomediastinum",),
    "cardiomegaly": ("Cardiomegaly",),
    "opacity": ("Lung Opacity",),
    "airspace disease": ("Lung Opacity",),
    "infiltrate": ("Lung Opacity",),
    "scarring": ("Lung Opacity",),
    "interstitial markings": ("Lung Opacity",),
    "fibrosis": ("Lung Opacity",),
    "interstitial lung disease": ("Lung Opacity",),
    "nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "granuloma": ("Lung Lesion",),
    "cavity": ("Lung Lesion",),
    "edema": ("Edema",),
    "vascular congestion": ("Edema",),
    "heart failure": ("Edema",),  # on a chest film, failure is seen as congestion and edema
    "consolidation": ("Consolidation",),
    "pneumonia": ("Pneumonia",),
    "atelectasis": ("Atelectasis",),
    "pneumothorax": ("Pneumothorax",),
    "hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "hemopneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "hemothorax": ("Pleural Effusion",),
    "pleural effusion": ("Pleural Effusion",),
    "costophrenic angle blunting": ("Pleural Effusion",),
    "pleural thickening": ("Pleural Other",),
    "pleural calcification": ("Pleural Other",),
    "fracture": ("Fracture",),
    "support device": ("Support Devices",),
    "surgical clips": ("Support Devices",),
    "sutures": ("Support Devices",),
}

#: Observations the MeSH annotation speaks to. Every one of the 14 has a MeSH counterpart, but
#: coverage is uneven: annotators file "enlarged cardiomediastinal silhouette" under
#: ``Cardiac Shadow/enlarged`` (Cardiomegaly), so Enlarged Cardiomediastinum rests on the few
#: ``Mediastinum/prominent|enlarged`` terms; and clips or sternal wires are indexed only
#: sometimes, so Support Devices misses some reports that mention them.
MESH_COVERED_OBSERVATIONS: tuple[str, ...] = tuple(
    o
    for o in CHEXPERT_OBSERVATIONS
    if o == "No Finding" or any(o in obs for obs in MESH_TO_CHEXPERT.values())
)

#: Heads renamed when qualified by ``pleura``: pleural scarring is radiographically pleural
#: thickening; both, and pleural calcification, are CheXpert's "Pleural Other".
MESH_PLEURAL_NAMES: dict[str, str] = {
    "thickening": "pleural thickening",
    "cicatrix": "pleural thickening",
    "calcinosis": "pleural calcification",
}


#: Names built in code rather than looked up: lymph nodes under any head, thickened bronchi.
_LYMPHADENOPATHY, _BRONCHIAL_THICKENING = "lymphadenopathy", "bronchial wall thickening"

#: Every name a known head or state yields; other names are fall-backs for rare, unlisted terms.
MESH_FINDING_NAMES: frozenset[str] = frozenset(
    {
        *MESH_HEAD_NAMES.values(),
        *MESH_STATE_NAMES.values(),
        *MESH_ENLARGED_NAMES.values(),
        *MESH_PLEURAL_NAMES.values(),
        _LYMPHADENOPATHY,
        _BRONCHIAL_THICKENING,
    }
)


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def _anatomy_name(head: str, qualifiers: list[str]) -> str:
    """Name a finding filed under an anatomical head, from its state qualifier."""
    if head == "lymph nodes" or "lymph nodes" in qualifiers:
        return _LYMPHADENOPATHY
    for qualifier in qualifiers:
        if qualifier in _ENLARGED_STATES:
            if head == "lung" and "hilum" not in qualifiers:
                return "increased markings"
            return MESH_ENLARGED_NAMES.get(head, f"enlarged {head}")
        if qualifier in MESH_STATE_NAMES:
            return MESH_STATE_NAMES[qualifier]
    # An anatomy head with no recognised state (e.g. "Heart/small"): keep the structure's name
    # so that nothing is silently lost; ``source`` still holds the full term.
    return head


def parse_mesh_term(term: str) -> Finding | None:
    """Parse one IU MeSH major term into a :class:`Finding`.

    Args:
        term: e.g. ``"Pleural Effusion/right/small"`` or ``"Nodule/lung/upper lobe/right"``.

    Returns:
        The finding, or ``None`` for terms that name no finding (``normal``, ``No Indexing``).
        Heads outside :data:`MESH_HEAD_NAMES` fall back to their lower-cased text (or, for
        anatomical heads, to their state qualifier), so no annotation is dropped.

    Raises:
        TypeError: if ``term`` is not a string.
        ValueError: if ``term`` is empty.
    """
    if not isinstance(term, str):
        raise TypeError(f"MeSH term must be a str, got {type(term).__name__}")
    parts = [_normalise(p) for p in term.split("/")]
    if not parts[0]:
        raise ValueError(f"MeSH term has no head: {term!r}")
    head, qualifiers = parts[0], [q for q in parts[1:] if q]
    if head in MESH_NO_FINDING_TERMS:
        return None
    if head in MESH_PLEURAL_NAMES and "pleura" in qualifiers:
        name = MESH_PLEURAL_NAMES[head]
    elif head == "thickening" and {"bronchovascular", "bronchi"} & set(qualifiers):
        name = _BRONCHIAL_THICKENING
    elif head == "markings":
        name = "interstitial markings" if "interstitial" in qualifiers else "increased markings"
    elif head in MESH_HEAD_NAMES:
        name = MESH_HEAD_NAMES[head]
    else:
        name = _anatomy_name(head, qualifiers)
    # The first qualifier of each kind wins: terms list the main location before sub-locations.
    side = next((q for q in qualifiers if q in MESH_SIDES), None)
    zone = next((MESH_ZONES[q] for q in qualifiers if q in MESH_ZONES), None)
    severity = next((q for q in qualifiers if q in MESH_SEVERITIES), None)
    return Finding(name=name, side=side, zone=zone, severity=severity, source=term)


def mesh_to_findings(terms: Iterable[str]) -> tuple[Finding, ...]:
    """Parse MeSH major terms, dropping those that name no finding.

    Args:
        terms: raw MeSH major terms of one report.

    Returns:
        One finding per term that names a finding, in input order.
    """
    if isinstance(terms, str):
        raise TypeError("mesh_to_findings expects an iterable of terms, not a single str")
    parsed = (parse_mesh_term(t) for t in terms)
    return tuple(f for f in parsed if f is not None)


def findings_to_chexpert(findings: Iterable[Finding]) -> dict[str, Label]:
    """The 14 CheXpert observations a human MeSH annotation implies.

    MeSH indexing lists every finding the annotator saw in the report, so an observation in
    :data:`MESH_COVERED_OBSERVATIONS` with no matching finding is 0.0 (absent), one with a
    matching finding (see :data:`MESH_TO_CHEXPERT`) is 1.0. MeSH has no uncertain grade, so
    -1.0 never occurs. "No Finding" follows CheXpert's rule: 1.0 when no observation other
    than Support Devices is present, else 0.0; a report annotated ``normal`` has no findings
    and so gets 1.0. Observations MeSH does not cover stay ``None``.

    A report annotated ``No Indexing`` also parses to no findings; it has no reference at
    all, so use :func:`report_chexpert_labels` for whole reports.

    Args:
        findings: parsed findings of one report, e.g. ``IUReport.findings``.

    Returns:
        Observation -> label, keyed by all of :data:`CHEXPERT_OBSERVATIONS` in order.
    """
    present: set[str] = set()
    for finding in findings:
        if not isinstance(finding, Finding):
            raise TypeError(f"expected Finding, got {type(finding).__name__}")
        present.update(MESH_TO_CHEXPERT.get(finding.name, ()))
    labels: dict[str, Label] = {}
    for obs in CHEXPERT_OBSERVATIONS:
        if obs not in MESH_COVERED_OBSERVATIONS:
            labels[obs] = None
        elif obs == "No Finding":
            labels[obs] = 0.0 if present - {"Support Devices"} else 1.0
        else:
            labels[obs] = 1.0 if obs in present else 0.0
    return labels
