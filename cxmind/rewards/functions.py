"""CuRL-VPR components as TRL reward functions, one per component.

Usable directly with TRL::

    from cxmind.rewards import curl_vpr_reward_funcs, DEFAULT_REWARD_WEIGHTS
    GRPOTrainer(..., reward_funcs=curl_vpr_reward_funcs(),
                args=GRPOConfig(..., reward_weights=list(DEFAULT_REWARD_WEIGHTS)))

Each function reads the dataset columns ``solution`` and ``task_type`` (and ``options`` when
present), returns ``None`` for rows of other task types (report, grounding: TRL then ignores the
function for that row), and logs its mean per task type through TRL's ``log_metric``. The four
functions share one small cache, so a completion is parsed and scored once, not four times.
Without a gate these weights give the ungated total; :class:`~cxmind.rewards.gate.ConditionalGate`
zeroes the think and process columns of unstable batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from cxmind.format import TASK_TYPES, option_letters, option_texts
from cxmind.rewards.scoring import (
    DEFAULT_W_CLOSED,
    DEFAULT_W_FORMAT,
    DEFAULT_W_OPEN,
    DEFAULT_W_OUTCOME,
    MODES,
    RewardScores,
    reference_problem,
    score,
)
from cxmind.rewards.similarity import DEFAULT_ALPHA

__all__ = ["COMPONENTS", "DEFAULT_REWARD_WEIGHTS", "CuRLReward", "completion_text", "curl_vpr_reward_funcs"]

COMPONENTS = ("format", "outcome", "think", "process")
#: Task types scored by other reward functions: CuRL-VPR returns ``None`` for them (TRL skips the row).
OTHER_TASK_TYPES = ("report", "grounding")
#: Logged count of malformed rows per call: they score 0 instead of stopping the training step.
ROW_ERRORS_METRIC = "curl_vpr/row_errors"


class MalformedRow(ValueError):
    """A dataset row CuRL-VPR cannot score: unknown task type, bad options, unusable reference."""


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned and len(_warned) < 100:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _option_items(options: Any) -> tuple[tuple[str, str], ...] | None:
    """The row's options as a hashable ``((letter, text), ...)`` (the score cache keys on it)."""
    texts = option_texts(options)
    return tuple(texts.items()) if texts else None


# TRL reward_weights for [format, outcome, think, process]; process is already scaled in score().
DEFAULT_REWARD_WEIGHTS = (DEFAULT_W_FORMAT, DEFAULT_W_OUTCOME, 1.0, 1.0)


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a list of messages whose content is text or parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    texts: list[str] = []
    for message in completion or ():
        content = message.get("content") if isinstance(message, Mapping) else message
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, Sequence):
            texts.extend(
                p.get("text") or "" for p in content if isinstance(p, Mapping) and p.get("type") == "text"
            )
    return "".join(texts)


@lru_cache(maxsize=2048)  # one process's batch, scored by four functions in turn
def _cached_score(
    completion: str,
    solution: str,
    task_type: str,
    letters: tuple[str, ...] | None,
    option_items: tuple[tuple[str, str], ...] | None,
    mode: str,
    w_closed: float,
    w_open: float,
    alpha: float,
) -> RewardScores:
    return score(
        completion,
        solution,
        task_type,
        options=letters if task_type == "closed" else dict(option_items or ()) or None,
        mode=mode,
        w_closed=w_closed,
        w_open=w_open,
        alpha=alpha,
    )


class CuRLReward:
    """One CuRL-VPR component as a picklable TRL reward function (``__name__`` names the TRL column)."""

    def __init__(
        self,
        component: str,
        *,
        mode: str = "fixed",
        w_closed: float = DEFAULT_W_CLOSED,
        w_open: float = DEFAULT_W_OPEN,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.component, self.mode = component, mode
        self.w_closed, self.w_open, self.alpha = float(w_closed), float(w_open), float(alpha)
        self.__name__ = f"{component}_reward"

    def __repr__(self) -> str:
        return (
            f"CuRLReward({self.component!r}, mode={self.mode!r}, w_closed={self.w_closed}, "
            f"w_open={self.w_open}, alpha={self.alpha})"
        )

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if completions is None:
            raise TypeError(f"{self.__name__} needs the `completions` argument (TRL passes it)")
        columns = _required_columns(kwargs, len(completions), self.__name__)
        options_column = kwargs.get("options") or [None] * len(completions)
        rewards: list[float | None] = []
        per_task: dict[str, list[float]] = {}
        row_errors = 0
        for completion, solution, task_type, options in zip(
            completions, columns["solution"], columns["task_type"], options_column, strict=True
        ):
            if task_type in OTHER_TASK_TYPES:
                rewards.append(None)  # report/grounding rows: another reward function's business
                continue
            try:
                scores = self._score_row(completion_text(completion), solution, task_type, options)
            except MalformedRow as error:
                row_errors += 1
                _warn_once(f"{self.__name__}: {error}; the row scores 0 (counted in {ROW_ERRORS_METRIC})")
                rewards.append(0.0)
                continue
            value = getattr(scores, self.component)
            rewards.append(value)
            per_task.setdefault(task_type, []).append(value)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if log_metric is not None:
            for task_type, values in sorted(per_task.items()):
                log_metric(f"curl_vpr/{self.component}/{task_type}", sum(values) / len(values))
            log_metric(ROW_ERRORS_METRIC, float(row_errors))
        return rewards

    def _score_row(self, completion: str, solution: Any, task_type: Any, options: Any) -> RewardScores:
        """Score one row, or raise :class:`MalformedRow` when the row itself (not the completion) is bad."""
        if task_type not in TASK_TYPES:
            raise MalformedRow(
                f"unknown task_type {task_type!r} (expected one of {TASK_TYPES + OTHER_TASK_TYPES})"
            )
        if not isinstance(solution, str) or not solution.strip():
            raise MalformedRow(f"{task_type} row without a reference solution")
        try:
            letters = option_letters(options) if task_type == "closed" else None
            texts = _option_items(options) if task_type == "open" else None
        except (ValueError, TypeError) as error:
            raise MalformedRow(f"unreadable options ({error})") from error
        problem = reference_problem(solution, task_type, letters)
        if problem is not None:
            raise MalformedRow(problem)
        return _cached_score(
            completion, solution, task_type, letters, texts, self.mode, self.w_closed, self.w_open, self.alpha
        )


def _required_columns(kwargs: Mapping[str, Any], n: int, name: str) -> dict[str, list[Any]]:
    missing = [c for c in ("solution", "task_type") if c not in kwargs]
    if missing:
        raise KeyError(
            f"{name} needs the dataset columns 'solution' and 'task_type' (missing: {', '.join(missing)}); "
            "build records with cxmind.data or add these columns to your dataset"
        )
    columns = {c: list(kwargs[c]) for c in ("solution", "task_type")}
    for column, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{name}: column {column!r} has {len(values)} values for {n} completions")
    return columns


def curl_vpr_reward_funcs(
    mode: str = "fixed",
    *,
    w_closed: float = DEFAULT_W_CLOSED,
    w_open: float = DEFAULT_W_OPEN,
    alpha: float = DEFAULT_ALPHA,
) -> list[CuRLReward]:
    """The four component reward functions, in ``COMPONENTS`` order (match ``DEFAULT_REWARD_WEIGHTS``)."""
    return [CuRLReward(c, mode=mode, w_closed=w_closed, w_open=w_open, alpha=alpha) for c in COMPONENTS]
