"""The attention browser: the pickers show "mean" as a choice, every control redraws the map, and
the title says which token, layer and head it shows."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.reporting.attention_browser import MEAN, AttentionBrowser

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def browser():
    config = FlamingoConfig.from_preset("tiny-random")
    model = FlamingoModel(config).eval()
    open_gates(model)
    mask = np.zeros((200, 180), dtype=bool)  # (H, W) of the (180 x 200 pixel) film
    mask[60:120, 50:110] = True
    sample = CXRSample(id="s", images=[xray_like(4)], report="Moderate cardiomegaly. Small left effusion.",
                       masks={"Cardiomegaly": mask})
    return AttentionBrowser(model, FlamingoProcessor(config), sample, outline="Cardiomegaly")


def test_the_pickers_show_mean_and_each_choice_and_the_title_names_them(browser):
    assert browser.layer.label == MEAN and browser.head.label == MEAN  # not an empty box
    assert "layer mean, head mean" in browser.title and f"position {browser.position.value}" in browser.title
    browser.layer.value, browser.head.value = 0, 1
    assert (browser.layer.label, browser.head.label) == ("0", "1") and "layer 0, head 1" in browser.title
    browser.layer.value = MEAN  # picked again: shown again
    assert browser.layer.label == MEAN and "layer mean, head 1" in browser.title
    browser.head.value = MEAN


def test_moving_the_token_or_picking_a_head_redraws_the_map(browser):
    before = browser.heatmap.copy()
    assert before.shape == (200, 180) and abs(before.sum() - 1) < 1e-4
    browser.position.value += 1
    assert not np.allclose(browser.heatmap, before)  # another token looks elsewhere
    one_head = browser.heatmap.copy()
    browser.head.value = 0
    assert not np.allclose(browser.heatmap, one_head)
    assert browser.mask is not None and browser.outline == "Cardiomegaly"
    assert browser.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # the figure the widget shows


def test_the_map_picker_switches_between_the_evidence_and_the_raw_attention(browser):
    assert browser.method.value == "evidence" and browser.title.startswith("evidence for token")
    evidence = browser.heatmap.copy()
    browser.method.value = "attention"
    assert browser.title.startswith("attention of token") and not np.allclose(browser.heatmap, evidence)
    browser.method.value = "evidence"
    assert np.allclose(browser.heatmap, evidence)  # the same token's evidence, drawn again


def test_sharpening_multiplies_the_map_by_the_tokens_pixel_gradient(browser):
    from flamingo_lib.modeling.pixel_maps import pixel_saliency, sharpened_map

    for method in ("evidence", "attention"):
        browser.method.value = method
        coarse = browser.heatmap.copy()
        browser.sharpen.value = True
        assert browser.title.endswith(", sharpened") and abs(browser.heatmap.sum() - 1) < 1e-4
        saliency = pixel_saliency(browser.model, browser.batch, [browser.position.value], image=browser.slot)
        assert np.allclose(browser.heatmap, sharpened_map(coarse, saliency), atol=1e-6)
        assert not np.allclose(browser.heatmap, coarse)
        browser.sharpen.value = False
        assert np.allclose(browser.heatmap, coarse)
    browser.method.value = "evidence"
