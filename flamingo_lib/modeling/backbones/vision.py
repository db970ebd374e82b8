"""Frozen vision encoders that yield patch tokens: open_clip (timm trunk or native ViT) and HF CLIP.

Never the pooled embedding: the seed fork fed BiomedCLIP's single pooled 512-d vector to the
resampler (docs/prior-art.md, 1). Here every encoder returns its full token sequence.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flamingo_lib.modeling.backbones.registry import prepare_open_clip, resolve_name
from flamingo_lib.modeling.config import EMBEDDED_VISION, TINY_RANDOM_VISION

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# A BiomedCLIP-shaped open_clip config at toy size: timm ViT trunk (timm's `test_vit`: 160 px,
# patch 16, width 64, 6 blocks), no pooling, linear projection; a tiny native text tower (the
# real one is an HF BERT; see tests for that layout).
TINY_VISION_OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 160},
        "text_cfg": {"context_length": 64, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "size": 160,
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}


@dataclass(frozen=True)
class ImagePreprocessConfig:
    """How the encoder expects its pixels; used identically in training and generation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


def _is_hf_clip_dir(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and "clip" in json.loads(cfg.read_text()).get("model_type", "")


def resolve_vision(clip_model_type: str) -> str:
    """``clip_model_type`` itself, or for the ``embedded-tiny-vit`` sentinel the ``local-dir:`` of
    its cached open_clip directory (pretrained into ``$FLAMINGO_CACHE_DIR/encoders`` on first use)."""
    from flamingo_lib.modeling.backbones.sentinels import parse_sentinel

    if parse_sentinel(clip_model_type) is None:
        return clip_model_type
    encoder_kind(clip_model_type)  # a language-model sentinel raises here
    return resolve_name(clip_model_type)


def encoder_kind(clip_model_type: str) -> str:
    """``"tiny-random"``, ``"open_clip"`` or ``"hf_clip"`` for a ``clip_model_type`` string
    (``embedded-tiny-vit`` is an open_clip model; this does not build it).

    Raises:
        ValueError: the string names none of the supported sources.
    """
    import open_clip

    from flamingo_lib.modeling.backbones.sentinels import parse_sentinel

    if clip_model_type == TINY_RANDOM_VISION:
        return "tiny-random"
    sentinel = parse_sentinel(clip_model_type)
    if sentinel is not None:
        if sentinel.name != EMBEDDED_VISION:
            raise ValueError(f"clip_model_type={clip_model_type!r} names a language model, not a vision encoder")
        return "open_clip"
    if clip_model_type.startswith(("hf-hub:", "local-dir:")) or clip_model_type in open_clip.list_models():
        return "open_clip"
    path = Path(clip_model_type)
    if path.is_dir() and _is_hf_clip_dir(path):
        return "hf_clip"
    if not path.exists() and "clip" in clip_model_type.lower() and "/" in clip_model_type:
        return "hf_clip"  # a hub id such as openai/clip-vit-base-patch16
    raise ValueError(
        f"clip_model_type={clip_model_type!r} is not a known vision encoder; allowed: {TINY_RANDOM_VISION!r}, "
        f"{EMBEDDED_VISION!r}[@scale=S,seed=N], "
        "an open_clip model name (open_clip.list_models()), 'hf-hub:<repo>', 'local-dir:<path>', "
        "or a Hugging Face CLIP model id / directory"
    )


def _open_clip_json(clip_model_type: str) -> dict:
    """The ``open_clip_config.json`` of a ``local-dir:`` or ``hf-hub:`` model."""
    if clip_model_type.startswith("local-dir:"):
        path = Path(clip_model_type[len("local-dir:"):]) / "open_clip_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a 'local-dir:' vision encoder needs open_clip_config.json")
        return json.loads(path.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(clip_model_type[len("hf-hub:"):], "open_clip_config.json")).read_text())


