"""Clinical context in the prompt: the indication, the prior study's films and its report.

A radiologist reads a film with the clinical question and the previous study beside it. The
context prompt interleaves them as Flamingo's input is made to: the prior study's films followed
by its report, then the study's own views and the report prompt::

    Indication: Shortness of breath.
    <image>Prior: Small left pleural effusion.<EOC>
    <image><image>Findings:

Consecutive ``<image>`` tokens are one media group
(:func:`~flamingo_lib.modeling.cross_attention.media_groups`): under the immediate rule the report
reads its own study's views and not the prior's films, the prior's report reads the prior's films,
and the language model reads the prior's report. A study without a prior says so ("Prior: none."),
so that the model learns when a comparison can be made. Training and generation build the prompt
here, through the processor that holds the parts (saved with it), so a model is always asked with
the context it learned with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from flamingo_lib.processing.prompts import EOC_TOKEN, IMAGE_TOKEN, REPORT_PROMPT, study_prompt

# one name each; "prior" is shorthand for the prior study's films and report
PARTS = ("indication", "prior_films", "prior_report")
SHORTHANDS = {"prior": ("prior_films", "prior_report"), "none": ()}
NOT_GIVEN = "none."


@dataclass(frozen=True)
class StudyContext:
    """Which parts of a study's clinical context its prompt holds.

    Attributes:
        indication: the report's INDICATION / HISTORY line (``CXRSample.indication``).
        prior_films: the prior study's films, as their own media group before the study's.
        prior_report: the prior study's report (FINDINGS, else IMPRESSION).
    """

    indication: bool = False
    prior_films: bool = False
    prior_report: bool = False

    @classmethod
    def parse(cls, names: str | Iterable[str] | None) -> "StudyContext":
        """From a comma-separated list (``"indication,prior"``) or names; ``""``/``"none"``/None: no
        context.

        Raises:
            ValueError: naming an unknown part and the known ones.
        """
        if names is None:
            return cls()
        items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
        chosen: set[str] = set()
        for name in filter(None, items):
            if name in SHORTHANDS:
                chosen.update(SHORTHANDS[name])
            elif name in PARTS:
                chosen.add(name)
            else:
                raise ValueError(f"unknown context part {name!r}; known: {', '.join(PARTS)} "
                                 f"(and {', '.join(SHORTHANDS)})")
        return cls(**{part: part in chosen for part in PARTS})

    @property
    def names(self) -> tuple[str, ...]:
        """The parts held, in :data:`PARTS` order (empty: the plain study prompt)."""
        return tuple(part for part in PARTS if getattr(self, part))

    def __str__(self) -> str:
        return ",".join(self.names) or "none"

    @property
    def uses_prior(self) -> bool:
        return self.prior_films or self.prior_report


@dataclass(frozen=True)
class StudyInputs:
    """A study's prompt and the films in the order of its ``<image>`` tokens.

    Attributes:
        prompt: the text up to and including the report prompt.
        images: the prior's films (when in the context) then the study's own.
        own_images: how many of ``images`` are the study's own (the last ones).
    """

    prompt: str
    images: list[Image.Image]
    own_images: int


def study_inputs(sample: Any, context: StudyContext, prompt: str = REPORT_PROMPT,
                 image_token: str = IMAGE_TOKEN, eoc_token: str = EOC_TOKEN) -> StudyInputs:
    """The prompt of ``sample`` (``CXRSample``-like: ``images``, ``indication``, ``prior``) with
    ``context``; with no context, :func:`~flamingo_lib.processing.prompts.study_prompt` exactly."""
    own = list(sample.images)
    text, films = "", []
    if context.indication:
        indication = " ".join(str(getattr(sample, "indication", "") or "").split())
        text += f"Indication: {indication or NOT_GIVEN}\n"
    if context.uses_prior:
        prior = getattr(sample, "prior", None)
        if prior is None:
            text += f"Prior: {NOT_GIVEN}{eoc_token}"
        else:
            if context.prior_films:
                films = list(prior.images)
                text += image_token * len(films)
            report = " ".join(str(prior.report).split()) if context.prior_report else "study."
            text += f"Prior: {report}{eoc_token}"
    return StudyInputs(text + study_prompt(len(own), prompt, image_token), films + own, len(own))


def missing_context(samples: Sequence[Any], context: StudyContext) -> str | None:
    """Why ``context`` cannot be read from ``samples`` (None when it can): a prior asked of a
    source that gives no sample a prior, checked on the first ``len(samples)`` samples given."""
    if context.uses_prior and samples and not any(getattr(s, "prior", None) is not None for s in samples):
        return ("the context asks for the prior study but none of these studies has one: open the source "
                "with priors (e.g. a MIMIC-CXR spec with ';priors=true', or phantom:longitudinal)")
    return None
