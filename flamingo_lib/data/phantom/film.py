"""The film: patient pose, detector response and noise, shared by the PA and lateral views.

The renderers draw in a canonical upright frame; :func:`warp` applies the patient's
pose (slight rotation, scale and shift) and :func:`expose` turns attenuation into
an 8-bit image the way a detector and display window would.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from flamingo_lib.data.phantom.anatomy import Anatomy
from flamingo_lib.data.phantom.raster import blur


def warp(image: np.ndarray, p: Anatomy, size: int) -> np.ndarray:
    """Apply the patient's pose (rotation, scale, shift) with one bilinear affine warp."""
    source = Image.fromarray(image.astype(np.float32, copy=False))
    return np.asarray(source.transform((size, size), *_affine(p, size), fillcolor=0.0))


def _affine(p: Anatomy, size: int) -> tuple:
    """PIL transform arguments (method, coefficients, resampling) of the patient's pose.

    The coefficients map each output pixel back to the canonical frame.
    """
    c, s, k = math.cos(p.rot), math.sin(p.rot), 1.0 / p.scale
    m = np.array([[c * k, s * k], [-s * k, c * k]])
    centre = np.array([size / 2.0, size / 2.0])
    offset = centre - m @ (centre + np.array(p.shift) * size)
    coeffs = (m[0, 0], m[0, 1], offset[0], m[1, 0], m[1, 1], offset[1])
    return Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    return np.random.default_rng(size).standard_normal((2 * size, 2 * size), dtype=np.float32)


def _noise(size: int, seed: int) -> np.ndarray:
    """Unit Gaussian noise for one image: a seed-chosen, seed-flipped window of a fixed bank.

    Cheaper than drawing fresh normals per image, and with about ``2 size^2`` window
    positions times four flips no two patients of a data set look alike.
    """
    rng = np.random.default_rng([seed, 3])
    r, c = (int(v) for v in rng.integers(0, size, 2))
    window = _noise_bank(size)[r : r + size, c : c + size]
    flips = int(rng.integers(0, 4))
    return window[:: 1 - 2 * (flips & 1), :: 1 - 2 * (flips >> 1)]


def expose(attenuation: np.ndarray, p: Anatomy, seed: int) -> Image.Image:
    """Film response: ``1 - exp(-k A)``, a fixed per-patient window, gamma, noise, blur.

    The window depends on the patient, never on the image's own statistics, so a
    finding changes the pixels where it is and nowhere else.
    """
    size = attenuation.shape[0]
    film = 1.0 - np.exp(-p.gain * np.maximum(attenuation, 0.0))
    out = np.clip((film - p.lo) * (1.0 / (p.hi - p.lo)), 0.0, 1.0) ** p.gamma
    out = out + _noise(size, seed) * p.noise
    out = blur(out.astype(np.float32), 0.6 * size / 224.0)
    return Image.fromarray((np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def warp_mask(soft: np.ndarray, p: Anatomy, size: int) -> np.ndarray:
    """Threshold a soft canonical mask at one half after the pose warp.

    A structure thinner than a pixel can vanish at that threshold; it then keeps
    every pixel it touches, so a drawn finding never ends up with an empty mask.
    """
    # Warped as 8-bit: a quarter of the float work, and the threshold needs no more.
    levels = (np.clip(soft, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    warped = np.asarray(Image.fromarray(levels).transform((size, size), *_affine(p, size)))
    mask = warped >= 128
    if not mask.any() and levels.max() >= 128:
        mask = warped >= 13
    return mask
