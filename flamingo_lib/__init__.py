"""flamingo_lib: a faithful, tested Flamingo for chest X-ray report generation.

Public names: :class:`FlamingoConfig`, :class:`FlamingoModel`, :class:`FlamingoProcessor`.
"""

from flamingo_lib.config import FlamingoConfig
from flamingo_lib.model import FlamingoModel
from flamingo_lib.processor import FlamingoProcessor

__all__ = ["FlamingoConfig", "FlamingoModel", "FlamingoProcessor"]
__version__ = "0.1.0"
