"""The encoder cache's mechanics (with a dummy builder: no training) and the sentinel grammar."""

from __future__ import annotations

import threading
import time

import pytest

from flamingo_lib import FlamingoConfig
from flamingo_lib.encoders.cache import cached_build, fingerprint
from flamingo_lib.modeling.backbones.sentinels import Sentinel, parse_sentinel


class Builder:
    """Writes ``weights.bin``; counts calls; optionally slow or failing half-way."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls, self.delay, self.fail = 0, delay, fail

    def __call__(self, directory) -> None:
        self.calls += 1
        (directory / "weights.bin").write_bytes(b"half")
        time.sleep(self.delay)
        if self.fail:
            raise KeyboardInterrupt("killed mid-build")
        (directory / "weights.bin").write_bytes(b"whole")


def _build(root, builder, spec=None):
    return cached_build("enc", spec or {"seed": 0}, builder, ["weights.bin"], root)


def test_a_present_directory_is_reused_and_a_new_fingerprint_builds_anew(tmp_path):
    builder = Builder()
    first = _build(tmp_path, builder)
    assert _build(tmp_path, builder) == first and builder.calls == 1
    other = _build(tmp_path, builder, {"seed": 1})
    assert other != first and builder.calls == 2
    assert first.name == f"enc-{fingerprint({'seed': 0})}"
    assert (first / "manifest.json").is_file() and (first / "weights.bin").read_bytes() == b"whole"


def test_an_interrupted_build_leaves_no_directory_behind(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, Builder(fail=True))
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    builder = Builder()
    assert (_build(tmp_path, builder) / "weights.bin").read_bytes() == b"whole" and builder.calls == 1


def test_leftovers_of_a_killed_build_are_swept_and_an_incomplete_directory_rebuilt(tmp_path):
    final = tmp_path / f"enc-{fingerprint({'seed': 0})}"
    stale = tmp_path / f".tmp-{final.name}-dead"
    stale.mkdir()
    final.mkdir()  # e.g. emptied by hand
    builder = Builder()
    _build(tmp_path, builder)
    assert builder.calls == 1 and not stale.exists() and (final / "weights.bin").read_bytes() == b"whole"


def test_concurrent_builders_build_once_and_share_the_result(tmp_path):
    builder, results = Builder(delay=0.3), []
    threads = [threading.Thread(target=lambda: results.append(_build(tmp_path, builder))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builder.calls == 1 and len(set(results)) == 1 and len(results) == 3


def test_sentinels_parse_their_scale_and_seed_and_print_back():
    assert parse_sentinel("embedded-tiny-biogpt") == Sentinel("embedded-tiny-biogpt")
    parsed = parse_sentinel("embedded-tiny-vit@scale=0.5,seed=3")
    assert parsed == Sentinel("embedded-tiny-vit", 0.5, 3) and str(parsed) == "embedded-tiny-vit@scale=0.5,seed=3"
    assert str(Sentinel("embedded-tiny-vit", 1.0, 0)) == "embedded-tiny-vit"
    assert parse_sentinel("microsoft/biogpt") is None and parse_sentinel(None) is None


@pytest.mark.parametrize("bad", ["embedded-tiny-vit@scale=0", "embedded-tiny-vit@scale=x", "embedded-tiny-vit@size=2",
                                 "embedded-tiny-vit@seed=1.5", "embedded-smollm2@scale=2", "embedded-tiny-vit@"])
def test_malformed_sentinels_are_rejected_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="scale|seed|parameters"):
        parse_sentinel(bad)


def test_from_preset_writes_the_pretrain_scale_into_the_sentinels(monkeypatch):
    monkeypatch.delenv("FLAMINGO_PRETRAIN_SCALE", raising=False)
    config = FlamingoConfig.from_preset("tiny")
    assert (config.lm, config.clip_model_type) == ("embedded-tiny-biogpt", "embedded-tiny-vit")
    monkeypatch.setenv("FLAMINGO_PRETRAIN_SCALE", "4")
    config = FlamingoConfig.from_preset("tiny")
    assert (config.lm, config.clip_model_type) == ("embedded-tiny-biogpt@scale=4", "embedded-tiny-vit@scale=4")
    assert FlamingoConfig.from_preset("tiny", lm="microsoft/biogpt").lm == "microsoft/biogpt"
    assert FlamingoConfig.from_preset("smol").lm == "embedded-smollm2"
    assert FlamingoConfig.from_preset("tiny", 0.25).lm == "embedded-tiny-biogpt@scale=0.25"  # argument beats env
    assert FlamingoConfig.from_preset("tiny", 1).clip_model_type == "embedded-tiny-vit"
    with pytest.raises(ValueError, match="pretrain_scale"):
        FlamingoConfig.from_preset("tiny", 0)
    monkeypatch.setenv("FLAMINGO_PRETRAIN_SCALE", "-1")
    with pytest.raises(ValueError, match="FLAMINGO_PRETRAIN_SCALE"):
        FlamingoConfig.from_preset("tiny")


def test_a_sentinel_in_the_wrong_slot_is_rejected_before_anything_builds():
    from flamingo_lib.modeling.backbones.language import load_language_model
    from flamingo_lib.modeling.backbones.vision import encoder_kind

    assert encoder_kind("embedded-tiny-vit@scale=2") == "open_clip"  # known without building
    with pytest.raises(ValueError, match="not a vision encoder"):
        encoder_kind("embedded-tiny-biogpt")
    with pytest.raises(ValueError, match="not a language model"):
        load_language_model("embedded-tiny-vit")


def _ship(shipped_root, spec, payload=b"shipped", manifest_spec=None):
    import json

    directory = shipped_root / f"enc-{fingerprint(spec)}"
    directory.mkdir(parents=True)
    (directory / "weights.bin").write_bytes(payload)
    (directory / "manifest.json").write_text(json.dumps({"name": "enc", "spec": manifest_spec or spec}))
    return directory


def test_a_shipped_build_of_the_same_spec_is_copied_instead_of_built(tmp_path):
    spec = {"seed": 0, "recipe": {"steps": [1, 2]}}
    _ship(tmp_path / "shipped", spec)
    builder = Builder()
    built = cached_build("enc", spec, builder, ["weights.bin"], tmp_path / "cache", shipped_root=tmp_path / "shipped")
    assert builder.calls == 0 and (built / "weights.bin").read_bytes() == b"shipped"
    assert built.parent == tmp_path / "cache"  # a copy in the cache: the checkout may move or go


def test_a_shipped_build_whose_manifest_says_another_spec_or_is_switched_off_is_ignored(tmp_path, monkeypatch):
    from flamingo_lib.encoders import cache

    spec = {"seed": 0}
    _ship(tmp_path / "shipped", spec, manifest_spec={"seed": 1})  # renamed by hand, or a stale copy
    builder = Builder()
    built = cached_build("enc", spec, builder, ["weights.bin"], tmp_path / "a", shipped_root=tmp_path / "shipped")
    assert builder.calls == 1 and (built / "weights.bin").read_bytes() == b"whole"
    (tmp_path / "good").mkdir()
    _ship(tmp_path / "good", spec)
    monkeypatch.setattr(cache, "shipped_encoders_root", lambda: tmp_path / "good")
    assert (cached_build("enc", spec, Builder(), ["weights.bin"], tmp_path / "b") / "weights.bin").read_bytes() \
        == b"shipped"
    monkeypatch.undo()  # the real shipped_encoders_root again, switched off by the variable:
    monkeypatch.setenv("FLAMINGO_SHIPPED_ENCODERS", "0")
    assert cache.shipped_encoders_root() is None


def test_ship_build_replaces_the_build_of_the_same_name_shipped_before(tmp_path):
    from flamingo_lib.encoders.cache import ship_build

    old = _ship(tmp_path / "shipped", {"seed": 0})
    other = tmp_path / "shipped" / "other-0123"
    other.mkdir()
    new = tmp_path / "cache" / f"enc-{fingerprint({'seed': 1})}"
    new.mkdir(parents=True)
    (new / "weights.bin").write_bytes(b"new")
    shipped = ship_build(new, tmp_path / "shipped")
    assert (shipped / "weights.bin").read_bytes() == b"new" and not old.exists() and other.exists()
    assert not list((tmp_path / "shipped").glob(".tmp-*"))


def test_every_build_the_repository_ships_is_the_current_recipes_own():
    """A shipped build that no longer matches its recipe is silently ignored (the half-hour
    build returns): rebuild and ship it (`python -m flamingo_lib.encoders.embedded --ship`) or
    delete it whenever the recipe, the phantom or the labeler changes."""
    import json

    from flamingo_lib.encoders import cache
    from flamingo_lib.encoders.embedded import CLIP_FILES, _spec, recipes

    root = cache.shipped_encoders_root()
    shipped = sorted(root.glob("tiny-vit-*")) if root else []
    assert len(shipped) <= 1
    for directory in shipped:
        spec = _spec("vit", recipes(1.0)[1], 0)
        assert cache.shipped_build("tiny-vit", spec, CLIP_FILES, root) == directory, (
            f"{directory} was built from another recipe than the current default's "
            f"(shipped {json.loads((directory / 'manifest.json').read_text())['spec']}, current {spec}): "
            "rebuild and ship it with `python -m flamingo_lib.encoders.embedded --ship`, or delete it")


def test_the_default_vision_encoder_comes_from_the_shipped_build_on_a_fresh_cache(tmp_path, monkeypatch):
    from flamingo_lib.encoders import cache
    from flamingo_lib.encoders.pretraining import vision_build
    from flamingo_lib.encoders.embedded import ensure_embedded_vit

    root = cache.shipped_encoders_root()
    if root is None or not list(root.glob("tiny-vit-*")):
        pytest.skip("this checkout ships no vision build")

    def no_build(*_args, **_kwargs):
        raise AssertionError("built instead of copying the shipped build")

    monkeypatch.setattr(vision_build, "build_clip_dir", no_build)
    directory = ensure_embedded_vit(root=tmp_path)
    shipped = root / directory.name
    for name in ("open_clip_model.safetensors", "open_clip_config.json", "manifest.json"):
        assert (directory / name).read_bytes() == (shipped / name).read_bytes(), name
