"""Decoding steps after a prompt that holds every image: attention without masks (the media
window), equal to the masked, teacher-forced computation; ``<image>`` is never generated."""

from __future__ import annotations

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling import flamingo as flamingo_module

PROMPT = "<image>Frontal<image>Lateral Findings:"


def open_model(only_immediate: bool) -> tuple[FlamingoModel, FlamingoProcessor]:
    config = FlamingoConfig.from_preset("tiny-random", only_attend_immediate_media=only_immediate)
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


def count_window_passes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = flamingo_module.all_seen_masks

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(flamingo_module, "all_seen_masks", counting)
    return calls


@pytest.mark.parametrize("only_immediate", [True, False])
def test_unmasked_decoding_steps_score_as_the_masked_teacher_forced_pass(monkeypatch, only_immediate):
    model, processor = open_model(only_immediate)
    images = [[xray_like(0), xray_like(1)], [xray_like(2), xray_like(3)]]
    batch = processor([PROMPT, "Old films." + PROMPT], images, padding_side="left")
    windows = count_window_passes(monkeypatch)
    new = 6
    out = model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    assert len(windows) == new - 1  # every step after the prefill took the unmasked path

    prompt_len = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(2, new - 1, dtype=torch.long)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
    with torch.no_grad():  # the general path: media_time from the whole sequence, masks built
        logits = model(input_ids=out.sequences[:, :-1], attention_mask=mask, position_ids=positions,
                       pixel_values=batch["pixel_values"]).logits
    assert len(windows) == new - 1
    for step, scores in enumerate(out.scores):
        allowed = scores.isfinite()
        teacher = logits[:, prompt_len - 1 + step]
        torch.testing.assert_close(scores[allowed], teacher[allowed], atol=1e-5, rtol=0)


def test_a_batch_whose_prompts_hold_different_image_counts_decodes_through_the_masks(monkeypatch, tiny_open):
    model, processor = tiny_open
    batch = processor([PROMPT, PROMPT], [[xray_like(0), xray_like(1)], [xray_like(2), xray_like(3)]])
    second_image = (batch["input_ids"][1] == processor.image_token_id).nonzero()[-1]
    batch["input_ids"][1, second_image] = processor.tokenizer.unk_token_id  # sample 1 shows one image only
    batch["media_locations"][1, second_image] = False
    windows = count_window_passes(monkeypatch)
    cached = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert windows == []  # its generated text sees image 1, not the last of the batch's 2
    assert torch.equal(cached, model.generate(**batch, max_new_tokens=5, do_sample=False, use_cache=False))


def test_image_token_is_never_generated_even_when_it_scores_highest(monkeypatch, tiny_open):
    model, processor = tiny_open
    batch = processor([PROMPT], [[xray_like(0), xray_like(1)]])
    head, image = model.get_output_embeddings(), processor.image_token_id
    real_forward = head.forward

    def favour_image(hidden_states):
        logits = real_forward(hidden_states)
        logits[..., image] += 1e4
        return logits

    monkeypatch.setattr(head, "forward", favour_image)
    with torch.no_grad():
        assert int(model(**batch).logits[0, -1].argmax()) == image
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert image not in out.sequences[0, batch["input_ids"].shape[1]:].tolist()
    for scores in out.scores:  # only <image> is ruled out; every other score stays finite
        assert scores[0, image] == -float("inf") and int(scores[0].isfinite().sum()) == scores.shape[-1] - 1


@pytest.mark.parametrize("only_immediate", [True, False])
@pytest.mark.parametrize("keep_weights", [False, True])
def test_the_window_equals_the_masks_of_text_after_every_image(only_immediate, keep_weights):
    from flamingo_lib.modeling.cross_attention import MaskedCrossAttention, all_seen_masks, media_masks

    torch.manual_seed(0)
    images, latents = 3, 4
    attention = MaskedCrossAttention(dim=16, dim_visual=8, dim_head=4, heads=2, only_attend_immediate_media=only_immediate)
    attention.keep_attention = keep_weights
    x, media = torch.randn(2, 5, 16), torch.randn(2, images, latents, 8)
    media_time = torch.full((2, 5), images)
    masked = attention(x, media, media_time, masks=media_masks(media_time, images, latents, only_immediate))
    masked_weights = attention.last_attention
    windowed = attention(x, media, None, masks=all_seen_masks(images, latents, only_immediate))
    torch.testing.assert_close(windowed, masked, atol=1e-6, rtol=0)
    if keep_weights:  # reported over all images' latents, zero outside the window
        torch.testing.assert_close(attention.last_attention, masked_weights, atol=1e-6, rtol=0)
        first_attended = (images - 1) * latents if only_immediate else 0
        assert attention.last_attention[..., :first_attended].abs().sum() == 0
