"""Lung and pleural findings of the PA phantom, drawn onto the anatomy's attenuation map.

Each ``draw_*`` function adds its finding to the attenuation map ``a`` in place and
returns the finding's soft mask in ``[0, 1]`` (canonical frame); the renderer
thresholds and warps it into the ground-truth mask. Fluid, pus and tissue replace
air, so most findings *cancel* lung air (``layers.lung_depth``) where they lie
rather than simply brightening; that is what makes an effusion hide the dome and a
consolidation hide the vessels, as on a real film.

Where a finding is placed is given by a :class:`Spec` (resolved from a
:class:`~flamingo_lib.data.sample.Finding` by the renderer): which lungs, which
zone, how severe, and a private random stream for everything the terms leave open.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flamingo_lib.data.phantom.anatomy import Anatomy, lung_field, lung_span, side_sign
from flamingo_lib.data.phantom.chest import Layers
from flamingo_lib.data.phantom.raster import Grid, blur, polyline_layer, ramp


@dataclass
class Spec:
    """A finding resolved for drawing.

    Attributes:
        name: the finding's name (the key of its mask).
        kind: which drawing routine renders it.
        sides: the patient sides it affects (both for bilateral).
        zone: the lung zone, or ``None`` to let ``rng`` choose.
        level: 0 small/mild, 1 moderate, 2 large/severe.
        rng: private random stream, seeded from the image seed and the finding.
        source: the raw term, which devices read to pick a device type.
    """

    name: str
    kind: str
    sides: tuple[str, ...]
    zone: str | None
    level: int
    rng: random.Random
    source: str = ""


# Zone -> fraction of the way down the lung (apex 0, dome top 1) where a lesion may sit.
ZONE_DEPTH: dict[str, tuple[float, float]] = {
    "apex": (0.04, 0.14),
    "upper": (0.14, 0.34),
    "paratracheal": (0.18, 0.3),
    "middle": (0.38, 0.6),
    "hilum": (0.36, 0.46),
    "lower": (0.62, 0.82),
    "retrocardiac": (0.7, 0.85),
    "base": (0.8, 0.92),
    "costophrenic angle": (0.85, 0.95),
}


def place(
    p: Anatomy, spec: Spec, side: str, zones: tuple[str, ...] = ("upper", "middle", "lower")
) -> tuple[float, float]:
    """Choose a lesion centre ``(x, y)`` inside one lung, honouring the spec's zone."""
    rng = spec.rng
    zone = spec.zone if spec.zone in ZONE_DEPTH else rng.choice(zones)
    lo, hi = ZONE_DEPTH[zone]
    y = p.y_apex + rng.uniform(lo, hi) * (p.dome_y[side] - p.y_apex)
    med, lat = (float(v) for v in lung_span(p, side, y))
    if zone not in ("retrocardiac", "paratracheal", "hilum"):
        # Keep lesions off the heart shadow, where a faint one would be invisible.
        med = min(max(med, _heart_edge(p, side, y)), lat - 0.05)
    if zone == "hilum":
        dx = p.hilum_dx + rng.uniform(0.025, 0.045)
    elif zone in ("retrocardiac", "paratracheal"):
        dx = med + rng.uniform(0.01, 0.04)
    else:
        dx = med + rng.uniform(0.35, 0.8) * (lat - med)
    return 0.5 + side_sign(side) * dx, y


def _heart_edge(p: Anatomy, side: str, y: float) -> float:
    """dx of the heart's border on ``side`` (its widest extent), or 0 above the heart."""
    c, s = math.cos(p.heart_tilt), math.sin(p.heart_tilt)
    half_w = math.hypot(p.heart_a * c, p.heart_b * s)
    half_h = math.hypot(p.heart_a * s, p.heart_b * c)
    if y < p.dome_y["right"] - p.heart_up - 0.7 * half_h:
        return 0.0
    return half_w + side_sign(side) * p.heart_dx


_EVERYWHERE = (slice(None), slice(None))


def _fill(
    a: np.ndarray, p: Anatomy, layers: Layers, field: np.ndarray, solid: float, win: tuple = _EVERYWHERE
) -> None:
    """Replace a fraction ``field`` of the lung air (and its vessels) with soft tissue.

    ``solid`` is the fraction of the chest's air depth the finding fills; the small
    constant keeps a finding visible behind the heart, and the vessels fade because
    fluid-filled lung has the same density as blood (the silhouette sign).
    """
    a[win] += field * (p.air * layers.lung_depth[win] * solid + 0.04) - layers.vessels[win] * field * 0.8


