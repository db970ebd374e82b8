"""Which embedded encoder build a Flamingo was trained on, recorded in its config and checked on load.

An ``embedded-*`` sentinel names a recipe, and the cache directory it resolves to carries the
fingerprint of everything the build depends on (data version, architecture, schedule, seed,
format). If the build code or the phantom data change, the same sentinel resolves to another
directory: a saved Flamingo would silently sit on encoders it was never trained with. So the model
writes the directory names into ``config.embedded_builds`` and warns when a reload resolves to
different ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from flamingo_lib.modeling.backbones.registry import resolve_name
from flamingo_lib.modeling.backbones.sentinels import parse_sentinel

#: Config fields that may hold an ``embedded-*`` sentinel.
SENTINEL_FIELDS = ("lm", "clip_model_type")


class EncoderBuildMismatchWarning(UserWarning):
    """A saved Flamingo was trained on another build of its embedded encoders than the one loaded."""


def embedded_builds(config: Any) -> dict[str, str]:
    """``{field: cache directory name}`` for each config field holding an embedded sentinel (the
    directory name ends in the build's fingerprint). Resolving builds missing encoders first."""
    builds = {}
    for field in SENTINEL_FIELDS:
        value = getattr(config, field, None)
        if parse_sentinel(value) is not None:
            resolved = resolve_name(value)
            builds[field] = Path(resolved.removeprefix("local-dir:")).name
    return builds


def record_and_check_builds(config: Any) -> None:
    """Compare ``config.embedded_builds`` (saved with a trained model) with what the sentinels
    resolve to now, warn on a difference, then record the current builds in ``config``.

    Warns:
        EncoderBuildMismatchWarning: naming the field, the saved and the current build.
    """
    current = embedded_builds(config)
    saved = getattr(config, "embedded_builds", None) or {}
    for field, name in current.items():
        if field in saved and saved[field] != name:
            warnings.warn(
                f"config.{field}={getattr(config, field)!r} was trained on the embedded build {saved[field]!r} "
                f"but now resolves to {name!r} (the build code or the phantom data changed): the trained "
                "cross-attention sits on other frozen features; retrain, or restore that cache directory",
                EncoderBuildMismatchWarning, stacklevel=3)
    config.embedded_builds = current
