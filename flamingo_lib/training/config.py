"""The knobs of one training run (:class:`TrainConfig`), read by :class:`flamingo_lib.training.trainer.Trainer`
and set from the command line by :mod:`flamingo_lib.cli.train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Knobs of one training run. Defaults are the CPU-sized recipe."""

    out_dir: str = "runs/train"
    max_steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    # The tanh gates start at 0, so the cross-attention weights behind them get no gradient until
    # the gates open, and a gate opens only as fast as its own lr. Measured on the phantom with the
    # "tiny" preset: at 1x the attention gates stayed within 0.03 of 0 for 200 steps and the
    # model's loss with its own image equalled that with another study's image; at 30x the
    # image already lowered the loss by step 200 (docs/results.md).
    gate_lr_mult: float = 30.0
    # The feed-forward gates' multiple (None: gate_lr_mult). The feed-forward half of each gated
    # block sees the text only, so it can lower the loss without the image: measured with the
    # convolutional embedded encoder, at 30x it opened (tanh up to 0.99) while the attention gates
    # stayed near 0 and the model wrote one report for every image; held shut (0) the attention
    # gates opened (|tanh| 0.37-0.97) and findings F1 rose from 0.000 to 0.220 (docs/results.md).
    ff_gate_lr_mult: float | None = None
    # Open the feed-forward gates only from this step on (None: from the start): once the
    # attention gates are open the feed-forward half sees image-conditioned text, not text alone.
    ff_gate_open_step: int | None = None
    # Repeat-factor sampling of studies with rare findings (flamingo_lib.training.sampling): observations in
    # fewer than this fraction of training studies are repeated by sqrt(t / f). None: each study
    # once per epoch.
    repeat_factor_threshold: float | None = None
    # Weight of the findings head's binary cross-entropy (flamingo_lib.modeling.heads.findings) added to the
    # LM loss; 0: the head, if any, does not train. Needs a model built with findings_head=[...].
    findings_loss_weight: float = 0.0
    # What the findings head learns: "labels", each study's own labels (the dataset's; the labeler's
    # reading of its report where it has none), "reports", always the labeler's reading, or "both",
    # their mean (flamingo_lib.labeling.targets.FindingTargets.for_samples says why). A model with a
    # reading head (FlamingoConfig.reading_head) also learns the reading, on its second outputs.
    findings_targets: str = "labels"
    weight_decay: float = 0.1
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    eval_every: int = 50
    save_every: int = 50
    eval_batches: int | None = None  # None: the whole validation set
    seed: int = 0
    bf16: bool | None = None  # None: bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    # torch.compile every block (flamingo_lib.modeling.compile.compile_blocks): on a GPU the eager model is
    # host-bound at these sizes (bench/gpu/README.md); the first step pays the compilation.
    compile: bool = False
    max_nonfinite: int = 0  # batches with NaN/inf loss tolerated (skipped, reported) before failing
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
