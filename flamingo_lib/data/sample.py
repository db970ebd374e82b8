"""The one sample type every data source yields, and the structured finding it may carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from flamingo_lib.observations import CHEXPERT_OBSERVATIONS  # noqa: F401  (re-exported: the label vocabulary)

# Report sections that state why the film was taken, in order of preference.
INDICATION_SECTIONS = ("INDICATION", "HISTORY", "CLINICAL HISTORY", "CLINICAL INFORMATION", "REASON FOR EXAM",
                       "REASON FOR EXAMINATION")

# A CheXpert label value: 1.0 positive, 0.0 negative, -1.0 uncertain, None not mentioned.
Label = float | None


@dataclass(frozen=True)
class Finding:
    """One structured radiological finding, e.g. parsed from the MeSH term
    ``Pleural Effusion/right/small``.

    Attributes:
        name: canonical finding name (e.g. ``"pleural effusion"``), lower case.
        side: ``"left"``, ``"right"``, ``"bilateral"`` or ``None`` when unstated.
        zone: ``"upper"``, ``"middle"``, ``"lower"``, ``"base"``, ``"apex"``, ... or ``None``.
        severity: ``"mild"``, ``"moderate"``, ``"severe"``, ``"small"``, ``"large"``, ... or ``None``.
        source: the raw text the finding was parsed from, kept for traceability.
    """

    name: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    source: str = ""


@dataclass
class CXRSample:
    """One study: its images, its report and whatever annotation the source provides.

    Attributes:
        id: stable identifier inside its source (study id, report id, ...).
        images: one PIL image per view (frontal first where known).
        report: the target text: FINDINGS, falling back to IMPRESSION.
        sections: every report section found, upper-case name -> text.
        findings: structured findings, when the source has them (phantom, IU MeSH).
        labels: the 14 CheXpert observations -> 1.0 / 0.0 / -1.0 / None.
        masks: finding name -> boolean array (H, W) of the first image, when known.
        views: view position per image (``"PA"``, ``"AP"``, ``"LATERAL"``, ...).
        meta: anything else the source knows (subject id, paths, dates, ...).
        prior: the same patient's most recent earlier study, when the source knows it (its own
            ``prior`` is left None: one study back is what a prompt reads), else None.
    """

    id: str
    images: list[Image.Image]
    report: str
    sections: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    labels: dict[str, Label] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    prior: "CXRSample | None" = None

    @property
    def indication(self) -> str:
        """The clinical question: the report's INDICATION section, else its HISTORY (or
        CLINICAL HISTORY / REASON FOR EXAM), else ""; never text from FINDINGS or IMPRESSION."""
        for name in INDICATION_SECTIONS:
            text = self.sections.get(name, "").strip()
            if text:
                return text
        return ""
