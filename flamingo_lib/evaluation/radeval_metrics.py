"""The field's report metrics through RadEval (``pip install .[eval]``), the package the
2024-2026 report-generation papers and the ReXrank leaderboard score with: we write none of them.

Two kinds:

* ``bleu`` and ``rouge`` need no weights and always run;
* the model-based metrics (``radgraph``, ``f1chexbert``, ``bertscore``, ``ratescore``, ``radcliq``,
  ``green``, ``srrbert``) load weights from the Hugging Face hub. Offline they run when the
  weights are in the local cache; otherwise they are *not computed*, with the reason (and how to
  fetch the weights): never estimated, never a crash.

METEOR and CIDEr stay with pycocoevalcap (:mod:`flamingo_lib.evaluation.metrics`), and the offline
labeler's clinical efficacy stays beside CheXbert's (``f1chexbert``) where that runs.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Metrics that need no weights.
OFFLINE_METRICS = ("bleu", "rouge")
#: Metrics that load a model from the hub (or the local cache).
MODEL_METRICS = ("radgraph", "f1chexbert", "bertscore", "ratescore", "radcliq", "green", "srrbert")
KNOWN_METRICS = OFFLINE_METRICS + MODEL_METRICS
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
