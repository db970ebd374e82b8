"""The one warmup-cosine schedule serves training and both pretraining recipes."""

from __future__ import annotations

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from flamingo_lib.training.schedule import warmup_cosine, warmup_cosine_scheduler


def _factors(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _optimiser() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize(("warmup", "total"), [(20, 1500), (3, 10), (0, 7)])
def test_training_schedule_equals_transformers_cosine_bit_for_bit(warmup: int, total: int) -> None:
    ours = warmup_cosine_scheduler(_optimiser(), warmup_steps=warmup, total_steps=total)
    theirs = get_cosine_schedule_with_warmup(_optimiser(), warmup, total)
    assert _factors(ours, total + 3) == _factors(theirs, total + 3)


def test_pretraining_warmup_starts_one_step_in_and_decays_to_the_floor() -> None:
    factor = [warmup_cosine(s, warmup_steps=4, total_steps=12, final_fraction=0.1, warmup_start=1) for s in range(13)]
    assert factor[:4] == [0.25, 0.5, 0.75, 1.0]  # the first step already trains
    assert factor[4] == 1.0 and factor[12] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factor[4:], factor[5:]))  # the cosine only falls
    assert warmup_cosine(12, warmup_steps=4, total_steps=12) == 0.0  # without a floor it ends at 0
