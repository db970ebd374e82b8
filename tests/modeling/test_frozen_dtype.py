"""``FlamingoConfig.frozen_dtype``: the frozen LM and vision encoder in half precision, the new
layers in float32, and checkpoints saved in bfloat16 loaded in the dtype asked for."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import hub_layouts
from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.feature_cache import encoder_fingerprint
from flamingo_lib.modeling.backbones.language import load_language_model

TEXTS = ["Chest radiograph.<image>Heart size is normal.", "<image>Small left effusion."]


@pytest.fixture(scope="module")
def bf16_llama_dir(tmp_path_factory):
    """A Llama-layout checkpoint saved in bfloat16, as most Llama-family hub checkpoints are."""
    path = hub_layouts.make_llama_dir(tmp_path_factory.mktemp("llama_bf16"))
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(torch.bfloat16).save_pretrained(path)
    return path


@pytest.mark.parametrize("family", ["biogpt", "gpt2", "opt", "llama"])
def test_every_lm_family_held_in_bfloat16_gives_its_bare_logits_at_init_and_trains(family, tmp_path):
    from hub_layouts import FAMILIES

    lm_dir = FAMILIES[family](tmp_path / family)
    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random", lm=str(lm_dir), xattn_every=2,
                                                     frozen_dtype="bfloat16"))
    processor = FlamingoProcessor(model.config)
    bare = load_language_model(str(lm_dir), dtype=torch.bfloat16).eval()
    batch = processor(["Chest radiograph.<image>Heart size is normal."], [[xray_like(0)]])
    with torch.no_grad():
        ours = model.eval()(**batch).logits
        theirs = bare(inputs_embeds=model.get_input_embeddings()(batch["input_ids"])).logits
    new_ids = [model.config.image_token_id, model.config.eoc_token_id]
    base_columns = [i for i in range(theirs.shape[-1]) if i not in new_ids]  # OPT: new ids in its padding rows
    assert torch.equal(ours[..., base_columns], theirs[..., base_columns])
    open_gates(model)
    loss = model.train()(**processor.training_batch(["Heart size is normal."], [[xray_like(1)]])).loss
    loss.backward()
    grads = [p.grad for p in model.parameters_trainable()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


def _pair(**overrides) -> tuple[FlamingoModel, FlamingoModel, FlamingoProcessor]:
    """The same tiny-random model with frozen parts in float32 and in bfloat16, gates open."""
    full = FlamingoModel(FlamingoConfig.from_preset("tiny-random", **overrides))
    half = FlamingoModel(FlamingoConfig.from_preset("tiny-random", frozen_dtype="bfloat16", **overrides))
    for model in (full, half):
        open_gates(model)
    return full, half, FlamingoProcessor(full.config)


def _frozen_and_trainable(model: FlamingoModel) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = list(model.parameters())
    return [p for p in params if not p.requires_grad], [p for p in params if p.requires_grad]


def test_a_checkpoint_saved_in_bfloat16_loads_in_float32_by_default_and_trains(bf16_llama_dir):
    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random", lm=str(bf16_llama_dir), xattn_every=2))
    assert {p.dtype for p in model.flamingo.lm.parameters()} == {torch.float32}
    processor = FlamingoProcessor(model.config)
    out = model(**processor.training_batch(["Heart size is normal."], [[xray_like(0)]]))
    out.loss.backward()  # transformers 5 alone would have loaded it in bfloat16 beside float32 layers
    assert torch.isfinite(out.loss)


def test_the_same_checkpoint_held_in_bfloat16_gives_the_bare_lms_logits_at_init(bf16_llama_dir):
    model = FlamingoModel(FlamingoConfig.from_preset("tiny-random", lm=str(bf16_llama_dir), xattn_every=2,
                                                     frozen_dtype="bfloat16")).eval()
    bare = load_language_model(str(bf16_llama_dir), dtype=torch.bfloat16).eval()
    batch = FlamingoProcessor(model.config)(["Chest radiograph.<image>Heart size is normal."], [[xray_like(0)]])
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = bare(inputs_embeds=model.get_input_embeddings()(batch["input_ids"])).logits
    assert ours.dtype == theirs.dtype == torch.bfloat16
    # shut gates: the blocks' round trip through float32 leaves the LM's hidden states bit for bit
    assert torch.equal(ours[..., : theirs.shape[-1] - 2], theirs[..., : theirs.shape[-1] - 2])


def test_frozen_parts_are_half_precision_and_every_trainable_part_float32():
    full, half, _ = _pair()
    frozen_full, trainable_full = _frozen_and_trainable(full)
    frozen_half, trainable_half = _frozen_and_trainable(half)
    assert {p.dtype for p in frozen_half} == {torch.bfloat16}
    assert {p.dtype for p in trainable_half} == {torch.float32}
    assert [p.shape for p in trainable_half] == [p.shape for p in trainable_full]

    def nbytes(params):
        return sum(p.numel() * p.element_size() for p in params)

    assert nbytes(frozen_half) * 2 == nbytes(frozen_full)
    assert nbytes(trainable_half) == nbytes(trainable_full)


def test_a_training_step_without_autocast_matches_float32_within_bfloat16_rounding():
    full, half, processor = _pair()
    batch = processor.training_batch(["Heart size is normal.", "Small left effusion."],
                                     [[xray_like(0)], [xray_like(1)]])
    losses, grads = [], []
    for model in (full, half):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert abs(losses[0] - losses[1]) < 0.02 * abs(losses[0])
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
    flat = [torch.cat([g[n].flatten() for n in sorted(g)]) for g in grads]
    assert torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0) > 0.99


def test_the_images_still_steer_the_text_in_bfloat16():
    _, half, processor = _pair()
    half.eval()
    logits = []
    with torch.no_grad():
        for seed in (0, 1):
            logits.append(half(**processor([TEXTS[1]], [[xray_like(seed)]])).logits)
    text_after_image = logits[0][0, 2:]
    assert not torch.equal(text_after_image, logits[1][0, 2:])


def test_cached_and_uncached_greedy_decoding_agree_in_bfloat16():
    _, half, processor = _pair()
    half.eval()
    batch = processor(["<image>Findings:", "Two views.<image>Findings:"], [[xray_like(0)], [xray_like(1)]],
                      padding_side="left")
    assert torch.equal(half.generate(**batch, max_new_tokens=6, use_cache=True),
                       half.generate(**batch, max_new_tokens=6, use_cache=False))


def test_save_and_load_keep_the_frozen_dtype(tmp_path):
    _, half, processor = _pair()
    half.save_pretrained(tmp_path, processor)
    loaded = FlamingoModel.from_pretrained(tmp_path)
    assert loaded.config.frozen_dtype == "bfloat16"
    assert loaded.flamingo.vision_encoder.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(half.state_dict_trainable().items(), loaded.state_dict_trainable().items()):
        assert torch.equal(a, b), name


def test_a_model_trained_in_float32_loads_for_inference_with_bfloat16_frozen_parts(tmp_path):
    full, _, processor = _pair()
    full.save_pretrained(tmp_path, processor)
    half = FlamingoModel.from_pretrained(tmp_path, frozen_dtype="bfloat16")
    assert half.flamingo.vision_encoder.dtype == torch.bfloat16
    for name, weight in full.state_dict_trainable().items():
        assert torch.equal(half.state_dict_trainable()[name], weight), name
    batch = processor([TEXTS[0]], [[xray_like(0)]])
    with torch.no_grad():
        a, b = full.eval()(**batch).logits.float(), half(**batch).logits.float()
    assert not torch.equal(a, b)  # bfloat16 rounding, but no more than that:
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_a_half_precision_encoder_has_its_own_feature_cache_key():
    full, half, processor = _pair()
    assert encoder_fingerprint(full, processor) != encoder_fingerprint(half, processor)


def test_bad_frozen_dtypes_and_training_half_precision_parts_are_refused():
    with pytest.raises(ValueError, match="frozen_dtype='float64' is not supported; allowed: float32, bfloat16"):
        FlamingoConfig.from_preset("tiny-random", frozen_dtype="float64")
    with pytest.raises(ValueError, match="language model trains"):
        FlamingoConfig.from_preset("tiny-random", frozen_dtype="bfloat16", freeze_language_model=False)
    with pytest.raises(ValueError, match="vision encoder trains"):
        FlamingoConfig.from_preset("tiny-random", frozen_dtype="float16", freeze_vision_model=False)
    _, half, _ = _pair()
    with pytest.raises(ValueError, match="language model is held in bfloat16"):
        half.unfreeze_lm()
    with pytest.raises(ValueError, match="vision encoder is held in bfloat16"):
        half.unfreeze_vm()


def test_the_command_line_trains_and_resumes_with_bfloat16_frozen_parts(tmp_path):
    from flamingo_lib.cli.train import main

    common = ["--preset", "tiny-random", "--data", "phantom:templated", "--out", str(tmp_path / "run"), "--image-size", "160",
              "--max-train-samples", "8", "--max-val-samples", "4", "--batch-size", "4", "--eval-every", "2",
              "--save-every", "2", "--warmup-steps", "1", "--frozen-dtype", "bfloat16",
              "--cache-features", str(tmp_path / "features")]
    first = main([*common, "--max-steps", "2"])
    resumed = main([*common, "--max-steps", "3", "--resume"])
    assert (first["steps"], resumed["steps"]) == (2, 3)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in (first["last_train_loss"], resumed["last_train_loss"]))
    model = FlamingoModel.from_pretrained(tmp_path / "run" / "model")
    assert model.config.frozen_dtype == "bfloat16" and model.flamingo.vision_encoder.dtype == torch.bfloat16


def test_a_model_cast_whole_to_bfloat16_runs_inference_from_pixels_features_and_heads():
    config = FlamingoConfig.from_preset("tiny-random", findings_head=["Cardiomegaly", "Edema"])
    full = FlamingoModel(config).eval()
    open_gates(full)
    half = FlamingoModel(config).eval()
    half.load_state_dict(full.state_dict())
    half.to(torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    processor = FlamingoProcessor(config)
    batch = processor(["<image>Findings:", "Two views.<image>Findings:"], [[xray_like(0)], [xray_like(1)]],
                      padding_side="left")
    assert torch.equal(half.generate(**batch, max_new_tokens=6, use_cache=True),
                       half.generate(**batch, max_new_tokens=6, use_cache=False))
    features = full.resolve_visual_features(pixel_values=batch["pixel_values"]).detach()  # float32
    rest = {k: v for k, v in batch.items() if k != "pixel_values"}
    with torch.no_grad():
        a = full(**rest, visual_features=features).logits
        b = half(**rest, visual_features=features).logits.float()  # float32 media into bfloat16 layers
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    probabilities = half.predict_findings(visual_features=features)
    reference = full.predict_findings(visual_features=features)
    for name in config.findings_head:
        torch.testing.assert_close(probabilities[name].float(), reference[name], atol=0.02, rtol=0)


def test_the_notebooks_parameter_table_shows_each_parts_dtype_and_memory():
    from flamingo_lib.pipeline.workbench import parameter_table

    _, half, _ = _pair()
    table = parameter_table(half)
    assert table.loc["language model", "dtype"] == table.loc["vision encoder", "dtype"] == "bfloat16"
    assert table.loc["gated cross-attention", "dtype"] == table.loc["perceiver resampler", "dtype"] == "float32"
    assert table.loc["total", "dtype"] == "bfloat16, float32"
    frozen_mib = sum(p.numel() * 2 for p in half.parameters() if not p.requires_grad) / 2**20
    assert table.loc["language model", "MiB"] + table.loc["vision encoder", "MiB"] == pytest.approx(frozen_mib, abs=0.2)
    assert table.loc["total", "trainable"] == sum(p.numel() for p in half.parameters_trainable())
    assert table.loc["language model", "trainable"] == 0


def test_from_pretrained_takes_the_transformers_dtype_argument_for_a_whole_bfloat16_model(tmp_path):
    full, _, processor = _pair()
    full.save_pretrained(tmp_path, processor)
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": "bfloat16"}):
        half = FlamingoModel.from_pretrained(tmp_path, **kwargs)
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}, kwargs
        assert half.config.frozen_dtype == "bfloat16"  # the frozen parts were loaded in it directly
        for name, weight in full.state_dict_trainable().items():
            assert torch.equal(half.state_dict_trainable()[name], weight.to(torch.bfloat16)), name
    batch = processor([TEXTS[1]], [[xray_like(0)]])
    assert half.generate(**batch, max_new_tokens=4).shape == (1, batch["input_ids"].shape[1] + 4)
    with pytest.raises(ValueError, match="dtype='int8' is not a floating-point torch dtype"):
        FlamingoModel.from_pretrained(tmp_path, dtype="int8")


def test_float16_frozen_parts_train_too():
    full = FlamingoModel(FlamingoConfig.from_preset("tiny-random"))
    half = FlamingoModel(FlamingoConfig.from_preset("tiny-random", frozen_dtype="float16"))
    assert {p.dtype for p in half.parameters() if not p.requires_grad} == {torch.float16}
    processor = FlamingoProcessor(full.config)
    batch = processor.training_batch(["Heart size is normal."], [[xray_like(0)]])
    losses = []
    for model in (full, half):
        open_gates(model)
        loss = model(**batch).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters_trainable() if p.grad is not None)
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 0.01 * abs(losses[0])
