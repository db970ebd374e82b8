"""Embedded encoders: a smoke-scale build into a temporary cache, loaded the way real models load.

One module-scoped build (``scale=0.01``: a few optimiser steps, ~10 s) serves most tests; the
cache mechanics are also tested with a dummy builder, where no training is needed.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BioGptForCausalLM

from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.encoders.pretraining import corpus
from flamingo_lib.encoders.embedded import (
    _spec,
    ensure_embedded_encoders,
    ensure_embedded_lm,
    recipes,
)
from flamingo_lib.modeling.backbones.language import flamingo_tokenizer

SMOKE = 0.01
TINY_LM, TINY_VIT = f"embedded-tiny-biogpt@scale={SMOKE:g}", f"embedded-tiny-vit@scale={SMOKE:g}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cache root, lm_dir, clip_dir) of a smoke-scale build; $FLAMINGO_CACHE_DIR points there."""
    root = tmp_path_factory.mktemp("flamingo_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLAMINGO_CACHE_DIR", str(root))
        lm_dir, clip_dir = ensure_embedded_encoders(scale=SMOKE, progress=False)
        yield root, lm_dir, clip_dir


def _frozen_weights_equal(flamingo_state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Every reference tensor equals the Flamingo's under its name with the wrappers removed."""
    unwrapped = {}
    for name, tensor in flamingo_state.items():
        if "gated_cross_attn" in name or name.endswith("new_rows"):
            continue  # the new, trainable parts
        unwrapped[name.replace(".decoder_layer.", ".").replace(".base.", ".")] = tensor
    assert set(unwrapped) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(unwrapped[name], tensor), f"frozen {name} changed"


def test_built_directories_load_with_plain_open_clip_and_transformers(built):
    _, lm_dir, clip_dir = built
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    assert isinstance(lm, BioGptForCausalLM) and lm.config.num_hidden_layers == recipes()[0].num_layers
    clip = open_clip.create_model(f"local-dir:{clip_dir}")
    saved = load_file(clip_dir / "open_clip_model.safetensors")
    assert all(torch.equal(clip.state_dict()[k], v) for k, v in saved.items()) and set(saved) == set(clip.state_dict())
    config = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
    assert (config["timm_pool"], config["timm_proj"]) == ("", "linear")  # BiomedCLIP's layout
    assert config["timm_model_name"] == recipes()[1].timm_model_name
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")  # the text tower's own, from the dir
    text = clip.encode_text(tokenizer(["Small left pleural effusion."]), normalize=True)
    embed_dim = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"]
    assert text.shape == (1, embed_dim) and torch.isfinite(text).all()


def test_metrics_json_reports_perplexity_recall_and_probe_aurocs(built):
    _, lm_dir, clip_dir = built
    lm = json.loads((lm_dir / "metrics.json").read_text())
    for mode in ("all", "iu", "templated"):
        assert lm["val"][mode]["perplexity"] > 1 and lm["val"][mode]["unigram_perplexity"] > 1
    assert lm["wall_seconds"] > 0 and lm["train"]["loss_curve"]
    vit = json.loads((clip_dir / "metrics.json").read_text())
    for encoder in ("pretrained", "random_init"):
        zero_shot = vit["val"][encoder]["zero_shot"]
        assert {"iu", "templated"} <= set(zero_shot)
        assert all(0 <= r[f"recall@{k}"] <= 1 and r[f"chance@{k}"] > 0 for r in zero_shot.values() for k in (1, 5))
        assert all(0 <= a["auroc"] <= 1 for a in vit["val"][encoder]["probe_auroc"].values())
    assert vit["wall_seconds"] > 0


def test_the_tokenizer_already_has_the_flamingo_tokens_so_adding_them_is_a_no_op(built):
    _, lm_dir, _ = built
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(lm_dir)
    config = FlamingoConfig.from_preset("tiny", lm=str(lm_dir))
    tokenizer = flamingo_tokenizer(config)
    assert len(tokenizer) == len(plain)
    assert tokenizer.convert_tokens_to_ids(["<image>", "<EOC>"]) == plain.convert_tokens_to_ids(["<image>", "<EOC>"])
    ids = tokenizer("<image>Findings: nodule <5 mm<EOC>")["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1  # "<5" stays text
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.convert_tokens_to_ids("<EOC>")


def test_flamingo_training_keeps_the_embedded_encoders_bitwise_frozen(built, monkeypatch):
    root, lm_dir, clip_dir = built
    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(root))  # the sentinels resolve to the smoke build
    config = FlamingoConfig.from_preset("tiny", lm=TINY_LM, clip_model_type=TINY_VIT)
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    saved_config = config.to_json_string()
    assert json.loads(saved_config)["lm"] == TINY_LM and str(root) not in saved_config  # portable
    dataset = corpus.phantom("train", "templated", image_size=160)
    samples = [dataset[i] for i in range(2)]
    batch = processor.training_batch([s.report for s in samples], [s.images for s in samples])
    optimiser = torch.optim.AdamW(model.parameters_trainable(), lr=1e-2, weight_decay=0.1)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    _frozen_weights_equal(model.flamingo.lm.state_dict(), AutoModelForCausalLM.from_pretrained(lm_dir).state_dict())
    saved = load_file(clip_dir / "open_clip_model.safetensors")
    vision = model.flamingo.vision_encoder.tower.state_dict()
    assert set(vision) == {k[len("visual."):] for k in saved if k.startswith("visual.")}
    assert all(torch.equal(v, saved[f"visual.{k}"]) for k, v in vision.items())


def test_the_feature_cache_serves_the_embedded_encoder_and_notices_its_batchnorm_buffers(built, monkeypatch, tmp_path):
    """The convolutions' BatchNorm brings 0-dim buffers (num_batches_tracked) into the fingerprint."""
    from flamingo_lib.data.feature_cache import FeatureCache, encoder_fingerprint

    root, _, _ = built
    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(root))
    config = FlamingoConfig.from_preset("tiny", lm=TINY_LM, clip_model_type=TINY_VIT)
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    image = corpus.phantom("val", "templated", image_size=160)[0].images[0]
    cache = FeatureCache(tmp_path, model, processor)
    cache.build([image], progress=False)
    with torch.no_grad():
        direct = model.flamingo.encode_visuals(processor.preprocess_images([image])[:, None])[0, 0]
    torch.testing.assert_close(cache.get(image).float(), direct, atol=2e-3, rtol=1e-2)  # fp16 on disk
    before = encoder_fingerprint(model, processor)
    trunk = model.flamingo.vision_encoder.tower.trunk
    next(m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)).num_batches_tracked += 1
    assert encoder_fingerprint(model, processor) != before


