"""Pretrain a small open_clip CLIP (timm-registered trunk, BiomedCLIP-shaped) on PhantomCXR
image/report pairs with open_clip's own model class and ``open_clip.ClipLoss``.

The vision tower is :mod:`flamingo_lib.encoders.cnn`'s convolutional trunk
(``flamingo_cxr_cnn_local``: 224 px, 196 grid tokens of width 128, max pooled), registered with
timm; open_clip builds it by name like any timm trunk. By default (``trunk_objective="labels"``)
the trunk is first trained on CheXpert labels of its films (``trunk_targets``: each study's own
by default, else the labeler's reading of the reports; :mod:`flamingo_lib.encoders.pretraining.labels`) and the contrastive loss then fits only the text
tower and the projections to it, locked (LiT); ``trunk_objective="clip"`` trains everything
contrastively from scratch, as the builds before it did. The convolutional trunk replaced the
conv-stem ViT of :mod:`flamingo_lib.encoders.vit` (``timm_model_name="flamingo_cxr_vitc_tiny"``
still builds that). Probe numbers for each: docs/results.md.

The text tower is open_clip's native small text transformer over the in-project BPE vocabulary
(pooled at ``</s>``): its weights live in the same safetensors file and its tokenizer in the same
directory (open_clip's ``get_tokenizer("local-dir:...")`` reads it there), whereas an HF text
tower would need a second model directory referenced by an absolute path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from flamingo_lib.encoders.pretraining.corpus import Study, phantom
from flamingo_lib.modeling.backbones.vision import OPENAI_MEAN, OPENAI_STD
from flamingo_lib.training.schedule import warmup_cosine_scheduler


@dataclass(frozen=True)
class ClipRecipe:
    """Architecture and schedule of the embedded CLIP (everything here is in its fingerprint)."""

    # registered by flamingo_lib.encoders.cnn (or .vit); "_local" is "_small" without its context
    # convolution: tokens that see 91 px instead of 123 keep the Flamingo's evidence on the findings
    timm_model_name: str = "flamingo_cxr_cnn_local"
    # 224, the phantom's own size: the Flamingo on it scores 0.809 / 0.822 findings-guided over six
    # sample draws of two training seeds against 0.803 / 0.804 over five at 160 px (docs/results.md),
    # for a build ~4x as long
    image_size: int = 224
    render_size: int = 224  # the phantom's default size; the encoder's own preprocessing resizes
    embed_dim: int = 64
    text_width: int = 64
    text_heads: int = 4
    text_layers: int = 2
    context_length: int = 64
    vocab_size: int = 4096
    batch_size: int = 64
    # 1600: the local trunk carries more findings than at 400 or 800 (lesions, devices, pneumothorax;
    # docs/results.md) while its Flamingo's maps still point; the 123-px "_small" lost the pointing at 800
    steps: int = 1600
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.05
    max_shift: int = 4  # random translation (pixels) of training images: the only augmentation
    # "labels": train the trunk on CheXpert labels of its films (trunk_targets), then fit the text tower
    # and projection to it locked (flamingo_lib.encoders.pretraining.labels); "clip": contrastive
    # from scratch (how the embedded encoder was built before).
    trunk_objective: str = "labels"
    # What the label pretraining learns (flamingo_lib.labeling.targets.FINDINGS_TARGET_SOURCES, as the
    # findings head): "labels", each study's own (the phantom's image truth; the labeler's reading
    # where a study has none); "reports", the labeler's reading of every report (the recipe before);
    # "both", their mean. "labels": findings-guided F1 0.837 / 0.792 against 0.796 / 0.771 on the
    # phantom, pointing game 0.323 against 0.263 (docs/results.md).
    trunk_targets: str = "labels"
    max_train_images: int | None = None  # None: the whole train split
    max_eval_images: int | None = None  # None: the whole val split (recall@k, probe)
    probe_train_images: int = 2000

    def __post_init__(self) -> None:  # before minutes of rendering and tokenizer training
        if self.trunk_objective not in ("labels", "clip"):
            raise ValueError(f"trunk_objective must be 'labels' or 'clip', got {self.trunk_objective!r}")
        from flamingo_lib.labeling.targets import FINDINGS_TARGET_SOURCES

        if self.trunk_targets not in FINDINGS_TARGET_SOURCES:
            raise ValueError(f"trunk_targets must be one of {FINDINGS_TARGET_SOURCES}, got {self.trunk_targets!r}")


def adamw_warmup_cosine(decay: list[torch.nn.Parameter], rest: list[torch.nn.Parameter],
                        recipe: ClipRecipe) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at ``recipe.lr`` (weight decay on ``decay`` only), linear warmup over
    ``recipe.warmup_steps`` then cosine to 0 at ``recipe.steps``: the schedule of both the
    contrastive and the label pretraining."""
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe.lr)
    return optimiser, warmup_cosine_scheduler(optimiser, warmup_steps=recipe.warmup_steps, total_steps=recipe.steps,
                                              warmup_start=1)


