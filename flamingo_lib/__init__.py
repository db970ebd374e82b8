"""flamingo_lib: a faithful, tested Flamingo for chest X-ray report generation.

Public names: :class:`FlamingoConfig`, :class:`FlamingoModel`, :class:`FlamingoProcessor`. They are
imported on first use, so that ``import flamingo_lib`` (and a data loader or the labeler alone) does
not pay for torch and transformers (~4 s and ~0.9 GB of memory).
"""

from __future__ import annotations

import importlib
from typing import Any

# Registers the embedded encoders' name resolver with the model's backbone registry (cheap: it
# imports their builders only when an ``embedded-*`` name is loaded).
import flamingo_lib.encoders  # noqa: F401

_LAZY = {"FlamingoConfig": "flamingo_lib.modeling.config", "FlamingoModel": "flamingo_lib.modeling.model",
         "FlamingoProcessor": "flamingo_lib.processing.processor"}

__all__ = ["FlamingoConfig", "FlamingoModel", "FlamingoProcessor"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flamingo_lib' has no attribute {name!r}")
