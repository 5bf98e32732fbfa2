"""Curriculum ordering of GRPO prompts: a drop-in replacement for TRL's ``RepeatSampler``.

CX-Mind trains closed questions before open diagnosis, and GRPO learns nothing from a prompt whose
completions all earn the same reward. :class:`CurriculumSampler` keeps ``RepeatSampler``'s index
layout (chunks of ``batch_size`` prompts, each chunk ``repeat_count`` times, each index
``mini_repeat_count`` times) and only changes *which* prompts fill the chunks:

* ``schedule`` — ``"mixed"`` (a shuffle, like TRL), ``"sequential"`` (stage by stage inside each
  epoch) or ``"ramp"`` (the first-stage share falls linearly over the run);
* ``adaptive`` — prompts whose reward groups kept zero variance sit out a few epochs.

Every rank builds its own sampler, so all randomness comes from ``random.Random`` seeded with
``(seed, epoch, ...)``, adaptive decisions for chunk ``c`` only read observations ``<= c - lag``
(the DataLoader draws ahead of training: :func:`lookahead_lag` sizes ``lag``), and
:meth:`state_dict` records the drawn chunks of the current epoch so a resumed run replays them
before it draws on: the order never depends on where a run was interrupted.
"""

from __future__ import annotations

import hashlib
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Sampler

__all__ = ["SCHEDULES", "STATS_KEYS", "CurriculumSampler", "lookahead_lag", "ramp_share"]

SCHEDULES = ("mixed", "sequential", "ramp")
STATS_KEYS = (
    "curriculum/first_stage_share",
    "curriculum/saturated_fraction",
    "curriculum/observed_fraction",
    "curriculum/skipped",
    "curriculum/substituted",
    "curriculum/group_reward_mean",
)
_STATE_VERSION = 1
_FLAT_STD = 1e-6  # a group whose reward std is below this taught the policy nothing

Group = tuple[int, bool, float]  # (dataset row, rewards all equal, mean reward)


def ramp_share(t: int, total: int, start: float, end: float) -> float:
    """First-stage probability of chunk ``t`` of ``total``: 1 before ``start*total``, 0 from ``end*total``."""
    lo, hi = start * total, end * total
    if t < lo:
        return 1.0
    if t >= hi:
        return 0.0
    return 1.0 - (t - lo) / (hi - lo)


