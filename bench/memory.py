"""Benchmark 4: memory (and time) of a training step at the ``biomed`` sizes.

Runs in a fresh process (``python -m bench.memory ...``, started by the runner) so that the peak
resident set belongs to this model and step alone, and prints one JSON object.

Peak memory: on CPU the resident set is sampled every 2 ms by a thread during the first step
(the one that also allocates AdamW's state), and the process-lifetime peak (``ru_maxrss``) is
reported beside it; on CUDA ``torch.cuda.max_memory_allocated`` over the step.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.common import Env, Stats, interleaved, machine_info, matmul_fn
from bench.models import SMOKE_BLOCKS, biomed_size_config
from bench.training import make_step, optimizer_for, step_flops, train_batch, vit_shape
from flamingo_lib import FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.compile import compile_blocks


class RssSampler:
    """Highest resident set size seen while the ``with`` block runs."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> "RssSampler":
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def measure(lm_dir: Path, vit_dir: Path, env: Env, batch: int, text: int, timed_steps: int,
            smoke: bool = False, compiled: bool = False, frozen_dtype: str = "float32") -> dict[str, Any]:
    """Build the model, run one step measuring memory, then ``timed_steps`` steps for speed.

    ``frozen_dtype``: ``FlamingoConfig.frozen_dtype``, the dtype the frozen LM and ViT are held in.

    With ``compiled`` every block is compiled (``flamingo_lib.modeling.compile.compile_blocks``): the
    first step then includes the compilation, and one more untimed step precedes the timed ones.
    """
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    config = biomed_size_config(lm_dir, vit_dir, frozen_dtype=frozen_dtype, **(SMOKE_BLOCKS if smoke else {}))
    model = FlamingoModel(config).to(env.device).train()
    compiled_blocks = compile_blocks(model) if compiled else []
    processor = FlamingoProcessor(config)
    inputs = train_batch(processor, batch, text, env)
    optimizer = optimizer_for(model)
    step = make_step(model, optimizer, inputs, env)

    trainable = sum(p.numel() for p in model.parameters_trainable())
    total = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {
        "smoke": smoke, "batch": batch, "images": 2, "text_tokens": inputs["input_ids"].shape[1],
        "xattn_every": config.xattn_every, "params_total": total, "params_trainable": trainable,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        # AdamW keeps exp_avg and exp_avg_sq, each the size of its parameter, for trainable ones.
        "adamw_state_bytes_analytic": 2 * sum(p.numel() * p.element_size() for p in model.parameters_trainable()),
        "rss_before_model_bytes": rss_start, "compiled_blocks": len(compiled_blocks), "frozen_dtype": frozen_dtype,
        "frozen_param_bytes": sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad),
    }
    if env.device.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_allocated_before_step_bytes"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = env.now()
        step()
        torch.cuda.synchronize()
        out["first_step_s"] = env.now() - start
        out["cuda_peak_step_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out["rss_before_step_bytes"] = proc.memory_info().rss
        with RssSampler() as sampler:
            start = env.now()
            step()
            out["first_step_s"] = env.now() - start
        out["rss_peak_step_bytes"] = sampler.peak
        out["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out["adamw_state_bytes_measured"] = sum(
        t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
        if torch.is_tensor(t) and t.ndim > 0)  # skips the scalar `step` counters

    if compiled:
        step()  # any recompilation (e.g. after the optimiser state appeared) happens here, untimed
    samples = []
    for _ in range(timed_steps):
        env.sync()
        start = env.now()
        step()
        env.sync()
        samples.append(env.now() - start)
    # The roofline measured here and now, so the step's fraction of it is a same-time ratio.
    mm, mm_flops = matmul_fn(env, 512 if smoke else (8192 if env.device.type == "cuda" else 4096))
    out["matmul_gflops"] = mm_flops / interleaved({"mm": mm}, env, reps=3)["mm"].median / 1e9
    vit, tokens = vit_shape(model)
    fl = step_flops(model, batch, out["text_tokens"], tokens, cached=False, vit=vit)
    out["step_gflop"] = {k: v / 1e9 for k, v in fl.items()}
    if samples:
        out["step_time"] = Stats.of(samples).as_dict()
    # Steady-state steps when timed (GPU), else the measured first step (CPU: one step is long).
    seconds = out["step_time"]["median"] if samples else out.get("first_step_s")
    if seconds:
        out["step_tflops_achieved"] = fl["total"] / seconds / 1e12
    out["machine"] = machine_info(env)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-dir", type=Path, required=True)
    parser.add_argument("--vit-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text", type=int, default=128)
    parser.add_argument("--timed-steps", type=int, default=0, help="steps timed after the measured one")
    parser.add_argument("--smoke", action="store_true", help="the tiny-random block sizes")
    parser.add_argument("--compile", action="store_true", help="compile every block (torch.compile)")
    parser.add_argument("--frozen-dtype", default="float32", help="FlamingoConfig.frozen_dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--thread-clock", action="store_true", help="time with the thread's CPU time (1 thread)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = Env(torch.device(args.device), bf16=args.bf16, thread_clock=args.thread_clock)
    print(json.dumps(measure(args.lm_dir, args.vit_dir, env, args.batch, args.text, args.timed_steps, args.smoke,
                              args.compile, args.frozen_dtype)))


if __name__ == "__main__":
    main()
