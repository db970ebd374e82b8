"""Rendering notebooks to share: executed with their parameters and exported to HTML; refused,
before any cell runs, for data that may not be shared, unless asked for as private pages."""

from __future__ import annotations

import json

import nbformat
import pytest

from data_fixtures import write_image
from flamingo_lib.cli.render import PRIVATE_NOTE, main


def _notebook(folder, name="01_tiny.ipynb"):
    parameters = nbformat.v4.new_code_cell('DATA = "phantom:templated"\nSTEPS = 2')
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell('print(f"data {DATA}, {STEPS * 21} done")')
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Tiny"), parameters, body])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, folder / name)
    return folder / name


def test_a_notebook_is_executed_with_its_parameters_and_exported_to_html(tmp_path):
    _notebook(tmp_path / "nb")
    (page,) = main(["--notebooks", str(tmp_path / "nb"), "--out", str(tmp_path / "out"), "-p", "STEPS", "3"])
    text = page.read_text()
    assert page == tmp_path / "out" / "01_tiny.html" and "data phantom:templated, 63 done" in text
    assert "Private:" not in text and not (tmp_path / "out" / PRIVATE_NOTE).exists()
    executed = nbformat.read(tmp_path / "out" / "01_tiny.ipynb", as_version=4)
    assert "63 done" in json.dumps(executed.cells[-1].outputs)
    with pytest.raises(SystemExit):  # a folder of pages is not replaced without --overwrite
        main(["--notebooks", str(tmp_path / "nb"), "--out", str(tmp_path / "out")])


def test_data_that_may_not_be_shared_are_refused_before_any_cell_runs_or_rendered_private(tmp_path, capsys):
    write_image(tmp_path / "a.png", 7)
    data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}
    (tmp_path / "foreign.json").write_text(json.dumps(data))  # of unknown origin: private
    _notebook(tmp_path / "nb")
    args = ["--notebooks", str(tmp_path / "nb"), "--out", str(tmp_path / "out"),
            "-p", "DATA", f"chex:{tmp_path / 'foreign.json'}"]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2 and "may not be shared" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    (page,) = main([*args, "--allow-credentialed"])
    assert "Private:</b> this notebook shows data that may not be shared" in page.read_text()
    assert (tmp_path / "out" / PRIVATE_NOTE).exists()
    (opened,) = main([*args[:-1], f"chex:{tmp_path / 'foreign.json'};licence=open", "--overwrite"])
    assert "Private:" not in opened.read_text()


def test_a_readers_own_films_make_the_pages_private(tmp_path, capsys):
    notebook = _notebook(tmp_path / "nb")
    content = nbformat.read(notebook, as_version=4)
    content.cells[1].source += "\nFILMS_DIR = None"
    nbformat.write(content, notebook)
    with pytest.raises(SystemExit):
        main(["--notebooks", str(notebook), "--out", str(tmp_path / "out"), "-p", "FILMS_DIR", str(tmp_path)])
    assert "your own films" in capsys.readouterr().err and not (tmp_path / "out").exists()
