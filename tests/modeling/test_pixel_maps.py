"""Pixel-fine maps: the words' gradient with respect to the film, and the grid map it sharpens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import xray_like
from flamingo_lib.evaluation.grounding import peak_in_mask
from flamingo_lib.modeling.attention_maps import relevance_to_heatmap
from flamingo_lib.modeling.pixel_maps import pixel_saliency, sharpened_map


def _batch(processor):
    return processor.training_batch(["Small left pleural effusion. Heart size normal."], [[xray_like(3)]])


def _score(model, batch, pixels, positions):
    """The words' summed log-probability, with the frozen encoder run on ``pixels`` with autograd."""
    b, t = pixels.shape[:2]
    tokens = model.flamingo.vision_encoder(pixels.flatten(0, 1)).unflatten(0, (b, t))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "pixel_values")}
    logits = model(**inputs, image_embeddings=tokens).logits[0].log_softmax(-1)
    return sum(logits[p - 1, batch["input_ids"][0, p]] for p in positions)


def test_saliency_is_the_gradient_of_the_words_with_respect_to_the_pixels(tiny_open):
    model, processor = tiny_open
    batch = _batch(processor)
    positions = [int(batch["attention_mask"][0].sum()) - 3, int(batch["attention_mask"][0].sum()) - 2]
    saliency = pixel_saliency(model, batch, positions)
    assert all(p.grad is None for p in model.parameters()), "no parameter's gradient is touched"

    pixels = batch["pixel_values"].detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(_score(model, batch, pixels, positions), pixels)
    assert saliency.shape == batch["pixel_values"].shape[-2:]
    assert torch.allclose(saliency, gradient[0, 0].abs().sum(0), atol=1e-7)
    # and it is the film's own gradient: a step along it raises the words' log-probability by |g| per unit
    direction, eps = gradient / gradient.norm(), 1e-2
    with torch.no_grad():
        change = _score(model, batch, pixels + eps * direction, positions) - _score(model, batch, pixels - eps * direction,
                                                                                     positions)
    assert float(change) / (2 * eps) == pytest.approx(float(gradient.norm()), rel=0.05)


