"""Supervised pretraining of the embedded vision trunk on CheXpert labels of its training films.

Report-generation work on MIMIC-CXR has long used image encoders trained on CheXpert labels
mined from the reports (R2Gen and its successors start from such a DenseNet); this is that recipe
at toy size. Measured on the phantom (an attention probe on the frozen patch tokens, val split,
``python -m experiments.encoder_probe``), the contrastive objective alone leaves the
trunk blind to small findings, whatever its depth: probe micro-F1 0.61 (one convolution per
stage) and 0.59 (two), lung lesions 0.55-0.57 and devices 0.54-0.70 AUROC; adding this loss to
the contrastive one at weight 1 gave 0.53 and 0.64. Trained on the labels alone (this module,
then LiT), two convolutions per stage reach 0.70 in 400 steps (lesions 0.62, atelectasis 0.98)
and 0.74 in 800 (lesions 0.72; but a Flamingo on those tokens fails the pointing game,
docs/results.md, unless the trunk drops its context convolution: ``flamingo_cxr_cnn_local`` at 1600 steps is the
default); trained on the films' truth instead, 0.76 (lesions 0.86): the reports leave many drawn
lesions unsaid. So the build learns each study's own labels (``ClipRecipe.trunk_targets="labels"``:
the phantom's image truth, the reading where a study has none), as the findings head does;
"reports" (the labeler's reading of every report) was the recipe before.

The CLIP text tower and projection are then fitted to the locked trunk (LiT: Zhai et al., 2022;
``pretrain_clip(lock_trunk=True)``), so the directory is still a working open_clip CLIP.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from flamingo_lib.encoders.pretraining.clip import ClipRecipe, _shift, adamw_warmup_cosine, normalise


def label_head(trunk: torch.nn.Module, num_labels: int, seed: int) -> torch.nn.Linear:
    """The linear classifier (``trunk.num_features`` -> ``num_labels``) that
    :func:`pretrain_trunk_on_labels` trains when given none, initialised from ``seed`` alone
    (the global RNG is left as it was): a caller that wants to read the head afterwards makes it
    here and gets the very weights the embedded build trains."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        return torch.nn.Linear(trunk.num_features, num_labels)


def pretrain_trunk_on_labels(trunk: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, preprocess: dict,
                             recipe: ClipRecipe, seed: int, progress: bool = True,
                             head: torch.nn.Linear | None = None) -> dict:
    """Train ``trunk`` in place: binary cross-entropy of a linear head on its pooled features.

    Args:
        trunk: a timm-style trunk (``forward_features``, ``forward_head(pre_logits=True)``,
            ``num_features``).
        images: uint8 (N, S, S) preprocessed films (:func:`~flamingo_lib.encoders.pretraining.clip.render_images`).
        labels: (N, K) float targets in {0, 1}.
        recipe: a :class:`~flamingo_lib.encoders.pretraining.clip.ClipRecipe` (batch size, steps, lr,
            warmup, weight decay, shift augmentation).
        head: the linear classifier (``num_features`` -> K) to train with the trunk, for a caller
            that reads it afterwards (``experiments/trunk_locality.py``); None:
            :func:`label_head`, discarded after training.

    Returns:
        stats: ``label_steps``, ``label_loss_curve`` ([step, loss] every 10 steps), ``label_seconds``.

    Raises:
        ValueError: ``labels`` does not have one row per image.
    """
    if labels.ndim != 2 or len(labels) != len(images):
        raise ValueError(f"labels must be (N={len(images)}, K), got {tuple(labels.shape)}")
    start = time.perf_counter()
    if head is None:
        head = label_head(trunk, labels.shape[1], seed)
    elif (head.in_features, head.out_features) != (trunk.num_features, labels.shape[1]):
        raise ValueError(f"head must map {trunk.num_features} -> {labels.shape[1]}, "
                         f"got {head.in_features} -> {head.out_features}")
    with torch.random.fork_rng(devices=[]):  # the loop is seeded and leaves the caller's RNG alone
        torch.manual_seed(seed + 2)
        decay = [p for p in trunk.parameters() if p.ndim >= 2] + [head.weight]
        rest = [p for p in trunk.parameters() if p.ndim < 2] + [head.bias]
        optimiser, scheduler = adamw_warmup_cosine(decay, rest, recipe)
        generator = torch.Generator().manual_seed(seed)
        curve = []
        trunk.train()
        bar = tqdm(range(recipe.steps), desc="pretrain trunk on labels", disable=not progress)
        for step in bar:
            # Random batches (not one per finding signature as for the contrastive loss): the
            # label loss has no false negatives to avoid, and wants the real label frequencies.
            idx = torch.randint(0, len(images), (min(recipe.batch_size, len(images)),), generator=generator)
            pixels = normalise(_shift(images[idx][:, None], recipe.max_shift, generator)[:, 0], preprocess)
            pooled = trunk.forward_head(trunk.forward_features(pixels), pre_logits=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), labels[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*trunk.parameters(), *head.parameters()], 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == recipe.steps - 1:
                curve.append([step, round(loss.item(), 4)])
                bar.set_postfix(loss=f"{loss.item():.3f}")
    trunk.eval()
    return {"label_steps": recipe.steps, "label_loss_curve": curve,
            "label_seconds": round(time.perf_counter() - start, 1)}
