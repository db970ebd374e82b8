"""Atomic file writes: readers see the old file or the whole new one, never a torn one.

Every file the project writes goes through :func:`atomic_path`: the content is written to a
hidden temporary file beside the target, flushed to disk, then renamed over the target (a rename
within one directory is atomic on POSIX); on any error the temporary file is removed and the
target is left as it was. Library writers that want a file name (``safetensors.torch.save_file``,
``torch.save``, ``numpy.savez``) write to the path it yields.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block ends without error, flush it to
    disk and rename it over ``path``. On error the temporary file is removed and ``path`` is
    untouched. The parent directory must exist."""
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # the writer may have closed (or replaced) its own handle
            os.fsync(handle.fileno())
        # mkstemp creates owner-only files; give the result the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], payload: Any, **dump_options: Any) -> None:
    """Write ``payload`` as JSON (``json.dumps(**dump_options)``, UTF-8) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, **dump_options))


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask
