"""What a report costs to decode: greedy, beam search and findings-guided decoding, side by side in one run.

    python -m bench.decoding_cost --run runs/demo --studies 32 --out DIR   # DIR/decoding_cost.md + .json

On a trained run's model (``--model``, default ``RUN/train/model``) and the first ``--studies`` test
studies of the run (opened with the settings it was trained with, ``Pipeline.from_run``), the seconds
per report of

- greedy decoding, as the pipeline's evaluation decodes (``generate_in_batches``, its batch size 8);
- beam search with ``--beams`` beams (default 4), the same way;
- findings-guided decoding's candidates (:func:`~flamingo_lib.inference.guided_decoding.sample_candidates`:
  the greedy report and the heads' probabilities, ``guided_candidates`` sampled reports at
  ``guided_temperature`` from the run's eval settings, and the labeler's reading of every candidate),
  at its own batch size (4, as the pipeline calls it), and the pick among them at the run's threshold
  (``eval/guided_decoding.json``; 0.5 for a run not yet evaluated). Picking a threshold is cheap in itself (the pick re-run over a
  grid), but it needs the candidates of the val studies it is picked on: the pipeline's evaluation
  pays the guided row once more for each of its ``guided_val_samples`` val studies.

Wall clock with ``--threads`` torch threads (default 2) beside the process's CPU time: on a
shared machine the wall clock counts time spent descheduled, the CPU time does not (with several
threads it adds their times up). After a warm-up call the rows are timed in ``--reps`` interleaved
repetitions (greedy, beam, guided, greedy, ...: background load hits all of them alike), each
summarised by its median with min and max; ratios are of the medians, to greedy's wall clock.
Decoding lengths follow the model, so the figures are the model's, not only the method's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import write_results

#: The batch size the pipeline's evaluation decodes greedy and beam-search reports at
#: (``flamingo_lib.evaluation.evaluate.evaluate``'s default, which ``Pipeline.evaluate`` keeps).
EVAL_BATCH_SIZE = 8
#: The batch size findings-guided decoding samples at (``sample_candidates``' default, which the pipeline keeps).
GUIDED_BATCH_SIZE = 4


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, what ``fn`` returned)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def run(run_dir: str | Path, model_dir: str | Path | None = None, studies: int = 32, beams: int = 4,
        threads: int = 2, reps: int = 3) -> dict[str, Any]:
    """The three rows (module docstring), per report, and their ratio to greedy."""
    from flamingo_lib.inference.batched import generate_in_batches
    from flamingo_lib.inference.guided_decoding import GUIDED_SETUP_FILE, choose, sample_candidates
    from flamingo_lib.modeling.model import FlamingoModel
    from flamingo_lib.pipeline.steps import Pipeline
    from flamingo_lib.processing.processor import FlamingoProcessor

    torch.set_num_threads(threads)
    pipeline = Pipeline.from_run(run_dir, progress=False)
    model_dir = Path(model_dir) if model_dir is not None else Path(run_dir) / "train" / "model"
    model, processor = FlamingoModel.from_pretrained(model_dir).eval(), FlamingoProcessor.from_pretrained(model_dir)
    test = pipeline.splits["test"]
    samples = [test[i] for i in range(min(studies, len(test)))]
    s, e = pipeline.settings, pipeline.settings.eval
    setup_file = Path(run_dir) / "eval" / GUIDED_SETUP_FILE
    threshold = json.loads(setup_file.read_text())["threshold"] if setup_file.exists() else 0.5
    decode = dict(max_new_tokens=e.max_new_tokens, progress=False)

    # the first call pays one-off costs (lazy imports, allocator growth) that no row should carry
    generate_in_batches(model, processor, samples[:2], batch_size=2, **decode)
    calls: dict[str, tuple[str, int, Callable[[], list[str]]]] = {
        "greedy": ("", EVAL_BATCH_SIZE, lambda: generate_in_batches(
            model, processor, samples, batch_size=EVAL_BATCH_SIZE, **decode).reports),
        f"beam search ({beams} beams)": (f"{beams} beams", EVAL_BATCH_SIZE, lambda: generate_in_batches(
            model, processor, samples, batch_size=EVAL_BATCH_SIZE, num_beams=beams, **decode).reports),
        # the pick is timed with the sampling: it is part of every guided report (and costs next to nothing)
        "findings-guided": (f"greedy + {e.guided_candidates} samples at temperature {e.guided_temperature}, heads, "
                            f"labeler; pick at threshold {threshold}", GUIDED_BATCH_SIZE, lambda: choose(
            sample_candidates(model, processor, samples, e.guided_candidates, batch_size=GUIDED_BATCH_SIZE,
                              seed=s.train.seed, temperature=e.guided_temperature, **decode), threshold)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    words: dict[str, float] = {}
    for _ in range(reps):
        for name, (_, _, call) in calls.items():
            wall, cpu, reports = _timed(call)
            times[name].append((wall, cpu))
            words[name] = sum(len(r.split()) for r in reports) / len(samples)
    rows: dict[str, dict[str, Any]] = {}
    for name, (how, batch_size, _) in calls.items():
        walls, cpus = [t[0] / len(samples) for t in times[name]], [t[1] / len(samples) for t in times[name]]
        rows[name] = {"settings": how, "batch_size": batch_size, "wall_s_per_report": statistics.median(walls),
                      "wall_s_per_report_min": min(walls), "wall_s_per_report_max": max(walls),
                      "cpu_s_per_report": statistics.median(cpus), "mean_words": words[name]}
    for row in rows.values():
        row["vs_greedy"] = row["wall_s_per_report"] / rows["greedy"]["wall_s_per_report"]
    return {"run_dir": str(run_dir), "model_dir": str(model_dir), "studies": len(samples), "threads": threads,
            "reps": reps, "max_new_tokens": e.max_new_tokens, "device": "cpu", "load_average": list(os.getloadavg()),
            "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# What a report costs to decode", "",
             f"Command: `python -m bench.decoding_cost --run {results['run_dir']} --studies {results['studies']} "
             f"--threads {results['threads']} --reps {results['reps']}`; model `{results['model_dir']}`, the first "
             f"{results['studies']} test studies, at most {results['max_new_tokens']} new tokens, "
             f"{results['threads']} torch threads on {results['device']}, load average at the end "
             f"{results['load_average'][0]:.2f}; after a warm-up call, "
             f"median (min-max) of {results['reps']} interleaved calls per row.", "",
             "| decoding | how | batch | s / report (wall) | s / report (CPU) | vs greedy (wall) | words / report |",
             "|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        lines.append(f"| {name} | {row['settings']} | {row['batch_size']} | {row['wall_s_per_report']:.3f} "
                     f"({row['wall_s_per_report_min']:.3f}-{row['wall_s_per_report_max']:.3f}) | "
                     f"{row['cpu_s_per_report']:.3f} | {row['vs_greedy']:.1f}x | {row['mean_words']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo", help="a trained pipeline run (its test studies and settings)")
    parser.add_argument("--model", default=None, help="the model directory (default RUN/train/model)")
    parser.add_argument("--studies", type=int, default=32)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per row, interleaved")
    parser.add_argument("--out", type=Path, default=None, help="default bench/")
    args = parser.parse_args(argv)
    results = run(args.run, args.model, args.studies, args.beams, args.threads, args.reps)
    out = args.out or Path(__file__).parent
    write_results(out, "decoding_cost", results, markdown(results))


if __name__ == "__main__":
    main()
