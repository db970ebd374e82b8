"""Perceiver Resampler: a variable number of patch tokens per image -> a fixed set of latents.

Follows lucidrains/flamingo-pytorch: the latents attend to concat(media, latents), time (frame)
embeddings are added to the media, and each layer is attention + feed-forward with residuals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


class SquaredReLU(nn.Module):
    """relu(x)^2 (Primer), one of the seed's activation choices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) ** 2


def activation(name: str) -> nn.Module:
    """The activation module for ``name`` in (gelu, sqrelu, relu)."""
    return {"gelu": nn.GELU, "sqrelu": SquaredReLU, "relu": nn.ReLU}[name]()


def FeedForward(dim: int, mult: int = 4, act: str = "gelu") -> nn.Sequential:
    """Pre-norm feed-forward: LayerNorm -> Linear(dim, dim*mult) -> act -> Linear(dim*mult, dim)."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        activation(act),
        nn.Linear(inner, dim, bias=False),
    )


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, keep_weights: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention, optionally returning the attention weights.

    Args:
        q: (B, H, Nq, Dh); k, v: (B, H, Nk, Dh).
        mask: bool (B, 1 or H, Nq, Nk), True where attention is allowed; every row must allow
            at least one key.
        keep_weights: compute the weights explicitly and return them (for plots); otherwise
            use the fused ``scaled_dot_product_attention`` kernel and return ``None``.

    Returns:
        out (B, H, Nq, Dh) and weights (B, H, Nq, Nk) or ``None``.
    """
    if not keep_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        sim = sim.masked_fill(~mask, torch.finfo(sim.dtype).min)
    weights = sim.softmax(dim=-1)
    return torch.einsum("bhij,bhjd->bhid", weights, v), weights


def keep_gradient(module: nn.Module, weights: torch.Tensor, layout: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """When a backward pass reaches the attention ``weights`` a module kept, keep their gradient as
    ``module.last_attention_grad`` in ``layout`` (that of its ``last_attention``): the
    gradient-weighted maps of :mod:`flamingo_lib.modeling.attention_maps`."""
    module.last_attention_grad = None
    if weights.requires_grad:
        weights.register_hook(lambda grad: setattr(module, "last_attention_grad", layout(grad)))


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents)."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.keep_attention = False  # set True to keep `last_attention` for visualisation
        self.last_attention: torch.Tensor | None = None
        self.last_attention_grad: torch.Tensor | None = None  # its gradient, after a backward pass

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: media tokens (B, T, N, D).
            latents: (B, T, n, D).

        Returns:
            (B, T, n, D). When ``keep_attention``, ``last_attention`` holds (B, T, H, n, N + n):
            the weights over [media tokens, latents]; a backward pass through them leaves their
            gradient in ``last_attention_grad``.
        """
        b, t = x.shape[:2]
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (rearrange(z, "b t n (h d) -> (b t) h n d", h=self.heads) for z in (q, k, v))
        out, weights = attend(q, k, v, None, self.keep_attention)
        self.last_attention = None if weights is None else rearrange(weights, "(b t) ... -> b t ...", b=b, t=t)
        if weights is not None:
            keep_gradient(self, weights, lambda grad: rearrange(grad, "(b t) ... -> b t ...", b=b, t=t))
        return self.to_out(rearrange(out, "(b t) h n d -> b t n (h d)", b=b, t=t))


class PerceiverResampler(nn.Module):
    """Resamples each image's patch tokens to ``num_latents`` learned latents.

    Args:
        dim: width of the media tokens (the vision encoder's ``dim_visual``).
        depth: number of attention + feed-forward layers.
        dim_head, heads: attention head width and count.
        num_latents: latents per image.
        num_time_embeds: learned frame embeddings (media with up to this many frames).
        ff_mult, act: feed-forward width multiple and activation.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int = 6,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 64,
        num_time_embeds: int = 4,
        ff_mult: int = 4,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.time_pos_emb = nn.Parameter(torch.randn(num_time_embeds, 1, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), FeedForward(dim, ff_mult, act)]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: patch tokens (B, T, N, D) with T images per sample, or (B, T, F, N, D) with F
                frames per image.

        Returns:
            latents (B, T, num_latents, D).
        """
        if x.ndim == 4:
            x = x.unsqueeze(2)  # one frame per image
        frames = x.shape[2]
        if frames > self.time_pos_emb.shape[0]:
            raise ValueError(f"media with {frames} frames exceeds num_time_embeds={self.time_pos_emb.shape[0]}")
        x = x + self.time_pos_emb[:frames]
        x = rearrange(x, "b t f n d -> b t (f n) d")
        latents = repeat(self.latents, "n d -> b t n d", b=x.shape[0], t=x.shape[1])
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
