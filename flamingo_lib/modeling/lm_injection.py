"""Inject gated cross-attention into a frozen Hugging Face causal LM without editing its source.

Each chosen decoder layer is replaced in its ``nn.ModuleList`` by a :class:`FlamingoLayer` that
runs the gated cross-attention block on the hidden states and then the original layer, passing
every other argument through untouched (transformers 5 layers return a plain tensor; whatever
the wrapped layer returns is returned). Layers are found by walking the module tree whenever
they are needed, never kept in a Python list (under DDP a list pointed at another replica:
docs/prior-art.md, 8).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flamingo_lib.modeling.cross_attention import DecodeWeights, GatedCrossAttentionBlock, MediaKV, MediaMasks


@dataclass
class LayerConditioning:
    """What a :class:`FlamingoLayer` attends to in the next forward.

    A plain object rather than module attributes: ``condition`` runs for every layer at every
    decoding step, and ``nn.Module.__setattr__`` costs microseconds per attribute there.

    Attributes:
        media: (B, T, n, Dv) resampled latents, or None (the layer passes text through).
        media_time: (B, L) long, images at or before each text position.
        reuse_media_kv: keep ``media_kv`` once computed (one ``generate`` call).
        media_kv: the media keys/values, when computed and reusable.
        masks: cross-attention masks of ``media_time`` shared by all layers of one pass.
        decode: the block's prepared decoding-step weights of this ``generate`` call (built
            at its first step that attends without masks, kept with ``media_kv``).
    """

    media: torch.Tensor | None = None
    media_time: torch.Tensor | None = None
    reuse_media_kv: bool = False
    media_kv: MediaKV | None = None
    masks: MediaMasks | None = None
    decode: DecodeWeights | None = None


class FlamingoLayer(nn.Module):
    """A decoder layer with a gated cross-attention block in front of it.

    The media are set by :meth:`condition` before the LM runs and cleared after it.
    """

    def __init__(self, gated_cross_attn: GatedCrossAttentionBlock, decoder_layer: nn.Module) -> None:
        super().__init__()
        self.gated_cross_attn = gated_cross_attn
        self.decoder_layer = decoder_layer
        self.conditioning = LayerConditioning()
        # decoding steps after all images through the prepared weights (:meth:`_decode_step`);
        # False runs the block's general forward at every step (for comparisons and debugging)
        self.fuse_decode_steps = True

    def condition(self, media: torch.Tensor | None, media_time: torch.Tensor | None, reuse_media_kv: bool = False,
                  masks: MediaMasks | None = None, media_kv: MediaKV | None = None,
                  decode: DecodeWeights | None = None) -> None:
        """Set the media (B, T, n, Dv) and per-token image counts (B, L) for the next forward.

        With ``reuse_media_kv`` the media keys/values are computed once and kept until the
        next :meth:`condition` call (one ``generate`` call); ``media_kv`` hands in keys/values
        already computed for these media. ``masks``: the cross-attention masks of
        ``media_time``, built once for all layers (else each layer builds its own).
        ``decode``: decoding-step weights already prepared for these media (kept like
        ``media_kv``, and only with it).
        """
        state = self.conditioning
        state.media, state.media_time, state.reuse_media_kv = media, media_time, reuse_media_kv
        state.media_kv, state.masks, state.decode = media_kv, masks, decode if media_kv is not None else None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``hidden_states`` (B, L, D) plus whatever the wrapped layer takes."""
        state = self.conditioning
        if state.media is not None and state.media.shape[1] > 0:  # no images at all: nothing to attend
            masks = state.masks
            all_seen = masks is not None and masks.window is not None  # needs no media_time
            if not all_seen and (state.media_time is None or state.media_time.shape != hidden_states.shape[:2]):
                got = None if state.media_time is None else tuple(state.media_time.shape)
                raise ValueError(f"media_time has shape {got}, expected {tuple(hidden_states.shape[:2])}")
            block = self.gated_cross_attn
            kv = state.media_kv
            if kv is None and state.reuse_media_kv:
                kv = state.media_kv = block.attn.media_kv(state.media)
            if (all_seen and state.reuse_media_kv and self.fuse_decode_steps and hidden_states.shape[1] == 1
                    and not block.attn.keep_attention and not torch.is_grad_enabled()):
                hidden_states = self._decode_step(hidden_states, kv, masks.window)
            else:
                # The block computes in its own (float32) dtype and hands back the LM's: exact
                # for text a shut gate leaves alone (bf16 -> fp32 -> bf16). Casts only where the
                # dtypes differ: a same-dtype ``.to`` is still an op call per layer and step.
                block_dtype, lm_dtype = block.attn_gate.dtype, hidden_states.dtype
                x = hidden_states if lm_dtype == block_dtype else hidden_states.to(block_dtype)
                x = block(x, state.media, state.media_time, kv, masks)
                hidden_states = x if x.dtype == lm_dtype else x.to(lm_dtype)
        return self.decoder_layer(hidden_states, *args, **kwargs)

    def prepare_decode(self, window: tuple[int, int]) -> None:
        """Prepare the decoding-step weights for the latents ``window`` now, from the media K/V the
        prompt's pass computed, rather than inside the first decoding step: a compiled step then meets
        the same state at every step (one graph, not one for the first step and one for the rest)."""
        state = self.conditioning
        if state.media_kv is None or not state.reuse_media_kv or not self.fuse_decode_steps:
            return
        if state.decode is None or state.decode.window != window:
            state.decode = self.gated_cross_attn.decode_weights(state.media_kv, window, state.media_kv[0].device.type)

    def _decode_step(self, hidden_states: torch.Tensor, kv: MediaKV, window: tuple[int, int]) -> torch.Tensor:
        """The block on one new token per sample of a ``generate`` call (B, 1, D), through
        :meth:`GatedCrossAttentionBlock.decode_step` with the weights prepared at the call's
        first such step (~45 op calls a step, where :meth:`forward` takes ~95)."""
        state, block = self.conditioning, self.gated_cross_attn
        decode = state.decode
        if decode is None or decode.window != window:
            decode = state.decode = block.decode_weights(kv, window, hidden_states.device.type)
        b, _, d = hidden_states.shape
        block_dtype, lm_dtype = block.attn_gate.dtype, hidden_states.dtype
        x = hidden_states.view(b, d)
        x = block.decode_step(x if lm_dtype == block_dtype else x.to(block_dtype), decode)
        return (x if x.dtype == lm_dtype else x.to(lm_dtype)).view(b, 1, d)

    def __getattr__(self, name: str) -> Any:
        # Some LMs read attributes of their layers (e.g. `attention_type`): delegate them.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.decoder_layer, name)


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers of an HF causal LM (BioGPT ``biogpt.layers``,
    GPT-2 ``transformer.h``, OPT ``model.decoder.layers``, Llama-family ``model.layers``)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    for holder in (decoder, lm):
        for name in ("layers", "h", "blocks"):
            layers = getattr(holder, name, None)
            if isinstance(layers, nn.ModuleList):
                return layers
    raise ValueError(
        f"cannot find the decoder layers of {type(lm).__name__}; supported: BioGPT, GPT-2, OPT and "
        "Llama-family causal LMs (a decoder with a `layers` or `h` ModuleList)"
    )


