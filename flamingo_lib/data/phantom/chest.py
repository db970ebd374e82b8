"""The normal chest of one patient rendered into attenuation layers (PA view).

The image is built from attenuation layers added together (soft tissue, air in the
lungs and airways, heart, mediastinum, bone, vessels); the renderer maps their sum
to brightness with ``1 - exp(-k * A)``, so overlapping structures combine the way
they do on film (the spine shows faintly through the heart, a rib over a nodule is
brighter than either). Findings read these layers and add to the same sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from flamingo_lib.data.phantom.anatomy import SIDES, Anatomy, diaphragm, lung_field, rib_density, side_sign
from flamingo_lib.data.phantom.raster import Grid, dome, ellipse_radius, polyline_layer, ramp


@dataclass
class Layers:
    """The anatomy layers of one image, kept apart so findings can read and edit them.

    Attributes:
        lungs: soft lung field per patient side.
        lung_depth: relative air depth (0-1) where there is lung, less behind the heart
            and mediastinum; multiply by a lung field.
        heart: soft heart silhouette (used as the cardiomegaly mask).
        vessels: pulmonary vessel attenuation, already confined to the lungs.
        ribs: rib attenuation (fractures edit it locally).
        spine: soft spine column (the scoliosis mask).
        rest: every other layer summed (body, mediastinum, bones, airways, air).
    """

    lungs: dict[str, np.ndarray]
    lung_depth: np.ndarray
    heart: np.ndarray
    vessels: np.ndarray
    ribs: np.ndarray
    spine: np.ndarray
    rest: np.ndarray

    def total(self) -> np.ndarray:
        """The summed attenuation map."""
        return self.rest + self.ribs + self.vessels


def _vessel_lines(p: Anatomy) -> list[tuple[list[tuple[float, float]], float, float]]:
    """Branching pulmonary vessel trees radiating from each hilum, tapering outward.

    Every branch splits in two, level by level, vectorised over the whole level.
    """
    rng = np.random.default_rng([p.seed, 2])
    lines: list[tuple[list[tuple[float, float]], float, float]] = []
    base = np.radians(np.linspace(-120.0, 100.0, 10))
    for side in SIDES:
        sg = side_sign(side)
        n = base.size
        x = np.full(n, 0.5 + sg * p.hilum_dx)
        y = np.full(n, p.hilum_y)
        ang = base + np.radians(rng.uniform(-10.0, 10.0, n))
        length = rng.uniform(0.07, 0.1, n)
        width, value = 0.012, 1.0
        for _level in range(3):
            x1 = x + sg * np.cos(ang) * length
            y1 = y + np.sin(ang) * length
            lines.extend(([(a, b), (c, d)], width, value) for a, b, c, d in zip(x, y, x1, y1))
            spread = np.radians(rng.uniform(12.0, 30.0, 2 * x.size)) * np.tile([-1.0, 1.0], x.size)
            x, y = np.repeat(x1, 2), np.repeat(y1, 2)
            ang = np.repeat(ang, 2) + spread
            length = np.repeat(length, 2) * rng.uniform(0.6, 0.8, 2 * x1.size)
            width, value = width * 0.7, value * 0.85
    return lines


def _body(g: Grid, p: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue thickness of the body, and its half-width per row.

    An elliptic cylinder: the neck at the top widens over the shoulders (which run
    off the film) and settles to the chest wall lower down.
    """
    shoulder = np.clip(g.y / 0.12, 0.0, 1.0)
    shoulder = shoulder * shoulder * (3.0 - 2.0 * shoulder)
    settle = np.clip((g.y - 0.22) / 0.2, 0.0, 1.0)
    half = 0.15 + (0.56 - 0.15) * shoulder - (0.56 - p.body_w - 0.045) * settle
    dx = np.abs(g.x - 0.5)
    return np.sqrt(np.clip(1.0 - np.square(dx / half), 0.0, 1.0)) * ramp(half - dx, g.px), half


