"""Benchmark 2b: greedy decoding of the BioGPT-size model in three precisions, side by side.

- ``float32``: everything float32 (the default);
- ``frozen_bf16``: ``FlamingoConfig(frozen_dtype="bfloat16")``: the frozen LM and ViT in
  bfloat16, the trained layers (resampler, cross-attention, token rows) float32;
- ``all_bf16``: that model cast whole to bfloat16 (``model.to(torch.bfloat16)``), for inference
  only: at biomed sizes with ``xattn_every=1`` the cross-attention blocks hold ~245M weights
  beside the LM's 347M, so they set a good part of a decoding step's memory traffic.

Same prompt, same random weights (the trained layers copied from the float32 model, gates open), same
decode-rate clock as :mod:`bench.generation`. No target: the project sets none; this says what a
user gains by each. ``same_tokens``: whether greedy decoding picked the float32 model's tokens
(random weights give near-ties, so bfloat16 rounding may flip some).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList

from bench.common import Env, interleaved
from bench.generation import PROMPT, StepClock, _rate
from bench.models import biomed_size_config, xray_images
from flamingo_lib import FlamingoModel, FlamingoProcessor

PRECISIONS = ("float32", "frozen_bf16", "all_bf16")


def models(lm_dir: Path, vit_dir: Path, **overrides: Any) -> dict[str, FlamingoModel]:
    """The three precisions of one model, their trained layers equal (up to the cast)."""
    full = FlamingoModel(biomed_size_config(lm_dir, vit_dir, **overrides)).eval()
    with torch.no_grad():  # open gates (tanh(1)): the images then steer the tokens, as after training
        for name, param in full.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                param.fill_(1.0)
    built = {"float32": full}
    for name in PRECISIONS[1:]:
        model = FlamingoModel(biomed_size_config(lm_dir, vit_dir, frozen_dtype="bfloat16", **overrides)).eval()
        with torch.no_grad():
            for key, value in full.state_dict_trainable().items():
                model.get_parameter(key).copy_(value)
        built[name] = model.to(torch.bfloat16) if name == "all_bf16" else model
    return built


def run(env: Env, lm_dir: Path, vit_dir: Path, batches: tuple[int, ...], new_tokens: int, reps: int,
        **overrides: Any) -> dict[str, Any]:
    """Decode rates (tokens/s, median with min-max) of each precision at each batch size."""
    built = {name: m.to(env.device) for name, m in models(lm_dir, vit_dir, **overrides).items()}
    config = built["float32"].config
    processor = FlamingoProcessor(config)
    rows = []
    for batch in batches:
        enc = processor([PROMPT] * batch, [xray_images(2)] * batch, padding_side="left")
        g = torch.Generator().manual_seed(2)
        inputs = {"input_ids": enc["input_ids"].to(env.device), "attention_mask": enc["attention_mask"].to(env.device),
                  "visual_features": torch.randn(batch, 2, config.resampler_num_latents, config.dim_visual,
                                                 generator=g).to(env.device)}
        outputs: dict[str, torch.Tensor] = {}

        def decoder(name: str, n: int):  # noqa: ANN202 - a self-timed callable, as in bench.generation
            def go() -> float:
                clock = StepClock(env)
                with torch.no_grad(), env.autocast():
                    outputs[name] = built[name].generate(**inputs, max_new_tokens=n, min_new_tokens=n,
                                                         do_sample=False, num_beams=1, use_cache=True,
                                                         logits_processor=LogitsProcessorList([clock]))
                return clock.times[-1] - clock.times[0]
            return go

        for name in PRECISIONS:
            decoder(name, 2)()  # warm-up
        timings = interleaved({name: decoder(name, new_tokens) for name in PRECISIONS}, env, reps=reps, warmup=0,
                              self_timed=True)
        rates = {name: _rate(batch * (new_tokens - 1), t) for name, t in timings.items()}
        rows.append({"batch": batch, "new_tokens": new_tokens, "tokens_per_s": rates,
                     "speedup": {name: rates[name]["median"] / rates["float32"]["median"] for name in PRECISIONS},
                     "same_tokens": {name: torch.equal(outputs[name], outputs["float32"]) for name in PRECISIONS}})
    param_bytes = {name: sum(p.numel() * p.element_size() for p in m.parameters()) for name, m in built.items()}
    return {"rows": rows, "param_bytes": param_bytes}
