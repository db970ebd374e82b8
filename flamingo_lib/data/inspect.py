"""Tables and figures for looking at a dataset (used by the dataset notebook).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through
``pyplot``, so they work under any backend (Agg in tests and CI, inline in
Jupyter) and are not kept alive by pyplot's global figure registry.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample

_STATES = ("positive", "uncertain", "negative", "missing")


def _label_frame(source: Any) -> pd.DataFrame:
    """Labels as a frame (rows: samples, columns: observations, NaN = missing)."""
    if isinstance(source, pd.DataFrame):
        frame = source
    elif hasattr(source, "label_frame"):
        frame = source.label_frame()  # loaders that know labels without decoding images
    else:
        frame = pd.DataFrame([sample.labels for sample in source])
    # Observations absent from the source count as missing, not as an error:
    # IU X-Ray and Chex exports may carry no CheXpert labels at all.
    return frame.reindex(columns=list(CHEXPERT_OBSERVATIONS)).astype(float)


def label_prevalence(datasets: Mapping[str, Any]) -> pd.DataFrame:
    """Per split, the fraction of positive / uncertain / negative / missing labels.

    Args:
        datasets: split name → a dataset (anything iterable over
            :class:`CXRSample`, or with a ``label_frame()`` method) or a DataFrame
            with one column per CheXpert observation holding 1.0 / -1.0 / 0.0 / NaN.

    Returns:
        Index ``(split, observation)``; columns ``positive``, ``uncertain``,
        ``negative``, ``missing`` (fractions summing to 1) and ``n`` (samples).
        ``.unstack("split")`` gives a side-by-side view.
    """
    rows: list[dict[str, Any]] = []
    for split, source in datasets.items():
        frame = _label_frame(source)
        n = len(frame)
        for observation in CHEXPERT_OBSERVATIONS:
            values = frame[observation]
            counts = {
                "positive": (values == 1.0).sum(),
                "uncertain": (values == -1.0).sum(),
                "negative": (values == 0.0).sum(),
                "missing": values.isna().sum(),
            }
            fractions = {state: (count / n if n else np.nan) for state, count in counts.items()}
            rows.append({"split": split, "observation": observation, **fractions, "n": n})
    columns = ["split", "observation", *_STATES, "n"]
    return pd.DataFrame(rows, columns=columns).set_index(["split", "observation"])


def report_lengths(samples: Iterable[CXRSample | str]) -> pd.Series:
    """Words per report (whitespace-separated tokens).

    Args:
        samples: samples (their ``report`` is counted) or report strings.

    Returns:
        Integer series indexed by sample id (position for plain strings).
    """
    ids: list[str | int] = []
    lengths: list[int] = []
    for position, item in enumerate(samples):
        text = item if isinstance(item, str) else item.report
        ids.append(position if isinstance(item, str) else item.id)
        lengths.append(len(text.split()))
    return pd.Series(lengths, index=ids, name="words", dtype=int)


def plot_report_lengths(lengths: Mapping[str, Any], bins: int = 40) -> Figure:
    """Overlaid histograms of report length, one per split, medians marked.

    Args:
        lengths: split name → a :func:`report_lengths` series, or samples/strings
            to count.
        bins: number of shared bins.

    Returns:
        The figure (display it in a notebook, or ``fig.savefig(...)``).
    """
    series = {split: value if isinstance(value, pd.Series) else report_lengths(value)
              for split, value in lengths.items()}  # fmt: skip
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    everything = np.concatenate([s.to_numpy() for s in series.values()]) if series else np.zeros(0)
    edges = np.histogram_bin_edges(everything, bins=bins) if everything.size else bins
    for split, values in series.items():
        _, _, patches = axes.hist(values, bins=edges, histtype="step", linewidth=1.5,
                                  density=True, label=f"{split} (n={len(values)})")  # fmt: skip
        if len(values):
            axes.axvline(float(values.median()), color=patches[0].get_edgecolor(), linestyle="--", linewidth=1)
    axes.set_xlabel("report length (words)")
    axes.set_ylabel("density")
    axes.set_title("Report length per split (dashed: median)")
    if series:
        axes.legend()
    return figure


def _snippet(text: str, width: int, lines: int) -> str:
    return "\n".join(textwrap.wrap(text, width=width, max_lines=lines, placeholder=" …")) or "(no report)"


def plot_image_grid(
    samples: Iterable[CXRSample],
    n: int = 8,
    ncols: int = 4,
    show_masks: bool = True,
    snippet_width: int = 40,
    snippet_lines: int = 3,
) -> Figure:
    """The first image of up to ``n`` samples with mask outlines and report snippets.

    Each finding name gets one colour across the whole grid, listed in a legend.
    Masks are drawn as contours of the first image (rescaled when the image was
    downscaled on load).

    Args:
        samples: the samples; only the first ``n`` are read.
        n: how many to show.
        ncols: columns of the grid.
        show_masks: outline ``sample.masks``.
        snippet_width: characters per title line.
        snippet_lines: title lines of report text.

    Returns:
        The figure.
    """
    shown: list[CXRSample] = []
    for sample in samples:
        if len(shown) == n:
            break
        shown.append(sample)
    ncols = max(1, min(ncols, len(shown)))
    nrows = max(1, -(-len(shown) // ncols))
    figure = Figure(figsize=(3.2 * ncols, 3.6 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    names = sorted({name for sample in shown for name in sample.masks}) if show_masks else []
    # Qualitative colour maps: distinct hues, stable per name within the figure.
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
    for ax, sample in zip(axes, shown, strict=False):
        image = np.asarray(sample.images[0].convert("L")) if sample.images else np.zeros((8, 8))
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if show_masks:
            for name, mask in sample.masks.items():
                _outline(ax, np.asarray(mask, dtype=bool), image.shape, colours[name])
        ax.set_title(_snippet(sample.report, snippet_width, snippet_lines), fontsize=8, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    if names:
        handles = [Line2D([], [], color=colours[name], label=name) for name in names]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(names), 4), fontsize=8)
    return figure


def _outline(ax: Any, mask: np.ndarray, image_shape: tuple[int, ...], colour: Any) -> None:
    """Contour a boolean mask onto an image of possibly different size."""
    if not mask.any():
        return
    height, width = image_shape[:2]
    rows, cols = mask.shape
    # Pixel centres of the mask expressed in the displayed image's pixel coordinates.
    xs = (np.arange(cols) + 0.5) * width / cols - 0.5
    ys = (np.arange(rows) + 0.5) * height / rows - 0.5
    ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
