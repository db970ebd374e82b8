"""Op calls per decoded token, per gated block and per training step: ours against the bare LM.

    python -m bench.op_counts            # tiny-random + BioGPT-size (~3 min on 2 cores): bench/op_counts.md
    python -m bench.op_counts --smoke    # toy BioGPT sizes (< 30 s): bench/.smoke/op_counts.md

On a GPU a decoding step of these models is bound by the host: its time follows the number
of op calls the Python side dispatches, not the FLOPs. So this counts them with
``torch.profiler``: every event it records (``aten::`` ops, nested ones included, as
``bench.generation.profile_decode`` counts them; in a training step also autograd's and the
optimizer's). Counts are deterministic: no timing, no repetitions,
the same on a loaded machine.

- **decode**: op calls per decoded token of greedy ``generate`` in the steady state: a
  ``SHORT``-token generate subtracted from a ``LONG``-token one, so the prefill (vision tower,
  resampler, media keys/values, the prompt) cancels. Ours with the fused decoding step
  (``FlamingoModel.fuse_decode_steps``, the default), ours without it (every block's general
  forward at every step), and the bare LM (its ``<image>`` positions given ``<unk>``).
- **floor**: op calls of one gated block's decoding step (what a :class:`FlamingoLayer` adds
  around its decoder layer) against one decoder layer of the same LM, counted inside
  ``record_function`` ranges; and the ratios they imply at ``xattn_every=1``.
- **train**: op calls of one training step (forward with labels, backward, fused AdamW) of
  the tiny-random model from cached patch features, against the bare LM trained whole on the
  same tokens; the same step on the batch padded to a length bucket
  (``TrainConfig.pad_to_multiple_of``), and with its forward and loss compiled
  (``TrainConfig.compile_step``: ``torch.compile``, inductor; the compiled graph's kernels and the
  ops around it counted alike); and the CPU time per step of eager and compiled (median after
  warm-up, the compilation timed apart). ``--smoke`` skips the compiled step (its compilation
  alone takes longer than the rest of the smoke run).

Target (decode): ours <= 1.7x the bare LM's op calls per token at ``xattn_every=1``, or within
10% of the layer floor when that floor is above 1.7x (the floor: every block costing as many
op calls as one of the LM's own decoder layers, which do the same kinds of work: two layer
norms, an attention, a feed-forward).
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import profile

from bench.common import BENCH_DIR, Env, interleaved, write_results
from bench.models import SMOKE_BLOCKS, biomed_size_config, make_biogpt_size_lm_dir, make_vit_dir, xray_images
from bench.training import make_step, optimizer_for, train_batch
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.backbones.language import load_language_model
from flamingo_lib.modeling.lm_injection import decoder_layers, lm_flamingo_layers
from flamingo_lib.training.trainer import ReportCollator

PROMPT = "<image>Frontal<image>Lateral Findings:"
SHORT, LONG = 4, 12  # new tokens of the two generate calls whose difference is the steady state
TARGET_RATIO = 1.7
FLOOR_SLACK = 1.1  # "within 10% of the floor"
LABEL = "op_counts::"  # record_function ranges of this bench (not counted as op calls)
BUCKET = 32  # the training step's length bucket: what docs/training.md advises a GPU user
TIMED_STEPS = 5  # training steps timed per variant, after warm-up


@dataclass
class Case:
    """One model to count: ours and the bare LM it wraps, with a prompt of two images."""

    name: str
    model: FlamingoModel
    processor: FlamingoProcessor
    bare_lm: nn.Module
    visual: str  # "pixel_values" (through the vision tower) or "visual_features" (random, resampled)
    note: str


def op_counts(run: Callable[[], Any]) -> tuple[collections.Counter, list[Any]]:
    """Op calls by name of one ``run()`` (after one unprofiled warm-up call), and the
    profiler's events (for counting inside ranges)."""
    run()
    with profile() as prof:
        run()
    events = list(prof.events())
    counts = collections.Counter(e.name for e in events if not e.name.startswith(LABEL))
    return counts, events


