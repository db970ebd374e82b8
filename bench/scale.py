"""How the data path grows with MIMIC-CXR's size: CPU time, peak memory and films decoded per stage.

    python -m bench.scale                      # N = 1k, 10k, 50k and 227,835 studies (make bench-scale)
    python -m bench.scale --sizes 500 2000     # a quick look

For each N a synthetic tree in the real layout is built (:mod:`bench.scale_tree`: hard-linked films and
reports, gzipped CSVs; removed afterwards), and each stage runs in a fresh process (its own peak RSS,
nothing warm from another stage): constructing the three splits, the first batch, the feature-cache
build and a cache's open (and random reads), one training step's data time, the evaluation's
baselines (most frequent report, nearest neighbour), and ``import flamingo_lib``. Each stage counts
the films it decodes (a hook on the MIMIC-CXR loader's ``load_image``) against those it uses.

Targets: every stage linear or better in N (fitted exponent of its CPU time <= 1.1), peak RSS of any
stage at the largest N <= 4 GB above the same process after its imports, no film decoded that the
stage does not use. Results: ``bench/scale/RESULTS.md`` and ``results.json``, rewritten after each N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "scale"
SIZES = (1_000, 10_000, 50_000, 227_835)
STAGES = ("construct", "first_batch", "cache_build", "cache_open", "train_step", "baselines")
EXPONENT_TARGET, RSS_TARGET_MB = 1.1, 4096
STEPS, READS, BATCH = 10, 2000, 16


# ------------------------------------------------------------------------------ one stage, in a child
def _rss_mb() -> float:
    """This process's resident memory now (MiB)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run_stage(stage: str, tree: Path, work: Path) -> dict[str, Any]:
    """Run ``stage`` on ``tree`` in this process; what it measured, as JSON-able values."""
    if stage == "import":
        start = time.process_time()
        import flamingo_lib  # noqa: F401

        return {"cpu_s": time.process_time() - start, "rss_mb": _rss_mb()}
    import torch

    import flamingo_lib.data.datasets.mimic as mimic
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.data.feature_cache import FeatureCache
    from flamingo_lib.data.study_index import image_counts, iter_films, study_reports
    from flamingo_lib.evaluation.evaluate import image_descriptors, most_frequent_report, nearest_neighbour_reports
    from flamingo_lib.training.trainer import ReportCollator, TrainConfig, Trainer

    torch.set_num_threads(1)
    decoded = [0]
    load_image = mimic.load_image

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        decoded[0] += 1
        return load_image(*args, **kwargs)

    mimic.load_image = counting_load
    after_import = _rss_mb()
    open_split = lambda split: mimic.MimicCXR(tree / "jpg", split=split, reports_root=tree / "reports")  # noqa: E731
    torch.manual_seed(0)  # the same random encoder in every stage: one feature cache for all of them
    from flamingo_lib.observations import FINDINGS_OBSERVATIONS

    # the recipe's model (a findings head: its targets are part of a training step's data)
    config = FlamingoConfig.from_preset("tiny-random", findings_head=list(FINDINGS_OBSERVATIONS))
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    result: dict[str, Any] = {}
    start = time.process_time()
    if stage == "construct":
        splits = {}
        for split in ("train", "validate", "test"):
            begin = time.process_time()
            splits[split] = open_split(split)
            result[f"{split}_s"] = time.process_time() - begin
        used = 0
    elif stage == "first_batch":
        train = open_split("train")
        start = time.process_time()
        ReportCollator(processor, None)([train[i] for i in range(BATCH)])
        used = BATCH
    elif stage == "cache_build":
        splits = [open_split(split) for split in ("train", "validate", "test")]
        start = time.process_time()
        stats = FeatureCache(work / "features", model, processor).build(
            iter_films(splits), progress=False, total=sum(sum(image_counts(s)) for s in splits))
        used = stats.computed + stats.reused
        result["computed"] = stats.computed
    elif stage == "cache_open":
        used = 0
        result |= _cache_open(FeatureCache, model, processor, work, sum(image_counts(open_split("train"))))
        start = time.process_time() - result["open_s"]  # cpu_s: the open itself
    elif stage == "train_step":
        train = open_split("train")
        cache = FeatureCache(work / "features", model, processor)
        begin = time.process_time()
        trainer = Trainer(model, train, [], ReportCollator(processor, cache),
                          TrainConfig(out_dir=str(work / "run"), batch_size=BATCH, progress=False))
        result["setup_s"] = time.process_time() - begin
        start = time.process_time()
        for _ in range(STEPS):
            trainer.collator([trainer.train_set[i] for i in trainer._next_indices()])
        used = STEPS * BATCH
    elif stage == "baselines":
        train, test = open_split("train"), open_split("test")
        cache = FeatureCache(work / "features", model, processor)
        start = time.process_time()
        reports = study_reports(train)
        most_frequent_report(reports)
        nearest_neighbour_reports(image_descriptors(model, processor, train, cache), reports,
                                  image_descriptors(model, processor, test, cache))
        used = len(train) + len(test)
    else:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    result["cpu_s"] = time.process_time() - start
    if stage == "train_step":
        result["cpu_s"] /= STEPS  # per step
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result | {"peak_rss_mb": peak, "above_import_mb": peak - after_import, "decoded": decoded[0],
                     "used": used}


