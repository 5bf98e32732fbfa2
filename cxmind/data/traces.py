"""Gold interleaved trajectories written deterministically from labels (and report sentences).

Each closed or open record carries a gold trajectory in the CuRL-VPR format: one round per option
or candidate finding, each citing the evidence for its verdict, then a summary. The evidence is the
report sentence that supports or negates the finding when a report exists, else a visual
description of the finding's presence or absence. Every trajectory is checked by
:func:`check_trace` — it must earn format = 1, outcome = 1 and the full process reward under
``cxmind.rewards.score`` (fixed mode) — and the builders reject the record otherwise: the filter is
part of building, not only of testing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

from cxmind.format import render_closed, render_open
from cxmind.rewards.scoring import DEFAULT_W_CLOSED, DEFAULT_W_OPEN, _score
from cxmind.rewards.similarity import DEFAULT_ALPHA
from cxmind.vocab import NO_FINDING, canonical, synonyms_of

__all__ = [
    "check_trace",
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


def check_trace(solution: str, task_type: str, options: Sequence[str] | None = None) -> str | None:
    """``None`` if the gold trajectory earns format 1, outcome 1 and full process reward; else why not."""
    return _check_trace(solution, task_type, tuple(options) if options is not None else None)


def _no_similarity(prediction: str, reference: str, alpha: float) -> float:
    return 0.0  # the filter checks format, outcome and process; think similarity is irrelevant here


@lru_cache(maxsize=1 << 15)  # template traces repeat across studies; scoring each once is enough
def _check_trace(solution: str, task_type: str, options: tuple[str, ...] | None) -> str | None:
    scores = _score(
        solution,
        solution,
        task_type,
        options,
        "fixed",
        DEFAULT_W_CLOSED,
        DEFAULT_W_OPEN,
        DEFAULT_ALPHA,
        _no_similarity,
    )
    full_process = DEFAULT_W_CLOSED if task_type == "closed" else DEFAULT_W_OPEN
    if scores.format != 1.0:
        return "trace format"
    if scores.outcome != 1.0:
        return "trace outcome"
    if scores.process != full_process:
        return "trace process"
    return None


def summary_text(positives: Sequence[str]) -> str:
    """The summary think of an open trajectory."""
    if not positives or list(positives) == [NO_FINDING]:
        return "Summary: none of the candidate findings is present; the study is normal."
    return f"Summary: the image shows {', '.join(p.lower() for p in positives)}."
