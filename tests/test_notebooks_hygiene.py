"""The committed notebooks: no outputs (medical images and text stay out of git), one tagged
`parameters` cell of flat UPPER_CASE literals, thin code (no classes, no long functions)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_the_numbered_workbook_is_complete():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name} carries outputs: run `nbstripout {path}` before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_nbformat_with_unique_cell_ids(path):
    import nbformat

    notebook = json.loads(path.read_text())
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))  # raises on an invalid notebook
    ids = [c.get("id") for c in notebook["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), (
        f"{path.name}: every cell needs a unique id (nbformat 4.5; missing ids warn now, fail later)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_upper_case_literals(path):
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1
        name = node.targets[0].id
        assert name.isupper(), f"{path.name}: parameter {name} is not UPPER_CASE"
        ast.literal_eval(node.value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_stays_thin(path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(line for line in "".join(cell["source"]).splitlines(True) if not line.startswith("%"))
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, ast.ClassDef), f"{path.name}: classes belong in flamingo_lib"
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 10, f"{path.name}: {node.name} is too long for a notebook"


def test_datasets_placed_in_data_are_ignored_by_git_and_its_readme_is_not():
    import shutil
    import subprocess

    repo = Path(__file__).parent.parent
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 0

    assert ignored("data/mimic-cxr-jpg/files/p10/p10000032/s50414267/view1.jpg")
    assert ignored("data/mimic-cxr-2.0.0-chexpert.csv")
    assert not ignored("data/README.md") and not ignored("data/encoders/tiny-vit-0123456789abcdef/manifest.json")
