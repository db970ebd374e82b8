"""FlamingoModel behaviour on the tiny-random preset: equivalence with the frozen LM, gating,
media masking through the whole LM, the three visual input paths, and generation."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.backbones.language import build_tiny_lm
from flamingo_lib.modeling.lm_injection import flamingo_layers

TEXT = "Lungs are clear.<image>Heart size is normal.<EOC>"


def bare_lm_logits(model: FlamingoModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the unwrapped LM (rebuilt from the same seed) on the same token embeddings."""
    bare = build_tiny_lm(model.flamingo.lm.config.vocab_size, model.config.seed)
    embeds = model.get_input_embeddings()(input_ids)  # the new <image> row included
    with torch.no_grad():
        return bare(inputs_embeds=embeds).logits


def test_logits_at_init_equal_the_bare_lm_whatever_the_image(tiny):
    model, processor = tiny
    expected = None
    for seed in (0, 1):
        batch = processor([TEXT], [[xray_like(seed)]])
        with torch.no_grad():
            logits = model(**batch).logits
        expected = bare_lm_logits(model, batch["input_ids"]) if expected is None else expected
        vocab = expected.shape[-1]
        torch.testing.assert_close(logits[..., :vocab], expected, atol=1e-5, rtol=0)


def test_all_gates_start_at_zero(tiny):
    model, _ = tiny
    gates = [p for n, p in model.named_parameters() if n.endswith(("attn_gate", "ff_gate"))]
    assert len(gates) == 2 * model.config.resampler_depth  # one block per LM layer (xattn_every=1, 2 layers)
    assert all(g.item() == 0.0 for g in gates)


def test_changing_the_image_changes_logits_after_it_only(tiny_open):
    model, processor = tiny_open
    a = processor([TEXT], [[xray_like(0)]])
    b = processor([TEXT], [[xray_like(1)]])
    with torch.no_grad():
        la, lb = model(**a).logits, model(**b).logits
    position = int(a["media_locations"][0].nonzero()[0])
    assert torch.equal(la[:, :position], lb[:, :position])
    assert (la[:, position:] - lb[:, position:]).abs().max() > 1e-5  # float noise is ~1e-7
    # and the text before the image is exactly what the frozen LM computes
    expected = bare_lm_logits(model, a["input_ids"])
    torch.testing.assert_close(la[:, :position, : expected.shape[-1]], expected[:, :position], atol=1e-5, rtol=0)


def cross_attention_mass_on_first_image(model, processor, only_immediate: bool) -> torch.Tensor:
    text = "<image>Frontal view.<image>Lateral view shows no effusion."
    batch = processor([text], [[xray_like(0), xray_like(1)]])
    layers = list(flamingo_layers(model))
    for layer in layers:
        layer.gated_cross_attn.attn.only_attend_immediate_media = only_immediate
        layer.gated_cross_attn.attn.keep_attention = True
    try:
        with torch.no_grad():
            model(**batch)
        second = int(batch["media_locations"][0].nonzero()[1])
        n = model.config.resampler_num_latents
        return torch.stack([l.gated_cross_attn.attn.last_attention[:, :, second:, :n].sum() for l in layers])
    finally:
        for layer in layers:
            layer.gated_cross_attn.attn.only_attend_immediate_media = True
            layer.gated_cross_attn.attn.keep_attention = False


def test_after_second_image_first_image_gets_no_attention_only_when_immediate(tiny_open):
    model, processor = tiny_open
    assert torch.all(cross_attention_mass_on_first_image(model, processor, True) == 0)
    assert torch.all(cross_attention_mass_on_first_image(model, processor, False) > 0)


def test_visual_features_and_image_embeddings_paths_equal_pixel_path(tiny_open):
    model, processor = tiny_open
    batch = processor([TEXT, "<image>Small nodule <5 mm.<EOC>"], [[xray_like(0)], [xray_like(2)]])
    pixels = batch.pop("pixel_values")
    with torch.no_grad():
        from_pixels = model(**batch, pixel_values=pixels).logits
        patches = model.flamingo.encode_visuals(pixels)
        from_patches = model(**batch, image_embeddings=patches).logits
        from_features = model(**batch, visual_features=model.flamingo.encode_resample_visuals(pixels)).logits
    assert torch.equal(from_pixels, from_features)
    assert torch.equal(from_pixels, from_patches)


def greedy(model, batch, **kwargs):
    return model.generate(**batch, max_new_tokens=8, do_sample=False, **kwargs)


def test_kv_cache_on_and_off_give_identical_greedy_tokens(tiny_open):
    model, processor = tiny_open
    batch = processor(["<image>Findings:", "<image>Findings: the"], [[xray_like(0)], [xray_like(3)]], padding_side="left")
    with_cache = greedy(model, batch, use_cache=True)
    without_cache = greedy(model, batch, use_cache=False)
    assert with_cache.shape[1] > batch["input_ids"].shape[1]
    assert torch.equal(with_cache, without_cache)


