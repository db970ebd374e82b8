"""Benchmark 1: the Flamingo blocks, forward + backward, against lucidrains and open_flamingo.

Weights are copied between implementations and the outputs (and weight gradients) checked
equal before anything is timed, so the implementations compared compute the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench import flops
from bench.common import Env, Stats, interleaved, load_baselines, matmul_fn
from flamingo_lib.modeling.cross_attention import GatedCrossAttentionBlock
from flamingo_lib.modeling.resampler import PerceiverResampler


@dataclass(frozen=True)
class BlockSizes:
    """The seed defaults (full run) or toy sizes (smoke run)."""

    batch: int = 4
    images: int = 2
    patch_tokens: int = 197  # ViT-B/16 at 224 px: CLS + 14 x 14
    dim_visual: int = 768
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    latents: int = 64
    ff_mult: int = 4
    dim: int = 1024  # LM width of the cross-attention block
    text: int = 128
    matmul: int = 4096

    @classmethod
    def smoke(cls) -> "BlockSizes":
        return cls(batch=2, patch_tokens=17, dim_visual=64, depth=2, heads=2, dim_head=16, latents=8,
                   ff_mult=2, dim=96, text=16, matmul=512)


def _copy_state(dst: nn.Module, src: dict[str, torch.Tensor], rename: dict[str, str] | None = None) -> None:
    """Load ``src`` (our names) into ``dst`` after renaming; every key must match exactly."""
    rename = rename or {}
    dst.load_state_dict({rename.get(k, k): v for k, v in src.items()}, strict=True)


def _seeded_ours_resampler(s: BlockSizes) -> PerceiverResampler:
    torch.manual_seed(0)
    return PerceiverResampler(dim=s.dim_visual, depth=s.depth, dim_head=s.dim_head, heads=s.heads,
                              num_latents=s.latents, num_time_embeds=4, ff_mult=s.ff_mult)


def _compiled_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` compiled in place (``nn.Module.compile``, as
    ``flamingo_lib.modeling.compile.compile_blocks`` does it): same parameter names, so the equality
    check compares its gradients name by name."""
    compiled = copy.deepcopy(module)
    compiled.compile()
    return compiled


def resamplers(s: BlockSizes, base: dict, compiled: bool = False) -> dict[str, tuple[nn.Module, Callable[[torch.Tensor], Any]]]:
    """The three resamplers with identical weights, each with how it takes (B, T, N, D) media;
    with ``compiled`` also ours under ``torch.compile`` (``ours+compile``).

    Time embeddings differ in meaning: ours and open_flamingo's ``frame_embs`` index the frame
    within an image (one frame here: index 0 for both images); lucidrains' ``media_pos_emb``
    indexes the image. Filling every lucidrains row with our row 0 makes them agree.
    """
    ours = _seeded_ours_resampler(s)
    state = ours.state_dict()
    lucid = base["lucidrains"].PerceiverResampler(dim=s.dim_visual, depth=s.depth, dim_head=s.dim_head,
                                                  heads=s.heads, num_latents=s.latents, num_media_embeds=4,
                                                  ff_mult=s.ff_mult)
    lucid_state = {k: v for k, v in state.items() if k != "time_pos_emb"}
    lucid_state["media_pos_emb"] = state["time_pos_emb"][:1].expand(4, 1, -1).clone()
    _copy_state(lucid, lucid_state)
    of = base["open_flamingo"].PerceiverResampler(dim=s.dim_visual, depth=s.depth, dim_head=s.dim_head,
                                                  heads=s.heads, num_latents=s.latents, max_num_media=None,
                                                  max_num_frames=4, ff_mult=s.ff_mult)
    of_state = {k: v for k, v in state.items() if k != "time_pos_emb"}
    of_state["frame_embs"] = state["time_pos_emb"][:, 0].clone()
    _copy_state(of, of_state)
    out = {
        "ours": (ours, lambda x: ours(x)),
        "lucidrains": (lucid, lambda x: lucid(x)),
        "open_flamingo": (of, lambda x: of(x.unsqueeze(2))),  # (B, T, F=1, N, D)
    }
    if compiled:
        ours_compiled = _compiled_copy(ours)
        out["ours+compile"] = (ours_compiled, lambda x: ours_compiled(x))
    return out


