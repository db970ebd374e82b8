"""Which findings does the generated text follow? Per-observation sensitivity of sampled reports.

Greedy decoding hides what a report generator knows: it names a finding only when that
finding's phrasing beats every normal phrasing, so a model whose text moves with the image for
a finding, but not far enough to win the argmax, scores exactly like a model that ignores the
image. Sampling shows the difference. For every study, ``num_samples`` reports are sampled
(temperature 1, no truncation: the model's own distribution) and read by the labeler; the
*mention rate* of an observation is the fraction of a study's samples that state it positive.

Per observation, the AUROC of the mention rate against the truth then says whether the model's
text depends on the image for that finding at all: 0.5 means it writes the finding as often for
films without it as for films with it (it follows the text prior only), 1.0 that every film
with the finding gets it mentioned more often than every film without. The truth is the image
truth on phantom data, or the labeler's reading of the reference report on real data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from flamingo_lib.inference.batched import generate_in_batches
from flamingo_lib.encoders.pretraining.probe import auroc

Labels = Mapping[str, Any]

#: A finding counts as followed by the text when its mention rate separates the studies with it
#: from those without at this AUROC or above.
FOLLOWED_AUROC = 0.7


@torch.no_grad()
def sampled_mention_rates(model: Any, processor: Any, samples: Sequence[Any], observations: Sequence[str],
                          num_samples: int = 16, labeler: Callable[[str], Labels] | None = None,
                          batch_size: int = 4, max_new_tokens: int = 60, seed: int = 0,
                          progress: bool = True) -> pd.DataFrame:
    """For each study, the fraction of ``num_samples`` sampled reports that state each observation.

    Args:
        samples: ``CXRSample``-like objects (``.id``, ``.images``).
        observations: the observations to read (e.g. ``RENDERED_OBSERVATIONS``).
        labeler: report text -> labels (1.0 = positive); defaults to the rule-based labeler.
        seed: sampling seed; the global RNG state is restored afterwards.

    Returns:
        a DataFrame indexed by study id, one column per observation, values in [0, 1].

    Raises:
        ValueError: ``num_samples`` < 1 or no samples.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if len(samples) == 0:
        raise ValueError("no samples to read")
    if labeler is None:
        from flamingo_lib.labeling.labeler import label_report as labeler
    devices = [next(model.parameters()).device] if next(model.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        texts = generate_in_batches(model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    progress=progress, desc="sampling reports", do_sample=True, top_k=0, top_p=1.0,
                                    temperature=1.0, num_return_sequences=num_samples).reports
    rows: dict[str, list[float]] = {}
    for i in range(len(samples)):
        read = [labeler(t) for t in texts[i * num_samples:(i + 1) * num_samples]]
        rows[samples[i].id] = [sum(r.get(obs) == 1.0 for r in read) / num_samples for obs in observations]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(observations))
    frame.index.name = "id"
    return frame


def _present(truth: Sequence[Labels], observation: str) -> tuple[torch.Tensor, bool]:
    """(N,) bool: the studies that have ``observation`` (positive = 1.0); and whether both classes
    occur (else an AUROC is undefined)."""
    present = torch.tensor([t.get(observation) == 1.0 for t in truth])
    return present, 0 < int(present.sum()) < len(present)


def finding_usage(mention_rates: pd.DataFrame, truth: Sequence[Labels]) -> pd.DataFrame:
    """Per observation: how many studies have it, and how well the mention rate separates them.

    Args:
        mention_rates: :func:`sampled_mention_rates` output (N studies x observations).
        truth: N label dicts in the same order (positive = 1.0).

    Returns:
        a DataFrame indexed by observation: ``positives``, ``AUROC`` (NaN when every study or
        none has it), ``rate | present`` and ``rate | absent`` (mean mention rates).

    Raises:
        ValueError: ``truth`` and ``mention_rates`` differ in length.
    """
    if len(truth) != len(mention_rates):
        raise ValueError(f"{len(mention_rates)} studies of mention rates but {len(truth)} truth label sets")
    rows = {}
    for obs in mention_rates.columns:
        present, both = _present(truth, obs)
        rate = torch.tensor(mention_rates[obs].to_numpy(), dtype=torch.float64)
        n_pos = int(present.sum())
        rows[obs] = {
            "positives": n_pos,
            "AUROC": auroc(rate, present) if both else float("nan"),
            "rate | present": float(rate[present].mean()) if n_pos else float("nan"),
            "rate | absent": float(rate[~present].mean()) if n_pos < len(present) else float("nan"),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "observation"
    return table


def classifier_auroc(probabilities: Mapping[str, torch.Tensor], truth: Sequence[Labels],
                     observations: Sequence[str]) -> pd.Series:
    """Per observation, the AUROC of a classifier's probabilities (e.g. the findings head's,
    :meth:`FlamingoModel.predict_findings`) against the truth: what the visual features carry,
    to set beside what the text follows. NaN where the classifier lacks the observation or the
    truth holds one class only."""
    values = {}
    for obs in observations:
        present, both = _present(truth, obs)
        defined = both and obs in probabilities
        values[obs] = auroc(probabilities[obs].double().cpu(), present) if defined else float("nan")
    return pd.Series(values, name="classifier AUROC")


def finding_usage_figure(table: pd.DataFrame, title: str = "", followed_auroc: float = FOLLOWED_AUROC) -> Figure:
    """Horizontal bars of each observation's mention-rate AUROC, chance (0.5) marked; bars at
    ``followed_auroc`` or above in green."""
    shown = table.dropna(subset=["AUROC"])
    figure = Figure(figsize=(5.5, 0.3 * len(shown) + 1.6), layout="constrained")
    ax = figure.subplots()
    labels = [f"{obs} (n={int(n)})" for obs, n in zip(shown.index, shown["positives"])]
    ax.barh(labels, shown["AUROC"], color=["#2a7" if a >= followed_auroc else "#bbb" for a in shown["AUROC"]],
            label="the text (sampled reports)")
    if "classifier AUROC" in shown:  # what the visual features carry, for comparison
        ax.plot(shown["classifier AUROC"], labels, "k|", markersize=14, mew=2, label="findings head")
    ax.axvline(0.5, color="k", ls="--", lw=1, label="chance")
    ax.set_xlim(0, 1.02)  # a tick at 1.0 stays visible
    ax.invert_yaxis()
    ax.set_xlabel("AUROC against the truth")
    ax.set_title(title or "Does the report follow the image? (per finding)")
    figure.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)  # clear of the bars
    return figure
