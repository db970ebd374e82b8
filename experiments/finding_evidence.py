"""Where is a finding lost between the image and the report?

For a trained run, per rendered finding, two measurements on the last 400 studies of the
training split (held out from the probes below; the Flamingo itself trained on them, so the
second measurement is, if anything, optimistic):

1. *Carried*: AUROC of a linear probe (mean + max pooled, 1,600 studies) on the frozen encoder's
   patch tokens and on the trained resampler's latents: does the visual input to the
   cross-attention still hold the finding?
2. *Used*: teacher-forced log-probability of the reference sentence's words up to the one naming
   the finding, with the study's own image against a normal study's image: how far the image
   moves the language model towards writing it (greedy decoding needs the finding's continuation
   to beat every normal phrasing).

    HF_HUB_OFFLINE=1 python -m experiments.finding_evidence runs/demo
About a minute on 2 cores once the run's features are cached.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from flamingo_lib import FlamingoModel, FlamingoProcessor
from flamingo_lib.data.feature_cache import FeatureCache
from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
from flamingo_lib.encoders.pretraining.probe import auroc
from flamingo_lib.pipeline.steps import Pipeline
from flamingo_lib.training.trainer import ReportCollator

# A word that names the observation in the templated reports (its first four letters are matched).
NAMING_WORD = {"Cardiomegaly": "enlarged", "Edema": "edema", "Pleural Effusion": "effusion",
               "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax", "Consolidation": "consolidation"}


def probe_auroc(features: torch.Tensor, targets: torch.Tensor, n_fit: int) -> list[float]:
    """features (N, tokens, dim), targets (N, C) -> held-out AUROC per class of a linear probe."""
    x = torch.cat([features.mean(1), features.amax(1)], -1)
    x = (x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-6)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], targets.shape[1])
    optimiser = torch.optim.Adam(head.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(500):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x[:n_fit]), targets[:n_fit])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        scores = head(x[n_fit:])
    return [float(auroc(scores[:, j], targets[n_fit:, j])) for j in range(targets.shape[1])]


@torch.no_grad()
def sentence_logprob(model: Any, batch: dict, tokens: list[list[str]], word: str) -> list[float]:
    """Per sample: summed log-prob of the report tokens from the start of the sentence that
    contains ``word`` up to the token naming it (None-free: samples without it are skipped)."""
    logp = model(**{k: v for k, v in batch.items() if k != "ids"}).logits.log_softmax(-1)
    out = []
    for i, toks in enumerate(tokens):
        labelled = [j for j in range(1, len(toks)) if batch["labels"][i, j] != -100]
        hits = [j for j in labelled if word[:4] in toks[j].lower()]
        if not hits:
            continue
        start = hits[0]
        while start - 1 in labelled and not toks[start - 1].endswith("."):
            start -= 1
        out.append(sum(float(logp[i, t - 1, batch["input_ids"][i, t]]) for t in range(start, hits[0] + 1)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    model_dir = f"{args.run_dir}/train/model"
    model, processor = FlamingoModel.from_pretrained(model_dir).eval(), FlamingoProcessor.from_pretrained(model_dir)
    pipeline = Pipeline.from_run(args.run_dir, progress=False)  # the data and the feature cache's root
    studies = pipeline.samples("train")
    # this run's model, whatever its settings: its own encoder's features, cached where the pipeline's are
    cache = FeatureCache(pipeline.settings.feature_root, model, processor)
    cache.build([image for s in studies for image in s.images], progress=False)
    collate = ReportCollator(processor, cache)
    n_fit = len(studies) - 400

    tokens = cache.stack([[s.images[0]] for s in studies])  # (N, 1, tokens, dim)
    with torch.no_grad():
        latents = torch.cat([model.flamingo.resample(tokens[i:i + 256]) for i in range(0, len(tokens), 256)])
    targets = torch.tensor([[float(s.labels.get(o) == 1.0) for o in RENDERED_OBSERVATIONS] for s in studies])
    carried = {name: probe_auroc(x[:, 0], targets, n_fit) for name, x in
               (("patch tokens", tokens), ("resampler latents", latents))}
    print("| finding | AUROC patch tokens | AUROC resampler latents | log-prob own image | normal image | n |")
    print("|---|---|---|---|---|---|")
    held_out = studies[n_fit:]
    normals = [s for s in held_out if s.labels.get("No Finding") == 1.0]
    for j, obs in enumerate(RENDERED_OBSERVATIONS):
        used = ""
        if obs in NAMING_WORD:
            positives = [s for s in held_out if s.labels.get(obs) == 1.0][:24]
            batch = collate(positives)
            toks = [processor.tokenizer.convert_ids_to_tokens(row) for row in batch["input_ids"]]
            own = sentence_logprob(model, batch, toks, NAMING_WORD[obs])
            other = {**batch, "image_embeddings": collate(normals[:len(positives)])["image_embeddings"]}
            normal = sentence_logprob(model, other, toks, NAMING_WORD[obs])
            used = f"{statistics.mean(own):.2f} | {statistics.mean(normal):.2f} | {len(own)}"
        else:
            used = "- | - | -"
        print(f"| {obs} | {carried['patch tokens'][j]:.2f} | {carried['resampler latents'][j]:.2f} | {used} |")


if __name__ == "__main__":
    main()
