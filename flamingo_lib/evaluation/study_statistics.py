"""Per-study statistics (:class:`~flamingo_lib.evaluation.uncertainty.StudyStatistic`) of the metrics
scored outside numpy: METEOR in pycocoevalcap's Java jar, and RadEval's columns.

METEOR 1.5's corpus score is not a mean of sentence scores. The jar turns each study into a
*statistics line* (``SCORE ||| reference ||| hypothesis``): lengths and function words of hypothesis
and reference, the words each matcher stage matched in each, the number of chunks and the matched
words. ``EVAL ||| stats ||| stats ...`` scores each line, then adds the lines up and scores the sum:
that is the corpus score. The sum skips one thing (its ``MeteorStats.addStats``): the chunk of a
study matched whole, as one chunk, is not added. The per-study rows here carry that chunk as 0 for
such studies, so their plain sum is the jar's sum, and the jar itself scores every summed row
(equal to pycocoevalcap's corpus score to the last printed digit, tested). Nothing of METEOR's
formula is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flamingo_lib.evaluation.uncertainty import StudyStatistic, bleu_count_statistics

#: The fields of a METEOR statistics line before the matcher stages and after them.
_METEOR_HEAD, _METEOR_TAIL = 4, 3


def meteor_statistic(references: Sequence[str], hypotheses: Sequence[str]) -> StudyStatistic | None:
    """METEOR (the texts as :func:`~flamingo_lib.evaluation.metrics.nlg_metrics` normalises them) as
    per-study statistics lines; None without Java (METEOR then has no column either) or studies.

    Per-study rows (n_studies, 4 + 4 x stages + 3): hypothesis and reference length, their function
    words, per matcher stage the content and function words matched in hypothesis and reference,
    the chunks (0 for a study matched whole in one chunk: the jar's aggregate leaves it out) and the
    matched words of each.
    """
    from flamingo_lib.evaluation.metrics import coco_inputs, meteor_process

    process = meteor_process()
    if process is None or not references:
        return None
    gts, res = coco_inputs(references, hypotheses)
    with process.lock:  # pycocoevalcap's: one exchange with the jar at a time
        lines = [process._stat(res[i][0], gts[i]) for i in gts]  # noqa: SLF001 - its SCORE exchange
    stats = np.array([[float(x) for x in line.split()] for line in lines], dtype=float)
    # each matcher stage: hypothesis and reference content words, then their function words
    stages = np.arange(_METEOR_HEAD, stats.shape[1] - _METEOR_TAIL, 4)
    chunks = stats.shape[1] - _METEOR_TAIL
    whole = ((stats[:, stages] + stats[:, stages + 2]).sum(1) == stats[:, 0]) \
        & ((stats[:, stages + 1] + stats[:, stages + 3]).sum(1) == stats[:, 1]) & (stats[:, chunks] == 1)
    stats[whole, chunks] = 0  # what the jar adds to its corpus sum for a study matched whole
    return StudyStatistic(stats, _meteor_scores)


def _meteor_scores(summed: np.ndarray, _: int) -> np.ndarray:
    """(..., k) summed statistics lines -> (...) METEOR scores, all rows in one ``EVAL`` exchange
    (the jar answers one score per row, then the score of their sum, which is not wanted here)."""
    from flamingo_lib.evaluation.metrics import meteor_process

    process = meteor_process()
    rows = summed.reshape(-1, summed.shape[-1])
    # repr: every digit of the sums travels (they are counts: exact in a double)
    line = "EVAL ||| " + " ||| ".join(" ".join(map(repr, row)) for row in rows.tolist())
    with process.lock:
        process.meteor_p.stdin.write(f"{line}\n".encode())
        process.meteor_p.stdin.flush()
        scores = [float(process.meteor_p.stdout.readline()) for _ in range(len(rows))]
        process.meteor_p.stdout.readline()
    return np.array(scores, dtype=float).reshape(summed.shape[:-1])


def _rounded(values: np.ndarray, scalar: type) -> np.ndarray:
    """``values`` rounded to 4 places as RadEval rounds a corpus score of type ``scalar``."""
    return np.vectorize(lambda v: float(round(scalar(v), 4)), otypes=[float])(values)


def radeval_statistics(references: Sequence[str], hypotheses: Sequence[str], metrics: Sequence[str]
                       ) -> dict[str, StudyStatistic]:
    """``{"RadEval <key>": statistic}`` for each column of the RadEval ``metrics`` that per-study
    statistics give exactly (:mod:`flamingo_lib.evaluation.radeval_metrics` says which): its pooled
    score is RadEval's corpus score, rounded to 4 places as RadEval reports it. A metric that was
    not computed, ``f1chexbert`` and ``srrbert`` give none.

    Per-study rows: BLEU (n_studies, 10) n-gram counts
    (:func:`~flamingo_lib.evaluation.uncertainty.bleu_count_statistics`); the others (n_studies, 1)
    RadEval's per-sample score.
    """
    from flamingo_lib.evaluation.radeval_metrics import PER_SAMPLE_METRICS, PREFIX, per_sample_scores, scorer

    statistics: dict[str, StudyStatistic] = {}
    for name in metrics:
        if name == "bleu" and scorer(name) is not None:
            from radeval.metrics.bleu.bleu_scorer import BleuScorer

            counts = BleuScorer(n=4)
            for hypothesis, reference in zip(hypotheses, references, strict=True):  # as RadEval's Bleu adds them
                counts += (hypothesis, [reference])
            bleu4 = bleu_count_statistics(counts, 4)[4]
            statistics[f"{PREFIX}bleu"] = StudyStatistic(
                bleu4.per_study, lambda summed, n, reduce=bleu4.reduce: _rounded(reduce(summed, n), float))
        elif name in PER_SAMPLE_METRICS:
            function, scalar = PER_SAMPLE_METRICS[name]
            for key, scores in per_sample_scores(references, hypotheses, name).items():
                values = np.array([s if isinstance(s, (int, float)) else np.nan for s in scores], dtype=float)
                if len(values) != len(hypotheses) or not np.isfinite(values).all():
                    continue  # a missing per-sample score: no interval rather than one over other studies

                def reduce(summed: np.ndarray, n: int, function: str = function, scalar: type = scalar) -> np.ndarray:
                    mean = summed[..., 0] / n
                    with np.errstate(divide="ignore"):  # a mean of 0: RadCliQ's corpus score is inf too
                        return _rounded(1 / mean if function == "reciprocal" else mean, scalar)

                statistics[f"{PREFIX}{key}"] = StudyStatistic(values.reshape(-1, 1), reduce)
    return statistics
