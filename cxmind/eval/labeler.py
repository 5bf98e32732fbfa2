"""Rule-based CheXpert-14 labeler for free-text chest X-ray reports.

Clinical-efficacy metrics compare the findings a generated report asserts with those of the reference
report. This labeler extracts them in the spirit of the CheXpert/NegBio labelers, but self-contained
(regular expressions only, no parser or model), so it runs anywhere at thousands of reports per second.

Pipeline, per report:

1. Normalise: lowercase, drop IU X-ray de-identification masks (``XXXX``), collapse whitespace.
2. Split into sentences (``.`` not inside a number, ``?``, ``!``, newlines, list markers ``2.``). A
   sentence that ends in ``?`` asks about its findings: "Pneumonia?" -> -1.
3. Find mentions with one combined regex: a phrase list per finding (``cxmind.vocab`` synonyms plus
   CheXpert-style phrases) preceded by a *blocker* group for look-alikes that must not count
   ("pericardial effusion", "vertebral body collapse", "granulomatous infection", "lytic lesion").
   Two subjects ("heart size", "cardiac silhouette"; "mediastinum", "cardiomediastinal silhouette")
   are labeled by the qualifier that follows or precedes them in the clause: "heart size is normal"
   -> Cardiomegaly 0, "the heart is enlarged" -> 1, "borderline heart size" -> -1.
4. Find cues with a second combined regex (negation, uncertainty, pseudo-negation, scope terminators)
   and give each cue a scope inside its sentence:

   * forward cues ("no", "without", "clearing of", "possible", "suspected", "question of",
     "favoring", "maybe", "correlate clinically for", "evaluation for") reach to the next terminator
     ("but", "however", "although", "which", "with", "except", "other than", "there is", ";", or a
     comma that opens a new assertion such as ", mild ..." / ", the ...") or to the next cue of the
     other polarity ("no effusion, possible pneumonia"); "to suggest" and "suggestion of" do not end a
     negation ("no opacity to suggest pneumonia", "no suggestion of pneumothorax" negate);
   * backward cues ("is not seen", "has resolved", "have cleared", "is likely", "effusions
     suspected", "would be a consideration", "is in the differential", "may not be demonstrated")
     reach back to the previous terminator, cue or comma -- over a whole list before a plural verb
     ("consolidation, atelectasis, and effusion have cleared"); "within (the limits of) normal
     (limits)" negates only its own subject, the last item before it ("heart size and pulmonary
     vascular engorgement appear within limits of normal");
   * two-way cues ("cannot be excluded", "difficult to exclude", "versus", "unlikely", "in the
     appropriate clinical setting") do both;
   * pseudo-negations ("no change", "no interval change", "unchanged", "not well visualized") only
     stop "no"/"not" from reading as negation: "unchanged cardiomegaly" is positive.

Precedence. For one mention: negation beats uncertainty beats positive ("no opacity to suggest
pneumonia" -> 0; "cannot exclude effusion" -> -1; "opacity may represent atelectasis" -> the opacity
stays 1). Mentions of a finding combine as the CheXpert labeler does: positive if any mention is
positive, else uncertain if any is uncertain, else negative. *Signs* are indirect evidence:
costophrenic blunting for effusion; vascular congestion / redistribution / cephalization for edema
(CheXpert counts congestion as edema); volume loss for atelectasis; an enlarged cardiac silhouette or a
qualified heart/mediastinum subject for cardiomegaly / enlarged cardiomediastinum. The report's own
word on the finding decides over a sign: in a sentence that names the finding, the direct mention
decides ("blunting of the costophrenic sulcus could be an effusion versus scarring" -> effusion -1),
and a positive sign that the report denies is only uncertain ("Vascular congestion. No overt edema."
and "vascular congestion without overt edema" -> edema -1). Volume loss alone (mostly post-surgical or
fibrotic) and blunting that its sentence explains by scarring, pleural thickening or chronicity
("chronic blunting of the costophrenic angles") are uncertain, never positive.

"likely" is a hedge: uncertain by default (``likely_positive=True`` reads it as positive, as some
CheXpert labeler versions do). "or" alone is not a hedge; "versus"/"vs" is. ``uncertain_as`` maps
uncertain labels to 1 or 0 (CheXpert's U-Ones / U-Zeros policies) for callers that need binary labels.

Measured on the IU X-ray (OpenI) reports that torchxrayvision ships (findings + impression, 3,927
reports) against their human MeSH indexing, positives (label 1) over Cardiomegaly, Pleural Effusion,
Atelectasis ("Pulmonary Atelectasis"), Pneumothorax, Edema ("Pulmonary Edema"), Consolidation and
Pneumonia give micro-F1 0.907 (0.871 before the hedge/negation/sign rules above); most remaining
disagreements are convention, not phrasing: MeSH indexes "borderline cardiomegaly" and "X versus Y" as
present, and "vascular congestion" as Pulmonary Congestion (see ``tests/test_labeler.py``).

>>> label_report("No pleural effusion or pneumothorax.")
{'No Finding': 1, 'Pneumothorax': 0, 'Pleural Effusion': 0}
>>> label_report("Left basilar opacity may represent atelectasis or pneumonia.")
{'Lung Opacity': 1, 'Pneumonia': -1, 'Atelectasis': -1}
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cxmind.vocab import CHEXPERT_14, NO_FINDING, synonyms_of

__all__ = ["NEGATIVE", "POSITIVE", "UNCERTAIN", "label_report", "label_reports"]

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# Mentions of one finding combine as positive > uncertain > negative (the CheXpert aggregation).
_RANK = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}
_FINDINGS = tuple(name for name in CHEXPERT_14 if name != NO_FINDING)
# uncertain_as -> how an uncertain label is reported: kept, U-Ones, U-Zeros
_POLICIES: dict[int, dict[int, int]] = {
    UNCERTAIN: {},
    POSITIVE: {UNCERTAIN: POSITIVE},
    NEGATIVE: {UNCERTAIN: NEGATIVE},
}

# --------------------------------------------------------------------------- mention phrases
# CheXpert-labeler-style phrases added to the vocabulary synonyms (regex fragments, lowercase text).
_EXTRA: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:widened|enlarged|widening\s+of\s+the|enlargement\s+of\s+the)\s+(?:superior\s+)?"
        r"(?:cardio[- ]?)?mediastin(?:um|al\s+(?:silhouette|contours?|shadow))",
        r"(?:cardio[- ]?)?mediastinal\s+(?:widening|enlargement)",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"enlarged\s+heart(?:\s+size)?",
        r"(?:enlargement|increase\s+in\s+(?:the\s+)?size)\s+of\s+the\s+heart",
        r"increased\s+heart\s+size",
    ),
    "Lung Opacity": (
        r"opaci(?:ty|ties|fication|fications|fied)",
        r"densit(?:y|ies)",
        r"infiltrat(?:e|es|ion|ions|ive)",
        r"haziness",
        r"ground[- ]glass",
        r"air[- ]?space\s+(?:disease|process|opacit(?:y|ies)|filling)",
        r"interstitial\s+(?:markings?|pattern|opacit(?:y|ies)|prominence|thickening|lung\s+disease)",
        r"reticula(?:r|tion)|reticulonodular",
        r"(?:peribronchial|bronchial\s+wall)\s+(?:thickening|cuffing)",
        r"scar(?:s|ring)?",
    ),
    "Lung Lesion": (
        r"nodul(?:e|es|ar|arity)",
        r"mass(?:es|like|-like)?",
        r"lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
        r"metasta(?:sis|ses|tic)",
    ),
    "Edema": (
        r"o?edema(?:tous)?",
        r"(?:congestive\s+)?heart\s+failure",
        r"chf",
        r"fluid\s+overload",
        r"kerley\s+(?:b\s+)?lines?",
    ),
    "Consolidation": (r"consolidat(?:ion|ions|ive|ed)",),
    # "pneumonitis" is a MeSH entry term of Pneumonia
    "Pneumonia": (
        r"pneumonias?",
        r"bronchopneumonia",
        r"pneumonic",
        r"pneumonitis",
        r"infections?",
        r"infectious",
    ),
    "Atelectasis": (
        r"atelecta(?:sis|ses|tic)",
        r"collapsed?",
    ),
    "Pneumothorax": (r"pneumothora(?:x|ces|xes)", r"pleural\s+air(?:\s+collections?)?"),
    "Pleural Effusion": (
        r"effusions?",
        r"pleural\s+fluid",
        r"fluid\s+in\s+the\s+(?:\w+\s+)?pleural\s+space",
    ),
    "Pleural Other": (
        r"pleural\s+(?:thickening|plaques?|scar(?:s|ring)?|calcifications?|fibrosis|reaction)",
        r"thickening\s+of\s+the\s+pleura",
        r"fibrothorax",
        r"pleur(?:al|o)[- ]?parenchymal\s+(?:scar(?:s|ring)?|thickening)",
    ),
    "Fracture": (r"fractur(?:e|es|ed)", r"fx"),
    "Support Devices": (
        r"tubes?",
        r"catheters?",
        r"picc",
        r"(?:central(?:\s+venous)?|venous|arterial|swan[- ]ganz|(?:hemo)?dialysis|port|jugular|subclavian"
        r"|femoral|ij|triple[- ]lumen|hickman|tunneled|infusion|pa|pulmonary\s+artery)\s+lines?",
        r"pacemakers?|pacers?|pacing\s+(?:wires?|leads?)",
        r"(?:aicd|icd|defibrillators?|ventricular\s+assist\s+device|lvad|loop\s+recorder)",
        r"(?:ecg|ekg|monitoring|telemetry)\s+(?:leads?|wires?|electrodes?|pads?)",
        r"wires?",
        r"clips?",
        r"stents?",
        r"devices?",
        r"port-a-cath|portacath|mediport|ports?",
        r"tracheostomy|trach",
        r"hardware|screws?|staples|arthroplast(?:y|ies)|coils?|drains?|cannula|ivc\s+filter",
        r"(?:prosthetic|mechanical|artificial|bioprosthetic)\s+(?:\w+\s+)?valves?|prosthes[ie]s",
        r"valve\s+(?:replacement|prosthesis)",
        r"(?:intra-?aortic\s+)?balloon\s+pump|iabp",
    ),
}

# Look-alikes that must not count as a mention (CheXpert "unmention" phrases). Tried first, so the
# whole phrase is consumed and its last word is never read as a finding.
_BLOCKERS = (
    r"(?:pericardial|joint|knee|shoulder)\s+effusions?",
    r"(?:vertebral|vertebra|compression)(?:\s+body)?\s+collapse",
    r"collapse\s+of\s+(?:the\s+)?(?:\w+\s+)?(?:vertebra\w*|[tl]\d+)",
    r"(?:prior\s+)?granulomatous\s+infections?",
    r"(?:lytic|blastic|sclerotic|bony|bone|osseous|skin|cutaneous|osteolytic|expansile)\s+lesions?",
    r"(?:decreased\s+)?(?:bone|bony|mineral|soft[- ]tissue|breast|nipple|metallic|calcified|calcific)"
    r"\s+(?:mineral\s+)?densit(?:y|ies)",
    r"mass\s+effect|body\s+mass|muscle\s+mass",
    r"soft[- ]tissue\s+(?:edema|swelling)",
    r"(?:surgical|skin)\s+scars?",
)

# Signs: indirect evidence of a finding. In a sentence that also names the finding directly, the direct
# mentions decide ("blunting of the costophrenic sulcus could be an effusion versus scarring" -> -1).
_EFFUSION_SIGN = (
    r"blunt(?:ed|ing)\s+(?:of\s+)?(?:the\s+)?(?:\w+\s+){0,2}costophrenic"
    r"|costophrenic\s+(?:angles?\s+|sulc(?:us|i)\s+|recess(?:es)?\s+)?blunting"
)
# Vascular congestion counts as Edema (as in CheXpert), but as a sign that yields to the report's word on
# edema: "vascular congestion without overt pulmonary edema" is Edema -1, not 1.
_EDEMA_SIGN = (
    r"(?:pulmonary\s+)?(?:vascular|venous)\s+(?:congestion|engorgement|redistribution)"
    r"|pulmonary\s+congestion|(?:vascular\s+)?cephalization"
)
# Volume loss is a sign of atelectasis but is mostly reported after surgery or with fibrosis ("stable
# left-sided volume loss" after a thoracotomy): on its own it makes atelectasis uncertain, never positive.
_VOLUME_LOSS_SIGN = r"(?:volume\s+loss|loss\s+of\s+(?:lung\s+)?volume)"
_CARDIOMEGALY_SIGN = (
    r"enlarged\s+cardiac\s+(?:silhouette|shadow|contours?|size)"
    r"|(?:enlargement|increase\s+in\s+(?:the\s+)?size)\s+of\s+the\s+cardiac\s+silhouette"
    r"|increased\s+(?:size\s+of\s+the\s+)?cardiac\s+(?:size|silhouette)"
)
# Subjects labeled by their qualifier ("heart size is normal", "borderline heart size").
_HEART = (
    r"heart(?:\s+size)?(?!\s+failure)|cardiac\s+(?:silhouette|contours?|size|shadow|outline|diameter|"
    r"dimensions?|borders?)|cardiac(?=\s+and\s+mediastinal)|cardiothoracic\s+ratio"
)
_MEDIASTINUM = (
    r"cardio[- ]?mediastinal(?:\s+(?:silhouette|contours?|structures?|shadow|outline|size|width))?"
    r"|mediastinum|mediastinal\s+(?:silhouette|contours?|structures?|width|shadow|outline|configuration|"
    r"size|borders?)|mediastinal(?=\s+and\s+(?:hilar|cardiac))"
)


def _phrase(synonym: str) -> str:
    """A vocabulary spelling as a regex: spaces and hyphens interchangeable."""
    return r"[\s-]+".join(re.escape(word) for word in synonym.lower().replace("-", " ").split())


def _finding_alternation(name: str) -> str:
    alternatives = [_phrase(s) for s in synonyms_of(name)] + list(_EXTRA.get(name, ()))
    return "|".join(alternatives)


# Group name -> findings it marks. The order of groups decides ties at one position.
_GROUPS: dict[str, tuple[str, ...]] = {
    "blk": (),
    "hpx": ("Pneumothorax", "Pleural Effusion"),
    "pes": ("Pleural Effusion",),
    "cms": ("Cardiomegaly",),
    "vol": ("Atelectasis",),
    "eds": ("Edema",),
}
_GROUPS.update({f"f{i}": (name,) for i, name in enumerate(_FINDINGS)})
_GROUPS.update({"heart": ("Cardiomegaly",), "mediast": ("Enlarged Cardiomediastinum",)})
_MENTION_SOURCES = {
    "blk": "|".join(_BLOCKERS),
    "hpx": r"hydro-?pneumothora(?:x|ces)",
    "pes": _EFFUSION_SIGN,
    "cms": _CARDIOMEGALY_SIGN,
    "vol": _VOLUME_LOSS_SIGN,
    "eds": _EDEMA_SIGN,
    **{f"f{i}": _finding_alternation(name) for i, name in enumerate(_FINDINGS)},
    "heart": _HEART,
    "mediast": _MEDIASTINUM,
}
_SIGNS = frozenset({"pes", "cms", "vol", "eds", "heart", "mediast"})
_MENTION = re.compile("|".join(rf"(?P<{g}>\b(?:{src})\b)" for g, src in _MENTION_SOURCES.items()))

# --------------------------------------------------------------------------- cues
_SEEN = (
    r"(?:seen|visualized|identified|present|evident|demonstrated|appreciated|visible|noted|detected|"
    r"apparent|observed)"
)
_CUE_SOURCES = {
    # pseudo-negations: consumed so that their "no"/"not" does not negate anything
    "pseudo": (
        r"no\s+(?:(?:significant|interval|appreciable|substantial|definite|apparent|radiographic|marked|"
        r"gross)\s+){0,2}(?:change|changes|increase|decrease|worsening|progression|improvement|growth)"
        r"|without\s+(?:(?:significant|interval|appreciable|substantial)\s+){0,2}change"
        r"|(?:has\s+|have\s+)?not\s+(?:significantly\s+|substantially\s+)?changed|unchanged"
        r"|not\s+(?:well|optimally|fully|entirely|clearly|adequately)\s+(?:seen|visualized|evaluated|"
        r"assessed|imaged|included)|not\s+only|no\s+doubt"
        r"|(?:consistent|compatible|in\s+keeping|associated)\s+with"
    ),
    "unc_bi": (
        r"(?:can\s*not|could\s+not|may\s+not|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+|totally\s+|"
        r"definitely\s+|definitively\s+)?(?:excluded?|ruled?\s+out)"
        r"|cannot\s+be\s+(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)"
        r"|versus|vs\.?|unlikely|less\s+likely|equivocal"
        r"|(?:difficult|hard)\s+to\s+(?:\w+\s+)?(?:exclude|rule\s+out)"
        r"|in\s+the\s+(?:appropriate|correct|right|proper)\s+clinical\s+(?:setting|context)"
    ),
    "unc_b": (
        r"(?:is|are|was|were)\s+(?:also\s+)?(?:possible|suspected|questioned|considered|favou?red|"
        r"questionable|uncertain|unclear|not\s+certain)"
        r"|(?:is|are|was|were|would\s+be|remains?)\s+(?:also\s+)?(?:a|an|another)\s+(?:\w+\s+)?"
        r"(?:consideration|possibility)"
        r"|(?:is|are|remains?)\s+(?:also\s+)?in\s+the\s+differential(?:\s+diagnosis)?"
        # a limitation, not a negation: "nondisplaced fractures may not be demonstrated"
        rf"|(?:may|might|could)\s+not\s+(?:be\s+)?(?:well\s+)?{_SEEN}"
        # post-nominal "suspected" without a verb: "small bilateral pleural effusions suspected."
        r"|suspected(?=\s*(?:$|[,;:(]|(?:on|in|at|but|however|given|clinically)\b))"
    ),
    # weak: uncertain, but inside a negation's scope ("no suggestion of pneumothorax") they stay negated
    "weak": r"to\s+(?:suggest|indicate|represent)|suggestions?\s+of",
    "unc_f": (
        r"possib(?:le|ly|ility)|may|maybe|might|could|perhaps|suggest(?:s|ed|ing|ive\s+of)?|concern(?:ing)?\s+for"
        r"|worrisome\s+for|suspicious\s+(?:for|of)|suspicion\s+(?:for|of)|suspect(?:s|ed)?|questionable"
        r"|(?<!\bin\s)question(?:\s+of)?|probable|probably|presumed|presumably|differential(?:\s+diagnos[ie]s)?"
        r"(?:\s+considerations?)?(?:\s+(?:includes?|would\s+include))?|consider(?:ed|ations?)?|borderline"
        r"|favou?r(?:s|ed|ing)?|(?:unclear|uncertain)\s+(?:whether|if)|rule\s+out|r/o"
        r"|to\s+(?:entirely\s+|completely\s+)?exclude|evaluat(?:e|ion)\s+for"
        r"|cannot\s+(?:exclude|rule\s+out)|can\s+not\s+(?:exclude|rule\s+out)"
        r"|correlat\w*(?:\s+clinically)?\s+(?:for|as\s+to)"
    ),
    "lik_b": r"(?:is|are|was|were)\s+(?:most\s+|more\s+)?likely",
    "lik_f": r"(?:most\s+|more\s+)?likely",
    "neg_b": (
        rf"(?:(?:is|are|was|were|has\s+been|have\s+been)\s+)?(?:no\s+longer|not)\s+(?:\w+\s+)?{_SEEN}"
        r"|(?:has|have|had|is|are)\s+(?:\w+\s+)?(?:resolved|cleared)|(?:(?:has|have)\s+been\s+)?removed"
        r"|(?:(?:is|are)\s+)?absent"
    ),
    # "within normal limits" negates its own subject only: the last item before it ("heart size and
    # pulmonary vascular engorgement appear within limits of normal"; not "cardiomegaly and ...")
    "neg_n": (
        r"(?:(?:is|are|was|were|appears?|remains?)\s+)?within\s+(?:the\s+)?(?:normal\s+limits|limits\s+of\s+normal)"
    ),
    "neg_bi": r"resolved|cleared",
    "neg_f": (
        r"no|not|without|nor|neither|negative\s+for|free\s+of|clear\s+of|absence\s+of|rather\s+than"
        r"|resolution\s+of|clearing\s+of|removal\s+of"
    ),
    "term": (
        r"but|however|although|though|which|whereas|while|except|aside\s+from|apart\s+from|other\s+than"
        r"|with|there\s+(?:is|are|has\s+been|have\s+been)"
    ),
}
_TERM_NEXT = (
    r"the|mild|mildly|moderate|moderately|severe|marked|stable|unchanged|persistent|new|increased|increasing"
    r"|decreased|improved|improving|worsened|worsening|again|redemonstrat\w*|re-demonstrat\w*|there"
)
_CUE = re.compile(
    "|".join(rf"(?P<{g}>\b(?:{src})\b)" for g, src in _CUE_SOURCES.items())
    + rf"|(?P<sep>;|,(?=\s*(?:{_TERM_NEXT})\b))"
)
_NEG_KINDS = frozenset({"neg_f", "neg_b", "neg_bi", "neg_n"})
_UNC_KINDS = frozenset({"unc_f", "unc_b", "unc_bi", "weak"})
_FORWARD = frozenset({"neg_f", "neg_bi", "unc_f", "unc_bi", "weak"})
_BACKWARD = frozenset({"neg_b", "neg_bi", "neg_n", "unc_b", "unc_bi"})

# Qualifiers of the heart/mediastinum subjects: after the subject (first one wins) or just before it.
_QUALIFIER = re.compile(
    r"(?P<unc>\b(?:borderline|(?:at\s+|near\s+)?(?:the\s+)?upper\s+limits?\s+(?:of\s+)?normal"
    r"|(?:upper|top|high)[- ]normal|(?:mildly\s+|slightly\s+)?prominen(?:t|ce))\b)"
    r"|(?P<neg>\b(?:within\s+normal\s+limits|normal|unremarkable|not\s+(?:\w+\s+)?(?:enlarged|widened))\b)"
    r"|(?P<pos>\b(?:enlarge(?:d|ment)|widen(?:ed|ing)|increased|(?:is|are|appears?|remains?)\s+(?:\w+\s+)?"
    r"large)\b)"
)
_PRE_QUALIFIER = re.compile(
    r"\b(?:(?P<unc>borderline|(?:upper|top|high)[- ]normal|(?:mildly\s+|slightly\s+)?prominent)"
    r"|(?P<neg>normal(?:[- ]sized?)?|unremarkable)|(?P<pos>enlarged|widened|increased))\s+"
    r"(?:(?:heart|cardiac|cardio[- ]?mediastinal|mediastinal)(?:\s+(?:size|silhouette|contours?))?"
    r"\s+and\s+)?$"
)
_QUALIFIER_REACH = 80  # characters after a subject searched for its qualifier
# The last item of a list subject before a plural verb: "consolidation, atelectasis, and effusion have
# cleared" (not ", and the left effusion has cleared", a clause of its own).
_LIST_TAIL = re.compile(r"\s*(?:and|or|and/or)\s+(?!(?:the|a|an|there|this|it|these|they)\b)")
_PLURAL_VERB = re.compile(r"(?:have|are|were)\b")
_CONJUNCTION = re.compile(r"\b(?:and|or)\b")
# Costophrenic blunting explained, in its sentence, by a chronic pleural/parenchymal cause: the blunting
# no longer asserts an effusion ("blunting of the costophrenic angle secondary to scarring" -> -1,
# "chronic blunting of the costophrenic angles" -> -1).
_BLUNTING_CAUSE = re.compile(
    r"\b(?:scar(?:s|ring|red)?|pleural\s+(?:thickening|reaction)|thickening\s+of\s+the\s+pleura|fibrosis|fibrotic"
    r"|chronic(?:ally)?)\b"
)

# --------------------------------------------------------------------------- text
_MASK = re.compile(r"\bx{3,}\b")
_SENTENCE = re.compile(r"((?<!\bvs)\.(?!\d)|[?!\n])")


def _sentences(text: str) -> list[tuple[str, bool]]:
    """Lowercased, unmasked, whitespace-collapsed sentences of a report, each with whether it asks ("?")."""
    parts = _SENTENCE.split(_MASK.sub(" ", text.lower()))
    parts.append("")  # the last sentence has no delimiter
    return [
        (" ".join(part.split()), end == "?")
        for part, end in zip(parts[::2], parts[1::2], strict=True)
        if part and not part.isspace()
    ]


_Cue = tuple[int, int, str]  # start, end, kind
_Spans = list[tuple[int, int]]


def _cues(sentence: str, likely_positive: bool) -> list[_Cue]:
    cues: list[_Cue] = []
    for m in _CUE.finditer(sentence):
        kind = m.lastgroup or "pseudo"
        if kind == "sep":
            kind = "term"
        elif kind in ("lik_f", "lik_b"):
            if likely_positive:
                continue
            kind = "unc_f" if kind == "lik_f" else "unc_b"
        cues.append((m.start(), m.end(), kind))
    return cues


def _ends_forward_scope(kind: str, negation: bool) -> bool:
    """A terminator, or a (strong) cue of the other polarity, ends a forward scope."""
    if kind == "term":
        return True
    if negation:
        return kind in _UNC_KINDS and kind != "weak"
    return kind in _NEG_KINDS


def _scopes(sentence: str, cues: list[_Cue]) -> tuple[_Spans, _Spans]:
    """Negation and uncertainty scopes (character ranges) of one sentence."""
    negated: _Spans = []
    uncertain: _Spans = []
    for i, (start, end, kind) in enumerate(cues):
        if kind in ("pseudo", "term"):
            continue
        negation = kind in _NEG_KINDS
        spans = negated if negation else uncertain
        if kind in _FORWARD:
            stop = next(
                (s2 for s2, _, k2 in cues[i + 1 :] if _ends_forward_scope(k2, negation)), len(sentence)
            )
            spans.append((end, stop))
        if kind in _BACKWARD:
            lo = sentence.rfind(",", 0, start) + 1
            previous = next((e2 for _, e2, k2 in reversed(cues[:i]) if k2 != "pseudo"), 0)
            if kind == "neg_n":
                lo = max((m.end() for m in _CONJUNCTION.finditer(sentence, lo, start)), default=lo)
            elif lo > previous and _PLURAL_VERB.match(sentence, start) and _LIST_TAIL.match(sentence, lo):
                lo = 0  # reach back over the whole list
            spans.append((max(lo, previous), start))
    return negated, uncertain


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(lo <= pos < hi for lo, hi in spans)


def _subject_label(sentence: str, start: int, end: int, cues: list[_Cue]) -> int | None:
    """Label of a heart/mediastinum subject from its qualifier, or None when unqualified."""
    pre = _PRE_QUALIFIER.search(sentence, max(0, start - 48), start)
    if pre is not None:
        return POSITIVE if pre.lastgroup == "pos" else NEGATIVE if pre.lastgroup == "neg" else UNCERTAIN
    stop = min(len(sentence), end + _QUALIFIER_REACH)
    for c_start, _, kind in cues:
        if kind == "term" and c_start >= end:
            stop = min(stop, c_start)
            break
    m = _QUALIFIER.search(sentence, end, stop)
    if m is None:
        return None
    if m.lastgroup == "neg":
        return NEGATIVE
    if m.lastgroup == "unc":
        return UNCERTAIN
    between = [kind for c_start, _, kind in cues if end <= c_start < m.start()]
    if any(kind in _NEG_KINDS for kind in between):
        return NEGATIVE
    if any(kind in _UNC_KINDS for kind in between):
        return UNCERTAIN
    return POSITIVE


def _merge(labels: dict[str, int], findings: tuple[str, ...], value: int) -> None:
    for finding in findings:
        if finding not in labels or _RANK[value] > _RANK[labels[finding]]:
            labels[finding] = value


def label_report(
    text: str, *, likely_positive: bool = False, uncertain_as: int = UNCERTAIN
) -> dict[str, int]:
    """CheXpert-14 labels of one report: finding -> 1 (positive), 0 (negated) or -1 (uncertain).

    Findings the report does not mention are absent. "No Finding" is 1 when no finding other than
    Support Devices is positive or uncertain, else absent. A blank report gives ``{}``.

    ``uncertain_as`` maps uncertain labels: ``-1`` (default) keeps them, ``1`` reads them as positive and
    ``0`` as negative -- the U-Ones and U-Zeros policies of the CheXpert paper (Irvin et al., 2019). As
    in CheXpert, the policy applies after labeling: an uncertain finding still withholds "No Finding".
    ``likely_positive=True`` reads "likely" as positive instead of uncertain.

    >>> label_report("Small bilateral pleural effusions suspected.")
    {'Pleural Effusion': -1}
    >>> label_report("Small bilateral pleural effusions suspected.", uncertain_as=1)
    {'Pleural Effusion': 1}
    >>> label_report("Question of left lower lobe pneumonia?", uncertain_as=0)
    {'Pneumonia': 0}
    """
    if uncertain_as not in _POLICIES:
        raise ValueError(f"uncertain_as must be -1 (keep), 1 (U-Ones) or 0 (U-Zeros), not {uncertain_as!r}")
    if not text or text.isspace():
        return {}
    best: dict[str, int] = {}
    indirect: dict[str, int] = {}  # from signs, in sentences that do not name the finding
    for sentence, asks in _sentences(text):
        mentions = [m for m in _MENTION.finditer(sentence) if m.lastgroup != "blk"]
        if not mentions:
            continue
        cues = _cues(sentence, likely_positive)
        negated, uncertain = _scopes(sentence, cues)
        direct: dict[str, int] = {}
        signs: dict[str, int] = {}
        for m in mentions:
            group = m.lastgroup or "blk"
            if group in ("heart", "mediast"):
                value = _subject_label(sentence, m.start(), m.end(), cues)
                if value is None:
                    continue
            elif _inside(m.start(), negated):
                value = NEGATIVE
            elif _inside(m.start(), uncertain):
                value = UNCERTAIN
            else:
                value = POSITIVE
            if value == POSITIVE and (
                asks or group == "vol" or (group == "pes" and _BLUNTING_CAUSE.search(sentence))
            ):
                value = UNCERTAIN  # "pneumonia?"; "volume loss"; "costophrenic blunting, likely scarring"
            _merge(signs if group in _SIGNS else direct, _GROUPS[group], value)
        for finding, value in signs.items():
            if finding not in direct:
                _merge(indirect, (finding,), value)
            elif direct[finding] == NEGATIVE and value == POSITIVE:
                direct[finding] = UNCERTAIN  # "vascular congestion without overt pulmonary edema"
        for finding, value in direct.items():
            _merge(best, (finding,), value)
    for finding, value in indirect.items():
        # A sign the report itself contradicts ("Vascular congestion. No overt edema.") is at most
        # uncertain: the sign is there, the finding is denied. Otherwise it adds to the direct mentions.
        if best.get(finding) == NEGATIVE and value == POSITIVE:
            value = UNCERTAIN
        _merge(best, (finding,), value)
    if not any(v != NEGATIVE for f, v in best.items() if f != "Support Devices"):
        best[NO_FINDING] = POSITIVE
    return {name: _POLICIES[uncertain_as].get(best[name], best[name]) for name in CHEXPERT_14 if name in best}


def label_reports(
    texts: Iterable[str], *, likely_positive: bool = False, uncertain_as: int = UNCERTAIN
) -> list[dict[str, int]]:
    """:func:`label_report` over many reports, with the same options.

    ``uncertain_as``: -1 keeps uncertain labels (default), 1 maps them to positive (CheXpert's U-Ones
    policy), 0 to negative (U-Zeros).
    """
    return [label_report(t, likely_positive=likely_positive, uncertain_as=uncertain_as) for t in texts]
