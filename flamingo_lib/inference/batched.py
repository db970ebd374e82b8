"""Reports for many studies, a batch at a time: the one generation loop behind evaluation, the
finding-usage measurement, findings-guided decoding and the reports for a reader's own films.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class BatchedReports:
    """What :func:`generate_in_batches` returns.

    Attributes:
        reports: ``num_return_sequences`` reports per study, study by study, tags removed.
        findings: (N, K) the findings head's probabilities, columns in ``config.findings_head``
            order; None unless asked for and the model has the head.
        readings: (N, K) the reading head's, likewise.
    """

    reports: list[str]
    findings: torch.Tensor | None = None
    readings: torch.Tensor | None = None


@torch.no_grad()
def generate_in_batches(model: Any, processor: Any, samples: Sequence[Any], *, batch_size: int = 8,
                        max_new_tokens: int = 60, with_images: bool = True, heads: bool = False,
                        progress: bool = True, desc: str = "generating", **generate_kwargs: Any) -> BatchedReports:
    """Generate reports for ``samples`` (``CXRSample``-like: ``.images``), ``batch_size`` at a time.

    Args:
        with_images: False gives the no-image baseline: the prompt without ``<image>`` tokens and
            no visual input, so every cross-attention block is silent and the frozen LM writes on
            its own (the new ``<EOC>``/``<image>`` rows suppressed; it stops at its own end token).
        heads: also return the findings (and reading) heads' probabilities, each study's computed
            over its own films only (a batch pads studies with fewer views, and padding is no film).
        generate_kwargs: passed to ``model.generate`` (``num_beams``, ``do_sample``,
            ``temperature``, ``num_return_sequences``, ...). Sampling draws from the global RNG:
            the caller seeds it.
    """
    model.eval()
    device = next(model.parameters()).device
    observations = model.config.findings_head if heads else None
    reports: list[str] = []
    findings: list[torch.Tensor] = []
    readings: list[torch.Tensor] = []
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress, desc=desc):
        images = [list(samples[i].images) for i in range(start, min(start + batch_size, len(samples)))]
        if not with_images:
            reports += _without_images(model, processor, len(images), max_new_tokens, generate_kwargs)
            continue
        reports += model.generate_captions(processor, images, max_length=max_new_tokens, **generate_kwargs)
        if observations is None:
            continue
        pixels = processor([processor.study_prompt(len(v)) for v in images], images)["pixel_values"]
        head, stated = model.predict_heads(pixel_values=pixels.to(device), num_images=[len(v) for v in images])
        findings.append(torch.stack([head[obs].cpu() for obs in observations], 1))
        if stated is not None:
            readings.append(torch.stack([stated[obs].cpu() for obs in observations], 1))
    return BatchedReports(reports, torch.cat(findings) if findings else None,
                          torch.cat(readings) if readings else None)


def _without_images(model: Any, processor: Any, count: int, max_new_tokens: int,
                    generate_kwargs: dict[str, Any]) -> list[str]:
    """``count`` continuations of the bare prompt by the frozen LM (no ``<image>``, no media)."""
    device = next(model.parameters()).device
    batch = processor([processor.prompt] * count, None, padding_side="left")
    batch = {k: v.to(device) for k, v in batch.items() if k != "pixel_values"}
    empty = torch.zeros(count, 0, model.config.resampler_num_latents, model.config.dim_visual, device=device)
    # The new <EOC>/<image> rows are suppressed: trained only after images, <EOC> would end the
    # text at once; without them the frozen LM writes in its own vocabulary until its own </s>.
    ids = model.generate(**batch, visual_features=empty, max_new_tokens=max_new_tokens,
                         suppress_tokens=[model.config.eoc_token_id, model.config.image_token_id], **generate_kwargs)
    texts = processor.tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:])
    end = processor.tokenizer.eos_token or model.config.eoc_token
    return [processor.remove_tags(t.split(model.config.eoc_token)[0].split(end)[0]) for t in texts]
