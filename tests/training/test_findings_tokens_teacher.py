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
