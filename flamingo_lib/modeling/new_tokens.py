"""Trainable rows for the added tokens beside a frozen vocabulary (decoupled embeddings).

flamingo-mini unfroze the whole input-embedding matrix to train two new rows (docs/prior-art.md, 4),
and a gradient mask is not enough either: AdamW's decoupled weight decay still moves rows whose
gradient is zero. So the new rows live in their own parameter and the base matrix stays frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecoupledEmbedding(nn.Module):
    """Input embedding: the frozen base table, except at ``new_token_ids`` where ``new_rows`` serve.

    Args:
        base: the LM's own input embedding (any module mapping ids to vectors; BioGPT's scaled
            embedding included: its ``embed_scale`` is applied to the new rows too).
        new_rows: (num_new, D) parameter, possibly shared with :class:`DecoupledLMHead`.
        new_token_ids: the ids of the added tokens, ascending. They usually start at the base
            vocabulary size, but may fall inside it when the LM pads its matrix (OPT: 50265
            tokenizer tokens, 50272 rows).
    """

    def __init__(self, base: nn.Embedding, new_rows: nn.Parameter, new_token_ids: list[int]) -> None:
        super().__init__()
        self.base = base
        self.new_rows = new_rows
        self.base_vocab_size = base.num_embeddings
        self.register_buffer("new_token_ids", torch.tensor(sorted(new_token_ids)), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The base table (V, D), for code that inspects ``get_input_embeddings().weight``."""
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) embeddings."""
        is_new = torch.isin(input_ids, self.new_token_ids)
        out = self.base(input_ids.masked_fill(input_ids >= self.base_vocab_size, 0))
        # Always take both paths (a lookup in a 2-row table): an `if is_new.any()` would make the
        # GPU wait for the host at every forward, every decoding step included.
        rows = torch.searchsorted(self.new_token_ids, input_ids.contiguous()).clamp(max=len(self.new_token_ids) - 1)
        new = F.embedding(rows, self.new_rows) * getattr(self.base, "embed_scale", 1.0)
        # cast only where the dtypes differ: a same-dtype ``.to`` is still an op call per step
        return torch.where(is_new[..., None], new if new.dtype == out.dtype else new.to(out.dtype), out)


class DecoupledLMHead(nn.Module):
    """Logits from the frozen base head, with the added tokens' columns from ``h @ new_rows.T``.

    Args:
        base: the LM's output projection (V, D).
        new_rows: (num_new, D) parameter; the embedding's own when the LM ties its weights.
        new_token_ids: ids of the added tokens, ascending; the logits grow to max id + 1.
    """

    def __init__(self, base: nn.Linear, new_rows: nn.Parameter, new_token_ids: list[int]) -> None:
        super().__init__()
        self.base = base
        self.new_rows = new_rows
        self.register_buffer("new_token_ids", torch.tensor(sorted(new_token_ids)), persistent=False)
        self.num_logits = max(base.weight.shape[0], max(new_token_ids) + 1)
        # (num_new,) added to the new tokens' logits, or None: ``generate`` sets -inf on
        # ``<image>`` here (never generated) at no cost per step (the bias of the linear that
        # computes those columns), instead of a logits processor's ops and per-step signature check
        self.new_logit_bias: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, num_logits) logits."""
        logits = self.base(hidden_states)
        extra = self.num_logits - logits.shape[-1]
        if extra > 0:
            logits = F.pad(logits, (0, extra))
        dtype = hidden_states.dtype  # (casts only where the dtypes differ: each ``.to`` is an op call per step)
        bias, rows = self.new_logit_bias, self.new_rows
        bias = bias if bias is None or bias.dtype == dtype else bias.to(dtype)
        new = F.linear(hidden_states, rows if rows.dtype == dtype else rows.to(dtype), bias)
        return logits.index_copy(-1, self.new_token_ids, new if new.dtype == logits.dtype else new.to(logits.dtype))


def add_token_rows(lm: nn.Module, new_token_ids: list[int], generator: torch.Generator) -> nn.Parameter:
    """Give ``lm`` trainable rows for ``new_token_ids`` on input and output; the base vocabulary
    stays frozen and its logits stay bit-identical.

    New rows start at the mean base embedding plus small noise (as HF's mean-resizing does), so
    the new tokens begin as typical, not extreme, inputs and outputs.

    Returns:
        the input rows parameter (num_new, D).
    """
    base_in = lm.get_input_embeddings()
    weight = base_in.weight.detach().float()
    noise = torch.randn(len(new_token_ids), weight.shape[1], generator=generator)
    init = weight.mean(0) + weight.std(0) * 0.02 * noise
    # float32 whatever the LM's dtype: these rows train (a half-precision LM casts them per use)
    new_in = nn.Parameter(init)
    lm.set_input_embeddings(DecoupledEmbedding(base_in, new_in, new_token_ids))
    base_out = lm.get_output_embeddings()
    if base_out is not None:
        tied = base_out.weight is base_in.weight
        new_out = new_in if tied else nn.Parameter(init.clone())
        lm.set_output_embeddings(DecoupledLMHead(base_out, new_out, new_token_ids))
    return new_in
