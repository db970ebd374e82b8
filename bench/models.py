"""Random-weight stand-ins at real sizes, written as the local directories the library loads.

- a BioGPT-size causal LM (``BioGptConfig`` defaults: hidden 1024, 24 layers, 16 heads, FF 4096,
  vocabulary 42384, ~347M parameters) with the tiny byte-level tokenizer (260 tokens: the
  vocabulary covers it), saved with ``save_pretrained`` so ``FlamingoConfig(lm=<dir>)`` loads it;
- a BiomedCLIP-shaped open_clip ``local-dir:`` vision tower with a ViT-B/16 timm trunk (224 px,
  197 tokens of width 768; no weights file, so open_clip initialises it at random).

Nothing is downloaded: the benchmarks run offline like the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from flamingo_lib import FlamingoConfig
from flamingo_lib.modeling.config import PRESETS

# The tiny-random preset's block sizes, for smoke runs at toy cost.
SMOKE_BLOCKS = {k: v for k, v in PRESETS["tiny-random"].items() if k not in ("lm", "clip_model_type")}
from flamingo_lib.modeling.backbones.language import build_tiny_tokenizer

def make_biogpt_size_lm_dir(path: Path, *, smoke: bool = False, seed: int = 0) -> Path:
    """Save a random BioGPT-architecture LM (default sizes, or toy ones for ``smoke``) + tokenizer."""
    from transformers import AutoModelForCausalLM, BioGptConfig

    tokenizer = build_tiny_tokenizer()
    sizes = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                 vocab_size=512) if smoke else {}
    config = BioGptConfig(bos_token_id=0, pad_token_id=1, eos_token_id=2, **sizes)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {config.vocab_size} does not cover the tokenizer's {len(tokenizer)} tokens")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def make_vit_dir(path: Path, *, smoke: bool = False) -> Path:
    """An open_clip ``local-dir:`` config: timm ViT-B/16 trunk (``test_vit`` for ``smoke``), no
    pooling, linear projection, as BiomedCLIP; a tiny native text tower (only ``.visual`` is used)."""
    trunk, size = ("test_vit", 160) if smoke else ("vit_base_patch16_224", 224)
    config = {
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {"timm_model_name": trunk, "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "linear", "image_size": size},
            "text_cfg": {"context_length": 32, "vocab_size": 512, "width": 64, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711], "size": size},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps(config))
    return path


def biomed_size_config(lm_dir: Path, vit_dir: Path, **overrides) -> FlamingoConfig:  # noqa: ANN003
    """The ``biomed`` preset's sizes (all Flamingo defaults: xattn_every=1, resampler depth 6,
    64 latents, ...) on the random stand-ins."""
    return FlamingoConfig(lm=str(lm_dir), clip_model_type=f"local-dir:{vit_dir}", **overrides)


def xray_images(count: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """Grey noise images standing in for radiographs (the content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(size, size, generator=g) * 255).byte().numpy())
            for _ in range(count)]


def report_text(length: int) -> str:
    """A report of about ``length`` bytes (the tiny tokenizer has one token per byte)."""
    sentence = "Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax. "
    return (sentence * (length // len(sentence) + 1))[:length]
