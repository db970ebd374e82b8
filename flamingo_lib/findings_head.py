"""An auxiliary findings classifier on the resampled visual features.

The Perceiver Resampler learns only through the language-modelling loss, and on the embedded
default that signal is too thin for it to pull most findings out of the encoder's patch tokens:
trained on *oracle* tokens that spell out the findings, the same cross-attention and frozen LM
name them at the reference reports' ceiling (`bench/diagnostics/oracle_features.py`), on the
real tokens they name only the heart and effusions. A linear classifier on the latents, trained
with binary cross-entropy on each training study's labels (:class:`FindingTargets`: the dataset's
own, such as MIMIC-CXR-JPG's CheXpert table or the phantom's image truth, else the labeler's reading
of the report), gives the resampler a direct signal to make the findings readable in its latents;
the cross-attention then reads them as it reads the oracle's.

The head is also a classifier in its own right: :meth:`FlamingoModel.predict_findings`.

With ``FlamingoConfig.reading_head`` it has a second output per observation, trained on the
labeler's reading of each report (:meth:`FindingTargets.with_readings`): what the radiologist will
write, which is not what the image shows (a hedged atelectasis, a parent observation left unnamed,
"opacity" written for some airspace findings and not for others). The first output keeps the
image's labels; findings-guided decoding weighs a report against both
(:meth:`FlamingoModel.predict_readings`, :mod:`flamingo_lib.guided_decoding`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS

#: The observations the head predicts by default: the 14 CheXpert observations but "No Finding"
#: (an absence, implied by the others).
FINDINGS_OBSERVATIONS: tuple[str, ...] = tuple(obs for obs in CHEXPERT_OBSERVATIONS if obs != "No Finding")

#: Where the head's targets come from (:meth:`FindingTargets.for_samples`).
FINDINGS_TARGET_SOURCES: tuple[str, ...] = ("labels", "reports", "both")


class FindingsHead(nn.Module):
    """A linear multi-label classifier on every latent of the resampled images.

    Args:
        num_latents, dim_visual: the resampler's output shape per image.
        num_findings: the number of observations predicted.
    """

    def __init__(self, num_latents: int, dim_visual: int, num_findings: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(num_latents * dim_visual, num_findings)

    def forward(self, visual_features: torch.Tensor, num_images: torch.Tensor | Sequence[int] | None = None
                ) -> torch.Tensor:
        """(B, T, num_latents, dim_visual) -> (B, num_findings) logits: each study's images averaged.

        Args:
            num_images: (B,) how many of the T image slots each study fills (the rest is the zero
                padding of a batch mixing studies with fewer views, which is no image); None: all T.

        Raises:
            ValueError: a study without images (T = 0 or a count of 0): there is nothing to
                classify; counts that do not fit the batch.
        """
        if visual_features.shape[1] == 0:
            raise ValueError("the findings head needs at least one image per study; got visual features "
                             f"of shape {tuple(visual_features.shape)}")
        flat = visual_features.flatten(2)
        slots = flat.shape[1]
        counts = None if num_images is None else check_image_counts(num_images, flat.shape[0], slots)
        if counts is None or bool((counts == slots).all()):
            pooled = flat.mean(1)  # every slot an image: the plain mean (bit-identical to before)
        else:
            filled = torch.arange(slots, device=flat.device) < counts.to(flat.device)[:, None]  # (B, T)
            pooled = (flat * filled[..., None].to(flat.dtype)).sum(1) / counts.to(flat.device, flat.dtype)[:, None]
        # in the head's dtype: features may come in float32 to a model cast to bfloat16 for inference
        return self.classifier(pooled.to(self.classifier.weight.dtype))


def check_image_counts(num_images: torch.Tensor | Sequence[int], studies: int, slots: int) -> torch.Tensor:
    """(B,) images per study as a long tensor, each between 1 and the batch's ``slots``.

    Raises:
        ValueError: naming the first study whose count does not fit, or a count per study missing.
    """
    counts = torch.as_tensor(num_images, dtype=torch.long).flatten()
    if counts.numel() != studies:
        raise ValueError(f"num_images gives {counts.numel()} counts for {studies} studies")
    bad = ((counts < 1) | (counts > slots)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"study {i} has {int(counts[i])} image(s) by num_images, expected 1 to {slots} "
                         "(the image slots of the batch)")
    return counts


def padded_image_counts(media: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) pixel values or patch embeddings -> (B,) images per study: the slots up to the
    last one holding any non-zero value. The processor and the feature cache fill the slots a study
    lacks with exact zeros at the end; a real film, normalised, is never all zeros."""
    filled = media.flatten(2).ne(0).any(-1)  # (B, T)
    position = torch.arange(1, media.shape[1] + 1, device=media.device)
    return (filled.long() * position).amax(-1) if media.shape[1] else filled.sum(-1)


