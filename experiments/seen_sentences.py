"""Are a run's reports made of sentences the phantom's report writer writes?

The templated phantom's reports are built from a closed set of sentences (templates with side,
zone and grade filled in). A generated sentence outside the training reports' set is composed by
the model: sometimes a fair new phrasing, mostly (with temperature-1 sampling) a garbled one that
the labeler may still read as a finding ("Borderline mediastinal silhouette is enlarged, consistent
with cardiomegaly.form scans in the left base."). Findings-guided decoding picks among sampled
reports by the findings they state, so this is the check that it does not buy F1 with garbage.

    HF_HUB_OFFLINE=1 python -m experiments.seen_sentences runs/demo

Reads ``<run>/eval/generations.jsonl`` and prints, per system, the share of sentences found in the
training reports and the share of reports made only of such sentences (the reference reports
themselves: ~0.99 and ~0.98, a few test-only slot fillings). Phantom runs (`phantom:templated`) only.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path


def sentences(text: str) -> list[str]:
    """Lower-cased sentences of a report, split after each full stop."""
    return [s.strip().lower() for s in re.split(r"(?<=\.)\s+", text.strip()) if s.strip()]


def seen_rates(reports: Sequence[str], known: set[str]) -> tuple[float, float]:
    """(share of all sentences in ``known``, share of reports whose every sentence is in ``known``)."""
    split = [sentences(r) for r in reports]
    flat = [s for report in split for s in report]
    if not flat:
        return 0.0, 0.0
    return sum(s in known for s in flat) / len(flat), sum(all(s in known for s in r) for r in split) / len(split)


def known_sentences(reports: Iterable[str]) -> set[str]:
    """Every sentence of ``reports``."""
    return {s for report in reports for s in sentences(report)}


def main(argv: Sequence[str] | None = None) -> None:
    from flamingo_lib.data.phantom.dataset import PhantomCXR

    parser = argparse.ArgumentParser(prog="python -m experiments.seen_sentences", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a pipeline run directory with eval/generations.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="the phantom's dataset seed (the pipeline's seed)")
    args = parser.parse_args(argv)
    path = args.run / "eval" / "generations.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: no generations (run the pipeline's evaluate step first)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = PhantomCXR("train", text="templated", seed=args.seed, cache=False)  # reports only: nothing rendered
    known = known_sentences(train.reports)
    print(f"{path}: {len(rows)} studies; sentences of the {len(train)} training reports: {len(known)}")
    for system in [k for k in rows[0] if k != "id"]:
        sentence_rate, report_rate = seen_rates([str(r[system]) for r in rows], known)
        print(f"  {system:28s} sentences seen {sentence_rate:.3f}   reports made only of seen sentences {report_rate:.3f}")


if __name__ == "__main__":
    main()
