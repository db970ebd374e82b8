"""Masked cross-attention from text to media latents, and the tanh-gated block around it.

Follows lucidrains/flamingo-pytorch (``MaskedCrossAttention``, ``GatedCrossAttentionBlock``) with
one deliberate difference: text that has no image before it receives *exactly* nothing from the
block (neither attention nor feed-forward), so a text-only prefix is processed exactly as the
frozen LM would (docs/prior-art.md, 9 and 11).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from flamingo_lib.modeling.resampler import FeedForward, attend, keep_gradient

MediaKV = tuple[torch.Tensor, torch.Tensor]


class DecodeWeights(NamedTuple):
    """What one gated block needs for a decoding step of one ``generate`` call, prepared once
    per call (:meth:`GatedCrossAttentionBlock.decode_weights`) so that a step takes ~45 op
    calls instead of ~95 (bench/op_counts.md): weights transposed once rather than at every
    ``linear``, the attention scale folded into the query weights, each gate's ``tanh``
    folded into the projection it scales, and the media keys/values cut to the attended
    window in the layout ``bmm`` takes.

    Built from the parameters as they are at the call's first decoding step (under
    ``no_grad``) and dropped when the call ends: an update of the parameters between calls is
    always seen, and nothing stays around to go stale.

    Fields (D text width, H heads, Dh head width, N attended latents, B batch):
        window: the (start, stop) latents these keys/values cover.
        q_t: (D, H * Dh) ``to_q.weight.T * Dh ** -0.5``.
        k_t: (B * H, Dh, N) keys, transposed for ``bmm``.
        v: (B * H, N, Dh) values.
        out_t: (H * Dh, D) ``to_out.weight.T * tanh(attn_gate)``.
        ff_in_t: (D, D * ff_mult) the feed-forward's first weight, transposed.
        ff_out_t: (D * ff_mult, D) ``ff_out.weight.T * tanh(ff_gate)``.
        autocast: the device type whose autocast was on when they were built (their dtype is
            then its dtype, and the step runs with autocast off, casting the two normalised
            activations itself instead of autocast casting at every matmul and the softmax),
            or None.
    """

    window: tuple[int, int]
    q_t: torch.Tensor
    k_t: torch.Tensor
    v: torch.Tensor
    out_t: torch.Tensor
    ff_in_t: torch.Tensor
    ff_out_t: torch.Tensor
    autocast: str | None


def media_groups(media_locations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each text position stands among the images: ``media_time`` and ``media_first``.

    Consecutive ``<image>`` tokens form one media group (a study's views: frontal and lateral),
    so text after them reads the whole study under the immediate rule, while a study whose
    films are followed by its text (a prior study and its report) is a group of its own.

    Args:
        media_locations: bool (B, L), True at ``<image>``.

    Returns:
        media_time: (B, L) long, images at or before each position (0 = none yet);
        media_first: (B, L) long, the 1-based index of the first image of the group the latest
            image belongs to (0 = none yet). With single images between text, equal to
            ``media_time``.
    """
    locations = media_locations.bool()
    media_time = locations.long().cumsum(-1)
    previous = F.pad(locations[:, :-1], (1, 0), value=False)
    opens = locations & ~previous  # an image right after text opens a group
    # media_time never decreases, so the latest group's first index is a running maximum
    media_first = torch.where(opens, media_time, torch.zeros_like(media_time)).cummax(-1).values
    return media_time, media_first


