"""Reports for new films with a trained model: the step after evaluation, on a reader's own images.

    python -m flamingo_lib.write_reports runs/demo films/ --out reports.csv
    python -m flamingo_lib.write_reports runs/demo films/ --out reports.csv --guided
    python -m flamingo_lib.write_reports runs/demo/train/model a.png b.dcm --out reports.jsonl

The model is a run directory (its ``train/model``) or a saved model directory. The inputs are image
files (a study each) and folders (every folder below holding images is a study:
:func:`~flamingo_lib.data.study_files.find_studies`). Each study gets a report (greedy, or
findings-guided with the threshold its run picked on validation studies), the observations the
report states (read by the labeler), and with a findings head the head's probability of each
observation. The table is written atomically as CSV or JSON lines; nothing is written beside the
films.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from flamingo_lib.atomic_files import write_text_atomic
from flamingo_lib.data.study_files import StudyFiles, find_studies, load_study
from flamingo_lib.guided_decoding import GUIDED_SETUP_FILE

logger = logging.getLogger(__name__)

#: Output formats by suffix.
TABLE_SUFFIXES = (".csv", ".jsonl")


def model_directory(path: str | Path) -> Path:
    """The saved model a path names: itself when it holds ``config.json`` and ``model.safetensors``,
    else a run directory's ``train/model``.

    Raises:
        FileNotFoundError: neither, naming both places looked at.
    """
    path = Path(path)
    for candidate in (path, path / "train" / "model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no saved model here or in {path / 'train' / 'model'} "
                            "(expected config.json and model.safetensors: a run directory of the pipeline or "
                            "`python -m flamingo_lib.train`, or a directory written by save_pretrained)")


def _run_directory(model_dir: Path) -> Path | None:
    return model_dir.parent.parent if model_dir.parent.name == "train" else None


def recorded_guided_setup(model_dir: Path) -> dict[str, Any] | None:
    """The findings-guided setup the model's run picked on its val split (``eval/guided_decoding.json``:
    threshold, candidates, temperature, top_p), or None when the run recorded none."""
    run = _run_directory(model_dir)
    path = None if run is None else run / "eval" / GUIDED_SETUP_FILE
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def recorded_image_size(model_dir: Path) -> int | None:
    """The ``image_size`` the model's run loaded its films at (its training summary), or None."""
    run = _run_directory(model_dir)
    summary = None if run is None else run / "train" / "summary.json"
    if summary is None or not summary.is_file():
        return None
    extra = json.loads(summary.read_text()).get("config", {}).get("extra", {}) or {}
    return (extra.get("pipeline") or {}).get("image_size") or extra.get("image_size")


class _LoadedStudies(Sequence):
    """Studies loaded from disk when indexed: a folder of thousands holds one batch in memory."""

    def __init__(self, studies: Sequence[StudyFiles], image_size: int | None) -> None:
        self.studies, self.image_size = studies, image_size

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return load_study(self.studies[i], self.image_size)


def _head_columns(model: Any, probabilities: torch.Tensor | None, readings: torch.Tensor | None) -> list[dict]:
    """Per study, ``p <observation>`` (and ``p stated <observation>`` with a reading head)."""
    if probabilities is None:
        return []
    observations = model.config.findings_head
    rows = [{f"p {obs}": round(float(p), 4) for obs, p in zip(observations, row)} for row in probabilities]
    if readings is not None:
        for row, stated in zip(rows, readings):
            row |= {f"p stated {obs}": round(float(p), 4) for obs, p in zip(observations, stated)}
    return rows


@torch.no_grad()
def _greedy(model: Any, processor: Any, samples: Sequence[Any], max_new_tokens: int, batch_size: int,
            progress: bool) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
    reports, probabilities, readings = [], [], []
    observations = model.config.findings_head
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress, desc="reports"):
        images = [list(samples[i].images) for i in range(start, min(start + batch_size, len(samples)))]
        reports += model.generate_captions(processor, images, max_length=max_new_tokens)
        if observations is None:
            continue
        pixels = processor([processor.study_prompt(len(v)) for v in images], images)["pixel_values"].to(device)
        views = [len(v) for v in images]  # the batch pads studies with fewer views
        features = model.resolve_visual_features(pixel_values=pixels)
        head = model.predict_findings(visual_features=features, num_images=views)
        probabilities.append(torch.stack([head[obs].cpu() for obs in observations], 1))
        if model.config.reading_head:
            stated = model.predict_readings(visual_features=features, num_images=views)
            readings.append(torch.stack([stated[obs].cpu() for obs in observations], 1))
    return (reports, torch.cat(probabilities) if probabilities else None,
            torch.cat(readings) if readings else None)


