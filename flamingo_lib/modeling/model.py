"""`FlamingoModel`: the Hugging Face face of :class:`~flamingo_lib.modeling.flamingo.Flamingo`.

forward / loss, generate (:mod:`flamingo_lib.modeling.generation`), save_pretrained / from_pretrained of
the trainable weights only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from flamingo_lib.modeling.config import FROZEN_DTYPES, FlamingoConfig, dtype_name, floating_dtype
from flamingo_lib.modeling.heads.findings import findings_loss, severity_loss
from flamingo_lib.modeling.heads.predictions import FindingsPredictionMixin, current_study
from flamingo_lib.modeling.cross_attention import media_groups
from flamingo_lib.modeling.flamingo import Flamingo
from flamingo_lib.modeling.generation import FlamingoGenerationMixin
from flamingo_lib.modeling.lm_injection import lm_flamingo_layers
from flamingo_lib.modeling.loss import LOSS_REDUCTIONS, causal_lm_loss
from flamingo_lib.io import atomic_path, write_text_atomic
from flamingo_lib.modeling.saved_files import check_complete, saving

WEIGHTS_FILE = "model.safetensors"


@dataclass
class FlamingoOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the auxiliary findings head's outputs, when the model has
    one and ``finding_labels`` were given: ``findings_logits`` (B, K) and ``findings_loss``
    (binary cross-entropy; not added to ``loss``: the trainer weighs it)."""

    findings_logits: torch.Tensor | None = None
    findings_loss: torch.Tensor | None = None


