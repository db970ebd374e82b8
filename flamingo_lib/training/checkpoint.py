"""Training checkpoints: trainable weights, optimiser, scheduler, RNG states and data position,
written atomically (temporary file + rename) so an interrupted save never leaves a broken one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flamingo_lib.io import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    """Every random state that can influence the next step."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_training_state(directory: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                        scheduler: Any, progress: dict[str, Any]) -> Path:
    """Write ``directory/checkpoint.pt``.

    Args:
        progress: the loop's position (step, epoch, batch index in epoch, metrics so far).
    """
    path = Path(directory) / CHECKPOINT_FILE
    atomic_torch_save({
        "model": {k: v.cpu() for k, v in model.state_dict_trainable().items()},
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(),
        "progress": progress,
    }, path)
    return path


def load_training_state(directory: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                        scheduler: Any) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns its ``progress``.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``.
        ValueError: the checkpoint's trainable weights do not match the model's.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}: nothing to resume")
    state = torch.load(path, map_location="cpu", weights_only=False)
    expected = set(model.state_dict_trainable())
    if set(state["model"]) != expected:
        missing, unexpected = sorted(expected - set(state["model"])), sorted(set(state["model"]) - expected)
        raise ValueError(f"{path}: trainable weights differ from the model's (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}): was it written by another configuration?")
    params = dict(model.named_parameters())
    for name, tensor in state["model"].items():
        if tensor.shape != params[name].shape:
            raise ValueError(f"{path}: trainable weight {name} is {tuple(tensor.shape)} in the checkpoint but "
                             f"{tuple(params[name].shape)} in the model: was it written by another configuration "
                             "(findings_head, reading_head, sizes)?")
    with torch.no_grad():
        for name, tensor in state["model"].items():
            params[name].copy_(tensor)
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state["rng"])
    return state["progress"]