def _texture(rng: random.Random, shape: tuple[int, int], cells: int = 5) -> np.ndarray:
    """Smooth random texture in ``[0, 1]`` of ``shape``, from a tiny upsampled noise grid."""
    small = np.random.default_rng(rng.getrandbits(32)).random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def draw_effusion(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Dependent pleural fluid: a meniscus rising laterally, blunting the costophrenic angle."""
    mask = np.zeros_like(a)
    height = (0.045, 0.1, 0.2)[spec.level]
    for side in spec.sides:
        dx = (g.x - 0.5) * side_sign(side)
        y_floor = p.dome_y[side] + p.cp_drop * p.dome_flat
        y_level = y_floor - height - spec.rng.uniform(0.0, 0.015)
        med, lat = lung_span(p, side, y_level)
        across = np.clip((dx - med) / (lat - med), 0.0, 1.0)
        # The meniscus: fluid climbs the lateral chest wall and lies lowest medially,
        # so a small effusion shows first as a blunted lateral costophrenic angle.
        surface = y_level - (0.02 + 0.03 * spec.level) * across * across + 0.06 * np.square(1.0 - across)
        rows = slice(max(0, int((y_level - 0.1) * g.size)), g.size)
        fluid = ramp(g.y[rows] - surface, g.px, 2.0 + 2.0 * spec.level) * layers.lungs[side][rows]
        fluid = fluid * (0.8 + 0.2 * np.clip((g.y[rows] - surface) / 0.05, 0.0, 1.0))
        _fill(a, p, layers, fluid, 1.0, (rows, slice(None)))
        mask[rows] = np.maximum(mask[rows], fluid)
    return mask


def _patch(
    g: Grid, p: Anatomy, spec: Spec, side: str, radius: float, blobs: int
) -> tuple[tuple[slice, slice], np.ndarray]:
    """A patchy airspace field (clustered Gaussian blobs x texture) in its window, peak ~1."""
    cx, cy = place(p, spec, side, ("upper", "middle", "lower", "lower"))
    win = g.window(cx, cy, 2.2 * radius)
    gx, gy = g.x[:, win[1]], g.y[win[0]]
    field = np.zeros((gy.shape[0], gx.shape[1]), np.float32)
    for _ in range(blobs):
        bx = cx + spec.rng.gauss(0.0, 0.5 * radius)
        by = cy + spec.rng.gauss(0.0, 0.5 * radius)
        s = radius * spec.rng.uniform(0.35, 0.6)
        field += np.exp(-(np.square(gx - bx) + np.square(gy - by)) * (1.0 / (2 * s * s)))
    field = np.clip(field * 0.9, 0.0, 1.0) * (0.55 + 0.45 * _texture(spec.rng, field.shape))
    return win, field


def draw_airspace(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Opacity (hazy), consolidation (dense, air bronchograms) or pneumonia (dense, patchy)."""
    mask = np.zeros_like(a)
    radius = (0.045, 0.065, 0.09)[spec.level]
    solid = {"opacity": 0.6, "consolidation": 0.95, "pneumonia": 0.85}[spec.kind]
    for side in spec.sides:
        win, field = _patch(g, p, spec, side, radius, 6 if spec.kind == "pneumonia" else 4)
        field = field * layers.lungs[side][win]
        if spec.kind != "opacity":
            field = np.clip(field * 1.3, 0.0, 1.0)
        _fill(a, p, layers, field, solid, win)
        if spec.kind == "consolidation":
            # Air bronchograms: airways stay dark inside the consolidated lung.
            cx, cy = (win[1].start + win[1].stop) / (2 * g.size), (win[0].start + win[0].stop) / (2 * g.size)
            lines = []
            for _ in range(3):
                ang = spec.rng.uniform(0, 2 * math.pi)
                length = spec.rng.uniform(0.5, 1.0) * radius
                tip = (cx + math.cos(ang) * length, cy + math.sin(ang) * length)
                lines.append(([(cx, cy), tip], 0.006, 1.0))
            air = polyline_layer(g.size, lines)[win]
            a[win] -= 0.35 * p.air * air * field * layers.lung_depth[win]
        mask[win] = np.maximum(mask[win], field)
    return mask


def draw_edema(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Bilateral perihilar ("bat-wing") haze with indistinct vessels and Kerley B lines."""
    lungs = layers.lungs["right"] + layers.lungs["left"]
    haze = np.zeros_like(a)
    spread = (0.07, 0.085, 0.1)[spec.level]
    for side in ("right", "left"):
        hx = 0.5 + side_sign(side) * (p.hilum_dx + 0.02)
        r2 = np.square((g.x - hx) / spread) + np.square((g.y - p.hilum_y - 0.03) / (1.3 * spread))
        haze = np.maximum(haze, np.exp(-0.5 * r2))
    haze = haze * lungs
    _fill(a, p, layers, haze, (0.4, 0.55, 0.7)[spec.level])
    # Interstitial fluid blurs the vessel margins inside the haze.
    a += (blur(layers.vessels, 1.5) - layers.vessels) * haze
    lines = []
    for side in ("right", "left"):
        sg = side_sign(side)
        for _ in range(3 + 2 * spec.level):
            y = p.dome_y[side] - spec.rng.uniform(0.01, 0.08)
            lat = float(lung_span(p, side, y)[1])
            lines.append(([(0.5 + sg * lat, y), (0.5 + sg * (lat - 0.03), y)], 0.004, 1.0))
    a += 0.1 * polyline_layer(g.size, lines) * lungs
    return haze


# Radius by severity level (small, moderate, large), canonical units.
_ROUND_RADIUS = {
    "nodule": (0.012, 0.017, 0.023),
    "mass": (0.04, 0.055, 0.07),
    "granuloma": (0.006, 0.008, 0.01),
}


def draw_round(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Nodule (small, round), mass (large, lobulated) or granuloma (tiny, calcified)."""
    mask = np.zeros_like(a)
    radius = _ROUND_RADIUS[spec.kind][spec.level]
    # A nodule replaces only the lung its own thickness spans, a small part of the
    # chest's depth, so it is far fainter than soft tissue; calcium adds a lot.
    solid = {"nodule": 0.4, "mass": 0.6, "granuloma": 0.3}[spec.kind]
    calcium = 0.6 if spec.kind == "granuloma" else 0.03
    # Granulomatous disease: several scattered granulomas per lung.
    count = 3 if spec.name == "granulomatous disease" else 1
    for side in [s for s in spec.sides for _ in range(count)]:
        cx, cy = place(p, spec, side)
        win = g.window(cx, cy, 1.3 * radius)
        gx, gy = g.x[:, win[1]], g.y[win[0]]
        dist = np.sqrt(np.square(gx - cx) + np.square(gy - cy))
        r = np.full_like(dist, radius)
        if spec.kind == "mass":
            theta = np.arctan2(gy - cy, gx - cx)
            f1, f2 = spec.rng.uniform(0, 2 * math.pi), spec.rng.uniform(0, 2 * math.pi)
            r = radius * (1.0 + 0.12 * np.sin(3 * theta + f1) + 0.07 * np.sin(5 * theta + f2))
        edge = 1.0 if spec.kind == "granuloma" else 2.0  # calcium is sharp, soft tissue less so
        body = np.sqrt(np.clip(1.0 - np.square(dist / r), 0.0, 1.0)) * ramp(r - dist, g.px, edge)
        body = np.sqrt(body)  # flatter top: a solid lesion, not a Gaussian blob
        _fill(a, p, layers, body, solid, win)
        a[win] += calcium * body
        # At least ~1.5 px across, so a granuloma keeps a mask at small image sizes.
        mask[win] = np.maximum(mask[win], ramp(np.maximum(r, 1.5 * g.px) - dist, g.px))
    return mask


def draw_atelectasis(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Plate-like (discoid) atelectasis: a thin, roughly horizontal band of collapsed lung.

    Scarring is drawn the same way, fainter and by default in the upper zones.
    """
    mask = np.zeros_like(a)
    half_len = (0.06, 0.08, 0.11)[spec.level]
    half_thick = (0.006, 0.009, 0.014)[spec.level]
    for side in spec.sides:
        scar = spec.kind == "scarring"
        zones = ("upper", "upper", "middle") if scar else ("lower", "lower", "middle", "base")
        cx, cy = place(p, spec, side, zones)
        tilt = spec.rng.uniform(-0.25, 0.25)
        win = g.window(cx, cy, half_len)
        gx, gy = g.x[:, win[1]], g.y[win[0]]
        c, s = math.cos(tilt), math.sin(tilt)
        along = ((gx - cx) * c + (gy - cy) * s) / half_len
        across = np.abs((gy - cy) * c - (gx - cx) * s)
        ends = np.clip((1.0 - np.abs(along)) * 3.0, 0.0, 1.0)  # tapered ends
        band = ramp(max(half_thick, g.px) - across, g.px, 2.0) * ends
        band = band * layers.lungs[side][win]
        _fill(a, p, layers, band, 0.55 if scar else 0.75, win)
        mask[win] = np.maximum(mask[win], band)
    return mask


def draw_pneumothorax(g: Grid, p: Anatomy, layers: Layers, a: np.ndarray, spec: Spec) -> np.ndarray:
    """Apical/lateral pleural air: a lucent rim with no lung markings and a thin pleural line."""
    mask = np.zeros_like(a)
    inset = (0.025, 0.05, 0.09)[spec.level]
    for side in spec.sides:
        whole = layers.lungs[side]
        collapsed = lung_field(g, p, side, inset)
        rim = np.clip(whole - collapsed, 0.0, 1.0)
        # The visceral pleural line: the collapsed lung's edge, only where air borders it.
        near = np.clip(blur(rim, 1.5) * 3.0, 0.0, 1.0)
        line = 4.0 * collapsed * (1.0 - collapsed) * near
        # Pleural air: no lung markings and darker than lung; the collapsed lung holds
        # less air, so it whitens a little with the size of the pneumothorax.
        a -= rim * (0.18 + layers.vessels)
        a += 0.12 * line + 0.06 * collapsed * spec.level
        mask = np.maximum(mask, rim)
    return mask
