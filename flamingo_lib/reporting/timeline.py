"""One patient's studies over time: each film, the report the model wrote with the patient's context,
the comparison statements it made against the truth, and where its comparison words looked.

A model trained with the prior study in its prompt (:mod:`flamingo_lib.processing.context`) writes
"the effusion has increased" by reading the prior's report and the study's own films; the evidence
map of the comparison words (:func:`~flamingo_lib.modeling.attention_maps.capture_evidence`) is
drawn on the study's own first film and, when the prompt holds them, on the prior's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from flamingo_lib.evaluation.grounding import word_token_positions
from flamingo_lib.inference.batched import generate_in_batches
from flamingo_lib.labeling.changes import CHANGE_PATTERNS, change_statements
from flamingo_lib.modeling.attention_maps import capture_evidence, relevance_to_heatmap


@dataclass
class TimelineStudy:
    """One study of a patient's timeline.

    Attributes:
        sample: the study (``CXRSample``: ``images``, ``report``, ``indication``, ``prior``, ``meta``).
        report: the model's report, written with the processor's context.
        stated: the changes the report states, ``{finding: change}`` (:func:`change_statements`).
        truth: the true changes against the prior study (``meta["changes"]``; empty for a first study).
        words: the comparison words of the report whose evidence is mapped.
        heatmap: (H, W) their evidence on the study's own first film (None without comparison words).
        prior_heatmap: (H, W) their evidence on the prior's first film, when the prompt holds it.
    """

    sample: Any
    report: str
    stated: dict[str, str]
    truth: dict[str, str]
    words: list[str]
    heatmap: np.ndarray | None
    prior_heatmap: np.ndarray | None


def comparison_words(report: str) -> list[str]:
    """The words of ``report`` that state a change ("new", "increased", "unchanged", ...), in order."""
    found = []
    for patterns in CHANGE_PATTERNS.values():
        for pattern in patterns:
            found += [(m.start(), m.group(0)) for m in re.finditer(rf"\b(?:{pattern})\b", report, flags=re.IGNORECASE)]
    return [word for _, word in sorted(set(found))]


def patient_timeline(model: Any, processor: Any, studies: Sequence[Any], max_new_tokens: int = 60
                     ) -> list[TimelineStudy]:
    """Greedy reports of ``studies`` (a patient's, in order) with the processor's context, their
    change statements against the truth and the evidence maps of their comparison words."""
    reports = generate_in_batches(model, processor, studies, max_new_tokens=max_new_tokens, progress=False).reports
    timeline = []
    for sample, report in zip(studies, reports):
        words = comparison_words(report)
        heatmap = prior_heatmap = None
        if words:
            inputs = processor.study_inputs(sample)
            batch = processor.training_batch([report], [inputs.images], [inputs.prompt])
            offset = len(processor.tokenizer(inputs.prompt)["input_ids"])
            positions = word_token_positions(processor, report, words, offset)
            if positions:
                maps = capture_evidence(model, batch, positions)
                own = len(inputs.images) - inputs.own_images  # the study's first film follows the prior's
                size = np.asarray(sample.images[0]).shape[:2]
                heatmap = relevance_to_heatmap(maps.evidence(image=own), size)
                if own:
                    prior_heatmap = relevance_to_heatmap(maps.evidence(image=0), size)
        timeline.append(TimelineStudy(sample, report, change_statements(report),
                                      dict(sample.meta.get("changes", {})), words, heatmap, prior_heatmap))
    return timeline


def timeline_figure(timeline: Sequence[TimelineStudy], width: float = 3.2) -> Figure:
    """A column per study: its film with the comparison words' evidence, the indication, the model's
    change statements against the truth (a tick where they agree)."""
    from flamingo_lib.modeling.attention_maps import plot_heatmap

    figure = Figure(figsize=(width * len(timeline), width * 1.55), layout="constrained")
    axes = figure.subplots(1, len(timeline), squeeze=False)[0]
    for index, (ax, study) in enumerate(zip(axes, timeline)):
        image = study.sample.images[0]
        if study.heatmap is None:
            ax.imshow(image.convert("L"), cmap="gray")
            ax.set_axis_off()
        else:
            plot_heatmap(image, study.heatmap, ax=ax, colorbar=False)
        lines = [f"study {index + 1}: {study.sample.indication or 'no indication'}"]
        for finding in sorted(set(study.truth) | set(study.stated)):
            said, true = study.stated.get(finding, "-"), study.truth.get(finding, "-")
            lines.append(f"{'✓' if said == true else '✗'} {finding}: {said} (truth {true})")
        if not study.truth and not study.stated:
            lines.append("first study: nothing to compare")
        ax.set_title("\n".join(lines), fontsize=7, loc="left")
        words = ", ".join(dict.fromkeys(w.lower() for w in study.words))
        ax.text(0.0, -0.04, f"map: {words}" if words else "no comparison words", transform=ax.transAxes,
                fontsize=7, va="top")
    return figure