def text_to_media_mask(
    media_time: torch.Tensor, num_media: int, num_latents: int, only_immediate: bool,
    media_first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which media latents each text token may attend to.

    Args:
        media_time: (B, L) long: how many images occur at or before each text position
            (``media_locations.cumsum(-1)``); 0 means no image yet.
        num_media: T, images per sample.
        num_latents: n, latents per image.
        only_immediate: attend only to the latest media group (the images from ``media_first``
            to ``media_time``) or to all earlier images.
        media_first: (B, L) long, see :func:`media_groups`; None: every image is a group of its
            own (the latest image alone).

    Returns:
        bool (B, 1, L, T * n), True where attention is allowed.
    """
    image_index = torch.arange(1, num_media + 1, device=media_time.device)  # (T,)
    text_time = media_time[:, :, None]  # (B, L, 1)
    if not only_immediate:
        allowed = text_time >= image_index  # (B, L, T)
    elif media_first is None:
        allowed = text_time == image_index
    else:
        allowed = (text_time >= image_index) & (media_first[:, :, None] <= image_index)
    return allowed.repeat_interleave(num_latents, dim=-1)[:, None]


class MediaMasks(NamedTuple):
    """The masks every cross-attention layer of one forward pass shares, built once per pass
    (:func:`media_masks`) rather than once per layer: they depend on ``media_time`` alone, and
    small ops like these set a decoding step's cost where the model is host-bound (measured on
    an H200 and on CPU: bench/gpu/README.md, bench/RESULTS.md).

    Fields:
        attend: bool (B, 1, L, T * n), True where a text token may attend to a latent; rows of
            text with no image before them are all True (a fully masked row would give NaN),
            and their output is zeroed through ``blind``. None when ``window`` says it all.
        blind: bool (B, L, 1), True for text with no image at or before it; None when no text
            of the pass is blind.
        only_immediate: the masking rule the masks were built with.
        window: (start, stop): every text token of the pass attends to exactly the latents
            ``start:stop`` and none is blind (:func:`all_seen_masks`); then no mask is applied
            at all: keys and values are sliced. None for the general, masked case.
    """

    attend: torch.Tensor | None
    blind: torch.Tensor | None
    only_immediate: bool
    window: tuple[int, int] | None = None


def media_masks(media_time: torch.Tensor, num_media: int, num_latents: int, only_immediate: bool,
                media_first: torch.Tensor | None = None) -> MediaMasks:
    """:class:`MediaMasks` for ``media_time`` (B, L) long and its media groups ``media_first``
    (see :func:`text_to_media_mask`)."""
    blind = (media_time == 0)[..., None]  # no image yet; media_time never exceeds num_media
    allowed = text_to_media_mask(media_time, num_media, num_latents, only_immediate, media_first)
    return MediaMasks(allowed | blind[:, None], blind, only_immediate)


def all_seen_masks(num_media: int, num_latents: int, only_immediate: bool, last_group_first: int | None = None
                   ) -> MediaMasks:
    """:class:`MediaMasks` for a pass in which every text token comes after all ``num_media``
    images of its sample (a decoding step after a prompt holding every image): each attends to
    the last media group's latents (``only_immediate``; the group opens at the 1-based image
    ``last_group_first``, every sample's the same; None: the last image alone) or to all of them,
    with no mask and no blind rows, the same result as :func:`media_masks` gives for
    ``media_time == num_media`` without its per-layer masking ops (they set a decoding step's
    cost where it is host-bound)."""
    return MediaMasks(None, None, only_immediate, all_seen_window(num_media, num_latents, only_immediate,
                                                                  last_group_first))


def all_seen_window(num_media: int, num_latents: int, only_immediate: bool, last_group_first: int | None = None
                    ) -> tuple[int, int]:
    """The (start, stop) latents a token after all images attends to (:func:`all_seen_masks`)."""
    first = num_media if last_group_first is None else last_group_first
    start = (first - 1) * num_latents if only_immediate else 0
    return start, num_media * num_latents


class MaskedCrossAttention(nn.Module):
    """Text tokens (queries) attend to resampled media latents (keys/values).

    Args:
        dim: text width (the LM hidden size).
        dim_visual: media latent width.
        dim_head, heads: attention head width and count.
        only_attend_immediate_media: see :class:`~flamingo_lib.FlamingoConfig`.
    """

    def __init__(
        self, *, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, only_attend_immediate_media: bool = True
    ) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.only_attend_immediate_media = only_attend_immediate_media
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.keep_attention = False  # set True to keep `last_attention` for visualisation
        self.last_attention: torch.Tensor | None = None
        self.last_attention_grad: torch.Tensor | None = None  # its gradient, after a backward pass

    def media_kv(self, media: torch.Tensor) -> MediaKV:
        """Keys and values of the media, (B, H, T*n, Dh) each, in this layer's dtype (media given
        in float32 to a model cast to bfloat16 are cast once here); constant while media are."""
        media = media.to(self.to_kv.weight.dtype)
        k, v = self.to_kv(rearrange(media, "b t n d -> b (t n) d")).chunk(2, dim=-1)
        return tuple(rearrange(z, "b j (h d) -> b h j d", h=self.heads) for z in (k, v))  # type: ignore[return-value]

    def masks(self, media: torch.Tensor, media_time: torch.Tensor, masks: MediaMasks | None = None) -> MediaMasks:
        """``masks`` when they were built for this layer's rule, else built here."""
        if masks is not None and masks.only_immediate == self.only_attend_immediate_media:
            return masks
        return media_masks(media_time, media.shape[1], media.shape[2], self.only_attend_immediate_media)

    def forward(
        self, x: torch.Tensor, media: torch.Tensor, media_time: torch.Tensor, kv: MediaKV | None = None,
        masks: MediaMasks | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: text hidden states (B, L, D).
            media: resampled latents (B, T, n, Dv).
            media_time: (B, L) long, images at or before each position (0 = none yet).
            kv: precomputed ``media_kv(media)``, reused across decoding steps.
            masks: :func:`media_masks` of ``media_time``, shared by the layers of one pass.

        Returns:
            (B, L, D); rows of text with no image before them are exactly zero. When
            ``keep_attention``, ``last_attention`` holds the weights (B, H, L, T*n), and a backward
            pass through them leaves their gradient in ``last_attention_grad``.
        """
        masks = self.masks(media, media_time, masks)
        b, length, _ = x.shape
        # view/transpose rather than einops: this runs per layer at every decoding step
        q = self.to_q(self.norm(x)).view(b, length, self.heads, -1).transpose(1, 2)
        k, v = kv if kv is not None else self.media_kv(media)
        if masks.window is not None:  # every token sees the same latents and none is blind
            start, stop = masks.window
            out, weights = attend(q, k[:, :, start:stop], v[:, :, start:stop], None, self.keep_attention)
            if weights is not None:  # report the weights over all T * n latents, as the masked path does
                keep_gradient(self, weights, lambda g: F.pad(g, (start, k.shape[2] - stop)))
                weights = F.pad(weights, (start, k.shape[2] - stop))
        else:
            out, weights = attend(q, k, v, masks.attend, self.keep_attention)
            if weights is not None:
                keep_gradient(self, weights, lambda g: g)
            blind = masks.blind[:, None]  # (B, 1, L, 1)
            out = out.masked_fill(blind, 0.0)  # text with no image before it gets nothing
            weights = None if weights is None else weights.masked_fill(blind, 0.0)
        self.last_attention = weights
        return self.to_out(out.transpose(1, 2).reshape(b, length, -1))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate) * xattn(x) then + tanh(ff_gate) * ff(x); both gates start at 0.

    Args:
        dim, dim_visual, dim_head, heads, only_attend_immediate_media: see
            :class:`MaskedCrossAttention`.
        ff_mult, act: feed-forward width multiple and activation.
    """

    def __init__(
        self,
        *,
        dim: int,
        dim_visual: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: int = 4,
        act: str = "gelu",
        only_attend_immediate_media: bool = True,
    ) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(
            dim=dim, dim_visual=dim_visual, dim_head=dim_head, heads=heads,
            only_attend_immediate_media=only_attend_immediate_media,
        )
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = FeedForward(dim, ff_mult, act)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(
        self, x: torch.Tensor, media: torch.Tensor, media_time: torch.Tensor, kv: MediaKV | None = None,
        masks: MediaMasks | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: (B, L, D); media: (B, T, n, Dv); media_time: (B, L) long; kv: cached media K/V;
            masks: :func:`media_masks` shared by the layers of one pass (built here if None).

        Returns:
            (B, L, D): ``x`` itself, bit for bit, at positions that see no image.
        """
        masks = self.attn.masks(media, media_time, masks)
        x = x + self.attn(x, media, media_time, kv, masks) * self.attn_gate.tanh()
        ff_out = self.ff(x) * self.ff_gate.tanh()
        if masks.blind is not None:
            ff_out = ff_out.masked_fill(masks.blind, 0.0)
        return x + ff_out

    # ------------------------------------------------------------------ decoding steps
    def decode_weights(self, kv: MediaKV, window: tuple[int, int], device_type: str) -> DecodeWeights:
        """:class:`DecodeWeights` for steps that attend to the latents ``window`` of the cached
        media keys/values ``kv`` ((B, H, T*n, Dh) each) on ``device_type``: in the block's
        dtype, or in the autocast dtype when autocast is on there (what autocast would cast
        them to at every step)."""
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else self.attn_gate.dtype
        attn, (start, stop) = self.attn, window
        with torch.no_grad():
            def prepared(weight: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
                # (out, in) -> (in, out) contiguous: ``mm`` takes it as is, with no per-step ``t``
                return (weight.t() * scale).to(dtype).contiguous()

            k, v = (z[:, :, start:stop].to(dtype) for z in kv)
            b, h, n, dh = k.shape
            return DecodeWeights(
                window=window,
                q_t=prepared(attn.to_q.weight, dh ** -0.5),
                k_t=k.transpose(-1, -2).reshape(b * h, dh, n).contiguous(),
                v=v.reshape(b * h, n, dh).contiguous(),
                out_t=prepared(attn.to_out.weight, self.attn_gate.tanh()),
                ff_in_t=prepared(self.ff[1].weight),
                ff_out_t=prepared(self.ff[3].weight, self.ff_gate.tanh()),
                autocast=device_type if autocast else None,
            )

    def decode_step(self, x: torch.Tensor, weights: DecodeWeights) -> torch.Tensor:
        """One decoding step's block output for a single new token per sample that comes after
        all of its sample's images (:func:`all_seen_masks`: no mask, no blind row).

        The computation of :meth:`forward` with ``masks.window == weights.window``, equal up
        to float rounding: the gates scale the weights rather than the outputs, and the
        attention of the one query runs as ``bmm`` / ``softmax`` / ``bmm`` (fewer op calls
        than ``scaled_dot_product_attention``'s dispatch). Records no attention
        (``keep_attention`` takes :meth:`forward`).

        Args:
            x: (B, D) hidden states of the new token, in the block's dtype.
            weights: :meth:`decode_weights` of this call.

        Returns:
            (B, D) in ``x``'s dtype.
        """
        if weights.autocast is not None:
            with torch.autocast(weights.autocast, enabled=False):
                return self._decode_step(x, weights)
        return self._decode_step(x, weights)

    def _decode_step(self, x: torch.Tensor, weights: DecodeWeights) -> torch.Tensor:
        attn, ff, dtype = self.attn, self.ff, weights.q_t.dtype
        b = x.shape[0]
        h = attn.norm(x)  # layer norms in the residual stream's dtype, as autocast runs them
        q = torch.mm(h if h.dtype == dtype else h.to(dtype), weights.q_t)  # (B, H * Dh), scaled
        # (B * H, 1, Dh): a view, since the heads of one row are adjacent
        scores = torch.bmm(q.view(weights.k_t.shape[0], 1, -1), weights.k_t)  # (B * H, 1, N)
        out = torch.bmm(scores.softmax(dim=-1), weights.v).view(b, -1)  # (B, H * Dh)
        if x.dtype == dtype:  # the residual added inside the matmul: x + tanh(attn_gate) * to_out(out)
            x = torch.addmm(x, out, weights.out_t)
            return torch.addmm(x, ff[2](torch.mm(ff[0](x), weights.ff_in_t)), weights.ff_out_t)
        x = x + torch.mm(out, weights.out_t)  # a float32 stream under autocast stays float32
        return x + torch.mm(ff[2](torch.mm(ff[0](x).to(dtype), weights.ff_in_t)), weights.ff_out_t)
