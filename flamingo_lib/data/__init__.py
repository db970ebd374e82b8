"""Data sources: every one yields :class:`CXRSample`."""

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample, Finding

__all__ = ["CHEXPERT_OBSERVATIONS", "CXRSample", "Finding"]
