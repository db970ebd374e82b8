"""The package's layout: imports run downward, the top level is the public face, and the console
commands pyproject.toml declares start."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flamingo_lib"

#: Each package may import only the packages listed after it (and the top-level helper modules).
#: modeling is the floor: the model never reaches data, labeling, training, evaluation, reporting,
#: the pipeline or the embedded encoders' pretraining.
LAYERS = ["cli", "pipeline", "reporting", "evaluation", "inference", "encoders", "training", "labeling", "data",
          "processing", "modeling"]
TOP_LEVEL_HELPERS = {"io", "cache_dirs", "observations", "processes"}


def _imports(path: Path) -> set[str]:
    """Every ``flamingo_lib.<package>`` a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module == "flamingo_lib":  # a submodule, or the root's names
            names = [f"flamingo_lib.{a.name}" if (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists()
                     else "flamingo_lib.<the package root>" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("flamingo_lib.")}
    return found


def _modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    allowed = set(LAYERS[LAYERS.index(package):]) | TOP_LEVEL_HELPERS
    upward = {f"{path.relative_to(PACKAGE)} imports {name}" for path in _modules(package)
              for name in _imports(path) - allowed}
    assert not upward, sorted(upward)


def test_the_model_reaches_the_embedded_encoders_only_through_the_registry() -> None:
    modeling = {name for path in _modules("modeling") for name in _imports(path)}
    assert modeling <= {"modeling", *TOP_LEVEL_HELPERS}, modeling
    from flamingo_lib.modeling.backbones.registry import resolve_name

    import flamingo_lib  # noqa: F401  (registers the embedded encoders' resolver)

    assert resolve_name("gpt2") == "gpt2"  # not an embedded name: untouched, nothing built


def test_the_helper_modules_import_no_package() -> None:
    for name in TOP_LEVEL_HELPERS:
        assert not _imports(PACKAGE / f"{name}.py") - TOP_LEVEL_HELPERS, name


def test_at_most_ten_modules_stand_at_the_top_level() -> None:
    modules = [p.name for p in PACKAGE.glob("*.py")]
    assert len(modules) <= 10, modules
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS) | {"encoders"}


SCRIPTS = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_each_console_command_is_installed_and_prints_its_help(command: str) -> None:
    executable = Path(sys.executable).parent / command
    if not executable.exists():
        pytest.fail(f"{executable} is missing: reinstall the package (make setup) after editing pyproject.toml")
    done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
