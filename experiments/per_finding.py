"""Where each system's findings F1 is won and lost, finding by finding.

Reads a run's test generations (``eval/generations.jsonl``: the reference and every system's
report per study) and, per rendered observation, counts for each system the reports that state it
(the labeler reads it positive: 1.0), and their true positives, false positives and false
negatives against the image truth (the phantom's labels, read without rendering a film) and
against the labeler's reading of the reference report: the per-finding side of the micro-F1s
``make demo`` prints.

    python -m experiments.per_finding runs/demo
    python -m experiments.per_finding runs/demo --systems "flamingo, findings-guided" --csv out.csv

Seconds; writes nothing into the run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS

Labels = Mapping[str, Any]


def _positive(labels: Labels, observation: str) -> bool:
    return labels.get(observation) == 1.0


def per_finding_counts(stated: Sequence[Labels], truth: Sequence[Labels],
                       observations: Sequence[str] = RENDERED_OBSERVATIONS) -> pd.DataFrame:
    """One row per observation: positives (in ``truth``), stated, tp, fp, fn; a last row "all".

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(stated) != len(truth):
        raise ValueError(f"{len(stated)} read reports but {len(truth)} truths")
    rows = []
    for obs in observations:
        pairs = [(_positive(s, obs), _positive(t, obs)) for s, t in zip(stated, truth)]
        rows.append({"finding": obs, "positives": sum(t for _, t in pairs), "stated": sum(s for s, _ in pairs),
                     "tp": sum(s and t for s, t in pairs), "fp": sum(s and not t for s, t in pairs),
                     "fn": sum(t and not s for s, t in pairs)})
    frame = pd.DataFrame(rows).set_index("finding")
    frame.loc["all"] = frame.sum()
    return frame


def micro_f1(counts: pd.DataFrame) -> float:
    """Micro-F1 of a :func:`per_finding_counts` table (its "all" row)."""
    tp, fp, fn = (int(counts.loc["all", c]) for c in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def counts_markdown(counts: pd.DataFrame) -> str:
    """A markdown table of a :func:`per_finding_counts` table (by hand: pandas' ``to_markdown``
    needs tabulate, which is not a dependency)."""
    lines = ["| finding | " + " | ".join(counts.columns) + " |", "|---" * (len(counts.columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |" for name, row in counts.iterrows()]
    return "\n".join(lines)


def run_tables(run_dir: str | Path, systems: Sequence[str] | None = None,
               labeler: Any = None) -> dict[str, dict[str, pd.DataFrame]]:
    """{system: {"vs image truth": counts, "vs reference": counts}} for a run's test generations
    (the reference report is a system too, scored against the image truth only).

    Raises:
        FileNotFoundError: the run has no ``eval/generations.jsonl`` (run its evaluation first).
        ValueError: a named system is not in the generations, or the run's data is not a phantom.
    """
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.pipeline import Pipeline

    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    run_dir = Path(run_dir)
    path = run_dir / "eval" / "generations.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no test generations; run the pipeline's evaluate() first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    settings = Pipeline.from_run(run_dir).settings
    if not settings.data.source.startswith("phantom"):
        raise ValueError(f"the image truth exists for phantom data only; this run trained on {settings.data.source!r}")
    split = open_source(settings.data.source, "test", settings.data.image_size, None, seed=settings.train.seed)
    frame = split.label_frame()
    truth = [frame.loc[row["id"]].to_dict() for row in rows]  # KeyError names a study the split lacks
    available = [k for k in rows[0] if k not in ("id", "reference")]
    missing = [s for s in (systems or []) if s not in available]
    if missing:
        raise ValueError(f"no system {missing} in {path}; it has: {', '.join(available)}")
    reference = [labeler(row["reference"]) for row in rows]
    tables = {"reference report": {"vs image truth": per_finding_counts(reference, truth)}}
    for system in systems or available:
        read = [labeler(row[system]) for row in rows]
        tables[system] = {"vs image truth": per_finding_counts(read, truth),
                          "vs reference": per_finding_counts(read, reference)}
    return tables


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.per_finding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--systems", nargs="*", help="systems to show (default: all in the generations)")
    parser.add_argument("--csv", help="also write every table, long format, to this CSV")
    args = parser.parse_args(argv)
    tables = run_tables(args.run_dir, args.systems)
    long = []
    for system, yardsticks in tables.items():
        for yardstick, counts in yardsticks.items():
            print(f"\n{system}, {yardstick}: micro-F1 {micro_f1(counts):.3f}\n")
            print(counts_markdown(counts))
            long.append(counts.reset_index().assign(system=system, yardstick=yardstick))
    if args.csv:
        pd.concat(long).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