def test_the_processor_feeds_flamingo_exactly_the_pixels_the_encoder_pretrained_on(built, monkeypatch):
    from flamingo_lib.encoders.pretraining.clip import normalise, render_images

    root, _, clip_dir = built
    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(root))
    preprocess = json.loads((clip_dir / "open_clip_config.json").read_text())["preprocess_cfg"]
    study = corpus.studies("val", modes=("templated",))[3]
    pretraining = normalise(render_images([study], "val", recipes()[1].render_size, preprocess, 0, False), preprocess)
    image = corpus.phantom("val", "templated", image_size=recipes()[1].render_size)[3].images[0]
    processor = FlamingoProcessor(FlamingoConfig.from_preset("tiny", lm=TINY_LM, clip_model_type=TINY_VIT))
    assert torch.equal(processor.preprocess_images([image]), pretraining)


def test_a_cache_hit_reuses_the_directory_without_training(built, monkeypatch):
    root, lm_dir, _ = built
    import flamingo_lib.encoders.embedded as embedded

    def must_not_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache holds this fingerprint")

    monkeypatch.setattr(embedded, "_build_lm", must_not_build)
    assert ensure_embedded_lm(scale=SMOKE, root=root / "encoders", progress=False) == lm_dir


def test_the_fingerprint_covers_seed_schedule_architecture_and_data():
    lm = recipes(SMOKE)[0]
    base = _spec("lm", lm, 0)
    assert base["data_version"] == corpus.data_version(0)
    from flamingo_lib.encoders.cache import fingerprint

    variants = [_spec("lm", lm, 1), _spec("lm", recipes(0.5)[0], 0),
                _spec("lm", recipes(SMOKE)[0].__class__(**{**base["recipe"], "hidden_size": 128}), 0),
                {**base, "data_version": "other"}]
    prints = {fingerprint(s) for s in variants} | {fingerprint(base)}
    assert len(prints) == len(variants) + 1
    assert fingerprint(_spec("lm", lm, 0)) == fingerprint(base)  # and nothing else moves it


