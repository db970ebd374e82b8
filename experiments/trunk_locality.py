"""Does the label-trained vision trunk hold a finding's evidence where the finding is?

The embedded trunk pools its patch tokens with the maximum over cells, and its pretraining
classifier is linear, so each label logit splits *exactly* over the cells:

    logit_k = b_k + sum_d w_kd max_p t_pd = b_k + sum_p C_kp,   C_kp = sum_d w_kd t_pd [p = argmax_p' t_p'd]

(:func:`max_pool_attribution`). A trunk whose evidence is local puts the peak of ``C_k`` inside
the finding's mask: the trunk's own pointing game, with chance the mask's share of the cells.
This separates the trunk from the Flamingo built on it, whose pointing game
(:mod:`flamingo_lib.evaluation.grounding`) also goes through the resampler's and cross-attention's maps.

    HF_HUB_OFFLINE=1 python -m experiments.trunk_locality          # the default recipe
    TRUNK=flamingo_cxr_cnn_small STEPS=400 HF_HUB_OFFLINE=1 python -m experiments.trunk_locality

Trains the default trunk on the labeler's reading of the training reports exactly as the embedded
build does (same seeds: the same weights), then scores every val film's masks. Training takes
about 4 minutes on 2 idle cores at 400 steps and 6 at 800, plus rendering on a fresh machine
(``TRUNK`` and ``STEPS`` override the recipe's trunk and steps; the trunk-locality numbers the
project reports are of ``flamingo_cxr_cnn_small``, the trunk with the context convolution whose
tokens see 123 px, at 400 and 800 steps).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flamingo_lib.data.phantom.text import PHANTOM_TO_CHEXPERT
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS


def max_pool_attribution(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exact per-cell split of a linear classifier on max-pooled tokens.

    Args:
        tokens: (N, P, D) patch tokens; weight: (K, D) classifier weights.

    Returns:
        (N, K, P) contributions C with ``C.sum(-1) + bias == classifier(tokens.amax(1))``: each
        channel's maximum is credited to the cell it came from (the first, on ties).
    """
    winners = F.one_hot(tokens.argmax(1), tokens.shape[1]).transpose(1, 2).to(tokens.dtype)  # (N, P, D)
    return torch.einsum("npd,kd->nkp", tokens * winners, weight)


def pointing_hits(contributions: torch.Tensor, masks: Sequence[dict[str, torch.Tensor]],
                  observations: Sequence[str] = CHEXPERT_OBSERVATIONS) -> dict[str, dict[str, float]]:
    """Per phantom finding: how often the peak cell of its observation's evidence lies in its mask.

    Args:
        contributions: (N, K, P) from :func:`max_pool_attribution` (P a square grid).
        masks: per film, finding name -> bool (H, W) mask (PhantomCXR's ``masks``).
        observations: the K observation names of ``contributions``' rows.

    Returns:
        finding -> {"n", "hit", "chance"}: hit rate of the peak cell, mean share of cells the mask
        touches (the hit rate of a random cell); ``"overall"`` pools every finding.
    """
    grid = int(round(contributions.shape[-1] ** 0.5))
    tally: dict[str, list[float]] = {}
    for i, film in enumerate(masks):
        for name, mask in film.items():
            observation = PHANTOM_TO_CHEXPERT.get(name, (None,))[0]
            if observation not in observations or not mask.any():
                continue
            covered = F.adaptive_max_pool2d(torch.as_tensor(mask).float()[None, None], grid).flatten() > 0
            peak = int(contributions[i, observations.index(observation)].argmax())
            row = tally.setdefault(name, [0, 0.0, 0.0])
            row[0] += 1
            row[1] += float(covered[peak])
            row[2] += covered.float().mean().item()
    tally["overall"] = [sum(r[j] for r in tally.values()) for j in range(3)] if tally else [0, 0.0, 0.0]
    return {name: {"n": int(n), "hit": round(hit / max(n, 1), 3), "chance": round(chance / max(n, 1), 3)}
            for name, (n, hit, chance) in sorted(tally.items())}


def main() -> None:
    from flamingo_lib.encoders.pretraining.clip import build_clip, normalise, open_clip_config, render_images
    from flamingo_lib.encoders.pretraining.corpus import phantom, studies
    from flamingo_lib.encoders.pretraining.labels import label_head, pretrain_trunk_on_labels
    from flamingo_lib.encoders.pretraining.probe import auroc
    from flamingo_lib.labeling.targets import FindingTargets

    from experiments.encoder_probe import film_labels, recipe_from_environment

    recipe = recipe_from_environment()  # TRUNK, IMAGE_SIZE, STEPS
    seed = 0
    config = open_clip_config(recipe, recipe.vocab_size)
    preprocess = config["preprocess_cfg"]
    train = [s for s in studies("train", seed) if s.report]
    val = [s for s in studies("val", seed) if s.report]
    train_images = render_images(train, "train", recipe.render_size, preprocess, seed)
    val_images = render_images(val, "val", recipe.render_size, preprocess, seed)
    trunk = build_clip(config, seed).visual.trunk  # the build's initialisation
    head = label_head(trunk, len(CHEXPERT_OBSERVATIONS), seed)  # the head the build trains, kept
    stated = FindingTargets(CHEXPERT_OBSERVATIONS)([s.report for s in train])
    pretrain_trunk_on_labels(trunk, train_images, stated, preprocess, recipe, seed, head=head)
    with torch.no_grad():
        tokens = torch.cat([trunk.forward_features(normalise(val_images[i:i + 256], preprocess))
                            for i in range(0, len(val_images), 256)])
        logits = head(tokens.amax(1))
        contributions = max_pool_attribution(tokens, head.weight)
    datasets = {mode: phantom("val", mode, recipe.render_size, seed) for mode in sorted({s.mode for s in val})}
    masks = [{k: torch.from_numpy(v) for k, v in (datasets[s.mode][s.index].masks or {}).items()} for s in val]
    truth = film_labels(val)
    print(json.dumps({"steps": recipe.steps, "val_films": len(val), "tokens": list(tokens.shape[1:]),
                      "pointing": pointing_hits(contributions, masks),
                      "val_auroc": {o: round(auroc(logits[:, k], truth[:, k]), 3)
                                    for k, o in enumerate(CHEXPERT_OBSERVATIONS) if 0 < truth[:, k].sum() < len(truth)}},
                     indent=1))


if __name__ == "__main__":
    main()
