"""Raster primitives shared by the phantom renderer: coordinate grids, soft edges, blur.

Everything is drawn in a canonical square frame with coordinates in ``[0, 1]``
(x to the image right, y down), so anatomy and findings are described in fractions
of the image and stay the same shape at any ``image_size``. Layers are ``float32``
attenuation maps; the renderer turns their sum into pixel brightness at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of one image size.

    ``x`` is a row vector and ``y`` a column vector so that expressions mixing them
    broadcast to a full ``(size, size)`` array only when they have to; a profile that
    depends on y alone stays a column and costs ``size`` evaluations, not ``size**2``.

    Attributes:
        size: side length in pixels.
        x: shape ``(1, size)``, pixel-centre x in ``[0, 1]``.
        y: shape ``(size, 1)``, pixel-centre y in ``[0, 1]``.
        px: one pixel in canonical units.
    """

    size: int
    x: np.ndarray
    y: np.ndarray
    px: float

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Row and column slices of the square around ``(cx, cy)``, clipped to the image.

        Local findings (nodules, fractures) are evaluated only inside their window,
        which keeps them cheap however large the image is.
        """
        r = radius + 2 * self.px

        def span(c: float) -> slice:
            lo = int(np.floor((c - r) * self.size))
            hi = int(np.ceil((c + r) * self.size)) + 1
            return slice(min(max(lo, 0), self.size), min(max(hi, 0), self.size))

        return span(cy), span(cx)


@lru_cache(maxsize=8)
def grid(size: int) -> Grid:
    """The (cached) coordinate grid of a ``size`` x ``size`` image."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return Grid(size=size, x=coords[None, :], y=coords[:, None], px=1.0 / size)


def ramp(distance: np.ndarray, px: float, width: float = 1.0) -> np.ndarray:
    """Anti-aliased inside indicator from a signed distance (positive inside).

    A linear ramp ``width`` pixels wide centred on the edge: cheaper than a sigmoid
    and, after the final blur, indistinguishable from one.
    """
    return np.clip(distance * (1.0 / (px * width)) + 0.5, 0.0, 1.0)


def dome(distance: np.ndarray, radius: float) -> np.ndarray:
    """Thickness profile of a sphere/cylinder: ``sqrt(1 - (d / r)^2)`` inside, 0 outside.

    X-ray attenuation is proportional to the path length through an object, so a
    round object is densest at its centre and fades towards its rim.
    """
    q = 1.0 - np.square(distance * (1.0 / radius))
    return np.sqrt(np.clip(q, 0.0, 1.0))


def ellipse_radius(
    gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, a: float, b: float, tilt: float
) -> np.ndarray:
    """Normalised elliptic radius (1 on the rim) of an ellipse rotated by ``tilt`` radians."""
    dx, dy = gx - cx, gy - cy
    c, s = np.cos(tilt), np.sin(tilt)
    u = (dx * c + dy * s) * (1.0 / a)
    v = (dy * c - dx * s) * (1.0 / b)
    return np.sqrt(u * u + v * v)


@lru_cache(maxsize=16)
def _gauss_taps(sigma_px: float) -> tuple[float, ...]:
    radius = max(1, int(np.ceil(2.5 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    return tuple(float(v) for v in k / k.sum())


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur by shifted sums (edge-replicating).

    The kernels used here are a few pixels wide, where a handful of shifted adds
    beats both FFT and a dense convolution matrix by an order of magnitude.
    """
    if sigma_px <= 0:
        return image
    taps = _gauss_taps(round(float(sigma_px), 3))
    r = len(taps) // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(taps):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(i, i + n)
            acc += w * padded[tuple(sl)]
        out = acc
    return out


def polyline_layer(
    size: int,
    lines: Sequence[tuple[Sequence[tuple[float, float]], float, float]],
    boxes: Sequence[tuple[tuple[float, float, float, float], float]] = (),
) -> np.ndarray:
    """Rasterise thin structures (vessels, tubes, wires) with PIL's C line drawer.

    Args:
        size: image side in pixels.
        lines: ``(points, width, value)`` with points in canonical units, width in
            canonical units and value in ``[0, 1]``.
        boxes: ``((x0, y0, x1, y1), value)`` filled rounded rectangles.

    Returns:
        A ``float32`` array in ``[0, 1]``; later strokes overwrite earlier ones.
    """
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for points, width, value in lines:
        xy = [(px * size, py * size) for px, py in points]
        draw.line(xy, fill=int(round(255 * value)), width=max(1, int(round(width * size))), joint="curve")
    for (x0, y0, x1, y1), value in boxes:
        draw.rounded_rectangle(
            (x0 * size, y0 * size, x1 * size, y1 * size),
            radius=max(1, int(0.25 * min(x1 - x0, y1 - y0) * size)),
            fill=int(round(255 * value)),
        )
    return np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0)
