"""Embedded frozen encoders, pretrained in-project so the whole Flamingo recipe runs offline.

The architectures (:mod:`~flamingo_lib.encoders.cnn`, :mod:`~flamingo_lib.encoders.vit`) stand
apart from their pretraining recipes (:mod:`flamingo_lib.encoders.pretraining`); the cache of
built encoders is :mod:`~flamingo_lib.encoders.cache` and the sentinels ``embedded-tiny-biogpt``,
``embedded-tiny-vit`` and ``embedded-smollm2`` resolve through :mod:`~flamingo_lib.encoders.embedded`.

The modeling package never imports this one (building an encoder reaches the phantom data and
the labeler). Importing it registers, with :mod:`flamingo_lib.modeling.backbones.registry`, a
resolver that turns a sentinel into the directory it names (building it on first use) and the
timm trunks open_clip needs; ``import flamingo_lib`` does so, and both stay cheap until called.
"""

from __future__ import annotations

from flamingo_lib.modeling.backbones.registry import register_name_resolver, register_open_clip_preparer


def resolve_embedded_name(name: str) -> str | None:
    """The LM directory or ``local-dir:`` an ``embedded-*`` name stands for (built on first use);
    None for any other name."""
    from flamingo_lib.modeling.backbones.sentinels import parse_sentinel

    if parse_sentinel(name) is None:
        return None
    from flamingo_lib.encoders.embedded import resolve_sentinel

    return resolve_sentinel(name)


def register_timm_trunks() -> None:
    """Register the embedded encoders' trunks with timm, which open_clip builds them through."""
    import flamingo_lib.encoders.cnn  # noqa: F401
    import flamingo_lib.encoders.vit  # noqa: F401


register_name_resolver(resolve_embedded_name)
register_open_clip_preparer(register_timm_trunks)
