"""Findings tokens: the head's probabilities as extra media the cross-attention reads."""

from __future__ import annotations

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.attention_maps import capture_attention
from flamingo_lib.modeling.heads.findings_tokens import FindingsTokens, append_findings_tokens
from flamingo_lib.modeling.lm_injection import flamingo_layers

OBS = ["Pleural Effusion", "Cardiomegaly", "Lung Lesion"]


def build(tokens: bool = True, gates_open: bool = True) -> tuple[FlamingoModel, FlamingoProcessor]:
    config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS, findings_tokens=tokens)
    model = FlamingoModel(config).eval()
    if gates_open:
        open_gates(model)
    return model, FlamingoProcessor(config)


@pytest.fixture(scope="module")
def with_tokens():
    return build()


def set_head_bias(model: FlamingoModel, bias: float) -> None:
    """Make the head certain of every finding (bias >> 0) or of none (bias << 0)."""
    with torch.no_grad():
        model.flamingo.findings_head.classifier.bias.fill_(bias)


def test_tokens_need_a_head_and_are_off_by_default():
    assert FlamingoConfig.from_preset("tiny-random", findings_head=OBS).findings_tokens is False
    with pytest.raises(ValueError, match="findings_tokens=True .* findings_head is None"):
        FlamingoConfig.from_preset("tiny-random", findings_tokens=True)
    with pytest.raises(ValueError, match=r"\(batch, 3\) probabilities, got \(2, 4\)"):
        FindingsTokens(3, 8)(torch.rand(2, 4))


def test_tokens_interpolate_between_absent_and_present():
    tokens = FindingsTokens(2, 4)
    out = tokens(torch.tensor([[1.0, 0.0], [0.25, 0.5]]))
    assert torch.equal(out[0, 0], tokens.present[0]) and torch.equal(out[0, 1], tokens.absent[1])
    assert torch.allclose(out[1, 0], 0.25 * tokens.present[0] + 0.75 * tokens.absent[0])
    latents = torch.randn(2, 3, 5, 4)  # 3 images of 5 latents
    media = append_findings_tokens(latents, out)
    assert media.shape == (2, 3, 7, 4) and torch.equal(media[:, :, :5], latents)
    assert all(torch.equal(media[b, t, 5:], out[b]) for b in range(2) for t in range(3))  # every image


def test_media_are_the_latents_then_the_heads_verdict(with_tokens):
    model, processor = with_tokens
    pixels = processor(["<image><image>"], [[xray_like(0), xray_like(1)]])["pixel_values"]
    latents = model.flamingo.encode_resample_visuals(pixels)  # (1, 2, n, D)
    media = model.conditioning_media(latents)
    n = model.config.resampler_num_latents
    assert media.shape == (1, 2, n + len(OBS), latents.shape[-1]) and torch.equal(media[:, :, :n], latents)
    probabilities = torch.stack([model.predict_findings(visual_features=latents)[o] for o in OBS], 1)
    assert torch.allclose(media[0, 1, n:], model.flamingo.findings_tokens(probabilities)[0])
    no_images = latents[:, :0]  # the "LM with no image" baseline: nothing to classify, nothing appended
    assert model.conditioning_media(no_images) is no_images
    plain, _ = build(tokens=False)
    assert plain.conditioning_media(latents) is latents


def test_closed_gates_leave_the_lm_untouched_whatever_the_head_says():
    model, processor = build(gates_open=False)
    batch = processor(["<image>Findings: heart size is normal."], [[xray_like(0)]])
    set_head_bias(model, 20.0)
    certain = model(**batch).logits
    set_head_bias(model, -20.0)
    assert torch.equal(certain, model(**batch).logits)


def test_the_text_reads_the_heads_verdict_through_the_tokens(with_tokens):
    model, processor = with_tokens
    batch = processor(["Prior film.<image>Findings: heart size is normal."], [[xray_like(0)]])
    bias = model.flamingo.findings_head.classifier.bias.detach().clone()
    try:
        set_head_bias(model, 20.0)
        every = model(**batch).logits
        set_head_bias(model, -20.0)
        none = model(**batch).logits
    finally:
        with torch.no_grad():
            model.flamingo.findings_head.classifier.bias.copy_(bias)
    image_at = int(batch["media_locations"][0].nonzero()[0])
    assert image_at > 0 and torch.equal(every[:, :image_at], none[:, :image_at])  # text before the image: unaffected
    assert (every[:, image_at:] - none[:, image_at:]).abs().max() > 1e-3  # after it: the verdict matters


