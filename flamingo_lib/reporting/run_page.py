"""Assemble a run's HTML report: metrics with baselines, curves, cases with attention maps, grounding."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from flamingo_lib.evaluation.evaluate import REFERENCE_CEILING
from flamingo_lib.evaluation.finding_usage import FOLLOWED_AUROC, finding_usage_figure
from flamingo_lib.inference.guided_decoding import SYSTEM_NAME as GUIDED
from flamingo_lib.reporting.html import CASE_OPEN, case_figure, figure_to_img, loss_curve_figure, metrics_figure, write_html_report

HEADLINE = ["BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "CE micro-F1 (rendered findings, vs image truth)",
            "CE micro-F1 (rendered findings, vs reference)", "CE micro-F1 (14, vs image truth)",
            "CE micro-F1 (14, vs reference)", "CE macro-F1 (14, vs reference)"]


class CaseMap(NamedTuple):
    """Where a report looked on a film (:func:`case_heatmap`).

    Attributes:
        heatmap: float array (H, W) of the image's size, non-negative, summing to 1.
        mask: the named finding's bool mask (H, W), or None for the whole-report map.
        title: which tokens the map shows.
        finding: the finding whose words the map shows and whose mask is outlined, or None.
        peak: (row, column) of the map's peak once sharpened by the words' gradient over the
            pixels (:func:`~flamingo_lib.modeling.pixel_maps.sharpened_map`): the point the pixel
            pointing game scores, which the upsampled patch-grid map alone cannot place finer than a cell.
    """

    heatmap: Any
    mask: Any
    title: str
    finding: str | None
    peak: tuple[int, int] | None = None


def case_heatmap(pipeline: Any, sample: Any) -> CaseMap:
    """Evidence heatmap over the sample's first image, teacher-forced on its reference report
    (:func:`~flamingo_lib.evaluation.grounding.words_heatmap`), with its sharpened peak (the point
    the pixel pointing game scores, :class:`CaseMap`).

    Of the sentence that names the sample's first finding with a ground-truth mask (by one of its
    :data:`~flamingo_lib.evaluation.grounding.FINDING_WORDS`: the span the pointing game maps); without one, of the whole
    report (a mask whose finding the report does not name, scoliosis say, is then not outlined).
    """
    from flamingo_lib.evaluation.grounding import FINDING_WORDS, GAME_SPAN, word_token_positions

    model, processor = pipeline.model_and_processor
    batch, prompt_len, image = processor.film_batch(sample)  # with the processor's context, the first film
    size = sample.images[0].size[::-1]
    for finding, mask in sample.masks.items():
        positions = word_token_positions(processor, sample.report, FINDING_WORDS.get(finding, ()), prompt_len,
                                         span=GAME_SPAN)
        if positions:
            return _case_map(model, batch, positions, size, image, mask,
                             f"evidence for the sentence naming '{finding}'", finding)
    report_positions = range(prompt_len, int(batch["attention_mask"].sum()))
    return _case_map(model, batch, report_positions, size, image, None, "evidence for the report's words", None)


def _case_map(model: Any, batch: dict[str, Any], positions: Any, size: tuple[int, int], image: int, mask: Any,
              title: str, finding: str | None) -> CaseMap:
    """The words' evidence map and its sharpened peak, from one backward pass (as the pointing game makes them)."""
    from flamingo_lib.evaluation.grounding import words_map

    words = words_map(model, batch, list(positions), size, image=image)
    return CaseMap(words.heatmap, mask, title, finding, words.peak)


def named_finding_case(pipeline: Any) -> tuple[Any, CaseMap]:
    """The first test study whose report names a finding with a ground-truth mask, and its map: the
    case that shows grounding (the first test study, mapped over its whole report, when none does)."""
    test = pipeline.splits["test"]
    for index in range(len(test)):
        sample = test[index]
        if sample.masks:
            case = case_heatmap(pipeline, sample)
            if case.finding is not None:
                return sample, case
    return test[0], case_heatmap(pipeline, test[0])


