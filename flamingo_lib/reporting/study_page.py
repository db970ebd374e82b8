"""A page of reported studies (:mod:`flamingo_lib.inference.study_reports`): each study's film with where
its report looked, the report, the observations it states and what the findings head believes.

The page holds the films it shows. Films a reader brings are private unless they say otherwise
(``films_shareable``): a clinic's studies or a credentialed dataset's may not be shared, and the
page says so at its top.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from flamingo_lib.data.study_files import StudyFiles, load_study
from flamingo_lib.inference.study_reports import studies_unlike_training

if TYPE_CHECKING:
    from flamingo_lib.evaluation.grounding import WordsMap

PRIVATE_FILMS_WARNING = ("This page shows the films it reports. Unless they come from a public dataset, they are "
                         "private (a clinic's studies, a credentialed dataset such as MIMIC-CXR): do not share it.")
#: Head probabilities at or above this are listed beside a report.
SHOWN_PROBABILITY = 0.5


@torch.no_grad()
def report_map(model: Any, processor: Any, images: Sequence[Any], report: str) -> tuple[WordsMap, str]:
    """Which parts of the study's first film the report's words draw on: the report teacher-forced on
    the study's images, the map (:func:`~flamingo_lib.evaluation.grounding.words_map`) of its words
    that name findings (:data:`~flamingo_lib.evaluation.grounding.FINDING_WORDS`), or of all its words
    when it names none, sharpened to pixels as the pointing game scores it.

    Returns:
        the :class:`~flamingo_lib.evaluation.grounding.WordsMap` (heatmap (H, W) of the first film's
        size, summing to 1, and its ``peak``); which words it shows.
    """
    from flamingo_lib.evaluation.grounding import FINDING_WORDS, word_token_positions, words_map

    batch = processor.training_batch([report], [list(images)])
    prompt_length = len(processor.tokenizer(processor.study_prompt(len(images)))["input_ids"])
    words = sorted({word for group in FINDING_WORDS.values() for word in group})
    positions = word_token_positions(processor, report, words, prompt_length)
    size = images[0].size[::-1]
    if positions:
        return words_map(model, batch, positions, size), "evidence for the words naming findings"
    return words_map(model, batch, range(prompt_length, int(batch["attention_mask"].sum())), size), \
        "evidence for the report's words"


def _believed(row: pd.Series) -> str:
    columns = [c for c in row.index if c.startswith("p ") and not c.startswith("p stated ")]
    shown = sorted(((float(row[c]), c[2:]) for c in columns if float(row[c]) >= SHOWN_PROBABILITY), reverse=True)
    return ", ".join(f"{name} {p:.2f}" for p, name in shown) or "none"


def _unlike_training(row: pd.Series, film_reference: Any) -> str:
    """The warning of a study whose film lies outside the training distribution ('' otherwise)."""
    flagged = row.get("out_of_distribution")
    if flagged is None or (isinstance(flagged, float) and np.isnan(flagged)) or not bool(flagged):
        return ""
    distance = float(row["distance_to_training"])
    text = film_reference.describe(distance) if film_reference is not None else \
        f"unlike the films the model was trained on (distance {distance:.3f}): its report is unreliable"
    return f"<p class='warn'><b>Out of distribution:</b> this study holds a film {html.escape(text)}.</p>"


def study_cases_html(model: Any, processor: Any, table: pd.DataFrame, studies: Sequence[StudyFiles],
                     image_size: int | None = None, limit: int = 50, film_reference: Any = None) -> str:
    """The first ``limit`` studies of ``table`` (rows in the order of ``studies``) as HTML, images
    inlined; a study the table marks ``out_of_distribution`` is shown with a warning above its report
    (``film_reference``, the :class:`~flamingo_lib.inference.film_reference.FilmReference`, says how far)."""
    from flamingo_lib.reporting.html import CASE_OPEN, case_figure, figure_to_img

    cases = []
    for study, (_, row) in zip(list(studies)[:limit], table.head(limit).iterrows()):
        name = f"<p><b>{html.escape(study.id)}</b> ({len(study.paths)} film{'s' * (len(study.paths) > 1)})</p>"
        if row.get("error"):
            cases.append(f"{CASE_OPEN}{name}<p class='warn'>{html.escape(str(row['error']))}</p></div>")
            continue
        images = load_study(study, image_size).images
        words, title = report_map(model, processor, images, str(row["report"]))
        head = f"<p class='ref'><b>Findings head (p &ge; {SHOWN_PROBABILITY}):</b> {html.escape(_believed(row))}</p>" \
            if any(c.startswith("p ") for c in row.index) else ""
        cases.append(CASE_OPEN + figure_to_img(case_figure(images[0], words.heatmap, None, title, peak=words.peak), 460)
                     + f"<div>{name}{_unlike_training(row, film_reference)}<p><b>Report:</b> {html.escape(str(row['report']))}</p>"
                     + f"<p class='ref'><b>States:</b> {html.escape(str(row['stated']) or 'nothing')}</p>{head}</div></div>")
    return "".join(cases)


def write_study_page(path: str | Path, model: Any, processor: Any, table: pd.DataFrame, studies: Sequence[StudyFiles],
                     *, description: str, image_size: int | None = None, limit: int = 50,
                     films_shareable: bool = False, film_reference: Any = None) -> Path:
    """Write the page (atomically): ``description`` (how the reports were made), then the cases.

    Args:
        films_shareable: the films may be shared (a public dataset); else the page warns at its top.
        film_reference: the model's training-film reference, to say how far a flagged film lies.
    """
    from flamingo_lib.reporting.html import write_html_report

    shown = min(limit, len(table))
    intro = f"<p>{html.escape(description)}</p><p>{shown} of {len(table)} studies shown.</p>"
    unlike = studies_unlike_training(table)
    if unlike is not None:
        intro += (f"<p{' class=warn' * bool(unlike)}>{unlike} of {len(table)} studies hold a film unlike the films "
                  "the model was trained on (marked below): their reports are unreliable.</p>")
    else:
        intro += "<p>No film was checked against the training films (the model directory holds no reference).</p>"
    body = intro + study_cases_html(model, processor, table, studies, image_size, limit, film_reference)
    return write_html_report(path, "Reports for new films", [("Studies", body)], credentialed=not films_shareable,
                             allow_credentialed=True, private_warning=PRIVATE_FILMS_WARNING)
