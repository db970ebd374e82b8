"""How sure each number of the results table is: a 95% bootstrap interval over studies, and the
paired approximate-randomisation p-value of each system against the model (RadEval's
``compare_systems``; the findings-guided row against greedy decoding is one of them).

Both work on *per-study statistics* from which a metric is computed exactly:

* clinical efficacy: each study's true positives, false positives and false negatives per
  observation; micro scores pool the counts, macro-F1 averages the per-observation F1s (as
  :func:`~flamingo_lib.evaluation.metrics.clinical_efficacy` does);
* ROUGE-L and CIDEr: each study's sentence score from pycocoevalcap, whose corpus score is their
  mean (CIDEr's document frequencies are those of the whole test split, held fixed when resampling);
* BLEU-1..4: each study's n-gram counts as pycocoevalcap's ``BleuScorer`` cooks them (candidate
  length, closest reference length, n-gram guesses and matches), pooled as its corpus score pools them;
* METEOR: each study's statistics line from pycocoevalcap's METEOR 1.5 jar, summed as the jar sums
  them, the jar scoring each summed row (:func:`~flamingo_lib.evaluation.study_statistics.meteor_statistic`);
* the RadEval columns: BLEU as counts (as above), ROUGE and the model-based metrics whose corpus score
  is a function of the mean of RadEval's per-sample scores
  (:func:`~flamingo_lib.evaluation.study_statistics.radeval_statistics`); CheXbert's and SRR-BERT's
  F1s are not, and get no interval.

Resamples draw the same studies for every system (a paired bootstrap), seeded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

N_RESAMPLES = 1000
N_PERMUTATIONS = 10_000
CONFIDENCE = 0.95


@dataclass
class StudyStatistic:
    """A metric as per-study statistics and the function that turns their sum into the score.

    Attributes:
        per_study: (n_studies, k) statistics of one system.
        reduce: (..., k) summed statistics (and the number of studies summed) -> (...) scores.
    """

    per_study: np.ndarray
    reduce: Callable[[np.ndarray, int], np.ndarray]

    def score(self, rows: np.ndarray | None = None) -> np.ndarray | float:
        """The score of all studies, or of each row of study indices ``rows`` (R, n) -> (R,)."""
        if rows is None:
            return float(self.reduce(self.per_study.sum(0), len(self.per_study)))
        return self.reduce(self.per_study[rows].sum(1), rows.shape[1])


def _mean(summed: np.ndarray, n: int) -> np.ndarray:
    return summed[..., 0] / n


def mean_statistic(scores: Sequence[float]) -> StudyStatistic:
    """A metric that is the mean of per-study scores (pycocoevalcap's ROUGE-L and CIDEr)."""
    return StudyStatistic(np.asarray(scores, dtype=float).reshape(-1, 1), _mean)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def efficacy_statistic(truth: Sequence[dict], hypotheses: Sequence[dict], observations: Sequence[str],
                       measure: str) -> StudyStatistic:
    """Clinical efficacy as per-study counts: ``measure`` is ``micro_f1``, ``micro_precision``,
    ``micro_recall`` or ``macro_f1`` over ``observations`` (positive = 1.0)."""
    def positive(labels: Sequence[dict]) -> np.ndarray:
        return np.array([[labels_.get(obs) == 1.0 for obs in observations] for labels_ in labels], dtype=bool)

    t, h = positive(truth), positive(hypotheses)
    counts = np.concatenate([t & h, ~t & h, t & ~h], axis=1).astype(float)  # (n, 3K): tp, fp, fn per observation
    k = len(observations)

    def reduce(summed: np.ndarray, _: int) -> np.ndarray:
        tp, fp, fn = summed[..., :k], summed[..., k:2 * k], summed[..., 2 * k:]
        if measure == "macro_f1":
            return _safe_ratio(2 * tp, 2 * tp + fp + fn).mean(-1) if k else np.zeros(summed.shape[:-1])
        tp, fp, fn = tp.sum(-1), fp.sum(-1), fn.sum(-1)
        return {"micro_f1": lambda: _safe_ratio(2 * tp, 2 * tp + fp + fn),
                "micro_precision": lambda: _safe_ratio(tp, tp + fp),
                "micro_recall": lambda: _safe_ratio(tp, tp + fn)}[measure]()

    return StudyStatistic(counts, reduce)


def bleu_statistics(references: Sequence[str], hypotheses: Sequence[str], n: int = 4) -> dict[str, StudyStatistic]:
    """``BLEU_1`` .. ``BLEU_n`` as per-study counts of pycocoevalcap's ``BleuScorer`` (the texts as
    :func:`~flamingo_lib.evaluation.metrics.nlg_metrics` normalises them): their pooled score is
    pycocoevalcap's corpus BLEU ("closest" reference length), to the last digit."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    from flamingo_lib.evaluation.metrics import coco_inputs

    gts, res = coco_inputs(references, hypotheses)
    scorer = BleuScorer(n=n)
    for i in gts:  # as pycocoevalcap's Bleu adds them
        scorer += (res[i][0], gts[i])
    return {f"BLEU_{k}": statistic for k, statistic in bleu_count_statistics(scorer, n).items()}


def bleu_count_statistics(scorer: Any, n: int = 4) -> dict[int, StudyStatistic]:
    """BLEU of each order 1..n as the per-study counts of a filled ``BleuScorer`` (pycocoevalcap's,
    or RadEval's copy of it: the same cooking), pooled as its corpus score pools them.

    Per-study rows (n_studies, 2 + 2n): candidate length, closest reference length, the n-gram
    guesses of each order, then the n-gram matches of each order.
    """
    counts = np.array([[c["testlen"], scorer._single_reflen(c["reflen"], "closest", c["testlen"]),  # noqa: SLF001
                        *c["guess"][:n], *c["correct"][:n]] for c in scorer.ctest], dtype=float).reshape(-1, 2 + 2 * n)

    def reduce_for(order: int) -> Callable[[np.ndarray, int], np.ndarray]:
        def reduce(summed: np.ndarray, _: int) -> np.ndarray:
            tiny, small = 1e-15, 1e-9  # pycocoevalcap's guards against empty counts
            testlen, reflen = summed[..., 0], summed[..., 1]
            product = np.ones(summed.shape[:-1])
            for k in range(order):
                product = product * (summed[..., 2 + n + k] + tiny) / (summed[..., 2 + k] + small)
            score = product ** (1 / order)
            ratio = (testlen + tiny) / (reflen + small)
            return np.where(ratio < 1, score * np.exp(1 - 1 / ratio), score)
        return reduce

    return {k: StudyStatistic(counts, reduce_for(k)) for k in range(1, n + 1)}


def bootstrap_rows(n_studies: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_studies) study indices drawn with replacement, the same for every system."""
    return np.random.default_rng(seed).integers(0, n_studies, size=(n_resamples, n_studies))


def interval(statistic: StudyStatistic, rows: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over the resamples ``rows``."""
    scores = statistic.score(rows)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def paired_p_values(statistics: Mapping[str, StudyStatistic], n_permutations: int = N_PERMUTATIONS,
                    seed: int = 0) -> dict[str, float]:
    """p-value of each system against the first (``statistics``' order), by paired approximate
    randomisation (RadEval's ``compare_systems``): how often swapping the two systems' outputs
    study by study changes the score by at least the observed difference."""
    from flamingo_lib.evaluation.radeval_metrics import quiet_radeval

    compare_systems = quiet_radeval().compare_systems

    names = list(statistics)
    n = len(statistics[names[0]].per_study)
    # compare_systems swaps outputs; an output here is "study i of system s", scored by its statistics
    outputs = {name: [f"{name}\t{i}" for i in range(n)] for name in names}
    lookup = {f"{name}\t{i}": statistics[name].per_study[i] for name in names for i in range(n)}
    reduce = statistics[names[0]].reduce

    def metric(hypotheses: Sequence[str], _references: Sequence[str]) -> float:
        return float(reduce(np.sum([lookup[h] for h in hypotheses], axis=0), len(hypotheses)))

    with contextlib.redirect_stdout(io.StringIO()):
        _, scores = compare_systems(outputs, {"m": metric}, [str(i) for i in range(n)], n_samples=n_permutations,
                                    seed=seed, print_results=False)
    return {name: float(scores[name]["m_pvalue"]) for name in names[1:]}


def efficacy_statistics(hyp_labels: Sequence[dict], truths: Mapping[str, Sequence[dict] | None],
                        observations_top5: Sequence[str], shown_observations: Sequence[str] | None = None
                        ) -> dict[str, StudyStatistic]:
    """The clinical-efficacy columns of :func:`~flamingo_lib.evaluation.evaluate.clinical_scores`
    (:func:`~flamingo_lib.evaluation.metrics.efficacy_columns`: same names, same values) as per-study statistics."""
    from flamingo_lib.evaluation.metrics import efficacy_columns

    return {column: efficacy_statistic(truth, hyp_labels, observations, key)
            for column, truth, observations, key in efficacy_columns(dict(truths), observations_top5,
                                                                     shown_observations)}


def uncertainty_table(statistics: Mapping[str, Mapping[str, StudyStatistic]], reference_system: str,
                      n_resamples: int = N_RESAMPLES, n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                      confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (system, metric): ``value``, ``low``, ``high`` (the bootstrap interval),
    ``p_vs_<reference_system>`` (paired approximate randomisation; NaN for the reference itself) and
    ``permutations`` (its trials: a p-value of 0 means below 1 / permutations).

    Args:
        statistics: metric -> system -> its per-study statistic.
        n_resamples: bootstrap resamples (0: no intervals). n_permutations: 0: no p-values.
    """
    column = f"p_vs_{reference_system}"
    if n_permutations and importlib.util.find_spec("radeval") is None:
        n_permutations = 0  # the paired test's engine is the eval extra's: without it, no p-values (NaN)
    rows = []
    for metric, systems in statistics.items():
        n = len(next(iter(systems.values())).per_study)
        resampled = bootstrap_rows(n, n_resamples, seed) if n_resamples and n else None
        ordered = {reference_system: systems[reference_system]} | dict(systems) if reference_system in systems \
            else dict(systems)
        p = paired_p_values(ordered, n_permutations, seed) if n_permutations and reference_system in systems \
            and len(ordered) > 1 and n else {}
        for system, statistic in systems.items():
            low, high = interval(statistic, resampled, confidence) if resampled is not None else (np.nan, np.nan)
            rows.append({"system": system, "metric": metric, "value": statistic.score(), "low": low, "high": high,
                         column: p.get(system, np.nan), "permutations": n_permutations if p else 0})
    return pd.DataFrame(rows)
