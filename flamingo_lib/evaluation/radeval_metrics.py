"""The field's report metrics through RadEval (``pip install .[eval]``), the package the
2024-2026 report-generation papers and the ReXrank leaderboard score with: we write none of them.

Two kinds:

* ``bleu`` and ``rouge`` need no weights and always run;
* the model-based metrics (``radgraph``, ``f1chexbert``, ``bertscore``, ``ratescore``, ``radcliq``,
  ``green``, ``srrbert``) load weights from the Hugging Face hub. Offline they run when the
  weights are in the local cache; otherwise they are *not computed*, with the reason (and how to
  fetch the weights): never estimated, never a crash.

Intervals and p-values (:func:`~flamingo_lib.evaluation.study_statistics.radeval_statistics`) need
per-study statistics of which the corpus score is an exact function; what RadEval computes gives them
for some metrics only:

* ``bleu``: pycocoevalcap's BLEU-4 scorer (RadEval's copy, on the raw texts): each study's n-gram
  counts, pooled as the corpus score pools them (its per-sample BLEU is *not* what the corpus pools);
* ``rouge`` (``rouge1``, ``rouge2``, ``rougeL``), ``radgraph`` (``radgraph_simple``, ``_partial``,
  ``_complete``), ``bertscore``, ``ratescore`` and ``green``: the corpus score is the mean of the
  per-sample scores RadEval returns with ``per_sample=True`` (:data:`PER_SAMPLE_METRICS`; BERTScore
  takes that mean in float32, so the two agree to about 1e-7 before RadEval's rounding);
* ``radcliq`` (``radcliq_v1``): the corpus score is the reciprocal of the mean of its per-sample scores;
* ``f1chexbert`` and ``srrbert``: no interval. Their corpus F1s pool labels over all studies
  (classification reports), and their per-sample outputs (accuracies, per-study F1s) do not give them.

Every corpus score is rounded by RadEval to 4 places; the statistics round as it does.

METEOR and CIDEr stay with pycocoevalcap (:mod:`flamingo_lib.evaluation.metrics`), and the offline
labeler's clinical efficacy stays beside CheXbert's (``f1chexbert``) where that runs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

#: Metrics that need no weights.
OFFLINE_METRICS = ("bleu", "rouge")
#: Metrics that load a model from the hub (or the local cache).
MODEL_METRICS = ("radgraph", "f1chexbert", "bertscore", "ratescore", "radcliq", "green", "srrbert")
KNOWN_METRICS = OFFLINE_METRICS + MODEL_METRICS
#: Metrics whose corpus score is a function of the mean of RadEval's per-sample scores: metric ->
#: that function ("mean": the mean itself; "reciprocal": 1 / mean, RadCliQ-v1's) and the scalar type
#: RadEval rounds the corpus score as (Python's ``round`` of a float and numpy's of a float64 can differ).
PER_SAMPLE_METRICS: dict[str, tuple[str, type]] = {
    "rouge": ("mean", float), "radgraph": ("mean", np.float64), "bertscore": ("mean", float),
    "ratescore": ("mean", float), "green": ("mean", float), "radcliq": ("reciprocal", np.float64)}
#: The column prefix: RadEval's BLEU is not pycocoevalcap's (tokenisation, smoothing).
PREFIX = "RadEval "

# One scorer per metric for the whole process (loading a model-based one takes seconds), and the
# reason a metric could not be loaded, so that it is said once and not retried per system.
_scorers: dict[str, Any] = {}
_reasons: dict[str, str] = {}


def check_metrics(names: Sequence[str]) -> list[str]:
    """``names`` as a list, each a metric RadEval offers here.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    unknown = [name for name in names if name not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; RadEval metrics: {', '.join(KNOWN_METRICS)} "
                         "(METEOR and CIDEr are always computed, by pycocoevalcap)")
    return list(names)


def quiet_radeval() -> ModuleType:
    """The ``radeval`` package, imported without its noise: radeval.utils tries to download NLTK
    data when imported and prints the failure offline.

    Raises:
        ModuleNotFoundError: radeval is not installed (the ``eval`` extra).
    """
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        import radeval

    return radeval


def _load(name: str) -> Any:
    """RadEval's scorer of one metric; raises what loading it raised."""
    radeval = quiet_radeval()
    # RadEval() turns every warning off for the whole process: kept inside this call
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        return radeval.RadEval(metrics=[name], show_progress=False)


def _reason(name: str, error: BaseException) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name == "radeval":
        return "radeval is not installed: pip install -e '.[eval]' (or make setup)"
    if isinstance(error, OSError):
        return (f"weights for {name} are not in the local Hugging Face cache; on a machine with internet "
                f"access, run `python -c \"from radeval import RadEval; RadEval(metrics=['{name}'])\"` once "
                "without HF_HUB_OFFLINE to fetch them into ~/.cache/huggingface (or copy that folder here)")
    return f"{name} failed to load in radeval ({type(error).__name__}: {error})"


def scorer(name: str) -> Any | None:
    """The loaded scorer of metric ``name``, or None when it cannot be loaded (:func:`not_computed`)."""
    if name not in _scorers and name not in _reasons:
        try:
            _scorers[name] = _load(name)
        except Exception as error:  # noqa: BLE001 - any failure to load means "not computed", said why
            _reasons[name] = _reason(name, error)
    return _scorers.get(name)


def not_computed(name: str) -> str | None:
    """Why metric ``name`` was not computed (None when it was, or has not been tried)."""
    return _reasons.get(name)


def radeval_scores(references: Sequence[str], hypotheses: Sequence[str], metrics: Sequence[str]
                   ) -> tuple[dict[str, float], dict[str, str]]:
    """Corpus scores of ``hypotheses`` against ``references`` for each RadEval metric.

    Returns:
        ``{"RadEval <key>": score}`` for every key the computed metrics return (``rouge`` gives
        ``rouge1``, ``rouge2``, ``rougeL``), and ``{metric: why it was not computed}``.

    Raises:
        ValueError: an unknown metric, or references and hypotheses of different lengths.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in check_metrics(metrics):
        loaded = scorer(name)
        if loaded is None:
            missing[name] = _reasons[name]
            continue
        with warnings.catch_warnings():
            result = loaded(refs=list(references), hyps=list(hypotheses))
        scores |= {f"{PREFIX}{key}": float(value) for key, value in result.items()
                   if isinstance(value, (int, float))}
    return scores, missing


def per_sample_scores(references: Sequence[str], hypotheses: Sequence[str], name: str) -> dict[str, list[float]]:
    """RadEval's per-sample scores of one metric (``per_sample=True``), keyed like its corpus scores
    (``rouge1`` ...): one list of len(hypotheses) per key; empty when the metric cannot be computed.
    Runs the metric again (its loaded model is reused)."""
    loaded = scorer(name)
    if loaded is None:
        return {}
    view = copy.copy(loaded)  # shares the loaded metric; only the output mode differs
    view.per_sample = True
    with warnings.catch_warnings():
        result = view(refs=list(references), hyps=list(hypotheses))
    return {key: list(value) for key, value in result.items() if isinstance(value, list)}