def steady(short: collections.Counter, long: collections.Counter, steps: int) -> dict[str, float]:
    """Per-step op calls by name: ``(long - short) / steps`` (the common prefix cancels)."""
    return {k: (long.get(k, 0) - short.get(k, 0)) / steps for k in set(short) | set(long)
            if long.get(k, 0) != short.get(k, 0)}


def inputs_for(case: Case) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Our inputs for one study of two images and the bare LM's ids (``<image>``/``<EOC>`` as ``<unk>``)."""
    cfg = case.model.config
    enc = case.processor([PROMPT], [xray_images(2)], padding_side="left")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
    if case.visual == "pixel_values":
        inputs["pixel_values"] = enc["pixel_values"]
    else:
        g = torch.Generator().manual_seed(2)
        inputs["visual_features"] = torch.randn(1, 2, cfg.resampler_num_latents, cfg.dim_visual, generator=g)
    added = torch.tensor([cfg.image_token_id, cfg.eoc_token_id])
    bare_ids = inputs["input_ids"].masked_fill(torch.isin(inputs["input_ids"], added),
                                               case.processor.tokenizer.unk_token_id)
    return inputs, bare_ids


def generators(case: Case, env: Env) -> dict[str, Callable[[int], Any]]:
    """``name -> generate(new_tokens)`` for ours fused, ours unfused and the bare LM."""
    inputs, bare_ids = inputs_for(case)
    inputs = {k: v.to(env.device) for k, v in inputs.items()}
    bare_ids = bare_ids.to(env.device)

    def common(n: int) -> dict[str, Any]:
        return dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1, use_cache=True)

    def ours(fused: bool) -> Callable[[int], Any]:
        def go(n: int) -> Any:
            case.model.fuse_decode_steps = fused
            try:
                with torch.no_grad(), env.autocast():
                    return case.model.generate(**inputs, **common(n))
            finally:
                case.model.fuse_decode_steps = True
        return go

    def bare(n: int) -> Any:
        with torch.no_grad(), env.autocast():
            return case.bare_lm.generate(input_ids=bare_ids, attention_mask=inputs["attention_mask"],
                                         pad_token_id=case.processor.tokenizer.pad_token_id, **common(n))

    return {"ours": ours(True), "ours_unfused": ours(False), "bare_lm": bare}


@contextmanager
def labelled(modules: dict[str, list[nn.Module]]) -> Iterator[None]:
    """Wrap each module's forward in a ``record_function`` range named ``LABEL + key``."""
    handles = []
    for key, mods in modules.items():
        for module in mods:
            def pre(m: nn.Module, args: Any, name: str = LABEL + key) -> None:
                m._op_count_range = record_function(name)
                m._op_count_range.__enter__()

            def post(m: nn.Module, args: Any, out: Any) -> None:
                m._op_count_range.__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for mods in modules.values():
            for m in mods:
                m.__dict__.pop("_op_count_range", None)


def ops_inside(events: list[Any], label: str) -> int:
    """Op calls (nested included, ranges excluded) inside all ranges named ``label``."""
    def below(e: Any) -> int:
        return sum((0 if c.name.startswith(LABEL) else 1) + below(c) for c in e.cpu_children)
    return sum(below(e) for e in events if e.name == label)


