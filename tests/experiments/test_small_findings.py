"""The small-findings probe: both map methods' pixel games (sharpened and grid) and cell games, row by row as the pointing game plays them."""

from __future__ import annotations

from experiments.small_findings import analyse, summary


def test_rows_are_the_pointing_games_of_both_methods_with_each_masks_area(tiny_open):
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.grounding import pointing_game

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=10) if s.masks]
    rows = analyse(model, processor, samples)
    for method in ("evidence", "attention"):
        game = pointing_game(model, processor, samples, method=method)
        assert rows[f"{method}_cell_hit"].tolist() == game["cell_hit"].tolist()
        assert rows[f"{method}_pixel_hit"].tolist() == game["hit"].tolist()
        grid = pointing_game(model, processor, samples, method=method, sharpen=False)
        assert rows[f"{method}_grid_pixel_hit"].tolist() == grid["hit"].tolist()
    masks = {s.id: s.masks for s in samples}
    assert all(row.area_px == masks[row.id][row.finding].sum() for row in rows.itertuples())
    table = summary(rows)
    assert table.loc["all", "n"] == len(rows) and table.loc["all", "evidence_cell_hit"] == rows["evidence_cell_hit"].mean()
