"""Where does a trained Flamingo's attention over the image go, and does another reading point?

The pointing game (:mod:`flamingo_lib.evaluation.grounding`) reads one map per finding: here, as its
``span="words"``, of the words naming it; the raw attention's map is the cross-attention over latents
times the resampler's attention rolled out to the patches. When it
stops pointing (the 800-step encoder's Flamingo, README) either the resampler's attention no
longer follows the image, or the attention is not where the evidence flows. For each test study
of a trained run this script measures:

* the resampler's attention per layer: the mass the latents put on the patches (the rest goes to
  the latents themselves), the entropy of that mass over the cells (1 = uniform), and
  :func:`image_specificity`: how far each image's rolled-out map is from the average map over
  images (0 = every image gets the same map, the anatomy's and not the image's);
* three pointing games on the same (study, finding word) pairs: the demo's map, the resampler's
  rollout alone (latents weighted equally), and gradient x input of the log-probability of the
  finding's words with respect to the patch tokens (where changing the tokens would change the
  words most: the evidence, not the attention).

    HF_HUB_OFFLINE=1 python -m experiments.resampler_attention runs/demo [--max-studies 250]

About a minute per 100 studies on 2 cores.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flamingo_lib.modeling.attention_maps import AttentionMaps, keep_attention, relevance_to_heatmap
from flamingo_lib.evaluation.grounding import FINDING_WORDS, peak_in_mask, word_token_positions
from flamingo_lib.modeling.lm_injection import flamingo_layers


def image_specificity(maps: torch.Tensor) -> float:
    """Mean total-variation distance of each image's map from the average map.

    Args:
        maps: (N, P) per-image distributions over the cells (rows sum to 1).

    Returns:
        0 when every image gets the same map, up to 1 - 1/N when no two images' maps share a cell.
    """
    mean = maps.mean(0, keepdim=True)
    return float(0.5 * (maps - mean).abs().sum(-1).mean())


def layer_statistics(resampler: Sequence[torch.Tensor], num_latents: int) -> list[dict[str, float]]:
    """Per resampler layer: mass on the patches and the normalised entropy of it over the cells.

    Args:
        resampler: per layer (B, T, H, n, P + n) weights over [patches, latents].

    Returns:
        per layer ``{"patch_mass", "patch_entropy"}``, means over batch, images, heads and latents;
        entropy divided by log P (1 = uniform over the cells, 0 = one cell).
    """
    rows = []
    for weights in resampler:
        weights = weights.float()
        patches = weights[..., :weights.shape[-1] - num_latents]
        mass = patches.sum(-1)
        share = patches / mass.unsqueeze(-1).clamp(min=1e-12)
        entropy = -(share * share.clamp(min=1e-12).log()).sum(-1) / np.log(patches.shape[-1])
        rows.append({"patch_mass": float(mass.mean()), "patch_entropy": float(entropy.mean())})
    return rows


def gradient_relevance(logits: torch.Tensor, input_ids: torch.Tensor, positions: Sequence[int],
                       tokens: torch.Tensor) -> torch.Tensor:
    """(P,) gradient x input of the summed log-probability of the tokens at ``positions``
    (each predicted from the position before) with respect to the patch tokens (1, 1, P, D) of sample 0."""
    logp = logits[0].float().log_softmax(-1)
    total = sum(logp[p - 1, input_ids[0, p]] for p in positions)
    (grad,) = torch.autograd.grad(total, tokens, retain_graph=True)
    return (grad * tokens).sum(-1)[0, 0].detach()


def _peak_hit(relevance: torch.Tensor, mask: np.ndarray) -> bool:
    """Does the peak of ``relevance``'s heatmap at the mask's size fall inside the mask (the demo's
    pointing game)?"""
    shifted = relevance - relevance.min()  # the heatmap keeps only non-negative mass
    return peak_in_mask(relevance_to_heatmap(shifted + 1e-12, mask.shape), mask)


def analyse(model: Any, processor: Any, samples: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pointing rows per (study, finding named in its report) and the attention statistics.

    Returns:
        rows with id, finding, chance, hit_attention, hit_rollout, hit_gradient; and
        ``{"layers": per-layer statistics, "image_specificity", "mean_map": (P,) list}``.
    """
    model.eval()
    prompt_len = len(processor.tokenizer(processor.study_prompt(1))["input_ids"])
    rows, rollouts, layer_rows = [], [], []
    for sample in samples:
        batch = processor.training_batch([sample.report], [[sample.images[0]]])
        with torch.no_grad():
            tokens = model.flamingo.encode_visuals(batch.pop("pixel_values"))
        tokens.requires_grad_(True)
        batch.pop("labels")
        with keep_attention(model):
            logits = model(**batch, image_embeddings=tokens).logits
            xattn = [layer.gated_cross_attn.attn.last_attention.detach() for layer in flamingo_layers(model)]
            resampler = [attn.last_attention.detach() for attn, _ in model.flamingo.perceiver.layers]
        maps = AttentionMaps(xattn, resampler, model.config.resampler_num_latents)
        rollout = maps.latent_to_patch(0, 0)  # (n, P)
        rollouts.append(rollout.mean(0))
        layer_rows.append(layer_statistics(resampler, maps.num_latents))
        for finding, words in FINDING_WORDS.items():
            mask = sample.masks.get(finding)
            if mask is None or not mask.any():
                continue
            positions = word_token_positions(processor, sample.report, words, prompt_len)
            if not positions:
                continue
            attention = torch.stack([maps.token_relevance(0, p) for p in positions]).mean(0)
            rows.append({
                "id": sample.id, "finding": finding, "chance": float(mask.mean()),
                "hit_attention": _peak_hit(attention, mask),
                "hit_rollout": _peak_hit(rollout.mean(0), mask),
                "hit_gradient": _peak_hit(gradient_relevance(logits, batch["input_ids"], positions, tokens), mask),
            })
    layers = [{key: float(np.mean([r[i][key] for r in layer_rows])) for key in layer_rows[0][0]}
              for i in range(len(layer_rows[0]))]
    stacked = torch.stack(rollouts)
    return rows, {"layers": layers, "image_specificity": image_specificity(stacked),
                  "mean_map": stacked.mean(0).tolist()}


