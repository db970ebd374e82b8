"""From cells to pixels, in one figure: a finding's grid map, the words' gradient over the film's
pixels, and their product, the map the pixel pointing game plays on
(:mod:`flamingo_lib.modeling.pixel_maps`), each with its peak marked and the finding's mask outlined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from flamingo_lib.evaluation.grounding import (FINDING_WORDS, GAME_SPAN, peak_in_mask, peak_pixel, word_token_positions,
                                               words_map)
from flamingo_lib.modeling.pixel_maps import sharpened_map


@dataclass
class SharpenedCase:
    """One named finding's three maps over its film, each (H, W) in the mask's frame."""

    sample: Any
    finding: str
    grid: np.ndarray
    saliency: np.ndarray
    sharpened: np.ndarray

    def hits(self) -> dict[str, bool]:
        """Whether each map's peak pixel lies in the finding's mask."""
        mask = self.sample.masks[self.finding]
        return {name: peak_in_mask(m, mask) for name, m in (("grid", self.grid), ("saliency", self.saliency), ("sharpened", self.sharpened))}


def smallest_named_finding(model: Any, processor: Any, samples: Sequence[Any]) -> SharpenedCase | None:
    """The named finding with the smallest mask among ``samples`` (the case the grid loses most
    easily) and its maps: the evidence on the patch grid upsampled, the pixel saliency, their product.
    None when no report names a finding with a mask."""
    best = None
    for sample in samples:
        film = None  # the study's batch, built once and only when one of its findings is a candidate
        for finding, words in FINDING_WORDS.items():
            mask = sample.masks.get(finding)
            if mask is None or not mask.any() or (best is not None and mask.sum() >= best[2]):
                continue
            if film is None:
                film = processor.film_batch(sample)
            batch, prompt_length, image = film
            positions = word_token_positions(processor, sample.report, words, prompt_length, span=GAME_SPAN)
            if positions:
                best = (sample, finding, int(mask.sum()), batch, positions, image)
    if best is None:
        return None
    sample, finding, _, batch, positions, image = best
    shape = sample.masks[finding].shape
    words = words_map(model, batch, positions, shape, image=image)
    fine = sharpened_map(np.ones(shape) / np.prod(shape), words.saliency)  # the saliency in the mask's frame, summing to 1
    return SharpenedCase(sample, finding, words.heatmap, fine, words.sharpened)


def sharpening_figure(case: SharpenedCase) -> Figure:
    """Three panels over the film: the grid map, the pixel saliency, the sharpened map; each with its
    peak (a cross: green inside the mask, red outside) and the mask's outline."""
    film = np.asarray(case.sample.images[0].convert("L").resize(case.grid.shape[::-1]))
    mask = case.sample.masks[case.finding]
    hits = case.hits()
    figure = Figure(figsize=(9.6, 3.4))
    titles = {"grid": "evidence on the patch grid", "saliency": "|gradient| over the pixels",
              "sharpened": "their product (the pixel game's map)"}
    for ax, (name, heat) in zip(figure.subplots(1, 3), (("grid", case.grid), ("saliency", case.saliency),
                                                         ("sharpened", case.sharpened))):
        ax.imshow(film, cmap="gray")
        # the faintest twentieth of each map left clear, so the film shows through; a square-root
        # scale, so that a map spread over a few pixels stays visible
        shown = np.ma.masked_less(heat, 0.05 * heat.max())
        ax.imshow(shown, cmap="jet", alpha=0.55, norm=PowerNorm(0.5, vmin=0, vmax=float(heat.max()) or 1.0))
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.0)
        row, col = peak_pixel(heat)
        ax.plot(col, row, marker="x", markersize=9, mew=2.2, color="lime" if hits[name] else "red")
        ax.set_title(f"{titles[name]}\npeak {'in' if hits[name] else 'outside'} the mask", fontsize=8)
        ax.axis("off")
    figure.suptitle(f"{case.sample.id}: {case.finding} ({int(mask.sum())} px; white outline: its mask)", fontsize=9)
    figure.tight_layout()
    return figure
