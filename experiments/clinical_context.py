"""What does the clinical context buy? Change statements and findings with and without the prior study.

Trains one pipeline run per context on the longitudinal phantom (``phantom:longitudinal``: 1-4
studies per patient, findings that evolve, reports that compare with the prior study), with the
demo's recipe and budget, and scores greedy reports on its test split:

- the accuracy of change statements (new / increased / decreased / unchanged / resolved per
  finding, read by :func:`flamingo_lib.labeling.changes.change_statements`) against the phantom's
  truth, over the follow-up studies (a first study has no change to state; statements made there
  are counted as ``extra``);
- the findings micro-F1 over the rendered findings against the image truth and against the
  labeler's reading of the reference (the demo's yardsticks), over all test studies and over the
  follow-ups;
- the baseline that copies the prior study's report, and the nearest-neighbour report.

    HF_HUB_OFFLINE=1 python -m experiments.clinical_context --out runs/context \\
        --contexts none prior indication,prior

About 6-8 minutes a context on 2 idle cores (the first also renders the films and fills the
feature cache). Writes ``OUT/clinical_context[-CONTEXTS][-guided][-lateral][-all-earlier][-TOKENS].csv`` and
``.json``; each run stays in ``OUT/<context>[-pa+lateral][-all-earlier][-TOKENS]``. ``--guided`` adds
findings-guided decoding (32 samples a study; no retraining), ``--views PA+LATERAL`` a lateral film per
study, ``--all-earlier`` the rule under which the report reads every earlier film, the prior's too,
``--tokens prior --teacher 0.5`` the findings tokens of the joint state with the prior study
(:mod:`flamingo_lib.modeling.heads.findings_tokens`), taught to half the training studies.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

F1_TRUTH = "CE micro-F1 (rendered findings, vs image truth)"
F1_REFERENCE = "CE micro-F1 (rendered findings, vs reference)"


def findings_f1(reports: Sequence[str], samples: Sequence[Any]) -> dict[str, float]:
    """Findings micro-F1 of ``reports`` over the rendered findings, against the image truth and the
    labeler's reading of the references (as the results table scores them)."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.evaluation.metrics import clinical_efficacy
    from flamingo_lib.labeling.labeler import label_report

    hypotheses = [label_report(r) for r in reports]
    truth = clinical_efficacy([s.labels for s in samples], hypotheses, RENDERED_OBSERVATIONS)["micro_f1"]
    reference = clinical_efficacy([label_report(s.report) for s in samples], hypotheses,
                                  RENDERED_OBSERVATIONS)["micro_f1"]
    return {"F1 vs image truth": truth, "F1 vs reference": reference}


def system_row(name: str, reports: Sequence[str], test: Sequence[Any], follow_up: Sequence[int]) -> dict[str, Any]:
    """Change-statement accuracy over the follow-ups (statements on first studies counted apart) and
    the findings F1 over all studies and over the follow-ups."""
    from flamingo_lib.labeling.changes import change_accuracy, change_statements

    changes = change_accuracy([reports[i] for i in follow_up], [test[i].meta["changes"] for i in follow_up])
    firsts = [i for i in range(len(test)) if i not in set(follow_up)]
    row = {"system": name, "change accuracy": changes["accuracy"], "change pairs": changes["n"],
           "changes unstated": changes["unstated"],
           "first studies with a change statement": sum(bool(change_statements(reports[i])) for i in firsts)}
    row |= {f"{k} (per change)": v["accuracy"] for k, v in changes["per_change"].items()}
    row |= findings_f1(reports, test)
    row |= {f"{k} (follow-ups)": v for k, v in findings_f1([reports[i] for i in follow_up],
                                                         [test[i] for i in follow_up]).items()}
    return row


def tokens_suffix(tokens: str, teacher: float, taught: str = "labels") -> str:
    """The run-name suffix of a findings-token recipe (``""`` for none)."""
    if tokens == "none":
        return ""
    return f"-{tokens}-tokens" + (f"-teacher{teacher:g}" if teacher else "") + \
        (f"-{taught}" if teacher and taught != "labels" else "")


