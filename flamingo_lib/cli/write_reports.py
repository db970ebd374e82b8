"""Reports for new films with a trained model: the step after evaluation, on a reader's own images.

    python -m flamingo_lib.cli.write_reports runs/demo films/ --out reports.csv
    python -m flamingo_lib.cli.write_reports runs/demo films/ --out reports.csv --guided
    python -m flamingo_lib.cli.write_reports runs/demo/train/model a.png b.dcm --out reports.jsonl

The model is a run directory (the pipeline's or the training command's:
:func:`~flamingo_lib.pipeline.run_records.model_directory`) or a saved model directory. The inputs are image
files (a study each) and folders (every folder below holding images is a study:
:func:`~flamingo_lib.data.study_files.find_studies`). Each study gets a report (greedy, or
findings-guided with the threshold its run picked on validation studies), the observations the
report states (read by the labeler), whether a film is unlike the model's training films
(:mod:`flamingo_lib.inference.film_reference`), the model's provenance, and with a findings head the
head's probability of each observation (:mod:`flamingo_lib.inference.study_reports`). The table is written atomically as CSV or JSON
lines; nothing is written beside the films.

A long run loses nothing: every chunk of studies is appended to ``OUT.partial.jsonl`` as it is
done, and the same command run again continues after the last complete chunk (a command with other
settings, model or studies is refused and told what differs). ``--on-error skip`` reports the other
studies when a film cannot be read, and says why in the study's ``error`` column.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from flamingo_lib.cli import console_command
from flamingo_lib.modeling.config import FROZEN_DTYPES
from flamingo_lib.pipeline.settings import EvalSettings
from flamingo_lib.io import write_text_atomic
from flamingo_lib.data.study_files import StudyFiles, find_studies
from flamingo_lib.inference.film_reference import REFERENCE_FILE, reference_for
from flamingo_lib.inference.guided_decoding import GUIDED_SETUP_FILE
from flamingo_lib.pipeline.run_records import guided_setup, model_directory, provenance, training_record
from flamingo_lib.inference.study_reports import CHUNK_STUDIES, report_chunks, studies_unlike_training

#: Output formats by suffix.
TABLE_SUFFIXES = (".csv", ".jsonl")


def partial_path(out: str | Path) -> Path:
    """Where the command keeps the chunks it has done: ``OUT.partial.jsonl`` beside ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".partial.jsonl")


def run_identity(model_dir: Path, studies: Sequence[StudyFiles], options: dict[str, Any]) -> dict[str, Any]:
    """What fixes a run's rows: the model (its weights file's size and time), the studies, the options."""
    weights = (model_dir / "model.safetensors").stat()
    listing = "\n".join(f"{s.id}\t{';'.join(map(str, s.paths))}" for s in studies)
    return {"model": str(model_dir.resolve()), "weights": f"{weights.st_size}-{weights.st_mtime_ns}",
            "studies": hashlib.sha256(listing.encode()).hexdigest()[:16], "count": len(studies),
            "chunk_studies": CHUNK_STUDIES, **options}


