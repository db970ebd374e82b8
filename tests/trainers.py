"""Toy studies and a small trainer on them, shared by the training, compile and heads tests."""

from __future__ import annotations

from dataclasses import replace

from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data import CXRSample
from flamingo_lib.data.feature_cache import FeatureCache
from flamingo_lib.training.trainer import ReportCollator, TrainConfig, Trainer
from toy_data import TOY_STUDIES, toy_radiograph

TOY_LABELS = {"normal": {"No Finding": 1.0}, "left_effusion": {"Pleural Effusion": 1.0},
              "right_nodule": {"Lung Lesion": 1.0}, "cardiomegaly": {"Cardiomegaly": 1.0}}
SAMPLES = [CXRSample(id=f"toy-{i}-{kind}", images=[toy_radiograph(kind, 160)], report=report,
                     labels=TOY_LABELS[kind])
           for i, (kind, report) in enumerate(TOY_STUDIES * 2)]
# every other study a follow-up of the study before it (the prior-context mechanics)
FOLLOW_UPS = [replace(s, prior=SAMPLES[i - 1]) if i % 2 else s for i, s in enumerate(SAMPLES)]


def make_trainer(tmp_path, max_steps=6, feature_cache_root=None, num_workers=0, findings_tokens=False,
                 prior_findings_tokens=False, reading_head=False, severity_head=False, **overrides):
    """A trainer on the toy studies; with ``prior_findings_tokens``, on the follow-ups, their prompts holding
    the prior study."""
    from flamingo_lib.observations import FINDINGS_OBSERVATIONS

    head = list(FINDINGS_OBSERVATIONS) if overrides.get("findings_loss_weight") else None
    config = FlamingoConfig.from_preset("tiny-random", findings_head=head, findings_tokens=findings_tokens,
                                        prior_findings_tokens=prior_findings_tokens, reading_head=reading_head,
                                        severity_head=severity_head)
    model = FlamingoModel(config)
    processor = FlamingoProcessor(config, context="prior" if prior_findings_tokens else None)
    samples = FOLLOW_UPS if prior_findings_tokens else SAMPLES
    cache = None
    if feature_cache_root is not None:
        cache = FeatureCache(feature_cache_root, model, processor)
        cache.build([s.images[0] for s in SAMPLES], progress=False)
    # the mechanics on a head-less model, both gates trained (the recipe: a findings head, feed-forward gates shut)
    knobs = dict(batch_size=3, lr=3e-3, warmup_steps=2, eval_every=3, save_every=3, progress=False,
                 findings_loss_weight=0.0, ff_gate_lr_mult=None) | overrides
    train_config = TrainConfig(out_dir=str(tmp_path), max_steps=max_steps, **knobs)
    return Trainer(model, samples, samples[:2], ReportCollator(processor, cache), train_config, num_workers=num_workers)


def make_reward_trainer(tmp_path, max_steps=4, labeler=None, feature_cache_root=None, **overrides):
    """The reward stage on the toy studies: a tiny-random model, 2 samples per study, short reports."""
    from flamingo_lib.training.reward_trainer import RewardConfig, RewardTrainer

    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    cache = None
    if feature_cache_root is not None:
        cache = FeatureCache(feature_cache_root, model, processor)
        cache.build([s.images[0] for s in SAMPLES], progress=False)
    knobs = dict(batch_size=2, samples_per_study=2, max_new_tokens=6, lr=3e-3, eval_every=2, save_every=2,
                 progress=False, findings_loss_weight=0.0, ff_gate_lr_mult=None) | overrides
    reward_config = RewardConfig(out_dir=str(tmp_path), max_steps=max_steps, **knobs)
    return RewardTrainer(model, SAMPLES, SAMPLES[:2], ReportCollator(processor, cache), reward_config,
                         labeler=labeler)
