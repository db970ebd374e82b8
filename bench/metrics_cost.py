"""5. What scoring costs: seconds per 1,000 reports of each offline metric, on phantom report text.

RadEval's offline metrics (BLEU, ROUGE: ``flamingo_lib.evaluation.radeval_metrics``) beside the
pycocoevalcap scorers the results table always computes (BLEU-1..4, ROUGE-L, CIDEr) and the offline
labeler's reading that clinical efficacy needs. METEOR is not timed: it runs in a Java process,
outside the benchmark's thread clock. The hypotheses are other studies' reports (a shuffled copy of
the references), so the scorers do real matching work.
"""

from __future__ import annotations

import random
from typing import Any

from bench.common import Env, interleaved


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` phantom reports (IU-written text) and a shuffled copy as hypotheses."""
    from flamingo_lib.data.phantom.dataset import PhantomCXR

    reports = PhantomCXR(split="train", text="iu").reports
    references = [reports[i % len(reports)] for i in range(n)]
    hypotheses = references[:]
    random.Random(seed).shuffle(hypotheses)
    return references, hypotheses


def run(env: Env, n: int, reps: int) -> dict[str, Any]:
    """Seconds per 1,000 reports of each scorer (median of ``reps``, interleaved)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from flamingo_lib.evaluation.metrics import coco_inputs
    from flamingo_lib.evaluation.radeval_metrics import scorer
    from flamingo_lib.labeling.labeler import label_report

    references, hypotheses = corpus(n)
    gts, res = coco_inputs(references, hypotheses)
    fns = {"pycocoevalcap BLEU-1..4": lambda: Bleu(4).compute_score(gts, res, verbose=0),
           "pycocoevalcap ROUGE-L": lambda: Rouge().compute_score(gts, res),
           "pycocoevalcap CIDEr": lambda: Cider().compute_score(gts, res),
           "labeler (clinical efficacy's reading)": lambda: [label_report(h) for h in hypotheses]}
    missing = {}
    for name in ("bleu", "rouge"):
        loaded = scorer(name)
        if loaded is None:  # radeval not installed: said, not timed
            from flamingo_lib.evaluation.radeval_metrics import not_computed

            missing[f"RadEval {name}"] = not_computed(name)
            continue
        fns[f"RadEval {name}"] = lambda loaded=loaded: loaded(refs=references, hyps=hypotheses)
    stats = interleaved(fns, env, reps)
    return {"reports": n, "clock": env.clock_name, "not_measured": missing | {
                "pycocoevalcap METEOR": "a Java process, outside the thread clock"},
            "rows": [{"scorer": name, "s_per_1000": s.median * 1000 / n, "min": s.min * 1000 / n,
                      "max": s.max * 1000 / n} for name, s in stats.items()]}
