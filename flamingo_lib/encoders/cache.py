"""The on-disk cache of embedded encoders: fingerprinted directories built atomically.

Layout: ``<root>/<name>-<fingerprint>/`` where ``root`` is ``$FLAMINGO_CACHE_DIR/encoders`` (default
``~/.cache/flamingo_lib/encoders``). A directory is built under a hidden temporary name and
renamed into place once complete, so a directory with the final name is always whole: an
interrupted build leaves only a hidden ``.tmp-*`` folder (swept by the next build), and a
concurrent build waits on a lock file instead of repeating minutes of pretraining.

A build the repository ships (``data/encoders/<name>-<fingerprint>/``, written by ``python -m
flamingo_lib.encoders.embedded --ship``) is copied into the cache instead of being built, when
its manifest holds the very spec asked for: the half-hour vision build then costs a copy on a
fresh machine, and every machine reads the weights the results in docs/results.md were measured with.
``FLAMINGO_SHIPPED_ENCODERS=0`` ignores shipped builds (to rebuild from scratch).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from flamingo_lib import io as atomic_files
from flamingo_lib.cache_dirs import cache_root

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
# the builds a source checkout ships (data/README.md)
SHIPPED_ENCODERS_DIR = Path(__file__).resolve().parents[2] / "data" / "encoders"


def shipped_encoders_root() -> Path | None:
    """``<repository>/data/encoders`` of a source checkout, or None (not a checkout, or
    ``FLAMINGO_SHIPPED_ENCODERS=0``)."""
    if os.environ.get("FLAMINGO_SHIPPED_ENCODERS", "1") == "0":
        return None
    return SHIPPED_ENCODERS_DIR if SHIPPED_ENCODERS_DIR.is_dir() else None


def shipped_build(name: str, spec: dict[str, Any], required: Sequence[str],
                  shipped_root: str | os.PathLike[str] | None) -> Path | None:
    """The shipped directory of ``name`` for exactly ``spec`` (its manifest says so and it has
    every ``required`` file), else None."""
    if shipped_root is None:
        return None
    directory = Path(shipped_root) / f"{name}-{fingerprint(spec)}"
    if not _complete(directory, [*required, MANIFEST_FILE]):
        return None
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    return directory if manifest == {"name": name, "spec": json.loads(json.dumps(spec))} else None


def default_encoders_root() -> Path:
    """``$FLAMINGO_CACHE_DIR/encoders`` if set, else ``~/.cache/flamingo_lib/encoders``."""
    return cache_root("encoders")


def fingerprint(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able spec (key order does not matter).

    Raises:
        TypeError: the spec holds something JSON cannot write.
    """
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _complete(directory: Path, required: Sequence[str]) -> bool:
    return directory.is_dir() and all((directory / name).exists() for name in required)


def cached_build(
    name: str,
    spec: dict[str, Any],
    build: Callable[[Path], None],
    required: Sequence[str],
    root: str | os.PathLike[str] | None = None,
    shipped_root: str | os.PathLike[str] | None | bool = True,
) -> Path:
    """The directory of ``name`` built from ``spec``: reused when present, else copied from the
    repository's shipped build of the same spec, else built atomically.

    Args:
        name: a readable prefix of the directory name (``"tiny-biogpt"``).
        spec: everything the contents depend on; its :func:`fingerprint` names the directory and it
            is written to ``manifest.json`` for humans.
        build: writes the contents into the (temporary) directory it is given.
        required: files a complete directory has; one that lacks them (edited by hand) is rebuilt.
        root: the cache root (default :func:`default_encoders_root`).
        shipped_root: where shipped builds are looked for (True: :func:`shipped_encoders_root`;
            None or False: nowhere).

    Returns:
        ``<root>/<name>-<fingerprint>``, complete.
    """
    root = Path(root).expanduser() if root is not None else default_encoders_root()
    final = root / f"{name}-{fingerprint(spec)}"
    if _complete(final, required):  # the fast path: no lock, the rename made it whole
        return final
    with _locked(root / f".{final.name}.lock"):
        if _complete(final, required):  # another process built it while we waited
            return final
        if final.exists():
            logger.warning("encoder cache %s is incomplete (edited by hand?); rebuilding it", final)
            shutil.rmtree(final)
        # We hold the lock, so leftovers of this name are from interrupted builds.
        for stale in root.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
        shipped = shipped_build(name, spec, required,
                                shipped_encoders_root() if shipped_root is True else shipped_root or None)
        try:
            if shipped is not None:
                logger.info("copying the shipped build %s into the encoder cache", shipped)
                shutil.copytree(shipped, tmp, dirs_exist_ok=True)
            else:
                build(tmp)
                (tmp / MANIFEST_FILE).write_text(json.dumps({"name": name, "spec": spec}, indent=2, sort_keys=True))
            missing = [f for f in required if not (tmp / f).exists()]
            if missing:
                raise RuntimeError(f"building {final.name} wrote no {', '.join(missing)}")
            # mkdtemp and NamedTemporaryFile make owner-only entries; a cache is for everyone who
            # may read the directory it lives in.
            os.chmod(tmp, 0o755)
            for path in tmp.rglob("*"):
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def ship_build(directory: Path, shipped_root: Path | None = None) -> Path:
    """Copy a built cache directory into the checkout's ``data/encoders`` (or ``shipped_root``),
    replacing the builds of the same name shipped before (one per name: the repository keeps
    the default's only). The copy is made under a temporary name and renamed into place."""
    root = shipped_root or SHIPPED_ENCODERS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = directory.name.rsplit("-", 1)[0]
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{directory.name}-"))
    try:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        for old in root.glob(f"{name}-*"):
            shutil.rmtree(old)
        tmp.chmod(0o755)
        tmp.rename(root / directory.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / directory.name


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON with sorted keys, atomically (metrics, manifests)."""
    atomic_files.write_json_atomic(path, payload, indent=2, sort_keys=True)
