"""Box-level grounding of an attention map: does the map's region match the finding's box?

Beside the pointing game's peak, two measures on each (study, finding) pair:

* **box IoU** (the Generate-to-Ground protocol): the map is thresholded at ``THRESHOLD`` of its
  maximum, the bounding box of its largest connected region is its predicted box, and the score is
  that box's intersection over union with the finding's box. Chance: the same predicted box placed
  uniformly at random in the image (the mean over ``PLACEMENTS`` seeded placements).
* **mass in box**: the share of the map's mass (it sums to 1) inside the finding's box. Chance: the
  box's share of the image, what a uniform map puts there.

A finding's box is the bounding box of its mask (the phantom's masks; an MS-CXR box read as a mask
is its own box). Both measures are also computed on the shuffled-image control's map, and
:func:`box_tests` gives one-sided paired Wilcoxon signed-rank p-values against chance and against
the shuffled image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The map is cut at this fraction of its maximum (Generate-to-Ground's binarisation of a saliency map).
THRESHOLD = 0.5
#: Random placements averaged for the IoU a box of the predicted size gets by chance.
PLACEMENTS = 16

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom and right exclusive


def bounding_box(mask: np.ndarray) -> Box:
    """The smallest box holding every True pixel of an (H, W) mask.

    Raises:
        ValueError: an empty mask has no box.
    """
    rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        raise ValueError("an empty mask has no bounding box")
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def map_box(heatmap: np.ndarray, threshold: float = THRESHOLD) -> Box:
    """The predicted box of an (H, W) map: the bounding box of its largest connected region at or above
    ``threshold`` x its maximum (ties between regions: the one holding more of the map's mass)."""
    from scipy.ndimage import label

    regions, count = label(heatmap >= threshold * float(heatmap.max()))
    if count <= 1:
        return bounding_box(regions > 0) if count else (0, 0, *heatmap.shape)
    sizes = np.bincount(regions.ravel())[1:]
    masses = np.bincount(regions.ravel(), weights=heatmap.ravel())[1:]
    best = max(range(count), key=lambda k: (sizes[k], masses[k]))
    return bounding_box(regions == best + 1)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    height = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def mass_in_box(heatmap: np.ndarray, box: Box) -> float:
    """The share of the map's mass inside ``box`` (the map need not be normalised)."""
    total = float(heatmap.sum())
    return float(heatmap[box[0]:box[2], box[1]:box[3]].sum()) / total if total > 0 else 0.0


def chance_iou(predicted: Box, truth: Box, shape: tuple[int, int], rng: np.random.Generator,
               placements: int = PLACEMENTS) -> float:
    """The mean IoU with ``truth`` of a box of ``predicted``'s size placed uniformly at random."""
    height, width = predicted[2] - predicted[0], predicted[3] - predicted[1]
    tops = rng.integers(0, shape[0] - height + 1, placements)
    lefts = rng.integers(0, shape[1] - width + 1, placements)
    return float(np.mean([box_iou((t, l, t + height, l + width), truth) for t, l in zip(tops, lefts, strict=True)]))


def box_scores(heatmap: np.ndarray, shuffled: np.ndarray, mask: np.ndarray, rng: np.random.Generator
               ) -> dict[str, float]:
    """The box measures of one finding: ``iou`` and ``iou_chance``, ``mass_in_box`` and ``box_area`` (its
    chance), and ``shuffled_iou`` / ``shuffled_mass`` of the shuffled-image control's map."""
    truth = bounding_box(mask)
    predicted = map_box(heatmap)
    area = (truth[2] - truth[0]) * (truth[3] - truth[1]) / mask.size
    return {"iou": box_iou(predicted, truth), "iou_chance": chance_iou(predicted, truth, mask.shape, rng),
            "mass_in_box": mass_in_box(heatmap, truth), "box_area": area,
            "shuffled_iou": box_iou(map_box(shuffled), truth), "shuffled_mass": mass_in_box(shuffled, truth)}


def box_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean box IoU and mass in box with their chance and shuffled-image values, per finding and overall."""
    columns = {"iou": "mIoU", "iou_chance": "mIoU chance", "shuffled_iou": "mIoU shuffled",
               "mass_in_box": "mass in box", "box_area": "mass chance", "shuffled_mass": "mass shuffled"}
    if results.empty or "iou" not in results:
        return pd.DataFrame(columns=["n", *columns.values()])
    grouped = results.groupby("finding")[list(columns)].mean().rename(columns=columns)
    grouped.insert(0, "n", results.groupby("finding").size())
    overall = results[list(columns)].mean().rename(columns).to_frame("all").T
    overall.insert(0, "n", len(results))
    return pd.concat([grouped, overall])


def box_tests(results: pd.DataFrame) -> dict[str, float]:
    """One-sided paired Wilcoxon signed-rank p-values: is the map's box IoU above its chance and above the
    shuffled image's, and its mass in the box above the box's area and above the shuffled image's?

    Returns:
        ``{"n", "iou_vs_chance", "iou_vs_shuffled", "mass_vs_chance", "mass_vs_shuffled"}`` (1.0 when
        nothing was scored or every pair ties).
    """
    from scipy.stats import wilcoxon

    pairs = {"iou_vs_chance": ("iou", "iou_chance"), "iou_vs_shuffled": ("iou", "shuffled_iou"),
             "mass_vs_chance": ("mass_in_box", "box_area"), "mass_vs_shuffled": ("mass_in_box", "shuffled_mass")}
    out: dict[str, float] = {"n": len(results)}
    for name, (own, other) in pairs.items():
        if results.empty or own not in results:
            out[name] = 1.0
            continue
        difference = results[own].to_numpy(float) - results[other].to_numpy(float)
        out[name] = float(wilcoxon(difference, alternative="greater").pvalue) if np.any(difference) else 1.0
    return out
