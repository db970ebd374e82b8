"""Does the pretrained vision encoder carry the findings? Zero-shot retrieval and linear probes.

No scikit-learn in the lock: the logistic regression is a few lines of torch (L-BFGS on
standardised features) and AUROC is the Mann-Whitney statistic with ties counted half.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (N,) for binary ``labels`` (N,): the probability that
    a random positive outscores a random negative, ties counting half.

    Raises:
        ValueError: the labels hold only one class (AUROC is undefined).
    """
    labels = labels.bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = scores.double().argsort()
    # Tied scores share the mean of their 1-based ranks: a run of `count` ties ending at rank
    # `end` has mean rank end - (count - 1) / 2.
    _, inverse, counts = torch.unique_consecutive(scores.double()[order], return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, l2: float = 1e-2, iters: int = 100) -> tuple:
    """Independent L2-regularised logistic regressions, one per target column.

    Args:
        features: (N, D) training features; targets: (N, K) in {0, 1}.

    Returns:
        (mean, std, weight (D, K), bias (K,)): apply with :func:`predict_logistic`.
    """
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    x = ((features - mean) / std).double()
    y = targets.double()
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return mean, std, weight.detach(), bias.detach()


def predict_logistic(model: tuple, features: torch.Tensor) -> torch.Tensor:
    """(N, D) features -> (N, K) logits of a :func:`fit_logistic` model."""
    mean, std, weight, bias = model
    return ((features - mean) / std).double() @ weight + bias


def probe_aurocs(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 names: Sequence[str], min_positives: int = 5) -> dict[str, dict]:
    """Val AUROC of a linear probe per label trained on the train features.

    Labels with fewer than ``min_positives`` positives in either split are skipped (no stable
    AUROC); the rest report ``auroc``, ``val_positives``.
    """
    keep = [k for k in range(len(names))
            if min_positives <= int(train_y[:, k].sum()) < len(train_y) and
            min_positives <= int(val_y[:, k].sum()) < len(val_y)]
    if not keep:
        return {}
    model = fit_logistic(train_x, train_y[:, keep])
    logits = predict_logistic(model, val_x)
    return {names[k]: {"auroc": round(auroc(logits[:, j], val_y[:, k]), 4), "val_positives": int(val_y[:, k].sum())}
            for j, k in enumerate(keep)}


def retrieval_recall(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, truth: torch.Tensor,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image-to-text recall@k over a candidate set of distinct texts.

    Args:
        image_embeddings: (N, E) L2-normalised; text_embeddings: (T, E) L2-normalised, one per
            *distinct* report (identical reports would otherwise compete for the same image).
        truth: (N,) index of each image's own report among the T texts.

    Returns:
        ``recall@k`` and ``chance@k`` (= k / T) per k, plus ``candidates`` (T).
    """
    similarity = image_embeddings @ text_embeddings.T
    ranked = similarity.argsort(dim=1, descending=True)
    out: dict[str, float] = {"candidates": int(text_embeddings.shape[0])}
    for k in ks:
        hit = (ranked[:, :k] == truth[:, None]).any(1).float().mean().item()
        out[f"recall@{k}"] = round(hit, 4)
        out[f"chance@{k}"] = round(min(1.0, k / text_embeddings.shape[0]), 4)
    return out
