"""Pretrain a small BioGPT-architecture causal LM on report text; held-out perplexity vs unigram.

Training packs ``<s> document </s>`` sequences into fixed blocks (no padding is wasted, as in
GPT-2's pretraining); evaluation scores each held-out document on its own, from ``<s>``, which is
how the Flamingo later sees a report.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import BioGptConfig, BioGptForCausalLM, PreTrainedTokenizerBase

from flamingo_lib.training.schedule import warmup_cosine_scheduler


@dataclass(frozen=True)
class LMRecipe:
    """Architecture and schedule of the embedded LM (everything here is in its fingerprint)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_positions: int = 256
    block_length: int = 128
    batch_size: int = 16
    steps: int = 120
    lr: float = 2e-3
    warmup_steps: int = 16
    weight_decay: float = 0.01
    dropout: float = 0.1
    max_eval_documents: int | None = None  # None: every val report (perplexity)


def build_lm(recipe: LMRecipe, vocab_size: int, seed: int) -> BioGptForCausalLM:
    """A freshly initialised BioGPT-architecture LM, weights deterministic from ``seed``."""
    config = BioGptConfig(
        vocab_size=vocab_size, hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.max_positions, hidden_dropout_prob=recipe.dropout,
        attention_probs_dropout_prob=recipe.dropout, bos_token_id=0, pad_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BioGptForCausalLM(config)


def encode_documents(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], max_length: int) -> list[list[int]]:
    """``<s> document </s>`` ids per document, cut to ``max_length`` (the ``</s>`` kept)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(documents))["input_ids"]  # the tokenizer prepends <s>
    return [seq[: max_length - 1] + [eos] for seq in ids]


def _blocks(encoded: list[list[int]], block_length: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch: the documents in a seeded random order, concatenated, cut into (N, block) rows."""
    order = torch.randperm(len(encoded), generator=generator).tolist()
    stream = torch.tensor([t for i in order for t in encoded[i]])
    n = len(stream) // block_length
    return stream[: n * block_length].view(n, block_length)


def pretrain_lm(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], recipe: LMRecipe, seed: int, progress: bool = True,
) -> tuple[BioGptForCausalLM, dict]:
    """Pretrain a fresh LM on ``documents`` (train split only) for ``recipe.steps`` steps.

    Returns:
        the model in eval mode, and stats: ``train_tokens``, ``epochs``, ``loss_curve``
        ([step, loss] every 10 steps), ``seconds``.
    """
    start = time.perf_counter()
    model = build_lm(recipe, len(tokenizer), seed)
    encoded = encode_documents(tokenizer, documents, recipe.max_positions)
    generator = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms and biases
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    scheduler = warmup_cosine_scheduler(optimiser, warmup_steps=recipe.warmup_steps, total_steps=recipe.steps,
                                        final_fraction=0.1, warmup_start=1)
    blocks, cursor, epochs, curve = _blocks(encoded, recipe.block_length, generator), 0, 0, []
    model.train()
    # Dropout draws from the global RNG: fork it so a build is a pure function of the seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        bar = tqdm(range(recipe.steps), desc="pretrain LM", disable=not progress)
        for step in bar:
            if cursor + recipe.batch_size > len(blocks):
                blocks, cursor, epochs = _blocks(encoded, recipe.block_length, generator), 0, epochs + 1
            batch = blocks[cursor: cursor + recipe.batch_size]
            cursor += recipe.batch_size
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == recipe.steps - 1:
                curve.append([step, round(loss.item(), 4)])
                bar.set_postfix(loss=f"{loss.item():.3f}")
    stats = {"train_tokens": sum(map(len, encoded)), "epochs": epochs + cursor / max(1, len(blocks)),
             "loss_curve": curve, "seconds": round(time.perf_counter() - start, 1)}
    return model.eval(), stats


@torch.no_grad()
def perplexity(model: BioGptForCausalLM, tokenizer: PreTrainedTokenizerBase, documents: Sequence[str],
               batch_size: int = 32) -> float:
    """exp(mean NLL per predicted token) over ``documents``, each scored alone from ``<s>``
    (every token after ``<s>`` predicted, the final ``</s>`` included)."""
    encoded = encode_documents(tokenizer, documents, model.config.max_position_embeddings)
    total_nll, total_tokens = 0.0, 0
    model.eval()
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i: i + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
        total_nll += nll.item()
        total_tokens += int((targets != -100).sum())
    return math.exp(total_nll / total_tokens)


def unigram_perplexity(tokenizer: PreTrainedTokenizerBase, train_documents: Sequence[str],
                       eval_documents: Sequence[str], max_length: int) -> float:
    """Perplexity of an add-one-smoothed unigram model of the train tokens, on the same predicted
    tokens as :func:`perplexity` (everything after ``<s>``): the baseline an LM must beat."""
    counts = unigram_counts(tokenizer, train_documents, max_length)
    log_p = (counts / counts.sum()).log()
    targets = torch.tensor([t for seq in encode_documents(tokenizer, eval_documents, max_length) for t in seq[1:]])
    return math.exp(-log_p[targets].mean().item())


@functools.lru_cache(maxsize=4)
def _cached_counts(tokenizer: PreTrainedTokenizerBase, train_documents: tuple[str, ...], max_length: int) -> torch.Tensor:
    counts = torch.ones(len(tokenizer), dtype=torch.float64)  # add-one
    for seq in encode_documents(tokenizer, train_documents, max_length):
        counts += torch.bincount(torch.tensor(seq[1:]), minlength=len(tokenizer)).double()
    return counts


def unigram_counts(tokenizer: PreTrainedTokenizerBase, train_documents: Sequence[str], max_length: int) -> torch.Tensor:
    """(V,) add-one token counts of the train documents (memoised: one pass per corpus)."""
    return _cached_counts(tokenizer, tuple(train_documents), max_length)
