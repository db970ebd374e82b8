"""The bad-input policy every loader shares.

Real chest X-ray releases are big and slightly broken: a report missing here, a
truncated JPEG there. Each loader takes ``on_error``:

* ``"raise"`` (default): the first problem raises :class:`DataError`, whose message
  names the file (and field) and what was expected versus what was found.
* ``"skip"``: each problem is logged as a warning, counted by reason in a
  :class:`SkipLog`, and the item is left out. The summary is logged once after
  construction and once at the end of every iteration that skipped something.

Loaders validate all they cheaply can (index files, report presence and content,
image files existing, optionally image headers) at construction, so the index
holds only usable samples. Image pixels are decoded lazily; a file that still fails
then is handled by :class:`PolicyDataset`, so an epoch never dies half-way in skip
mode.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from flamingo_lib.data.sample import CXRSample

OnError = Literal["raise", "skip"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem with one input item (file, row, field), not with the code.

    Attributes:
        reason: a short machine-readable key (``"missing_report"``,
            ``"corrupt_image"``, ...) used to count skips.
        where: the file (and row/field) the problem was found in.
    """

    def __init__(
        self,
        reason: str,
        where: str | Path,
        detail: str,
        *,
        expected: object = None,
        got: object = None,
    ) -> None:
        self.reason = reason
        self.where = str(where)
        message = f"{where}: {detail}"
        if expected is not None or got is not None:
            message += f" (expected {expected}, got {got!r})"
        super().__init__(message)


def check_on_error(on_error: str) -> OnError:
    """Validate an ``on_error`` argument.

    Raises:
        ValueError: when it is neither ``"raise"`` nor ``"skip"``.
    """
    allowed = get_args(OnError)
    if on_error not in allowed:
        raise ValueError(f"on_error must be one of {allowed}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


class SkipLog:
    """Applies the policy to one :class:`DataError` at a time and counts skips.

    Args:
        source: the loader's name, used in log lines (``"MimicCXR(train)"``).
        on_error: ``"raise"`` re-raises every error; ``"skip"`` logs and counts.
    """

    def __init__(self, source: str, on_error: OnError = "raise") -> None:
        self.source = source
        self.on_error = check_on_error(on_error)
        self.counts: Counter[str] = Counter()
        self._logged_total = 0

    @property
    def total(self) -> int:
        """How many items were skipped so far."""
        return sum(self.counts.values())

    def handle(self, error: DataError) -> None:
        """Raise ``error`` in raise mode; otherwise warn and count it."""
        if self.on_error == "raise":
            raise error
        self.counts[error.reason] += 1
        logger.warning("%s: skipped: %s", self.source, error)

    def summary(self) -> str:
        """One line: how many items were skipped, by reason."""
        if not self.counts:
            return f"{self.source}: nothing skipped"
        reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts.items()))
        return f"{self.source}: skipped {self.total} item(s): {reasons}"

    def log_summary(self) -> None:
        """Log :meth:`summary` if anything was skipped since the last call."""
        if self.total != self._logged_total:
            self._logged_total = self.total
            logger.warning("%s", self.summary())


class PolicyDataset(ABC):
    """Map-style dataset base that applies the ``on_error`` policy to lazy loads.

    Subclasses build their index at construction (handling what they find through
    :attr:`skip_log`) and implement :meth:`__len__` and :meth:`_load`, which raises
    :class:`DataError` for a bad item.

    In skip mode, ``dataset[i]`` for an item that fails to load returns the next
    loadable item instead (wrapping around), because a ``DataLoader`` needs a sample
    for every index; iterating with ``for sample in dataset`` simply leaves bad items
    out. Skips that happen in ``DataLoader`` worker processes are counted in those
    workers' copies of the log.

    Args:
        source: the loader's name for log lines.
        on_error: ``"raise"`` or ``"skip"``.
    """

    def __init__(self, source: str, on_error: OnError) -> None:
        self.on_error = check_on_error(on_error)
        self.skip_log = SkipLog(source, self.on_error)

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples in the index."""

    @abstractmethod
    def _load(self, index: int) -> CXRSample:
        """Load sample ``index``; raise :class:`DataError` when it is unusable."""

    def __getitem__(self, index: int) -> CXRSample:
        """Sample ``index``; in skip mode the next loadable one if it fails."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        if self.on_error == "raise":
            return self._load(index)
        for offset in range(n):
            try:
                return self._load((index + offset) % n)
            except DataError as error:
                self.skip_log.handle(error)
        self.skip_log.log_summary()
        raise DataError("no_loadable_sample", self.skip_log.source, "every sample failed to load")

    def __iter__(self) -> Iterator[CXRSample]:
        """Every loadable sample in order; the skip summary is logged at the end."""
        try:
            for index in range(len(self)):
                try:
                    yield self._load(index)
                except DataError as error:
                    self.skip_log.handle(error)
        finally:
            self.skip_log.log_summary()


