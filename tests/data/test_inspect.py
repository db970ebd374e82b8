import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from data_fixtures import build_mimic
from flamingo_lib.data.inspect import (
    label_prevalence,
    plot_image_grid,
    plot_report_lengths,
    report_lengths,
)
from flamingo_lib.data.datasets.mimic import MimicCXR
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample


def sample(sample_id: str, report: str, labels=None, masks=None, size=(40, 30)) -> CXRSample:
    image = Image.fromarray(np.full((size[1], size[0]), 90, dtype=np.uint8))
    return CXRSample(id=sample_id, images=[image], report=report, labels=labels or {}, masks=masks or {})


def test_prevalence_fractions_per_split_from_samples_and_frames():
    train = [sample("a", "x", {"Edema": 1.0}), sample("b", "x", {"Edema": -1.0}),
             sample("c", "x", {"Edema": 0.0}), sample("d", "x", {"Edema": None})]  # fmt: skip
    test = pd.DataFrame({"Edema": [1.0, 1.0], "Cardiomegaly": [0.0, np.nan]})
    table = label_prevalence({"train": train, "test": test})
    assert list(table.columns) == ["positive", "uncertain", "negative", "missing", "n"]
    assert table.loc[("train", "Edema")].tolist() == [0.25, 0.25, 0.25, 0.25, 4]
    assert table.loc[("test", "Edema"), "positive"] == 1.0
    assert table.loc[("test", "Cardiomegaly"), ["negative", "missing"]].tolist() == [0.5, 0.5]
    assert table.loc[("test", "Fracture"), "missing"] == 1.0  # absent column counts as missing
    assert len(table) == 2 * len(CHEXPERT_OBSERVATIONS)
    assert np.allclose(table[["positive", "uncertain", "negative", "missing"]].sum(axis=1), 1.0)


def test_prevalence_uses_a_loaders_label_frame_without_loading_images(tmp_path):
    root = build_mimic(tmp_path)
    dataset = MimicCXR(root, split=None, views=None)
    for image in root.glob("files/**/*.jpg"):
        image.unlink()  # reading images now would fail
    table = label_prevalence({"all": dataset})
    assert table.loc[("all", "No Finding"), "positive"] == pytest.approx(2 / 7)  # both images of study 1
    assert table.loc[("all", "Pleural Effusion"), "uncertain"] == pytest.approx(1 / 7)


def test_report_lengths_count_words_per_sample_or_string():
    lengths = report_lengths([sample("a", "one two  three"), sample("b", "")])
    assert lengths.to_dict() == {"a": 3, "b": 0}
    assert report_lengths(["x y"]).tolist() == [2]


def test_report_length_plot_has_one_histogram_and_median_per_split():
    figure = plot_report_lengths({"train": ["a b c", "a b", "a"], "test": report_lengths([sample("t", "a b")])})
    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["train (n=3)", "test (n=1)"]
    assert len(axes.lines) == 2  # the dashed medians
    assert axes.lines[0].get_xdata()[0] == 2.0


def test_image_grid_outlines_masks_with_one_legend_entry_per_finding():
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 5:20] = True
    small_mask = np.zeros((15, 20), dtype=bool)  # half the image size: rescaled, still drawn
    small_mask[2:10, 2:10] = True
    samples = [
        sample("a", "Right pleural effusion with adjacent atelectasis at the base.",
               masks={"effusion": mask, "atelectasis": mask}),
        sample("b", "Nodule.", masks={"nodule": small_mask}),
        sample("c", "Clear."),
    ]  # fmt: skip
    figure = plot_image_grid(samples, n=2, ncols=2)
    shown = [ax for ax in figure.axes if ax.images]
    assert len(shown) == 2  # n limits the grid
    assert shown[0].get_title(loc="left").startswith("Right pleural effusion")
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["atelectasis", "effusion", "nodule"]
    colours = [tuple(h.get_color()) for h in figure.legends[0].legend_handles]
    assert len(set(colours)) == 3
    contours = [c for ax in shown for c in ax.collections]
    assert len(contours) == 3  # one contour set per mask, each with an outline drawn
    assert all(any(len(segment) for segment in c.allsegs[0]) for c in contours)
    figure.savefig(io.BytesIO(), format="png")  # renders without pyplot or a GUI backend


def test_image_grid_without_masks_has_no_legend():
    figure = plot_image_grid([sample("a", "Clear.", masks={"x": np.ones((30, 40), bool)})], show_masks=False)
    assert not figure.legends and not any(ax.collections for ax in figure.axes)
