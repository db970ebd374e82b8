"""The cells-to-pixels figure: the smallest named finding's three maps and their peaks."""

from __future__ import annotations

import numpy as np


def test_the_smallest_named_finding_is_shown_with_the_maps_the_pixel_game_reads(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.grounding import FINDING_WORDS, pointing_game
    from flamingo_lib.reporting.sharpening_figure import sharpening_figure, smallest_named_finding

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=8) if s.masks]
    case = smallest_named_finding(model, processor, samples)
    game = pointing_game(model, processor, samples)
    named = game.assign(area=[next(s for s in samples if s.id == i).masks[f].sum()
                              for i, f in zip(game["id"], game["finding"])])
    smallest = named.sort_values("area", kind="stable").iloc[0]
    assert (case.sample.id, case.finding) == (smallest["id"], smallest["finding"])
    assert case.finding in FINDING_WORDS and case.sample.masks[case.finding].any()
    for heat in (case.grid, case.saliency, case.sharpened):
        assert heat.shape == case.sample.masks[case.finding].shape and abs(heat.sum() - 1) < 1e-4
    assert case.hits()["sharpened"] == bool(smallest["hit"]), "the figure's product is the pixel game's map"
    figure = sharpening_figure(case)
    assert len(figure.axes) == 3 and all(len(ax.lines) == 1 for ax in figure.axes)  # one peak marker a panel
    assert not np.allclose(case.grid, case.sharpened)
    assert smallest_named_finding(model, processor, []) is None
