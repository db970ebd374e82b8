"""Findings drawn outside the lung parenchyma: support devices and rib fractures.

Same contract as :mod:`flamingo_lib.data.phantom.lesions`: each ``draw_*`` adds to
the attenuation map ``a`` in place and returns a soft mask in the canonical frame.
Devices are metal or radio-opaque plastic, so they are the brightest thing on the
film and are drawn last, over everything.
"""

from __future__ import annotations

import math

import numpy as np

from flamingo_lib.data.phantom.anatomy import Anatomy, diaphragm, rib_center_y, rib_density, side_sign
from flamingo_lib.data.phantom.lesions import Spec
from flamingo_lib.data.phantom.chest import Layers
from flamingo_lib.data.phantom.raster import Grid, polyline_layer, ramp

DEVICE_TYPES: tuple[str, ...] = ("pacemaker", "central line", "endotracheal tube", "nasogastric tube")

# Words of the raw term that name a device type (IU MeSH heads and free text).
_DEVICE_WORDS: tuple[tuple[str, str], ...] = (
    ("pacemaker", "pacemaker"),
    ("implanted", "pacemaker"),
    ("catheter", "central line"),
    ("picc", "central line"),
    ("line", "central line"),
    ("endotracheal", "endotracheal tube"),
    ("nasogastric", "nasogastric tube"),
    ("tube", "endotracheal tube"),
)


def device_type(spec: Spec) -> str:
    """The device to draw: named by the raw term where it says, else drawn from ``spec.rng``."""
    source = spec.source.lower()
    for word, kind in _DEVICE_WORDS:
        if word in source:
            return kind
    return spec.rng.choice(DEVICE_TYPES)


def _curve(points: list[tuple[float, float]], steps: int = 6) -> list[tuple[float, float]]:
    """Smooth a polyline by Chaikin corner cutting, so tubes and leads bend gently."""
    for _ in range(steps // 3):
        out = [points[0]]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            out.append((0.75 * x0 + 0.25 * x1, 0.75 * y0 + 0.25 * y1))
            out.append((0.25 * x0 + 0.75 * x1, 0.25 * y0 + 0.75 * y1))
        points = out + [points[-1]]
    return points


def draw_device(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Pacemaker (generator + leads), central line, endotracheal or nasogastric tube."""
    kind = device_type(spec)
    rng = spec.rng
    carina_y = p.hilum_y - 0.06
    heart_y = p.dome_y["right"] - p.heart_up
    lines: list = []
    boxes: list = []
    if kind == "pacemaker":
        sg = side_sign(spec.sides[0])
        bx, by = 0.5 + sg * rng.uniform(0.2, 0.27), p.clav_y + rng.uniform(0.03, 0.07)
        boxes.append(((bx - 0.035, by - 0.025, bx + 0.035, by + 0.025), 1.0))
        for end_dx, end_y in ((0.02, heart_y - 0.02), (0.06, heart_y + 0.04)):
            # Generator -> subclavian vein -> SVC -> right atrium / ventricle.
            path = [
                (bx, by),
                (bx - sg * 0.08, by - 0.02),
                (0.5 - 0.04, p.clav_y + 0.06),
                (0.5 - 0.05, heart_y - 0.1),
                (0.5 + end_dx, end_y),
            ]
            lines.append((_curve(path), 0.006, 0.9))
    elif kind == "central line":
        sg = side_sign(spec.sides[0])
        # Subclavian vein -> brachiocephalic -> tip in the SVC.
        path = [
            (0.5 + sg * 0.3, p.clav_y - 0.01),
            (0.5 + sg * 0.12, p.clav_y + 0.03),
            (0.5 - 0.04, p.clav_y + 0.06),
            (0.5 - 0.04, carina_y + rng.uniform(0.0, 0.06)),
        ]
        lines.append((_curve(path), 0.006, 0.8))
    elif kind == "endotracheal tube":
        tip = carina_y - rng.uniform(0.03, 0.07)
        for off in (-0.008, 0.008):
            lines.append(([(0.502 + off, 0.0), (0.505 + off, tip)], 0.004, 0.7))
        lines.append(([(0.505, tip - 0.09), (0.505, tip)], 0.008, 0.9))
    else:  # nasogastric tube: down the oesophagus, through the hiatus, into the stomach
        stomach = (0.5 + p.bubble[0], p.dome_y["left"] + p.bubble[1] + 0.03)
        path = [(0.49, 0.0), (0.49, p.dome_y["left"] - 0.05), (0.53, p.dome_y["left"] + 0.04), stomach]
        lines.append((_curve(path), 0.006, 0.8))
    layer = polyline_layer(g.size, lines, boxes)
    a += 0.9 * layer
    return layer


def draw_clips(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Surgical clips: a few short, very bright metal bars near the mediastinum."""
    rng = spec.rng
    lines = []
    for _ in range(rng.randint(3, 6)):
        x = 0.5 + rng.uniform(-0.12, 0.12)
        y = rng.uniform(p.y_apex + 0.15, p.dome_y["right"] + 0.05)
        ang = rng.uniform(0, math.pi)
        dx, dy = 0.008 * math.cos(ang), 0.008 * math.sin(ang)
        lines.append(([(x - dx, y - dy), (x + dx, y + dy)], 0.006, 1.0))
    layer = polyline_layer(g.size, lines)
    a += 1.0 * layer
    return layer


def draw_sternotomy(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Median sternotomy wires: small twisted loops stacked down the midline."""
    lines = []
    top, bottom = p.clav_y + 0.05, p.dome_y["right"] - 0.04
    count = spec.rng.randint(5, 7)
    for i in range(count):
        y = top + (bottom - top) * i / (count - 1)
        x = 0.5 + spec.rng.uniform(-0.01, 0.01)
        ring = [(x + 0.014 * math.cos(t), y + 0.007 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 11)]
        lines.append((ring, 0.004, 1.0))
    layer = polyline_layer(g.size, lines)
    a += 0.8 * layer
    return layer


def draw_fracture(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """A displaced lateral rib fracture: a lucent gap across one rib and a step in it."""
    mask = np.zeros_like(a)
    radius = 0.035
    for side in spec.sides:
        sg = side_sign(side)
        rib = spec.rng.randint(3, 7)
        dx = spec.rng.uniform(0.18, min(0.3, p.lat_w - 0.04))
        cx, cy = 0.5 + sg * dx, rib_center_y(p, dx, rib)
        if cy > float(diaphragm(g, p, side)[0, min(g.size - 1, int(cx * g.size))]):
            cy = rib_center_y(p, dx, 4)  # keep the fracture above the diaphragm, where it shows
        win = g.window(cx, cy, radius)
        gx, gy = g.x[:, win[1]], g.y[win[0]]
        dist = np.sqrt(np.square(gx - cx) + np.square(gy - cy))
        taper = np.clip((radius - dist) / (0.5 * radius), 0.0, 1.0)
        # The lateral fragment is displaced downward; the fracture line runs across the rib.
        step = (0.007, 0.011, 0.016)[spec.level] * ramp(sg * (gx - cx), g.px) * taper
        moved = rib_density(g, p, gx, gy - step)
        intact = rib_density(g, p, gx, gy)
        ang = math.radians(spec.rng.uniform(60.0, 80.0))
        across = np.abs((gx - cx) * math.cos(ang) * sg + (gy - cy) * math.sin(ang))
        gap = ramp(max(0.003, 0.7 * g.px) - across, g.px) * taper
        a[win] += moved * (1.0 - gap) - intact
        mask[win] = np.maximum(mask[win], ramp(radius - dist, g.px))
    return mask
