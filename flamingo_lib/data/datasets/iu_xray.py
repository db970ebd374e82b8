"""IU X-Ray (Open-i) in its two common on-disk formats.

(a) The raw release: one Open-i XML file per report in ``ecgen-radiology/``::

        <eCitation>
          <uId id="CXR1"/>
          ... <AbstractText Label="FINDINGS">...</AbstractText> ...
          <MeSH><major>Cardiomegaly/mild</major></MeSH>
          <parentImage id="CXR1_1_IM-0001-3001"> ... </parentImage>
        </eCitation>

    plus a PNG folder holding ``<parentImage id>.png`` → :class:`IUXray`.

(b) R2Gen's ``annotation.json`` (also used for MIMIC-CXR in R2Gen)::

        {"train": [{"id": ..., "report": ..., "image_path": [relative paths], "split": "train"}, ...],
         "val": [...], "test": [...]}

    with an image root → :class:`R2GenAnnotation`.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flamingo_lib.data.errors import DataError, OnError, PolicyDataset, check_image_file, load_image, path_in_root
from flamingo_lib.data.licence import IU_LICENCE, MIMIC_LICENCE, check_licence, licence_meta
from flamingo_lib.data.report_sections import target_text
from flamingo_lib.data.sample import CXRSample, Finding

# MeSH qualifiers (the parts after the first "/") sorted into Finding fields;
# anything else is kept only in Finding.source.
_SIDES = {"left", "right", "bilateral"}
_ZONES = {"upper", "middle", "lower", "base", "apex", "hilum", "lingula", "retrocardiac", "posterior", "anterior"}
_SEVERITIES = {"mild", "moderate", "severe", "small", "large", "minimal", "borderline", "focal", "diffuse"}
# MeSH "major" terms that say there is nothing to find.
_NO_FINDING = {"normal", "no indexing"}


def parse_mesh_major(term: str) -> Finding | None:
    """``"Pulmonary Atelectasis/base/left/mild"`` → Finding; None for ``normal``."""
    name, *qualifiers = [part.strip().lower() for part in term.split("/")]
    if not name or name in _NO_FINDING:
        return None
    side = next((q for q in qualifiers if q in _SIDES), None)
    zone = next((q for q in qualifiers if q in _ZONES), None)
    severity = next((q for q in qualifiers if q in _SEVERITIES), None)
    return Finding(name=name, side=side, zone=zone, severity=severity, source=term.strip())


def parse_openi_xml(path: Path) -> dict[str, Any]:
    """Read the parts of one Open-i report we use.

    Returns:
        ``{"uid", "sections" (upper-case label -> whitespace-normalised text, empty
        ones dropped), "mesh_major" (list of raw terms), "image_ids" (list)}``.

    Raises:
        DataError: ``bad_xml`` when the file does not parse or has no ``uId``.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise DataError("bad_xml", path, f"cannot parse Open-i XML: {error}") from error
    uid_node = root.find(".//uId")
    uid = uid_node.get("id", "").strip() if uid_node is not None else ""
    if not uid:
        raise DataError("bad_xml", path, "no <uId id=...> element", expected="<uId id='CXR...'/>", got=None)
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        text = " ".join("".join(node.itertext()).split())
        if label and text:
            sections[label] = text
    mesh = [" ".join((node.text or "").split()) for node in root.findall(".//MeSH/major")]
    image_ids = [node.get("id", "").strip() for node in root.iter("parentImage") if node.get("id")]
    return {"uid": uid, "sections": sections, "mesh_major": [m for m in mesh if m], "image_ids": image_ids}


def hash_split(uid: str, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0) -> str:
    """A deterministic train/val/test assignment from a hash of the report id.

    IU X-Ray has no official split; R2Gen used a random 7:1:2 one. Hashing keeps the
    assignment stable across machines and runs without storing a file.
    """
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    return "val" if position < fractions[0] + fractions[1] else "test"