def findings_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, averaged over studies and observations.

    Args:
        logits: (B, K); targets: (B, K) in {0, 1}.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"findings logits {tuple(logits.shape)} but targets {tuple(targets.shape)}")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


class FindingTargets:
    """Report text -> (K,) targets: 1.0 where the labeler reads the observation as positive
    (uncertain and negative mentions are 0, as in the clinical-efficacy convention); memoised,
    since a training run reads each report once per epoch. :meth:`for_samples` prefers a study's
    own labels.

    Args:
        observations: the head's observations, in order.
        labeler: report text -> labels; defaults to the rule-based labeler.
    """

    def __init__(self, observations: Sequence[str], labeler: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        if labeler is None:
            from flamingo_lib.labeler import label_report as labeler
        self.observations, self.labeler = tuple(observations), labeler
        self._read: dict[str, torch.Tensor] = {}

    def __call__(self, reports: Sequence[str]) -> torch.Tensor:
        """(B,) reports -> (B, K) float targets."""
        return self._stack([self._reading(report) for report in reports])

    def _positives(self, labels: Mapping[str, Any]) -> torch.Tensor:
        """(K,): 1.0 where ``labels`` says positive (exactly 1.0)."""
        return torch.tensor([float(labels.get(obs) == 1.0) for obs in self.observations])

    def _reading(self, report: str) -> torch.Tensor:
        """(K,) positives of the labeler's reading of ``report``, read once."""
        if report not in self._read:
            self._read[report] = self._positives(self.labeler(report))
        return self._read[report]

    def _stack(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(rows)) if rows else torch.zeros(0, len(self.observations))

    def for_samples(self, samples: Sequence[Any], source: str = "labels") -> torch.Tensor:
        """(B,) studies -> (B, K) float targets.

        Args:
            source: ``"reports"``: the labeler's reading of each report. ``"labels"``: each study's own
                ``labels`` (the dataset's: the phantom's image truth, MIMIC-CXR-JPG's CheXpert table,
                IU X-Ray's MeSH terms; positive = 1.0). ``"both"``: their mean, so the head learns the
                average of the two probabilities (0.5 where they disagree). A study with no labels at
                all (every value ``None``) gets the reading whatever the source.

        Why the labels: the head is the judge of findings-guided decoding, and a report's wording is
        a noisy copy of what the image shows (hedged findings read as uncertain, a parent observation
        left unnamed). Why both: a report is scored against the image and against the reference's
        wording, and with the mean the judge weighs the two equally.
        """
        if source not in FINDINGS_TARGET_SOURCES:
            raise ValueError(f"findings targets come from one of {FINDINGS_TARGET_SOURCES}, got {source!r}")
        rows = []
        for sample in samples:
            labels = getattr(sample, "labels", None) or {}
            if source == "reports" or not any(value is not None for value in labels.values()):
                rows.append(self._reading(sample.report))
                continue
            own = self._positives(labels)
            rows.append(own if source == "labels" else (own + self._reading(sample.report)) / 2)
        return self._stack(rows)

    def with_readings(self, samples: Sequence[Any], source: str = "labels") -> torch.Tensor:
        """(B,) studies -> (B, 2K) targets of a head with readings (``FlamingoConfig.reading_head``):
        those of ``source`` (:meth:`for_samples`), then the labeler's reading of each report."""
        return torch.cat([self.for_samples(samples, source), self.for_samples(samples, "reports")], 1)
