"""The field's report-generation metrics: NLG (pycocoevalcap) and clinical efficacy (CheXpert labels).

Protocol (R2Gen convention, so numbers line up with the literature):
- NLG: reports are lower-cased, punctuation split off and whitespace collapsed, then scored with
  pycocoevalcap's BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, one reference per study.
  METEOR needs Java (Debian ``default-jre-headless``); without it METEOR is reported as missing
  with a warning, never estimated.
- Clinical efficacy: CheXpert observations labelled on reference and generated report; an
  observation counts as positive only when labelled 1.0; uncertain (-1.0), negative (0.0) and
  unmentioned (None) all count as not positive. Precision/recall/F1 are micro (pooled over
  observations) and macro (mean over observations) averages.
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS
from flamingo_lib.labeling.scores import precision_recall_f1

logger = logging.getLogger(__name__)
Labels = Mapping[str, float | None]


def normalise_report(text: str) -> str:
    """Lower-case, punctuation as separate tokens, single spaces (R2Gen-style cleaning)."""
    text = text.lower().replace("<eoc>", " ")
    text = re.sub(r"([.,;:!?()])", r" \1 ", text)
    return re.sub(r"\s+", " ", text).strip()


#: The columns :func:`nlg_metrics` returns, in its order.
NLG_METRICS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")


def coco_inputs(references: Sequence[str], hypotheses: Sequence[str]
                ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's ``gts`` and ``res``: the texts normalised, one per study id. An empty text
    would crash the scorers: it is scored as a token that matches nothing."""
    return ({i: [normalise_report(r) or "<empty>"] for i, r in enumerate(references)},
            {i: [normalise_report(h) or "<empty>"] for i, h in enumerate(hypotheses)})


