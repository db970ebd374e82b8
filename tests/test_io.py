"""Atomic writes: a reader sees the old file or the whole new one; a failed write leaves no trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flamingo_lib.io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_text_bytes_and_json_replace_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_text_atomic(target, "old")
    write_json_atomic(target, {"a": [1, 2]}, indent=1)
    assert target.read_text() == '{\n "a": [\n  1,\n  2\n ]\n}'
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and _leftovers(tmp_path) == []


def test_an_error_midway_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, target)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            save_file({"w": torch.zeros(2)}, tmp)  # half of a two-file write
            raise RuntimeError("disk full")
    assert torch.equal(load_file(target)["w"], torch.ones(2)) and _leftovers(tmp_path) == []


def test_json_that_cannot_be_written_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with pytest.raises(TypeError):
        write_json_atomic(target, {"tensor": torch.ones(1)})
    assert not target.exists() and _leftovers(tmp_path) == []


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "shared.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
