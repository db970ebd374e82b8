"""LongitudinalPhantomCXR: synthetic patients with 1-4 chest films over time and comparison reports.

Each synthetic patient has one anatomy (body, heart and lung geometry, pose, exposure) for
all of their studies: the renderer draws the patient from the image seed alone, and the
seed here is ``sha256(patient id, dataset seed)``, so only the findings differ between a
patient's films. Findings evolve from study to study
(:mod:`~flamingo_lib.data.phantom.evolution`): an effusion appears, grows, shrinks or
resolves, a line or tube is placed or removed, cardiomegaly stays, and most findings stay
as they were, so an unchanged finding is drawn with the very same pixels.

Text (:mod:`~flamingo_lib.data.phantom.followup_text`): a patient's first study has the
templated phantom's plain report; every later one a comparison report stating each
finding's change against the prior study. ``sections`` holds ``INDICATION`` (never naming
a finding the prior study did not show) and ``FINDINGS`` (the report).

Splits are patient-disjoint by construction: patients are generated per split until the
split holds :data:`LONGITUDINAL_SPLIT_SIZES` studies (the templated phantom's sizes), so
the number of patients per split depends on the seed (about 890/111/111 patients).

Films are cached exactly as :class:`~flamingo_lib.data.phantom.dataset.PhantomCXR` caches
them (same root and fingerprint, one ``.npz`` per study keyed by its id, image seed and
findings), and a study rendered as another study's ``prior`` uses the same entry.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flamingo_lib.data.licence import licence_meta
from flamingo_lib.data.phantom.dataset import (SPLITS, TEMPLATED_SPLIT_SIZES, StudyIndex, cached_render,
                                                check_arguments, entry_path, render_cache_dir)
from flamingo_lib.data.phantom.evolution import compare, evolve
from flamingo_lib.data.phantom.followup_text import comparison_report, indication
from flamingo_lib.data.phantom.render import RENDERER_VERSION, VIEWS, render_phantom, stable_seed
from flamingo_lib.data.phantom.text import findings_to_labels, sample_findings, templated_report
from flamingo_lib.data.sample import CXRSample, Finding

logger = logging.getLogger(__name__)

#: Studies per split: the templated phantom's sizes, so the two are comparable.
LONGITUDINAL_SPLIT_SIZES: dict[str, int] = dict(TEMPLATED_SPLIT_SIZES)
#: Relative frequency of 1, 2, 3 and 4 studies per patient (mean 2.25).
STUDIES_PER_PATIENT: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)


@dataclass(frozen=True)
class _Study:
    id: str
    patient: str
    index: int  # 0-based position in the patient's history
    findings: tuple[Finding, ...]
    report: str
    sections: dict[str, str]
    changes: dict[str, str]


class LongitudinalPhantomCXR(StudyIndex):
    """Map-style dataset of phantom studies, patient by patient, each patient's studies in time order.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square images in pixels.
        seed: dataset seed; changes every patient's anatomy, history and wording.
        views: views rendered per study, from ``("PA", "LATERAL")``; masks are those of the first.
        cache_dir: root of the image cache (as :class:`~flamingo_lib.data.phantom.dataset.PhantomCXR`).
        cache: set ``False`` to render every access and write nothing.
        max_samples: keep only the first this many studies of the split.

    Raises:
        ValueError: for an unknown split or view, or a bad size/count.
        TypeError: for a non-integer seed.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 224,
        seed: int = 0,
        views: Sequence[str] = ("PA",),
        cache_dir: str | os.PathLike[str] | None = None,
        cache: bool = True,
        max_samples: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        views = (views,) if isinstance(views, str) else tuple(views)
        if not views or any(v not in VIEWS for v in views):
            raise ValueError(f"views must be a non-empty sequence of {VIEWS}, got {views!r}")
        check_arguments(image_size, seed, max_samples)
        self.split, self.image_size, self.seed, self.views = split, image_size, seed, views
        self._studies = self._build(LONGITUDINAL_SPLIT_SIZES[split])
        if max_samples is not None:
            self._studies = self._studies[:max_samples]
        self.cache_dir = render_cache_dir(cache, cache_dir, image_size, views)

    # --- index ----------------------------------------------------------------------------

    def _build(self, n_studies: int) -> list[_Study]:
        studies: list[_Study] = []
        patient = 0
        while len(studies) < n_studies:
            patient_id = f"phantom-long-{self.split}-{patient:05d}"
            # Findings and wording draw from separate streams, so rewording never changes a film.
            rng = random.Random(stable_seed("phantom-longitudinal", self.seed, patient_id))
            count = min(rng.choices((1, 2, 3, 4), STUDIES_PER_PATIENT)[0], n_studies - len(studies))
            history = [sample_findings(rng)]
            while len(history) < count:
                history.append(evolve(history[-1], rng))
            for index, findings in enumerate(history):
                study_id = f"{patient_id}-{index}"
                text_rng = random.Random(stable_seed("phantom-longitudinal-text", self.seed, study_id))
                prior = history[index - 1] if index else None
                if prior is None:
                    report, changes = templated_report(findings, text_rng), {}
                else:
                    report, changes = comparison_report(prior, findings, text_rng), compare(prior, findings)
                sections = {"INDICATION": indication(prior, findings, text_rng), "FINDINGS": report}
                studies.append(_Study(study_id, patient_id, index, findings, report, sections, changes))
            patient += 1
        return studies

    @property
    def patients(self) -> list[str]:
        """The patient id of every study, in index order."""
        return [s.patient for s in self._studies]

    @property
    def changes(self) -> list[dict[str, str]]:
        """``meta["changes"]`` of every study in index order, without rendering."""
        return [dict(s.changes) for s in self._studies]

    def prior_index(self, index: int) -> int | None:
        """Index of the study before ``index`` of the same patient, or None for a first study."""
        return index - 1 if self._studies[index].index > 0 else None

    def image_seed(self, index: int) -> int:
        """The render seed of study ``index``: ``sha256(patient id, dataset seed)``, the same for
        every study of a patient, which is what keeps their anatomy."""
        return stable_seed("phantom-longitudinal-image", self._studies[index].patient, self.seed)

    def text_samples(self) -> list[CXRSample]:
        """Every study without films (priors included, also without films); nothing is rendered."""
        return [self._text_sample(i, with_prior=True) for i in range(len(self))]

    def _text_sample(self, index: int, with_prior: bool) -> CXRSample:
        study = self._studies[index]
        meta = {
            "report_id": study.id, "patient": study.patient, "study_index": study.index,
            "changes": dict(study.changes), "split": self.split, "dataset_seed": self.seed,
            "text": "longitudinal", **licence_meta(False, None, "phantom: synthetic films"),
        }
        prior_index = self.prior_index(index)
        prior = self._text_sample(prior_index, False) if with_prior and prior_index is not None else None
        return CXRSample(id=study.id, images=[], report=study.report, sections=dict(study.sections),
                         findings=list(study.findings), labels=findings_to_labels(study.findings),
                         meta=meta, prior=prior)

    # --- samples --------------------------------------------------------------------------

    def __getitem__(self, index: int) -> CXRSample:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"index {index!r} out of range for {n} studies")
        index = int(index) % n
        prior_index = self.prior_index(index)
        prior = self._sample(prior_index, None) if prior_index is not None else None
        return self._sample(index, prior)

    def _sample(self, index: int, prior: CXRSample | None) -> CXRSample:
        sample = self._text_sample(index, with_prior=False)
        images, masks = self._images(index)
        meta = sample.meta | {"seed": self.image_seed(index), "renderer_version": RENDERER_VERSION}
        return dataclasses.replace(sample, images=images, masks=masks, views=list(self.views), meta=meta,
                                   prior=prior)

    def cache_path(self, index: int) -> Path | None:
        """Where study ``index`` is cached (``None`` with caching off)."""
        if self.cache_dir is None:
            return None
        study = self._studies[index]
        return entry_path(self.cache_dir, study.id, self.image_seed(index), study.findings)

    def _images(self, index: int) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
        return cached_render(self.cache_path(index), len(self.views), lambda: self._render(index))

    def _render(self, index: int) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
        """The study's films, one per view, with the first view's masks."""
        images: list[Image.Image] = []
        masks: dict[str, np.ndarray] = {}
        seed = self.image_seed(index)
        for i, view in enumerate(self.views):
            image, view_masks = render_phantom(self._studies[index].findings, seed=seed,
                                               image_size=self.image_size, view=view)
            images.append(image)
            if i == 0:
                masks = view_masks
        return images, masks
