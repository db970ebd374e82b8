"""The phrase lists of :mod:`flamingo_lib.labeling.labeler`: what mentions each CheXpert observation,
what says it is normal, and the negation, uncertainty and scope cues around a mention.

Patterns are regular expressions matched on lower-cased text between word boundaries; the
labeler compiles them. Kept apart from the rules that apply them, so the vocabulary can be read
and extended on its own.
"""

from __future__ import annotations

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
        # "Nodular" alone describes a shape ("nodular contour", "reticulonodular"), but a nodular
        # density, opacity or opacification is a lesion: CheXpert's own mention list names them.
        r"nodules?",
        r"nodular (?:densit(?:y|ies)|opaci(?:ty|ties|fication))",
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
