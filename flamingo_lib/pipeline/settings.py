"""`PipelineSettings`: everything a workbench run depends on, composed of one settings object per
layer, each field declared once with its default.

- :class:`ModelSettings`: the preset and what the workbench sets on its ``FlamingoConfig``;
- :class:`DataSettings`: the data source and how much of each split is read;
- :class:`~flamingo_lib.training.config.TrainConfig`: the training recipe;
- :class:`RewardSettings`: the optional reward fine-tuning after the supervised training;
- :class:`EvalSettings`: decoding, findings-guided decoding and the finding-usage measurement.

:meth:`PipelineSettings.training_key` names the settings a trained model depends on; the pipeline
(:mod:`flamingo_lib.pipeline.steps`) retrains when a run's saved key differs from it. The
command-line flags of ``flamingo-demo`` and ``flamingo-train`` are generated from these classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamingo_lib.cache_dirs import cache_root
from flamingo_lib.modeling.config import FROZEN_DTYPES, PRESETS, FlamingoConfig
from flamingo_lib.training.config import TrainConfig, check_ranges


@dataclass
class ModelSettings:
    """The preset and what the workbench sets on it (``FlamingoConfig.from_preset`` overrides).

    Whether the model has a findings head is the training recipe's call:
    ``TrainConfig.findings_loss_weight > 0`` (see :meth:`flamingo_config`).
    """

    preset: str = field(default="tiny", metadata={"help": (
        "FlamingoConfig preset: 'tiny' (the embedded encoders: an LM pretrained here on first use, ~1 min, and "
        "the vision encoder shipped in data/encoders), 'tiny-random' (random frozen encoders: the mechanics only), "
        "'smol' (the real SmolLM2 LM), 'biomed' (BiomedCLIP + BioGPT: needs the hub or its cache)"),
        "choices": list(PRESETS)})
    pretrain_scale: float | None = field(default=None, metadata={"help": (
        "the embedded encoders' pretraining length multiplier (None: $FLAMINGO_PRETRAIN_SCALE, else 1)")})
    # Findings tokens: on the phantom, over two training seeds, no gain in findings F1 and a lower
    # CIDEr (docs/results.md).
    findings_tokens: bool = field(default=False, metadata={"help": (
        "hand the findings head's probabilities to the LM as one media token per observation (needs the head)")})
    # Change statements on the longitudinal phantom (docs/results.md, "Clinical context").
    prior_findings_tokens: bool = field(default=False, metadata={"help": (
        "with a prior study's films in the prompt, each findings token spells out the observation's joint state "
        "in the study and the prior (new, kept, gone, absent; needs findings_tokens)")})
    # "Increased" / "decreased" need each finding's size on both studies (docs/results.md,
    # "Clinical context").
    severity_head: bool = field(default=False, metadata={"help": (
        "a further output of the findings head per observation: its severity (small .. large) as the report "
        "states it; with prior_findings_tokens a kept finding's token also says how its severity moved "
        "(needs the head)")})
    # Guided decoding then weighs a report against what the image shows and against what the
    # radiologist writes (docs/results.md).
    reading_head: bool | None = field(default=None, metadata={"help": (
        "a second output of the findings head per observation, trained on the labeler's reading of each "
        "report (None: whenever the model has the head; true needs the head)")})
    # bench/RESULTS.md 4b: a biomed-size CPU step 1.56x as fast in bfloat16; the results in
    # docs/results.md were measured in float32 (what auto is on CPU). On CUDA, bf16 autocast would
    # otherwise cast every frozen weight at every use (docs/gpu.md).
    frozen_dtype: str = field(default="auto", metadata={"help": (
        "dtype of the frozen LM and vision encoder (the trained layers stay float32); auto: bfloat16 when "
        "CUDA is there, else float32"), "choices": ["auto", *FROZEN_DTYPES]})
    # A study's views are consecutive <image> tokens: one media group, which its report reads
    # whole under the immediate rule; a prior study's films are a group of their own, read by the
    # prior's report and not by the study's (flamingo_lib.processing.context).
    only_attend_immediate_media: bool = field(default=True, metadata={"help": (
        "text attends to the latest media group only (Flamingo's rule; a study's views are one group); false: "
        "to every earlier image, a prior study's films included")})

    def has_reading_head(self, train: TrainConfig) -> bool:
        """Whether the model has a reading head under the ``train`` recipe."""
        return bool(train.findings_loss_weight) and self.reading_head is not False

    def __post_init__(self) -> None:  # before minutes of training, not after them
        if self.frozen_dtype == "auto":  # resolved here: a run records (and its key holds) what it was
            import torch

            self.frozen_dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        if self.frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype={self.frozen_dtype!r}; allowed: {', '.join(FROZEN_DTYPES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; allowed presets: {', '.join(PRESETS)}")

    def flamingo_config(self, train: TrainConfig) -> FlamingoConfig:
        """The model's config for the ``train`` recipe: where the findings-head rules are checked.

        The model has a findings head (over the findings observations) exactly when the recipe
        trains one (``findings_loss_weight > 0``); findings tokens and the reading head (its second
        output) need it: asked for without it they are refused, and the reading head's default
        (None) follows it.

        Raises:
            ValueError: ``findings_tokens``, ``reading_head=True`` or ``severity_head`` without a findings head.
        """
        from flamingo_lib.observations import FINDINGS_OBSERVATIONS

        head = list(FINDINGS_OBSERVATIONS) if train.findings_loss_weight else None
        for name in ("findings_tokens", "prior_findings_tokens", "reading_head", "severity_head"):
            if getattr(self, name) and head is None:
                raise ValueError(f"{name} needs the findings head: set findings_loss_weight > 0")
        return FlamingoConfig.from_preset(self.preset, self.pretrain_scale, seed=train.seed, findings_head=head,
                                          findings_tokens=self.findings_tokens,
                                          prior_findings_tokens=self.prior_findings_tokens,
                                          reading_head=self.has_reading_head(train),
                                          severity_head=self.severity_head,
                                          frozen_dtype=self.frozen_dtype,
                                          only_attend_immediate_media=self.only_attend_immediate_media)


@dataclass
class DataSettings:
    """Which data, at which image size, and how much of each split."""

    source: str = field(default="phantom:templated", metadata={"help": (
        "data source spec (flamingo_lib.data.sources: phantom[:templated|:iu], iu:DIR, r2gen:DIR, mimic:DIR, chex:DIR; "
        "r2gen and chex files of unknown origin are private unless the spec ends in ;licence=open)"),
        "aliases": ["--data"]})
    image_size: int = field(default=224, metadata={"help": "size of rendered phantom images"})
    max_train_samples: int | None = None  # None: the whole split
    # the validation loss of every training eval (64 studies keep it quick)
    max_val_samples: int | None = 64
    max_test_samples: int | None = None  # None: the whole test split (phantom: 250 studies)
    feature_storage: str = field(default="float16", metadata={"help": (
        "how the feature cache stores patch tokens: float16, or int8 with a scale per token (about half the disk; "
        "its quality cost on the phantom: docs/data.md)"), "choices": ["float16", "int8"]})
    # A run trained with a context is asked with it (the processor saves it); the prior needs a
    # source that knows each study's prior (MIMIC-CXR ';priors=true', phantom:longitudinal).
    context: str = field(default="", metadata={"help": (
        "the clinical context in each study's prompt, comma-separated: indication, prior_films, prior_report "
        "(prior: both); empty: the study's films alone")})
    num_workers: int = field(default=0, metadata={"help": (
        "processes decoding films (the feature cache, training batches, the nearest-neighbour baseline; 0: this "
        "process; on a large dataset of full-size JPEGs, the cores you can spare)")})


    def __post_init__(self) -> None:
        # image_size: each source knows its own smallest (the phantom's renderer, a film's downscaling)
        check_ranges(self, at_least={"max_train_samples": 1, "max_val_samples": 1, "max_test_samples": 1,
                                    "num_workers": 0})
        from flamingo_lib.data.feature_cache import FEATURE_STORAGES

        if self.feature_storage not in FEATURE_STORAGES:
            raise ValueError(f"DataSettings.feature_storage must be one of {FEATURE_STORAGES}, got {self.feature_storage!r}")
        from flamingo_lib.processing.context import StudyContext

        # one spelling per context (unknown parts refused): "prior" and "prior_films,prior_report" key alike,
        # and "none" keys as no context
        self.context = ",".join(StudyContext.parse(self.context).names)


@dataclass
class EvalSettings:
    """How the trained model is decoded and measured on the test split."""

    num_beams: int = 1
    max_new_tokens: int = 60
    # Reports sampled per test study to measure which findings the text follows (finding_usage).
    usage_samples: int = 8
    # Findings-guided decoding (flamingo_lib.inference.guided_decoding), scored as a system of its
    # own when the model has a findings head. At temperature 1.0 two thirds of the samples hold a
    # sentence no training report has, often garbled, and the head's choice favours them
    # (docs/results.md).
    guided_candidates: int = field(default=32, metadata={"help": "candidates sampled per study (0: no guided decoding)"})
    guided_temperature: float = 0.7
    # Val studies the guided threshold is picked on (None: the whole val split), apart from
    # max_val_samples: on 64 studies, thresholds 0.3 and 0.4 tied; 250 is the phantom's whole val split.
    guided_val_samples: int | None = 250
    metrics: list[str] = field(default_factory=list, metadata={"help": (
        "RadEval metrics scored beside BLEU, METEOR, ROUGE-L, CIDEr and clinical efficacy: bleu, rouge (offline), "
        "radgraph, f1chexbert, bertscore, ratescore, radcliq, green, srrbert (need their weights in the local "
        "Hugging Face cache; listed as not computed otherwise)")})

    # Uncertainty of the results table (flamingo_lib.evaluation.uncertainty): Pipeline.uncertainty().
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples over test studies (0: none)"})
    n_permutations: int = field(default=10_000, metadata={"help": (
        "approximate-randomisation trials of each system against the model (0: no p-values)")})

    def __post_init__(self) -> None:
        if self.metrics:
            from flamingo_lib.evaluation.radeval_metrics import check_metrics

            self.metrics = check_metrics(self.metrics)
        if self.guided_val_samples is not None and self.guided_val_samples < 1:
            raise ValueError(f"guided_val_samples must be >= 1 or None (the whole val split), got {self.guided_val_samples}")
        check_ranges(self, at_least={"num_beams": 1, "max_new_tokens": 1, "usage_samples": 1, "guided_candidates": 0,
                                     "n_resamples": 0, "n_permutations": 0},
                     above={"guided_temperature": 0})


@dataclass
class RewardSettings:
    """The reward fine-tuning stage after the supervised one
    (:mod:`flamingo_lib.training.reward_trainer`); off at 0 steps. Its other knobs (clipping, weight
    decay, gates' learning rates, findings loss, seed) are the supervised recipe's."""

    reward_steps: int = field(default=0, metadata={"help": (
        "reward fine-tuning steps after the supervised training (0: none); the run's model is then RUN/reward/model")})
    reward_lr: float = field(default=3e-4, metadata={"help": "the reward stage's learning rate"})
    reward_batch_size: int = field(default=8, metadata={"help": "studies per reward step"})
    reward_samples: int = field(default=4, metadata={"help": "reports sampled per study and reward step"})
    reward_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of those reports"})
    reward_baseline: str = field(default="greedy", metadata={"help": (
        "'greedy' (self-critical) or 'group' (GRPO's mean over the study's samples)")})
    reward_anchor: float = field(default=1.0, metadata={"help": "weight of the supervised loss on the references"})
    reward_fluency: float = field(default=0.0, metadata={"help": "weight of sentence BLEU-4 in the reward"})

    def reward_config(self, train: TrainConfig, out_dir: str | Path) -> Any:
        """The stage's :class:`~flamingo_lib.training.reward_trainer.RewardConfig` (checked here)."""
        from flamingo_lib.training.reward_trainer import RewardConfig

        shared = {k: v for k, v in dataclasses.asdict(train).items()
                  if k not in ("out_dir", "max_steps", "lr", "batch_size", "warmup_steps", "grad_accum")}
        return RewardConfig(**shared, out_dir=str(out_dir), max_steps=self.reward_steps, lr=self.reward_lr,
                            batch_size=self.reward_batch_size, samples_per_study=self.reward_samples,
                            temperature=self.reward_temperature, baseline=self.reward_baseline,
                            anchor_weight=self.reward_anchor, fluency_weight=self.reward_fluency,
                            max_new_tokens=60)

    def __post_init__(self) -> None:  # before minutes of training, not after them
        if self.reward_steps:
            self.reward_config(TrainConfig(), "unused")

    def key(self) -> dict[str, Any]:
        """The settings the stage's weights depend on (empty when the stage is off)."""
        return dataclasses.asdict(self) if self.reward_steps else {}


#: The members of :class:`PipelineSettings` and the class of each.
MEMBERS = {"model": ModelSettings, "data": DataSettings, "train": TrainConfig, "reward": RewardSettings,
           "eval": EvalSettings}


@dataclass
class PipelineSettings:
    """Everything a run depends on; the defaults are the CPU-sized embedded run.

    ``PipelineSettings.from_flat(max_steps=300, preset="tiny-random")`` sets fields by name
    without naming their member (each name belongs to exactly one).
    """

    run_dir: str = "runs/demo"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardSettings = field(default_factory=RewardSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @classmethod
    def from_flat(cls, **values: Any) -> "PipelineSettings":
        """Settings with each keyword set on the member that declares it (``run_dir`` on the run).

        Raises:
            TypeError: a keyword no member declares, naming the ones that exist.
        """
        owner = flat_names()
        unknown = sorted(set(values) - set(owner) - {"run_dir"})
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; the settings are: run_dir, "
                            + ", ".join(sorted(owner)))
        members = {name: kind(**{k: v for k, v in values.items() if owner.get(k) == name})
                   for name, kind in MEMBERS.items()}
        return cls(**({"run_dir": values["run_dir"]} if "run_dir" in values else {}), **members)

    def __post_init__(self) -> None:
        # the pipeline trains into the run's own train/ folder
        self.train = dataclasses.replace(self.train, out_dir=str(Path(self.run_dir) / "train"))

    def flat(self) -> dict[str, Any]:
        """Every setting by its own name (``run_dir`` and each member's fields)."""
        members = (dataclasses.asdict(getattr(self, name)) for name in MEMBERS)
        return {"run_dir": self.run_dir} | {k: v for fields in members for k, v in fields.items()}

    @property
    def feature_root(self) -> Path:
        """Shared across runs: features depend only on the encoder and the images."""
        return cache_root("features")

    def flamingo_config(self) -> FlamingoConfig:
        """The model's config (:meth:`ModelSettings.flamingo_config` for this run's recipe)."""
        return self.model.flamingo_config(self.train)

    def training_key(self) -> dict[str, Any]:
        """The settings that determine the trained weights (a changed one retrains)."""
        from flamingo_lib.data.feature_cache import FEATURE_FORMAT_VERSION
        from flamingo_lib.data.sources import training_source

        m, d, t = self.model, self.data, self.train
        key = {"preset": m.preset, "pretrain_scale": m.pretrain_scale, "data": training_source(d.source),
               "image_size": d.image_size,
               "max_train_samples": d.max_train_samples, **{k: getattr(t, k) for k in TrainConfig.WEIGHT_KNOBS},
               "frozen_dtype": m.frozen_dtype, "only_attend_immediate_media": m.only_attend_immediate_media,
               "feature_storage": d.feature_storage,  # the model learns from the stored tokens
               # a model trained on features of another format reads other inputs
               "feature_format": FEATURE_FORMAT_VERSION}
        if d.context:  # the prompt the model learns after (absent when empty: earlier runs' keys stand)
            key["context"] = d.context
        if t.findings_loss_weight > 0:  # the findings head learns the labels or the labeler's readings
            from flamingo_lib.labeling.version import rules_version

            key |= {"findings_targets": t.findings_targets, "findings_tokens": m.findings_tokens,
                    "reading_head": m.has_reading_head(t), "labeler": rules_version()}
            if t.findings_tokens_teacher:  # absent at 0: earlier runs' keys stand
                key["findings_tokens_teacher"] = t.findings_tokens_teacher
                if t.findings_tokens_teacher_targets != "labels":  # likewise
                    key["findings_tokens_teacher_targets"] = t.findings_tokens_teacher_targets
            if m.prior_findings_tokens:  # absent when off, likewise
                key["prior_findings_tokens"] = True
            if m.severity_head:  # likewise; the head learns what the severity reader reads
                from flamingo_lib.labeling.version import severity_rules_version

                key |= {"severity_head": True, "severity_rules": severity_rules_version()}
        return key

    @classmethod
    def from_training_key(cls, key: dict[str, Any], run_dir: str | Path, /, **overrides: Any) -> "PipelineSettings":
        """The settings a run was trained with, from the training key it saved, in ``run_dir``:
        keys no setting holds any more are dropped, ``overrides`` (flat names, ``run_dir`` too) win."""
        renamed = {"source" if k == "data" else k: v for k, v in key.items()}
        owner = flat_names()
        return cls.from_flat(**({k: v for k, v in renamed.items() if k in owner} | {"run_dir": str(run_dir)} | overrides))


def flat_names() -> dict[str, str]:
    """``{setting name: the member that declares it}`` over every member's fields."""
    owner: dict[str, str] = {}
    for name, kind in MEMBERS.items():
        for f in dataclasses.fields(kind):
            if f.name in owner:  # one declaration per setting: a second one would make from_flat ambiguous
                raise TypeError(f"setting {f.name!r} is declared by both {owner[f.name]} and {name}")
            owner[f.name] = name
    return owner
