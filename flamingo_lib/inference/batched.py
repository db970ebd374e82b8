"""Reports for many studies, a batch at a time: the one generation loop behind evaluation, the
finding-usage measurement, findings-guided decoding and the reports for a reader's own films.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from flamingo_lib.processing.prompts import shots_text


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
                        progress: bool = True, desc: str = "generating", examples: Sequence[Sequence[Any]] | None = None,
                        **generate_kwargs: Any) -> BatchedReports:
    """Generate reports for ``samples`` (``CXRSample``-like: ``.images``), ``batch_size`` at a time.

    Args:
        with_images: False gives the no-image baseline: the prompt without ``<image>`` tokens and
            no visual input, so every cross-attention block is silent and the frozen LM writes on
            its own (the new ``<EOC>``/``<image>`` rows suppressed; it stops at its own end token).
        heads: also return the findings (and reading) heads' probabilities, each study's computed
            over its own films only (a batch pads studies with fewer views, and padding is no film).
        examples: per sample, in-context example studies (``images``, ``report``; e.g. chosen by
            :func:`~flamingo_lib.inference.retrieval.rices_examples`) put before its prompt, each as its
            study prompt, its report and ``<EOC>`` (Flamingo's few-shot format); None: zero-shot.
        generate_kwargs: passed to ``model.generate`` (``num_beams``, ``do_sample``,
            ``temperature``, ``num_return_sequences``, ...). Sampling draws from the global RNG:
            the caller seeds it.
    """
    model.eval()
    device = next(model.parameters()).device
    observations = model.config.findings_head if heads else None
    starts = range(0, len(samples), batch_size)
    rank, world = process_share(sampling=bool(generate_kwargs.get("do_sample")))
    done: list[tuple[int, list[str], torch.Tensor | None, torch.Tensor | None]] = []
    mine = [k for k in range(len(starts)) if k % world == rank]
    for k in tqdm(mine, disable=not progress, desc=desc):
        start = starts[k]
        batch = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        if not with_images:
            done.append((k, _without_images(model, processor, len(batch), max_new_tokens, generate_kwargs), None, None))
            continue
        inputs = [processor.study_inputs(sample) for sample in batch]  # with the processor's context
        prompts, films = [x.prompt for x in inputs], [x.images for x in inputs]
        if examples is not None:
            shots = [examples[i] for i in range(start, start + len(batch))]
            prompts = [shots_text(shot, processor.prompt, model.config.image_token, model.config.eoc_token) + prompt
                       for shot, prompt in zip(shots, prompts)]
            films = [[im for ex in shot for im in ex.images] + own for shot, own in zip(shots, films)]
        reports = model.generate_captions(processor, films, prompt=prompts, max_length=max_new_tokens,
                                          **generate_kwargs)
        if observations is None:
            done.append((k, reports, None, None))
            continue
        images = [list(sample.images) for sample in batch]  # the heads read the study's own films
        pixels = processor([processor.study_prompt(len(v)) for v in images], images)["pixel_values"]
        head, stated = model.predict_heads(pixel_values=pixels.to(device), num_images=[len(v) for v in images])
        done.append((k, reports, torch.stack([head[obs].cpu() for obs in observations], 1),
                     None if stated is None else torch.stack([stated[obs].cpu() for obs in observations], 1)))
    if world > 1:  # every process gets every batch, merged in batch order: the single process's result
        from accelerate.utils import gather_object

        done = sorted(gather_object(done), key=lambda batch: batch[0])
    findings = [batch[2] for batch in done if batch[2] is not None]
    readings = [batch[3] for batch in done if batch[3] is not None]
    return BatchedReports([report for batch in done for report in batch[1]], torch.cat(findings) if findings else None,
                          torch.cat(readings) if readings else None)


def process_share(sampling: bool = False) -> tuple[int, int]:
    """(this process's rank, the number of processes) that share a generation: under ``torchrun`` or
    ``accelerate launch`` each process decodes every ``world``-th batch, the batches a single process
    would make (so the same padding, the same reports), and the batches are gathered in order.

    Sampled decoding is not shared ((0, 1): every process decodes everything): its draws come from the
    global RNG in batch order, and a share would draw them in another order.
    """
    from flamingo_lib.processes import join_group

    return (0, 1) if sampling else join_group()


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
