"""What our trainers print: one compact line per log step, and args that do not warn.

transformers prints every log as a dict: ``ProgressCallback`` writes it above the progress bar,
``PrinterCallback`` (``disable_tqdm=True``) prints it. A GRPO log holds ~60 metrics, so each log
step floods the console. :func:`use_compact_console` swaps that callback for a subclass that prints
one line instead (the progress bar stays)::

    grpo_closed step 12/64  reward 0.830  outcome 0.750  gate 0.50  loss 0.012  lr 1.0e-06  3.1 s/step
    sft step 25/250  loss 1.234  token_accuracy 0.412  lr 2.0e-03  0.6 s/step

The first word is the run's folder name (the stage name in a ``cxmind train`` run). The full
metrics still reach every ``report_to`` backend (their callbacks get the same logs, unchanged) and
``trainer.state.log_history`` (``trainer_state.json`` in each checkpoint). A notebook's progress
table (``NotebookProgressCallback``) is left alone.

:func:`quiet_dependency_aliases` ignores the FutureWarnings of transformers 5's deprecated
checkpointing aliases that TRL and PEFT still call on our model (see :data:`DEPENDENCY_ALIAS_WARNING`).

:class:`ActivationCheckpointingArgs` gives our configs TRL's default of activation checkpointing
*on* under its transformers 5 name. TRL 1.16 still defaults the deprecated ``gradient_checkpointing``
to ``True``, so every TRL config printed a ``FutureWarning`` although no one had set it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PrinterCallback, ProgressCallback

__all__ = [
    "DEPENDENCY_ALIAS_WARNING",
    "GRPO_FIELDS",
    "SFT_FIELDS",
    "ActivationCheckpointingArgs",
    "CompactPrinterCallback",
    "CompactProgressCallback",
    "compact_log_line",
    "quiet_dependency_aliases",
    "use_compact_console",
]

#: ``(label, log key, format)`` of the values on a line, in order; absent keys are left out.
Field = tuple[str, str, str]

GRPO_FIELDS: tuple[Field, ...] = (
    ("reward", "reward", ".3f"),  # TRL: weighted sum of the reward functions, batch mean
    ("outcome", "rewards/outcome_reward/mean", ".3f"),  # cxmind.rewards.CuRLReward("outcome")
    ("gate", "curl_vpr/gate/stable", ".2f"),  # share of generation batches the gate found stable
    ("loss", "loss", ".4g"),
    ("lr", "learning_rate", ".1e"),
)
SFT_FIELDS: tuple[Field, ...] = (
    ("loss", "loss", ".4g"),
    ("token_accuracy", "mean_token_accuracy", ".3f"),
    ("lr", "learning_rate", ".1e"),
)
_SUMMARY: tuple[Field, ...] = (("train_loss", "train_loss", ".4g"),)
_GENERIC_LIMIT = 6  # values shown for a log none of the fields match


def _value(value: Any, spec: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def compact_log_line(
    label: str,
    logs: dict[str, Any],
    step: int,
    max_steps: int,
    fields: Sequence[Field],
    seconds_per_step: float | None = None,
) -> str:
    """One line for ``logs``: ``label [eval|done] step N/M  name value ...  T s/step``.

    Evaluation logs (``eval_*`` keys) show the same fields, read from their ``eval_`` keys; the
    end-of-training summary (``train_runtime``) shows ``train_loss`` and the run time. A log none of
    the fields match shows its first few numeric values.
    """
    evaluation = any(key.startswith("eval_") for key in logs)
    summary = "train_runtime" in logs
    prefix = "eval_" if evaluation else ""
    kind = " eval" if evaluation else " done" if summary else ""
    parts = [f"{label}{kind} step {step}/{max_steps}" if max_steps else f"{label}{kind} step {step}"]
    shown = [
        f"{name} {text}"
        for name, key, spec in (*fields, *(_SUMMARY if summary else ()))
        if (text := _value(logs.get(prefix + key), spec)) is not None
    ]
    if not shown and not summary:
        numeric = [(key, _value(value, ".4g")) for key, value in logs.items() if key != "total_flos"]
        shown = [f"{key} {text}" for key, text in numeric if text is not None][:_GENERIC_LIMIT]
    parts += shown
    runtime = logs.get(f"{'eval' if evaluation else 'train'}_runtime")
    if isinstance(runtime, int | float):
        parts.append(f"{runtime:.1f} s")
    elif seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.1f} s/step")
    return "  ".join(parts)


class _CompactLines:
    """The line-making half shared by both callbacks: label, fields, and the time per step."""

    def __init__(self, label: str, fields: Sequence[Field]) -> None:
        self.label = label
        self.fields = tuple(fields)
        self._mark: tuple[float, int] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._mark is None:  # here, not at train begin: a resumed run's step is only set by now
            self._mark = (time.monotonic(), state.global_step)
        return super().on_step_begin(args, state, control, **kwargs)

    def line(self, state, logs: dict[str, Any]) -> str:
        per_step = None
        now = time.monotonic()
        if self._mark is not None and not any(key.startswith("eval_") for key in logs):
            started, step = self._mark
            if state.global_step > step:
                per_step = (now - started) / (state.global_step - step)
                self._mark = (now, state.global_step)
        return compact_log_line(self.label, logs, state.global_step, state.max_steps, self.fields, per_step)


class CompactProgressCallback(_CompactLines, ProgressCallback):
    """transformers' progress bar, writing one compact line per log instead of the logs dict."""

    def __init__(self, label: str, fields: Sequence[Field]) -> None:
        _CompactLines.__init__(self, label, fields)
        ProgressCallback.__init__(self)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(self.line(state, logs))


