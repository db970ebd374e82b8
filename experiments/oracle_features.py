"""Is the image side or the language side short of the findings?

Trains the run's Flamingo recipe (same preset, steps, learning rates) on *oracle* visual tokens
instead of the frozen encoder's: every one of the 100 tokens is a fixed "anatomy" vector plus,
for each rendered finding the study has, that finding's fixed random direction (plus a little
noise). The findings are then trivially readable from the tokens, and what remains is the
cross-attention and the frozen LM learning to write them. Greedy reports on the first 100 test
studies are scored like the demo (rendered findings, micro-F1 against the image truth).

If the oracle run names the findings the real run misses, the language side is not the
bottleneck: the resampler does not get them out of the encoder's tokens.

    HF_HUB_OFFLINE=1 python -m experiments.oracle_features runs/demo
About 7 minutes on 2 cores (a full training); writes nothing into the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
from flamingo_lib.labeling.labeler import label_report
from flamingo_lib.pipeline.steps import Pipeline
from flamingo_lib.training.trainer import ReportCollator, Trainer

TOKENS, WIDTH = 100, 128  # the embedded CNN's grid: 10 x 10 tokens of width 128


def positives(labels: dict) -> torch.Tensor:
    """(K,) 1.0 where a rendered observation is positive."""
    return torch.tensor([float(labels.get(obs) == 1.0) for obs in RENDERED_OBSERVATIONS])


class OracleTokens:
    """Studies -> (B, 1, TOKENS, WIDTH) tokens that spell out their rendered findings."""

    def __init__(self, seed: int = 0, signal: float = 1.0, noise: float = 0.1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.anatomy = torch.randn(TOKENS, WIDTH, generator=generator)
        self.directions = torch.randn(len(RENDERED_OBSERVATIONS), WIDTH, generator=generator)
        self.signal, self.noise = signal, noise

    def __call__(self, samples: Sequence[Any]) -> torch.Tensor:
        findings = torch.stack([positives(s.labels) for s in samples]) @ self.directions  # (B, WIDTH)
        tokens = self.anatomy + self.signal * findings[:, None, :]
        return (tokens + self.noise * torch.randn_like(tokens)).unsqueeze(1)


class OracleCollator(ReportCollator):
    """A training batch whose image embeddings are the oracle's tokens."""

    def __init__(self, processor: Any, oracle: OracleTokens) -> None:
        super().__init__(processor)
        self.oracle = oracle

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        batch = super().__call__(samples)
        batch.pop("pixel_values")
        batch["image_embeddings"] = self.oracle(samples)
        return batch


@torch.no_grad()
def greedy_reports(model: Any, processor: Any, samples: Sequence[Any], oracle: OracleTokens) -> list[str]:
    """One greedy report per study, conditioned on its oracle tokens."""
    model.eval()
    reports = []
    for start in range(0, len(samples), 8):
        chunk = list(samples[start:start + 8])
        batch = processor([processor.study_prompt(1)] * len(chunk), [list(s.images) for s in chunk],
                          padding_side="left")
        batch.pop("pixel_values")
        ids = model.generate(**batch, image_embeddings=oracle(chunk), max_new_tokens=60)
        reports += model.new_reports(processor, ids, batch["input_ids"].shape[1])
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run whose settings to copy (only its settings are read)")
    parser.add_argument("--signal", type=float, default=1.0, help="oracle signal scale (anatomy is N(0, 1))")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:  # a fresh model, not the run's trained one
        # a quiet pipeline with the run's settings in a fresh folder; the oracle's run shows its bar
        pipeline = Pipeline.from_run(args.run_dir, run_dir=out, progress=False)
        s = pipeline.settings
        model, processor = pipeline.model_and_processor
        if model.config.dim_visual != WIDTH:
            raise SystemExit(f"the oracle spells {WIDTH}-wide tokens; this preset's encoder gives {model.config.dim_visual}")
        oracle = OracleTokens(seed=s.train.seed, signal=args.signal)
        config = dataclasses.replace(s.train, out_dir=out, eval_every=s.train.max_steps, save_every=10 ** 9,
                                     progress=True)
        Trainer(model, pipeline.splits["train"], pipeline.splits["val"], OracleCollator(processor, oracle),
                config).fit()
    test = [pipeline.splits["test"][i] for i in range(min(100, len(pipeline.splits["test"])))]
    predicted = torch.stack([positives(label_report(r)) for r in greedy_reports(model, processor, test, oracle)])
    truth = torch.stack([positives(study.labels) for study in test])
    tp = float((predicted * truth).sum())
    print(f"oracle tokens, greedy, {len(test)} test studies: rendered-findings micro-F1 vs image truth "
          f"{2 * tp / float(predicted.sum() + truth.sum()):.3f}")
    print("| finding | present | named | correctly |\n|---|---|---|---|")
    for j, obs in enumerate(RENDERED_OBSERVATIONS):
        print(f"| {obs} | {int(truth[:, j].sum())} | {int(predicted[:, j].sum())} | "
              f"{int((predicted[:, j] * truth[:, j]).sum())} |")


if __name__ == "__main__":
    main()
