"""What a trained run left behind, read back: its saved model, how it loaded its training data,
and the findings-guided setup its evaluation picked. Two layouts are runs: the pipeline's
(``RUN/train/model``, ``RUN/train/summary.json``, ``RUN/eval/``; ``RUN/reward/`` likewise after the
reward stage) and ``python -m flamingo_lib.cli.train``'s
(``OUT/model``, ``OUT/summary.json``); a bare ``save_pretrained`` directory is a model without a run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flamingo_lib.inference.guided_decoding import GUIDED_SETUP_FILE

# A run folder may come from anyone: what it records is checked before it steers decoding.
_NUMBER = ((int, float), "a number")
_GUIDED_FIELDS = {"threshold": (_NUMBER, lambda v: 0 <= v <= 1, "in [0, 1]"),
                  "candidates": (((int,), "an integer"), lambda v: v >= 1, ">= 1"),
                  "temperature": (_NUMBER, lambda v: v > 0, "> 0"),
                  "top_p": (_NUMBER, lambda v: 0 < v <= 1, "in (0, 1]")}
_RECORD_FIELDS = {"data": (((str,), "a data source spec"), lambda v: bool(v), "not empty"),
                  "feature_storage": (((str,), "a feature storage"), lambda v: v in ("float16", "int8"),
                                      "float16 or int8"),
                  "image_size": (((int,), "an integer"), lambda v: v >= 1, ">= 1"),
                  "seed": (((int,), "an integer"), lambda v: True, "")}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from error


def _check_fields(path: Path, record: dict[str, Any], fields: dict[str, Any]) -> None:
    """Raises ValueError naming the file, the field, what was expected and what it holds."""
    for name, ((types, type_name), allowed, rule) in fields.items():
        if name not in record or record[name] is None:
            continue
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, types) or not allowed(value):
            raise ValueError(f"{path}: {name} must be {type_name}{f' {rule}' if rule else ''}, got {value!r}")


def model_directory(path: str | Path) -> Path:
    """The saved model a path names: itself when it holds ``config.json`` and ``model.safetensors``,
    else a run directory's ``reward/model`` (the pipeline's reward stage, the run's model when it
    ran from the run's current supervised model), ``train/model`` (the pipeline's) or ``model``
    (the training command's).

    Raises:
        FileNotFoundError: none of them, naming the places looked at.
    """
    path = Path(path)
    candidates = (path, path / "reward" / "model", path / "train" / "model", path / "model")
    for candidate in candidates:
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            if candidate == path / "reward" / "model" and not _fine_tuned_from_current(path):
                continue
            return candidate
    raise FileNotFoundError(f"{path}: no saved model in {', '.join(str(c) for c in candidates)} "
                            "(expected config.json and model.safetensors: a run directory of the pipeline or "
                            "of `python -m flamingo_lib.cli.train`, or a directory written by save_pretrained)")


def _recorded(summary: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training config a stage's ``summary.json`` records and that config's ``extra`` (what the
    pipeline or the command added), each an empty dict where absent or not a mapping."""
    saved = _read_json(summary)
    config = saved.get("config", {}) if isinstance(saved, dict) else {}
    config = config if isinstance(config, dict) else {}
    extra = config.get("extra") or {}
    return config, extra if isinstance(extra, dict) else {}


def pipeline_key(summary: Path) -> dict[str, Any] | None:
    """The pipeline's training key a stage's ``summary.json`` records; None when it records none
    (a run of the training command, or of no pipeline)."""
    key = _recorded(summary)[1].get("pipeline")
    return key if isinstance(key, dict) else None


def result_settings(run: Path, names: Sequence[str]) -> dict[str, Any]:
    """The settings among ``names`` that the run's results were computed with, as their key stamps
    (``RUN/eval/*.key.json``, ``RUN/*.key.json``) record them: the results table's stamp first,
    the others only adding what it lacks. A run trained on 40 test studies and reopened with the
    defaults would otherwise be rescored on the whole split, its results overwritten.

    Raises:
        ValueError: a stamp that is not readable JSON or not a mapping, naming the file.
    """
    stamps = [run / "eval" / "results.csv.key.json", *sorted((run / "eval").glob("*.key.json")),
              *sorted(run.glob("*.key.json"))]
    found: dict[str, Any] = {}
    for stamp in dict.fromkeys(stamps):
        if not stamp.is_file():
            continue
        record = _read_json(stamp)
        if not isinstance(record, dict):
            raise ValueError(f"{stamp}: expected a JSON object of the settings a result was computed with, "
                             f"got {type(record).__name__}")
        found |= {k: v for k, v in record.items() if k in names and k not in found}
    return found


def _fine_tuned_from_current(run: Path) -> bool:
    """Whether the reward stage of a pipeline run started from the supervised model the run holds
    now: a supervised stage retrained since (other settings) leaves a reward model of a model
    that is gone, which must not be served as the run's. Runs without the records are taken as
    they are."""
    reward, train = run / "reward" / "summary.json", run / "train" / "summary.json"
    if not (reward.is_file() and train.is_file()):
        return True
    fine_tuned, supervised = pipeline_key(reward), pipeline_key(train)
    if fine_tuned is None or supervised is None:
        return True
    return {k: v for k, v in fine_tuned.items() if k != "reward"} == supervised


def training_record(model_dir: Path) -> dict[str, Any] | None:
    """How the model's run opened its training data: ``data``, ``image_size``, ``max_train_samples``,
    ``seed``, ``feature_storage`` (from the training summary beside the model), or None for a model without a run or a
    run that did not record its data."""
    summary = model_dir.parent / "summary.json"
    if not summary.is_file():
        return None
    config, extra = _recorded(summary)
    key = extra.get("pipeline") or extra  # the pipeline's training key, or what the command recorded
    if not isinstance(key, dict) or "data" not in key:
        return None
    record = {"data": key["data"], "image_size": key.get("image_size", 224),
              "max_train_samples": key.get("max_train_samples"), "seed": key.get("seed", config.get("seed", 0)),
              "feature_storage": key.get("feature_storage", "float16")}  # recorded since int8 storage exists
    _check_fields(summary, record, _RECORD_FIELDS)
    return record


def provenance(model_dir: Path) -> str:
    """What a reader of the model's reports must know of it: the data it was trained on (from its
    run's record) and that its reports are for research, not for diagnosis."""
    record = training_record(model_dir)
    if record is None:
        trained = "its training data are not recorded"
    elif str(record["data"]).startswith("phantom"):
        trained = f"trained on synthetic phantom films only ({record['data']}), never on a patient's film"
    else:
        trained = f"trained on {record['data']}"
    return f"research model, not for diagnosis: {trained}"


def recorded_guided_setup(model_dir: Path) -> dict[str, Any] | None:
    """The findings-guided setup the model's run picked on its val split (``eval/guided_decoding.json``
    of a pipeline run: threshold, candidates, temperature, top_p), or None when it recorded none."""
    path = model_dir.parent.parent / "eval" / GUIDED_SETUP_FILE
    if not (model_dir.parent.name in ("train", "reward") and path.is_file()):
        return None
    setup = _read_json(path)
    if not isinstance(setup, dict):
        raise ValueError(f"{path}: expected an object of {', '.join(_GUIDED_FIELDS)}, got {type(setup).__name__}")
    _check_fields(path, setup, _GUIDED_FIELDS)
    return setup


def guided_setup(model_dir: Path, threshold: float | None = None, candidates: int | None = None,
                 temperature: float | None = None) -> dict[str, Any] | None:
    """The findings-guided setup to decode new studies with: what the model's run recorded, each
    value given here in its place, the pipeline's defaults for what neither says (threshold,
    candidates, temperature, top_p; ``threshold_from`` when the threshold was given); None when
    there is no threshold, recorded or given."""
    from flamingo_lib.pipeline.settings import EvalSettings

    setup = {"candidates": EvalSettings.guided_candidates, "temperature": EvalSettings.guided_temperature,
             "top_p": 1.0} | (recorded_guided_setup(model_dir) or {})
    setup |= {k: v for k, v in (("threshold", threshold), ("candidates", candidates), ("temperature", temperature))
              if v is not None}
    if setup.get("threshold") is None:
        return None
    return setup | ({"threshold_from": "given on the command line"} if threshold is not None else {})


def phantom_test_truth(runs: Sequence[str | Path]) -> tuple[list[dict] | None, tuple[str, ...] | None]:
    """The image truth of the test studies the pipeline runs ``runs`` were scored on, and the observations
    the films can show, when every run trained on the phantom and was scored on the same test studies
    (read without rendering a film); (None, None) otherwise (:mod:`flamingo_lib.evaluation.compare`)."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.evaluation.compare import read_generations

    keys = []
    for run in map(Path, runs):
        stamp = run / "eval" / "results.csv.key.json"
        try:
            record = training_record(model_directory(run))
        except FileNotFoundError:  # a flamingo-evaluate folder: no run of its own
            return None, None
        if record is None or not stamp.is_file() or not record["data"].startswith("phantom"):
            return None, None
        keys.append((record["data"].partition(";")[0], record["seed"], _read_json(stamp).get("max_test_samples")))
    if len(set(keys)) != 1:
        return None, None
    source, seed, max_samples = keys[0]
    test = open_source(source, "test", None, max_samples, seed=seed)
    if test.ids != read_generations(runs[0])["id"].tolist():
        return None, None
    return [sample.labels for sample in test.text_samples()], RENDERED_OBSERVATIONS
