"""Do the attention maps point at the findings? The pointing game on data with ground-truth masks,
and the box measures of :mod:`flamingo_lib.evaluation.box_grounding` beside it.

For each study and each rendered finding named in its reference report, the report is fed
teacher-forced and the sentence that names the finding (by one of its ``FINDING_WORDS``) gets one
heatmap (``span="words"``: the naming words alone): by default
their *evidence* map (the attention weighted by how much it moved those words' log-probability,
:func:`~flamingo_lib.modeling.attention_maps.capture_evidence`), or with ``method="attention"`` the
raw attention of their tokens, averaged. A hit is a heatmap peak inside the finding's mask. Two
references: chance (the mask's share of the image, the hit rate of a random point) and a
shuffled-image control (the same words' map computed with another study's image, scored against
this study's mask).

The same game is also played at the map's own resolution: a map is made on the encoder's patch
grid and upsampled, so its peak pixel sits near a cell's centre, and a lesion smaller than a cell
can only be hit where a centre falls on it. The *cell* game counts a hit when the map's peak cell
overlaps the mask, against the share of cells the mask overlaps (its chance at that resolution) and
the shuffled film's peak cell: the pointing game's usual tolerance of about one map cell, made exact.

The pixel game itself is played on the map *sharpened* by the mapped words' gradient with respect to the
film's pixels (:mod:`~flamingo_lib.modeling.pixel_maps`: the grid map says which cells, the gradient
which pixels in them), so that its peak can land on a lesion smaller than a cell; ``sharpen=False``
plays it on the upsampled grid map alone. The cell game and the box measures read the grid map.

The pointing game as Zhang et al. (ECCV 2016) defined it counts a peak within 15 px of the
finding as a hit: the *tolerant* game (``TOLERANCE_PX``), with its chance the share of the film
within that distance of the mask, played on the same sharpened maps.

Why the sentence: a finding's phrase, not its head noun, is what a report says about a region
(MS-CXR pairs each box with such a phrase: "small left pleural effusion"). The film's evidence is
spent on the words the film decides, and by the time "effusion" follows "small left pleural" little
of it is left; the side, the size and the lobe are read from the film. On the demo's validation
split the sentence's maps pointed better than the naming words' (pixel 0.522 against 0.500, cell
0.669 against 0.556; docs/results.md). In a sentence that names two findings both share its map.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from flamingo_lib.evaluation.box_grounding import box_scores
from flamingo_lib.modeling.attention_maps import (capture_attention, capture_evidence, patch_grid,
                                                  relevance_to_heatmap)
from flamingo_lib.modeling.pixel_maps import pixel_saliency, sharpened_map

#: The cell game's columns of :func:`pointing_game` (module docstring).
CELL_COLUMNS = ("cell_hit", "cell_chance", "shuffled_cell_hit")
#: The tolerant game's columns: the pixel game's peaks, a hit within ``TOLERANCE_PX`` of the mask.
TOLERANT_COLUMNS = ("tolerant_hit", "tolerant_chance", "shuffled_tolerant_hit")
#: The pointing game's tolerance in its original definition (Zhang et al., ECCV 2016), in pixels.
TOLERANCE_PX = 15.0
#: The games :func:`pointing_summary` and :func:`pointing_tests` read, and their columns.
LEVELS = {"pixel": ("hit", "chance", "shuffled_hit"), "cell": CELL_COLUMNS, "tolerant": TOLERANT_COLUMNS}
#: The box-level columns of :func:`pointing_game` (:mod:`flamingo_lib.evaluation.box_grounding`).
BOX_COLUMNS = ("iou", "iou_chance", "mass_in_box", "box_area", "shuffled_iou", "shuffled_mass")

# Words in a report that name a rendered finding (mask names as PhantomCXR writes them).
FINDING_WORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
    "pleural effusion": ("effusion", "effusions"),
    "opacity": ("opacity", "opacities", "airspace"),
    "consolidation": ("consolidation",),
    "pneumonia": ("pneumonia",),
    "nodule": ("nodule", "nodules"),
    "mass": ("mass",),
    "atelectasis": ("atelectasis", "atelectatic"),
    "pneumothorax": ("pneumothorax",),
    "edema": ("edema",),
    "granuloma": ("granuloma", "granulomas", "granulomatous"),
}


#: What of a report is mapped for a finding (:func:`word_token_positions`, module docstring).
SPANS = ("sentence", "words")
#: The span the pointing game maps, and the figures that show its maps.
GAME_SPAN = "sentence"
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")  # not the point of "2.5 cm"


def _sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    """The (start, end) characters of the sentence of ``text`` holding ``text[start:end]``."""
    before = [m.end() for m in _SENTENCE_END.finditer(text, 0, start)]
    after = _SENTENCE_END.search(text, end)
    return (before[-1] if before else 0), (after.end() if after else len(text))


def word_token_positions(processor: Any, report: str, words: Sequence[str], offset: int,
                         span: str = "words") -> list[int]:
    """Positions (in the training batch) of the report tokens that overlap any of ``words``, or
    (``span="sentence"``) the sentences holding them.

    ``offset`` is the number of prompt tokens before the report (as ``training_batch`` lays out).

    Raises:
        ValueError: an unknown ``span`` (:data:`SPANS`).
    """
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; expected one of {SPANS}")
    text = " " + report.strip()
    encoding = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span() for w in words for m in re.finditer(rf"\b{re.escape(w)}\b", text, flags=re.IGNORECASE)]
    if span == "sentence":
        spans = [_sentence_around(text, start, end) for start, end in spans]
    return [offset + i for i, (start, end) in enumerate(encoding["offset_mapping"])
            if any(start < s_end and end > s_start for s_start, s_end in spans)]


#: How a word's map is made: ``evidence`` (gradient-weighted attention) or ``attention`` (raw).
MAP_METHODS = ("evidence", "attention")


def words_relevance(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int],
                    method: str = "evidence", image: int = 0) -> torch.Tensor:
    """(P,) the map over the patches of image ``image`` of the words at ``positions`` of sample 0 of
    ``batch``: their evidence, or the mean of their tokens' raw attention maps (``method``, :data:`MAP_METHODS`).

    Raises:
        ValueError: an unknown method.
    """
    if method == "evidence":
        return capture_evidence(model, batch, positions).evidence(image=image)
    if method == "attention":
        maps = capture_attention(model, batch)[1]
        return torch.stack([maps.token_relevance(0, p, image) for p in positions]).mean(0)
    raise ValueError(f"unknown map method {method!r}; expected one of {MAP_METHODS}")


def words_maps(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int], method: str = "evidence",
               image: int = 0, sharpen: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`words_relevance` and, with ``sharpen``, the pixels' saliency of film ``image`` (H, W;
    :func:`~flamingo_lib.modeling.pixel_maps.pixel_saliency`), else None. The evidence and the
    saliency come from one backward pass (:func:`capture_evidence` with ``to_pixels``)."""
    if method == "evidence" and sharpen:
        maps = capture_evidence(model, batch, positions, to_pixels=True)
        return maps.evidence(image=image), maps.pixel_saliency[image]
    relevance = words_relevance(model, batch, positions, method, image)
    return relevance, pixel_saliency(model, batch, positions, image=image) if sharpen else None


