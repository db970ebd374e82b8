"""The training command line: ``python -m flamingo_lib.cli.train --preset tiny --data phantom --out runs/x``.

Builds the model from a preset, opens the data source, optionally caches frozen-encoder features,
and runs :class:`flamingo_lib.training.trainer.Trainer` (``--resume`` continues from the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flamingo_lib.modeling.config import FROZEN_DTYPES
from flamingo_lib.labeling.targets import FINDINGS_TARGET_SOURCES
from flamingo_lib.training.trainer import ReportCollator, TrainConfig, Trainer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m flamingo_lib.cli.train --preset tiny --data phantom --out runs/x`` (``--help``)."""
    import argparse

    from flamingo_lib.modeling.config import FlamingoConfig
    from flamingo_lib.modeling.model import FlamingoModel
    from flamingo_lib.processing.processor import FlamingoProcessor
    from flamingo_lib.data.sources import open_source

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m flamingo_lib.cli.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-random", help="FlamingoConfig preset")
    parser.add_argument("--data", default="phantom", help="data source spec (see flamingo_lib.data.sources)")
    parser.add_argument("--out", default=defaults.out_dir, help="run directory (checkpoints, metrics, model)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--cache-features", metavar="DIR", help="train from frozen-encoder features cached in DIR")
    parser.add_argument("--image-size", type=int, default=224, help="size of rendered phantom images")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-val-samples", type=int, default=64)
    for name in ("max_steps", "batch_size", "grad_accum", "warmup_steps", "eval_every", "save_every", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "gate_lr_mult", "weight_decay", "max_grad_norm"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--ff-gate-lr-mult", type=float, default=defaults.ff_gate_lr_mult,
                        help="feed-forward gates' lr multiple (default: --gate-lr-mult; 0 holds them shut)")
    parser.add_argument("--ff-gate-open-step", type=int, default=defaults.ff_gate_open_step,
                        help="keep the feed-forward gates shut until this step (needs --ff-gate-lr-mult > 0)")
    parser.add_argument("--repeat-factor-threshold", type=float, default=defaults.repeat_factor_threshold,
                        help="repeat studies with findings rarer than this fraction (LVIS repeat-factor sampling)")
    parser.add_argument("--findings-loss-weight", type=float, default=defaults.findings_loss_weight,
                        help="add a findings head on the resampler's latents, trained with this loss weight "
                             "(0: no head; the pipeline uses 1)")
    parser.add_argument("--findings-targets", choices=FINDINGS_TARGET_SOURCES, default=defaults.findings_targets,
                        help="what the findings head learns: each study's own labels (the labeler's reading of "
                             "its report where it has none), the labeler's reading of every report, or their mean")
    parser.add_argument("--findings-tokens", action=argparse.BooleanOptionalAction, default=False,
                        help="hand the findings head's probabilities to the LM as one media token per "
                             "observation (needs --findings-loss-weight > 0; the pipeline turns it on)")
    parser.add_argument("--reading-head", action=argparse.BooleanOptionalAction, default=False,
                        help="a second output of the findings head per observation, trained on the labeler's "
                             "reading of each report (needs --findings-loss-weight > 0; the pipeline turns it on)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA, off for CPU)")
    parser.add_argument("--frozen-dtype", choices=FROZEN_DTYPES, default="float32",
                        help="dtype of the frozen LM and vision encoder (bfloat16 halves their memory; "
                             "the trained layers stay float32)")
    parser.add_argument("--all-earlier-media", action="store_true",
                        help="text attends to every earlier image, not only the latest: a multi-view study's "
                             "report then reads all its views directly (IU X-Ray, MIMIC-CXR all views)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every block (worth it on a GPU; the first step compiles)")
    args = parser.parse_args(argv)

    from flamingo_lib.observations import FINDINGS_OBSERVATIONS

    head = list(FINDINGS_OBSERVATIONS) if args.findings_loss_weight else None
    if args.findings_tokens and head is None:
        parser.error("--findings-tokens needs a findings head: --findings-loss-weight > 0")
    if args.reading_head and head is None:
        parser.error("--reading-head needs a findings head: --findings-loss-weight > 0")
    config = FlamingoConfig.from_preset(args.preset, findings_head=head, findings_tokens=args.findings_tokens,
                                        reading_head=args.reading_head, frozen_dtype=args.frozen_dtype,
                                        only_attend_immediate_media=not args.all_earlier_media)
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    train_set = open_source(args.data, "train", args.image_size, args.max_train_samples, seed=args.seed)
    val_set = open_source(args.data, "val", args.image_size, args.max_val_samples, seed=args.seed)
    cache = None
    if args.cache_features:
        from flamingo_lib.data.feature_cache import FeatureCache

        cache = FeatureCache(args.cache_features, model, processor)
        stats = cache.build((im for ds in (train_set, val_set) for s in ds for im in s.images),
                            total=sum(len(s.images) for ds in (train_set, val_set) for s in ds))
        print(f"feature cache {cache.directory}: {stats.computed} computed, {stats.reused} reused")
    train_config = TrainConfig(
        out_dir=args.out, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, gate_lr_mult=args.gate_lr_mult, ff_gate_lr_mult=args.ff_gate_lr_mult,
        ff_gate_open_step=args.ff_gate_open_step, repeat_factor_threshold=args.repeat_factor_threshold,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, findings_loss_weight=args.findings_loss_weight,
        findings_targets=args.findings_targets, max_grad_norm=args.max_grad_norm, eval_every=args.eval_every,
        save_every=args.save_every, seed=args.seed,
        bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        compile=args.compile,
        # how the data were opened: evaluate_on draws its baselines from the same training split
        extra={"preset": args.preset, "data": args.data, "image_size": args.image_size,
               "max_train_samples": args.max_train_samples, "seed": args.seed},
    )
    trainer = Trainer(model, train_set, val_set, ReportCollator(processor, cache), train_config)
    if args.resume:
        trainer.resume()
    summary = trainer.fit()
    print(f"trained to step {summary['steps']}: train loss {summary['first_train_loss']:.3f} -> "
          f"{summary['last_train_loss']:.3f}; model in {Path(args.out) / 'model'}")
    return summary


def cli() -> None:
    """The ``flamingo-train`` console command: :func:`main` on ``sys.argv``, its return value dropped
    (a console script exits with what its function returns)."""
    main()


if __name__ == "__main__":
    main()
