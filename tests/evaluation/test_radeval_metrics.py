"""RadEval as the metric engine: its offline metrics on real report text, and for every model-based
metric offline a "not computed" reason instead of a number or a crash."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("radeval")

from flamingo_lib.evaluation.radeval_metrics import (MODEL_METRICS, OFFLINE_METRICS, check_metrics,  # noqa: E402
                                                     radeval_scores)

REFERENCES = ["The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
              "Moderate cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
              "Right upper lobe consolidation concerning for pneumonia. No pneumothorax."]
HYPOTHESES = ["The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
              "Mild cardiomegaly. Small left pleural effusion.",
              "No acute cardiopulmonary process."]


def test_the_offline_metrics_score_real_report_text(monkeypatch):
    from rouge_score import rouge_scorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    perfect, missing = radeval_scores(REFERENCES, REFERENCES, OFFLINE_METRICS)
    assert not missing and perfect["RadEval bleu"] == pytest.approx(1.0) and perfect["RadEval rougeL"] == 1.0
    scores, _ = radeval_scores(REFERENCES, HYPOTHESES, OFFLINE_METRICS)
    assert set(scores) == {"RadEval bleu", "RadEval rouge1", "RadEval rouge2", "RadEval rougeL"}
    assert 0 < scores["RadEval bleu"] < 1 and 0 < scores["RadEval rougeL"] < 1
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # what RadEval reports: the mean F-measure
    expected = sum(rouge.score(r, h)["rougeL"].fmeasure for r, h in zip(REFERENCES, HYPOTHESES)) / 3
    assert scores["RadEval rougeL"] == pytest.approx(expected, abs=5e-5)  # RadEval rounds to 4 places
    worse, _ = radeval_scores(REFERENCES, HYPOTHESES[::-1], OFFLINE_METRICS)
    assert worse["RadEval rougeL"] < scores["RadEval rougeL"]


@pytest.mark.parametrize("metric", MODEL_METRICS)
def test_a_model_metric_without_its_weights_is_not_computed_and_says_why(metric, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to find
    from flamingo_lib.evaluation import radeval_metrics

    monkeypatch.setattr(radeval_metrics, "_scorers", {})
    monkeypatch.setattr(radeval_metrics, "_reasons", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor does loading it switch the process's warnings off
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        scores, missing = radeval_scores(REFERENCES, HYPOTHESES, ["bleu", metric])
    assert set(missing) == {metric} and "RadEval bleu" in scores  # the others are still computed
    assert not any(metric in key for key in scores)  # no number for it, not even a default
    reason = missing[metric]
    assert reason.startswith(f"weights for {metric} are not in the local Hugging Face cache") or \
        reason.startswith(f"{metric} failed to load in radeval ("), reason
    with pytest.warns(UserWarning, match="always"):
        warnings.warn("always", UserWarning)  # the process's warning filters survived the load


def test_an_unknown_metric_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown metric.*'meteor'.*bleu, rouge, radgraph"):
        check_metrics(["bleu", "meteor"])
