"""A saved model directory is loaded only when its last save finished.

``save_pretrained`` writes each file atomically, but a save killed midway can leave a new
``config.json`` beside the previous weights. So a save first writes a marker file, then the
processor's files, the config and the weights, and removes the marker last: a directory that
still holds the marker is refused on load, instead of serving weights under a config they were
not trained with. A ``config.json`` edited by hand afterwards is no interrupted save and loads
(its values are then checked field by field, and the weights against its shapes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flamingo_lib.io import write_text_atomic

SAVE_MARKER = "SAVE_IN_PROGRESS"


@contextmanager
def saving(directory: Path) -> Iterator[None]:
    """Mark ``directory`` as being written while the block runs; the mark stays if the block fails
    or the process dies."""
    write_text_atomic(directory / SAVE_MARKER, "a save into this directory has not finished: its files may not "
                                               "belong together\n")
    yield
    (directory / SAVE_MARKER).unlink()


def check_complete(directory: Path) -> None:
    """Refuse a directory whose last save did not finish.

    Raises:
        ValueError: naming the directory and the marker.
    """
    if (Path(directory) / SAVE_MARKER).exists():
        raise ValueError(f"{directory}: a save into it did not finish ({SAVE_MARKER} is still there), so its files "
                         "may not belong together; save the model again")
