"""Does reward fine-tuning make one greedy pass as good as findings-guided decoding?

Starts from a trained pipeline run's model, fine-tunes it with the reward stage
(:class:`flamingo_lib.training.reward_trainer.RewardTrainer`: sampled reports rewarded by the
labeler's clinical-efficacy F1 against the *reference* report, self-critical or group baseline,
the supervised loss as anchor) on the run's training split and cached features, then scores greedy
reports on the test split before and after: the findings micro-F1 over the rendered findings
against the image truth and against the labeler's reading of the reference (the demo's two
yardsticks), BLEU-4 and CIDEr, and three reward-hacking checks: the share of reports that repeat a
sentence, the share of generated sentences no training report holds, and the mean length against
the references'.

    HF_HUB_OFFLINE=1 python -m experiments.reward_finetune runs/demo --steps 100 --out runs/demo-reward

About 5 seconds a step on 2 idle cores at the defaults (8 studies x 4 samples), plus a minute per
scoring of the 250 test studies. The run's own folders are not touched (``--out`` gets the stage).
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


def score_greedy(model: Any, processor: Any, test: Sequence[Any], training_reports: Sequence[str],
                 top5: Sequence[str]) -> dict[str, float]:
    """The demo's yardsticks and the hacking checks of greedy reports on ``test``."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.evaluation.evaluate import score
    from flamingo_lib.inference.batched import generate_in_batches
    from flamingo_lib.labeling.labeler import label_report

    reports = generate_in_batches(model, processor, test, batch_size=16, progress=False).reports
    references = [s.report for s in test]
    row = score(references, reports, label_report, [s.labels for s in test], top5, RENDERED_OBSERVATIONS)
    keep = {"CE micro-F1 (rendered findings, vs image truth)": "F1 vs image truth",
            "CE micro-F1 (rendered findings, vs reference)": "F1 vs reference", "BLEU_4": "BLEU-4", "CIDEr": "CIDEr"}
    return {name: float(row[key]) for key, name in keep.items()} | hacking_checks(reports, references, training_reports)


def main(argv: list[str] | None = None) -> None:
    from flamingo_lib.evaluation.metrics import sentence_bleu
    from flamingo_lib.pipeline.steps import Pipeline
    from flamingo_lib.training.reward_trainer import RewardConfig, RewardTrainer
    from flamingo_lib.training.trainer import ReportCollator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True, help="where the reward stage writes its run")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="reports sampled per study and step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--baseline", choices=("greedy", "group"), default="greedy")
    parser.add_argument("--anchor", type=float, default=1.0)
    parser.add_argument("--fluency", type=float, default=0.0, help="weight of sentence BLEU-4 in the reward")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipeline = Pipeline(run_dir=args.run_dir, progress=False)
    model, processor = pipeline.model_and_processor
    test = pipeline.samples("test")
    training_reports = pipeline.splits["train"].reports
    top5 = json.loads((Path(args.run_dir) / "eval" / "results.json").read_text())["top5"]
    torch.manual_seed(args.seed)
    before = score_greedy(model, processor, test, training_reports, top5)
    t = pipeline.settings.train
    config = RewardConfig(out_dir=args.out, max_steps=args.steps, batch_size=args.batch_size,
                          samples_per_study=args.samples, lr=args.lr, temperature=args.temperature,
                          baseline=args.baseline, anchor_weight=args.anchor, fluency_weight=args.fluency,
                          seed=args.seed, findings_loss_weight=t.findings_loss_weight,
                          findings_targets=t.findings_targets, gate_lr_mult=t.gate_lr_mult,
                          ff_gate_lr_mult=t.ff_gate_lr_mult, weight_decay=t.weight_decay,
                          eval_every=max(args.steps, 1), save_every=25)
    trainer = RewardTrainer(model, pipeline.splits["train"], None, ReportCollator(processor, pipeline.feature_cache),
                            config, fluency=sentence_bleu if args.fluency else None)
    trainer.fit()
    after = score_greedy(trainer.unwrapped.eval(), processor, test, training_reports, top5)
    print("| greedy, test split | before | after |\n|---|---|---|")
    for name in before:
        print(f"| {name} | {before[name]:.3f} | {after[name]:.3f} |")


if __name__ == "__main__":
    main()
