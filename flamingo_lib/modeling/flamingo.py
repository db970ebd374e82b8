"""`Flamingo`: frozen vision encoder -> Perceiver Resampler -> gated cross-attention in a frozen LM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from flamingo_lib.modeling.config import FlamingoConfig, dtype_name, floating_dtype
from flamingo_lib.modeling.cross_attention import GatedCrossAttentionBlock, all_seen_masks, all_seen_window, media_masks
from flamingo_lib.modeling.heads.findings import FindingsHead
from flamingo_lib.modeling.heads.findings_tokens import FindingsTokens
from flamingo_lib.modeling.backbones.language import flamingo_tokenizer, load_language_model
from flamingo_lib.modeling.lm_injection import flamingo_layers, inject_cross_attention, lm_flamingo_layers
from flamingo_lib.modeling.new_tokens import add_token_rows
from flamingo_lib.modeling.resampler import PerceiverResampler
from flamingo_lib.modeling.backbones.vision import load_vision_encoder


def _check_dim(config: FlamingoConfig, name: str, actual: int, source: str) -> int:
    given = getattr(config, name)
    if given is not None and given != actual:
        raise ValueError(f"config.{name}={given} but {source} has width {actual}; leave {name}=None to infer it")
    setattr(config, name, actual)
    return actual


def _refuse_half_precision_training(part: nn.Module, name: str) -> None:
    dtype = next((p.dtype for p in part.parameters() if p.dtype != torch.float32), torch.float32)
    if dtype != torch.float32:
        raise ValueError(f"the {name} is held in {dtype_name(dtype)} (config.frozen_dtype) and "
                         "cannot be trained in it; build the model with frozen_dtype='float32' to train it")


class Flamingo(nn.Module):
    """The model body. Submodules: ``vision_encoder``, ``perceiver``, ``lm`` (with
    :class:`FlamingoLayer` s and decoupled token rows inside).

    Args:
        config: fills in ``dim``, ``dim_visual`` and the token ids when they are ``None``.
    """

    def __init__(self, config: FlamingoConfig) -> None:
        super().__init__()
        frozen_dtype = floating_dtype(config.frozen_dtype)
        self.lm = load_language_model(config.lm, config.seed, frozen_dtype)
        self.vision_encoder = load_vision_encoder(config.clip_model_type, config.seed, frozen_dtype)
        dim = _check_dim(config, "dim", self.lm.get_input_embeddings().embedding_dim, f"the LM {config.lm!r}")
        dim_visual = _check_dim(config, "dim_visual", self.vision_encoder.dim_visual, f"{config.clip_model_type!r}")
        if config.image_token_id is None or config.eoc_token_id is None:
            tokenizer = flamingo_tokenizer(config)
            config.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
            config.eoc_token_id = tokenizer.convert_tokens_to_ids(config.eoc_token)
        self.image_token_id = config.image_token_id

        # The new parts' initialisation is deterministic from the seed, independent of global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.perceiver = PerceiverResampler(
                dim=dim_visual, depth=config.resampler_depth, dim_head=config.resampler_dim_head,
                heads=config.resampler_heads, num_latents=config.resampler_num_latents,
                num_time_embeds=config.resampler_num_time_embeds, ff_mult=config.resampler_ff_mult,
                act=config.resampler_act,
            )
            inject_cross_attention(self.lm, config.xattn_every, lambda: GatedCrossAttentionBlock(
                dim=dim, dim_visual=dim_visual, dim_head=config.xattn_dim_head, heads=config.xattn_heads,
                ff_mult=config.xattn_ff_mult, act=config.xattn_act,
                only_attend_immediate_media=config.only_attend_immediate_media,
            ))
            generator = torch.Generator().manual_seed(config.seed + 2)
            add_token_rows(self.lm, [config.image_token_id, config.eoc_token_id], generator)
            # the findings' logits, then the readings', then the severities'
            k = 0 if config.findings_head is None else len(config.findings_head)
            self.findings_head = None if config.findings_head is None else FindingsHead(
                config.resampler_num_latents, dim_visual, k * (2 if config.reading_head else 1),
                severity_outputs=k if config.severity_head else 0, seed=config.seed + 3)
            self.findings_tokens = FindingsTokens(
                k, dim_visual, config.prior_findings_tokens,
                severity=config.prior_findings_tokens and config.severity_head, seed=config.seed + 4,
            ) if config.findings_tokens else None
        self.freeze_lm() if config.freeze_language_model else self.unfreeze_lm()
        self.freeze_vm() if config.freeze_vision_model else self.unfreeze_vm()

    # --------------------------------------------------------------------------- freezing
    def _new_lm_parts(self) -> Iterator[nn.Parameter]:
        for layer in flamingo_layers(self.lm):
            yield from layer.gated_cross_attn.parameters()
        for module in (self.lm.get_input_embeddings(), self.lm.get_output_embeddings()):
            if module is not None and hasattr(module, "new_rows"):
                yield module.new_rows

    def freeze_lm(self) -> None:
        """Freeze the LM's own weights; cross-attention blocks and new token rows stay trainable."""
        self.lm.requires_grad_(False)
        for param in self._new_lm_parts():
            param.requires_grad_(True)

    def unfreeze_lm(self) -> None:
        """Train the whole LM (its own weights too).

        Raises:
            ValueError: the LM is held in half precision (``config.frozen_dtype``).
        """
        _refuse_half_precision_training(self.lm, "language model")
        self.lm.requires_grad_(True)

    def freeze_vm(self) -> None:
        """Freeze the vision encoder; it then runs without building a graph, in eval mode."""
        self.vision_encoder.requires_grad_(False)
        self.vision_encoder.eval()

    def unfreeze_vm(self) -> None:
        """Train the vision encoder (it then runs with gradients: docs/prior-art.md, 5).

        Raises:
            ValueError: the encoder is held in half precision (``config.frozen_dtype``).
        """
        _refuse_half_precision_training(self.vision_encoder, "vision encoder")
        self.vision_encoder.requires_grad_(True)

    @property
    def vision_frozen(self) -> bool:
        return self.vision_encoder.frozen

    # ---------------------------------------------------------------------------- visuals
    def expected_image_size(self) -> int | None:
        """The square input size the encoder needs, when it is fixed (timm ViTs), else None."""
        trunk = getattr(self.vision_encoder.tower, "trunk", None)
        size = getattr(getattr(trunk, "patch_embed", None), "img_size", None)
        return None if size is None or getattr(trunk, "dynamic_img_size", False) else int(size[0])

    def encode_visuals(self, pixel_values: torch.Tensor, grad_to_pixels: bool = False) -> torch.Tensor:
        """(B, T, 3, H, W) pixels -> (B, T, P, dim_visual) patch tokens of the vision encoder.

        A frozen encoder runs without autograd, unless ``grad_to_pixels``: then the graph reaches the
        pixels (for gradients with respect to them; frozen parameters still get none).

        An all-zero image slot is the padding of a study with fewer views (what the processor
        writes; no normalised film is all zeros): it is not encoded and its tokens are zeros, as
        the feature cache pads them, so cached and live features agree and nothing is spent on it.
        """
        if pixel_values.ndim != 5 or pixel_values.shape[2] != 3:
            raise ValueError(
                f"pixel_values must be (batch, images, 3, height, width), got shape {tuple(pixel_values.shape)}"
            )
        size = self.expected_image_size()
        if size is not None and tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} pixels but the vision encoder takes "
                f"({size}, {size}); use the FlamingoProcessor of this model"
            )
        b, t = pixel_values.shape[:2]
        images = pixel_values.flatten(0, 1)
        filled = images.flatten(1).ne(0).any(-1)  # (B*T,) False on padding slots
        every_slot = bool(filled.all())
        with torch.set_grad_enabled(torch.is_grad_enabled() and (grad_to_pixels or not self.vision_frozen)):
            # (with no image at all, one slot is encoded for the output's shape, then zeroed)
            chosen = images if every_slot else images[filled] if bool(filled.any()) else images[:1]
            encoded = self.vision_encoder(chosen.to(self.vision_encoder.dtype))
        if every_slot:
            return encoded.unflatten(0, (b, t))
        tokens = encoded.new_zeros((b * t, *encoded.shape[1:]))
        tokens[filled] = encoded[: int(filled.sum())]
        return tokens.unflatten(0, (b, t))

    def resample(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, P, dim_visual) patch tokens (any float dtype: a half-precision encoder's, a
        cache's) -> (B, T, num_latents, dim_visual) visual features in the resampler's dtype."""
        return self.perceiver(patch_tokens.to(self.perceiver.latents.dtype))

    def encode_resample_visuals(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) pixels -> (B, T, num_latents, dim_visual) resampled visual features."""
        return self.resample(self.encode_visuals(pixel_values))

    # ---------------------------------------------------------------------------- forward
    def condition(self, visual_features: torch.Tensor | None, media_time: torch.Tensor | None,
                  reuse_media_kv: bool = False, all_media_seen: bool | int = False,
                  media_first: torch.Tensor | None = None) -> None:
        """Hand the media to every :class:`FlamingoLayer` (None clears them), with the
        cross-attention masks of ``media_time`` and its media groups ``media_first`` (B, L)
        (:func:`~flamingo_lib.modeling.cross_attention.media_groups`; None: one image a group)
        built once for all of them.

        ``all_media_seen``: every text position of the pass comes after all of its sample's
        images (``media_time`` may then be None): the layers attend without masks
        (:func:`~flamingo_lib.modeling.cross_attention.all_seen_masks`); an int names the 1-based
        image that opens every sample's last media group (True: the last image alone).
        """
        layers = lm_flamingo_layers(self.lm)
        masks = None
        if layers and visual_features is not None and visual_features.shape[1] > 0:
            rule = layers[0].gated_cross_attn.attn.only_attend_immediate_media
            if all_media_seen is not False:
                first = None if all_media_seen is True else int(all_media_seen)
                masks = all_seen_masks(visual_features.shape[1], visual_features.shape[2], rule, first)
            elif media_time is not None:
                masks = media_masks(media_time, visual_features.shape[1], visual_features.shape[2], rule, media_first)
        for layer in layers:
            state = layer.conditioning
            same_media = reuse_media_kv and state.reuse_media_kv and state.media is visual_features
            # keep the cached media K/V (and the decoding-step weights prepared with them) while
            # the media are the same tensor: within one generate call
            layer.condition(visual_features, media_time, reuse_media_kv, masks,
                            state.media_kv if same_media else None, state.decode if same_media else None)

    def prepare_decode_steps(self, last_group_first: int | None) -> None:
        """Each layer's decoding-step weights for steps after every image (the window of
        :func:`~flamingo_lib.modeling.cross_attention.all_seen_masks`), prepared before the first such
        step from the media the layers hold (``generate`` calls it between the prompt and the steps)."""
        layers = lm_flamingo_layers(self.lm)
        media = layers[0].conditioning.media if layers else None
        if media is None or media.shape[1] == 0:
            return
        rule = layers[0].gated_cross_attn.attn.only_attend_immediate_media
        window = all_seen_window(media.shape[1], media.shape[2], rule, last_group_first)
        for layer in layers:
            layer.prepare_decode(window)

    def forward(
        self, input_ids: torch.Tensor, visual_features: torch.Tensor, media_time: torch.Tensor | None,
        reuse_media_kv: bool = False, all_media_seen: bool | int = False,
        media_first: torch.Tensor | None = None, **lm_kwargs: Any,
    ) -> Any:
        """Run the LM conditioned on ``visual_features`` (B, T, n, Dv); ``media_time`` (B, L)
        (None only with ``all_media_seen``) and ``media_first`` (B, L): see :meth:`condition`.

        Returns:
            the LM's output (logits (B, L, V'), cache, ...).
        """
        self.condition(visual_features, media_time, reuse_media_kv, all_media_seen, media_first)
        try:
            return self.lm(input_ids=input_ids, **lm_kwargs)
        finally:
            if not reuse_media_kv:
                self.condition(None, None)  # do not hold on to the media between training steps