def sentence_bleu(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """BLEU-4 of each hypothesis against its reference (pycocoevalcap's per-sentence scores, the texts
    normalised as :func:`nlg_metrics` normalises them): the reward stage's fluency term."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = coco_inputs(references, hypotheses)
    _, per_sentence = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(v) for v in per_sentence[3]]


def nlg_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float | None]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr over the corpus.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need as many hypotheses as references (got {len(hypotheses)} and {len(references)}, "
                         "at least one)")
    gts, res = coco_inputs(references, hypotheses)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: dict[str, float | None] = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["METEOR"] = meteor(gts, res)
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def sentence_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, list[float]]:
    """Each study's ROUGE-L and CIDEr sentence score: pycocoevalcap's corpus scores are their means
    (CIDEr's document frequencies are those of all ``references``)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = coco_inputs(references, hypotheses)
    return {"ROUGE_L": [float(s) for s in Rouge().compute_score(gts, res)[1]],
            "CIDEr": [float(s) for s in Cider().compute_score(gts, res)[1]]}


def meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float | None:
    """METEOR 1.5 through pycocoevalcap's Java jar; ``None`` (with a warning) without Java."""
    process = meteor_process()
    if process is None:
        logger.warning("METEOR skipped: no Java runtime (install Debian's default-jre-headless)")
        return None
    return float(process.compute_score(gts, res)[0])


def meteor_process() -> Any | None:
    """The process's one pycocoevalcap ``Meteor`` (its Java jar, started on first use), or None
    without Java. Shared by :func:`meteor` and the METEOR per-study statistic
    (:func:`~flamingo_lib.evaluation.study_statistics.meteor_statistic`); its ``lock`` guards each exchange."""
    global _METEOR
    if shutil.which("java") is None:
        return None
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()  # one Java process per Python process: starting it takes seconds
        atexit.register(close_meteor)
    return _METEOR


_METEOR = None


def close_meteor() -> None:
    """Stop the METEOR Java process, closing all three of its pipes (pycocoevalcap's own
    ``__del__`` closes stdin only, which left two unclosed-file ResourceWarnings at exit).
    Runs at interpreter exit; the next :func:`meteor_process` call starts a new process."""
    global _METEOR
    if _METEOR is None:
        return
    process, _METEOR = _METEOR.meteor_p, None
    for pipe in (process.stdin, process.stdout, process.stderr):
        pipe.close()
    process.kill()
    process.wait()


def _positive(labels: Labels, observation: str) -> bool:
    return labels.get(observation) == 1.0


def clinical_efficacy(
    references: Sequence[Labels], hypotheses: Sequence[Labels], observations: Sequence[str] = CHEXPERT_OBSERVATIONS
) -> dict[str, float]:
    """Micro and macro precision, recall and F1 over ``observations`` (positive = 1.0).

    Returns:
        ``{"micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall",
        "macro_f1"}`` plus ``"f1/<observation>"`` per observation.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference label sets but {len(hypotheses)} hypothesis label sets")
    totals = {"tp": 0, "fp": 0, "fn": 0}
    per_observation: dict[str, tuple[float, float, float]] = {}
    for obs in observations:
        tp = sum(_positive(r, obs) and _positive(h, obs) for r, h in zip(references, hypotheses))
        fp = sum(not _positive(r, obs) and _positive(h, obs) for r, h in zip(references, hypotheses))
        fn = sum(_positive(r, obs) and not _positive(h, obs) for r, h in zip(references, hypotheses))
        totals["tp"] += tp
        totals["fp"] += fp
        totals["fn"] += fn
        per_observation[obs] = precision_recall_f1(tp, fp, fn)
    micro = precision_recall_f1(totals["tp"], totals["fp"], totals["fn"])
    n = max(len(per_observation), 1)
    macro = tuple(sum(v[i] for v in per_observation.values()) / n for i in range(3))
    out = {"micro_precision": micro[0], "micro_recall": micro[1], "micro_f1": micro[2],
           "macro_precision": macro[0], "macro_recall": macro[1], "macro_f1": macro[2]}
    out.update({f"f1/{obs}": prf[2] for obs, prf in per_observation.items()})
    return out


#: The results table's clinical-efficacy measures: (column title, observation set, clinical_efficacy key).
_EFFICACY_MEASURES = (("micro-F1", "14", "micro_f1"), ("macro-F1", "14", "macro_f1"), ("micro-F1", "top 5", "micro_f1"),
                      ("precision", "14", "micro_precision"), ("recall", "14", "micro_recall"),
                      ("micro-F1", "rendered findings", "micro_f1"), ("macro-F1", "rendered findings", "macro_f1"))


def efficacy_columns(truths: dict[str, Sequence[Labels] | None], observations_top5: Sequence[str],
                     shown_observations: Sequence[str] | None = None
                     ) -> list[tuple[str, Sequence[Labels], Sequence[str], str]]:
    """The clinical-efficacy columns of the results table, in their order: ``(column, truth,
    observations, clinical_efficacy key)`` per named truth (skipped when None) over the 14
    observations, the top 5 and, when given, the ``shown_observations`` the images can show."""
    sets = {"14": CHEXPERT_OBSERVATIONS, "top 5": observations_top5, "rendered findings": shown_observations}
    return [(f"CE {title} ({label}, vs {name})", truth, sets[label], key)
            for name, truth in truths.items() if truth is not None
            for title, label, key in _EFFICACY_MEASURES if sets[label]]


def most_common_observations(labels: Sequence[Labels], k: int = 5, exclude: Sequence[str] = ("No Finding",)) -> list[str]:
    """The ``k`` observations most often positive in ``labels`` (ties broken by CheXpert order)."""
    counts = {obs: sum(_positive(l, obs) for l in labels) for obs in CHEXPERT_OBSERVATIONS if obs not in exclude}
    ranked = sorted(counts, key=lambda obs: (-counts[obs], CHEXPERT_OBSERVATIONS.index(obs)))
    return [obs for obs in ranked if counts[obs] > 0][:k]
