"""How much of the findings do a vision encoder's frozen patch tokens carry?

Trains the embedded encoder's architecture for the default budget by the embedded build's recipe
(``recipe``: the trunk on the labeler's reading of the reports, then CLIP fitted to it locked),
contrastively from scratch (``clip``), or supervised on the films' true CheXpert labels (an upper
bound for the architecture at that budget; ``LABELS=report`` uses the reports' labels instead;
``dense`` adds, per token, which finding masks cover its cell), then fits an attention probe
(per-label query pooling over the patch tokens) on all training films and reports val AUROC per
label and the micro-F1 over the rendered findings at threshold 0.5.

    HF_HUB_OFFLINE=1 python -m experiments.encoder_probe recipe
    HF_HUB_OFFLINE=1 python -m experiments.encoder_probe clip
    HF_HUB_OFFLINE=1 python -m experiments.encoder_probe supervised
    HF_HUB_OFFLINE=1 python -m experiments.encoder_probe dense   # + per-token finding-mask targets
    TRUNK=flamingo_cxr_vitc_tiny POOL=avg python -m ... clip   # the ViT's pooling (default: map)
    TRUNK=flamingo_cxr_vitc_tiny STEM=16,32,64 python -m ... supervised   # the ViT with a stride-8 stem
    TRUNK=flamingo_cxr_cnn_tiny python -m experiments.encoder_probe clip   # one conv per stage
    TRUNK=flamingo_cxr_vitc_tiny python -m experiments.encoder_probe clip   # the conv-stem ViT
    CNN_CHANNELS=32,64,96,128 CNN_DEPTH=3 python -m ...   # the CNN trunk's stage widths and depth
    IMAGE_SIZE=224 STEPS=800 python -m ...                 # input size, optimiser steps
Each run takes 3-6 minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import timm
import torch
from timm.models import register_model

from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS
from flamingo_lib.encoders.pretraining.labels import pretrain_trunk_on_labels
from flamingo_lib.labeling.targets import FindingTargets
from flamingo_lib.encoders.pretraining.clip import (ClipRecipe, build_clip, normalise, open_clip_config, pretrain_clip,
                                                 render_images)
from flamingo_lib.encoders.pretraining.corpus import finding_signature, lm_documents, studies
from flamingo_lib.encoders.pretraining.probe import auroc
from flamingo_lib.encoders.pretraining.tokenizer import train_bpe_tokenizer


def film_labels(batch: list) -> torch.Tensor:
    """(N, 14) 1.0 where an observation is positive on the film (the phantom's image truth), else 0."""
    return torch.tensor([[1.0 if s.labels.get(o) == 1.0 else 0.0 for o in CHEXPERT_OBSERVATIONS] for s in batch])


VARIANT_ENVIRONMENT = ("POOL", "STEM", "CNN_CHANNELS", "CNN_DEPTH")
_variant_base: list[str] = []  # the trunk encoder_probe_trunk changes (set by with_architecture_variant)


def _integers(name: str) -> tuple[int, ...]:
    return tuple(int(c) for c in os.environ[name].split(","))


def _built_quietly(name: str, **kwargs: Any) -> torch.nn.Module:
    """A trunk built to read its layout from, without moving the random stream."""
    with torch.random.fork_rng(devices=[]):
        return timm.create_model(name, pretrained=False, **kwargs)


def _grid_convnet(base: str, depth: int, **kwargs: Any) -> torch.nn.Module:
    """``base``'s :class:`~flamingo_lib.encoders.cnn.GridConvNet` with ``depth`` convolutions per
    stage, keeping whether it ends with the stride-1 context convolution."""
    from flamingo_lib.encoders.cnn import GridConvNet

    allowed = {k: v for k, v in kwargs.items() if k in ("num_classes", "img_size", "channels")}
    layout = _built_quietly(base, **allowed)
    strides = [m.stride[0] for m in layout.stem if isinstance(m, torch.nn.Conv2d)]
    stages = strides.count(2)
    base_depth = strides.index(2, 1) if stages > 1 else len(strides)
    net = GridConvNet(**allowed, depth=depth, context=len(strides) > base_depth * stages)
    net.pretrained_cfg["architecture"] = base
    return net


def _stem_vit(base: str, channels: tuple[int, ...], **kwargs: Any) -> torch.nn.Module:
    """``base`` (the conv-stem ViT) with :func:`~flamingo_lib.encoders.vit.conv_stem` of ``channels``
    (one stride 2 each), built in the order the module builds its own stem and blocks."""
    from functools import partial

    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    from flamingo_lib.encoders.vit import conv_stem

    layout = _built_quietly(base)
    args: dict[str, Any] = dict(img_size=layout.patch_embed.img_size, patch_size=layout.patch_embed.patch_size,
                                embed_dim=layout.embed_dim, depth=len(layout.blocks),
                                num_heads=layout.blocks[0].attn.num_heads,
                                mlp_ratio=layout.blocks[0].mlp.fc1.out_features / layout.embed_dim,
                                class_token=layout.cls_token is not None, global_pool=layout.global_pool,
                                num_classes=layout.num_classes)
    args.update({k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")})
    model = VisionTransformer(embed_layer=partial(HybridEmbed, backbone=conv_stem(channels)), **args)
    model.pretrained_cfg = model.default_cfg = dict(layout.pretrained_cfg)
    return model


@register_model
def encoder_probe_trunk(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """The trunk :func:`with_architecture_variant` was given, with the environment's changes:
    ``POOL`` the ViT's pooling, ``STEM`` its conv stem's channels (one stride 2 each),
    ``CNN_CHANNELS`` the CNN trunk's stage widths, ``CNN_DEPTH`` its convolutions per stage."""
    from flamingo_lib.encoders import cnn

    base = _variant_base[-1]
    if base in (cnn.MODEL_NAME, cnn.SMALL_MODEL_NAME, cnn.LOCAL_MODEL_NAME):
        if os.environ.get("CNN_CHANNELS"):
            kwargs["channels"] = _integers("CNN_CHANNELS")
        if os.environ.get("CNN_DEPTH"):
            return _grid_convnet(base, int(os.environ["CNN_DEPTH"]), **kwargs)
        return timm.create_model(base, pretrained=pretrained, **kwargs)
    if os.environ.get("POOL"):
        kwargs["global_pool"] = os.environ["POOL"]
    if os.environ.get("STEM"):
        return _stem_vit(base, _integers("STEM"), **kwargs)
    return timm.create_model(base, pretrained=pretrained, **kwargs)


def with_architecture_variant(recipe: ClipRecipe) -> ClipRecipe:
    """``recipe`` building :func:`encoder_probe_trunk` around its trunk when ``POOL``, ``STEM``,
    ``CNN_CHANNELS`` or ``CNN_DEPTH`` is set (``POOL`` and ``STEM`` change the conv-stem ViT,
    ``TRUNK=flamingo_cxr_vitc_tiny``; the other two the CNN trunks); else ``recipe`` itself."""
    if not any(os.environ.get(name) for name in VARIANT_ENVIRONMENT):
        return recipe
    _variant_base.append(recipe.timm_model_name)
    return dataclasses.replace(recipe, timm_model_name=encoder_probe_trunk.__name__)


class AttentionProbe(torch.nn.Module):
    """(N, P, D) tokens -> (N, K) logits: LayerNorm, MLP, one softmax query per label."""

    def __init__(self, dim: int, labels: int, hidden: int = 128) -> None:
        super().__init__()
        self.norm, self.mlp = torch.nn.LayerNorm(dim), torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU())
        self.queries = torch.nn.Parameter(torch.randn(labels, hidden) * 0.02)
        self.readout = torch.nn.Parameter(torch.randn(labels, hidden) * 0.02)
        self.bias = torch.nn.Parameter(torch.zeros(labels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.norm(tokens))
        weights = torch.einsum("npd,kd->nkp", h, self.queries).softmax(-1)
        return (torch.einsum("nkp,npd->nkd", weights, h) * self.readout).sum(-1) + self.bias


def micro_f1(logits: torch.Tensor, truth: torch.Tensor, columns: list[int]) -> float:
    predicted, actual = logits[:, columns] > 0, truth[:, columns] > 0.5
    tp, fp, fn = (predicted & actual).sum(), (predicted & ~actual).sum(), (~predicted & actual).sum()
    return float(2 * tp / max(1, int(2 * tp + fp + fn)))


def dense_targets(train: list, recipe: ClipRecipe) -> tuple[torch.Tensor, list[str]]:
    """(N, K, g, g) fraction of each token cell covered by each finding's mask (K mask names)."""
    from flamingo_lib.encoders.pretraining.corpus import phantom

    datasets = {mode: phantom("train", mode, recipe.render_size, 0) for mode in sorted({s.mode for s in train})}
    masks = [datasets[s.mode][s.index].masks or {} for s in train]
    names = sorted({name for m in masks for name in m})
    grid = recipe.image_size // 16
    out = torch.zeros(len(train), len(names), grid, grid)
    for i, m in enumerate(masks):
        for name, mask in m.items():
            cell = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None, None], grid)
            out[i, names.index(name)] = cell[0, 0]
    return out, names


def train_dense(trunk: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                dense: tuple[torch.Tensor, list[str]], preprocess: dict, recipe: ClipRecipe) -> None:
    """Supervised on the labels (pooled head) and, per token, on which finding masks cover its cell."""
    targets, names = dense
    head = torch.nn.Linear(trunk.num_features, len(CHEXPERT_OBSERVATIONS))
    token_head = torch.nn.Linear(trunk.num_features, len(names))
    params = [*trunk.parameters(), *head.parameters(), *token_head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    trunk.train()
    weight = float(os.environ.get("DENSE_WEIGHT", "1"))
    for _ in range(recipe.steps):
        idx = torch.randint(0, len(images), (recipe.batch_size,), generator=generator)
        tokens = trunk.forward_features(normalise(images[idx], preprocess))  # (B, g*g, D)
        pooled = trunk.forward_head(tokens, pre_logits=True)
        cells = (targets[idx].flatten(2).transpose(1, 2) > 0.02).float()  # (B, g*g, K)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), labels[idx])
                + weight * torch.nn.functional.binary_cross_entropy_with_logits(token_head(tokens), cells))
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()


def recipe_from_environment() -> ClipRecipe:
    """The default :class:`ClipRecipe` with ``TRUNK``, ``IMAGE_SIZE`` and ``STEPS`` from the environment."""
    overrides = {"timm_model_name": os.environ.get("TRUNK"), "image_size": os.environ.get("IMAGE_SIZE"),
                 "steps": os.environ.get("STEPS")}
    return ClipRecipe(**{k: v if k == "timm_model_name" else type(getattr(ClipRecipe, k))(v)
                         for k, v in overrides.items() if v})


def main(variant: str) -> None:
    torch.manual_seed(0)
    recipe = with_architecture_variant(recipe_from_environment())
    tokenizer = train_bpe_tokenizer(lm_documents("train", 0), recipe.vocab_size, recipe.context_length, append_eos=True)
    config = open_clip_config(recipe, len(tokenizer))
    preprocess = config["preprocess_cfg"]
    train = [s for s in studies("train", 0) if s.report]
    val = [s for s in studies("val", 0) if s.report]
    train_images = render_images(train, "train", recipe.render_size, preprocess, 0)
    val_images = render_images(val, "val", recipe.render_size, preprocess, 0)
    train_y, val_y = film_labels(train), film_labels(val)
    model = build_clip(config, 0)
    start = time.perf_counter()
    if variant in ("clip", "recipe"):
        texts = tokenizer([s.report for s in train], padding="max_length", truncation=True,
                          max_length=recipe.context_length, return_tensors="pt")["input_ids"]
        if variant == "recipe":  # the embedded build: trunk on the report labels, CLIP fitted to it locked
            stated = FindingTargets(CHEXPERT_OBSERVATIONS)([s.report for s in train])
            pretrain_trunk_on_labels(model.visual.trunk, train_images, stated, preprocess, recipe, 0)
        pretrain_clip(model, train_images, texts, [finding_signature(s) for s in train], preprocess, recipe, 0,
                      lock_trunk=variant == "recipe")
    elif variant == "supervised":
        if os.environ.get("LABELS") == "report":  # the labeler's reading of the reports, not the films' truth
            train_y_fit = FindingTargets(CHEXPERT_OBSERVATIONS)([s.report for s in train])
        else:
            train_y_fit = train_y
        trunk, head = model.visual.trunk, torch.nn.Linear(model.visual.trunk.num_features, len(CHEXPERT_OBSERVATIONS))
        optimiser = torch.optim.AdamW([*trunk.parameters(), *head.parameters()], lr=recipe.lr, weight_decay=0.05)
        generator = torch.Generator().manual_seed(0)
        trunk.train()
        for _ in range(recipe.steps):
            idx = torch.randint(0, len(train_images), (recipe.batch_size,), generator=generator)
            pooled = trunk.forward_head(trunk.forward_features(normalise(train_images[idx], preprocess)), pre_logits=True)
            torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), train_y_fit[idx]).backward()
            optimiser.step()
            optimiser.zero_grad()
    elif variant == "dense":
        train_dense(model.visual.trunk, train_images, train_y, dense_targets(train, recipe), preprocess, recipe)
    elif variant != "random":
        raise SystemExit(f"variant must be recipe, clip, supervised, dense or random, got {variant!r}")
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        def tokens(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([model.visual.trunk.forward_features(normalise(images[i:i + 256], preprocess))
                              for i in range(0, len(images), 256)])
        train_x, val_x = tokens(train_images), tokens(val_images)
    probe = AttentionProbe(train_x.shape[-1], len(CHEXPERT_OBSERVATIONS))
    optimiser = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(600):
        idx = torch.randint(0, len(train_x), (256,))
        torch.nn.functional.binary_cross_entropy_with_logits(probe(train_x[idx]), train_y[idx]).backward()
        optimiser.step()
        optimiser.zero_grad()
    with torch.no_grad():
        logits = probe(val_x)
    columns = [CHEXPERT_OBSERVATIONS.index(o) for o in RENDERED_OBSERVATIONS]
    aurocs = {o: round(auroc(logits[:, k], val_y[:, k]), 3) for k, o in enumerate(CHEXPERT_OBSERVATIONS)
              if 0 < val_y[:, k].sum() < len(val_y)}
    print(json.dumps({"variant": variant, "pool": os.environ.get("POOL"), "stem": os.environ.get("STEM"),
                      "encoder_training_seconds": round(seconds, 1), "tokens": list(train_x.shape[1:]),
                      "probe_micro_f1_rendered": round(micro_f1(logits, val_y, columns), 3),
                      "val_auroc": aurocs}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "clip")
