"""Findings tokens: the findings head's reading of a study, handed to the LM as extra media.

The findings head (:mod:`flamingo_lib.modeling.heads.findings`) reads the rendered findings out of the
resampled latents far better than the text follows them (on the embedded default the head
scores ~0.88 micro-F1 against the image truth, greedy reports ~0.69), while the same
cross-attention and frozen LM write findings at the reference's ceiling when the media spell
them out (``experiments/oracle_features.py``). So the head's verdict is spelled out for
them: one token per observation,

    token_k = p_k * present_k + (1 - p_k) * absent_k        (p_k: the head's probability)

with ``present_k`` / ``absent_k`` learned vectors of the visual width, appended to every image's
latents. The cross-attention reads them like any latent (same keys/values, same media masks),
as diagnosis-driven prompting does for a decoder (PromptMRG, Jin et al., AAAI 2024), here
without touching the frozen LM.

The probabilities are detached: the head learns only from its own labels (binary
cross-entropy), so it stays a calibrated classifier that the language loss cannot bend towards
whatever is easiest to write.
"""

from __future__ import annotations

import torch
from torch import nn


class FindingsTokens(nn.Module):
    """(B, K) probabilities -> (B, K, dim_visual) tokens, one per observation.

    Args:
        num_findings: K, the findings head's observations.
        dim_visual: the width of the resampled latents the tokens sit beside.
    """

    def __init__(self, num_findings: int, dim_visual: int) -> None:
        super().__init__()
        # unit-variance entries, the scale of the resampler's layer-normed latents
        self.present = nn.Parameter(torch.randn(num_findings, dim_visual))
        self.absent = nn.Parameter(torch.randn(num_findings, dim_visual))

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, K) in [0, 1] -> (B, K, dim_visual)."""
        if probabilities.ndim != 2 or probabilities.shape[1] != self.present.shape[0]:
            raise ValueError(f"findings tokens take (batch, {self.present.shape[0]}) probabilities, "
                             f"got {tuple(probabilities.shape)}")
        p = probabilities[..., None].to(self.present.dtype)
        return p * self.present + (1 - p) * self.absent


def append_findings_tokens(visual_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Every image's latents followed by its study's findings tokens.

    Args:
        visual_features: (B, T, n, D) resampled latents.
        tokens: (B, K, D).

    Returns:
        (B, T, n + K, D): the media the cross-attention layers read.
    """
    b, t = visual_features.shape[:2]
    return torch.cat([visual_features, tokens[:, None].expand(b, t, -1, -1).to(visual_features.dtype)], 2)
