"""MIMIC-CXR-JPG (2.0 / 2.1) images with MIMIC-CXR free-text reports.

On-disk layout (PhysioNet releases, unchanged)::

    root/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime, ...
    root/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train/validate/test)
    root/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, the 14 CheXpert observations
    root/files/p10/p10000032/s50414267/<dicom_id>.jpg
    reports_root/files/p10/p10000032/s50414267.txt   (from MIMIC-CXR, not -JPG)

MIMIC is credentialed data: every sample carries ``meta["credentialed"] = True`` and
the exporters refuse to write it out unless told the data use agreement allows it.

Prior studies (``priors=True``): a sample's ``prior`` is the same subject's most recent earlier
study, ordered by ``StudyDate`` then ``StudyTime`` (the only order the release states: study ids
are random, so no order is ever guessed from them). A study gets no prior when its subject has no
earlier study, or when the order is not known: its own date is missing, an undated study of the
subject could lie anywhere, or two candidates share a day without distinct times. Candidates come
from the whole metadata table (any split) but must be loadable by this reader (a usable report and
at least one film of the kept views), so a study whose report is missing is passed over for the one
before it. The prior sample is built like the current one (views, image size, report reading),
with ``prior=None``; its films are decoded only when the sample is.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Sequence
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd

from flamingo_lib.data.licence import MIMIC_LICENCE, licence_meta
from flamingo_lib.data.errors import DataError, OnError, PolicyDataset, check_image_file, load_image
from flamingo_lib.data.index_tables import find_table, read_table
from flamingo_lib.data.report_sections import split_sections, target_text
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

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


# StudyDate as DICOM writes it; StudyTime as MIMIC's metadata holds it: a number HHMMSS[.fff]
# whose leading zeros were dropped ("93012" is 09:30:12).
_STUDY_DATE = re.compile(r"\d{8}")
_STUDY_TIME = re.compile(r"(\d{1,6})(?:\.(\d{1,6})\d*)?")
_DATE_EXPECTED = "YYYYMMDD, e.g. 21800506"
_TIME_EXPECTED = "HHMMSS[.fff] with leading zeros optional, e.g. 142345.123 or 93012"


class _Entry(NamedTuple):
    subject_id: str
    study_id: str
    dicom_ids: tuple[str, ...]
    views: tuple[str, ...]
    study_date: str
    study_time: str


class _Dated(NamedTuple):
    """One study of the whole metadata table, as the prior lookup orders it."""

    subject_id: str
    study_id: str
    date: datetime.date | None
    time: datetime.time | None
    date_text: str
    time_text: str


# A study's kept films: (dicom ids, view positions), frontal first; None when it cannot be loaded.
_Films = tuple[tuple[str, ...], tuple[str, ...]] | None


def _kept_films(kept: list[tuple[str, str]]) -> _Films:
    """(dicom ids, views) of a study's kept films, None when it has none."""
    if not kept:
        return None
    dicoms, views = zip(*kept, strict=True)
    return tuple(dicoms), tuple(views)


def parse_study_date(text: str) -> datetime.date | None:
    """A metadata ``StudyDate`` (``"21800506"``; MIMIC's dates are shifted into the future).

    Returns:
        The date, or None for a blank cell.

    Raises:
        ValueError: not eight digits, or no such day.
    """
    text = text.strip()
    if not text:
        return None
    if not _STUDY_DATE.fullmatch(text):
        raise ValueError("not eight digits")
    return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))


def parse_study_time(text: str) -> datetime.time | None:
    """A metadata ``StudyTime`` (``"142345.123"``, or ``"93012"`` for 09:30:12).

    Returns:
        The time of day, or None for a blank cell.

    Raises:
        ValueError: not of the form HHMMSS[.fff], or hours, minutes or seconds out of range.
    """
    text = text.strip()
    if not text:
        return None
    match = _STUDY_TIME.fullmatch(text)
    if match is None:
        raise ValueError("not a number HHMMSS[.fff]")
    clock = match.group(1).zfill(6)  # the metadata stores the time as a number: leading zeros dropped
    micro = int((match.group(2) or "").ljust(6, "0"))
    return datetime.time(int(clock[:2]), int(clock[2:4]), int(clock[4:]), micro)


