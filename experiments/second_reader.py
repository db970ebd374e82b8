"""A second reader of the phantom's films: what a report that sees every finding scores.

The clinical-efficacy target is scored two ways: against the image truth (the labels of the
findings the phantom drew) and against the labeler's reading of the reference report. The two
disagree by construction wherever the reference's wording is random rather than seen: a third of
the atelectases are written "streaky opacity, likely atelectasis" (uncertain, so not positive),
half the pneumonias "concerning for pneumonia", and no report names the Enlarged Cardiomediastinum
that the truth gives every enlarged heart. This diagnostic asks how far a perfect reader goes on
both: for every study, the phantom's own report writer (:func:`~flamingo_lib.data.phantom.text.
templated_report`) writes ``--draws`` further reports from the true findings, each with a phrasing
drawn independently of the reference's, and each set is scored like a system
(:func:`~flamingo_lib.evaluation.metrics.clinical_efficacy` over the rendered observations, positive = 1.0).

    HF_HUB_OFFLINE=1 python -m experiments.second_reader               # test split, 5 draws
    HF_HUB_OFFLINE=1 python -m experiments.second_reader --split val --draws 20

Seconds: only the findings and reports are read (``PhantomCXR.text_samples``), no film is rendered.
Measured on the test split (250 studies): the reference itself 0.830 against the
image truth; second reports (5 draws) 0.815-0.839 against the image truth and 0.888-0.938
against the reference's reading.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from typing import Any

from flamingo_lib.data.phantom.render import stable_seed
from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS, templated_report
from flamingo_lib.evaluation.metrics import clinical_efficacy


def second_reports(samples: Sequence[Any], draw: int) -> list[str]:
    """One report per study, written from its true findings with phrasings seeded by (id, draw),
    independent of the seed that wrote the reference."""
    return [templated_report(s.findings, random.Random(stable_seed("second-reader", s.id, draw))) for s in samples]


def agreement(samples: Sequence[Any], draws: int, labeler: Any = None) -> list[dict[str, float]]:
    """Per draw: findings micro-F1 of the second reports against the image truth and against the
    labeler's reading of the reference (row ``draw = -1``: the reference against the image truth)."""
    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    truth = [s.labels for s in samples]
    reference = [labeler(s.report) for s in samples]
    rows = [{"draw": -1, "vs image truth": clinical_efficacy(truth, reference, RENDERED_OBSERVATIONS)["micro_f1"],
             "vs reference": 1.0}]
    for draw in range(draws):
        read = [labeler(text) for text in second_reports(samples, draw)]
        rows.append({"draw": draw,
                     "vs image truth": clinical_efficacy(truth, read, RENDERED_OBSERVATIONS)["micro_f1"],
                     "vs reference": clinical_efficacy(reference, read, RENDERED_OBSERVATIONS)["micro_f1"]})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.pipeline import PipelineSettings

    defaults = PipelineSettings()
    parser = argparse.ArgumentParser(prog="python -m experiments.second_reader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--data", default=defaults.data.source, help="a templated phantom source (default: the pipeline's)")
    args = parser.parse_args(argv)
    if not args.data.startswith("phantom"):
        raise SystemExit(f"--data must be a phantom source (the second reader writes from its findings), "
                         f"got {args.data!r}")
    split = open_source(args.data, args.split, defaults.data.image_size, None, seed=defaults.train.seed)
    samples = split.text_samples()  # the findings and reports only: nothing to render
    if not any(s.findings for s in samples):
        raise SystemExit(f"{args.data!r} {args.split}: no study carries structured findings to write from")
    rows = agreement(samples, args.draws)
    print(f"{args.data} {args.split} ({len(samples)} studies), findings micro-F1 over {len(RENDERED_OBSERVATIONS)} "
          "rendered observations:")
    for row in rows:
        name = "reference report" if row["draw"] < 0 else f"second report, draw {row['draw']}"
        print(f"  {name:26s} vs image truth {row['vs image truth']:.3f}   vs reference {row['vs reference']:.3f}")


if __name__ == "__main__":
    main()