def xattn_blocks(s: BlockSizes, base: dict, dim_visual: int, which: tuple[str, ...]) -> dict[str, tuple]:
    """Gated cross-attention blocks with identical weights (gates set to 0.5 so both branches
    count) and how each takes (x, media, media_locations).

    lucidrains' block has no ``dim_visual`` (its media must be LM-wide), so it is compared at
    ``dim_visual = dim`` in a separate pair.
    """
    torch.manual_seed(0)
    ours = GatedCrossAttentionBlock(dim=s.dim, dim_visual=dim_visual, dim_head=s.dim_head, heads=s.heads,
                                    ff_mult=s.ff_mult, only_attend_immediate_media=True)
    with torch.no_grad():
        ours.attn_gate.fill_(0.5)
        ours.ff_gate.fill_(0.5)
    out: dict[str, tuple] = {}
    for name in which:
        if name in ("ours", "ours+compile"):
            # The model computes media_time = cumsum once per forward for all layers; so here.
            mod = ours if name == "ours" else _compiled_copy(ours)
            out[name] = (mod, lambda x, m, loc, mod=mod: mod(x, m, loc.long().cumsum(-1)))
        elif name == "open_flamingo":
            of = base["open_flamingo"].GatedCrossAttentionBlock(
                dim=s.dim, dim_visual=dim_visual, dim_head=s.dim_head, heads=s.heads, ff_mult=s.ff_mult,
                only_attend_immediate_media=True)
            _copy_state(of, ours.state_dict())
            out[name] = (of, lambda x, m, loc, of=of: of(x, m, media_locations=loc))
        elif name == "lucidrains":
            assert dim_visual == s.dim, "lucidrains' block needs media as wide as the text"
            lucid = base["lucidrains"].GatedCrossAttentionBlock(dim=s.dim, dim_head=s.dim_head, heads=s.heads,
                                                                ff_mult=s.ff_mult, only_attend_immediate_media=True)
            _copy_state(lucid, ours.state_dict())
            out[name] = (lucid, lambda x, m, loc, lucid=lucid: lucid(x, m, media_locations=loc))
    return out


def _fwd_bwd(module: nn.Module, call: Callable[[], torch.Tensor], grad: torch.Tensor, inputs: list[torch.Tensor],
             env: Env) -> Callable[[], torch.Tensor]:
    """One training-style pass: forward, backward of a fixed output gradient, grads cleared."""
    def step() -> torch.Tensor:
        for p in module.parameters():
            p.grad = None
        for t in inputs:
            t.grad = None
        with env.autocast():
            out = call()
        out.backward(grad.to(out.dtype))
        return out
    return step


def _check_equal(impls: dict[str, tuple[nn.Module, Callable[[], torch.Tensor]]], select: Callable,
                 env: Env) -> dict[str, float]:
    """Max |difference| to ours of the outputs (positions ``select`` picks) and of the weight
    gradients; raises if any is not allclose (fp32, rtol = atol = 1e-4; gradient atol scaled by
    the gradient's size)."""
    tol = 1e-4
    results = {name: (fn().detach(), {n: p.grad.clone() for n, p in mod.named_parameters()})
               for name, (mod, fn) in impls.items()}
    ref_out, ref_grads = results["ours"]
    diffs = {}
    for name, (out, grads) in results.items():
        if name == "ours":
            continue
        a, b = select(ref_out).float(), select(out).float()
        if not torch.allclose(a, b, rtol=tol, atol=tol):
            raise AssertionError(f"{name} output differs from ours: max |diff| {(a - b).abs().max():.3g}")
        worst = 0.0
        leftover = [n for n in grads if n not in ref_grads]  # the renamed time embedding, if any
        for n_ours, g_ours in ref_grads.items():
            g = grads.get(n_ours)
            if g is None:
                # Time embeddings are indexed differently (see `resamplers`); their gradients
                # agree once summed over the index.
                (other,) = leftover
                g_ours, g = g_ours.flatten(1).sum(0), grads[other].flatten(1).sum(0)
            if not torch.allclose(g_ours.float(), g.float(), rtol=tol, atol=tol * max(1.0, g_ours.abs().max().item())):
                raise AssertionError(f"{name} gradient of {n_ours} differs from ours")
            worst = max(worst, (g_ours.float() - g.float()).abs().max().item())
        diffs[name] = max((a - b).abs().max().item(), worst)
    return diffs


