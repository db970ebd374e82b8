"""Finding usage: mention rates of sampled reports, and their AUROC against the truth."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from conftest import xray_like
from flamingo_lib.evaluation.finding_usage import classifier_auroc, finding_usage, finding_usage_figure, sampled_mention_rates
from flamingo_lib.labeling.labeler import label_report

OBS = ["Edema", "Pleural Effusion"]


def test_auroc_of_mention_rates_measures_separation_not_frequency():
    truth = [{"Edema": 1.0}, {"Edema": 1.0}, {"Edema": 0.0}, {}]
    rates = pd.DataFrame({"Edema": [0.5, 0.25, 0.125, 0.0], "Pleural Effusion": [0.3] * 4})
    table = finding_usage(rates, truth)
    assert table.loc["Edema", "positives"] == 2
    assert table.loc["Edema", "AUROC"] == pytest.approx(1.0)  # rare mentions, perfectly ordered
    assert table.loc["Edema", "rate | present"] == pytest.approx(0.375)
    assert table.loc["Edema", "rate | absent"] == pytest.approx(0.0625)
    # no study has an effusion: the AUROC is undefined, not 0.5
    assert table.loc["Pleural Effusion", "positives"] == 0 and math.isnan(table.loc["Pleural Effusion", "AUROC"])
    reversed_rates = rates.assign(Edema=rates["Edema"][::-1].to_numpy())
    assert finding_usage(reversed_rates, truth).loc["Edema", "AUROC"] == pytest.approx(0.0)
    constant = rates.assign(Edema=0.9)  # mentioned often, but as often without the finding
    assert finding_usage(constant, truth).loc["Edema", "AUROC"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="4 studies of mention rates but 3 truth"):
        finding_usage(rates, truth[:3])
    figure = finding_usage_figure(table)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["Edema (n=2)"]


class ScriptedModel(torch.nn.Module):
    """Writes, for study k (its image's width tells k), k of its samples with an effusion."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []

    def generate_captions(self, processor, images, max_length, **kwargs):
        self.calls.append(kwargs)
        n = kwargs["num_return_sequences"]
        texts = []
        for views in images:  # sample-major, as transformers returns num_return_sequences
            k = views[0].width - 100
            texts += ["Small left pleural effusion."] * k + ["No pleural effusion."] * (n - k)
        return texts


def test_mention_rates_count_each_studys_own_samples():
    studies = [SimpleNamespace(id=f"s{k}", images=[xray_like(k, size=(100 + k, 120))]) for k in (0, 3, 4, 1, 2)]
    model = ScriptedModel()
    before = torch.random.get_rng_state()
    processor = SimpleNamespace(study_inputs=lambda s: SimpleNamespace(images=s.images, prompt="Findings:"))
    rates = sampled_mention_rates(model, processor, studies, OBS, num_samples=4, batch_size=2, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    assert list(rates.index) == ["s0", "s3", "s4", "s1", "s2"]
    assert rates["Pleural Effusion"].tolist() == [0.0, 0.75, 1.0, 0.25, 0.5]
    assert rates["Edema"].tolist() == [0.0] * 5
    # the model's own distribution: plain sampling, no truncation
    assert all(c["do_sample"] and c["top_k"] == 0 and c["top_p"] == 1.0 and c["temperature"] == 1.0
               for c in model.calls)
    truth = [{"Pleural Effusion": float(k >= 2)} for k in (0, 3, 4, 1, 2)]
    assert finding_usage(rates, truth).loc["Pleural Effusion", "AUROC"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sampled_mention_rates(model, processor, studies, OBS, num_samples=0)
    with pytest.raises(ValueError, match="no samples"):
        sampled_mention_rates(model, processor, [], OBS)


def test_mention_rates_of_a_real_model_are_reproducible(tiny_open):
    model, processor = tiny_open
    studies = [SimpleNamespace(id=f"s{k}", images=[xray_like(k)]) for k in range(3)]
    texts: list[str] = []

    def reading(text: str) -> dict:
        texts.append(text)
        return label_report(text)

    first = sampled_mention_rates(model, processor, studies, OBS, num_samples=3, labeler=reading, batch_size=2,
                                  max_new_tokens=8, seed=5, progress=False)
    assert len(texts) == 9 and len(set(texts)) > 1  # three samples per study, and they differ
    again = sampled_mention_rates(model, processor, studies, OBS, num_samples=3, max_new_tokens=8, seed=5,
                                  batch_size=2, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert first.isin([0.0, 1 / 3, 2 / 3, 1.0]).all().all()


def test_classifier_auroc_sits_beside_the_texts_and_is_nan_where_undefined():
    truth = [{"Edema": 1.0}, {"Edema": 0.0}, {}, {"Edema": 1.0}]
    probabilities = {"Edema": torch.tensor([0.9, 0.2, 0.1, 0.4]), "Fracture": torch.tensor([0.5] * 4)}
    got = classifier_auroc(probabilities, truth, ["Edema", "Fracture", "Pneumothorax"])
    assert got["Edema"] == pytest.approx(1.0)
    assert math.isnan(got["Fracture"]) and math.isnan(got["Pneumothorax"])  # one class only; not predicted
    table = finding_usage(pd.DataFrame({"Edema": [0.5, 0.0, 0.0, 0.5]}), truth)
    table["classifier AUROC"] = got
    figure = finding_usage_figure(table)
    assert {t.get_text() for t in figure.legends[0].get_texts()} == {
        "the text (sampled reports)", "findings head", "chance"}
