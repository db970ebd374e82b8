"""`make demo`: the whole workbench on the embedded default, offline, on this machine's CPUs.

Pretrained frozen encoders (built on first use), phantom data, feature caching, training,
evaluation against baselines, attention maps and the pointing game, then a shareable HTML report.
Prints the headline numbers and where the report is.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from flamingo_lib.modeling.config import FROZEN_DTYPES
from flamingo_lib.pipeline.steps import Pipeline, PipelineSettings
from flamingo_lib.reporting.run_page import build_run_report, headline


def main(argv: list[str] | None = None) -> Path:
    defaults = PipelineSettings()
    parser = argparse.ArgumentParser(prog="python -m flamingo_lib.cli.demo", description=__doc__)
    parser.add_argument("--preset", default=defaults.preset,
                        help="'tiny' (default: the LM pretrained here on first use, ~1 min; the vision encoder shipped "
                             "prebuilt in data/encoders), 'tiny-random' "
                             "(random frozen encoders: the mechanics only), 'smol' (real SmolLM2 LM), "
                             "'biomed' (needs the hub)")
    parser.add_argument("--pretrain-scale", type=float, default=None,
                        help="embedded encoders' pretraining length multiplier (default $FLAMINGO_PRETRAIN_SCALE, "
                             "else 1; 4 for better encoders, 0.1 for a smoke run)")
    parser.add_argument("--data", default=defaults.data, help="data source spec (flamingo_lib.data.sources)")
    parser.add_argument("--steps", type=int, default=defaults.max_steps)
    parser.add_argument("--max-train-samples", type=int, default=defaults.max_train_samples)
    parser.add_argument("--max-test-samples", type=int, default=defaults.max_test_samples)
    parser.add_argument("--frozen-dtype", choices=FROZEN_DTYPES, default=defaults.frozen_dtype,
                        help="dtype of the frozen LM and vision encoder (FlamingoConfig.frozen_dtype)")
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--report", default="reports/demo/report.html")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    settings = PipelineSettings(run_dir=args.run_dir, preset=args.preset, pretrain_scale=args.pretrain_scale,
                                data=args.data, max_steps=args.steps, frozen_dtype=args.frozen_dtype,
                                max_train_samples=args.max_train_samples, max_test_samples=args.max_test_samples)
    pipeline = Pipeline(settings)
    print(f"[1/5] preset {args.preset!r} on {args.data!r}: building the model (pretrained encoders on first use)")
    model, _ = pipeline.model_and_processor
    print(f"[2/5] caching frozen-encoder features of {sum(len(s) for s in pipeline.splits.values())} studies")
    _ = pipeline.feature_cache
    print(f"[3/5] training {args.steps} steps on cached features")
    summary = pipeline.train()
    print(f"      train loss {summary['first_train_loss']:.3f} -> {summary['last_train_loss']:.3f}")
    print("[4/5] evaluating the model and its baselines, measuring grounding and which findings the text follows")
    report = build_run_report(pipeline)
    target = Path(args.report)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != Path(report).resolve():
        shutil.copyfile(report, target)
    print("[5/5] headline (test split):")
    print(headline(pipeline))
    print(f"report: {target.resolve()}  (run artefacts in {Path(args.run_dir).resolve()}); "
          f"{time.perf_counter() - start:.0f} s")
    print(f"your own films: python -m flamingo_lib.cli.write_reports {args.run_dir} FILMS... --out reports.csv "
          "[--guided] [--html page.html]")
    return target


def cli() -> None:
    """The ``flamingo-demo`` console command: :func:`main` on ``sys.argv``, its return value dropped
    (a console script exits with what its function returns)."""
    main()


if __name__ == "__main__":
    main()
