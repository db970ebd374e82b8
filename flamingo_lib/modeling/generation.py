"""Generation for :class:`~flamingo_lib.modeling.model.FlamingoModel`: ``transformers``' ``generate`` with
the visual features computed once per call, each layer's media keys/values cached, decoding
steps that need no cross-attention masks, and ``<image>`` never generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache, GenerationMixin

from flamingo_lib.modeling.cross_attention import media_groups
from flamingo_lib.modeling.new_tokens import DecoupledLMHead

#: Static-cache generation pads prompts and sizes its cache to multiples of this many tokens, so that
#: compiled decoding steps meet a few shapes rather than one per prompt length.
STATIC_PAD_MULTIPLE = 8


class FlamingoGenerationMixin(GenerationMixin):
    """The generation methods of ``FlamingoModel`` (which provides ``config``, ``flamingo``,
    ``resolve_visual_features``, ``_media_time`` and the ``_generating``, ``cache_media_kv`` and
    ``_all_media_seen_from`` flags its ``forward`` reads)."""

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """Adds ``media_time`` for the positions being fed, counted over the *whole* sequence so
        far: correct with the KV cache on (only new tokens fed) or off (docs/prior-art.md, 7). When
        every sample's prompt holds all its images and only generated positions are fed, sets
        ``all_media_seen`` instead: the step then needs no masks (``<image>`` is never generated)."""
        kwargs.pop("media_locations", None)
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        # input_ids is the whole sequence so far: it counts each study's images (padding is none);
        # needed only until the call's conditioning media are memoised (two ops a step saved)
        memo = self._media_memo
        fed = inputs["input_ids"].shape[1]
        seen = self._all_media_seen_from is not None and input_ids.shape[1] - fed >= self._all_media_seen_from
        if memo is None or memo[0] is not inputs.get("visual_features") or not seen:
            media_time, media_first = media_groups(input_ids == self.config.image_token_id)
            # contiguous: a slice's strides grow with the sequence, and a compiled step would recompile
            inputs["num_images"], inputs["first_image"] = media_time[:, -1].contiguous(), media_first[:, -1].contiguous()
        if seen:
            if not self._decode_prepared:  # outside the (possibly compiled) step: every step sees one state
                self.flamingo.prepare_decode_steps(self._last_group_first)
                self._decode_prepared = True
            inputs["all_media_seen"] = self._last_group_first
        else:
            inputs["media_time"], inputs["media_first"] = media_time[:, -fed:].contiguous(), media_first[:, -fed:].contiguous()
        return inputs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        media_locations: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """``transformers`` generation (greedy, sampling, beam search) conditioned on images.

        The visual features are computed once per call and each cross-attention layer's media
        keys/values once per call, then reused at every step, KV cache on or off. ``<image>`` is
        never generated (its logit is -inf: there is no image to give it). When every sample's
        prompt holds all its images, the steps after the prompt attend without masks.
        ``cache_implementation="static"`` (with ``max_new_tokens`` and left-padded prompts) decodes
        into a static cache, so that a compiled step (``compile_config``; on CUDA transformers
        compiles it by itself) is one graph for every step (:meth:`_static_cache_inputs`).

        Returns:
            token ids (B * num_return_sequences, L + new) as ``GenerationMixin.generate``.
        """
        features = self.resolve_visual_features(pixel_values, image_embeddings, visual_features)
        self._media_time(input_ids, media_locations, features.shape[1])  # validate the prompt
        if kwargs.get("max_new_tokens") is not None:
            self.check_length(input_ids.shape[1] + kwargs["max_new_tokens"], "the prompt plus max_new_tokens")
        elif kwargs.get("max_length") is not None:
            self.check_length(kwargs["max_length"], "max_length")
        added = 0
        if kwargs.get("cache_implementation") == "static":
            before = input_ids.shape[1]
            input_ids, attention_mask, kwargs = self._static_cache_inputs(input_ids, attention_mask, kwargs)
            added = input_ids.shape[1] - before
        if kwargs.get("use_cache", True) and kwargs.get("cache") is None:
            kwargs["cache"] = DynamicCache(config=self.flamingo.lm.config)
        # A generated <image> would announce an image that was never given (with immediate-media
        # attention its row would be fully masked: NaN): never emit it. Then, when every sample's prompt holds all T images, each generated position
        # sees all of them, and decoding steps skip the masks (one host read here, none per step).
        head = self.get_output_embeddings()
        if isinstance(head, DecoupledLMHead):
            bias = torch.zeros(len(head.new_token_ids), device=head.new_rows.device)
            head.new_logit_bias = bias.masked_fill(head.new_token_ids == self.config.image_token_id, -torch.inf)
        else:
            kwargs["suppress_tokens"] = sorted(set(kwargs.get("suppress_tokens") or ()) | {self.config.image_token_id})
        # (counted as prepare_inputs_for_generation counts them: from the <image> tokens); the steps
        # attend to one window of latents only when every sample's last media group opens at the same image
        media_time, media_first = media_groups(input_ids == self.config.image_token_id)
        every_image_in_prompt = bool((media_time[:, -1] == features.shape[1]).all())
        one_window = bool((media_first[:, -1] == media_first[0, -1]).all()) if input_ids.shape[1] else False
        self._all_media_seen_from = input_ids.shape[1] if every_image_in_prompt and one_window else None
        self._last_group_first = int(media_first[0, -1]) if self._all_media_seen_from is not None else None
        self._generating = True
        try:
            out = super().generate(input_ids=input_ids, attention_mask=attention_mask,
                                   visual_features=features, **kwargs)
            if added:  # the caller's prompt length still marks where the new tokens start
                if torch.is_tensor(out):
                    return out[:, added:]
                out.sequences = out.sequences[:, added:]
            return out
        finally:
            self._generating, self._all_media_seen_from, self._media_memo = False, None, None
            self._decode_prepared = False
            if isinstance(head, DecoupledLMHead):
                head.new_logit_bias = None
            self.flamingo.condition(None, None)

    def _static_cache_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                             kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``cache_implementation="static"``: the prompt left-padded to a multiple of
        :data:`STATIC_PAD_MULTIPLE` tokens and a ``StaticCache`` of the LM sized to a multiple of it, so
        that a compiled decoding step (``compile_config``; on CUDA ``transformers`` compiles it by itself,
        mode ``reduce-overhead``: one CUDA graph a step) sees the same shapes at every step and from one
        call to the next of similar length. Left padding is what batched generation pads anyway: the
        new positions are masked and the positions of the real tokens unchanged."""
        from transformers import StaticCache

        kwargs = dict(kwargs)
        kwargs.pop("cache_implementation")
        if kwargs.get("cache") is not None:
            raise ValueError("cache_implementation='static' builds its own cache: pass one or the other")
        new = kwargs.get("max_new_tokens")
        if new is None:
            raise ValueError("cache_implementation='static' needs max_new_tokens (the cache is sized by it)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask[:, -1].eq(0).any():
            raise ValueError("cache_implementation='static' needs left-padded prompts (padding_side='left')")
        pad = (-input_ids.shape[1]) % STATIC_PAD_MULTIPLE
        if pad:
            pad_id = self.generation_config.pad_token_id
            pad_id = self.config.eoc_token_id if pad_id is None else pad_id
            input_ids = torch.nn.functional.pad(input_ids, (pad, 0), value=int(pad_id))
            attention_mask = torch.nn.functional.pad(attention_mask, (pad, 0), value=0)
        length = input_ids.shape[1] + new
        length += (-length) % STATIC_PAD_MULTIPLE
        self.check_length(length, "the padded prompt plus max_new_tokens")
        kwargs["cache"] = StaticCache(config=self.flamingo.lm.config, max_cache_len=length)
        return input_ids, attention_mask, kwargs

    @torch.no_grad()
    def generate_captions(
        self,
        processor: Any,
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
        prompt: str | Sequence[str] | None = None,
        max_length: int = 60,
        num_beams: int = 1,
        **kwargs: Any,
    ) -> list[str]:
        """Reports for images: one string per sample, tags removed.

        Args:
            processor: this model's :class:`~flamingo_lib.FlamingoProcessor`.
            images: one image per sample, or a list of images per sample (one ``<image>`` each
                in ``prompt``).
            prompt: one for all samples or one per sample; defaults to ``processor.study_prompt(views)``
                (use ``processor.study_inputs(sample)`` for a study with its context).
            max_length: new tokens at most.
            num_beams: 1 = greedy.
        """
        if len(images) == 0:
            raise ValueError("generate_captions: no images given (one image, or a list of images, per report to write)")
        per_sample = [[im] if isinstance(im, Image.Image) else list(im) for im in images]
        if prompt is None or isinstance(prompt, str):
            prompts = [processor.study_prompt(len(v)) if prompt is None else prompt for v in per_sample]
        elif len(prompt) != len(per_sample):
            raise ValueError(f"generate_captions: {len(prompt)} prompts for {len(per_sample)} samples")
        else:
            prompts = list(prompt)
        batch = processor(prompts, per_sample, padding_side="left")
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        out = self.generate(**batch, max_new_tokens=max_length, num_beams=num_beams, **kwargs)
        return self.new_reports(processor, out, batch["input_ids"].shape[1])

    def new_reports(self, processor: Any, ids: torch.Tensor, prompt_length: int) -> list[str]:
        """The reports ``generate`` wrote after a (left-padded) prompt of ``prompt_length`` tokens:
        ids (N, L) -> N texts, cut at ``<EOC>``, tags removed."""
        texts = processor.tokenizer.batch_decode(ids[:, prompt_length:], skip_special_tokens=False)
        return [processor.remove_tags(t.split(self.config.eoc_token)[0]) for t in texts]
