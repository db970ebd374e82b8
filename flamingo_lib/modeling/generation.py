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
            inputs["num_images"], inputs["first_image"] = media_time[:, -1], media_first[:, -1]
        if seen:
            inputs["all_media_seen"] = self._last_group_first
        else:
            inputs["media_time"], inputs["media_first"] = media_time[:, -fed:], media_first[:, -fed:]
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

        Returns:
            token ids (B * num_return_sequences, L + new) as ``GenerationMixin.generate``.
        """
        features = self.resolve_visual_features(pixel_values, image_embeddings, visual_features)
        self._media_time(input_ids, media_locations, features.shape[1])  # validate the prompt
        if kwargs.get("max_new_tokens") is not None:
            self.check_length(input_ids.shape[1] + kwargs["max_new_tokens"], "the prompt plus max_new_tokens")
        elif kwargs.get("max_length") is not None:
            self.check_length(kwargs["max_length"], "max_length")
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
            return super().generate(input_ids=input_ids, attention_mask=attention_mask,
                                    visual_features=features, **kwargs)
        finally:
            self._generating, self._all_media_seen_from, self._media_memo = False, None, None
            if isinstance(head, DecoupledLMHead):
                head.new_logit_bias = None
            self.flamingo.condition(None, None)

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
