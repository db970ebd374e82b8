"""Prior findings tokens: a follow-up's tokens spell out each observation's state in the study and
in its prior study (new, kept, gone, absent), the prior's read by the head on the prior's films."""

from __future__ import annotations

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.heads.findings_tokens import FindingsTokens

OBS = ["Pleural Effusion", "Cardiomegaly", "Lung Lesion"]
NAN = float("nan")


@pytest.fixture(scope="module")
def model_and_processor():
    config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS, findings_tokens=True,
                                        prior_findings_tokens=True)
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


def test_the_prior_needs_findings_tokens_and_is_off_by_default():
    assert FlamingoConfig.from_preset("tiny-random", findings_head=OBS, findings_tokens=True).prior_findings_tokens \
        is False
    with pytest.raises(ValueError, match="prior_findings_tokens=True .* findings_tokens is False"):
        FlamingoConfig.from_preset("tiny-random", findings_head=OBS, prior_findings_tokens=True)
    with pytest.raises(ValueError, match="built without compare_prior"):
        FindingsTokens(2, 4)(torch.rand(1, 2), prior=torch.rand(1, 2))
    with pytest.raises(ValueError, match=r"\(batch, 2\) prior, got \(1, 3\)"):
        FindingsTokens(2, 4, compare_prior=True)(torch.rand(1, 2), prior=torch.rand(1, 3))


def test_each_joint_state_has_its_token_and_a_study_without_a_prior_keeps_the_plain_one():
    tokens = FindingsTokens(2, 4, compare_prior=True)
    now = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.25, 0.5]])
    prior = torch.tensor([[1.0, 1.0], [0.0, 0.0], [NAN, NAN], [0.5, 1.0]])
    out = tokens(now, prior)
    assert torch.equal(out[0, 0], tokens.kept[0]) and torch.equal(out[0, 1], tokens.gone[1])
    assert torch.equal(out[1, 0], tokens.new[0]) and torch.equal(out[1, 1], tokens.absent[1])
    assert torch.equal(out[2], tokens(now[2:3])[0])  # no prior: present / absent, as without the option
    expected = 0.5 * (0.25 * tokens.kept[0] + 0.75 * tokens.gone[0]) + 0.5 * (0.25 * tokens.new[0] + 0.75 * tokens.absent[0])
    assert torch.allclose(out[3, 0], expected)
    out.sum().backward()  # the NaN rows must not reach any gradient
    assert all(p.grad is not None and p.grad.isfinite().all() for p in tokens.parameters())


def test_a_follow_ups_tokens_read_the_head_on_the_prior_films(model_and_processor):
    model, processor = model_and_processor
    prior_film, own_film = xray_like(3), xray_like(4)
    follow_up = processor(["<image>Prior: effusion.<EOC><image>Findings:"], [[prior_film, own_film]])
    first = processor(["<image>Findings:"], [[own_film]])
    n = model.config.resampler_num_latents
    with torch.no_grad():
        latents = model.flamingo.encode_resample_visuals(follow_up["pixel_values"])  # (1, 2, n, D)
        p = torch.stack([model.predict_findings(visual_features=latents[:, 1:])[o] for o in OBS], 1)
        q = torch.stack([model.predict_findings(visual_features=latents[:, :1])[o] for o in OBS], 1)
        media = model.conditioning_media(latents, torch.tensor([2]), torch.tensor([2]))
        alone = model.conditioning_media(latents[:, 1:], torch.tensor([1]), torch.tensor([1]))
    assert torch.allclose(media[0, 1, n:], model.flamingo.findings_tokens(p, q)[0], atol=1e-6)
    assert torch.allclose(alone[0, 0, n:], model.flamingo.findings_tokens(p)[0], atol=1e-6)
    assert not torch.allclose(media[0, 1, n:], alone[0, 0, n:])
    # the model's own forward finds the prior from the prompt's media groups: the report reads the
    # prior's verdict although, under the immediate rule, it never attends the prior's films
    with torch.no_grad():
        other_prior = processor(["<image>Prior: effusion.<EOC><image>Findings:"], [[xray_like(9), own_film]])
        plain = FlamingoModel(FlamingoConfig.from_preset("tiny-random", findings_head=OBS, findings_tokens=True)).eval()
        plain.load_state_dict(model.state_dict(), strict=False)
        last = follow_up["input_ids"].shape[1] - 1
        moved = (model(**follow_up).logits[0, last] - model(**other_prior).logits[0, last]).abs().max()
        plain_moved = (plain(**follow_up).logits[0, last] - plain(**other_prior).logits[0, last]).abs().max()
        first_logits = model(**first).logits
    assert moved > plain_moved + 1e-4
    assert first_logits.isfinite().all()


def test_teaching_replaces_the_prior_verdict_only_where_the_prompt_holds_a_prior(model_and_processor):
    model, _ = model_and_processor
    n, k = model.config.resampler_num_latents, len(OBS)
    latents = torch.randn(2, 2, n, model.flamingo.findings_tokens.present.shape[1])
    first = torch.tensor([2, 1])  # the first study follows a prior film, the second has none
    given = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    head = model.conditioning_media(latents, torch.tensor([2, 2]), first)
    taught = model.conditioning_media(latents, torch.tensor([2, 2]), first, token_prior_findings=given)
    own = torch.stack([model.predict_findings(visual_features=latents[:1, 1:])[o] for o in OBS], 1)
    assert torch.allclose(taught[0, 1, n:], model.flamingo.findings_tokens(own, given[:1])[0], atol=1e-6)
    assert torch.equal(taught[1], head[1])  # no prior films in its prompt: nothing to teach
    nan = model.conditioning_media(latents, torch.tensor([2, 2]), first, token_prior_findings=torch.full((2, k), NAN))
    assert torch.equal(nan, head)
