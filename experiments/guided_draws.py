"""How much of a findings-guided score is the luck of one sample draw?

Findings-guided decoding (:mod:`flamingo_lib.inference.guided_decoding`) keeps, per study, the best of the
greedy report and 32 sampled ones, with a threshold picked on val studies (the pipeline's
``guided_val_samples``); ``make demo`` reports
one draw (sampling seed = the run's seed). This diagnostic repeats the whole rule, val threshold
included, for several sampling seeds on a trained run and scores each draw's test reports the way
the demo does (findings micro-F1 over the rendered findings, against the image truth and against
the labeler's reading of the reference).

    HF_HUB_OFFLINE=1 python -m experiments.guided_draws runs/demo --draws 3

About 3 minutes per draw on 2 cores (val and test candidates); writes nothing into the run.
Measured on the default run of the 160 px encoder, before the reading head (draws 0-2): 0.837 / 0.792,
0.799 / 0.759, 0.815 / 0.768.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
from flamingo_lib.inference.guided_decoding import Candidates, choose, tune_threshold
from flamingo_lib.evaluation.metrics import clinical_efficacy

Labels = Mapping[str, Any]


def score_draw(val: Candidates, val_truth: Sequence[Labels], test: Candidates, test_truth: Sequence[Labels],
               test_reference: Sequence[Labels], labeler: Any = None) -> dict[str, float]:
    """The library's rule on one draw: threshold picked on ``val`` against ``val_truth`` over the
    rendered findings, then the chosen test reports scored against both yardsticks.

    Returns:
        {"threshold", "val", "vs image truth", "vs reference"}.
    """
    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    threshold, scores = tune_threshold(val, val_truth, [o for o in RENDERED_OBSERVATIONS if o in val.observations])
    read = [labeler(text) for text in choose(test, threshold)]
    return {"threshold": threshold, "val": scores[threshold],
            "vs image truth": clinical_efficacy(test_truth, read, RENDERED_OBSERVATIONS)["micro_f1"],
            "vs reference": clinical_efficacy(test_reference, read, RENDERED_OBSERVATIONS)["micro_f1"]}


def main(argv: Sequence[str] | None = None) -> None:
    from flamingo_lib.inference.guided_decoding import sample_candidates
    from flamingo_lib.labeling.labeler import label_report
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(prog="python -m experiments.guided_draws", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a trained phantom run (its settings and model are read)")
    parser.add_argument("--draws", type=int, default=3, help="sampling seeds 0 .. draws-1")
    args = parser.parse_args(argv)
    pipeline = Pipeline.from_run(args.run_dir)
    if not pipeline.settings.data.source.startswith("phantom"):
        raise SystemExit("the image truth exists for phantom data only; this run trained on "
                         f"{pipeline.settings.data.source!r}")
    if not pipeline.is_trained():
        raise SystemExit(f"{args.run_dir}: no model trained with this checkout's recipe and encoder builds")
    model, processor = pipeline.model_and_processor
    s = pipeline.settings.eval
    val, test = pipeline.guided_tuning_samples(), pipeline.samples("test")
    reference = [label_report(sample.report) for sample in test]
    print(f"{args.run_dir}: {s.guided_candidates} samples at temperature {s.guided_temperature}, "
          f"{len(val)} val / {len(test)} test studies")
    for seed in range(args.draws):
        kwargs = dict(max_new_tokens=s.max_new_tokens, seed=seed, temperature=s.guided_temperature)
        row = score_draw(sample_candidates(model, processor, val, s.guided_candidates, **kwargs),
                         [v.labels for v in val],
                         sample_candidates(model, processor, test, s.guided_candidates, **kwargs),
                         [t.labels for t in test], reference)
        print(f"  draw {seed}: threshold {row['threshold']} (val {row['val']:.3f})  vs image truth "
              f"{row['vs image truth']:.3f}   vs reference {row['vs reference']:.3f}")


if __name__ == "__main__":
    main()
