"""``make render`` (``python -m flamingo_lib.cli.render``): the notebooks executed and exported to
HTML, to share with collaborators who will not run them.

    python -m flamingo_lib.cli.render                                   # every notebook, their defaults
    python -m flamingo_lib.cli.render -p MAX_STEPS 600 -p SEED 1        # papermill parameters
    python -m flamingo_lib.cli.render --notebooks notebooks/05_report.ipynb --out runs/rendered-05

Each notebook is executed by papermill (its ``parameters`` cell, then the ``-p`` values) in its own
folder, as in JupyterLab, into ``OUT/<name>.ipynb``, and exported by nbconvert to ``OUT/<name>.html``
(figures embedded). Files are written atomically; an existing ``OUT`` is refused unless ``--overwrite``.

Rendered notebooks hold the data they show. For data that may not be shared (MIMIC-CXR, or a file
of unknown origin: :mod:`flamingo_lib.data.licence`), nothing is executed unless
``--allow-credentialed`` is given; the pages then carry a banner, and the folder a note, saying
they are private.
"""

from __future__ import annotations

import argparse
import ast
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flamingo_lib.cli import console_command
from flamingo_lib.io import write_text_atomic

PRIVATE_NOTE = "PRIVATE.md"
PRIVATE_BANNER = ("<div style='background:#fee;border:1px solid #c00;padding:.6em;margin:1em'><b>Private:</b> "
                  "this notebook shows data that may not be shared ({licence}). Keep it on machines its "
                  "licence covers; never send it on.</div>")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flamingo_lib.cli.render", description=(
        "Execute the notebooks with papermill and export each to HTML to share."))
    parser.add_argument("--notebooks", nargs="+", default=["notebooks"],
                        help="notebooks, or folders whose *.ipynb are rendered in name order (default: notebooks)")
    parser.add_argument("--out", default="runs/rendered", help="the folder to write (default: runs/rendered)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a papermill parameter, e.g. -p DATA mimic:/data/mimic-cxr-jpg (a Python literal, "
                             "else a string)")
    parser.add_argument("--allow-credentialed", action="store_true",
                        help="render notebooks on data that may not be shared, as private pages")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder's files")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (default 1800)")
    return parser


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_paths(names: Sequence[str]) -> list[Path]:
    """The notebooks ``names`` name (folders: their ``*.ipynb`` in name order).

    Raises:
        FileNotFoundError: a name that is neither, or no notebook at all.
    """
    paths: list[Path] = []
    for name in map(Path, names):
        if name.is_dir():
            paths += sorted(name.glob("*.ipynb"))
        elif name.suffix == ".ipynb" and name.is_file():
            paths.append(name)
        else:
            raise FileNotFoundError(f"{name}: not a notebook (.ipynb) or a folder of notebooks")
    if not paths:
        raise FileNotFoundError(f"no notebooks in {', '.join(names)}")
    return paths


def data_licence(path: Path, parameters: dict[str, Any]) -> tuple[bool, str]:
    """(may not be shared, licence text) of the data a notebook reads: its ``DATA`` parameter (given,
    else the notebook's default), opened to its first test sample; (False, "") without one. Films
    given as ``FILMS_DIR`` (notebook 05's reports for a reader's own films) are private."""
    import papermill

    from flamingo_lib.data.licence import source_privacy
    from flamingo_lib.data.sources import open_source

    defaults = papermill.inspect_notebook(str(path))
    if "FILMS_DIR" in defaults and parameters.get("FILMS_DIR") is not None:  # notebook 05: a reader's own films
        return True, f"your own films from {parameters['FILMS_DIR']}: a clinic's studies are private"
    spec = parameters.get("DATA", _value(defaults["DATA"]["default"]) if "DATA" in defaults else None)
    if not spec:
        return False, ""
    return source_privacy(str(spec), lambda: open_source(str(spec), "test", image_size=64, max_samples=1))


def render(path: Path, out_dir: Path, parameters: dict[str, Any], private_licence: str | None,
           timeout: int) -> Path:
    """Execute ``path`` into ``out_dir`` and export it; returns the HTML page's path."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    executed = out_dir / path.name
    partial = out_dir / f".{path.stem}.executing.ipynb"  # papermill writes as it goes: renamed when done
    papermill.execute_notebook(str(path), str(partial), parameters=parameters, cwd=str(path.parent),
                               execution_timeout=timeout, progress_bar=True)
    partial.replace(executed)
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    if private_licence is not None:  # first thing inside <body>, where no reader misses it
        start = body.find(">", body.find("<body")) + 1
        body = body[:start] + PRIVATE_BANNER.format(licence=private_licence) + body[start:]
    page = out_dir / f"{path.stem}.html"
    write_text_atomic(page, body)
    return page


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """The command line; returns the pages written."""
    from papermill.exceptions import PapermillExecutionError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        paths = notebook_paths(args.notebooks)
    except FileNotFoundError as error:
        parser.error(str(error))
    parameters = {name: _value(value) for name, value in args.parameter}
    out_dir = Path(args.out)
    if out_dir.exists() and any(out_dir.glob("*.html")) and not args.overwrite:
        parser.error(f"{out_dir} holds rendered notebooks already; pass --overwrite to replace them, or --out")
    private = [(p, licence) for p in paths for closed, licence in [data_licence(p, parameters)] if closed]
    if private and not args.allow_credentialed:  # before any cell runs, not after
        names = ", ".join(p.name for p, _ in private)
        parser.exit(2, f"{parser.prog}: error: {names} read data that may not be shared ({private[0][1]}): "
                       "rendered pages would hold its films and reports; pass --allow-credentialed to render "
                       "private pages, never to be shared\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    if private:
        write_text_atomic(out_dir / PRIVATE_NOTE, f"# Private\n\nThese notebooks show data that may not be shared "
                                                  f"({private[0][1]}). Keep this folder private.\n")
    closed = dict(private)
    pages = []
    for path in paths:
        try:
            page = render(path, out_dir, parameters, closed.get(path), args.timeout)
        except PapermillExecutionError as error:
            parser.exit(1, f"{parser.prog}: error: {path} failed in cell {error.exec_count}: {error.ename}: "
                           f"{error.evalue}\n{out_dir / f'.{path.stem}.executing.ipynb'} holds it as far as it ran; "
                           f"the pages before it are in {out_dir}\n")
        print(f"rendered {path} -> {page}")
        pages.append(page)
    return pages


cli = console_command(main)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
