"""`FlamingoProcessor`: text with `<image>` / `<EOC>` tokens and images -> model inputs and labels."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from flamingo_lib.modeling.config import FlamingoConfig
from flamingo_lib.modeling.backbones.language import flamingo_tokenizer
from flamingo_lib.modeling.saved_files import check_complete, saving
from flamingo_lib.processing.context import StudyContext, StudyInputs, study_inputs
from flamingo_lib.processing.prompts import REPORT_PROMPT, study_prompt
from flamingo_lib.modeling.backbones.vision import ImagePreprocessConfig, preprocess_config
from flamingo_lib.io import atomic_path, write_json_atomic, write_text_atomic

PREPROCESSOR_FILE = "flamingo_processor.json"


class FilmBatch(NamedTuple):
    """What :meth:`FlamingoProcessor.film_batch` returns."""

    batch: dict[str, torch.Tensor]
    prompt_length: int
    image: int
IGNORE_INDEX = -100


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way an X-ray should be.

    16-bit and float images are rescaled from their own min..max (12-bit data stored in 16 bits
    would otherwise come out nearly black); transparent images are composited on black (an
    X-ray's background); grayscale is replicated to three channels.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class FlamingoProcessor:
    """Tokenizer with the Flamingo tokens plus the vision encoder's own image preprocessing.

    Args:
        config: the model's config; ``image_token_id`` / ``eoc_token_id`` are filled in.
        tokenizer: a tokenizer that already has the Flamingo tokens (when reloading).
        image_config: the encoder's preprocessing (read from the encoder's config when omitted).
        prompt: the report prompt after the image tokens, shared by training and generation
            (see :mod:`flamingo_lib.processing.prompts`).
        context: the clinical context each study's prompt holds (indication, prior study:
            :mod:`flamingo_lib.processing.context`), saved with the processor so that generation
            asks with what training taught.
    """

    def __init__(
        self,
        config: FlamingoConfig,
        tokenizer: Any = None,
        image_config: ImagePreprocessConfig | None = None,
        prompt: str = REPORT_PROMPT,
        context: StudyContext | str | None = None,
    ) -> None:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.config = config
        self.tokenizer = flamingo_tokenizer(config) if tokenizer is None else tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(config.image_token)
        self.eoc_token_id = self.tokenizer.convert_tokens_to_ids(config.eoc_token)
        config.image_token_id, config.eoc_token_id = self.image_token_id, self.eoc_token_id
        self.image_config = image_config or preprocess_config(config.clip_model_type)
        self.prompt = prompt
        self.context = context if isinstance(context, StudyContext) else StudyContext.parse(context)
        c = self.image_config
        self._transform = image_transform_v2(
            PreprocessCfg(size=c.size, mean=c.mean, std=c.std, interpolation=c.interpolation,
                          resize_mode=c.resize_mode),
            is_train=False,
        )

    # ----------------------------------------------------------------------------------- text
    def encode_text(self, text: str | Sequence[str], padding_side: str = "right", max_length: int | None = None) -> dict:
        """Tokenize (and pad) text. Returns input_ids, attention_mask, media_locations: (B, L)."""
        texts = [text] if isinstance(text, str) else list(text)
        enc = self.tokenizer(
            texts, padding=True, return_tensors="pt", padding_side=padding_side,
            truncation=max_length is not None, max_length=max_length,
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "media_locations": self.get_media_locations(enc["input_ids"]),
        }

    def get_media_locations(self, input_ids: torch.Tensor) -> torch.Tensor:
        """bool (B, L): True exactly at the dedicated ``<image>`` token (never at a literal '<')."""
        return input_ids == self.image_token_id

    def remove_tags(self, text: str) -> str:
        """Drop ``<image>``, ``<EOC>`` and the tokenizer's special tokens; tidy whitespace."""
        tags = {self.config.image_token, self.config.eoc_token, *self.tokenizer.all_special_tokens}
        for tag in tags:
            text = text.replace(tag, " ")
        return re.sub(r"\s+", " ", text).strip()

    def study_prompt(self, num_views: int = 1) -> str:
        """``<image>`` per view, then the report prompt: what training and generation both use."""
        return study_prompt(num_views, self.prompt, self.config.image_token)

    def study_inputs(self, sample: Any) -> StudyInputs:
        """The prompt of a study (``CXRSample``-like) with this processor's context, and its films
        in the order of the prompt's ``<image>`` tokens (:func:`~flamingo_lib.processing.context.study_inputs`)."""
        return study_inputs(sample, self.context, self.prompt, self.config.image_token, self.config.eoc_token)

    def film_batch(self, sample: Any, report: str | None = None, film: Image.Image | None = None) -> FilmBatch:
        """A training batch of one study for maps over one film: its prompt with this processor's context,
        its first film (or ``film`` in its place: another study's, for a shuffled control) as the study's
        only view, and ``report`` (default: the study's) teacher-forced.

        Returns:
            :class:`FilmBatch`: the batch, the prompt's length in tokens (the report's first position)
            and the film's image index in the batch (after a prior study's films).
        """
        study = copy.copy(sample)
        study.images = [sample.images[0] if film is None else film]
        inputs = self.study_inputs(study)
        report = sample.report if report is None else report
        batch = self.training_batch([report], [inputs.images], [inputs.prompt])
        return FilmBatch(batch, len(self.tokenizer(inputs.prompt)["input_ids"]), len(inputs.images) - 1)

    def prepare_caption(self, caption: str, num_views: int = 1) -> str:
        """The full training text of one study: ``study_prompt + " " + report + <EOC>``."""
        return f"{self.study_prompt(num_views)} {caption.strip()}{self.config.eoc_token}"

    # --------------------------------------------------------------------------------- images
    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (any mode) -> (N, 3, H, W) normalised as the vision encoder expects."""
        if not images:
            return torch.zeros(0, 3, self.image_config.size, self.image_config.size)
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ValueError(f"image {i} is a {type(image).__name__}, expected a PIL.Image.Image")
        return torch.stack([self._transform(to_rgb(image)) for image in images])

    # ---------------------------------------------------------------------------------- batch
    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Sequence[Image.Image]] | Sequence[Image.Image] | None = None,
        return_tensors: str = "pt",
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenize text and stack images.

        Args:
            text: one string per sample, with one ``<image>`` per image.
            images: per sample a list of PIL images (or one image per sample).
            padding_side: "right" for training, "left" for batched generation.

        Returns:
            input_ids, attention_mask (B, L) long; media_locations (B, L) bool; pixel_values
            (B, T_img, 3, H, W), samples with fewer images zero-padded.

        Raises:
            ValueError: no text at all, or the number of ``<image>`` tokens and images differ in a sample.
        """
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}; only 'pt' is supported")
        if not isinstance(text, str) and len(text) == 0:
            raise ValueError("no text given: one string per sample (a batch of 0 samples has nothing to encode)")
        batch = self.encode_text(text, padding_side=padding_side, max_length=max_length)
        return self._attach_images(batch, images)

    def training_batch(
        self,
        reports: Sequence[str],
        images: Sequence[Sequence[Image.Image]] | Sequence[Image.Image],
        prompts: str | Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Inputs and labels for teacher forcing: ``prompt`` then ``report<EOC>`` per sample.

        Prompt and report are tokenized apart and concatenated, so the prompt boundary is
        exact; labels are -100 on padding, on ``<image>`` tokens and on the prompt. The prompt
        defaults to :meth:`study_prompt` for each sample's number of views; pass few-shot
        prompts (:func:`flamingo_lib.processing.prompts.few_shot_prompt`) to train in context.

        Returns:
            what :meth:`__call__` returns, plus labels (B, L).
        """
        images = [[im] if isinstance(im, Image.Image) else list(im) for im in images]
        if prompts is None:
            prompts = [self.study_prompt(len(views)) for views in images]
        if len(images) != len(reports):
            raise ValueError(f"got {len(reports)} reports and {len(images)} image lists")
        batch = self.text_batch(reports, prompts)
        labels = batch.pop("labels")
        return {**self._attach_images(batch, images), "labels": labels}

    def text_batch(self, reports: Sequence[str], prompts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """:meth:`training_batch` without the images (for media given another way, e.g. a feature
        cache's patch tokens): input_ids, attention_mask, media_locations and labels, (B, L) each."""
        if isinstance(prompts, str):
            prompts = [prompts] * len(reports)
        if len(prompts) != len(reports):
            raise ValueError(f"got {len(reports)} reports and {len(prompts)} prompts")
        ids, prompt_lengths = [], []
        for prompt, report in zip(prompts, reports):
            prompt_ids = self.tokenizer(prompt)["input_ids"]
            target_ids = self.tokenizer(" " + report.strip() + self.config.eoc_token, add_special_tokens=False)["input_ids"]
            ids.append(prompt_ids + target_ids)
            prompt_lengths.append(len(prompt_ids))
        padded = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt", padding_side="right")
        return {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "media_locations": self.get_media_locations(padded["input_ids"]),
            "labels": self.build_labels(padded["input_ids"], padded["attention_mask"], prompt_lengths),
        }

    def _attach_images(self, batch: dict, images: Any) -> dict:
        """Check one image per ``<image>`` token in each sample; add pixel_values (B, T, 3, H, W)."""
        n_samples = batch["input_ids"].shape[0]
        if images is None:
            images = [[] for _ in range(n_samples)]
        images = [[im] if isinstance(im, Image.Image) else list(im) for im in images]
        if len(images) != n_samples:
            raise ValueError(f"got {n_samples} texts but {len(images)} image lists")
        counts = batch["media_locations"].sum(-1).tolist()
        for i, (count, sample_images) in enumerate(zip(counts, images)):
            if count != len(sample_images):
                raise ValueError(
                    f"sample {i}: the text has {count} {self.config.image_token} token(s) but {len(sample_images)} "
                    "image(s) were given (truncation can drop image tokens too)"
                )
        most = max((len(s) for s in images), default=0)
        size = self.image_config.size
        pixel_values = torch.zeros(n_samples, most, 3, size, size)
        for i, sample_images in enumerate(images):
            if sample_images:
                pixel_values[i, : len(sample_images)] = self.preprocess_images(sample_images)
        return {**batch, "pixel_values": pixel_values}

    def build_labels(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Labels (B, L): ``input_ids`` with -100 on padding, ``<image>`` tokens and, per sample,
        the first ``prompt_lengths[i]`` real tokens (the prompt is given, not predicted)."""
        labels = input_ids.clone()
        labels[attention_mask == 0] = IGNORE_INDEX
        labels[input_ids == self.image_token_id] = IGNORE_INDEX
        if prompt_lengths is not None:
            first_real = (attention_mask.cumsum(-1) == 1).float().argmax(-1)
            positions = torch.arange(input_ids.shape[1])[None]
            start = first_real[:, None]
            end = start + torch.as_tensor(list(prompt_lengths))[:, None]
            labels[(positions >= start) & (positions < end)] = IGNORE_INDEX
        return labels

    # ------------------------------------------------------------------------------ save/load
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer (with the Flamingo tokens), the image preprocessing and config, each
        file atomically (a save killed midway leaves the previous files whole and the directory
        marked as unfinished)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with saving(directory):
            self.write_files(directory)

    def write_files(self, directory: Path) -> None:
        """The files of :meth:`save_pretrained`, without its mark (for a save that holds one)."""
        # the tokenizer writes its files in place: let it write them apart, then move each in whole
        with tempfile.TemporaryDirectory(dir=directory, prefix=".tokenizer-") as staging:
            self.tokenizer.save_pretrained(staging)
            for written in sorted(Path(staging).iterdir()):
                with atomic_path(directory / written.name) as target:
                    shutil.copyfile(written, target)
        payload = {"image_config": self.image_config.__dict__, "prompt": self.prompt, "context": list(self.context.names)}
        write_json_atomic(directory / PREPROCESSOR_FILE, payload, indent=2)
        if not (directory / "config.json").exists():
            write_text_atomic(directory / "config.json", self.config.to_json_string(use_diff=True))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FlamingoProcessor":
        """Reload what :meth:`save_pretrained` wrote; for a directory ``FlamingoModel.save_pretrained``
        wrote without a processor, the processor its config describes."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        check_complete(directory)  # an interrupted save may have paired other files
        config = FlamingoConfig.from_pretrained(directory)
        if not (directory / PREPROCESSOR_FILE).exists():
            # a model saved without its processor: the one its config describes (the LM's
            # tokenizer with the Flamingo tokens, the encoder's preprocessing, the report prompt)
            return cls(config)
        payload = json.loads((directory / PREPROCESSOR_FILE).read_text())
        image = payload["image_config"]
        image_config = ImagePreprocessConfig(
            size=image["size"], mean=tuple(image["mean"]), std=tuple(image["std"]),
            interpolation=image["interpolation"], resize_mode=image["resize_mode"],
        )
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(config, tokenizer=tokenizer, image_config=image_config, prompt=payload["prompt"],
                   context=StudyContext.parse(payload.get("context", ())))  # saved before contexts: none