class CompactPrinterCallback(_CompactLines, PrinterCallback):
    """``PrinterCallback`` (``disable_tqdm=True``) printing one compact line on the main process."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            print(self.line(state, logs), flush=True)


def use_compact_console(trainer: Any, fields: Sequence[Field]) -> None:
    """Replace ``trainer``'s dict-printing ``ProgressCallback``/``PrinterCallback`` with the compact one.

    Only those exact classes are replaced, in place (a notebook table or a user's own subclass
    stays). The replacement never changes ``logs``, which other callbacks share.
    """
    label = os.path.basename(os.path.normpath(str(trainer.args.output_dir))) or "train"
    callbacks = trainer.callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is ProgressCallback:
            callbacks[i] = CompactProgressCallback(label, fields)
        elif type(callback) is PrinterCallback:
            callbacks[i] = CompactPrinterCallback(label, fields)


#: transformers 5 renamed the model's ``*gradient_checkpointing*`` methods; the old names warn. TRL 1.16
#: calls them around every GRPO generation (``trl.models.utils.disable_gradient_checkpointing``:
#: ``is_gradient_checkpointing``, ``gradient_checkpointing_disable``/``_enable``, three warnings per
#: step) and PEFT 0.21 once when it wraps a model (``PeftModel.__init__`` reads
#: ``is_gradient_checkpointing``). No setting of ours avoids them, and they are harmless: each alias
#: calls its ``activation_checkpointing`` twin. ``tests/test_trl_hooks.py`` says when they can go.
DEPENDENCY_ALIAS_WARNING = (
    r"`(is_gradient_checkpointing|gradient_checkpointing_(enable|disable))` is deprecated"
)


def quiet_dependency_aliases() -> None:
    """Ignore the :data:`DEPENDENCY_ALIAS_WARNING` FutureWarnings raised in transformers.modeling_utils.

    Every other warning, including the config's ``gradient_checkpointing`` deprecation when a user sets
    the old name, still shows. Idempotent (``warnings.filterwarnings`` keeps one copy of a filter).
    """
    warnings.filterwarnings(
        "ignore",
        message=DEPENDENCY_ALIAS_WARNING,
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


@dataclass
class ActivationCheckpointingArgs:
    """Config mixin: activation checkpointing on by default, under its transformers 5 name.

    Setting either name works as in transformers (``gradient_checkpointing`` still warns there, as a
    deprecated alias); left unset, ``activation_checkpointing`` becomes ``True`` — TRL's default —
    instead of TRL's ``gradient_checkpointing=True``, which warns on every config.
    """

    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass to save memory (~20%% slower). Default: on "
            "(TRL's default), unless the deprecated gradient_checkpointing is set."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of activation_checkpointing (transformers 5), will be removed in v6."
        },
    )

    def __post_init__(self) -> None:
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        super().__post_init__()  # type: ignore[misc]
