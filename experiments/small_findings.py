"""Why do the maps miss the small findings: the map's resolution, or the evidence itself?

The pointing game (:mod:`flamingo_lib.evaluation.grounding`) asks whether a map's peak *pixel* lies
in a finding's mask. A map is made on the encoder's patch grid (14 x 14 cells of 16 px at 224 px)
and upsampled, so its peak sits near a cell's centre: a granuloma of 3 x 3 px can only be hit when
a cell centre happens to fall on it. For each finding named in a test report this probe prints the
mask's size against a cell, and both games of :func:`~flamingo_lib.evaluation.grounding.pointing_game`:
the pixel game and the cell game (a hit when the peak *cell* overlaps the mask, with chance the share
of cells the mask overlaps), for the evidence maps and the raw attention, with the study's film and
a shuffled one. The pixel game is played twice: on the map sharpened by the words' gradient with
respect to the pixels (the pointing game's default, :mod:`flamingo_lib.modeling.pixel_maps`) and on
the upsampled grid map alone (columns ``*_grid_pixel_hit``).
If the small findings stay at zero on the grid too, the resolution is not what loses them: the
patch tokens carry their evidence elsewhere, or not at all.

    HF_HUB_OFFLINE=1 python -m experiments.small_findings runs/demo [--max-studies 250]
    HF_HUB_OFFLINE=1 python -m experiments.small_findings runs/demo --peaks pneumothorax

About 2 minutes on the demo's 250 test studies (2 cores).
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from flamingo_lib.evaluation.grounding import MAP_METHODS, pointing_game

GAMES = {"pixel_hit": "hit", "shuffled_pixel_hit": "shuffled_hit", "cell_hit": "cell_hit",
         "shuffled_cell_hit": "shuffled_cell_hit", "tolerant_hit": "tolerant_hit",
         "shuffled_tolerant_hit": "shuffled_tolerant_hit"}
#: The pixel game on the grid map alone (``sharpen=False``); its cell game is the same as the default's.
GRID_GAMES = {"grid_pixel_hit": "hit", "shuffled_grid_pixel_hit": "shuffled_hit"}


def analyse(model: Any, processor: Any, samples: list[Any], seed: int = 0) -> pd.DataFrame:
    """One row per (study, named finding): mask area (px), the share of grid cells it overlaps and,
    per map method, the pixel games' (sharpened and grid), the cell game's and the tolerant game's
    (a sharpened peak within 15 px) hits on the study's film and on the shuffled one."""
    areas = {(s.id, finding): int(mask.sum()) for s in samples for finding, mask in s.masks.items()}
    table = None
    for method in MAP_METHODS:
        for sharpen, games in ((True, GAMES), (False, GRID_GAMES)):
            rows = pointing_game(model, processor, samples, seed=seed, method=method, sharpen=sharpen)
            renamed = rows[["id", "finding", "cell_chance", *games.values()]].rename(
                columns={column: f"{method}_{name}" for name, column in games.items()})
            table = renamed if table is None else table.merge(renamed, on=["id", "finding", "cell_chance"])
    table["area_px"] = [areas[(i, f)] for i, f in zip(table["id"], table["finding"])]
    return table


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per finding and overall: n, median area, the cell chance and every hit rate."""
    rates = [c for c in rows.columns if c.endswith("_hit")]
    table = rows.groupby("finding").agg(n=("area_px", "size"), median_area_px=("area_px", "median"),
                                        cell_chance=("cell_chance", "mean"), **{c: (c, "mean") for c in rates})
    overall = pd.DataFrame([{"n": len(rows), "median_area_px": rows["area_px"].median(),
                             "cell_chance": rows["cell_chance"].mean(), **{c: rows[c].mean() for c in rates}}],
                           index=["all"])
    return pd.concat([table, overall])


def peak_placements(model: Any, processor: Any, samples: list[Any], finding: str) -> pd.DataFrame:
    """Where the sharpened map of the sentence naming ``finding`` peaks, per study naming it: the
    peak's distance (px) to the finding's mask, and whether the mask's nearest pixel lies further
    out than the peak (towards the chest wall or the apex: the peak is inside the band, on the lung's
    side of it) or further in."""
    from scipy.ndimage import distance_transform_edt

    from flamingo_lib.evaluation.grounding import FINDING_WORDS, GAME_SPAN, word_token_positions, words_map

    rows = []
    for sample in samples:
        mask = sample.masks.get(finding)
        if mask is None or not mask.any():
            continue
        batch, prompt_length, image = processor.film_batch(sample)
        positions = word_token_positions(processor, sample.report, FINDING_WORDS[finding], prompt_length, GAME_SPAN)
        if not positions:
            continue
        y, x = words_map(model, batch, positions, mask.shape, image=image).peak
        distance, (ny, nx) = distance_transform_edt(~mask, return_indices=True)
        centre = (mask.shape[1] - 1) / 2
        outward = abs(nx[y, x] - centre) > abs(x - centre) or ny[y, x] < y
        rows.append({"id": sample.id, "peak_y": int(y), "peak_x": int(x), "distance_px": float(distance[y, x]),
                     "mask_further_out": bool(distance[y, x] > 0 and outward)})
    return pd.DataFrame(rows, columns=["id", "peak_y", "peak_x", "distance_px", "mask_further_out"])


def main(argv: list[str] | None = None) -> None:
    from flamingo_lib import FlamingoModel, FlamingoProcessor
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--max-studies", type=int, default=250)
    parser.add_argument("--peaks", metavar="FINDING", default=None,
                        help="instead: where the sharpened maps of FINDING (e.g. pneumothorax) peak, study by study")
    args = parser.parse_args(argv)
    model_dir = f"{args.run_dir}/train/model"
    model, processor = FlamingoModel.from_pretrained(model_dir).eval(), FlamingoProcessor.from_pretrained(model_dir)
    test = Pipeline.from_run(args.run_dir, progress=False).splits["test"]
    samples = [test[i] for i in range(min(args.max_studies, len(test)))]
    pd.set_option("display.width", 200)
    if args.peaks is not None:
        placements = peak_placements(model, processor, samples, args.peaks)
        print(placements.round(1).to_string(index=False))
        print(f"median distance {placements['distance_px'].median():.1f} px; the mask further out than the peak in "
              f"{int(placements['mask_further_out'].sum())} of {len(placements)}")
        return
    table = summary(analyse(model, processor, samples))
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
