"""Teacher-forced findings tokens: a share of the training studies reads its labels as tokens."""

from __future__ import annotations

import pytest
import torch

from trainers import make_trainer


def test_the_given_probabilities_replace_the_heads_where_they_are_not_nan():
    from flamingo_lib import FlamingoConfig, FlamingoModel

    config = FlamingoConfig.from_preset("tiny-random", findings_head=["Cardiomegaly", "Edema"], findings_tokens=True)
    model = FlamingoModel(config).eval()
    latents = torch.randn(2, 1, config.resampler_num_latents, model.flamingo.findings_tokens.present.shape[1])
    head = model.conditioning_media(latents)
    given = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")]])
    media = model.conditioning_media(latents, token_findings=given)
    n = config.resampler_num_latents
    assert torch.allclose(media[0, 0, n:], model.flamingo.findings_tokens(given[:1])[0])  # the labels' tokens
    assert torch.equal(media[1], head[1])  # NaN: the head's verdict stands
    assert not torch.allclose(media[0], head[0])
    mixed = model.conditioning_media(latents, token_findings=torch.tensor([[1.0, float("nan")]] * 2))
    assert torch.equal(mixed[..., n + 1, :], head[..., n + 1, :]) and not torch.equal(mixed[..., n, :], head[..., n, :])


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_the_trainer_hands_that_share_of_studies_their_targets(tmp_path, share):
    trainer = make_trainer(tmp_path, max_steps=4, findings_loss_weight=1.0, findings_tokens=True,
                           findings_tokens_teacher=share)
    seen, forward = [], trainer.unwrapped.forward

    def recording(*args, **kwargs):
        seen.append((kwargs.get("token_findings"), kwargs.get("finding_labels")))
        return forward(*args, **kwargs)

    trainer.unwrapped.forward = recording
    trainer.fit()
    training = [(given, labels) for given, labels in seen if labels is not None]  # not the validation passes
    assert len(training) == 4
    if share == 0.0:
        assert all(given is None for given, _ in training)
        return
    k = len(trainer.unwrapped.config.findings_head)
    rows = torch.cat([given for given, _ in training])
    taught = ~rows.isnan().all(-1)
    assert (rows[taught].isnan().sum() == 0) and rows[~taught].isnan().all()  # whole studies, never a mix
    targets = torch.cat([labels[:, :k] for _, labels in training])
    assert torch.equal(rows[taught], targets[taught])
    assert bool(taught.all()) if share == 1.0 else 0 < int(taught.sum()) < len(taught)


def test_teacher_forcing_needs_a_model_that_reads_findings_tokens(tmp_path):
    from flamingo_lib.training.config import TrainConfig

    with pytest.raises(ValueError, match="findings_tokens_teacher=0.5 but the model reads no findings tokens"):
        make_trainer(tmp_path, findings_loss_weight=1.0, findings_tokens_teacher=0.5)
    with pytest.raises(ValueError, match=r"share of studies, in \[0, 1\]; got 1.5"):
        TrainConfig(out_dir=str(tmp_path), findings_tokens_teacher=1.5)


def test_the_share_keys_a_pipeline_run_only_when_set():
    from flamingo_lib.pipeline.settings import PipelineSettings

    plain = PipelineSettings.from_flat(run_dir="r", findings_tokens=True).training_key()
    taught = PipelineSettings.from_flat(run_dir="r", findings_tokens=True, findings_tokens_teacher=0.5).training_key()
    assert "findings_tokens_teacher" not in plain and taught == plain | {"findings_tokens_teacher": 0.5}


def test_the_prior_targets_are_taught_to_the_same_studies(tmp_path):
    from dataclasses import replace

    from trainers import SAMPLES

    trainer = make_trainer(tmp_path, findings_loss_weight=1.0, findings_tokens=True, findings_tokens_teacher=0.5)
    collator = trainer.collator
    samples = [replace(SAMPLES[0], prior=SAMPLES[1]), SAMPLES[2], replace(SAMPLES[3], prior=SAMPLES[0])]
    prior = collator.prior_labels(samples)
    targets = collator.finding_targets.for_samples([SAMPLES[1], SAMPLES[0]], collator.findings_targets)
    assert torch.equal(prior[[0, 2]], targets) and prior[1].isnan().all()  # no prior: a row of NaN
    assert "prior_finding_labels" not in collator(samples)  # the model reads no prior tokens
    collator.prior_targets = True
    assert torch.equal(collator(samples)["prior_finding_labels"].nan_to_num(-1), prior.nan_to_num(-1))
    own = collator.finding_targets.for_samples(samples, collator.findings_targets)
    torch.manual_seed(0)
    drawn = [trainer._teacher_findings(own, prior) for _ in range(20)]
    for taught, taught_prior in drawn:
        studies = ~taught.isnan().all(-1)
        assert torch.equal(taught_prior[studies & ~prior.isnan().all(-1)], prior[studies & ~prior.isnan().all(-1)])
        assert taught_prior[~studies].isnan().all()
    assert {int(t.isnan().all(-1).sum()) for t, _ in drawn} != {0}  # some studies are left to the head


