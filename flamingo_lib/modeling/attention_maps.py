"""Where in the X-ray does a text token look? Cross-attention over latents combined with the
resampler's attention over patches, as a heatmap over the image.

For text position i, image t, cross-attention layer l and head h, the weight on latent j is
``xattn[l][h, i, t*m + j]``, m the media tokens per image: the n latents, then (models with
``findings_tokens``) the study's K findings tokens, which are not image regions: the maps over the
image leave their weight out, :meth:`AttentionMaps.findings_weights` reports it. Each latent's
dependence on the patches is the resampler's attention rolled out through its layers (the residual
keeps what earlier layers gathered):
``R_k = R_{k-1} + A_k[:, patches] + A_k[:, latents] @ R_{k-1}``, rows normalised at the end.
The token's map over patches is ``xattn_weights @ R``.

These raw maps say where a token's query looks, and they barely depend on the token: every latent
gathers from much of the film, with hotspots the latents share, so any mix of latents gives nearly
the same map (measured in docs/evaluation.md). The *evidence* map of a word (:func:`capture_evidence`,
:meth:`AttentionMaps.evidence`) weights each attention by how much it moved the word's
log-probability, as Chefer, Gur and Wolf (ICCV 2021) do for bi-modal transformers: per layer
``Ā = mean_h (A ⊙ ∂y/∂A)⁺`` in place of ``A``, in both the rollout and the cross-attention, the
latter summed over every text row (all of them feed the word through the LM). It follows the word
and the film.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flamingo_lib.modeling.cross_attention import MaskedCrossAttention
from flamingo_lib.modeling.lm_injection import flamingo_layers
from flamingo_lib.modeling.resampler import PerceiverAttention


@contextmanager
def keep_attention(model: Any) -> Iterator[None]:
    """Switch every cross-attention and resampler attention to the path that keeps its weights."""
    modules = [m for m in model.modules() if isinstance(m, (MaskedCrossAttention, PerceiverAttention))]
    for module in modules:
        module.keep_attention = True
    try:
        yield
    finally:
        for module in modules:
            module.keep_attention = False
            module.last_attention = None
            module.last_attention_grad = None


@dataclass
class AttentionMaps:
    """Attention weights of one teacher-forced forward pass.

    Attributes:
        xattn: per cross-attention layer, (B, H, L, T*m).
        resampler: per resampler layer, (B, T, H_r, n, P + n).
        xattn_grad, resampler_grad: their gradients, when captured by :func:`capture_evidence`.
        num_latents: n.
        num_findings_tokens: K, the findings tokens after each image's latents (m = n + K).
        pixel_saliency: (T, H, W) ``|∂y/∂x|`` of the target over each film's pixels, summed over
            the colour channels, when :func:`capture_evidence` took the gradient to the pixels.
    """

    xattn: list[torch.Tensor]
    resampler: list[torch.Tensor]
    num_latents: int
    num_findings_tokens: int = 0
    #: The gradients of one target (:func:`capture_evidence`) with respect to ``xattn`` and
    #: ``resampler``, in their layouts; None for a plain forward pass.
    xattn_grad: list[torch.Tensor] | None = None
    resampler_grad: list[torch.Tensor] | None = None
    pixel_saliency: torch.Tensor | None = None

    @property
    def media_per_image(self) -> int:
        return self.num_latents + self.num_findings_tokens

    def _xattn_weights(self, sample: int, position: int, image: int, start: int, stop: int,
                       layer: int | None, head: int | None) -> torch.Tensor:
        """Weights on media tokens [start, stop) of ``image``, averaged over layers and heads
        (or the chosen ones)."""
        layers = self.xattn if layer is None else [self.xattn[layer]]
        offset = image * self.media_per_image
        weights = torch.stack([l[sample, :, position, offset + start:offset + stop].float().cpu() for l in layers])
        weights = weights.mean(0)  # (H, stop - start)
        return weights.mean(0) if head is None else weights[head]

    @property
    def num_patches(self) -> int:
        return self.resampler[0].shape[-1] - self.num_latents

    def latent_to_patch(self, sample: int, image: int) -> torch.Tensor:
        """(n, P): how much each final latent draws from each patch (rows sum to 1)."""
        n, p = self.num_latents, self.num_patches
        rollout = torch.zeros(n, p)
        for layer in self.resampler:
            weights = layer[sample, image].float().mean(0).cpu()  # (n, P + n), heads averaged
            rollout = rollout + weights[:, :p] + weights[:, p:] @ rollout
        return rollout / rollout.sum(-1, keepdim=True).clamp(min=1e-12)

    def _weighted_rollout(self, sample: int, image: int) -> torch.Tensor:
        """(n, P): :meth:`latent_to_patch` with each layer's heads-averaged ``(A ⊙ ∂y/∂A)⁺``,
        rows renormalised, in place of its attention (a latent that did not move the target: 0)."""
        n, p = self.num_latents, self.num_patches
        rollout = torch.zeros(n, p)
        for weights, grad in zip(self.resampler, self.resampler_grad, strict=True):
            layer = (weights[sample, image] * grad[sample, image]).float().clamp(min=0).mean(0).cpu()  # (n, P + n)
            layer = layer / layer.sum(-1, keepdim=True).clamp(min=1e-30)
            rollout = rollout + layer[:, :p] + layer[:, p:] @ rollout
        return rollout / rollout.sum(-1, keepdim=True).clamp(min=1e-30)

    def evidence(self, sample: int = 0, image: int = 0, layer: int | None = None, head: int | None = None
                 ) -> torch.Tensor:
        """(P,) how much each patch of ``image`` moved the target of :func:`capture_evidence`: the
        gradient-weighted cross-attention on the image's latents, summed over the text rows (and the
        chosen ``layer`` / ``head``, all when None), times the gradient-weighted rollout; sums to 1,
        or all zeros when no attention on the image moved the target.

        Raises:
            ValueError: the maps hold no gradients (captured by :func:`capture_attention`).
        """
        if self.xattn_grad is None or self.resampler_grad is None:
            raise ValueError("these maps hold no gradients: capture them with capture_evidence(model, batch, positions)")
        layers = range(len(self.xattn)) if layer is None else [layer]
        offset = image * self.media_per_image
        on_latents = torch.zeros(self.num_latents)
        for index in layers:
            span = slice(offset, offset + self.num_latents)
            weighted = (self.xattn[index][sample, ..., span] * self.xattn_grad[index][sample, ..., span])
            weighted = weighted.float().clamp(min=0).cpu()  # (H, L, n)
            on_latents += (weighted.mean(0) if head is None else weighted[head]).sum(0)
        total = on_latents.sum()
        if total <= 0:
            return torch.zeros(self.num_patches)
        return (on_latents / total) @ self._weighted_rollout(sample, image)

    def token_relevance(self, sample: int, position: int, image: int = 0, layer: int | None = None,
                        head: int | None = None) -> torch.Tensor:
        """(P,) relevance of each patch to text ``position`` (sums to the attention mass on that
        image's latents: 0 for text that cannot see it). ``layer`` / ``head`` None average over them."""
        weights = self._xattn_weights(sample, position, image, 0, self.num_latents, layer, head)
        return weights @ self.latent_to_patch(sample, image)

    def findings_weights(self, sample: int, position: int, image: int = 0, layer: int | None = None,
                         head: int | None = None) -> torch.Tensor:
        """(K,) attention of text ``position`` on the findings tokens that follow ``image``
        (in ``config.findings_head`` order; empty without findings tokens)."""
        return self._xattn_weights(sample, position, image, self.num_latents, self.media_per_image, layer, head)


@torch.no_grad()
def capture_attention(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, AttentionMaps]:
    """One forward pass keeping every attention map. Returns (logits (B, L, V), maps)."""
    model.eval()
    with keep_attention(model):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        xattn = [layer.gated_cross_attn.attn.last_attention for layer in flamingo_layers(model)]
        resampler = [attn.last_attention for attn, _ in model.flamingo.perceiver.layers]
    findings = len(model.config.findings_head) if model.config.findings_tokens else 0
    return logits, AttentionMaps(xattn, resampler, model.config.resampler_num_latents, findings)


def capture_evidence(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int], sample: int = 0,
                     to_pixels: bool = False) -> AttentionMaps:
    """One forward and one backward pass for the words at ``positions`` of ``sample``: the target is
    the sum of their log-probabilities (each predicted from the position before), and the maps keep
    every attention's gradient with respect to it (:meth:`AttentionMaps.evidence`). No parameter's
    gradient is touched.

    Args:
        batch: ``pixel_values`` (B, T, 3, H, W) or ``image_embeddings`` (B, T, P, D), ``input_ids`` and
            ``attention_mask`` (B, L), as :meth:`~flamingo_lib.processing.processor.FlamingoProcessor.training_batch` builds them.
        positions: text positions, each >= 1.
        to_pixels: take the same backward pass on through the frozen encoder to the pixels, and keep
            the pixels' saliency too (``AttentionMaps.pixel_saliency``; what
            :func:`~flamingo_lib.modeling.pixel_maps.pixel_saliency` computes on its own): a map and its
            sharpening for the price of one backward pass.

    Raises:
        ValueError: no position, a position outside 1..L-1, or a batch of resampled
            ``visual_features`` (the patches' part of the path is gone); ``to_pixels`` without
            ``pixel_values``.
    """
    check_positions(batch, positions)
    if "visual_features" in batch:
        raise ValueError("evidence maps need the patch tokens: pass pixel_values or image_embeddings, "
                         "not resampled visual_features")
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if to_pixels:
        leaf = pixels_leaf(inputs)
        with torch.enable_grad():
            embeddings = model.flamingo.encode_visuals(leaf, grad_to_pixels=True)
    else:
        with torch.no_grad():
            embeddings = (inputs.pop("image_embeddings") if "image_embeddings" in inputs
                          else model.flamingo.encode_visuals(inputs.pop("pixel_values")))
        embeddings = leaf = embeddings.detach().requires_grad_(True)  # the graph reaches every attention, frozen or not
    with keep_attention(model), torch.enable_grad():
        logits = model(**inputs, image_embeddings=embeddings).logits[sample]
        score = words_log_probability(logits, batch["input_ids"][sample], positions)
        (gradient,) = torch.autograd.grad(score, leaf)  # also fills each attention's last_attention_grad
        layers = [layer.gated_cross_attn.attn for layer in flamingo_layers(model)]
        perceiver = [attn for attn, _ in model.flamingo.perceiver.layers]
        maps = AttentionMaps([a.last_attention.detach() for a in layers], [a.last_attention.detach() for a in perceiver],
                             model.config.resampler_num_latents,
                             len(model.config.findings_head) if model.config.findings_tokens else 0,
                             [_grad_or_zeros(a) for a in layers], [_grad_or_zeros(a) for a in perceiver],
                             gradient[sample].float().abs().sum(1).cpu() if to_pixels else None)
    return maps


