"""Attention maps over the X-ray and the pointing game."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib.modeling.attention_maps import capture_attention, keep_attention, patch_grid, relevance_to_heatmap
from flamingo_lib.evaluation.grounding import peak_in_mask, pointing_game, pointing_summary, word_token_positions


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
    assert peak_in_mask(heat, mask) and not peak_in_mask(heat, ~mask)


def test_finding_words_map_to_their_report_tokens(tiny):
    _, processor = tiny
    report = "Small left pleural effusion. No pneumothorax."
    positions = word_token_positions(processor, report, ["effusion"], offset=5)
    ids = processor.tokenizer(" " + report, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode([ids[p - 5] for p in positions]).strip() == "effusion"


def test_the_sentence_span_maps_the_whole_sentence_naming_the_finding(tiny):
    _, processor = tiny
    report = "Heart size is normal. A 2.5 cm left pleural effusion is seen. No pneumothorax."
    ids = processor.tokenizer(" " + report, add_special_tokens=False)["input_ids"]
    positions = word_token_positions(processor, report, ["effusion"], offset=5, span="sentence")
    assert positions == list(range(positions[0], positions[-1] + 1))  # one run of tokens
    # the sentence, its "2.5" included, and nothing of its neighbours
    assert processor.tokenizer.decode([ids[p - 5] for p in positions]).strip() == "A 2.5 cm left pleural effusion is seen."
    assert word_token_positions(processor, report, ["granuloma"], offset=5, span="sentence") == []
    with pytest.raises(ValueError, match="unknown span 'phrase'"):
        word_token_positions(processor, report, ["effusion"], offset=5, span="phrase")


def test_pointing_game_scores_named_findings_against_chance_and_a_shuffled_control(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.box_grounding import bounding_box
    from flamingo_lib.evaluation.grounding import BOX_COLUMNS, CELL_COLUMNS, TOLERANT_COLUMNS, near_mask

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=12) if s.masks]
    results = pointing_game(model, processor, samples)
    assert not results.empty and list(results.columns) == ["id", "finding", "hit", "chance", "shuffled_hit",
                                                           *CELL_COLUMNS, *TOLERANT_COLUMNS, *BOX_COLUMNS]
    for row in results.itertuples():
        sample = next(s for s in samples if s.id == row.id)
        assert row.chance == pytest.approx(sample.masks[row.finding].mean())
        # the tolerant game: a hit wherever the pixel game's is, its chance the film near the mask
        assert row.tolerant_chance == pytest.approx(near_mask(sample.masks[row.finding], 15).mean())
        assert row.tolerant_chance > row.chance and (row.tolerant_hit or not row.hit)
        assert row.shuffled_tolerant_hit or not row.shuffled_hit
        box = bounding_box(sample.masks[row.finding])  # the box's share of the film: the mass's chance
        assert row.box_area == pytest.approx((box[2] - box[0]) * (box[3] - box[1]) / sample.masks[row.finding].size)
    summary = pointing_summary(results)
    assert summary.loc["all", "n"] == len(results)
    # the raw attention's game scores the same findings, with its own maps
    attention = pointing_game(model, processor, samples, method="attention")
    assert attention[["id", "finding", "chance"]].equals(results[["id", "finding", "chance"]])
    assert not attention["mass_in_box"].equals(results["mass_in_box"])
    with pytest.raises(ValueError, match="unknown map method 'peak'"):
        pointing_game(model, processor, samples, method="peak")


def test_near_mask_holds_the_pixels_within_the_tolerance_and_the_tolerant_game_reads_them():
    import pandas as pd

    from flamingo_lib.evaluation.grounding import near_mask, pointing_summary

    mask = np.zeros((40, 40), dtype=bool)
    mask[20, 20] = True
    near = near_mask(mask, 3)
    assert near[20, 23] and near[22, 22] and not near[20, 24] and not near[23, 23]  # Euclidean: 2.83 in, 4.24 out
    assert near.sum() == 29  # the lattice points of a disc of radius 3
    heatmap = np.zeros((40, 40))
    heatmap[20, 22] = 1.0  # two pixels off the lesion: a miss at the pixel, a hit within 3 px
    rows = pd.DataFrame({"finding": ["nodule"], "hit": [peak_in_mask(heatmap, mask)], "chance": [mask.mean()],
                         "shuffled_hit": [False], "tolerant_hit": [peak_in_mask(heatmap, near)],
                         "tolerant_chance": [near.mean()], "shuffled_tolerant_hit": [False]})
    assert pointing_summary(rows).loc["all", "accuracy"] == 0.0
    tolerant = pointing_summary(rows, level="tolerant").loc["all"]
    assert tolerant.accuracy == 1.0 and tolerant.chance == pytest.approx(29 / 1600)
    with pytest.raises(ValueError, match="unknown pointing level 'box'"):
        pointing_summary(rows, level="box")


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


def _report_batch(processor, image_embeddings=None):
    batch = processor.training_batch(["Small left pleural effusion. Heart size normal."], [[xray_like(3)]])
    if image_embeddings is not None:
        batch = {k: v for k, v in batch.items() if k != "pixel_values"} | {"image_embeddings": image_embeddings}
    return batch


def test_evidence_is_the_gradient_weighted_attention_computed_by_hand(tiny_open, monkeypatch):
    """Per layer mean_h (A * dy/dA)+ in the rollout and on the latents, from weights kept by hand."""
    import flamingo_lib.modeling.cross_attention as cross_attention
    import flamingo_lib.modeling.resampler as resampler
    from flamingo_lib.modeling.attention_maps import capture_evidence

    model, processor = tiny_open
    batch = _report_batch(processor)
    positions = [int(batch["attention_mask"][0].sum()) - 3, int(batch["attention_mask"][0].sum()) - 2]
    maps = capture_evidence(model, batch, positions)

    kept, attend = [], resampler.attend
    def keeping(q, k, v, mask, keep_weights):  # noqa: E306
        out, weights = attend(q, k, v, mask, True)
        kept.append(weights)
        return out, weights
    monkeypatch.setattr(resampler, "attend", keeping)
    monkeypatch.setattr(cross_attention, "attend", keeping)
    with torch.no_grad():
        tokens = model.flamingo.encode_visuals(batch["pixel_values"])
    tokens.requires_grad_(True)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "pixel_values")}
    logits = model(**inputs, image_embeddings=tokens).logits[0].log_softmax(-1)
    score = sum(logits[p - 1, batch["input_ids"][0, p]] for p in positions)
    grads = torch.autograd.grad(score, kept)
    depth, n = len(model.flamingo.perceiver.layers), model.config.resampler_num_latents
    rollout = torch.zeros(n, maps.num_patches)
    for weights, grad in zip(kept[:depth], grads[:depth]):
        layer = (weights * grad)[0].clamp(min=0).mean(0)
        layer = layer / layer.sum(-1, keepdim=True)
        rollout = rollout + layer[:, :maps.num_patches] + layer[:, maps.num_patches:] @ rollout
    rollout = rollout / rollout.sum(-1, keepdim=True)
    on_latents = sum((w * g)[0, ..., :n].clamp(min=0).mean(0).sum(0) for w, g in zip(kept[depth:], grads[depth:]))
    expected = (on_latents / on_latents.sum()) @ rollout
    assert torch.allclose(maps.evidence(), expected.detach(), atol=1e-6)
    assert maps.evidence().sum() == pytest.approx(1.0, abs=1e-5) and maps.evidence().min() >= 0
    assert all(p.grad is None for p in model.parameters()), "no parameter's gradient is touched"


def test_evidence_moves_with_the_patches_it_came_from(tiny_open):
    """The resampler has no position of its own: the same patch tokens in another order are the same
    film rearranged, and each patch keeps its evidence."""
    from flamingo_lib.modeling.attention_maps import capture_evidence

    model, processor = tiny_open
    with torch.no_grad():
        tokens = model.flamingo.encode_visuals(_report_batch(processor)["pixel_values"])
    order = torch.randperm(tokens.shape[2], generator=torch.Generator().manual_seed(0))
    positions = [int(_report_batch(processor)["attention_mask"][0].sum()) - 2]
    own = capture_evidence(model, _report_batch(processor, tokens), positions).evidence()
    moved = capture_evidence(model, _report_batch(processor, tokens[:, :, order]), positions).evidence()
    assert torch.allclose(moved, own[order], atol=1e-6)
    assert not torch.allclose(own, own[order], atol=1e-6)  # the test can tell a moved map from the same one


def test_words_before_the_film_draw_no_evidence_and_plain_maps_have_none(tiny_open):
    from flamingo_lib.modeling.attention_maps import capture_evidence

    model, processor = tiny_open
    batch = processor(["Prior film compared.<image>Findings: effusion."], [[xray_like(0)]])
    image_pos = int(batch["media_locations"][0].nonzero()[0])
    before = capture_evidence(model, batch, [image_pos - 1]).evidence()
    assert torch.equal(before, torch.zeros_like(before))
    after = capture_evidence(model, batch, [image_pos + 2])
    assert after.evidence().sum() == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(after.evidence(layer=0, head=1), after.evidence(), atol=1e-6)
    with pytest.raises(ValueError, match="hold no gradients"):
        capture_attention(model, batch)[1].evidence()
    with pytest.raises(ValueError, match=r"positions in 1\.\."):
        capture_evidence(model, batch, [0])
    with pytest.raises(ValueError, match="not resampled visual_features"):
        capture_evidence(model, {**batch, "visual_features": torch.zeros(1)}, [image_pos + 2])
    assert all(m.last_attention_grad is None for m in model.modules() if hasattr(m, "last_attention_grad"))


def test_the_cell_game_counts_the_cells_a_mask_overlaps_and_the_peak_cell():
    import pandas as pd

    from flamingo_lib.evaluation.grounding import _cell_hit, cells_overlapped, pointing_tests

    mask = np.zeros((224, 224), bool)
    mask[20:23, 20:23] = True  # a 3 x 3 px lesion inside cell (1, 1) of a 14 x 14 grid of 16 px cells
    cells = cells_overlapped(mask, 14)
    assert cells.sum() == 1 and cells[1, 1]
    mask[30:34, 20:23] = True  # reaches across row 32, into cell (2, 1)
    assert cells_overlapped(mask, 14).sum() == 2
    relevance = torch.zeros(196)
    relevance[1 * 14 + 1] = 1.0
    assert _cell_hit(relevance, cells) and not _cell_hit(relevance.roll(1), cells)
    # the upsampled map peaks at the cell's centre (24, 24), which a lesion in the cell's corner misses:
    # only the cell game hits it
    corner = np.zeros((224, 224), bool)
    corner[17:20, 17:20] = True
    assert not peak_in_mask(relevance_to_heatmap(relevance, (224, 224)), corner)
    assert _cell_hit(relevance, cells_overlapped(corner, 14))
    rows = pd.DataFrame({"hit": [False, False], "chance": [0.01, 0.01], "shuffled_hit": [False, False],
                         "cell_hit": [True, True], "cell_chance": [0.1, 0.1], "shuffled_cell_hit": [False, True]})
    assert pointing_tests(rows)["hits"] == 0 and pointing_tests(rows, "cell")["hits"] == 2
    with pytest.raises(ValueError, match="unknown pointing level 'patch'"):
        pointing_tests(rows, "patch")
