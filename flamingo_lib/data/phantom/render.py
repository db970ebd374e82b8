"""Procedural chest radiograph phantom: draw a finding set onto a random patient.

:func:`render_phantom` turns structured findings (``Pleural Effusion/right/small``
parsed into a :class:`~flamingo_lib.data.sample.Finding`) into a frontal chest
radiograph together with a ground-truth mask per finding, so a model's grounding
can be checked pixel by pixel.

Conventions:

* PA view, radiological orientation: the patient's **right is on the image left**,
  so a left pleural effusion lies in the right half of the image.
* Only names in :data:`RENDERABLE_FINDINGS` are drawn; other findings are skipped
  and get no mask (the labels of :mod:`flamingo_lib.data.phantom.text` count only
  what was drawn).
* A missing side is drawn from the seed (bilateral findings such as edema ignore
  side); a missing severity means moderate; a missing zone is drawn from the seed.
* The image is a pure function of ``(findings, seed, image_size, view)``. The
  patient (anatomy, pose, exposure, noise) depends on the seed alone and each
  finding's randomness on the seed and its own name, so adding a finding changes
  nothing else on the film.
* Bump :data:`RENDERER_VERSION` whenever the pixels for a given input change;
  on-disk caches key on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from flamingo_lib.data.phantom import devices as dev
from flamingo_lib.data.phantom import lesions as les
from flamingo_lib.data.phantom.anatomy import SIDES, Anatomy, lung_field, sample_anatomy
from flamingo_lib.data.phantom.chest import Layers, render_anatomy
from flamingo_lib.data.phantom.film import expose, warp, warp_mask
from flamingo_lib.data.phantom.lateral import render_lateral
from flamingo_lib.data.phantom.raster import Grid, grid
from flamingo_lib.data.sample import Finding

RENDERER_VERSION = "1"
VIEWS: tuple[str, ...] = ("PA", "LATERAL")
MIN_IMAGE_SIZE = 32

#: Finding name (as parsed from IU MeSH terms) -> how it is drawn.
FINDING_KINDS: dict[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "effusion",
    "costophrenic angle blunting": "effusion",
    "opacity": "opacity",
    "airspace disease": "opacity",
    "infiltrate": "opacity",
    "consolidation": "consolidation",
    "pneumonia": "pneumonia",
    "edema": "edema",
    "nodule": "nodule",
    "mass": "mass",
    "granuloma": "granuloma",
    "granulomatous disease": "granuloma",
    "atelectasis": "atelectasis",
    "scarring": "scarring",
    "pneumothorax": "pneumothorax",
    "emphysema": "hyperinflation",
    "hyperinflation": "hyperinflation",
    "copd": "hyperinflation",
    "flattened diaphragm": "hyperinflation",
    "hypoinflation": "hypoinflation",
    "support device": "device",
    "surgical clips": "clips",
    "sutures": "sternotomy",
    "fracture": "fracture",
    "scoliosis": "scoliosis",
}

#: Exactly the finding names :func:`render_phantom` draws (and gives a mask).
RENDERABLE_FINDINGS: frozenset[str] = frozenset(FINDING_KINDS)

_LEVELS: dict[str, int] = {
    "minimal": 0, "trace": 0, "borderline": 0, "mild": 0, "small": 0,
    "moderate": 1,
    "large": 2, "severe": 2, "marked": 2, "extensive": 2, "massive": 2,
}  # fmt: skip

# Kinds whose side matters; the others are midline or always bilateral.
_SIDED = {"effusion", "opacity", "consolidation", "pneumonia", "nodule", "mass", "granuloma",
          "atelectasis", "scarring", "pneumothorax", "device", "fracture"}  # fmt: skip
# Names that mean "both lungs" when no side is given.
_BILATERAL_NAMES = {"granulomatous disease"}

_Draw = Callable[[Grid, Anatomy, Layers, np.ndarray, les.Spec], np.ndarray]
_DRAW: dict[str, _Draw] = {
    "effusion": les.draw_effusion,
    "opacity": les.draw_airspace,
    "consolidation": les.draw_airspace,
    "pneumonia": les.draw_airspace,
    "edema": les.draw_edema,
    "nodule": les.draw_round,
    "mass": les.draw_round,
    "granuloma": les.draw_round,
    "atelectasis": les.draw_atelectasis,
    "scarring": les.draw_atelectasis,
    "pneumothorax": les.draw_pneumothorax,
    "fracture": dev.draw_fracture,
    "clips": dev.draw_clips,
    "sternotomy": dev.draw_sternotomy,
    "device": dev.draw_device,  # last: metal lies over everything
}
_ORDER = {kind: i for i, kind in enumerate(_DRAW)}


def stable_seed(*parts: object) -> int:
    """A 63-bit integer from ``parts``, stable across runs and machines (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def severity_level(severity: str | None) -> int:
    """0 (small/mild), 1 (moderate, also when unstated or unknown) or 2 (large/severe)."""
    return _LEVELS.get((severity or "moderate").lower(), 1)


def resolve_findings(findings: Sequence[Finding], seed: int) -> list[les.Spec]:
    """Turn renderable findings into drawing specs; unrenderable ones are dropped.

    Raises:
        TypeError: if an item is not a :class:`Finding`.
    """
    specs: list[les.Spec] = []
    seen: Counter[str] = Counter()
    for finding in findings:
        if not isinstance(finding, Finding):
            raise TypeError(f"findings must be Finding objects, got {type(finding).__name__}")
        kind = FINDING_KINDS.get(finding.name)
        if kind is None:
            continue
        # Keyed by name and occurrence, not list position: other findings don't move this one.
        rng = random.Random(stable_seed(seed, finding.name, seen[finding.name]))
        seen[finding.name] += 1
        bilateral = finding.side == "bilateral" or finding.side is None and finding.name in _BILATERAL_NAMES
        if kind not in _SIDED or bilateral:
            sides: tuple[str, ...] = SIDES
        elif finding.side in SIDES:
            sides = (finding.side,)
        else:
            sides = (rng.choice(SIDES),)
        if kind == "device":
            sides = sides[:1]
        level = 0 if finding.name == "costophrenic angle blunting" else severity_level(finding.severity)
        specs.append(les.Spec(finding.name, kind, sides, finding.zone, level, rng, finding.source))
    return specs


def _modify_anatomy(p: Anatomy, specs: list[les.Spec]) -> Anatomy:
    """Apply findings that change the anatomy itself rather than adding to it.

    Each kind applies once, at its most severe level: IU often lists emphysema, COPD
    and hyperinflation together for one pair of overinflated lungs.
    """
    strongest: dict[str, les.Spec] = {}
    for spec in specs:
        if spec.kind not in _DRAW and spec.level >= getattr(strongest.get(spec.kind), "level", -1):
            strongest[spec.kind] = spec
    for spec in strongest.values():
        level = spec.level
        if spec.kind == "cardiomegaly":
            grow = (1.2, 1.32, 1.48)[level]
            p = dataclasses.replace(
                p,
                heart_a=p.heart_a * grow,
                heart_b=p.heart_b * (1 + 0.5 * (grow - 1)),
                heart_dx=p.heart_dx + 0.02 * (level + 1),  # the left ventricle grows leftward
            )
        elif spec.kind == "hyperinflation":
            drop = (0.04, 0.06, 0.08)[level]
            p = dataclasses.replace(
                p,
                dome_y={s: y + drop for s, y in p.dome_y.items()},
                dome_flat=0.35,
                air=p.air * 1.15,
                vessel=p.vessel * 0.7,
                heart_a=p.heart_a * 0.85,
                heart_up=p.heart_up - 0.02,
                heart_tilt=p.heart_tilt + 0.35,
            )
        elif spec.kind == "hypoinflation":
            rise = (0.04, 0.06, 0.08)[level]
            domes = {s: y - rise for s, y in p.dome_y.items()}
            p = dataclasses.replace(p, dome_y=domes, apex_h=p.apex_h - rise)
        elif spec.kind == "scoliosis":
            p = dataclasses.replace(p, scoliosis=(0.02, 0.03, 0.045)[level] * spec.rng.choice((-1.0, 1.0)))
    return p


def _anatomic_mask(g: Grid, layers: Layers, kind: str, normal: Anatomy) -> np.ndarray:
    """Mask of a finding that reshapes anatomy: the heart, the spine, or the lungs.

    Hyperinflation marks the (enlarged) lungs. Hypoinflation marks the lungs at the
    patient's normal volume, which includes the lung the raised diaphragm took away.
    """
    if kind == "cardiomegaly":
        return layers.heart
    if kind == "scoliosis":
        return layers.spine
    if kind == "hypoinflation":
        return lung_field(g, normal, "right") + lung_field(g, normal, "left")
    return layers.lungs["right"] + layers.lungs["left"]


def _check(seed: int, image_size: int, view: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    integral = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not integral or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


def render_phantom(
    findings: Sequence[Finding], *, seed: int, image_size: int = 224, view: str = "PA"
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Render a chest radiograph showing ``findings`` on the patient drawn from ``seed``.

    Args:
        findings: structured findings; names outside :data:`RENDERABLE_FINDINGS` are skipped.
        seed: chooses the patient and every detail the findings leave open.
        image_size: side of the square image in pixels (at least :data:`MIN_IMAGE_SIZE`).
        view: ``"PA"`` (frontal, with masks) or ``"LATERAL"`` (simpler; masks for the
            findings it draws).

    Returns:
        The image (mode ``"L"``) and finding name -> boolean ``(H, W)`` mask of where
        it was drawn (several findings with one name share one mask).

    Raises:
        ValueError: for an unknown view or a too-small ``image_size``.
        TypeError: for a non-integer seed or a non-:class:`Finding` item.
    """
    _check(seed, image_size, view)
    seed = int(seed) % (1 << 63)
    size = int(image_size)
    specs = resolve_findings(findings, seed)
    normal = sample_anatomy(random.Random(seed), seed)
    p = _modify_anatomy(normal, specs)
    if view == "LATERAL":
        return render_lateral(specs, p, seed, size)
    g = grid(size)
    layers = render_anatomy(g, p)
    a = layers.total()
    soft: dict[str, np.ndarray] = {}
    for spec in sorted(specs, key=lambda s: _ORDER.get(s.kind, -1)):
        draw = _DRAW.get(spec.kind)
        mask = draw(g, p, layers, a, spec) if draw else _anatomic_mask(g, layers, spec.kind, normal)
        soft[spec.name] = np.maximum(soft[spec.name], mask) if spec.name in soft else mask
    image = expose(warp(a, p, size), p, seed)
    return image, {name: warp_mask(m, p, size) for name, m in soft.items()}
