"""Is a film like the ones the model was trained on? A reference of the training films in the
frozen vision encoder's feature space, and the distance a new film lies from them.

A model trained on phantom films writes a fluent report for a real radiograph, an inverted film or
a holiday photograph alike; nothing in the report says it is guessing. So each film is embedded as
the mean of its patch tokens (unit length), and its distance is the cosine distance to the
nearest training film. The validation films, which the model never trained on but which come from
the same source, give the scale: a film farther than ``percentile`` (99 by default) of them is
flagged *out of distribution*. By construction about 1 film in 100 from the training source is
flagged too; a film from elsewhere usually lies several times farther.

The reference is saved beside the weights as ``training_films.safetensors`` (tensors and JSON
metadata, no pickled objects), at most ``MAX_TRAINING_FILMS`` embeddings (a seeded subset).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from flamingo_lib.io import atomic_path

REFERENCE_FILE = "training_films.safetensors"
#: More would cost memory and search time with no change in the nearest distances that matters.
MAX_TRAINING_FILMS = 20_000
#: The share of validation films a film must lie farther than to be flagged.
DEFAULT_PERCENTILE = 99.0


@torch.no_grad()
def film_embeddings(model: Any, processor: Any, images: Iterable[Image.Image], *, batch_size: int = 32,
                    feature_cache: Any = None, progress: bool = False) -> torch.Tensor:
    """(N,) films -> (N, dim_visual) float32 unit vectors: the mean of each film's patch tokens.

    ``images`` may be a generator: films are read ``batch_size`` at a time, never all at once.

    Args:
        feature_cache: a :class:`~flamingo_lib.data.feature_cache.FeatureCache` holding the films'
            patch tokens (the pipeline's): read instead of running the encoder.

    Raises:
        ValueError: no films.
    """
    chunks = []
    device = next(model.parameters()).device
    bar = tqdm(disable=not progress, desc="embedding films", unit="film")  # a generator's length is unknown
    for batch in _batches(images, batch_size):
        if feature_cache is not None:
            tokens = feature_cache.stack([[image] for image in batch])[:, 0]  # (B, P, D)
        else:
            pixels = processor.preprocess_images(batch).unsqueeze(1)  # (B, 1, 3, H, W)
            tokens = model.flamingo.encode_visuals(pixels.to(device))[:, 0]
        chunks.append(torch.nn.functional.normalize(tokens.float().mean(1), dim=-1).cpu())
        bar.update(len(batch))
    bar.close()
    if not chunks:
        raise ValueError("no films to embed")
    return torch.cat(chunks)


def _batches(images: Iterable[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class FilmReference:
    """The training films' embeddings and the distance beyond which a film is unlike them.

    Attributes:
        embeddings: (N, dim_visual) unit vectors of (up to ``MAX_TRAINING_FILMS``) training films.
        threshold: the ``percentile`` of the validation films' distances to the training films.
        percentile: which percentile ``threshold`` is.
        validation_films: how many validation films set it.
        encoder: :func:`vision_identity` of the model whose encoder embedded the films: distances
            mean nothing under another encoder or preprocessing.
    """

    embeddings: torch.Tensor
    threshold: float
    percentile: float = DEFAULT_PERCENTILE
    validation_films: int = 0
    encoder: str = ""

    def distances(self, queries: torch.Tensor) -> torch.Tensor:
        """(M, dim_visual) unit vectors -> (M,) cosine distance of each to its nearest training film.

        Raises:
            ValueError: embeddings of another encoder's width.
        """
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"film embeddings of shape {tuple(queries.shape)} do not match the reference's width "
                             f"{self.embeddings.shape[1]}: they come from another vision encoder")
        nearest = torch.cat([(queries[i:i + 1024].float() @ self.embeddings.T).amax(1)
                             for i in range(0, len(queries), 1024)]) if len(queries) else queries.new_zeros(0)
        return (1 - nearest).clamp_min(0)

    def describe(self, distance: float) -> str:
        """One sentence for a reader: how far a flagged film lies, against the validation films."""
        return (f"unlike the films the model was trained on: distance {distance:.3f} to the nearest training film, "
                f"where {self.percentile:g}% of validation films lie within {self.threshold:.3f}. "
                "Its report is unreliable")

    @classmethod
    def build(cls, train: torch.Tensor, validation: torch.Tensor, percentile: float = DEFAULT_PERCENTILE,
              max_training_films: int = MAX_TRAINING_FILMS, seed: int = 0, encoder: str = "") -> "FilmReference":
        """From (N, D) training and (V, D) validation film embeddings (:func:`film_embeddings`).

        Raises:
            ValueError: no validation films, or a percentile outside (0, 100].
        """
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        if len(validation) == 0 or len(train) == 0:
            raise ValueError(f"a film reference needs training and validation films, got {len(train)} and "
                             f"{len(validation)}")
        if len(train) > max_training_films:
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:max_training_films]
            train = train[keep.sort().values]
        reference = cls(train.float().contiguous(), math.inf, percentile, len(validation), encoder)
        reference.threshold = float(torch.quantile(reference.distances(validation), percentile / 100))
        return reference

    # ------------------------------------------------------------------------------- files
    def save(self, directory: str | Path) -> Path:
        """Write ``directory/training_films.safetensors`` atomically; returns its path."""
        path = Path(directory) / REFERENCE_FILE
        metadata = {"threshold": repr(self.threshold), "percentile": repr(self.percentile),
                    "validation_films": str(self.validation_films), "encoder": self.encoder,
                    "content": "flamingo training-film reference"}
        with atomic_path(path) as tmp:
            save_file({"embeddings": self.embeddings.contiguous()}, tmp, metadata=metadata)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "FilmReference | None":
        """The reference saved in ``directory``, or None when it holds none.

        Raises:
            ValueError: the file is not a film reference (unreadable, missing or mistyped values), naming it.
        """
        path = Path(directory) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            embeddings = load_file(path)["embeddings"]
            reference = cls(embeddings.float(), float(metadata["threshold"]), float(metadata["percentile"]),
                            int(metadata["validation_films"]), str(metadata["encoder"]))
        except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable film reference ({type(error).__name__}: {error}); delete it "
                             "and rebuild it (the pipeline's train step, or flamingo-train)") from error
        if embeddings.ndim != 2 or not math.isfinite(reference.threshold) or reference.threshold < 0:
            raise ValueError(f"{path}: expected (films, width) embeddings and a finite threshold >= 0, got shape "
                             f"{tuple(embeddings.shape)} and threshold {reference.threshold}")
        return reference


def vision_identity(model: Any, processor: Any) -> str:
    """What fixes a film's embedding, read from the config (the same in any dtype the model is
    loaded in): the vision encoder's name and build, the seed of a random one, the preprocessing."""
    config = model.config
    named = {"clip_model_type": config.clip_model_type, "seed": config.seed,
             "builds": getattr(config, "embedded_builds", None) or {}, "image": processor.image_config.__dict__}
    named["builds"] = {k: v for k, v in named["builds"].items() if k == "clip_model_type"}
    return hashlib.sha256(json.dumps(named, sort_keys=True, default=str).encode()).hexdigest()[:24]


