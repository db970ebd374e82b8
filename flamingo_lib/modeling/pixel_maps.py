"""Maps as fine as the film: a patch-grid map sharpened by the words' gradient with respect to the pixels.

A map over the encoder's patches (the evidence or the raw attention of
:mod:`~flamingo_lib.modeling.attention_maps`) is as coarse as the grid: 14 x 14 cells of 16 px at
224 px. Upsampled, its peak sits near a cell's centre, so a lesion smaller than a cell (a 3 x 3 px
granuloma, a 40 px nodule) is hit only where a centre happens to fall on it. The gradient of the
words' log-probability with respect to the pixels is as fine as the film, but it is noisy and lights
every edge the encoder reads, inside the finding's cell or not. Their product keeps what each does
well: the coarse map says which cells hold the words' evidence, the gradient which pixels inside
them move the words. Guided Grad-CAM (Selvaraju et al., ICCV 2017) combines a class map and
guided backpropagation the same way, for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flamingo_lib.modeling.attention_maps import check_positions, pixels_leaf, words_log_probability


def pixel_saliency(model: Any, batch: dict[str, torch.Tensor], positions: Sequence[int], sample: int = 0,
                   image: int = 0) -> torch.Tensor:
    """(H, W) how strongly each pixel of film ``image`` of ``sample`` moves the words at ``positions``:
    ``|∂y/∂x|`` summed over the colour channels, ``y`` the words' summed log-probability (the target
    of :func:`~flamingo_lib.modeling.attention_maps.capture_evidence`). One forward and one backward
    pass, through the frozen vision encoder to the pixels; no parameter's gradient is touched.

    Args:
        batch: ``pixel_values`` (B, T, 3, H, W), ``input_ids`` and ``attention_mask`` (B, L), as
            :meth:`~flamingo_lib.processing.processor.FlamingoProcessor.training_batch` builds them.
        positions: text positions, each >= 1.

    Raises:
        ValueError: no position or one outside 1..L-1, or a batch without ``pixel_values``.
    """
    check_positions(batch, positions)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    pixels = pixels_leaf(inputs)
    model.eval()
    with torch.enable_grad():
        embeddings = model.flamingo.encode_visuals(pixels, grad_to_pixels=True)
        logits = model(**inputs, image_embeddings=embeddings).logits[sample]
        score = words_log_probability(logits, batch["input_ids"][sample], positions)
        (gradient,) = torch.autograd.grad(score, pixels)
    return gradient[sample, image].float().abs().sum(0).cpu()


def sharpened_map(heatmap: np.ndarray, saliency: torch.Tensor) -> np.ndarray:
    """The (H, W) upsampled patch-grid ``heatmap`` times the pixel ``saliency`` (resized bilinearly
    to (H, W) when the encoder's input size differs), summing to 1. Where the product is zero
    everywhere (the words do not depend on the film), the heatmap itself."""
    fine = saliency.float()[None, None]
    if tuple(fine.shape[-2:]) != tuple(heatmap.shape):
        fine = F.interpolate(fine, size=heatmap.shape, mode="bilinear", align_corners=False)
    product = heatmap * fine[0, 0].clamp(min=0).numpy()
    total = product.sum()
    return product / total if total > 0 else heatmap
