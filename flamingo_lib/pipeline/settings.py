"""`PipelineSettings`: everything a workbench run depends on, and which of it decides the weights.

:meth:`PipelineSettings.training_key` names the settings a trained model depends on; the pipeline
(:mod:`flamingo_lib.pipeline.steps`) retrains when a run's saved key differs from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flamingo_lib.cache_dirs import cache_root
from flamingo_lib.modeling.config import FROZEN_DTYPES


@dataclass
class PipelineSettings:
    """Everything a run depends on; the defaults are the CPU-sized embedded run."""

    run_dir: str = "runs/demo"
    preset: str = "tiny"
    pretrain_scale: float | None = None  # embedded encoders' pretraining length (None: env, else 1)
    data: str = "phantom:templated"
    image_size: int = 224
    max_train_samples: int | None = None
    max_val_samples: int | None = 64
    max_test_samples: int | None = None  # the whole test split (phantom: 250 studies)
    max_steps: int = 1500  # ~7 min on 2 cores with the "tiny" preset (batch 16)
    batch_size: int = 16
    # 3e-3: findings micro-F1 0.322 against 0.234 at 1e-3 on the phantom (1e-2 collapsed to one
    # normal report for every image); docs/results.md.
    lr: float = 3e-3
    gate_lr_mult: float = 30.0  # see TrainConfig.gate_lr_mult
    ff_gate_lr_mult: float | None = 0.0  # feed-forward gates held shut: see TrainConfig.ff_gate_lr_mult
    ff_gate_open_step: int | None = None  # see TrainConfig.ff_gate_open_step
    warmup_steps: int = 20
    repeat_factor_threshold: float | None = None  # see TrainConfig.repeat_factor_threshold
    # The auxiliary findings head on the resampler's latents (flamingo_lib.modeling.heads.findings) and the
    # weight of its loss; 0: no head. docs/results.md.
    findings_loss_weight: float = 1.0
    findings_targets: str = "labels"  # see TrainConfig.findings_targets
    # The head's probabilities handed to the LM as one media token per observation
    # (flamingo_lib.modeling.heads.findings_tokens; needs the head). Off: on the phantom, over two training seeds,
    # no gain in findings F1 and a lower CIDEr (docs/results.md).
    findings_tokens: bool = False
    # A second output of the head per observation, trained on the labeler's reading of each report
    # (FlamingoConfig.reading_head): guided decoding then weighs a report against what the image
    # shows and against what the radiologist writes (docs/results.md).
    reading_head: bool = True
    eval_every: int = 50
    seed: int = 0
    num_beams: int = 1
    max_new_tokens: int = 60
    # Reports sampled per test study to measure which findings the text follows (finding_usage).
    usage_samples: int = 8
    # Findings-guided decoding (flamingo_lib.inference.guided_decoding), scored as a system of its own when
    # the model has a findings head: candidates sampled per study (0: off), at this temperature
    # (at 1.0 two thirds of the samples hold a sentence no training report has, often garbled, and
    # the head's choice favours them; docs/results.md).
    guided_candidates: int = 32
    guided_temperature: float = 0.7
    # Val studies the guided threshold is picked on (None: the whole val split), apart from
    # max_val_samples, which sizes the validation loss of every training eval: on the 64 studies
    # of that, thresholds 0.3 and 0.4 tied; 250 is the phantom's whole val split.
    guided_val_samples: int | None = 250
    # FlamingoConfig.frozen_dtype: "bfloat16" holds the frozen LM and vision encoder in half the
    # memory (bench/RESULTS.md 4b: a biomed-size CPU step 1.56x as fast); the results in docs/results.md
    # were measured in float32.
    frozen_dtype: str = "float32"
    # FlamingoConfig.only_attend_immediate_media. A study's prompt holds one <image> per view, side
    # by side, so with the immediate rule its report attends to the last view directly and to the
    # others only through their <image> tokens' hidden states. False: the report attends to every
    # view of its study (one study per sequence, so no other study's images are there to see).
    # The phantom renders one view: nothing changes there; multi-view sources (IU X-Ray, MIMIC-CXR
    # with all views per study) would rather have False.
    only_attend_immediate_media: bool = True
    # torch.compile every block (GPU runs: bench/gpu/README.md). Not in the training key: it
    # changes the arithmetic's order, not the recipe, so toggling it does not retrain.
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:  # before minutes of training, not after them
        if self.guided_val_samples is not None and self.guided_val_samples < 1:
            raise ValueError(f"guided_val_samples must be >= 1 or None (the whole val split), got {self.guided_val_samples}")
        if self.frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype={self.frozen_dtype!r}; allowed: {', '.join(FROZEN_DTYPES)}")

    @property
    def feature_root(self) -> Path:
        """Shared across runs: features depend only on the encoder and the images."""
        return cache_root("features")

    def training_key(self) -> dict[str, Any]:
        """The settings that determine the trained weights (a changed one retrains)."""
        keys = ("preset", "pretrain_scale", "data", "image_size", "max_train_samples", "max_steps", "batch_size",
                "lr", "gate_lr_mult", "ff_gate_lr_mult", "ff_gate_open_step", "warmup_steps",
                "repeat_factor_threshold", "findings_loss_weight", "seed", "frozen_dtype", "only_attend_immediate_media")
        from flamingo_lib.data.feature_cache import FEATURE_FORMAT_VERSION

        # the feature format too: a model trained on features of another format reads other inputs
        key = {k: getattr(self, k) for k in keys} | {"feature_format": FEATURE_FORMAT_VERSION}
        if self.findings_loss_weight > 0:  # the findings head learns the labels or the labeler's readings
            from flamingo_lib.labeling.version import rules_version

            key["findings_targets"] = self.findings_targets
            key["findings_tokens"] = self.findings_tokens
            key["reading_head"] = self.reading_head
            key["labeler"] = rules_version()
        return key
