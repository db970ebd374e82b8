"""Does reward fine-tuning make one greedy pass as good as findings-guided decoding?

Starts from a trained pipeline run's model, fine-tunes it with the reward stage
(:class:`flamingo_lib.training.reward_trainer.RewardTrainer`: sampled reports rewarded by the
labeler's clinical-efficacy F1 against the *reference* report, self-critical or group baseline,
the supervised loss as anchor) on the run's training split and cached features, then scores greedy
reports on the test split before and after: the findings micro-F1 over the rendered findings
against the image truth and against the labeler's reading of the reference (the demo's two
yardsticks), BLEU-4 and CIDEr, and three reward-hacking checks: the share of reports that repeat a
sentence, the share of generated sentences no training report holds, and the mean length against
the references'. ``--beams N`` also scores beam search with N beams, and ``--guided``
findings-guided decoding as the pipeline's evaluation makes it (the run's ``eval`` settings:
candidates, temperature, the threshold picked on ``guided_val_samples`` val studies, never on
the test split), before and after.

    HF_HUB_OFFLINE=1 python -m experiments.reward_finetune runs/demo --steps 100 --out runs/demo-reward
    HF_HUB_OFFLINE=1 python -m experiments.reward_finetune runs/demo --out DIR --model runs/demo-reward/model \\
        --beams 4 --guided

``--model`` scores an already fine-tuned model (the stage writes its own to ``OUT/model``) against
the run's, without training. About 5 seconds a step on 2 idle cores at the defaults (8 studies x 4
samples); on the demo, each model's scoring of the 250 test studies takes some 10 seconds greedy and
15 with 4 beams, and guided decoding about 4 minutes (the candidates of 250 val and 250 test studies;
one torch thread; ``python -m bench.decoding_cost``). The run's own folders are not touched
(``--out`` gets the stage and ``scores.json``: every column of the printed table).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def sentences(report: str) -> list[str]:
    """The report's sentences, lower-cased, without their full stops."""
    return [s.strip().lower() for s in re.split(r"(?<=\.)\s+", report.strip()) if s.strip(" .")]


def hacking_checks(reports: Sequence[str], references: Sequence[str], training_reports: Sequence[str]
                   ) -> dict[str, float]:
    """Share of reports repeating a sentence, share of sentences outside the training reports', and
    the mean length (words) of the reports over the references'."""
    seen = {s for report in training_reports for s in sentences(report)}
    split = [sentences(r) for r in reports]
    total = sum(len(s) for s in split)
    return {"repeated_sentence_share": sum(len(s) != len(set(s)) for s in split) / max(len(reports), 1),
            "unseen_sentence_share": sum(x not in seen for s in split for x in s) / max(total, 1),
            "length_ratio": sum(len(r.split()) for r in reports) / max(sum(len(r.split()) for r in references), 1)}


def score_reports(reports: Sequence[str], test: Sequence[Any], training_reports: Sequence[str],
                  top5: Sequence[str]) -> dict[str, float]:
    """The demo's yardsticks and the hacking checks of ``reports``, one per study of ``test``."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.evaluation.evaluate import score
    from flamingo_lib.labeling.labeler import label_report

    references = [s.report for s in test]
    row = score(references, reports, label_report, [s.labels for s in test], top5, RENDERED_OBSERVATIONS)
    keep = {"CE micro-F1 (rendered findings, vs image truth)": "F1 vs image truth",
            "CE micro-F1 (rendered findings, vs reference)": "F1 vs reference", "BLEU_4": "BLEU-4", "CIDEr": "CIDEr"}
    return {name: float(row[key]) for key, name in keep.items()} | hacking_checks(reports, references, training_reports)


def score_decoding(model: Any, processor: Any, test: Sequence[Any], training_reports: Sequence[str],
                   top5: Sequence[str], num_beams: int = 1) -> dict[str, float]:
    """The yardsticks of greedy reports on ``test``, or of beam search's with ``num_beams`` > 1."""
    from flamingo_lib.inference.batched import generate_in_batches

    reports = generate_in_batches(model, processor, test, batch_size=16, progress=False, num_beams=num_beams).reports
    return score_reports(reports, test, training_reports, top5)


def score_guided(model: Any, processor: Any, pipeline: Any, test: Sequence[Any], training_reports: Sequence[str],
                 top5: Sequence[str]) -> dict[str, float]:
    """The yardsticks of findings-guided reports on ``test``, made as the pipeline's evaluation makes
    them: its eval settings, its seed, the threshold picked on its val
    studies against their truth (the image truth on the phantom), so the two columns differ only by
    the model. The picked threshold is returned too (``threshold``)."""
    from flamingo_lib.inference.guided_decoding import guided_reports

    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS

    s, e = pipeline.settings, pipeline.settings.eval
    val = pipeline.guided_tuning_samples()
    # the phantom's image truth over the rendered findings, as the pipeline picks the threshold on it
    guided = guided_reports(model, processor, val, [v.labels for v in val], test, RENDERED_OBSERVATIONS,
                            num_candidates=e.guided_candidates, max_new_tokens=e.max_new_tokens, seed=s.train.seed,
                            progress=False, temperature=e.guided_temperature)
    return score_reports(guided.reports, test, training_reports, top5) | {"threshold": guided.threshold}


