"""Can one greedy pass learn what findings-guided decoding chooses? Best-of-N distillation.

Findings-guided decoding samples 32 reports a study and keeps the one whose stated findings the
model's own heads believe most (:mod:`flamingo_lib.inference.guided_decoding`). This probe makes
that choice on the *training* studies, with the run's heads and threshold, and fine-tunes the run's
model on the chosen reports in place of the references (rejection-sampling fine-tuning, or expert
iteration: the policy trained on its own best samples, as ReST and RAFT do for language models).
Nothing here reads the image truth: the choice is the heads' (which, as in every run, learned from
the training studies' findings targets), the same rule guided decoding applies to a new study.
``--rounds 2`` chooses again with the fine-tuned model and fine-tunes once more.

During the fine-tuning the findings tokens are built from the findings head, as at generation
(no teacher forcing), and the heads are not trained (``findings_loss_weight=0``: their outputs
reach the text detached, so they receive no gradient and keep their verdicts).

Greedy decoding before and after each round is scored on the first ``--score-studies`` studies of
the ``--score-split`` split (validation by default: a recipe is chosen there, never on the test
split) against the image truth and against the labeler's reading of the reference, with the reward
stage's hacking checks (:class:`Yardsticks`); ``--guided`` adds findings-guided decoding of the last
round's model, ``--beams N`` its beam search.

    HF_HUB_OFFLINE=1 python -m experiments.guided_distillation runs/readings1-s0 --out runs/distil \
        --candidates 16 [--rounds 2] [--score-split test --guided]

Each round's chosen reports go to ``OUT/chosen-R.jsonl`` (reused by a rerun with the same studies
and guided setup; another is refused, never written over) and its fine-tuned model to
``OUT/round-R`` (resumed from its checkpoint, refused when made from another choice); the scores to
``OUT/scores-SPLIT.json``, which keeps the rows an earlier call of the same setup scored and this one
did not (a call adding ``--beams`` keeps the guided row). A round's model is a run
``python -m flamingo_lib.cli.evaluate_on OUT/round-R --data phantom:templated`` scores. About 8 minutes
a round's choice (2,000 training studies, 16 candidates) and 3 minutes its 750 steps on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def with_reports(samples: Sequence[Any], reports: Sequence[str]) -> list[Any]:
    """Shallow copies of ``samples`` whose ``report`` is the matching one of ``reports``."""
    if len(samples) != len(reports):
        raise ValueError(f"{len(samples)} studies but {len(reports)} reports")
    copies = []
    for sample, report in zip(samples, reports):
        study = copy.copy(sample)
        study.report = report
        copies.append(study)
    return copies


def reference_choice(candidates: Any, references: Sequence[str], threshold: float, with_heads: bool = False
                     ) -> list[str]:
    """One candidate a study: the one whose findings agree best with its reference report's (the
    reward stage's :func:`~flamingo_lib.training.reward.clinical_reward` over the heads' observations,
    both read by the labeler: what a real dataset has), ties going to the heads' score, then to the
    earliest (greedy first). ``with_heads`` adds, with equal weight, the same F1 against the heads'
    verdict (the observations whose belief is above ``threshold``): the reference and the image judge
    together."""
    from flamingo_lib.inference.guided_decoding import findings_scores
    from flamingo_lib.labeling.labeler import label_report
    from flamingo_lib.training.reward import clinical_reward

    observations = candidates.observations
    picked = []
    for options, stated, belief, reference in zip(candidates.reports, candidates.stated, candidates.belief,
                                                   references):
        truth = label_report(reference)
        verdict = {o: 1.0 for o, b in zip(observations, belief.tolist()) if b > threshold}
        heads = findings_scores(stated, belief, threshold)
        keys = []
        for i, text in enumerate(options):
            read = label_report(text)
            reward = clinical_reward(read, truth, observations)
            if with_heads:
                reward += clinical_reward(read, verdict, observations)
            keys.append((reward, float(heads[i]), -i))
        picked.append(options[max(range(len(options)), key=keys.__getitem__)])
    return picked


def chosen_reports(model: Any, processor: Any, samples: Sequence[Any], setup: dict[str, Any], path: Path,
                   progress: bool = True, rule: str = "heads") -> list[str]:
    """The guided choice for each of ``samples`` under ``setup`` (threshold, candidates, temperature,
    top_p), read from ``path`` when it holds the same studies made with the same setup, else made
    and written there atomically. ``rule="reference"`` (or ``"reference+heads"``) chooses by
    :func:`reference_choice` instead.

    Raises:
        ValueError: ``path`` holds a choice of other studies or of another setup (never overwritten).
    """
    from flamingo_lib.inference.guided_decoding import choose, sample_candidates
    from flamingo_lib.io import write_text_atomic

    key = {k: setup[k] for k in ("threshold", "candidates", "temperature", "top_p")}
    if rule != "heads":
        key["rule"] = rule
    ids = [s.id for s in samples]
    if path.is_file():
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if lines and lines[0] == key and [row["id"] for row in lines[1:]] == ids:
            return [row["report"] for row in lines[1:]]
        made = lines[0] if lines else None
        raise ValueError(f"{path}: holds the guided choice of {max(len(lines) - 1, 0)} studies made with {made}; "
                         f"this run asks {key} for {len(ids)} studies: give another --out")
    candidates = sample_candidates(model, processor, samples, num_candidates=setup["candidates"],
                                   temperature=setup["temperature"], top_p=setup["top_p"], progress=progress)
    reports = (choose(candidates, setup["threshold"]) if rule == "heads"
               else reference_choice(candidates, [s.report for s in samples], setup["threshold"],
                                     with_heads=rule == "reference+heads"))
    rows = [json.dumps(key)] + [json.dumps({"id": i, "report": r}) for i, r in zip(ids, reports)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(rows) + "\n")
    return reports


@dataclass(frozen=True)
class Yardsticks:
    """How reports of ``samples`` (one per study) are scored: the findings micro-F1 over the rendered
    findings against the image truth and against the labeler's reading of the references, BLEU-4 and
    CIDEr, and the reward stage's hacking checks
    (:func:`experiments.reward_finetune.score_reports`: reports repeating a sentence, sentences no
    report of ``training_reports`` holds, length over the references')."""

    samples: Sequence[Any]
    training_reports: Sequence[str]
    top5: Sequence[str]

    def __call__(self, reports: Sequence[str]) -> dict[str, float]:
        from experiments.reward_finetune import score_reports

        return score_reports(reports, self.samples, self.training_reports, self.top5)


def greedy_scores(model: Any, processor: Any, yardsticks: Yardsticks, num_beams: int = 1) -> dict[str, float]:
    """The ``yardsticks`` of the greedy reports of their studies (beam search's with ``num_beams`` > 1)."""
    from flamingo_lib.inference.batched import generate_in_batches

    return yardsticks(generate_in_batches(model.eval(), processor, yardsticks.samples, batch_size=8, progress=False,
                                          num_beams=num_beams).reports)


def guided_test_reports(model: Any, processor: Any, val: Sequence[Any], studies: Sequence[Any],
                        setup: dict[str, Any]) -> Any:
    """Findings-guided decoding of ``studies`` as the pipeline evaluates it: ``setup``'s candidates,
    temperature and top-p (the run's), the threshold picked on ``val`` against its image truth over the
    rendered findings. Returns the :class:`~flamingo_lib.inference.guided_decoding.GuidedReports`."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.inference.guided_decoding import guided_reports

    return guided_reports(model.eval(), processor, val, [s.labels for s in val], studies, RENDERED_OBSERVATIONS,
                          num_candidates=setup["candidates"], temperature=setup["temperature"], top_p=setup["top_p"],
                          progress=False)


def guided_scores(model: Any, processor: Any, val: Sequence[Any], yardsticks: Yardsticks, setup: dict[str, Any]
                  ) -> dict[str, float]:
    """:func:`guided_test_reports` of the ``yardsticks``' studies, scored by them."""
    made = guided_test_reports(model, processor, val, yardsticks.samples, setup)
    return yardsticks(made.reports) | {"threshold": made.threshold}


def merged_summary(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the score rows of the one at ``path`` that it lacks, when that one was made with
    the same run, choice, recipe and scored studies (the rounds are read back, so its rows still hold);
    else ``summary`` as it is."""
    if not path.is_file():
        return summary
    earlier = json.loads(path.read_text(encoding="utf-8"))
    same = ("run_dir", "setup", "choice", "steps", "lr", "split", "studies")
    if any(earlier.get(k) != summary[k] for k in same):
        return summary
    return summary | {"scores": earlier.get("scores", {}) | summary["scores"]}


def fine_tune(model: Any, processor: Any, pipeline: Any, studies: Sequence[Any], out_dir: Path, args: Any,
              record: dict[str, Any]) -> Any:
    """The model fine-tuned on ``studies`` (their reports the chosen ones) into ``out_dir``, resumed
    where a checkpoint of the same settings is there (a finished round is read back, not retrained).

    Raises:
        ValueError: ``out_dir`` holds a round made from another run or guided setup (``record``).
    """
    from flamingo_lib.training.checkpoint import CHECKPOINT_FILE, checkpoint_record
    from flamingo_lib.training.config import TrainConfig
    from flamingo_lib.training.trainer import ReportCollator, Trainer

    t = pipeline.settings.train
    config = TrainConfig(out_dir=str(out_dir), max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         gate_lr_mult=t.gate_lr_mult, ff_gate_lr_mult=t.ff_gate_lr_mult, ff_gate_open_step=None,
                         weight_decay=t.weight_decay, warmup_steps=t.warmup_steps, findings_loss_weight=0.0,
                         seed=args.seed, eval_every=args.steps, save_every=min(args.steps, 250), progress=True)
    trainer = Trainer(model.train(), studies, None, ReportCollator(processor, pipeline.feature_cache), config,
                      record=record)
    if (out_dir / CHECKPOINT_FILE).is_file():
        saved = ((checkpoint_record(out_dir) or {}).get("settings") or {}).get("extra")
        if saved != json.loads(json.dumps(record)):  # as the checkpoint stores it
            raise ValueError(f"{out_dir}: a round made from {saved}, not from {record}: give another --out")
        trainer.resume()
    trainer.fit()
    return trainer.unwrapped


def main(argv: list[str] | None = None) -> None:
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.io import write_json_atomic
    from flamingo_lib.pipeline.run_records import guided_setup, model_directory, training_record
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True,
                        help="chosen-R.jsonl, the fine-tuned rounds (round-R/) and scores-SPLIT.json")
    parser.add_argument("--rounds", type=int, default=1, help="choose and fine-tune this many times, each round "
                        "choosing with the model the last one made")
    parser.add_argument("--candidates", type=int, default=None, help="sampled reports a study (default: the run's)")
    parser.add_argument("--temperature", type=float, default=None, help="default: the run's")
    parser.add_argument("--max-studies", type=int, default=None, help="training studies used (default: all)")
    parser.add_argument("--steps", type=int, default=750, help="fine-tuning steps a round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-split", default="val", choices=("val", "test"))
    parser.add_argument("--score-studies", type=int, default=250)
    parser.add_argument("--choose", default="heads", choices=("heads", "reference", "reference+heads"),
                        help="what picks a study's candidate: the heads (guided decoding's rule), its agreement "
                        "with the reference report's findings (the reward stage's reward), or that plus its "
                        "agreement with the heads' verdict; ties to the heads")
    parser.add_argument("--guided", action="store_true", help="also score findings-guided decoding of the last "
                        "round's model (the run's candidates and temperature, the threshold picked on its "
                        "guided_val_samples val studies, 250 by default; with --score-split test)")
    parser.add_argument("--beams", type=int, default=0, help="also score beam search with this many beams of the "
                        "last round's model")
    args = parser.parse_args(argv)
    if args.guided and args.score_split != "test":
        parser.error("--guided picks its threshold on the val split: score it with --score-split test")

    pipeline = Pipeline.from_run(args.run_dir, progress=False)  # its own settings: never retrained
    model, processor = pipeline.model_and_processor
    model_dir = model_directory(args.run_dir)
    setup = guided_setup(model_dir, candidates=args.candidates, temperature=args.temperature)
    if setup is None:
        parser.error(f"{args.run_dir} recorded no findings-guided threshold (eval/guided_decoding.json)")
    train = pipeline.samples("train")[:args.max_studies]
    d, seed = pipeline.settings.data, pipeline.settings.train.seed
    studies = open_source(d.source, args.score_split, d.image_size, args.score_studies, seed=seed)
    results = Path(args.run_dir) / "eval" / "results.json"
    if not results.is_file():
        parser.error(f"{results} is missing: evaluate the run first (its top-5 observations are scored here)")
    scored = Yardsticks([studies[i] for i in range(len(studies))], pipeline.splits["train"].reports,
                        json.loads(results.read_text(encoding="utf-8"))["top5"])
    scores: dict[str, Any] = {"round 0 (the run's model)": greedy_scores(model, processor, scored)}
    out = Path(args.out)
    for r in range(1, args.rounds + 1):
        reports = chosen_reports(model, processor, train, setup, out / f"chosen-{r}.jsonl", rule=args.choose)
        changed = sum(c != s.report for c, s in zip(reports, train)) / len(train)
        print(f"round {r}: the guided choice differs from the reference in {changed:.1%} of {len(train)} studies")
        # the run's data record, so that the round's model is a run flamingo_lib.cli.evaluate_on can score
        record = (training_record(model_dir) or {}) | {"distilled_from": str(model_dir), "round": r,
                                                      "guided_setup": setup} | (
            {"choice": args.choose} if args.choose != "heads" else {})
        model = fine_tune(model, processor, pipeline, with_reports(train, reports), out / f"round-{r}", args, record)
        scores[f"round {r}"] = greedy_scores(model, processor, scored) | {"changed": changed}
        # as each round ends: a long run stopped early keeps what it measured
        print(f"round {r}, greedy on {len(scored.samples)} {args.score_split} studies: "
              + "  ".join(f"{k} {v:.3f}" for k, v in scores[f"round {r}"].items()), flush=True)
    if args.guided:
        # as the pipeline decodes it: the run's own candidates, temperature and val studies, not the choice's
        scores[f"guided, round {args.rounds}"] = guided_scores(model, processor, pipeline.guided_tuning_samples(),
                                                               scored, guided_setup(model_dir))
    if args.beams > 1:
        scores[f"beam search ({args.beams} beams), round {args.rounds}"] = greedy_scores(model, processor, scored,
                                                                                      args.beams)
    print(f"greedy on {len(scored.samples)} {args.score_split} studies (findings micro-F1 and the hacking checks):")
    for name, row in scores.items():
        print(f"  {name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    summary = {"run_dir": args.run_dir, "setup": setup, "choice": args.choose, "steps": args.steps, "lr": args.lr,
               "split": args.score_split, "studies": len(scored.samples), "scores": scores}
    path = out / f"scores-{args.score_split}.json"
    write_json_atomic(path, merged_summary(path, summary), indent=1)


if __name__ == "__main__":
    main()
