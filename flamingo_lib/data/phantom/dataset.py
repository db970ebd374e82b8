"""PhantomCXR: procedurally rendered chest radiographs paired with report text.

Two text modes:

* ``text="iu"``: one study per Indiana University chest X-ray report. The target
  text is the real report (FINDINGS, falling back to IMPRESSION; reports with
  neither are skipped) and the image is rendered from the report's human MeSH
  annotation, so the pair is a real report with a synthetic film that shows what
  the annotators indexed (only :data:`RENDERABLE_FINDINGS`; the rest of the report
  is not on the film). Splits are IU's fixed report-level split
  (:func:`~flamingo_lib.data.datasets.iu_reports.iu_split`, 80/10/10), which is patient
  level because IU has one report per patient.
  The IU reports are © Indiana University, distributed by the Open-i service of
  the U.S. National Library of Medicine under CC BY-NC-ND 4.0; we read them from
  the installed ``torchxrayvision`` package and never copy them into this
  repository. Non-commercial use only; do not redistribute modified report text.
* ``text="templated"``: :data:`TEMPLATED_SPLIT_SIZES` synthetic patients per split,
  one study each (so splits are patient-disjoint by construction); findings from
  :func:`~flamingo_lib.data.phantom.text.sample_findings` seeded by
  ``(seed, split, index)`` and a templated report. Needs no download.

Determinism: the image of a study is a pure function of its findings and its image
seed, ``sha256(report id, dataset seed)``, never Python's ``hash()``.

Rendered images and masks are cached on disk, one ``.npz`` per study (images as
``uint8``, masks bit-packed), under ``<root>/<fingerprint>/`` where the fingerprint
covers the renderer version, image size and views. The root is ``cache_dir`` if
given, else ``$FLAMINGO_CACHE_DIR/phantom``, else ``~/.cache/flamingo_lib/phantom``.
Files are written to a temporary name and renamed into place, so concurrent
workers and interrupted runs never leave a half-written entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from flamingo_lib.data.licence import licence_meta
from flamingo_lib.data.phantom.render import (
    MIN_IMAGE_SIZE,
    RENDERER_VERSION,
    VIEWS,
    render_phantom,
    stable_seed,
)
from flamingo_lib.data.phantom.text import findings_to_labels, sample_findings, templated_report
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample, Finding
from flamingo_lib.cache_dirs import cache_root
from flamingo_lib.io import atomic_path

if TYPE_CHECKING:
    from flamingo_lib.data.datasets.iu_reports import IUReport

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
TEXT_MODES: tuple[str, ...] = ("iu", "templated")
#: Synthetic patients per split in ``text="templated"`` mode.
TEMPLATED_SPLIT_SIZES: dict[str, int] = {"train": 2000, "val": 250, "test": 250}

UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class _Study:
    id: str
    report: str
    sections: dict[str, str]
    findings: tuple[Finding, ...]
    meta: dict[str, object]


def default_cache_root() -> Path:
    """``$FLAMINGO_CACHE_DIR/phantom`` if set, else ``~/.cache/flamingo_lib/phantom``."""
    return cache_root("phantom")


class StudyIndex:
    """What a phantom's index of studies (``_studies``: ``id``, ``report``; ``views``) answers without
    rendering a film: its length, ids, reports and films per study (one per view)."""

    _studies: list[Any]
    views: tuple[str, ...]

    def __len__(self) -> int:
        return len(self._studies)

    @property
    def ids(self) -> list[str]:
        """Study ids in index order."""
        return [s.id for s in self._studies]

    @property
    def reports(self) -> list[str]:
        """Report texts in index order, without rendering any film."""
        return [s.report for s in self._studies]

    @property
    def image_counts(self) -> list[int]:
        """How many films each study has (one per view; a prior's not counted), without rendering any."""
        return [len(self.views)] * len(self._studies)


class PhantomCXR(StudyIndex):
    """Map-style dataset of rendered chest radiographs (usable as a ``torch`` Dataset).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square images in pixels.
        text: ``"iu"`` (real IU reports) or ``"templated"`` (synthetic reports).
        seed: dataset seed; changes every patient's anatomy (and, for templated
            text, the finding sets) but not the split membership.
        views: views rendered per study, from ``("PA", "LATERAL")``; masks are
            those of the first view.
        cache_dir: root of the image cache (see the module docstring).
        cache: set ``False`` to render every access and write nothing.
        max_samples: keep only the first this many studies of the split.
        reports: IU reports to use instead of
            :func:`~flamingo_lib.data.datasets.iu_reports.load_iu_reports` (``text="iu"`` only).

    Raises:
        ValueError: for an unknown split, text mode or view, or a bad size/count.
        TypeError: for a non-integer seed.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 224,
        text: str = "iu",
        seed: int = 0,
        views: Sequence[str] = ("PA",),
        cache_dir: str | os.PathLike[str] | None = None,
        cache: bool = True,
        max_samples: int | None = None,
        reports: Sequence[IUReport] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, got {text!r}")
        views = (views,) if isinstance(views, str) else tuple(views)
        bad = [v for v in views if v not in VIEWS]
        if not views or bad:
            raise ValueError(f"views must be a non-empty sequence of {VIEWS}, got {views!r}")
        check_arguments(image_size, seed, max_samples)
        if reports is not None and text != "iu":
            raise ValueError("reports= only applies to text='iu'")
        self.split, self.image_size, self.text, self.seed, self.views = split, image_size, text, seed, views
        self._studies = self._iu_studies(reports) if text == "iu" else self._templated_studies()
        if max_samples is not None:
            self._studies = self._studies[:max_samples]
        self.cache_dir = render_cache_dir(cache, cache_dir, image_size, views)

    # --- index ----------------------------------------------------------------------------

    def _iu_studies(self, reports: Sequence[IUReport] | None) -> list[_Study]:
        from flamingo_lib.data.datasets.iu_reports import iu_split, load_iu_reports  # parses the archive lazily

        studies = []
        for r in load_iu_reports() if reports is None else reports:
            if iu_split(r.id) != self.split or not r.report:
                continue
            meta = {"report_id": r.id, "mesh": list(r.mesh_major), "image_ids": list(r.image_ids)}
            studies.append(_Study(r.id, r.report, dict(r.sections), tuple(r.findings), meta))
        return studies

    def _templated_studies(self) -> list[_Study]:
        studies = []
        for index in range(TEMPLATED_SPLIT_SIZES[self.split]):
            rng = random.Random(stable_seed("phantom-templated", self.seed, self.split, index))
            findings = sample_findings(rng)
            report = templated_report(findings, rng)
            study_id = f"phantom-{self.split}-{index:05d}"
            studies.append(_Study(study_id, report, {"FINDINGS": report}, findings, {"report_id": study_id}))
        return studies

    def text_samples(self) -> list[CXRSample]:
        """Every study without its films, in index order: report, findings and labels as
        ``self[i]`` carries them, ``images`` and ``masks`` empty; nothing is rendered."""
        return [self._text_sample(study) for study in self._studies]

    def _text_sample(self, study: _Study) -> CXRSample:
        """What a study's sample carries before its films are rendered."""
        return CXRSample(id=study.id, images=[], report=study.report, sections=dict(study.sections),
                         findings=list(study.findings), labels=findings_to_labels(study.findings),
                         meta=dict(study.meta, split=self.split, dataset_seed=self.seed, text=self.text,
                                   **licence_meta(False, None, "phantom: synthetic films")))

    def image_seed(self, index: int) -> int:
        """The render seed of study ``index``: ``sha256(report id, dataset seed)``."""
        return stable_seed("phantom-image", self._studies[index].id, self.seed)

    def label_frame(self) -> pd.DataFrame:
        """The 14 CheXpert labels of every study (rows indexed by id), without rendering."""
        rows = [findings_to_labels(s.findings) for s in self._studies]
        frame = pd.DataFrame(rows, columns=list(CHEXPERT_OBSERVATIONS), index=pd.Index(self.ids, name="id"))
        return frame.astype(float)

    # --- samples --------------------------------------------------------------------------

    def __getitem__(self, index: int) -> CXRSample:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"index {index!r} out of range for {n} studies")
        index = int(index) % n
        sample = self._text_sample(self._studies[index])
        images, masks = self._images(index)
        meta = sample.meta | {"seed": self.image_seed(index), "renderer_version": RENDERER_VERSION}
        return dataclasses.replace(sample, images=images, masks=masks, views=list(self.views), meta=meta)

    def _render(self, study: _Study, seed: int) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
        images, masks = [], {}
        for i, view in enumerate(self.views):
            image, view_masks = render_phantom(
                study.findings, seed=seed, image_size=self.image_size, view=view
            )
            images.append(image)
            if i == 0:
                masks = view_masks
        return images, masks

    def cache_path(self, index: int) -> Path | None:
        """Where study ``index`` is cached (``None`` with caching off)."""
        if self.cache_dir is None:
            return None
        study = self._studies[index]
        return entry_path(self.cache_dir, study.id, self.image_seed(index), study.findings)

    def _images(self, index: int) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
        return cached_render(self.cache_path(index), len(self.views),
                             lambda: self._render(self._studies[index], self.image_seed(index)))


