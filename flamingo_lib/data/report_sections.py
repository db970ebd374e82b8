"""Split a free-text radiology report (MIMIC-CXR style) into its named sections.

MIMIC-CXR reports are plain text laid out like::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)

     INDICATION:  ___F with cough

     FINDINGS:

     The lungs are clear.  No pleural effusion or
     pneumothorax.

     IMPRESSION:  No acute cardiopulmonary process.

A section starts at a line whose first words are an upper-case header ending in
``:``; its text may begin on the header line or on the following lines. The
report-generation target is FINDINGS, falling back to IMPRESSION
(:func:`target_text`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# An upper-case header at the start of a line, e.g. "FINDINGS:", "WET READ:",
# "FINDINGS AND IMPRESSION:", "REASON FOR EXAMINATION (CLINICAL):". Lower-case
# letters are excluded so sentences such as "Heart size: normal" stay text; digits
# are excluded so clock times ("4:15 PM") never look like headers.
_HEADER = re.compile(r"^\s*(?P<name>[A-Z][A-Z ,&/()\-]*[A-Z)])\s*:(?P<rest>.*)$")

# Addenda are appended to the signed report, sometimes with a colon, sometimes as a
# bare "ADDENDUM" line; each becomes its own numbered section.
_ADDENDUM = re.compile(r"^\s*(?:FINAL\s+)?ADDENDUM\b\s*:?(?P<rest>.*)$")

# Banner lines that carry no report content.
_BANNER = re.compile(r"^\s*FINAL REPORT\s*$")

# Long rows of underscores separate the wet read from the final report. They are
# distinct from the three-underscore de-identification placeholder "___", which is
# content and must survive.
_SEPARATOR = re.compile(r"^\s*_{10,}\s*$")

_WHITESPACE = re.compile(r"\s+")


def _normalise(text: str) -> str:
    """Collapse every run of whitespace (wrapped lines included) to one space."""
    return _WHITESPACE.sub(" ", text).strip()


def split_sections(text: str) -> dict[str, str]:
    """Split a radiology report into ``{HEADER: text}``.

    Rules:
        * A header is an upper-case phrase at the start of a line ending in ``:``
          (``FINDINGS:``, ``IMPRESSION:``, ``WET READ:`` ...). The section text may
          start on the header line or on the next lines.
        * Wrapped lines are joined with single spaces; all whitespace is
          normalised, including around ``___`` de-identification placeholders,
          which are kept verbatim.
        * The ``FINAL REPORT`` banner, separator rows of underscores and any text
          between a banner (or the start) and the next header (the preamble) are
          dropped.
        * Each addendum (a line starting ``ADDENDUM`` or ``FINAL ADDENDUM``)
          becomes its own section: ``ADDENDUM``, ``ADDENDUM 2``, ... It runs to the
          next addendum, the next ``FINAL REPORT`` banner or the end; headers inside
          it stay part of its text, so a revised impression in an addendum never
          silently merges into the original IMPRESSION.
        * A repeated ordinary header (rare, from templated reports) has its texts
          joined with a space rather than overwritten, so nothing is lost.
        * Sections whose text is empty are omitted.

    Args:
        text: the report as stored on disk.

    Returns:
        Section name (upper case, inner whitespace normalised) to its text, in
        order of first appearance.
    """
    sections: dict[str, list[str]] = {}
    current: str | None = None
    addenda = 0
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _BANNER.match(line):
            current = None  # what follows the banner is preamble until a header
            continue
        if _SEPARATOR.match(line):
            continue
        addendum = _ADDENDUM.match(line)
        in_addendum = current is not None and current.startswith("ADDENDUM")
        header = None if addendum or in_addendum else _HEADER.match(line)
        if addendum:
            # "FINAL ADDENDUM" banners are usually followed by an "ADDENDUM:" line;
            # both open the same addendum as long as it has no text yet.
            still_empty = in_addendum and not "".join(sections[current]).strip()
            if not still_empty:
                addenda += 1
                current = "ADDENDUM" if addenda == 1 else f"ADDENDUM {addenda}"
            rest = addendum.group("rest")
        elif header:
            current = _normalise(header.group("name"))
            rest = header.group("rest")
        else:
            rest = line
        if current is None:
            continue  # preamble before the first header
        sections.setdefault(current, []).append(rest)
    joined = {name: _normalise(" ".join(parts)) for name, parts in sections.items()}
    return {name: body for name, body in joined.items() if body}


def target_text(sections: Mapping[str, str]) -> str:
    """The report-generation target: FINDINGS, falling back to IMPRESSION.

    Args:
        sections: the output of :func:`split_sections` (or any mapping with the
            same upper-case keys).

    Returns:
        The stripped FINDINGS text when non-empty, else the stripped IMPRESSION
        text, else ``""``.
    """
    findings = (sections.get("FINDINGS") or "").strip()
    return findings or (sections.get("IMPRESSION") or "").strip()
