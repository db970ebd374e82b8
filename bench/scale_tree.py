"""A synthetic MIMIC-CXR-JPG tree in the real layout, at any number of studies, for ``bench/scale.py``.

Shaped like the release: ~3.5 studies per patient, ~1.65 films per study (every study a frontal
film, PA or AP, about two in three a lateral too), 98% of the studies in train, 0.8% in validate,
1.4% in test, gzipped index CSVs, the reports in their own root. Every film is a hard link to one
of 16 small JPEGs and every report a hard link to one of 64 report texts, so that the full size
(227,835 studies, ~376k films) takes ~1.5 GB of disk (the directories, mostly) and ~35 s.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from flamingo_lib.data.datasets.mimic import CHEXPERT_FILE, METADATA_FILE, SPLIT_FILE
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS

#: MIMIC-CXR-JPG 2.0.0's number of studies.
FULL_SIZE = 227_835
FILMS, REPORTS = 16, 64

_FINDINGS = ("The lungs are clear.", "There is a small left pleural effusion.", "The heart is mildly enlarged.",
             "Mild pulmonary edema.", "Right lower lobe opacity, possibly atelectasis.", "No pneumothorax.",
             "A right internal jugular line ends in the SVC.", "Low lung volumes.")
_LABELS = ("No Finding", "Pleural Effusion", "Cardiomegaly", "Edema", "Atelectasis", "No Finding", "Support Devices",
           "No Finding")


def _report(k: int) -> tuple[str, str]:
    """Report text ``k`` in MIMIC-CXR's layout, and the CheXpert observation it is positive for."""
    first, second = _FINDINGS[k % 8], _FINDINGS[(k // 8) % 8]
    text = (f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
            f" INDICATION:  ___ with cough\n\n FINDINGS: \n\n {first} {second}\n\n IMPRESSION: \n\n {first}\n")
    return text, _LABELS[k % 8]


def _write_gz_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(buffer.getvalue().encode(), compresslevel=1))


def build_tree(root: Path, n_studies: int, seed: int = 0) -> dict[str, int]:
    """Write ``root/jpg`` (films and CSVs) and ``root/reports`` for ``n_studies`` studies.

    Returns:
        counts: ``studies``, ``films``, ``frontal`` (per split too: ``train_frontal``, ...).
    """
    rng = np.random.default_rng(seed)
    jpg, reports = root / "jpg", root / "reports"
    sources = root / "sources"
    sources.mkdir(parents=True)
    films = []
    for k in range(FILMS):
        pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        films.append(sources / f"film-{k}.jpg")
        Image.fromarray(pixels).save(films[-1], quality=90)
    texts = []
    for k in range(REPORTS):
        texts.append(sources / f"report-{k}.txt")
        texts[-1].write_text(_report(k)[0])
    metadata, splits, labels = [], [], []
    counts = {"studies": n_studies, "films": 0, "frontal": 0}
    split_of = rng.choice(["train", "validate", "test"], size=n_studies, p=[0.978, 0.008, 0.014])
    lateral = rng.random(n_studies) < 0.65
    ap = rng.random(n_studies) < 0.4
    subject = 10_000_000
    for index in range(n_studies):
        if index == 0 or rng.random() < 1 / 3.5:
            subject += 1
        study = 50_000_000 + index
        folder = jpg / f"files/p{str(subject)[:2]}/p{subject}/s{study}"
        folder.mkdir(parents=True)
        views = [("AP" if ap[index] else "PA")] + (["LATERAL"] if lateral[index] else [])
        for v, view in enumerate(views):
            dicom = f"{index:08x}-{v}"
            os.link(films[(index + v) % FILMS], folder / f"{dicom}.jpg")
            metadata.append((dicom, subject, study, "CHEST (PA AND LAT)", view, 64, 64,
                             21800101 + index % 28, "120000.000"))
            splits.append((dicom, study, subject, split_of[index]))
        counts["films"] += len(views)
        counts["frontal"] += 1
        counts[f"{split_of[index]}_frontal"] = counts.get(f"{split_of[index]}_frontal", 0) + 1
        report_folder = reports / f"files/p{str(subject)[:2]}/p{subject}"
        report_folder.mkdir(parents=True, exist_ok=True)
        os.link(texts[index % REPORTS], report_folder / f"s{study}.txt")
        positive = _report(index % REPORTS)[1]
        labels.append((subject, study, *("1.0" if name == positive else "" for name in CHEXPERT_OBSERVATIONS)))
    _write_gz_csv(jpg / f"{METADATA_FILE}.gz", ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                               "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"), metadata)
    _write_gz_csv(jpg / f"{SPLIT_FILE}.gz", ("dicom_id", "study_id", "subject_id", "split"), splits)
    _write_gz_csv(jpg / f"{CHEXPERT_FILE}.gz", ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS), labels)
    return counts


def disk_bytes(root: Path) -> int:
    """Blocks the tree takes on disk (hard links counted once, directories included)."""
    seen, total = set(), 0
    for folder, directories, files in os.walk(root):
        for name in [*directories, *files]:
            stat = os.lstat(os.path.join(folder, name))
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                total += stat.st_blocks * 512
    return total