def run_context(out: Path, context: str, steps: int | None, seed: int, guided: bool, views: str,
                all_earlier: bool = False, tokens: str = "none", teacher: float = 0.0, taught: str = "labels",
                severity: bool = False) -> tuple[Any, pd.DataFrame]:
    """Train (or reuse) the run of one context; the pipeline and its test generations table (greedy,
    and findings-guided when asked: the guided setup does not retrain). ``tokens``: ``"findings"``
    (the study's findings tokens) or ``"prior"`` (tokens of the joint state with the prior study),
    taught to a ``teacher`` share of the training studies, from their labels or (``taught="readings"``)
    the labeler's reading of their reports; ``severity``: with a severity head, whose change since the
    prior moves the kept findings' tokens."""
    from flamingo_lib.pipeline.steps import Pipeline

    name = (context.replace(",", "+") or "none") + ("" if views == "PA" else f"-{views.lower()}") + \
        ("-all-earlier" if all_earlier else "") + tokens_suffix(tokens, teacher, taught) + \
        ("-severity" if severity else "")
    flat = {"run_dir": str(out / name), "source": f"phantom:longitudinal;views={views}" if views != "PA"
            else "phantom:longitudinal", "context": "" if context == "none" else context,
            "guided_candidates": 32 if guided else 0, "seed": seed, "only_attend_immediate_media": not all_earlier}
    if tokens != "none":
        flat |= {"findings_tokens": True, "prior_findings_tokens": tokens == "prior"}
        if teacher:
            flat["findings_tokens_teacher"] = teacher
            flat["findings_tokens_teacher_targets"] = taught
    if severity:
        flat["severity_head"] = True
    if steps is not None:
        flat["max_steps"] = steps
    pipeline = Pipeline(**flat)
    pipeline.evaluate()
    return pipeline, pipeline.generations()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/context"))
    parser.add_argument("--contexts", nargs="+", default=["none", "prior", "indication,prior"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guided", action="store_true", help="also score findings-guided decoding (32 samples)")
    parser.add_argument("--all-earlier", action="store_true", help="text attends to every earlier film (the "
                        "prior's too), not only its own study's")
    parser.add_argument("--views", default="PA", choices=["PA", "PA+LATERAL"], help="the phantom's views per study")
    parser.add_argument("--tokens", default="none", choices=["none", "findings", "prior"],
                        help="findings tokens: the study's own, or the joint state with the prior study's")
    parser.add_argument("--teacher", type=float, default=0.0,
                        help="share of training studies whose tokens are built from their targets")
    parser.add_argument("--teacher-targets", default="labels", choices=["labels", "readings"],
                        help="those targets: the studies' labels or the labeler's reading of their reports")
    parser.add_argument("--severity", action="store_true",
                        help="a severity head: a kept finding's token also says how its size moved")
    args = parser.parse_args(argv)

    rows, test = [], None
    for context in args.contexts:
        pipeline, generations = run_context(args.out, context, args.steps, args.seed, args.guided, args.views,
                                            args.all_earlier, args.tokens, args.teacher, args.teacher_targets,
                                            args.severity)
        if test is None:
            test = pipeline.samples("test")
            follow_up = [i for i, s in enumerate(test) if s.prior is not None]
            assert list(generations["id"]) == [s.id for s in test]
            rows.append(system_row("copy the prior report", [s.prior.report if s.prior else "" for s in test],
                                   test, follow_up))
            rows.append(system_row("nearest neighbour", list(generations["nearest neighbour"]), test, follow_up))
        views = ("" if args.views == "PA" else f", views {args.views}") + (", all earlier films" if args.all_earlier
                                                                           else "") + \
            ("" if args.tokens == "none" else f", {args.tokens} tokens (teacher {args.teacher:g}"
             + ("" if args.teacher_targets == "labels" else f", {args.teacher_targets}") + ")") + \
            (", severity head" if args.severity else "")
        rows.append(system_row(f"flamingo greedy, context {context}{views}", list(generations["flamingo"]), test,
                               follow_up))
        if args.guided:
            rows.append(system_row(f"flamingo findings-guided, context {context}{views}",
                                   list(generations["flamingo, findings-guided"]), test, follow_up))
        print(pd.DataFrame(rows).set_index("system").T.round(3).to_string(), flush=True)
    table = pd.DataFrame(rows).set_index("system")
    args.out.mkdir(parents=True, exist_ok=True)
    # one table per experiment: the contexts are named unless they are the default three
    contexts = "" if args.contexts == parser.get_default("contexts") else \
        "-" + "-".join(c.replace(",", "+") for c in args.contexts)
    stem = "clinical_context" + contexts + ("-guided" if args.guided else "") + \
        ("" if args.views == "PA" else "-lateral") + ("-all-earlier" if args.all_earlier else "") + \
        tokens_suffix(args.tokens, args.teacher, args.teacher_targets) + ("-severity" if args.severity else "")
    table.to_csv(args.out / f"{stem}.csv")
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"contexts": args.contexts, "steps": args.steps, "seed": args.seed, "views": args.views,
         "all_earlier": args.all_earlier, "tokens": args.tokens, "teacher": args.teacher,
         "teacher_targets": args.teacher_targets, "severity": args.severity,
         "guided": args.guided, "test_studies": len(test),
         "follow_ups": len(follow_up), "rows": table.reset_index().to_dict("records")}, indent=2, default=float))
    return table


if __name__ == "__main__":
    main()
