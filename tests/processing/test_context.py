"""The clinical context in the prompt (indication, prior study): defined once, the same in training
and generation, saved with the processor."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.inference.batched import generate_in_batches
from flamingo_lib.processing.context import StudyContext, study_inputs
from flamingo_lib.processing.processor import IGNORE_INDEX
from flamingo_lib.training.config import TrainConfig
from flamingo_lib.training.trainer import ReportCollator, Trainer

PRIOR = CXRSample("s1", [xray_like(10)], "Small left pleural effusion.",
                  sections={"INDICATION": "Cough.", "FINDINGS": "Small left pleural effusion."})
STUDY = CXRSample("s2", [xray_like(11), xray_like(12)], "The left pleural effusion has increased.",
                  sections={"INDICATION": "Shortness of breath.", "FINDINGS": "The left pleural effusion has increased."},
                  prior=PRIOR)


def test_parts_parse_from_names_and_unknown_ones_are_refused_by_name():
    assert StudyContext.parse("indication, prior").names == ("indication", "prior_films", "prior_report")
    assert StudyContext.parse("").names == () and str(StudyContext.parse(None)) == "none"
    assert StudyContext.parse(str(StudyContext.parse("prior_report"))) == StudyContext(prior_report=True)
    with pytest.raises(ValueError, match="unknown context part 'lateral'.*indication, prior_films, prior_report"):
        StudyContext.parse("indication,lateral")


def test_without_context_the_prompt_is_the_plain_study_prompt(tiny):
    _, processor = tiny
    inputs = processor.study_inputs(STUDY)
    assert inputs.prompt == processor.study_prompt(2) and inputs.images == STUDY.images


def test_the_prior_films_come_first_and_the_report_after_the_studys_own_views():
    inputs = study_inputs(STUDY, StudyContext.parse("indication,prior"))
    assert inputs.prompt == ("Indication: Shortness of breath.\n<image>Prior: Small left pleural effusion.<EOC>"
                             "<image><image>Findings:")
    assert inputs.images == PRIOR.images + STUDY.images and inputs.own_images == 2
    text_only = study_inputs(STUDY, StudyContext.parse("prior_report"))
    assert text_only.prompt == "Prior: Small left pleural effusion.<EOC><image><image>Findings:"
    assert text_only.images == STUDY.images


def test_a_first_study_says_it_has_no_prior_and_a_missing_indication_says_none():
    first = dataclasses.replace(PRIOR, sections={})
    inputs = study_inputs(first, StudyContext.parse("indication,prior"))
    assert inputs.prompt == "Indication: none.\nPrior: none.<EOC><image>Findings:"
    assert inputs.images == first.images


def test_the_context_is_saved_with_the_processor_and_an_older_save_reads_as_none(tiny, tmp_path):
    model, processor = tiny
    with_context = FlamingoProcessor(model.config, context="indication,prior")
    model.save_pretrained(tmp_path / "m", processor=with_context)
    assert FlamingoProcessor.from_pretrained(tmp_path / "m").context == StudyContext.parse("indication,prior")
    saved = (tmp_path / "m" / "flamingo_processor.json")
    payload = saved.read_text().replace('"context"', '"unused"')
    saved.write_text(payload)
    assert FlamingoProcessor.from_pretrained(tmp_path / "m").context == StudyContext()


def test_training_learns_the_report_only_with_the_prior_films_as_media(tiny):
    model, processor = tiny
    collator = ReportCollator(FlamingoProcessor(model.config, context="indication,prior"))
    batch = collator([STUDY, dataclasses.replace(PRIOR, prior=None)])
    learned = [processor.tokenizer.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]
    assert learned[0].strip() == "The left pleural effusion has increased.<EOC>"  # nothing of the prior's report
    assert learned[1].strip() == "Small left pleural effusion.<EOC>"
    assert batch["pixel_values"].shape[1] == 3  # the prior's film and the study's two views
    assert batch["media_locations"].sum(-1).tolist() == [3, 1]


def test_generation_asks_with_the_context_the_processor_holds(monkeypatch):
    config = FlamingoConfig.from_preset("tiny-random", findings_head=["Pleural Effusion"])
    model = FlamingoModel(config).eval()
    open_gates(model)
    plain = FlamingoProcessor(config)
    with_prior = FlamingoProcessor(config, context="indication,prior")
    no_context = generate_in_batches(model, plain, [STUDY], max_new_tokens=8, progress=False, heads=True)
    assert no_context.reports == model.generate_captions(plain, [STUDY.images], max_length=8)  # as before

    asked = []
    real = model.generate

    def spy(**batch):
        asked.append(batch)
        return real(**batch)

    monkeypatch.setattr(model, "generate", spy)
    out = generate_in_batches(model, with_prior, [STUDY], max_new_tokens=8, progress=False, heads=True)
    ids = asked[0]["input_ids"][0]
    prompt = with_prior.tokenizer.decode(ids[asked[0]["attention_mask"][0].bool()])
    assert "Indication: Shortness of breath." in prompt and "Prior: Small left pleural effusion." in prompt
    expected = with_prior(with_prior.study_inputs(STUDY).prompt, [PRIOR.images + STUDY.images])
    assert torch.equal(asked[0]["pixel_values"], expected["pixel_values"])  # the prior's film first
    # the heads read the study's own films: what they read without the context
    torch.testing.assert_close(out.findings, no_context.findings)


def test_training_with_a_prior_on_data_without_priors_is_refused_before_it_starts(tiny, tmp_path):
    model, _ = tiny
    collator = ReportCollator(FlamingoProcessor(model.config, context="prior"))
    lonely = [dataclasses.replace(PRIOR, id=f"p{i}") for i in range(3)]
    with pytest.raises(ValueError, match="asks for the prior study but none of these studies has one"):
        Trainer(model, lonely, None, collator, TrainConfig(out_dir=str(tmp_path / "run"), max_steps=1))


def test_maps_over_one_film_ask_with_the_context_and_find_the_films_slot(tiny):
    model, processor = tiny
    batch, prompt_length, image = processor.film_batch(STUDY)
    plain = processor.training_batch([STUDY.report], [[STUDY.images[0]]])
    assert all(torch.equal(batch[k], plain[k]) for k in plain) and image == 0
    assert prompt_length == len(processor.tokenizer(processor.study_prompt(1))["input_ids"])
    with_prior = FlamingoProcessor(model.config, context="indication,prior")
    other = xray_like(30)
    batch, prompt_length, image = with_prior.film_batch(STUDY, film=other)
    assert image == 1 and batch["pixel_values"].shape[1] == 2  # the prior's film, then the one film mapped
    assert torch.equal(batch["pixel_values"][0, 1], with_prior.preprocess_images([other])[0])
    labels = batch["labels"][0]
    assert (labels[:prompt_length] == IGNORE_INDEX).all() and labels[prompt_length] != IGNORE_INDEX
