"""``make demo`` / ``flamingo-demo``: the whole workbench on the embedded default, offline, on this
machine's CPUs.

Pretrained frozen encoders (built on first use), phantom data, feature caching, training,
evaluation against baselines, attention maps and the pointing game, then a shareable HTML report.
Prints the headline numbers and where the report is. Every setting of the pipeline is a flag
(``--help``), generated from the settings classes, with the recipe's defaults.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from flamingo_lib.cli import console_command
from flamingo_lib.io import atomic_path
from flamingo_lib.pipeline.settings import DataSettings, EvalSettings, ModelSettings, PipelineSettings, RewardSettings
from flamingo_lib.pipeline.steps import Pipeline
from flamingo_lib.reporting.run_page import build_run_report, headline
from flamingo_lib.training.config import TrainConfig


@dataclass
class DemoOptions:
    """Where the demo writes."""

    run_dir: str = field(default="runs/demo", metadata={"help": "run directory (model, results, report)"})
    report: str = field(default="reports/demo/report.html", metadata={"help": "where the HTML report is copied"})
    allow_credentialed: bool = field(default=False, metadata={"help": (
        "write the report of a credentialed source (MIMIC-CXR) anyway: a private file, never to be shared")})


def parse(argv: list[str] | None = None) -> tuple[PipelineSettings, DemoOptions]:
    """The command line as the pipeline's settings and the demo's options."""
    parser = HfArgumentParser((ModelSettings, DataSettings, TrainConfig, RewardSettings, EvalSettings, DemoOptions),
                              prog="flamingo-demo", description=__doc__)
    model, data, train, reward, evaluation, options = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False)
    if train.out_dir != TrainConfig.out_dir:
        parser.error("--out_dir: the demo trains into RUN_DIR/train; set --run_dir instead")
    return PipelineSettings(run_dir=options.run_dir, model=model, data=data, train=train, reward=reward,
                            eval=evaluation), options


def main(argv: list[str] | None = None) -> Path:
    """Run the demo; returns where the report was written."""
    settings, options = parse(argv)
    start = time.perf_counter()
    pipeline = Pipeline(settings)
    if pipeline.credentialed and not options.allow_credentialed:  # before minutes of work, not after them
        raise PermissionError(f"{settings.data.source} may not be shared ({pipeline.licence}): the report the demo "
                              "writes holds its films and text and may not be shared; pass --allow_credentialed to "
                              "write a private one")
    print(f"[1/5] preset {settings.model.preset!r} on {settings.data.source!r}: building the model "
          "(pretrained encoders on first use)")
    _ = pipeline.model_and_processor
    print(f"[2/5] caching frozen-encoder features of {sum(len(s) for s in pipeline.splits.values())} studies")
    _ = pipeline.feature_cache
    print(f"[3/5] training {settings.train.max_steps} steps on cached features")
    summary = pipeline.train()
    print(f"      train loss {summary['first_train_loss']:.3f} -> {summary['last_train_loss']:.3f}")
    print("[4/5] evaluating the model and its baselines, measuring grounding and which findings the text follows")
    report = build_run_report(pipeline, allow_credentialed=options.allow_credentialed)
    target = Path(options.report)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != Path(report).resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(report, tmp)
    print("[5/5] headline (test split):")
    print(headline(pipeline))
    print(f"report: {target.resolve()}  (run artefacts in {Path(options.run_dir).resolve()}); "
          f"{time.perf_counter() - start:.0f} s")
    print(f"your own films: flamingo-write-reports {options.run_dir} FILMS... --out reports.csv "
          "[--guided] [--html page.html]")
    return target


cli = console_command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    main()
