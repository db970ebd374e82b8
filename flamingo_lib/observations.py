"""The label vocabulary shared by every layer: the CheXpert observations and the findings head's subset."""

from __future__ import annotations

#: The 14 CheXpert observations, spelled and ordered as the CheXpert labeler writes them.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The observations the head predicts by default: the 14 CheXpert observations but "No Finding"
#: (an absence, implied by the others).
FINDINGS_OBSERVATIONS: tuple[str, ...] = tuple(obs for obs in CHEXPERT_OBSERVATIONS if obs != "No Finding")
