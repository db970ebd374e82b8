"""``flamingo-compare`` (``python -m flamingo_lib.cli.compare``): several runs scored on the same test
studies, in one table and one HTML page, with paired tests against the first run's model.

    flamingo-compare runs/demo runs/int8 --out runs/compare

Each run is a pipeline run (``RUN/eval/generations.jsonl``) or a ``flamingo-evaluate`` output folder.
Runs scored on other studies are refused, naming the difference. On phantom runs the image-truth
columns are added (the test split's labels, read without rendering a film).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from flamingo_lib.cli import console_command
from flamingo_lib.evaluation.compare import Comparison, compare_runs, generations_file
from flamingo_lib.io import write_text_atomic
from flamingo_lib.pipeline.run_records import phantom_test_truth

#: The columns the page and the terminal show (the CSV has every one).
SHOWN = ("CE micro-F1 (rendered findings, vs image truth)", "CE micro-F1 (rendered findings, vs reference)",
         "CE micro-F1 (14, vs reference)", "CE macro-F1 (14, vs reference)", "BLEU_4", "ROUGE_L", "CIDEr")


def write_comparison(comparison: Comparison, out: Path) -> Path:
    """``comparison.csv`` (every metric), ``uncertainty.csv`` and ``compare.html`` in ``out``; the page's path."""
    from flamingo_lib.reporting.html import write_html_report
    from flamingo_lib.reporting.run_page import uncertainty_html

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "comparison.csv", comparison.table.to_csv())
    write_text_atomic(out / "uncertainty.csv", comparison.uncertainty.to_csv(index=False))
    folders = {name: str(path) for name, path in comparison.runs.items()}
    body = (f"<p>{comparison.n_studies} test studies, the same in every run.</p>"
            + pd.DataFrame({"folder": folders}).to_html()
            + uncertainty_html(comparison.uncertainty, [c for c in SHOWN if c in comparison.table.columns],
                               list(comparison.table.index), against=comparison.reference_system))
    # metrics only: no film and no report text, so the page holds nothing private
    return write_html_report(out / "compare.html", "Runs compared", [("Results", body)], credentialed=False)


def main(argv: Sequence[str] | None = None) -> Comparison:
    """The command line; returns the comparison."""
    parser = argparse.ArgumentParser(prog="flamingo-compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="two or more run folders scored on the same test studies")
    parser.add_argument("--names", nargs="+", help="a short name per run (default: the folders' names)")
    parser.add_argument("--out", default="runs/compare", help="where comparison.csv, uncertainty.csv and "
                        "compare.html go")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples over studies (0: none)")
    parser.add_argument("--n-permutations", type=int, default=10_000, help="randomisation trials (0: no p-values)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = [Path(run) for run in args.runs]
    try:
        for run in runs:
            generations_file(run)
        truth, shown = phantom_test_truth(runs)
        comparison = compare_runs(runs, args.names, image_truth=truth, shown_observations=shown,
                                  n_resamples=args.n_resamples, n_permutations=args.n_permutations, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    page = write_comparison(comparison, Path(args.out))
    shown_columns = [c for c in SHOWN if c in comparison.table.columns]
    print(comparison.table[shown_columns].astype(float).round(3).to_string())
    print(f"{comparison.n_studies} studies; intervals and p-values against {comparison.reference_system}: {page}")
    return comparison


cli = console_command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    main()
