"""One phantom patient's anatomy: the random body shape, pose and exposure, and its geometry.

Radiological convention: a PA film is viewed as if facing the patient, so the
patient's **right is on the image left**. :func:`side_sign` turns a patient side
into the direction of x on the image (-1 right, +1 left).

The geometry functions (lung outline, diaphragm, rib positions) are shared by the
normal-chest renderer (:mod:`~flamingo_lib.data.phantom.chest`) and the findings,
which must land inside the lungs and on the ribs they describe.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from flamingo_lib.data.phantom.raster import Grid, ramp

SIDES: tuple[str, str] = ("right", "left")

# Radius of the rounded tip of each lung apex, canonical units.
_APEX_CAP = 0.035


def side_sign(side: str) -> float:
    """Image x direction of a patient side on a PA film: -1 for right, +1 for left."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return -1.0 if side == "right" else 1.0


@dataclass(frozen=True)
class Anatomy:
    """One patient's body shape, pose and exposure, in canonical units (fractions of the image).

    ``dx`` quantities are distances from the midline; ``y`` grows downward. Fields
    are drawn by :func:`sample_anatomy`; findings such as cardiomegaly or
    hyperinflation change them with :func:`dataclasses.replace` before rendering.
    """

    body_w: float  # skin half-width at the level of the lungs
    wall: float  # chest wall (skin to lung edge) thickness
    y_apex: float  # top of the lung apices
    apex_dx: float  # lateral offset of the apex tip from the midline
    apex_h: float  # height over which a lung widens to its full breadth
    med_dx: float  # medial lung edge, hidden behind the mediastinum
    dome_y: dict[str, float]  # top of each hemidiaphragm dome, by patient side
    dome_peak: float  # dx of the highest point of each dome
    cp_drop: float  # depth of the costophrenic angle below the dome top
    dome_flat: float  # scales dome curvature; < 1 flattens it
    heart_dx: float  # heart centre offset towards the patient's left
    heart_up: float  # heart centre height above the right dome
    heart_a: float  # heart semi-axis along its long (tilted) axis
    heart_b: float  # heart semi-axis across it
    heart_tilt: float  # radians; positive points the apex down to the image right
    med_w: float  # upper mediastinum half-width
    knob_r: float  # aortic knob radius
    hilum_dx: float
    rib_top: float
    rib_len: float
    rib_slope: float
    rib_curv: float
    clav_y: float
    spine_w: float
    scoliosis: float  # lateral spine deviation amplitude; 0 is straight
    scol_phase: float
    air: float  # lung air depth: how dark the lungs are
    vessel: float  # vessel conspicuity
    breast: float  # lower-zone soft-tissue shadow strength (0 for most)
    bubble: tuple[float, float]  # gastric bubble offset (dx right of midline, dy below left dome)
    gain: float  # exposure: k in 1 - exp(-k A)
    lo: float  # display window
    hi: float
    gamma: float
    noise: float  # quantum noise sd in display units
    rot: float  # patient rotation, radians
    scale: float
    shift: tuple[float, float]
    seed: int = field(default=0)  # drives texture, vessels and noise

    @property
    def lat_w(self) -> float:
        """dx of the lateral lung edge at the base."""
        return self.body_w - self.wall

    @property
    def hilum_y(self) -> float:
        """Height of the hila, a fixed fraction down the lung."""
        return self.y_apex + 0.40 * (self.dome_y["right"] - self.y_apex)


def sample_anatomy(rng: random.Random, seed: int) -> Anatomy:
    """Draw one patient's anatomy, pose and exposure from ``rng``."""
    u = rng.uniform
    y_apex = u(0.09, 0.15)
    dome_r = u(0.64, 0.72)
    body_w = u(0.37, 0.43)
    return Anatomy(
        body_w=body_w,
        wall=u(0.025, 0.04),
        y_apex=y_apex,
        apex_dx=u(0.10, 0.13),
        apex_h=u(0.7, 0.9) * (dome_r - y_apex),
        med_dx=u(0.03, 0.045),
        dome_y={"right": dome_r, "left": dome_r + u(0.005, 0.035)},
        dome_peak=u(0.14, 0.19),
        cp_drop=u(0.05, 0.09),
        dome_flat=1.0,
        heart_dx=u(0.03, 0.055),
        heart_up=u(0.08, 0.105),
        heart_a=u(0.15, 0.175),
        heart_b=u(0.11, 0.13),
        heart_tilt=u(0.3, 0.55),
        med_w=u(0.055, 0.07),
        knob_r=u(0.024, 0.034),
        hilum_dx=u(0.085, 0.11),
        rib_top=y_apex - u(0.04, 0.06),
        rib_len=u(0.62, 0.72),
        rib_slope=u(0.3, 0.5),
        rib_curv=u(2.4, 3.2),
        clav_y=y_apex + u(0.07, 0.1),
        spine_w=u(0.028, 0.036),
        scoliosis=0.0,
        scol_phase=u(-0.4, 0.4),
        air=u(0.55, 0.7),
        vessel=u(0.13, 0.18),
        breast=u(0.08, 0.16) if rng.random() < 0.4 else 0.0,
        bubble=(u(0.1, 0.2), u(0.05, 0.08)),
        gain=u(1.3, 1.7),
        lo=u(0.2, 0.3),
        hi=u(0.97, 1.04),
        gamma=u(0.85, 1.2),
        noise=u(0.008, 0.025),
        rot=math.radians(u(-4.0, 4.0)),
        scale=u(0.93, 1.04),
        shift=(u(-0.025, 0.025), u(-0.03, 0.03)),
        seed=seed,
    )