def score_all(model: Any, processor: Any, pipeline: Any, test: Sequence[Any], training_reports: Sequence[str],
              top5: Sequence[str], beams: int, guided: bool) -> dict[str, dict[str, float]]:
    """{decoding: yardsticks} for greedy, and beam search (``beams`` > 0) and guided decoding when asked."""
    model = model.eval()
    scores = {"greedy": score_decoding(model, processor, test, training_reports, top5)}
    if beams:
        scores[f"beam {beams}"] = score_decoding(model, processor, test, training_reports, top5, num_beams=beams)
    if guided:
        scores["guided"] = score_guided(model, processor, pipeline, test, training_reports, top5)
    return scores


def markdown_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> str:
    """One row per metric, a before and an after column per decoding (test split)."""
    columns = [(decoding, when, scores[decoding]) for decoding in before
               for when, scores in (("before", before), ("after", after))]
    metrics = [name for name in before["greedy"]] + (["threshold"] if "guided" in before else [])
    lines = ["| test split | " + " | ".join(f"{decoding} {when}" for decoding, when, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in metrics:
        lines.append(f"| {name} | " + " | ".join(f"{row[name]:.3f}" if name in row else "" for _, _, row in columns)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from flamingo_lib.evaluation.metrics import sentence_bleu
    from flamingo_lib.io import write_json_atomic
    from flamingo_lib.pipeline.steps import Pipeline
    from flamingo_lib.training.reward_trainer import RewardConfig, RewardTrainer
    from flamingo_lib.training.trainer import ReportCollator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True, help="where the reward stage writes its run, and scores.json")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="reports sampled per study and step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--baseline", choices=("greedy", "group"), default="greedy")
    parser.add_argument("--anchor", type=float, default=1.0)
    parser.add_argument("--anchor-teacher", type=float, default=None,
                        help="share of the anchor's studies whose findings tokens are their targets "
                             "(default: the run's findings_tokens_teacher, as the pipeline's reward stage takes it)")
    parser.add_argument("--fluency", type=float, default=0.0, help="weight of sentence BLEU-4 in the reward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beams", type=int, default=0, help="also score beam search with this many beams (0: no)")
    parser.add_argument("--guided", action="store_true", help="also score findings-guided decoding")
    parser.add_argument("--model", default=None,
                        help="an already fine-tuned model directory to score as 'after' (no training)")
    args = parser.parse_args(argv)
    if args.beams < 0 or args.beams == 1:
        parser.error("--beams must be 0 (off) or at least 2")

    pipeline = Pipeline.from_run(args.run_dir, progress=False)  # its own settings: never retrained
    model, processor = pipeline.model_and_processor
    test = pipeline.samples("test")
    training_reports = pipeline.splits["train"].reports
    top5 = json.loads((Path(args.run_dir) / "eval" / "results.json").read_text())["top5"]
    torch.manual_seed(args.seed)
    before = score_all(model, processor, pipeline, test, training_reports, top5, args.beams, args.guided)
    if args.model is not None:
        from flamingo_lib.modeling.model import FlamingoModel

        tuned = FlamingoModel.from_pretrained(args.model)
    else:
        t = pipeline.settings.train
        config = RewardConfig(out_dir=args.out, max_steps=args.steps, batch_size=args.batch_size,
                              samples_per_study=args.samples, lr=args.lr, temperature=args.temperature,
                              baseline=args.baseline, anchor_weight=args.anchor, fluency_weight=args.fluency,
                              seed=args.seed, findings_loss_weight=t.findings_loss_weight,
                              findings_targets=t.findings_targets, gate_lr_mult=t.gate_lr_mult,
                              findings_tokens_teacher=(t.findings_tokens_teacher if args.anchor_teacher is None
                                                       else args.anchor_teacher),
                              findings_tokens_teacher_targets=t.findings_tokens_teacher_targets,
                              ff_gate_lr_mult=t.ff_gate_lr_mult, weight_decay=t.weight_decay,
                              eval_every=max(args.steps, 1), save_every=25)
        trainer = RewardTrainer(model, pipeline.splits["train"], None,
                                ReportCollator(processor, pipeline.feature_cache), config,
                                fluency=sentence_bleu if args.fluency else None)
        trainer.fit()
        tuned = trainer.unwrapped
    after = score_all(tuned, processor, pipeline, test, training_reports, top5, args.beams, args.guided)
    table = markdown_table(before, after)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scores.json", {"run_dir": args.run_dir, "model": args.model or str(out / "model"),
                                            "before": before, "after": after}, indent=1)


if __name__ == "__main__":
    main()
