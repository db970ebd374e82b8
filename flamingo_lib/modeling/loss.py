"""The training objective: next-token cross-entropy over the report tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_REDUCTIONS = ("mean", "sum", "none")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy; -100 labels ignored.

    Args:
        logits: (B, L, V); labels: (B, L).
        reduction: 'mean' over label tokens, 'sum', or 'none': per-sample mean (B,).
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, L-1)
    valid = (labels != -100).float()
    if reduction == "sum":
        return per_token.sum()
    if reduction == "none":
        return per_token.sum(-1) / valid.sum(-1).clamp(min=1)
    return per_token.sum() / valid.sum().clamp(min=1)
