"""The ``embedded-*`` model names and their optional ``@scale=S,seed=N`` suffix (no heavy imports:
the config, the language and the vision loaders consult this on every model name).

``"embedded-tiny-biogpt"`` means the default pretraining (scale 1, seed 0);
``"embedded-tiny-biogpt@scale=4"`` a run four times longer. The string alone names the weights,
so a saved ``config.json`` reloads the encoders it was trained on whatever the environment says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Sentinels for the in-memory tiny models the tests and the demo build from a seed (no files).
TINY_RANDOM_LM = "tiny-random-biogpt"
TINY_RANDOM_VISION = "tiny-random-vit"
# Sentinels for frozen encoders pretrained in-project and cached on disk (built on first use by
# flamingo_lib.encoders, which registers their resolver with flamingo_lib.modeling.backbones.registry).
# An optional "@scale=S,seed=N" suffix picks a longer/shorter pretraining.
EMBEDDED_LM = "embedded-tiny-biogpt"
EMBEDDED_VISION = "embedded-tiny-vit"
EMBEDDED_SMOLLM2 = "embedded-smollm2"

SCALE_ENV = "FLAMINGO_PRETRAIN_SCALE"
PRETRAINED_HERE = (EMBEDDED_LM, EMBEDDED_VISION)  # pretrained in-project: take scale and seed
EMBEDDED = (*PRETRAINED_HERE, EMBEDDED_SMOLLM2)


@dataclass(frozen=True)
class Sentinel:
    """A parsed embedded model name."""

    name: str
    scale: float = 1.0
    seed: int = 0

    def __str__(self) -> str:
        params = [f"scale={self.scale:g}"] if self.scale != 1.0 else []
        params += [f"seed={self.seed}"] if self.seed != 0 else []
        return self.name + ("@" + ",".join(params) if params else "")


def parse_scale(text: str, source: str) -> float:
    """A pretraining scale: a finite number > 0.

    Raises:
        ValueError: naming ``source`` (where the text came from).
    """
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not (scale > 0 and scale != float("inf")):
        raise ValueError(f"{source}: the pretraining scale must be a number > 0, got {text!r}")
    return scale


def parse_sentinel(value: object) -> Sentinel | None:
    """The :class:`Sentinel` that ``value`` names, or None when it names no embedded model.

    Raises:
        ValueError: an ``embedded-*`` name with a malformed or unknown suffix.
    """
    if not isinstance(value, str):
        return None
    name, at, suffix = value.partition("@")
    if name not in EMBEDDED:
        return None
    if not at:
        return Sentinel(name)
    if name not in PRETRAINED_HERE:
        raise ValueError(f"{value!r}: {name!r} takes no '@' parameters")
    params: dict[str, str] = {}
    for item in suffix.split(","):
        key, eq, text = item.partition("=")
        if not eq or key not in ("scale", "seed") or key in params:
            raise ValueError(f"{value!r}: expected '{name}@scale=<number>,seed=<int>' (either or both)")
        params[key] = text
    seed = params.get("seed", "0")
    if not seed.lstrip("-").isdigit():
        raise ValueError(f"{value!r}: seed must be an integer, got {seed!r}")
    return Sentinel(name, parse_scale(params.get("scale", "1"), repr(value)), int(seed))


def env_scale() -> float:
    """``$FLAMINGO_PRETRAIN_SCALE`` (default 1)."""
    text = os.environ.get(SCALE_ENV, "").strip()
    return parse_scale(text, f"${SCALE_ENV}") if text else 1.0


def with_env_scale(value: object, scale: float | None = None) -> object:
    """A plain pretrained-here sentinel with ``scale`` (default ``$FLAMINGO_PRETRAIN_SCALE``)
    written into it (other values, and sentinels that already carry parameters, unchanged).

    Raises:
        ValueError: ``scale`` is not a number > 0.
    """
    if isinstance(value, str) and value in PRETRAINED_HERE:
        return str(Sentinel(value, env_scale() if scale is None else parse_scale(str(scale), "pretrain_scale")))
    return value
