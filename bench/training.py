"""Benchmark 3 (feature cache) and the training step shared with benchmark 4 (memory).

A training step is what a training loop does: forward with labels, backward, AdamW step over the
trainable parameters (resampler, cross-attention blocks, new token rows), gradients cleared.
"""

from __future__ import annotations

from typing import Any

import torch

from bench import flops
from bench.common import Env, interleaved
from bench.models import report_text, xray_images
from flamingo_lib import FlamingoModel, FlamingoProcessor


def train_batch(processor: FlamingoProcessor, batch: int, text_tokens: int, env: Env) -> dict[str, torch.Tensor]:
    """``batch`` samples with 2 images each and about ``text_tokens`` tokens (prompt + report)."""
    prompt = "<image>Frontal view.<image>Lateral view. Findings:"
    report = report_text(max(8, text_tokens - len(processor.tokenizer(prompt)["input_ids"]) - 1))
    enc = processor.training_batch([report] * batch, [xray_images(2)] * batch, prompts=prompt)
    return {k: v.to(env.device) for k, v in enc.items()}


def make_step(model: FlamingoModel, optimizer: torch.optim.Optimizer, inputs: dict[str, torch.Tensor],
              env: Env):  # noqa: ANN201 - returns the step callable
    """One training step on ``inputs`` (which hold exactly one visual input)."""
    def step() -> float:
        with env.autocast():
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def optimizer_for(model: FlamingoModel) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only, fused (one kernel for all of them), as
    ``flamingo_lib.training.trainer.Trainer`` builds it."""
    return torch.optim.AdamW(list(model.parameters_trainable()), lr=1e-5, fused=True)


def vit_shape(model: FlamingoModel) -> tuple[dict[str, float], int] | None:
    """The timm ViT trunk's sizes for :func:`bench.flops.vit_forward` and its token count, read
    from the loaded tower (None for other towers)."""
    trunk = getattr(model.flamingo.vision_encoder.tower, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        return None
    width = int(trunk.embed_dim)
    shape = {"width": width, "depth": len(trunk.blocks), "mlp_ratio": trunk.blocks[0].mlp.fc1.out_features / width,
             "patch": int(trunk.patch_embed.patch_size[0])}
    return shape, int(trunk.patch_embed.num_patches) + int(getattr(trunk, "num_prefix_tokens", 1))


def step_flops(model: FlamingoModel, batch: int, text: int, patch_tokens: int, cached: bool,
               vit: dict | None) -> dict[str, float]:
    """Analytic FLOPs of one step of ``model`` (see :func:`bench.flops.training_step`)."""
    cfg, lm_cfg = model.config, model.flamingo.lm.config
    shape = flops.FlamingoShape.of(cfg, lm_cfg, images=2)
    resampler = dict(dim=cfg.dim_visual, depth=cfg.resampler_depth, heads=cfg.resampler_heads,
                     dim_head=cfg.resampler_dim_head, latents=cfg.resampler_num_latents, ff_mult=cfg.resampler_ff_mult)
    return flops.training_step(shape, batch, text, patch_tokens, resampler, None if cached else vit)


def run_feature_cache(env: Env, model: FlamingoModel, processor: FlamingoProcessor, batch: int, text_tokens: int,
                      reps: int) -> dict[str, Any]:
    """Training steps/s from cached patch features vs running the vision tower every step.

    Each variant has its own optimizer over the same parameters: the weights drift a little
    between steps, which changes nothing in the cost.
    """
    model.to(env.device).train()
    inputs = train_batch(processor, batch, text_tokens, env)
    pixels = inputs.pop("pixel_values")
    with torch.no_grad(), env.autocast():
        patches = model.flamingo.encode_visuals(pixels)  # what a feature cache stores, once
    variants = {"pixel_values": {**inputs, "pixel_values": pixels},
                "cached_features": {**inputs, "image_embeddings": patches.float()}}
    fns = {name: make_step(model, optimizer_for(model), kw, env) for name, kw in variants.items()}
    timings = interleaved(fns, env, reps=reps, warmup=1)
    text = inputs["input_ids"].shape[1]
    vit = vit_shape(model)
    out: dict[str, Any] = {"batch": batch, "images": 2, "text_tokens": text, "patch_tokens": patches.shape[2],
                           "dim_visual": patches.shape[3], "lm_hidden": model.config.dim,
                           "cache_bytes_per_image": patches[0, 0].numel() * 4}
    for name, t in timings.items():
        out[name] = {"time": t.as_dict(), "steps_per_s": 1.0 / t.median}
        if vit is not None:
            fl = step_flops(model, batch, text, patches.shape[2], name == "cached_features", vit[0])
            out[name]["gflop"] = fl["total"] / 1e9
            out[name]["gflops"] = fl["total"] / t.median / 1e9
    out["speedup"] = timings["pixel_values"].median / timings["cached_features"].median
    model.eval()
    return out
