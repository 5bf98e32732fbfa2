"""The CuRL-VPR accuracy gate (docs/rewards.md §4): process rewards count while accuracy is not falling.

Per generation batch, ``m`` is the mean outcome over the *global* batch. The first batch is stable;
afterwards a batch is stable iff ``m >= ema + margin``; then ``ema = α·m + (1-α)·ema`` (the EMA
starts at the first batch's mean). While unstable, the think and process rewards are withheld so
the policy first recovers accuracy instead of polishing reasoning text.

Training and evaluation each own one gate (their batches must not move each other's EMA); the
training gate's ``state_dict`` is saved with checkpoints so a resumed run gates identically.

>>> gate = ConditionalGate()
>>> [gate.step(m) for m in (0.5, 0.4, 0.6)]
[True, False, True]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_EMA_ALPHA", "DEFAULT_MARGIN", "ConditionalGate"]

DEFAULT_EMA_ALPHA = 0.2
DEFAULT_MARGIN = 0.0


@dataclass
class ConditionalGate:
    """EMA-of-accuracy gate. Feed it every generation batch's mean outcome, in order."""

    ema_alpha: float = DEFAULT_EMA_ALPHA
    margin: float = DEFAULT_MARGIN
    ema: float | None = None
    steps: int = 0
    last_mean: float | None = None
    last_stable: bool | None = None

    def __post_init__(self) -> None:
        if not 0 < self.ema_alpha <= 1:
            raise ValueError(f"ema_alpha must lie in (0, 1], got {self.ema_alpha!r}")
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be finite, got {self.margin!r}")

    def step(self, batch_mean: float) -> bool:
        """Decide the gate for a batch whose mean outcome is ``batch_mean``, then update the EMA."""
        if not math.isfinite(batch_mean):
            raise ValueError(f"batch mean outcome must be finite, got {batch_mean!r}")
        stable = True if self.ema is None else batch_mean >= self.ema + self.margin
        previous = batch_mean if self.ema is None else self.ema
        self.ema = self.ema_alpha * batch_mean + (1 - self.ema_alpha) * previous
        self.steps += 1
        self.last_mean, self.last_stable = batch_mean, stable
        return stable

    def update(self, outcomes: Iterable[float | None]) -> bool:
        """Gate a batch from its per-completion outcomes (``None``/NaN rows, e.g. report tasks, skipped).

        A batch with no scorable row leaves the state untouched and returns the last decision
        (``True`` before any batch): its think/process rewards are absent anyway.
        """
        values = [float(o) for o in outcomes if o is not None and not math.isnan(float(o))]
        if not values:
            return True if self.last_stable is None else self.last_stable
        return self.step(math.fsum(values) / len(values))

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state for checkpoints."""
        return {
            "ema_alpha": self.ema_alpha,
            "margin": self.margin,
            "ema": self.ema,
            "steps": self.steps,
            "last_mean": self.last_mean,
            "last_stable": self.last_stable,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; the configured alpha and margin must match the saved ones."""
        for key in ("ema_alpha", "margin"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"gate checkpoint has {key}={state[key]!r} but this run is configured with "
                    f"{getattr(self, key)!r}; use the same value to resume, or start a new run"
                )
        self.ema = state.get("ema")
        self.steps = int(state.get("steps", 0))
        self.last_mean = state.get("last_mean")
        self.last_stable = state.get("last_stable")
