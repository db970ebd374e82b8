"""Index tables of a dataset release (CSV, plain or gzipped): found, read as strings, columns checked.

Index files are read whatever a dataset's ``on_error`` says: nothing can be loaded without them,
so a broken one always raises a :class:`~flamingo_lib.data.errors.DataError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from flamingo_lib.data.errors import DataError


def find_table(root: Path, name: str, required: bool = True) -> Path | None:
    """``root/name.gz`` if present, else ``root/name``; None (or DataError if required)."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError("bad_index_file", root / name, "index file not found (plain or .gz)")
    return None


def read_table(path: Path, columns: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """Read the ``columns`` (and those of ``optional`` the file has) of a (possibly gzipped) CSV as
    strings, checking that the file has them.

    Only the asked-for columns are parsed, and the last few tables read are kept (keyed by path,
    size and modification time), so that opening MIMIC-CXR's train, validate and test splits one
    after another parses its ~377k-row tables once, not three times. Callers get a shallow copy:
    adding a column to it leaves the kept table as it was.

    Raises:
        DataError: ``bad_index_file`` naming the file and the missing columns.
    """
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError("bad_index_file", path, f"cannot read CSV: {error}") from error
    key = (str(path), stat.st_size, stat.st_mtime_ns, tuple(columns), tuple(optional))
    table = _KEPT.pop(key, None)
    if table is None:
        table = _parse(path, columns, optional)
        if len(_KEPT) >= _KEEP:
            del _KEPT[next(iter(_KEPT))]
    _KEPT[key] = table  # the most recently read last
    return table.copy(deep=False)


# The tables of one release (metadata, split, labels): enough for one dataset's splits.
_KEEP = 3
_KEPT: dict[tuple, pd.DataFrame] = {}


def _parse(path: Path, columns: Sequence[str], optional: Sequence[str]) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0).columns
        missing = [column for column in columns if column not in header]
        if missing:
            raise DataError(
                "bad_index_file", path, f"missing columns {missing}",
                expected=list(columns), got=list(header),
            )  # fmt: skip
        # dtype=str and no NA parsing: ids must not turn into floats and blank
        # label cells must stay distinguishable from bad ones.
        wanted = [*columns, *(column for column in optional if column in header)]
        return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=wanted)[wanted]
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError("bad_index_file", path, f"cannot read CSV: {error}") from error
