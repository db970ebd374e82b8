"""The one learning-rate schedule: linear warmup, then a half cosine down to a floor.

Used by Flamingo training (:func:`flamingo_lib.training.optimisation.lr_schedule`) and by the
embedded encoders' pretraining recipes. transformers' ``get_cosine_schedule_with_warmup`` is
the case ``warmup_start=0, final_fraction=0`` (the same numbers, bit for bit); the pretraining
recipes start their warmup one step in (the first step trains at ``lr / warmup_steps``, not at
0) and the LM's decays to 10% instead of 0. Those choices are in the recipes' fingerprints.
"""

from __future__ import annotations

import math
from functools import partial

import torch


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, final_fraction: float = 0.0,
                  warmup_start: int = 0) -> float:
    """The learning-rate factor at ``step`` (0-based).

    Args:
        warmup_steps: steps of linear warmup, reaching 1 at ``warmup_steps``.
        total_steps: where the cosine reaches ``final_fraction``.
        final_fraction: the factor the cosine decays to.
        warmup_start: the warmup's count at step 0: 0 (the first step trains at lr 0, as in
            transformers) or 1 (at ``1 / warmup_steps``).
    """
    if step < warmup_steps:
        return (step + warmup_start) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def warmup_cosine_scheduler(optimiser: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                            final_fraction: float = 0.0, warmup_start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(optimiser, partial(
        warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps, final_fraction=final_fraction,
        warmup_start=warmup_start))
