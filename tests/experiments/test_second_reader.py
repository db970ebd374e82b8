"""The second-reader diagnostic: reports redrawn from the true findings, scored against both yardsticks."""

from __future__ import annotations

from experiments.second_reader import agreement, second_reports
from flamingo_lib.data.phantom.text import findings_to_labels
from flamingo_lib.data.sample import CXRSample, Finding


def _study(i: int, findings: list[Finding], report: str) -> CXRSample:
    return CXRSample(id=f"s{i}", images=[], report=report, findings=findings, labels=findings_to_labels(findings))


ATELECTASIS = [Finding("atelectasis", side="left", zone="base", severity="mild")]
EFFUSION = [Finding("pleural effusion", side="right", severity="small")]
STUDIES = [
    _study(0, ATELECTASIS, "Streaky left base opacity, likely atelectasis. No pleural effusion or pneumothorax."),
    _study(1, EFFUSION, "Normal heart size. Small right pleural effusion. No pneumothorax."),
    _study(2, [], "Normal heart size. The lungs are clear. No pleural effusion or pneumothorax."),
]


def test_second_reports_redraw_the_phrasing_from_the_true_findings_reproducibly():
    draws = [second_reports(STUDIES, d) for d in range(12)]
    assert draws[3] == second_reports(STUDIES, 3)  # seeded by (study, draw)
    # the hedged atelectasis phrasing is one of several: some draws state it outright
    assert len({d[0] for d in draws}) > 1
    assert all("effusion" in d[1] for d in draws)


def test_agreement_scores_the_reference_and_each_draw_against_both_yardsticks():
    rows = agreement(STUDIES, draws=12)  # the rule-based labeler reads every report
    reference = rows[0]
    # the reference hedges its atelectasis: effusion a true positive, Lung Opacity a false
    # positive, atelectasis a false negative: F1 = 2 / (2 + 1 + 1)
    assert reference["draw"] == -1 and abs(reference["vs image truth"] - 0.5) < 1e-9
    texts = [second_reports(STUDIES, d)[0] for d in range(12)]
    outright = [row for row, text in zip(rows[1:], texts) if "likely" not in text]
    hedged = [row for row, text in zip(rows[1:], texts) if "likely" in text]
    assert outright and hedged, texts
    for row in outright:  # right about the image, wrong about the reference's wording
        assert row["vs image truth"] == 1.0 and row["vs reference"] < 1.0
    for row in hedged:  # the reference's own wording: wrong about the image, right about the wording
        assert abs(row["vs image truth"] - 0.5) < 1e-9 and row["vs reference"] == 1.0
