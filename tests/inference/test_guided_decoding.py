"""Findings-guided decoding: which candidate is kept, how the threshold is picked, the sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.inference.guided_decoding import Candidates, choose, sample_candidates, tune_threshold

OBS = ("Edema", "Pleural Effusion")


def hand_made() -> Candidates:
    """Two studies; candidates 0 (greedy): nothing, 1: edema, 2: edema and effusion."""
    stated = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    return Candidates(reports=[["normal", "edema", "edema+effusion"], ["normal", "edema", "edema+effusion"]],
                      stated=[stated, stated.clone()],
                      probabilities=torch.tensor([[0.9, 0.25], [0.15, 0.05]]), observations=OBS)


def test_each_stated_finding_earns_its_probability_beyond_the_threshold():
    candidates = hand_made()
    # study 1: edema (0.9) pays at every threshold below it, effusion (0.25) only below 0.25;
    # study 2: nothing is believed beyond 0.2, so the greedy normal report stays
    assert choose(candidates, 0.2) == ["edema+effusion", "normal"]
    assert choose(candidates, 0.3) == ["edema", "normal"]
    assert choose(candidates, 0.1) == ["edema+effusion", "edema"]
    assert choose(candidates, 0.95) == ["normal", "normal"]  # ties and doubts keep the greedy report


def test_the_threshold_is_the_one_that_scores_best_on_the_given_truth():
    candidates = hand_made()
    truth = [{"Edema": 1.0}, {}]
    best, scores = tune_threshold(candidates, truth, grid=(0.1, 0.2, 0.3, 0.5))
    assert best == 0.3 and scores[0.3] == pytest.approx(1.0)  # edema alone, then normal
    assert scores[0.1] == pytest.approx(2 * 1 / (3 + 1))  # three findings stated, one of one right
    best, _ = tune_threshold(candidates, [{"Edema": 1.0, "Pleural Effusion": 1.0}, {}], grid=(0.1, 0.2, 0.3))
    assert best == 0.2
    # scored over the named observations only: effusion ignored, edema alone decides (ties: the smaller)
    best, scores = tune_threshold(candidates, [{"Edema": 1.0}, {}], observations=["Edema"], grid=(0.2, 0.3, 0.5))
    assert best == 0.2 and scores[0.2] == scores[0.3] == pytest.approx(1.0)


def test_with_a_reading_head_the_score_weighs_image_and_report_equally():
    # study 1: the image shows edema (0.9) and effusion (0.25); a report would name the edema (0.8)
    # but hardly ever the effusion (0.05); study 2: nothing either way
    candidates = hand_made()
    candidates.reading_probabilities = torch.tensor([[0.8, 0.05], [0.1, 0.05]])
    assert torch.allclose(candidates.belief, torch.tensor([[0.85, 0.15], [0.125, 0.05]]))
    # at 0.2 the image alone keeps the effusion (0.25); the mean with its reading (0.15) drops it
    assert choose(hand_made(), 0.2) == ["edema+effusion", "normal"]
    assert choose(candidates, 0.2) == ["edema", "normal"]
    # ... and the reverse: a finding the image doubts but every report names is kept
    candidates.reading_probabilities = torch.tensor([[0.8, 0.05], [0.9, 0.05]])
    assert choose(hand_made(), 0.3) == ["edema", "normal"] and choose(candidates, 0.3) == ["edema", "edema"]
    # the threshold is picked on the same belief
    best, scores = tune_threshold(candidates, [{"Edema": 1.0}, {"Edema": 1.0}], grid=(0.1, 0.2, 0.3, 0.6))
    assert best == 0.2 and scores[0.2] == pytest.approx(1.0) and scores[0.6] == pytest.approx(2 / 3)


def test_candidates_are_the_greedy_report_then_samples_and_the_heads_probabilities(tiny):
    config = FlamingoConfig.from_preset("tiny-random", findings_head=list(OBS))
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    open_gates(model)
    studies = [SimpleNamespace(id=f"s{k}", images=[xray_like(k)]) for k in range(3)]
    before = torch.random.get_rng_state()
    candidates = sample_candidates(model, processor, studies, num_candidates=3, batch_size=2, max_new_tokens=6,
                                   progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [len(r) for r in candidates.reports] == [4, 4, 4] and candidates.observations == OBS
    greedy = model.generate_captions(processor, [s.images for s in studies], max_length=6)
    assert [r[0] for r in candidates.reports] == greedy
    pixels = processor(["<image>"] * 3, [s.images for s in studies])["pixel_values"]
    head = model.predict_findings(pixel_values=pixels)
    assert torch.allclose(candidates.probabilities, torch.stack([head[o] for o in OBS], 1))
    assert all(s.shape == (4, 2) for s in candidates.stated)
    again = sample_candidates(model, processor, studies, num_candidates=3, batch_size=2, max_new_tokens=6,
                              progress=False)
    assert again.reports == candidates.reports  # seeded
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        sample_candidates(model, processor, studies, num_candidates=0)
    with pytest.raises(ValueError, match="needs a model with a findings head"):
        sample_candidates(tiny[0], tiny[1], studies)


def test_sampling_temperature_reaches_the_samples_and_is_checked():
    config = FlamingoConfig.from_preset("tiny-random", findings_head=list(OBS))
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    open_gates(model)
    studies = [SimpleNamespace(id=f"s{k}", images=[xray_like(k)]) for k in range(2)]
    common = dict(num_candidates=4, batch_size=2, max_new_tokens=6, progress=False)
    hot = sample_candidates(model, processor, studies, temperature=1.0, **common)
    # the random tiny LM is nearly flat: at temperature 1 its samples differ from the greedy report
    assert any(len(set(options)) > 1 for options in hot.reports)
    # near zero temperature every sample is the argmax path: the greedy report again
    cold = sample_candidates(model, processor, studies, temperature=1e-4, **common)
    assert all(set(options) == {options[0]} for options in cold.reports)
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError, match="temperature > 0 and 0 < top_p <= 1"):
            sample_candidates(model, processor, studies, **common, **bad)
