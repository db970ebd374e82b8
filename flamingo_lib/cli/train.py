"""``flamingo-train`` (``python -m flamingo_lib.cli.train``): train one model from the command line.

Builds the model from a preset, opens the data source, optionally caches frozen-encoder features,
and runs :class:`flamingo_lib.training.trainer.Trainer` (``--resume`` continues from the checkpoint).
Every flag comes from the settings classes the workbench pipeline uses (model, data, training),
so the defaults are the recipe's: ``flamingo-train --out_dir runs/x`` trains what ``make demo`` trains.
``--help`` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from flamingo_lib.cli import console_command
from flamingo_lib.data.sources import open_source
from flamingo_lib.inference.film_reference import build_film_reference
from flamingo_lib.modeling.model import FlamingoModel
from flamingo_lib.pipeline.settings import DataSettings, ModelSettings
from flamingo_lib.processing.processor import FlamingoProcessor
from flamingo_lib.training.trainer import ReportCollator, TrainConfig, Trainer


@dataclass
class CommandOptions:
    """What only the command has: resuming and where cached features live."""

    resume: bool = field(default=False, metadata={"help": (
        "continue from OUT_DIR/checkpoint.safetensors (under the same settings; --max_steps may grow)")})
    cache_features: str | None = field(default=None, metadata={
        "help": "train from frozen-encoder features cached in this directory"})


def parse(argv: list[str] | None = None) -> tuple[ModelSettings, DataSettings, TrainConfig, CommandOptions]:
    """The command line as the four settings objects (``--help`` lists every flag)."""
    parser = HfArgumentParser((ModelSettings, DataSettings, TrainConfig, CommandOptions),
                              prog="flamingo-train", description=__doc__)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train as the command line says; returns the training summary."""
    model_settings, data, train, options = parse(argv)
    config = model_settings.flamingo_config(train)
    model, processor = FlamingoModel(config), FlamingoProcessor(config, context=data.context)
    train_set = open_source(data.source, "train", data.image_size, data.max_train_samples, seed=train.seed)
    val_set = open_source(data.source, "val", data.image_size, data.max_val_samples, seed=train.seed)
    cache = None
    if options.cache_features:
        from flamingo_lib.data.feature_cache import FeatureCache

        from flamingo_lib.data.study_index import image_counts, iter_films

        cache = FeatureCache(options.cache_features, model, processor, storage=data.feature_storage)
        # one decoding pass, streamed; the total for the progress bar comes from the index
        priors = processor.context.prior_films  # a prior's films are read too (mostly cached already)
        stats = cache.build(iter_films((train_set, val_set), num_workers=data.num_workers, priors=priors),
                            total=None if priors else sum(sum(image_counts(ds)) for ds in (train_set, val_set)))
        print(f"feature cache {cache.directory}: {stats.computed} computed, {stats.reused} reused")
    # how the data were opened: evaluate_on draws its baselines from the same training split
    record = {"preset": model_settings.preset, "data": data.source, "image_size": data.image_size,
              "max_train_samples": data.max_train_samples, "seed": train.seed, "feature_storage": data.feature_storage,
              "context": data.context}
    trainer = Trainer(model, train_set, val_set, ReportCollator(processor, cache), train, record=record,
                      num_workers=data.num_workers)
    if options.resume:
        trainer.resume()
    summary = trainer.fit()
    if not trainer.accelerator.is_main_process:  # under many processes, the first writes what is left
        return summary
    # beside the weights, so that write_reports can tell films unlike the training films
    build_film_reference(model, processor, train_set, val_set, feature_cache=cache, seed=train.seed,
                         progress=train.progress).save(Path(train.out_dir) / "model")
    print(f"trained to step {summary['steps']}: train loss {summary['first_train_loss']:.3f} -> "
          f"{summary['last_train_loss']:.3f}; model in {Path(train.out_dir) / 'model'}")
    return summary


cli = console_command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    main()
