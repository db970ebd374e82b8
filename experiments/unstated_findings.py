"""How much of the image-truth F1 is lost to findings no training report states?

The phantom's image truth follows the CheXpert hierarchy: a film with cardiomegaly is also labelled
Enlarged Cardiomediastinum. Its reports, like many real ones, name the cardiomegaly and never the
parent observation. A model taught by those reports cannot learn to write it, and the reference
reports themselves lose it against the image truth. This probe finds the observations no training
report states (the labeler reads none of the training reports positive for them; nothing is named
by hand) and scores a run's greedy reports, and beam search's with ``--beams``, over the rendered
findings with and without them, against the image truth and against the labeler's reading of the
reference; the reference reports scored the same way beside them. ``--distilled OUT/round-R`` adds a
model :mod:`experiments.guided_distillation` fine-tuned from the run, ``--guided`` each model's
findings-guided decoding as the pipeline evaluates it (the run's candidates and temperature, the
threshold picked on its ``guided_val_samples`` val studies, 250 by default).

    HF_HUB_OFFLINE=1 python -m experiments.unstated_findings runs/readings1-s0 \
        --distilled runs/bothchoice-s0/round-2 --beams 4

About a minute a model on the 250 test studies (2 cores), 5 more with ``--guided``; writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

Labels = Mapping[str, Any]


def unstated_observations(training_reports: Sequence[str], observations: Sequence[str],
                          labeler: Callable[[str], Labels]) -> list[str]:
    """The observations of ``observations`` that the labeler reads positive in none of ``training_reports``."""
    stated = set()
    for report in training_reports:
        stated.update(o for o, value in labeler(report).items() if value == 1.0)
    return [o for o in observations if o not in stated]


def scores_row(stated: Sequence[Labels], truth: Sequence[Labels], references: Sequence[Labels],
               observations: Sequence[str], unstated: Sequence[str]) -> dict[str, float]:
    """Findings micro-F1 of ``stated`` (one reading per study) over ``observations`` and over them
    without ``unstated``, against the image ``truth`` and the references' readings."""
    from flamingo_lib.evaluation.metrics import clinical_efficacy

    kept = [o for o in observations if o not in unstated]
    return {"vs image truth": clinical_efficacy(truth, stated, observations)["micro_f1"],
            "vs image truth, unstated left out": clinical_efficacy(truth, stated, kept)["micro_f1"],
            "vs reference": clinical_efficacy(references, stated, observations)["micro_f1"],
            "vs reference, unstated left out": clinical_efficacy(references, stated, kept)["micro_f1"]}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from experiments.guided_distillation import guided_test_reports
    from flamingo_lib import FlamingoModel, FlamingoProcessor
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.inference.batched import generate_in_batches
    from flamingo_lib.labeling.labeler import label_report
    from flamingo_lib.pipeline.run_records import guided_setup, model_directory
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a trained phantom run")
    parser.add_argument("--distilled", action="append", default=[], help="a model directory fine-tuned from the "
                        "run (experiments.guided_distillation's OUT/round-R); repeatable")
    parser.add_argument("--beams", type=int, default=0, help="also score beam search with this many beams")
    parser.add_argument("--guided", action="store_true", help="also score findings-guided decoding")
    args = parser.parse_args(argv)
    pipeline = Pipeline.from_run(args.run_dir, progress=False)
    test = pipeline.samples("test")
    unstated = unstated_observations(pipeline.splits["train"].reports, RENDERED_OBSERVATIONS, label_report)
    truth, references = [s.labels for s in test], [label_report(s.report) for s in test]
    setup = guided_setup(model_directory(args.run_dir))
    if args.guided and setup is None:
        parser.error(f"{args.run_dir} recorded no findings-guided setup (eval/guided_decoding.json)")
    val = pipeline.guided_tuning_samples() if args.guided else []
    rows = [{"system": "the reference reports", **scores_row(references, truth, references, RENDERED_OBSERVATIONS,
                                                             unstated)}]
    for name, directory in [("the run", model_directory(args.run_dir))] + [(d, model_directory(d))
                                                                           for d in args.distilled]:
        model, processor = FlamingoModel.from_pretrained(directory).eval(), FlamingoProcessor.from_pretrained(directory)
        for beams in [1] + ([args.beams] if args.beams > 1 else []):
            reports = generate_in_batches(model, processor, test, batch_size=8, progress=False, num_beams=beams).reports
            rows.append({"system": f"{name}, {'greedy' if beams == 1 else f'beam search ({beams})'}",
                         **scores_row([label_report(r) for r in reports], truth, references, RENDERED_OBSERVATIONS,
                                      unstated)})
        if args.guided:
            reports = guided_test_reports(model, processor, val, test, setup).reports
            rows.append({"system": f"{name}, findings-guided", **scores_row(
                [label_report(r) for r in reports], truth, references, RENDERED_OBSERVATIONS, unstated)})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"{len(test)} test studies; observations no training report states: {', '.join(unstated) or 'none'}")
    print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
