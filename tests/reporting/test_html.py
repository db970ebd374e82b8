"""The shared page: every image tag carries its PNG's aspect ratio, so no layout stretches a film;
long lines wrap and wide tables scroll inside themselves (the browser test measures the page)."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from conftest import xray_like
from flamingo_lib.reporting.html import STYLE, case_figure, figure_to_img, write_html_report


def _tags(page: str) -> list[tuple[int, int, Image.Image]]:
    found = re.findall(r'<img width="(\d+)" height="(\d+)"[^>]*src="data:image/png;base64,([^"]+)"', page)
    return [(int(w), int(h), Image.open(io.BytesIO(base64.b64decode(data)))) for w, h, data in found]


def test_an_image_tag_holds_its_pngs_aspect_ratio(tmp_path):
    import numpy as np

    heatmap = np.full((200, 180), 1 / (200 * 180))
    tag = figure_to_img(case_figure(xray_like(1), heatmap, None, "attention"), 460)
    ((width, height, png),) = _tags(tag)
    assert width == 460 and abs(height / width - png.size[1] / png.size[0]) < 0.01
    assert f"aspect-ratio:{png.size[0]}/{png.size[1]}" in tag


def test_the_style_never_stretches_an_image_nor_widens_the_page(tmp_path):
    rules = {k.strip(): v for k, v in re.findall(r"([^{}]+)\{([^}]*)\}", STYLE)}
    assert "height:auto" in rules["img"] and "max-width:100%" in rules["img"]
    case = next(v for k, v in rules.items() if k.strip().startswith(".case") and "display:flex" in v)
    assert "align-items:flex-start" in case  # the default, stretch, resizes a film to the text's height
    assert "pre-wrap" in rules["pre"] and "overflow-x:auto" in next(v for k, v in rules.items() if k.startswith("table"))
    page = write_html_report(tmp_path / "p.html", "t", [("Protocol", "<pre>" + "x" * 5000 + "</pre>")],
                             credentialed=False).read_text()
    assert "<style>" in page and "x" * 5000 in page


def test_a_case_figure_marks_the_sharpened_peak_and_says_whether_it_lies_in_the_mask():
    import numpy as np

    heatmap = np.full((64, 64), 1 / 64**2)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:40] = True
    titles = {}
    for name, peak in (("in", (15, 35)), ("out", (50, 5))):
        right = case_figure(xray_like(1), heatmap, mask, "evidence", "effusion", peak).axes[1]
        marks = [line for line in right.get_lines() if line.get_marker() == "+"]
        assert len(marks) == 1 and (marks[0].get_xdata()[0], marks[0].get_ydata()[0]) == (peak[1], peak[0])
        titles[name] = right.get_title()
    assert titles["in"].endswith("inside the mask") and titles["out"].endswith("outside the mask")
    unmarked = case_figure(xray_like(1), heatmap, mask, "evidence", "effusion").axes[1]
    assert not [line for line in unmarked.get_lines() if line.get_marker() == "+"] and "peak" not in unmarked.get_title()
