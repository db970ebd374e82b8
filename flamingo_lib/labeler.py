"""An offline, rule-based CheXpert-style labeler for chest X-ray reports.

``label_report`` maps a report to the 14 CheXpert observations: 1.0 positive, 0.0 negative,
-1.0 uncertain, ``None`` not mentioned. The phrase lists are our own. It works sentence by
sentence (full stops, new lines, numbered items) and clause by clause:

1. Mentions of each observation are found with :data:`MENTIONS`.
2. Each mention is graded by the nearest cue before it in its clause, a negation or an
   uncertainty (:data:`NEGATION_PRE`, :data:`UNCERTAINTY_PRE`) at most :data:`SCOPE_WORDS`
   words away; a list carries the cue of its first item along while items stay within
   :data:`CHAIN_WORDS` words of each other, so "no consolidation, suspicious opacity, large
   effusion, or pneumothorax" negates all four. A cue just after the mention also counts
   (:data:`NEGATION_POST`, :data:`UNCERTAINTY_POST`: "is not seen", "cannot be excluded"), and
   so does one inside a predicate mention ("the heart is not enlarged"). Uncertainty beats
   negation. Clauses end at ";", ":", "but", "however", ... (:data:`SCOPE_BREAKS`), so no scope
   crosses them. Look-alikes such as "no change" or "age-indeterminate" are masked first
   (:data:`PSEUDO_NEGATION`). "To suggest" and kin (:data:`SUGGESTION`) are uncertain unless a
   negation governs them: "no consolidation to suggest pneumonia" negates pneumonia.
3. Normal statements ("heart size is normal", "lungs are clear") give 0.0 (:data:`NORMALS`).
4. Mentions are aggregated as the CheXpert labeler's aggregator does: any positive mention
   wins, else any uncertain one, else negative.
5. "No Finding" is derived as CheXpert derives it: 1.0 when no observation other than Support
   Devices is positive or uncertain, else ``None`` (CheXpert never writes 0 there). A text with
   no words at all gets ``None`` everywhere.

Choices of our own: "borderline" cardiomegaly is a degree, hence positive (as the IU MeSH
annotators and :class:`~flamingo_lib.data.sample.Finding` severities treat it), not a hedge;
and unlike the CheXpert labeler we add no uncertain Cardiomegaly for "heart failure", which
speaks of the lungs' congestion (Edema here), not of the heart's size on the film.

De-identification tokens (``XXXX`` in IU reports) stay plain words: they never match a phrase
and count as one word of scope, so "no XXXX of pleural effusion" is still negated.

``label_reports(..., backend="chexbert")`` runs CheXbert through the ``f1chexbert`` package
when it and its weights are already on this machine; it never downloads.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Label

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

# Lesions and densities of bone or skin are not in the lung.
_NOT_BONE = "".join(
    f"(?<!{w} )" for w in ("bone", "bony", "osseous", "lytic", "lucent", "sclerotic", "skin")
)
# A predicate mention: a subject, up to four words, then a state ("heart size is mildly enlarged").
_THEN = r"(?: [\w-]+){0,4} "

#: Mention phrases (regular expressions, matched on lower-cased text between word boundaries).
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:widen\w*|prominen\w*|enlarge\w*|fullness) (?:of )?(?:the )?"
        r"(?:superior |upper |right |left )?(?:mediastin\w*|paratracheal \w+)",
        r"mediastin(?:um|al) (?:widening|enlargement|prominence)",
        # The right paratracheal stripe is the mediastinum's right border.
        r"paratracheal (?:prominence|fullness|widening|soft tissues? (?:prominence|fullness))",
        r"(?:enlarged|prominent|wide) (?:superior )?(?:cardio)?mediastin(?:um|al(?: \w+)?)",
        r"(?:cardio)?mediastin(?:um|al(?: silhouette| contours?| width)?)"
        + _THEN
        + r"(?:widened|enlarged|prominent|wide)",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac (?:enlargement|hypertrophy)",
        r"(?:enlarged|large|prominent|borderline) (?:\w+ )?(?:heart|cardiac (?:silhouette|shadow|size))",
        r"(?:heart|cardiac)(?: size| silhouette| shadow| contours?)?"
        + _THEN
        + r"(?:enlarged|large|prominent|increased|borderline)",
    ),
    "Lung Opacity": (
        r"opaci(?:ty|ties|fication|fications|fied)",
        _NOT_BONE + r"densit(?:y|ies)",
        r"infiltrat(?:e|es|ion|ions|ive)",
        r"air[- ]?space (?:disease|process|opaci\w*|filling)",
        r"interstitial (?:markings?|opaci\w*|prominence|pattern|changes?|disease|thickening|infiltrat\w*)",
        r"reticula(?:r|tion)|reticulonodular",
        r"haz(?:y|iness)|ground[- ]glass",
        r"(?<!pleural )scar(?:s|ring|red)?",
        r"fibros(?:is|tic)|fibrotic",
    ),
    "Lung Lesion": (
        # "Nodular" alone describes a shape ("nodular opacity"), as MeSH's "round" does.
        r"nodules?",
        r"mass(?:es)?(?! effect)",
        _NOT_BONE + r"lesions?",
        r"granulomas?|granulomata|granulomatous (?:calcifications?|nodules?)",
        r"tumou?rs?|neoplas(?:m|ms|tic)|carcinoma|malignan(?:cy|t)|metasta(?:sis|ses|tic)",
        r"cavit(?:y|ies|ary)",
    ),
    "Edema": (
        r"(?<!laryngeal )(?<!tissue )edema",
        r"(?:vascular|venous|pulmonary) (?:congestion|engorgement|redistribution|prominence)",
        r"congest(?:ion|ive)|(?:heart|cardiac) failure|chf|pulmonary venous hypertension",
        r"cephalization|kerley|fluid overload|engorged",
        # Prominent or engorged pulmonary vessels: venous congestion, the first stage of edema.
        r"(?:prominen\w*|increased|engorged|indistinct\w*) (?:of )?(?:the )?(?:\w+ ){0,2}"
        r"(?:vascularity|vasculature|vessels)",
        r"(?:vascularity|vasculature|vessels)" + _THEN + r"(?:prominent|engorged|increased|indistinct)",
    ),
    "Consolidation": (r"consolidat(?:ion|ions|ive|ed|ing)",),
    "Pneumonia": (
        r"(?:broncho)?pneumonias?|pneumonitis",
        # "Prior granulomatous infection" is the healed sequela, not an active infection.
        r"(?<!granulomatous )(?<!tuberculosis )infect(?:ion|ions|ious|ed)",
    ),
    "Atelectasis": (
        r"atelecta(?:sis|ses|tic)",
        r"(?:lung|lobe|lobar|segmental) collapse|collapse of (?:the |a )?(?:[\w-]+ ){0,4}(?:lungs?|lobes?)",
    ),
    "Pneumothorax": (r"(?:hydro|hemo)?pneumothora(?:x|ces)",),
    "Pleural Effusion": (
        r"(?<!pericardial )effusions?",
        r"pleural fluid|(?:hydro|hemo)thorax|hydropneumothorax",
        r"blunt(?:ed|ing)(?: [\w-]+){0,4} costophrenic",
        r"costophrenic(?: [\w-]+){0,3} blunt(?:ed|ing)",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|scar\w*|calcifications?|fibrosis)",
        r"(?:thickened|thickening of the) pleura",
        # The fissures are folds of pleura.
        r"(?:fissural|fissure) thickening|thickening (?:of|in) the (?:\w+ )?fissures?",
        r"thickened (?:\w+ )?fissures?",
        r"apical (?:pleural )?(?:cap|capping|thickening)|fibrothorax",
    ),
    "Fracture": (r"fractur(?:e|es|ed)|fx",),
    "Support Devices": (
        r"(?:picc|central|venous|arterial|port|swan[- ]ganz|dialysis|jugular|subclavian) (?:line|catheter)s?",
        r"catheters?|picc|port-?a-?cath|portacath|(?:chest|infusion|power) port",
        r"(?:lines and tubes|tubes and lines|monitoring (?:leads|lines))",
        r"tubes?",
        r"pacemakers?|pacers?|defibrillators?|a?icd|leads|(?:pacing|pacer|cardiac) (?:lead|wires?)",
        r"tips?",  # the tip of a line or tube, often the only trace left by de-identification
        r"generator|devices?|stents?|loop recorder|(?:nerve|spinal cord) stimulator",
        r"(?:prosthetic|mechanical) (?:aortic |mitral )?valves?|valve (?:replacement|prosthesis)",
        r"annuloplasty|clips?|sutures?|staples?|(?:sternotomy|sternal|cerclage) wires?",
        r"hardware|prosthes(?:is|es)|arthroplasty|screws?|ivc filter|coils?|electrodes?|drains?",
    ),
}

#: Statements that an observation is absent although they carry no negation word.
NORMALS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"(?:heart|cardiac|cardiomediastinal)(?: size| silhouette| shadow| contours?)?"
        + _THEN
        + r"(?:normal|within normal limits|unremarkable)",
        r"normal(?:[- ]sized?)? (?:heart|cardiac|cardiomediastinal)",
    ),
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastin(?:um|al)(?: silhouette| contours?| width)?"
        + _THEN
        + r"(?:normal|within normal limits|unremarkable)",
        r"normal (?:cardio)?mediastin\w*",
    ),
    "Lung Opacity": (r"lungs? (?:\w+ ){0,3}clear|clear lungs?",),
    "Pleural Effusion": (r"costophrenic (?:angles?|sulci|recess\w*|xxxx)(?: \w+){0,3} (?:sharp|clear)",),
}
# "Upper limits of normal" reads as borderline enlargement, not as a normal heart.
_NOT_NORMAL = re.compile(r"\b(?:upper|high|top)\b")

#: Negation cues that govern the mentions after them.
NEGATION_PRE: tuple[str, ...] = (
    r"no evidence of|without evidence of|negative for|free of|clear of|absence of",
    r"resolution of|resolved|removal of|rather than|no|not|without|nor|neither",
)
#: Negation cues right after a mention ("pneumothorax is not seen", "effusion has resolved").
NEGATION_POST: tuple[str, ...] = (
    r"not|no longer|(?:has |have )?(?:resolved|cleared|been removed)|(?:is|are) absent",
    r"(?:is|are|appears?|remains?) (?:within (?:the )?(?:normal limits|limits of normal)|normal)",
)
#: Uncertainty cues that govern the mentions after them.
UNCERTAINTY_PRE: tuple[str, ...] = (
    r"can ?not (?:be )?(?:exclude[sd]?|rule[sd]? out)|can't (?:exclude|rule out)",
    r"possibl[ey]|probabl[ey]|may|might|could|questionabl[ey]|question(?: of)?|perhaps",
    r"suspicious (?:for|of)|suspect(?:ed)?|concern(?:ing)? for|worrisome for|likely",
    r"differential|equivocal|indeterminate|presum(?:ed|ably|ptive)",
    r"versus|vs|evaluate for|rule out|r/o|\?",
    r"correlat\w*(?: clinically)? (?:for|as to)|in the (?:appropriate )?clinical (?:setting|context)",
)
#: Uncertainty cues right after a mention.
UNCERTAINTY_POST: tuple[str, ...] = (
    r"(?:can ?not|can't|could not|not) (?:be )?(?:entirely |completely |definitely )?"
    r"(?:excluded|ruled out)",
    r"(?:is|are) (?:possible|suspected|questioned|likely|a consideration)|versus|vs|\?",
    r"(?:would be|is|are) (?:a |another )?consideration|(?:is )?in the differential",
    r"in the (?:appropriate )?clinical (?:setting|context)",
)
#: Cues that are uncertain alone but carry a preceding negation ("no X to suggest Y").
SUGGESTION: tuple[str, ...] = (r"to suggest|to indicate|suggest(?:s|ed|ing|ive of)?",)
#: Phrases that look like negations but are not.
PSEUDO_NEGATION: tuple[str, ...] = (
    r"no (?:significant |interval |appreciable |substantial |definite )?change",
    r"not (?:significantly |substantially )?changed|without (?:significant |interval )?change",
    r"not only",
    # Only the age is in doubt: the fracture itself is certain.
    r"age[- ]indeterminate|of indeterminate age",
)
#: Where a cue's scope ends inside a sentence.
SCOPE_BREAKS: tuple[str, ...] = (
    r"\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bexcept\b|\bwhereas\b|\bwhile\b",
    r"\b(?:apart|aside) from\b|\bwith the exception of\b|[:;]",
    r",? and (?=(?:the|there)\b)|,? (?=there (?:is|are)\b)",
)

#: Words a pre-cue's scope may cover before the first mention it governs.
SCOPE_WORDS = 6
#: Words that may separate two items of a list that share one cue.
CHAIN_WORDS = 4
#: Words a post-cue may sit after the mention it governs.
POST_WORDS = 4


def _alternation(phrases: Iterable[str]) -> str:
    return r"\b(?:" + "|".join(f"(?:{p})" for p in phrases) + r")(?!\w)"


_MENTION_RES = {obs: re.compile(_alternation(p)) for obs, p in MENTIONS.items()}
_NORMAL_RES = {obs: re.compile(_alternation(p)) for obs, p in NORMALS.items()}
# Uncertainty is tried first so that "cannot exclude" is not read as the negation "not".
_PRE_CUE_RE = re.compile(
    "(?P<unc>" + _alternation(UNCERTAINTY_PRE)
    + ")|(?P<sug>" + _alternation(SUGGESTION)
    + ")|(?P<neg>" + _alternation(NEGATION_PRE) + ")"
)
_POST_CUE_RE = re.compile(
    "(?P<unc>" + _alternation(UNCERTAINTY_POST) + ")|(?P<neg>" + _alternation(NEGATION_POST) + ")"
)
_PSEUDO_RE = re.compile(_alternation(PSEUDO_NEGATION))
_SCOPE_BREAK_RE = re.compile("|".join(SCOPE_BREAKS))
_IN_SPAN_NEG = re.compile(r"\b(?:not|no|without)\b")
_IN_SPAN_UNC = re.compile(r"\b(?:possibl[ey]|questionabl[ey]|may|might|could)\b")
# Sentence ends: a full stop before space or end (not a decimal point), "!", "?" kept as a cue,
# newlines, and numbered-list markers ("... disease 2. Cardiomegaly").
_SENTENCE_RE = re.compile(r"\.(?=\s|$)|!|\n+|\s\d{1,2}[.)]\s")
_WORD_RE = re.compile(r"[\w?]+")
_ADJACENT_ONLY = re.compile(r"versus|vs|\?")
_PREDICATE_OBSERVATIONS = frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum", "Edema"})
# (start, end, kind) of a cue in a clause; kind is "neg", "unc" or "sug".
_Cue = tuple[int, int, str]


def _words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _pre_kind(clause: str, cues: list[_Cue], start: int) -> str | None:
    """Kind of the nearest cue governing a mention at ``start``, or None."""
    before = [c for c in cues if c[1] <= start and _words(clause[c[1]:start]) <= SCOPE_WORDS]
    if not before:
        return None
    cue_start, _, kind = before[-1]
    if kind == "sug":
        governed = any(
            k == "neg" and e <= cue_start and _words(clause[e:cue_start]) <= SCOPE_WORDS
            for _, e, k in cues
        )
        kind = "neg" if governed else "unc"
    return kind


def _post_kind(clause: str, posts: list[_Cue], end: int) -> str | None:
    """Kind of a cue right after a mention ending at ``end``, or None."""
    after = [p for p in posts if p[0] >= end and _words(clause[end:p[0]]) <= POST_WORDS]
    if not after:
        return None
    cue_start, cue_end, kind = after[0]
    # "A versus B" hedges A only when the two are adjacent.
    if _ADJACENT_ONLY.fullmatch(clause[cue_start:cue_end]) and _words(clause[end:cue_start]):
        return None
    return kind


def _label_clause(clause: str, found: dict[str, list[float]]) -> None:
    masked = _PSEUDO_RE.sub(lambda m: " " * len(m.group()), clause)
    cues = [(m.start(), m.end(), m.lastgroup or "") for m in _PRE_CUE_RE.finditer(masked)]
    posts = [(m.start(), m.end(), m.lastgroup or "") for m in _POST_CUE_RE.finditer(masked)]
    mentions = sorted(
        (m.start(), m.end(), obs) for obs, regex in _MENTION_RES.items() for m in regex.finditer(masked)
    )
    chain: str | None = None
    chain_end = 0
    for start, end, obs in mentions:
        kind = _pre_kind(masked, cues, start)
        # A list carries its cue along: "no consolidation, suspicious opacity, large effusion,
        # or pneumothorax" negates every item however long the list grows.
        if kind is None and chain and _words(masked[chain_end:start]) <= CHAIN_WORDS:
            kind = chain
        chain, chain_end = kind, max(end, chain_end)
        kinds = {kind, _post_kind(masked, posts, end)}
        span = masked[start:end]
        # Predicate mentions ("the heart is not enlarged") hold their own cue.
        if " " in span and obs in _PREDICATE_OBSERVATIONS:
            kinds.add("neg" if _IN_SPAN_NEG.search(span) else None)
            kinds.add("unc" if _IN_SPAN_UNC.search(span) else None)
        grade = UNCERTAIN if "unc" in kinds else NEGATIVE if "neg" in kinds else POSITIVE
        found.setdefault(obs, []).append(grade)
    for obs, regex in _NORMAL_RES.items():
        for m in regex.finditer(masked):
            if not _NOT_NORMAL.search(m.group()):
                found.setdefault(obs, []).append(NEGATIVE)


def _aggregate(grades: list[float]) -> float:
    # CheXpert's rule: any positive mention wins, then any uncertain one, else negative.
    if POSITIVE in grades:
        return POSITIVE
    return UNCERTAIN if UNCERTAIN in grades else NEGATIVE


def label_report(text: str) -> dict[str, Label]:
    """Label one report with the 14 CheXpert observations.

    Args:
        text: report text (any case; ``XXXX`` de-identification tokens allowed).

    Returns:
        Observation -> 1.0 / 0.0 / -1.0 / ``None``, keyed by all of
        :data:`CHEXPERT_OBSERVATIONS` in order.

    Raises:
        TypeError: if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"report text must be a str, got {type(text).__name__}")
    # Collapse spaces but keep line breaks: a new line ends a sentence.
    lowered = re.sub(r"[^\S\n]+", " ", text.lower())
    labels: dict[str, Label] = dict.fromkeys(CHEXPERT_OBSERVATIONS)
    if not re.search(r"[a-z]", lowered.replace("xxxx", "")):
        return labels
    found: dict[str, list[float]] = {}
    for sentence in _SENTENCE_RE.split(lowered):
        for clause in _SCOPE_BREAK_RE.split(sentence):
            if clause and clause.strip():
                _label_clause(clause, found)
    for obs, grades in found.items():
        labels[obs] = _aggregate(grades)
    findings = [labels[o] for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    if not any(v in (POSITIVE, UNCERTAIN) for v in findings):
        labels["No Finding"] = POSITIVE
    return labels


#: Where f1chexbert fetches its weights from (we only ever read them from the local cache).
CHEXBERT_WEIGHTS = ("StanfordAIMI/RRG_scorers", "chexbert.pth")
#: The tokenizer/encoder f1chexbert builds CheXbert on.
CHEXBERT_ENCODER = ("bert-base-uncased", "config.json")


def _chexbert_labeler() -> object:
    """Build f1chexbert's labeler from local files only, or say exactly what is missing."""
    try:
        module = importlib.import_module("f1chexbert")
    except ImportError as err:
        raise RuntimeError(
            "backend='chexbert' needs the f1chexbert package, which is not importable here "
            f"({err}); install it and place its weights in the Hugging Face cache, or use "
            "backend='rules'."
        ) from err
    from huggingface_hub import try_to_load_from_cache

    missing = [
        f"{repo}/{name}"
        for repo, name in (CHEXBERT_WEIGHTS, CHEXBERT_ENCODER)
        if not isinstance(try_to_load_from_cache(repo, name), str)
    ]
    if missing:
        raise RuntimeError(
            "backend='chexbert' found f1chexbert but not its weights in the local Hugging Face "
            f"cache: missing {', '.join(missing)}. We never download them; fetch them "
            "beforehand or use backend='rules'."
        )
    # The weights are local: forbid any network call while the package loads them.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return module.F1CheXbert(device="cpu")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _chexbert_label(model: object, text: str) -> dict[str, Label]:
    out = model.get_label(text, mode="classification")  # type: ignore[attr-defined]
    # Releases differ: some return the labels alone, some (labels, embeddings).
    values = out[0] if isinstance(out, tuple) else out
    names = list(getattr(model, "target_names"))
    by_name = {n: (None if v == "" else float(v)) for n, v in zip(names, values, strict=True)}
    return {obs: by_name.get(obs) for obs in CHEXPERT_OBSERVATIONS}


def label_reports(texts: Iterable[str], backend: str = "rules") -> list[dict[str, Label]]:
    """Label many reports.

    Args:
        texts: report texts.
        backend: ``"rules"`` for :func:`label_report`, or ``"chexbert"`` for CheXbert via
            the ``f1chexbert`` package, which must be installed with its weights already in
            the local Hugging Face cache.

    Returns:
        One label dict per text, in order, as :func:`label_report` returns.

    Raises:
        ValueError: for an unknown backend.
        TypeError: if ``texts`` is a single string.
        RuntimeError: if the chexbert backend's package or weights are missing.
    """
    if isinstance(texts, str):
        raise TypeError("label_reports expects an iterable of texts, not a single str")
    if backend == "rules":
        return [label_report(t) for t in texts]
    if backend == "chexbert":
        model = _chexbert_labeler()
        return [_chexbert_label(model, t) for t in texts]
    raise ValueError(f"unknown labeler backend {backend!r}; use 'rules' or 'chexbert'")