class FlamingoModel(PreTrainedModel, FlamingoGenerationMixin, FindingsPredictionMixin):
    """A frozen causal LM that reads chest X-rays through gated cross-attention.

    ``forward`` takes exactly one of ``pixel_values`` (B, T, 3, H, W), ``image_embeddings``
    (B, T, P, dim_visual: cached patch tokens) or ``visual_features`` (B, T, n, dim_visual:
    already resampled).
    """

    config_class = FlamingoConfig
    base_model_prefix = "flamingo"
    main_input_name = "input_ids"

    def __init__(self, config: FlamingoConfig) -> None:
        super().__init__(config)
        self.flamingo = Flamingo(config)
        from flamingo_lib.modeling.backbones.provenance import record_and_check_builds

        record_and_check_builds(config)  # embedded encoders: the build trained on = the build loaded?
        lm_config = self.flamingo.lm.config
        eos = [config.eoc_token_id] + ([lm_config.eos_token_id] if lm_config.eos_token_id is not None else [])
        pad = lm_config.pad_token_id if lm_config.pad_token_id is not None else lm_config.eos_token_id
        self.generation_config = GenerationConfig(
            bos_token_id=lm_config.bos_token_id, eos_token_id=eos, pad_token_id=pad, max_new_tokens=60
        )
        self._generating = False
        self._all_media_seen_from: int | None = None  # generate: positions from here on see every image
        self._last_group_first: int | None = None  # generate: the image opening every sample's last media group
        self._decode_prepared = False  # generate: the layers' decoding-step weights are prepared
        # Checks that read the device (the <image> count, the findings head's image counts): on for
        # calls from users; a training step on an accelerator, whose batches the processor built and
        # checked, turns them off so that the step reads nothing back (TrainConfig, the Trainer)
        self.check_inputs = True
        # generate: (resolved features, their conditioning media), so that every step hands the
        # layers the same media tensor and their cached media keys/values stay valid
        self._media_memo: tuple[torch.Tensor, torch.Tensor] | None = None
        # Compute each cross-attention layer's media keys/values once per `generate` call (the
        # media do not change between steps). False recomputes them at every step, as
        # open_flamingo does: kept switchable for benchmarks and debugging.
        self.cache_media_kv = True
        self.post_init()
        # a new module is in train mode; apply `train`'s rule now, so the frozen parts never run in
        # it (the frozen encoder's BatchNorm would otherwise cache batch-dependent features)
        self.train(self.training)

    def init_weights(self) -> None:
        """Nothing to do, on purpose: frozen parts arrive loaded from their source and the new parts
        are initialised from ``config.seed`` at construction. ``PreTrainedModel``'s default would
        re-initialise from the global RNG whatever it does not recognise as loaded (the open_clip
        tower included), making the model neither pretrained nor reproducible."""

    def train(self, mode: bool = True) -> "FlamingoModel":
        """Train mode for the parts that train; frozen parts stay in eval mode (no dropout), as a
        frozen feature extractor should, which also makes training reproducible step for step.
        (A frozen vision encoder keeps itself in eval mode: :meth:`VisionEncoder.train`.)"""
        super().train(mode)
        if mode and not any(p.requires_grad for n, p in self.flamingo.lm.named_parameters()
                            if "gated_cross_attn" not in n and "new_rows" not in n):
            self.flamingo.lm.eval()
            for block in (m for m in self.flamingo.lm.modules() if hasattr(m, "gated_cross_attn")):
                block.gated_cross_attn.train()
        return self

    @property
    def fuse_decode_steps(self) -> bool:
        """Whether ``generate``'s decoding steps after all images run each cross-attention block
        through weights prepared once per call (~45 op calls a block and step instead of
        ~95: :meth:`~flamingo_lib.modeling.cross_attention.GatedCrossAttentionBlock.decode_step`);
        the same tokens up to float rounding. False runs the blocks' general forward at every
        step, as before that path existed: kept switchable for benchmarks and tests."""
        return all(layer.fuse_decode_steps for layer in lm_flamingo_layers(self.flamingo.lm))

    @fuse_decode_steps.setter
    def fuse_decode_steps(self, value: bool) -> None:
        for layer in lm_flamingo_layers(self.flamingo.lm):
            layer.fuse_decode_steps = value

    # ------------------------------------------------------------------ parts and freezing
    def freeze_lm(self) -> None:
        """See :meth:`Flamingo.freeze_lm`."""
        self.flamingo.freeze_lm()

    def unfreeze_lm(self) -> None:
        """See :meth:`Flamingo.unfreeze_lm`."""
        self.flamingo.unfreeze_lm()

    def freeze_vm(self) -> None:
        """See :meth:`Flamingo.freeze_vm`."""
        self.flamingo.freeze_vm()

    def unfreeze_vm(self) -> None:
        """See :meth:`Flamingo.unfreeze_vm`."""
        self.flamingo.unfreeze_vm()

    def parameters_trainable(self) -> Iterator[nn.Parameter]:
        """The parameters that train (each once, shared ones included once)."""
        return (p for p in self.parameters() if p.requires_grad)

    def state_dict_trainable(self) -> dict[str, torch.Tensor]:
        """Name -> tensor of the trainable parameters only (what a checkpoint holds)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def get_input_embeddings(self) -> nn.Module:
        return self.flamingo.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.flamingo.lm.get_output_embeddings()

    # ----------------------------------------------------------------------------- forward
    def resolve_visual_features(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exactly one of the three visual inputs -> resampled features (B, T, n, dim_visual)."""
        given = [n for n, v in (("pixel_values", pixel_values), ("image_embeddings", image_embeddings),
                                ("visual_features", visual_features)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                "pass exactly one of pixel_values, image_embeddings or visual_features; got "
                + (", ".join(given) if given else "none")
            )
        if pixel_values is not None:
            return self.flamingo.encode_resample_visuals(pixel_values)
        if image_embeddings is not None:
            if image_embeddings.ndim != 4 or image_embeddings.shape[-1] != self.config.dim_visual:
                raise ValueError(f"image_embeddings must be (batch, images, tokens, {self.config.dim_visual}), "
                                 f"got {tuple(image_embeddings.shape)}")
            return self.flamingo.resample(image_embeddings)
        if visual_features.ndim != 4 or visual_features.shape[-1] != self.config.dim_visual:
            raise ValueError(f"visual_features must be (batch, images, latents, {self.config.dim_visual}), "
                             f"got {tuple(visual_features.shape)}")
        return visual_features

    def _media_time(self, input_ids: torch.Tensor, media_locations: torch.Tensor | None, num_media: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) images at or before each position and (B, L) the first image of the latest media
        group (:func:`~flamingo_lib.modeling.cross_attention.media_groups`), checked against the
        number of images."""
        if media_locations is None:
            media_locations = input_ids == self.config.image_token_id
        elif media_locations.shape != input_ids.shape:
            raise ValueError(f"media_locations has shape {tuple(media_locations.shape)}, "
                             f"expected that of input_ids {tuple(input_ids.shape)}")
        if not self.check_inputs:
            return media_groups(media_locations)
        most = int(media_locations.sum(-1).max()) if media_locations.numel() else 0
        if most > num_media:
            raise ValueError(f"a sample has {most} {self.config.image_token} tokens but only "
                             f"{num_media} image(s) were given")
        if most < num_media:
            raise ValueError(f"{num_media} image(s) per sample were given but no sample has more than "
                             f"{most} {self.config.image_token} token(s): every image needs its token")
        return media_groups(media_locations)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        media_locations: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_reduction: str = "mean",
        cache: Any = None,
        use_cache: bool | None = None,
        position_ids: torch.Tensor | None = None,
        media_time: torch.Tensor | None = None,
        all_media_seen: bool | int = False,
        media_first: torch.Tensor | None = None,
        first_image: torch.Tensor | None = None,
        finding_labels: torch.Tensor | None = None,
        num_images: torch.Tensor | None = None,
        token_findings: torch.Tensor | None = None,
        token_prior_findings: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> FlamingoOutput:
        """
        Args:
            input_ids, attention_mask: (B, L).
            media_locations: bool (B, L), True at ``<image>``; derived from ``input_ids`` if None.
            pixel_values / image_embeddings / visual_features: exactly one (see class doc).
            labels: (B, L), -100 where no loss is taken (see ``FlamingoProcessor.build_labels``).
            loss_reduction: 'mean' over all label tokens, 'sum', or 'none': per-sample mean (B,).
            cache, use_cache, position_ids: passed to the LM.
            media_time: (B, L) images at or before each position, for inputs that are only the
                tail of a sequence (cached decoding); defaults to ``media_locations.cumsum(-1)``.
            all_media_seen: every position of ``input_ids`` comes after all of its sample's
                images (a decoding step; ``generate`` sets it): no ``media_time``, no masks; an
                int names the 1-based image opening every sample's last media group.
            media_first: (B, L) with ``media_time``: the first image of the latest media group
                (consecutive ``<image>`` tokens, :func:`~flamingo_lib.modeling.cross_attention.media_groups`);
                None with a given ``media_time``: each image a group of its own.
            first_image: (B,) 1-based, the first image of the study being reported (its last media
                group: a prompt may hold a prior study's films before it); with ``num_images`` the
                images the findings head pools. Default: from the ``<image>`` tokens, like ``num_images``.
            finding_labels: (B, K) targets of the findings head (``config.findings_head``), (B, 2K)
                with ``config.reading_head`` (the K readings after the K findings), K more with
                ``config.severity_head`` (the stated severities last, NaN where unstated): its
                logits and loss are returned too.
            num_images: (B,) images each study holds, for what pools over a study's images (the
                findings head, findings tokens): the rest of the T slots is padding. Default: its
                ``<image>`` tokens, when ``input_ids`` is the whole sequence (no ``media_time``).
            token_findings: (B, K) with ``config.findings_tokens``: the probabilities the findings
                tokens are built from in place of the head's, NaN where the head's stand (teacher
                forcing in training; generation never passes them); (B, 2K) with the severities after
                them, for a severity head.
            token_prior_findings: (B, K) with ``config.prior_findings_tokens``: the same for the
                prior study's verdict (NaN rows: the head's, or no prior).

        Returns:
            :class:`FlamingoOutput` with loss, logits (B, L, V'), cache (and the findings head's
            logits and loss when ``finding_labels`` are given).
        """
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={loss_reduction!r}; allowed: {', '.join(LOSS_REDUCTIONS)}")
        if cache is None and media_time is None:  # the whole sequence (not a decoding step's tail)
            self.check_length(input_ids.shape[1], "the input")
        if all_media_seen and visual_features is not None and pixel_values is None and image_embeddings is None:
            features = visual_features  # a decoding step: generate resolved and checked them once per call
        else:
            features = self.resolve_visual_features(pixel_values, image_embeddings, visual_features)
        if features.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{features.shape[0]} samples of images for {input_ids.shape[0]} texts")
        if media_time is None and not all_media_seen:
            media_time, media_first = self._media_time(input_ids, media_locations, features.shape[1])
            if media_time.shape[1]:  # the whole sequence: its <image> tokens count each study's images
                num_images = media_time[:, -1] if num_images is None else num_images
                first_image = media_first[:, -1] if first_image is None else first_image
        out = self.flamingo(
            input_ids, self._media_for(features, num_images, first_image, token_findings, token_prior_findings), media_time,
            reuse_media_kv=self._generating and self.cache_media_kv,
            all_media_seen=all_media_seen, media_first=media_first,
            attention_mask=attention_mask,
            cache=cache, use_cache=use_cache, position_ids=position_ids, **kwargs,
        )
        loss = None if labels is None else causal_lm_loss(out.logits, labels, loss_reduction)
        findings_logits = aux_loss = None
        if finding_labels is not None:
            findings_logits = self._findings_logits(*current_study(features, num_images, first_image,
                                                                   self.check_inputs))
            if self.config.severity_head:  # the severities' targets are soft and partly unstated
                k = len(self.config.findings_head)
                aux_loss = findings_loss(findings_logits[:, :-k], finding_labels[:, :-k]) \
                    + severity_loss(findings_logits[:, -k:], finding_labels[:, -k:])
            else:
                aux_loss = findings_loss(findings_logits, finding_labels)
        return FlamingoOutput(loss=loss, logits=out.logits, cache=getattr(out, "cache", None),
                              findings_logits=findings_logits, findings_loss=aux_loss)

    @property
    def max_positions(self) -> int | None:
        """The most positions the frozen LM embeds (None when its config does not say)."""
        lm_config = self.flamingo.lm.config
        return getattr(lm_config, "max_position_embeddings", None) or getattr(lm_config, "n_positions", None)

    def check_length(self, length: int, what: str) -> None:
        """Refuse a sequence longer than the LM can place (its position embeddings would be indexed
        out of range: an IndexError deep inside the LM).

        Raises:
            ValueError: naming ``what``, its length and the limit.
        """
        limit = self.max_positions
        if limit is not None and length > limit:
            raise ValueError(f"{what} is {length} tokens but the language model {self.config.lm!r} places at most "
                             f"{limit}: shorten the text (the processor's max_length) or generate fewer tokens")

    # ---------------------------------------------------------------------------- save/load
    def save_pretrained(self, save_directory: str | os.PathLike, processor: Any = None, **_: Any) -> None:
        """Write config.json, the trainable weights (safetensors) and, when given, the processor's
        files (without them, ``FlamingoProcessor.from_pretrained`` rebuilds the processor the config
        describes).

        Frozen parts are not saved: they are rebuilt from their source (``config.lm``,
        ``config.clip_model_type``, or the tiny-random seed) on load. Each file is written
        atomically, inside a marker that only a finished save removes
        (:mod:`~flamingo_lib.modeling.saved_files`): an interrupted save is refused on load.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        with saving(directory):
            if processor is not None:  # ours writes without a mark of its own; another, its own way
                getattr(processor, "write_files", processor.save_pretrained)(directory)
            self._write_files(directory)

    def _write_files(self, directory: Path) -> None:
        # what PretrainedConfig.save_pretrained writes, through the atomic writer
        write_text_atomic(directory / "config.json", self.config.to_json_string(use_diff=True))
        tensors = {k: v.contiguous().cpu() for k, v in self.state_dict_trainable().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt", "content": "flamingo trainable weights"})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        dtype: torch.dtype | str | None = None, torch_dtype: torch.dtype | str | None = None,
                        **overrides: Any) -> "FlamingoModel":
        """Rebuild the model from its config and load the trainable weights saved beside it.

        Args:
            dtype: as in transformers, the dtype of the whole model (``torch.bfloat16`` or
                ``"bfloat16"``), trained layers included: a model for inference. (To train with
                half-precision frozen parts, use ``frozen_dtype``: the trained layers stay float32.)
                The frozen parts are then loaded in it directly. ``torch_dtype``: its older name.
            overrides: config fields (e.g. ``frozen_dtype="bfloat16"``).

        Raises:
            FileNotFoundError: the directory lacks ``config.json`` or the weights.
            ValueError: a save into the directory did not finish.
            ValueError: the checkpoint lacks trainable weights, holds unexpected ones or ones of
                another shape; ``dtype`` is not a floating-point dtype.
        """
        directory = Path(pretrained_model_name_or_path)
        for name in ("config.json", WEIGHTS_FILE):  # without config.json the config would fall back to defaults
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name}: missing; a Flamingo saved by save_pretrained holds "
                                        f"config.json and {WEIGHTS_FILE}")
        check_complete(directory)
        cast = floating_dtype(dtype if dtype is not None else torch_dtype)
        config = FlamingoConfig.from_pretrained(directory, **overrides)
        name = None if cast is None else dtype_name(cast)
        if name in FROZEN_DTYPES and "frozen_dtype" not in overrides and config.freeze_language_model \
                and config.freeze_vision_model:
            config.frozen_dtype = name  # load the frozen parts in it, not in float32 first
        model = cls(config)
        weights = load_file(directory / WEIGHTS_FILE)
        trainable = set(model.state_dict_trainable())
        missing, unexpected = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        if missing or unexpected:
            raise ValueError(f"{directory / WEIGHTS_FILE}: missing trainable weights {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        params = dict(model.named_parameters())
        # copy_ broadcasts: 1 saved latent would fill 16 without a word (transformers refuses too)
        wrong = [f"{key} is {tuple(tensor.shape)} in the file but {tuple(params[key].shape)} in the model"
                 for key, tensor in weights.items() if tensor.shape != params[key].shape]
        if wrong:
            raise ValueError(f"{directory / WEIGHTS_FILE}: {'; '.join(wrong[:5])} (a config.json that does not match "
                             "its weights: the file was saved by another configuration)")
        with torch.no_grad():
            for key, tensor in weights.items():
                params[key].copy_(tensor)
        return (model if cast is None else model.to(cast)).eval()