def write_reports(model: Any, processor: Any, studies: Sequence[StudyFiles], *, guided_threshold: float | None = None,
                  candidates: int = 32, temperature: float = 0.7, top_p: float = 1.0, max_new_tokens: int = 60,
                  batch_size: int = 4, seed: int = 0, image_size: int | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """One row per study: ``study``, ``images`` (its files, ``;``-separated), ``report``, ``stated``
    (the observations the labeler reads as positive in it) and, with a findings head, ``p <obs>``
    per observation (``p stated <obs>`` too with a reading head).

    Args:
        guided_threshold: None: greedy reports. Else findings-guided decoding
            (:mod:`flamingo_lib.guided_decoding`: the greedy report and ``candidates`` samples at
            ``temperature`` / ``top_p``, the one the heads agree with beyond the threshold kept).
        image_size: the longer side films are downscaled to on loading (the run's ``image_size``).

    Raises:
        ValueError: guided decoding asked of a model without a findings head.
    """
    from flamingo_lib.labeler import label_report

    model.eval()
    samples = _LoadedStudies(studies, image_size)
    if guided_threshold is None:
        reports, probabilities, readings = _greedy(model, processor, samples, max_new_tokens, batch_size, progress)
    else:
        from flamingo_lib.guided_decoding import choose, sample_candidates

        drawn = sample_candidates(model, processor, samples, candidates, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens, seed=seed, progress=progress,
                                  temperature=temperature, top_p=top_p)
        reports, probabilities, readings = choose(drawn, guided_threshold), drawn.probabilities, \
            drawn.reading_probabilities
    heads = _head_columns(model, probabilities, readings) or [{} for _ in studies]
    rows = []
    for study, report, head in zip(studies, reports, heads):
        stated = [obs for obs, value in label_report(report).items() if value == 1.0]
        rows.append({"study": study.id, "images": ";".join(str(p) for p in study.paths), "report": report,
                     "stated": "; ".join(stated)} | head)
    return pd.DataFrame(rows)


def save_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write the table as CSV or JSON lines (by ``path``'s suffix), atomically.

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: write reports to a {' or '.join(TABLE_SUFFIXES)} file, got {path.suffix or 'no suffix'!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = table.to_csv(index=False) if path.suffix.lower() == ".csv" else \
        table.to_json(orient="records", lines=True, force_ascii=False)
    write_text_atomic(path, text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flamingo_lib.write_reports",
                                     description="Write reports for new chest X-ray films with a trained model.")
    parser.add_argument("model", help="a run directory (its train/model is used) or a saved model directory")
    parser.add_argument("inputs", nargs="+", help="image files (.png .jpg .dcm ...; a study each) and folders "
                        "(every folder below holding images is one study)")
    parser.add_argument("--out", required=True, help="the table to write: .csv or .jsonl")
    parser.add_argument("--one-per-image", action="store_true", help="every image of a folder is its own study")
    parser.add_argument("--guided", action="store_true", help="findings-guided decoding, with the threshold, "
                        "candidates and temperature the run picked (eval/guided_decoding.json)")
    parser.add_argument("--threshold", type=float, help="the guided threshold (implies --guided)")
    parser.add_argument("--candidates", type=int, help="sampled reports per study for guided decoding")
    parser.add_argument("--temperature", type=float, help="their sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, help="downscale films on loading so the longer side is at most "
                        "this (default: the run's image_size, else 224)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the guided candidates")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: the best there is)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the whole model in this dtype (bfloat16: about half the memory, faster on a GPU)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _guided_settings(args: argparse.Namespace, model_dir: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """threshold (None: greedy), candidates, temperature, top_p: the flags, else what the run recorded."""
    recorded = recorded_guided_setup(model_dir) or {}
    guided = args.guided or args.threshold is not None
    threshold = args.threshold if args.threshold is not None else recorded.get("threshold") if guided else None
    if guided and threshold is None:
        parser.error(f"findings-guided decoding needs a threshold: {model_dir} belongs to no run that recorded one "
                     f"(eval/{GUIDED_SETUP_FILE}, written when the pipeline evaluates a run); pass --threshold "
                     "(the run's eval/PROTOCOL.md names the one it picked)")
    return {"guided_threshold": threshold,
            "candidates": args.candidates if args.candidates is not None else recorded.get("candidates", 32),
            "temperature": args.temperature if args.temperature is not None else recorded.get("temperature", 0.7),
            "top_p": recorded.get("top_p", 1.0)}


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """The command line; returns the table it wrote."""
    from flamingo_lib import FlamingoModel, FlamingoProcessor
    from flamingo_lib.data.errors import DataError
    from flamingo_lib.workbench import detect_device

    parser = _parser()
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() not in TABLE_SUFFIXES:  # before the long work, not after it
        parser.error(f"--out {args.out}: write reports to a {' or '.join(TABLE_SUFFIXES)} file")
    try:
        model_dir = model_directory(args.model)
        studies = find_studies(args.inputs, one_per_image=args.one_per_image)
    except (FileNotFoundError, DataError) as error:
        parser.error(str(error))
    guided = _guided_settings(args, model_dir, parser)
    device = detect_device()[0] if args.device == "auto" else args.device
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    model = FlamingoModel.from_pretrained(model_dir, dtype=dtype).to(device)
    if guided["guided_threshold"] is not None and model.config.findings_head is None:
        parser.error(f"{model_dir}: findings-guided decoding needs a model with a findings head; this one has none")
    processor = FlamingoProcessor.from_pretrained(model_dir)
    image_size = args.image_size or recorded_image_size(model_dir) or 224
    how = "greedy" if guided["guided_threshold"] is None else (
        f"findings-guided (threshold {guided['guided_threshold']}, {guided['candidates']} candidates "
        f"at temperature {guided['temperature']})")
    print(f"{len(studies)} studies ({sum(len(s.paths) for s in studies)} images), {how} decoding on {device}, "
          f"model {model_dir}")
    table = write_reports(model, processor, studies, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          seed=args.seed, image_size=image_size, progress=not args.no_progress, **guided)
    save_table(table, args.out)
    for row in table.head(5).itertuples():
        print(f"{row.study}: {row.report}")
    print(f"wrote {len(table)} reports to {args.out}")
    return table


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