def test_a_follow_up_run_teaches_the_prior_with_the_study(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, findings_loss_weight=1.0, findings_tokens=True,
                           prior_findings_tokens=True, findings_tokens_teacher=0.5)
    seen, forward = [], trainer.unwrapped.forward

    def recording(*args, **kwargs):
        if kwargs.get("finding_labels") is not None:  # a training step, not a validation pass
            assert "prior_finding_labels" not in kwargs  # the trainer's, never the model's input
            seen.append((kwargs["token_findings"], kwargs["token_prior_findings"], kwargs["first_image"]
                         if "first_image" in kwargs else None, kwargs["input_ids"]))
        return forward(*args, **kwargs)

    trainer.unwrapped.forward = recording
    trainer.fit()
    image = trainer.unwrapped.config.image_token_id
    taught_priors = 0
    for own, prior, _, input_ids in seen:
        follow_up = (input_ids == image).sum(-1) > 1  # the prior's film precedes the study's own
        studies = ~own.isnan().all(-1)
        assert prior[~(studies & follow_up)].isnan().all()  # untaught studies and first studies: the head's
        taught_priors += int((~prior.isnan().all(-1)).sum())
        assert torch.equal(~prior.isnan().all(-1), studies & follow_up)
    assert taught_priors > 0


def _reads_edema_everywhere(report):
    """A labeler whose reading of every report differs from the toy studies' labels."""
    return {"Edema": 1.0}


def test_taught_on_readings_the_tokens_say_what_each_report_states(tmp_path):
    from flamingo_lib.labeling.targets import FindingTargets

    trainer = make_trainer(tmp_path, max_steps=3, findings_loss_weight=1.0, findings_tokens=True, reading_head=True,
                           findings_tokens_teacher=1.0, findings_tokens_teacher_targets="readings")
    observations = trainer.unwrapped.config.findings_head
    trainer.collator.finding_targets = FindingTargets(observations, labeler=_reads_edema_everywhere)
    seen, forward = [], trainer.unwrapped.forward

    def recording(*args, **kwargs):
        if kwargs.get("finding_labels") is not None:  # a training step, not a validation pass
            seen.append((kwargs["token_findings"], kwargs["finding_labels"]))
        return forward(*args, **kwargs)

    trainer.unwrapped.forward = recording
    trainer.fit()
    k = len(observations)
    given = torch.cat([g for g, _ in seen])
    labels, readings = (torch.cat([t[:, :k] for _, t in seen]), torch.cat([t[:, k:] for _, t in seen]))
    assert not torch.equal(labels, readings)  # the two sources differ, so the check below can tell them apart
    assert torch.equal(given, readings)
    assert given[:, observations.index("Edema")].eq(1).all() and given.sum() == len(given)


def test_the_prior_is_taught_its_own_reports_reading_with_the_studys(tmp_path):
    from dataclasses import replace

    from flamingo_lib.labeling.targets import FindingTargets
    from trainers import SAMPLES

    trainer = make_trainer(tmp_path, findings_loss_weight=1.0, findings_tokens=True, prior_findings_tokens=True,
                           reading_head=True, findings_tokens_teacher=0.5, findings_tokens_teacher_targets="readings")
    collator = trainer.collator
    collator.finding_targets = FindingTargets(collator.finding_targets.observations, labeler=_reads_edema_everywhere)
    samples = [replace(SAMPLES[0], prior=SAMPLES[1]), SAMPLES[2]]
    prior = collator.prior_labels(samples)
    assert torch.equal(prior[0], collator.finding_targets.for_samples([SAMPLES[1]], "reports")[0])
    assert not torch.equal(prior[0], collator.finding_targets.for_samples([SAMPLES[1]], "labels")[0])
    assert prior[1].isnan().all()


def test_readings_teach_only_a_model_with_a_reading_head(tmp_path):
    from flamingo_lib.training.config import TrainConfig

    with pytest.raises(ValueError, match="which the collator gives a model with a reading head only"):
        make_trainer(tmp_path, findings_loss_weight=1.0, findings_tokens=True, findings_tokens_teacher=0.5,
                     findings_tokens_teacher_targets="readings")
    with pytest.raises(ValueError, match="must be 'labels' or 'readings', got 'reports'"):
        TrainConfig(out_dir=str(tmp_path), findings_tokens_teacher_targets="reports")


def test_the_readings_key_a_pipeline_run_only_when_chosen():
    from flamingo_lib.pipeline.settings import PipelineSettings

    taught = dict(run_dir="r", findings_tokens=True, findings_tokens_teacher=0.5)
    labels = PipelineSettings.from_flat(**taught).training_key()
    readings = PipelineSettings.from_flat(**taught, findings_tokens_teacher_targets="readings").training_key()
    assert "findings_tokens_teacher_targets" not in labels
    assert readings == labels | {"findings_tokens_teacher_targets": "readings"}
