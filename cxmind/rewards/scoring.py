"""CuRL-VPR reward components: pure functions of completion text, reference text and task.

``score`` is the public entry point (``docs/rewards.md`` gives the rules). ``mode="fixed"`` (default)
implements the specification; ``mode="reference"`` reproduces the public reference code, defects
included (see :mod:`cxmind.rewards.reference`), so a user can either train better or reproduce
the paper. No gate is applied here: the batch-level gate lives in :mod:`cxmind.rewards.gate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cxmind.format import (
    ACCEPT,
    DEFAULT_LETTERS,
    REJECT,
    TASK_TYPES,
    Options,
    Parsed,
    final_letter,
    findings_in,
    mark_of,
    option_letter,
    parse,
    question_letters,
)
from cxmind.rewards import reference
from cxmind.rewards.similarity import DEFAULT_ALPHA, similarity
from cxmind.vocab import NO_FINDING, canonical

__all__ = [
    "DEFAULT_W_CLOSED",
    "DEFAULT_W_FORMAT",
    "DEFAULT_W_OPEN",
    "DEFAULT_W_OUTCOME",
    "MODES",
    "RewardScores",
    "combine",
    "format_score",
    "reference_problem",
    "score",
]

MODES = ("fixed", "reference")
DEFAULT_W_CLOSED = 0.5  # reference code; the paper's figure says 0.2
DEFAULT_W_OPEN = 0.2
DEFAULT_W_FORMAT = 0.1
DEFAULT_W_OUTCOME = 0.9
THINK_LENGTH_FACTOR = 8  # a think is scored on at most 8x its reference's words (docs/rewards.md §6)

Similarity = Callable[[str, str, float], float]


@dataclass(frozen=True)
class RewardScores:
    """The four CuRL-VPR components of one completion (``process`` already scaled by its weight)."""

    format: float
    outcome: float
    think: float
    process: float

    def total(
        self, stable: bool = True, *, w_format: float = DEFAULT_W_FORMAT, w_outcome: float = DEFAULT_W_OUTCOME
    ) -> float:
        """The gated total of docs/rewards.md §4 for this completion, given the batch's gate decision."""
        return combine(self.format, self.outcome, self.think, self.process, stable, w_format, w_outcome)


def combine(
    format: float,
    outcome: float,
    think: float,
    process: float,
    stable: bool,
    w_format: float = DEFAULT_W_FORMAT,
    w_outcome: float = DEFAULT_W_OUTCOME,
) -> float:
    """``w_f·F + w_o·O + (R + P if stable else 0)`` (docs/rewards.md §4)."""
    return w_format * format + w_outcome * outcome + ((think + process) if stable else 0.0)


def score(
    completion: str,
    solution: str,
    task_type: str,
    *,
    options: Options = None,
    mode: str = "fixed",
    w_closed: float = DEFAULT_W_CLOSED,
    w_open: float = DEFAULT_W_OPEN,
    alpha: float = DEFAULT_ALPHA,
) -> RewardScores:
    """Score one completion against its gold interleaved trajectory.

    Args:
        completion: the model's text.
        solution: the gold trajectory of the row, in the same format.
        task_type: ``"closed"`` (options) or ``"open"`` (finding list).
        options: the row's options (list, mapping or lines). Closed tasks: the letters that count;
            when missing they are read from the letters of the solution's rounds before its last.
            Open tasks (multi-label choice): list items naming an option by letter stand for its text.
        mode: ``"fixed"`` (the specification) or ``"reference"`` (the public code, defects included).
        w_closed, w_open: process reward weights for closed and open tasks.
        alpha: weight of BLEU-1 against ROUGE-L in the think similarity.

    Never raises on any completion or solution text; raises ``ValueError`` for a bad task type,
    mode or weight.

    >>> gold = "<think>A no.</think><answer>A) ❌</answer><think>B yes.</think><answer>B) ✅</answer>"
    >>> gold += "<think>B.</think><answer>B) ✅</answer>"
    >>> score(gold, gold, "closed")
    RewardScores(format=1.0, outcome=1.0, think=1.0, process=0.5)
    """
    return _score(completion, solution, task_type, options, mode, w_closed, w_open, alpha, similarity)


