"""Evaluation metrics for every task type, with 95% confidence intervals.

A *prediction row* is a record (``cxmind.data.schema``) plus the model's raw text ``prediction``,
``n_tokens`` (generated tokens) and, when generation failed, ``error``. ``per_record`` grades one
row; ``aggregate`` averages the grades per task type, task, source × task and overall, adds
corpus-level report metrics (BLEU-1..4, clinical efficacy), per-finding recall, baselines (chance,
majority answer, constant report) and a confidence interval to every number.

Definitions (all deterministic; no caps, no silent dropping):

* **prediction text**: the row's ``prediction``, or "" when ``error`` is set: a failed row is an
  empty prediction and scores as wrong.
* **answer text**: the answer of the last complete ``<think>…</think><answer>…</answer>`` round when
  there is one (parsed leniently by :func:`cxmind.format.parse`), else the whole text.
* **closed**: ``accuracy`` = 1 iff the predicted letter equals the gold letter. The predicted letter is
  :func:`~cxmind.format.final_letter` of the last round's answer (a final ❌ names no answer); without
  any round, the last "answer (is): X" statement, else a leading label read the same way ("B",
  "B)", "(b)", "B. Edema", "C✅"). Never a string match of the whole output. Chance level: the
  mean of 1 / number of options.
* **open**: set precision/recall/F1 of :func:`~cxmind.format.findings_in` (canonical names, modifiers
  ignored, option letters mapped through the row's ``options``) of the answer text against the gold
  ``answer``. "No Finding" earns credit only when written (or a synonym such as "normal"); an empty
  or unreadable answer is an empty prediction: precision, recall and F1 are 0.
* **report**: per-record ROUGE-L F (``rouge_score``, stemming); corpus BLEU-1..4 (nltk ``corpus_bleu``)
  and clinical efficacy (CE) from a report labeler, micro-averaged over the 13 CheXpert findings other
  than "No Finding" (the labeler's verdict on a report that names nothing, so counting it rewards
  saying nothing); an empty report asserts no finding. ``ce_per_finding`` lists all 14.
* **grounding**: best-IoU per gold box (class-agnostic), its mean and the fraction ≥ 0.5.
* **intervals**: 95% Wilson score interval for proportions (a rate of ``RATE_METRICS`` whose every
  per-record value is 0 or 1, e.g. accuracy and format; per-finding recall), 95% percentile bootstrap
  over records for other means (ROUGE-L, IoU, token counts, ...) and for corpus metrics; each
  entry's ``ci_method`` says which.

>>> row = {"id": "x", "task": "disease_binary", "task_type": "closed", "source": "nih", "answer": "B",
...        "solution": None, "options": ["A) Yes", "B) No"], "prediction": "Answer: B", "n_tokens": 3}
>>> per_record(row)["accuracy"]
1.0
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxmind.data.schema import TASKS
from cxmind.format import (
    ACCEPT,
    DEFAULT_LETTERS,
    REJECT,
    Parsed,
    final_letter,
    findings_in,
    mark_of,
    option_letter,
    parse,
    question_letters,
)
from cxmind.rewards.scoring import format_score as reward_format_score  # one rule: reward = metric
from cxmind.rewards.scoring import score
from cxmind.rewards.similarity import rouge_l as _rouge_l_tokens
from cxmind.rewards.similarity import rouge_tokens
from cxmind.vocab import CHEXPERT_14, NO_FINDING, canonical, is_known

__all__ = [
    "BLEU_WEIGHTS",
    "CE_FINDINGS",
    "RATE_METRICS",
    "aggregate",
    "answer_text",
    "baseline_reports",
    "bleu_tokens",
    "bootstrap_ci",
    "box_iou",
    "chance_accuracy",
    "final_correct",
    "final_findings",
    "finding_set",
    "format_score",
    "gold_findings",
    "gold_letter",
    "most_frequent_report",
    "parse_boxes",
    "per_finding_recall",
    "per_record",
    "predicted_letter",
    "prediction_text",
    "report_labels",
    "report_metrics",
    "rouge_l",
    "round_verdicts",
    "set_prf",
    "wilson_ci",
]

#: nltk ``corpus_bleu`` weights of BLEU-1..4.
BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu_1": (1.0,),
    "bleu_2": (0.5, 0.5),
    "bleu_3": (1 / 3, 1 / 3, 1 / 3),
    "bleu_4": (0.25, 0.25, 0.25, 0.25),
}
CE_METRICS = ("ce_precision", "ce_recall", "ce_f1")
#: The CheXpert-14 findings the headline CE metrics average over: all but "No Finding".
CE_FINDINGS = tuple(name for name in CHEXPERT_14 if name != NO_FINDING)
IOU_THRESHOLD = 0.5
TASK_TYPES = ("closed", "open", "report", "grounding")
#: Per-record metrics that are rates in [0, 1]: a group in which every value is 0 or 1 holds a proportion
#: (Wilson interval). Other metrics (similarity scores such as ``rouge_l``/``iou``, counts) use the bootstrap.
RATE_METRICS = frozenset(
    {
        "accuracy",
        "format",
        "process_consistency",
        "precision",
        "recall",
        "f1",
        "acc@0.5",
        "precision@0.5",
        "reward_format",
        "reward_outcome",
    }
)
Z_95 = 1.959963984540054  # the 97.5% standard normal quantile

Box = tuple[float, float, float, float]
Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Reading predictions
# ---------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def prediction_text(row: Row) -> str:
    """The text a row is graded on: its ``prediction``, or "" when generation failed (``error`` set).

    >>> prediction_text({"prediction": "B"}), prediction_text({"prediction": "B", "error": "image missing"})
    ('B', '')
    """
    return "" if row.get("error") else _text(row.get("prediction"))


def answer_text(prediction: str, parsed: Parsed | None = None) -> str:
    """The answer of the last complete round, or the whole stripped text when there is no round.

    >>> answer_text("<think>t</think><answer>Edema</answer>"), answer_text(" Edema ")
    ('Edema', 'Edema')
    """
    parsed = parse(prediction) if parsed is None else parsed
    return parsed.rounds[-1].answer if parsed.rounds else prediction.strip()


_ANSWER_STATEMENT = re.compile(
    r"\banswer(?:\s+is)?\s*[:\-]?\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z0-9]))", re.I
)
_FIRST_TOKEN = re.compile(r"\s*(\S+)(.*)", re.S)
_TOKEN_LETTER = re.compile(r"[(\[*]*([A-Za-z])")
_WORDY = re.compile(r"[A-Za-z0-9]")


def _plain_letter(text: str, letters: Iterable[str]) -> str | None:
    """Letter of an unformatted answer: the last "answer (is): X", else a leading label.

    The leading label is the first token read by :func:`~cxmind.format.option_letter` ("B)", "(b)",
    "B.", "[C]", "**C**", "C✅"); a bare letter counts only when nothing but marks follows it; a ❌
    in the text names no answer, as in a final round.
    """
    allowed = tuple(letters)
    statements = [m for m in _ANSWER_STATEMENT.finditer(text) if (m.group(1) or m.group(2))]
    # re.I makes [A-Z] match lowercase too: only an uppercase bare letter (or a parenthesised one) counts.
    statements = [m for m in statements if m.group(1) or m.group(2).isupper()]
    if statements:
        letter = (statements[-1].group(1) or statements[-1].group(2)).upper()
        return letter if letter in allowed else None
    lead = _FIRST_TOKEN.match(text)
    if lead is None:
        return None
    token, rest = lead.group(1), lead.group(2)
    letter = option_letter(token, allowed)
    first = _TOKEN_LETTER.match(token)
    if letter is None or first is None or first.group(1).upper() != letter:
        return None  # the label must open the text
    if token == letter and _WORDY.search(rest):
        return None  # "A chest film ...": an article, not a label
    return None if mark_of(text) == REJECT else letter


def predicted_letter(prediction: str, letters: Iterable[str], parsed: Parsed | None = None) -> str | None:
    """The final option letter of a closed-ended prediction, restricted to ``letters``.

    >>> predicted_letter("<think>a</think><answer>A) ❌</answer><think>s</think><answer>C) ✅</answer>", "AC")
    'C'
    >>> predicted_letter("<think>a</think><answer>C) ✅</answer><think>s</think><answer>D) ❌</answer>", "CD")
    >>> [predicted_letter(text, "AB") for text in ("The answer is B.", "B✅", "A chest film", "E")]
    ['B', 'B', None, None]
    """
    letters = tuple(letters)
    parsed = parse(prediction) if parsed is None else parsed
    if parsed.rounds:
        return final_letter(parsed.rounds[-1].answer, letters)
    return _plain_letter(prediction, letters)


def _row_letters(row: Row) -> tuple[str, ...]:
    """The question's option letters: the options column, else the solution's judged letters, else A–H."""
    return question_letters(row.get("options"), parse(_text(row.get("solution"))).rounds) or tuple(
        DEFAULT_LETTERS
    )


def _gold_letter(row: Row, letters: tuple[str, ...]) -> str | None:
    gold = option_letter(_text(row.get("answer")).strip(), letters)
    if gold is None and row.get("solution"):
        rounds = parse(_text(row.get("solution"))).rounds
        gold = option_letter(rounds[-1].answer, letters) if rounds else None
    return gold


def gold_letter(row: Row) -> str | None:
    """The gold option letter of a closed row: its ``answer``, else the last round of its ``solution``.

    >>> gold_letter({"answer": "B", "options": ["A) Yes", "B) No"]})
    'B'
    """
    return _gold_letter(row, _row_letters(row))


def finding_set(text: str, options: object = None) -> set[str]:
    """Canonical findings listed in ``text`` (option letters mapped through ``options``); may be empty.

    "No Finding" is in the set only when the text says so: an empty list is no answer.

    >>> sorted(finding_set("effusion, Enlarged heart")), finding_set(""), finding_set("normal")
    (['Cardiomegaly', 'Pleural Effusion'], set(), {'No Finding'})
    """
    return set(findings_in(text, options))  # type: ignore[arg-type]


def final_findings(row: Row) -> list[str]:
    """The findings of an open row's final answer, in order (see :func:`finding_set`).

    >>> final_findings({"prediction": "A, C", "options": ["A) Cardiomegaly", "B) Edema", "C) Mass"]})
    ['Cardiomegaly', 'Mass']
    """
    return findings_in(answer_text(prediction_text(row)), row.get("options"))


def gold_findings(row: Row) -> list[str]:
    """The gold findings of an open row (its ``answer``); raises ``ValueError`` when there are none.

    >>> gold_findings({"answer": "No Finding"})
    ['No Finding']
    """
    gold = findings_in(_text(row.get("answer")), row.get("options"))
    if not gold:
        raise ValueError(
            f"open row {row.get('id')!r} has an empty gold list; a normal study's answer is 'No Finding'"
        )
    return gold


# ---------------------------------------------------------------------------------------------
# Per-record metrics
# ---------------------------------------------------------------------------------------------


def _task_type(row: Row) -> str:
    task_type = row.get("task_type") or TASKS.get(_text(row.get("task")))
    if task_type not in TASK_TYPES:
        raise ValueError(
            f"row {row.get('id')!r}: unknown task_type {task_type!r}; expected one of {TASK_TYPES}"
        )
    return task_type


def format_score(prediction: str | Parsed) -> float:
    """The ``format`` metric: 1 iff the output is only well-formed rounds, and at least two of them.

    >>> one = "<think>t</think><answer>B</answer>"
    >>> format_score(one), format_score(one + one), format_score("B")
    (0.0, 1.0, 0.0)
    """
    return reward_format_score(parse(prediction) if isinstance(prediction, str) else prediction)


def _judged(row: Row, parsed: Parsed, task_type: str) -> list[tuple[bool | None, str | None]]:
    """Per round: whether the one item it judges is right (None: no single item) and its mark."""
    out: list[tuple[bool | None, str | None]] = []
    if task_type == "closed":
        letters = _row_letters(row)
        gold = _gold_letter(row, letters)
        for rnd in parsed.rounds:
            letter = option_letter(rnd.answer, letters)
            out.append((None if letter is None else letter == gold, mark_of(rnd.answer)))
    elif task_type == "open":
        gold_set = set(gold_findings(row))
        options = row.get("options")
        for rnd in parsed.rounds:
            found = findings_in(rnd.answer, options)
            out.append((found[0] in gold_set if len(found) == 1 else None, mark_of(rnd.answer)))
    return out


def _verdict(right: bool | None, mark: str | None) -> bool | None:
    if right is None or mark is None:
        return None
    return (mark == ACCEPT) == right


def round_verdicts(row: Row) -> list[bool | None]:
    """Per round of a closed/open prediction: whether its ✅/❌ agrees with gold.

    ``None`` when the round judges no single item (closed: no option letter; open: not exactly one
    finding) or carries no mark; ``[]`` for other task types. ``process_consistency`` is the share of
    ``True`` among the rounds before the last that name an option (a markless one counts as not
    agreeing).

    >>> row = {"task_type": "closed", "answer": "B", "options": ["A) x", "B) y"],
    ...        "prediction": "<think>a</think><answer>A) ✅</answer><think>b</think><answer>B) ✅</answer>"}
    >>> round_verdicts(row)
    [False, True]
    """
    task_type = _task_type(row)
    return [_verdict(*item) for item in _judged(row, parse(prediction_text(row)), task_type)]


def _common(row: Row, parsed: Parsed, task_type: str) -> dict[str, float]:
    """format, rounds and the ungated reward components of a closed/open row."""
    out = {"format": format_score(parsed), "rounds": float(len(parsed.rounds))}
    solution = row.get("solution")
    if solution:
        scores = score(prediction_text(row), _text(solution), task_type, options=row.get("options"))
        out |= {
            "reward_format": scores.format,
            "reward_outcome": scores.outcome,
            "reward_think": scores.think,
            "reward_process": scores.process,
        }
    return out


def _closed(row: Row) -> dict[str, float]:
    prediction = prediction_text(row)
    parsed = parse(prediction)
    letters = _row_letters(row)
    letter = predicted_letter(prediction, letters, parsed)
    judged = [(right, mark) for right, mark in _judged(row, parsed, "closed")[:-1] if right is not None]
    agree = sum(_verdict(right, mark) is True for right, mark in judged)
    out = {
        "accuracy": float(letter is not None and letter == _gold_letter(row, letters)),
        "process_consistency": agree / len(judged) if judged else 0.0,
    }
    return out | _common(row, parsed, "closed")


def set_prf(pred: set[str], gold: set[str]) -> tuple[float, float, float]:
    """Set precision/recall/F1; an empty prediction scores 0 on all three."""
    hits = len(pred & gold)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(gold) if gold else 0.0
    f1 = 2 * hits / (len(pred) + len(gold)) if pred or gold else 0.0
    return precision, recall, f1


def _open(row: Row) -> dict[str, float]:
    parsed = parse(prediction_text(row))
    precision, recall, f1 = set_prf(set(final_findings(row)), set(gold_findings(row)))
    out = {"precision": precision, "recall": recall, "f1": f1}
    return out | _common(row, parsed, "open")


def bleu_tokens(text: str) -> list[str]:
    """Corpus-BLEU tokens: lowercased words (``\\w+``), every other non-space character its own token.

    >>> bleu_tokens("No effusion. Heart size normal, lungs clear.")
    ['no', 'effusion', '.', 'heart', 'size', 'normal', ',', 'lungs', 'clear', '.']
    """
    return _BLEU_TOKEN.findall(text.lower())


_BLEU_TOKEN = re.compile(r"\w+|[^\w\s]")


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F of ``rouge_score`` (``RougeScorer(["rougeL"], use_stemmer=True)``), computed fast.

    >>> round(rouge_l("the heart is enlarged", "heart enlarged"), 4)
    0.6667
    """
    return _rouge_l_tokens(rouge_tokens(prediction), rouge_tokens(reference))