def lung_span(p: Anatomy, side: str, y: np.ndarray | float, inset: float = 0.0) -> tuple:
    """Medial and lateral edge (as dx) of one lung at height ``y``.

    The lateral edge widens from the apex to the costophrenic angle, the medial edge
    runs down behind the mediastinum; a small semicircular cap makes the apex a
    rounded dome rather than a pointed arch. ``inset`` pulls the apex down and the
    lateral edge in (a collapsing lung), most at the apex, where pneumothorax air
    gathers in an upright patient.
    """
    y_apex = p.y_apex + inset
    t = np.clip((y - y_apex) / p.apex_h, 0.0, 1.0)
    c = np.clip((y - y_apex) / _APEX_CAP, 0.0, 1.0)
    cap = _APEX_CAP * np.sqrt(c * (2.0 - c))
    depth_down = np.clip((y - y_apex) / (p.dome_y[side] - y_apex), 0.0, 1.0)
    lat = p.apex_dx + cap + (p.lat_w - p.apex_dx - _APEX_CAP) * (1.0 - np.square(1.0 - t))
    lat = lat - inset * (1.0 - 0.6 * depth_down)
    tm = np.clip(3.0 * t, 0.0, 1.0)
    med = p.apex_dx - cap - (p.apex_dx - _APEX_CAP - p.med_dx) * (1.0 - np.square(1.0 - tm))
    return med, lat


def lung_field(g: Grid, p: Anatomy, side: str, inset: float = 0.0) -> np.ndarray:
    """Soft ``(S, S)`` indicator of one lung (see :func:`lung_span`), closed below by its dome."""
    dx = (g.x - 0.5) * side_sign(side)
    med, lat = lung_span(p, side, g.y, inset)
    return ramp(dx - med, g.px) * ramp(lat - dx, g.px) * ramp(diaphragm(g, p, side) - g.y, g.px)


def diaphragm(g: Grid, p: Anatomy, side: str | None = None) -> np.ndarray:
    """Row vector ``(1, S)``: y of the hemidiaphragm under each column.

    With ``side=None`` each half of the image gets its own side's dome, which is what
    separates chest from abdomen.
    """
    curv = p.dome_flat * p.cp_drop / (p.lat_w - p.dome_peak) ** 2

    def one(s: str) -> np.ndarray:
        dx = (g.x - 0.5) * side_sign(s)
        return p.dome_y[s] + curv * np.square(dx - p.dome_peak)

    if side is not None:
        return one(side)
    return np.where(g.x < 0.5, one("right"), one("left"))


def rib_phase(p: Anatomy, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Posterior rib phase: rib ``k`` is centred where the phase equals ``k``.

    Posterior ribs rise from the spine, peak and fall laterally, the same parabola
    for every rib; the spacing widens downward, so the phase grows sub-linearly.
    """
    dx = np.abs(gx - 0.5)
    u = gy - p.rib_top - (-p.rib_slope * dx + p.rib_curv * dx * dx)
    return 10.0 * np.power(np.clip(u, 0.0, None) * (1.0 / p.rib_len), 0.8)


def rib_center_y(p: Anatomy, dx: float, k: float) -> float:
    """y of the centre line of posterior rib ``k`` at distance ``dx`` from the midline."""
    return p.rib_top + (-p.rib_slope * dx + p.rib_curv * dx * dx) + p.rib_len * (k / 10.0) ** 1.25


def rib_density(g: Grid, p: Anatomy, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Attenuation of the ribs (posterior arcs plus fainter anterior ones) at the given coordinates."""
    phase = rib_phase(p, gx, gy)
    sharp = 1.5 * g.size / 224.0
    band = np.clip((np.cos(2.0 * np.pi * phase) - 0.2) * sharp, 0.0, 1.0)
    dx = np.abs(gx - 0.5)
    span = np.clip((phase - 0.6) * 4.0, 0.0, 1.0) * np.clip((11.3 - phase) * 4.0, 0.0, 1.0)
    reach = ramp(dx - 0.03, g.px, 4.0) * ramp(p.body_w + 0.01 - dx, g.px, 3.0)
    # Cortical bone makes the rib margins a little brighter than its middle.
    cortex = band * (1.0 - band) * 4.0
    posterior = (0.11 * band + 0.06 * cortex) * span * reach
    # Anterior ribs run down and inwards from the lateral wall and fade where the
    # uncalcified costal cartilage takes over, so only their lateral halves show.
    lat = p.lat_w - dx
    ua = gy - p.rib_top - 0.1 - 0.55 * lat + 0.35 * lat * lat
    aphase = np.clip(ua, 0.0, None) * (6.0 / p.rib_len)
    aband = np.clip((np.cos(2.0 * np.pi * aphase) - 0.3) * sharp, 0.0, 1.0)
    afade = np.clip((dx - 0.12) / 0.12, 0.0, 1.0) * np.clip((aphase - 0.5) * 4.0, 0.0, 1.0) * (aphase < 6.2)
    return posterior + 0.045 * aband * afade * reach
