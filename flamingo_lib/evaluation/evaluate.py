"""Evaluate report generation on a split: the model and three baselines, NLG and clinical metrics.

Baselines on the same split: the most frequent training report; nearest-neighbour retrieval (the
report of the closest training image in the frozen encoder's feature space: mean-pooled patch
tokens, cosine similarity); and the model with no image (its frozen LM continues the same prompt
text on its own: the cross-attention silent, the new <EOC>/<image> rows suppressed).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from flamingo_lib.inference.batched import generate_in_batches, process_share
from flamingo_lib.inference.retrieval import image_descriptors, nearest_neighbours  # noqa: F401  (their home before)
from flamingo_lib.io import write_json_atomic, write_text_atomic
from flamingo_lib.evaluation.metrics import (NLG_METRICS, clinical_efficacy, efficacy_columns, most_common_observations,
                                             nlg_metrics)

PROTOCOL = __doc__ + "\n" + (
    "Generation: the training prompt (one <image> per view, then 'Findings:'), decoding stops at <EOC>.\n"
    "NLG and clinical-efficacy protocol: see flamingo_lib/evaluation/metrics.py (R2Gen convention; positive = 1.0,\n"
    "uncertain counted as not positive). 'vs image truth' scores against the labels of the findings\n"
    "actually present in the image (phantom data only); 'vs reference' against the labeler's reading\n"
    "of the reference report, the standard way. 'rendered findings' (phantom data) pools only the\n"
    "observations the phantom draws (no 'No Finding', which a normal-only system would score on).\n"
)


@torch.no_grad()
def generate_reports(model: Any, processor: Any, samples: Sequence[Any], batch_size: int = 8,
                     num_beams: int = 1, max_new_tokens: int = 80, with_images: bool = True,
                     progress: bool = True) -> list[str]:
    """One generated report per sample, batched, tags removed.

    Args:
        with_images: False gives the no-image baseline: the prompt without ``<image>`` tokens and
            no visual input, so every cross-attention block is silent and the frozen LM writes on
            its own (the new ``<EOC>``/``<image>`` rows suppressed; it stops at its own ``</s>``).
    """
    return generate_in_batches(model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               with_images=with_images, progress=progress, num_beams=num_beams).reports


def most_frequent_report(train_reports: Sequence[str]) -> str:
    """The most frequent training report (ties: the first seen)."""
    return Counter(r.strip() for r in train_reports).most_common(1)[0][0]


def nearest_neighbour_reports(train_descriptors: torch.Tensor, train_reports: Sequence[str],
                              query_descriptors: torch.Tensor) -> list[str]:
    """For each query, the report of the most similar training image (cosine; :func:`nearest_neighbours`)."""
    return [train_reports[i] for i in nearest_neighbours(train_descriptors, query_descriptors).tolist()]


def clinical_scores(hyp_labels: Sequence[dict], truths: dict[str, Sequence[dict] | None],
                    observations_top5: Sequence[str], shown_observations: Sequence[str] | None = None
                    ) -> dict[str, float]:
    """Clinical efficacy of one system's labels against each named truth (skipped when None):
    14 observations, the top 5 and, when given, the ``shown_observations`` the images can show
    (:func:`~flamingo_lib.evaluation.metrics.efficacy_columns`)."""
    return {column: clinical_efficacy(truth, hyp_labels, observations)[key]
            for column, truth, observations, key in efficacy_columns(truths, observations_top5, shown_observations)}


def score(references: Sequence[str], hypotheses: Sequence[str], labeler: Callable[[str], dict],
          image_truth: Sequence[dict] | None, observations_top5: Sequence[str],
          shown_observations: Sequence[str] | None = None,
          reference_labels: Sequence[dict] | None = None, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """NLG metrics plus clinical efficacy (:func:`clinical_scores`) for one system, against the
    labeler's reading of the references (``reference_labels`` when already read) and the image truth,
    and the RadEval ``metrics`` that can be computed (:mod:`flamingo_lib.evaluation.radeval_metrics`)."""
    hyp_labels = [labeler(h) for h in hypotheses]
    ref_labels = [labeler(r) for r in references] if reference_labels is None else reference_labels
    row: dict[str, Any] = dict(nlg_metrics(references, hypotheses))
    if metrics:
        from flamingo_lib.evaluation.radeval_metrics import radeval_scores

        row.update(radeval_scores(references, hypotheses, metrics)[0])
    row.update(clinical_scores(hyp_labels, {"reference": ref_labels, "image truth": image_truth},
                               observations_top5, shown_observations))
    return row


#: The row of the reference reports themselves, scored against the image truth only: how far a
#: report-reading score can go when the labeler's reading of a perfect report and the image's
#: labels disagree (hedged phrases read as uncertain, parent observations the text leaves implicit).
REFERENCE_CEILING = "reference report (ceiling)"


def reference_ceiling(references: Sequence[str], labeler: Callable[[str], dict], image_truth: Sequence[dict],
                      observations_top5: Sequence[str], shown_observations: Sequence[str] | None,
                      reference_labels: Sequence[dict] | None = None) -> dict[str, Any]:
    """The reference reports scored as a system against the image truth; every other column NaN
    (against themselves they would score 1.0, which says nothing, so they are not computed)."""
    ref_labels = [labeler(r) for r in references] if reference_labels is None else reference_labels
    against_truth = clinical_scores(ref_labels, {"image truth": image_truth}, observations_top5, shown_observations)
    # The vs-reference columns are named like the vs-image-truth ones (clinical_scores' pattern).
    against_reference = [k.replace("vs image truth)", "vs reference)") for k in against_truth]
    return dict.fromkeys([*NLG_METRICS, *against_reference], float("nan")) | against_truth


def evaluate(model: Any, processor: Any, train_samples: Sequence[Any], test_samples: Sequence[Any],
             out_dir: str | Path | None = None, labeler: Callable[[str], dict] | None = None,
             num_beams: int = 1, max_new_tokens: int = 80, batch_size: int = 8, feature_cache: Any = None,
             labels_are_image_truth: bool = False, progress: bool = True,
             extra_systems: Mapping[str, Sequence[str]] | None = None, protocol_notes: str = "",
             metrics: Sequence[str] = (), n_resamples: int = 1000, n_permutations: int = 10_000,
             seed: int = 0, num_workers: int = 0) -> pd.DataFrame:
    """Generate for ``test_samples``, score the model and the baselines, write the results.

    Args:
        labels_are_image_truth: the samples' ``labels`` describe what the image shows (phantom
            data: the rendered findings), so systems are also scored against them, and over
            the observations the phantom can draw (``RENDERED_OBSERVATIONS``: no "No Finding",
            so always writing a normal report earns nothing there), and the reference reports
            get a row of their own against them (``REFERENCE_CEILING``: the labeler's reading
            of the reference is the most a report can earn there).
        extra_systems: name -> one report per test sample, scored beside the others (e.g. the
            model under another decoding: :mod:`flamingo_lib.inference.guided_decoding`).
        protocol_notes: appended to ``PROTOCOL.md`` (how the extra systems were made).
        metrics: RadEval metrics scored beside the built-in ones (``["bleu", "rouge", "f1chexbert",
            ...]``: :mod:`flamingo_lib.evaluation.radeval_metrics`); one that cannot be computed here
            is listed, with why, in ``table.attrs["not_computed"]``, ``results.json`` and ``PROTOCOL.md``.
        n_resamples, n_permutations, seed: the 95% bootstrap intervals over studies and the paired
            approximate-randomisation p-values against the model (:mod:`flamingo_lib.evaluation.uncertainty`;
            0 turns either off), in ``table.attrs["uncertainty"]`` and ``uncertainty.csv``.
        num_workers: processes decoding the training films for the nearest-neighbour baseline
            (:func:`image_descriptors`); the training reports are read from the dataset's index, decoding
            nothing (:func:`~flamingo_lib.data.study_index.study_reports`).

    Writes (when ``out_dir``): ``results.json`` (metrics per system), ``results.csv``,
    ``generations.jsonl`` (id, reference, every system's report) and ``PROTOCOL.md``.

    Returns:
        a DataFrame, one row per system (model, baselines[, reference ceiling]), one column per
        metric.
    """
    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    if metrics:  # an unknown name is refused before minutes of generation
        from flamingo_lib.evaluation.radeval_metrics import check_metrics

        metrics = check_metrics(metrics)
    test_samples = [test_samples[i] for i in range(len(test_samples))]  # datasets need not support slicing
    references = [s.report for s in test_samples]
    image_truth = [s.labels for s in test_samples] if labels_are_image_truth else None
    reference_labels = [labeler(r) for r in references]  # read once, shared by every system's row
    top5 = most_common_observations(image_truth or reference_labels)
    shown = None
    if labels_are_image_truth:
        from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS

        shown = RENDERED_OBSERVATIONS
    from flamingo_lib.data.study_index import study_reports

    train_reports = study_reports(train_samples)
    systems = {
        "flamingo": generate_reports(model, processor, test_samples, batch_size, num_beams, max_new_tokens,
                                     progress=progress),
        "most frequent report": [most_frequent_report(train_reports)] * len(test_samples),
        "nearest neighbour": nearest_neighbour_reports(
            image_descriptors(model, processor, train_samples, feature_cache, num_workers=num_workers), train_reports,
            image_descriptors(model, processor, test_samples, feature_cache)),
        "LM without image": generate_reports(model, processor, test_samples, batch_size, num_beams, max_new_tokens,
                                             with_images=False, progress=progress),
    }
    for name, reports in (extra_systems or {}).items():
        if len(reports) != len(test_samples) or name in systems:
            raise ValueError(f"extra system {name!r}: {len(reports)} reports for {len(test_samples)} test samples "
                             "(names must differ from the built-in systems')")
        systems[name] = list(reports)
    table = pd.DataFrame({name: score(references, hyps, labeler, image_truth, top5, shown, reference_labels, metrics)
                          for name, hyps in systems.items()}).T
    not_computed = _not_computed(metrics)
    if image_truth is not None:
        table.loc[REFERENCE_CEILING] = reference_ceiling(references, labeler, image_truth, top5, shown,
                                                         reference_labels)
    table.index.name = "system"
    table.attrs["not_computed"] = not_computed
    uncertainty = systems_uncertainty(systems, references, labeler, reference_labels, image_truth, top5, shown,
                                      n_resamples, n_permutations, seed, metrics=metrics)
    table.attrs["uncertainty"] = uncertainty
    if out_dir is not None and process_share()[0] == 0:  # launched as several processes: the first writes
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # each file whole or not at all: a reader never scores a half-written table
        write_text_atomic(out / "results.csv", table.to_csv())
        if n_resamples or n_permutations:
            write_text_atomic(out / "uncertainty.csv", uncertainty.to_csv(index=False))
        write_json_atomic(out / "results.json", {"metrics": table.to_dict(orient="index"), "top5": top5,
                                                 "n_test": len(test_samples), "not_computed": not_computed},
                          indent=2, default=float)
        write_text_atomic(out / "generations.jsonl", "".join(
            json.dumps({"id": sample.id, "reference": sample.report, **{k: v[i] for k, v in systems.items()}}) + "\n"
            for i, sample in enumerate(test_samples)))
        missing = "".join(f"\n- not computed: {name}: {why}" for name, why in not_computed.items())
        write_text_atomic(out / "PROTOCOL.md", PROTOCOL + (f"\n{protocol_notes}\n" if protocol_notes else "")
                          + (f"\nRadEval metrics asked for but not computed:{missing}\n" if missing else ""))
    return table


def systems_uncertainty(systems: Mapping[str, Sequence[str]], references: Sequence[str],
                        labeler: Callable[[str], dict], reference_labels: Sequence[dict],
                        image_truth: Sequence[dict] | None, top5: Sequence[str], shown: Sequence[str] | None,
                        n_resamples: int = 1000, n_permutations: int = 10_000, seed: int = 0,
                        against: str = "flamingo", metrics: Sequence[str] = ()) -> pd.DataFrame:
    """Intervals and paired p-values (against the system ``against``) of every column that per-study
    statistics give exactly: clinical efficacy, BLEU, METEOR (with Java), ROUGE-L, CIDEr and the
    RadEval ``metrics``' columns that allow it (:func:`~flamingo_lib.evaluation.study_statistics.radeval_statistics`);
    the reference ceiling joins the image-truth ones
    (:func:`flamingo_lib.evaluation.uncertainty.uncertainty_table`'s rows)."""
    from flamingo_lib.evaluation.metrics import sentence_scores
    from flamingo_lib.evaluation.study_statistics import meteor_statistic, radeval_statistics
    from flamingo_lib.evaluation.uncertainty import (bleu_statistics, efficacy_statistics, mean_statistic,
                                                     uncertainty_table)

    statistics: dict[str, dict[str, Any]] = {}
    for name, hyps in systems.items():
        per_metric = efficacy_statistics([labeler(h) for h in hyps], {"reference": reference_labels,
                                                                     "image truth": image_truth}, top5, shown)
        per_metric |= {metric: mean_statistic(scores) for metric, scores in sentence_scores(references, hyps).items()}
        per_metric |= bleu_statistics(references, hyps)
        if (meteor := meteor_statistic(references, hyps)) is not None:  # None without Java: no METEOR column
            per_metric["METEOR"] = meteor
        if metrics:
            per_metric |= radeval_statistics(references, hyps, metrics)
        for metric, statistic in per_metric.items():
            statistics.setdefault(metric, {})[name] = statistic
    if image_truth is not None:
        ceiling = efficacy_statistics(reference_labels, {"image truth": image_truth}, top5, shown)
        for metric, statistic in ceiling.items():
            statistics[metric][REFERENCE_CEILING] = statistic
    return uncertainty_table(statistics, against, n_resamples, n_permutations, seed)


def _not_computed(metrics: Sequence[str]) -> dict[str, str]:
    """Each RadEval metric of ``metrics`` that could not be computed, with why (warned once each)."""
    if not metrics:
        return {}
    from flamingo_lib.evaluation.radeval_metrics import not_computed

    missing = {name: why for name in metrics if (why := not_computed(name))}
    for name, why in missing.items():
        warnings.warn(f"not computed: {why}", stacklevel=3)
    return missing