def cases_html(pipeline: Any, n_cases: int = 6) -> str:
    """The first ``n_cases`` test studies as HTML: the film and its attention map (:func:`case_heatmap`)
    beside the generated report (greedy, and findings-guided when evaluated), the reference report
    and the nearest-neighbour baseline's report.

    Images are inlined (base64 PNG), so the fragment stands alone (``IPython.display.HTML``).
    """
    generations = pipeline.generations().set_index("id")
    test = pipeline.splits["test"]
    cases = []
    for index in range(min(n_cases, len(test))):
        sample = test[index]
        case = case_heatmap(pipeline, sample)
        row = generations.loc[sample.id]
        cases.append(
            CASE_OPEN
            + figure_to_img(case_figure(sample.images[0], *case), 460)
            + f"<div><p><b>Generated:</b> {html.escape(str(row['flamingo']))}</p>"
            + (f"<p><b>Findings-guided:</b> {html.escape(str(row[GUIDED]))}</p>" if GUIDED in row.index else "")
            + f"<p class='ref'><b>Reference:</b> {html.escape(sample.report)}</p>"
            + f"<p class='ref'><b>Nearest-neighbour baseline:</b> {html.escape(str(row['nearest neighbour']))}</p>"
            + "</div></div>")
    return "".join(cases)


def build_run_report(pipeline: Any, path: str | Path | None = None, n_cases: int = 6,
                     allow_credentialed: bool = False) -> Path:
    """Run (or reuse) every step of ``pipeline`` and write ``path`` (default ``run_dir/report.html``).

    Raises:
        PermissionError: the data are credentialed and ``allow_credentialed`` is False.
    """
    if pipeline.credentialed and not allow_credentialed:  # refuse before any work is done
        raise PermissionError(f"the run's data may not be shared ({pipeline.licence}): pass "
                              "allow_credentialed=True to write a private report; never share it")
    settings = pipeline.settings
    table = pipeline.evaluate()
    curves = pipeline.training_curves()
    grounding = pipeline.grounding()
    generations = pipeline.generations().set_index("id")
    columns = [c for c in HEADLINE if c in table.columns] + [c for c in table.columns if c.startswith("RadEval ")]
    results = pipeline.run_dir / "eval" / "results.json"
    missing = json.loads(results.read_text()).get("not_computed", {}) if results.exists() else {}
    not_computed = "".join(f"<p class='ref'>Not computed: {html.escape(name)}: {html.escape(why)}</p>"
                           for name, why in missing.items())
    sections = [
        ("Run", "<p>" + html.escape(f"preset {settings.model.preset!r}, data {settings.data.source!r}, "
                                    f"{settings.train.max_steps} steps, test studies: {len(generations)}") + "</p>"),
        ("Metrics (test split) against baselines",
         table[columns].astype(float).round(3).rename_axis(None).to_html(na_rep="-")
         + not_computed + figure_to_img(metrics_figure(table, columns), 1000)
         + uncertainty_html(pipeline.uncertainty(), columns, list(table.index))),
        ("Training", figure_to_img(loss_curve_figure(curves))),
    ]
    if not grounding.empty:
        from flamingo_lib.evaluation.grounding import pointing_summary, pointing_tests

        summary = pointing_summary(grounding).round(3)
        tests, cells = pointing_tests(grounding), pointing_summary(grounding, level="cell").loc["all"]
        near = pointing_summary(grounding, level="tolerant").loc["all"] if "tolerant_hit" in grounding else None
        within = "" if near is None else (f" Within 15 px of the mask (the original definition's tolerance): "
                                          f"{near.accuracy:.3f}, chance {near.chance:.3f}, shuffled {near.shuffled:.3f}.")
        sections.append(("Grounding: pointing game (peak of the evidence for the sentence naming a finding, "
                         "inside the finding's mask)",
                         summary.to_html() + "<p>The peak pixel of the evidence map sharpened by the sentence's "
                                             "gradient over the film's pixels. chance = mask area fraction; "
                                             "shuffled = the map computed with another study's image. One-sided "
                                             f"exact p-values over all findings: above chance p = "
                                             f"{tests['p_vs_chance']:.2g}, above the shuffled control (paired) p = "
                                             f"{tests['p_vs_shuffled']:.2g}. At the map's own resolution (the peak "
                                             f"cell of the patch grid): {cells.accuracy:.3f}, chance "
                                             f"{cells.chance:.3f}, shuffled {cells.shuffled:.3f}.{within}</p>"))
    usage = pipeline.finding_usage()
    if usage["AUROC"].notna().any():
        sections.append(("Which findings does the text follow? (sampled reports)",
                         figure_to_img(finding_usage_figure(usage), 520)
                         + usage.round(3).to_html(na_rep="-")
                         + f"<p>{settings.eval.usage_samples} reports sampled per test study (temperature 1), read "
                           "by the labeler. AUROC of each finding's mention rate against the truth: 0.5 = the "
                           "text states the finding as often without it as with it. Black ticks: the findings "
                           "head's AUROC, what the visual features carry.</p>"))
    sections.append(("Cases", cases_html(pipeline, n_cases)))
    protocol = (pipeline.run_dir / "eval" / "PROTOCOL.md").read_text()
    sections.append(("Protocol", f"<pre>{html.escape(protocol)}</pre>"))
    return write_html_report(path or pipeline.run_dir / "report.html", "Flamingo chest X-ray report generation",
                             sections, credentialed=pipeline.credentialed, allow_credentialed=allow_credentialed,
                             iu_text=settings.data.source in ("phantom", "phantom:iu") or settings.data.source.startswith("iu"))


