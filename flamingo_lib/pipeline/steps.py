"""The workbench pipeline, one idempotent step at a time: build -> data -> feature cache -> train
-> evaluate -> attention maps -> report. ``make demo``, the notebooks and scripts all call it, so
a notebook run on its own rebuilds whatever upstream artefact is missing and reuses the rest.

Artefacts live in ``run_dir``: ``train/`` (checkpoint, metrics, ``model/``), ``reward/`` (the same, of
the optional reward fine-tuning; its ``model/`` is then the run's model), ``eval/`` (results,
generations, protocol), ``grounding.csv`` and ``report.html``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from flamingo_lib.io import atomic_path, write_json_atomic, write_text_atomic
from flamingo_lib.modeling.config import FlamingoConfig
from flamingo_lib.modeling.saved_files import check_complete
from flamingo_lib.pipeline.run_records import pipeline_key, result_settings
from flamingo_lib.pipeline.settings import PipelineSettings, flat_names

__all__ = ["Pipeline"]


class Pipeline:
    """Steps of one run. Each returns its result and writes it under ``settings.run_dir``."""

    def __init__(self, settings: PipelineSettings | None = None, **overrides: Any) -> None:
        """``settings``, or :meth:`PipelineSettings.from_flat` of ``overrides`` (flat setting names)."""
        if settings is not None and overrides:
            raise TypeError("give settings or flat overrides, not both")
        self.settings = settings or PipelineSettings.from_flat(**overrides)
        self.run_dir = Path(self.settings.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_run(cls, run: str | Path, /, **overrides: Any) -> "Pipeline":
        """The pipeline of the run trained in ``run`` with the settings it was trained with (the
        training key saved in ``run/train/summary.json``, keys this checkout no longer knows dropped)
        and scored with (the evaluation settings its results' key stamps record: how many test
        studies, beams, guided candidates, ...; :func:`~flamingo_lib.pipeline.run_records.result_settings`),
        the other settings at their defaults, ``overrides`` (flat names, ``run_dir`` too) winning: so
        that reading a run never retrains or rescores it under the defaults.

        Raises:
            FileNotFoundError: ``run`` holds no trained pipeline run.
            ValueError: a result's key stamp is not a JSON object (naming the file).
        """
        summary = Path(run) / "train" / "summary.json"
        if not summary.is_file():
            raise FileNotFoundError(f"{summary}: not found; {run} is not a trained pipeline run")
        key = pipeline_key(summary)
        if key is None:
            raise FileNotFoundError(f"{summary}: records no pipeline settings; {run} was not trained by the pipeline")
        scored = result_settings(Path(run), list(flat_names()))
        return cls(PipelineSettings.from_training_key(key, run, **(scored | overrides)))

    # -------------------------------------------------------------------------------- build
    @cached_property
    def model_and_processor(self) -> tuple[Any, Any]:
        """The trained model when this run has one, else a freshly built one."""
        from flamingo_lib.modeling.model import FlamingoModel
        from flamingo_lib.processing.processor import FlamingoProcessor

        model_dir = self.model_dir
        if self.is_trained():
            return FlamingoModel.from_pretrained(model_dir).eval(), FlamingoProcessor.from_pretrained(model_dir)
        config = self.settings.flamingo_config()
        return FlamingoModel(config), FlamingoProcessor(config, context=self.settings.data.context)

    @cached_property
    def splits(self) -> dict[str, Any]:
        """train / val / test datasets of ``settings.data``."""
        from flamingo_lib.data.sources import open_source

        d, seed = self.settings.data, self.settings.train.seed
        sizes = {"train": d.max_train_samples, "val": d.max_val_samples, "test": d.max_test_samples}
        return {split: open_source(d.source, split, d.image_size, n, seed=seed) for split, n in sizes.items()}

    @property
    def credentialed(self) -> bool:
        """True when the data may not be shared: a credentialed source (MIMIC-CXR), or one of unknown
        origin (:func:`flamingo_lib.data.licence.source_privacy`)."""
        return self._privacy[0]

    @property
    def licence(self) -> str:
        """What the data's source says of sharing them."""
        return self._privacy[1]

    @property
    def _privacy(self) -> tuple[bool, str]:
        from flamingo_lib.data.licence import source_privacy

        return source_privacy(self.settings.data.source, lambda: self.splits["test"])

    # ----------------------------------------------------------------------------- features
    @cached_property
    def feature_cache(self) -> Any:
        """The frozen encoder's patch tokens of every image of every split (built if missing)."""
        from flamingo_lib.data.feature_cache import FeatureCache
        from flamingo_lib.data.study_index import image_counts, iter_films

        model, processor = self.model_and_processor
        cache = FeatureCache(self.settings.feature_root, model, processor, storage=self.settings.data.feature_storage)
        splits = list(self.splits.values())
        # streamed: a list of every decoded film of MIMIC-CXR would take ~9 GiB
        priors = processor.context.prior_films  # a prior's films are read too (mostly cached already)
        films = iter_films(splits, num_workers=self.settings.data.num_workers, priors=priors)
        total = None if priors else sum(sum(image_counts(split)) for split in splits)
        self.cache_stats = cache.build(films, progress=self.settings.train.progress, total=total)
        return cache

    # -------------------------------------------------------------------------------- train
    @cached_property
    def _current_encoder_builds(self) -> dict[str, str]:
        """The embedded encoder builds this run's preset resolves to now (cache directory names)."""
        from flamingo_lib.modeling.backbones.provenance import embedded_builds

        m = self.settings.model
        return embedded_builds(FlamingoConfig.from_preset(m.preset, m.pretrain_scale, seed=self.settings.train.seed))

    @property
    def model_dir(self) -> Path:
        """The run's model: the reward stage's (``reward/model``) when it is on, else the supervised one's."""
        return self.run_dir / ("reward" if self.settings.reward.reward_steps else "train") / "model"

    def _model_key(self) -> dict[str, Any]:
        """The settings the run's model depends on: the training key, and the reward stage's when it is on."""
        reward = self.settings.reward.key()
        return self.settings.training_key() | ({"reward": reward} if reward else {})

    def is_trained(self) -> bool:
        """The saved model was trained with these settings *and* on the encoder builds the preset
        resolves to now: after a change of the build code or the phantom data, the same settings
        would otherwise serve a model whose cross-attention sits on other frozen features. With
        the reward stage on, both stages were."""
        if not self._stage_trained("train", self.settings.training_key()):
            return False
        return not self.settings.reward.reward_steps or self._stage_trained("reward", self._model_key())

    def _stage_trained(self, stage: str, key: dict[str, Any]) -> bool:
        """``RUN/stage`` holds a complete model whose summary records ``key`` and the current encoder builds."""
        model_dir, summary = self.run_dir / stage / "model", self.run_dir / stage / "summary.json"
        if not (summary.exists() and (model_dir / "model.safetensors").exists()):
            return False
        try:
            check_complete(model_dir)
        except ValueError:  # a save interrupted midway: train again (from the checkpoint if it is unfinished)
            return False
        saved_key = pipeline_key(summary)
        if saved_key is None or self._saved_training_key(saved_key) != key:
            return False
        trained_on = json.loads((model_dir / "config.json").read_text()).get("embedded_builds") or {}
        return trained_on == self._current_encoder_builds

    def _interrupted_training(self, stage: str = "train") -> bool:
        """``RUN/stage`` holds a checkpoint of a training under these very settings and encoder builds
        that did not finish."""
        from flamingo_lib.training.checkpoint import checkpoint_record

        key, steps = ((self.settings.training_key(), self.settings.train.max_steps) if stage == "train"
                      else (self._model_key(), self.settings.reward.reward_steps))
        checkpoint = checkpoint_record(self.run_dir / stage) or {"settings": {}, "step": 0}
        record = checkpoint["settings"].get("extra", {})
        saved = record.get("pipeline")
        return (saved is not None and checkpoint["step"] < steps and self._saved_training_key(saved) == key
                and record.get("encoder_builds") == self._current_encoder_builds)

    @staticmethod
    def _saved_training_key(saved: dict[str, Any]) -> dict[str, Any]:
        """A run's saved training key, completed with the defaults of settings added since it
        was trained: a new knob's default is the behaviour the run had, so it is not retrained."""
        defaults = PipelineSettings().training_key()
        # what a key written before these knobs were recorded meant: features of format 1, no
        # findings head, and where there was one: trained on the reports' readings by a labeler of
        # unknown version, no findings tokens, no reading head
        before = {"feature_format": 1, "findings_loss_weight": 0.0, "labeler": None, "findings_targets": "reports",
                  "findings_tokens": False, "reading_head": False}
        saved = before | saved
        key = {k: saved.get(k, defaults[k]) for k in defaults} | {k: v for k, v in saved.items() if k not in defaults}
        if not key["findings_loss_weight"]:
            key.pop("labeler")  # without the head, training never reads the labeler
            key.pop("findings_targets")  # nor reads any targets
            key.pop("findings_tokens")  # nor has any head to make them
            key.pop("reading_head")
        return key

    def _result_key(self) -> dict[str, Any]:
        """What a result computed from the trained model depends on (a change recomputes it)."""
        s = self.settings
        from flamingo_lib.labeling.version import rules_version

        return {"training": self._model_key(), "max_test_samples": s.data.max_test_samples,
                "num_beams": s.eval.num_beams, "max_new_tokens": s.eval.max_new_tokens,
                "labeler": rules_version()}  # it scores every result

    def _up_to_date(self, result: Path, **extra: Any) -> bool:
        """``result`` exists and was computed from this run's current model and settings (and
        the result-specific ``extra`` settings)."""
        stamp = result.with_name(result.name + ".key.json")
        if not (result.exists() and stamp.exists() and self.is_trained()):
            return False
        saved = json.loads(stamp.read_text())
        if isinstance(saved.get("training"), dict):  # read as training reads it: a later knob at its default
            saved["training"] = self._saved_training_key(saved["training"])
        return saved == self._result_key() | extra

    def _stamp(self, result: Path, **extra: Any) -> None:
        """Record which model and settings produced ``result`` (written after it: a crash in
        between leaves the result unstamped, so it is recomputed)."""
        write_json_atomic(result.with_name(result.name + ".key.json"), self._result_key() | extra, indent=1)

    def train(self, force: bool = False) -> dict[str, Any]:
        """Train on cached features, then fine-tune on the reward when the stage is on (each stage
        skipped when this run already trained it with these settings); returns the last stage's summary."""
        from flamingo_lib.training.trainer import ReportCollator, Trainer

        s = self.settings
        last = self.model_dir.parent / "summary.json"
        if not force and self.is_trained():
            self._film_reference(rebuild=False)  # a run trained before references were kept gets one
            return json.loads(last.read_text())
        self.__dict__.pop("model_and_processor", None)
        if force or not self._stage_trained("train", s.training_key()):
            model, processor = self.model_and_processor  # untrained: freshly built from the settings
            # RUN_DIR/train holds the model of other settings, if any: the pipeline replaces it
            trainer = Trainer(model, self.splits["train"], self.splits["val"],
                              ReportCollator(processor, self.feature_cache), replace(s.train, overwrite=True),
                              record={"pipeline": s.training_key(), "encoder_builds": self._current_encoder_builds},
                              num_workers=s.data.num_workers)
            if not force and self._interrupted_training():
                trainer.resume()  # a killed notebook or demo continues where its last checkpoint stands
            summary = trainer.fit()
        if s.reward.reward_steps:
            summary = self._reward_finetune(force)
        self.__dict__.pop("model_and_processor", None)  # reload the saved, trained model next time
        self._film_reference(rebuild=True)  # the one beside an earlier model may be another encoder's
        return summary

    def _reward_finetune(self, force: bool) -> dict[str, Any]:
        """The reward stage (:mod:`flamingo_lib.training.reward_trainer`) from the supervised model, into ``RUN/reward``."""
        from flamingo_lib.evaluation.metrics import sentence_bleu
        from flamingo_lib.modeling.model import FlamingoModel
        from flamingo_lib.processing.processor import FlamingoProcessor
        from flamingo_lib.training.reward_trainer import RewardTrainer
        from flamingo_lib.training.trainer import ReportCollator

        s, supervised = self.settings, self.run_dir / "train" / "model"
        model, processor = FlamingoModel.from_pretrained(supervised), FlamingoProcessor.from_pretrained(supervised)
        config = replace(s.reward.reward_config(s.train, self.run_dir / "reward"), overwrite=True)
        trainer = RewardTrainer(model, self.splits["train"], self.splits["val"],
                                ReportCollator(processor, self.feature_cache), config,
                                record={"pipeline": self._model_key(), "encoder_builds": self._current_encoder_builds},
                                num_workers=s.data.num_workers, fluency=sentence_bleu if config.fluency_weight else None)
        if not force and self._interrupted_training("reward"):
            trainer.resume()
        return trainer.fit()

    def _film_reference(self, rebuild: bool) -> None:
        """Save the training films' reference beside the model (:mod:`flamingo_lib.inference.film_reference`),
        from the cached features of the train and val splits, when missing or when ``rebuild``."""
        from flamingo_lib.inference.film_reference import REFERENCE_FILE, build_film_reference

        model_dir = self.model_dir
        if not rebuild and (model_dir / REFERENCE_FILE).exists():
            return
        model, processor = self.model_and_processor
        build_film_reference(model, processor, self.splits["train"], self.splits["val"],
                             feature_cache=self.feature_cache, seed=self.settings.train.seed,
                             progress=self.settings.train.progress).save(model_dir)

    def training_curves(self, stage: str = "train") -> pd.DataFrame:
        """metrics.csv of the supervised run (step, train_loss, val_loss, lr, samples_per_s), or with
        ``stage="reward"`` of the reward stage (also reward, baseline_reward, greedy_reward)."""
        if stage not in ("train", "reward"):
            raise ValueError(f"stage must be 'train' or 'reward', got {stage!r}")
        return pd.read_csv(self.run_dir / stage / "metrics.csv")

    # ----------------------------------------------------------------------------- evaluate
    def evaluate(self, force: bool = False) -> pd.DataFrame:
        """Metrics of the trained model and the baselines on the test split (cached in eval/)."""
        from flamingo_lib.evaluation.evaluate import evaluate

        s = self.settings
        out = self.run_dir / "eval"
        if not force and self._up_to_date(out / "results.csv", **self._evaluation_key()):
            return pd.read_csv(out / "results.csv", index_col="system")
        self.train()
        model, processor = self.model_and_processor
        extra, notes = self._guided_reports(model, processor)
        table = evaluate(model, processor, self.splits["train"], self.splits["test"], out_dir=out,
                         num_beams=s.eval.num_beams, max_new_tokens=s.eval.max_new_tokens,
                         feature_cache=self.feature_cache, labels_are_image_truth=s.data.source.startswith("phantom"),
                         progress=s.train.progress, num_workers=s.data.num_workers,
                         extra_systems=extra, protocol_notes=notes, metrics=s.eval.metrics,
                         n_resamples=0, n_permutations=0)  # a step of its own: self.uncertainty()
        self._stamp(out / "results.csv", **self._evaluation_key())
        return table

    def _evaluation_key(self) -> dict[str, Any]:
        """What the results table depends on beyond the model: the guided setup, and the RadEval
        metrics when any are asked for (a table scored without them stays valid for runs that
        ask for none)."""
        metrics = self.settings.eval.metrics
        return self._guided_key() | ({"metrics": sorted(metrics)} if metrics else {})

    def _guided_key(self) -> dict[str, Any]:
        e = self.settings.eval
        return {"guided_candidates": e.guided_candidates, "guided_temperature": e.guided_temperature,
                "guided_val_samples": e.guided_val_samples}

    def samples(self, split: str) -> list[Any]:
        """Every study of a split, loaded once (datasets need not support slicing)."""
        return [self.splits[split][i] for i in range(len(self.splits[split]))]

    def _truth(self, samples: Sequence[Any]) -> tuple[list[Any], Sequence[str] | None]:
        """The studies' truth labels (phantom: the image truth, over the rendered observations; else
        the labeler's reading of the reference reports) and the observations to score."""
        from flamingo_lib.labeling.labeler import label_report

        if self.settings.data.source.startswith("phantom"):
            from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS

            return [sample.labels for sample in samples], RENDERED_OBSERVATIONS
        return [label_report(sample.report) for sample in samples], None

    def guided_tuning_samples(self) -> list[Any]:
        """The val studies the findings-guided threshold is picked on (``guided_val_samples``;
        None: the whole val split)."""
        from flamingo_lib.data.sources import open_source

        s = self.settings
        tuning = open_source(s.data.source, "val", s.data.image_size, s.eval.guided_val_samples, seed=s.train.seed)
        return [tuning[i] for i in range(len(tuning))]

    def _guided_reports(self, model: Any, processor: Any) -> tuple[dict[str, list[str]], str]:
        """The test split's findings-guided reports (:func:`~flamingo_lib.inference.guided_decoding.guided_reports`;
        nothing when the model has no findings head, ``guided_candidates`` is 0 or there is no val
        split), the threshold picked on ``guided_val_samples`` val studies, and how they were made."""
        from flamingo_lib.inference.guided_decoding import GUIDED_SETUP_FILE, SYSTEM_NAME, guided_reports

        s, e = self.settings, self.settings.eval
        if not e.guided_candidates or model.config.findings_head is None:
            return {}, ""
        val = self.guided_tuning_samples()
        if not val:
            return {}, ""
        val_truth, observations = self._truth(val)
        guided = guided_reports(
            model, processor, val, val_truth, self.samples("test"), observations,
            num_candidates=e.guided_candidates, max_new_tokens=e.max_new_tokens, seed=s.train.seed,
            progress=s.train.progress, temperature=e.guided_temperature)
        # what `python -m flamingo_lib.cli.write_reports --guided` needs to decode new films the same way
        (self.run_dir / "eval").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "eval" / GUIDED_SETUP_FILE, {
            "threshold": guided.threshold, "candidates": e.guided_candidates, "temperature": e.guided_temperature,
            "top_p": 1.0, "val_studies": len(val), "val_micro_f1": {str(t): f for t, f in guided.val_micro_f1.items()}},
            indent=1)
        return {SYSTEM_NAME: guided.reports}, guided.note

    def uncertainty(self, force: bool = False) -> pd.DataFrame:
        """95% bootstrap intervals over test studies and paired p-values against the model for each
        column of the results table that per-study statistics give (``eval/uncertainty.csv``;
        :mod:`flamingo_lib.evaluation.uncertainty`), from the reports in ``generations.jsonl``: no decoding."""
        from flamingo_lib.evaluation.compare import generation_systems
        from flamingo_lib.evaluation.evaluate import systems_uncertainty
        from flamingo_lib.labeling.labeler import label_report

        e, out = self.settings.eval, self.run_dir / "eval" / "uncertainty.csv"
        key = self._evaluation_key() | {"n_resamples": e.n_resamples, "n_permutations": e.n_permutations}
        if not force and self._up_to_date(out, **key):
            return pd.read_csv(out)
        generations = self.generations()
        split = self.splits["test"]  # ids, reports and labels: the phantom gives them without rendering a film
        test = split.text_samples() if hasattr(split, "text_samples") else self.samples("test")
        if generations["id"].astype(str).tolist() != [str(s.id) for s in test]:
            raise ValueError(f"{out.parent / 'generations.jsonl'} holds other studies than the test split; "
                             "evaluate again (Pipeline.evaluate(force=True))")
        phantom = self.settings.data.source.startswith("phantom")
        references = [s.report for s in test]
        shown = None
        if phantom:
            from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS

            shown = RENDERED_OBSERVATIONS
        top5 = json.loads((out.parent / "results.json").read_text())["top5"]
        table = systems_uncertainty(generation_systems(generations), references, label_report, [label_report(r) for r in references],
                                    [s.labels for s in test] if phantom else None, top5, shown,
                                    e.n_resamples, e.n_permutations, self.settings.train.seed, metrics=e.metrics)
        write_text_atomic(out, table.to_csv(index=False))
        self._stamp(out, **key)
        return table

    def generations(self) -> pd.DataFrame:
        """id, reference and every system's report for the test split."""
        self.evaluate()
        return pd.read_json(self.run_dir / "eval" / "generations.jsonl", lines=True)

    def finding_usage(self, force: bool = False) -> pd.DataFrame:
        """Per observation, whether the model's sampled reports follow the image
        (:mod:`flamingo_lib.evaluation.finding_usage`), on the test split; cached in ``eval/finding_usage.csv``.
        With a findings head, its AUROC too (``classifier AUROC``: what the latents carry), and with
        a reading head that head's AUROC against the labeler's reading of the reference reports
        (``reading head AUROC (vs reference)``: how well it foresees what a report states).

        The truth is the image truth on phantom data, else the labeler's reading of the reference.
        """
        from flamingo_lib.observations import FINDINGS_OBSERVATIONS
        from flamingo_lib.evaluation.finding_usage import classifier_auroc, finding_usage, sampled_mention_rates

        s, e = self.settings, self.settings.eval
        path = self.run_dir / "eval" / "finding_usage.csv"
        if not force and self._up_to_date(path, usage_samples=e.usage_samples):
            return pd.read_csv(path, index_col="observation")
        self.train()
        model, processor = self.model_and_processor
        test = self.samples("test")
        truth, observations = self._truth(test)
        observations = observations or FINDINGS_OBSERVATIONS
        rates = sampled_mention_rates(model, processor, test, observations, num_samples=e.usage_samples,
                                      max_new_tokens=e.max_new_tokens, seed=s.train.seed, progress=s.train.progress)
        table = finding_usage(rates, truth)
        if model.config.findings_head is not None:  # what the latents carry, beside what the text follows
            embeddings = self.feature_cache.stack([list(sample.images) for sample in test])
            views = [len(sample.images) for sample in test]  # the stack pads studies with fewer views
            probabilities, readings = model.predict_heads(
                image_embeddings=embeddings.to(next(model.parameters()).device), num_images=views)
            table["classifier AUROC"] = classifier_auroc(probabilities, truth, observations)
            if readings is not None:
                from flamingo_lib.labeling.labeler import label_report

                table["reading head AUROC (vs reference)"] = classifier_auroc(
                    readings, [label_report(sample.report) for sample in test], observations)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp)
        self._stamp(path, usage_samples=e.usage_samples)
        return table

    # ---------------------------------------------------------------------------- grounding
    def grounding(self, force: bool = False, method: str = "evidence") -> pd.DataFrame:
        """Pointing-game rows for the test split with the words' ``method`` maps
        (:func:`~flamingo_lib.evaluation.grounding.pointing_game`), cached in ``grounding.csv``
        (``grounding-attention.csv`` for the raw attention)."""
        from flamingo_lib.evaluation.grounding import GAME_SPAN, MAP_METHODS, pointing_game

        if method not in MAP_METHODS:
            raise ValueError(f"unknown map method {method!r}; expected one of {MAP_METHODS}")
        path = self.run_dir / ("grounding.csv" if method == "evidence" else f"grounding-{method}.csv")
        # a table from before the box measures or the cell game lacks their columns; one from before
        # the map method, its maps; one from before the sharpened pixel game, its pixel hits; one from
        # before the sentence span, the naming words' maps; one from before the tolerant game, its columns
        stamp = {"box_measures": True, "cell_game": True, "map_method": method, "pixel_game": "sharpened",
                 "span": GAME_SPAN, "tolerant_game": True}
        if not force and self._up_to_date(path, **stamp):
            return pd.read_csv(path)
        self.train()
        model, processor = self.model_and_processor
        results = pointing_game(model, processor, list(self.splits["test"]), seed=self.settings.train.seed,
                                method=method)
        with atomic_path(path) as tmp:
            results.to_csv(tmp, index=False)
        self._stamp(path, **stamp)
        return results

    def settings_dict(self) -> dict[str, Any]:
        """Every setting by its own name (:meth:`PipelineSettings.flat`)."""
        return self.settings.flat()
