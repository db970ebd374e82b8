"""The severity head: a further output per observation, learned from the sizes reports state, and the
follow-up's kept tokens moved by how the severity changed since the prior study."""

from __future__ import annotations

import pytest
import torch

from conftest import open_gates
from flamingo_lib import FlamingoConfig, FlamingoModel
from flamingo_lib.modeling.heads.findings import severity_loss
from flamingo_lib.modeling.heads.findings_tokens import FindingsTokens

OBS = ["Pleural Effusion", "Cardiomegaly", "Lung Lesion"]
NAN = float("nan")


@pytest.fixture(scope="module")
def model():
    config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS, findings_tokens=True,
                                        prior_findings_tokens=True, reading_head=True, severity_head=True)
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model


def test_the_head_needs_observations_and_is_off_by_default():
    assert FlamingoConfig.from_preset("tiny-random", findings_head=OBS).severity_head is False
    with pytest.raises(ValueError, match="severity_head=True adds outputs to the findings head"):
        FlamingoConfig.from_preset("tiny-random", severity_head=True)
    with pytest.raises(ValueError, match="only compare_prior builds"):
        FindingsTokens(2, 4, severity=True)
    with pytest.raises(ValueError, match="need both"):
        FindingsTokens(2, 4, compare_prior=True, severity=True)(torch.rand(1, 2), torch.rand(1, 2), torch.rand(1, 2))


def test_a_kept_finding_moves_along_its_direction_by_the_change_of_severity():
    tokens = FindingsTokens(2, 4, compare_prior=True, severity=True)
    now, prior = torch.ones(3, 2), torch.tensor([[1.0, 0.0], [1.0, 0.0], [NAN, NAN]])
    severity = torch.tensor([[1.0, 1.0], [0.0, 0.5], [1.0, 1.0]])
    prior_severity = torch.tensor([[0.5, 0.0], [0.5, 0.0], [NAN, NAN]])
    out = tokens(now, prior, severity, prior_severity)
    assert torch.allclose(out[0, 0], tokens.kept[0] + 0.5 * tokens.grown[0])  # grown by half the scale
    assert torch.allclose(out[1, 0], tokens.kept[0] - 0.5 * tokens.grown[0])  # shrunk: the other way
    assert torch.equal(out[0, 1], tokens.new[1]) and torch.equal(out[1, 1], tokens.new[1])  # new: no kept part
    assert torch.equal(out[2], tokens(now[2:3])[0])  # no prior: the plain tokens
    same = tokens(now[:1], prior[:1], torch.full((1, 2), 0.5), torch.full((1, 2), 0.5))
    assert torch.equal(same, tokens(now[:1], prior[:1], severity[:1] * 0 + 0.25, prior_severity[:1] * 0 + 0.25))
    out.sum().backward()  # the NaN of a first study reaches no gradient
    assert all(p.grad is not None and p.grad.isfinite().all() for p in tokens.parameters())


def test_the_severities_are_the_heads_last_outputs(model):
    features = torch.randn(2, 1, model.config.resampler_num_latents, model.flamingo.findings_tokens.present.shape[1])
    logits = model.flamingo.findings_head(features)
    assert logits.shape == (2, 3 * len(OBS))  # findings, readings, severities
    severity = model.predict_severity(visual_features=features)
    readings = model.predict_readings(visual_features=features)
    for j, obs in enumerate(OBS):
        assert torch.allclose(severity[obs], logits[:, 2 * len(OBS) + j].sigmoid())
        assert torch.allclose(readings[obs], logits[:, len(OBS) + j].sigmoid())
    with pytest.raises(ValueError, match="no severity head"):
        FlamingoModel(FlamingoConfig.from_preset("tiny-random", findings_head=OBS)).predict_severity(
            visual_features=features)