def test_generation_depends_on_the_image_and_pixels_equal_features(tiny_open):
    model, processor = tiny_open
    batch = processor(["<image>Findings:"] * 2, [[xray_like(0)], [xray_like(5)]], padding_side="left")
    out = greedy(model, batch)
    features = model.flamingo.encode_resample_visuals(batch["pixel_values"])
    out_features = greedy(model, {**{k: v for k, v in batch.items() if k != "pixel_values"}, "visual_features": features})
    assert torch.equal(out, out_features)
    # two different images, same prompt: the open gates make the next-token scores differ
    scores = model.generate(**batch, max_new_tokens=2, output_scores=True, return_dict_in_generate=True).scores
    allowed = scores[0][0].isfinite()  # <image> is suppressed (-inf in both)
    assert (scores[0][0] - scores[0][1])[allowed].abs().max() > 1e-4


def test_left_padded_batch_generates_what_each_sample_generates_alone(tiny_open):
    model, processor = tiny_open
    prompts, imgs = ["<image>Findings:", "Frontal chest.<image>Findings: heart"], [[xray_like(0)], [xray_like(1)]]
    batch = processor(prompts, imgs, padding_side="left")
    together = greedy(model, batch)[:, batch["input_ids"].shape[1]:]
    for i in range(2):
        alone = processor([prompts[i]], [imgs[i]], padding_side="left")
        single = greedy(model, alone)[:, alone["input_ids"].shape[1]:]
        n = single.shape[1]
        assert torch.equal(together[i, :n], single[0])


def test_media_keys_values_computed_once_per_generate_call(tiny_open):
    model, processor = tiny_open
    calls = []
    hooks = [l.gated_cross_attn.attn.to_kv.register_forward_hook(lambda *a: calls.append(1))
             for l in flamingo_layers(model)]
    try:
        batch = processor(["<image>Findings:"], [[xray_like(0)]])
        greedy(model, batch, use_cache=True)
        assert len(calls) == len(hooks)
        calls.clear()
        greedy(model, batch, use_cache=False)
        assert len(calls) == len(hooks)
    finally:
        for h in hooks:
            h.remove()
    assert all(l.conditioning.media is None and l.conditioning.media_kv is None for l in flamingo_layers(model))


