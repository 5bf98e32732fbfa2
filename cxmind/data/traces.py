"""Gold interleaved trajectories written deterministically from labels (and report sentences).

Each closed or open record carries a gold trajectory in the CuRL-VPR format: one round per option
or candidate finding, each citing the evidence for its verdict, then a summary. The evidence is the
report sentence that supports or negates the finding when a report exists, else a visual
description of the finding's presence or absence. Every record is checked by :func:`check_record`
against its study's labels — each verdict agrees with them, the final answer is the record's, no
claim goes beyond what the source labels — and the builder rejects the record otherwise.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cxmind.data.schema import Record
from cxmind.format import (
    ACCEPT,
    REJECT,
    Round,
    final_letter,
    findings_in,
    mark_of,
    option_letter,
    option_texts,
    parse,
    render_closed,
    render_open,
)
from cxmind.vocab import NO_FINDING, canonical, synonyms_of

if TYPE_CHECKING:
    from cxmind.data.tasks import StudyLabels

__all__ = [
    "check_record",
    "closed_trace",
    "finding_evidence",
    "open_trace",
    "report_sentences",
    "summary_text",
]

# What a reader sees when a finding is present / absent (used when no report sentence is available).
_VISUAL: dict[str, tuple[str, str]] = {
    "Cardiomegaly": (
        "the cardiac silhouette is enlarged, wider than half of the thoracic diameter",
        "the cardiac silhouette is of normal size, less than half of the thoracic diameter",
    ),
    "Pleural Effusion": (
        "the costophrenic angle is blunted with a dense meniscus at the lung base",
        "the costophrenic angles are sharp and no fluid layers at the bases",
    ),
    "Pneumothorax": (
        "a lucent rim without lung markings separates the lung edge from the chest wall",
        "lung markings extend to the chest wall with no visible pleural line",
    ),
    "Nodule": (
        "a small, well-defined round opacity projects over the lung",
        "no focal rounded opacity is seen in either lung",
    ),
    "Mass": ("a large focal opacity is present in the lung", "no focal mass is seen"),
    "Consolidation": (
        "a dense airspace opacity obscures the underlying vessels",
        "the lungs show no dense airspace opacity",
    ),
    "Atelectasis": (
        "linear opacity with volume loss is present at the lung base",
        "there is no volume loss or linear basal opacity",
    ),
    "Edema": (
        "there is bilateral hazy perihilar opacity with vascular congestion",
        "the pulmonary vasculature is not congested and there is no interstitial haze",
    ),
    "Lung Opacity": ("there is an area of increased lung opacity", "the lung fields are clear"),
    "Pneumonia": (
        "a focal airspace opacity suggests infection",
        "no focal airspace opacity suggesting infection is seen",
    ),
    "Support Devices": (
        "a tube or line projects over the chest",
        "no tubes, lines or other devices are seen",
    ),
    "Enlarged Cardiomediastinum": (
        "the cardiomediastinal silhouette is widened",
        "the cardiomediastinal silhouette is within normal limits",
    ),
    "Emphysema": ("the lungs are hyperinflated with flattened diaphragms", "the lungs are not hyperinflated"),
    "Fracture": ("a cortical break is seen in a rib", "no acute fracture is seen"),
}

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|resolved|clear of|absence of)\b", re.I)
_TAGS = re.compile(r"</?(?:think|answer)>", re.I)


def report_sentences(*texts: str) -> list[str]:
    """The sentences of report sections, stripped, tags removed (a report must not inject format tags)."""
    out = []
    for text in texts:
        for sentence in _SENTENCE_SPLIT.split(_TAGS.sub(" ", text or "")):
            sentence = " ".join(sentence.split())
            if sentence:
                out.append(sentence)
    return out


def _mentions(sentence: str, finding: str) -> bool:
    low = sentence.lower()
    try:
        spellings = synonyms_of(finding)
    except KeyError:
        spellings = (finding,)
    return any(re.search(rf"\b{re.escape(s.lower())}\b", low) for s in spellings)


def finding_evidence(
    finding: str, present: bool, sentences: Sequence[str] = (), rng: random.Random | None = None
) -> str:
    """One sentence of evidence for ``finding`` being present or absent.

    A report sentence mentioning the finding with the right polarity is cited when there is one;
    otherwise the visual description of the finding (or a generic one) is used.
    """
    for sentence in sentences:
        if _mentions(sentence, finding) and bool(_NEGATION.search(sentence)) != present:
            return f'the report states: "{sentence}"'
    visual = _VISUAL.get(canonical(finding))
    if visual is not None:
        return visual[0] if present else visual[1]
    name = finding.lower()
    choices = (
        (f"there are imaging features of {name}", f"the image shows signs consistent with {name}")
        if present
        else (f"no imaging features of {name} are seen", f"there is no sign of {name}")
    )
    return (rng or random.Random(0)).choice(choices)


def closed_trace(
    options: Sequence[str],
    gold_letter: str,
    evidence: Mapping[str, str],
    summary: str,
) -> str:
    """A closed-ended trajectory: one round per labelled option (``"A) text"``), then the summary.

    ``evidence`` maps each option letter to the sentence that supports (gold) or rules out (others) it.
    """
    judgements = []
    for option in options:
        letter, _, text = option.partition(")")
        letter, text = letter.strip(), text.strip()
        fits = letter == gold_letter
        verdict = "this fits" if fits else "so it is ruled out"
        judgements.append((letter, f"Option {letter} ({text}): {evidence[letter]}; {verdict}.", fits))
    return render_closed(judgements, summary, gold_letter)


def open_trace(
    candidates: Sequence[str],
    present: set[str],
    evidence: Mapping[str, str],
    observation: str,
    summary: str,
) -> str:
    """An open-ended trajectory over ``candidates`` (canonical names); the final list is ``present``."""
    judged = []
    for name in candidates:
        ok = name in present
        verdict = "it is present" if ok else "it is absent"
        judged.append((name, f"Considering {name}, {evidence[name]}, so {verdict}.", ok))
    return render_open(observation, judged, summary)


def check_record(record: Record, labels: StudyLabels) -> str | None:
    """Why a record's gold trajectory contradicts its study's labels, or ``None`` when it does not.

    Independent of the rewards (which would only score the trace against itself): every verdict
    must agree with the labels — ✅ on a positive, ❌ on an explicit or implied negative, nothing
    asserted about a finding the labels leave unknown — each option or candidate is judged exactly
    once, the final answer is the record's answer, no closed question has two true options, and no
    trace calls a study normal unless the source says it is.
    """
    if record.task_type not in ("closed", "open"):
        return None
    parsed = parse(record.solution or "")
    if not parsed.well_formed or len(parsed.rounds) < 2:
        return f"malformed trace ({', '.join(parsed.errors) or 'fewer than 2 rounds'})"
    if not labels.normal and any(_NORMAL_CLAIM.search(r.think) for r in parsed.rounds):
        return "the trace calls the study normal, which its labels do not say"
    if record.task_type == "closed":
        return _check_closed(record, parsed.rounds, labels)
    return _check_open(record, parsed.rounds, labels)


_NORMAL_CLAIM = re.compile(r"\bthe study is normal\b", re.I)
_DISEASE_OPTIONS = ("disease_single_choice",)


def _check_closed(record: Record, rounds: Sequence[Round], labels: StudyLabels) -> str | None:
    texts = option_texts(record.options) or {}
    letters = tuple(texts)
    judged = [option_letter(r.answer, letters) for r in rounds[:-1]]
    if sorted(x or "" for x in judged) != sorted(letters):
        return "the trace does not judge every option exactly once"
    accepted = [x for r, x in zip(rounds[:-1], judged, strict=True) if mark_of(r.answer) == ACCEPT]
    if any(mark_of(r.answer) is None for r in rounds[:-1]):
        return "an option round has no single verdict"
    if accepted != [record.answer]:
        return f"the trace accepts {accepted or 'nothing'}, the answer is {record.answer}"
    if final_letter(rounds[-1].answer, letters) != record.answer:
        return "the final answer is not the record's answer"
    finding = record.extra.get("finding")
    if finding is not None:  # "Is there X?": yes only on a positive, no only on a known negative
        said_yes = texts[record.answer].strip().lower() == "yes"
        if said_yes != (finding in labels.positives) or (not said_yes and finding not in labels.negatives):
            return f"the answer about {finding} contradicts its label"
    if record.task in _DISEASE_OPTIONS:
        for letter, text in sorted(texts.items(), key=lambda item: item[0] != record.answer):  # gold first
            name = canonical(text)
            true = labels.normal if name == NO_FINDING else name in labels.positives
            known_false = bool(labels.positives) if name == NO_FINDING else name in labels.negatives
            if letter == record.answer and not true:
                return f"the gold option {text!r} is not a labelled finding of the study"
            if letter != record.answer and not known_false:
                return f"the distractor {text!r} is not known to be absent (two options may be true)"
    return None


def _check_open(record: Record, rounds: Sequence[Round], labels: StudyLabels) -> str | None:
    differential = findings_in(rounds[0].answer)
    middle = [(canonical(r.answer), mark_of(r.answer)) for r in rounds[1:-1]]
    names = [name for name, _ in middle]
    if len(names) != len(set(names)) or set(names) != set(differential):
        return "the trace does not judge every differential candidate exactly once"
    for name, mark in middle:
        if mark is None:
            return f"the round on {name} has no single verdict"
        if mark == ACCEPT and name not in labels.positives:
            return f"the trace accepts {name}, which is not a labelled finding of the study"
        if mark == REJECT and name not in labels.negatives:
            return f"the trace rejects {name}, which is not known to be absent"
    accepted = {name for name, mark in middle if mark == ACCEPT}
    final = set(findings_in(rounds[-1].answer))
    if final != (accepted or {NO_FINDING}):
        return "the final list is not the set of accepted findings"
    if final != set(findings_in(record.answer)):
        return "the final list is not the record's answer"
    if not accepted and not labels.normal and not record.extra.get("scoped"):
        return "an unscoped question answered No Finding on a study not labelled normal"
    return None


def summary_text(positives: Sequence[str], normal: bool = False) -> str:
    """The summary think of an open trajectory; it calls the study normal only when ``normal``."""
    if not positives or list(positives) == [NO_FINDING]:
        if normal:
            return "Summary: none of the candidate findings is present; the study is normal."
        return "Summary: none of the candidate findings is present."
    return f"Summary: the image shows {', '.join(p.lower() for p in positives)}."
