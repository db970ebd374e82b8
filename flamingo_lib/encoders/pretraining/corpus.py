"""What the embedded encoders pretrain on: PhantomCXR studies of one split, text and images.

Both PhantomCXR text modes are used, so the encoders know the language of the real IU reports
and that of the templated ones (the demo's default data): ``iu`` (real IU reports, rendered from
their MeSH findings) and ``templated``. Only the ``train`` split ever feeds pretraining; the
``val`` split is for the metrics. The split comes from PhantomCXR itself (IU's fixed
patient-level split; templated patients are per split by construction), so no val/test report
can leak into the tokenizer, the LM or the CLIP model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flamingo_lib.data.phantom.dataset import PhantomCXR

if TYPE_CHECKING:
    from flamingo_lib.data.datasets.iu_reports import IUReport

TEXT_MODES: tuple[str, ...] = ("iu", "templated")
#: IU report sections that are report text (the FINDINGS fall back to IMPRESSION as a target;
#: both are radiologists' prose, so both are LM pretraining text).
LM_SECTIONS: tuple[str, ...] = ("FINDINGS", "IMPRESSION")


@dataclass(frozen=True)
class Study:
    """One study's text and labels, without its image.

    Attributes:
        id: the PhantomCXR study id (``CXR12`` or ``phantom-train-00012``).
        mode: ``"iu"`` or ``"templated"``.
        index: its index in ``PhantomCXR(split, text=mode)``, to render the image.
        report: the target text (FINDINGS, falling back to IMPRESSION).
        sections: every report section, upper-case name -> text.
        findings: the structured findings the film is rendered from.
        labels: the 14 CheXpert observations of the film (1.0 / 0.0).
    """

    id: str
    mode: str
    index: int
    report: str
    sections: dict[str, str]
    findings: tuple[Any, ...]
    labels: dict[str, Any]


def finding_signature(study: Study) -> tuple[tuple[str, str, str], ...]:
    """What the film shows: the drawn findings with side and severity (``()`` for a normal film)."""
    from flamingo_lib.data.phantom.render import RENDERABLE_FINDINGS

    return tuple(sorted((f.name, f.side or "", f.severity or "") for f in study.findings
                        if f.name in RENDERABLE_FINDINGS))


def phantom(split: str, mode: str, image_size: int = 224, seed: int = 0,
            reports: Sequence[IUReport] | None = None) -> PhantomCXR:
    """``PhantomCXR(split, text=mode)``; ``reports`` replaces the IU reports (tests)."""
    return PhantomCXR(split=split, image_size=image_size, text=mode, seed=seed,
                      reports=reports if mode == "iu" else None)


def _texts(dataset: PhantomCXR) -> list[tuple[str, str, dict[str, str], Any]]:
    """(id, report, sections, findings) of every study, without rendering.

    PhantomCXR has no public text-only accessor yet; its private study index is read when
    present (instant), otherwise each sample is rendered (seconds per thousand studies).
    """
    studies = getattr(dataset, "_studies", None)
    if studies is not None and all(hasattr(s, "findings") for s in studies[:1]):
        return [(s.id, s.report, dict(s.sections), s.findings) for s in studies]
    out = []
    for i in range(len(dataset)):
        sample = dataset[i]
        out.append((sample.id, sample.report, dict(sample.sections), tuple(sample.findings)))
    return out


def studies(split: str, seed: int = 0, reports: Sequence[IUReport] | None = None,
            modes: Sequence[str] = TEXT_MODES) -> list[Study]:
    """Every study of ``split`` in both text modes (iu first), in PhantomCXR index order.

    Raises:
        ValueError: an unknown split or mode (from PhantomCXR).
    """
    if reports is None:  # the real corpus: indexed once per process
        return [s for mode in modes for s in _studies(split, seed, mode)]
    return [s for mode in modes for s in _index(phantom(split, mode, seed=seed, reports=reports), mode)]


@functools.lru_cache(maxsize=16)
def _studies(split: str, seed: int, mode: str) -> tuple[Study, ...]:
    return tuple(_index(phantom(split, mode, seed=seed), mode))


def _index(dataset: PhantomCXR, mode: str) -> list[Study]:
    from flamingo_lib.data.phantom.text import findings_to_labels

    return [Study(sid, mode, index, report, sections, tuple(findings), findings_to_labels(findings))
            for index, (sid, report, sections, findings) in enumerate(_texts(dataset))]


def lm_documents(split: str = "train", seed: int = 0, reports: Sequence[IUReport] | None = None) -> list[str]:
    """Report text of ``split``, one document per IU FINDINGS / IMPRESSION section and one per
    templated report: the tokenizer's and the LM's pretraining corpus (``split="train"``)."""
    docs = []
    for study in studies(split, seed, reports):
        if study.mode == "iu":
            docs.extend(study.sections[s] for s in LM_SECTIONS if study.sections.get(s))
        elif study.report:
            docs.append(study.report)
    return docs


@functools.lru_cache(maxsize=8)
def data_version(seed: int = 0) -> str:
    """A hash of every train and val study's id, text and labels plus the renderer version: the
    'data version' in the encoders' fingerprints (computed once per process)."""
    from flamingo_lib.data.phantom.render import RENDERER_VERSION

    digest = hashlib.sha256(f"renderer={RENDERER_VERSION}|seed={seed}|".encode())
    for split in ("train", "val"):
        for s in studies(split, seed):
            findings = [dataclasses.astuple(f) for f in s.findings]
            digest.update(json.dumps([s.id, s.mode, s.report, s.sections, findings], sort_keys=True).encode())
    return digest.hexdigest()[:16]