def test_beam_search_runs_and_matches_with_and_without_cache(tiny_open):
    model, processor = tiny_open
    batch = processor(["<image>Findings:"] * 2, [[xray_like(0)], [xray_like(1)]], padding_side="left")
    beams = greedy(model, batch, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 4
    assert torch.equal(beams, greedy(model, batch, num_beams=3, num_return_sequences=2, use_cache=False))


def test_generate_captions_returns_one_clean_string_per_image(tiny_open):
    model, processor = tiny_open
    texts = model.generate_captions(processor, images=[xray_like(0), xray_like(1)], max_length=6, num_beams=2)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert not any("<image>" in t or "<EOC>" in t for t in texts)


def test_loss_ignores_padding_and_reductions_agree(tiny_open):
    model, processor = tiny_open
    reports = ["Heart size is normal.", "There is a small left pleural effusion with basal atelectasis."]
    imgs = [[xray_like(0)], [xray_like(1)]]
    batch = processor.training_batch(reports, imgs)
    with torch.no_grad():
        per_sample = model(**batch, loss_reduction="none").loss
        mean = model(**batch).loss
        total = model(**batch, loss_reduction="sum").loss
        alone = model(**processor.training_batch(reports[:1], imgs[:1]), loss_reduction="none").loss
    assert per_sample.shape == (2,)
    torch.testing.assert_close(per_sample[0], alone[0], atol=1e-5, rtol=1e-5)  # padding adds nothing
    n_tokens = (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(mean, total / n_tokens)


def test_freeze_vision_model_false_really_trains_the_encoder():
    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random", freeze_vision_model=False))
    from flamingo_lib import FlamingoProcessor

    processor = FlamingoProcessor(model.config)
    open_gates(model)  # with closed gates no gradient reaches the images at all
    batch = processor.training_batch(["Heart size is normal."], [[xray_like(0)]])
    model(**batch).loss.backward()
    trunk = model.flamingo.vision_encoder.tower.trunk
    grads = [p.grad for p in [*trunk.patch_embed.parameters(), *trunk.blocks.parameters()]]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    model.freeze_vm()
    assert not any(p.requires_grad for p in model.flamingo.vision_encoder.parameters())


def test_loss_reduction_must_be_known(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="loss_reduction='avg'; allowed: mean, sum, none"):
        model(**processor.training_batch(["x"], [[xray_like(0)]]), loss_reduction="avg")


def test_switching_off_media_kv_caching_recomputes_per_step_with_identical_tokens(tiny_open):
    model, processor = tiny_open
    batch = processor(["<image>Findings:"], [[xray_like(0)]])
    calls = []
    hooks = [l.gated_cross_attn.attn.to_kv.register_forward_hook(lambda *a: calls.append(1))
             for l in flamingo_layers(model)]
    try:
        cached = greedy(model, batch)
        calls.clear()
        model.cache_media_kv = False
        uncached = greedy(model, batch)
    finally:
        model.cache_media_kv = True
        for h in hooks:
            h.remove()
    assert torch.equal(cached, uncached)
    assert len(calls) == len(hooks) * (uncached.shape[1] - batch["input_ids"].shape[1])  # once per step


def test_decoder_list_lookup_finds_the_same_layers_and_never_a_stale_one():
    from flamingo_lib.modeling.lm_injection import decoder_layers, lm_flamingo_layers

    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random"))
    lm = model.flamingo.lm
    assert lm_flamingo_layers(lm) == list(flamingo_layers(lm)) and lm_flamingo_layers(lm)
    replacement = copy.deepcopy(decoder_layers(lm)[0])  # as a DDP replica or a reload would
    decoder_layers(lm)[0] = replacement
    assert lm_flamingo_layers(lm)[0] is replacement


def test_backward_computes_no_gradient_for_a_frozen_weight_and_the_frozen_encoder_builds_no_graph():
    from flamingo_lib import FlamingoProcessor

    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random"))
    processor = FlamingoProcessor(model.config)
    open_gates(model)
    batch = processor.training_batch(["Heart size is normal."], [[xray_like(0)]])
    assert not model.flamingo.encode_visuals(batch["pixel_values"]).requires_grad
    model(**batch).loss.backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(model.get_parameter(n).grad is None for n in frozen)
    assert all(p.grad is not None for p in model.parameters_trainable())


def test_weights_of_another_shape_are_refused_naming_the_tensor_and_both_shapes(tmp_path):
    import json

    FlamingoModel(FlamingoConfig.from_preset("tiny-random", resampler_num_latents=1)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["resampler_num_latents"] = 16  # a config.json edited (or copied) away from its weights
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"perceiver\.latents is \(1, \d+\) in the file but \(16, \d+\) in the model"):
        FlamingoModel.from_pretrained(tmp_path)


def test_save_pretrained_writes_the_config_transformers_would(tmp_path):
    config = FlamingoConfig.from_preset("tiny-random")
    FlamingoModel(config).save_pretrained(tmp_path / "ours")
    config.save_pretrained(tmp_path / "theirs")
    assert (tmp_path / "ours" / "config.json").read_text() == (tmp_path / "theirs" / "config.json").read_text()
    assert not [p for p in (tmp_path / "ours").iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize(("overrides", "message"), [
    ({"image_token": "<x>", "eoc_token": "<x>"}, "image_token and eoc_token must differ, both are '<x>'"),
    ({"image_token": ""}, "must be non-empty strings"),
])
def test_flamingo_tokens_that_cannot_work_are_refused_at_once(overrides, message):
    with pytest.raises(ValueError, match=message):
        FlamingoConfig.from_preset("tiny-random", **overrides)


def test_a_directory_without_its_config_is_refused_naming_the_file(tmp_path):
    FlamingoModel(FlamingoConfig.from_preset("tiny-random")).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        FlamingoModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("only_attend_immediate_media", "false", "only_attend_immediate_media must be true or false, got 'false'"),
    ("seed", "0", "seed must be an integer, got '0'"),
    ("resampler_num_latents", True, "resampler_num_latents must be a positive integer, got True"),
])
def test_a_config_json_with_values_of_the_wrong_type_is_refused_naming_the_field(tmp_path, field, value, message):
    import json

    FlamingoModel(FlamingoConfig.from_preset("tiny-random")).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises((TypeError, ValueError), match=message):
        FlamingoModel.from_pretrained(tmp_path)


def test_a_sequence_longer_than_the_lm_places_is_refused_naming_the_limit():
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    limit = model.max_positions
    assert limit is not None
    long_text = "<image>" + "x" * (limit + 10)  # the byte-level tiny tokenizer: a token per character
    batch = processor([long_text], [[xray_like(0)]])
    with pytest.raises(ValueError, match=rf"the input is {batch['input_ids'].shape[1]} tokens .* at most {limit}"):
        model(**batch)
    prompt = processor(["<image>Findings:"], [[xray_like(0)]])
    with pytest.raises(ValueError, match=rf"the prompt plus max_new_tokens is \d+ tokens .* at most {limit}"):
        model.generate(**prompt, max_new_tokens=limit)


def test_a_save_interrupted_between_config_and_weights_is_refused_on_load(tmp_path, monkeypatch):
    import flamingo_lib.modeling.model as model_module

    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    model.save_pretrained(tmp_path, processor=processor)
    FlamingoModel.from_pretrained(tmp_path)  # whole: loads
    other = FlamingoModel(FlamingoConfig.from_preset("tiny-random", seed=7))  # same shapes, other weights

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing the weights: config.json is already new

    monkeypatch.setattr(model_module, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        other.save_pretrained(tmp_path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="a save into it did not finish"):
        FlamingoModel.from_pretrained(tmp_path)  # not seed 7's config over seed 0's weights
    with pytest.raises(ValueError, match="SAVE_IN_PROGRESS"):
        FlamingoProcessor.from_pretrained(tmp_path)
    other.save_pretrained(tmp_path)  # saved again: whole again
    assert FlamingoModel.from_pretrained(tmp_path).config.seed == 7
