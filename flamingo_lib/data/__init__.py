"""Data sources: every one yields :class:`CXRSample`.

Sources load lazily (``flamingo_lib.data.MimicCXR`` imports its module on first use), so that
optional dependencies (pydicom, torchxrayvision, matplotlib) are only needed by what uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample, Finding

_LAZY = {
    "split_sections": "report_sections", "target_text": "report_sections",
    "DataError": "errors", "SkipLog": "errors",
    "MimicCXR": "mimic",
    "IUXray": "iu_xray", "R2GenAnnotation": "iu_xray",
    "ChexDataset": "chex", "write_chex": "chex", "CredentialedExportError": "chex",
    "read_dicom": "dicom", "DicomFolder": "dicom",
    "label_prevalence": "inspect", "report_lengths": "inspect", "plot_report_lengths": "inspect",
    "plot_image_grid": "inspect",
    "PhantomCXR": "phantom",
    "IUReport": "iu_reports", "load_iu_reports": "iu_reports", "iu_split": "iu_reports",
}

__all__ = ["CHEXPERT_OBSERVATIONS", "CXRSample", "Finding", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"flamingo_lib.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'flamingo_lib.data' has no attribute {name!r}")