def test_one_backward_pass_gives_the_evidence_and_the_saliency(tiny_open):
    from flamingo_lib.modeling.attention_maps import capture_evidence

    model, processor = tiny_open
    batch = _batch(processor)
    positions = [int(batch["attention_mask"][0].sum()) - 3]
    both = capture_evidence(model, batch, positions, to_pixels=True)
    alone = capture_evidence(model, batch, positions)
    assert alone.pixel_saliency is None
    torch.testing.assert_close(both.evidence(), alone.evidence(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both.pixel_saliency[0], pixel_saliency(model, batch, positions), atol=1e-7, rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())
    embeddings = {k: v for k, v in batch.items() if k != "pixel_values"} | {
        "image_embeddings": model.flamingo.encode_visuals(batch["pixel_values"])}
    with pytest.raises(ValueError, match="pixel maps need the films"):
        capture_evidence(model, embeddings, positions, to_pixels=True)


def test_words_before_the_film_have_no_saliency_and_cached_features_are_refused(tiny_open):
    model, processor = tiny_open
    batch = processor(["Prior film compared.<image>Findings: effusion."], [[xray_like(0)]])
    image_pos = int(batch["media_locations"][0].nonzero()[0])
    assert torch.equal(pixel_saliency(model, batch, [image_pos - 1]), torch.zeros(batch["pixel_values"].shape[-2:]))
    assert pixel_saliency(model, batch, [image_pos + 2]).sum() > 0
    with pytest.raises(ValueError, match="pixel maps need the films"):
        pixel_saliency(model, {k: v for k, v in batch.items() if k != "pixel_values"}, [image_pos + 2])
    with pytest.raises(ValueError, match=r"positions in 1\.\."):
        pixel_saliency(model, batch, [])
    # without the flag a frozen encoder still builds no graph
    with torch.enable_grad():
        pixels = batch["pixel_values"].clone().requires_grad_(True)
        assert not model.flamingo.encode_visuals(pixels).requires_grad
        assert model.flamingo.encode_visuals(pixels, grad_to_pixels=True).requires_grad


def test_the_grid_map_picks_the_cell_and_the_saliency_the_pixel_inside_it():
    relevance = torch.zeros(196)
    relevance[1 * 14 + 1] = 1.0  # cell (1, 1) of a 14 x 14 grid of 16 px cells: rows and columns 16-31
    heatmap = relevance_to_heatmap(relevance, (224, 224))
    lesion = np.zeros((224, 224), bool)
    lesion[17:20, 17:20] = True  # a 3 x 3 px lesion in the cell's corner
    saliency = torch.zeros(224, 224)
    saliency[18, 18] = 1.0
    saliency[200, 200] = 5.0  # a stronger edge far from the cell the words drew on
    sharp = sharpened_map(heatmap, saliency)
    assert not peak_in_mask(heatmap, lesion), "the grid map's peak sits at the cell's centre"
    assert peak_in_mask(sharp, lesion) and sharp.sum() == pytest.approx(1.0)
    assert np.unravel_index(sharp.argmax(), sharp.shape) == (18, 18)
    # an encoder input of another size is resized onto the map; a film the words ignore keeps the grid map
    assert peak_in_mask(sharpened_map(heatmap, torch.nn.functional.avg_pool2d(saliency[None, None], 2)[0, 0] * 4), lesion)
    assert np.array_equal(sharpened_map(heatmap, torch.zeros(224, 224)), heatmap)


def test_the_pixel_game_plays_on_the_sharpened_map_and_the_cell_game_on_the_grid(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.grounding import (CELL_COLUMNS, FINDING_WORDS, pointing_game, word_token_positions,
                                                   words_relevance)

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=8) if s.masks]
    # of the naming words: on this random model their maps peak in more places than the sentences' do
    sharp = pointing_game(model, processor, samples, span="words")
    coarse = pointing_game(model, processor, samples, sharpen=False, span="words")
    assert not sharp.empty
    assert sharp[list(CELL_COLUMNS)].equals(coarse[list(CELL_COLUMNS)])
    assert (sharp["hit"] != coarse["hit"]).any(), "the test can tell the two pixel games apart"
    for row_sharp, row_coarse in zip(sharp.itertuples(), coarse.itertuples()):
        sample = next(s for s in samples if s.id == row_sharp.id)
        batch, prompt_length, image = processor.film_batch(sample)
        positions = word_token_positions(processor, sample.report, FINDING_WORDS[row_sharp.finding], prompt_length)
        mask = sample.masks[row_sharp.finding]
        heatmap = relevance_to_heatmap(words_relevance(model, batch, positions, image=image), mask.shape)
        assert row_coarse.hit == peak_in_mask(heatmap, mask)
        assert row_sharp.hit == peak_in_mask(sharpened_map(heatmap, pixel_saliency(model, batch, positions, image=image)), mask)


def test_the_game_maps_the_sentence_naming_the_finding_by_default(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.grounding import FINDING_WORDS, pointing_game, word_token_positions, words_maps

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=6) if s.masks]
    game = pointing_game(model, processor, samples)
    assert not game.empty
    for row in game.itertuples():
        sample = next(s for s in samples if s.id == row.id)
        batch, prompt_length, image = processor.film_batch(sample)
        words = word_token_positions(processor, sample.report, FINDING_WORDS[row.finding], prompt_length)
        sentence = word_token_positions(processor, sample.report, FINDING_WORDS[row.finding], prompt_length,
                                        span="sentence")
        assert set(words) < set(sentence)  # the naming words and the rest of their sentence
        relevance, saliency = words_maps(model, batch, sentence, image=image, sharpen=True)
        mask = sample.masks[row.finding]
        sharp = sharpened_map(relevance_to_heatmap(relevance, mask.shape), saliency)
        assert row.hit == peak_in_mask(sharp, mask)