def test_builds_are_deterministic_for_a_seed(built, tmp_path):
    _, lm_dir, clip_dir = built
    again_lm, again_clip = ensure_embedded_encoders(scale=SMOKE, root=tmp_path, progress=False)
    assert again_lm.name == lm_dir.name and again_clip.name == clip_dir.name
    for first, second in ((lm_dir / "model.safetensors", again_lm / "model.safetensors"),
                          (clip_dir / "open_clip_model.safetensors", again_clip / "open_clip_model.safetensors")):
        a, b = load_file(first), load_file(second)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (lm_dir / "tokenizer.json").read_text() == (again_lm / "tokenizer.json").read_text()


def test_the_lm_corpus_holds_train_split_text_only():
    from flamingo_lib.data.datasets.iu_reports import IUReport, iu_split

    ids = {split: [f"CXR{n}" for n in range(1, 400) if iu_split(f"CXR{n}") == split][:3]
           for split in ("train", "val", "test")}
    reports = [IUReport(rid, {"FINDINGS": f"{split}-findings-{rid}", "IMPRESSION": f"{split}-impression-{rid}"},
                        (), (), ()) for split, rids in ids.items() for rid in rids]
    documents = corpus.lm_documents("train", reports=reports)
    assert {f"train-findings-{r}" for r in ids["train"]} <= set(documents)
    assert {f"train-impression-{r}" for r in ids["train"]} <= set(documents)
    assert not [d for d in documents if d.startswith(("val-", "test-"))]
    # The real corpus: every study comes from the train split of its source.
    for study in corpus.studies("train"):
        assert iu_split(study.id) == "train" if study.mode == "iu" else study.id.startswith("phantom-train-")


def test_the_corpus_reads_report_text_exactly_as_phantom_serves_it():
    dataset = corpus.phantom("train", "templated", image_size=64)
    fast = corpus.studies("train", modes=("templated",))
    assert [s.report for s in fast[:3]] == [dataset[i].report for i in range(3)]


def test_a_reload_on_another_encoder_build_warns_and_the_same_build_does_not(built, monkeypatch, tmp_path):
    import warnings

    from flamingo_lib.modeling.backbones.provenance import EncoderBuildMismatchWarning

    root, lm_dir, clip_dir = built
    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(root))
    model = FlamingoModel(FlamingoConfig.from_preset("tiny", lm=TINY_LM, clip_model_type=TINY_VIT))
    assert model.config.embedded_builds == {"lm": lm_dir.name, "clip_model_type": clip_dir.name}
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["embedded_builds"]["clip_model_type"] == clip_dir.name  # the fingerprint travels
    with warnings.catch_warnings():
        warnings.simplefilter("error", EncoderBuildMismatchWarning)
        FlamingoModel.from_pretrained(tmp_path)
    saved["embedded_builds"]["clip_model_type"] = "tiny-vit-0123456789abcdef"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.warns(EncoderBuildMismatchWarning, match="tiny-vit-0123456789abcdef.*" + clip_dir.name):
        FlamingoModel.from_pretrained(tmp_path)


def test_a_fresh_model_computes_frozen_features_in_eval_mode_whatever_the_batch(built, monkeypatch, tmp_path):
    from conftest import xray_like
    from flamingo_lib.data.feature_cache import FeatureCache

    root, _, _ = built
    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(root))
    model = FlamingoModel(FlamingoConfig.from_preset("tiny", lm=TINY_LM, clip_model_type=TINY_VIT))  # no .eval()
    processor = FlamingoProcessor(model.config)
    tower = model.flamingo.vision_encoder
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())  # the case where the mode matters
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    images = [xray_like(i) for i in range(4)]
    together = FeatureCache(tmp_path / "together", model, processor)
    together.build(images, batch_size=4, progress=False)
    alone = FeatureCache(tmp_path / "alone", model, processor)
    alone.build(images[:1], batch_size=1, progress=False)
    torch.testing.assert_close(together.get(images[0]), alone.get(images[0]), atol=2e-3, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items()), "running statistics moved"

    for make_train in (model.train, model.flamingo.train, tower.train):  # whichever module is asked
        make_train()
        assert not any(m.training for m in tower.modules())
    model.flamingo.unfreeze_vm()
    model.train()
    assert tower.training  # a trainable encoder does train
    model.flamingo.freeze_vm()
    assert not any(m.training for m in tower.modules())