def words_heatmap(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int], size: tuple[int, int],
                  method: str = "evidence", image: int = 0) -> np.ndarray:
    """:func:`words_relevance` as an (H, W) heatmap of ``size``, summing to 1."""
    return relevance_to_heatmap(words_relevance(model, batch, positions, method, image), size)


class WordsMap(NamedTuple):
    """Where some words of a report draw on one film (:func:`words_map`).

    Attributes:
        relevance: (P,) their map over the film's patch tokens (:func:`words_relevance`).
        heatmap: (H, W) the relevance upsampled to the film's size, summing to 1.
        saliency: (H', W') the pixels' saliency of the encoder's input, or None unsharpened.
        sharpened: (H, W) the heatmap sharpened by the saliency (the map the pixel game scores), or None.
    """

    relevance: torch.Tensor
    heatmap: np.ndarray
    saliency: torch.Tensor | None
    sharpened: np.ndarray | None

    @property
    def peak(self) -> tuple[int, int]:
        """(row, column): the point the pointing game scores, the sharpened map's peak (the heatmap's
        when unsharpened)."""
        return peak_pixel(self.heatmap if self.sharpened is None else self.sharpened)


def words_map(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int], size: tuple[int, int],
              method: str = "evidence", image: int = 0, sharpen: bool = True) -> WordsMap:
    """The words' map over film ``image`` of sample 0 at ``size`` (H, W), sharpened to pixels unless
    ``sharpen`` is False: the one sequence every map with a peak is made by (the pointing game, the
    run report's cases, the reported studies' page), so the peak a page marks is the one the game scores."""
    relevance, saliency = words_maps(model, batch, positions, method, image, sharpen)
    heatmap = relevance_to_heatmap(relevance, size)
    return WordsMap(relevance, heatmap, saliency, sharpened_map(heatmap, saliency) if saliency is not None else None)


