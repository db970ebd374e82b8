"""Benchmark 2: greedy decoding speed with the KV cache on, prompt with 2 images.

Three decoders, interleaved, same prompt length and number of new tokens:
- ``bare_lm``: the same LM's own ``generate`` (its ``<image>`` positions given an ordinary token);
- ``flamingo``: our model, media keys/values computed once per call (``cache_media_kv=True``);
- ``flamingo_recompute_kv``: our model with ``cache_media_kv=False``, i.e. every step recomputes
  each layer's media keys/values, as open_flamingo's decoding does.

Speed is the *decode* rate: the steps after the first forward (the prefill, which also
encodes/resamples the images) are timed with a logits processor that notes the time of every
step, so the figures compare per-token work only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from bench import flops
from bench.common import Env, Stats, interleaved
from bench.models import xray_images
from flamingo_lib import FlamingoModel, FlamingoProcessor

PROMPT = "<image>Frontal<image>Lateral Findings:"


class StepClock(LogitsProcessor):
    """Notes the time at every decoding step (called once per forward, before the token is
    picked); leaves the scores untouched."""

    def __init__(self, env: Env) -> None:
        self.env, self.times = env, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.env.sync()
        self.times.append(self.env.now())
        return scores


@dataclass
class Case:
    """One model size to decode with."""

    name: str
    model: FlamingoModel
    processor: FlamingoProcessor
    bare_lm: PreTrainedModel
    new_tokens: int
    batches: tuple[int, ...]
    # "pixel_values" (end to end), or "visual_features" (random resampled features: the prefill
    # skips the vision tower and the resampler, which the decode rate never includes anyway)
    visual: str
    note: str = ""
    # repetitions at least: a tiny model's decode takes milliseconds, and its median needs many
    # samples to settle (3 gave 3.8k and 6.5k tok/s for the same bare LM in two runs); the
    # BioGPT-size batch-1 decode is memory-bound and moves with the machine's other tenants
    min_reps: int = 0


def _inputs(case: Case, batch: int, env: Env) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The Flamingo inputs and the bare LM's ids (image tokens replaced by ``<unk>``)."""
    proc, cfg = case.processor, case.model.config
    enc = proc([PROMPT] * batch, [xray_images(2)] * batch, padding_side="left")
    inputs = {k: enc[k].to(env.device) for k in ("input_ids", "attention_mask")}
    if case.visual == "pixel_values":
        inputs["pixel_values"] = enc["pixel_values"].to(env.device)
    else:
        g = torch.Generator().manual_seed(2)
        shape = (batch, 2, cfg.resampler_num_latents, cfg.dim_visual)
        inputs["visual_features"] = torch.randn(*shape, generator=g).to(env.device)
    added = torch.tensor([cfg.image_token_id, cfg.eoc_token_id], device=env.device)
    bare_ids = inputs["input_ids"].masked_fill(torch.isin(inputs["input_ids"], added), proc.tokenizer.unk_token_id)
    return inputs, bare_ids