def _uncertain(rows: pd.DataFrame, system: str, metric: str) -> str:
    """" [low, high]" (and " p=..." against the model) of a system's metric, or "" where there is none."""
    found = rows[(rows["system"] == system) & (rows["metric"] == metric)]
    if found.empty or pd.isna(found["low"].iloc[0]):
        return ""
    row = found.iloc[0]
    text = f" [{row['low']:.3f}, {row['high']:.3f}]"
    column = next((c for c in rows.columns if c.startswith("p_vs_")), None)  # against the table's reference system
    if column is None or pd.isna(row.get(column)):
        return text
    value = row[column]  # none of the trials as extreme: below one in their number
    return text + (f" p<{1 / row['permutations']:.0e}" if value == 0 and row.get("permutations") else f" p={value:.2g}")


def uncertainty_html(rows: pd.DataFrame, columns: list[str], systems: list[str], against: str = "flamingo") -> str:
    """The 95% intervals and p-values (against the system ``against``) of ``columns`` as a table (systems
    in the results' order)."""
    shown = [c for c in columns if c in set(rows["metric"])]
    if rows.empty or not shown:
        return ""
    cells = {metric: {system: (f"{v:.3f}" + _uncertain(rows, system, metric)) for system in systems
                      for v in rows[(rows["system"] == system) & (rows["metric"] == metric)]["value"]}
             for metric in shown}
    why = (" (greedy), so the findings-guided row's p compares the two decodings" if against == "flamingo"
           else " (greedy decoding)")
    return (f"<p>95% bootstrap intervals over test studies; p: paired approximate randomisation against "
            f"{html.escape(against)}{why}.</p>"
            + pd.DataFrame(cells).reindex(systems).dropna(how="all").fillna("-").to_html())


def headline(pipeline: Any) -> str:
    """A few lines for the terminal: the model vs the best baseline on the key metrics, with 95%
    intervals and paired p-values against the model where they exist (:meth:`Pipeline.uncertainty`)."""
    table = pipeline.evaluate()
    rows = pipeline.uncertainty()
    lines = []
    for column in [c for c in HEADLINE if c in table.columns]:
        values = table[column].astype(float)
        ours = [name for name in values.index if name.startswith("flamingo")]  # greedy and other decodings
        baselines = values.drop([*ours, REFERENCE_CEILING], errors="ignore")
        line = f"{column:>34}: flamingo {values['flamingo']:.3f}{_uncertain(rows, 'flamingo', column)}"
        if GUIDED in values.index:
            line += f" (findings-guided {values[GUIDED]:.3f}{_uncertain(rows, GUIDED, column)})"
        best = baselines.idxmax()
        line += f" | best baseline {baselines.max():.3f} ({best}{_uncertain(rows, best, column)})"
        if pd.notna(values.get(REFERENCE_CEILING, float("nan"))):
            line += f" | reference report {values[REFERENCE_CEILING]:.3f}"
        lines.append(line)
    grounding = pipeline.grounding()
    if not grounding.empty:
        from flamingo_lib.evaluation.grounding import pointing_tests

        tests = pointing_tests(grounding)
        lines.append(f"{'pointing game':>34}: {grounding['hit'].mean():.3f} vs chance {grounding['chance'].mean():.3f}"
                     f" (p={tests['p_vs_chance']:.2g}) and shuffled image {grounding['shuffled_hit'].mean():.3f}"
                     f" (paired p={tests['p_vs_shuffled']:.2g}; n={len(grounding)})")
    usage = pipeline.finding_usage().dropna(subset=["AUROC"])
    if not usage.empty:
        followed = usage.index[usage["AUROC"] >= FOLLOWED_AUROC].tolist()
        lines.append(f"{'findings the text follows':>34}: {len(followed)} of {len(usage)} (sampled mention-rate "
                     f"AUROC >= {FOLLOWED_AUROC}): {', '.join(followed) or 'none'}")
    return "\n".join(lines) if lines else "no metrics"

