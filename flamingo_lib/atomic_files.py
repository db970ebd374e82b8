"""Write a JSON file so that readers see the old file or the whole new one, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any, **dump_options: Any) -> None:
    """Write ``payload`` as JSON (UTF-8, ``json.dump(**dump_options)``) to a temporary file beside
    ``path``, flush it to disk, then rename it over ``path``."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            json.dump(payload, handle, **dump_options)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
