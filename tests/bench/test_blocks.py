"""The Flamingo blocks on their own: gating, media masking, resampler and attention weights."""

from __future__ import annotations

import pytest
import torch

from flamingo_lib.modeling.cross_attention import GatedCrossAttentionBlock, MaskedCrossAttention, media_masks
from flamingo_lib.modeling.resampler import PerceiverResampler

B, L, D, DV, T, N = 2, 9, 32, 24, 2, 4
# positions:          0  1  2  3  4  5  6  7  8
MEDIA_LOCATIONS = torch.tensor([[0, 0, 1, 0, 0, 1, 0, 0, 0]] * B, dtype=torch.bool)
MEDIA_TIME = MEDIA_LOCATIONS.long().cumsum(-1)  # 0 0 1 1 1 2 2 2 2
BEFORE, BETWEEN, AFTER = slice(0, 2), slice(2, 5), slice(5, None)


def block(only_immediate: bool, gate: float = 0.7) -> GatedCrossAttentionBlock:
    torch.manual_seed(0)
    blk = GatedCrossAttentionBlock(dim=D, dim_visual=DV, dim_head=8, heads=2, ff_mult=2,
                                   only_attend_immediate_media=only_immediate)
    with torch.no_grad():
        blk.attn_gate.fill_(gate)
        blk.ff_gate.fill_(gate)
    return blk


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, D, generator=g), torch.randn(B, T, N, DV, generator=g)


def test_gates_start_at_zero_and_block_is_identity():
    blk = GatedCrossAttentionBlock(dim=D, dim_visual=DV, dim_head=8, heads=2)
    assert blk.attn_gate.item() == 0.0 and blk.ff_gate.item() == 0.0
    x, media = inputs()
    assert torch.equal(blk(x, media, MEDIA_TIME), x)


@pytest.mark.parametrize("only_immediate", [True, False])
def test_text_before_first_image_gets_exactly_nothing(only_immediate):
    x, media = inputs()
    out = block(only_immediate)(x, media, MEDIA_TIME)
    assert torch.equal(out[:, BEFORE], x[:, BEFORE])
    assert not torch.allclose(out[:, BETWEEN], x[:, BETWEEN])


def test_immediate_media_tokens_after_second_image_ignore_first():
    x, media = inputs()
    other = media.clone()
    other[:, 0] = torch.randn_like(other[:, 0])
    blk = block(only_immediate=True)
    a, b = blk(x, media, MEDIA_TIME), blk(x, other, MEDIA_TIME)
    assert torch.equal(a[:, AFTER], b[:, AFTER])
    assert not torch.allclose(a[:, BETWEEN], b[:, BETWEEN])


def test_all_previous_media_tokens_after_second_image_see_first():
    x, media = inputs()
    other = media.clone()
    other[:, 0] = torch.randn_like(other[:, 0])
    blk = block(only_immediate=False)
    a, b = blk(x, media, MEDIA_TIME), blk(x, other, MEDIA_TIME)
    assert not torch.allclose(a[:, AFTER], b[:, AFTER])


@pytest.mark.parametrize("only_immediate", [True, False])
def test_no_text_attends_to_a_later_image(only_immediate):
    x, media = inputs()
    other = media.clone()
    other[:, 1] = torch.randn_like(other[:, 1])
    blk = block(only_immediate)
    a, b = blk(x, media, MEDIA_TIME), blk(x, other, MEDIA_TIME)
    assert torch.equal(a[:, :5], b[:, :5])


@pytest.mark.parametrize("only_immediate", [True, False])
def test_kept_attention_weights_match_fused_path_and_mask(only_immediate):
    x, media = inputs()
    attn = block(only_immediate).attn
    fused = attn(x, media, MEDIA_TIME)
    attn.keep_attention = True
    explicit = attn(x, media, MEDIA_TIME)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    weights = attn.last_attention  # (B, H, L, T*N)
    assert weights.shape == (B, 2, L, T * N)
    assert torch.equal(weights[:, :, BEFORE], torch.zeros_like(weights[:, :, BEFORE]))
    torch.testing.assert_close(weights[:, :, 2:].sum(-1), torch.ones(B, 2, L - 2))
    first_image_mass = weights[:, :, AFTER, :N].sum()
    assert (first_image_mass == 0) if only_immediate else (first_image_mass > 0)


def test_masked_cross_attention_without_any_image_is_zero_not_nan():
    x, media = inputs()
    out = MaskedCrossAttention(dim=D, dim_visual=DV, dim_head=8, heads=2)(x, media, torch.zeros(B, L, dtype=torch.long))
    assert torch.equal(out, torch.zeros_like(out))


def test_resampler_output_shape_and_per_image_independence():
    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=DV, depth=2, dim_head=8, heads=2, num_latents=5, num_time_embeds=2, ff_mult=2)
    x = torch.randn(2, 3, 11, DV)
    out = resampler(x)
    assert out.shape == (2, 3, 5, DV)
    changed = x.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])  # (a constant shift would vanish in LayerNorm)
    out2 = resampler(changed)
    assert torch.equal(out[:, 0], out2[:, 0]) and torch.equal(out[:, 2], out2[:, 2])
    assert not torch.allclose(out[:, 1], out2[:, 1])


def test_resampler_keeps_attention_weights_over_patches_and_latents():
    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=DV, depth=1, dim_head=8, heads=2, num_latents=5)
    fused = resampler(torch.ones(1, 1, 7, DV))
    attn = resampler.layers[0][0]
    attn.keep_attention = True
    explicit = resampler(torch.ones(1, 1, 7, DV))
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    assert attn.last_attention.shape == (1, 1, 2, 5, 7 + 5)
    torch.testing.assert_close(attn.last_attention.sum(-1), torch.ones(1, 1, 2, 5))


def test_resampler_rejects_more_frames_than_time_embeddings():
    resampler = PerceiverResampler(dim=DV, depth=1, dim_head=8, heads=2, num_latents=5, num_time_embeds=2)
    with pytest.raises(ValueError, match="frames exceeds num_time_embeds=2"):
        resampler(torch.randn(1, 1, 3, 7, DV))


@pytest.mark.parametrize("only_immediate", [True, False])
def test_shared_masks_give_the_block_its_own_result_and_a_wrong_rule_is_not_used(only_immediate):
    x, media = inputs()
    blk = block(only_immediate)
    own = blk(x, media, MEDIA_TIME)
    assert torch.equal(blk(x, media, MEDIA_TIME, masks=media_masks(MEDIA_TIME, T, N, only_immediate)), own)
    # Masks built for the other rule are rebuilt, not applied (the two rules differ after image 2).
    other = media_masks(MEDIA_TIME, T, N, not only_immediate)
    assert torch.equal(blk(x, media, MEDIA_TIME, masks=other), own)


def test_one_forward_builds_the_masks_once_for_all_layers(monkeypatch, tiny_open, images):
    import flamingo_lib.modeling.cross_attention as cross_attention
    import flamingo_lib.modeling.flamingo as flamingo_module
    from flamingo_lib.modeling.lm_injection import flamingo_layers

    model, processor = tiny_open
    assert len(list(flamingo_layers(model))) >= 2
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return media_masks(*args, **kwargs)

    monkeypatch.setattr(flamingo_module, "media_masks", counting)
    monkeypatch.setattr(cross_attention, "media_masks", counting)
    batch = processor(["<image>Findings: clear.", "<image>Findings: effusion."], [[images[0]], [images[1]]])
    with torch.no_grad():
        model(**batch)
    assert len(calls) == 1
