"""Settings refuse impossible values where they are built, naming the field, its value and its range."""

from __future__ import annotations

import re

import pytest

from flamingo_lib.pipeline import DataSettings, EvalSettings, PipelineSettings, TrainConfig


@pytest.mark.parametrize(("kind", "field", "value", "message"), [
    (TrainConfig, "grad_accum", 0, "TrainConfig.grad_accum must be >= 1, got 0"),  # would train nothing
    (TrainConfig, "batch_size", 0, "TrainConfig.batch_size must be >= 1, got 0"),
    (TrainConfig, "save_every", 0, "TrainConfig.save_every must be >= 1, got 0"),
    (TrainConfig, "lr", 0.0, "TrainConfig.lr must be > 0, got 0.0"),
    (TrainConfig, "findings_loss_weight", -1.0, "TrainConfig.findings_loss_weight must be >= 0, got -1.0"),
    (DataSettings, "max_train_samples", 0, "DataSettings.max_train_samples must be >= 1, got 0"),
    (DataSettings, "num_workers", -1, "DataSettings.num_workers must be >= 0, got -1"),
    (DataSettings, "feature_storage", "int4", "DataSettings.feature_storage must be one of ('float16', 'int8'), got 'int4'"),
    (EvalSettings, "max_new_tokens", 0, "EvalSettings.max_new_tokens must be >= 1, got 0"),
    (EvalSettings, "guided_temperature", 0.0, "EvalSettings.guided_temperature must be > 0, got 0.0"),
])
def test_an_impossible_value_is_refused_naming_the_field(kind, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kind(**{field: value})
    with pytest.raises(ValueError, match=re.escape(message)):  # the same through the flat names
        PipelineSettings.from_flat(**{field: value})


def test_none_means_all_where_a_field_allows_it():
    assert DataSettings(max_train_samples=None).max_train_samples is None
    assert TrainConfig(ff_gate_lr_mult=None, eval_batches=None).eval_batches is None


def test_an_unknown_setting_is_refused_naming_the_known_ones():
    with pytest.raises(TypeError, match="unknown setting\\(s\\) learning_rate; the settings are: run_dir, .*lr"):
        PipelineSettings.from_flat(learning_rate=1e-3)


def test_each_setting_is_declared_once_and_the_pipeline_trains_into_its_run():
    from flamingo_lib.pipeline.settings import flat_names

    owners = flat_names()  # raises when two members declare the same name
    assert owners["lr"] == "train" and owners["preset"] == "model" and owners["source"] == "data"
    assert PipelineSettings(run_dir="runs/x").train.out_dir == "runs/x/train"


def test_a_declared_licence_changes_who_may_see_a_run_not_its_training_key():
    from flamingo_lib.pipeline.settings import PipelineSettings

    plain = PipelineSettings.from_flat(source="chex:/data/x.json")
    declared = PipelineSettings.from_flat(source="chex:/data/x.json;licence=open")
    assert declared.training_key() == plain.training_key()
    assert PipelineSettings.from_flat(source="chex:/data/y.json").training_key() != plain.training_key()


def test_what_the_model_reads_is_in_the_training_key_views_priors_and_the_context():
    from flamingo_lib.pipeline.settings import PipelineSettings

    plain = PipelineSettings.from_flat(source="phantom:longitudinal")
    assert "context" not in plain.training_key()  # a run saved before contexts keeps its key
    for other in (PipelineSettings.from_flat(source="phantom:longitudinal;views=PA+LATERAL"),
                  PipelineSettings.from_flat(source="phantom:longitudinal", context="prior"),
                  PipelineSettings.from_flat(source="mimic:/d;priors=true;licence=credentialed")):
        assert other.training_key() != plain.training_key()
    assert PipelineSettings.from_flat(context="prior,indication").data.context == "indication,prior_films,prior_report"
    assert PipelineSettings.from_flat(context="none").training_key() == PipelineSettings().training_key()
    with pytest.raises(ValueError, match="unknown context part 'lateral'"):
        PipelineSettings.from_flat(context="lateral")


def test_int8_features_retrain_the_model_worker_count_does_not_and_a_run_saved_before_keeps_float16():
    from flamingo_lib.pipeline.steps import Pipeline

    plain = PipelineSettings()
    assert PipelineSettings.from_flat(feature_storage="int8").training_key() != plain.training_key()
    assert PipelineSettings.from_flat(num_workers=4).training_key() == plain.training_key()
    saved = {k: v for k, v in plain.training_key().items() if k != "feature_storage"}  # a key from before the knob
    assert Pipeline._saved_training_key(saved) == plain.training_key()


def test_frozen_parts_default_to_bfloat16_on_cuda_and_float32_elsewhere(monkeypatch):
    import torch

    from flamingo_lib.pipeline.settings import ModelSettings, PipelineSettings

    assert ModelSettings().frozen_dtype == ("bfloat16" if torch.cuda.is_available() else "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ModelSettings().frozen_dtype == "bfloat16" and ModelSettings(frozen_dtype="float32").frozen_dtype == "float32"
    assert PipelineSettings().training_key()["frozen_dtype"] == "bfloat16"  # the key holds what was resolved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PipelineSettings().training_key()["frozen_dtype"] == "float32"  # the CPU runs' keys stand
