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


def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a (possibly gzipped) CSV as strings and check its columns.

    Index files are read whatever ``on_error`` says: nothing can be loaded without
    them, so a broken one always raises.

    Raises:
        DataError: ``bad_index_file`` naming the file and the missing columns.
    """
    try:
        # dtype=str and no NA parsing: ids must not turn into floats and blank
        # label cells must stay distinguishable from bad ones.
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError("bad_index_file", path, f"cannot read CSV: {error}") from error
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataError(
            "bad_index_file", path, f"missing columns {missing}",
            expected=list(columns), got=list(table.columns),
        )  # fmt: skip
    return table
