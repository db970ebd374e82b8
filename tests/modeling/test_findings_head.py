"""The auxiliary findings head: its loss and gradients, predictions, saving, targets, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.labeling.targets import FindingTargets
from flamingo_lib.observations import FINDINGS_OBSERVATIONS
from flamingo_lib.training.trainer import ReportCollator, TrainConfig, Trainer
from trainers import SAMPLES

OBS = ["Pleural Effusion", "Cardiomegaly", "Lung Lesion"]


@pytest.fixture(scope="module")
def with_head():
    config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS)
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


def test_findings_loss_is_binary_cross_entropy_and_trains_the_resampler_not_the_text_path(with_head):
    model, processor = with_head
    batch = processor.training_batch(["Small left pleural effusion.", "Heart size is normal."],
                                     [[xray_like(0)], [xray_like(1)]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    plain = model(**batch)
    out = model(**batch, finding_labels=targets)
    assert plain.findings_loss is None and torch.equal(out.loss, plain.loss)  # the LM loss is untouched
    assert out.findings_logits.shape == (2, 3)
    assert torch.allclose(out.findings_loss, F.binary_cross_entropy_with_logits(out.findings_logits, targets))
    model.zero_grad(set_to_none=True)
    out.findings_loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads["flamingo.findings_head.classifier.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("flamingo.perceiver."))
    # the cross-attention and the new token rows are not on the head's path
    assert all(g is None for n, g in grads.items() if "gated_cross_attn" in n or "new_rows" in n)
    model.zero_grad(set_to_none=True)


def test_predictions_agree_from_pixels_and_embeddings_and_survive_save_and_load(with_head, tmp_path):
    model, processor = with_head
    pixels = processor(["<image>"] * 2, [[xray_like(2)], [xray_like(3)]])["pixel_values"]
    probabilities = model.predict_findings(pixel_values=pixels)
    assert list(probabilities) == OBS
    assert all(p.shape == (2,) and bool(((p > 0) & (p < 1)).all()) for p in probabilities.values())
    embeddings = model.flamingo.encode_visuals(pixels)
    assert all(torch.allclose(probabilities[o], model.predict_findings(image_embeddings=embeddings)[o]) for o in OBS)
    model.save_pretrained(tmp_path / "m", processor=processor)
    reloaded = FlamingoModel.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.findings_head == OBS
    assert all(torch.equal(probabilities[o], reloaded.predict_findings(pixel_values=pixels)[o]) for o in OBS)


def test_a_study_reads_the_same_alone_as_beside_a_study_with_more_views(with_head):
    """Studies with fewer views are zero-padded in a batch; the padding is no image and must not
    enter the head's average (else a one-view study's probabilities depend on its batch)."""
    model, processor = with_head
    one_view, two_views = [xray_like(4)], [xray_like(5), xray_like(6)]
    alone = processor(["<image>"], [one_view])
    mixed = processor(["<image>", "<image><image>"], [one_view, two_views])
    assert mixed["pixel_values"].shape[1] == 2 and not mixed["pixel_values"][0, 1].any()  # padded
    expected = model.predict_findings(pixel_values=alone["pixel_values"])
    from_pixels = model.predict_findings(pixel_values=mixed["pixel_values"])
    embeddings = model.flamingo.encode_visuals(mixed["pixel_values"])
    from_embeddings = model.predict_findings(image_embeddings=embeddings)
    features = model.resolve_visual_features(pixel_values=mixed["pixel_values"])
    told = model.predict_findings(visual_features=features, num_images=[1, 2])
    for o in OBS:
        for got in (from_pixels, from_embeddings, told):
            assert torch.allclose(got[o][0], expected[o][0], atol=1e-6)
    # the two-view study averages both views: not its first view alone
    first_only = model.predict_findings(pixel_values=mixed["pixel_values"][1:, :1])
    assert not all(torch.allclose(from_pixels[o][1], first_only[o][0]) for o in OBS)
    # training: the loss head counts each study's <image> tokens
    targets = torch.zeros(2, len(OBS))
    batch = processor.training_batch(["Normal.", "Normal."], [one_view, two_views])
    logits = model(**batch, finding_labels=targets).findings_logits
    single = model(**processor.training_batch(["Normal."], [one_view]), finding_labels=targets[:1]).findings_logits
    assert torch.allclose(logits[0], single[0], atol=1e-5)


def test_the_head_refuses_a_study_without_images_or_counts_that_do_not_fit(with_head):
    model, processor = with_head
    pixels = processor(["<image>", "<image><image>"], [[xray_like(4)], [xray_like(5), xray_like(6)]])["pixel_values"]
    features = model.resolve_visual_features(pixel_values=pixels)
    with pytest.raises(ValueError, match="study 0 has 0"):
        model.predict_findings(visual_features=features, num_images=[0, 2])
    with pytest.raises(ValueError, match="study 1 has 3"):
        model.predict_findings(visual_features=features, num_images=[1, 3])
    with pytest.raises(ValueError, match="2 studies"):
        model.predict_findings(visual_features=features, num_images=[1])
    with pytest.raises(ValueError, match="study 0 has 0"):  # all-zero pixels are padding: no image
        model.predict_findings(pixel_values=torch.zeros(1, 1, *pixels.shape[2:]))


def test_a_model_without_head_says_so(tiny, tmp_path):
    model, processor = tiny
    pixels = processor(["<image>"], [[xray_like(0)]])["pixel_values"]
    with pytest.raises(ValueError, match="no findings head"):
        model.predict_findings(pixel_values=pixels)
    trainer_config = TrainConfig(out_dir=str(tmp_path), max_steps=1, findings_loss_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="findings_loss_weight=1.0 but the model has no findings head"):
        Trainer(FlamingoModel(model.config), SAMPLES, None, ReportCollator(processor), trainer_config)
    for bad in ("Edema", [], [3]):
        with pytest.raises(ValueError, match="findings_head must be None or a non-empty list"):
            FlamingoConfig.from_preset("tiny-random", findings_head=bad)


def test_targets_are_the_labelers_positive_readings_read_once_per_report():
    reads = []

    def labeler(text):
        reads.append(text)
        return {"Edema": 1.0, "Pleural Effusion": -1.0} if "edema" in text else {"Pleural Effusion": 0.0}

    targets = FindingTargets(["Edema", "Pleural Effusion"], labeler)
    got = targets(["Mild edema, possible effusion.", "No effusion.", "Mild edema, possible effusion."])
    assert got.tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]  # uncertain (-1) is not positive
    assert reads == ["Mild edema, possible effusion.", "No effusion."]
    assert FindingTargets(["Edema"], labeler)([]).shape == (0, 1)
    assert "No Finding" not in FINDINGS_OBSERVATIONS and len(FINDINGS_OBSERVATIONS) == 13


def test_the_memo_of_readings_keeps_the_most_recently_read_and_no_more(monkeypatch):
    reads = []

    def labeler(text):
        reads.append(text)
        return {"Edema": 1.0} if "edema" in text else {}

    monkeypatch.setattr(FindingTargets, "MEMO_SIZE", 2)
    targets = FindingTargets(["Edema"], labeler)
    assert targets(["edema", "clear", "edema", "other"]).tolist() == [[1.0], [0.0], [1.0], [0.0]]
    assert reads == ["edema", "clear", "other"] and list(targets._read) == ["edema", "other"]  # "clear": least recent
    # "clear" is read again and pushes out "edema", the least recent then, which is read again too
    assert targets(["clear", "edema"]).tolist() == [[0.0], [1.0]] and reads[3:] == ["clear", "edema"]
    assert list(targets._read) == ["clear", "edema"]


def test_targets_of_studies_are_their_own_labels_and_the_labelers_reading_only_without_any():
    from flamingo_lib.data.sample import CXRSample

    reads = []

    def labeler(text):
        reads.append(text)
        return {"Edema": 1.0} if "edema" in text else {}

    targets = FindingTargets(["Edema", "Pleural Effusion"], labeler)
    hedged = CXRSample(id="a", images=[], report="Possible effusion. The lungs are clear.",
                       labels={"Edema": 0.0, "Pleural Effusion": 1.0, "Cardiomegaly": None})
    uncertain = CXRSample(id="b", images=[], report="Mild edema.", labels={"Edema": -1.0, "Pleural Effusion": None})
    only_no_finding = CXRSample(id="c", images=[], report="Mild edema.", labels={"No Finding": 1.0})
    unlabelled = CXRSample(id="d", images=[], report="Mild edema.", labels={"Edema": None})
    bare = CXRSample(id="e", images=[], report="Mild edema.")
    got = targets.for_samples([hedged, uncertain, only_no_finding, unlabelled, bare])
    # the labels win over the text; uncertain (-1) and unmentioned (None) are not positive
    assert got.tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    assert reads == ["Mild edema."]  # read once, and only for the studies without any label
    assert targets.for_samples([]).shape == (0, 2)
    # "reports": the reading whatever the labels; "both": the mean of labels and reading
    assert targets.for_samples([hedged, uncertain], "reports").tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert targets.for_samples([hedged, uncertain, bare], "both").tolist() == [[0.0, 0.5], [0.5, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match=r"one of \('labels', 'reports', 'both'\), got 'text'"):
        targets.for_samples([hedged], "text")


def test_the_trainer_gives_the_head_labels_or_readings_as_configured(tmp_path):
    from dataclasses import replace

    config = FlamingoConfig.from_preset("tiny-random", findings_head=["Pleural Effusion", "Cardiomegaly"])
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    # a study whose labels disagree with its report: the report names no effusion
    study = replace(SAMPLES[0], report="Heart size is normal. The lungs are clear.",
                    labels={"Pleural Effusion": 1.0, "Cardiomegaly": 0.0})
    for source, expected in (("labels", [[1.0, 0.0]]), ("reports", [[0.0, 0.0]]), ("both", [[0.5, 0.0]])):
        collator = ReportCollator(processor)
        Trainer(model, [study], None, collator,
                TrainConfig(out_dir=str(tmp_path / source), max_steps=1, findings_loss_weight=1.0,
                            findings_targets=source, progress=False))
        assert collator(([study]))["finding_labels"].tolist() == expected
    with pytest.raises(ValueError, match="findings_targets must be one of .*, got 'text'"):
        Trainer(model, [study], None, ReportCollator(processor),
                TrainConfig(out_dir=str(tmp_path / "bad"), max_steps=1, findings_loss_weight=1.0,
                            findings_targets="text", progress=False))


def test_training_with_the_head_teaches_it_the_findings_of_the_studies(tmp_path):
    config = FlamingoConfig.from_preset("tiny-random", findings_head=list(FINDINGS_OBSERVATIONS))
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    train_config = TrainConfig(out_dir=str(tmp_path), max_steps=30, batch_size=4, lr=3e-3, warmup_steps=2,
                               eval_every=10, save_every=30, findings_loss_weight=1.0, progress=False)
    collator = ReportCollator(processor)
    trainer = Trainer(model, SAMPLES, SAMPLES[:2], collator, train_config)
    assert collator.finding_targets is not None  # the trainer gives the head its targets
    trainer.fit()
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header == "step,epoch,train_loss,val_loss,findings_loss,lr,samples_per_s"
    findings_losses = [float(r.split(",")[4]) for r in rows]
    assert sum(findings_losses[-5:]) / 5 < 0.5 * sum(findings_losses[:5]) / 5
    # the head now tells the toy effusions from the rest (the frozen encoder is random: it fits them)
    model.eval()
    pixels = processor(["<image>"] * len(SAMPLES), [s.images for s in SAMPLES])["pixel_values"]
    scores = model.predict_findings(pixel_values=pixels)["Pleural Effusion"]
    has = torch.tensor([s.labels.get("Pleural Effusion") == 1.0 for s in SAMPLES])
    assert has.any() and scores[has].min() > scores[~has].max()


def test_loss_curves_show_the_findings_loss_only_when_the_head_trained():
    import pandas as pd

    from flamingo_lib.reporting.html import loss_curve_figure

    curves = pd.DataFrame({"step": [1, 2], "train_loss": [2.0, 1.5], "val_loss": [None, 1.6]})
    assert len(loss_curve_figure(curves).axes) == 1
    with_head = loss_curve_figure(curves.assign(findings_loss=[0.7, 0.4]))
    assert len(with_head.axes) == 2 and list(with_head.axes[1].lines[0].get_ydata()) == [0.7, 0.4]
