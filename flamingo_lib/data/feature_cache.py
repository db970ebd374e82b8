"""Frozen-encoder feature cache: run the vision encoder once per image, keep its patch tokens.

Layout on disk::

    <root>/<encoder fingerprint>/
        encoder.json                  what the fingerprint covers (for humans)
        shard-<time>-<pid>-<n>.safetensors   fp16 patch tokens (P, dim_visual), one tensor per image hash
        ...                                  (int8 storage: int8 tokens and "<hash>#scale" (P, 1) float32 scales)

Each shard is written to a temporary file and renamed into place, so a shard on disk is always
complete: interrupted caching resumes from the shards already there. Every writer names its
shards uniquely, so several processes may fill one cache at once (a shared ``~/.cache``) without
losing each other's shards; temporary files are swept only while no process is writing. A shard that cannot be read
(damaged afterwards) is deleted and its images are recomputed. Features are keyed by the
encoder's fingerprint (weights, config, preprocessing) and each image's content hash, so a
different encoder or a changed image can never be served stale features.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from flamingo_lib.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)
#: How patch tokens are stored: float16, or int8 with a float32 scale per token (about half the bytes;
#: the quality it costs is measured in docs/data.md).
FEATURE_STORAGES: tuple[str, ...] = ("float16", "int8")
SCALE_SUFFIX = "#scale"  # the key of an int8 film's per-token scales: <image hash>#scale

# 2: features computed with the frozen encoder always in eval mode (version 1 caches built by a
# freshly constructed model ran its BatchNorm layers in train mode: batch-dependent features)
FEATURE_FORMAT_VERSION = 2


def image_hash(image: Image.Image) -> str:
    """Content hash of a PIL image (mode, size and pixels), independent of its file name."""
    digest = hashlib.sha256(f"{image.mode}|{image.size}|".encode())
    digest.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return digest.hexdigest()[:32]


def encoder_fingerprint(model: torch.nn.Module, processor: object) -> str:
    """Hash of what determines the features: encoder weights, its config and the preprocessing."""
    digest = hashlib.sha256(f"v{FEATURE_FORMAT_VERSION}|{model.config.clip_model_type}|".encode())
    digest.update(json.dumps(processor.image_config.__dict__, sort_keys=True).encode())
    for name, tensor in sorted(model.flamingo.vision_encoder.state_dict().items()):
        digest.update(name.encode())
        # reshape(-1): 0-dim buffers (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


@dataclass
class CacheStats:
    """What one :meth:`FeatureCache.build` call did."""

    computed: int
    reused: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


class FeatureCache:
    """Patch tokens of a frozen vision encoder, computed once and stored as fp16 safetensors shards.

    Args:
        root: cache root; features live in ``root/<fingerprint>/``.
        model: a ``FlamingoModel`` whose vision encoder is frozen.
        processor: its ``FlamingoProcessor`` (the preprocessing is part of the key).
        storage: ``"float16"`` or ``"int8"`` (:data:`FEATURE_STORAGES`; each has a cache of its own).

    Raises:
        ValueError: an unknown storage; the vision encoder trains (``freeze_vision_model=False``): cached features
            would go stale after the first optimiser step.
    """

    #: bytes of shards kept open (memory-mapped) at once: 26 shards of 256 biomed-size films, every shard of a
    #: small encoder's cache. A random read of a closed shard reopens it (~0.15 ms against ~15 us).
    MAX_OPEN_BYTES = 2 * 2**30

    def __init__(self, root: str | Path, model: torch.nn.Module, processor: object, storage: str = "float16") -> None:
        if storage not in FEATURE_STORAGES:
            raise ValueError(f"feature storage must be one of {FEATURE_STORAGES}, got {storage!r}")
        self.storage = storage
        if not model.flamingo.vision_frozen:
            raise ValueError(
                "the vision encoder is trainable (freeze_vision_model=False): cached features would go stale "
                "after the first optimiser step; freeze it (model.freeze_vm()) or train from pixels"
            )
        self.model, self.processor = model, processor
        self.fingerprint = encoder_fingerprint(model, processor)
        if storage != "float16":  # other values: a cache of its own (float16's key is unchanged)
            self.fingerprint = hashlib.sha256(f"{self.fingerprint}|{storage}".encode()).hexdigest()[:24]
        self.directory = Path(root) / self.fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {"clip_model_type": model.config.clip_model_type, "dim_visual": model.config.dim_visual,
                "storage": storage,
                "image_config": processor.image_config.__dict__, "format_version": FEATURE_FORMAT_VERSION}
        with self._writers_lock(fcntl.LOCK_SH):  # its temporary file, too, is no stray for another's sweep
            write_json_atomic(self.directory / "encoder.json", info, indent=2, default=list)
        self.encoder_calls = 0  # images sent through the vision encoder by this object
        self._index: dict[str, Path] = {}
        # open (memory-mapped) shards for fast reads, with their sizes, least recently read first; bounded
        # (MAX_OPEN_BYTES), since the pages read from a mapping stay resident: MIMIC-CXR's ~870 shards of 256
        # biomed-size films would map its whole 67 GB cache over a long training
        self._handles: dict[Path, tuple[object, int]] = {}
        self._open_bytes = 0
        self._shards_written = 0
        self._scan()

    # ------------------------------------------------------------------------------ index
    def _scan(self) -> None:
        """Index every readable shard; delete unreadable ones (their images get recomputed)."""
        self._index.clear()
        self._handles.clear()
        self._open_bytes = 0
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            try:
                with safe_open(shard, framework="pt") as handle:
                    keys = list(handle.keys())
            except Exception as error:  # noqa: BLE001 - any unreadable shard is recomputed
                logger.warning("feature shard %s is unreadable (%s): deleting it, its images will be recomputed",
                               shard, error)
                shard.unlink()
                continue
            for key in keys:
                if not key.endswith(SCALE_SUFFIX):
                    self._index[key] = shard
        with self._writers_lock(fcntl.LOCK_EX | fcntl.LOCK_NB) as alone:
            if alone:  # no process is writing a shard: a temporary file is one an interrupted write left
                for stray in self.directory.glob("*.tmp"):
                    stray.unlink(missing_ok=True)

    @contextmanager
    def _writers_lock(self, mode: int) -> Iterator[bool]:
        """Hold ``directory/.writers.lock`` in ``mode`` (shared while writing a shard, exclusive to
        sweep temporary files); yields whether the lock was taken. A process that dies releases
        it, so a killed build never blocks the next one."""
        with open(self.directory / ".writers.lock", "a+") as handle:
            try:
                fcntl.flock(handle, mode)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image: Image.Image) -> bool:
        return image_hash(image) in self._index

    # ------------------------------------------------------------------------------ build
    def _write_shard(self, films: dict[str, torch.Tensor]) -> None:
        """Write ``films`` (image hash -> float (P, dim_visual) tokens) as one shard, in this cache's storage."""
        tensors = {}
        for key, tokens in films.items():
            if self.storage == "int8":  # symmetric, one scale per token: (P, D) int8 and (P, 1) float32
                scale = (tokens.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
                tensors[key] = (tokens / scale).round().clamp(-127, 127).to(torch.int8)
                tensors[key + SCALE_SUFFIX] = scale  # float32: an fp16 scale would add ~6% of a step of error
            else:
                tensors[key] = tokens.to(torch.float16)
        self._write_tensors(films.keys(), tensors)

    def _write_tensors(self, keys: Iterable[str], tensors: dict[str, torch.Tensor]) -> None:
        # A name no other writer can pick (time, process, a counter): two processes filling one
        # cache (a shared ~/.cache) never replace each other's shards. Names sort by time.
        self._shards_written += 1
        target = self.directory / f"shard-{time.time_ns():020d}-{os.getpid()}-{self._shards_written}.safetensors"
        with self._writers_lock(fcntl.LOCK_SH), atomic_path(target) as tmp:
            save_file(tensors, tmp, metadata={"fingerprint": self.fingerprint, "storage": self.storage})
        for key in keys:
            self._index[key] = target

    @torch.no_grad()
    def build(self, images: Iterable[Image.Image], batch_size: int = 16, shard_size: int = 256,
              progress: bool = True, total: int | None = None) -> CacheStats:
        """Compute the features of every image not cached yet.

        Args:
            images: PIL images (any mode); duplicates are computed once.
            batch_size: images per encoder call.
            shard_size: images per shard file (the unit of resumption).
            total: number of images, for the progress bar when ``images`` has no ``len``.
        """
        total = total if total is not None else getattr(images, "__len__", lambda: None)()
        if total is not None:
            self._check_room(total, progress)
        start, computed, reused = time.perf_counter(), 0, 0
        pending: dict[str, Image.Image] = {}
        shard: dict[str, torch.Tensor] = {}
        device = next(self.model.parameters()).device
        bar = tqdm(total=total, disable=not progress, desc="caching features", unit="img")

        def flush_pending() -> None:
            nonlocal computed
            keys = list(pending)
            pixels = self.processor.preprocess_images([pending[k] for k in keys]).to(device)
            tokens = self.model.flamingo.encode_visuals(pixels[:, None])[:, 0]  # (N, P, Dv)
            self.encoder_calls += len(keys)
            for key, value in zip(keys, tokens.float().cpu()):
                shard[key] = value.contiguous()
            computed += len(keys)
            pending.clear()
            elapsed = time.perf_counter() - start
            bar.set_postfix(img_per_s=f"{computed / elapsed:.1f}")

        for image in images:
            key = image_hash(image)
            if key in self._index or key in shard or key in pending:
                reused += 1
            else:
                pending[key] = image
                if len(pending) >= batch_size or len(pending) + len(shard) >= shard_size:
                    flush_pending()
                if len(shard) >= shard_size:
                    self._write_shard(shard)
                    shard = {}
            bar.update(1)
        if pending:
            flush_pending()
        if shard:
            self._write_shard(shard)
        bar.close()
        return CacheStats(computed, reused, time.perf_counter() - start)

    def bytes_per_image(self) -> int:
        """Bytes one film's patch tokens take in a shard: (P, dim_visual) fp16 plus its header entry
        (measured once by encoding a blank film)."""
        if not hasattr(self, "_bytes_per_image"):
            size = self.processor.image_config.size
            blank = Image.new("L", (size, size))
            with torch.no_grad():
                pixels = self.processor.preprocess_images([blank]).to(next(self.model.parameters()).device)
                tokens = self.model.flamingo.encode_visuals(pixels[:, None])[0, 0]
            if self.storage == "int8":  # a byte a value, a float32 scale a token, two header entries
                self._bytes_per_image = tokens.numel() + tokens.shape[0] * 4 + 240
            else:  # fp16; the JSON header's entry for its key
                self._bytes_per_image = tokens.numel() * 2 + 120
        return self._bytes_per_image

    def _check_room(self, total: int, progress: bool) -> None:
        """Say what a build of ``total`` films may add to the disk, and refuse it before any work when
        the disk lacks the room (a build that fills the disk hours in would stop there).

        Raises:
            OSError: ``ENOSPC``, naming the directory, the space needed and the space free.
        """
        films = max(total - len(self), 0)  # at most these are new (duplicates and cached films are not)
        needed, free = films * self.bytes_per_image(), shutil.disk_usage(self.directory).free
        message = (f"feature cache {self.directory}: up to {films:,} films to add at {self.bytes_per_image():,} bytes "
                   f"each, ~{needed / 1e9:.2f} GB; {free / 1e9:.1f} GB free")
        if needed > free:
            raise OSError(errno.ENOSPC, f"{message}: not enough room. Free disk space, or put the cache on a larger "
                          "disk (PipelineSettings.feature_root / FLAMINGO_CACHE_DIR)")
        logger.info(message)
        if progress:
            tqdm.write(message)

    # ------------------------------------------------------------------------------- read
    def get(self, image: Image.Image) -> torch.Tensor:
        """The cached patch tokens (P, dim_visual) of ``image``, as float32.

        Raises:
            KeyError: the image is not cached (call :meth:`build` first).
        """
        return self.get_by_key(image_hash(image))

    def get_by_key(self, key: str) -> torch.Tensor:
        shard = self._index.get(key)
        if shard is None:
            raise KeyError(f"image {key} is not in the feature cache {self.directory}; run build() on it first")
        entry = self._handles.pop(shard, None)
        if entry is None:
            entry = (safe_open(shard, framework="pt"), shard.stat().st_size)
            self._open_bytes += entry[1]
            while self._handles and self._open_bytes > self.MAX_OPEN_BYTES:  # close the least recently read
                self._open_bytes -= self._handles.pop(next(iter(self._handles)))[1]
        self._handles[shard] = entry  # (re-)inserted as the most recently read
        tokens = entry[0].get_tensor(key)
        if tokens.dtype == torch.int8:  # int8 storage: each token times its scale
            return tokens.float() * entry[0].get_tensor(key + SCALE_SUFFIX).float()
        return tokens.float()

    def stack(self, images: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
        """Per-sample lists of images -> ``image_embeddings`` (B, T_max, P, dim_visual), zero-padded."""
        most = max((len(s) for s in images), default=0)
        first = next((s[0] for s in images if s), None)
        if first is None:
            raise ValueError("no images to stack")
        example = self.get(first)
        out = torch.zeros(len(images), most, *example.shape)
        for i, sample in enumerate(images):
            for j, image in enumerate(sample):
                out[i, j] = self.get(image)
        return out

    def size_bytes(self) -> int:
        """Bytes on disk of all shards."""
        return sum(p.stat().st_size for p in self.directory.glob("shard-*.safetensors"))