def open_clip_config(recipe: ClipRecipe, vocab_size: int) -> dict:
    """``open_clip_config.json``: BiomedCLIP's vision layout (timm trunk, no pool, linear proj)."""
    return {
        "model_cfg": {
            "embed_dim": recipe.embed_dim,
            "vision_cfg": {"timm_model_name": recipe.timm_model_name, "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": recipe.image_size},
            "text_cfg": {"context_length": recipe.context_length, "vocab_size": vocab_size,
                         "width": recipe.text_width, "heads": recipe.text_heads, "layers": recipe.text_layers,
                         "pool_type": "eos", "eos_id": 2, "pad_id": 1,
                         # open_clip loads a local-dir's HF tokenizer from the directory itself.
                         "hf_tokenizer_name": "embedded-tiny-vit"},
        },
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "size": recipe.image_size,
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }


def build_clip(config: dict, seed: int) -> torch.nn.Module:
    """open_clip's ``CLIP`` from a config as :func:`open_clip_config` writes, seeded."""
    from open_clip.model import CLIP

    import flamingo_lib.encoders.cnn  # noqa: F401  (registers the trunks with timm)
    import flamingo_lib.encoders.vit  # noqa: F401

    cfg = config["model_cfg"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])


class _Renders(torch.utils.data.Dataset):
    """(mode, index) -> that study's PA film after the encoder's resize and crop, uint8 (S, S)
    (the films are gray, so one channel holds all three)."""

    def __init__(self, datasets: dict, keys: Sequence[tuple[str, int]], preprocess: dict) -> None:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.datasets, self.keys = datasets, list(keys)
        cfg = PreprocessCfg(**{k: preprocess[k] for k in ("size", "mean", "std", "interpolation", "resize_mode")})
        # Everything but Normalize, which `normalise` applies to the batch: bit-identical to the
        # FlamingoProcessor's transform of the same image.
        self.transform = image_transform_v2(cfg, is_train=False).transforms[:-1]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Tensor:
        mode, index = self.keys[i]
        image: Image.Image = self.datasets[mode][index].images[0].convert("RGB")
        for t in self.transform:
            image = t(image)
        return (image[0] * 255).round().to(torch.uint8)


def render_images(studies: Sequence[Study], split: str, render_size: int, preprocess: dict, seed: int,
                  progress: bool = True) -> torch.Tensor:
    """The films of ``studies`` (all of ``split``), preprocessed: uint8 (N, S, S). Rendering is
    pure numpy, so two worker processes use both cores; PhantomCXR caches the renders on disk."""
    import os

    datasets = {mode: phantom(split, mode, render_size, seed) for mode in sorted({s.mode for s in studies})}
    dataset = _Renders(datasets, [(s.mode, s.index) for s in studies], preprocess)
    workers = min(2, os.cpu_count() or 1) if len(dataset) > 64 else 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers)
    out = [b for b in tqdm(loader, desc=f"render {split} films", disable=not progress)]
    size = preprocess["size"]
    return torch.cat(out) if out else torch.zeros(0, size, size, dtype=torch.uint8)