def lookahead_lag(batches_ahead: int, batches_per_chunk: int) -> int:
    """Smallest safe ``lag`` when up to ``batches_ahead`` batches past the first untrained one are drawn.

    A chunk spans ``batches_per_chunk`` consecutive data-loader batches (``repeat_count``) and is
    observed when its first batch trains. If batch ``p`` is the first not yet trained on, chunks
    ``< ceil(p / B)`` are observed and the sampler may have drawn chunk ``floor((p + ahead) / B)``,
    so ``ahead // B + 1`` chunks of lag always find their observations, whatever the timing.
    """
    _check_int("batches_ahead", batches_ahead, 0)
    _check_int("batches_per_chunk", batches_per_chunk, 1)
    return batches_ahead // batches_per_chunk + 1


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class CurriculumSampler(Sampler[int]):
    """Yields dataset indices in ``RepeatSampler``'s layout, ordered by a curriculum.

    Rows whose task type is not in ``stage_order`` join the last stage. ``revisit_after`` is the
    number of epochs a saturated prompt sits out after the epoch in which it saturated; ``0``
    means it is never revisited. Groups with fewer than two finite rewards are ignored. A deferred
    prompt's slot goes to the next unsaturated row of its pool (one per stage; the whole dataset
    under ``mixed``), else to a random observed, unsaturated row of that pool, else to the deferred
    row itself, so every epoch keeps its exact length. Every epoch still covers the dataset, so
    ``ramp`` shapes the order *within* epochs: a late epoch (share 0) leads with the last stage.
    """

    def __init__(
        self,
        task_types: Sequence[str],
        *,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        schedule: str = "mixed",
        stage_order: Sequence[str] = ("closed", "open"),
        ramp_start: float = 0.0,
        ramp_end: float = 1.0,
        num_epochs: int = 1,
        adaptive: bool = False,
        saturation_patience: int = 1,
        revisit_after: int = 2,
        lag: int = 2,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if isinstance(task_types, str):
            raise ValueError("task_types must hold one task type per dataset row, not a single string")
        types = list(task_types)
        for i, kind in enumerate(types):
            if not isinstance(kind, str):
                raise ValueError(f"task_types[{i}] must be a str such as 'closed' or 'open', got {kind!r}")
        for name, value, minimum in (
            ("mini_repeat_count", mini_repeat_count, 1),
            ("batch_size", batch_size, 1),
            ("repeat_count", repeat_count, 1),
            ("num_epochs", num_epochs, 1),
            ("saturation_patience", saturation_patience, 1),
            ("revisit_after", revisit_after, 0),
            ("lag", lag, 1),
            ("seed", seed, 0),
        ):
            _check_int(name, value, minimum)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        stages = list(stage_order)
        if isinstance(stage_order, str) or not stages or len(set(stages)) != len(stages):
            raise ValueError(
                f"stage_order must be a non-empty sequence of distinct task types, got {stage_order!r}"
            )
        if schedule == "ramp" and len(stages) != 2:
            raise ValueError(f"schedule='ramp' needs exactly two stages in stage_order, got {stages}")
        if not 0.0 <= ramp_start <= ramp_end <= 1.0:
            raise ValueError(
                f"need 0 <= ramp_start <= ramp_end <= 1, got ramp_start={ramp_start}, ramp_end={ramp_end}"
            )

        self.num_rows = len(types)
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.schedule, self.stage_order, self.num_epochs = schedule, tuple(stages), num_epochs
        self.ramp_start, self.ramp_end = float(ramp_start), float(ramp_end)
        self.adaptive = adaptive
        self.saturation_patience = saturation_patience
        self.revisit_after = revisit_after
        self.lag, self.shuffle, self.seed = lag, shuffle, seed
        self.chunks_per_epoch = self.num_rows // batch_size
        self.run_chunks = num_epochs * self.chunks_per_epoch  # the ramp's length; see set_run_length
        rank = {name: i for i, name in enumerate(stages)}
        self._stage = [rank.get(kind, len(stages) - 1) for kind in types]
        if schedule == "mixed":
            self._pools = [list(range(self.num_rows))]
        else:
            rows = range(self.num_rows)
            self._pools = [[r for r in rows if self._stage[r] == s] for s in range(len(stages))]
        self._config: dict[str, Any] = {
            "num_rows": self.num_rows,
            "task_types": hashlib.sha256("\x1f".join(types).encode()).hexdigest()[:16],
            "mini_repeat_count": mini_repeat_count,
            "batch_size": batch_size,
            "repeat_count": repeat_count,
            "schedule": schedule,
            "stage_order": stages,
            "ramp_start": self.ramp_start,
            "ramp_end": self.ramp_end,
            "num_epochs": num_epochs,
            "adaptive": bool(adaptive),
            "saturation_patience": saturation_patience,
            "revisit_after": revisit_after,
            "lag": lag,
            "shuffle": bool(shuffle),
            "seed": seed,
        }
        if schedule == "ramp":  # only the ramp depends on the run's length
            self._config["run_chunks"] = self.run_chunks
        self._observations = 0
        self._pending: list[tuple[int, list[Group]]] = []
        # row -> (consecutive flat groups, epoch it saturated in or -1, mean reward of its last group)
        self._prompts: dict[int, tuple[int, int, float]] = {}
        self.skipped_total = 0
        self.substituted_total = 0
        self._last_first_share = 0.0
        self._warned = False
        self._start_epoch(0)

    # ----------------------------------------------------------------------------------- sampling
    def __len__(self) -> int:
        return self.chunks_per_epoch * self.batch_size * self.mini_repeat_count * self.repeat_count

    def set_run_length(self, total_chunks: int) -> None:
        """Spread the ramp over the run's real length in global chunks (default: ``num_epochs`` whole epochs).

        A trainer whose run ends mid-epoch (``max_steps``, fractional ``num_train_epochs``) sets this
        before the first draw, or the ramp would stop short of its end.
        """
        _check_int("total_chunks", total_chunks, 1)
        self.run_chunks = total_chunks
        if "run_chunks" in self._config:
            self._config["run_chunks"] = total_chunks

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch; setting the current epoch again keeps its replay."""
        _check_int("epoch", epoch, 0)
        if epoch != self._epoch:
            self._start_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch = self._epoch
        for c in range(self.chunks_per_epoch):
            if self._epoch != epoch:
                raise RuntimeError(f"set_epoch({self._epoch}) was called while epoch {epoch} still iterated")
            # drawn lazily, so the adaptive decision sees every observation made up to now
            chunk = self._chunks[c] if c < len(self._chunks) else self._draw_chunk(c)
            for _ in range(self.repeat_count):
                for row in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield row

    def _rng(self, *parts: object) -> random.Random:
        # str seeds are hashed with SHA-512, so every process derives the same stream
        return random.Random(":".join(map(str, ("cxmind-curriculum", self.seed, *parts))))

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._chunks: list[list[int]] = []
        self._perms = [list(pool) for pool in self._pools]
        if self.shuffle:
            for p, perm in enumerate(self._perms):
                self._rng("perm", epoch, p).shuffle(perm)
        self._ptr = [0] * len(self._pools)
        self._deferred: list[list[int]] = [[] for _ in self._pools]
        self._candidates: dict[int, list[int]] = {}

    def _draw_chunk(self, c: int) -> list[int]:
        g = self._epoch * self.chunks_per_epoch + c
        self._apply_observations(g - self.lag)
        stage_rng, fill_rng = self._rng("stage", self._epoch, c), self._rng("fill", self._epoch, c)
        share = ramp_share(g, self.run_chunks, self.ramp_start, self.ramp_end)
        chunk = []
        for _ in range(self.batch_size):
            if self.schedule == "ramp":
                want = 0 if stage_rng.random() < share else 1
                order = [want, 1 - want]
            elif self.schedule == "sequential":
                live = [p for p in range(len(self._pools)) if self._ptr[p] < len(self._perms[p])]
                order = live + [p for p in reversed(range(len(self._pools))) if p not in live]
            else:
                order = [0]
            chunk.append(self._take(order, fill_rng))
        self._chunks.append(chunk)
        self._last_first_share = sum(self._stage[r] == 0 for r in chunk) / len(chunk)
        return chunk

    def _take(self, order: list[int], rng: random.Random) -> int:
        """Next row of the first pool in ``order`` that still has unread rows, skipping saturated ones."""
        for p in order:
            if self._ptr[p] < len(self._perms[p]):
                row = self._pop_eligible(p)
                if row is None:  # only saturated rows were left in this pool
                    row = self._fill(p, rng)
                if row is not None:
                    return row
                break
        for p in order:  # every pool read through: the rows deferred this epoch still cover the slot
            row = self._fill(p, rng)
            if row is not None:
                return row
        raise AssertionError("unreachable: an epoch never needs more prompts than the dataset has")

    def _pop_eligible(self, p: int) -> int | None:
        perm = self._perms[p]
        while self._ptr[p] < len(perm):
            row = perm[self._ptr[p]]
            self._ptr[p] += 1
            if not self._saturated(row):
                return row
            self._deferred[p].append(row)
            self.skipped_total += 1
        return None

    def _fill(self, p: int, rng: random.Random) -> int | None:
        """A random observed, unsaturated row of pool ``p`` (with replacement), else a deferred one."""
        if p not in self._candidates:
            self._candidates[p] = [r for r in self._pools[p] if r in self._prompts and not self._saturated(r)]
        if self._candidates[p]:
            self.substituted_total += 1
            return rng.choice(self._candidates[p])
        if self._deferred[p]:
            self.skipped_total -= 1  # it is trained on after all
            return self._deferred[p].pop(0)
        return None

    def _saturated(self, row: int) -> bool:
        if not self.adaptive:
            return False
        streak, since, _ = self._prompts.get(row, (0, -1, 0.0))
        if streak < self.saturation_patience:
            return False
        return self.revisit_after == 0 or self._epoch <= since + self.revisit_after

    # ------------------------------------------------------------------------------- observations
    @property
    def num_observations(self) -> int:
        """How many :meth:`observe` calls this run made; observation ``k`` describes global chunk ``k``."""
        return self._observations

    def observe(self, indices: Sequence[int], rewards: Sequence[float], num_generations: int) -> None:
        """Record one generation batch (gathered over ranks); it takes effect ``lag`` chunks later."""
        _check_int("num_generations", num_generations, 1)
        if len(indices) != len(rewards) or len(indices) % num_generations:
            raise ValueError(
                f"observe needs one reward per index, in whole groups of num_generations={num_generations}; "
                f"got {len(indices)} indices and {len(rewards)} rewards"
            )
        groups: list[Group] = []
        for start in range(0, len(indices), num_generations):
            rows = {int(i) for i in indices[start : start + num_generations]}
            if len(rows) != 1:
                raise ValueError(
                    f"completions {start}..{start + num_generations - 1} mix prompts {sorted(rows)}: "
                    "pass the gathered batch in sampler order, num_generations completions per prompt"
                )
            row = rows.pop()
            if not 0 <= row < self.num_rows:
                raise ValueError(f"index {row} is outside the dataset of {self.num_rows} rows")
            values = [float(v) for v in rewards[start : start + num_generations] if math.isfinite(float(v))]
            if len(values) < 2:
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            groups.append((row, std <= _FLAT_STD, mean))
        self._pending.append((self._observations, groups))
        self._observations += 1

    def _apply_observations(self, upto: int) -> None:
        if upto < 0:
            return
        if self.adaptive and self._observations <= upto and not self._warned:
            self._warned = True
            warnings.warn(
                f"CurriculumSampler: chunk {upto + self.lag} expects observations up to #{upto} but only "
                f"{self._observations} arrived; ranks and resumed runs may now order prompts differently "
                "(lag must cover the batches the trainer and DataLoader fetch ahead: see lookahead_lag)",
                stacklevel=3,
            )
        keep = []
        for seq, groups in self._pending:
            if seq > upto:
                keep.append((seq, groups))
                continue
            epoch = seq // max(self.chunks_per_epoch, 1)
            for row, flat, mean in groups:
                streak, since, _ = self._prompts.get(row, (0, -1, 0.0))
                streak = streak + 1 if flat else 0
                if streak >= self.saturation_patience:
                    since = epoch
                self._prompts[row] = (streak, since if streak else -1, mean)
        self._pending = keep
        self._candidates.clear()

    def stats(self) -> dict[str, float]:
        """Small floats for the trainer's logs; the keys are :data:`STATS_KEYS`."""
        n = max(self.num_rows, 1)
        means = [mean for _, _, mean in self._prompts.values()]
        return {
            "curriculum/first_stage_share": self._last_first_share,
            "curriculum/saturated_fraction": sum(map(self._saturated, self._prompts)) / n,
            "curriculum/observed_fraction": len(self._prompts) / n,
            "curriculum/skipped": float(self.skipped_total),
            "curriculum/substituted": float(self.substituted_total),
            "curriculum/group_reward_mean": sum(means) / len(means) if means else 0.0,
        }

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; saved with a checkpoint it makes a resumed run repeat this one."""
        return {
            "version": _STATE_VERSION,
            "config": dict(self._config),
            "epoch": self._epoch,
            "chunks": [list(chunk) for chunk in self._chunks],
            "pointers": list(self._ptr),
            "deferred": [list(rows) for rows in self._deferred],
            "observations": self._observations,
            "pending": [[seq, [list(g) for g in groups]] for seq, groups in self._pending],
            "prompts": [[row, *rec] for row, rec in sorted(self._prompts.items())],
            "skipped_total": self.skipped_total,
            "substituted_total": self.substituted_total,
            "first_stage_share": self._last_first_share,
            "warned": self._warned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next iteration of the saved epoch replays its drawn chunks."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a CurriculumSampler state of version {_STATE_VERSION}")
        saved = state.get("config", {})
        for field, value in self._config.items():
            if saved.get(field) != value:
                raise ValueError(
                    f"CurriculumSampler state mismatch: {field} is {saved.get(field)!r} in the checkpoint "
                    f"but {value!r} now; start a new run or use the same recipe"
                )
        self._start_epoch(int(state["epoch"]))
        self._chunks = [[int(r) for r in chunk] for chunk in state["chunks"]]
        self._ptr = [int(p) for p in state["pointers"]]
        self._deferred = [[int(r) for r in rows] for rows in state["deferred"]]
        self._observations = int(state["observations"])
        self._pending = [
            (int(seq), [(int(r), bool(f), float(m)) for r, f, m in groups])
            for seq, groups in state["pending"]
        ]
        self._prompts = {int(r): (int(s), int(e), float(m)) for r, s, e, m in state["prompts"]}
        self.skipped_total = int(state["skipped_total"])
        self.substituted_total = int(state["substituted_total"])
        self._last_first_share = float(state["first_stage_share"])
        self._warned = bool(state["warned"])
