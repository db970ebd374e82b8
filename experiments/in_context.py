"""Do in-context examples help, and do retrieved ones (RICES) help more than random ones?

Open_flamingo's few-shot evaluation picks each query's in-context examples by retrieval: the
training studies nearest the query in the frozen vision encoder's feature space, the most similar
last (:func:`flamingo_lib.inference.retrieval.rices_examples`). This probe scores, at one trained
model, greedy reports of the test split zero-shot, with ``k`` retrieved examples and with ``k``
random ones (Flamingo's few-shot format: each example's films, its report and ``<EOC>``): the
findings micro-F1 over the rendered findings against the image truth and against the labeler's
reading of the reference, BLEU-4 and CIDEr.

    HF_HUB_OFFLINE=1 python -m experiments.in_context runs/demo --shots 2 4
    HF_HUB_OFFLINE=1 python -m experiments.in_context runs/demo --train-shots 2 --out runs/demo-shots

A model trained on one study per sequence (the demo's) has never seen a report followed by another
study: with examples first it writes one sentence and stops. ``--train-shots k`` first trains the
run's recipe afresh into ``--out`` with 0..k random training studies before each training study
(:func:`flamingo_lib.training.shots.random_shots`, Flamingo's interleaved training), then scores
that model. About a minute per setting and 100 studies on 2 idle cores, plus the training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.evaluation.evaluate import score
    from flamingo_lib.inference.batched import generate_in_batches
    from flamingo_lib.inference.retrieval import image_descriptors, random_examples, rices_examples
    from flamingo_lib.labeling.labeler import label_report
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--shots", type=int, nargs="+", default=[2])
    parser.add_argument("--max-studies", type=int, default=None, help="the first N test studies (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="of the random examples")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--train-shots", type=int, default=0, help="train afresh with 0..k random examples first")
    parser.add_argument("--out", type=Path, default=None, help="where --train-shots trains (a new run folder)")
    parser.add_argument("--steps", type=int, default=None, help="--train-shots' steps (default: the recipe's)")
    args = parser.parse_args(argv)

    pipeline = Pipeline.from_run(args.run_dir, progress=False)
    model, processor = pipeline.model_and_processor
    if args.train_shots:
        model = train_with_shots(pipeline, args.train_shots, args.out, args.steps)
    train, test = pipeline.splits["train"], pipeline.samples("test")[: args.max_studies]
    top5 = json.loads((Path(args.run_dir) / "eval" / "results.json").read_text())["top5"]
    cache = pipeline.feature_cache
    train_descriptors = image_descriptors(model, processor, train, feature_cache=cache)
    test_descriptors = image_descriptors(model, processor, test, feature_cache=cache)

    def scored(name: str, examples: list[list[int]] | None) -> dict[str, float]:
        shots = None if examples is None else [[train[i] for i in row] for row in examples]
        reports = generate_in_batches(model, processor, test, batch_size=8, progress=False, examples=shots).reports
        row = score([s.report for s in test], reports, label_report, [s.labels for s in test], top5,
                    RENDERED_OBSERVATIONS)
        result = {"setting": name, "F1 vs image truth": row["CE micro-F1 (rendered findings, vs image truth)"],
                  "F1 vs reference": row["CE micro-F1 (rendered findings, vs reference)"],
                  "BLEU-4": row["BLEU_4"], "CIDEr": row["CIDEr"]}
        print(result, flush=True)
        return result

    rows = [scored("zero-shot", None)]
    for k in args.shots:
        rows.append(scored(f"RICES, {k} shots", rices_examples(train_descriptors, test_descriptors, k)))
        rows.append(scored(f"random, {k} shots", random_examples(len(train), len(test), k, args.seed)))
    table = pd.DataFrame(rows).set_index("setting")
    print(table.round(3).to_string())
    if args.csv:
        table.to_csv(args.csv)
    return table


def train_with_shots(pipeline, k: int, out: Path | None, steps: int | None):
    """The run's recipe trained afresh into ``out`` with 0..``k`` random in-context examples per study."""
    import dataclasses

    from flamingo_lib.modeling.model import FlamingoModel
    from flamingo_lib.processing.processor import FlamingoProcessor
    from flamingo_lib.training.shots import random_shots
    from flamingo_lib.training.trainer import ReportCollator, Trainer

    if out is None:
        raise SystemExit("--train-shots needs --out (a new run folder)")
    settings = pipeline.settings
    config = settings.flamingo_config()
    model, processor = FlamingoModel(config), FlamingoProcessor(config, context=settings.data.context)
    train = pipeline.splits["train"]
    recipe = dataclasses.replace(settings.train, out_dir=str(out), overwrite=True, progress=True,
                                 max_steps=steps or settings.train.max_steps)
    collator = ReportCollator(processor, pipeline.feature_cache, shots=random_shots(train, k, settings.train.seed))
    trainer = Trainer(model, train, pipeline.splits["val"], collator, recipe)
    trainer.fit()
    return trainer.unwrapped.eval()


if __name__ == "__main__":
    main()
