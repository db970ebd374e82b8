"""Write a file so that readers see the old file or the whole new one, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def write_json_atomic(path: Path, payload: Any, **dump_options: Any) -> None:
    """Write ``payload`` as JSON (UTF-8, ``json.dump(**dump_options)``) to a temporary file beside
    ``path``, flush it to disk, then rename it over ``path``."""
    _write_atomic(path, lambda handle: json.dump(payload, handle, **dump_options))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`write_json_atomic` writes JSON."""
    _write_atomic(path, lambda handle: handle.write(text))


def _write_atomic(path: Path, write: Callable[[TextIO], Any]) -> None:
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
