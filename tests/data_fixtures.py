"""Builders of tiny on-disk dataset trees in the exact layouts of the real releases.

All report text here is synthetic, written for these tests.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip


def write_image(path: Path, value: int, size: tuple[int, int] = (20, 16), fmt: str | None = None) -> Path:
    """A flat greyscale image whose pixel value identifies it in assertions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8)).save(path, format=fmt)
    return path


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple], gz: bool) -> Path:
    """A CSV as the PhysioNet releases write it, optionally gzipped (``path`` + ``.gz``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    else:
        path.write_text(buffer.getvalue())
    return path


def mimic_report(findings: str | None = "The lungs are clear.", impression: str | None = "No acute process.") -> str:
    """A report laid out like MIMIC-CXR's free text (banner, indented headers)."""
    parts = ["                                 FINAL REPORT", " EXAMINATION:  CHEST (PA AND LAT)", "",
             " INDICATION:  ___F with cough", ""]  # fmt: skip
    if findings is not None:
        parts += [" FINDINGS: ", "", f" {findings}", ""]
    if impression is not None:
        parts += [" IMPRESSION: ", "", f" {impression}", ""]
    return "\n".join(parts)


@dataclass
class Study:
    """One synthetic MIMIC study. ``images``: (dicom_id, ViewPosition, pixel value); ``date`` and
    ``time``: its StudyDate and StudyTime cells ("" for a blank one)."""

    subject_id: str
    study_id: str
    split: str
    images: list[tuple[str, str, int]]
    report: str | None = field(default_factory=mimic_report)
    labels: dict[str, str] | None = field(default_factory=dict)  # observation -> cell text
    date: str = "21800506"
    time: str = "120000.000"


def default_studies() -> list[Study]:
    """Train: a PA+LATERAL study and an AP one; validate: a 3-view study; test: one PA."""
    return [
        Study("10000032", "50000001", "train", [("d01-lat", "LATERAL", 11), ("d02-pa", "PA", 12)],
              labels={"No Finding": "1.0", "Cardiomegaly": "0.0"}),
        Study("10000032", "50000002", "train", [("d03-ap", "AP", 13)],
              report=mimic_report(findings=None, impression="Small left effusion."),
              labels={"Pleural Effusion": "-1.0"}),
        Study("11000011", "51000001", "validate",
              [("a04-ll", "LL", 14), ("b05-ap", "AP", 15), ("c06-pa", "PA", 16)]),
        Study("12000012", "52000001", "test", [("d07-pa", "PA", 17)], labels=None),
    ]  # fmt: skip


def build_mimic(root: Path, studies: list[Study] | None = None, gz: bool = True) -> Path:
    """MIMIC-CXR-JPG (+ MIMIC-CXR reports under the same root) for ``studies``."""
    studies = default_studies() if studies is None else studies
    metadata, splits, labels = [], [], []
    for study in studies:
        folder = root / "files" / f"p{study.subject_id[:2]}" / f"p{study.subject_id}"
        for dicom_id, view, value in study.images:
            write_image(folder / f"s{study.study_id}" / f"{dicom_id}.jpg", value)
            metadata.append((dicom_id, study.subject_id, study.study_id, "CHEST (PA AND LAT)", view, 16, 20,
                             study.date, study.time, "CHEST (PA AND LAT)", "postero-anterior", "Erect"))  # fmt: skip
            splits.append((dicom_id, study.study_id, study.subject_id, study.split))
        if study.report is not None:
            (folder / f"s{study.study_id}.txt").write_text(study.report)
        if study.labels is not None:
            cells = [study.labels.get(name, "") for name in CHEXPERT_OBSERVATIONS]
            labels.append((study.subject_id, study.study_id, *cells))
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, metadata, gz)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"), splits, gz)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS), labels, gz)
    return root


def openi_xml(uid: str, findings: str | None, impression: str | None, mesh: list[str], image_ids: list[str]) -> str:
    """An Open-i (IU X-Ray ``ecgen-radiology``) report file with synthetic text."""
    abstract = "".join(
        f'<AbstractText Label="{label}">{text or ""}</AbstractText>'
        for label, text in (("COMPARISON", "None."), ("INDICATION", "Synthetic cough."),
                            ("FINDINGS", findings), ("IMPRESSION", impression))
    )  # fmt: skip
    majors = "".join(f"<major>{term}</major>" for term in mesh)
    images = "".join(
        f'<parentImage id="{image_id}"><figureId>F{k + 1}</figureId><caption>Synthetic view</caption>'
        f"<panel type=\"single\"><url>/hadoop/storage/radiology/extract/{image_id}.jpg</url></panel></parentImage>"
        for k, image_id in enumerate(image_ids)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/>'
        f'<uId id="{uid}"/><pmcId id="{uid[3:]}"/><docSource>CXR</docSource>'
        '<MedlineCitation Owner="Indiana University" Status="supplied by publisher"><Article PubModel="Electronic">'
        f"<ArticleTitle>Synthetic</ArticleTitle><Abstract>{abstract}</Abstract></Article></MedlineCitation>"
        f"<MeSH>{majors}</MeSH>{images}</eCitation>\n"
    )


def build_iu(root: Path) -> tuple[Path, Path]:
    """``ecgen-radiology/`` with three reports (one without text) and ``images/``."""
    xml_dir, image_dir = root / "ecgen-radiology", root / "images"
    xml_dir.mkdir(parents=True)
    reports = [
        ("CXR1", "Heart size  normal.\n   Lungs clear.", "Normal chest.", ["normal"], ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        ("CXR2", None, "Mild XXXX cardiomegaly.", ["Cardiomegaly/mild", "Pulmonary Atelectasis/base/left"], ["CXR2_1_IM-0652-1001"]),
        ("CXR10", None, None, ["normal"], ["CXR10_1_IM-0005-1001"]),
    ]  # fmt: skip
    for value, (uid, findings, impression, mesh, image_ids) in enumerate(reports, start=100):
        (xml_dir / f"{uid[3:]}.xml").write_text(openi_xml(uid, findings, impression, mesh, image_ids))
        for k, image_id in enumerate(image_ids):
            write_image(image_dir / f"{image_id}.png", value + k)
    return xml_dir, image_dir


def build_r2gen(root: Path, mimic: bool = False) -> Path:
    """An R2Gen ``annotation.json`` (IU or MIMIC flavour) with its ``images/`` root."""
    image_root = root / "images"
    if mimic:
        entry = {"id": "d0", "study_id": 50000001, "subject_id": 10000032, "report": "lungs  clear .",
                 "image_path": ["p10/p10000032/s50000001/d0.jpg"], "split": "train"}  # fmt: skip
    else:
        entry = {"id": "CXR1_1_IM-0001", "report": "heart size normal . lungs clear .",
                 "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"], "split": "train"}  # fmt: skip
    for k, relative in enumerate(entry["image_path"]):
        write_image(image_root / relative, 50 + k)
    data = {"train": [entry], "val": [dict(entry, id="v", split="val")], "test": []}
    path = root / "annotation.json"
    path.write_text(json.dumps(data))
    return path


def write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", bits_stored=16, **elements):
    """A minimal single-frame secondary-capture-like file written with pydicom."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
