"""The labeler's rules version: what was trained on or scored with its readings is stale when the
rules change.

The version names the rules' logic, not their text: it is a digest of the syntax trees of
:mod:`~flamingo_lib.labeling.labeler` and :mod:`~flamingo_lib.labeling.phrases` without their
docstrings and imports, so moving a module or rewording a docstring keeps every trained run,
cached result and shipped encoder build valid, while any change to a phrase list or a rule
changes it. :data:`RULES_VERSION` is the name those records carry for the logic whose digest is
:data:`RULES_DIGEST`; when the logic changes without both being updated, the version becomes the
new digest (so nothing stale is reused) and the test suite says which constants to update.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

#: The version recorded by trained runs, result stamps and the shipped vision build ...
RULES_VERSION = "5ded7eb9ef050c83"
#: ... for the rules whose logic has this digest (:func:`rules_digest`).
RULES_DIGEST = "76a9cc4fc72091e0"

RULE_MODULES = ("labeler.py", "phrases.py")


def _logic_only(tree: ast.AST) -> ast.AST:
    """``tree`` without docstrings and import statements (in place)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))
                and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str))]
        body[:] = kept or [ast.Pass()]
    return tree


def _digest(modules: tuple[str, ...]) -> str:
    """A 16-hex digest of ``modules``' logic (their syntax trees, docstrings and imports left out)."""
    digest = hashlib.sha256()
    for name in modules:
        tree = ast.parse((Path(__file__).parent / name).read_text(encoding="utf-8"))
        digest.update(ast.dump(_logic_only(tree)).encode())
    return digest.hexdigest()[:16]


@functools.cache
def rules_digest() -> str:
    """A 16-hex digest of the rule modules' logic (their syntax trees, docstrings and imports left out)."""
    return _digest(RULE_MODULES)


def rules_version() -> str:
    """:data:`RULES_VERSION` while the rules are those it names, else their new digest."""
    digest = rules_digest()
    return RULES_VERSION if digest == RULES_DIGEST else digest


#: The version recorded by runs with a severity head (:mod:`~flamingo_lib.labeling.severity`) ...
SEVERITY_RULES_VERSION = "6b0eeb8d03ffb66b"
#: ... for the severity reader whose logic has this digest (:func:`severity_rules_digest`).
SEVERITY_RULES_DIGEST = "3b297214e6594936"


@functools.cache
def severity_rules_digest() -> str:
    """A 16-hex digest of the severity reader's logic, taken as :func:`rules_digest` takes the labeler's."""
    return _digest(("severity.py",))


def severity_rules_version() -> str:
    """:data:`SEVERITY_RULES_VERSION` while the severity reader is the one it names, else its new
    digest: what a severity head was trained on."""
    digest = severity_rules_digest()
    return SEVERITY_RULES_VERSION if digest == SEVERITY_RULES_DIGEST else digest
