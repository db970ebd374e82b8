"""The SmoothGrad probe: at no noise it is the pixel game's own saliency and game; with noise the
gradient reaches pixels the plain gradient leaves at zero, reproducibly."""

from __future__ import annotations

import torch

from experiments.smooth_saliency import analyse, smooth_saliency, summary


def _samples():
    from flamingo_lib.data.phantom.dataset import PhantomCXR

    return [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=10) if s.masks]


def test_no_noise_is_the_pixel_games_saliency_and_noise_is_reproducible_and_different(tiny_open):
    from flamingo_lib.modeling.pixel_maps import pixel_saliency

    model, processor = tiny_open
    sample = _samples()[0]
    batch, prompt_length, image = processor.film_batch(sample)
    positions = [prompt_length, prompt_length + 1]
    plain = smooth_saliency(model, batch, positions, image, 0.0, 8, torch.Generator().manual_seed(0))
    assert torch.allclose(plain, pixel_saliency(model, batch, positions, image=image), rtol=1e-4, atol=1e-7)
    noisy = [smooth_saliency(model, batch, positions, image, 0.1, 4, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1])
    assert not torch.allclose(noisy[0], plain, rtol=1e-2)
    other = smooth_saliency(model, batch, positions, image, 0.1, 4, torch.Generator().manual_seed(4))
    assert not torch.equal(noisy[0], other)


def test_at_no_noise_the_rows_are_the_pointing_games_pixel_hits(tiny_open):
    from flamingo_lib.evaluation.grounding import pointing_game

    model, processor = tiny_open
    samples = _samples()
    rows = analyse(model, processor, samples, [0.0, 0.1], copies=2)
    game = pointing_game(model, processor, samples)
    assert rows[["id", "finding"]].values.tolist() == game[["id", "finding"]].values.tolist()
    assert rows["hit_0"].tolist() == game["hit"].tolist()
    assert rows["shuffled_hit_0"].tolist() == game["shuffled_hit"].tolist()
    only = analyse(model, processor, samples, [0.0], copies=2, findings=[game["finding"].iloc[0]])
    assert set(only["finding"]) == {game["finding"].iloc[0]}
    table = summary(rows)
    assert table.loc["all", "n"] == len(rows) and table.loc["all", "hit_0.1"] == rows["hit_0.1"].mean()
