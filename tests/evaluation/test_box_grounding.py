"""Box-level grounding: the map's box against the finding's, the map's mass in the box, their chance
levels and paired tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flamingo_lib.evaluation.box_grounding import (bounding_box, box_iou, box_scores, box_summary, box_tests,
                                                   chance_iou, map_box, mass_in_box)


def blob(shape, top, left, bottom, right, value=1.0):
    heatmap = np.full(shape, 0.01)
    heatmap[top:bottom, left:right] = value
    return heatmap


def test_a_boxes_iou_and_a_maps_mass_in_it():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(50 / 150)
    uniform = np.ones((40, 50))
    assert mass_in_box(uniform, (0, 0, 20, 25)) == pytest.approx(0.25)  # a uniform map: the box's area share
    assert mass_in_box(blob((40, 50), 5, 5, 10, 10, value=1e6), (5, 5, 10, 10)) == pytest.approx(1.0, abs=1e-4)


def test_the_maps_box_is_its_largest_region_above_half_its_peak():
    mask = np.zeros((32, 32), bool)
    mask[4:9, 6:20] = True
    assert bounding_box(mask) == (4, 6, 9, 20)
    with pytest.raises(ValueError, match="empty mask"):
        bounding_box(np.zeros((4, 4), bool))
    heatmap = blob((32, 32), 10, 10, 20, 26)  # a wide region, and a small brighter one elsewhere
    heatmap[2:4, 2:4] = 1.5
    assert map_box(heatmap) == (10, 10, 20, 26)  # the larger region, though the other holds the peak
    assert map_box(np.ones((8, 8))) == (0, 0, 8, 8)


def test_the_chance_iou_of_a_box_that_fills_the_image_is_the_truths_area_share():
    rng = np.random.default_rng(0)
    assert chance_iou((0, 0, 20, 30), (5, 5, 10, 11), (20, 30), rng) == pytest.approx(30 / 600)
    small = [chance_iou((0, 0, 4, 4), (0, 0, 4, 4), (40, 40), np.random.default_rng(s)) for s in range(20)]
    assert 0 <= np.mean(small) < 0.1  # a small box rarely lands on a small truth


def test_a_map_on_the_finding_beats_chance_and_the_shuffled_map():
    mask = np.zeros((48, 48), bool)
    mask[30:40, 8:20] = True
    own, shuffled = blob(mask.shape, 30, 8, 40, 20), blob(mask.shape, 2, 28, 12, 44)
    scores = box_scores(own, shuffled, mask, np.random.default_rng(0))
    assert scores["iou"] == 1.0 and scores["shuffled_iou"] == 0.0 and scores["iou_chance"] < 0.2
    assert scores["mass_in_box"] == pytest.approx(120 / (120 + 0.01 * (48 ** 2 - 120)))  # the background's 0.01
    assert scores["box_area"] == pytest.approx(120 / 48 ** 2)
    assert scores["shuffled_mass"] < 0.1


def test_paired_tests_and_the_summary():
    rng = np.random.default_rng(0)
    n = 30
    results = pd.DataFrame({"finding": ["effusion", "nodule"] * (n // 2), "iou": rng.uniform(0.4, 0.8, n),
                            "iou_chance": rng.uniform(0.0, 0.2, n), "shuffled_iou": rng.uniform(0.0, 0.3, n),
                            "mass_in_box": rng.uniform(0.3, 0.6, n), "box_area": rng.uniform(0.05, 0.1, n),
                            "shuffled_mass": rng.uniform(0.05, 0.2, n)})
    tests = box_tests(results)
    assert tests["n"] == n and all(tests[k] < 1e-5 for k in ("iou_vs_chance", "iou_vs_shuffled", "mass_vs_chance",
                                                               "mass_vs_shuffled"))
    reversed_ = results.assign(iou=results["iou_chance"] - 0.01, mass_in_box=results["box_area"])
    tests = box_tests(reversed_)
    assert tests["iou_vs_chance"] > 0.99 and tests["mass_vs_chance"] == 1.0  # worse, and all ties
    summary = box_summary(results)
    assert list(summary.index) == ["effusion", "nodule", "all"] and summary.loc["all", "n"] == n
    assert summary.loc["all", "mIoU"] == pytest.approx(results["iou"].mean())
    assert box_tests(results.iloc[:0])["iou_vs_chance"] == 1.0 and box_summary(results.iloc[:0]).empty
