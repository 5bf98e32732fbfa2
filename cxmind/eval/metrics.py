"""Evaluation metrics for every task type, with percentile-bootstrap confidence intervals.

A *prediction row* is a record (``cxmind.data.schema``) plus the model's raw text ``prediction`` and
``n_tokens`` (generated tokens). ``per_record`` grades one row; ``aggregate`` averages the grades per
task, per source × task and overall, adds corpus-level report metrics (BLEU-1..4, clinical efficacy)
and per-finding recall, and attaches a bootstrap CI to every number.

Definitions (all deterministic; no caps, no silent dropping):

* **answer text** of a prediction: the answer of its last complete ``<think>…</think><answer>…</answer>``
  round when it has one (parsed leniently by :func:`cxmind.format.parse`), else the whole text.
* **closed**: ``accuracy`` = 1 iff the predicted option letter equals the gold letter. The predicted
  letter is :func:`~cxmind.format.option_letter` of the last round's answer, restricted to the row's
  option letters; a prediction without any round falls back to plain text (the last "answer (is):
  X" statement, else a leading label such as "B", "B)", "(b)" or "B. Edema"). Never a string match
  of the whole output.
* **open**: set precision/recall/F1 of canonical findings; an empty set is read as {"No Finding"}.
* **report**: per-record ROUGE-L F (``rouge_score``, stemming); corpus BLEU-1..4 (nltk ``corpus_bleu``)
  and micro CheXpert-14 clinical efficacy from a report labeler.
* **grounding**: best-IoU per gold box (class-agnostic), its mean and the fraction ≥ 0.5.

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
    findings_in,
    mark_of,
    option_letter,
    parse,
    question_letters,
)
from cxmind.rewards.scoring import score
from cxmind.rewards.similarity import rouge_l as _rouge_l_tokens
from cxmind.rewards.similarity import rouge_tokens
from cxmind.vocab import CHEXPERT_14, NO_FINDING, canonical

__all__ = [
    "BLEU_WEIGHTS",
    "aggregate",
    "answer_text",
    "bleu_tokens",
    "bootstrap_ci",
    "box_iou",
    "finding_set",
    "parse_boxes",
    "per_finding_recall",
    "per_record",
    "predicted_letter",
    "report_metrics",
    "rouge_l",
]

#: nltk ``corpus_bleu`` weights of BLEU-1..4.
BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu_1": (1.0,),
    "bleu_2": (0.5, 0.5),
    "bleu_3": (1 / 3, 1 / 3, 1 / 3),
    "bleu_4": (0.25, 0.25, 0.25, 0.25),
}
CE_METRICS = ("ce_precision", "ce_recall", "ce_f1")
IOU_THRESHOLD = 0.5
TASK_TYPES = ("closed", "open", "report", "grounding")

Box = tuple[float, float, float, float]
Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Reading predictions
# ---------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


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
_LEADING_LABEL = re.compile(r"\s*(?:\(([A-Za-z])\)|([A-Z])(?=[).:]|\s*$))")


def _plain_letter(text: str, letters: Iterable[str]) -> str | None:
    """Letter of an unformatted answer: the last "answer (is): X", else a leading "X", "X)", "(x)", "X."."""
    allowed = set(letters)
    statements = [m for m in _ANSWER_STATEMENT.finditer(text) if (m.group(1) or m.group(2))]
    # re.I makes [A-Z] match lowercase too: only an uppercase bare letter (or a parenthesised one) counts.
    statements = [m for m in statements if m.group(1) or m.group(2).isupper()]
    if statements:
        letter = (statements[-1].group(1) or statements[-1].group(2)).upper()
        return letter if letter in allowed else None
    lead = _LEADING_LABEL.match(text)
    if lead:
        letter = (lead.group(1) or lead.group(2)).upper()
        return letter if letter in allowed else None
    return None


def predicted_letter(prediction: str, letters: Iterable[str], parsed: Parsed | None = None) -> str | None:
    """The final option letter of a closed-ended prediction, restricted to ``letters``.

    >>> predicted_letter("<think>a</think><answer>A) ❌</answer><think>s</think><answer>C) ✅</answer>", "AC")
    'C'
    >>> [predicted_letter(text, "AB") for text in ("The answer is B.", "A chest film", "E")]
    ['B', None, None]
    """
    letters = tuple(letters)
    parsed = parse(prediction) if parsed is None else parsed
    if parsed.rounds:
        return option_letter(parsed.rounds[-1].answer, letters)
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


def finding_set(text: str) -> set[str]:
    """Canonical findings listed in ``text``; an empty list means {"No Finding"}.

    >>> sorted(finding_set("effusion, Enlarged heart")), finding_set("")
    (['Cardiomegaly', 'Pleural Effusion'], {'No Finding'})
    """
    return set(findings_in(text)) or {NO_FINDING}


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


def _format_score(parsed: Parsed) -> float:
    """Fixed-mode format reward: only well-formed rounds, and at least two of them."""
    return 1.0 if parsed.well_formed and len(parsed.rounds) >= 2 else 0.0


def _common(row: Row, parsed: Parsed, task_type: str) -> dict[str, float]:
    """format, rounds and the ungated reward components of a closed/open row."""
    out = {"format": _format_score(parsed), "rounds": float(len(parsed.rounds))}
    solution = row.get("solution")
    if solution:
        options = row.get("options") if task_type == "closed" else None
        scores = score(_text(row.get("prediction")), _text(solution), task_type, options=options)
        out |= {
            "reward_format": scores.format,
            "reward_outcome": scores.outcome,
            "reward_think": scores.think,
            "reward_process": scores.process,
        }
    return out


def _closed(row: Row) -> dict[str, float]:
    prediction = _text(row.get("prediction"))
    parsed = parse(prediction)
    letters = _row_letters(row)
    gold = _gold_letter(row, letters)
    letter = predicted_letter(prediction, letters, parsed)
    judged = [
        (x, mark_of(r.answer))
        for r in parsed.rounds[:-1]
        if (x := option_letter(r.answer, letters)) is not None
    ]
    agree = sum(mark == (ACCEPT if x == gold else REJECT) for x, mark in judged)
    out = {
        "accuracy": float(letter is not None and letter == gold),
        "process_consistency": agree / len(judged) if judged else 0.0,
    }
    return out | _common(row, parsed, "closed")


def _open(row: Row) -> dict[str, float]:
    prediction = _text(row.get("prediction"))
    parsed = parse(prediction)
    pred = finding_set(answer_text(prediction, parsed))
    gold = finding_set(_text(row.get("answer")))
    hits = len(pred & gold)
    out = {
        "precision": hits / len(pred),
        "recall": hits / len(gold),
        "f1": 2 * hits / (len(pred) + len(gold)),
    }
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


def _report(row: Row) -> dict[str, float]:
    prediction = answer_text(_text(row.get("prediction")))
    return {"rouge_l": rouge_l(prediction, _text(row.get("answer")))}


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
    pred = parse_boxes(_text(row.get("prediction")))
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

    closed: ``accuracy``, ``process_consistency`` (of the rounds before the last that name an option,
    the fraction whose mark agrees with gold, ✅ ⇔ letter = gold; 0 when there is none), ``format``,
    ``rounds``, ``tokens`` and the ungated ``reward_format/outcome/think/process`` of
    :func:`cxmind.rewards.score` (``reward_process`` is already scaled by its weight).
    open: set ``precision``/``recall``/``f1`` of the final answer's canonical findings against the gold
    list (an empty list counts as "No Finding"), plus ``format``, ``rounds``, ``tokens``, ``reward_*``.
    report: ``rouge_l``, ``tokens``. grounding: ``iou``, ``acc@0.5``, ``precision@0.5``, ``pred_boxes``,
    ``tokens``.

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


def per_finding_recall(
    rows: Iterable[Row], *, n_bootstrap: int = 0, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Recall@1 per finding over the open-ended rows: of the rows whose gold list holds the finding, the
    fraction whose final answer holds it too ("No Finding" included; an empty answer counts as it).

    With ``n_bootstrap > 0`` each entry also gets a percentile-bootstrap ``ci``.

    >>> rows = [{"task_type": "open", "answer": "Edema, Mass", "prediction": "oedema"},
    ...         {"task_type": "open", "answer": "Edema", "prediction": "Mass"}]
    >>> per_finding_recall(rows)
    {'Edema': {'recall': 0.5, 'n': 2}, 'Mass': {'recall': 0.0, 'n': 1}}
    """
    hits: dict[str, list[float]] = {}
    for row in rows:
        if _task_type(row) != "open":
            continue
        pred = finding_set(answer_text(_text(row.get("prediction"))))
        for finding in finding_set(_text(row.get("answer"))):
            hits.setdefault(finding, []).append(float(finding in pred))
    out: dict[str, dict[str, Any]] = {}
    for finding in sorted(hits):
        values = hits[finding]
        entry: dict[str, Any] = {"recall": sum(values) / len(values), "n": len(values)}
        if n_bootstrap > 0:
            entry["ci"] = list(bootstrap_ci(values, n=n_bootstrap, seed=seed))
        out[finding] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


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


