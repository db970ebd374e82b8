"""Chest radiographs straight from DICOM, rendered the way a reading station would.

:func:`read_dicom` turns stored pixel values (12–16-bit, either polarity) into an
8-bit greyscale image with bone bright:

1. the modality LUT / rescale slope-intercept (pydicom);
2. the VOI LUT sequence, else the window centre/width, when the file has one
   (pydicom), the output range mapped to 0–255;
3. otherwise, or when that window would clip nearly every pixel, a robust
   percentile window (0.5–99.5 % by default) instead of min–max, so a few hot or
   dead pixels and burnt-in labels do not wash out the lungs;
4. MONOCHROME1 (low values displayed white, common for CR) inverted.

The Presentation LUT Shape is not applied on top: for a conformant file it only
restates the polarity that PhotometricInterpretation already gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from flamingo_lib.data.errors import DataError, OnError, PolicyDataset
from flamingo_lib.data.report_sections import split_sections, target_text
from flamingo_lib.data.sample import CXRSample

logger = logging.getLogger(__name__)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Below this fraction of pixels strictly inside the stored window, the window is
# taken to be wrong for this image (e.g. copied from another series) and ignored.
_MIN_INSIDE_WINDOW = 0.02


def _stored_window(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """The file's own VOI transform scaled to [0, 1], or None when it has none."""
    if "VOILUTSequence" in ds:
        out = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return np.clip(out / (2**bits - 1), 0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        out = apply_windowing(pixels, ds)
        # pydicom maps to an output range that depends on bit depth and rescale;
        # windowing two extreme values recovers that range exactly.
        with np.errstate(over="ignore"):
            low, high = apply_windowing(np.array([-1e300, 1e300]), ds)
        return np.clip((out - low) / (high - low), 0.0, 1.0)
    return None


def _percentile_window(pixels: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Scale so the given percentiles map to 0 and 1 (clipping beyond)."""
    low, high = np.percentile(pixels, percentiles)
    if high <= low:  # nearly constant image: fall back to the full range
        low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.float64)
    return np.clip((pixels - low) / (high - low), 0.0, 1.0)


def read_dicom(
    path: str | Path,
    frame: int | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> Image.Image:
    """Read a DICOM radiograph as an 8-bit, mode ``"L"`` PIL image, bone bright.

    Args:
        path: the ``.dcm`` file.
        frame: which frame of a multi-frame file to read. Multi-frame files raise
            unless a frame is chosen, because silently taking one frame of, say, a
            tomosynthesis series would mislabel the study.
        percentiles: the fallback window when the file has no usable VOI LUT or
            window centre/width.

    Returns:
        The rendered image. Colour files (rare for CXR) are converted to greyscale.

    Raises:
        DataError: ``corrupt_image`` (not DICOM, no pixel data, undecodable),
            ``multi_frame`` (several frames and no ``frame``), ``bad_frame``.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as error:
        raise DataError("corrupt_image", path, f"not a readable DICOM file: {error}") from error
    if "PixelData" not in ds:
        raise DataError("corrupt_image", path, "DICOM file has no PixelData element")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 and frame is None:
        raise DataError("multi_frame", path, "multi-frame DICOM; pass frame=<index> to choose one",
                        expected="1 frame", got=f"{n_frames} frames")  # fmt: skip
    if frame is not None and not 0 <= frame < n_frames:
        raise DataError("bad_frame", path, "frame index out of range", expected=f"0..{n_frames - 1}", got=frame)
    try:
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for missing codecs / bad data
        raise DataError("corrupt_image", path, f"cannot decode pixel data: {error}") from error
    if n_frames > 1:
        pixels = pixels[frame]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in _MONOCHROME:
        # pydicom already converted YBR to RGB; 8-bit colour just needs greyscale.
        return Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("L")

    values = apply_modality_lut(pixels, ds).astype(np.float64)
    scaled = _stored_window(values, ds)
    if scaled is not None and np.mean((scaled > 0) & (scaled < 1)) < _MIN_INSIDE_WINDOW:
        logger.warning("%s: stored window clips almost every pixel; using percentiles", path)
        scaled = None
    if scaled is None:
        scaled = _percentile_window(values, percentiles)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.round(scaled * 255.0).astype(np.uint8))


class DicomFolder(PolicyDataset):
    """A folder of single-image DICOM files, one sample per file.

    Args:
        root: the folder, searched recursively for ``*.dcm``.
        reports: the report per file: a mapping keyed by file stem, or a callable
            taking the file path and returning the text (None when it has none).
            Reports with FINDINGS/IMPRESSION headers are split into sections;
            header-less text is taken as FINDINGS.
        on_error: ``"raise"`` or ``"skip"``.
        credentialed: whether the files fall under a data use agreement. Defaults to
            True because DICOM usually comes from clinical systems; pass False
            for public data so it can be exported.
    """

    def __init__(
        self,
        root: str | Path,
        reports: Mapping[str, str] | Callable[[Path], str | None],
        on_error: OnError = "raise",
        credentialed: bool = True,
    ) -> None:
        super().__init__(f"DicomFolder({Path(root).name})", on_error)
        self.root, self.credentialed = Path(root), credentialed
        lookup = reports if callable(reports) else (lambda path: reports.get(path.stem))
        self._items: list[tuple[Path, dict[str, str], str]] = []
        for path in sorted(self.root.rglob("*.dcm")):
            try:
                sections = self._sections(path, lookup(path))
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError) as error:
                self.skip_log.handle(DataError("corrupt_image", path, f"not a readable DICOM file: {error}"))
                continue
            except DataError as error:
                self.skip_log.handle(error)
                continue
            view = str(header.get("ViewPosition", "") or "UNKNOWN").strip().upper()
            self._items.append((path, sections, view))
        self.skip_log.log_summary()

    @staticmethod
    def _sections(path: Path, text: str | None) -> dict[str, str]:
        if text is None or not text.strip():
            raise DataError("missing_report", path, "no report text for this file")
        sections = split_sections(text) or {"FINDINGS": " ".join(text.split())}
        if not target_text(sections):
            raise DataError("no_target_section", path, "report has sections but neither FINDINGS nor IMPRESSION",
                            got=sorted(sections))  # fmt: skip
        return sections

    def __len__(self) -> int:
        return len(self._items)

    def _load(self, index: int) -> CXRSample:
        path, sections, view = self._items[index]
        return CXRSample(
            id=str(path.relative_to(self.root).with_suffix("")),
            images=[read_dicom(path)],
            report=target_text(sections),
            sections=dict(sections),
            views=[view],
            meta={"source": "dicom", "credentialed": self.credentialed, "paths": [str(path)]},
        )