def study_datetime(date_text: str, time_text: str) -> str | None:
    """ISO 8601 text of a study's date and time (the date alone when the time is blank; None when
    the date is blank or either value does not parse)."""
    try:
        date, time = parse_study_date(date_text), parse_study_time(time_text)
    except ValueError:
        return None
    if date is None:
        return None
    return date.isoformat() if time is None else datetime.datetime.combine(date, time).isoformat()


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
        priors: give each sample its ``prior``: the subject's most recent earlier study (see
            the module docstring), a sample of the same views and size whose own ``prior`` is
            None. Then ``meta`` also holds ``"prior_study_id"`` (None when there is none) and
            ``"study_datetime"`` (ISO 8601; the date alone without a StudyTime; None without a
            StudyDate), and a StudyDate or StudyTime that does not parse is a data error of its
            study (``bad_study_date`` / ``bad_study_time``). Off, nothing of this is read.

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
        priors: bool = False,
    ) -> None:
        self.split = _normalise_split(split)
        super().__init__(f"MimicCXR({self.split or 'all'})", on_error)
        self.root = Path(root)
        self.reports_root = Path(reports_root) if reports_root is not None else self.root
        self.views = _normalise_views(views)
        self.all_views_per_study = all_views_per_study
        self.image_size = image_size
        self.priors = priors
        self.validate_images = validate_images

        self._bad_label_studies: set[str] = set()
        # Prior lookup state (priors=True only): every study's kept films once looked at, and the
        # resolved links. The whole-table frames are dropped once the links are made.
        self._films: dict[str, _Films] = {}
        self._rows_of: dict[str, np.ndarray] | None = None  # study -> its candidate rows, built on demand
        self._prior_of: dict[str, str] = {}
        self._prior_entries: dict[str, _Entry] = {}
        images = self._read_images()
        # A prior may come from any split: its labels are wanted too.
        wanted = set(self._candidates["study_id"]) if priors else set(images["study_id"])
        self._labels = self._read_labels(wanted)
        images = images[~images["study_id"].isin(self._bad_label_studies)]
        if priors:
            images = self._read_dates(images)
        self._entries = self._build_entries(images, validate_images)
        if priors:
            self._link_priors()
        self.skip_log.log_summary()

    # --- construction ---------------------------------------------------------

    def _read_images(self) -> pd.DataFrame:
        """Metadata joined with the split file, filtered by split and view, sorted.

        With ``priors`` the same rows of every split (valid ids, kept views) are kept as
        ``self._candidates``: a prior study may lie in another split.
        """
        self._metadata_path = meta_path = find_table(self.root, METADATA_FILE)
        meta = read_table(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"),
                          optional=("StudyDate", "StudyTime"))  # fmt: skip
        splits = read_table(find_table(self.root, SPLIT_FILE), ("dicom_id", "split"))
        self._all_studies = set(meta["study_id"])
        images = meta.merge(splits[["dicom_id", "split"]], on="dicom_id", how="inner")
        in_split = (images["split"].str.strip().str.lower() == self.split if self.split is not None
                    else pd.Series(True, index=images.index))  # fmt: skip
        if not self.priors:  # only this split is needed: filter before the work below
            images, in_split = images[in_split], in_split[in_split]
        bad_ids = ~(images["subject_id"].str.isdigit() & images["study_id"].str.isdigit())
        # Only this dataset's rows are its items; a bad row of another split is that split's error.
        for row in images[bad_ids & in_split].itertuples():
            self.skip_log.handle(DataError(
                "bad_row", f"{meta_path} (dicom_id {row.dicom_id})", "subject_id/study_id not numeric",
                expected="digits", got=f"{row.subject_id}/{row.study_id}",
            ))  # fmt: skip
        images = images[~bad_ids].assign(_in_split=in_split[~bad_ids])
        images["ViewPosition"] = images["ViewPosition"].str.strip().str.upper().replace("", "UNKNOWN")
        if self.views is not None:
            images = images[images["ViewPosition"].isin(self.views)].copy()
        for column in ("StudyDate", "StudyTime"):
            if column not in images.columns:
                images[column] = ""
        images["_rank"] = images["ViewPosition"].map(_VIEW_RANK).fillna(len(_VIEW_RANK))
        images = images.sort_values(["subject_id", "study_id", "_rank", "dicom_id"])
        if self.priors:
            self._candidates = images
        return images[images["_in_split"]]

    def _read_dates(self, images: pd.DataFrame) -> pd.DataFrame:
        """Parse every candidate study's StudyDate and StudyTime into ``self._timeline``.

        A value that does not parse is a data error of its study when the study is one of this
        dataset's (``images``; in skip mode it is left out); for a study of another split it only
        makes that date unknown, which the prior lookup treats as "order not known".

        Returns:
            ``images`` without the studies skipped here.
        """
        first_rows = self._candidates.drop_duplicates("study_id")  # one row per study, frontal first
        own = set(images["study_id"])
        skipped: set[str] = set()
        self._timeline: list[_Dated] = []
        columns = ("subject_id", "study_id", "StudyDate", "StudyTime")
        for subject_id, study_id, date_text, time_text in zip(*(first_rows[c].tolist() for c in columns), strict=True):
            try:
                date = self._parse_cell(parse_study_date, date_text, study_id, "StudyDate", "bad_study_date",
                                        _DATE_EXPECTED)  # fmt: skip
                time = self._parse_cell(parse_study_time, time_text, study_id, "StudyTime", "bad_study_time",
                                        _TIME_EXPECTED)  # fmt: skip
            except DataError as error:
                date = time = None  # an unreadable value orders nothing
                if study_id in own:
                    self.skip_log.handle(error)
                    skipped.add(study_id)
                else:
                    logger.debug("%s: %s (not this dataset's study: its date is left unknown)", self.skip_log.source,
                                 error)  # fmt: skip
            self._timeline.append(_Dated(subject_id, study_id, date, time, date_text, time_text))
        return images[~images["study_id"].isin(skipped)] if skipped else images

    def _parse_cell(self, parse: Callable[[str], _T], text: str, study_id: str, column: str, reason: str,
                    expected: str) -> _T:  # fmt: skip
        """``parse(text)``, its ValueError turned into a DataError naming file, study and column."""
        try:
            return parse(text)
        except ValueError as error:
            raise DataError(
                reason, f"{self._metadata_path} (study_id {study_id}), column {column!r}", f"invalid {column}: {error}",
                expected=expected, got=text,
            ) from error  # fmt: skip

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
        # Python lists first: iterating (Arrow-backed) string columns element by element is slow.
        columns = ("subject_id", "study_id", "dicom_id", "ViewPosition", "StudyDate", "StudyTime")
        rows = zip(*(images[column].tolist() for column in columns), strict=True)
        # Plain tuples and itertools.groupby: pandas' groupby is far slower per group
        # and MIMIC's train split has ~220k studies.
        for (subject_id, study_id), study in groupby(rows, key=itemgetter(0, 1)):
            study = list(study)
            try:
                self._read_report(subject_id, study_id)
            except DataError as error:
                self.skip_log.handle(error)
                self._films[study_id] = None  # (priors) not a study this reader can load
                continue
            kept: list[tuple[str, str]] = []
            for _, _, dicom_id, view, _, _ in study:
                try:
                    check_image_file(self.image_path(subject_id, study_id, dicom_id), open_header=validate_images)
                except DataError as error:
                    self.skip_log.handle(error)
                    continue
                kept.append((dicom_id, view))
            date, time = str(study[0][4]), str(study[0][5])
            if self.priors:
                self._films[study_id] = _kept_films(kept)
            if self.all_views_per_study and kept:
                dicoms, views = zip(*kept, strict=True)
                entries.append(_Entry(subject_id, study_id, dicoms, views, date, time))
            elif not self.all_views_per_study:
                entries.extend(_Entry(subject_id, study_id, (d,), (v,), date, time) for d, v in kept)
        return entries

    # --- prior studies ----------------------------------------------------------

    def _loadable(self, study_id: str) -> bool:
        """Whether this reader could load ``study_id`` (of any split): a usable report, a label row
        that is not broken and at least one film of the kept views. Looked at once, on demand (most
        priors are this dataset's own studies, checked already); a problem found here is not one of
        this dataset's items, so it is logged at debug level, neither raised nor counted."""
        if study_id in self._films:
            return self._films[study_id] is not None
        films: _Films = None
        if study_id not in self._bad_label_studies:
            if self._rows_of is None:  # built once, only if some candidate lies outside this dataset
                self._rows_of = self._candidates.groupby("study_id", sort=False).indices
            rows = self._candidates.iloc[self._rows_of[study_id]]
            subject_id = rows["subject_id"].iloc[0]
            try:
                self._read_report(subject_id, study_id)
                pairs = zip(rows["dicom_id"], rows["ViewPosition"], strict=True)
                films = _kept_films([(dicom_id, view) for dicom_id, view in pairs
                                     if self._film_ok(subject_id, study_id, dicom_id)])  # fmt: skip
            except DataError as error:
                logger.debug("%s: candidate prior %s not loadable: %s", self.skip_log.source, study_id, error)
        self._films[study_id] = films
        return films is not None

    def _film_ok(self, subject_id: str, study_id: str, dicom_id: str) -> bool:
        """Whether a candidate prior's film passes the construction-time check."""
        try:
            check_image_file(self.image_path(subject_id, study_id, dicom_id), open_header=self.validate_images)
        except DataError as error:
            logger.debug("%s: film of a candidate prior left out: %s", self.skip_log.source, error)
            return False
        return True

    def _link_priors(self) -> None:
        """Find every entry's prior study (``self._prior_of``) and the entries to build them from.

        One pass over the whole table's studies grouped by subject (``self._timeline`` follows the
        table's sort by subject): linear in the number of studies, a sort per subject aside.
        """
        own = {entry.study_id for entry in self._entries}
        dated: dict[str, _Dated] = {}
        for _, group in groupby(self._timeline, key=itemgetter(0)):
            studies = list(group)
            if len(studies) > 1 and any(study.study_id in own for study in studies):
                self._prior_of.update(self._subject_priors(studies, own))
                dated.update((study.study_id, study) for study in studies)
        for prior_id in set(self._prior_of.values()):
            films = self._films[prior_id]
            assert films is not None  # a prior is loadable
            dicoms, views = films if self.all_views_per_study else (films[0][:1], films[1][:1])
            # (one film per sample: the prior's best view, frontal first)
            prior = dated[prior_id]
            self._prior_entries[prior_id] = _Entry(prior.subject_id, prior_id, dicoms, views, prior.date_text,
                                                   prior.time_text)  # fmt: skip
        # Only the links are needed from now on (and DataLoader workers receive a copy of the dataset).
        del self._candidates, self._timeline
        self._films, self._rows_of = {}, None

    def _subject_priors(self, studies: list[_Dated], own: set[str]) -> dict[str, str]:
        """The prior of each of one subject's studies in ``own`` that has one.

        The subject's dated studies are cut into blocks in time order: a study with its own
        (date, time), or all of one day's studies when their times are missing or tied (their
        order is not known). A study's prior is the one loadable study of the nearest earlier block
        holding any; none when that block holds two, when another loadable study shares its own
        block, or when a loadable study of the subject is undated (it could lie anywhere).
        """
        if any(study.date is None and self._loadable(study.study_id) for study in studies):
            return {}
        by_day = sorted((study for study in studies if study.date is not None), key=attrgetter("date"))
        blocks: list[list[str]] = []
        for _, group in groupby(by_day, key=attrgetter("date")):
            day = list(group)
            times = [study.time for study in day]
            if None not in times and len(set(times)) == len(times):
                blocks.extend([study.study_id] for study in sorted(day, key=attrgetter("time")))
            else:
                blocks.append([study.study_id for study in day])
        priors: dict[str, str] = {}
        for position, block in enumerate(blocks):
            for study_id in block:
                if study_id not in own or any(self._loadable(other) for other in block if other != study_id):
                    continue
                for earlier in reversed(blocks[:position]):
                    loadable = [other for other in earlier if self._loadable(other)]
                    if len(loadable) == 1:
                        priors[study_id] = loadable[0]
                    if loadable:
                        break
        return priors

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
        sample = self._sample(entry)
        if self.priors:
            prior_id = self._prior_of.get(entry.study_id)
            sample.meta["prior_study_id"] = prior_id
            if prior_id is not None:
                # A prior whose report or films fail now fails its sample too (skip mode moves on):
                # a sample without its prior would read as "no earlier study".
                sample.prior = self._sample(self._prior_entries[prior_id])
        return sample

    def _sample(self, entry: _Entry) -> CXRSample:
        """The sample of one entry, its films decoded, ``prior`` None."""
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
                **({"study_datetime": study_datetime(entry.study_date, entry.study_time)} if self.priors else {}),
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
