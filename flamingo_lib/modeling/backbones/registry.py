"""Name resolvers: how a backbone name that is not a hub id or a directory becomes one.

The model reads ``FlamingoConfig.lm`` and ``clip_model_type`` as hub ids, local directories or
``local-dir:`` paths. Some names stand for encoders built elsewhere (the ``embedded-*`` sentinels
of :mod:`flamingo_lib.encoders`, pretrained in-project on first use). The modeling package must
not import how they are built (that reaches the phantom data and the labeler), so the builder
registers a resolver here and the model only asks the registry.
"""

from __future__ import annotations

from collections.abc import Callable

#: name -> the hub id / directory / ``local-dir:`` it stands for, or None when it is not the
#: resolver's name.
NameResolver = Callable[[str], "str | None"]

_resolvers: list[NameResolver] = []
_open_clip_preparers: list[Callable[[], None]] = []


def register_name_resolver(resolver: NameResolver) -> None:
    """Add ``resolver``; registering the same function twice keeps one copy."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def register_open_clip_preparer(prepare: Callable[[], None]) -> None:
    """Add a function run before open_clip builds a model (e.g. one that registers timm trunks)."""
    if prepare not in _open_clip_preparers:
        _open_clip_preparers.append(prepare)


def resolve_name(name: str) -> str:
    """What the first resolver that claims ``name`` makes of it; ``name`` itself when none does."""
    for resolver in _resolvers:
        resolved = resolver(name)
        if resolved is not None:
            return str(resolved)
    return name


def prepare_open_clip() -> None:
    """Run every registered preparer (before ``open_clip.create_model``)."""
    for prepare in _open_clip_preparers:
        prepare()
