"""Whether a sample may be shared: its source's licence, known or declared, and private when neither.

A sample's ``meta["credentialed"]`` is True when it must not leave the user's hands (exports,
shared reports and notebooks refuse it without an explicit opt-in), and ``meta["licence"]`` says
why. The loaders know the origin of most sources (MIMIC-CXR is credentialed; the IU X-Ray release
and the phantom are open). A file whose origin they cannot tell (a Chex file written by another
tool, an R2Gen file with paths of no known layout) is private until the user declares the licence
in the data spec: ``chex:annotations.json;licence=open`` (:mod:`flamingo_lib.data.sources`).
A declaration never makes a sample known to be credentialed shareable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

Licence = Literal["open", "credentialed"]
LICENCES: tuple[str, ...] = ("open", "credentialed")
MIMIC_LICENCE = "MIMIC-CXR, under PhysioNet's data use agreement"
IU_LICENCE = "IU X-Ray, CC BY-NC-ND 4.0"
UNKNOWN_ORIGIN = ("unknown origin, kept private: declare ';licence=open' in the data spec if the source is "
                  "public")


def check_licence(licence: str | None) -> None:
    """Raises ValueError naming the allowed values when ``licence`` is not None or one of them."""
    if licence is not None and licence not in LICENCES:
        raise ValueError(f"licence must be one of {', '.join(LICENCES)} (or left out), got {licence!r}")


def licence_meta(known: bool | None, declared: str | None, origin: str = "") -> dict[str, object]:
    """``{"credentialed": ..., "licence": ...}`` of a sample.

    Args:
        known: what the file or its layout says (True: credentialed, False: open, None: no one knows).
        declared: the licence the user declared for the source ("open" | "credentialed" | None).
        origin: the source named, for the ``licence`` text (e.g. "IU X-Ray").
    """
    check_licence(declared)
    if known is True:
        return {"credentialed": True, "licence": f"credentialed{f': {origin}' if origin else ''}"}
    if declared == "credentialed":
        return {"credentialed": True, "licence": "credentialed: declared in the data spec"}
    if known is False:
        return {"credentialed": False, "licence": f"open{f': {origin}' if origin else ''}"}
    if declared == "open":
        return {"credentialed": False, "licence": "open: declared in the data spec"}
    return {"credentialed": True, "licence": UNKNOWN_ORIGIN}


def source_privacy(spec: str, samples: Callable[[], Sequence[Any]]) -> tuple[bool, str]:
    """(may not be shared, why) of a data source: MIMIC-CXR by its spec, any other by what its
    first sample's ``meta`` says (``samples()`` opens them: not called for a MIMIC spec)."""
    if spec.startswith("mimic"):
        return True, f"credentialed: {MIMIC_LICENCE}"
    opened = samples()
    meta = opened[0].meta if len(opened) else {}
    return bool(meta.get("credentialed")), str(meta.get("licence", "unknown"))