def resume_chunks(partial: Path, identity: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The complete chunks a partial file holds, in order (a torn last line or chunk is dropped).

    Raises:
        ValueError: the file was written by a run with another identity, naming what differs.
    """
    if not partial.is_file():
        return []
    lines = partial.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0]).get("run", {}) if lines else {}
    if header != identity:
        differs = sorted(k for k in set(header) | set(identity) if header.get(k) != identity.get(k))
        raise ValueError(f"{partial}: partial results of another run ({', '.join(differs)} differ); rerun the "
                         "command that wrote them to finish it, or delete the file to start over")
    chunks: dict[int, list[dict[str, Any]]] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # killed while appending: the chunk is redone
        chunks.setdefault(row.pop("chunk"), []).append(row)
    complete = []
    for index in range(len(chunks)):
        expected = min(CHUNK_STUDIES, identity["count"] - index * CHUNK_STUDIES)
        if len(chunks.get(index, [])) != expected:
            break
        complete.append(chunks[index])
    return complete


def _append_chunk(partial: Path, index: int, rows: list[dict[str, Any]]) -> None:
    """One write and an fsync per chunk: a kill leaves whole chunks and at most one torn one."""
    with partial.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps({"chunk": index} | row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


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
    parser = argparse.ArgumentParser(prog="python -m flamingo_lib.cli.write_reports",
                                     description="Write reports for new chest X-ray films with a trained model.")
    parser.add_argument("model", help="a run directory (of the pipeline or of python -m flamingo_lib.cli.train) or a "
                        "saved model directory")
    parser.add_argument("inputs", nargs="+", help="image files (.png .jpg .dcm ...; a study each) and folders "
                        "(every folder below holding images is one study)")
    parser.add_argument("--out", required=True, help="the table to write: .csv or .jsonl")
    parser.add_argument("--one-per-image", action="store_true", help="every image of a folder is its own study")
    parser.add_argument("--guided", action="store_true", help="findings-guided decoding, with the threshold, "
                        "candidates and temperature the run picked (eval/guided_decoding.json)")
    parser.add_argument("--threshold", type=float, help="the guided threshold (implies --guided)")
    parser.add_argument("--candidates", type=int, help="sampled reports per study for guided decoding")
    parser.add_argument("--temperature", type=float, help="their sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=EvalSettings.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, help="downscale films on loading so the longer side is at most "
                        "this (default: the run's image_size, else 224)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the guided candidates")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a film that cannot be read stops the run (raise; a rerun resumes) or leaves its "
                        "study without a report, the reason in its error column (skip)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: the best there is)")
    parser.add_argument("--dtype", choices=FROZEN_DTYPES, default="float32",
                        help="the whole model in this dtype (bfloat16: about half the memory, faster on a GPU)")
    parser.add_argument("--html", metavar="PAGE", help="also write a page (.html) showing each study's film with "
                        "where its report looked, the report and the findings head's verdict")
    parser.add_argument("--html-studies", type=int, default=50, help="studies on the page (default 50)")
    parser.add_argument("--films-shareable", action="store_true", help="the films come from a public dataset: "
                        "the page does not warn that it holds private films")
    parser.add_argument("--indication", default="", help="the clinical question of the studies (e.g. 'Shortness of "
                        "breath. Evaluate effusion.'), for a model trained with the indication in its prompt")
    parser.add_argument("--prior", metavar="DIR", help="the prior study's folder (its films, and its report in "
                        "DIR/report.txt unless --prior-report), for a model trained with the prior study in its prompt")
    parser.add_argument("--prior-report", help="the prior study's report text")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _clinical_context(args: argparse.Namespace, processor: Any, image_size: int,
                      parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``indication`` and ``prior`` for :func:`report_chunks`, checked against what the model reads:
    context the model was not trained to read is refused (it would be silently ignored)."""
    from flamingo_lib.data.errors import DataError
    from flamingo_lib.data.sample import CXRSample
    from flamingo_lib.data.study_files import find_studies, load_study

    context = processor.context
    if args.indication and not context.indication:
        parser.error(f"--indication: this model was trained without the indication in its prompt (context: {context}); "
                     "it would not read it")
    if (args.prior or args.prior_report) and not context.uses_prior:
        parser.error(f"--prior: this model was trained without the prior study in its prompt (context: {context}); "
                     "it would not read it")
    if args.prior_report and not args.prior and context.prior_films:
        parser.error("--prior-report: this model reads the prior study's films too; give their folder with --prior DIR")
    prior = None
    if args.prior or args.prior_report:
        report = args.prior_report
        if report is None and args.prior and (Path(args.prior) / "report.txt").is_file():
            report = (Path(args.prior) / "report.txt").read_text(encoding="utf-8").strip()
        if context.prior_report and not report:
            parser.error(f"--prior {args.prior}: the model reads the prior study's report: give it with --prior-report "
                         f"or as {Path(args.prior) / 'report.txt'}")
        images = []
        if args.prior and context.prior_films:
            try:
                found = find_studies([args.prior])
                if len(found) != 1:
                    parser.error(f"--prior {args.prior}: expected the folder of one study, found {len(found)} studies")
                images = load_study(found[0], image_size).images
            except (FileNotFoundError, DataError) as error:
                parser.error(f"--prior: {error}")
        prior = CXRSample(id=str(args.prior or "prior"), images=images, report=report or "")
    elif context.uses_prior:
        print(f"note: the model reads a prior study (context: {context}) and none was given (--prior): each study is "
              "read as a patient's first")
    return {"indication": args.indication, "prior": prior}


def _guided_settings(args: argparse.Namespace, model_dir: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """guided_threshold (None: greedy), candidates, temperature, top_p (:func:`run_records.guided_setup`)."""
    if not (args.guided or args.threshold is not None):
        return {"guided_threshold": None}
    try:
        setup = guided_setup(model_dir, args.threshold, args.candidates, args.temperature)
    except ValueError as error:  # a run folder's record that cannot be right
        parser.error(str(error))
    if setup is None:
        parser.error(f"findings-guided decoding needs a threshold: {model_dir} belongs to no run that recorded one "
                     f"(eval/{GUIDED_SETUP_FILE}, written when the pipeline evaluates a run); pass --threshold "
                     "(the run's eval/PROTOCOL.md names the one it picked)")
    return {"guided_threshold": setup["threshold"]} | {k: setup[k] for k in ("candidates", "temperature", "top_p")}


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """The command line; returns the table it wrote."""
    from flamingo_lib.modeling.config import FlamingoConfig
    from flamingo_lib.modeling.model import FlamingoModel
    from flamingo_lib.processing.processor import FlamingoProcessor
    from flamingo_lib.data.errors import DataError
    from flamingo_lib.pipeline.workbench import detect_device

    parser = _parser()
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() not in TABLE_SUFFIXES:  # before the long work, not after it
        parser.error(f"--out {args.out}: write reports to a {' or '.join(TABLE_SUFFIXES)} file")
    if args.html and Path(args.html).suffix.lower() != ".html":
        parser.error(f"--html {args.html}: the page is an .html file")
    try:
        model_dir = model_directory(args.model)
        studies = find_studies(args.inputs, one_per_image=args.one_per_image)
    except (FileNotFoundError, DataError) as error:
        parser.error(str(error))
    guided = _guided_settings(args, model_dir, parser)
    if guided["guided_threshold"] is not None and FlamingoConfig.from_pretrained(model_dir).findings_head is None:
        parser.error(f"{model_dir}: findings-guided decoding needs a model with a findings head; this one has none")
    device = detect_device()[0] if args.device == "auto" else args.device
    try:
        image_size = args.image_size or (training_record(model_dir) or {}).get("image_size") or 224
    except ValueError as error:
        parser.error(str(error))
    options = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed,
               "image_size": image_size, **guided}
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    model = FlamingoModel.from_pretrained(model_dir, dtype=dtype).to(device)
    processor = FlamingoProcessor.from_pretrained(model_dir)
    context = _clinical_context(args, processor, image_size, parser)
    try:
        reference = reference_for(model, processor, model_dir)
    except ValueError as error:
        parser.error(str(error))
    partial = partial_path(args.out)
    # (not on_error: it changes no row that was made, so a run stopped by a bad film resumes with skip)
    prior = context["prior"]
    context_identity = {"indication": args.indication, "prior": None if prior is None else [
        prior.id, hashlib.sha256(prior.report.encode()).hexdigest()[:16], len(prior.images)]}
    film_reference = None if reference is None else [reference.threshold, len(reference.embeddings)]
    identity = run_identity(model_dir, studies, options | context_identity | {
        "dtype": args.dtype, "device": torch.device(device).type, "film_reference": film_reference})
    try:
        done = resume_chunks(partial, identity)
    except ValueError as error:
        parser.error(str(error))
    how = "greedy" if guided["guided_threshold"] is None else (
        f"findings-guided (threshold {guided['guided_threshold']}, {guided['candidates']} candidates "
        f"at temperature {guided['temperature']})")
    print(f"{len(studies)} studies ({sum(len(s.paths) for s in studies)} images), {how} decoding on {device}, "
          f"model {model_dir}" + (f"; resuming after {sum(map(len, done))} studies in {partial}" if done else ""))
    if reference is None:
        print(f"note: {model_dir} holds no reference of its training films ({REFERENCE_FILE}), so no film is checked "
              "for being unlike them; the pipeline's train step and flamingo-train write one")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # the partial file restarted from what was kept: a torn tail is not appended to
    write_text_atomic(partial, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in
                                       [{"run": identity}] + [{"chunk": i} | r for i, c in enumerate(done) for r in c]))
    chunks = report_chunks(model, processor, studies, first_chunk=len(done), progress=not args.no_progress,
                           on_error=args.on_error, film_reference=reference, **options, **context)
    try:
        for index, rows in enumerate(chunks, len(done)):
            _append_chunk(partial, index, rows)
            done.append(rows)
    except DataError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n{partial} keeps the {sum(map(len, done))} studies done: "
                       "fix or remove the film and run the same command again, or add --on-error skip\n")
    table = pd.DataFrame([row for rows in done for row in rows])
    if len(table):  # every row says what made it, wherever the row travels
        table["provenance"] = provenance(model_dir)
    save_table(table, args.out)
    partial.unlink()
    if args.html:
        from flamingo_lib.reporting.study_page import write_study_page

        write_study_page(args.html, model, processor, table, studies, image_size=image_size, limit=args.html_studies,
                         films_shareable=args.films_shareable, film_reference=reference,
                         description=f"{how.capitalize()} decoding by the model in {model_dir}; "
                                     f"{provenance(model_dir)}.")
        print(f"wrote the page {args.html} ({min(args.html_studies, len(table))} studies)")
    for row in table.head(5).itertuples():
        print(f"{row.study}: {row.report}")
    failed = int((table["error"] != "").sum()) if len(table) else 0
    unlike = studies_unlike_training(table)
    if unlike:
        print(f"{unlike} studies hold a film unlike the training films (out_of_distribution column): their reports "
              "are unreliable")
    print(f"wrote {len(table)} reports to {args.out}" + (f"; {failed} studies could not be read (error column)"
                                                          if failed else ""))
    return table


cli = console_command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
