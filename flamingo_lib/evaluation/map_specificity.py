"""Do the maps follow the word and the film, or are they one fixed prior?

Two numbers beside the pointing game (:mod:`flamingo_lib.evaluation.grounding`), each a mean Pearson
correlation between maps over the patch grid (1: the same map, 0: unrelated):

* **token correlation**: between the maps of different words of one report on its own film. A map
  that answers "which part of the film made the model write this word" differs from word to word;
  near 1, every word shows the same picture.
* **film correlation**: between the maps of one word of a report computed on different films (the
  report teacher-forced on its own film and on others). Near 1, the map is the anatomy every film
  shares, not the film.

Both are computed for either map (``method``: ``evidence``, the gradient-weighted attention, or
``attention``, the raw attention rollout; :func:`~flamingo_lib.evaluation.grounding.words_heatmap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flamingo_lib.modeling.attention_maps import capture_attention, capture_evidence


def mean_correlation(maps: torch.Tensor) -> float:
    """Mean Pearson correlation over the distinct pairs of rows of ``maps`` (N, P); rows that are
    constant (a map with no evidence at all) take no part. NaN with fewer than two usable rows."""
    centred = maps.double() - maps.double().mean(-1, keepdim=True)
    norms = centred.norm(dim=-1)
    centred = centred[norms > 0] / norms[norms > 0, None]
    k = len(centred)
    if k < 2:
        return float("nan")
    similarity = centred @ centred.T
    return float((similarity.sum() - similarity.diagonal().sum()) / (k * (k - 1)))


def word_maps(model: Any, processor: Any, sample: Any, image: Any, positions: Sequence[int],
              method: str = "evidence") -> torch.Tensor:
    """(len(positions), P) the patch map of each single word position of ``sample``'s report (its prompt
    with the processor's context) on ``image`` in place of its first film."""
    batch, _, slot = processor.film_batch(sample, film=image)
    if method == "evidence":
        return torch.stack([capture_evidence(model, batch, [p]).evidence(image=slot) for p in positions])
    if method == "attention":
        _, maps = capture_attention(model, batch)
        return torch.stack([maps.token_relevance(0, p, slot) for p in positions])
    raise ValueError(f"unknown map method {method!r}; expected 'evidence' or 'attention'")


def map_specificity(model: Any, processor: Any, samples: Sequence[Any], method: str = "evidence",
                    max_studies: int = 10, max_words: int = 12, films: int = 4, seed: int = 0) -> dict[str, float]:
    """Token and film correlation of the maps (module docstring) on the first ``max_studies`` studies.

    Args:
        samples: studies with ``report`` and ``images`` (the first film is used).
        max_words: word positions per report, spread evenly over it.
        films: films per word for the film correlation: the study's own and ``films - 1`` others
            drawn with ``seed``.

    Returns:
        ``{"token_correlation", "film_correlation", "studies", "words"}`` (words per report, at most).

    Raises:
        ValueError: fewer than two studies (there is no other film), or an unknown method.
    """
    studies = list(samples[:max_studies])
    if len(studies) < 2:
        raise ValueError(f"map specificity needs at least two studies; got {len(studies)}")
    rng = np.random.default_rng(seed)
    token, film = [], []
    for index, sample in enumerate(studies):
        prompt_length = processor.film_batch(sample).prompt_length
        length = len(processor.tokenizer(" " + sample.report.strip(), add_special_tokens=False)["input_ids"])
        positions = sorted({int(p) for p in np.linspace(prompt_length, prompt_length + length - 1, max_words)})
        own = word_maps(model, processor, sample, sample.images[0], positions, method)
        token.append(mean_correlation(own))
        others = rng.choice([i for i in range(len(studies)) if i != index], size=min(films - 1, len(studies) - 1),
                            replace=False)
        on_films = torch.stack([own] + [word_maps(model, processor, sample, studies[i].images[0], positions,
                                                  method) for i in others])  # (films, words, P)
        film.extend(mean_correlation(on_films[:, w]) for w in range(len(positions)))
    return {"token_correlation": float(np.nanmean(token)), "film_correlation": float(np.nanmean(film)),
            "studies": len(studies), "words": max_words}