def check_arguments(image_size: Any, seed: Any, max_samples: Any) -> None:
    """Refuse a phantom's arguments of the wrong kind, naming each."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 0):
        raise ValueError(f"max_samples must be None or an int >= 0, got {max_samples!r}")


def render_cache_dir(cache: bool, cache_dir: str | Path | None, image_size: int, views: Sequence[str]) -> Path | None:
    """Where a phantom's films are cached (None with caching off): one folder per renderer version,
    image size and views under ``cache_dir`` (default :func:`default_cache_root`), shared by every
    phantom, so a study rendered by one is read by the other."""
    if not cache:
        return None
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    fingerprint = json.dumps({"renderer": RENDERER_VERSION, "size": image_size, "views": views})
    return root / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def entry_path(cache_dir: Path, study_id: str, seed: int, findings: Sequence[Finding]) -> Path:
    """The cache entry of a study: its id (made safe for a file name) and a digest of what its film is
    a function of (id, image seed, findings), so another phantom's study of the same id and findings
    (the longitudinal phantom's) shares the entry."""
    key = json.dumps([study_id, seed, [dataclasses.astuple(f) for f in findings]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{UNSAFE_ID_CHARS.sub('_', study_id)}-{digest}.npz"


def cached_render(path: Path | None, n_views: int,
                  render: Callable[[], tuple[list[Image.Image], dict[str, np.ndarray]]]
                  ) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
    """The entry at ``path`` when it is readable, else ``render()`` written there (``path`` None: no cache)."""
    if path is not None and path.is_file():
        try:
            return read_entry(path, n_views)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            logger.warning("phantom cache entry %s unreadable (%s); re-rendering", path, error)
    images, masks = render()
    if path is not None:
        write_entry(path, images, masks)
    return images, masks


def write_entry(path: Path, images: list[Image.Image], masks: dict[str, np.ndarray]) -> None:
    """Write one cache entry atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"image_{i}": np.asarray(im, dtype=np.uint8) for i, im in enumerate(images)}
    names = sorted(masks)
    arrays["mask_names"] = np.array(names, dtype=str)
    for i, name in enumerate(names):
        arrays[f"mask_{i}"] = np.packbits(masks[name], axis=None)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: savez would append ".npz" to a name
        np.savez_compressed(handle, **arrays)


def read_entry(path: Path, n_views: int) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
    """Read one cache entry written by :func:`write_entry`."""
    with np.load(path, allow_pickle=False) as data:
        images = [Image.fromarray(data[f"image_{i}"]) for i in range(n_views)]
        shape = images[0].size[::-1]
        count = shape[0] * shape[1]
        masks = {
            str(name): np.unpackbits(data[f"mask_{i}"], count=count).reshape(shape).astype(bool)
            for i, name in enumerate(data["mask_names"])
        }
    return images, masks
