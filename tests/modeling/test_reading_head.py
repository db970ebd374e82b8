"""The reading head: a second output per observation that learns what the report will say."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.labeling.targets import FindingTargets
from flamingo_lib.inference.guided_decoding import sample_candidates
from flamingo_lib.training.trainer import ReportCollator, TrainConfig, Trainer
from trainers import SAMPLES

OBS = ["Pleural Effusion", "Cardiomegaly"]


def with_readings(**overrides) -> tuple[FlamingoModel, FlamingoProcessor]:
    config = FlamingoConfig.from_preset("tiny-random", findings_head=OBS, reading_head=True, **overrides)
    return FlamingoModel(config), FlamingoProcessor(config)


def test_the_reading_head_needs_a_findings_head_and_is_off_by_default():
    assert FlamingoConfig.from_preset("tiny-random", findings_head=OBS).reading_head is False
    with pytest.raises(ValueError, match="reading_head=True adds outputs to the findings head, but findings_head is None"):
        FlamingoConfig.from_preset("tiny-random", reading_head=True)
    plain = FlamingoModel(FlamingoConfig.from_preset("tiny-random", findings_head=OBS))
    with pytest.raises(ValueError, match="this model has no reading head"):
        plain.predict_readings(pixel_values=torch.zeros(1, 1, 3, 224, 224))


def test_findings_then_readings_one_logit_each_and_both_survive_save_and_load(tmp_path):
    model, processor = with_readings()
    model.eval()
    batch = processor.training_batch(["Small left pleural effusion.", "Heart size is normal."],
                                     [[xray_like(0)], [xray_like(1)]])
    out = model(**batch, finding_labels=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert out.findings_logits.shape == (2, 4)  # K findings, then the K readings of the same observations
    pixels = batch["pixel_values"]
    findings, readings = model.predict_findings(pixel_values=pixels), model.predict_readings(pixel_values=pixels)
    assert list(findings) == list(readings) == OBS
    assert torch.allclose(torch.stack([findings[o] for o in OBS], 1), out.findings_logits[:, :2].sigmoid())
    assert torch.allclose(torch.stack([readings[o] for o in OBS], 1), out.findings_logits[:, 2:].sigmoid())
    model.save_pretrained(tmp_path / "m", processor=processor)
    reloaded = FlamingoModel.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.reading_head
    assert all(torch.equal(readings[o], reloaded.predict_readings(pixel_values=pixels)[o]) for o in OBS)
    both = model.predict_heads(pixel_values=pixels)  # one resampling for the two outputs
    assert all(torch.equal(both[0][o], findings[o]) and torch.equal(both[1][o], readings[o]) for o in OBS)
    plain = FlamingoModel(FlamingoConfig.from_preset("tiny-random", findings_head=OBS)).eval()
    assert plain.predict_heads(pixel_values=pixels)[1] is None


def test_findings_tokens_carry_the_findings_not_the_readings():
    model, processor = with_readings(findings_tokens=True)
    model.eval()
    pixels = processor(["<image>"], [[xray_like(2)]])["pixel_values"]
    features = model.resolve_visual_features(pixel_values=pixels)
    media = model.conditioning_media(features)
    assert media.shape[2] == features.shape[2] + len(OBS)  # one token per observation, not two
    # the tokens move with the findings' logits and ignore the readings'
    head = model.flamingo.findings_head.classifier
    with torch.no_grad():
        head.bias[2:] += 5.0
        assert torch.equal(model.conditioning_media(features), media)
        head.bias[:2] += 5.0
        assert not torch.equal(model.conditioning_media(features), media)


def test_the_trainer_gives_the_reading_head_the_labelers_reading_after_the_labels(tmp_path):
    model, processor = with_readings()
    # the labels say effusion; the report does not name it
    study = replace(SAMPLES[0], report="Heart size is normal. The lungs are clear.",
                    labels={"Pleural Effusion": 1.0, "Cardiomegaly": 0.0})
    hedged = replace(SAMPLES[0], report="The heart is enlarged. Possible small left pleural effusion.",
                     labels={"Pleural Effusion": 1.0, "Cardiomegaly": 1.0})
    assert FindingTargets(OBS).with_readings([study, hedged]).tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]
    collator = ReportCollator(processor)
    Trainer(model, [study], None, collator,
            TrainConfig(out_dir=str(tmp_path), max_steps=1, findings_loss_weight=1.0, progress=False))
    assert collator([study, hedged])["finding_labels"].tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]


def test_training_teaches_the_two_outputs_what_the_image_shows_and_what_the_report_says(tmp_path):
    # every effusion film is reported without its effusion; the enlarged hearts are reported as such
    silent = [replace(s, report="Heart size is normal. Lungs are clear.")
              if s.labels.get("Pleural Effusion") == 1.0 else s for s in SAMPLES]
    model, processor = with_readings()
    config = TrainConfig(out_dir=str(tmp_path), max_steps=40, batch_size=4, lr=3e-3, warmup_steps=2,
                         eval_every=20, save_every=40, findings_loss_weight=1.0, progress=False)
    Trainer(model, silent, None, ReportCollator(processor), config).fit()
    model.eval()
    pixels = processor(["<image>"] * len(silent), [s.images for s in silent])["pixel_values"]
    findings, readings = model.predict_findings(pixel_values=pixels), model.predict_readings(pixel_values=pixels)
    effusion = torch.tensor([s.labels.get("Pleural Effusion") == 1.0 for s in silent])
    heart = torch.tensor([s.labels.get("Cardiomegaly") == 1.0 for s in silent])
    assert effusion.any() and heart.any()
    # the findings output sees the effusions; the reading output learned that nobody writes them
    assert findings["Pleural Effusion"][effusion].min() > findings["Pleural Effusion"][~effusion].max()
    # (the random encoder gives the head little to go on: it stays near the base rate, 1 in 4)
    assert readings["Pleural Effusion"][effusion].max() < 0.01 < 0.2 < findings["Pleural Effusion"][effusion].min()
    # where the report says what the image shows, both outputs agree
    for output in (findings, readings):
        assert output["Cardiomegaly"][heart].min() > output["Cardiomegaly"][~heart].max()


def test_candidates_carry_the_reading_heads_probabilities():
    model, processor = with_readings()
    model.eval()
    open_gates(model)
    studies = [SimpleNamespace(id=f"s{k}", images=[xray_like(k)]) for k in range(3)]
    candidates = sample_candidates(model, processor, studies, num_candidates=2, batch_size=2, max_new_tokens=4,
                                   progress=False)
    pixels = processor(["<image>"] * 3, [s.images for s in studies])["pixel_values"]
    readings = model.predict_readings(pixel_values=pixels)
    assert torch.allclose(candidates.reading_probabilities, torch.stack([readings[o] for o in OBS], 1))
    findings = model.predict_findings(pixel_values=pixels)
    assert torch.allclose(candidates.probabilities, torch.stack([findings[o] for o in OBS], 1))
    plain = FlamingoModel(FlamingoConfig.from_preset("tiny-random", findings_head=OBS)).eval()
    assert sample_candidates(plain, processor, studies[:1], num_candidates=1, max_new_tokens=4,
                             progress=False).reading_probabilities is None


def test_resuming_a_run_without_the_reading_head_with_one_names_the_mismatch(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), max_steps=1, batch_size=4, save_every=1, findings_loss_weight=1.0,
                         progress=False)
    plain = FlamingoModel(FlamingoConfig.from_preset("tiny-random", findings_head=OBS))
    Trainer(plain, SAMPLES, None, ReportCollator(FlamingoProcessor(plain.config)), config).fit()
    model, processor = with_readings()
    trainer = Trainer(model, SAMPLES, None, ReportCollator(processor), config)
    with pytest.raises(ValueError, match=r"findings_head.classifier.weight is \(2, \d+\) in the checkpoint but \(4, \d+\)"):
        trainer.resume()