def run_case(env: Env, case: Case, batch: int, reps: int) -> dict[str, Any]:
    """Decode rates of the three decoders at one batch size, checked and compared."""
    inputs, bare_ids = _inputs(case, batch, env)
    n = case.new_tokens
    outputs: dict[str, torch.Tensor] = {}

    def decoder(name: str, n: int):  # noqa: ANN202 - returns a self-timed callable
        common = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1, use_cache=True)

        def go() -> float:
            clock = StepClock(env)
            with torch.no_grad(), env.autocast():
                if name == "bare_lm":
                    out = case.bare_lm.generate(input_ids=bare_ids, attention_mask=inputs["attention_mask"],
                                                pad_token_id=case.processor.tokenizer.pad_token_id,
                                                logits_processor=LogitsProcessorList([clock]), **common)
                else:
                    case.model.cache_media_kv = name == "flamingo"
                    try:
                        out = case.model.generate(**inputs, logits_processor=LogitsProcessorList([clock]), **common)
                    finally:
                        case.model.cache_media_kv = True
            outputs[name] = out
            assert len(clock.times) == n, f"{name}: {len(clock.times)} steps for {n} new tokens"
            return clock.times[-1] - clock.times[0]  # the n - 1 decoding steps after the prefill
        return go

    names = ("bare_lm", "flamingo", "flamingo_recompute_kv")
    for name in names:
        decoder(name, 2)()  # warm-up: first-touch of the weights, allocator, one decoding step
    timings = interleaved({name: decoder(name, n) for name in names}, env, reps=max(reps, case.min_reps), warmup=0,
                          self_timed=True)
    prompt_len = inputs["input_ids"].shape[1]
    for name, out in outputs.items():
        assert out.shape == (batch, prompt_len + n), f"{name} returned {tuple(out.shape)}"
    same_tokens = torch.equal(outputs["flamingo"], outputs["flamingo_recompute_kv"])

    shape = flops.FlamingoShape.of(case.model.config, case.bare_lm.config, images=2)
    context = prompt_len + n // 2  # mean attention context over the decoded tokens
    fl = {"bare_lm": flops.lm_forward(shape.lm, batch, 1, context),
          "flamingo": flops.flamingo_decode_step(shape, batch, context, media_kv_cached=True),
          "flamingo_recompute_kv": flops.flamingo_decode_step(shape, batch, context, media_kv_cached=False)}
    decoded = batch * (n - 1)
    rates = {name: _rate(decoded, t) for name, t in timings.items()}
    bound = rates["bare_lm"]["median"] * fl["bare_lm"] / fl["flamingo"]
    return {
        "case": case.name, "batch": batch, "prompt_tokens": prompt_len, "new_tokens": n, "visual": case.visual,
        "note": case.note, "tokens_per_s": rates,
        "gflop_per_step": {k: v / 1e9 for k, v in fl.items()},
        "bound_tokens_per_s": bound, "frac_of_bound": rates["flamingo"]["median"] / bound,
        "speedup_vs_recompute_kv": rates["flamingo"]["median"] / rates["flamingo_recompute_kv"]["median"],
        # the same from each decoder's fastest repetition (see bench.blocks: noise only adds time)
        "frac_of_bound_best": rates["flamingo"]["max"] / (rates["bare_lm"]["max"] * fl["bare_lm"] / fl["flamingo"]),
        "speedup_vs_recompute_kv_best": rates["flamingo"]["max"] / rates["flamingo_recompute_kv"]["max"],
        "same_tokens_cached_vs_recomputed": same_tokens,
    }


def _rate(tokens: int, seconds: Stats) -> dict[str, float]:
    """Tokens per second from seconds per call: the slowest call gives the min rate."""
    return {"median": tokens / seconds.median, "min": tokens / seconds.max, "max": tokens / seconds.min,
            "n": seconds.n}


def run(env: Env, cases: list[Case], reps: int) -> list[dict[str, Any]]:
    """Every case at each of its batch sizes."""
    results = []
    for case in cases:
        case.model.to(env.device).eval()
        case.bare_lm.to(env.device).eval()
        for batch in case.batches:
            results.append(run_case(env, case, batch, reps))
    return results


def profile_decode(env: Env, case: Case, batch: int, top: int = 10) -> dict[str, Any]:
    """torch.profiler over a whole greedy ``generate`` (prefill + ``new_tokens`` steps) of ours
    and of the bare LM: op calls and op self-time per new token, and the ops ours adds most."""
    from torch.profiler import profile

    inputs, bare_ids = _inputs(case, batch, env)
    common = dict(max_new_tokens=case.new_tokens, min_new_tokens=case.new_tokens, do_sample=False, use_cache=True)
    runs = {"flamingo": lambda: case.model.generate(**inputs, **common),
            "bare_lm": lambda: case.bare_lm.generate(input_ids=bare_ids, attention_mask=inputs["attention_mask"],
                                                     pad_token_id=case.processor.tokenizer.pad_token_id, **common)}
    per_op: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"batch": batch, "new_tokens": case.new_tokens}
    for name, run in runs.items():
        with torch.no_grad(), env.autocast():
            run()  # warm
            with profile() as prof:
                start = env.now()
                run()
                env.sync()
                seconds = env.now() - start
        events = prof.key_averages()
        per_op[name] = {e.key: e.self_cpu_time_total / 1e6 for e in events}
        out[name] = {"seconds_per_token": seconds / case.new_tokens,
                     "op_seconds_per_token": sum(per_op[name].values()) / case.new_tokens,
                     "op_calls_per_token": sum(e.count for e in events) / case.new_tokens}
    extra = {k: v - per_op["bare_lm"].get(k, 0.0) for k, v in per_op["flamingo"].items()}
    out["top_added_ops_ms_per_token"] = [(k, 1e3 * v / case.new_tokens)
                                         for k, v in sorted(extra.items(), key=lambda kv: -kv[1])[:top]]
    return out
