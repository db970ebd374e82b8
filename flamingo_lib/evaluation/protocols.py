"""The field's two published evaluation protocols, so a run's numbers can sit in their tables.

* ``r2gen``: Chen et al. (2020), "Generating Radiology Reports via Memory-driven Transformer".
  R2Gen's ``annotation.json`` test list (the findings text), references and every system's
  report cleaned the way R2Gen's tokenizer cleans them, mapped through the vocabulary it builds
  from the annotation's train list (words seen fewer than ``threshold`` times become ``<unk>``),
  and cut to the lengths its dataset and decoder allow; pycocoevalcap BLEU-1..4, METEOR,
  ROUGE-L (and CIDEr).
* ``rexrank``: the ReXrank leaderboard's MIMIC-CXR findings track: the FINDINGS section of
  the official test split, texts left as written (MIMIC's ``___`` de-identification marks
  included), scored with the leaderboard's metric set through RadEval.

:func:`prepare` checks that a source can satisfy a protocol (refusing it by name otherwise) and
returns what :func:`flamingo_lib.cli.evaluate_on.evaluate_on` scores: the test samples with their
references in the protocol's form, the training samples (the baselines' reports) and a
processor whose generated text comes out in that form too, plus the record written as
``protocol.json`` beside ``results.csv``. Nothing in the scoring itself changes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamingo_lib.io import write_json_atomic

PROTOCOLS = ("r2gen", "rexrank")
UNKNOWN = "<unk>"

#: R2Gen's two cleaners differ only in what they do before splitting into sentences: each step is
#: (old, new, passes); ``str.replace`` a fixed number of times, as R2Gen does, not to a fixed
#: point (a run of 2**passes or more "  " would keep a double space, and R2Gen's would too).
_NUMBERING = (("1. ", "", 1), (". 2. ", ". ", 1), (". 3. ", ". ", 1), (". 4. ", ". ", 1), (". 5. ", ". ", 1),
              (" 2. ", ". ", 1), (" 3. ", ". ", 1), (" 4. ", ". ", 1), (" 5. ", ". ", 1))
_MIMIC_STEPS = (("\n", " ", 1), ("__", "_", 7), ("  ", " ", 6), ("..", ".", 8), *_NUMBERING)
_IU_STEPS = (("..", ".", 3), *_NUMBERING)
#: The characters R2Gen deletes from a sentence. Its character class holds ``:-\[``, a *range*
#: from ':' to '[' (":;<=>?@", A-Z, "["), so those go too while the hyphen itself stays.
_DELETED = re.compile(r"[.,?;*!%^&_+()\]{}\x3a-\x5b]")


def r2gen_clean(text: str, flavour: str = "mimic_cxr") -> str:
    """``text`` as R2Gen's tokenizer cleans it (``clean_report_mimic_cxr`` / ``clean_report_iu_xray``),
    as the space-separated tokens its tokenizer then splits it into.

    Lower-cased; sentences split at ". " after the step table above; in each sentence ``"``, ``/``,
    ``\\`` and ``'`` dropped, then the characters of ``_DELETED`` (so ``___`` vanishes); the
    sentences joined by " . " with a final " ." (empty ones kept, as R2Gen keeps them).
    """
    steps = {"mimic_cxr": _MIMIC_STEPS, "iu_xray": _IU_STEPS}[flavour]
    for old, new, passes in steps:
        for _ in range(passes):
            text = text.replace(old, new)
    sentences = text.strip().lower().split(". ")
    cleaned = [_DELETED.sub("", s.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower())
               for s in sentences]
    return " ".join((" . ".join(cleaned) + " .").split())


@dataclass(frozen=True)
class R2GenText:
    """R2Gen's text pipeline for one flavour: clean, map rare words to ``<unk>``, truncate.

    Attributes:
        flavour: ``"mimic_cxr"`` or ``"iu_xray"``.
        max_seq_length: R2Gen's ``--max_seq_length`` (100 / 60).
        threshold: R2Gen's ``--threshold`` (10 / 3): the fewest sightings that keep a word.
        vocabulary: the words seen at least ``threshold`` times in the cleaned train reports.
    """

    flavour: str
    max_seq_length: int
    threshold: int
    vocabulary: frozenset[str]

    def tokens(self, text: str) -> list[str]:
        """The cleaned words of ``text``, those outside the vocabulary as ``<unk>``."""
        return [t if t in self.vocabulary else UNKNOWN for t in r2gen_clean(text, self.flavour).split()]

    def reference(self, text: str) -> str:
        """R2Gen's ground truth: its dataset keeps ``max_seq_length`` ids *with* the leading
        <bos>, and the tester drops that id, so ``max_seq_length - 1`` words remain."""
        return " ".join(self.tokens(text)[: self.max_seq_length - 1])

    def hypothesis(self, text: str) -> str:
        """A generated report as R2Gen's decoder could have written it: its words only (others
        ``<unk>``), at most ``max_seq_length`` of them (its sampling loop's bound)."""
        return " ".join(self.tokens(text)[: self.max_seq_length])


#: R2Gen's settings per flavour (its train_*.sh scripts): max_seq_length, threshold.
R2GEN_SETTINGS = {"mimic_cxr": (100, 10), "iu_xray": (60, 3)}
#: The ReXrank leaderboard's metrics under RadEval's names (SembScore has no RadEval name here:
#: f1chexbert, CheXbert's labels, is its nearest).
REXRANK_METRICS = ("bleu", "bertscore", "radgraph", "f1chexbert", "ratescore", "radcliq", "green")


class ProtocolError(ValueError):
    """A source, split or file that cannot satisfy the protocol asked for."""


@dataclass
class Prepared:
    """What a protocol hands the evaluation (:func:`prepare`)."""

    name: str
    test: list[Any]
    train: Sequence[Any]
    hypothesis: Callable[[str], str]
    metrics: tuple[str, ...]
    record: dict[str, Any] = field(default_factory=dict)

    def processor(self, processor: Any) -> Any:
        """``processor`` whose generated reports come out in the protocol's form."""
        return processor if self.hypothesis is _as_written else _HypothesisProcessor(processor, self.hypothesis)

    def write(self, out_dir: str | Path, table: Any) -> dict[str, Any]:
        """``protocol.json`` in ``out_dir`` (atomically), naming what could not be computed."""
        missing = dict(table.attrs.get("not_computed", {}))
        if "METEOR" in table and table["METEOR"].isna().all():
            missing["METEOR"] = "no Java runtime (pycocoevalcap's METEOR jar needs one)"
        record = self.record | {"not_computed": missing}
        write_json_atomic(Path(out_dir) / "protocol.json", record, indent=2)
        return record


def _as_written(text: str) -> str:
    return text


class _HypothesisProcessor:
    """A processor whose ``remove_tags`` (the last step of every generated report) also puts the
    text in the protocol's form; everything else is the wrapped processor's."""

    def __init__(self, processor: Any, hypothesis: Callable[[str], str]) -> None:
        self._processor, self._hypothesis = processor, hypothesis

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._processor(*args, **kwargs)

    def remove_tags(self, text: str) -> str:
        return self._hypothesis(self._processor.remove_tags(text))


class _TrainReports:
    """The training split with its ``reports`` (the baselines' texts) in the protocol's form;
    samples (the films the nearest neighbour reads) pass through unchanged."""

    def __init__(self, dataset: Sequence[Any], hypothesis: Callable[[str], str]) -> None:
        self.dataset, self.hypothesis = dataset, hypothesis

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    @property
    def reports(self) -> list[str]:
        from flamingo_lib.data.study_index import study_reports

        return [self.hypothesis(r) for r in study_reports(self.dataset)]

    @property
    def image_counts(self) -> list[int]:
        from flamingo_lib.data.study_index import image_counts

        return image_counts(self.dataset)


def _parse(spec: str) -> tuple[str, list[str]]:
    kind, _, rest = spec.partition(";")[0].partition(":")
    return kind, [p for p in rest.split(",") if p]


def prepare(name: str, spec: str, split: str, test: Sequence[Any], train: Sequence[Any],
            max_samples: int | None = None) -> Prepared:
    """The protocol ``name`` on the ``split`` of source ``spec`` (``test``: its samples).

    Raises:
        ProtocolError: the source, split or annotation cannot satisfy the protocol, said by name.
    """
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if split != "test":
        raise ProtocolError(f"the {name} protocol scores the official test split; got --split {split}")
    samples = [test[i] for i in range(len(test))]
    if not samples:
        raise ProtocolError(f"{spec}: the test split is empty; the {name} protocol needs its studies")
    deviations = [f"--max-samples {max_samples}: only the test split's first {len(samples)} of its studies were "
                  "scored"] if max_samples is not None else []
    if name == "r2gen":
        return _r2gen(spec, samples, train, deviations)
    return _rexrank(spec, samples, train, deviations)


def _r2gen(spec: str, samples: list[Any], train: Sequence[Any], deviations: list[str]) -> Prepared:
    kind, paths = _parse(spec)
    if kind != "r2gen":
        raise ProtocolError(f"the r2gen protocol scores the test list of R2Gen's annotation.json: --data must be "
                            f"r2gen:ANNOTATION_JSON,IMAGE_ROOT, got {spec!r} (a {kind} source has no R2Gen split)")
    path = Path(paths[0])
    data = json.loads(path.read_text(encoding="utf-8"))  # the source already read it: it parses
    if not isinstance(data.get("train"), list) or not data["train"]:
        raise ProtocolError(f"{path}: field 'train': expected a non-empty list (R2Gen builds its vocabulary from "
                            f"it), got {type(data.get('train')).__name__} of {len(data.get('train') or [])}")
    sources = {s.meta.get("source") for s in samples}
    flavours = {"r2gen-mimic-cxr": "mimic_cxr", "r2gen-iu-xray": "iu_xray"}
    if len(sources) != 1 or not sources <= set(flavours):
        raise ProtocolError(f"{path}: test entries must all be MIMIC-CXR or all IU X-Ray (R2Gen's cleaning and lengths "
                            f"differ), got {sorted(map(str, sources))}")
    flavour = flavours[sources.pop()]
    max_seq_length, threshold = R2GEN_SETTINGS[flavour]
    counts = Counter(t for entry in data["train"] for t in r2gen_clean(str(entry.get("report", "")), flavour).split())
    text = R2GenText(flavour, max_seq_length, threshold, frozenset(w for w, n in counts.items() if n >= threshold))
    entries = data["test"]
    references = []
    for i, sample in enumerate(samples):  # the raw text: R2Gen cleans the annotation's, not our tidied one
        if str(entries[i].get("id")) != sample.id:
            raise ProtocolError(f"{path}: test entry {i}: expected id {sample.id!r}, got {entries[i].get('id')!r}")
        references.append(text.reference(entries[i]["report"]))
    record = {
        "protocol": "r2gen",
        "reference": "Chen et al. 2020, Generating Radiology Reports via Memory-driven Transformer",
        "data": spec, "dataset": {"mimic_cxr": "MIMIC-CXR", "iu_xray": "IU X-Ray"}[flavour] + " (R2Gen annotation)",
        "split": "test: the annotation's 'test' list, R2Gen's official split", "n_test": len(samples),
        "section": "FINDINGS: the annotation's 'report' field (R2Gen's findings text)",
        "text_normalisation": f"R2Gen's clean_report_{flavour}: lower-cased, numbering and doubled marks removed, "
                              "split into sentences at '. ', quotes, slashes and the characters .,?;*!%^&_+()]{} "
                              "and ':' to '[' (so '___') deleted, sentences joined by ' . ' ending ' .'; applied "
                              "to the references and to every system's report alike",
        "vocabulary": {"threshold": threshold, "built_from": "the annotation's 'train' reports, cleaned",
                       "size": len(text.vocabulary), "unknown_token": UNKNOWN,
                       "applied_to": "references and every system's report: R2Gen's ground truths hold <unk> for "
                                     "rare words, and its decoder can write only vocabulary words or <unk>"},
        "truncation": {"max_seq_length": max_seq_length, "reference_words": max_seq_length - 1,
                       "report_words": max_seq_length},
        "metrics": ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"],
        "metric_notes": "pycocoevalcap on the cleaned texts, one reference per entry, no PTB tokenizer (as R2Gen); "
                        "CIDEr added (R2Gen reports none)",
        "deviations": deviations,
    }
    return Prepared("r2gen", [dataclasses.replace(s, report=r) for s, r in zip(samples, references)],
                    _TrainReports(train, text.hypothesis), text.hypothesis, (), record)


def _rexrank(spec: str, samples: list[Any], train: Sequence[Any], deviations: list[str]) -> Prepared:
    kind, _ = _parse(spec)
    mimic = kind == "mimic" or (kind == "r2gen" and all(s.meta.get("source") == "r2gen-mimic-cxr" for s in samples))
    if not mimic:
        raise ProtocolError(f"the rexrank protocol (MIMIC-CXR findings) needs MIMIC-CXR's official test split: --data "
                            f"mimic:ROOT or an R2Gen MIMIC-CXR annotation, got {spec!r}")
    kept = [s for s in samples if (s.sections.get("FINDINGS") or "").strip()]
    if not kept:
        raise ProtocolError(f"{spec}: none of the {len(samples)} test studies has a FINDINGS section")
    if kind == "r2gen":
        deviations.append("R2Gen's MIMIC-CXR annotation has one entry per film, so a study with several films is "
                          "scored once per film; ReXrank scores each study once, from all its films")
    record = {
        "protocol": "rexrank", "reference": "ReXrank leaderboard (Zhang et al. 2024), MIMIC-CXR, findings track",
        "data": spec, "dataset": "MIMIC-CXR", "split": "test: MIMIC-CXR's official split", "n_test": len(kept),
        "n_excluded_without_findings": len(samples) - len(kept),
        "section": "FINDINGS only (studies without one are left out; no IMPRESSION fallback)",
        "text_normalisation": "none: references and reports are scored as written (whitespace runs collapsed to "
                              "one space by the report reader); MIMIC's '___' de-identification marks stay in the "
                              "references verbatim, as in ReXrank's test set",
        "truncation": None,
        "metrics": list(REXRANK_METRICS),
        "metric_notes": "RadEval's implementations; ReXrank's BLEU is BLEU-2 (RadEval's 'bleu' is BLEU-4), it ranks "
                        "by 1/RadCliQ-v1 (RadEval's 'radcliq' is RadCliQ-v1 itself), and its SembScore (CheXbert "
                        "embedding cosine) is stood in for by f1chexbert; model-based metrics "
                        "whose weights are not cached are listed under not_computed. pycocoevalcap's BLEU, METEOR, "
                        "ROUGE-L, CIDEr and the offline labeler's clinical efficacy are reported beside them",
        "deviations": deviations,
    }
    test = [dataclasses.replace(s, report=s.sections["FINDINGS"].strip()) for s in kept]
    return Prepared("rexrank", test, train, _as_written, REXRANK_METRICS, record)
