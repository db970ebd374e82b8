"""Attention maps over the X-ray and the pointing game."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib.modeling.attention_maps import capture_attention, keep_attention, patch_grid, relevance_to_heatmap
from flamingo_lib.evaluation.grounding import _hit, pointing_game, pointing_summary, word_token_positions


def test_token_relevance_is_zero_before_the_image_and_a_distribution_after(tiny_open):
    model, processor = tiny_open
    batch = processor(["Prior film.<image>Findings: effusion."], [[xray_like(0)]])
    _, maps = capture_attention(model, batch)
    image_pos = int(batch["media_locations"][0].nonzero()[0])
    assert torch.equal(maps.token_relevance(0, image_pos - 1), torch.zeros(maps.num_patches))
    after = maps.token_relevance(0, image_pos + 3)
    assert after.min() >= 0 and after.sum() == pytest.approx(1.0, abs=1e-5)
    per_head = maps.token_relevance(0, image_pos + 3, layer=0, head=1)
    assert not torch.allclose(per_head, after)


def test_with_immediate_media_tokens_after_the_second_image_have_no_map_on_the_first(tiny_open):
    model, processor = tiny_open
    batch = processor(["<image>Frontal.<image>Lateral view normal."], [[xray_like(0), xray_like(1)]])
    _, maps = capture_attention(model, batch)
    last = batch["input_ids"].shape[1] - 1
    assert maps.token_relevance(0, last, image=0).sum() == 0
    assert maps.token_relevance(0, last, image=1).sum() == pytest.approx(1.0, abs=1e-5)


def test_keep_attention_is_switched_off_afterwards(tiny_open):
    model, _ = tiny_open
    with keep_attention(model):
        pass
    modules = [m for m in model.modules() if hasattr(m, "keep_attention")]
    assert modules and not any(m.keep_attention or m.last_attention is not None for m in modules)


def test_heatmap_geometry():
    assert patch_grid(197) == (1, 14) and patch_grid(196) == (0, 14) and patch_grid(101) == (1, 10)
    with pytest.raises(ValueError, match="7 patch tokens do not form a square grid"):
        patch_grid(7)
    relevance = torch.zeros(101)
    relevance[1 + 9] = 1.0  # top-right patch of a 10x10 grid (after CLS)
    heat = relevance_to_heatmap(relevance, (160, 160))
    assert heat.shape == (160, 160) and heat.sum() == pytest.approx(1.0, abs=1e-5)
    peak = np.unravel_index(heat.argmax(), heat.shape)
    assert peak[0] < 16 and peak[1] >= 144
    mask = np.zeros((160, 160), bool)
    mask[:20, 140:] = True
    assert _hit(heat, mask) and not _hit(heat, ~mask)


def test_finding_words_map_to_their_report_tokens(tiny):
    _, processor = tiny
    report = "Small left pleural effusion. No pneumothorax."
    positions = word_token_positions(processor, report, ["effusion"], offset=5)
    ids = processor.tokenizer(" " + report, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode([ids[p - 5] for p in positions]).strip() == "effusion"


def test_pointing_game_scores_named_findings_against_chance_and_a_shuffled_control(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.box_grounding import bounding_box
    from flamingo_lib.evaluation.grounding import BOX_COLUMNS

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=12) if s.masks]
    results = pointing_game(model, processor, samples)
    assert not results.empty and list(results.columns) == ["id", "finding", "hit", "chance", "shuffled_hit",
                                                           *BOX_COLUMNS]
    for row in results.itertuples():
        sample = next(s for s in samples if s.id == row.id)
        assert row.chance == pytest.approx(sample.masks[row.finding].mean())
        box = bounding_box(sample.masks[row.finding])  # the box's share of the film: the mass's chance
        assert row.box_area == pytest.approx((box[2] - box[0]) * (box[3] - box[1]) / sample.masks[row.finding].size)
    summary = pointing_summary(results)
    assert summary.loc["all", "n"] == len(results)


def test_pointing_tests_are_exact_against_chance_and_paired_against_the_shuffled_control():
    import pandas as pd

    from flamingo_lib.evaluation.grounding import pointing_tests

    # 3 findings, chance 0.5 each, all hit: P(3 hits by chance) = 1/8
    rows = pd.DataFrame({"hit": [True] * 3, "chance": [0.5] * 3, "shuffled_hit": [True, False, False]})
    tests = pointing_tests(rows)
    assert tests["hits"] == 3 and tests["p_vs_chance"] == pytest.approx(1 / 8)
    # discordant pairs: own-only 2, shuffled-only 0 -> P(Bin(2, 1/2) >= 2) = 1/4
    assert tests["p_vs_shuffled"] == pytest.approx(1 / 4)
    # a map that ignores the image: own and shuffled always agree -> no evidence at all
    same = pd.DataFrame({"hit": [True, False] * 10, "chance": [0.01] * 20, "shuffled_hit": [True, False] * 10})
    tests = pointing_tests(same)
    assert tests["p_vs_shuffled"] == 1.0 and tests["p_vs_chance"] < 1e-6
    # chance of 1 per finding: hits are certain, no evidence above chance
    assert pointing_tests(rows.assign(chance=1.0))["p_vs_chance"] == pytest.approx(1.0)
    assert pointing_tests(rows.iloc[:0])["n"] == 0
