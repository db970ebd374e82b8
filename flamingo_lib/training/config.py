"""The knobs of one training run (:class:`TrainConfig`), read by :class:`flamingo_lib.training.trainer.Trainer`.

Its defaults are the recipe: what the workbench pipeline, ``make demo`` and ``flamingo-train``
train with, declared here once. The command-line flags of ``flamingo-train`` and ``flamingo-demo``
are generated from these fields (``transformers.HfArgumentParser``), their help from ``metadata``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flamingo_lib.labeling.targets import FINDINGS_TARGET_SOURCES


def _help(text: str, **more: object) -> dict[str, object]:
    return {"help": text, **more}


def check_ranges(settings: object, at_least: dict[str, float], above: dict[str, float] | None = None) -> None:
    """Refuse a numeric setting out of its range, naming it, its value and the range (None, where
    a field allows it, passes).

    Raises:
        ValueError: the first setting out of range.
    """
    for name, low in at_least.items():
        value = getattr(settings, name)
        if value is not None and not value >= low:
            raise ValueError(f"{type(settings).__name__}.{name} must be >= {low:g}, got {value!r}")
    for name, low in (above or {}).items():
        value = getattr(settings, name)
        if value is not None and not value > low:
            raise ValueError(f"{type(settings).__name__}.{name} must be > {low:g}, got {value!r}")


@dataclass
class TrainConfig:
    """Knobs of one training run. Defaults: the CPU-sized recipe of the embedded default."""

    out_dir: str = field(default="runs/train", metadata=_help(
        "run directory (checkpoint, metrics, model)", aliases=["--out"]))
    max_steps: int = field(default=1500, metadata=_help(
        "optimiser steps (~7 min on 2 cores with the 'tiny' preset, batch 16)", aliases=["--steps"]))
    batch_size: int = 16
    grad_accum: int = 1
    # 3e-3: findings micro-F1 0.322 against 0.234 at 1e-3 on the phantom (1e-2 collapsed to one
    # normal report for every image; docs/results.md).
    lr: float = 3e-3
    # The tanh gates start at 0, so the cross-attention weights behind them get no gradient until
    # the gates open, and a gate opens only as fast as its own lr. Measured on the phantom with the
    # "tiny" preset: at 1x the attention gates stayed within 0.03 of 0 for 200 steps and the
    # model's loss with its own image equalled that with another study's image; at 30x the
    # image already lowered the loss by step 200 (docs/results.md).
    gate_lr_mult: float = field(default=30.0, metadata=_help("the attention gates' lr as a multiple of lr"))
    # The feed-forward half of each gated block sees the text only, so it can lower the loss
    # without the image: measured with the convolutional embedded encoder, at 30x it opened (tanh up
    # to 0.99) while the attention gates stayed near 0 and the model wrote one report for every
    # image; held shut (0) the attention gates opened (|tanh| 0.37-0.97) and findings F1 rose from
    # 0.000 to 0.220 (docs/results.md).
    ff_gate_lr_mult: float | None = field(default=0.0, metadata=_help(
        "the feed-forward gates' lr multiple (None: gate_lr_mult; 0 holds them shut)"))
    # Once the attention gates are open the feed-forward half sees image-conditioned text.
    ff_gate_open_step: int | None = field(default=None, metadata=_help(
        "keep the feed-forward gates shut until this step (needs ff_gate_lr_mult > 0)"))
    repeat_factor_threshold: float | None = field(default=None, metadata=_help(
        "repeat studies with findings in fewer than this fraction of training studies by sqrt(t / f) "
        "(LVIS repeat-factor sampling, flamingo_lib.training.sampling); None: each study once per epoch"))
    # The auxiliary findings head on the resampler's latents (flamingo_lib.modeling.heads.findings):
    # findings-guided decoding reads it (docs/results.md).
    findings_loss_weight: float = field(default=1.0, metadata=_help(
        "weight of the findings head's binary cross-entropy added to the LM loss; 0: the model has no findings "
        "head (and so no findings tokens and no reading head)"))
    findings_targets: str = field(default="labels", metadata=_help(
        "what the findings head learns: 'labels', each study's own labels (the labeler's reading of its report "
        "where it has none); 'reports', the labeler's reading of every report; 'both', their mean "
        "(flamingo_lib.labeling.targets.FindingTargets.for_samples)", choices=list(FINDINGS_TARGET_SOURCES)))
    # Findings tokens built from the head's probabilities carry nothing while the head is still
    # learning, so the text learns to read the latents and then barely follows the tokens
    # (docs/results.md); teacher forcing hands a share of the studies their labels from the first step.
    findings_tokens_teacher: float = field(default=0.0, metadata=_help(
        "share of training studies (drawn each step) whose findings tokens are built from their findings "
        "targets instead of the head's probabilities (needs a model with findings tokens); generation "
        "always reads the head's"))
    # What the text is taught to follow. A study's labels say what its film shows, but its report
    # leaves some of it unsaid (a hedged atelectasis, a parent observation); taught on the labels the
    # text learns that a token is only sometimes written, and greedy decoding writes it only when the
    # wording it most often sees does. Taught on the report's own reading, a token is always written.
    findings_tokens_teacher_targets: str = field(default="labels", metadata=_help(
        "what the teacher-forced findings tokens are built from: 'labels', the findings head's targets; "
        "'readings', the labeler's reading of the study's report, what its text states (needs a reading "
        "head). Generation reads the findings head's either way", choices=["labels", "readings"]))
    weight_decay: float = 0.1
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    eval_every: int = field(default=50, metadata=_help("steps between validation losses"))
    save_every: int = field(default=50, metadata=_help("steps between checkpoints (a killed run resumes from the last)"))
    eval_batches: int | None = field(default=None, metadata=_help("validation batches per evaluation (None: all)"))
    seed: int = field(default=0, metadata=_help("seed of the new layers, the data order, the splits and the sampling"))
    bf16: bool | None = field(default=None, metadata=_help("bf16 autocast (None: on for CUDA, off for CPU)"))
    gradient_checkpointing: bool = False
    # On a GPU the eager model is host-bound at these sizes (bench/gpu/README.md); the first step
    # pays the compilation. It changes the arithmetic's order, not the recipe.
    compile: bool = field(default=False, metadata=_help(
        "torch.compile every block (flamingo_lib.modeling.compile; worth it on a GPU)"))
    # On a GPU the whole supervised step (forward, loss, backward) can be one compiled graph;
    # length buckets keep the shapes it sees few (docs/training.md, "A training step as one graph").
    compile_step: bool = field(default=False, metadata=_help(
        "torch.compile the supervised step (forward, loss and, through AOTAutograd, backward); set "
        "pad_to_multiple_of with it (e.g. 32) so it compiles once per length bucket, not per batch"))
    pad_to_multiple_of: int | None = field(default=None, metadata=_help(
        "pad each batch's text to a multiple of this many tokens (padding takes no loss: the loss equals the "
        "unpadded one up to float rounding); None: to the batch's longest, as the processor pads. On a GPU "
        "with compile_step or compile: e.g. 32"))
    log_every: int | None = field(default=None, metadata=_help(
        "steps between reads of the training losses from the device (metrics.csv rows, TensorBoard, the "
        "progress bar's loss are written then, for every step); None: at each evaluation and checkpoint. "
        "Each read waits for the device to finish its queued work"))
    max_nonfinite: int = field(default=0, metadata=_help(
        "batches with a NaN/inf loss tolerated (skipped and reported) before the run fails"))
    progress: bool = field(default=True, metadata=_help("progress bars"))
    overwrite: bool = field(default=False, metadata=_help(
        "replace a training run already in out_dir (without it, such a run is continued with --resume or refused)"))

    def __post_init__(self) -> None:  # before minutes of training, not after them
        check_ranges(self, at_least={"max_steps": 0, "batch_size": 1, "grad_accum": 1, "warmup_steps": 0,
                                     "eval_every": 1, "save_every": 1, "eval_batches": 1, "gate_lr_mult": 0,
                                     "ff_gate_lr_mult": 0, "ff_gate_open_step": 0, "findings_loss_weight": 0,
                                     "weight_decay": 0, "max_nonfinite": 0, "pad_to_multiple_of": 1,
                                     "log_every": 1},
                     above={"lr": 0, "max_grad_norm": 0, "repeat_factor_threshold": 0})
        if not 0 <= self.findings_tokens_teacher <= 1:
            raise ValueError(f"findings_tokens_teacher is a share of studies, in [0, 1]; got {self.findings_tokens_teacher}")
        if self.findings_tokens_teacher_targets not in ("labels", "readings"):
            raise ValueError("findings_tokens_teacher_targets must be 'labels' or 'readings', "
                             f"got {self.findings_tokens_teacher_targets!r}")
        if self.findings_targets not in FINDINGS_TARGET_SOURCES:
            raise ValueError(f"findings_targets must be one of {FINDINGS_TARGET_SOURCES}, got {self.findings_targets!r}")
        if self.ff_gate_open_step is not None and self.ff_gate_lr_mult == 0:
            raise ValueError("ff_gate_open_step is set but ff_gate_lr_mult is 0: the feed-forward gates would never "
                             "open; give them a learning-rate multiple")
        if self.compile and self.compile_step:
            raise ValueError("compile and compile_step are both set: compile_step compiles the blocks within the "
                             "whole step; set one of them")

    #: The knobs that change the trained weights (a change retrains a pipeline run); the others
    #: say where and how visibly the same weights are made.
    WEIGHT_KNOBS = ("max_steps", "batch_size", "grad_accum", "lr", "gate_lr_mult", "ff_gate_lr_mult",
                    "ff_gate_open_step", "warmup_steps", "repeat_factor_threshold", "findings_loss_weight",
                    "weight_decay", "max_grad_norm", "seed", "bf16")
