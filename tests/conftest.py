"""Shared fixtures: the tiny-random model built once per module, synthetic X-ray-like images."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Rendered phantom images are cached here, not in the user's ~/.cache.
os.environ.setdefault("FLAMINGO_CACHE_DIR", os.path.join(tempfile.gettempdir(), "flamingo_lib_test_cache"))

import numpy as np
import pytest
import torch
from PIL import Image

from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor


def xray_like(seed: int, size: tuple[int, int] = (180, 200)) -> Image.Image:
    """A grayscale image with smooth random structure (distinct per seed)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6))
    image = Image.fromarray((coarse * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    noise = rng.normal(0, 8, size[::-1])
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8), mode="L")


def open_gates(model: FlamingoModel, value: float = 1.0, seed: int = 0) -> None:
    """Set every tanh gate to a non-zero value, so the images matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                param.fill_(value + 0.1 * float(torch.rand(1, generator=generator)))


@pytest.fixture(scope="module")
def tiny() -> tuple[FlamingoModel, FlamingoProcessor]:
    """A fresh tiny-random model (gates at 0) and its processor, shared by one test module."""
    config = FlamingoConfig.from_preset("tiny-random")
    return FlamingoModel(config).eval(), FlamingoProcessor(config)


@pytest.fixture(scope="module")
def tiny_open() -> tuple[FlamingoModel, FlamingoProcessor]:
    """A tiny-random model with open (non-zero) gates."""
    config = FlamingoConfig.from_preset("tiny-random")
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


@pytest.fixture
def images() -> list[Image.Image]:
    return [xray_like(i) for i in range(4)]
