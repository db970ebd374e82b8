"""The simplified lateral view of the chest phantom.

Orientation: the patient faces the image left, so anterior (sternum) is on the
left and the spine on the right; both lungs overlap into one lucent field. The
lateral shares the PA's patient (the same :class:`Anatomy`, so the same heart size,
diaphragm height and exposure) and draws a subset of findings: cardiomegaly,
hyper-/hypoinflation, effusion (in the posterior costophrenic sulcus, where fluid
collects first), airspace disease, edema, round lesions, atelectasis and devices.
Pneumothorax, fractures and scoliosis are not drawn on this view, and get no mask.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from flamingo_lib.data.phantom.anatomy import Anatomy
from flamingo_lib.data.phantom.film import expose, warp, warp_mask
from flamingo_lib.data.phantom.lesions import ZONE_DEPTH, Spec
from flamingo_lib.data.phantom.raster import Grid, ellipse_radius, grid, polyline_layer, ramp

_ANTERIOR, _POSTERIOR = 0.2, 0.8  # lung field limits, canonical x
_LUNG_KINDS = {"opacity", "consolidation", "pneumonia", "nodule", "mass", "granuloma", "atelectasis", "scarring"}


def _dome(p: Anatomy, x: np.ndarray) -> np.ndarray:
    """The hemidiaphragms seen side-on: highest in front of centre, deepest at the back."""
    top = min(p.dome_y.values())
    curv = p.dome_flat * (p.cp_drop + 0.05) / 0.13
    return top + curv * np.square(x - 0.42) + 0.05 * np.clip(x - 0.42, 0.0, None)


def _lung(g: Grid, p: Anatomy) -> np.ndarray:
    """Both lungs superimposed: the upper half of an ellipse, closed below by the domes."""
    bottom = float(_dome(p, np.float32(0.42)))
    r = ellipse_radius(g.x, g.y, 0.5, bottom, 0.5 * (_POSTERIOR - _ANTERIOR), bottom - p.y_apex, 0.0)
    return ramp((1.0 - r) * 0.2, g.px) * ramp(_dome(p, g.x) - g.y, g.px)


def _lesion(g: Grid, p: Anatomy, spec: Spec, lung: np.ndarray) -> np.ndarray:
    """A blob at the finding's zone height; its front-to-back position is free."""
    rng = spec.rng
    zone = spec.zone if spec.zone in ZONE_DEPTH else rng.choice(("upper", "middle", "lower"))
    lo, hi = ZONE_DEPTH[zone]
    cy = p.y_apex + rng.uniform(lo, hi) * (p.dome_y["right"] - p.y_apex)
    cx = rng.uniform(0.35, 0.72)
    radius = {"nodule": 0.018, "granuloma": 0.008, "mass": 0.055, "atelectasis": 0.03, "scarring": 0.03}.get(
        spec.kind, 0.07
    )
    flat = 0.3 if spec.kind in ("atelectasis", "scarring") else 1.0
    r = ellipse_radius(g.x, g.y, cx, cy, radius, radius * flat, rng.uniform(-0.3, 0.3))
    sharp = spec.kind in ("nodule", "mass", "granuloma", "atelectasis", "scarring")
    field = ramp(1.0 - r, 2.0 * g.px / radius) if sharp else np.exp(-2.0 * r * r)
    return field * lung


def _mottle(seed: int, size: int) -> np.ndarray:
    coarse = np.random.default_rng([seed, 4]).standard_normal((14, 14)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def render_lateral(
    specs: list[Spec], p: Anatomy, seed: int, size: int
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Render the lateral view of patient ``p`` with ``specs``; same contract as the PA renderer."""
    g = grid(size)
    x, y, px = g.x, g.y, g.px
    body = np.sqrt(np.clip(1.0 - np.square((x - 0.5) / 0.4), 0.0, 1.0)) * ramp(0.4 - np.abs(x - 0.5), px, 2.0)
    lung = _lung(g, p)
    heart_y = p.dome_y["right"] - p.heart_up + 0.01
    scale = p.heart_a / 0.16
    heart_x, heart_a, heart_b = 0.36 + 0.03 * (scale - 1), 0.15 * scale, 0.12 * (1 + 0.5 * (scale - 1))
    heart_r = ellipse_radius(x, y, heart_x, heart_y, heart_a, heart_b, -0.6)
    heart = ramp(1.0 - heart_r, px / 0.12) * ramp(_dome(p, x) + 0.03 - y, px, 2.0)
    phase = (y - p.y_apex) / 0.05
    vertebrae = ramp(0.035 - np.abs(x - 0.75), px) * (0.7 + 0.3 * (np.cos(2 * math.pi * phase) < 0.8))
    sternum = ramp(0.008 - np.abs(x - (0.17 + 0.05 * y)), px) * (y > p.y_apex + 0.08) * (y < heart_y + 0.05)
    trachea = polyline_layer(size, [([(0.5, 0.0), (0.55, p.hilum_y - 0.04)], 0.03, 1.0)])
    depth = 0.8 + 0.2 * np.clip((y - p.y_apex) / 0.3, 0.0, 1.0)
    air = lung * depth * (1.0 - 0.85 * heart)
    hilum = np.exp(-(np.square((x - 0.55) / 0.05) + np.square((y - p.hilum_y) / 0.07)))
    a = 1.25 * body - p.air * air + 0.25 * heart + 0.35 * vertebrae + 0.3 * sternum - 0.2 * trachea * body
    a += 0.25 * hilum * lung + 0.03 * _mottle(seed, size) * lung

    soft: dict[str, np.ndarray] = {}
    for spec in specs:
        field = None
        if spec.kind == "cardiomegaly":
            field = heart
        elif spec.kind in ("hyperinflation", "hypoinflation"):
            field = lung
        elif spec.kind == "effusion":
            level = (0.05, 0.11, 0.2)[spec.level]
            surface = _dome(p, x) - level - 0.05 * np.clip((x - 0.45) / 0.35, 0.0, 1.0)
            field = ramp(y - surface, px, 3.0) * lung * (x > 0.45)
            a += p.air * depth * field
        elif spec.kind in _LUNG_KINDS or spec.kind == "edema":
            if spec.kind == "edema":
                r = ellipse_radius(x, y, 0.55, p.hilum_y + 0.03, 0.16, 0.14, 0.0)
                field = np.exp(-1.5 * r * r) * lung
            else:
                field = _lesion(g, p, spec, lung)
            solid = {"opacity": 0.4, "edema": 0.4, "nodule": 0.35, "granuloma": 0.3}.get(spec.kind, 0.75)
            a += p.air * depth * field * solid + (0.5 * field if spec.kind == "granuloma" else 0.0)
        elif spec.kind in ("device", "clips", "sternotomy"):
            lines = [([(0.52, 0.0), (0.54, p.hilum_y - 0.05)], 0.006, 1.0)]
            if spec.kind == "sternotomy":
                rows = np.linspace(0.3, 0.55, 5)
                lines = [([(0.16 + 0.05 * t, t), (0.19 + 0.05 * t, t)], 0.006, 1.0) for t in rows]
            field = polyline_layer(size, lines)
            a += 0.9 * field
        if field is not None:
            soft[spec.name] = np.maximum(soft[spec.name], field) if spec.name in soft else field
    image = expose(warp(a, p, size), p, seed)
    masks = {name: warp_mask(m, p, size) for name, m in soft.items() if m.max() > 0.5}
    return image, masks