def _report_prediction(row: Row) -> str:
    return answer_text(prediction_text(row))


def _report(row: Row) -> dict[str, float]:
    return {"rouge_l": rouge_l(_report_prediction(row), _text(row.get("answer")))}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


_NUM = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")


def parse_boxes(text: str) -> list[Box]:
    """The distinct boxes in ``text``, in order: every list of exactly four numbers ``[x1, y1, x2, y2]``.

    This reads the Qwen2.5-VL JSON answer ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``, a bare
    ``[x1, y1, x2, y2]``, JSON embedded in other text or cut off mid-way (the complete boxes count), in
    one linear-time regex pass. Coordinates are reordered so that x1 ≤ x2 and y1 ≤ y2; text without such
    a list gives no boxes.

    >>> parse_boxes('Here: [{"bbox_2d": [10, 20, 30, 40], "label": "Nodule"}]'), parse_boxes("[5, 5, 1, 1]")
    ([(10.0, 20.0, 30.0, 40.0)], [(1.0, 1.0, 5.0, 5.0)])
    >>> parse_boxes("no box"), parse_boxes("[1, 2, 3]")
    ([], [])
    """
    boxes: dict[Box, None] = {}
    for match in _BOX.finditer(text):
        x1, y1, x2, y2 = (float(v) for v in match.groups())
        if all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            boxes.setdefault((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), None)
    return list(boxes)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (continuous coordinates; 0 if union is 0).

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _grounding(row: Row) -> dict[str, float]:
    """Grounding grades: ``iou`` = mean over gold boxes of the best IoU with any predicted box (labels are
    not matched), ``acc@0.5`` = fraction of gold boxes whose best IoU ≥ 0.5, ``precision@0.5`` = fraction
    of predicted boxes with IoU ≥ 0.5 to some gold box (0 without boxes; guards against box spamming,
    which the two recall-type numbers do not penalise), ``pred_boxes`` = number of predicted boxes.

    Gold boxes are in the resized (model-input) frame. The spec asks for IoU "in original-image
    coordinates"; both are the same number: the resize maps x ↦ sx·x and y ↦ sy·y, which scales every
    box's area, the intersection (itself the scaled intersection, the map being monotone per axis) and
    hence the union by the same factor sx·sy, so their ratio is unchanged. Only the integer rounding of
    the stored gold coordinates (≤ 0.5 px each) separates the two frames.
    """
    gold = parse_boxes(_text(row.get("answer")))
    if not gold:
        raise ValueError(f"grounding row {row.get('id')!r} has no gold box in its answer")
    pred = parse_boxes(prediction_text(row))
    best = [max((box_iou(g, p) for p in pred), default=0.0) for g in gold]
    matched = [any(box_iou(p, g) >= IOU_THRESHOLD for g in gold) for p in pred]
    return {
        "iou": sum(best) / len(best),
        "acc@0.5": sum(b >= IOU_THRESHOLD for b in best) / len(best),
        "precision@0.5": sum(matched) / len(matched) if matched else 0.0,
        "pred_boxes": float(len(pred)),
    }