def preprocess_config(clip_model_type: str) -> ImagePreprocessConfig:
    """The encoder's own image preprocessing, read from its config without loading weights."""
    kind = encoder_kind(clip_model_type)
    clip_model_type = resolve_vision(clip_model_type)
    if kind == "hf_clip":
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor.from_pretrained(clip_model_type)
        size = proc.crop_size["height"] if getattr(proc, "crop_size", None) else proc.size["shortest_edge"]
        return ImagePreprocessConfig(size, tuple(proc.image_mean), tuple(proc.image_std))
    if kind == "tiny-random":
        cfg = TINY_VISION_OPEN_CLIP_CONFIG
    elif clip_model_type.startswith(("local-dir:", "hf-hub:")):
        cfg = _open_clip_json(clip_model_type)
    else:
        import open_clip

        cfg = {"model_cfg": open_clip.get_model_config(clip_model_type), "preprocess_cfg": {}}
    pre = cfg.get("preprocess_cfg", {})
    size = pre.get("size", cfg["model_cfg"]["vision_cfg"].get("image_size", 224))
    size = size[0] if isinstance(size, (list, tuple)) else size
    return ImagePreprocessConfig(
        size=int(size), mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)),
        interpolation=pre.get("interpolation", "bicubic"), resize_mode=pre.get("resize_mode", "shortest"),
    )


class VisionEncoder(nn.Module):
    """Wraps a vision tower so that ``forward`` returns its patch tokens.

    Attributes:
        dim_visual: width of the returned tokens.
        kind: ``"timm"`` (open_clip timm trunk), ``"open_clip_vit"`` or ``"hf_clip"``.
    """

    def __init__(self, tower: nn.Module, kind: str) -> None:
        super().__init__()
        self.tower = tower
        self.kind = kind
        if kind == "timm":
            self.dim_visual = int(tower.trunk.num_features)
        elif kind == "open_clip_vit":
            tower.output_tokens = True
            self.dim_visual = int(tower.transformer.width)
        else:
            self.dim_visual = int(tower.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tower's weights (what its input pixels are cast to)."""
        return next(self.parameters()).dtype

    @property
    def frozen(self) -> bool:
        """No parameter of the tower trains."""
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> "VisionEncoder":
        """Train mode only for a tower that trains: a frozen one stays in eval mode whatever
        ``mode`` asks (a parent's ``.train()`` included). In train mode the BatchNorm layers of a
        CNN trunk (the embedded tiny encoder's) would normalise with each batch's statistics,
        making a cached feature depend on the images it was computed with, and would update their
        running statistics: a frozen encoder drifting. Dropout would add noise."""
        return super().train(mode and not self.frozen)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pixel_values: (N, C, H, W), normalised as :func:`preprocess_config` says.

        Returns:
            patch tokens (N, P, dim_visual): timm trunks give CLS + patches after the final norm
            (197 x 768 for ViT-B/16 at 224 px); native open_clip ViTs give their patch tokens;
            HF CLIP gives ``last_hidden_state``.
        """
        if self.kind == "timm":
            return self.tower.trunk.forward_features(pixel_values)
        if self.kind == "open_clip_vit":
            return self.tower(pixel_values)[1]
        return self.tower(pixel_values=pixel_values).last_hidden_state


def build_open_clip_tiny(seed: int) -> nn.Module:
    """The full tiny open_clip CLIP model (vision + text), weights deterministic from ``seed``."""
    from open_clip.model import CLIP

    cfg = TINY_VISION_OPEN_CLIP_CONFIG["model_cfg"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])


def load_vision_encoder(clip_model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> VisionEncoder:
    """Load the frozen vision encoder named by ``clip_model_type`` (see :func:`encoder_kind`),
    its weights in ``dtype``."""
    return _load_vision_encoder(clip_model_type, seed).to(dtype)


def _load_vision_encoder(clip_model_type: str, seed: int) -> VisionEncoder:
    kind = encoder_kind(clip_model_type)
    clip_model_type = resolve_vision(clip_model_type)
    if kind == "hf_clip":
        from transformers import CLIPVisionModel

        return VisionEncoder(CLIPVisionModel.from_pretrained(clip_model_type), "hf_clip")
    if kind == "tiny-random":
        visual = build_open_clip_tiny(seed).visual
    else:
        import open_clip

        prepare_open_clip()  # e.g. the embedded encoders register their timm trunks

        # pretrained_text=False: the text tower's weights come with the CLIP checkpoint (or are
        # not needed at all: only `.visual` is kept).
        model = open_clip.create_model(clip_model_type, pretrained_text=False,
                                       cache_dir=os.environ.get("OPEN_CLIP_CACHE_DIR"))
        visual = model.visual
    if hasattr(visual, "trunk"):
        return VisionEncoder(visual, "timm")
    if hasattr(visual, "transformer") and hasattr(visual, "output_tokens"):
        return VisionEncoder(visual, "open_clip_vit")
    raise ValueError(
        f"vision encoder {clip_model_type!r} is a {type(visual).__name__}: only ViT towers (timm trunk or "
        "open_clip VisionTransformer) give patch tokens"
    )