def _heart(g: Grid, p: Anatomy, above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft heart silhouette and heart thickness, cut off by the diaphragm below.

    Evaluated only inside the heart's bounding window, about a quarter of the image.
    """
    cx, cy = 0.5 + p.heart_dx, p.dome_y["right"] - p.heart_up
    rows, cols = g.window(cx, cy, max(p.heart_a, p.heart_b))
    silhouette = np.zeros((g.size, g.size), np.float32)
    thickness = np.zeros_like(silhouette)
    r = ellipse_radius(g.x[:, cols], g.y[rows], cx, cy, p.heart_a, p.heart_b, p.heart_tilt)
    silhouette[rows, cols] = ramp((1.0 - r) * p.heart_b, g.px) * above[rows, cols]
    thickness[rows, cols] = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)) * above[rows, cols]
    return silhouette, thickness


def _mediastinum(g: Grid, p: Anatomy, above: np.ndarray) -> np.ndarray:
    """Upper mediastinum widening down to the heart, with the aortic knob bulging left."""
    x, y = g.x, g.y
    heart_top = p.dome_y["right"] - p.heart_up
    half = p.med_w + 0.035 * np.clip((y - p.y_apex) / (heart_top - p.y_apex), 0.0, 1.0)
    band = ramp(half - np.abs(x - 0.505), g.px, 2.0) * above
    knob_y = p.y_apex + 0.16
    knob_dist = np.sqrt(np.square(x - 0.5 - p.med_w - 0.004) + np.square(y - knob_y))
    return np.maximum(band, ramp(p.knob_r - knob_dist, g.px, 2.0))


def _vessels(g: Grid, p: Anatomy, lung: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Vessel trees plus the hilar shadows, fading towards the lung periphery."""
    # Drawn at half resolution and upsampled: vessels are soft-edged, not wire-like.
    half_res = polyline_layer(g.size // 2, _vessel_lines(p))
    tree = np.asarray(Image.fromarray(half_res).resize((g.size, g.size), Image.Resampling.BILINEAR))
    vessels = tree * (p.vessel * lung * (1.0 - 0.6 * lateral))
    for side in SIDES:
        hx = 0.5 + side_sign(side) * p.hilum_dx
        rows, cols = g.window(hx, p.hilum_y, 0.07)
        r2 = np.square(g.x[:, cols] - hx) + np.square(g.y[rows] - p.hilum_y)
        vessels[rows, cols] += 0.16 * np.exp(-r2 * (1.0 / (2 * 0.022**2))) * lung[rows, cols]
    return vessels


def _airway(g: Grid, p: Anatomy) -> np.ndarray:
    """Trachea and main bronchi (air, so they darken the mediastinum)."""
    carina = (0.505, p.hilum_y - 0.06)
    return polyline_layer(
        g.size,
        [
            ([(0.502, 0.0), carina], 0.032, 1.0),
            ([carina, (0.5 - 0.7 * p.hilum_dx, p.hilum_y - 0.01)], 0.02, 0.8),
            ([carina, (0.5 + 0.75 * p.hilum_dx, p.hilum_y + 0.005)], 0.018, 0.8),
        ],
    )


def _spine(g: Grid, p: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Soft spine column (the scoliosis mask) and its density with darker disc spaces."""
    x, y = g.x, g.y
    centre = 0.5 + p.scoliosis * np.sin(2.0 * np.pi * (y - p.y_apex) / 0.9 + p.scol_phase)
    disc = np.clip((np.cos(2.0 * np.pi * (y - p.y_apex) / 0.047) - 0.75) * 4.0, 0.0, 1.0)
    column = ramp(p.spine_w - np.abs(x - centre), g.px, 2.0)
    density = np.sqrt(np.clip(1.0 - np.square((x - centre) / p.spine_w), 0.0, 1.0)) * (1.0 - 0.45 * disc)
    return column, density


def _clavicles(g: Grid, p: Anatomy) -> np.ndarray:
    """Clavicles rising laterally from the sternal ends, thickest medially."""
    dx = np.abs(g.x - 0.5)
    cdx = dx - 0.035
    centre = p.clav_y - 0.36 * cdx + 0.3 * cdx * cdx
    half = 0.015 + 0.006 * np.exp(-cdx / 0.03)
    return dome(g.y - centre, half) * ramp(cdx, g.px, 2.0) * ramp(0.30 - dx, g.px, 4.0)


def _extras(g: Grid, p: Anatomy, below: np.ndarray) -> np.ndarray:
    """Breast shadows over the lower zones (some patients) and the gastric bubble."""
    x, y = g.x, g.y
    extra = np.zeros((g.size, g.size), np.float32)
    base_y = float(below.mean())
    if p.breast > 0.0:
        for side in SIDES:
            bx, by = 0.5 + side_sign(side) * 0.24, base_y - 0.1
            rows, cols = g.window(bx, by, 0.17)
            r = ellipse_radius(x[:, cols], y[rows], bx, by, 0.16, 0.11, 0.0)
            # Sharp rounded lower border, fading out upward over the chest wall.
            fade = np.clip((y[rows] - by + 0.1) / 0.1, 0.0, 1.0)
            extra[rows, cols] += p.breast * ramp((1.0 - r) * 0.11, g.px, 2.0) * fade
    # Air in the stomach under the left hemidiaphragm, with a flat fluid level.
    gx, gy = 0.5 + p.bubble[0], p.dome_y["left"] + p.bubble[1]
    rows, cols = g.window(gx, gy, 0.05)
    r = ellipse_radius(x[:, cols], y[rows], gx, gy, 0.05, 0.03, 0.0)
    extra[rows, cols] -= 0.25 * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)) * (y[rows] < gy + 0.008)
    return extra


def render_anatomy(g: Grid, p: Anatomy) -> Layers:
    """Render the normal chest of ``p`` into separate attenuation layers."""
    dx = np.abs(g.x - 0.5)
    below = diaphragm(g, p)
    above = ramp(below - g.y, g.px, 2.0)
    body, half = _body(g, p)
    lungs = {side: lung_field(g, p, side) for side in SIDES}
    lung = lungs["right"] + lungs["left"]
    heart, heart_thick = _heart(g, p, above)
    med = _mediastinum(g, p, above)

    # Lungs are thinnest at the apex and towards the lateral wall, so brighter there;
    # the heart and mediastinum displace most of the air in front of and behind them.
    t = np.clip((g.y - p.y_apex) / p.apex_h, 0.0, 1.0)
    lateral = np.clip((dx - p.med_dx) / p.lat_w, 0.0, 1.0)
    depth = (0.5 + 0.5 * np.sqrt(t)) * (1.0 - 0.5 * lateral**3) * (1.0 - np.maximum(0.8 * heart, 0.9 * med))

    # Low-frequency parenchymal mottle, drawn small and upsampled (cheap).
    coarse = np.random.default_rng([p.seed, 1]).standard_normal((14, 14)).astype(np.float32)
    mottle = np.asarray(Image.fromarray(coarse).resize((g.size, g.size), Image.Resampling.BICUBIC))

    spine, spine_density = _spine(g, p)
    rest = (
        body
        - p.air * lung * depth
        + 0.03 * mottle * lung
        + 0.2 * heart_thick
        + 0.15 * med
        - 0.3 * _airway(g, p) * body
        + 0.18 * spine_density
        + 0.28 * _clavicles(g, p)
        + _extras(g, p, below)
    )
    # Below the diaphragm dense soft tissue all but hides the ribs.
    ribs = rib_density(g, p, g.x, g.y) * ramp(half - dx, g.px) * (0.45 + 0.55 * above)
    return Layers(
        lungs=lungs,
        lung_depth=depth,
        heart=heart,
        vessels=_vessels(g, p, lung, lateral),
        ribs=ribs,
        spine=spine,
        rest=rest.astype(np.float32),
    )
