"""Media groups under the immediate rule: consecutive ``<image>`` tokens (a study's views) are one
media item, so the report after them reads every view of its study and none of a prior study's
films, while the prior's report reads the prior's films."""

from __future__ import annotations

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling import flamingo as flamingo_module
from flamingo_lib.modeling.lm_injection import flamingo_layers
from flamingo_lib.modeling.cross_attention import GatedCrossAttentionBlock, media_groups, media_masks

# positions:      0  1  2  3  4  5  6  7  8  9
# tokens:         t  P  t  t  C  C  t  t  t  t     (P: the prior's film, C: the study's two views)
LOCATIONS = torch.tensor([[0, 1, 0, 0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
PRIOR_TEXT, CURRENT_TEXT = slice(2, 4), slice(6, None)
D, DV, N = 32, 24, 4


def test_consecutive_images_open_one_group_and_text_closes_it():
    media_time, media_first = media_groups(LOCATIONS)
    assert media_time.tolist() == [[0, 1, 1, 1, 2, 3, 3, 3, 3, 3]]
    assert media_first.tolist() == [[0, 1, 1, 1, 2, 2, 2, 2, 2, 2]]
    # single images between text: every image its own group, the rule as it always was
    single = torch.tensor([[1, 0, 1, 0, 0]], dtype=torch.bool)
    time, first = media_groups(single)
    assert torch.equal(time, first)


def block_outputs(media: torch.Tensor, only_immediate: bool = True) -> torch.Tensor:
    torch.manual_seed(0)
    blk = GatedCrossAttentionBlock(dim=D, dim_visual=DV, dim_head=8, heads=2,
                                   only_attend_immediate_media=only_immediate)
    with torch.no_grad():
        blk.attn_gate.fill_(0.7)
        blk.ff_gate.fill_(0.7)
    media_time, media_first = media_groups(LOCATIONS)
    masks = media_masks(media_time, 3, N, only_immediate, media_first)
    x = torch.randn(1, LOCATIONS.shape[1], D, generator=torch.Generator().manual_seed(1))
    return blk(x, media, media_time, masks=masks)


def changed(media: torch.Tensor, image: int) -> torch.Tensor:
    other = media.clone()
    other[:, image] = torch.randn_like(other[:, image])
    return other


def test_the_report_reads_both_views_of_its_study_and_not_the_prior_film():
    media = torch.randn(1, 3, N, DV, generator=torch.Generator().manual_seed(2))
    base = block_outputs(media)
    prior_changed = block_outputs(changed(media, 0))
    assert torch.equal(base[:, CURRENT_TEXT], prior_changed[:, CURRENT_TEXT])
    assert not torch.allclose(base[:, PRIOR_TEXT], prior_changed[:, PRIOR_TEXT])  # the prior's text reads it
    for view in (1, 2):  # frontal and lateral: each moves the report
        assert not torch.allclose(base[:, CURRENT_TEXT], block_outputs(changed(media, view))[:, CURRENT_TEXT])
        assert torch.equal(base[:, PRIOR_TEXT], block_outputs(changed(media, view))[:, PRIOR_TEXT])


def test_with_all_earlier_media_the_report_reads_the_prior_film_too():
    media = torch.randn(1, 3, N, DV, generator=torch.Generator().manual_seed(2))
    base = block_outputs(media, only_immediate=False)
    assert not torch.allclose(base[:, CURRENT_TEXT], block_outputs(changed(media, 0), False)[:, CURRENT_TEXT])


PROMPT = "Indication: cough.<image>Prior: small left effusion.<EOC><image><image>Findings:"


@pytest.fixture(scope="module")
def grouped_model() -> tuple[FlamingoModel, FlamingoProcessor]:
    config = FlamingoConfig.from_preset("tiny-random", findings_head=["Pleural Effusion", "Cardiomegaly"])
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


def report_logits(model, processor, images, prompt=PROMPT, report=" Small effusion.", keep=False):
    batch = processor.training_batch([report], [images], prompts=[prompt])
    layers = list(flamingo_layers(model))
    for layer in layers:
        layer.gated_cross_attn.attn.keep_attention = keep
    try:
        with torch.no_grad():
            out = model(**batch, finding_labels=torch.zeros(1, 2))
        weights = [layer.gated_cross_attn.attn.last_attention for layer in layers] if keep else None
    finally:
        for layer in layers:
            layer.gated_cross_attn.attn.keep_attention = False
    return out, batch["media_locations"][0].nonzero().flatten(), weights


def test_end_to_end_the_report_attends_its_views_and_the_prior_report_its_film(grouped_model):
    model, processor = grouped_model
    out, images_at, weights = report_logits(model, processor, [xray_like(0), xray_like(1), xray_like(2)], keep=True)
    n = model.config.resampler_num_latents
    prior_text, report = slice(int(images_at[0]) + 1, int(images_at[1])), slice(int(images_at[2]) + 1, None)
    for w in weights:  # (1, H, L, T * n)
        assert torch.all(w[:, :, report, :n] == 0)  # the report never reads the prior film...
        assert torch.all(w[:, :, report, n:2 * n].sum(-1) > 0)  # ...but both of its own views
        assert torch.all(w[:, :, report, 2 * n:].sum(-1) > 0)
        assert torch.all(w[:, :, prior_text, :n].sum(-1) > 0.999)  # the prior's report reads the prior film only
    # what the prior's film says reaches the report through the prior's text only: the LM reads it
    other_text, _, _ = report_logits(model, processor, [xray_like(0), xray_like(1), xray_like(2)],
                                     prompt=PROMPT.replace("small left", "large right"))
    assert not torch.allclose(out.logits[0, -5:], other_text.logits[0, -5:], atol=1e-4)  # the report's tokens


def test_the_findings_head_of_a_study_after_a_prior_equals_the_study_alone(grouped_model):
    model, processor = grouped_model
    frontal, lateral = xray_like(1), xray_like(2)
    with_prior = report_logits(model, processor, [xray_like(0), frontal, lateral])[0].findings_logits
    other_prior = report_logits(model, processor, [xray_like(5), frontal, lateral])[0].findings_logits
    alone = report_logits(model, processor, [frontal, lateral], prompt="<image><image>Findings:")[0].findings_logits
    torch.testing.assert_close(with_prior, alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(other_prior, alone, atol=1e-6, rtol=0)
    other_view = report_logits(model, processor, [xray_like(0), frontal, xray_like(6)])[0].findings_logits
    assert not torch.allclose(with_prior, other_view, atol=1e-4)


def test_decoding_after_a_prior_study_scores_as_the_masked_teacher_forced_pass(grouped_model, monkeypatch):
    model, processor = grouped_model
    windows = []
    real = flamingo_module.all_seen_masks
    monkeypatch.setattr(flamingo_module, "all_seen_masks", lambda *a: windows.append(real(*a).window) or real(*a))
    images = [[xray_like(0), xray_like(1), xray_like(2)], [xray_like(3), xray_like(4), xray_like(7)]]
    prompts = [PROMPT, PROMPT.replace("cough", "fever and shortness of breath")]
    batch = processor(prompts, images, padding_side="left")
    new = 5
    out = model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    n = model.config.resampler_num_latents
    assert windows == [(n, 3 * n)] * (new - 1)  # the steps after the prompt read the study's two views, unmasked
    prompt_len = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(2, new - 1, dtype=torch.long)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=out.sequences[:, :-1], attention_mask=mask, position_ids=positions,
                       pixel_values=batch["pixel_values"]).logits
    for step, scores in enumerate(out.scores):
        allowed = scores.isfinite()
        torch.testing.assert_close(scores[allowed], logits[:, prompt_len - 1 + step][allowed], atol=1e-5, rtol=0)
