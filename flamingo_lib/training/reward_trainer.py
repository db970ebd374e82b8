"""Reward fine-tuning after the supervised stage: self-critical sequence training (Rennie et al.
2017) or GRPO's group baseline, on the clinical reward of :mod:`flamingo_lib.training.reward`.

Per step, for each study of the batch: ``samples_per_study`` reports are sampled from the model
(temperature ``temperature``), each rewarded against the study's reference report; the advantage
of a sample is its reward minus the baseline, the greedy report's reward (``baseline="greedy"``,
self-critical) or the mean reward of the study's samples (``"group"``, GRPO). The policy loss is
``-sum(advantage x log p(sample)) / sampled tokens`` (each token of a sample weighed alike), and the
supervised loss on the reference reports (LM and findings head, as the supervised stage computes
it) is added with weight ``anchor_weight``, so that the wording stays the training reports'.

It is the supervised :class:`~flamingo_lib.training.trainer.Trainer` with another loss per batch:
the same parameters train (the frozen LM and encoder stay frozen), with the same checkpoints,
bit-identical resume (the sampling draws from the RNG the checkpoint saves), NaN reporting,
progress bar and Accelerate. ``metrics.csv`` gains the mean reward of the samples, of the baseline
and of the greedy reports. TRL's ``GRPOTrainer`` is not used: it drives a text-only causal LM
through its own generation and reference-model copies, where a Flamingo needs its media inputs at
every step; the loop here is the part of it that applies (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from flamingo_lib.training.config import TrainConfig, _help, check_ranges
from flamingo_lib.training.reward import Fluency, rewards
from flamingo_lib.training.trainer import ReportCollator, Trainer

BASELINES = ("greedy", "group")


@dataclass
class RewardConfig(TrainConfig):
    """The reward stage's knobs; the rest are :class:`TrainConfig`'s (its defaults for the stage:
    fewer steps, a lower learning rate, no warmup)."""

    out_dir: str = field(default="runs/reward", metadata=_help("where the reward stage writes its run"))
    max_steps: int = field(default=200, metadata=_help("reward fine-tuning steps"))
    lr: float = 3e-4
    warmup_steps: int = 0
    samples_per_study: int = field(default=4, metadata=_help("reports sampled per study and step"))
    temperature: float = field(default=1.0, metadata=_help("sampling temperature of those reports"))
    baseline: str = field(default="greedy", metadata=_help(
        "what a sample's reward is compared with: 'greedy' (self-critical: the greedy report's reward) or "
        "'group' (GRPO: the mean reward of the study's samples)"))
    anchor_weight: float = field(default=1.0, metadata=_help(
        "weight of the supervised loss on the reference reports (keeps the wording the training reports')"))
    fluency_weight: float = field(default=0.0, metadata=_help(
        "weight of a per-report text score (sentence BLEU-4 in the pipeline) added to the clinical reward"))
    max_new_tokens: int = field(default=60, metadata=_help("longest sampled report, in tokens"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least={"samples_per_study": 1, "anchor_weight": 0, "fluency_weight": 0,
                                     "max_new_tokens": 1}, above={"temperature": 0})
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.baseline == "group" and self.samples_per_study < 2:
            raise ValueError("the group baseline needs samples_per_study >= 2 (one sample is its own mean)")

    WEIGHT_KNOBS = TrainConfig.WEIGHT_KNOBS + ("samples_per_study", "temperature", "baseline", "anchor_weight",
                                               "fluency_weight", "max_new_tokens")


class RewardTrainer(Trainer):
    """Fine-tunes a supervised model on the clinical reward (module docstring).

    Args:
        model: the supervised stage's model (its weights are the start).
        labeler: report -> CheXpert labels (default: the offline labeler).
        fluency: per-report text score added with ``fluency_weight`` (needed when that is not 0).
        the rest: as :class:`~flamingo_lib.training.trainer.Trainer`'s.
    """

    def __init__(self, model: Any, train_set: Sequence[Any], val_set: Sequence[Any] | None,
                 collator: ReportCollator, config: RewardConfig, record: dict[str, Any] | None = None,
                 num_workers: int = 0, labeler: Callable[[str], dict] | None = None,
                 fluency: Fluency | None = None) -> None:
        if config.fluency_weight and fluency is None:  # before any model is prepared
            raise ValueError(f"fluency_weight={config.fluency_weight} needs a fluency scorer: pass fluency= "
                             "(e.g. flamingo_lib.evaluation.metrics.sentence_bleu)")
        super().__init__(model, train_set, val_set, collator, config, record, num_workers)
        self.fluency = fluency
        if labeler is None:
            from flamingo_lib.labeling.labeler import label_report as labeler
        self.labeler = labeler
        collator.with_reports = True
        self.extra_metrics = ("reward", "baseline_reward", "greedy_reward")

    def _media(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch's visual input (patch tokens from a feature cache, or pixels)."""
        return {k: batch[k] for k in ("image_embeddings", "pixel_values") if k in batch}

    @torch.no_grad()
    def _decode(self, batch: dict[str, Any], prompts: list[str], **generate_kwargs: Any) -> list[str]:
        """Reports for the batch's studies (``num_return_sequences`` each, study by study)."""
        processor, model = self.collator.processor, self.unwrapped
        prompts = processor.encode_text(prompts, padding_side="left")
        prompts = {k: v.to(self.accelerator.device) for k, v in prompts.items()}
        model.eval()
        try:
            ids = model.generate(**prompts, **self._media(batch), max_new_tokens=self.config.max_new_tokens,
                                 **generate_kwargs)
        finally:
            model.train()
        return model.new_reports(processor, ids, prompts["input_ids"].shape[1])

    def _batch_loss(self, batch: dict[str, Any], indices: Sequence[int]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cfg, processor = self.config, self.collator.processor
        references, prompts = batch.pop("reports"), batch.pop("prompts")
        k = cfg.samples_per_study
        sampled = self._decode(batch, prompts, do_sample=True, top_k=0, temperature=cfg.temperature,
                               num_return_sequences=k)
        truth = [self.labeler(r) for r in references]
        repeated = [r for r in references for _ in range(k)]
        reward = rewards(sampled, repeated, self.labeler, [t for t in truth for _ in range(k)], self.fluency,
                         cfg.fluency_weight).view(-1, k)  # (B, k)
        greedy = rewards(self._decode(batch, prompts), references, self.labeler, truth, self.fluency,
                         cfg.fluency_weight)  # (B,)
        baseline = greedy if cfg.baseline == "greedy" else reward.mean(-1)
        advantage = (reward - baseline[:, None]).flatten().to(self.accelerator.device)  # (B * k,)

        # the samples teacher-forced: their per-token log-probabilities, with the batch's media per sample
        text = processor.text_batch(sampled, [p for p in prompts for _ in range(k)])
        text = {key: value.to(self.accelerator.device) for key, value in text.items()}
        media = {key: value.repeat_interleave(k, 0) for key, value in self._media(batch).items()}
        mean_nll = self.model(**text, **media, loss_reduction="none").loss  # (B * k,) per-sample mean over tokens
        tokens = (text["labels"][:, 1:] != -100).sum(-1).clamp(min=1)
        policy = (advantage * mean_nll * tokens).sum() / tokens.sum()  # -sum A log p / tokens

        supervised, lm_loss, findings = super()._batch_loss(batch, indices)
        self.step_logs = {"reward": float(reward.mean()), "baseline_reward": float(baseline.mean()),
                          "greedy_reward": float(greedy.mean())}
        return policy + cfg.anchor_weight * supervised, lm_loss, findings
