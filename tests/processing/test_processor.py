"""FlamingoProcessor: dedicated tokens, labels, image conversion and preprocessing, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.processing.processor import IGNORE_INDEX, to_rgb


def test_literal_less_than_sign_is_text_not_an_image(tiny):
    _, processor = tiny
    batch = processor(["<image>Small nodule <5 mm in the right upper lobe <image"], [[xray_like(0)]])
    assert int(batch["media_locations"].sum()) == 1
    assert batch["media_locations"][0, 0] and not batch["media_locations"][0, 1:].any()


def test_image_and_eoc_are_single_added_tokens(tiny):
    _, processor = tiny
    ids = processor.tokenizer("<image>ok<EOC>", add_special_tokens=False)["input_ids"]
    assert ids[0] == processor.image_token_id and ids[-1] == processor.eoc_token_id
    assert processor.image_token_id != processor.eoc_token_id
    assert processor.remove_tags(processor.tokenizer.decode(ids)) == "ok"


def test_training_labels_mask_padding_image_tokens_and_prompt(tiny):
    _, processor = tiny
    batch = processor.training_batch(["Normal.", "Small left pleural effusion."], [[xray_like(0)], [xray_like(1)]])
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    prompt_len = len(processor.tokenizer(processor.study_prompt(1))["input_ids"])
    assert (labels[:, :prompt_len] == IGNORE_INDEX).all()  # prompt (with <image>) is given, not learned
    assert (labels[mask == 0] == IGNORE_INDEX).all()  # padding
    assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()
    learned = processor.tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX])
    assert learned.strip() == "Normal.<EOC>"
    assert int((labels[1] == processor.eoc_token_id).sum()) == 1


def test_build_labels_prompt_mask_follows_left_padding(tiny):
    _, processor = tiny
    ids = torch.tensor([[1, 1, 260, 50, 51, 52], [260, 60, 61, 62, 63, 64]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = processor.build_labels(ids, mask, prompt_lengths=[2, 2])
    assert labels.tolist() == [[-100, -100, -100, -100, 51, 52], [-100, -100, 61, 62, 63, 64]]


def test_several_images_per_sample_are_padded_per_batch(tiny):
    _, processor = tiny
    batch = processor(["<image><image>Frontal and lateral.", "<image>Frontal only."],
                      [[xray_like(0), xray_like(1)], [xray_like(2)]])
    assert batch["pixel_values"].shape[:2] == (2, 2)
    assert torch.equal(batch["pixel_values"][1, 1], torch.zeros_like(batch["pixel_values"][1, 1]))
    assert not torch.equal(batch["pixel_values"][0, 0], batch["pixel_values"][0, 1])


def test_sixteen_bit_grayscale_uses_the_full_range():
    array = np.linspace(100, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 255
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_transparent_pixels_become_black_and_grayscale_becomes_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    rgba.putpixel((0, 0), (200, 200, 200, 255))
    out = np.asarray(to_rgb(rgba))
    assert out[1, 1].tolist() == [0, 0, 0] and out[0, 0].tolist() == [200, 200, 200]
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_same_pixels_whatever_the_input_mode(tiny):
    _, processor = tiny
    gray = xray_like(0)
    as_rgb, as_16bit = gray.convert("RGB"), Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    ref = processor.preprocess_images([gray])
    assert torch.equal(processor.preprocess_images([as_rgb]), ref)
    if np.asarray(gray).min() == 0 and np.asarray(gray).max() == 255:
        torch.testing.assert_close(processor.preprocess_images([as_16bit]), ref)


def test_preprocessing_is_the_vision_encoders_own_transform(tiny):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    _, processor = tiny
    cfg = processor.image_config
    theirs = image_transform_v2(PreprocessCfg(size=cfg.size, mean=cfg.mean, std=cfg.std), is_train=False)
    image = xray_like(3).convert("RGB")
    assert torch.equal(processor.preprocess_images([image])[0], theirs(image))
    assert cfg.mean == open_clip.OPENAI_DATASET_MEAN and cfg.resize_mode == "shortest"


@pytest.mark.parametrize(
    "texts, images, message",
    [
        (["<image><image>two tokens"], [[xray_like(0)]], "2 <image> token\\(s\\) but 1 image"),
        (["no token at all"], [[xray_like(0)]], "0 <image> token\\(s\\) but 1 image"),
        (["<image>a", "<image>b"], [[xray_like(0)]], "got 2 texts but 1 image lists"),
    ],
)
def test_mismatched_images_and_tokens_raise_clear_errors(tiny, texts, images, message):
    _, processor = tiny
    with pytest.raises(ValueError, match=message):
        processor(texts, images)


def test_model_rejects_token_image_mismatch_and_wrong_pixel_shape(tiny):
    model, processor = tiny
    batch = processor(["<image>text"], [[xray_like(0)]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    two_tokens = torch.cat([ids[:, :1], ids], dim=1)
    with pytest.raises(ValueError, match="2 <image> tokens but only 1 image"):
        model(input_ids=two_tokens, pixel_values=batch["pixel_values"])
    no_token = ids[:, 1:]
    with pytest.raises(ValueError, match="every image needs its token"):
        model(input_ids=no_token, pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="pixel_values must be \\(batch, images, 3, height, width\\)"):
        model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"][:, 0])
    with pytest.raises(ValueError, match="pixel_values must be .* got shape \\(1, 1, 1, 160, 160\\)"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 1, 1, 160, 160))
    with pytest.raises(ValueError, match="exactly one of pixel_values, image_embeddings or visual_features; got none"):
        model(input_ids=ids)
    features = model.flamingo.encode_resample_visuals(batch["pixel_values"])
    with pytest.raises(ValueError, match="got pixel_values, visual_features"):
        model(input_ids=ids, pixel_values=batch["pixel_values"], visual_features=features)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FlamingoConfig.from_preset("huge"), "unknown preset 'huge'; allowed presets: biomed, tiny-random"),
        (lambda: FlamingoConfig(xattn_act="swish"), "xattn_act='swish' is not supported; allowed: gelu, sqrelu, relu"),
        (lambda: FlamingoConfig(resampler_depth=0), "resampler_depth must be a positive integer"),
        (lambda: FlamingoModel(FlamingoConfig.from_preset("tiny-random", clip_model_type="no-such-encoder")),
         "clip_model_type='no-such-encoder' is not a known vision encoder; allowed"),
        (lambda: FlamingoModel(FlamingoConfig.from_preset("tiny-random", lm="/nonexistent/lm")),
         "cannot load .*lm='/nonexistent/lm'.*allowed"),
        (lambda: FlamingoModel(FlamingoConfig.from_preset("tiny-random", dim=7)), "config.dim=7 but the LM"),
        (lambda: FlamingoModel(FlamingoConfig.from_preset("tiny-random", xattn_every=5)), "xattn_every=5 exceeds"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("act", ["gelu", "sqrelu", "relu"])
def test_every_activation_builds_and_runs(act):
    config = FlamingoConfig.from_preset("tiny-random", xattn_act=act, resampler_act=act)
    model = FlamingoModel(config)
    from flamingo_lib import FlamingoProcessor

    batch = FlamingoProcessor(config).training_batch(["Normal."], [[xray_like(0)]])
    assert torch.isfinite(model(**batch).loss)


def test_multi_view_studies_get_one_image_token_per_view_in_training_and_generation(tiny):
    model, processor = tiny
    views = [[xray_like(0), xray_like(1)], [xray_like(2)]]
    batch = processor.training_batch(["Frontal and lateral: normal.", "Frontal: normal."], views)
    assert batch["media_locations"].sum(-1).tolist() == [2, 1]
    assert processor.study_prompt(2) == "<image><image>Findings:"
    texts = model.generate_captions(processor, images=views, max_length=3)
    assert len(texts) == 2


def test_few_shot_prompt_interleaves_examples_before_the_query(tiny):
    from flamingo_lib.processing.prompts import Example, few_shot_images, few_shot_prompt

    _, processor = tiny
    examples = [Example([xray_like(0)], "Normal."), Example([xray_like(1), xray_like(2)], "Left effusion.")]
    prompt = few_shot_prompt(examples, query_views=1)
    assert prompt == "<image>Findings: Normal.<EOC><image><image>Findings: Left effusion.<EOC><image>Findings:"
    images = few_shot_images(examples, [xray_like(3)])
    batch = processor.training_batch(["Right nodule."], [images], prompts=[prompt])
    labels = batch["labels"][0]
    learned = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert learned.strip() == "Right nodule.<EOC>"  # only the query's report is learned
    assert int(batch["media_locations"].sum()) == 4


def test_a_model_saved_without_its_processor_reloads_the_processor_its_config_describes(tmp_path):
    config = FlamingoConfig.from_preset("tiny-random")
    FlamingoModel(config).save_pretrained(tmp_path)  # the model alone: config and trainable weights
    assert not (tmp_path / "flamingo_processor.json").exists()
    reloaded, fresh = FlamingoProcessor.from_pretrained(tmp_path), FlamingoProcessor(config)
    assert reloaded.prompt == fresh.prompt and reloaded.image_config == fresh.image_config
    text = ["<image>Findings: heart size is normal.<EOC>"]
    assert torch.equal(reloaded(text, [[xray_like(0)]])["input_ids"], fresh(text, [[xray_like(0)]])["input_ids"])


def test_an_empty_batch_is_refused_by_name_not_by_an_index_error():
    config = FlamingoConfig.from_preset("tiny-random")
    processor = FlamingoProcessor(config)
    with pytest.raises(ValueError, match="no text given"):
        processor([], [])
    with pytest.raises(ValueError, match="generate_captions: no images given"):
        FlamingoModel(config).generate_captions(processor, images=[])


def test_a_save_that_dies_midway_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    config = FlamingoConfig.from_preset("tiny-random")
    processor = FlamingoProcessor(config)
    processor.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save = type(processor.tokenizer).save_pretrained

    def dies_midway(self, directory, *args, **kwargs):
        (Path(directory) / "tokenizer.json").write_text('{"truncated')  # half a file, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(type(processor.tokenizer), "save_pretrained", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        processor.save_pretrained(tmp_path)
    monkeypatch.setattr(type(processor.tokenizer), "save_pretrained", save)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.pop("SAVE_IN_PROGRESS") and after == before  # nothing torn, nothing left over but the mark
    with pytest.raises(ValueError, match="did not finish"):
        FlamingoProcessor.from_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert FlamingoProcessor.from_pretrained(tmp_path).tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