def inject_cross_attention(lm: nn.Module, every: int, make_block: Any) -> int:
    """Wrap every ``every``-th decoder layer (indices every-1, 2*every-1, ...) of ``lm``.

    Args:
        lm: the causal LM, modified in place.
        every: insertion period.
        make_block: callable returning a fresh :class:`GatedCrossAttentionBlock`.

    Returns:
        the number of layers wrapped.
    """
    layers = decoder_layers(lm)
    wrapped = 0
    for index, layer in enumerate(layers):
        if (index + 1) % every == 0 and not isinstance(layer, FlamingoLayer):
            layers[index] = FlamingoLayer(make_block(), layer)
            wrapped += 1
    if wrapped == 0:
        raise ValueError(f"xattn_every={every} exceeds the LM's {len(layers)} layers: no cross-attention inserted")
    return wrapped


def flamingo_layers(module: nn.Module) -> Iterator[FlamingoLayer]:
    """All :class:`FlamingoLayer` s under ``module``, looked up in the module tree each time."""
    return (m for m in module.modules() if isinstance(m, FlamingoLayer))


def lm_flamingo_layers(lm: nn.Module) -> list[FlamingoLayer]:
    """The :class:`FlamingoLayer` s of ``lm``'s decoder-layer list, looked up afresh (a few
    attribute reads, where :func:`flamingo_layers` walks every module of the LM: under cProfile
    that walk took ~150 us of each decoding step of the tiny-random model)."""
    return [layer for layer in decoder_layers(lm) if isinstance(layer, FlamingoLayer)]
