"""flamingo_lib: a faithful, tested Flamingo for chest X-ray report generation.

Public names: :class:`FlamingoConfig`, :class:`FlamingoModel`, :class:`FlamingoProcessor`.
"""

from flamingo_lib.modeling.config import FlamingoConfig
from flamingo_lib.modeling.model import FlamingoModel
from flamingo_lib.processing.processor import FlamingoProcessor

# Registers the embedded encoders' name resolver with the model's backbone registry (cheap: it
# imports their builders only when an ``embedded-*`` name is loaded).
import flamingo_lib.encoders  # noqa: E402,F401  isort: skip

__all__ = ["FlamingoConfig", "FlamingoModel", "FlamingoProcessor"]
__version__ = "0.1.0"
