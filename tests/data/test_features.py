"""Feature cache: equivalence with pixels, zero encoder calls from cache, resume after a kill,
corrupt and stale shards, refusal when the encoder trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.feature_cache import FeatureCache, image_hash


@pytest.fixture(scope="module")
def model_and_processor():
    config = FlamingoConfig.from_preset("tiny-random")
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


def test_cached_features_give_the_logits_of_pixels(model_and_processor, tmp_path):
    model, processor = model_and_processor
    cache = FeatureCache(tmp_path, model, processor)
    imgs = [[xray_like(0), xray_like(1)], [xray_like(2)]]
    stats = cache.build([im for sample in imgs for im in sample], batch_size=2, progress=False)
    assert (stats.computed, stats.reused) == (3, 0)
    batch = processor(["<image><image>Two views.", "<image>One view."], imgs)
    with torch.no_grad():
        from_pixels = model(**batch).logits
        pixels = batch.pop("pixel_values")
        from_cache = model(**batch, image_embeddings=cache.stack(imgs)).logits
        exact = model.flamingo.encode_visuals(pixels)
    stored = cache.get(imgs[0][1])
    assert stored.shape == exact.shape[2:]
    torch.testing.assert_close(stored, exact[0, 1], atol=2e-3, rtol=2e-3)  # fp16 storage
    torch.testing.assert_close(from_cache, from_pixels, atol=2e-3, rtol=2e-3)


def test_a_padded_view_slot_is_not_encoded_and_reads_as_the_caches_zero_padding(model_and_processor, tmp_path):
    model, processor = model_and_processor
    imgs = [[xray_like(0), xray_like(1)], [xray_like(2)]]
    pixels = processor(["<image><image>", "<image>"], imgs)["pixel_values"]
    encoded_batches = []
    hook = model.flamingo.vision_encoder.register_forward_hook(
        lambda module, args, out: encoded_batches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            tokens = model.flamingo.encode_visuals(pixels)
    finally:
        hook.remove()
    assert encoded_batches == [3]  # three films, not four slots
    assert not tokens[1, 1].any() and tokens[1, 0].any()
    cache = FeatureCache(tmp_path, model, processor)
    cache.build([im for sample in imgs for im in sample], batch_size=2, progress=False)
    stacked = cache.stack(imgs)
    assert not stacked[1, 1].any()
    torch.testing.assert_close(stacked, tokens, atol=2e-3, rtol=2e-3)  # the padding included
    # the second study alone: the same tokens for its one film
    with torch.no_grad():
        alone = model.flamingo.encode_visuals(processor(["<image>"], [imgs[1]])["pixel_values"])
    torch.testing.assert_close(alone[0, 0], tokens[1, 0])


def test_an_epoch_from_the_cache_makes_zero_encoder_calls(model_and_processor, tmp_path):
    model, processor = model_and_processor
    cache = FeatureCache(tmp_path, model, processor)
    images = [xray_like(i) for i in range(4)]
    cache.build(images, progress=False)
    calls = []
    hook = model.flamingo.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        for image in images:  # one "epoch" of training steps from cached features
            batch = processor.training_batch(["Heart size is normal."], [[image]])
            batch.pop("pixel_values")
            model(**batch, image_embeddings=cache.stack([[image]])).loss.backward()
        again = cache.build(images, progress=False)
    finally:
        hook.remove()
    assert calls == [] and again.computed == 0 and again.reused == 4


def test_duplicate_images_are_computed_once(model_and_processor, tmp_path):
    model, processor = model_and_processor
    cache = FeatureCache(tmp_path, model, processor)
    stats = cache.build([xray_like(0), xray_like(0), xray_like(1)], progress=False)
    assert (stats.computed, stats.reused, len(cache)) == (2, 1, 2)


def test_reads_keep_a_bounded_number_of_shards_open_and_stay_exact(model_and_processor, tmp_path, monkeypatch):
    model, processor = model_and_processor
    films = [xray_like(i) for i in range(8)]
    FeatureCache(tmp_path, model, processor).build(films, batch_size=2, shard_size=2, progress=False)
    cache = FeatureCache(tmp_path, model, processor)  # a fresh reader: 4 shards on disk
    shard_bytes = max(path.stat().st_size for path in cache.directory.glob("shard-*"))
    monkeypatch.setattr(FeatureCache, "MAX_OPEN_BYTES", 2 * shard_bytes)  # room for two
    expected = [processor_features(model, processor, film) for film in films]
    for index in [0, 2, 4, 6, 1, 7, 3, 5, 0]:  # every shard, then again out of order
        assert torch.allclose(cache.get(films[index]), expected[index], atol=2e-3)
        assert len(cache._handles) <= 2 and cache._open_bytes == sum(size for _, size in cache._handles.values())
    assert len(set(cache._index.values())) == 4 and len(cache._handles) == 2


def test_a_build_the_disk_cannot_hold_is_refused_before_any_work_naming_the_room(model_and_processor, tmp_path,
                                                                                 monkeypatch):
    from collections import namedtuple

    import flamingo_lib.data.feature_cache as feature_cache

    model, processor = model_and_processor
    cache = FeatureCache(tmp_path, model, processor)
    per_film = cache.bytes_per_image()
    tokens = model.flamingo.encode_visuals(processor.preprocess_images([xray_like(0)])[:, None])[0, 0]
    assert per_film == tokens.numel() * 2 + 120  # fp16 tokens and the header's entry
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda path: usage(10**9, 0, 3 * per_film))
    films = [xray_like(i) for i in range(4)]
    with pytest.raises(OSError, match=rf"{cache.directory}: up to 4 films to add at {per_film:,} bytes each.*not "
                                      "enough room"):
        cache.build(films, progress=False)
    assert len(cache) == 0 and cache.encoder_calls == 0 and not list(cache.directory.glob("shard-*"))
    assert cache.build(films[:3], progress=False).computed == 3  # what fits is built
    assert cache.build(films, progress=False).computed == 1  # 3 cached: one more film, and room for it


def test_int8_storage_keeps_each_token_to_half_a_step_of_its_scale_in_a_cache_of_its_own(model_and_processor,
                                                                                         tmp_path):
    model, processor = model_and_processor
    films = [xray_like(i) for i in range(5)]
    half = FeatureCache(tmp_path, model, processor)
    small = FeatureCache(tmp_path, model, processor, storage="int8")
    assert small.directory != half.directory
    for cache in (half, small):
        cache.build(films, batch_size=2, shard_size=8, progress=False)
    again = FeatureCache(tmp_path, model, processor, storage="int8")  # read back from disk: scales are no films
    assert len(again) == 5
    for film in films:
        exact = processor_features(model, processor, film)
        step = exact.abs().amax(-1, keepdim=True) / 127  # the quantisation step of each token
        error = (again.get(film) - exact).abs()
        assert bool((error <= step / 2 * (1 + 1e-5) + 1e-7).all())  # half a step (and float32's rounding)
        assert float(error.max()) > 0  # it is quantised, not a copy
    (int8_shard,), (fp16_shard,) = small.directory.glob("shard-*"), half.directory.glob("shard-*")
    assert int8_shard.stat().st_size < 0.75 * fp16_shard.stat().st_size
    assert small.bytes_per_image() < half.bytes_per_image()
    with pytest.raises(ValueError, match=r"feature storage must be one of \('float16', 'int8'\), got 'int4'"):
        FeatureCache(tmp_path, model, processor, storage="int4")


def processor_features(model, processor, film) -> torch.Tensor:
    """(P, dim_visual) patch tokens of one film straight from the encoder."""
    with torch.no_grad():
        return model.flamingo.encode_visuals(processor.preprocess_images([film])[:, None])[0, 0].float()


KILLED_BUILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import xray_like
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.data.feature_cache import FeatureCache
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    def slow_images():
        for i in range(12):
            if i >= 4:
                time.sleep(0.5)  # leave time to be killed after the first shard
            yield xray_like(i)
    FeatureCache({root!r}, model, processor).build(slow_images(), batch_size=2, shard_size=4, progress=False)
""")


