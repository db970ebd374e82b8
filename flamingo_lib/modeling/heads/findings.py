"""An auxiliary findings classifier on the resampled visual features.

The Perceiver Resampler learns only through the language-modelling loss, and on the embedded
default that signal is too thin for it to pull most findings out of the encoder's patch tokens:
trained on *oracle* tokens that spell out the findings, the same cross-attention and frozen LM
name them at the reference reports' ceiling (`experiments/oracle_features.py`), on the
real tokens they name only the heart and effusions. A linear classifier on the latents, trained
with binary cross-entropy on each training study's labels (:class:`~flamingo_lib.labeling.targets.FindingTargets`: the dataset's
own, such as MIMIC-CXR-JPG's CheXpert table or the phantom's image truth, else the labeler's reading
of the report), gives the resampler a direct signal to make the findings readable in its latents;
the cross-attention then reads them as it reads the oracle's.

The head is also a classifier in its own right: :meth:`FlamingoModel.predict_findings`.

With ``FlamingoConfig.reading_head`` it has a second output per observation, trained on the
labeler's reading of each report (:meth:`~flamingo_lib.labeling.targets.FindingTargets.with_readings`): what the radiologist will
write, which is not what the image shows (a hedged atelectasis, a parent observation left unnamed,
"opacity" written for some airspace findings and not for others). The first output keeps the
image's labels; findings-guided decoding weighs a report against both
(:meth:`FlamingoModel.predict_readings`, :mod:`flamingo_lib.inference.guided_decoding`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flamingo_lib.observations import FINDINGS_OBSERVATIONS  # noqa: F401  (the head's default observations)



class FindingsHead(nn.Module):
    """A linear multi-label classifier on every latent of the resampled images.

    Args:
        num_latents, dim_visual: the resampler's output shape per image.
        num_findings: the number of outputs (observations, times two with a reading head).
        severity_outputs: a severity head's outputs (one per observation, after the others), read
            from the latents without shaping them (their gradient stops at the head) and drawn from
            their own ``seed``, so that every other weight of a model starts and trains as without
            them. Trained through the resampler, their few soft targets pulled the latents away
            from what the report needs (docs/training.md).
    """

    def __init__(self, num_latents: int, dim_visual: int, num_findings: int, severity_outputs: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.classifier = nn.Linear(num_latents * dim_visual, num_findings)
        self.severity = None
        if severity_outputs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.severity = nn.Linear(num_latents * dim_visual, severity_outputs)

    def forward(self, visual_features: torch.Tensor, num_images: torch.Tensor | Sequence[int] | None = None,
                check: bool = True) -> torch.Tensor:
        """(B, T, num_latents, dim_visual) -> (B, num_findings) logits: each study's images averaged.

        Args:
            num_images: (B,) how many of the T image slots each study fills (the rest is the zero
                padding of a batch mixing studies with fewer views, which is no image); None: all T.
            check: check the counts and take the plain mean when every slot is filled (both read the
                counts on the host); False (a training step on an accelerator, whose batches the
                processor built): the masked mean always, nothing read.

        Raises:
            ValueError: a study without images (T = 0 or a count of 0): there is nothing to
                classify; counts that do not fit the batch.
        """
        if visual_features.shape[1] == 0:
            raise ValueError("the findings head needs at least one image per study; got visual features "
                             f"of shape {tuple(visual_features.shape)}")
        flat = visual_features.flatten(2)
        slots = flat.shape[1]
        if not check and num_images is not None:
            counts = torch.as_tensor(num_images, device=flat.device).long().clamp(1, slots)
        else:
            counts = None if num_images is None else check_image_counts(num_images, flat.shape[0], slots)
        if counts is None or (check and bool((counts == slots).all())):
            pooled = flat.mean(1)  # every slot an image: the plain mean (bit-identical to before)
        else:
            filled = torch.arange(slots, device=flat.device) < counts.to(flat.device)[:, None]  # (B, T)
            pooled = (flat * filled[..., None].to(flat.dtype)).sum(1) / counts.to(flat.device, flat.dtype)[:, None]
        # in the head's dtype: features may come in float32 to a model cast to bfloat16 for inference
        pooled = pooled.to(self.classifier.weight.dtype)
        if self.severity is None:
            return self.classifier(pooled)
        return torch.cat([self.classifier(pooled), self.severity(pooled.detach())], -1)


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


def severity_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the severity outputs against soft targets (0, 0.5 or 1), summed over
    the (study, observation) pairs whose report states a severity and divided by all pairs, as
    :func:`findings_loss` averages: a mean over the few stated pairs alone would weigh each ~20 times
    a finding's, and its gradients would dominate the norm that training clips every weight by.

    Args:
        logits: (B, K); targets: (B, K) in [0, 1], NaN where the report states no severity.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"severity logits {tuple(logits.shape)} but targets {tuple(targets.shape)}")
    stated = ~targets.isnan()
    pairs = F.binary_cross_entropy_with_logits(logits.float(), targets.float().nan_to_num(0.0), reduction="none")
    # a sum over the stated pairs, not a mean of a masked-out tensor: no NaN reaches the gradient
    return (pairs * stated).sum() / max(stated.numel(), 1)
