"""How well the rule-based labeler agrees with the human MeSH annotation of the IU reports.

Protocol:

* Input text: FINDINGS and IMPRESSION joined. The annotators assigned the MeSH terms from the
  whole report, and many findings are stated only in the IMPRESSION, so labeling FINDINGS
  alone would charge the labeler with misses it could not see. COMPARISON and INDICATION are
  left out: they state history and questions, not what this film shows.
* Reports: those annotated (not ``No Indexing``) with a FINDINGS or IMPRESSION text.
* Reference: :func:`~flamingo_lib.data.datasets.iu_reports.report_chexpert_labels`, on the observations
  MeSH covers (:data:`~flamingo_lib.data.datasets.iu_reports.MESH_COVERED_OBSERVATIONS`).
* Positive means exactly 1.0, on both sides. The labeler's uncertain (-1.0), negative (0.0)
  and not mentioned (``None``) all count as not positive. MeSH has no uncertain grade, and its
  annotators index what the film shows rather than what it might mean: hedged diagnoses
  ("concerning for pneumonia") are usually left out, so reading -1.0 as positive costs more
  precision than it gains recall (they do index some hedges, e.g. both sides of "atelectasis
  versus scarring"). ``--uncertain-positive`` scores the other reading for comparison.
* Per observation: precision, recall, F1 and support (reference positives); micro-F1 pools the
  true/false positives and false negatives of all covered observations, and is shown again
  without "No Finding", the largest and easiest class.
* Caveat: the phrase lists were refined by reading disagreements on these same reports (all
  splits), so the score is in-sample and somewhat optimistic for other corpora.

Run ``python -m flamingo_lib.labeling.agreement`` to print the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

import pandas as pd

from flamingo_lib.data.datasets.iu_reports import (
    MESH_COVERED_OBSERVATIONS,
    IUReport,
    load_iu_reports,
    report_chexpert_labels,
)
from flamingo_lib.data.sample import Label
from flamingo_lib.labeling.labeler import label_report
from flamingo_lib.labeling.scores import precision_recall_f1

#: Agreement the labeler is expected to reach on IU.
TARGET_MICRO_F1 = 0.85
#: Row of the micro average over the covered observations other than "No Finding".
MICRO_WITHOUT_NO_FINDING = "micro w/o No Finding"
_UNCERTAIN_IS_POSITIVE = False


def agreement_text(report: IUReport) -> str:
    """The text the labeler reads for one report: FINDINGS then IMPRESSION."""
    parts = (report.sections.get("FINDINGS", ""), report.sections.get("IMPRESSION", ""))
    return " ".join(p.strip() for p in parts if p.strip())


def _is_positive(value: Label, uncertain_is_positive: bool) -> bool:
    return value == 1.0 or (uncertain_is_positive and value == -1.0)


def agreement_table(
    predicted: Sequence[dict[str, Label]],
    reference: Sequence[dict[str, Label]],
    observations: Iterable[str] = MESH_COVERED_OBSERVATIONS,
    uncertain_is_positive: bool = _UNCERTAIN_IS_POSITIVE,
) -> pd.DataFrame:
    """Per-observation agreement of predicted labels with reference labels.

    Args:
        predicted: labeler output per report.
        reference: reference labels per report, aligned with ``predicted``.
        observations: which observations to score.
        uncertain_is_positive: count a predicted -1.0 as positive.

    Returns:
        One row per observation, a ``"micro"`` row pooling them all and, when "No Finding" is
        scored, a :data:`MICRO_WITHOUT_NO_FINDING` row pooling the others; columns
        ``precision``, ``recall``, ``f1``, ``support``, ``tp``, ``fp``, ``fn``.

    Raises:
        ValueError: if the two sequences differ in length or are empty.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions but {len(reference)} references")
    if not predicted:
        raise ValueError("no reports to compare")
    rows = {}
    for obs in observations:
        tp = fp = fn = 0
        for pred, ref in zip(predicted, reference, strict=True):
            p = _is_positive(pred.get(obs), uncertain_is_positive)
            r = ref.get(obs) == 1.0
            tp, fp, fn = tp + (p and r), fp + (p and not r), fn + (r and not p)
        rows[obs] = (tp, fp, fn)
    findings = [counts for obs, counts in rows.items() if obs != "No Finding"]
    rows["micro"] = tuple(sum(col) for col in zip(*rows.values(), strict=True))
    # "No Finding" is the largest class and the easiest; show the pool without it too.
    if findings and len(findings) < len(rows) - 1:
        rows[MICRO_WITHOUT_NO_FINDING] = tuple(sum(col) for col in zip(*findings, strict=True))
    table = pd.DataFrame(
        [(*precision_recall_f1(*counts), counts[0] + counts[2], *counts) for counts in rows.values()],
        index=list(rows),
        columns=["precision", "recall", "f1", "support", "tp", "fp", "fn"],
    )
    table.index.name = "observation"
    return table


def iu_agreement(
    reports: Sequence[IUReport] | None = None,
    uncertain_is_positive: bool = _UNCERTAIN_IS_POSITIVE,
) -> pd.DataFrame:
    """Score :func:`~flamingo_lib.labeling.labeler.label_report` against MeSH on IU reports.

    Args:
        reports: the reports to use; defaults to all of :func:`load_iu_reports`.
        uncertain_is_positive: count the labeler's -1.0 as positive (the documented protocol).

    Returns:
        The table of :func:`agreement_table`; micro-F1 is ``table.loc["micro", "f1"]``.
    """
    reports = load_iu_reports() if reports is None else reports
    predicted, reference = [], []
    for report in reports:
        ref = report_chexpert_labels(report)
        text = agreement_text(report)
        if text and any(v is not None for v in ref.values()):
            predicted.append(label_report(text))
            reference.append(ref)
    return agreement_table(predicted, reference, uncertain_is_positive=uncertain_is_positive)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the agreement table and micro-F1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--uncertain-positive",
        action="store_true",
        help="count the labeler's uncertain (-1.0) labels as positive instead of negative",
    )
    args = parser.parse_args(argv)
    table = iu_agreement(uncertain_is_positive=args.uncertain_positive)
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(table)
    micro = table.loc["micro", "f1"]
    print(f"\nmicro-F1 = {micro:.3f} (target {TARGET_MICRO_F1:.2f})")
    if MICRO_WITHOUT_NO_FINDING in table.index:
        print(f"micro-F1 without No Finding = {table.loc[MICRO_WITHOUT_NO_FINDING, 'f1']:.3f}")


if __name__ == "__main__":
    main()
