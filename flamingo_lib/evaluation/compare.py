"""Several runs scored on the same test studies, side by side: one table of every run's systems, with
95% bootstrap intervals and paired approximate-randomisation p-values against the first run's model.

A run is any folder holding ``generations.jsonl`` (one line per study: ``id``, ``reference`` and one
report per system), directly or under ``eval/``: the pipeline's ``RUN/eval`` and ``flamingo-evaluate``'s
output alike. Runs scored on other studies, or on the same ids with other reference reports, are
refused naming the difference: a paired test needs the same studies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

GENERATIONS = "generations.jsonl"


@dataclass
class Comparison:
    """What :func:`compare_runs` returns.

    Attributes:
        table: one row per system (``"<run>: <system>"``; a baseline that wrote the same reports in
            every run appears once, unprefixed), one column per metric.
        uncertainty: :func:`~flamingo_lib.evaluation.uncertainty.uncertainty_table`'s rows, p-values against
            ``reference_system``.
        reference_system: the first run's model (greedy).
        runs: run name -> its folder.
        n_studies: the test studies every run was scored on.
    """

    table: pd.DataFrame
    uncertainty: pd.DataFrame
    reference_system: str
    runs: dict[str, Path]
    n_studies: int


def generations_file(run: str | Path) -> Path:
    """The ``generations.jsonl`` of a run folder (``RUN/eval/`` or the folder itself).

    Raises:
        FileNotFoundError: neither holds one, naming both places and how to make one.
    """
    run = Path(run)
    for candidate in (run / "eval" / GENERATIONS, run / GENERATIONS):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{run}: no {GENERATIONS} in {run / 'eval'} or {run} (evaluate the run first: "
                            "make demo, Pipeline.evaluate() or flamingo-evaluate)")


def read_generations(run: str | Path) -> pd.DataFrame:
    """A run's ``generations.jsonl`` as a frame (``id``, ``reference``, a column per system).

    Raises:
        ValueError: a line that is not a JSON object with ``id`` and ``reference``, naming the file and line.
    """
    path = generations_file(run)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from error
        if not isinstance(row, dict) or not {"id", "reference"} <= set(row):
            raise ValueError(f"{path}, line {number}: expected an object with 'id', 'reference' and the systems' "
                             f"reports, got {str(row)[:80]!r}")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["id"] = frame["id"].astype(str)
    return frame


def check_same_studies(runs: dict[str, pd.DataFrame]) -> None:
    """Refuse runs that were not scored on the same studies, in the same order, with the same references.

    Raises:
        ValueError: naming the run, how many studies differ and the first that does.
    """
    (first, base), *others = runs.items()
    for name, frame in others:
        ids, base_ids = frame["id"].tolist(), base["id"].tolist()
        if ids != base_ids:
            only_here, only_there = sorted(set(ids) - set(base_ids)), sorted(set(base_ids) - set(ids))
            detail = (f"{len(only_there)} only in {first} (first: {only_there[0]!r})" if only_there else "")
            detail += ("; " if detail and only_here else "") + (
                f"{len(only_here)} only in {name} (first: {only_here[0]!r})" if only_here else "")
            raise ValueError(f"{name} was scored on other studies than {first} ({len(ids)} against {len(base_ids)}"
                             f"{'; ' + detail if detail else ', in another order'}): a paired comparison needs the "
                             "same test studies; evaluate both on the same split and max_test_samples")
        differ = [i for i, (a, b) in enumerate(zip(frame["reference"], base["reference"], strict=True)) if a != b]
        if differ:
            raise ValueError(f"{name} and {first} share their study ids but not their reference reports "
                             f"({len(differ)} differ, first: study {ids[differ[0]]!r}): they were scored on other data")


def generation_systems(generations: pd.DataFrame) -> dict[str, list[str]]:
    """Each system's reports in a ``generations.jsonl`` frame (every column but ``id`` and ``reference``; a
    missing report reads as empty)."""
    return {column: generations[column].fillna("").astype(str).tolist() for column in generations.columns
            if column not in ("id", "reference")}


def _systems(runs: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Every run's systems as ``"<run>: <system>"``; a system whose reports are the same in every run (a
    baseline of the same data) once, under its own name."""
    systems: dict[str, list[str]] = {}
    per_run = [generation_systems(frame) for frame in runs.values()]
    for column in dict.fromkeys(column for run in per_run for column in run):
        reports = [run.get(column) for run in per_run]
        if all(r is not None and r == reports[0] for r in reports) and not column.startswith("flamingo"):
            systems[column] = reports[0]
            continue
        for name, report in zip(runs, reports, strict=True):
            if report is not None:
                systems[f"{name}: {column}"] = report
    return systems


def compare_runs(runs: Sequence[str | Path], names: Sequence[str] | None = None, *,
                 image_truth: Sequence[dict] | None = None, shown_observations: Sequence[str] | None = None,
                 labeler: Callable[[str], dict] | None = None, n_resamples: int = 1000, n_permutations: int = 10_000,
                 seed: int = 0) -> Comparison:
    """Score every system of every run on their common test studies.

    Args:
        runs: run folders (see the module docstring); at least two.
        names: a short name per run (default: the folders' names).
        image_truth: per study, the labels of what its image shows (phantom data), in the runs' order;
            adds the image-truth columns, as :func:`~flamingo_lib.evaluation.evaluate.evaluate` does.
        shown_observations: the observations the images can show (phantom: ``RENDERED_OBSERVATIONS``).
        labeler: report text -> labels (default: the offline labeler).

    Raises:
        ValueError: fewer than two runs, names that repeat, or runs scored on other studies.
    """
    from flamingo_lib.evaluation.evaluate import score, systems_uncertainty
    from flamingo_lib.evaluation.metrics import most_common_observations

    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    paths = [Path(run) for run in runs]
    names = list(names) if names is not None else [path.name for path in paths]
    if len(paths) < 2 or len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"compare at least two runs, each with its own name; got runs {[str(p) for p in paths]} "
                         f"named {names}")
    frames = {name: read_generations(path) for name, path in zip(names, paths, strict=True)}
    check_same_studies(frames)
    base = next(iter(frames.values()))
    if image_truth is not None and len(image_truth) != len(base):
        raise ValueError(f"image truth for {len(image_truth)} studies, the runs have {len(base)}")
    references = base["reference"].astype(str).tolist()
    reference_labels = [labeler(r) for r in references]
    top5 = most_common_observations(image_truth or reference_labels)
    systems = _systems(frames)
    reference_system = f"{names[0]}: flamingo"
    if reference_system not in systems:
        raise ValueError(f"{generations_file(paths[0])} has no 'flamingo' column: not a run's generations")
    table = pd.DataFrame({name: score(references, hyps, labeler, image_truth, top5, shown_observations,
                                      reference_labels) for name, hyps in systems.items()}).T
    table.index.name = "system"
    rows = systems_uncertainty(systems, references, labeler, reference_labels, image_truth, top5, shown_observations,
                               n_resamples, n_permutations, seed, against=reference_system)
    return Comparison(table, rows, reference_system, dict(zip(names, paths, strict=True)), len(base))