def test_caching_killed_midway_resumes_to_the_uninterrupted_result(model_and_processor, tmp_path):
    model, processor = model_and_processor
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    script = KILLED_BUILD.format(tests=os.path.dirname(os.path.dirname(__file__)), root=str(killed_root))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed_root.glob("*/shard-*.safetensors")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = list(killed_root.glob("*/shard-*.safetensors"))
    assert done_before, "the build never wrote a shard before being killed"

    images = [xray_like(i) for i in range(12)]
    resumed = FeatureCache(killed_root, model, processor)
    already = len(resumed)
    assert 4 <= already < 12
    stats = resumed.build(images, batch_size=2, shard_size=4, progress=False)
    assert stats.computed == 12 - already and stats.reused == already
    clean = FeatureCache(clean_root, model, processor)
    clean.build(images, batch_size=2, shard_size=4, progress=False)
    for image in images:
        assert torch.equal(resumed.get(image), clean.get(image))
    assert not list(killed_root.glob("*/*.tmp"))


def test_corrupt_shard_is_detected_and_recomputed(model_and_processor, tmp_path):
    model, processor = model_and_processor
    images = [xray_like(i) for i in range(6)]
    cache = FeatureCache(tmp_path, model, processor)
    cache.build(images, shard_size=3, progress=False)
    expected = cache.get(images[0])
    shard = cache._index[image_hash(images[0])]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated on disk
    reopened = FeatureCache(tmp_path, model, processor)
    assert len(reopened) == 3 and images[0] not in reopened
    stats = reopened.build(images, shard_size=3, progress=False)
    assert (stats.computed, stats.reused) == (3, 3)
    assert torch.equal(reopened.get(images[0]), expected)


