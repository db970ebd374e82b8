"""Studies from image files on disk: what a reader hands :mod:`flamingo_lib.cli.write_reports` to have
new films reported.

A file given by name is a study of one image. A folder is searched below itself, and every folder
there that directly holds image files is one study, its images in name order with frontal views
first where a DICOM header names the view (``ViewPosition``; MIMIC-CXR's ``files/p10/p10000032/
s50414267/`` folders are studies so). ``one_per_image`` makes every image its own study instead
(IU X-Ray's PNG folder holds every study's films side by side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flamingo_lib.data.errors import DataError, load_image
from flamingo_lib.data.sample import CXRSample

#: The file types read as images (``.dcm`` through :func:`~flamingo_lib.data.datasets.dicom.read_dicom`).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp")

# Frontal first (PA before AP, the cleaner projection), then laterals, then the rest; a file whose
# view is unknown (any PNG or JPEG, a DICOM without ViewPosition) keeps its name order after them.
_VIEW_ORDER = ("PA", "AP", "LATERAL", "LL")


@dataclass(frozen=True)
class StudyFiles:
    """One study's image files.

    Attributes:
        id: the file's path without its suffix, or the study folder's path, as found.
        paths: the image files, frontal views first where known, else in name order.
        views: the DICOM ``ViewPosition`` of each file, ``""`` where unknown (and for a study of one
            file, whose header is not read: there is nothing to order).
    """

    id: str
    paths: tuple[Path, ...]
    views: tuple[str, ...]


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def view_position(path: Path) -> str:
    """A DICOM file's ``ViewPosition`` (upper case), read from its header only; ``""`` for other
    files and for headers without one."""
    if path.suffix.lower() != ".dcm":
        return ""
    import pydicom  # only for DICOM inputs
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as error:
        raise DataError("corrupt_image", path, f"not a readable DICOM file: {error}") from error
    return str(header.get("ViewPosition", "") or "").strip().upper()


def _study(study_id: str, paths: Sequence[Path]) -> StudyFiles:
    named = sorted(paths, key=lambda p: p.name)
    if len(named) == 1:  # nothing to order: no header read (a tree of single-film studies starts at once)
        return StudyFiles(study_id, tuple(named), ("",))
    views = {path: view_position(path) for path in named}
    rank = {view: i for i, view in enumerate(_VIEW_ORDER)}
    ordered = sorted(named, key=lambda p: rank.get(views[p], len(rank)))  # stable: name order within a rank
    return StudyFiles(study_id, tuple(ordered), tuple(views[p] for p in ordered))


def find_studies(inputs: Sequence[str | Path], one_per_image: bool = False) -> list[StudyFiles]:
    """The studies in ``inputs`` (files and folders), in the order given, folders in name order.

    Raises:
        DataError: ``missing_input`` (no such path), ``not_an_image`` (a file of another type given
            by name), ``no_images`` (a folder with no image file below it), ``duplicate_image``
            (one file reached twice: it would be reported twice, or join two studies).
    """
    studies: list[StudyFiles] = []
    for given in map(Path, inputs):
        if not given.exists():
            raise DataError("missing_input", given, "no such file or folder")
        if given.is_file():
            if given.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError("not_an_image", given, "not an image file", expected=" ".join(IMAGE_SUFFIXES),
                                got=given.suffix or "no suffix")
            studies.append(_study(str(given.with_suffix("")), [given]))
            continue
        images = sorted(path for path in given.rglob("*") if is_image_file(path))
        if not images:
            raise DataError("no_images", given, f"no image files ({' '.join(IMAGE_SUFFIXES)}) in this folder or below")
        if one_per_image:
            studies += [_study(str(path.with_suffix("")), [path]) for path in images]
            continue
        folders: dict[Path, list[Path]] = {}
        for path in images:
            folders.setdefault(path.parent, []).append(path)
        studies += [_study(str(folder), paths) for folder, paths in sorted(folders.items())]
    seen: dict[Path, str] = {}
    for study in studies:
        for path in study.paths:
            resolved = path.resolve()
            if resolved in seen:
                raise DataError("duplicate_image", path, f"this image is reached twice (also in study {seen[resolved]})")
            seen[resolved] = study.id
    return studies


def load_study(study: StudyFiles, image_size: int | None = None) -> CXRSample:
    """The study's images as a :class:`CXRSample` with no report (``meta["paths"]``: its files).

    Args:
        image_size: downscale each image so its longer side is at most this (as the data sources
            do when training: pass the run's ``image_size``).

    Raises:
        DataError: a file that cannot be decoded, naming it.
    """
    images = [load_image(path, image_size) for path in study.paths]
    return CXRSample(id=study.id, images=images, report="", views=list(study.views),
                     meta={"paths": [str(path) for path in study.paths]})
