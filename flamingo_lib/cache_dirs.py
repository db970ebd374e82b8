"""Where flamingo_lib keeps its caches (phantom films, encoder builds, feature shards)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """``$FLAMINGO_CACHE_DIR/<kind>`` if the variable is set, else ``~/.cache/flamingo_lib/<kind>``."""
    root = os.environ.get("FLAMINGO_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "flamingo_lib") / kind
