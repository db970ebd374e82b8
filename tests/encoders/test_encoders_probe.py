"""The encoder metrics: AUROC, the torch logistic probe, retrieval recall@k."""

from __future__ import annotations

import itertools

import pytest
import torch

from flamingo_lib.encoders.pretraining.probe import auroc, probe_aurocs, retrieval_recall


def _pairwise_auroc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_definition_with_ties_counting_half():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (60,), generator=generator).float()  # many ties
    labels = torch.randint(0, 2, (60,), generator=generator)
    assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores.tolist(), labels.tolist()))
    assert auroc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0


def test_auroc_of_a_single_class_is_an_error():
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.tensor([0.2, 0.4]), torch.tensor([1, 1]))


def test_the_linear_probe_finds_a_linear_label_and_not_a_random_one():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=generator)
    informative = (x[:, 2] - x[:, 5] > 0.3).float()
    noise = (torch.rand(400, generator=generator) < 0.3).float()
    y = torch.stack([informative, noise], 1)
    result = probe_aurocs(x[:300], y[:300], x[300:], y[300:], ["signal", "noise"])
    assert result["signal"]["auroc"] > 0.97
    assert 0.3 < result["noise"]["auroc"] < 0.7


def test_labels_too_rare_to_score_are_left_out():
    x = torch.randn(40, 3)
    y = torch.zeros(40, 1)
    y[:2] = 1.0
    assert probe_aurocs(x[:20], y[:20], x[20:], y[20:], ["rare"]) == {}


def test_recall_at_k_counts_an_image_as_found_when_its_report_ranks_in_the_top_k():
    texts = torch.eye(4)  # four distinct reports, orthogonal embeddings
    images = torch.tensor([[1.0, 0.2, 0, 0], [0.9, 1.0, 0, 0], [0, 0, 0.1, 1.0]])
    result = retrieval_recall(images, texts, torch.tensor([0, 0, 2]), ks=(1, 2))
    assert result["recall@1"] == pytest.approx(1 / 3, abs=1e-4)  # only image 0 ranks its report first
    assert result["recall@2"] == pytest.approx(1.0)
    assert result["chance@1"] == 0.25 and result["candidates"] == 4