def _natural_key(path: Path) -> list[int | str]:
    """Sort CXR2 before CXR10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class IUXray(PolicyDataset):
    """The raw IU X-Ray release: Open-i XML reports plus a PNG folder.

    One sample per report, holding all its images in XML order (the XML does not
    say which view each image is, so views are ``"UNKNOWN"``). Labels are left
    empty; MeSH ``major`` terms become :class:`Finding`\\ s. ``sections`` hold every
    labelled part of the report (COMPARISON, INDICATION, FINDINGS, IMPRESSION), so
    ``sample.indication`` is the report's INDICATION. IU X-Ray has one study per
    patient: ``sample.prior`` is always None.

    Args:
        xml_dir: the folder of ``*.xml`` reports (``ecgen-radiology``).
        image_dir: the folder of ``<parentImage id>.png`` files.
        split: keep only reports whose ``assign_split(uid)`` equals this; None keeps all.
        assign_split: report id → split name; defaults to :func:`hash_split`.
        on_error: ``"raise"`` or ``"skip"``.
        image_size: downscale images on load so the longer side is at most this.
        validate_images: also open every image header at construction.
    """

    def __init__(
        self,
        xml_dir: str | Path,
        image_dir: str | Path,
        split: str | None = None,
        assign_split: Callable[[str], str] | None = None,
        on_error: OnError = "raise",
        image_size: int | None = None,
        validate_images: bool = False,
    ) -> None:
        super().__init__(f"IUXray({split or 'all'})", on_error)
        self.xml_dir, self.image_dir = Path(xml_dir), Path(image_dir)
        self.split, self.image_size = split, image_size
        assign = assign_split or hash_split
        xml_files = sorted(self.xml_dir.glob("*.xml"), key=_natural_key)
        if not xml_files:
            raise DataError("bad_index_file", self.xml_dir, "no *.xml report files found")
        self._reports: list[dict[str, Any]] = []
        for path in xml_files:
            try:
                report = parse_openi_xml(path)
                if split is not None and assign(report["uid"]) != split:
                    continue
                self._check(path, report, validate_images)
            except DataError as error:
                self.skip_log.handle(error)
                continue
            report["xml_path"] = path
            self._reports.append(report)
        self.skip_log.log_summary()

    def _check(self, path: Path, report: dict[str, Any], validate_images: bool) -> None:
        if not target_text(report["sections"]):
            raise DataError(
                "no_target_section", path, "report has neither FINDINGS nor IMPRESSION text",
                expected="<AbstractText Label='FINDINGS'> or 'IMPRESSION' with text", got=sorted(report["sections"]),
            )  # fmt: skip
        if not report["image_ids"]:
            raise DataError("no_images", path, "report has no <parentImage> element")
        for image_id in report["image_ids"]:  # an id like "../x" must not reach outside the folder
            check_image_file(path_in_root(self.image_dir, f"{image_id}.png", f"{path} parentImage {image_id!r}"),
                             open_header=validate_images)

    def __len__(self) -> int:
        return len(self._reports)

    @property
    def reports(self) -> list[str]:
        """The target text of every sample, from the parsed XML: no image is decoded."""
        return [target_text(report["sections"]) for report in self._reports]

    @property
    def image_counts(self) -> list[int]:
        """How many images each sample holds, from the XML."""
        return [len(report["image_ids"]) for report in self._reports]

    def _load(self, index: int) -> CXRSample:
        report = self._reports[index]
        paths = [self.image_dir / f"{image_id}.png" for image_id in report["image_ids"]]
        findings = [f for f in map(parse_mesh_major, report["mesh_major"]) if f is not None]
        return CXRSample(
            id=report["uid"],
            images=[load_image(path, self.image_size) for path in paths],
            report=target_text(report["sections"]),
            sections=dict(report["sections"]),
            findings=findings,
            views=["UNKNOWN"] * len(paths),
            meta={
                "source": "iu-xray",
                **licence_meta(False, None, IU_LICENCE),
                "xml_path": str(report["xml_path"]),
                "image_ids": list(report["image_ids"]),
                "paths": [str(path) for path in paths],
                "mesh_major": list(report["mesh_major"]),
            },
        )


_R2GEN_SPLITS = ("train", "val", "test")
# A MIMIC-CXR image path as R2Gen stores it: p10/p10000032/s50414267/<dicom>.jpg
_MIMIC_PATH = re.compile(r"(^|/)p\d{2}/p\d+/s\d+/")
# R2Gen's IU X-Ray release names each study's folder after the Open-i report and image
_IU_PATH = re.compile(r"^CXR\d+(_\d+)?_IM-\d+/")


class R2GenAnnotation(PolicyDataset):
    """R2Gen's ``annotation.json`` (IU X-Ray or MIMIC-CXR flavour).

    One sample per entry; the report (already cleaned findings text in R2Gen) is
    the target and the ``FINDINGS`` section. Entries with ``subject_id`` /
    ``study_id`` keys or MIMIC-style image paths are MIMIC-CXR data and are marked
    ``meta["credentialed"] = True``; entries with IU X-Ray's ``CXR<n>_IM-<n>/`` folders are open;
    of any other entry the origin is unknown, and it is private unless ``licence`` says otherwise
    (:mod:`flamingo_lib.data.licence`).

    Args:
        annotation_path: the ``annotation.json`` file.
        image_root: the folder the entries' ``image_path`` values are relative to.
        split: ``"train"``, ``"val"`` (alias ``"validate"``) or ``"test"``.
        on_error: ``"raise"`` or ``"skip"``.
        image_size: downscale images on load so the longer side is at most this.
        validate_images: also open every image header at construction.
        allow_outside_root: accept image paths that are absolute or lead out of the image root
            (refused by default: an annotation file may come from anyone).
        licence: the declared licence of entries whose origin is unknown ("open" | "credentialed").
    """

    def __init__(
        self,
        annotation_path: str | Path,
        image_root: str | Path,
        split: str = "train",
        on_error: OnError = "raise",
        image_size: int | None = None,
        validate_images: bool = False,
        allow_outside_root: bool = False,
        licence: str | None = None,
    ) -> None:
        check_licence(licence)
        split = {"validate": "val", "validation": "val"}.get(split, split)
        self.allow_outside_root, self.licence = allow_outside_root, licence
        if split not in _R2GEN_SPLITS:
            raise ValueError(f"unknown R2Gen split {split!r}; known: {_R2GEN_SPLITS} (or 'validate')")
        super().__init__(f"R2GenAnnotation({split})", on_error)
        self.annotation_path, self.image_root = Path(annotation_path), Path(image_root)
        self.split, self.image_size = split, image_size
        try:
            data = json.loads(self.annotation_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError("bad_index_file", self.annotation_path, f"cannot read JSON: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get(split), list):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise DataError(
                "bad_index_file", self.annotation_path, f"no list under key {split!r}",
                expected=f"an object with {list(_R2GEN_SPLITS)} lists", got=got,
            )  # fmt: skip
        self._entries: list[dict[str, Any]] = []
        for position, entry in enumerate(data[split]):
            try:
                self._entries.append(self._check(position, entry, validate_images))
            except DataError as error:
                self.skip_log.handle(error)
        self.skip_log.log_summary()

    def _check(self, position: int, entry: object, validate_images: bool) -> dict[str, Any]:
        where = f"{self.annotation_path} [{self.split}][{position}]"
        if not isinstance(entry, dict):
            raise DataError("bad_entry", where, "entry is not an object", expected="dict", got=type(entry).__name__)
        for key, kind, kind_name in (("id", (str, int), "str or int"), ("report", str, "str"),
                                     ("image_path", list, "list of paths")):  # fmt: skip
            if not isinstance(entry.get(key), kind):
                raise DataError("bad_entry", f"{where}.{key}", "missing or mistyped field",
                                expected=kind_name, got=entry.get(key))  # fmt: skip
        if not entry["report"].strip():
            raise DataError("empty_report", f"{where}.report", "report text is empty")
        if not entry["image_path"]:
            raise DataError("no_images", f"{where}.image_path", "no image paths", expected="1 or more", got=[])
        paths = [path_in_root(self.image_root, relative, f"{where}.image_path", allow_outside=self.allow_outside_root)
                 for relative in entry["image_path"]]
        for path in paths:
            check_image_file(path, open_header=validate_images)
        return entry | {"_paths": paths}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def reports(self) -> list[str]:
        """The report of every sample as :meth:`_load` gives it, from the annotation: no image is decoded."""
        return [" ".join(entry["report"].split()) for entry in self._entries]

    @property
    def image_counts(self) -> list[int]:
        """How many images each sample holds, from the annotation."""
        return [len(entry["_paths"]) for entry in self._entries]

    def _load(self, index: int) -> CXRSample:
        entry = self._entries[index]
        paths = entry["_paths"]  # checked to lie inside the image root
        mimic = "subject_id" in entry or "study_id" in entry or any(_MIMIC_PATH.search(p) for p in entry["image_path"])
        iu = not mimic and all(_IU_PATH.match(p) for p in entry["image_path"])
        known = True if mimic else False if iu else None
        report = " ".join(entry["report"].split())
        extra = {key: entry[key] for key in ("subject_id", "study_id") if key in entry}
        return CXRSample(
            id=str(entry["id"]),
            images=[load_image(path, self.image_size) for path in paths],
            report=report,
            sections={"FINDINGS": report},
            views=["UNKNOWN"] * len(paths),
            meta={
                "source": "r2gen-mimic-cxr" if mimic else "r2gen-iu-xray" if iu else "r2gen",
                **licence_meta(known, self.licence, MIMIC_LICENCE if mimic else IU_LICENCE),
                "split": self.split,
                "paths": [str(path) for path in paths],
                "annotation_path": str(self.annotation_path),
                **extra,
            },
        )