def pixels_leaf(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pop ``pixel_values`` from ``inputs`` as a leaf that takes a gradient.

    Raises:
        ValueError: the inputs hold cached embeddings or resampled features, not the films.
    """
    if "pixel_values" not in inputs:
        raise ValueError("pixel maps need the films: pass pixel_values, not cached image_embeddings "
                         "or resampled visual_features")
    return inputs.pop("pixel_values").detach().requires_grad_(True)


def check_positions(batch: dict[str, torch.Tensor], positions: Sequence[int]) -> None:
    """Refuse an empty list of target positions or one outside 1..L-1 (each word is predicted from
    the position before it)."""
    length = batch["input_ids"].shape[1]
    if not positions or not all(1 <= p < length for p in positions):
        raise ValueError(f"evidence needs text positions in 1..{length - 1}; got {list(positions)}")


def words_log_probability(logits: torch.Tensor, input_ids: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """The target of the gradient maps: the summed log-probability of the words at ``positions``,
    each predicted from the position before. ``logits`` (L, V) and ``input_ids`` (L,) of one sample."""
    targets = torch.as_tensor(list(positions), device=logits.device)
    words = input_ids[targets].to(logits.device)
    return logits[targets - 1].float().log_softmax(-1).gather(-1, words[:, None]).sum()


def _grad_or_zeros(attn: Any) -> torch.Tensor:
    """The attention's kept gradient; zeros when the backward pass did not reach it (the target
    does not depend on it)."""
    grad = attn.last_attention_grad
    return torch.zeros_like(attn.last_attention) if grad is None else grad.detach()


def patch_grid(num_patches: int) -> tuple[int, int]:
    """(offset, side): a leading CLS token is skipped when P = 1 + side^2."""
    side = int(math.isqrt(num_patches))
    if side * side == num_patches:
        return 0, side
    side = int(math.isqrt(num_patches - 1))
    if side * side == num_patches - 1:
        return 1, side
    raise ValueError(f"{num_patches} patch tokens do not form a square grid (with or without a CLS token)")


def relevance_to_heatmap(relevance: torch.Tensor, size: int | tuple[int, int]) -> np.ndarray:
    """(P,) patch relevance -> (H, W) map upsampled bilinearly to the image, summing to 1."""
    offset, side = patch_grid(relevance.numel())
    grid = relevance[offset:].reshape(1, 1, side, side).float()
    size = (size, size) if isinstance(size, int) else size
    heat = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    total = heat.sum()
    return (heat / total if total > 0 else heat).numpy()


def plot_heatmap(image: Any, heatmap: np.ndarray, title: str = "", ax: Any = None, mask: np.ndarray | None = None,
                 mask_label: str | None = None, colorbar: bool = True, peak: tuple[int, int] | None = None) -> Any:
    """The X-ray with the (H, W) heatmap over it, its colour bar (the share of the map each
    pixel holds), a ground-truth mask outline, named by ``mask_label`` in the title, and ``peak``
    (row, column), the sharpened map's peak pixel, as a cross (said in the title to fall inside or
    outside the mask); returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.asarray(image.convert("L").resize(heatmap.shape[::-1])), cmap="gray")
    overlay = ax.imshow(heatmap, cmap="jet", alpha=0.4)
    if mask is not None:
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.2)
        if mask_label:
            title = f"{title}\nwhite outline: {mask_label} (ground-truth mask)"
    if peak is not None:
        # the pixel game's point: the grid map alone cannot place it finer than one encoder patch
        ax.plot(peak[1], peak[0], marker="+", color="lime", markersize=12, markeredgewidth=2)
        where = "" if mask is None else (", inside the mask" if mask[peak] else ", outside the mask")
        title = f"{title}\n+: peak of the map sharpened to pixels{where}"
    if colorbar:
        bar = ax.figure.colorbar(overlay, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("share of the map per pixel", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return ax
