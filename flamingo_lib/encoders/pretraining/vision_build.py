"""Build the embedded vision encoder's directory: pretrain (the trunk on the reports' labels, then
CLIP's text tower on it locked; or CLIP from scratch), measure, save as open_clip does.

Metrics, all on the val split (never trained on):

* zero-shot image-to-text recall@1/@5 against the distinct val reports, per text mode, with
  chance (k / number of distinct reports) beside it;
* per-label AUROC of a linear probe on the mean patch token (what the Perceiver Resampler
  reads), for the pretrained encoder and for the same architecture at its random initialisation,
  so the gain is the pretraining's and not the probe's.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS
from flamingo_lib.encoders.cache import write_json_atomic
from flamingo_lib.encoders.pretraining.clip import (
    ClipRecipe,
    build_clip,
    normalise,
    open_clip_config,
    pretrain_clip,
    render_images,
)
from flamingo_lib.encoders.pretraining.corpus import Study, finding_signature, lm_documents, studies
from flamingo_lib.encoders.pretraining.labels import pretrain_trunk_on_labels
from flamingo_lib.encoders.pretraining.probe import probe_aurocs, retrieval_recall
from flamingo_lib.encoders.pretraining.tokenizer import train_bpe_tokenizer
from flamingo_lib.labeling.targets import FindingTargets


def _subset(items: list, n: int | None, seed: int) -> list:
    """``n`` items drawn without replacement (seeded), kept in their original order."""
    if n is None or n >= len(items):
        return items
    keep = sorted(torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return [items[i] for i in keep]


@torch.no_grad()
def _encode_images(model: torch.nn.Module, images: torch.Tensor, preprocess: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, S, S) -> (L2-normalised CLIP embeddings (N, E), mean patch token (N, D)).

    One trunk pass for both: open_clip's TimmModel is ``head(trunk.forward_head(forward_features))``.
    """
    embeddings, pooled = [], []
    for i in range(0, len(images), 128):
        tokens = model.visual.trunk.forward_features(normalise(images[i: i + 128], preprocess))  # (n, P, D)
        pooled.append(tokens.mean(1))
        projected = model.visual.head(model.visual.trunk.forward_head(tokens))
        embeddings.append(torch.nn.functional.normalize(projected, dim=-1))
    return torch.cat(embeddings), torch.cat(pooled)


def _labels(batch: list[Study]) -> torch.Tensor:
    """(N, 14) 1.0 where an observation is positive on the film, else 0."""
    return torch.tensor([[1.0 if s.labels.get(o) == 1.0 else 0.0 for o in CHEXPERT_OBSERVATIONS] for s in batch])


@torch.no_grad()
def _recall(model: torch.nn.Module, tokenizer, val: list[Study], embeddings: torch.Tensor, context: int) -> dict:
    out = {}
    for mode in ("iu", "templated"):
        rows = [i for i, s in enumerate(val) if s.mode == mode]
        if not rows:
            continue
        distinct = sorted({val[i].report for i in rows})
        ids = tokenizer(distinct, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
        text = model.encode_text(ids["input_ids"], normalize=True)
        truth = torch.tensor([distinct.index(val[i].report) for i in rows])
        out[mode] = {"images": len(rows), **retrieval_recall(embeddings[rows], text, truth)}
    return out


def build_clip_dir(directory: Path, recipe: ClipRecipe, seed: int, data_seed: int, progress: bool = True) -> None:
    """Pretrain the embedded CLIP and write the open_clip ``local-dir:`` layout into ``directory``:
    ``open_clip_config.json``, ``open_clip_model.safetensors``, the tokenizer, ``metrics.json``."""
    start = time.perf_counter()
    tokenizer = train_bpe_tokenizer(lm_documents("train", data_seed), recipe.vocab_size, recipe.context_length,
                                    append_eos=True)  # the text tower pools at </s>
    config = open_clip_config(recipe, len(tokenizer))
    preprocess = config["preprocess_cfg"]
    train = _subset([s for s in studies("train", data_seed) if s.report], recipe.max_train_images, seed)
    val = _subset([s for s in studies("val", data_seed) if s.report], recipe.max_eval_images, seed)
    train_images = render_images(train, "train", recipe.render_size, preprocess, data_seed, progress)
    val_images = render_images(val, "val", recipe.render_size, preprocess, data_seed, progress)
    texts = tokenizer([s.report for s in train], padding="max_length", truncation=True,
                      max_length=recipe.context_length, return_tensors="pt")["input_ids"]

    model = build_clip(config, seed)
    initial = copy.deepcopy(model).eval()
    groups = [finding_signature(s) for s in train]
    stats = {}
    if recipe.trunk_objective == "labels":  # the targets the findings head learns too (FindingTargets)
        targets = FindingTargets(CHEXPERT_OBSERVATIONS).for_samples(train, recipe.trunk_targets)
        stats = pretrain_trunk_on_labels(model.visual.trunk, train_images, targets, preprocess, recipe, seed, progress)
    stats.update(pretrain_clip(model, train_images, texts, groups, preprocess, recipe, seed, progress,
                               lock_trunk=recipe.trunk_objective == "labels"))

    probe_rows = _subset(list(range(len(train))), recipe.probe_train_images, seed + 1)
    metrics: dict = {"vision_parameters": sum(p.numel() for p in model.visual.parameters()),
                     "train": stats, "val": {}}
    for name, encoder in (("pretrained", model), ("random_init", initial)):
        val_embeddings, val_pooled = _encode_images(encoder, val_images, preprocess)
        _, train_pooled = _encode_images(encoder, train_images[probe_rows], preprocess)
        aurocs = probe_aurocs(train_pooled, _labels([train[i] for i in probe_rows]), val_pooled, _labels(val),
                              CHEXPERT_OBSERVATIONS)
        metrics["val"][name] = {
            "zero_shot": _recall(encoder, tokenizer, val, val_embeddings, recipe.context_length),
            "probe_auroc": aurocs,
            "probe_mean_auroc": round(sum(a["auroc"] for a in aurocs.values()) / max(1, len(aurocs)), 4),
        }
    metrics["probe"] = {"features": "mean patch token of the timm trunk", "train_images": len(probe_rows),
                        "val_images": len(val)}

    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    tokenizer.save_pretrained(directory)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(directory / "metrics.json", metrics)
