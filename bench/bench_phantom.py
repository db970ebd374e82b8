"""Throughput of the phantom renderer on one core: prints images/s.

Run: ``OMP_NUM_THREADS=1 python -m bench.bench_phantom [--size 224] [--n 100] [--rounds 5]``

The finding sets follow the templated-mode distribution (about 40% normal), so the
figure is what a training run sees. The process is pinned to one core; the first
render of a size (grid set-up) is excluded. Each round renders the same ``n``
studies; the median round is the figure to quote, the best round shows what the
renderer does on an idle core (background load only ever slows a round down).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from flamingo_lib.data.phantom.render import render_phantom
from flamingo_lib.data.phantom.text import sample_findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--view", default="PA")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as promised
    rng = random.Random(0)
    sets = [sample_findings(rng) for _ in range(args.n)]
    render_phantom(sets[0], seed=0, image_size=args.size, view=args.view)  # warm-up
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for seed, findings in enumerate(sets):
            render_phantom(findings, seed=seed, image_size=args.size, view=args.view)
        rates.append(args.n / (time.perf_counter() - start))
    setting = f"{args.view}, {args.size} px, 1 core, {args.rounds} rounds of {args.n}"
    print(f"{statistics.median(rates):.1f} images/s median, {max(rates):.1f} best ({setting})")


if __name__ == "__main__":
    main()
