"""What the optimiser trains and how fast: AdamW parameter groups (gates apart, no weight decay on
gates, norms and biases) and the learning-rate schedule (warmup + cosine, the feed-forward gates
optionally shut until a given step)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from flamingo_lib.training.schedule import warmup_cosine


FF_GATE_GROUP = "feed-forward gates"


def _shut_until(step: int, schedule: Any, open_step: int) -> float:
    """``schedule``'s lr factor from ``open_step`` on, 0 before (a module-level function so the
    scheduler's state stays picklable)."""
    return schedule(step) if step >= open_step else 0.0


def lr_schedule(optimiser: torch.optim.Optimizer, config: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine for every group; the feed-forward gates' group shut until
    ``config.ff_gate_open_step`` when it is set."""
    base = partial(warmup_cosine, warmup_steps=config.warmup_steps, total_steps=config.max_steps)
    if config.ff_gate_open_step is None:
        return torch.optim.lr_scheduler.LambdaLR(optimiser, base)
    lambdas = [partial(_shut_until, schedule=base, open_step=config.ff_gate_open_step)
               if group.get("name") == FF_GATE_GROUP else base for group in optimiser.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambdas)


def adamw(groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``groups`` for parameters that will live on ``device``: fused (one kernel for all
    parameters: ~4x faster steps than one op per parameter on CPU, and no per-parameter launches on
    a GPU) where this torch has fused AdamW kernels for the device (CPU and CUDA since torch 2.4),
    else foreach. Every run and test of this workbench so far trained with the fused kernel on CPU
    too, so keeping it there keeps their results bit-identical; the unfused update differs from it
    only by float rounding (``tests/training/test_graph_step.py``)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # a private helper: should it move, CPU and CUDA have had the kernels since 2.4
        fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, fused=fused, foreach=None if fused else True)


def parameter_groups(model: Any, lr: float, weight_decay: float, gate_lr_mult: float,
                     ff_gate_lr_mult: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: matrices with weight decay; norms and biases
    without; the tanh gates without (it would pull them to 0): attention gates at
    ``lr * gate_lr_mult``, feed-forward gates at ``lr * ff_gate_lr_mult`` (None: the same)."""
    params = list(model.parameters_trainable())
    names = {id(p): name for name, p in model.named_parameters()}
    gate_ids = {i for i, name in names.items() if name.endswith("_gate")}
    ff_ids = {i for i, name in names.items() if name.endswith("ff_gate")}
    ff_mult = gate_lr_mult if ff_gate_lr_mult is None else ff_gate_lr_mult
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2 and id(p) not in gate_ids], "weight_decay": 0.0},
              {"params": [p for p in params if id(p) in gate_ids - ff_ids], "weight_decay": 0.0,
               "lr": lr * gate_lr_mult},
              {"params": [p for p in params if id(p) in ff_ids], "weight_decay": 0.0, "lr": lr * ff_mult,
               "name": FF_GATE_GROUP}]
    return [g for g in groups if g["params"]]
