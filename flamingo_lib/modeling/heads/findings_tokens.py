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

With a prior study (``FlamingoConfig.prior_findings_tokens``), a follow-up's report states what
changed ("new", "unchanged", "resolved"), and the token spells out the joint state of the
study's finding ``p_k`` and the prior's ``q_k`` (the same head on the prior's films):

    token_k = q_k * (p_k * kept_k + (1 - p_k) * gone_k) + (1 - q_k) * (p_k * new_k + (1 - p_k) * absent_k)

so that the comparison the report must make is read from one token, not composed by the LM
from two readings (which the small frozen LMs here do not learn in the demo's budget:
docs/results.md, "Clinical context"). A study without a prior keeps the plain token.

With a severity head (``FlamingoConfig.severity_head``: each finding's severity ``s_k`` in [0, 1],
``r_k`` on the prior's films), a kept finding also says how its severity moved, so that the report
can state "increased" or "decreased" and not only "unchanged":

    kept_k  ->  kept_k + (s_k - r_k) * grown_k

one learned direction per observation, its sign the direction of the change (detached too).
"""

from __future__ import annotations

import torch
from torch import nn


class FindingsTokens(nn.Module):
    """(B, K) probabilities -> (B, K, dim_visual) tokens, one per observation.

    Args:
        num_findings: K, the findings head's observations.
        dim_visual: the width of the resampled latents the tokens sit beside.
        compare_prior: also build the follow-up's tokens from the prior study's probabilities
            (``new`` / ``kept`` / ``gone`` vectors beside ``present`` / ``absent``).
        severity: also move a kept finding's token along ``grown`` by the change of its severity
            (needs ``compare_prior``), drawn from its own ``seed``: the other vectors start as without it.
    """

    def __init__(self, num_findings: int, dim_visual: int, compare_prior: bool = False,
                 severity: bool = False, seed: int = 0) -> None:
        super().__init__()
        # unit-variance entries, the scale of the resampler's layer-normed latents
        self.present = nn.Parameter(torch.randn(num_findings, dim_visual))
        self.absent = nn.Parameter(torch.randn(num_findings, dim_visual))
        self.new = self.kept = self.gone = None
        if compare_prior:
            self.new = nn.Parameter(torch.randn(num_findings, dim_visual))
            self.kept = nn.Parameter(torch.randn(num_findings, dim_visual))
            self.gone = nn.Parameter(torch.randn(num_findings, dim_visual))
        if severity and not compare_prior:
            raise ValueError("severity moves the kept findings' tokens, which only compare_prior builds")
        self.grown = None
        if severity:
            self.grown = nn.Parameter(torch.randn(num_findings, dim_visual,
                                                  generator=torch.Generator().manual_seed(seed)))

    def forward(self, probabilities: torch.Tensor, prior: torch.Tensor | None = None,
                severity: torch.Tensor | None = None, prior_severity: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) in [0, 1] -> (B, K, dim_visual).

        Args:
            prior: (B, K) the prior study's probabilities, a row of NaN for a study without one
                (its tokens are the plain ones); needs ``compare_prior``.
            severity, prior_severity: (B, K) in [0, 1], the severities on the study's and the prior's
                films (NaN rows where there is no prior); both or neither, and only with ``severity``.
        """
        k = self.present.shape[0]
        if (severity is None) != (prior_severity is None) or (severity is not None and self.grown is None):
            raise ValueError("severities move the kept tokens of tokens built with severity=True, and need both "
                             "the study's and the prior's")
        for name, value in (("probabilities", probabilities), ("prior", prior), ("severity", severity),
                            ("prior_severity", prior_severity)):
            if value is not None and (value.ndim != 2 or value.shape[1] != k):
                raise ValueError(f"findings tokens take (batch, {k}) {name}, got {tuple(value.shape)}")
        p = probabilities[..., None].to(self.present.dtype)
        tokens = p * self.present + (1 - p) * self.absent
        if prior is None:
            return tokens
        if self.kept is None:
            raise ValueError("these findings tokens were built without compare_prior: they read no prior study")
        has_prior = ~prior.isnan().any(-1)[:, None, None]
        # NaN kept out of the arithmetic, not only out of the result: where() would still pass
        # 0 * NaN = NaN back into the gradients of the prior's vectors
        q = prior.nan_to_num(0.0)[..., None].to(self.present.dtype)
        kept = self.kept
        if severity is not None:
            moved = severity.to(self.present.dtype) - prior_severity.nan_to_num(0.0).to(self.present.dtype)
            kept = kept + moved[..., None] * self.grown
        compared = q * (p * kept + (1 - p) * self.gone) + (1 - q) * (p * self.new + (1 - p) * self.absent)
        return torch.where(has_prior, compared, tokens)


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
