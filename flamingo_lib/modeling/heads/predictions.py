"""The findings head's side of ``FlamingoModel``: its predictions, and the media the findings
tokens extend (:mod:`flamingo_lib.modeling.heads.findings`, :mod:`flamingo_lib.modeling.heads.findings_tokens`).

Both pool over a study's images, and a batch pads studies with fewer views with empty slots that
are no image: every method here takes ``num_images`` (B,), or counts them from the zero padding of
pixels or cached patch tokens (:func:`~flamingo_lib.modeling.heads.findings.padded_image_counts`).
"""

from __future__ import annotations

from typing import Any

import torch

from flamingo_lib.modeling.heads.findings import padded_image_counts
from flamingo_lib.modeling.heads.findings_tokens import append_findings_tokens


def current_study(visual_features: torch.Tensor, num_images: Any, first_image: Any, check: bool = True
                  ) -> tuple[torch.Tensor, Any]:
    """The images of the study being reported, for what pools over a study (the findings head).

    A prompt with a prior study holds the prior's films in the first slots and the study's own
    (its last media group) in ``first_image`` (1-based) .. ``num_images``; the head must read the
    study's own films only, not the prior's.

    Args:
        visual_features: (B, T, n, D).
        num_images: (B,) the last slot each sample fills (1-based), or None (all T).
        first_image: (B,) the first slot of the study's own films (1-based), or None (1).

        check: read on the host whether any study starts later (the inputs are returned as they are
            when none does) and gather only as many slots as the longest study holds; False (a training
            step on an accelerator): gather all T slots, reading nothing.

    Returns:
        (B, T', n, D) each study's own slots moved to the front (the rest zero) and (B,) their
        counts; the inputs unchanged when every study starts at the first slot.
    """
    if num_images is None or first_image is None:
        return visual_features, num_images
    device = visual_features.device
    first = torch.as_tensor(first_image, device=device).long().clamp(min=1)
    if check and bool((first == 1).all()):
        return visual_features, num_images
    last = torch.as_tensor(num_images, device=device).long()
    counts = (last - first + 1).clamp(min=1)
    width = int(counts.max()) if check else visual_features.shape[1]
    slots = first[:, None] - 1 + torch.arange(width, device=device)  # (B, T')
    inside = slots < last[:, None]
    rows = torch.arange(visual_features.shape[0], device=device)[:, None]
    gathered = visual_features[rows, slots.clamp(max=visual_features.shape[1] - 1)]
    return gathered * inside[..., None, None].to(gathered.dtype), counts


