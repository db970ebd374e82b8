"""Reports for studies read from image files (:mod:`flamingo_lib.data.study_files`), a chunk of
studies at a time: what ``python -m flamingo_lib.cli.write_reports`` writes, and resumes chunk by chunk.

Each study's row holds its report (greedy, or findings-guided: :mod:`flamingo_lib.inference.guided_decoding`),
the observations the labeler reads as stated in it, and with a findings head the head's probability
of each observation, computed over the study's own images only (a batch pads studies with fewer
views, and the padding is no image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from flamingo_lib.inference.batched import generate_in_batches
from flamingo_lib.data.errors import DataError, check_on_error
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.data.study_files import StudyFiles, load_study
from flamingo_lib.inference.film_reference import FilmReference, film_embeddings

#: Studies decoded between two saves of the command's partial results. Guided decoding seeds each
#: chunk (``seed + chunk index``), so a resumed run draws what an uninterrupted one would.
CHUNK_STUDIES = 16


def _familiarity(model: Any, processor: Any, samples: Sequence[Any], reference: FilmReference | None
                 ) -> list[dict[str, Any]]:
    """Per study, how far its farthest film lies from the training films and whether that is out
    of distribution (none without a reference). The encoder runs once more on the films for this:
    a small cost beside decoding, and it keeps generation's batching untouched."""
    if reference is None:
        return [{} for _ in samples]
    if not samples:
        return []
    distances = reference.distances(film_embeddings(model, processor, (im for s in samples for im in s.images)))
    per_study = torch.split(distances, [len(s.images) for s in samples])
    return [{"distance_to_training": round(float(d.max()), 4),
             "out_of_distribution": bool(d.max() > reference.threshold)} for d in per_study]


def _head_columns(model: Any, probabilities: torch.Tensor | None, readings: torch.Tensor | None) -> list[dict]:
    """Per study, ``p <observation>`` (and ``p stated <observation>`` with a reading head)."""
    if probabilities is None:
        return []
    observations = model.config.findings_head
    rows = [{f"p {obs}": round(float(p), 4) for obs, p in zip(observations, row)} for row in probabilities]
    if readings is not None:
        for row, stated in zip(rows, readings):
            row |= {f"p stated {obs}": round(float(p), 4) for obs, p in zip(observations, stated)}
    return rows


@torch.no_grad()
def _greedy(model: Any, processor: Any, samples: Sequence[Any], max_new_tokens: int, batch_size: int
            ) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
    """Greedy reports of ``samples``, and the heads' probabilities (None without a head)."""
    out = generate_in_batches(model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              heads=True, progress=False)
    return out.reports, out.findings, out.readings


def report_chunks(model: Any, processor: Any, studies: Sequence[StudyFiles], *, guided_threshold: float | None = None,
                  candidates: int = 32, temperature: float = 0.7, top_p: float = 1.0, max_new_tokens: int = 60,
                  batch_size: int = 4, seed: int = 0, image_size: int | None = None, on_error: str = "raise",
                  first_chunk: int = 0, chunk_studies: int = CHUNK_STUDIES, progress: bool = True,
                  film_reference: FilmReference | None = None, indication: str = "",
                  prior: CXRSample | None = None) -> Iterator[list[dict[str, Any]]]:
    """The rows of :func:`study_reports`, one list per chunk of ``chunk_studies`` studies, from
    chunk ``first_chunk`` on (a resumed run skips the chunks it has). ``indication`` and ``prior``
    (a study with its films and report) are every study's clinical context, read as far as the
    processor's context asks (:mod:`flamingo_lib.processing.context`)."""
    from flamingo_lib.labeling.labeler import label_report

    check_on_error(on_error)
    if guided_threshold is not None and model.config.findings_head is None:
        raise ValueError("findings-guided decoding needs a model with a findings head (config.findings_head)")
    model.eval()
    chunks = range(first_chunk * chunk_studies, len(studies), chunk_studies)
    bar = tqdm(total=len(studies), initial=min(first_chunk * chunk_studies, len(studies)), disable=not progress,
               desc="guided reports" if guided_threshold is not None else "reports", unit="study")
    for index, start in enumerate(chunks, first_chunk):
        chunk = studies[start:start + chunk_studies]
        samples, errors = [], {}
        for position, study in enumerate(chunk):
            try:
                sample = load_study(study, image_size)
                samples.append(dataclasses.replace(sample, prior=prior,
                                                   sections={"INDICATION": indication} if indication else {}))
            except DataError as error:
                if on_error == "raise":
                    raise
                errors[position] = str(error)
        if guided_threshold is None:
            reports, probabilities, readings = _greedy(model, processor, samples, max_new_tokens, batch_size)
        elif samples:
            from flamingo_lib.inference.guided_decoding import choose, sample_candidates

            drawn = sample_candidates(model, processor, samples, candidates, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, seed=seed + index, progress=False,
                                      temperature=temperature, top_p=top_p)
            reports, probabilities, readings = choose(drawn, guided_threshold), drawn.probabilities, \
                drawn.reading_probabilities
        else:
            reports, probabilities, readings = [], None, None
        made = iter(zip(reports, _head_columns(model, probabilities, readings) or [{} for _ in reports],
                        _familiarity(model, processor, samples, film_reference)))
        rows = []
        for position, study in enumerate(chunk):
            row = {"study": study.id, "images": ";".join(str(p) for p in study.paths)}
            if position in errors:
                rows.append(row | {"report": "", "stated": "", "error": errors[position]})
                continue
            report, head, familiarity = next(made)
            stated = [obs for obs, value in label_report(report).items() if value == 1.0]
            rows.append(row | {"report": report, "stated": "; ".join(stated), "error": ""} | familiarity | head)
        bar.update(len(chunk))
        yield rows
    bar.close()


def study_reports(model: Any, processor: Any, studies: Sequence[StudyFiles], **options: Any) -> pd.DataFrame:
    """One row per study: ``study``, ``images`` (its files, ``;``-separated), ``report``, ``stated``
    (the observations the labeler reads as positive in it), ``error`` (why a study that could not be
    read has no report, with ``on_error="skip"``; else empty), with a ``film_reference`` its
    ``distance_to_training`` and whether it is ``out_of_distribution``
    (:mod:`~flamingo_lib.inference.film_reference`), and with a findings head ``p <obs>`` per
    observation (``p stated <obs>`` too with a reading head).

    Args:
        options: of :func:`report_chunks`: ``guided_threshold`` (None: greedy reports; else
            findings-guided decoding with ``candidates`` samples at ``temperature`` / ``top_p``),
            ``max_new_tokens``, ``batch_size``, ``seed``, ``image_size`` (the longer side films are
            downscaled to on loading: the run's), ``on_error`` ("raise" or "skip"), ``progress``,
            ``film_reference`` (the training films' :class:`FilmReference`: flag films unlike them),
            ``indication`` and ``prior`` (the clinical context of every study).

    Raises:
        DataError: a film that cannot be read (``on_error="raise"``), naming it.
        ValueError: guided decoding asked of a model without a findings head.
    """
    return pd.DataFrame([row for rows in report_chunks(model, processor, studies, **options) for row in rows])


def studies_unlike_training(table: pd.DataFrame) -> int | None:
    """How many studies of a :func:`study_reports` table hold a film out of distribution (None when
    no film was checked: the model had no film reference)."""
    if "out_of_distribution" not in table:
        return None
    return int(table["out_of_distribution"].fillna(False).astype(bool).sum())
