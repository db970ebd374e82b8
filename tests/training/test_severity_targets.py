"""Training a severity head: the batch's targets end with the sizes each report states, the prior's
with its own report's, and teacher forcing hands a taught study its stated sizes."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from trainers import FOLLOW_UPS, SAMPLES, make_trainer


def test_the_targets_end_with_each_reports_stated_severity(tmp_path):
    trainer = make_trainer(tmp_path, findings_loss_weight=1.0, findings_tokens=True, prior_findings_tokens=True,
                           severity_head=True, findings_tokens_teacher=0.5)
    collator, k = trainer.collator, len(trainer.unwrapped.config.findings_head)
    effusion = trainer.unwrapped.config.findings_head.index("Pleural Effusion")
    # a first study, then follow-ups: of a normal study, of one with "Small left pleural effusion."
    samples = [FOLLOW_UPS[0], FOLLOW_UPS[1], replace(SAMPLES[2], prior=SAMPLES[1]), FOLLOW_UPS[3]]
    batch = collator(samples)
    labels, prior = batch["finding_labels"], batch["prior_finding_labels"]
    assert labels.shape == (4, 2 * k) and prior.shape == (4, 2 * k)  # findings (no reading head), then sizes
    for i, sample in enumerate(samples):
        stated = "small left pleural effusion" in sample.report.lower()
        assert labels[i, k + effusion] == 0.0 if stated else math.isnan(labels[i, k + effusion])
        assert labels[i, k:].isnan().sum() >= k - 1  # one size at most in these reports
    assert prior[0].isnan().all()  # a first study: no prior
    assert prior[1, k:].isnan().all() and prior[2, k + effusion] == 0.0  # the prior's report's sizes
    assert torch.equal(prior[1:, :k], collator.finding_targets.for_samples([s.prior for s in samples[1:]],
                                                                           collator.findings_targets))
    torch.manual_seed(0)
    own, taught_prior = trainer._teacher_findings(labels, prior)
    assert own.shape == (4, 2 * k) and taught_prior.shape == (4, 2 * k)
    chosen = ~own[:, :k].isnan().all(-1)
    assert torch.equal(own[chosen, k:].nan_to_num(-1), labels[chosen, k:].nan_to_num(-1))


def test_a_run_with_a_severity_head_trains_and_its_loss_stays_finite(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, findings_loss_weight=1.0, findings_tokens=True,
                           prior_findings_tokens=True, severity_head=True, findings_tokens_teacher=0.5)
    head = trainer.unwrapped.flamingo.findings_head.severity.weight
    grown = trainer.unwrapped.flamingo.findings_tokens.grown
    before, grown_before = head.detach().clone(), grown.detach().clone()
    summary = trainer.fit()
    assert math.isfinite(summary["last_train_loss"]) and not summary["nonfinite_batches"]
    assert not torch.equal(head.detach(), before)  # the severities learned from the stated sizes
    assert not torch.equal(grown.detach(), grown_before)  # and the LM's loss reached the size direction


def test_the_head_keys_a_pipeline_run_only_when_on():
    from flamingo_lib.labeling.version import severity_rules_version
    from flamingo_lib.pipeline.settings import PipelineSettings

    plain = PipelineSettings.from_flat(run_dir="r", findings_tokens=True).training_key()
    sized = PipelineSettings.from_flat(run_dir="r", findings_tokens=True, severity_head=True).training_key()
    assert "severity_head" not in plain
    assert sized == plain | {"severity_head": True, "severity_rules": severity_rules_version()}
    assert PipelineSettings.from_flat(run_dir="r", severity_head=True, findings_tokens=True).model \
        .flamingo_config(PipelineSettings.from_flat(run_dir="r").train).severity_head
