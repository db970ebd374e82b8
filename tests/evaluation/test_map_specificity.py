"""Token and film correlation of the maps: what they measure, on maps whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import xray_like
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.evaluation.map_specificity import map_specificity, mean_correlation


def test_mean_correlation_of_known_maps():
    base = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert mean_correlation(torch.stack([base, 2 * base + 1, base])) == pytest.approx(1.0)
    assert mean_correlation(torch.stack([base, base.flip(0)])) == pytest.approx(-1.0)
    # a map without evidence (constant) takes no part; one usable map leaves nothing to compare
    assert mean_correlation(torch.stack([base, torch.zeros(4), base])) == pytest.approx(1.0)
    assert math.isnan(mean_correlation(torch.stack([base, torch.zeros(4)])))


@pytest.mark.parametrize("method", ["evidence", "attention"])
def test_one_film_everywhere_gives_film_correlation_one_and_other_films_less(tiny_open, method):
    model, processor = tiny_open
    report = "Small left pleural effusion. Heart size normal. No pneumothorax."
    same = [CXRSample(id=str(i), images=[xray_like(0)], report=report) for i in range(3)]
    other = [CXRSample(id=str(i), images=[xray_like(i)], report=report) for i in range(3)]
    on_same = map_specificity(model, processor, same, method, max_words=5, films=3)
    on_other = map_specificity(model, processor, other, method, max_words=5, films=3)
    assert on_same["film_correlation"] == pytest.approx(1.0, abs=1e-6)
    assert on_other["film_correlation"] < 0.999
    assert -1 <= on_other["token_correlation"] < 1 and on_same["studies"] == 3


def test_evidence_follows_the_word_more_than_raw_attention(tiny_open):
    """Raw attention mixes the same latents for every word; the evidence of each word is its own."""
    model, processor = tiny_open
    samples = [CXRSample(id=str(i), images=[xray_like(i)],
                         report="Small left pleural effusion. Heart size normal. No pneumothorax.") for i in range(2)]
    evidence = map_specificity(model, processor, samples, "evidence", max_words=6, films=2)
    attention = map_specificity(model, processor, samples, "attention", max_words=6, films=2)
    assert evidence["token_correlation"] < attention["token_correlation"]


def test_refusals(tiny_open):
    model, processor = tiny_open
    one = [CXRSample(id="0", images=[xray_like(0)], report="Normal.")]
    with pytest.raises(ValueError, match="at least two studies; got 1"):
        map_specificity(model, processor, one)
    with pytest.raises(ValueError, match="unknown map method 'peak'"):
        map_specificity(model, processor, one * 2, "peak")