def normalise(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 3, S, S) as the encoder's preprocessing gives it."""
    from torchvision.transforms import Normalize

    x = images.float().div(255)[:, None].expand(-1, 3, -1, -1)
    return Normalize(preprocess["mean"], preprocess["std"])(x)


def _shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (edge-replicated), per image."""
    if max_shift <= 0:
        return images
    n, size = images.shape[0], images.shape[-1]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, y: y + size, x: x + size] for i, (y, x) in enumerate(offsets)])


def distinct_batch(groups: Sequence[object], batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``batch_size`` studies (fewer if there are fewer groups) of pairwise different
    ``groups``, drawn in a seeded random order.

    Two films with the same findings are the same picture to a report, so as negatives of each
    other they are false negatives; with 46% normal studies a random batch of 64 holds ~30 of
    them and the contrastive loss has almost nothing consistent to learn (it sat at ln 64). One
    study per finding signature keeps every negative a true one.
    """
    seen, chosen = set(), []
    for i in torch.randperm(len(groups), generator=generator).tolist():
        if groups[i] not in seen:
            seen.add(groups[i])
            chosen.append(i)
            if len(chosen) == batch_size:
                break
    return torch.tensor(chosen)


def pretrain_clip(
    model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, groups: Sequence[object], preprocess: dict,
    recipe: ClipRecipe, seed: int, progress: bool = True, lock_trunk: bool = False,
) -> dict:
    """CLIP-pretrain ``model`` in place on (image, report) pairs with ``open_clip.ClipLoss``.

    With ``lock_trunk`` the vision trunk stays as it is (LiT: its pooled features are computed
    once, without augmentation) and only the image projection, the text tower and the
    temperature learn.

    Args:
        images: uint8 (N, S, S) preprocessed films (:func:`render_images`).
        texts: (N, context_length) token ids of their reports.
        groups: (N,) finding signature of each film; a batch holds each at most once
            (:func:`distinct_batch`).

    Returns:
        stats: ``pairs``, ``samples_seen``, ``loss_curve`` ([step, loss] every 10 steps), ``seconds``.
    """
    from open_clip import ClipLoss

    start = time.perf_counter()
    loss_fn = ClipLoss()
    trunk = model.visual.trunk
    locked = {id(p) for p in trunk.parameters()} if lock_trunk else set()
    if lock_trunk:
        trunk.eval()
        with torch.no_grad():
            pooled = torch.cat([trunk.forward_head(trunk.forward_features(normalise(images[i:i + 256], preprocess)),
                                                   pre_logits=True) for i in range(0, len(images), 256)])
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in locked]
    decay = [p for n, p in named if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "logit_scale" not in n)]
    optimiser, scheduler = adamw_warmup_cosine(decay, rest, recipe)
    generator = torch.Generator().manual_seed(seed)
    curve, seen = [], 0
    model.train()
    if lock_trunk:
        trunk.eval()  # its BatchNorm statistics stay those it was trained with
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        bar = tqdm(range(recipe.steps), desc="fit CLIP to the locked trunk" if lock_trunk else "pretrain CLIP",
                   disable=not progress)
        for step in bar:
            idx = distinct_batch(groups, recipe.batch_size, generator)
            seen += len(idx)
            if lock_trunk:
                image_features = torch.nn.functional.normalize(model.visual.head(pooled[idx]), dim=-1)
                text_features = model.encode_text(texts[idx], normalize=True)
                logit_scale = model.logit_scale.exp()
            else:
                pixels = normalise(_shift(images[idx][:, None], recipe.max_shift, generator)[:, 0], preprocess)
                image_features, text_features, logit_scale = model(pixels, texts[idx])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            with torch.no_grad():  # as open_clip's training loop: temperature at most 100
                model.logit_scale.clamp_(0, math.log(100))
            if step % 10 == 0 or step == recipe.steps - 1:
                curve.append([step, round(loss.item(), 4)])
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return {"pairs": len(images), "samples_seen": seen, "loss_curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}