def _score(
    completion: str,
    solution: str,
    task_type: str,
    options: Options,
    mode: str,
    w_closed: float,
    w_open: float,
    alpha: float,
    sim: Similarity,
) -> RewardScores:
    """``score`` with the similarity function as a parameter (benchmarks swap in nltk/rouge_score)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("w_closed", w_closed), ("w_open", w_open), ("alpha", alpha)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    completion, solution = _as_text(completion), _as_text(solution)
    if mode == "reference":
        if task_type == "closed":
            return RewardScores(*reference.score_closed(completion, solution, w_closed, alpha, sim))
        return RewardScores(*reference.score_open(completion, solution, w_open, alpha, sim))
    if task_type == "closed":
        return _score_closed(completion, solution, options, w_closed, alpha, sim)
    return _score_open(completion, solution, options, w_open, alpha, sim)


@lru_cache(maxsize=4096)  # a batch repeats each row's reference once per completion
def reference_problem(solution: str, task_type: str, letters: tuple[str, ...] | None = None) -> str | None:
    """Why a row's reference trajectory cannot be scored against, or ``None`` when it can.

    A closed reference must end on an option letter (among ``letters`` when given); an open one
    must end on a non-empty list.

    >>> reference_problem("no rounds here", "closed")
    'the reference solution has no <think>/<answer> round'
    """
    rounds = parse(solution).rounds
    if not rounds:
        return "the reference solution has no <think>/<answer> round"
    if task_type == "closed" and final_letter(rounds[-1].answer, letters or DEFAULT_LETTERS) is None:
        return f"the reference's final answer {rounds[-1].answer[:40]!r} names no option letter"
    if task_type == "open" and not findings_in(rounds[-1].answer):
        return "the reference's final list is empty"
    return None


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def format_score(parsed: Parsed) -> float:
    """Fixed-mode format: only well-formed rounds, and at least two of them (also the eval metric)."""
    return 1.0 if parsed.well_formed and len(parsed.rounds) >= 2 else 0.0


# ---------------------------------------------------------------------------------------------
# Closed-ended (multiple choice)
# ---------------------------------------------------------------------------------------------


def _score_closed(
    completion: str, solution: str, options: Options, w_closed: float, alpha: float, sim: Similarity
) -> RewardScores:
    pred, gold = parse(completion), parse(solution)
    letters = question_letters(options, gold.rounds)
    readable = letters or tuple(DEFAULT_LETTERS)
    fmt = format_score(pred)

    gold_letter = final_letter(gold.rounds[-1].answer, readable) if gold.rounds else None
    pred_letters = [option_letter(r.answer, readable) for r in pred.rounds]
    if (
        gold_letter is None
        or not pred.rounds
        or final_letter(pred.rounds[-1].answer, readable) != gold_letter
    ):
        return RewardScores(fmt, 0.0, 0.0, 0.0)

    pred_think = next(r.think for r, x in zip(pred.rounds, pred_letters, strict=True) if x == gold_letter)
    gold_think = next(r.think for r in gold.rounds if option_letter(r.answer, readable) == gold_letter)
    think = sim(_bounded(pred_think, gold_think), gold_think, alpha)

    process = 0.0
    if letters is not None:
        judged = pred_letters[:-1]
        covers_each_once = len(judged) == len(letters) and set(judged) == set(letters)
        consistent = all(
            mark_of(r.answer) == (ACCEPT if x == gold_letter else REJECT)
            for r, x in zip(pred.rounds[:-1], judged, strict=True)
        )
        if covers_each_once and consistent and mark_of(pred.rounds[-1].answer) == ACCEPT:
            process = w_closed
    return RewardScores(fmt, 1.0, think, process)


# ---------------------------------------------------------------------------------------------
# Open-ended (finding list)
# ---------------------------------------------------------------------------------------------


def _set_f1(pred: set[str], gold: set[str]) -> float:
    if not pred and not gold:
        return 1.0
    if not pred or not gold:
        return 0.0
    return 2 * len(pred & gold) / (len(pred) + len(gold))


def _score_open(
    completion: str, solution: str, options: Options, w_open: float, alpha: float, sim: Similarity
) -> RewardScores:
    pred, gold = parse(completion), parse(solution)
    fmt = format_score(pred)
    gold_set = set(findings_in(gold.rounds[-1].answer, options)) if gold.rounds else set()
    # A completion without any round has no final list at all: it earns no outcome.
    final = set(findings_in(pred.rounds[-1].answer, options)) if pred.rounds else None
    outcome = _set_f1(final, gold_set) if final is not None else 0.0

    middle = pred.rounds[1:-1]
    verdicts = [(canonical(r.answer), mark_of(r.answer), r.think) for r in middle]

    think = 0.0
    accepted_thinks = [(name, t) for name, mark, t in verdicts if mark == ACCEPT]
    if outcome > 0 and accepted_thinks:
        gold_thinks: dict[str, str] = {}
        for r in gold.rounds[1:-1]:
            gold_thinks.setdefault(canonical(r.answer), r.think)
        # Every accepted round counts: accepting a finding the reference lacks scores 0 for that round.
        sims = [
            sim(_bounded(t, gold_thinks[name]), gold_thinks[name], alpha)
            if name in gold_set and name in gold_thinks
            else 0.0
            for name, t in accepted_thinks
        ]
        think = sum(sims) / len(sims)

    process = 0.0
    if verdicts and final and outcome == 1.0:
        differential = findings_in(pred.rounds[0].answer, options)
        judged = [name for name, _, _ in verdicts]
        consistent = all(
            mark is not None and (mark == ACCEPT) == (name in gold_set) for name, mark, _ in verdicts
        )
        accepted = {name for name, mark, _ in verdicts if mark == ACCEPT}
        agrees = accepted == final or (not accepted and final == {NO_FINDING})
        # Each differential candidate judged in exactly one middle round, and nothing else judged.
        each_once = len(judged) == len(set(judged)) and set(judged) == set(differential)
        if consistent and agrees and each_once:
            process = w_open
    return RewardScores(fmt, outcome, think, process)


def _bounded(think: str, reference: str) -> str:
    """``think`` cut to its first 8× as many words as ``reference`` has (docs/rewards.md §6, v2).

    Bounds the similarity cost by the reference: a 1 MB think is scored on its first few hundred words.
    """
    limit = THINK_LENGTH_FACTOR * len(reference.split())
    words = think.split(maxsplit=limit)
    return think if len(words) <= limit else " ".join(words[:limit])
