"""How far can one greedy pass go by following its findings tokens, and how well does it follow them?

Two measures on a run whose model reads findings tokens, on the first ``--max-studies`` test studies:

* **the heads' verdicts as reports**: a text that states exactly the observations a head's
  probability puts above a threshold, and nothing else, scored as the demo scores reports (findings
  micro-F1 against the image truth and against the labeler's reading of the reference), for the
  findings head, the reading head and their mean; and, beside them, the study's labels and the
  reference's reading written out the same way. Enlarged Cardiomediastinum is left unstated, as
  no training report of the phantom states it. This is the ceiling of a greedy pass that follows
  the tokens built from that head.
* **greedy reports with given tokens**: the tokens built from the reference's reading, from the
  study's labels, from the findings head (as generation does) or from its verdict above 0.5
  (binarised), and the greedy report scored the same way. With the reading's tokens a text that
  follows them perfectly scores 1.0 against the reference.

The run must have been trained with findings tokens, e.g. one taught the reports' readings:

    make demo ARGS="--findings_tokens --findings_tokens_teacher 1.0 \
        --findings_tokens_teacher_targets readings --run-dir runs/readings1-s0"
    HF_HUB_OFFLINE=1 python -m experiments.token_following runs/readings1-s0 [--max-studies 250]

About 3 minutes on 250 studies (2 cores); writes nothing into the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

#: No training report of the phantom states it (docs/results.md): a text cannot learn to.
UNSTATED = ("Enlarged Cardiomediastinum",)
THRESHOLDS = (0.3, 0.5)


def _positives(labels: Mapping[str, Any], observations: Sequence[str]) -> list[float]:
    return [float(labels.get(o) == 1.0) for o in observations]


def head_verdicts(model: Any, processor: Any, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
    """{"findings", "readings", "mean"} -> (N, K) the heads' probabilities on each study's first film
    (``mean`` only with a reading head)."""
    observations = list(model.config.findings_head)
    rows: dict[str, list[list[float]]] = {"findings": [], "readings": []}
    with torch.no_grad():
        for sample in samples:
            findings, readings = model.predict_heads(pixel_values=processor.film_batch(sample).batch["pixel_values"])
            rows["findings"].append([float(findings[o][0]) for o in observations])
            if readings is not None:
                rows["readings"].append([float(readings[o][0]) for o in observations])
    verdicts = {name: torch.tensor(values) for name, values in rows.items() if values}
    if "readings" in verdicts:
        verdicts["mean"] = (verdicts["findings"] + verdicts["readings"]) / 2
    return verdicts


def verdict_scores(verdicts: Mapping[str, torch.Tensor], observations: Sequence[str], truth: Sequence[Mapping],
                   references: Sequence[Mapping], thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """One row per (verdict, threshold): the micro-F1 of stating exactly the observations whose
    probability is above the threshold (minus :data:`UNSTATED`), against ``truth`` and against
    ``references`` (readings)."""
    from flamingo_lib.evaluation.metrics import clinical_efficacy

    rows = []
    for head, probabilities in verdicts.items():
        for threshold in thresholds:
            stated = [{o: float(p > threshold and o not in UNSTATED) for o, p in zip(observations, row)}
                      for row in probabilities.tolist()]
            rows.append({"tokens": f"{head}, as text", "threshold": threshold, "vs image truth":
                         clinical_efficacy(truth, stated, observations)["micro_f1"],
                         "vs reference": clinical_efficacy(references, stated, observations)["micro_f1"]})
    return pd.DataFrame(rows)


def greedy_with_tokens(model: Any, processor: Any, samples: Sequence[Any], given: Sequence[Mapping] | None
                       ) -> list[str]:
    """Greedy reports, each study's findings tokens built from ``given`` (its labels or a reading; 1.0
    where positive) or, with None, from the findings head as generation does."""
    from flamingo_lib.inference.batched import generate_in_batches

    observations = list(model.config.findings_head)
    reports = []
    for i, sample in enumerate(samples):
        tokens = {} if given is None else {"token_findings": torch.tensor([_positives(given[i], observations)])}
        reports += generate_in_batches(model, processor, [sample], batch_size=1, progress=False, **tokens).reports
    return reports


def main(argv: list[str] | None = None) -> None:
    from flamingo_lib import FlamingoModel, FlamingoProcessor
    from flamingo_lib.evaluation.metrics import clinical_efficacy
    from flamingo_lib.labeling.labeler import label_report
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--max-studies", type=int, default=250)
    args = parser.parse_args(argv)
    model_dir = f"{args.run_dir}/train/model"
    model, processor = FlamingoModel.from_pretrained(model_dir).eval(), FlamingoProcessor.from_pretrained(model_dir)
    if not model.config.findings_tokens:
        parser.error(f"{model_dir} reads no findings tokens (config.findings_tokens is False)")
    observations = list(model.config.findings_head)
    test = Pipeline.from_run(args.run_dir, progress=False).splits["test"]
    samples = [test[i] for i in range(min(args.max_studies, len(test)))]
    truth, references = [s.labels for s in samples], [label_report(s.report) for s in samples]
    verdicts = head_verdicts(model, processor, samples)
    given = {"the study's labels": truth, "the reference's reading": references}
    named = {"findings": "the findings head's verdict", "readings": "the reading head's verdict",
             "mean": "the heads' mean verdict"}
    heads = {named[name]: probabilities for name, probabilities in verdicts.items()}
    table = pd.concat([verdict_scores(heads, observations, truth, references), verdict_scores(
        {name: torch.tensor([_positives(labels, observations) for labels in values]) for name, values in given.items()},
        observations, truth, references, thresholds=(0.5,))])
    decided = [{o: float(p > 0.5) for o, p in zip(observations, row)} for row in verdicts["findings"].tolist()]
    rows = []
    for name, given in (("the reference's reading", references), ("the study's labels", truth),
                        ("the findings head (as generated)", None), ("the findings head's verdict > 0.5", decided)):
        stated = [label_report(r) for r in greedy_with_tokens(model, processor, samples, given)]
        rows.append({"tokens": f"greedy, tokens from {name}", "threshold": float("nan"),
                     "vs image truth": clinical_efficacy(truth, stated, observations)["micro_f1"],
                     "vs reference": clinical_efficacy(references, stated, observations)["micro_f1"]})
    print(pd.concat([table, pd.DataFrame(rows)]).round(3).to_string(index=False, na_rep=""))


if __name__ == "__main__":
    main()