def run(env: Env, sizes: BlockSizes, reps: int, compiled: bool = False) -> dict[str, Any]:
    """Check, then time forward + backward of every block implementation, interleaved with the
    square matmul that gives the roofline of this machine; with ``compiled`` also ours under
    ``torch.compile`` (compiled in the check and the warm-up, before anything is timed)."""
    base = load_baselines()
    s, dev = sizes, env.device
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(s.batch, s.images, s.patch_tokens, s.dim_visual, generator=g).to(dev)
    res_grad = torch.randn(s.batch, s.images, s.latents, s.dim_visual, generator=g).to(dev)

    # Every text token follows an image (images at 0 and text // 2), so the implementations
    # agree everywhere: ours gives text before the first image exactly nothing, they do not.
    locations = torch.zeros(s.batch, s.text, dtype=torch.bool)
    locations[:, [0, s.text // 2]] = True
    locations = locations.to(dev)
    text = torch.randn(s.batch, s.text, s.dim, generator=g).to(dev).requires_grad_(True)
    x_grad = torch.randn(s.batch, s.text, s.dim, generator=g).to(dev)
    media = {dv: torch.randn(s.batch, s.images, s.latents, dv, generator=g).to(dev).requires_grad_(True)
             for dv in {s.dim_visual, s.dim}}

    groups: dict[str, dict[str, tuple[nn.Module, Callable]]] = {}
    groups["resampler"] = {
        name: (mod.to(dev), _fwd_bwd(mod, lambda f=f: f(patches), res_grad, [], env))
        for name, (mod, f) in resamplers(s, base, compiled).items()}
    ours_impls = ("ours", "ours+compile") if compiled else ("ours",)
    for label, dv, which in (("xattn", s.dim_visual, (*ours_impls, "open_flamingo")),
                             ("xattn_dv=dim", s.dim, (*ours_impls, "lucidrains"))):
        groups[label] = {
            name: (mod.to(dev), _fwd_bwd(mod, lambda f=f, m=media[dv]: f(text, m, locations), x_grad, [text, media[dv]], env))
            for name, (mod, f) in xattn_blocks(s, base, dv, which).items()}

    with env.fp32():  # equality is checked in fp32 (bf16 rounding differs between kernels)
        diffs = {label: _check_equal(impls, lambda t: t, env) for label, impls in groups.items()}

    res_flops = 3 * flops.resampler_forward(s.batch, s.images, s.patch_tokens, s.dim_visual, s.depth, s.heads,
                                            s.dim_head, s.latents, s.ff_mult)
    xattn_flops = {label: 3 * flops.xattn_forward(s.batch, s.text, s.images * s.latents, s.dim, dv, s.heads,
                                                  s.dim_head, s.ff_mult)
                   for label, dv in (("xattn", s.dim_visual), ("xattn_dv=dim", s.dim))}
    group_flops = {"resampler": res_flops, **xattn_flops}

    mm, mm_flops = matmul_fn(env, s.matmul)
    fns: dict[str, Callable] = {"matmul": mm}
    for label, impls in groups.items():
        for name, (_, fn) in impls.items():
            fns[f"{label}/{name}"] = fn
    # Compiled blocks: the first call compiles forward and backward, a second settles autocast guards.
    timings = interleaved(fns, env, reps=reps, warmup=2 if compiled else 1)
    matmul_rate = mm_flops / timings["matmul"].median

    # Best-of-N ("min") figures beside the medians: on a shared machine the noise only ever
    # adds time, so the fastest repetition is the closest to the uncontended cost.
    matmul_rate_best = mm_flops / timings["matmul"].min
    rows = []
    for label, impls in groups.items():
        ours_t = timings[f"{label}/ours"]
        for name in impls:
            t: Stats = timings[f"{label}/{name}"]
            rate = group_flops[label] / t.median
            rows.append({"block": label, "impl": name, "time": t.as_dict(), "gflop": group_flops[label] / 1e9,
                         "gflops": rate / 1e9, "frac_matmul": rate / matmul_rate,
                         "frac_matmul_best": group_flops[label] / t.min / matmul_rate_best,
                         "ours_speedup": t.median / ours_t.median, "ours_speedup_best": t.min / ours_t.min,
                         "max_abs_diff_vs_ours": diffs[label].get(name, 0.0)})
    return {"sizes": s.__dict__, "matmul": {"size": s.matmul, "time": timings["matmul"].as_dict(),
                                            "gflops": matmul_rate / 1e9, "gflops_best": matmul_rate_best / 1e9},
            "rows": rows}


def profile_ours(env: Env, sizes: BlockSizes, label: str, top: int = 12) -> dict[str, Any]:
    """torch.profiler view of one forward + backward of our block: the table of ops by self time,
    and the share and rate of the matmul kernels (all counted FLOPs but attention's go there)."""
    from torch.profiler import ProfilerActivity, profile

    s, dev = sizes, env.device
    g = torch.Generator().manual_seed(1)
    if label == "resampler":
        mod = _seeded_ours_resampler(s).to(dev)
        x = torch.randn(s.batch, s.images, s.patch_tokens, s.dim_visual, generator=g).to(dev)
        step = _fwd_bwd(mod, lambda: mod(x), torch.randn(s.batch, s.images, s.latents, s.dim_visual).to(dev), [], env)
        fl = 3 * flops.resampler_forward(s.batch, s.images, s.patch_tokens, s.dim_visual, s.depth, s.heads,
                                         s.dim_head, s.latents, s.ff_mult)
        attn = 3 * 2 * 2 * s.batch * s.images * s.depth * s.latents * (s.patch_tokens + s.latents) * s.heads * s.dim_head
    else:
        mod = GatedCrossAttentionBlock(dim=s.dim, dim_visual=s.dim_visual, dim_head=s.dim_head, heads=s.heads,
                                       ff_mult=s.ff_mult).to(dev)
        text = torch.randn(s.batch, s.text, s.dim, generator=g).to(dev).requires_grad_(True)
        media = torch.randn(s.batch, s.images, s.latents, s.dim_visual, generator=g).to(dev).requires_grad_(True)
        loc = torch.zeros(s.batch, s.text, dtype=torch.long, device=dev)
        loc[:, [0, s.text // 2]] = 1
        step = _fwd_bwd(mod, lambda: mod(text, media, loc.cumsum(-1)), torch.randn(s.batch, s.text, s.dim).to(dev),
                        [text, media], env)
        fl = 3 * flops.xattn_forward(s.batch, s.text, s.images * s.latents, s.dim, s.dim_visual, s.heads,
                                     s.dim_head, s.ff_mult)
        attn = 3 * 2 * 2 * s.batch * s.text * s.images * s.latents * s.heads * s.dim_head
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        env.sync()
    cuda = dev.type == "cuda"
    events = prof.key_averages()
    self_us = {e.key: (e.self_device_time_total if cuda else e.self_cpu_time_total) for e in events}
    total_us = sum(self_us.values())
    if cuda:  # device time sits on the kernels, not on aten::mm: match GEMM kernel names
        mm_us = sum(t for k, t in self_us.items() if any(w in k.lower() for w in ("gemm", "xmma", "cutlass")))
    else:
        mm_us = sum(t for k, t in self_us.items() if k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    return {
        "block": label,
        "table": events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=top),
        "total_s": total_us / 1e6,
        "matmul_share": mm_us / total_us,
        "matmul_gflops": (fl - attn) / (mm_us / 1e6) / 1e9 if mm_us else 0.0,
        "top_ops": sorted(((k, t / total_us) for k, t in self_us.items()), key=lambda kv: -kv[1])[:8],
    }
