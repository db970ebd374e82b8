"""Intervals for the metrics scored outside numpy: METEOR's per-study statistics give the jar's own
corpus score on every resample, RadEval's offline columns pool to RadEval's corpus scores, and the
evaluation's uncertainty table gives both an interval."""

from __future__ import annotations

import random
import shutil
import time
import warnings

import numpy as np
import pytest

from flamingo_lib.data.phantom.text import sample_findings, templated_report
from flamingo_lib.evaluation.metrics import coco_inputs, meteor
from flamingo_lib.evaluation.study_statistics import meteor_statistic, radeval_statistics
from flamingo_lib.evaluation.uncertainty import bootstrap_rows, interval, paired_p_values

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")

HANDWRITTEN_REFERENCES = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Moderate cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "Right upper lobe consolidation concerning for pneumonia. No pneumothorax."]
HANDWRITTEN_HYPOTHESES = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion.",
    "No acute cardiopulmonary process."]


def report_pairs(n: int, seed: int = 0, copied: float = 0.2) -> tuple[list[str], list[str]]:
    """``n`` references and hypotheses: radiology reports written from random findings, a fraction
    ``copied`` of the hypotheses word for word their reference (studies METEOR matches whole)."""
    rng = random.Random(seed)
    references = [templated_report(sample_findings(rng), rng) for _ in range(n)]
    hypotheses = [reference if rng.random() < copied else templated_report(sample_findings(rng), rng)
                  for reference in references]
    return HANDWRITTEN_REFERENCES + references, HANDWRITTEN_HYPOTHESES + hypotheses


@needs_java
def test_meteor_statistics_give_the_jars_corpus_score_on_the_full_sample_and_on_every_resample():
    references, hypotheses = report_pairs(150)
    statistic = meteor_statistic(references, hypotheses)
    assert statistic.score() == meteor(*coco_inputs(references, hypotheses))  # to the last digit
    rows = bootstrap_rows(len(references), 3, seed=2)
    for row, resampled in zip(rows, statistic.score(rows), strict=True):
        # a resample is a corpus of its own (repeated studies included): the jar scores it the same
        assert resampled == meteor(*coco_inputs([references[i] for i in row], [hypotheses[i] for i in row]))


@needs_java
def test_a_meteor_interval_brackets_the_value_narrows_with_more_studies_and_takes_seconds():
    widths = []
    for n in (40, 640):
        references, hypotheses = report_pairs(n, seed=n)
        statistic = meteor_statistic(references, hypotheses)
        start = time.perf_counter()
        low, high = interval(statistic, bootstrap_rows(len(references), 1000))
        assert time.perf_counter() - start < 30  # one exchange with the jar for all 1,000 resamples
        assert low < statistic.score() < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # 16 times the studies: about a quarter of the width


@needs_java
def test_meteor_p_values_are_one_for_the_same_system_and_small_for_a_worse_one():
    pytest.importorskip("radeval")
    references, hypotheses = report_pairs(80, copied=0.5)
    worse = hypotheses[1:] + hypotheses[:1]  # every report for another study
    statistics = {"model": meteor_statistic(references, hypotheses), "same": meteor_statistic(references, hypotheses),
                  "worse": meteor_statistic(references, worse)}
    assert statistics["worse"].score() < statistics["model"].score()
    p = paired_p_values(statistics, n_permutations=1000, seed=0)
    assert p["same"] == 1.0 and p["worse"] < 0.01


def test_radevals_offline_columns_pool_to_radevals_corpus_scores(monkeypatch):
    pytest.importorskip("radeval")
    from flamingo_lib.evaluation.radeval_metrics import OFFLINE_METRICS, radeval_scores

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    references, hypotheses = report_pairs(60, seed=3)
    statistics = radeval_statistics(references, hypotheses, OFFLINE_METRICS)
    corpus, _ = radeval_scores(references, hypotheses, OFFLINE_METRICS)
    assert set(statistics) == set(corpus) == {"RadEval bleu", "RadEval rouge1", "RadEval rouge2", "RadEval rougeL"}
    for key, statistic in statistics.items():
        assert statistic.score() == corpus[key], key
    for row in bootstrap_rows(len(references), 2, seed=5):  # and on resamples: RadEval's score of those studies
        resampled, _ = radeval_scores([references[i] for i in row], [hypotheses[i] for i in row], OFFLINE_METRICS)
        for key, statistic in statistics.items():
            assert float(statistic.score(row[None])[0]) == resampled[key], key


def test_a_model_metric_without_its_weights_gets_no_statistic(monkeypatch, tmp_path):
    pytest.importorskip("radeval")
    from flamingo_lib.evaluation import radeval_metrics

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to find
    monkeypatch.setattr(radeval_metrics, "_scorers", {})
    monkeypatch.setattr(radeval_metrics, "_reasons", {})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        statistics = radeval_statistics(HANDWRITTEN_REFERENCES, HANDWRITTEN_HYPOTHESES, ["bleu", "bertscore"])
    assert set(statistics) == {"RadEval bleu"} and radeval_metrics.not_computed("bertscore")


def test_the_evaluations_uncertainty_table_has_meteor_and_radeval_intervals(tmp_path):
    pytest.importorskip("radeval")
    from test_evaluate import SAMPLES

    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.evaluation.evaluate import evaluate

    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    table = evaluate(model, processor, SAMPLES, SAMPLES, max_new_tokens=5, progress=False, metrics=["bleu", "rouge"],
                     n_resamples=200, n_permutations=200)
    rows = table.attrs["uncertainty"]
    wanted = ["RadEval bleu", "RadEval rouge1", "RadEval rouge2", "RadEval rougeL"]
    if shutil.which("java") is not None:
        wanted.append("METEOR")
    for metric in wanted:
        found = rows[rows["metric"] == metric]
        assert set(found["system"]) == set(table.index), metric
        assert np.isfinite(found[["low", "high"]].to_numpy(dtype=float)).all(), metric
        for row in found.itertuples():
            assert row.value == table.loc[row.system, metric], (row.system, metric)  # the table's own value
            assert row.low <= row.value <= row.high, (row.system, metric)
    flamingo = rows[(rows["system"] == "flamingo") & rows["metric"].isin(wanted)]
    retrieval = rows[(rows["system"] == "nearest neighbour") & rows["metric"].isin(wanted)]
    # retrieval finds the studies themselves: every resample scores it perfectly, and it beats the model
    assert (retrieval["low"] > flamingo["high"].to_numpy()).all()