def prior_study(visual_features: torch.Tensor, first_image: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The images before the study's own films: a prior study's, for the prior's findings tokens.

    Args:
        visual_features: (B, T, n, D).
        first_image: (B,) the first slot of the study's own films (1-based).

    Returns:
        (B, T, n, D) with the slots from the study's own on zeroed, and (B,) the prior's image
        counts (0: no prior; the head is then given one slot, and its verdict is not used).
    """
    device = visual_features.device
    counts = (torch.as_tensor(first_image, device=device).long() - 1).clamp(min=0)
    inside = torch.arange(visual_features.shape[1], device=device)[None] < counts[:, None]
    return visual_features * inside[..., None, None].to(visual_features.dtype), counts


class FindingsPredictionMixin:
    """Methods of ``FlamingoModel`` (which provides ``config``, ``flamingo``,
    ``resolve_visual_features`` and the ``_generating`` / ``_media_memo`` state of a ``generate`` call)."""

    def conditioning_media(self, visual_features: torch.Tensor, num_images: torch.Tensor | None = None,
                           first_image: torch.Tensor | None = None, token_findings: torch.Tensor | None = None,
                           token_prior_findings: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, n, D) resampled latents -> what the cross-attention layers read: with
        ``config.findings_tokens``, every image's latents followed by the study's K findings tokens
        (B, T, n + K, D; :mod:`flamingo_lib.modeling.heads.findings_tokens`), else the latents unchanged (so too for
        studies without images, T = 0). ``num_images`` (B,): the slots each study fills, the rest
        being padding the head must not average (None: all T); ``first_image`` (B,): the first slot
        of the study's own films, after a prior study's (:func:`current_study`). ``token_findings``
        (B, K): probabilities the tokens are built from in place of the head's, NaN where the head's
        stand (the trainer's teacher forcing, ``TrainConfig.findings_tokens_teacher``).
        ``token_prior_findings`` (B, K): the same for the prior study's verdict, with
        ``config.prior_findings_tokens``."""
        tokens = self.flamingo.findings_tokens
        if tokens is None or visual_features.shape[1] == 0:
            return visual_features
        # detached: the head learns from its labels only, never from what is easy to write
        if num_images is not None:  # a study with no image reads no media: any verdict will do
            num_images = torch.as_tensor(num_images).clamp(min=1)
        own, counts = current_study(visual_features, num_images, first_image, self.check_inputs)
        verdict = self._token_verdict(self._findings_logits(own, counts), token_findings)
        prior = None
        if self.config.prior_findings_tokens and first_image is not None:
            prior = self._prior_verdict(visual_features, first_image)
            if token_prior_findings is not None:
                given = token_prior_findings.to(prior)[:, :prior.shape[1]]
                width = given.shape[1]
                keep = given.isnan() | prior[:, :1].isnan()  # given only where the prompt holds the prior's films
                prior = torch.cat([torch.where(keep, prior[:, :width], given), prior[:, width:]], 1)
        severities = prior is not None and tokens.grown is not None  # grown: built for a severity head only
        k = len(self.config.findings_head)
        return append_findings_tokens(visual_features, tokens(
            verdict[:, :k], None if prior is None else prior[:, :k],
            verdict[:, k:] if severities else None, prior[:, k:] if severities else None))

    def _token_verdict(self, logits: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) the findings' probabilities, (B, 2K) with a severity head (the severities after
        them), detached, from the head's ``logits``; ``given`` (B, K or 2K) replaces them where it is
        not NaN (teacher forcing)."""
        k = len(self.config.findings_head)
        verdict = logits[:, :k].detach().float().sigmoid()
        if self.config.severity_head:
            verdict = torch.cat([verdict, logits[:, -k:].detach().float().sigmoid()], 1)
        if given is not None:
            given = given.to(verdict)[:, :verdict.shape[1]]
            width = given.shape[1]
            verdict = torch.cat([torch.where(given.isnan(), verdict[:, :width], given), verdict[:, width:]], 1)
        return verdict

    def _prior_verdict(self, visual_features: torch.Tensor, first_image: Any) -> torch.Tensor:
        """(B, K) or (B, 2K) as :meth:`_token_verdict`, on the films before the study's own, a row of
        NaN where there are none."""
        prior_films, counts = prior_study(visual_features, first_image)
        verdict = self._token_verdict(self._findings_logits(prior_films, counts.clamp(min=1)))
        return torch.where((counts > 0)[:, None], verdict, torch.full_like(verdict, float("nan")))

    def _media_for(self, features: torch.Tensor, num_images: torch.Tensor | None,
                   first_image: torch.Tensor | None = None, token_findings: torch.Tensor | None = None,
                   token_prior_findings: torch.Tensor | None = None) -> torch.Tensor:
        if not self._generating or token_findings is not None or token_prior_findings is not None:
            return self.conditioning_media(features, num_images, first_image, token_findings, token_prior_findings)
        if self._media_memo is None or self._media_memo[0] is not features:
            self._media_memo = (features, self.conditioning_media(features, num_images, first_image))
        return self._media_memo[1]

    def _findings_logits(self, visual_features: torch.Tensor, num_images: Any = None) -> torch.Tensor:
        if self.flamingo.findings_head is None:
            raise ValueError("this model has no findings head (config.findings_head is None): "
                             "build it with findings_head=[observation names]")
        return self.flamingo.findings_head(visual_features, num_images, check=self.check_inputs)

    def _head_input(self, pixel_values: torch.Tensor | None, image_embeddings: torch.Tensor | None,
                    visual_features: torch.Tensor | None, num_images: Any) -> tuple[torch.Tensor, Any]:
        """Resampled features and the images per study (counted from the padding of pixels or
        embeddings when not given; all slots for visual features)."""
        features = self.resolve_visual_features(pixel_values, image_embeddings, visual_features)
        if num_images is None and visual_features is None:
            num_images = padded_image_counts(pixel_values if pixel_values is not None else image_embeddings)
        return features, num_images

    @torch.no_grad()
    def predict_findings(self, pixel_values: torch.Tensor | None = None, image_embeddings: torch.Tensor | None = None,
                         visual_features: torch.Tensor | None = None, num_images: Any = None
                         ) -> dict[str, torch.Tensor]:
        """The findings head's probabilities for each study (exactly one input, as ``forward``).

        Args:
            num_images: (B,) images per study; by default counted from the zero padding of
                ``pixel_values`` / ``image_embeddings`` (a batch mixing one- and two-view studies),
                all T slots for ``visual_features``.

        Returns:
            observation name (``config.findings_head``) -> (B,) probability.
        """
        return self._head_probabilities(*self._head_input(pixel_values, image_embeddings, visual_features, num_images))

    @torch.no_grad()
    def predict_readings(self, pixel_values: torch.Tensor | None = None, image_embeddings: torch.Tensor | None = None,
                         visual_features: torch.Tensor | None = None, num_images: Any = None
                         ) -> dict[str, torch.Tensor]:
        """The reading head's probabilities (``config.reading_head``) that the labeler reads each
        observation as positive in the study's report (inputs as :meth:`predict_findings`).

        Returns:
            observation name (``config.findings_head``) -> (B,) probability.

        Raises:
            ValueError: the model has no reading head.
        """
        return self._optional_part("readings", pixel_values, image_embeddings, visual_features, num_images)

    @torch.no_grad()
    def predict_heads(self, pixel_values: torch.Tensor | None = None, image_embeddings: torch.Tensor | None = None,
                      visual_features: torch.Tensor | None = None, num_images: Any = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """:meth:`predict_findings` and, with a reading head, :meth:`predict_readings` (else None),
        from one resampling of the images (inputs as :meth:`predict_findings`)."""
        features, counts = self._head_input(pixel_values, image_embeddings, visual_features, num_images)
        findings = self._head_probabilities(features, counts)
        readings = self._head_probabilities(features, counts, part="readings") if self.config.reading_head else None
        return findings, readings

    @torch.no_grad()
    def predict_severity(self, pixel_values: torch.Tensor | None = None, image_embeddings: torch.Tensor | None = None,
                         visual_features: torch.Tensor | None = None, num_images: Any = None
                         ) -> dict[str, torch.Tensor]:
        """The severity head's reading (``config.severity_head``) of each observation, were it present:
        0 small or mild, 0.5 moderate, 1 large or severe (inputs as :meth:`predict_findings`).

        Returns:
            observation name (``config.findings_head``) -> (B,) severity in [0, 1].

        Raises:
            ValueError: the model has no severity head.
        """
        return self._optional_part("severity", pixel_values, image_embeddings, visual_features, num_images)

    def _optional_part(self, part: str, *inputs: Any) -> dict[str, torch.Tensor]:
        """:meth:`_head_probabilities` of an optional ``part`` ("readings", "severity") for the inputs
        of :meth:`predict_findings`, refused when the model was built without it."""
        name = {"readings": "reading_head", "severity": "severity_head"}[part]
        if not getattr(self.config, name):
            raise ValueError(f"this model has no {name.replace('_', ' ')} (config.{name} is False): "
                             f"build it with FlamingoConfig(findings_head=[...], {name}=True)")
        return self._head_probabilities(*self._head_input(*inputs), part=part)

    def _head_probabilities(self, features: torch.Tensor, num_images: Any = None, part: str = "findings"
                            ) -> dict[str, torch.Tensor]:
        """Observation -> (B,) probability of one part of the head's outputs: ``"findings"``,
        ``"readings"`` or ``"severity"`` (in that order, each K wide)."""
        logits = self._findings_logits(features, num_images)  # first: it says so when there is no head
        k = len(self.config.findings_head)
        start = {"findings": 0, "readings": k, "severity": logits.shape[1] - k}[part]
        probabilities = logits[:, start:start + k].float().sigmoid()
        return {obs: probabilities[:, j] for j, obs in enumerate(self.config.findings_head)}
