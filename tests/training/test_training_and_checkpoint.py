"""One optimiser step trains only what should train; checkpoints hold exactly that and reload."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor

REPORTS = ["Heart size is normal. No pleural effusion.", "Small left pleural effusion."]


@pytest.fixture
def fresh():
    config = FlamingoConfig.from_preset("tiny-random")
    return FlamingoModel(config), FlamingoProcessor(config)


def test_one_adamw_step_changes_trainable_parameters_only(fresh):
    model, processor = fresh
    open_gates(model, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # weight decay on purpose: it would move frozen rows that merely had zero gradient
    optimiser = torch.optim.AdamW(model.parameters_trainable(), lr=1e-2, weight_decay=0.1)
    batch = processor.training_batch(REPORTS, [[xray_like(0)], [xray_like(1)]])
    model.train()
    model(**batch).loss.backward()
    optimiser.step()
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    base = model.get_input_embeddings().base.weight
    assert not base.requires_grad and torch.equal(base, before["flamingo.lm.biogpt.embed_tokens.base.weight"])


def test_trainable_parts_are_resampler_cross_attention_and_new_token_rows(fresh):
    model, _ = fresh
    names = set(model.state_dict_trainable())
    assert names, "nothing trains"
    assert all(n.startswith("flamingo.perceiver.") or ".gated_cross_attn." in n or n.endswith("new_rows") for n in names)
    assert any(n.endswith("new_rows") for n in names)
    assert not any("vision_encoder" in n for n in names)
    model.unfreeze_lm()
    assert any("self_attn" in n for n in model.state_dict_trainable())
    model.freeze_lm()
    assert set(model.state_dict_trainable()) == names


def test_save_and_load_reproduce_logits_and_hold_no_frozen_weights(fresh, tmp_path):
    model, processor = fresh
    open_gates(model, 0.3)
    with torch.no_grad():
        for p in model.flamingo.perceiver.parameters():
            p.add_(0.01)  # move away from the seeded init so a reload really has to read the file
    batch = processor([ "<image>Findings: heart size is normal.<EOC>"], [[xray_like(0)]])
    with torch.no_grad():
        expected = model.eval()(**batch).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict_trainable())
    assert not any("vision_encoder" in k or ".decoder_layer." in k or "embed_tokens.base" in k for k in saved)
    reloaded = FlamingoModel.from_pretrained(tmp_path)
    reprocessor = FlamingoProcessor.from_pretrained(tmp_path)
    again = reprocessor(["<image>Findings: heart size is normal.<EOC>"], [[xray_like(0)]])
    assert torch.equal(again["input_ids"], batch["input_ids"]) and torch.equal(again["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        assert torch.equal(reloaded(**again).logits, expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_a_checkpoint_with_missing_weights_names_them(fresh, tmp_path):
    model, _ = fresh
    model.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    weights = load_file(tmp_path / "model.safetensors")
    dropped = sorted(weights)[0]
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing trainable weights"):
        FlamingoModel.from_pretrained(tmp_path)


def test_tiny_random_is_deterministic_from_its_seed():
    a = FlamingoModel(FlamingoConfig.from_preset("tiny-random", seed=3))
    b = FlamingoModel(FlamingoConfig.from_preset("tiny-random", seed=3))
    c = FlamingoModel(FlamingoConfig.from_preset("tiny-random", seed=4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["flamingo.perceiver.latents"], sc["flamingo.perceiver.latents"])
