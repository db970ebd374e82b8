"""The resampler-attention diagnostic: its statistics on hand-made weights, its gradient
attribution on a toy model, and its attention pointing agreeing with the demo's pointing game."""

from __future__ import annotations

import pytest
import torch

from experiments.resampler_attention import (analyse, gradient_relevance, image_specificity, layer_statistics,
                                                   pointing_markdown)


def test_image_specificity_is_zero_for_one_shared_map_and_one_minus_one_over_n_for_disjoint_maps():
    shared = torch.tensor([[0.2, 0.3, 0.5]]).repeat(4, 1)
    assert image_specificity(shared) == pytest.approx(0.0)
    assert image_specificity(torch.eye(4)) == pytest.approx(0.75)
    assert image_specificity(torch.eye(2)) == pytest.approx(0.5)


def test_layer_statistics_split_patch_mass_from_latent_mass_and_normalise_entropy():
    patches, latents = 4, 2
    uniform = torch.cat([torch.full((patches,), 0.5 / patches), torch.full((latents,), 0.25)])
    one_cell = torch.tensor([0.0, 0.9, 0.0, 0.0, 0.1, 0.0])
    weights = [w.expand(1, 1, 2, 3, patches + latents) for w in (uniform, one_cell)]  # (B, T, H, n, P + n)
    first, second = layer_statistics(weights, latents)
    assert first == pytest.approx({"patch_mass": 0.5, "patch_entropy": 1.0})
    assert second == pytest.approx({"patch_mass": 0.9, "patch_entropy": 0.0}, abs=1e-6)


def test_gradient_relevance_credits_only_the_cell_that_moves_the_named_word():
    torch.manual_seed(0)
    tokens = torch.randn(1, 1, 5, 3).requires_grad_(True)
    readout = torch.zeros(3, 5, 3)  # (vocab, cells, dim): only cell 2 reaches the logits
    readout[1, 2] = torch.tensor([1.0, -2.0, 0.5])
    logits = torch.einsum("vpd,pd->v", readout, tokens[0, 0]).expand(1, 4, 3)  # every position alike
    input_ids = torch.tensor([[0, 1, 1, 2]])
    relevance = gradient_relevance(logits, input_ids, [1, 2], tokens)
    assert relevance.shape == (5,)
    assert torch.count_nonzero(relevance) == 1 and relevance[2] != 0
    # the sign follows the effect: raising cell 2 along its own direction raises log p(word 1)
    logit = float(readout[1, 2] @ tokens[0, 0, 2].detach())
    assert (relevance[2] > 0) == (logit > 0)


def test_attention_pointing_reproduces_the_demo_pointing_game(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.grounding import pointing_game

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=12) if s.masks]
    rows, stats = analyse(model, processor, samples)
    # the raw attention of the naming words, as the probe reads it
    demo = pointing_game(model, processor, samples, method="attention", span="words")
    assert rows and len(rows) == len(demo)
    ours = {(r["id"], r["finding"]): r["hit_attention"] for r in rows}
    assert ours == {(r.id, r.finding): bool(r.hit) for r in demo.itertuples()}
    assert len(stats["layers"]) == len(model.flamingo.perceiver.layers)
    assert sum(stats["mean_map"]) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 < stats["image_specificity"] < 1.0
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_pointing_markdown_gives_per_finding_and_overall_rates_with_counts():
    import pandas as pd

    table = pd.DataFrame([
        {"finding": "edema", "hit_attention": True, "hit_rollout": False, "hit_gradient": True, "chance": 0.1},
        {"finding": "edema", "hit_attention": False, "hit_rollout": False, "hit_gradient": True, "chance": 0.3},
        {"finding": "nodule", "hit_attention": True, "hit_rollout": True, "hit_gradient": False, "chance": 0.0},
    ])
    lines = pointing_markdown(table).splitlines()
    assert lines[0] == "| finding | hit_attention | hit_rollout | hit_gradient | chance | n |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| edema | 0.500 | 0.000 | 1.000 | 0.200 | 2 |"
    assert lines[3] == "| nodule | 1.000 | 1.000 | 0.000 | 0.000 | 1 |"
    assert lines[4] == "| all | 0.667 | 0.333 | 0.667 | 0.133 | 3 |"
