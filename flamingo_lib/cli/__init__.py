"""The command lines: ``flamingo-demo``, ``flamingo-train``, ``flamingo-evaluate`` and
``flamingo-write-reports`` (each also ``python -m flamingo_lib.cli.<name>``)."""

from __future__ import annotations

from collections.abc import Callable


def console_command(main: Callable[[], object]) -> Callable[[], None]:
    """``main`` as a console script's function: run on ``sys.argv`` with its return value dropped
    (a console script exits with whatever its function returns)."""

    def run() -> None:
        main()

    run.__doc__ = main.__doc__
    return run