def _ce_from_sums(sums: np.ndarray) -> list[float]:
    """Micro precision/recall/F1 over all (record, finding) pairs."""
    table = np.asarray(sums, dtype=float).reshape(len(CHEXPERT_14), 3).sum(axis=0)
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


class _ReportCorpus:
    """Per-record sufficient statistics of report pairs; corpus metrics of any subset are sums of them."""

    def __init__(self, predictions: Sequence[str], references: Sequence[str], notes: list[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        self.bleu = np.array(
            [
                _bleu_stats(bleu_tokens(p), bleu_tokens(r))
                for p, r in zip(predictions, references, strict=True)
            ],
            dtype=float,
        ).reshape(len(predictions), 10)
        labeler = _load_labeler()
        self.ce: np.ndarray | None = None
        if labeler is None:
            notes.append(_NO_LABELER)
        else:
            cache: dict[str, set[str]] = {}

            def positives(text: str) -> set[str]:
                if text not in cache:
                    cache[text] = _positives(labeler(text))
                return cache[text]

            self.ce = np.array(
                [_ce_stats(positives(p), positives(r)) for p, r in zip(predictions, references, strict=True)],
                dtype=float,
            ).reshape(len(predictions), 3 * len(CHEXPERT_14))

    def metrics(
        self, idx: np.ndarray | slice, *, n_bootstrap: int = 0, seed: int = 0
    ) -> dict[str, dict[str, Any]]:
        """``{metric: {"value", "ci", "n"}}`` of the BLEU-n and CE micro metrics over the records ``idx``."""
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
      CheXpert-14 finding) pairs, positive = labelled 1 by ``cxmind.eval.labeler.label_report``; uncertain
      (-1) counts as negative, as is common practice. ``ce_per_finding`` gives P/R/F1 per finding with
      ``n`` (reference positives) and ``n_predicted``. 0/0 is read as 0. ``None`` without a labeler.

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


def _summary(values: list[float], n_bootstrap: int, seed: int) -> dict[str, Any]:
    ci = list(bootstrap_ci(values, n=n_bootstrap, seed=seed)) if n_bootstrap > 0 else None
    return {"value": float(sum(values) / len(values)), "ci": ci, "n": len(values)}


def aggregate(
    rows: Sequence[Row], *, n_bootstrap: int = 1000, seed: int = 0, bertscore_model: str | None = None
) -> dict[str, Any]:
    """Means and bootstrap CIs of every metric per task, per source × task and overall.

    Returns ``{"overall": M, "by_task": {task: M}, "by_source": {source: {task: M}},
    "per_finding_recall": {"overall": R, "by_task": {task: R}}, "ce_per_finding": {"overall": C,
    "by_task": {task: C}}, "notes": [...]}`` where ``M = {metric: {"value", "ci": [lo, hi], "n"}}``.
    Per-record metrics (:func:`per_record`; a row's ``per_record`` dict is reused when present, plus
    ``bertscore_f1`` when a scorer is given) are averaged over the records that have them, so overall
    ``accuracy`` is over closed records and overall ``format`` over closed and open ones. Report groups
    also get the corpus metrics of :func:`report_metrics` (BLEU-n, CE micro), their CIs from recomputing
    them on each resample of the group's records. CIs: 95% percentile bootstrap with ``n_bootstrap``
    resamples and ``seed`` (``ci`` is ``None`` when ``n_bootstrap`` is 0). Empty groups are omitted; all
    values are plain JSON types.

    >>> rows = [{"id": "1", "task": "disease_binary", "task_type": "closed", "source": "nih", "answer": "A",
    ...          "solution": None, "options": ["A) Yes", "B) No"], "prediction": "A", "n_tokens": 1}]
    >>> aggregate(rows, n_bootstrap=10)["by_task"]["disease_binary"]["accuracy"]
    {'value': 1.0, 'ci': [1.0, 1.0], 'n': 1}
    """
    notes: list[str] = []
    types = [_task_type(row) for row in rows]
    graded = [
        dict(row["per_record"]) if isinstance(row.get("per_record"), Mapping) else per_record(row)
        for row in rows
    ]

    report_idx = [i for i, t in enumerate(types) if t == "report"]
    corpus = None
    position = {i: k for k, i in enumerate(report_idx)}
    if report_idx:
        predictions = [answer_text(_text(rows[i].get("prediction"))) for i in report_idx]
        references = [_text(rows[i].get("answer")) for i in report_idx]
        corpus = _ReportCorpus(predictions, references, notes)
        if bertscore_model:
            bert = _bertscore(predictions, references, bertscore_model, notes)
            for i, value in zip(report_idx, bert or [], strict=False):
                graded[i]["bertscore_f1"] = value
        else:
            notes.append("BERTScore not computed: no bertscore_model (a local scorer path) was given")

    def group(indices: list[int]) -> dict[str, dict[str, Any]]:
        values: dict[str, list[float]] = {}
        for i in indices:
            for name, value in graded[i].items():
                values.setdefault(name, []).append(float(value))
        out = {name: _summary(vals, n_bootstrap, seed) for name, vals in values.items()}
        reports = np.array([position[i] for i in indices if i in position], dtype=int)
        if corpus is not None and len(reports):
            out |= corpus.metrics(reports, n_bootstrap=n_bootstrap, seed=seed)
        return out

    by_task: dict[str, list[int]] = {}
    by_source: dict[str, dict[str, list[int]]] = {}
    for i, row in enumerate(rows):
        task, source = _text(row.get("task")), _text(row.get("source"))
        by_task.setdefault(task, []).append(i)
        by_source.setdefault(source, {}).setdefault(task, []).append(i)

    open_rows = {task: [rows[i] for i in idx if types[i] == "open"] for task, idx in by_task.items()}
    all_open = [row for t, row in zip(types, rows, strict=True) if t == "open"]
    recall_kw = {"n_bootstrap": n_bootstrap, "seed": seed}
    result: dict[str, Any] = {
        "overall": group(list(range(len(rows)))) if rows else {},
        "by_task": {task: group(idx) for task, idx in sorted(by_task.items())},
        "by_source": {
            source: {task: group(idx) for task, idx in sorted(tasks.items())}
            for source, tasks in sorted(by_source.items())
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

    fallbacks = {
        "closed": "their letter was read from plain text (an 'answer: X' statement or a leading label)",
        "open": "their findings were read from the whole text",
    }
    for task_type, how in fallbacks.items():
        total = sum(t == task_type for t in types)
        bare = sum(t == task_type and not graded[i].get("rounds") for i, t in enumerate(types))
        if bare:
            notes.append(
                f"{task_type}: {bare} of {total} predictions have no complete <think>/<answer> round; {how}"
            )
    grounding = [i for i, t in enumerate(types) if t == "grounding"]
    unboxed = sum(not graded[i].get("pred_boxes") for i in grounding)
    if unboxed:
        notes.append(f"grounding: {unboxed} of {len(grounding)} predictions contain no parseable box")
    if n_bootstrap > 0:
        notes.append(
            f"ci: 95% percentile bootstrap over records, {n_bootstrap} resamples, seed {seed}; "
            "corpus metrics (BLEU, CE) are recomputed on every resample"
        )
    else:
        notes.append("ci: not computed (n_bootstrap = 0)")
    result["notes"] = notes
    return result
