"""Static-cache compiled decoding against eager decoding, side by side in one run.

    python -m bench.static_decoding            # tiny-random, CPU (~2 min with the compile): bench/static_decoding.md
    python -m bench.static_decoding --smoke    # fewer tokens, the eager backend (< 30 s): bench/.smoke/
    python -m bench.static_decoding --device cuda --bf16   # on a GPU: mode reduce-overhead (CUDA graphs)

Greedy decoding of a batch of tiny-random studies (the overhead-bound regime a GPU decodes in: a
step's cost is its op calls, not its FLOPs) with the dynamic cache (the default), with the static
cache eagerly, and with the static cache and the decoding step compiled by ``torch.compile``
(``transformers`` compiles it through ``compile_config``; on CUDA mode ``reduce-overhead``, one CUDA
graph per step). New tokens per second of wall time (median of ``--reps`` calls after a warm-up
call, which for the compiled row holds the compilation: reported apart), and whether every row
decoded the same tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import write_results


def _batch(processor: Any, studies: int) -> dict[str, torch.Tensor]:
    from PIL import Image

    films = [[Image.new("L", (224, 224), 40 + 20 * i)] for i in range(studies)]
    texts = ["<image>Findings:" if i % 2 else "Portable chest. <image>Findings:" for i in range(studies)]
    return processor(texts, films, padding_side="left")


def _timed(fn: Any, reps: int, device: str) -> tuple[float, float, torch.Tensor]:
    """(first call's seconds, median seconds of ``reps`` further calls, the last call's ids)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), out


def run(device: str = "cpu", bf16: bool = False, smoke: bool = False, studies: int = 4, new_tokens: int = 48,
        reps: int = 5) -> dict[str, Any]:
    """The three rows (module docstring) and their tokens per second."""
    from transformers import CompileConfig

    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor

    torch.manual_seed(0)
    config = FlamingoConfig.from_preset("tiny-random")
    model = FlamingoModel(config).to(device).eval()
    for name, parameter in model.named_parameters():  # open gates: the blocks do work at every step
        if name.endswith("_gate"):
            parameter.data.fill_(1.0)
    processor = FlamingoProcessor(config)
    batch = {k: v.to(device) for k, v in _batch(processor, studies).items()}
    new_tokens = 12 if smoke else new_tokens
    reps = 2 if smoke else reps
    common = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    on_cuda = device.startswith("cuda")
    compile_config = CompileConfig(backend="eager" if smoke else "inductor",
                                   mode="reduce-overhead" if on_cuda else None, fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # on CPU transformers would not compile by itself
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    rows = {}
    with autocast:
        for name, extra in (("dynamic cache, eager", {}), ("static cache, eager", {"cache_implementation": "static"}),
                            ("static cache, compiled step", {"cache_implementation": "static",
                                                             "compile_config": compile_config})):
            first, median, ids = _timed(lambda: model.generate(**batch, **common, **extra), reps, device)
            rows[name] = {"first_call_s": first, "median_s": median,
                          "tokens_per_s": studies * new_tokens / median, "ids": ids.tolist()}
    reference = rows["dynamic cache, eager"]["ids"]
    for row in rows.values():
        row["same_tokens"] = row.pop("ids") == reference
    base = rows["dynamic cache, eager"]["tokens_per_s"]
    for row in rows.values():
        row["vs_dynamic_eager"] = row["tokens_per_s"] / base
    compiled = rows["static cache, compiled step"]
    compiled["compile_s"] = compiled["first_call_s"] - compiled["median_s"]
    return {"device": torch.cuda.get_device_name(device) if on_cuda else "cpu", "bf16": bf16, "smoke": smoke,
            "studies": studies, "new_tokens": new_tokens, "reps": reps, "torch_threads": torch.get_num_threads(),
            "backend": compile_config.backend, "mode": compile_config.mode, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Static-cache compiled decoding", "",
             f"Command: `python -m bench.static_decoding{' --smoke' if results['smoke'] else ''}`; device "
             f"{results['device']}{', bf16' if results['bf16'] else ''}, {results['torch_threads']} torch threads; "
             f"tiny-random, {results['studies']} studies, {results['new_tokens']} new tokens each, greedy; median of "
             f"{results['reps']} calls after a first one. Compiled with {results['backend']}"
             f"{', mode ' + results['mode'] if results['mode'] else ''}.", "",
             "| decoding | new tokens/s | vs dynamic eager | first call (s) | same tokens |", "|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        lines.append(f"| {name} | {row['tokens_per_s']:.0f} | {row['vs_dynamic_eager']:.2f}x | "
                     f"{row['first_call_s']:.2f} | {'yes' if row['same_tokens'] else 'NO'} |")
    compiled = results["rows"]["static cache, compiled step"]
    lines += ["", f"Compilation: {compiled['compile_s']:.1f} s (the first compiled call less a later one)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default bench/ (smoke: bench/.smoke/)")
    args = parser.parse_args(argv)
    results = run(args.device, args.bf16, args.smoke)
    out = args.out or Path(__file__).parent / (".smoke" if args.smoke else "")
    write_results(out, "static_decoding", results, markdown(results))


if __name__ == "__main__":
    main()
