"""Prompt formats, defined once and shared by training, generation and evaluation.

A study with V views becomes ``<image>`` x V then the report prompt; few-shot (in-context)
prompts put k example studies with their reports, each closed by ``<EOC>``, before the query.
Training and generation call the same function, so the prompt a model is asked with is the one
it learned after (an earlier Flamingo's generation prompt drifted from its training prompt:
docs/prior-art.md, 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

REPORT_PROMPT = "Findings:"
IMAGE_TOKEN = "<image>"
EOC_TOKEN = "<EOC>"


def study_prompt(num_views: int, prompt: str = REPORT_PROMPT, image_token: str = IMAGE_TOKEN) -> str:
    """The prompt for one study: one image token per view, then the report prompt.

    >>> study_prompt(2)
    '<image><image>Findings:'
    """
    if num_views < 1:
        raise ValueError(f"a study needs at least one view, got {num_views}")
    return image_token * num_views + prompt


@dataclass(frozen=True)
class Example:
    """One in-context example: its views and its report."""

    images: Sequence[Image.Image]
    report: str


def few_shot_prompt(
    examples: Sequence[Example],
    query_views: int,
    prompt: str = REPORT_PROMPT,
    image_token: str = IMAGE_TOKEN,
    eoc_token: str = EOC_TOKEN,
) -> str:
    """k example studies with their reports, then the query study's prompt.

    Returns:
        e.g. ``'<image>Findings: Normal.<EOC><image>Findings:'`` for one example and one view.
    """
    return shots_text(examples, prompt, image_token, eoc_token) + study_prompt(query_views, prompt, image_token)


def shots_text(examples: Sequence[Any], prompt: str = REPORT_PROMPT, image_token: str = IMAGE_TOKEN,
               eoc_token: str = EOC_TOKEN) -> str:
    """The in-context examples' part of a few-shot prompt: each example study (anything with
    ``images`` and ``report``) as its study prompt, its report and ``<EOC>``."""
    return "".join(f"{study_prompt(len(ex.images), prompt, image_token)} {ex.report.strip()}{eoc_token}"
                   for ex in examples)


def few_shot_images(examples: Sequence[Example], query_images: Sequence[Image.Image]) -> list[Image.Image]:
    """The images in the order their ``<image>`` tokens appear in :func:`few_shot_prompt`."""
    return [im for ex in examples for im in ex.images] + list(query_images)