def _cache_open(cache_class: Any, model: Any, processor: Any, work: Path, n_films: int) -> dict[str, float]:
    """A cache of ``n_films`` entries in shards of 256, as a build writes them (zero tokens of the
    encoder's shape; not timed); then the CPU time of opening it and of ``READS`` random reads."""
    import torch
    from safetensors.torch import save_file

    cache = cache_class(work / "opened", model, processor)
    with torch.no_grad():
        shape = model.flamingo.encode_visuals(processor.preprocess_images([_blank()])[:, None])[0, 0].shape
    keys = [f"{i:032x}" for i in range(n_films)]
    for shard, start in enumerate(range(0, n_films, 256)):
        tensors = {key: torch.zeros(shape, dtype=torch.float16) for key in keys[start:start + 256]}
        save_file(tensors, cache.directory / f"shard-{shard:020d}-0-{shard}.safetensors")
    begin = time.process_time()
    opened = cache_class(work / "opened", model, processor)
    open_s = time.process_time() - begin
    rng = np.random.default_rng(0)
    begin = time.process_time()
    for index in rng.integers(0, n_films, READS):
        opened.get_by_key(keys[index])
    return {"open_s": open_s, "read_us": (time.process_time() - begin) / READS * 1e6, "entries": len(opened)}


def _blank() -> Any:
    from PIL import Image

    return Image.new("L", (64, 64))


