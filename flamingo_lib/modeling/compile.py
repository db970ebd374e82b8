"""``torch.compile`` for the model's repeated blocks, in place.

Why: on a GPU at Flamingo's sizes the eager model is bound by the host, not the chip. Measured
on an H200 (``bench/gpu/README.md``): one resampler forward + backward spends 1.6 ms in kernels
within 16.7 ms of wall time, and four times the batch of a biomed-size training step costs only
1.3 times the time; the rest is Python and the launches of many small ops (layer norms, casts,
gates). Compiling each block fuses those element-wise ops and replaces the per-op dispatch with
one call per block (1.3x faster training steps there).

Blocks are compiled one by one with :meth:`torch.nn.Module.compile` (not the model as a
whole): the parameters keep their names, so ``state_dict``, checkpoints and
``save_pretrained`` are unchanged; identical blocks (every cross-attention layer, every LM
layer) share one compiled graph; and the parts around them (``generate``'s cache handling,
``condition``) stay eager Python, where graph breaks would cost more than they save.
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from flamingo_lib.modeling.lm_injection import FlamingoLayer, decoder_layers

COMPILABLE_PARTS = ("resampler", "cross_attention", "lm_layers", "vision")


def compilable_blocks(model: nn.Module, parts: Iterable[str] = COMPILABLE_PARTS) -> dict[str, nn.Module]:
    """The modules :func:`compile_blocks` would compile, by dotted name.

    Args:
        model: a ``FlamingoModel``.
        parts: any of ``COMPILABLE_PARTS``: the Perceiver Resampler, every gated
            cross-attention block, every decoder layer of the LM, the whole vision encoder.

    Raises:
        ValueError: on an unknown part name.
    """
    parts = tuple(parts)
    unknown = sorted(set(parts) - set(COMPILABLE_PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) to compile: {unknown}; expected some of {list(COMPILABLE_PARTS)}")
    flamingo = model.flamingo
    blocks: dict[str, nn.Module] = {}
    if "resampler" in parts:
        blocks["flamingo.perceiver"] = flamingo.perceiver
    if "vision" in parts:
        blocks["flamingo.vision_encoder"] = flamingo.vision_encoder
    for index, layer in enumerate(decoder_layers(flamingo.lm)):
        wrapped = isinstance(layer, FlamingoLayer)
        if "cross_attention" in parts and wrapped:
            blocks[f"lm.layers.{index}.gated_cross_attn"] = layer.gated_cross_attn
        if "lm_layers" in parts:
            blocks[f"lm.layers.{index}" + (".decoder_layer" if wrapped else "")] = (
                layer.decoder_layer if wrapped else layer)
    return blocks


def compile_blocks(model: nn.Module, parts: Iterable[str] = COMPILABLE_PARTS, **compile_options: Any) -> list[str]:
    """Compile the chosen blocks of ``model`` in place; returns their names.

    Compilation happens lazily at each block's first call (the first training step or
    ``generate`` is slow; later ones fast). Outputs equal the eager model's up to float
    rounding (fused kernels sum in another order). ``compile_options`` go to ``torch.compile``
    (e.g. ``mode="max-autotune"``, ``backend="aot_eager"``).
    """
    blocks = compilable_blocks(model, parts)
    for module in blocks.values():
        module.compile(**compile_options)
    return list(blocks)
