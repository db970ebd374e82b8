"""Does a gradient averaged over noisy films (SmoothGrad) point into a flat finding such as a pneumothorax?

The pixel game sharpens a grid map by ``|∂y/∂x|`` (:mod:`flamingo_lib.modeling.pixel_maps`), and a
pneumothorax, a uniform dark band, has almost no gradient inside it: the encoder's units are off where
the film has no structure, so the peak lands on the vessel markings beside the band. SmoothGrad
(Smilkov et al., 2017) averages the gradient over copies of the film with Gaussian noise added; the
noise switches units on in flat regions too, so the band's pixels get a gradient. This probe plays the
pixel game with the saliency averaged over ``--copies`` noisy films at each noise level of ``--noise``
(the standard deviation as a share of the film's value range; 0 is the plain gradient), on the study's
film and on a shuffled one, per finding.

    HF_HUB_OFFLINE=1 python -m experiments.smooth_saliency runs/demo --split val [--noise 0 0.05 0.1]
    HF_HUB_OFFLINE=1 python -m experiments.smooth_saliency runs/demo --split train --findings pneumothorax

About 4 minutes on 250 studies at three noise levels (2 cores). Choose on ``train`` or ``val``, never on
``test``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch


def smooth_saliency(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int], image: int, noise: float,
                    copies: int, generator: torch.Generator) -> torch.Tensor:
    """(H, W) ``|∂y/∂x|`` of film ``image`` of sample 0, summed over the colour channels and averaged over
    ``copies`` copies of the film with Gaussian noise of standard deviation ``noise`` x the film's value
    range (one copy and no noise when ``noise`` is 0: the pixel game's own saliency). ``y`` is the
    summed log-probability of the words at ``positions`` (one batch of ``copies`` samples, each with its
    own gradient)."""
    from flamingo_lib.modeling.attention_maps import check_positions, words_log_probability

    check_positions(batch, positions)
    pixels = batch["pixel_values"][:1]
    count = copies if noise > 0 else 1
    inputs = {k: v[:1].expand(count, *v.shape[1:]) for k, v in batch.items() if k not in ("labels", "pixel_values")}
    films = pixels.expand(count, *pixels.shape[1:]).clone()
    if noise > 0:
        spread = float(pixels[0, image].max() - pixels[0, image].min())
        films[:, image] += noise * spread * torch.randn(films[:, image].shape, generator=generator)
    leaf = films.detach().requires_grad_(True)
    model.eval()
    with torch.enable_grad():
        logits = model(**inputs, image_embeddings=model.flamingo.encode_visuals(leaf, grad_to_pixels=True)).logits
        score = sum(words_log_probability(logits[i], inputs["input_ids"][i], positions) for i in range(count))
        (gradient,) = torch.autograd.grad(score, leaf)
    return gradient[:, image].float().abs().sum(1).mean(0).cpu()


def analyse(model: Any, processor: Any, samples: Sequence[Any], noises: Sequence[float], copies: int = 8,
            findings: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (study, named finding with a mask): for each noise level, whether the evidence map
    sharpened by that saliency peaks in the mask, on the study's film (``hit_<noise>``) and on a shuffled
    one (``shuffled_hit_<noise>``; the other study drawn as the pointing game draws it)."""
    from flamingo_lib.evaluation.grounding import (FINDING_WORDS, GAME_SPAN, peak_in_mask, relevance_to_heatmap,
                                                   word_token_positions)
    from flamingo_lib.modeling.attention_maps import capture_evidence
    from flamingo_lib.modeling.pixel_maps import sharpened_map

    rng = np.random.default_rng(seed)
    rows = []
    for index, sample in enumerate(samples):
        batch, prompt_length, image = processor.film_batch(sample)
        named = {f: word_token_positions(processor, sample.report, FINDING_WORDS[f], prompt_length, GAME_SPAN)
                 for f in sample.masks if f in FINDING_WORDS and sample.masks[f].any()
                 and (findings is None or f in findings)}
        named = {f: positions for f, positions in named.items() if positions}
        if not named:
            continue
        # the shuffled film drawn as the pointing game draws it (without --findings, the game's own film)
        other = samples[(index + 1 + int(rng.integers(len(samples) - 1))) % len(samples)] if len(samples) > 1 else sample
        films = {"": batch, "shuffled_": processor.film_batch(sample, film=other.images[0]).batch}
        for finding, positions in named.items():
            mask, row = sample.masks[finding], {"id": sample.id, "finding": finding}
            for prefix, film in films.items():
                # the map and its plain saliency from one backward pass, as the pointing game makes them
                maps = capture_evidence(model, film, positions, to_pixels=True)
                heatmap = relevance_to_heatmap(maps.evidence(image=image), mask.shape)
                for noise in noises:
                    generator = torch.Generator().manual_seed(seed * 100_003 + index)  # the same noise for every level
                    saliency = maps.pixel_saliency[image] if noise == 0 else \
                        smooth_saliency(model, film, positions, image, noise, copies, generator)
                    row[f"{prefix}hit_{noise:g}"] = peak_in_mask(sharpened_map(heatmap, saliency), mask)
            rows.append(row)
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per finding and overall: n and each hit rate."""
    rates = [c for c in rows.columns if "hit_" in c]
    table = rows.groupby("finding")[rates].mean()
    table.insert(0, "n", rows.groupby("finding").size())
    overall = pd.DataFrame([{"n": len(rows), **rows[rates].mean().to_dict()}], index=["all"])
    return pd.concat([table, overall])


def main(argv: list[str] | None = None) -> None:
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--max-studies", type=int, default=250)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    parser.add_argument("--copies", type=int, default=8, help="noisy films averaged per saliency")
    parser.add_argument("--findings", nargs="+", default=None, help="only these findings (default: every one)")
    args = parser.parse_args(argv)
    pipeline = Pipeline.from_run(args.run_dir, progress=False)
    model, processor = pipeline.model_and_processor
    d = pipeline.settings.data
    data = open_source(d.source, args.split, d.image_size, args.max_studies, seed=pipeline.settings.train.seed)
    table = summary(analyse(model.eval(), processor, [data[i] for i in range(len(data))], args.noise, args.copies,
                            args.findings))
    pd.set_option("display.width", 200)
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