def decode_section(case: Case, env: Env) -> dict[str, Any]:
    """Per-token op calls of the three decoders, the ops ours adds, and the per-layer floor."""
    gens = generators(case, env)
    per_token: dict[str, dict[str, float]] = {}
    for name, gen in gens.items():
        short, _ = op_counts(lambda: gen(SHORT))
        long, _ = op_counts(lambda: gen(LONG))
        per_token[name] = steady(short, long, LONG - SHORT)
    totals = {name: sum(c.values()) for name, c in per_token.items()}

    def added(name: str) -> list[tuple[str, float]]:
        """Every op ours calls more often per token than the bare LM, most added first."""
        extra = {k: v - per_token["bare_lm"].get(k, 0.0) for k, v in per_token[name].items()}
        return sorted(((k, v) for k, v in extra.items() if v > 0), key=lambda kv: -kv[1])

    # the floor: op calls inside one FlamingoLayer outside its decoder layer, and inside one bare decoder layer
    wrapped = lm_flamingo_layers(case.model.flamingo.lm)
    layer_counts: dict[str, float] = {}
    with labelled({"flamingo_layer": list(wrapped), "inner_layer": [w.decoder_layer for w in wrapped],
                   "bare_layer": list(decoder_layers(case.bare_lm))}):
        for name in ("ours", "ours_unfused", "bare_lm"):
            inside = {}
            for n in (SHORT, LONG):
                _, events = op_counts(lambda: gens[name](n))
                if name == "bare_lm":
                    inside[n] = ops_inside(events, LABEL + "bare_layer")
                else:  # the wrapper and its block: the FlamingoLayer's ops less its decoder layer's (and range)
                    inside[n] = (ops_inside(events, LABEL + "flamingo_layer")
                                 - ops_inside(events, LABEL + "inner_layer"))
            count = len(wrapped) if name != "bare_lm" else len(decoder_layers(case.bare_lm))
            layer_counts[name] = (inside[LONG] - inside[SHORT]) / (LONG - SHORT) / count
    blocks = len(wrapped)
    layers = len(decoder_layers(case.bare_lm))
    bare = totals["bare_lm"]
    block, layer = layer_counts["ours"], layer_counts["bare_lm"]
    floor_layer = 1 + blocks * layer / bare  # each block costing one decoder layer's op calls
    floor_block = 1 + blocks * block / bare  # only the blocks' own op calls added: nothing else of ours
    target = TARGET_RATIO if floor_layer <= TARGET_RATIO else FLOOR_SLACK * floor_layer
    ratio = totals["ours"] / bare
    return {
        "case": case.name, "note": case.note, "blocks": blocks, "lm_layers": layers,
        "op_calls_per_token": totals,
        "ratio": ratio, "ratio_unfused": totals["ours_unfused"] / bare,
        "block_step": block, "block_step_unfused": layer_counts["ours_unfused"], "decoder_layer_step": layer,
        "block_over_layer": block / layer,
        "floor_layer_ratio": floor_layer, "floor_block_ratio": floor_block,
        "target_ratio": target, "met": ratio <= target,
        "added_ops": added("ours"), "added_ops_unfused": added("ours_unfused"),
    }