def pointing_markdown(table: Any) -> str:
    """Markdown table of the hit rates per finding and over all rows (the ``rows`` of :func:`analyse`
    as a DataFrame), with the number of rows each rate is over. Written by hand: pandas'
    ``to_markdown`` needs tabulate, which is not a dependency."""
    columns = ["hit_attention", "hit_rollout", "hit_gradient", "chance"]
    groups = [(name, group) for name, group in table.groupby("finding")] + [("all", table)]
    lines = ["| finding | " + " | ".join(columns) + " | n |", "|---" * (len(columns) + 2) + "|"]
    for name, group in groups:
        lines.append(f"| {name} | " + " | ".join(f"{group[c].mean():.3f}" for c in columns) + f" | {len(group)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    from flamingo_lib import FlamingoModel, FlamingoProcessor
    from flamingo_lib.modeling.backbones.provenance import EncoderBuildMismatchWarning
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--max-studies", type=int, default=250)
    args = parser.parse_args(argv)
    # on another encoder build than the run trained on, every number here would be noise
    warnings.simplefilter("error", EncoderBuildMismatchWarning)
    model_dir = f"{args.run_dir}/train/model"
    model, processor = FlamingoModel.from_pretrained(model_dir).eval(), FlamingoProcessor.from_pretrained(model_dir)
    test = Pipeline.from_run(args.run_dir, progress=False).splits["test"]
    rows, stats = analyse(model, processor, [test[i] for i in range(min(args.max_studies, len(test)))])
    table = pd.DataFrame(rows)
    eval_dir = Path(args.run_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)  # a run with only train/model would lose the analysis
    table.to_csv(eval_dir / "resampler_attention.csv", index=False)
    print(pointing_markdown(table))
    print("| layer | patch mass | patch entropy |\n|---|---|---|")
    for i, layer in enumerate(stats["layers"]):
        print(f"| {i} | {layer['patch_mass']:.3f} | {layer['patch_entropy']:.3f} |")
    side = int(round(len(stats["mean_map"]) ** 0.5))
    grid = np.array(stats["mean_map"]).reshape(side, side)
    print(f"image specificity of the rollout: {stats['image_specificity']:.3f}; mean map x100 (rows top to bottom):")
    print("\n".join(" ".join(f"{100 * v:4.1f}" for v in row) for row in grid))


if __name__ == "__main__":
    main()
