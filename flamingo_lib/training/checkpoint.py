"""Training checkpoints: trainable weights, optimiser, scheduler, RNG states, data position and the
run's settings, in one safetensors file written atomically.

A checkpoint holds tensors and JSON only, never a pickle: loading one (``--resume`` on a run folder
someone shared) cannot run code. The state's tensors are stored under their path in the state
(``optimiser/state/3/exp_avg``); everything else is JSON in the file's metadata, with tuples,
non-string dictionary keys and tensors marked so that they come back as they were.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flamingo_lib.io import atomic_path

CHECKPOINT_FILE = "checkpoint.safetensors"
#: What earlier versions wrote: a pickle, which is never loaded (it could run any code).
PICKLED_CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "flamingo-training-state-1"


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


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors (and numpy arrays) moved into ``tensors`` under ``path``."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value.copy())
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}}
        return {"__items__": [[_encode(k, f"{path}/key{i}", tensors), _encode(v, f"{path}/{k}", tensors)]
                              for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"training state at {path!r}: cannot store a {type(value).__name__} without pickling it")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__dict__" in value:
        return {k: _decode(v, tensors) for k, v in value["__dict__"].items()}
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    raise ValueError(f"unknown entry in a training state: {sorted(value)}")


def _numpy_rng(state: tuple) -> tuple:
    """numpy's RNG state with its key array back as numpy (it was stored as a tensor)."""
    name, keys, *rest = state
    return (name, keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys), *rest)


def save_training_state(directory: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                        scheduler: Any, progress: dict[str, Any], settings: dict[str, Any] | None = None) -> Path:
    """Write ``directory/checkpoint.safetensors`` atomically.

    Args:
        progress: the loop's position (step, epoch, batch index in epoch, metrics so far).
        settings: the run's settings (JSON), compared by a resume.
    """
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    state = {"model": {k: v.cpu() for k, v in model.state_dict_trainable().items()},
             "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states(),
             "progress": progress, "settings": settings or {}}
    encoded = _encode(state, "state", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT, "state": json.dumps(encoded)})
    return path


def read_training_state(directory: Path) -> dict[str, Any]:
    """What :func:`save_training_state` wrote (``model``, ``optimiser``, ``scheduler``, ``rng``,
    ``progress``, ``settings``), read without unpickling anything.

    Raises:
        FileNotFoundError: no checkpoint in ``directory``; or only a pickled one, which is refused.
        ValueError: the file is not a training checkpoint of this format.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        pickled = Path(directory) / PICKLED_CHECKPOINT_FILE
        if pickled.is_file():
            raise FileNotFoundError(f"{pickled} is a pickled checkpoint: loading it could run any code, so it is "
                                    f"not read; train again (this version writes {CHECKPOINT_FILE}: tensors and JSON)")
        raise FileNotFoundError(f"no training checkpoint at {path}: nothing to resume")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not a training checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return _decode(json.loads(metadata["state"]), tensors)


def checkpoint_record(directory: Path) -> dict[str, Any] | None:
    """``{"settings": ..., "step": ...}`` of a checkpoint in ``directory``: the settings it was
    written under and the step it holds (its metadata only, no tensors read); None when there is
    no readable checkpoint."""
    path = Path(directory) / CHECKPOINT_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError):  # missing, torn or not safetensors
        return None
    if metadata.get("format") != FORMAT:
        return None
    state = json.loads(metadata["state"])["__dict__"]
    return {"settings": _decode(state["settings"], {}), "step": _decode(state["progress"], {})["step"]}


def load_training_state(directory: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                        scheduler: Any) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns its ``progress``.

    Raises:
        FileNotFoundError: no checkpoint in ``directory`` (or only a pickled one).
        ValueError: the checkpoint's trainable weights do not match the model's.
    """
    path = Path(directory) / CHECKPOINT_FILE
    state = read_training_state(directory)
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
                             "(findings_head, reading_head, severity_head, sizes)?")
    with torch.no_grad():
        for name, tensor in state["model"].items():
            params[name].copy_(tensor)
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    rng = dict(state["rng"])
    rng["numpy"] = _numpy_rng(rng["numpy"])
    restore_rng_states(rng)
    return state["progress"]