def compiled_step(model: FlamingoModel, optimizer: torch.optim.Optimizer, inputs: dict[str, torch.Tensor],
                  env: Env):  # noqa: ANN201 - returns the step callable
    """:func:`bench.training.make_step` with the forward and loss one ``torch.compile`` function, as
    ``TrainConfig.compile_step`` compiles them (AOTAutograd compiles their backward)."""
    loss_of = torch.compile(lambda batch: model(**batch).loss)

    def step() -> float:
        with env.autocast():
            loss = loss_of(inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


@contextmanager
def fresh_inductor_cache() -> Iterator[None]:
    """Inductor compiles into an empty cache folder inside the block: the compilation timed is the
    one a first run pays, not a reload of an earlier run's kernels from ``/tmp/torchinductor_*``."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="flamingo-inductor-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def train_section(env: Env, compiled: bool = True) -> dict[str, Any]:
    """:func:`train_steps`, with a fresh inductor cache where a step is compiled."""
    with fresh_inductor_cache() if compiled else nullcontext():
        return train_steps(env, compiled)


def train_steps(env: Env, compiled: bool) -> dict[str, Any]:
    """Op calls of one training step of tiny-random (cached patch features), of the same step on
    the batch padded to a multiple of ``BUCKET`` tokens, of that step compiled (with ``compiled``),
    and of the bare LM; the CPU time per step of the eager and compiled ones."""
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config).to(env.device).train(), FlamingoProcessor(config)
    inputs = train_batch(processor, 2, 32, env)
    pixels = inputs.pop("pixel_values")
    with torch.no_grad():
        patches = model.flamingo.encode_visuals(pixels)  # what a feature cache stores
    batch = {**inputs, "image_embeddings": patches}
    bucketing = ReportCollator(processor)
    bucketing.pad_to_multiple_of = BUCKET
    bucketed = bucketing.bucket_padded(batch)
    # each variant its own copy of the model: the weights of one do not drift under another's steps
    steps = {"ours": make_step(model, optimizer_for(model), batch, env)}
    padded_model = copy.deepcopy(model)
    steps["ours_bucketed"] = make_step(padded_model, optimizer_for(padded_model), bucketed, env)
    compile_s = None
    if compiled:
        compiled_model = copy.deepcopy(model)
        steps["ours_compiled"] = compiled_step(compiled_model, optimizer_for(compiled_model), bucketed, env)
        start = time.perf_counter()
        steps["ours_compiled"]()  # the compilation: forward, backward (wall clock: inductor compiles in workers)
        env.sync()
        compile_s = time.perf_counter() - start

    bare_lm = load_language_model(config.lm, config.seed).to(env.device).train()
    added = torch.tensor([config.image_token_id, config.eoc_token_id], device=env.device)
    ids = inputs["input_ids"].masked_fill(torch.isin(inputs["input_ids"], added), processor.tokenizer.unk_token_id)
    labels = inputs["labels"].masked_fill(torch.isin(inputs["labels"], added), processor.tokenizer.unk_token_id)
    bare_opt = torch.optim.AdamW(bare_lm.parameters(), lr=1e-5, fused=True)

    def bare() -> float:
        with env.autocast():
            loss = bare_lm(input_ids=ids, attention_mask=inputs["attention_mask"], labels=labels).loss
        loss.backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)
        return loss.item()

    counts = {name: op_counts(fn)[0] for name, fn in (*steps.items(), ("bare_lm", bare))}
    extra = {k: v - counts["bare_lm"].get(k, 0) for k, v in counts["ours"].items()}
    # one torch thread, timed by the thread's CPU time on CPU (bench.common.Env): the shared cores' other
    # processes do not count
    clock = Env(env.device, bf16=env.bf16, thread_clock=env.device.type == "cpu")
    timed = {name: fn for name, fn in steps.items() if name in ("ours", "ours_compiled")}
    timings = interleaved(timed, clock, reps=TIMED_STEPS, warmup=2)
    return {"batch": 2, "text_tokens": int(inputs["input_ids"].shape[1]),
            "bucket": BUCKET, "bucketed_tokens": int(bucketed["input_ids"].shape[1]),
            "op_calls_per_step": {k: sum(c.values()) for k, c in counts.items()},
            "ratio": sum(counts["ours"].values()) / sum(counts["bare_lm"].values()),
            "added_ops": sorted(((k, v) for k, v in extra.items() if v > 0), key=lambda kv: -kv[1])[:10],
            "ms_per_step": {name: 1e3 * t.median for name, t in timings.items()},
            "ms_per_step_range": {name: [1e3 * t.min, 1e3 * t.max] for name, t in timings.items()},
            "timed_steps": TIMED_STEPS, "clock": clock.clock_name,
            "compile_s": compile_s, "compiled": compiled}


def cases(lm_dir: Path, vit_dir: Path, smoke: bool) -> Iterator[Case]:
    """tiny-random, then the BioGPT-size model (toy sizes with ``smoke``), built one at a time."""
    tiny = FlamingoConfig.from_preset("tiny-random")
    yield Case("tiny-random", FlamingoModel(tiny).eval(), FlamingoProcessor(tiny),
               load_language_model(tiny.lm, tiny.seed).eval(), "pixel_values",
               "tiny-random preset (2 LM layers, xattn_every=1), images through the tiny ViT")
    big = biomed_size_config(lm_dir, vit_dir, **(SMOKE_BLOCKS if smoke else {}))
    yield Case("biogpt-size" + ("-smoke" if smoke else ""), FlamingoModel(big).eval(), FlamingoProcessor(big),
               load_language_model(str(lm_dir)).eval(), "visual_features",
               ("toy BioGPT-architecture LM (4 layers, 64 wide)" if smoke else
                "random BioGPT-size LM (24 layers, 1024 wide) + biomed defaults: xattn_every=1, 8 heads x 64, "
                "ff_mult 4, 64 latents") + "; prompt given resampled features")


def markdown(results: dict[str, Any]) -> str:
    """The report: one table of op calls per token, the floor, the added ops, the training step."""
    lines = ["# Op calls per decoded token and per training step", "",
             f"`{results['command']}` on {results['machine']}, torch {results['torch']}, {results['dtype']}; "
             f"counted with `torch.profiler` (every event it records: `aten::` ops, nested ones included; in the "
             f"training step also autograd's and the optimizer's). Per token: "
             f"a {LONG}-token greedy `generate` less a {SHORT}-token one, divided by {LONG - SHORT} "
             "(the prefill cancels).",
             "", "## Decoding: op calls per new token", "",
             "| model | blocks | bare LM | ours | ours / bare | ours unfused | unfused / bare | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["decode"]:
        t = r["op_calls_per_token"]
        lines.append(f"| {r['case']} | {r['blocks']} | {t['bare_lm']:.0f} | {t['ours']:.0f} | {r['ratio']:.2f}x | "
                     f"{t['ours_unfused']:.0f} | {r['ratio_unfused']:.2f}x | <= {r['target_ratio']:.2f}x | "
                     f"{'yes' if r['met'] else 'NO'} |")
    lines += ["", "## The floor: one block's decoding step against one decoder layer", "",
              "A block's step: the op calls inside a `FlamingoLayer` outside its decoder layer (the gated block "
              "and the wrapper's casts and reshapes). *Layer floor*: ours / bare if every block cost as many op "
              "calls as one decoder layer; *block floor*: ours / bare if the blocks' own op calls were all "
              "ours adds (no embedding, head or `generate` overhead).", "",
              "| model | block step | block step unfused | decoder layer step | block / layer | layer floor "
              "| block floor |",
              "|---|---|---|---|---|---|---|"]
    for r in results["decode"]:
        lines.append(f"| {r['case']} | {r['block_step']:.0f} | {r['block_step_unfused']:.0f} | "
                     f"{r['decoder_layer_step']:.0f} | {r['block_over_layer']:.2f} | {r['floor_layer_ratio']:.2f}x | "
                     f"{r['floor_block_ratio']:.2f}x |")
    for r in results["decode"]:
        lines += ["", f"### {r['case']}: the op calls per token ours adds to the bare LM's", "", r["note"] + ".", "",
                  "| op | fused | unfused |", "|---|---|---|"]
        fused, unfused = dict(r["added_ops"]), dict(r["added_ops_unfused"])
        names = sorted(set(fused) | set(unfused), key=lambda k: (-fused.get(k, 0), -unfused.get(k, 0)))
        for k in names[:12] + [k for k in names[12:] if unfused.get(k, 0) >= 2 * r["blocks"]]:
            lines.append(f"| `{k}` | {fused.get(k, 0):+.0f} | {unfused.get(k, 0):+.0f} |")
        lines.append(f"| all | {sum(fused.values()):+.0f} | {sum(unfused.values()):+.0f} |")
    if "train" in results:
        t = results["train"]
        lines += ["", "## Training step (tiny-random)", "",
                  f"Batch {t['batch']}, {t['text_tokens']} tokens, two images from cached patch features; forward "
                  "with labels, backward, fused AdamW over the trainable parameters. The bare LM: the same tokens, "
                  "the whole LM trained (fused AdamW).", "",
                  "| bare LM | ours | ours / bare |", "|---|---|---|",
                  f"| {t['op_calls_per_step']['bare_lm']} | {t['op_calls_per_step']['ours']} | {t['ratio']:.2f}x |",
                  "", "Most added: " + ", ".join(f"`{k}` +{v}" for k, v in t["added_ops"]) + "."]
        if "ms_per_step" in t:
            calls, ms = t["op_calls_per_step"], t["ms_per_step"]
            compiled = t["compiled"]
            lines += ["", "### Eager, bucketed, compiled", "",
                      f"The same step of ours on the batch as collated ({t['text_tokens']} tokens), padded to a "
                      f"multiple of {t['bucket']} ({t['bucketed_tokens']} tokens: `TrainConfig.pad_to_multiple_of`), "
                      "and on the padded batch with forward and loss one `torch.compile` function (inductor; "
                      "`TrainConfig.compile_step`; the profiler counts the compiled graph's kernels and calls "
                      "as it counts ops). CPU time: median of "
                      f"{t['timed_steps']} steps after 2 of warm-up, {t['clock']}"
                      + (f"; the compilation took {t['compile_s']:.1f} s (wall clock of the first step, into an "
                         "empty inductor cache)." if compiled
                         else "; the compiled step is skipped in `--smoke` (its compilation alone outlasts the "
                              "smoke run)."),
                      "", "| | eager | bucketed | compiled |", "|---|---|---|---|",
                      f"| op calls per step | {calls['ours']} | {calls['ours_bucketed']} | "
                      f"{calls['ours_compiled'] if compiled else '-'} |",
                      f"| CPU ms per step | {ms['ours']:.1f} | - | "
                      f"{ms['ours_compiled']:.1f} |" if compiled else f"| CPU ms per step | {ms['ours']:.1f} | - | - |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="op calls per decoded token and training step (bench/README.md)")
    parser.add_argument("--smoke", action="store_true", help="toy BioGPT sizes: checks the code runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of op_counts.md/.json (default bench/, smoke bench/.smoke/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the counts do not depend on it; the machine is shared
    env = Env(torch.device(args.device), bf16=args.bf16)
    out_dir = args.out or (BENCH_DIR / ".smoke" if args.smoke else BENCH_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": "python -m bench.op_counts" + (" --smoke" if args.smoke else "") + (" --bf16" if args.bf16 else ""),
        "machine": f"{platform.machine()} {args.device}" + (f" ({torch.cuda.get_device_name(env.device)})"
                                                            if env.device.type == "cuda" else ""),
        "torch": torch.__version__, "dtype": env.dtype_name, "decode": []}
    with tempfile.TemporaryDirectory(prefix="flamingo-opcounts-") as tmp:
        lm_dir = make_biogpt_size_lm_dir(Path(tmp) / "lm", smoke=args.smoke)
        vit_dir = make_vit_dir(Path(tmp) / "vit", smoke=args.smoke)
        for case in cases(lm_dir, vit_dir, args.smoke):
            case.model.to(env.device)
            case.bare_lm.to(env.device)
            r = decode_section(case, env)
            results["decode"].append(r)
            print(f"{case.name}: ours {r['op_calls_per_token']['ours']:.0f} op calls/token "
                  f"(unfused {r['op_calls_per_token']['ours_unfused']:.0f}), bare LM "
                  f"{r['op_calls_per_token']['bare_lm']:.0f}: {r['ratio']:.2f}x (unfused {r['ratio_unfused']:.2f}x), "
                  f"target <= {r['target_ratio']:.2f}x {'met' if r['met'] else 'MISSED'}; block step "
                  f"{r['block_step']:.0f} (unfused {r['block_step_unfused']:.0f}) vs decoder layer "
                  f"{r['decoder_layer_step']:.0f}", flush=True)
            del case
    results["train"] = train_section(env, compiled=not args.smoke)
    t = results["train"]
    calls, ms = t["op_calls_per_step"], t["ms_per_step"]
    print(f"training step: ours {calls['ours']}, bare LM {calls['bare_lm']}: {t['ratio']:.2f}x; bucketed "
          f"{calls['ours_bucketed']}" + (f", compiled {calls['ours_compiled']} op calls" if t["compiled"] else "")
          + f"; CPU ms per step eager {ms['ours']:.1f}"
          + (f", compiled {ms['ours_compiled']:.1f} (compilation {t['compile_s']:.1f} s)" if t["compiled"] else ""))
    write_results(out_dir, "op_counts", results, markdown(results))


if __name__ == "__main__":
    main()