_PER_TYPE: dict[str, Callable[[Row], dict[str, float]]] = {
    "closed": _closed,
    "open": _open,
    "report": _report,
    "grounding": _grounding,
}


def per_record(row: Row) -> dict[str, float]:
    """The metric values of one prediction row, by its task type (see the module docstring).

    closed: ``accuracy``, ``process_consistency`` (see :func:`round_verdicts`), ``format``,
    ``rounds``, ``tokens`` and the ungated ``reward_format/outcome/think/process`` of
    :func:`cxmind.rewards.score` (``reward_process`` is already scaled by its weight).
    open: set ``precision``/``recall``/``f1`` of the final answer's canonical findings against the gold
    list (an empty answer scores 0), plus ``format``, ``rounds``, ``tokens``, ``reward_*``.
    report: ``rouge_l``, ``tokens``. grounding: ``iou``, ``acc@0.5``, ``precision@0.5``, ``pred_boxes``,
    ``tokens``. A row with ``error`` set is graded as an empty prediction.

    >>> gold = "<think>a</think><answer>A) ❌</answer><think>b</think><answer>B) ✅</answer>"
    >>> gold += "<think>s</think><answer>B) ✅</answer>"
    >>> row = {"task_type": "closed", "answer": "B", "solution": gold, "options": ["A) x", "B) y"],
    ...        "prediction": gold.replace("B) ✅</answer><think>s", "B) ❌</answer><think>s"), "n_tokens": 40}
    >>> m = per_record(row)
    >>> m["accuracy"], m["process_consistency"], m["format"], m["rounds"], m["tokens"], m["reward_process"]
    (1.0, 0.5, 1.0, 3.0, 40.0, 0.0)
    """
    out = _PER_TYPE[_task_type(row)](row)
    tokens = _number(row.get("n_tokens"))
    if tokens is not None:
        out["tokens"] = tokens
    return {key: float(value) for key, value in out.items()}


