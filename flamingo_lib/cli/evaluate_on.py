"""A trained run scored on another data source: cross-dataset evaluation (trained on MIMIC-CXR,
tested on IU X-Ray, or on another split or sample of its own source), without retraining.

    python -m flamingo_lib.cli.evaluate_on runs/demo --data iu:/data/iu/xml,/data/iu/png
    python -m flamingo_lib.cli.evaluate_on runs/demo --data phantom --max-samples 500 --guided

The pipeline evaluates a run on the test split of the source it trained on, and a pipeline with
another ``data`` setting is another run (it retrains). Here the run's saved model is scored on any
source's split with the same metrics and protocol (:func:`flamingo_lib.evaluation.evaluate.evaluate`); the
baselines that learn from data (most frequent report, nearest neighbour) draw on the run's own
training split, as a model trained there would. ``--guided`` adds the findings-guided row with the
threshold the run picked on its own val split (``eval/guided_decoding.json``): nothing is tuned on
the new source. Results go to ``RUN/eval-on/<kind>-<split>-<hash of the source>/`` unless ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flamingo_lib.cli import console_command
from flamingo_lib.data.licence import source_privacy
from flamingo_lib.io import write_text_atomic
from flamingo_lib.pipeline.settings import EvalSettings
from flamingo_lib.inference.guided_decoding import SYSTEM_NAME as GUIDED
from flamingo_lib.pipeline.run_records import guided_setup, model_directory, training_record

#: The note a results folder of credentialed data carries.
CREDENTIALED_NOTE = "CREDENTIALED.md"
CREDENTIALED_TEXT = ("# Private data\n\nThese results were computed on `{data}`, data that may not be shared ({licence}). "
                     "`generations.jsonl` holds its report text: keep this folder on machines its licence covers "
                     "(for MIMIC-CXR, PhysioNet's data use agreement) and never share it.\n")


class CredentialedDataWarning(UserWarning):
    """Results are about to hold text of a credentialed dataset."""


def evaluation_dir(run_dir: Path, data: str, split: str, max_samples: int | None) -> Path:
    """``RUN/eval-on/<kind>-<split>-<hash>``: the hash tells two roots (or sample sizes) of one kind apart."""
    digest = hashlib.sha256(f"{data}|{split}|{max_samples}".encode()).hexdigest()[:8]
    return run_dir / "eval-on" / f"{data.partition(':')[0]}-{split}-{digest}"


def evaluate_on(model: Any, processor: Any, train_samples: Sequence[Any], test_samples: Sequence[Any],
                out_dir: str | Path | None, *, trained_on: str, tested_on: str, guided: dict[str, Any] | None = None,
                feature_cache: Any = None, max_new_tokens: int = 60, seed: int = 0,
                progress: bool = True, metrics: Sequence[str] = (), num_workers: int = 0) -> pd.DataFrame:
    """Score the model and the baselines on ``test_samples`` (:func:`flamingo_lib.evaluation.evaluate.evaluate`).

    Args:
        trained_on, tested_on: the source specs, written to the protocol.
        guided: the run's recorded findings-guided setup (threshold, candidates, temperature,
            top_p; ``threshold_from`` when the threshold came from elsewhere): adds the
            findings-guided row.
        seed: of the guided candidates (the pipeline's: the run's seed).
        metrics: RadEval metrics scored beside the built-in ones (:mod:`flamingo_lib.evaluation.radeval_metrics`).
        num_workers: processes decoding the training films of the nearest-neighbour baseline.
    """
    from flamingo_lib.evaluation.evaluate import evaluate

    extra, notes = {}, [f"Cross-dataset evaluation: the model trained on '{trained_on}' (baselines drawn from "
                        f"its training split), tested on '{tested_on}'."]
    if guided is not None:
        from flamingo_lib.inference.guided_decoding import choose, sample_candidates

        drawn = sample_candidates(model, processor, test_samples, guided["candidates"], max_new_tokens=max_new_tokens,
                                  seed=seed, progress=progress, temperature=guided["temperature"],
                                  top_p=guided.get("top_p", 1.0))
        extra[GUIDED] = choose(drawn, guided["threshold"])
        notes.append(f"'{GUIDED}': the greedy report and {guided['candidates']} sampled reports (temperature "
                     f"{guided['temperature']}) per study; threshold {guided['threshold']} "
                     f"{guided.get('threshold_from', 'as the run picked it on its own val split')}, nothing tuned on "
                     "this source.")
    is_phantom = tested_on.startswith("phantom")
    return evaluate(model, processor, train_samples, test_samples, out_dir=out_dir, max_new_tokens=max_new_tokens,
                    feature_cache=feature_cache, labels_are_image_truth=is_phantom, progress=progress,
                    extra_systems=extra, protocol_notes="\n\n".join(notes), metrics=metrics, num_workers=num_workers)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """The command line; returns the results table."""
    from flamingo_lib.modeling.model import FlamingoModel
    from flamingo_lib.processing.processor import FlamingoProcessor
    from flamingo_lib.cache_dirs import cache_root
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.data.feature_cache import FeatureCache
    from flamingo_lib.data.study_index import image_counts, iter_films
    from flamingo_lib.pipeline.workbench import detect_device

    parser = argparse.ArgumentParser(prog="python -m flamingo_lib.cli.evaluate_on", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory of the pipeline or of python -m flamingo_lib.cli.train")
    parser.add_argument("--data", required=True, help="the source to test on (flamingo_lib.data.sources spec)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--max-samples", type=int, help="studies of the split scored (default: all)")
    parser.add_argument("--guided", action="store_true", help="add the findings-guided row, with the run's threshold")
    parser.add_argument("--threshold", type=float, help="the guided threshold of a run that recorded none (implies "
                        "--guided; its eval/PROTOCOL.md names the one it picked)")
    parser.add_argument("--max-new-tokens", type=int, default=EvalSettings.max_new_tokens)
    parser.add_argument("--out", help="results directory (default RUN/eval-on/<kind>-<split>-<hash>)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-feature-cache", action="store_true", help="encode the films for the nearest-neighbour "
                        "baseline instead of reading (and filling) the shared feature cache")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="METRIC",
                        help=EvalSettings.__dataclass_fields__["metrics"].metadata["help"])
    parser.add_argument("--num-workers", type=int, default=0, help="processes decoding films (0: this one)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        from flamingo_lib.evaluation.radeval_metrics import check_metrics

        check_metrics(args.metrics)
    except ValueError as error:
        parser.error(str(error))
    try:
        model_dir = model_directory(args.run)
    except FileNotFoundError as error:
        parser.error(str(error))
    source = training_record(model_dir)
    if source is None:
        parser.error(f"{model_dir}: no training summary beside it recording the run's data "
                     f"({model_dir.parent / 'summary.json'}); the baselines need the run's training split")
    guided = guided_setup(model_dir, args.threshold) if args.guided or args.threshold is not None else None
    if args.guided and guided is None:
        parser.error("--guided: the run recorded no findings-guided threshold (eval/guided_decoding.json, written "
                     "when the pipeline evaluates it); pass --threshold")
    try:
        test = open_source(args.data, args.split, source["image_size"], args.max_samples, seed=source["seed"])
    except (ValueError, OSError) as error:
        parser.error(f"--data {args.data}: {error}")
    train = open_source(source["data"], "train", source["image_size"], source["max_train_samples"], seed=source["seed"])
    device = detect_device()[0] if args.device == "auto" else args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # launched as one process per GPU: each its own
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    model = FlamingoModel.from_pretrained(model_dir).to(device)
    processor = FlamingoProcessor.from_pretrained(model_dir)
    cache = None
    if not args.no_feature_cache:
        # the run's own storage: the nearest neighbour then reads the features the model was trained on
        cache = FeatureCache(cache_root("features"), model, processor, storage=source["feature_storage"])
        cache.build(iter_films((train, test), num_workers=args.num_workers), progress=not args.no_progress,
                    total=sum(sum(image_counts(split)) for split in (train, test)))
    out = Path(args.out) if args.out else evaluation_dir(Path(args.run), args.data, args.split, args.max_samples)
    private, licence = source_privacy(args.data, lambda: test)
    if private:  # said before minutes of decoding, and written beside what it concerns
        warnings.warn(f"{args.data} may not be shared ({licence}): {out} will hold its report text; keep it private "
                      "and never share it", CredentialedDataWarning, stacklevel=2)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / CREDENTIALED_NOTE, CREDENTIALED_TEXT.format(data=args.data, licence=licence))
    print(f"{len(test)} studies of {args.data} ({args.split}); model {model_dir} trained on {source['data']}; "
          f"results to {out}")
    table = evaluate_on(model, processor, train, test, out, trained_on=source["data"], tested_on=args.data,
                        guided=guided, feature_cache=cache, max_new_tokens=args.max_new_tokens, seed=source["seed"],
                        progress=not args.no_progress, metrics=args.metrics, num_workers=args.num_workers)
    print(table.astype(float).round(3).to_string())
    for name, why in table.attrs.get("not_computed", {}).items():
        print(f"not computed: {name}: {why}")
    return table


cli = console_command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    main()
