"""Retrieval in the frozen encoder's feature space: each study's descriptor (its first film's mean
patch token), the nearest training studies of a query in chunks (never the whole query x train
matrix), and the in-context examples they give (RICES, as open_flamingo chooses its shots).

The nearest-neighbour baseline of :mod:`flamingo_lib.evaluation.evaluate` is :func:`nearest_neighbours`
with ``k = 1``; :func:`rices_examples` gives the ``k`` nearest training studies of each query,
the most similar last (nearest the query in the prompt), as open_flamingo orders them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def image_descriptors(model: Any, processor: Any, samples: Sequence[Any], feature_cache: Any = None,
                      batch_size: int = 16, num_workers: int = 0) -> torch.Tensor:
    """(N, dim_visual) L2-normalised mean-pooled patch tokens of each sample's first view (float32: 0.7 GB
    for MIMIC-CXR's training split at dim_visual 768). Films are streamed (:func:`~flamingo_lib.data.study_index.iter_films`):
    ``batch_size`` decoded at a time, by ``num_workers`` processes when > 0."""
    from flamingo_lib.data.study_index import iter_films

    rows: list[torch.Tensor] = []
    films = iter_films([samples], num_workers=num_workers, first_view_only=True)
    while batch := list(itertools.islice(films, batch_size)):
        if feature_cache is not None:
            tokens = torch.stack([feature_cache.get(im) for im in batch])
        else:
            pixels = processor.preprocess_images(batch).to(next(model.parameters()).device)
            tokens = model.flamingo.encode_visuals(pixels[:, None])[:, 0]
        rows.append(torch.nn.functional.normalize(tokens.float().mean(1), dim=-1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, model.config.dim_visual)


def nearest_neighbours(train_descriptors: torch.Tensor, query_descriptors: torch.Tensor,
                       chunk: int = 8192, k: int = 1) -> torch.Tensor:
    """(Q,) index of the most similar training descriptor of each query (cosine of unit vectors; ties:
    the lowest index), in chunks of ``chunk`` training rows: memory O(Q x chunk), never the whole
    query x train matrix (2.3 GB for MIMIC-CXR's test x train). With ``k`` > 1: (Q, k) indices, the
    most similar first (ties: the lower index first).

    Args:
        train_descriptors: (N, D) unit rows.
        query_descriptors: (Q, D) unit rows.
    """
    if k != 1:
        return _top_k(train_descriptors, query_descriptors, k, chunk)
    queries = query_descriptors.float()
    best = torch.full((len(queries),), -float("inf"))
    best_index = torch.zeros(len(queries), dtype=torch.long)
    for start in range(0, len(train_descriptors), chunk):
        similarity = queries @ train_descriptors[start:start + chunk].float().T  # (Q, chunk)
        value, index = similarity.max(-1)  # the first maximum within the chunk
        better = value > best  # strictly: an equal one in a later chunk leaves the earlier index
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    return best_index


def _top_k(train_descriptors: torch.Tensor, query_descriptors: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(Q, k) indices of :func:`nearest_neighbours` for ``k`` > 1: the best ``k`` so far merged with each
    chunk's by a stable sort, so that equal similarities keep the lower (earlier) index first."""
    if k > len(train_descriptors):
        raise ValueError(f"k={k} nearest of {len(train_descriptors)} training studies")
    queries = query_descriptors.float()
    best = torch.full((len(queries), 0), -float("inf"))
    best_index = torch.zeros(len(queries), 0, dtype=torch.long)
    for start in range(0, len(train_descriptors), chunk):
        similarity = queries @ train_descriptors[start:start + chunk].float().T  # (Q, chunk)
        index = torch.arange(start, start + similarity.shape[1]).expand_as(similarity)
        values, order = torch.cat([best, similarity], 1).sort(dim=1, descending=True, stable=True)
        best = values[:, :k]
        best_index = torch.cat([best_index, index], 1).gather(1, order[:, :k])
    return best_index


def rices_examples(train_descriptors: torch.Tensor, query_descriptors: torch.Tensor, k: int,
                   exclude_self: bool = False) -> list[list[int]]:
    """The ``k`` training studies nearest each query (RICES: retrieval-based in-context example
    selection), the most similar *last*: nearest the query in the prompt.

    Args:
        train_descriptors: (N, D) unit rows (:func:`image_descriptors` of the training split).
        query_descriptors: (Q, D) unit rows.
        exclude_self: the queries are the training studies themselves (in order): skip each one's own.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    nearest = nearest_neighbours(train_descriptors, query_descriptors, k=k + 1 if exclude_self else k)
    nearest = nearest.view(len(query_descriptors), -1)
    rows = []
    for q, row in enumerate(nearest.tolist()):
        kept = [i for i in row if not (exclude_self and i == q)][:k]
        rows.append(kept[::-1])
    return rows


def random_examples(num_train: int, num_queries: int, k: int, seed: int = 0) -> list[list[int]]:
    """``k`` training studies drawn at random (without replacement) for each query: RICES's control."""
    if k > num_train:
        raise ValueError(f"k={k} examples of {num_train} training studies")
    rng = random.Random(seed)
    return [rng.sample(range(num_train), k) for _ in range(num_queries)]