def test_a_follow_ups_kept_tokens_read_the_severity_on_both_studies_films(model):
    n, k = model.config.resampler_num_latents, len(OBS)
    latents = torch.randn(1, 2, n, model.flamingo.findings_tokens.present.shape[1])
    own, prior = latents[:, 1:], latents[:, :1]
    p = torch.stack([model.predict_findings(visual_features=own)[o] for o in OBS], 1)
    q = torch.stack([model.predict_findings(visual_features=prior)[o] for o in OBS], 1)
    s = torch.stack([model.predict_severity(visual_features=own)[o] for o in OBS], 1)
    r = torch.stack([model.predict_severity(visual_features=prior)[o] for o in OBS], 1)
    with torch.no_grad():
        media = model.conditioning_media(latents, torch.tensor([2]), torch.tensor([2]))
        expected = model.flamingo.findings_tokens(p, q, s, r)[0]
        assert torch.allclose(media[0, 1, n:], expected, atol=1e-6)
        assert not torch.allclose(expected, model.flamingo.findings_tokens(p, q, r, r)[0], atol=1e-4)
        # teacher forcing: given severities replace the head's where they are not NaN
        given = torch.cat([torch.full((1, k), NAN), torch.tensor([[1.0, NAN, 0.0]])], 1)
        taught = model.conditioning_media(latents, torch.tensor([2]), torch.tensor([2]), token_findings=given)
        s_taught = torch.where(given[:, k:].isnan(), s, given[:, k:])
        assert torch.allclose(taught[0, 1, n:], model.flamingo.findings_tokens(p, q, s_taught, r)[0], atol=1e-6)


def test_the_severity_loss_counts_only_the_stated_pairs():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[0.5, NAN], [NAN, 1.0]])
    loss = severity_loss(logits, targets)
    stated = torch.nn.functional.binary_cross_entropy_with_logits(torch.stack([logits[0, 0], logits[1, 1]]),
                                                                  torch.tensor([0.5, 1.0]), reduction="sum")
    assert torch.allclose(loss, stated / 4)  # summed over the stated pairs, divided by all four
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad.isfinite().all()
    assert severity_loss(logits, torch.full((2, 2), NAN)) == 0  # a batch stating no size adds nothing


def test_the_model_adds_the_severity_loss_to_the_findings_loss(model):
    from flamingo_lib import FlamingoProcessor
    from conftest import xray_like

    processor = FlamingoProcessor(model.config)
    batch = processor(["<image>Findings: small effusion.<EOC>"], [[xray_like(1)]])
    k = len(OBS)
    labels = torch.cat([torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]]), torch.tensor([[0.0, NAN, NAN]])], 1)
    with torch.no_grad():
        out = model(**batch, finding_labels=labels)
    presence = torch.nn.functional.binary_cross_entropy_with_logits(out.findings_logits[:, :2 * k], labels[:, :2 * k])
    size = torch.nn.functional.binary_cross_entropy_with_logits(out.findings_logits[0, 2 * k], labels[0, 2 * k]) / k
    assert torch.allclose(out.findings_loss, presence + size, atol=1e-6)


def test_the_severities_read_the_latents_without_shaping_them(model):
    features = torch.randn(2, 1, model.config.resampler_num_latents, model.flamingo.findings_tokens.present.shape[1],
                           requires_grad=True)
    k = len(OBS)
    logits = model.flamingo.findings_head(features)
    head = model.flamingo.findings_head
    pooled = features.flatten(2).mean(1)
    assert torch.allclose(logits, torch.cat([head.classifier(pooled), head.severity(pooled)], -1), atol=1e-6)
    (grad,) = torch.autograd.grad(logits[:, -k:].sum(), features, retain_graph=True)
    assert grad.abs().max() == 0  # the severities' loss stops at the head
    (grad,) = torch.autograd.grad(logits[:, :k].sum(), features, retain_graph=True)
    assert grad.abs().max() > 0  # the findings' still shapes the latents
    model.zero_grad(set_to_none=True)
    logits[:, -k:].sum().backward()
    assert head.severity.weight.grad.abs().max() > 0 and not head.classifier.weight.grad.any()


def test_every_other_weight_starts_as_in_the_model_without_the_head():
    """So that a run with the head differs from one without it by the head alone."""
    def weights(**severity):
        torch.manual_seed(0)
        config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS, findings_tokens=True,
                                            prior_findings_tokens=True, **severity)
        return FlamingoModel(config).state_dict_trainable()

    plain, sized = weights(), weights(severity_head=True)
    assert set(sized) - set(plain) == {"flamingo.findings_head.severity.weight", "flamingo.findings_head.severity.bias",
                                       "flamingo.findings_tokens.grown"}
    assert all(torch.equal(plain[key], sized[key]) for key in plain)
