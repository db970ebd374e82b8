"""Does the cross-attention use the image yet? Training dynamics on the phantom.

Trains the "tiny" preset on cached features (the pipeline's data and cache) and, every 100 steps,
reports the model's token loss on 64 test studies with their own images and with the images
shifted by one study, and the attention gates. A gap of 0 means the image changes nothing.

    HF_HUB_OFFLINE=1 python -m experiments.image_usage --gate-lr-mult 1 --steps 600
    HF_HUB_OFFLINE=1 python -m experiments.image_usage --gate-lr-mult 30 --steps 600
About 2.5 minutes per 600 steps on 2 cores (after the encoders and the feature cache exist).
"""

from __future__ import annotations

import argparse
import time

import torch

from flamingo_lib.pipeline.steps import Pipeline
from flamingo_lib.training.trainer import ReportCollator, parameter_groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gate-lr-mult", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    pipeline = Pipeline(run_dir="runs/diagnostics", preset="tiny", progress=False)
    model, processor = pipeline.model_and_processor
    collate = ReportCollator(processor, pipeline.feature_cache)
    train, test = pipeline.splits["train"], pipeline.splits["test"]
    probe = {k: v for k, v in collate([test[i] for i in range(64)]).items() if k != "ids"}
    shuffled = {**probe, "image_embeddings": probe["image_embeddings"].roll(1, 0)}

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameter_groups(model, args.lr, 0.1, args.gate_lr_mult), lr=args.lr)
    base = [g["lr"] for g in optimiser.param_groups]
    generator, start = torch.Generator().manual_seed(0), time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        for group, lr in zip(optimiser.param_groups, base):
            group["lr"] = lr * min(1.0, step / 20)  # the pipeline's 20 warmup steps
        batch = collate([train[i] for i in torch.randint(0, len(train), (args.batch_size,), generator=generator)])
        batch.pop("ids")
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimiser.step()
        optimiser.zero_grad()
        if step % 100 == 0:
            model.eval()
            with torch.no_grad():
                own, other = model(**probe).loss.item(), model(**shuffled).loss.item()
            model.train()
            attention_gates = [round(p.item(), 3) for n, p in named if n.endswith("attn_gate")]
            print(f"step {step} ({time.perf_counter() - start:.0f} s): loss own image {own:.4f}, another study's "
                  f"image {other:.4f}, gap {other - own:.4f}; attention gates {attention_gates}", flush=True)


if __name__ == "__main__":
    main()
