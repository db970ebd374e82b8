"""The order in which training studies are visited: a seeded permutation per epoch, optionally
with repeat-factor sampling of studies that show rare findings.

Repeat-factor sampling (Gupta et al., "LVIS", CVPR 2019, section 4) repeats an example in an
epoch by a factor that grows with the rarity of its rarest class. Here the classes are the
CheXpert observations positive in a study ("No Finding" included, so normal studies are a class
too): with ``f(c)`` the fraction of training studies positive for ``c``,

    r(c) = max(1, sqrt(t / f(c))),    r(study) = max over its positive observations of r(c),

and a study appears ``floor(r) + Bernoulli(r - floor(r))`` times per epoch. Why it matters for
report generation: greedy decoding names a finding only when it is likelier than the normal
phrase, and a finding seen in 3% of studies gets little gradient in a short CPU run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def study_labels(dataset: Any) -> list[Mapping[str, Any]]:
    """The CheXpert labels of every study of ``dataset``: from its ``label_frame()`` when it has
    one (phantom, MIMIC-CXR, Chex: no image is read), else from each sample's ``labels``."""
    if hasattr(dataset, "label_frame"):
        frame = dataset.label_frame()
        return frame.to_dict(orient="records")
    return [dataset[i].labels for i in range(len(dataset))]


def repeat_factors(labels: Sequence[Mapping[str, Any]], threshold: float) -> list[float]:
    """Per-study repeat factors ``r(study)`` (>= 1) for ``threshold`` t (see module docstring).

    Args:
        labels: per study, observation -> label; positive means exactly 1.0.
        threshold: t in (0, 1]: classes in at least this fraction of studies are not repeated.

    Raises:
        ValueError: threshold outside (0, 1] or no studies.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"repeat-factor threshold must be in (0, 1], got {threshold}")
    if not labels:
        raise ValueError("repeat factors need at least one study")
    positives = [{obs for obs, value in row.items() if value == 1.0} for row in labels]
    counts: dict[str, int] = {}
    for observations in positives:
        for obs in observations:
            counts[obs] = counts.get(obs, 0) + 1
    per_class = {obs: max(1.0, math.sqrt(threshold / (n / len(labels)))) for obs, n in counts.items()}
    return [max((per_class[obs] for obs in observations), default=1.0) for observations in positives]


def epoch_order(num_samples: int, seed: int, epoch: int, factors: Sequence[float] | None = None) -> list[int]:
    """The sample indices of one epoch, fixed by (seed, epoch), so resuming replays it.

    Without ``factors`` a permutation of ``range(num_samples)``; with them each index ``i``
    appears ``floor(f_i)`` times plus once more with probability ``f_i - floor(f_i)``, shuffled
    (so the epoch length varies a little from epoch to epoch).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if factors is None:
        return torch.randperm(num_samples, generator=generator).tolist()
    if len(factors) != num_samples:
        raise ValueError(f"{len(factors)} repeat factors for {num_samples} samples")
    f = torch.tensor(factors, dtype=torch.float64)
    copies = f.floor() + (torch.rand(num_samples, generator=generator, dtype=torch.float64) < f - f.floor())
    indices = torch.repeat_interleave(torch.arange(num_samples), copies.long())
    return indices[torch.randperm(len(indices), generator=generator)].tolist()
