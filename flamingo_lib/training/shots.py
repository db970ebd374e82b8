"""In-context examples for training: the studies put before a study in its training prompt.

Flamingo learns to read interleaved images and text by training on such sequences (its M3W web
pages); a model trained on one study per sequence writes one sentence and stops when examples come
first (measured: ``python -m experiments.in_context``). :func:`random_shots` gives each training
study 0 to ``k`` other training studies as examples, drawn once per study from a seeded stream (so
a resumed run builds the very batches it would have), and the model sees zero-shot prompts too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any


def random_shots(train_set: Sequence[Any], k: int, seed: int = 0) -> Callable[[Any], list[Any]]:
    """A function from a training study (``id``) to its 0..``k`` in-context examples: other studies of
    ``train_set`` (``CXRSample``-like, with ``images`` and ``report``), the same for a study every time.

    Raises:
        ValueError: ``k`` < 1, or fewer than ``k + 1`` training studies.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(train_set) <= k:
        raise ValueError(f"{k} in-context examples need more than {k} training studies, got {len(train_set)}")

    def shots(sample: Any) -> list[Any]:
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{sample.id}".encode()).digest()[:8], "big"))
        count = rng.randint(0, k)
        chosen: list[Any] = []
        while len(chosen) < count:
            other = train_set[rng.randrange(len(train_set))]
            if other.id != sample.id and all(other.id != c.id for c in chosen):
                chosen.append(other)
        return chosen

    return shots