#: The per-record metric that says whether a row's final answer is right, per task type.
_CORRECT_KEY = {"closed": "accuracy", "open": "f1", "grounding": "acc@0.5"}


def final_correct(row: Row) -> bool | None:
    """Whether a row's final answer is right: closed ``accuracy`` = 1, open ``f1`` = 1 (exactly the
    gold list), grounding ``acc@0.5`` = 1 (every gold box found); ``None`` for reports (no right answer).

    Uses the row's ``per_record`` grades when they hold the metric (as :func:`aggregate` does), else
    grades the row; a failed row (``error`` set) is wrong.

    >>> final_correct({"task_type": "closed", "answer": "B", "options": ["A) x", "B) y"], "prediction": "B"})
    True
    """
    task_type = _task_type(row)
    key = _CORRECT_KEY.get(task_type)
    if key is None:
        return None
    if row.get("error"):
        return False
    graded = row.get("per_record")
    value = _number(graded.get(key)) if isinstance(graded, Mapping) else None
    if value is None:
        value = per_record(row)[key]
    return value >= 1 - 1e-9


def per_finding_recall(
    rows: Iterable[Row], *, n_bootstrap: int = 0, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Recall per finding over the open-ended rows: of the rows whose gold list holds the finding, the
    fraction whose final answer holds it too ("No Finding" included; it must be written to count).

    With ``n_bootstrap > 0`` each entry also gets a 95% Wilson ``ci`` (``ci_method`` "wilson"; a
    proportion needs no resampling, ``seed`` is unused).

    >>> rows = [{"task_type": "open", "answer": "Edema, Mass", "prediction": "oedema"},
    ...         {"task_type": "open", "answer": "Edema", "prediction": "Mass"}]
    >>> per_finding_recall(rows)
    {'Edema': {'recall': 0.5, 'n': 2}, 'Mass': {'recall': 0.0, 'n': 1}}
    """
    hits: dict[str, list[float]] = {}
    for row in rows:
        if _task_type(row) != "open":
            continue
        pred = set(final_findings(row))
        for finding in gold_findings(row):
            hits.setdefault(finding, []).append(float(finding in pred))
    out: dict[str, dict[str, Any]] = {}
    for finding in sorted(hits):
        values = hits[finding]
        entry: dict[str, Any] = {"recall": sum(values) / len(values), "n": len(values)}
        if n_bootstrap > 0:
            entry["ci"] = list(wilson_ci(sum(values), len(values)))
            entry["ci_method"] = "wilson"
        out[finding] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def chance_accuracy(rows: Iterable[Row]) -> float | None:
    """Expected accuracy of a uniform random guess over the closed rows: mean of 1 / number of options.

    The options are the row's ``options``, else the letters its solution judges, else A–H.

    >>> chance_accuracy([{"task_type": "closed", "options": ["A) Yes", "B) No"]},
    ...                  {"task_type": "closed", "options": ["A) x", "B) y", "C) z", "D) w"]}])
    0.375
    """
    values = [1 / len(_row_letters(row)) for row in rows if _task_type(row) == "closed"]
    return sum(values) / len(values) if values else None


def _is_report(record: Row) -> bool:
    return (record.get("task_type") or TASKS.get(_text(record.get("task")))) == "report"


def most_frequent_report(records: Iterable[Row]) -> str | None:
    """The most frequent reference text (``answer``, white space collapsed) of the report records.

    Ties go to the alphabetically first text; ``None`` without a non-empty report. Meant for the
    *train* split: the constant report a model could learn without looking at the image.

    >>> most_frequent_report([{"task": "report_impression", "answer": t} for t in ("No acute disease.",
    ...     "Cardiomegaly.", "No  acute disease.")])
    'No acute disease.'
    """
    counts = Counter(
        text
        for record in records
        if _is_report(record) and (text := " ".join(_text(record.get("answer")).split()))
    )
    return min(counts, key=lambda text: (-counts[text], text)) if counts else None


def baseline_reports(records: Iterable[Row]) -> dict[str, str]:
    """:func:`most_frequent_report` per report task, for ``aggregate(..., baseline_report=...)``.

    >>> baseline_reports([{"task": "report_impression", "answer": "Normal."},
    ...                   {"task": "report_findings", "answer": "Clear lungs."}])
    {'report_findings': 'Clear lungs.', 'report_impression': 'Normal.'}
    """
    by_task: dict[str, list[Row]] = {}
    for record in records:
        if _is_report(record):
            by_task.setdefault(_text(record.get("task")), []).append(record)
    out = {task: most_frequent_report(rows) for task, rows in sorted(by_task.items())}
    return {task: text for task, text in out.items() if text is not None}


def _majority_answer(rows: Sequence[Row]) -> frozenset[str]:
    """The most frequent gold finding set of open rows (ties: the alphabetically first sorted list)."""
    counts = Counter(frozenset(gold_findings(row)) for row in rows)
    return min(counts, key=lambda s: (-counts[s], sorted(s)))


# ---------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------


def wilson_ci(successes: float, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a proportion ``successes / n`` (95% by default).

    Unlike the bootstrap it is never zero-width: three successes out of three give about (0.44, 1).

    >>> tuple(round(x, 4) for x in wilson_ci(3, 3)), tuple(round(x, 4) for x in wilson_ci(5, 10))
    ((0.4385, 1.0), (0.2366, 0.7634))
    """
    if n <= 0:
        raise ValueError(f"n must be >= 1, got {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(0.0, p * (1 - p) / n + z2 / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _resample_indices(size: int, n: int, seed: int) -> np.ndarray:
    if size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.random.default_rng(seed).integers(0, size, size=(n, size))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    statistic: Callable[..., Any] = np.mean,
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of ``statistic`` (called as ``statistic(samples, axis=1)``).

    Indices are drawn once as an ``(n, len(values))`` array from ``numpy.random.default_rng(seed)``, so
    the interval is a pure function of the inputs.

    >>> bootstrap_ci([0, 1, 1, 1], n=200, seed=0) == bootstrap_ci([0, 1, 1, 1], n=200, seed=0)
    True
    >>> bootstrap_ci([2.0, 2.0])
    (2.0, 2.0)
    """
    data = np.asarray(values, dtype=float)
    idx = _resample_indices(len(data), n, seed)
    return _interval(np.asarray(statistic(data[idx], axis=1), dtype=float), alpha)


def _bootstrap_sums(
    stats: np.ndarray, fn: Callable[[np.ndarray], list[float]], *, n: int, seed: int, alpha: float = 0.05
) -> list[tuple[float, float]]:
    """CIs of corpus metrics that are functions of per-record sufficient statistics summed over records.

    Resamples records (the same ``(n, len)`` indices as :func:`bootstrap_ci`), sums each resample's
    statistics with one count-matrix product and recomputes ``fn`` on every resample.
    """
    size = len(stats)
    idx = _resample_indices(size, n, seed)
    rows = np.repeat(np.arange(n), size)
    counts = np.bincount(rows * size + idx.ravel(), minlength=n * size).reshape(n, size)
    sums = counts @ stats
    replicates = np.array([fn(s) for s in sums], dtype=float)
    return [_interval(replicates[:, j], alpha) for j in range(replicates.shape[1])]


# ---------------------------------------------------------------------------------------------
# Corpus-level report metrics
# ---------------------------------------------------------------------------------------------


def _ngram_counts(tokens: list[str], order: int) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - order + 1):
        gram = tuple(tokens[i : i + order])
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def _bleu_stats(hypothesis: list[str], reference: list[str]) -> list[int]:
    """nltk's per-sentence BLEU statistics: clipped matches and ``max(1, #hyp n-grams)`` for n = 1..4,
    then the hypothesis and reference lengths."""
    matches, totals = [], []
    for order in range(1, 5):
        hyp, ref = _ngram_counts(hypothesis, order), _ngram_counts(reference, order)
        matches.append(sum(min(count, ref.get(gram, 0)) for gram, count in hyp.items()))
        totals.append(max(1, sum(hyp.values())))
    return [*matches, *totals, len(hypothesis), len(reference)]


def _bleu_from_sums(sums: np.ndarray) -> list[float]:
    """BLEU-1..4 from summed statistics, with the exact arithmetic of nltk ``corpus_bleu`` (no smoothing:
    a zero n-gram precision contributes ``log(sys.float_info.min)``; no unigram match gives 0)."""
    matches = [int(x) for x in sums[:4]]
    totals = [int(x) for x in sums[4:8]]
    hyp_len, ref_len = int(sums[8]), int(sums[9])
    if matches[0] == 0:
        return [0.0] * len(BLEU_WEIGHTS)
    bp = 1.0 if hyp_len > ref_len else 0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len)
    precisions = [m / t if m else sys.float_info.min for m, t in zip(matches, totals, strict=True)]
    return [
        bp * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, precisions, strict=False)))
        for weights in BLEU_WEIGHTS.values()
    ]


def _positives(labels: Mapping[str, int]) -> set[str]:
    """CheXpert-14 findings labelled positive (1); uncertain (-1), negative (0) and absent are negative."""
    return {name for key, value in labels.items() if value == 1 and (name := canonical(key)) in CHEXPERT_14}


def _ce_stats(generated: set[str], reference: set[str]) -> list[int]:
    """Per finding of ``CHEXPERT_14``: true positive, false positive, false negative (0/1 each)."""
    out: list[int] = []
    for name in CHEXPERT_14:
        g, r = name in generated, name in reference
        out += [int(g and r), int(g and not r), int(r and not g)]
    return out


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 with 0/0 read as 0."""
    tp, fp, fn = float(tp), float(fp), float(fn)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


_CE_ROWS = np.array([CHEXPERT_14.index(name) for name in CE_FINDINGS])


def _ce_from_sums(sums: np.ndarray) -> list[float]:
    """Micro precision/recall/F1 over all (record, finding) pairs of the findings in ``CE_FINDINGS``."""
    table = np.asarray(sums, dtype=float).reshape(len(CHEXPERT_14), 3)[_CE_ROWS].sum(axis=0)
    return list(_prf(*table))


def _ce_per_finding(sums: np.ndarray) -> dict[str, dict[str, float | int]]:
    table = np.asarray(sums, dtype=float).reshape(len(CHEXPERT_14), 3)
    out: dict[str, dict[str, float | int]] = {}
    for name, (tp, fp, fn) in zip(CHEXPERT_14, table, strict=True):
        p, r, f = _prf(tp, fp, fn)
        out[name] = {"precision": p, "recall": r, "f1": f, "n": int(tp + fn), "n_predicted": int(tp + fp)}
    return out


def _load_labeler() -> Callable[[str], Mapping[str, int]] | None:
    try:
        from cxmind.eval.labeler import label_report
    except ImportError:
        return None
    return label_report


_NO_LABELER = "clinical efficacy not computed: cxmind.eval.labeler.label_report is not importable"
Labels = Callable[[str], set[str]]


def _labeler_positives() -> Labels | None:
    """A cached text -> positive CheXpert-14 findings function; a blank text asserts nothing."""
    labeler = _load_labeler()
    if labeler is None:
        return None
    cache: dict[str, set[str]] = {}

    def positives(text: str) -> set[str]:
        if text not in cache:
            cache[text] = _positives(labeler(text)) if text.strip() else set()
        return cache[text]

    return positives


def report_labels(text: str) -> list[str] | None:
    """The CheXpert-14 findings the report labeler marks positive in ``text``, in CheXpert order.

    These are the labels clinical efficacy compares; ``None`` without a labeler, ``[]`` for a blank text.
    """
    positives = _labeler_positives()
    if positives is None:
        return None
    found = positives(text)
    return [name for name in CHEXPERT_14 if name in found]


class _ReportCorpus:
    """Per-record sufficient statistics of report pairs; corpus metrics of any subset are sums of them."""

    def __init__(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        notes: list[str],
        positives: Labels | None = None,
    ) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        self.bleu = np.array(
            [
                _bleu_stats(bleu_tokens(p), bleu_tokens(r))
                for p, r in zip(predictions, references, strict=True)
            ],
            dtype=float,
        ).reshape(len(predictions), 10)
        positives = positives or _labeler_positives()
        self.ce: np.ndarray | None = None
        if positives is None:
            if _NO_LABELER not in notes:
                notes.append(_NO_LABELER)
        else:
            self.ce = np.array(
                [_ce_stats(positives(p), positives(r)) for p, r in zip(predictions, references, strict=True)],
                dtype=float,
            ).reshape(len(predictions), 3 * len(CHEXPERT_14))

    def metrics(
        self, idx: np.ndarray | slice, *, n_bootstrap: int = 0, seed: int = 0
    ) -> dict[str, dict[str, Any]]:
        """``{metric: {"value", "ci", "n"[, "ci_method"]}}`` of BLEU-n and CE micro over ``idx``."""
        out: dict[str, dict[str, Any]] = {}
        parts: list[tuple[tuple[str, ...], np.ndarray, Callable[[np.ndarray], list[float]]]] = [
            (tuple(BLEU_WEIGHTS), self.bleu[idx], _bleu_from_sums)
        ]
        if self.ce is not None:
            parts.append((CE_METRICS, self.ce[idx], _ce_from_sums))
        for names, stats, fn in parts:
            if not len(stats):
                continue
            values = fn(stats.sum(axis=0))
            cis = (
                _bootstrap_sums(stats, fn, n=n_bootstrap, seed=seed)
                if n_bootstrap > 0
                else [None] * len(names)
            )
            for name, value, ci in zip(names, values, cis, strict=True):
                out[name] = {"value": float(value), "ci": list(ci) if ci else None, "n": len(stats)}
                if ci:
                    out[name]["ci_method"] = "bootstrap"
        return out

    def per_finding(self, idx: np.ndarray | slice) -> dict[str, dict[str, float | int]] | None:
        return None if self.ce is None else _ce_per_finding(self.ce[idx].sum(axis=0))


def _bertscore(
    predictions: Sequence[str], references: Sequence[str], model: str, notes: list[str]
) -> list[float] | None:
    """Per-pair BERTScore F1 with a *local* scorer model, or ``None`` and a note saying why not."""
    path = Path(model).expanduser()
    if not path.exists():
        notes.append(
            f"BERTScore not computed: {model!r} is not a local model path (evaluation never downloads)"
        )
        return None
    try:
        import bert_score
    except ImportError:
        notes.append(
            "BERTScore not computed: the bert_score package is not installed (pip install bert-score)"
        )
        return None
    layers = getattr(getattr(bert_score, "utils", None), "model2layers", {}).get(path.name)
    layer_note = "its bert_score default layer"
    if layers is None:
        try:
            layers = int(json.loads((path / "config.json").read_text())["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError):
            notes.append(
                f"BERTScore not computed: no layer count for {model!r} (config.json num_hidden_layers)"
            )
            return None
        layer_note = "its last layer (model not in bert_score's table)"
    try:
        _, _, f1 = bert_score.score(
            list(predictions),
            list(references),
            model_type=str(path),
            num_layers=layers,
            lang="en",
            verbose=False,
        )
    except Exception as error:  # a broken scorer must not lose the rest of the evaluation
        notes.append(f"BERTScore failed: {type(error).__name__}: {error}")
        return None
    notes.append(f"BERTScore F1 with {path.name}, layer {layers} ({layer_note}), no baseline rescaling")
    return [float(x) for x in f1.tolist()]


def report_metrics(
    predictions: Sequence[str], references: Sequence[str], *, bertscore_model: str | None = None
) -> dict[str, Any]:
    """Corpus-level report-generation metrics of generated reports against their references.

    * ``bleu_1``..``bleu_4``: nltk ``corpus_bleu`` (weights ``(1,)``, ``(.5, .5)``, ``(1/3,)*3``,
      ``(.25,)*4``, no smoothing) on :func:`bleu_tokens` (lowercased, punctuation split off).
    * ``rouge_l``: mean per-pair ROUGE-L F (``rouge_score``, Porter stemming).
    * ``bertscore_f1``: mean BERTScore F1, only with a local ``bertscore_model`` and the ``bert_score``
      package; otherwise ``None`` and a note.
    * ``ce_precision``/``ce_recall``/``ce_f1``: clinical efficacy, micro-averaged over all (report,
      finding) pairs of the 13 CheXpert findings other than "No Finding" (``CE_FINDINGS``), positive =
      labelled 1 by ``cxmind.eval.labeler.label_report``; uncertain (-1) counts as negative, as is
      common practice; a blank report asserts nothing. ``ce_per_finding`` gives P/R/F1 of all 14
      findings, "No Finding" included, with ``n`` (reference positives) and ``n_predicted``. 0/0 is read
      as 0. ``None`` without a labeler.

    >>> m = report_metrics(["no effusion ."], ["no effusion ."])
    >>> m["bleu_1"], m["rouge_l"], m["n"]
    (1.0, 1.0, 1)
    """
    notes: list[str] = []
    corpus = _ReportCorpus(predictions, references, notes)
    values = {name: entry["value"] for name, entry in corpus.metrics(slice(None)).items()}
    rouge = [rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]
    bert = _bertscore(predictions, references, bertscore_model, notes) if bertscore_model else None
    if not bertscore_model:
        notes.append("BERTScore not computed: no bertscore_model (a local scorer path) was given")
    out: dict[str, Any] = {name: values.get(name) for name in BLEU_WEIGHTS}
    out["rouge_l"] = sum(rouge) / len(rouge) if rouge else None
    out["bertscore_f1"] = sum(bert) / len(bert) if bert else None
    out |= {name: values.get(name) for name in CE_METRICS}
    out["ce_per_finding"] = corpus.per_finding(slice(None)) if len(predictions) else None
    out["n"] = len(predictions)
    out["notes"] = notes
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def _summary(name: str, values: list[float], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Mean of per-record values with its CI: Wilson for a rate whose every value is 0 or 1, else the
    bootstrap."""
    entry: dict[str, Any] = {"value": float(sum(values) / len(values)), "ci": None, "n": len(values)}
    if n_bootstrap > 0:
        if name in RATE_METRICS and all(v in (0.0, 1.0) for v in values):
            entry["ci"], entry["ci_method"] = list(wilson_ci(sum(values), len(values))), "wilson"
        else:
            entry["ci"] = list(bootstrap_ci(values, n=n_bootstrap, seed=seed))
            entry["ci_method"] = "bootstrap"
    return entry


def _fixed(value: float, n: int, kind: str, **extra: Any) -> dict[str, Any]:
    return {"value": float(value), "ci": None, "n": n, "kind": kind, **extra}


def aggregate(
    rows: Sequence[Row],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    bertscore_model: str | None = None,
    baseline_report: str | Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Means and 95% CIs of every metric per task type, task, source × task and overall, with baselines.

    Returns ``{"overall": M, "by_type": {type: M}, "by_task": {task: M}, "by_source": {source:
    {task: M}}, "n_records": N, "baselines": B, "per_finding_recall": {"overall": R, "by_task": {task:
    R}}, "ce_per_finding": {"overall": C, "by_task": {task: C}}, "notes": [...]}`` where
    ``M = {metric: {"value", "ci": [lo, hi], "n", "ci_method"}}`` (``ci_method`` "wilson" or "bootstrap",
    absent when ``ci`` is ``None``) and ``n`` is the number of records the metric averages over;
    ``N = {"overall": int, "by_type": {type: int}, "by_task": {task: int}, "by_source": {source: {task:
    int}}}`` counts the records of each group.

    Per-record metrics (:func:`per_record`; a row's ``per_record`` dict is reused when present, plus
    ``bertscore_f1`` when a scorer is given) are averaged over the records that have them, so overall
    ``accuracy`` is over closed records and overall ``format`` over closed and open ones. Report groups
    also get the corpus metrics of :func:`report_metrics` (BLEU-n, CE micro), their CIs from recomputing
    them on each resample of the group's records. CIs: Wilson for proportions (a rate whose every value
    is 0 or 1), percentile bootstrap with ``n_bootstrap`` resamples and ``seed`` otherwise; ``ci`` is
    ``None`` when ``n_bootstrap`` is 0.

    Baselines ``B = {"overall": X, "by_type": {type: X}, "by_task": {task: X}, "constant_report":
    {task: text}}``, ``X`` keyed like ``M`` by the metric it is a baseline for, each entry with a
    ``kind``: closed ``accuracy`` of uniform guessing ("chance", :func:`chance_accuracy`); open
    ``precision``/``recall``/``f1`` of always answering the group's most frequent gold list
    ("majority_answer", with that ``answer``; taken from the evaluated rows themselves, so an upper
    bound for a constant answer); report ``bleu_1``..``bleu_4``, ``rouge_l`` and ``ce_*`` of replacing
    every prediction by ``baseline_report`` ("constant_report"; one text, or one per task as given by
    :func:`baseline_reports` on the train split; CIs as for the model). Empty groups are omitted; all
    values are plain JSON types.

    >>> rows = [{"id": "1", "task": "disease_binary", "task_type": "closed", "source": "nih", "answer": "A",
    ...          "solution": None, "options": ["A) Yes", "B) No"], "prediction": "A", "n_tokens": 1}]
    >>> result = aggregate(rows, n_bootstrap=10)
    >>> entry = result["by_task"]["disease_binary"]["accuracy"]
    >>> entry["value"], [round(x, 3) for x in entry["ci"]], entry["n"], entry["ci_method"]
    (1.0, [0.207, 1.0], 1, 'wilson')
    >>> result["baselines"]["by_task"]["disease_binary"]["accuracy"]
    {'value': 0.5, 'ci': None, 'n': 1, 'kind': 'chance'}
    """
    notes: list[str] = []
    types = [_task_type(row) for row in rows]
    graded = [
        dict(row["per_record"]) if isinstance(row.get("per_record"), Mapping) else per_record(row)
        for row in rows
    ]

    report_idx = [i for i, t in enumerate(types) if t == "report"]
    position = {i: k for k, i in enumerate(report_idx)}
    corpus = base_corpus = None
    constant: dict[str, str] = {}
    base_rouge: dict[int, float] = {}
    if report_idx:
        positives = _labeler_positives()
        predictions = [_report_prediction(rows[i]) for i in report_idx]
        references = [_text(rows[i].get("answer")) for i in report_idx]
        corpus = _ReportCorpus(predictions, references, notes, positives)
        if bertscore_model:
            bert = _bertscore(predictions, references, bertscore_model, notes)
            for i, value in zip(report_idx, bert or [], strict=False):
                graded[i]["bertscore_f1"] = value
        else:
            notes.append("BERTScore not computed: no bertscore_model (a local scorer path) was given")
        tasks = sorted({_text(rows[i].get("task")) for i in report_idx})
        if isinstance(baseline_report, str):
            constant = dict.fromkeys(tasks, baseline_report)
        elif isinstance(baseline_report, Mapping):
            constant = {t: _text(baseline_report[t]) for t in tasks if baseline_report.get(t) is not None}
        if constant:
            base_texts = [constant.get(_text(rows[i].get("task")), "") for i in report_idx]
            base_corpus = _ReportCorpus(base_texts, references, [], positives)
            for i, text, reference in zip(report_idx, base_texts, references, strict=True):
                if _text(rows[i].get("task")) in constant:
                    base_rouge[i] = rouge_l(text, reference)
        missing = [t for t in tasks if t not in constant]
        if missing:
            notes.append(
                "report baseline not computed for "
                + ", ".join(missing)
                + ": no baseline_report given (the most frequent train report, see baseline_reports)"
            )

    def group(indices: list[int]) -> dict[str, dict[str, Any]]:
        values: dict[str, list[float]] = {}
        for i in indices:
            for name, value in graded[i].items():
                values.setdefault(name, []).append(float(value))
        out = {name: _summary(name, vals, n_bootstrap, seed) for name, vals in values.items()}
        reports = np.array([position[i] for i in indices if i in position], dtype=int)
        if corpus is not None and len(reports):
            out |= corpus.metrics(reports, n_bootstrap=n_bootstrap, seed=seed)
        return out

    def baselines(indices: list[int]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        closed = [rows[i] for i in indices if types[i] == "closed"]
        if closed:
            out["accuracy"] = _fixed(chance_accuracy(closed) or 0.0, len(closed), "chance")
        opened = [rows[i] for i in indices if types[i] == "open"]
        if opened:
            majority = _majority_answer(opened)
            prf = np.array([set_prf(set(majority), set(gold_findings(row))) for row in opened])
            answer = ", ".join(sorted(majority))
            for name, value in zip(("precision", "recall", "f1"), prf.mean(axis=0), strict=True):
                out[name] = _fixed(value, len(opened), "majority_answer", answer=answer)
        based = [i for i in indices if i in base_rouge]
        if base_corpus is not None and based:
            entry = _summary("rouge_l", [base_rouge[i] for i in based], n_bootstrap, seed)
            reports = np.array([position[i] for i in based], dtype=int)
            for name, metric in (
                ("rouge_l", entry),
                *base_corpus.metrics(reports, n_bootstrap=n_bootstrap, seed=seed).items(),
            ):
                out[name] = metric | {"kind": "constant_report"}
        return out

    by_type: dict[str, list[int]] = {}
    by_task: dict[str, list[int]] = {}
    by_source: dict[str, dict[str, list[int]]] = {}
    for i, row in enumerate(rows):
        task, source = _text(row.get("task")), _text(row.get("source"))
        by_type.setdefault(types[i], []).append(i)
        by_task.setdefault(task, []).append(i)
        by_source.setdefault(source, {}).setdefault(task, []).append(i)
    type_order = sorted(by_type, key=TASK_TYPES.index)

    open_rows = {task: [rows[i] for i in idx if types[i] == "open"] for task, idx in by_task.items()}
    all_open = [row for t, row in zip(types, rows, strict=True) if t == "open"]
    recall_kw = {"n_bootstrap": n_bootstrap, "seed": seed}
    result: dict[str, Any] = {
        "overall": group(list(range(len(rows)))) if rows else {},
        "by_type": {t: group(by_type[t]) for t in type_order},
        "by_task": {task: group(idx) for task, idx in sorted(by_task.items())},
        "by_source": {
            source: {task: group(idx) for task, idx in sorted(tasks.items())}
            for source, tasks in sorted(by_source.items())
        },
        "n_records": {
            "overall": len(rows),
            "by_type": {t: len(by_type[t]) for t in type_order},
            "by_task": {task: len(idx) for task, idx in sorted(by_task.items())},
            "by_source": {
                source: {task: len(idx) for task, idx in sorted(tasks.items())}
                for source, tasks in sorted(by_source.items())
            },
        },
        "baselines": {
            "overall": baselines(list(range(len(rows)))),
            "by_type": {t: baselines(by_type[t]) for t in type_order},
            "by_task": {task: baselines(idx) for task, idx in sorted(by_task.items())},
            "constant_report": constant,
        },
        "per_finding_recall": {
            "overall": per_finding_recall(all_open, **recall_kw),
            "by_task": {t: per_finding_recall(r, **recall_kw) for t, r in sorted(open_rows.items()) if r},
        },
        "ce_per_finding": {},
    }
    if corpus is not None and corpus.ce is not None:
        result["ce_per_finding"] = {
            "overall": corpus.per_finding(slice(None)),
            "by_task": {
                task: corpus.per_finding(np.array([position[i] for i in idx if i in position]))
                for task, idx in sorted(by_task.items())
                if any(i in position for i in idx)
            },
        }

    failed = sum(bool(row.get("error")) for row in rows)
    if failed:
        notes.append(
            f"{failed} of {len(rows)} rows failed to generate (error set); they score as an empty "
            "prediction, i.e. wrong"
        )
    fallbacks = {
        "closed": "their letter was read from plain text (an 'answer: X' statement or a leading label)",
        "open": "their findings were read from the whole text",
    }
    for task_type, how in fallbacks.items():
        total = sum(t == task_type for t in types)
        bare = sum(
            t == task_type and not rows[i].get("error") and not graded[i].get("rounds")
            for i, t in enumerate(types)
        )
        if bare:
            notes.append(
                f"{task_type}: {bare} of {total} predictions have no complete <think>/<answer> round; {how}"
            )
    empty = sum(t == "open" and not any(map(is_known, final_findings(rows[i]))) for i, t in enumerate(types))
    if empty:
        notes.append(
            f"open: {empty} of {len(all_open)} predictions name no known finding (empty, failed or "
            "unreadable output); they score 0 ('No Finding' earns credit only when written)"
        )
    grounding = [i for i, t in enumerate(types) if t == "grounding"]
    unboxed = sum(not graded[i].get("pred_boxes") for i in grounding)
    if unboxed:
        notes.append(f"grounding: {unboxed} of {len(grounding)} predictions contain no parseable box")
    if corpus is not None and corpus.ce is not None:
        notes.append(
            "ce_precision/ce_recall/ce_f1: micro over the 13 CheXpert findings other than No Finding "
            "(the labeler's verdict on a report that names nothing); ce_per_finding lists all 14"
        )
    if by_type.get("closed") or all_open or constant:
        notes.append(
            "baselines: closed accuracy = chance (mean 1/number of options); open = always answering "
            "the group's most frequent gold list (taken from the evaluated rows); report = every "
            "prediction replaced by the constant report in baselines.constant_report"
        )
    if n_bootstrap > 0:
        notes.append(
            "ci (95%): Wilson score interval for proportions (accuracy, format and the other rates whose "
            "every per-record value is 0 or 1; per-finding recall); percentile bootstrap over records, "
            f"{n_bootstrap} resamples, seed "
            f"{seed}, for other means and the corpus metrics (BLEU, CE, recomputed on every resample); "
            "each entry's ci_method says which"
        )
    else:
        notes.append("ci: not computed (n_bootstrap = 0)")
    result["notes"] = notes
    return result
