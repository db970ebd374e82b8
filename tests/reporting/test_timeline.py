"""A patient's timeline: the comparison words of a report, their evidence on the study's own film and
on the prior's, and the change statements against the truth."""

from __future__ import annotations

import numpy as np

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.reporting import timeline as timeline_module
from flamingo_lib.reporting.timeline import comparison_words, patient_timeline, timeline_figure


def test_comparison_words_are_the_change_words_in_reading_order():
    report = "The left pleural effusion has increased. Cardiomegaly is unchanged. New right PICC line. No edema."
    assert comparison_words(report) == ["increased", "unchanged", "New"]
    assert comparison_words("Small left pleural effusion.") == []


def test_a_patients_timeline_maps_the_comparison_words_on_each_film_and_scores_the_changes(monkeypatch):
    config = FlamingoConfig.from_preset("tiny-random")
    model = FlamingoModel(config).eval()
    open_gates(model)
    processor = FlamingoProcessor(config, context="indication,prior")
    first = CXRSample("p-0", [xray_like(1)], "Small left pleural effusion.", sections={"INDICATION": "Cough."})
    second = CXRSample("p-1", [xray_like(2)], "The left pleural effusion has increased.",
                       sections={"INDICATION": "Follow-up of known left pleural effusion."},
                       meta={"changes": {"pleural effusion": "increased"}}, prior=first)
    written = ["Small left pleural effusion.", "The left pleural effusion has increased. Cardiomegaly is new."]
    monkeypatch.setattr(timeline_module, "generate_in_batches",
                        lambda *a, **k: type("Out", (), {"reports": written})())
    rows = patient_timeline(model, processor, [first, second])
    assert rows[0].words == [] and rows[0].heatmap is None and rows[0].truth == {}
    assert rows[1].stated == {"pleural effusion": "increased", "cardiomegaly": "new"}
    assert rows[1].truth == {"pleural effusion": "increased"}
    for heatmap in (rows[1].heatmap, rows[1].prior_heatmap):  # the study's film, and the prior's it read
        assert heatmap.shape == np.asarray(second.images[0]).shape[:2]
        assert abs(heatmap.sum() - 1) < 1e-4 and heatmap.min() >= 0
    assert not np.allclose(rows[1].heatmap, rows[1].prior_heatmap)
    figure = timeline_figure(rows)
    titles = [ax.get_title(loc="left") for ax in figure.axes if ax.get_title(loc="left")]
    assert "first study: nothing to compare" in titles[0]
    assert "✓ pleural effusion: increased (truth increased)" in titles[1]
    assert "✗ cardiomegaly: new (truth -)" in titles[1]