def reference_for(model: Any, processor: Any, directory: str | Path) -> FilmReference | None:
    """The reference saved in ``directory`` if it was made with this model's vision encoder and
    preprocessing; None (with a warning for a stale one) otherwise.

    Raises:
        ValueError: an unreadable reference file (:meth:`FilmReference.load`).
    """
    reference = FilmReference.load(directory)
    if reference is not None and reference.encoder != vision_identity(model, processor):
        warnings.warn(f"{Path(directory) / REFERENCE_FILE} was made with another vision encoder or preprocessing "
                      "than the model's: films are not checked against it (rebuild it)", stacklevel=2)
        return None
    return reference


def _subset(samples: Sequence[Any], limit: int, seed: int) -> Sequence[int]:
    """A seeded subset of at most ``limit`` sample indices (all of them when fewer), in order."""
    if len(samples) <= limit:
        return range(len(samples))
    return sorted(torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def build_film_reference(model: Any, processor: Any, train_samples: Sequence[Any], validation_samples: Sequence[Any],
                         *, feature_cache: Any = None, percentile: float = DEFAULT_PERCENTILE,
                         seed: int = 0, progress: bool = False) -> FilmReference:
    """:meth:`FilmReference.build` from two datasets' samples (anything with ``.images``): every film
    of the validation samples, and of a seeded subset of at most ``MAX_TRAINING_FILMS`` training samples."""
    embedded = []
    for samples in (train_samples, validation_samples):
        indices = _subset(samples, MAX_TRAINING_FILMS, seed)
        films = (image for i in indices for image in samples[i].images)  # read lazily: never all in memory
        embedded.append(film_embeddings(model, processor, films, feature_cache=feature_cache, progress=progress))
    train, validation = embedded
    return FilmReference.build(train, validation, percentile, seed=seed,
                               encoder=vision_identity(model, processor))
