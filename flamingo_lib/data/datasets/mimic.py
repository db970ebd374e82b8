"""MIMIC-CXR-JPG (2.0 / 2.1) images with MIMIC-CXR free-text reports.

On-disk layout (PhysioNet releases, unchanged)::

    root/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, StudyDate, ...
    root/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train/validate/test)
    root/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, the 14 CheXpert observations
    root/files/p10/p10000032/s50414267/<dicom_id>.jpg
    reports_root/files/p10/p10000032/s50414267.txt   (from MIMIC-CXR, not -JPG)

MIMIC is credentialed data: every sample carries ``meta["credentialed"] = True`` and
the exporters refuse to write it out unless told the data use agreement allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from flamingo_lib.data.licence import MIMIC_LICENCE, licence_meta
from flamingo_lib.data.errors import DataError, OnError, PolicyDataset, check_image_file, load_image
from flamingo_lib.data.index_tables import find_table, read_table
from flamingo_lib.data.report_sections import split_sections, target_text
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validate", "test")
_SPLIT_ALIASES = {"val": "validate", "valid": "validate", "validation": "validate"}

# Every ViewPosition value in the MIMIC-CXR-JPG metadata; blanks become "UNKNOWN".
VIEW_POSITIONS: tuple[str, ...] = (
    "PA", "AP", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD",
    "LATERAL", "LL", "XTABLE LATERAL", "LAO", "RAO", "LPO", "SWIMMERS", "UNKNOWN",
)  # fmt: skip
# Frontal first (PA before AP, the cleaner projection), laterals next, then the rest.
_VIEW_RANK = {view: rank for rank, view in enumerate(VIEW_POSITIONS)}

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv"

# CheXpert label cells as the labeler writes them; blank means "not mentioned".
_LABEL_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": np.nan}


class _Entry(NamedTuple):
    subject_id: str
    study_id: str
    dicom_ids: tuple[str, ...]
    views: tuple[str, ...]
    study_date: str


def _normalise_split(split: str | None) -> str | None:
    if split is None:
        return None
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown MIMIC-CXR split {split!r}; known: {SPLITS} (or 'val')")
    return split


def _normalise_views(views: Sequence[str] | None) -> frozenset[str] | None:
    if views is None:
        return None
    if isinstance(views, str):
        views = (views,)
    wanted = frozenset(view.strip().upper() for view in views)
    unknown = sorted(wanted - set(VIEW_POSITIONS))
    if unknown:
        raise ValueError(f"unknown view position(s) {unknown}; known: {list(VIEW_POSITIONS)}")
    return wanted


class MimicCXR(PolicyDataset):
    """MIMIC-CXR-JPG as :class:`CXRSample`\\ s, one per image or one per study.

    Args:
        root: the MIMIC-CXR-JPG folder (holding ``files/`` and the CSVs).
        split: ``"train"``, ``"validate"`` (alias ``"val"``), ``"test"`` or None for all.
        reports_root: the MIMIC-CXR folder holding ``files/pXX/pSUBJECT/sSTUDY.txt``;
            defaults to ``root``.
        views: ViewPosition values to keep (see :data:`VIEW_POSITIONS`); None keeps all.
        all_views_per_study: one sample per study holding all its kept views,
            frontal first, instead of one sample per image.
        on_error: ``"raise"`` or ``"skip"`` (see :mod:`flamingo_lib.data.errors`).
        image_size: downscale images on load so the longer side is at most this.
        validate_images: also open every image header at construction (slower,
            catches non-image files up front).

    Raises:
        ValueError: unknown split or view names.
        DataError: broken index files always; bad items in raise mode.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        reports_root: str | Path | None = None,
        views: Sequence[str] | None = ("PA", "AP"),
        all_views_per_study: bool = False,
        on_error: OnError = "raise",
        image_size: int | None = None,
        validate_images: bool = False,
    ) -> None:
        self.split = _normalise_split(split)
        super().__init__(f"MimicCXR({self.split or 'all'})", on_error)
        self.root = Path(root)
        self.reports_root = Path(reports_root) if reports_root is not None else self.root
        self.views = _normalise_views(views)
        self.all_views_per_study = all_views_per_study
        self.image_size = image_size

        self._bad_label_studies: set[str] = set()
        images = self._read_images()
        self._labels = self._read_labels(set(images["study_id"]))
        images = images[~images["study_id"].isin(self._bad_label_studies)]
        self._entries = self._build_entries(images, validate_images)
        self.skip_log.log_summary()

    # --- construction ---------------------------------------------------------

    def _read_images(self) -> pd.DataFrame:
        """Metadata joined with the split file, filtered by split and view, sorted."""
        meta_path = find_table(self.root, METADATA_FILE)
        meta = read_table(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"), optional=("StudyDate",))
        splits = read_table(find_table(self.root, SPLIT_FILE), ("dicom_id", "split"))
        self._all_studies = set(meta["study_id"])
        images = meta.merge(splits[["dicom_id", "split"]], on="dicom_id", how="inner")
        if self.split is not None:
            images = images[images["split"].str.strip().str.lower() == self.split]
        bad_ids = ~(images["subject_id"].str.isdigit() & images["study_id"].str.isdigit())
        for row in images[bad_ids].itertuples():
            self.skip_log.handle(DataError(
                "bad_row", f"{meta_path} (dicom_id {row.dicom_id})", "subject_id/study_id not numeric",
                expected="digits", got=f"{row.subject_id}/{row.study_id}",
            ))  # fmt: skip
        images = images[~bad_ids].copy()
        images["ViewPosition"] = images["ViewPosition"].str.strip().str.upper().replace("", "UNKNOWN")
        if self.views is not None:
            images = images[images["ViewPosition"].isin(self.views)].copy()
        if "StudyDate" not in images.columns:
            images["StudyDate"] = ""
        images["_rank"] = images["ViewPosition"].map(_VIEW_RANK).fillna(len(_VIEW_RANK))
        return images.sort_values(["subject_id", "study_id", "_rank", "dicom_id"])

    def _read_labels(self, wanted_studies: set[str]) -> dict[str, np.ndarray]:
        """study_id -> 14 floats (NaN = not mentioned) for the wanted studies.

        Bad rows are handled by the policy; their studies land in
        ``self._bad_label_studies`` so that, in skip mode, their images go too.
        """
        path = find_table(self.root, CHEXPERT_FILE, required=False)
        if path is None:
            logger.info("%s: no %s; labels will all be None", self.skip_log.source, CHEXPERT_FILE)
            return {}
        table = read_table(path, ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS))
        cells = table[list(CHEXPERT_OBSERVATIONS)].apply(lambda column: column.str.strip())
        valid = cells.isin(_LABEL_VALUES.keys())
        has_images = table["study_id"].isin(self._all_studies)
        # Vectorised checks first; the Python loop only visits the (few) bad rows.
        for row_number in np.flatnonzero(~(valid.all(axis=1) & has_images).to_numpy()):
            study_id = table["study_id"].iloc[row_number]
            where = f"{path} (row {row_number + 2}, study_id {study_id})"  # +2: header, 1-based
            if not has_images.iloc[row_number]:
                error = DataError("label_without_images", where, "label row for a study with no images")
            else:
                column = valid.columns[~valid.iloc[row_number].to_numpy()][0]
                error = DataError(
                    "bad_label", f"{where}, column {column!r}", "invalid CheXpert label",
                    expected="1.0, 0.0, -1.0 or blank", got=cells.iloc[row_number][column],
                )  # fmt: skip
            self.skip_log.handle(error)
            self._bad_label_studies.add(study_id)
        keep = table["study_id"].isin(wanted_studies - self._bad_label_studies).to_numpy()
        values = cells[keep].apply(lambda column: column.map(_LABEL_VALUES)).to_numpy(dtype=np.float32)
        labels: dict[str, np.ndarray] = {}
        for study_id, row in zip(table["study_id"][keep], values, strict=True):
            labels.setdefault(study_id, row)  # duplicated rows: the first wins
        return labels

    def _build_entries(self, images: pd.DataFrame, validate_images: bool) -> list[_Entry]:
        """Check reports and image files study by study; keep what is usable."""
        entries: list[_Entry] = []
        rows = zip(images["subject_id"], images["study_id"], images["dicom_id"], images["ViewPosition"],
                   images["StudyDate"], strict=True)  # fmt: skip
        # Plain tuples and itertools.groupby: pandas' groupby is far slower per group
        # and MIMIC's train split has ~220k studies.
        for (subject_id, study_id), study in groupby(rows, key=itemgetter(0, 1)):
            study = list(study)
            try:
                self._read_report(subject_id, study_id)
            except DataError as error:
                self.skip_log.handle(error)
                continue
            kept: list[tuple[str, str]] = []
            for _, _, dicom_id, view, _ in study:
                try:
                    check_image_file(self.image_path(subject_id, study_id, dicom_id), open_header=validate_images)
                except DataError as error:
                    self.skip_log.handle(error)
                    continue
                kept.append((dicom_id, view))
            date = str(study[0][4])
            if self.all_views_per_study and kept:
                dicoms, views = zip(*kept, strict=True)
                entries.append(_Entry(subject_id, study_id, dicoms, views, date))
            elif not self.all_views_per_study:
                entries.extend(_Entry(subject_id, study_id, (d,), (v,), date) for d, v in kept)
        return entries

    # --- paths and reports ------------------------------------------------------

    # One joined string per path: pathlib's per-component "/" dominated construction
    # time on the ~370k-image train split.
    def image_path(self, subject_id: str, study_id: str, dicom_id: str) -> Path:
        """Where MIMIC-CXR-JPG keeps one image."""
        return self.root / f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"

    def report_path(self, subject_id: str, study_id: str) -> Path:
        """Where MIMIC-CXR keeps one study's free-text report."""
        return self.reports_root / f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"

    def _read_report(self, subject_id: str, study_id: str) -> dict[str, str]:
        """The report's sections; raise if it is missing or has no target text."""
        path = self.report_path(subject_id, study_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as error:
            raise DataError("missing_report", path, "report file not found") from error
        except (OSError, UnicodeDecodeError) as error:
            raise DataError("unreadable_report", path, f"cannot read report: {error}") from error
        if not text.strip():
            raise DataError("empty_report", path, "report file is empty")
        sections = split_sections(text)
        if not target_text(sections):
            raise DataError(
                "no_target_section", path, "report has neither FINDINGS nor IMPRESSION",
                expected="a FINDINGS: or IMPRESSION: section", got=sorted(sections),
            )  # fmt: skip
        return sections

    # --- dataset protocol -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def _sample_id(self, entry: _Entry) -> str:
        return entry.study_id if self.all_views_per_study else entry.dicom_ids[0]

    def _labels_of(self, study_id: str) -> dict[str, float | None]:
        values = self._labels.get(study_id)
        if values is None:
            return dict.fromkeys(CHEXPERT_OBSERVATIONS)
        return {name: None if np.isnan(v) else float(v) for name, v in zip(CHEXPERT_OBSERVATIONS, values, strict=True)}

    def _load(self, index: int) -> CXRSample:
        entry = self._entries[index]
        paths = [self.image_path(entry.subject_id, entry.study_id, d) for d in entry.dicom_ids]
        sections = self._read_report(entry.subject_id, entry.study_id)
        return CXRSample(
            id=self._sample_id(entry),
            images=[load_image(path, self.image_size) for path in paths],
            report=target_text(sections),
            sections=sections,
            labels=self._labels_of(entry.study_id),
            views=list(entry.views),
            meta={
                "source": "mimic-cxr-jpg", **licence_meta(True, None, MIMIC_LICENCE),  # PhysioNet DUA: never share
                "subject_id": entry.subject_id, "study_id": entry.study_id, "dicom_ids": list(entry.dicom_ids),
                "paths": [str(path) for path in paths], "StudyDate": entry.study_date,
                "report_path": str(self.report_path(entry.subject_id, entry.study_id)),
            },  # fmt: skip
        )

    @property
    def reports(self) -> list[str]:
        """The target text of every sample, read from the report files: no image is decoded
        (:mod:`flamingo_lib.data.study_index`). A study's report is read once for all its images."""
        texts: dict[str, str] = {}
        for entry in self._entries:
            if entry.study_id not in texts:
                texts[entry.study_id] = target_text(self._read_report(entry.subject_id, entry.study_id))
        return [texts[entry.study_id] for entry in self._entries]

    @property
    def image_counts(self) -> list[int]:
        """How many images each sample holds (1 unless ``all_views_per_study``), from the index."""
        return [len(entry.dicom_ids) for entry in self._entries]

    def label_frame(self) -> pd.DataFrame:
        """The CheXpert labels of every sample without loading images.

        Returns:
            One row per sample (index: sample id), one float column per observation;
            NaN means not mentioned.
        """
        rows = [
            [np.nan if v is None else v for v in self._labels_of(entry.study_id).values()]
            for entry in self._entries
        ]
        index = pd.Index([self._sample_id(entry) for entry in self._entries], name="id")
        return pd.DataFrame(rows, index=index, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)
