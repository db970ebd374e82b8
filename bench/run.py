"""Run the benchmarks and write ``RESULTS.md`` and ``results.json``.

    python -m bench.run                      # full CPU run (what `make bench` does)
    python -m bench.run --smoke              # toy sizes, one repetition (`make bench-smoke`)
    python -m bench.run --device cuda --bf16 # the GPU run (bench/gpu.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import blocks, generation, metrics_cost, precision, report, training
from bench.common import BENCH_DIR, Env, baseline_versions, machine_info
from bench.models import SMOKE_BLOCKS, biomed_size_config, make_biogpt_size_lm_dir, make_vit_dir
from flamingo_lib.io import write_text_atomic

REPO = BENCH_DIR.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Flamingo benchmarks (see bench/README.md)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, one repetition: checks the code runs")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5 blocks, 3 others; smoke 1)")
    parser.add_argument("--block-reps", type=int, default=None, help="repetitions of the blocks section (default --reps)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default bench/, smoke bench/.smoke/)")
    parser.add_argument("--sections", default="blocks,generation,features,memory,precision,metrics")
    parser.add_argument("--compile", action="store_true",
                        help="also time our blocks under torch.compile, and compile the memory/MFU training step "
                             "(flamingo_lib.modeling.compile.compile_blocks)")
    parser.add_argument("--train-batch", type=int, default=None, help="batch of the memory step (default 2 CPU, 16 GPU)")
    parser.add_argument("--timed-steps", type=int, default=None, help="steps timed after the memory step (1 CPU, 5 GPU)")
    parser.add_argument("--frozen-half", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the memory step with FlamingoConfig.frozen_dtype='bfloat16'")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 with the thread clock, else torch's: the cores)")
    parser.add_argument("--clock", choices=("thread", "wall"), default=None,
                        help="CPU: 'thread' (default) = CPU time of the one benchmarking thread, robust on a shared "
                             "machine; 'wall' = wall clock with --threads threads. CUDA: always wall")
    return parser.parse_args(argv)


def generation_cases(args: argparse.Namespace, lm_dir: Path, vit_dir: Path) -> list[generation.Case]:
    """tiny-random always; the BioGPT-size LM (biomed preset sizes) in full runs."""
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.modeling.backbones.language import load_language_model

    tiny = FlamingoConfig.from_preset("tiny-random")
    cases = [generation.Case("tiny-random", FlamingoModel(tiny), FlamingoProcessor(tiny),
                             load_language_model(tiny.lm, tiny.seed), 4 if args.smoke else 32,
                             (1, 2) if args.smoke else (1, 8), "pixel_values",
                             "tiny-random preset (xattn_every=1), images through the tiny ViT",
                             min_reps=1 if args.smoke else 21)]
    if not args.smoke:
        big = biomed_size_config(lm_dir, vit_dir)
        cases.append(generation.Case(
            "biogpt-size", FlamingoModel(big), FlamingoProcessor(big), load_language_model(str(lm_dir)), 16, (1, 8),
            "visual_features",
            "random BioGPT-size LM (347M) + random ViT-B/16 tower, biomed defaults: xattn_every=1, "
            "8 heads x 64, ff_mult 4, 64 latents; prompt given resampled features",
            min_reps=5))  # with 3, one slow repetition (3.8 against 5.1 tok/s) moved the median ratio 88%-99%
    return cases


def run_features(env: Env, args: argparse.Namespace, vit_dir: Path, reps: int) -> dict[str, Any]:
    """Tiny LM + a ViT-B/16 tower (full) or the tiny-random preset (smoke)."""
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.modeling.config import TINY_RANDOM_LM

    if args.smoke:
        config = FlamingoConfig.from_preset("tiny-random")
    else:  # the resampler and cross-attention at their defaults, the LM tiny (the ViT dominates)
        config = FlamingoConfig(lm=TINY_RANDOM_LM, clip_model_type=f"local-dir:{vit_dir}")
    model = FlamingoModel(config)
    out = training.run_feature_cache(env, model, FlamingoProcessor(config), 2 if args.smoke else 4,
                                     32 if args.smoke else 128, reps)
    out["config"] = ("tiny-random preset" if args.smoke else
                     "tiny-random LM (64 wide, 2 layers) + random ViT-B/16 tower; resampler and cross-attention "
                     "at the defaults (depth 6, 8 x 64 heads, 64 latents, ff_mult 4)")
    return out


def run_memory(args: argparse.Namespace, lm_dir: Path, vit_dir: Path, frozen_dtype: str = "float32") -> dict[str, Any]:
    """``bench.memory`` in a fresh process: its peak memory is then this step's alone."""
    cuda = args.device.startswith("cuda")
    batch = args.train_batch or (16 if cuda else 2)
    timed = args.timed_steps if args.timed_steps is not None else (5 if cuda else 1)
    cmd = [sys.executable, "-m", "bench.memory", "--lm-dir", str(lm_dir), "--vit-dir", str(vit_dir),
           "--device", args.device, "--batch", str(2 if args.smoke else batch), "--text", "32" if args.smoke else "128",
           "--timed-steps", str(timed), "--frozen-dtype", frozen_dtype]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--compile"] if args.compile else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--thread-clock"] if not cuda and args.clock != "wall" else []
    cmd += ["--smoke"] if args.smoke else []
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.memory failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Section:
    """Records a section's wall time, the load average at its start and the CPU share the run
    got (process + child CPU seconds / (wall x torch threads)): well under 100% means other
    work shared the cores, and the timings of that section are the less trustworthy."""

    def __init__(self, store: dict[str, Any], name: str) -> None:
        self.store, self.name = store, name

    def __enter__(self) -> "Section":
        self.load, self.wall, self.cpu = os.getloadavg()[0], time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        share = (self._cpu() - self.cpu) / (wall * torch.get_num_threads())
        self.store[self.name] = {"wall_s": wall, "load_avg_1min_at_start": self.load, "cpu_share": share}

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    thread_clock = not args.device.startswith("cuda") and args.clock != "wall"
    if thread_clock and args.threads not in (None, 1):
        raise SystemExit("--clock thread times one thread: use --threads 1, or --clock wall")
    args.threads = 1 if thread_clock else args.threads
    if args.threads:
        torch.set_num_threads(args.threads)
    env = Env(torch.device(args.device), bf16=args.bf16, thread_clock=thread_clock)
    out_dir = args.out or (BENCH_DIR / ".smoke" if args.smoke else BENCH_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    block_reps = args.block_reps or args.reps or (1 if args.smoke else 5)
    reps = args.reps or (1 if args.smoke else 3)
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": os.environ.get("BENCH_COMMAND") or shlex.join([Path(sys.executable).name, "-m", "bench.run", *(argv or sys.argv[1:])]),
        "python_command": shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])]),
        "smoke": args.smoke, "machine": machine_info(env), "baselines": baseline_versions(),
        "load_avg_start": os.getloadavg(), "reps": {"blocks": block_reps, "others": reps}, "sections": {},
    }

    def log(msg: str) -> None:
        print(f"[bench {time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="flamingo-bench-") as tmp:
        log("building the random BioGPT-size LM and ViT-B/16 directories")
        lm_dir = make_biogpt_size_lm_dir(Path(tmp) / "lm", smoke=args.smoke)
        vit_dir = make_vit_dir(Path(tmp) / "vit", smoke=args.smoke)

        def run_blocks() -> dict[str, Any]:
            sizes = blocks.BlockSizes.smoke() if args.smoke else blocks.BlockSizes()
            if env.device.type == "cuda" and not args.smoke:
                sizes = dataclasses.replace(sizes, matmul=8192)  # 4096^3 is too short to reach a GPU's peak
            out = blocks.run(env, sizes, block_reps, compiled=args.compile)
            missed = [r for r in out["rows"] if (r["impl"] == "ours" and r["block"] != "xattn_dv=dim"
                                                 and r["frac_matmul"] < 0.9)
                      or (r["impl"] != "ours+compile" and r["ours_speedup"] < 1.0)]
            if not args.smoke and missed:
                log("   a block target is missed: profiling ours")
                out["profiles"] = [blocks.profile_ours(env, sizes, label) for label in ("resampler", "xattn")]
            return out

        def run_generation() -> list[dict[str, Any]]:
            cases = generation_cases(args, lm_dir, vit_dir)
            try:
                out = generation.run(env, cases, reps)
                if any(g["frac_of_bound"] < 0.9 for g in out):  # where a decoded token's time goes
                    log("   below 90% of the bound: profiling a decode, ours vs the bare LM")
                    for case in cases:
                        for g in out:
                            if g["case"] == case.name and g["batch"] == 1:
                                g["profile"] = generation.profile_decode(env, case, 1)
                return out
            finally:
                del cases[:]
                gc.collect()  # give the big models' memory back before the next section

        steps = {"blocks": ("1. blocks", run_blocks), "generation": ("2. generation", run_generation),
                 "features": ("3. feature cache", lambda: run_features(env, args, vit_dir, reps)),
                 "memory": ("4. memory (fresh process)", lambda: run_memory(args, lm_dir, vit_dir))}
        if args.frozen_half and "memory" in sections:  # the same step with the frozen parts in bfloat16
            steps["memory_frozen_bf16"] = ("4b. memory, frozen LM and ViT in bfloat16 (fresh process)",
                                           lambda: run_memory(args, lm_dir, vit_dir, "bfloat16"))
            sections.add("memory_frozen_bf16")
        steps["precision"] = ("2b. decoding precision: float32, frozen bf16, all bf16",
                              lambda: precision.run(env, lm_dir, vit_dir, (1, 2) if args.smoke else (1, 8),
                                                    4 if args.smoke else 16, reps if args.smoke else max(reps, 5),
                                                    **(SMOKE_BLOCKS if args.smoke else {})))

        steps["metrics"] = ("5. scoring cost per 1,000 reports",
                            lambda: metrics_cost.run(env, 50 if args.smoke else 1000, reps))

        def write() -> None:
            """RESULTS.md and results.json of the sections run so far: a run stopped by a time
            limit (bench/gpu.sh's on a lent machine) keeps what it measured."""
            results["load_avg_end"] = os.getloadavg()
            results["wall_s"] = time.perf_counter() - started
            results["targets"] = report.targets(results)
            # atomic: a time limit may stop the run mid-write, and a torn file would lose the sections before
            write_text_atomic(out_dir / "results.json", json.dumps(results, indent=1, default=str) + "\n")
            write_text_atomic(out_dir / "RESULTS.md", report.markdown(results))

        results["sections_requested"] = [name for name in steps if name in sections]
        for name, (title, fn) in steps.items():
            if name in sections:
                log(title)
                with Section(results["sections"], name):
                    results[name] = fn()
                write()
    log(f"wrote {out_dir / 'RESULTS.md'} and results.json")
    print(report.summary_table(results))


if __name__ == "__main__":
    main()
