"""A self-contained HTML report of a run (figures embedded), safe to share.

Sharing rules: a report built from a credentialed source (MIMIC-CXR) contains its images and
report text, which its data use agreement forbids sharing; writing one needs
``allow_credentialed=True`` and prints a warning. Reports built on IU-derived text carry the
IU licence credit.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from flamingo_lib.io import write_text_atomic

IU_CREDIT = ("Report text: Indiana University Chest X-ray Collection (Demner-Fushman et al., 2016), via the "
             "Open-i service of the U.S. National Library of Medicine, CC BY-NC-ND 4.0; read from the "
             "torchxrayvision package. Images: procedurally rendered phantoms (flamingo_lib).")
CREDENTIALED_WARNING = ("This report contains images and report text of private data (a credentialed dataset such "
                        "as MIMIC-CXR, whose data use agreement forbids sharing them, or a source of unknown "
                        "licence): keep this file private.")

#: A case's inline style, for fragments shown without the page's style sheet (a notebook's HTML output).
CASE_OPEN = "<div class='case' style='display:flex;flex-wrap:wrap;align-items:flex-start;gap:1em'>"

# Films keep their aspect ratio at every width (img: height auto, never stretched by a flex row);
# nothing makes the page scroll sideways (wide tables scroll inside themselves, long lines wrap).
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0;display:block;overflow-x:auto;max-width:100%}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}
.case{display:flex;flex-wrap:wrap;align-items:flex-start;gap:1em;margin:1em 0;border-top:1px solid #ddd;padding-top:1em}
.case>img{flex:0 1 auto}.case>div{flex:1 1 300px;min-width:0}.case p{margin:.3em 0}
pre{white-space:pre-wrap;overflow-wrap:anywhere}
.ref{color:#555}.credit{color:#666;font-size:12px}.warn{background:#fee;border:1px solid #c00;padding:.6em}"""


def figure_to_img(figure: Figure, width: int = 480) -> str:
    """An ``<img>`` tag holding the figure as an embedded PNG, ``width`` pixels wide at most.

    The tag carries the PNG's own aspect ratio (``width`` and ``height`` attributes, and the page's
    style keeps ``height:auto``), so a film is never stretched by the layout around it: a squeezed
    heart looks enlarged.
    """
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pixels_wide, pixels_high = Image.open(io.BytesIO(buffer.getvalue())).size
    data = base64.b64encode(buffer.getvalue()).decode()
    height = round(width * pixels_high / pixels_wide)
    return (f'<img width="{width}" height="{height}" style="aspect-ratio:{pixels_wide}/{pixels_high}" '
            f'src="data:image/png;base64,{data}"/>')


def loss_curve_figure(curves: pd.DataFrame) -> Figure:
    """Train and validation loss against step; the findings head's loss beside them, when it trained."""
    with_head = "findings_loss" in curves and curves["findings_loss"].notna().any()
    figure = Figure(figsize=(9 if with_head else 5, 3))
    axes = figure.subplots(1, 2 if with_head else 1, squeeze=False)[0]
    ax = axes[0]
    ax.plot(curves["step"], curves["train_loss"], label="train", lw=1)
    val = curves.dropna(subset=["val_loss"])
    ax.plot(val["step"], val["val_loss"], "o-", label="validation")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("token cross-entropy")
    ax.legend()
    if with_head:
        axes[1].plot(curves["step"], curves["findings_loss"], lw=1, color="#a50")
        axes[1].set_xlabel("optimiser step")
        axes[1].set_ylabel("findings head: binary cross-entropy")
    figure.tight_layout()
    return figure


def case_figure(image: Any, heatmap: Any, mask: Any, title: str, mask_label: str | None = None,
                peak: tuple[int, int] | None = None) -> Figure:
    """The X-ray alone and with the attention heatmap (its colour bar, the outline of the mask
    named ``mask_label`` and, when given, the sharpened map's ``peak`` (row, column) marked) over it."""
    from flamingo_lib.modeling.attention_maps import plot_heatmap

    figure = Figure(figsize=(6.6, 3.4 if peak is not None else 3.2))
    left, right = figure.subplots(1, 2)
    left.imshow(image.convert("L"), cmap="gray")
    left.set_title("film", fontsize=9)
    left.axis("off")
    if heatmap is not None:
        plot_heatmap(image, heatmap, title=title, ax=right, mask=mask, mask_label=mask_label, peak=peak)
    else:
        right.axis("off")
    figure.tight_layout()
    return figure


def metrics_figure(table: pd.DataFrame, columns: list[str]) -> Figure:
    """Grouped horizontal bars, each labelled with its value: one group per metric in ``columns``,
    one bar per system (row of ``table``, in its order from the top); language metrics and
    clinical-efficacy ("CE ...") metrics in two panels, as their scales differ (CIDEr exceeds 1). A
    missing value (NaN, e.g. the reference ceiling's NLG scores) gets no bar and no label. The
    legend sits above the panels, where it can hide no bar, and the labels read horizontally."""
    import textwrap

    import numpy as np

    values = table[columns].astype(float)
    panels = [p for p in ([c for c in columns if not c.startswith("CE")], [c for c in columns if c.startswith("CE")]) if p]
    height = 0.8 / len(values)
    longest = max(len(p) for p in panels)
    figure = Figure(figsize=(12, 1.4 + 0.24 * len(values) * longest))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i}" for i in range(len(values))]
    for ax, panel in zip(axes, panels):
        positions = np.arange(len(panel))
        for offset, (system, row) in enumerate(values[panel].iterrows()):
            bars = ax.barh(positions + offset * height, row.fillna(0).to_numpy(), height, label=str(system),
                           color=colours[offset])
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in row], fontsize=8, padding=2)
        ax.set_yticks(positions + 0.4 - height / 2, [textwrap.fill(c, 18) for c in panel], fontsize=9)
        ax.invert_yaxis()  # the first metric and the first system on top, as in the table
        ax.set_xlim(0, max(1.0, float(np.nanmax(values[panel].to_numpy(), initial=0))) * 1.15)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlabel("score")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    rows = -(-len(labels) // 4)
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.35 + 0.22 * rows) / figure.get_figheight()))
    return figure


def write_html_report(path: str | Path, title: str, sections: list[tuple[str, str]], *, credentialed: bool,
                      allow_credentialed: bool = False, iu_text: bool = False,
                      private_warning: str = CREDENTIALED_WARNING) -> Path:
    """Write the report atomically.

    Args:
        sections: (heading, HTML body) pairs, in order.
        credentialed: the content comes from a credentialed source.
        allow_credentialed: the explicit opt-in needed to write such a report.
        iu_text: add the IU licence credit.
        private_warning: what the page (and a warning) says of credentialed content.

    Raises:
        PermissionError: credentialed content without ``allow_credentialed``.
    """
    if credentialed and not allow_credentialed:
        raise PermissionError("refusing to write a report with private images and text (credentialed, such as "
                              "MIMIC-CXR, or of unknown licence): they may not be shared; pass "
                              "allow_credentialed=True to write a private copy")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if credentialed:
        warnings.warn(private_warning, stacklevel=2)
        parts.append(f"<p class='warn'>{html.escape(private_warning)}</p>")
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    if iu_text:
        parts.append(f"<p class='credit'>{html.escape(IU_CREDIT)}</p>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(parts))
    return path
