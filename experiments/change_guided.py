"""Where is the comparison with the prior study lost: in what the heads see, or in what the text writes?

A follow-up's report must state each finding's change against the prior study ("new", "unchanged",
"resolved", "increased", "decreased"; :mod:`flamingo_lib.labeling.changes`). A run trained with the
prior findings tokens reads the findings head's verdict on the study's films and on the prior's. This
probe measures, on the follow-ups of a split of the longitudinal phantom:

* ``true presence``: the change accuracy of a reader that states, per CheXpert observation, the joint
  presence of the *true* findings (in both: "unchanged"; now only: "new"; before only: "resolved").
  It knows no severity, so "increased" and "decreased" are lost, and findings no observation covers
  (scoliosis, emphysema) go unstated: the most any per-observation verdict can say.
* ``true presence and severity``: the same, a finding in both studies stated "increased" or
  "decreased" where its true severity level moved.
* ``heads' verdict``: the same from the findings head's verdict (probability > 0.5) on the study's and
  the prior's films: the most a text could reach by stating exactly what the tokens hold. With a
  severity head (``FlamingoConfig.severity_head``) a kept observation whose severity moved by more than
  half a level (0.25 on the head's 0-1 scale, the midpoint between two levels) is "increased" or
  "decreased".
* ``greedy``: the run's own greedy reports.
* ``change-guided``: among the greedy report and ``--candidates`` sampled ones, the report whose stated
  changes agree most with the heads' verdict (+1 for each change stated as the verdict has it, -1 for
  each other, "increased"/"decreased" of a finding the verdict keeps counting 0 unless the verdict
  knows the severity; ties to the findings
  it states as guided decoding scores them at threshold 0.5, then to the earliest).
* ``best of the candidates``: an oracle that picks the candidate stating the most true changes.

    HF_HUB_OFFLINE=1 python -m experiments.change_guided runs/context/prior_films-prior-tokens-teacher0.5 \
        [--split val] [--candidates 16]

About 3 minutes on the test split's 145 follow-ups (2 cores).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

#: Verdict of an observation in (study, prior) -> the change a report should state.
JOINT = {(True, True): "unchanged", (True, False): "new", (False, True): "resolved"}
#: How far a kept observation's severity must move (0-1 scale, levels 0.5 apart) to be stated changed.
MOVED = 0.25


def observation_of(finding: str) -> str | None:
    """The CheXpert observation a phantom finding (or a support device's type) is labelled with; None
    for a finding no observation covers (scoliosis, emphysema)."""
    from flamingo_lib.data.phantom.devices import DEVICE_TYPES
    from flamingo_lib.data.phantom.text import PHANTOM_TO_CHEXPERT

    if finding in DEVICE_TYPES:
        return "Support Devices"
    observations = PHANTOM_TO_CHEXPERT.get(finding, ())
    return observations[0] if observations else None


def verdict_changes(now: set[str], before: set[str], findings: Sequence[str],
                    moved: Mapping[str, float] | None = None) -> dict[str, str]:
    """For each of ``findings``, the change the joint presence of its observation in ``now`` and
    ``before`` (observation names) implies; findings without an observation, or absent from both,
    are left out. ``moved``: observation -> how its severity moved since the prior (a kept one moved
    by more than :data:`MOVED` is "increased" or "decreased"); None: no severity known."""
    changes = {}
    for finding in findings:
        observation = observation_of(finding)
        if observation is not None and (observation in now or observation in before):
            change = JOINT[(observation in now, observation in before)]
            step = 0.0 if moved is None else moved.get(observation, 0.0)
            if change == "unchanged" and abs(step) > MOVED:
                change = "increased" if step > 0 else "decreased"
            changes[finding] = change
    return changes


def agreement(stated: Mapping[str, str], now: set[str], before: set[str],
              moved: Mapping[str, float] | None = None) -> int:
    """How far the changes a report states (finding -> change) agree with the heads' joint verdict:
    +1 per change as the verdict has it, -1 per other, 0 for "increased"/"decreased" of a finding the
    verdict keeps when it knows no severity (``moved`` None)."""
    expected = verdict_changes(now, before, list(stated), moved)
    score = 0
    for finding, change in stated.items():
        wanted = expected.get(finding)
        if moved is None and wanted == "unchanged" and change in ("increased", "decreased"):
            continue
        score += 1 if change == wanted else -1
    return score


def present(findings: Sequence[Any]) -> set[str]:
    """The observations a study's true findings (phantom ``Finding`` objects) are labelled with."""
    from flamingo_lib.data.phantom.evolution import change_key

    return {o for o in (observation_of(change_key(f)) for f in findings) if o is not None}


def true_severity(findings: Sequence[Any]) -> dict[str, float]:
    """Observation -> the largest true severity level (0, 0.5, 1) of a study's findings labelled with it."""
    from flamingo_lib.data.phantom.evolution import change_key
    from flamingo_lib.data.phantom.render import severity_level

    levels: dict[str, float] = {}
    for finding in findings:
        observation = observation_of(change_key(finding))
        if observation is not None and finding.severity is not None:
            levels[observation] = max(levels.get(observation, 0.0), severity_level(finding.severity) / 2)
    return levels


def head_reading(model: Any, processor: Any, images: Sequence[Any], threshold: float = 0.5
                 ) -> tuple[set[str], dict[str, float]]:
    """From one resampling of a study's films: the observations the findings head puts above
    ``threshold``, and observation -> the severity head's reading (0-1; empty without that head)."""
    with torch.no_grad():
        features = model.resolve_visual_features(pixel_values=processor.preprocess_images(images)[None])
        probabilities = model.predict_findings(visual_features=features)
        severity = model.predict_severity(visual_features=features) if model.config.severity_head else {}
    present_now = {o for o, p in probabilities.items() if float(p[0]) > threshold}
    return present_now, {o: float(v[0]) for o, v in severity.items()}


def moved_between(now: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Observation -> severity now minus before, over the observations both give."""
    return {o: now[o] - before[o] for o in now if o in before}


def stated_reports(verdicts: Sequence[tuple[Any, ...]], truths: Sequence[Mapping[str, str]]
                   ) -> list[dict[str, str]]:
    """Per follow-up, the changes a reader of the (now, before[, moved]) verdicts states for its true pairs."""
    return [verdict_changes(*verdict[:2], list(truth), *verdict[2:]) for verdict, truth in zip(verdicts, truths)]


def accuracy_of(stated: Sequence[Mapping[str, str]], truths: Sequence[Mapping[str, str]]) -> float:
    """The share of true (study, finding) changes stated as they are, counted as ``change_accuracy`` counts."""
    from flamingo_lib.labeling.changes import statement_accuracy

    return statement_accuracy(stated, truths)["accuracy"]


def change_guided_choice(candidates: Any, verdicts: Sequence[tuple[Any, ...]]) -> list[str]:
    """Per study, the candidate whose stated changes agree most with its (now, before[, moved]) verdict
    (:func:`agreement`), ties to guided decoding's findings score at threshold 0.5, then the earliest."""
    from flamingo_lib.inference.guided_decoding import findings_scores
    from flamingo_lib.labeling.changes import change_statements

    picked = []
    for options, stated, belief, verdict in zip(candidates.reports, candidates.stated, candidates.belief, verdicts):
        findings = findings_scores(stated, belief, 0.5)
        keys = [(agreement(change_statements(text), *verdict), float(findings[i]), -i)
                for i, text in enumerate(options)]
        picked.append(options[max(range(len(options)), key=keys.__getitem__)])
    return picked


def oracle_choice(candidates: Any, truths: Sequence[Mapping[str, str]]) -> list[str]:
    """Per study, the candidate stating the most true changes (ties to the earliest)."""
    from flamingo_lib.labeling.changes import change_statements

    picked = []
    for options, truth in zip(candidates.reports, truths):
        right = [sum(change_statements(text).get(f) == c for f, c in truth.items()) for text in options]
        picked.append(options[max(range(len(options)), key=lambda i: (right[i], -i))])
    return picked


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from experiments.clinical_context import findings_f1
    from flamingo_lib.data.sources import open_source
    from flamingo_lib.inference.guided_decoding import sample_candidates
    from flamingo_lib.labeling.changes import change_accuracy, change_statements
    from flamingo_lib.pipeline.steps import Pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run trained with the prior findings tokens on phantom:longitudinal")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args(argv)
    pipeline = Pipeline.from_run(args.run_dir, progress=False)
    model, processor = pipeline.model_and_processor
    model.eval()
    d = pipeline.settings.data
    data = open_source(d.source, args.split, d.image_size, 250, seed=pipeline.settings.train.seed)
    follow_ups = [s for s in (data[i] for i in range(len(data))) if s.prior is not None and s.meta["changes"]]
    truths = [s.meta["changes"] for s in follow_ups]
    readings = [(head_reading(model, processor, s.images), head_reading(model, processor, s.prior.images))
                for s in follow_ups]
    verdicts = [(now[0], before[0]) for now, before in readings]
    presence = [(present(s.findings), present(s.prior.findings)) for s in follow_ups]
    sized = [p + (moved_between(true_severity(s.findings), true_severity(s.prior.findings)),)
             for p, s in zip(presence, follow_ups)]
    rows = [{"system": "true presence, stated exactly", "change accuracy": accuracy_of(stated_reports(presence, truths),
                                                                                       truths)},
            {"system": "true presence and severity, stated exactly",
             "change accuracy": accuracy_of(stated_reports(sized, truths), truths)},
            {"system": "heads' verdict, stated exactly", "change accuracy": accuracy_of(stated_reports(verdicts, truths),
                                                                                        truths)}]
    if model.config.severity_head:
        verdicts = [v + (moved_between(now[1], before[1]),) for v, (now, before) in zip(verdicts, readings)]
        rows.append({"system": "heads' verdict and severity, stated exactly",
                     "change accuracy": accuracy_of(stated_reports(verdicts, truths), truths)})
    candidates = sample_candidates(model, processor, follow_ups, num_candidates=args.candidates,
                                   temperature=args.temperature)
    for name, reports in (("greedy", [options[0] for options in candidates.reports]),
                          ("change-guided", change_guided_choice(candidates, verdicts)),
                          (f"best of the {1 + args.candidates} candidates (oracle)", oracle_choice(candidates, truths))):
        scored = change_accuracy(reports, truths)
        rows.append({"system": name, "change accuracy": scored["accuracy"],
                     **{f"{c}": f"{v['correct']}/{v['n']}" for c, v in scored["per_change"].items()},
                     "unstated": scored["unstated"], **findings_f1(reports, follow_ups)})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    print(f"{len(follow_ups)} follow-ups of the {args.split} split, {sum(map(len, truths))} changes")
    print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
