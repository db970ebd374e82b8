"""Analytic FLOP counts (multiply-add = 2 FLOPs; matmuls only: norms, softmax, activations and
masking are a few % and are not counted, so a utilisation figure never flatters).

Conventions:
- a Linear of (in, out) over ``rows`` rows costs ``2 * rows * in * out``;
- attention over ``nq`` queries and ``nk`` keys with ``inner = heads * dim_head`` costs
  ``2 * nq * nk * inner`` for Q K^T plus the same for A V; masked attention is counted dense
  (every implementation here computes the full score matrix);
- training backward = 2 x forward for every matmul whose inputs *and* weights need gradients
  (fwd + bwd = 3 x fwd), and 1 x forward through frozen layers that only pass gradients on.
"""

from __future__ import annotations

from dataclasses import dataclass


def resampler_forward(batch: int, images: int, tokens: int, dim: int, depth: int, heads: int,
                      dim_head: int, latents: int, ff_mult: int) -> float:
    """Perceiver Resampler forward: per layer and image, latents attend to [media, latents]."""
    inner = heads * dim_head
    kv_rows = tokens + latents
    per_layer = (
        2 * latents * dim * inner            # to_q
        + 2 * kv_rows * dim * 2 * inner      # to_kv over concat(media, latents)
        + 2 * 2 * latents * kv_rows * inner  # Q K^T and A V
        + 2 * latents * inner * dim          # to_out
        + 2 * 2 * latents * dim * ff_mult * dim  # feed-forward, two Linears
    )
    return float(batch * images * depth * per_layer)


def xattn_forward(batch: int, text: int, media_tokens: int, dim: int, dim_visual: int, heads: int,
                  dim_head: int, ff_mult: int, media_kv: bool = True, attended: int | None = None) -> float:
    """Gated cross-attention block forward over ``text`` queries and ``media_tokens`` (T * n)
    keys; ``media_kv=False`` leaves out the media key/value projection (cached); ``attended``:
    the keys each query attends to, when fewer than all (a decoding step attending to the
    latest image's n latents only)."""
    inner = heads * dim_head
    keys = media_tokens if attended is None else attended
    flops = (
        2 * text * dim * inner                     # to_q
        + 2 * 2 * text * keys * inner              # Q K^T and A V
        + 2 * text * inner * dim                   # to_out
        + 2 * 2 * text * dim * ff_mult * dim       # feed-forward
    )
    if media_kv:
        flops += 2 * media_tokens * dim_visual * 2 * inner  # to_kv
    return float(batch * flops)


@dataclass(frozen=True)
class LMShape:
    """The matmul-relevant sizes of a decoder-only LM (BioGPT / GPT-2 / OPT layout)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config) -> "LMShape":  # noqa: ANN001 - any HF decoder config
        return cls(config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size)


def lm_forward(shape: LMShape, batch: int, tokens: int, context: int) -> float:
    """Decoder forward of ``tokens`` new positions that each attend to ``context`` positions
    (``context = tokens`` for a full sequence, counted dense; the cache length + 1 when
    decoding), including the vocabulary projection for every position."""
    d = shape.hidden
    per_token_layer = 2 * 4 * d * d + 2 * 2 * d * shape.intermediate + 2 * 2 * context * d
    return float(batch * tokens * (shape.layers * per_token_layer + 2 * d * shape.vocab))


@dataclass(frozen=True)
class FlamingoShape:
    """The sizes of the added Flamingo parts."""

    lm: LMShape
    dim_visual: int
    xattn_layers: int
    xattn_heads: int
    xattn_dim_head: int
    xattn_ff_mult: int
    images: int
    latents: int
    new_tokens: int = 2  # <image> and <EOC>: extra output columns
    only_immediate: bool = True  # text attends to the latest image's latents only

    @classmethod
    def of(cls, config, lm_config, images: int) -> "FlamingoShape":  # noqa: ANN001
        return cls(LMShape.of(lm_config), config.dim_visual, lm_config.num_hidden_layers // config.xattn_every,
                   config.xattn_heads, config.xattn_dim_head, config.xattn_ff_mult, images,
                   config.resampler_num_latents, only_immediate=config.only_attend_immediate_media)


def flamingo_decode_step(shape: FlamingoShape, batch: int, context: int, media_kv_cached: bool) -> float:
    """One decoded token per sample: the LM, every cross-attention block (its media keys/values
    recomputed unless cached; attention over the latest image's latents only when text attends
    to the immediate image, all images' otherwise) and the new-token output columns."""
    attended = shape.latents if shape.only_immediate else shape.images * shape.latents
    xattn = shape.xattn_layers * xattn_forward(
        batch, 1, shape.images * shape.latents, shape.lm.hidden, shape.dim_visual, shape.xattn_heads,
        shape.xattn_dim_head, shape.xattn_ff_mult, media_kv=not media_kv_cached, attended=attended)
    return lm_forward(shape.lm, batch, 1, context) + xattn + 2.0 * batch * shape.lm.hidden * shape.new_tokens


def vit_forward(images: int, tokens: int, width: int, depth: int, mlp_ratio: float, patch: int) -> float:
    """A ViT forward (patch embedding, blocks; no head): per block qkv + proj + MLP + attention."""
    per_block = tokens * (2 * 4 * width * width + 2 * 2 * width * int(width * mlp_ratio)) + 2 * 2 * tokens**2 * width
    patch_embed = (tokens - 1) * 2 * (3 * patch * patch) * width
    return float(images * (depth * per_block + patch_embed))


def training_step(shape: FlamingoShape, batch: int, text: int, patch_tokens: int, resampler: dict,
                  vit: dict | None) -> dict[str, float]:
    """FLOPs of one training step (frozen LM and vision tower), by part.

    - vision tower: forward only (frozen, no graph); ``vit=None`` for cached features;
    - resampler and cross-attention blocks: fwd + bwd = 3 x forward (they train, and their
      inputs need gradients: the media come from the resampler, the text from earlier layers);
    - frozen LM: forward + input-gradient backward = 2 x forward (no weight gradients).
    """
    parts = {
        "vision": 0.0 if vit is None else vit_forward(batch * shape.images, patch_tokens, **vit),
        "resampler": 3 * resampler_forward(batch, shape.images, patch_tokens, **resampler),
        "xattn": 3 * shape.xattn_layers * xattn_forward(
            batch, text, shape.images * shape.latents, shape.lm.hidden, shape.dim_visual,
            shape.xattn_heads, shape.xattn_dim_head, shape.xattn_ff_mult),
        "lm": 2 * lm_forward(shape.lm, batch, text, text),
    }
    parts["total"] = sum(parts.values())
    return parts
