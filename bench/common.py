"""Shared benchmark machinery: devices, interleaved timing, the matmul roofline, baseline imports.

Every speed target is a *ratio* measured within one run: implementations are timed in
interleaved repetitions (A B C A B C ...) so that clock drift, thermal state and background load
hit all of them alike, and each is summarised by its median with min and max.
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
BASELINES_DIR = BENCH_DIR / ".baselines"


@dataclass
class Env:
    """Where and how a benchmark runs: ``device``, whether matmuls use bf16 autocast, and the clock.

    ``thread_clock`` (CPU runs, with one torch thread) times with the CPU time of the calling
    thread, which does all the work then (intra-op parallelism off; CPU autograd runs on the
    caller): time the thread spends descheduled by *other* processes is not counted, so a
    shared machine does not distort the ratios. The wall clock, with several threads, lets
    every other process on the cores into the figures (and OpenMP barriers amplify it).
    """

    device: torch.device
    bf16: bool = False
    thread_clock: bool = False

    def now(self) -> float:
        """Seconds on this run's clock (compare differences only)."""
        return time.thread_time() if self.thread_clock else time.perf_counter()

    @property
    def clock_name(self) -> str:
        return ("CPU time of the benchmarking thread (1 torch thread)" if self.thread_clock
                else f"wall clock ({torch.get_num_threads()} torch threads)" if self.device.type == "cpu"
                else "wall clock, synchronised")

    def sync(self) -> None:
        """Wait for queued kernels: without it a CUDA timer measures only the launch."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where asked for (GPU runs), else a no-op (fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def fp32(self) -> Iterator[None]:
        """Run the block in full fp32 even in a bf16 run (for correctness checks)."""
        bf16, self.bf16 = self.bf16, False
        try:
            yield
        finally:
            self.bf16 = bf16

    @property
    def dtype_name(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"


@dataclass
class Stats:
    """Seconds per call over the repetitions: median (the reported figure), min and max."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def interleaved(
    fns: dict[str, Callable[[], Any]], env: Env, reps: int, warmup: int = 1, self_timed: bool = False
) -> dict[str, Stats]:
    """Time each callable ``reps`` times, interleaved, after ``warmup`` untimed calls each.

    The order rotates every repetition so that no implementation always runs right after the
    same neighbour (which could leave it a warm or a cold cache). With ``self_timed`` each
    callable returns the seconds of the part it measures itself (e.g. decoding without the
    prefill) and that is the sample.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    env.sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            env.sync()
            start = env.now()
            result = fns[name]()
            env.sync()
            samples[name].append(float(result) if self_timed else env.now() - start)
    return {name: Stats.of(s) for name, s in samples.items()}


def matmul_fn(env: Env, size: int) -> tuple[Callable[[], Any], float]:
    """A square ``size``^3 matmul in the run's dtype (fp32 on CPU) and its FLOPs (2 n^3)."""
    dtype = torch.bfloat16 if env.bf16 else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(env.device, dtype)
    b = torch.randn(size, size, generator=g).to(env.device, dtype)
    return (lambda: a @ b), 2.0 * size**3


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(env: Env) -> dict[str, Any]:
    """CPU, cores, threads, library versions and (on CUDA) the GPU."""
    import os

    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(env.device),
        "dtype": env.dtype_name,
        "clock": env.clock_name,
    }
    if env.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(env.device)
    return info


def load_module_file(name: str, path: Path) -> ModuleType:
    """Import one source file as module ``name`` without running its package's ``__init__``.

    The baselines' package inits import their whole model stacks (open_clip, transformers
    versions of their day); only their block modules are needed here.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_baselines() -> dict[str, ModuleType]:
    """lucidrains' ``flamingo_pytorch.flamingo_pytorch`` and ``open_flamingo.src.helpers``.

    They live in ``bench/.baselines`` (``make bench`` installs them with ``pip --target``), put
    on ``sys.path`` only here: they are baselines, never dependencies of the library.

    Raises:
        ImportError: the folder is missing (run ``make bench`` or install
            ``bench/requirements-baselines.txt`` with ``--target bench/.baselines``).
    """
    if not BASELINES_DIR.is_dir():
        raise ImportError(f"{BASELINES_DIR} not found: pip install --no-deps --target {BASELINES_DIR} "
                          f"-r {BENCH_DIR / 'requirements-baselines.txt'}")
    if str(BASELINES_DIR) not in sys.path:
        sys.path.append(str(BASELINES_DIR))  # appended: never shadows the project's own packages
    return {
        "lucidrains": load_module_file("_bench_lucidrains", BASELINES_DIR / "flamingo_pytorch" / "flamingo_pytorch.py"),
        "open_flamingo": load_module_file("_bench_open_flamingo", BASELINES_DIR / "open_flamingo" / "src" / "helpers.py"),
    }


def baseline_versions() -> dict[str, str]:
    """Installed versions of the baseline packages, read from their dist-info folders."""
    versions = {}
    for dist in sorted(BASELINES_DIR.glob("*.dist-info")):
        name, _, version = dist.name[: -len(".dist-info")].rpartition("-")
        versions[name] = version
    return versions


def write_results(out_dir: Path, stem: str, results: dict[str, Any], text: str) -> None:
    """``out_dir/stem.json`` (the results) and ``out_dir/stem.md`` (their page), each written atomically;
    the page is printed too."""
    import json

    from flamingo_lib.io import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(out_dir / f"{stem}.md", text)
    print(text)
