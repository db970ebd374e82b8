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


def test_a_peak_lies_at_no_distance_from_its_mask_exactly_where_the_pixel_game_hits(tiny_open):
    from collections import Counter

    from experiments.small_findings import peak_placements
    from flamingo_lib.data.phantom.dataset import PhantomCXR
    from flamingo_lib.evaluation.grounding import pointing_game

    model, processor = tiny_open
    samples = [s for s in PhantomCXR("test", image_size=160, text="templated", max_samples=10) if s.masks]
    game = pointing_game(model, processor, samples)
    finding = Counter(game["finding"]).most_common(1)[0][0]
    placements = peak_placements(model, processor, samples, finding)
    hits = game[game["finding"] == finding]
    assert placements["id"].tolist() == hits["id"].tolist()
    assert (placements["distance_px"] == 0).tolist() == hits["hit"].tolist()
    assert not placements.loc[placements["distance_px"] == 0, "mask_further_out"].any()  # a hit is in no direction
