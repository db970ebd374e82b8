"""Small helpers the notebooks call: device, parameter table, feature PCA (the attention browser:
:mod:`flamingo_lib.reporting.attention_browser`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from flamingo_lib.modeling.config import dtype_name


def detect_device() -> tuple[str, str]:
    """("cuda" | "mps" | "cpu", a human description)."""
    if torch.cuda.is_available():
        return "cuda", f"CUDA: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s))"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps", "Apple MPS"
    return "cpu", f"CPU: {torch.get_num_threads()} threads"


def parameter_table(model: Any) -> pd.DataFrame:
    """Per part of a ``FlamingoModel``: trainable and frozen parameter counts, their memory (MiB)
    and dtypes (``config.frozen_dtype`` shows here: bfloat16 frozen parts, float32 trained ones)."""
    parts = {"vision encoder": [], "perceiver resampler": [], "gated cross-attention": [],
             "new token rows": [], "language model": []}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if ".vision_encoder." in name:
            part = "vision encoder"
        elif ".perceiver." in name:
            part = "perceiver resampler"
        elif ".gated_cross_attn." in name:
            part = "gated cross-attention"
        elif name.endswith("new_rows"):
            part = "new token rows"
        else:
            part = "language model"
        parts[part].append(param)
    def row(params: list[torch.nn.Parameter]) -> dict[str, Any]:
        return {"trainable": sum(p.numel() for p in params if p.requires_grad),
                "frozen": sum(p.numel() for p in params if not p.requires_grad),
                "MiB": round(sum(p.numel() * p.element_size() for p in params) / 2**20, 1),
                "dtype": ", ".join(sorted({dtype_name(p.dtype) for p in params}))}

    rows = {part: row(params) for part, params in parts.items()}
    rows["total"] = row([p for params in parts.values() for p in params])
    return pd.DataFrame(rows).T.astype({"trainable": int, "frozen": int, "MiB": float})


def patch_pca_figure(tokens: torch.Tensor, image: Any) -> Figure:
    """The first three principal components of an image's patch tokens as RGB, beside the image.

    Args:
        tokens: (P, D) patch tokens (a leading CLS token is dropped when P = 1 + side^2).
    """
    from flamingo_lib.modeling.attention_maps import patch_grid

    offset, side = patch_grid(tokens.shape[0])
    patches = tokens[offset:].float()
    centred = patches - patches.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=3, center=False)
    components = (centred @ v[:, :3]).numpy()
    low, high = components.min(0), components.max(0)
    rgb = ((components - low) / np.where(high > low, high - low, 1)).reshape(side, side, 3)
    figure = Figure(figsize=(6, 3))
    left, right = figure.subplots(1, 2)
    left.imshow(image.convert("L"), cmap="gray")
    left.set_title("image")
    right.imshow(rgb, interpolation="nearest")
    right.set_title("patch tokens: PCA 1-3 as RGB")
    for ax in (left, right):
        ax.axis("off")
    figure.tight_layout()
    return figure