# ------------------------------------------------------------------------------------------ runner
def _child(stage: str, tree: Path, work: Path) -> dict[str, Any]:
    """One stage in a fresh process; its result (its stderr tail on failure)."""
    process = subprocess.run([sys.executable, "-m", "bench.scale", "--stage", stage, "--tree", str(tree),
                              "--work", str(work)], capture_output=True, text=True, cwd=BENCH_DIR.parent,
                             env=os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    if process.returncode:
        raise RuntimeError(f"stage {stage} failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def exponent(sizes: list[int], values: list[float]) -> float:
    """The slope of log(value) against log(size): 1 is linear, 0 constant."""
    values = np.maximum(np.asarray(values, dtype=float), 1e-6)
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def _report(results: dict[str, Any]) -> str:
    sizes = [int(n) for n in results["sizes"]]
    lines = ["# The data path at MIMIC-CXR's size", "", f"Command: `{results['command']}`; {results['machine']}.",
             "One process per stage, one torch thread; CPU seconds of the stage's own work (train_step: per step; "
             "cache_open: opening the cache, with the mean CPU time of a random read beside it). A film is used "
             "when the stage needs its pixels or its cached features (which are found by the film's content hash, "
             "so train_step decodes the films of its batches).", "",
             "| stage | " + " | ".join(f"N={n:,}" for n in sizes) + " | exponent | peak RSS above imports at "
             f"N={sizes[-1]:,} | films decoded / used |", "|---|" + "---|" * (len(sizes) + 3)]
    verdicts = []
    for stage in STAGES:
        rows = [results["runs"][str(n)].get(stage) for n in sizes]
        if any(row is None for row in rows):
            continue
        slope = exponent(sizes, [row["cpu_s"] for row in rows]) if len(sizes) > 1 else float("nan")
        last = rows[-1]
        decodes_ok = all(row["decoded"] <= row["used"] for row in rows)
        extra = f" (reads {last['read_us']:.0f} us)" if "read_us" in last else ""
        lines.append(f"| {stage} | " + " | ".join(f"{row['cpu_s']:.3g} s" for row in rows)
                     + f"{extra} | {slope:.2f} | {last['above_import_mb']:.0f} MiB | {last['decoded']:,} / "
                       f"{last['used']:,} |")
        verdicts.append((stage, slope <= EXPONENT_TARGET or len(sizes) < 2, last["above_import_mb"] <= RSS_TARGET_MB,
                         decodes_ok))
    imports = [results["runs"][str(n)]["import"] for n in sizes]
    lines += ["", f"`import flamingo_lib`: {np.median([r['cpu_s'] for r in imports]):.2f} s CPU, "
              f"{np.median([r['rss_mb'] for r in imports]):.0f} MiB resident.", "",
              f"Construction per split at N={sizes[-1]:,}: " + ", ".join(
                  f"{split} {results['runs'][str(sizes[-1])]['construct'][f'{split}_s']:.2f} s"
                  for split in ("train", "validate", "test")) + ".", "",
              "Tree: " + ", ".join(f"N={n:,}: {results['trees'][str(n)]['films']:,} films, "
                                   f"{results['trees'][str(n)]['disk_mb']:.0f} MB" for n in sizes) + ".", "",
              "## Targets", ""]
    for stage, linear, memory, decodes in verdicts:
        lines.append(f"- {stage}: exponent <= {EXPONENT_TARGET}: {'met' if linear else 'MISSED'}; RSS <= "
                     f"{RSS_TARGET_MB} MiB above imports: {'met' if memory else 'MISSED'}; no film decoded it does not "
                     f"use: {'met' if decodes else 'MISSED'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workdir", help="where the trees are built (default: a temporary folder)")
    parser.add_argument("--out", default=str(OUT_DIR))
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(_run_stage(args.stage, Path(args.tree), Path(args.work))))
        return
    from bench.common import cpu_model
    from bench.scale_tree import build_tree, disk_bytes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": os.environ.get("BENCH_COMMAND", "python -m bench.scale " + " ".join(
        sys.argv[1:])), "machine": f"{cpu_model()}, {os.cpu_count()} cores", "sizes": [], "runs": {}, "trees": {}}
    base = Path(tempfile.mkdtemp(prefix="flamingo-scale-", dir=args.workdir))
    try:
        for n in sorted(args.sizes):
            tree, work = base / f"tree-{n}", base / f"work-{n}"
            work.mkdir(parents=True)
            begin = time.perf_counter()
            counts = build_tree(tree, n)
            results["trees"][str(n)] = counts | {"disk_mb": disk_bytes(tree) / 1e6,
                                                 "build_s": time.perf_counter() - begin}
            print(f"N={n:,}: tree of {counts['films']:,} films built in {time.perf_counter() - begin:.0f} s", flush=True)
            runs = results["runs"][str(n)] = {}
            for stage in ("import", *STAGES):
                runs[stage] = _child(stage, tree, work)
                print(f"  {stage}: {runs[stage]['cpu_s']:.3g} s CPU, decoded {runs[stage].get('decoded', 0):,}",
                      flush=True)
            shutil.rmtree(tree)
            shutil.rmtree(work)
            results["sizes"].append(n)
            (out / "results.json").write_text(json.dumps(results, indent=1))
            (out / "RESULTS.md").write_text(_report(results))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print((out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
