"""Uncertainty on the results: per-study statistics give the table's own values, bootstrap intervals
are seeded and cover what they should, paired p-values separate different systems and not equal ones."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.evaluation.evaluate import evaluate
from flamingo_lib.evaluation.uncertainty import (bootstrap_rows, efficacy_statistic, interval, mean_statistic,
                                                 paired_p_values, uncertainty_table)


def test_a_mean_statistics_interval_is_the_usual_one_and_seeded():
    values = np.random.default_rng(0).normal(size=400)
    statistic = mean_statistic(values)
    low, high = interval(statistic, bootstrap_rows(400, 2000, seed=1))
    half_width = 1.96 * values.std() / np.sqrt(400)
    assert abs((high - low) / 2 - half_width) < 0.15 * half_width and low < values.mean() < high
    assert (low, high) == interval(statistic, bootstrap_rows(400, 2000, seed=1))  # seeded


def test_efficacy_counts_give_the_micro_and_macro_scores():
    truth = [{"Edema": 1.0}, {"Edema": 1.0, "Atelectasis": 1.0}, {}, {"Atelectasis": 1.0}]
    said = [{"Edema": 1.0}, {"Atelectasis": 1.0}, {"Edema": 1.0}, {"Atelectasis": 0.0}]
    observations = ["Edema", "Atelectasis"]
    # Edema: tp 1, fp 1, fn 1 -> F1 0.5; Atelectasis: tp 1, fp 0, fn 1 -> F1 2/3; pooled tp 2, fp 1, fn 2
    assert efficacy_statistic(truth, said, observations, "micro_f1").score() == pytest.approx(4 / 7)
    assert efficacy_statistic(truth, said, observations, "macro_f1").score() == pytest.approx((0.5 + 2 / 3) / 2)
    assert efficacy_statistic(truth, said, observations, "micro_precision").score() == pytest.approx(2 / 3)
    assert efficacy_statistic(truth, said, observations, "micro_recall").score() == pytest.approx(0.5)


def test_paired_p_values_separate_a_better_system_and_not_an_equal_one():
    pytest.importorskip("radeval")
    rng = np.random.default_rng(0)
    base = rng.random(60)
    systems = {"model": mean_statistic(base), "same": mean_statistic(base.copy()),
               "worse": mean_statistic(base - 0.3), "noisy": mean_statistic(base + rng.normal(0, 0.01, 60))}
    p = paired_p_values(systems, n_permutations=2000, seed=0)
    assert p["same"] == 1.0 and p["worse"] < 0.001 and p["noisy"] > 0.05


def test_every_interval_belongs_to_the_tables_own_value(tmp_path):
    from test_evaluate import SAMPLES

    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    table = evaluate(model, processor, SAMPLES, SAMPLES, out_dir=tmp_path, max_new_tokens=5, progress=False,
                     n_resamples=200, n_permutations=500)
    rows = table.attrs["uncertainty"]
    assert set(rows["system"]) == set(table.index)
    assert {"BLEU_1", "BLEU_4", "CIDEr", "ROUGE_L", "CE micro-F1 (14, vs reference)",
            "CE micro-F1 (top 5, vs reference)"} <= set(rows["metric"])
    assert ("METEOR" in set(rows["metric"])) == (shutil.which("java") is not None), "METEOR's interval needs Java"
    for row in rows.itertuples():
        assert row.value == pytest.approx(table.loc[row.system, row.metric], abs=1e-9), (row.system, row.metric)
        assert row.low <= row.value + 1e-9 and row.value <= row.high + 1e-9
    flamingo = rows[rows["system"] == "flamingo"]
    assert flamingo["p_vs_flamingo"].isna().all()
    retrieval = rows[(rows["system"] == "nearest neighbour") & (rows["metric"] == "CIDEr")].iloc[0]
    # retrieval finds the studies themselves: CIDEr 10 on every resample (a handful of studies cannot
    # make a small p-value: the synthetic test above checks that a real difference does)
    assert retrieval.value == retrieval.low == retrieval.high == pytest.approx(10.0) and 0 < retrieval.p_vs_flamingo <= 1
    assert (tmp_path / "uncertainty.csv").read_text().startswith(
        "system,metric,value,low,high,p_vs_flamingo,permutations")
    again = evaluate(model, processor, SAMPLES, SAMPLES, max_new_tokens=5, progress=False, n_resamples=200,
                     n_permutations=500).attrs["uncertainty"]
    assert again.equals(rows)  # seeded


def test_no_resamples_and_no_permutations_give_values_alone():
    statistics = {"m": {"a": mean_statistic([1.0, 0.0]), "b": mean_statistic([0.0, 0.0])}}
    rows = uncertainty_table(statistics, "a", n_resamples=0, n_permutations=0)
    assert rows["value"].tolist() == [0.5, 0.0] and rows[["low", "high", "p_vs_a"]].isna().all().all()
    assert rows["permutations"].tolist() == [0, 0]