def test_a_one_view_study_reads_the_same_beside_a_two_view_study(with_tokens):
    """The batch pads the one-view study with a blank slot; its findings tokens (the head's
    verdict on its images) must not average that slot in, in training or in generation."""
    model, processor = with_tokens
    one, two = [xray_like(7)], [xray_like(8), xray_like(9)]
    text = "<image>Findings: heart size is normal."
    alone = processor([text], [one])
    mixed = processor([text, "<image>" + text], [one, two])
    length = alone["input_ids"].shape[1]
    with torch.no_grad():
        expected = model(**alone).logits[0]
        got = model(**mixed).logits[0, :length]
        generated_alone = model.generate(**processor([text], [one], padding_side="left"), max_new_tokens=4)
        left = processor([text, "<image>" + text], [one, two], padding_side="left")
        generated_mixed = model.generate(**left, max_new_tokens=4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    pad = left["input_ids"].shape[1] - length  # the one-view study is left-padded by one token
    assert torch.equal(generated_mixed[0, pad:], generated_alone[0])


def test_language_loss_trains_the_tokens_but_never_the_head(with_tokens):
    model, processor = with_tokens
    batch = processor.training_batch(["Small left pleural effusion."], [[xray_like(0)]])
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    assert grads["flamingo.findings_tokens.present"].abs().sum() > 0
    assert grads["flamingo.findings_tokens.absent"].abs().sum() > 0
    assert grads["flamingo.findings_head.classifier.weight"] is None  # detached: labels alone teach it
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("flamingo.perceiver."))


def test_generation_builds_the_media_once_and_matches_uncached_decoding(with_tokens):
    model, processor = with_tokens
    batch = processor(["<image>Findings:", "<image>Findings:"], [[xray_like(0)], [xray_like(1)]],
                      padding_side="left")
    calls = []
    original = model.conditioning_media
    model.conditioning_media = lambda features, counts=None, first=None: calls.append(1) or original(features, counts, first)
    kv = []
    hooks = [l.gated_cross_attn.attn.to_kv.register_forward_hook(lambda *a: kv.append(1))
             for l in flamingo_layers(model)]
    try:
        cached = model.generate(**batch, max_new_tokens=6, do_sample=False)
        assert len(calls) == 1 and len(kv) == len(hooks)  # media and their keys/values: once per call
        model.cache_media_kv = False
        uncached = model.generate(**batch, max_new_tokens=6, do_sample=False)
    finally:
        model.cache_media_kv = True
        del model.conditioning_media
        for h in hooks:
            h.remove()
    assert torch.equal(cached, uncached)
    assert model._media_memo is None  # nothing held on to after the call
    # greedy decoding agrees with the teacher-forced argmax of the same model
    prompt = batch["input_ids"].shape[1]
    full = {"input_ids": cached, "attention_mask": torch.ones_like(cached), "pixel_values": batch["pixel_values"]}
    full["attention_mask"][:, :prompt] = batch["attention_mask"]
    logits = model(**full).logits
    assert torch.equal(logits[:, prompt - 1:-1].argmax(-1), cached[:, prompt:])


def test_tokens_survive_save_and_load(with_tokens, tmp_path):
    model, processor = with_tokens
    batch = processor(["<image>Findings: effusion."], [[xray_like(2)]])
    model.save_pretrained(tmp_path / "m", processor=processor)
    reloaded = FlamingoModel.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.findings_tokens is True
    assert torch.equal(reloaded.flamingo.findings_tokens.present, model.flamingo.findings_tokens.present)
    assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def test_attention_maps_keep_the_image_apart_from_the_findings_tokens(with_tokens):
    model, processor = with_tokens
    batch = processor(["<image>Findings: effusion."], [[xray_like(0)]])
    _, maps = capture_attention(model, batch)
    assert maps.num_findings_tokens == len(OBS)
    last = batch["input_ids"].shape[1] - 1
    on_image = maps.token_relevance(0, last)
    on_findings = maps.findings_weights(0, last)
    assert on_image.shape == (maps.num_patches,) and on_findings.shape == (len(OBS),)
    assert on_image.min() >= 0 and on_findings.min() >= 0 and on_findings.sum() > 0
    # every media token is either a latent of the image or a findings token: together, all of it
    assert float(on_image.sum() + on_findings.sum()) == pytest.approx(1.0, abs=1e-5)