def test_another_encoder_never_reads_these_features(model_and_processor, tmp_path):
    model, processor = model_and_processor
    FeatureCache(tmp_path, model, processor).build([xray_like(0)], progress=False)
    other_config = FlamingoConfig.from_preset("tiny-random", seed=7)
    other = FeatureCache(tmp_path, FlamingoModel(other_config), FlamingoProcessor(other_config))
    assert len(other) == 0 and other.fingerprint != FeatureCache(tmp_path, model, processor).fingerprint
    with pytest.raises(KeyError, match="not in the feature cache"):
        other.get(xray_like(0))


def test_cache_refused_when_the_vision_encoder_trains(tmp_path):
    config = FlamingoConfig.from_preset("tiny-random", freeze_vision_model=False)
    with pytest.raises(ValueError, match="features would go stale"):
        FeatureCache(tmp_path, FlamingoModel(config), FlamingoProcessor(config))


CONCURRENT_BUILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import xray_like
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.data.feature_cache import FeatureCache
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    images = [xray_like(i) for i in range({first}, {first} + 24)]
    FeatureCache({root!r}, model, processor).build(images, batch_size=1, shard_size=1, progress=False)
""")


def test_two_processes_filling_one_cache_lose_no_shard(model_and_processor, tmp_path):
    """Each writes 24 one-image shards at the same time; afterwards every image of both is there."""
    model, processor = model_and_processor
    tests = os.path.dirname(os.path.dirname(__file__))
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILD.format(tests=tests, root=str(tmp_path), first=first)],
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}) for first in (0, 1000)]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    cache = FeatureCache(tmp_path, model, processor)
    assert len(cache) == 48
    assert len(list(cache.directory.glob("shard-*.safetensors"))) == 48 and not list(cache.directory.glob("*.tmp"))
    expected = FeatureCache(tmp_path / "alone", model, processor)
    for image in [xray_like(i) for i in (0, 23, 1000, 1023)]:
        expected.build([image], progress=False)
        assert torch.equal(cache.get(image), expected.get(image))
