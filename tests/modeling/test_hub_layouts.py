"""The hub loading paths, run offline on tiny checkpoints saved in the hub models' own layouts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import hub_layouts
from hub_layouts import FAMILIES
from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.config import TINY_RANDOM_LM, TINY_RANDOM_VISION
from flamingo_lib.modeling.lm_injection import decoder_layers, flamingo_layers
from flamingo_lib.modeling.backbones.vision import encoder_kind, load_vision_encoder



@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    lm_dir = FAMILIES[request.param](tmp_path_factory.mktemp(request.param))
    config = FlamingoConfig.from_preset("tiny-random", lm=str(lm_dir), xattn_every=2)
    return request.param, lm_dir, FlamingoModel(config).eval(), FlamingoProcessor(config)


def test_lm_dims_and_layers_are_found_in_the_module_tree(family):
    name, lm_dir, model, _ = family
    bare = AutoModelForCausalLM.from_pretrained(lm_dir)
    assert model.config.dim == bare.config.hidden_size
    n_layers = len(decoder_layers(bare))
    assert len(list(flamingo_layers(model))) == n_layers // 2
    assert model.config.image_token_id not in (model.config.eoc_token_id, None)


def test_logits_at_init_equal_the_bare_lm(family):
    name, lm_dir, model, processor = family
    bare = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    batch = processor(["Chest radiograph.<image>Heart size is normal.<EOC>"], [[xray_like(0)]])
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = bare(inputs_embeds=model.get_input_embeddings()(batch["input_ids"])).logits
    vocab = theirs.shape[-1]
    new_ids = [model.config.image_token_id, model.config.eoc_token_id]
    base_columns = [i for i in range(vocab) if i not in new_ids]  # OPT: the new ids sit in its padding rows
    torch.testing.assert_close(ours[..., base_columns], theirs[..., base_columns], atol=1e-5, rtol=0)


def test_cached_and_uncached_greedy_decoding_agree(family, tmp_path):
    name, lm_dir, _, processor = family
    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random", lm=str(lm_dir), xattn_every=2)).eval()
    open_gates(model)
    batch = processor(["<image>Findings:", "Two views.<image>Findings:"], [[xray_like(0)], [xray_like(1)]],
                      padding_side="left")
    a = model.generate(**batch, max_new_tokens=6, use_cache=True)
    b = model.generate(**batch, max_new_tokens=6, use_cache=False)
    assert torch.equal(a, b)


def test_training_step_leaves_every_lm_weight_bitwise_equal(family):
    name, lm_dir, _, processor = family
    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random", lm=str(lm_dir), xattn_every=2))
    open_gates(model)
    bare_before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(lm_dir).state_dict().items()}
    optimiser = torch.optim.AdamW(model.parameters_trainable(), lr=1e-2, weight_decay=0.1)
    model(**processor.training_batch(["Heart size is normal."], [[xray_like(0)]])).loss.backward()
    optimiser.step()
    lm_params = {n: p for n, p in model.flamingo.lm.named_parameters() if "gated_cross_attn" not in n and "new_rows" not in n}
    assert lm_params and not any(p.requires_grad for p in lm_params.values())
    for tensor in lm_params.values():  # every frozen tensor still equals some original tensor
        assert any(t.shape == tensor.shape and torch.equal(t, tensor) for t in bare_before.values())


def test_biomedclip_like_local_dir_loads_its_weights_and_preprocessing(tmp_path):
    import open_clip

    bert = hub_layouts.make_bert_dir(tmp_path / "bert")
    clip_dir = hub_layouts.make_biomedclip_like_dir(tmp_path / "biomedclip", bert)
    name = f"local-dir:{clip_dir}"
    assert encoder_kind(name) == "open_clip"
    reference, _, preprocess = open_clip.create_model_and_transforms(name)
    encoder = load_vision_encoder(name)
    pixels = preprocess(xray_like(0).convert("RGB"))[None]
    with torch.no_grad():
        tokens = encoder(pixels)
        expected = reference.visual.trunk.forward_features(pixels)
        pooled = reference.visual(pixels)
    assert tokens.shape == (1, 197, 192)  # CLS + 14x14 patches, never the pooled (1, 32) embedding
    assert pooled.shape == (1, 32)
    assert torch.equal(tokens, expected)  # the saved weights, not a fresh init

    config = FlamingoConfig.from_preset("tiny-random", clip_model_type=name)
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    assert config.dim_visual == 192
    assert processor.image_config.mean == tuple(hub_layouts.BIOMEDCLIP_LIKE_PREPROCESS["mean"])
    assert torch.equal(processor.preprocess_images([xray_like(0)]), pixels)
    with pytest.raises(ValueError, match="vision encoder takes \\(224, 224\\)"):
        model(input_ids=processor(["<image>x"], [[xray_like(0)]])["input_ids"], pixel_values=torch.zeros(1, 1, 3, 160, 160))


def test_hf_clip_directory_gives_last_hidden_state_tokens(tmp_path):
    from transformers import CLIPVisionModel

    clip_dir = hub_layouts.make_hf_clip_dir(tmp_path / "clip")
    assert encoder_kind(str(clip_dir)) == "hf_clip"
    config = FlamingoConfig.from_preset("tiny-random", clip_model_type=str(clip_dir))
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    pixels = processor(["<image>x"], [[xray_like(1)]])["pixel_values"]
    assert pixels.shape[-1] == 32
    with torch.no_grad():
        tokens = model.flamingo.encode_visuals(pixels)
        expected = CLIPVisionModel.from_pretrained(clip_dir)(pixel_values=pixels[:, 0]).last_hidden_state
    assert tokens.shape == (1, 1, 17, 32)
    assert torch.equal(tokens[:, 0], expected)


def test_sentinel_names_are_the_tiny_random_models():
    assert encoder_kind(TINY_RANDOM_VISION) == "tiny-random"
    assert FlamingoConfig.from_preset("tiny-random").lm == TINY_RANDOM_LM
