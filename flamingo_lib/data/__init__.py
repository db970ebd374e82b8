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
    "MimicCXR": "datasets.mimic",
    "IUXray": "datasets.iu_xray", "R2GenAnnotation": "datasets.iu_xray",
    "ChexDataset": "datasets.chex", "write_chex": "datasets.chex", "CredentialedExportError": "datasets.chex",
    "read_dicom": "datasets.dicom", "DicomFolder": "datasets.dicom",
    "label_prevalence": "inspect", "report_lengths": "inspect", "plot_report_lengths": "inspect",
    "plot_image_grid": "inspect",
    "PhantomCXR": "phantom.dataset",
    "IUReport": "datasets.iu_reports", "load_iu_reports": "datasets.iu_reports", "iu_split": "datasets.iu_reports",
}

__all__ = ["CHEXPERT_OBSERVATIONS", "CXRSample", "Finding", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"flamingo_lib.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'flamingo_lib.data' has no attribute {name!r}")
