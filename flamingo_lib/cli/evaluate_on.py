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

``--protocol r2gen`` or ``--protocol rexrank`` scores the way a published table was scored (R2Gen's
cleaned MIMIC-CXR / IU X-Ray test split; the ReXrank leaderboard's MIMIC-CXR findings track:
:mod:`flamingo_lib.evaluation.protocols`), refuses a source that cannot satisfy it, and writes
``protocol.json`` beside ``results.csv``:

    python -m flamingo_lib.cli.evaluate_on runs/x --data r2gen:data/mimic_cxr/annotation.json,data/mimic_cxr/images \
        --protocol r2gen
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
from flamingo_lib.evaluation.protocols import PROTOCOLS, ProtocolError, prepare
from flamingo_lib.inference.batched import process_share
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


def evaluation_dir(run_dir: Path, data: str, split: str, max_samples: int | None, protocol: str | None = None) -> Path:
    """``RUN/eval-on/<kind>-<split>[-<protocol>]-<hash>``: the hash tells two roots (or sample sizes) of one
    kind apart, and a protocol's results never overwrite the plain evaluation's."""
    key = f"{data}|{split}|{max_samples}" + (f"|{protocol}" if protocol else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return run_dir / "eval-on" / "-".join([data.partition(':')[0], split, *([protocol] if protocol else []), digest])


def evaluate_on(model: Any, processor: Any, train_samples: Sequence[Any], test_samples: Sequence[Any],
                out_dir: str | Path | None, *, trained_on: str, tested_on: str, guided: dict[str, Any] | None = None,
                feature_cache: Any = None, max_new_tokens: int = 60, seed: int = 0,
                progress: bool = True, metrics: Sequence[str] = (), num_workers: int = 0,
                protocol: Any = None) -> pd.DataFrame:
    """Score the model and the baselines on ``test_samples`` (:func:`flamingo_lib.evaluation.evaluate.evaluate`).

    Args:
        trained_on, tested_on: the source specs, written to the protocol.
        guided: the run's recorded findings-guided setup (threshold, candidates, temperature,
            top_p; ``threshold_from`` when the threshold came from elsewhere): adds the
            findings-guided row.
        seed: of the guided candidates (the pipeline's: the run's seed).
        metrics: RadEval metrics scored beside the built-in ones (:mod:`flamingo_lib.evaluation.radeval_metrics`).
        num_workers: processes decoding the training films of the nearest-neighbour baseline.
        protocol: a :class:`flamingo_lib.evaluation.protocols.Prepared` protocol: its test samples (references
            in its form), its training reports and generated reports in that form too, its metrics added to
            ``metrics``; ``protocol.json`` is written beside ``results.csv``.
    """
    from flamingo_lib.evaluation.evaluate import evaluate

    extra, notes = {}, [f"Cross-dataset evaluation: the model trained on '{trained_on}' (baselines drawn from "
                        f"its training split), tested on '{tested_on}'."]
    if guided is not None:
        from flamingo_lib.inference.guided_decoding import choose, sample_candidates

        drawn = sample_candidates(model, processor, test_samples, guided["candidates"], max_new_tokens=max_new_tokens,
                                  seed=seed, progress=progress, temperature=guided["temperature"],
                                  top_p=guided.get("top_p", 1.0))
        extra[GUIDED] = choose(drawn, guided["threshold"])  # chosen on the text as written, then put in form
        if protocol is not None:
            extra[GUIDED] = [protocol.hypothesis(report) for report in extra[GUIDED]]
        notes.append(f"'{GUIDED}': the greedy report and {guided['candidates']} sampled reports (temperature "
                     f"{guided['temperature']}) per study; threshold {guided['threshold']} "
                     f"{guided.get('threshold_from', 'as the run picked it on its own val split')}, nothing tuned on "
                     "this source.")
    is_phantom = tested_on.startswith("phantom")
    scoring = processor
    if protocol is not None:  # the texts put in the protocol's form around the call: the scoring is unchanged
        test_samples, train_samples, scoring = protocol.test, protocol.train, protocol.processor(processor)
        metrics = [*metrics, *(m for m in protocol.metrics if m not in metrics)]
        notes.append(f"Protocol '{protocol.name}': references and every system's report as protocol.json states.")
    table = evaluate(model, scoring, train_samples, test_samples, out_dir=out_dir, max_new_tokens=max_new_tokens,
                     feature_cache=feature_cache, labels_are_image_truth=is_phantom, progress=progress,
                     extra_systems=extra, protocol_notes="\n\n".join(notes), metrics=metrics, num_workers=num_workers)
    if protocol is not None and out_dir is not None and process_share()[0] == 0:
        protocol.write(out_dir, table)
    return table


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
    parser.add_argument("--protocol", choices=PROTOCOLS, help="score as a published table was scored: r2gen (R2Gen's "
                        "cleaned test split) or rexrank (ReXrank's MIMIC-CXR findings track); writes protocol.json")
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
    protocol = None
    if args.protocol:  # refused before the model is loaded and minutes of decoding
        try:
            protocol = prepare(args.protocol, args.data, args.split, test, train, args.max_samples)
        except ProtocolError as error:
            parser.error(f"--protocol {args.protocol}: {error}")
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
    out = Path(args.out) if args.out else evaluation_dir(Path(args.run), args.data, args.split, args.max_samples,
                                                         args.protocol)
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
                        progress=not args.no_progress, metrics=args.metrics, num_workers=args.num_workers,
                        protocol=protocol)
    print(table.astype(float).round(3).to_string())
    for name, why in table.attrs.get("not_computed", {}).items():
        print(f"not computed: {name}: {why}")
    return table


cli = console_command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    main()