def cells_overlapped(mask: np.ndarray, side: int) -> np.ndarray:
    """(side, side) bool: the cells of a side x side grid over the (H, W) ``mask`` that it overlaps
    (cell i spans rows i*H/side to (i+1)*H/side, as the upsampled heatmap places it)."""
    pooled = F.adaptive_max_pool2d(torch.as_tensor(mask, dtype=torch.float32)[None, None], side)[0, 0]
    return pooled.numpy() > 0


def _cell_hit(relevance: torch.Tensor, cells: np.ndarray) -> bool:
    offset, side = patch_grid(relevance.numel())
    return bool(cells.flat[int(torch.argmax(relevance[offset:]))])


def near_mask(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """(H, W) bool: the pixels within ``tolerance`` px (Euclidean) of the (H, W) bool ``mask``."""
    from scipy.ndimage import distance_transform_edt

    return mask | (distance_transform_edt(~mask) <= tolerance)


def peak_pixel(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of the (H, W) ``heatmap``'s peak: the point the pointing game scores (the first
    maximum in row-major order)."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(column)


def peak_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the (H, W) ``heatmap``'s peak pixel lies in the (H, W) bool ``mask``: a pointing-game hit."""
    return bool(mask[peak_pixel(heatmap)])


def pointing_game(model: Any, processor: Any, samples: Sequence[Any], seed: int = 0,
                  method: str = "evidence", sharpen: bool = True, span: str = GAME_SPAN) -> pd.DataFrame:
    """One row per (study, finding named in its report with a mask): hit, chance, shuffled hit.

    Args:
        samples: studies with ``masks`` (finding -> bool (H, W) of the first image), e.g. PhantomCXR.
        seed: picks the other study used for the shuffled-image control.
        method: how the words' map is made (:func:`words_heatmap`).
        sharpen: play the pixel game on the map sharpened by the pixels' gradient (module docstring),
            on the study's film and on the shuffled one alike.
        span: map the sentence naming the finding (default) or its naming words (:data:`SPANS`).

    Returns:
        DataFrame with columns id, finding, hit, chance (mask area fraction), shuffled_hit, the cell
        game's (:data:`CELL_COLUMNS`: hit, share of cells the mask overlaps, shuffled hit), the
        tolerant game's (:data:`TOLERANT_COLUMNS`: hit, share of the film within ``TOLERANCE_PX`` of the
        mask, shuffled hit) and the box measures of
        :func:`~flamingo_lib.evaluation.box_grounding.box_scores` (:data:`BOX_COLUMNS`).
    """
    rows = []
    rng = np.random.default_rng(seed)
    placements = np.random.default_rng([seed, 1])  # the box IoU's chance placements: apart from rng's draws
    for index, sample in enumerate(samples):
        named = [(f, FINDING_WORDS[f]) for f in sample.masks if f in FINDING_WORDS]
        if not any(sample.masks[f].any() for f, _ in named):
            continue
        # the study's prompt (with the processor's context) and its first film; the control puts another
        # study's film in its place
        batch, prompt_len, image = processor.film_batch(sample)
        positions = {f: word_token_positions(processor, sample.report, words, prompt_len, span) for f, words in named}
        positions = {f: p for f, p in positions.items() if p and sample.masks[f].any()}
        if not positions:
            continue
        other = samples[(index + 1 + int(rng.integers(len(samples) - 1))) % len(samples)] if len(samples) > 1 else sample
        shuffled_batch = processor.film_batch(sample, film=other.images[0]).batch
        for finding, token_positions in positions.items():
            mask = sample.masks[finding]
            own = words_map(model, batch, token_positions, mask.shape, method, image, sharpen)
            shuffled = words_map(model, shuffled_batch, token_positions, mask.shape, method, image, sharpen)
            cells = cells_overlapped(mask, patch_grid(own.relevance.numel())[1])
            near = near_mask(mask, TOLERANCE_PX)
            rows.append({"id": sample.id, "finding": finding, "hit": bool(mask[own.peak]), "chance": float(mask.mean()),
                         "shuffled_hit": bool(mask[shuffled.peak]), "cell_hit": _cell_hit(own.relevance, cells),
                         "cell_chance": float(cells.mean()), "shuffled_cell_hit": _cell_hit(shuffled.relevance, cells),
                         "tolerant_hit": bool(near[own.peak]), "tolerant_chance": float(near.mean()),
                         "shuffled_tolerant_hit": bool(near[shuffled.peak]),
                         **box_scores(own.heatmap, shuffled.heatmap, mask, placements)})
    return pd.DataFrame(rows, columns=["id", "finding", "hit", "chance", "shuffled_hit", *CELL_COLUMNS,
                                       *TOLERANT_COLUMNS, *BOX_COLUMNS])


def _level(results: pd.DataFrame, level: str) -> pd.DataFrame:
    """The game of ``level`` (:data:`LEVELS`) as columns hit, chance, shuffled_hit."""
    if level not in LEVELS:
        raise ValueError(f"unknown pointing level {level!r}; expected one of {tuple(LEVELS)}")
    if level == "pixel":
        return results
    pixel = LEVELS["pixel"]
    return results.drop(columns=list(pixel)).rename(columns=dict(zip(LEVELS[level], pixel)))


def pointing_summary(results: pd.DataFrame, level: str = "pixel") -> pd.DataFrame:
    """Accuracy, chance and shuffled-image accuracy per finding and overall, of the pixel game, the
    ``cell`` game or the ``tolerant`` game (module docstring)."""
    if results.empty:
        return pd.DataFrame(columns=["n", "accuracy", "chance", "shuffled"])
    results = _level(results, level)
    grouped = results.groupby("finding").agg(n=("hit", "size"), accuracy=("hit", "mean"), chance=("chance", "mean"),
                                             shuffled=("shuffled_hit", "mean"))
    overall = pd.DataFrame({"n": [len(results)], "accuracy": [results["hit"].mean()],
                            "chance": [results["chance"].mean()], "shuffled": [results["shuffled_hit"].mean()]},
                           index=["all"])
    return pd.concat([grouped, overall])


def pointing_sentence(results: pd.DataFrame, level: str = "pixel") -> str:
    """The pointing game in one line, as the docs quote a run: hits, accuracy, chance and the
    shuffled-image control with their p-values (:func:`pointing_tests`)."""
    summary, tests = pointing_summary(results, level).loc["all"], pointing_tests(results, level)
    return (f"{tests['hits']} of {tests['n']} findings ({summary.accuracy:.3f}; chance {summary.chance:.3f}, "
            f"p = {tests['p_vs_chance']:.2g}; shuffled {summary.shuffled:.3f}, p = {tests['p_vs_shuffled']:.2g})")


def pointing_tests(results: pd.DataFrame, level: str = "pixel") -> dict[str, float]:
    """Is the pointing game (of ``level``: "pixel", "cell" or "tolerant") better than chance and than the
    shuffled-image control, beyond luck?

    * vs chance: exact one-sided p-value of at least this many hits if each finding's peak fell
      at a random point (a hit with probability = its mask's area fraction: a Poisson-binomial
      distribution, computed exactly);
    * vs shuffled: exact one-sided McNemar test on the paired outcomes (own image hit and
      shuffled missed, against the reverse): the same tokens, only the image differs.

    Returns:
        ``{"n", "hits", "p_vs_chance", "p_vs_shuffled"}`` (p = 1.0 when nothing was scored).
    """
    from scipy.stats import binomtest

    if results.empty:
        return {"n": 0, "hits": 0, "p_vs_chance": 1.0, "p_vs_shuffled": 1.0}
    results = _level(results, level)
    hits = results["hit"].astype(bool).to_numpy()
    shuffled = results["shuffled_hit"].astype(bool).to_numpy()
    distribution = np.array([1.0])  # P(k hits) by chance, one finding at a time
    for p in results["chance"].to_numpy(dtype=float):
        distribution = np.convolve(distribution, [1.0 - p, p])
    own_only, shuffled_only = int((hits & ~shuffled).sum()), int((~hits & shuffled).sum())
    p_shuffled = (binomtest(own_only, own_only + shuffled_only, 0.5, alternative="greater").pvalue
                  if own_only + shuffled_only else 1.0)
    return {"n": len(results), "hits": int(hits.sum()), "p_vs_chance": float(min(1.0, distribution[hits.sum():].sum())),
            "p_vs_shuffled": float(p_shuffled)}