# --- image files --------------------------------------------------------------


def path_in_root(root: Path, relative: object, where: str, *, allow_outside: bool = False) -> Path:
    """``root / relative`` for a path an annotation file names.

    An annotation file may come from anyone: a path that is absolute or climbs out of ``root``
    (``../outside/secret.png``) would read files that are not the dataset's, so it is refused
    unless the user opts in.

    Raises:
        DataError: ``bad_entry`` (not a non-empty string) or ``outside_root``.
    """
    if not isinstance(relative, str) or not relative:
        raise DataError("bad_entry", where, "an image path must be a non-empty string", expected="str", got=relative)
    path = root / relative
    if not allow_outside and (Path(relative).is_absolute() or not path.resolve().is_relative_to(root.resolve())):
        raise DataError("outside_root", where, f"the image path leads outside the dataset folder {root}",
                        expected="a path inside it (or allow_outside_root=True)", got=relative)
    return path


def check_image_file(path: Path, *, open_header: bool = False) -> None:
    """Cheap construction-time check that ``path`` holds an image.

    Args:
        path: the image file.
        open_header: also let PIL parse the header (catches non-images and files
            truncated before the pixel data, not damage inside the pixel data).

    Raises:
        DataError: ``missing_image`` or ``corrupt_image``.
    """
    if not path.is_file():
        raise DataError("missing_image", path, "image file not found")
    if open_header and path.suffix.lower() != ".dcm":
        try:
            # Image.open parses the header and stops before the pixel data.
            with Image.open(path):
                pass
        except Image.DecompressionBombError as error:
            raise _too_large(path, error) from error
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError("corrupt_image", path, f"not a readable image: {error}") from error


def _too_large(path: Path, error: Exception) -> DataError:
    """PIL's refusal of an image that would decode to more pixels than it allows (a decompression
    bomb, or a film larger than any radiograph), as a data error naming the file."""
    return DataError("image_too_large", path, f"{error} (PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}; raise it "
                     "for genuinely larger films)")


def load_image(path: Path, image_size: int | None = None) -> Image.Image:
    """Decode an image file fully into memory (DICOM via :func:`read_dicom`).

    Args:
        path: a PNG/JPEG/... file, or a ``.dcm`` file.
        image_size: when given, downscale (never upscale) so the longer side is at
            most this many pixels, keeping the aspect ratio. JPEGs are decoded at
            reduced resolution directly, which is much faster for full-size CXRs.

    Returns:
        The image, mode ``"L"`` or ``"RGB"`` (16-bit and palette files are converted).

    Raises:
        DataError: ``missing_image``, ``corrupt_image`` or ``image_too_large``, naming the file.
    """
    if not path.is_file():
        raise DataError("missing_image", path, "image file not found")
    if path.suffix.lower() == ".dcm":
        from flamingo_lib.data.datasets.dicom import read_dicom  # avoid importing pydicom eagerly

        image = read_dicom(path)
    else:
        try:
            with Image.open(path) as opened:
                if image_size is not None:
                    opened.draft(opened.mode, (image_size, image_size))
                opened.load()
                image = opened.copy() if opened.mode in ("L", "RGB") else _to_8bit(opened)
        except Image.DecompressionBombError as error:  # not an OSError: it would escape on_error="skip"
            raise _too_large(path, error) from error
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError("corrupt_image", path, f"cannot decode image: {error}") from error
    if image_size is not None:
        image.thumbnail((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """Convert 16-bit / integer / palette images to 8-bit L or RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else pixels * 0.0
        return Image.fromarray(np.round(scaled).astype(np.uint8))
    return image.convert("RGB" if image.mode in ("P", "RGBA", "CMYK", "YCbCr") else "L")
