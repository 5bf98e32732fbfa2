"""CurriculumSampler: RepeatSampler's layout, curriculum schedules, adaptive skipping and exact resume."""

from __future__ import annotations

import itertools
import json
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.trainer.utils import RepeatSampler

from cxmind.training.curriculum import STATS_KEYS, CurriculumSampler, lookahead_lag, ramp_share


def _types(n: int, pattern: tuple[str, ...] = ("closed", "open")) -> list[str]:
    return [pattern[i % len(pattern)] for i in range(n)]


def _chunks(sampler: CurriculumSampler) -> list[list[int]]:
    """One epoch as its unique-prompt chunks, checking the repetition layout on the way."""
    stream = list(sampler)
    bs, mini, rep = sampler.batch_size, sampler.mini_repeat_count, sampler.repeat_count
    block = bs * mini * rep
    assert len(stream) == len(sampler) == sampler.chunks_per_epoch * block
    chunks = []
    for start in range(0, len(stream), block):
        chunk = stream[start : start + mini * bs : mini]
        expected = [row for _ in range(rep) for row in chunk for _ in range(mini)]
        assert stream[start : start + block] == expected
        chunks.append(chunk)
    return chunks


def _rewards(row: int, g: int, num_generations: int) -> list[float]:
    """Fake rewards: rows divisible by 3 always earn the same reward, the others vary (and drift with g)."""
    if row % 3 == 0:
        return [1.0] * num_generations
    return [float((k + row + g) % 2) for k in range(num_generations)]


def _observe(sampler: CurriculumSampler, chunk: list[int], g: int, ng: int) -> None:
    indices = [row for row in chunk for _ in range(ng)]
    rewards = [r for row in chunk for r in _rewards(row, g, ng)]
    sampler.observe(indices, rewards, ng)


def _drive(
    sampler: CurriculumSampler,
    epochs: range,
    history: list[list[int]],
    ng: int,
    stop_at: int | None = None,
    peek: bool = False,
    prefetch: bool = True,
) -> bool:
    """Iterate like a GRPO trainer with one batch of prefetch: after the first index of chunk g is drawn,
    chunk g-1 is generated and observed (before it, without prefetch). Replayed chunks must equal
    ``history``; returns False if stopped at global chunk ``stop_at``."""
    block = sampler.batch_size * sampler.mini_repeat_count * sampler.repeat_count
    for epoch in epochs:
        sampler.set_epoch(epoch)
        stream = iter(sampler)
        for c in range(sampler.chunks_per_epoch):
            g = epoch * sampler.chunks_per_epoch + c
            if g == stop_at and not peek:
                return False
            if not prefetch and g >= 1 and sampler.num_observations == g - 1:
                _observe(sampler, history[g - 1], g - 1, ng)
            first = next(stream)
            if g >= 1 and sampler.num_observations == g - 1:
                _observe(sampler, history[g - 1], g - 1, ng)
            if g == stop_at:
                return False
            rest = [next(stream) for _ in range(block - 1)]
            chunk = [first, *rest][
                : sampler.batch_size * sampler.mini_repeat_count : sampler.mini_repeat_count
            ]
            if g < len(history):
                assert history[g] == chunk, f"replayed chunk {g} differs"
            else:
                history.append(chunk)
        assert next(stream, None) is None
    return True


# ------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("schedule", ["mixed", "sequential", "ramp"])
@pytest.mark.parametrize(
    ("n", "bs", "mini", "rep"), [(7, 3, 2, 4), (12, 12, 3, 2), (10, 1, 1, 1), (5, 8, 2, 1)]
)
def test_len_and_layout(schedule: str, n: int, bs: int, mini: int, rep: int) -> None:
    sampler = CurriculumSampler(
        _types(n), mini_repeat_count=mini, batch_size=bs, repeat_count=rep, schedule=schedule, seed=3
    )
    assert len(sampler) == (n // bs) * bs * mini * rep == len(RepeatSampler(range(n), mini, bs, rep))
    _chunks(sampler)  # asserts count and the chunk / repeat / mini-repeat structure


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 50),
    bs=st.integers(1, 9),
    mini=st.integers(1, 4),
    rep=st.integers(1, 3),
    schedule=st.sampled_from(["mixed", "sequential", "ramp"]),
    adaptive=st.booleans(),
    kinds=st.lists(st.sampled_from(["closed", "open", "report"]), min_size=1, max_size=3),
)
def test_len_property(
    n: int, bs: int, mini: int, rep: int, schedule: str, adaptive: bool, kinds: list[str]
) -> None:
    sampler = CurriculumSampler(
        _types(n, tuple(kinds)),
        mini_repeat_count=mini,
        batch_size=bs,
        repeat_count=rep,
        schedule=schedule,
        adaptive=adaptive,
        num_epochs=3,
    )
    assert len(sampler) == (n // bs) * bs * mini * rep
    history: list[list[int]] = []
    _drive(sampler, range(3), history, ng=mini if mini > 1 else 2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == len(sampler)


@pytest.mark.parametrize(
    ("n", "bs", "mini", "rep"), [(7, 3, 2, 4), (12, 4, 1, 1), (9, 2, 3, 2), (3, 5, 2, 2)]
)
def test_unshuffled_mixed_equals_trl(n: int, bs: int, mini: int, rep: int) -> None:
    ours = CurriculumSampler(
        _types(n), mini_repeat_count=mini, batch_size=bs, repeat_count=rep, shuffle=False
    )
    theirs = RepeatSampler(
        list(range(n)), mini_repeat_count=mini, batch_size=bs, repeat_count=rep, shuffle=False
    )
    assert list(ours) == list(theirs)


@pytest.mark.parametrize("schedule", ["mixed", "sequential", "ramp"])
def test_each_epoch_covers_each_row_at_most_once(schedule: str) -> None:
    sampler = CurriculumSampler(
        _types(50, ("closed", "open", "report")),
        mini_repeat_count=2,
        batch_size=4,
        schedule=schedule,
        num_epochs=3,
    )
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        rows = [row for chunk in _chunks(sampler) for row in chunk]
        assert len(rows) == len(set(rows)) == 48
        orders.append(rows)
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch


@pytest.mark.parametrize("schedule", ["mixed", "sequential", "ramp"])
def test_same_seed_same_order_on_every_rank(schedule: str) -> None:
    def build(seed: int) -> CurriculumSampler:
        return CurriculumSampler(_types(40), mini_repeat_count=2, batch_size=4, schedule=schedule, seed=seed)

    a, b, other = build(7), build(7), build(8)
    for epoch in range(2):
        for s in (a, b, other):
            s.set_epoch(epoch)
        assert list(a) == list(b)
        assert list(a) != list(other)


def test_adaptive_ranks_agree_when_they_observe_the_same_batches() -> None:
    def build() -> CurriculumSampler:
        return CurriculumSampler(
            _types(30), mini_repeat_count=2, batch_size=3, adaptive=True, schedule="ramp"
        )

    runs = []
    for sampler in (build(), build()):
        history: list[list[int]] = []
        _drive(sampler, range(4), history, ng=2)
        runs.append(history)
        assert sampler.skipped_total > 0
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------------- schedules


def test_sequential_puts_every_closed_prompt_before_any_open_one() -> None:
    types = _types(41, ("open", "closed", "report", "closed"))  # 'report' rides with the last stage
    sampler = CurriculumSampler(types, mini_repeat_count=2, batch_size=4, schedule="sequential")
    for epoch in range(3):
        sampler.set_epoch(epoch)
        chunks = _chunks(sampler)
        stages = [0 if types[row] == "closed" else 1 for chunk in chunks for row in chunk]
        assert stages == sorted(stages)
        assert stages.count(0) == types.count("closed")
        mixed = [chunk for chunk in chunks if len({types[row] == "closed" for row in chunk}) > 1]
        assert len(mixed) <= 1


def test_ramp_share_function() -> None:
    assert ramp_share(0, 100, 0.25, 0.75) == 1.0
    assert ramp_share(24, 100, 0.25, 0.75) == 1.0
    assert ramp_share(50, 100, 0.25, 0.75) == pytest.approx(0.5)
    assert ramp_share(75, 100, 0.25, 0.75) == 0.0
    assert ramp_share(10, 100, 0.5, 0.5) == 1.0 and ramp_share(50, 100, 0.5, 0.5) == 0.0


def test_ramp_moves_from_closed_to_open() -> None:
    types = _types(800)
    sampler = CurriculumSampler(
        types, mini_repeat_count=1, batch_size=8, schedule="ramp", ramp_start=0.25, ramp_end=0.75
    )
    chunks = _chunks(sampler)
    share = [sum(types[row] == "closed" for row in chunk) / len(chunk) for chunk in chunks]
    quarter = len(chunks) // 4
    mean = [sum(share[q * quarter : (q + 1) * quarter]) / quarter for q in range(4)]
    assert mean[0] == 1.0
    assert mean[1] > 0.6 > 0.4 > mean[2]
    assert mean[3] < 0.1
    assert sampler.stats()["curriculum/first_stage_share"] == share[-1]


def test_ramp_position_spans_all_epochs() -> None:
    types = _types(800)
    sampler = CurriculumSampler(types, mini_repeat_count=1, batch_size=8, schedule="ramp", num_epochs=2)
    heads = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        head = [row for chunk in _chunks(sampler)[:20] for row in chunk]
        heads.append(sum(types[row] == "closed" for row in head) / len(head))
    assert heads[0] > 0.85  # p runs 1 -> 0.9 over the first 20 chunks
    assert 0.3 < heads[1] < 0.7  # ... and 0.5 -> 0.4 at the start of epoch 1


def test_set_run_length_ends_the_ramp_with_a_run_that_stops_mid_epoch() -> None:
    types = _types(800)

    def build() -> CurriculumSampler:
        return CurriculumSampler(
            types, mini_repeat_count=1, batch_size=8, schedule="ramp", ramp_start=0.5, ramp_end=0.5
        )

    sampler = build()
    sampler.set_run_length(50)  # e.g. num_train_epochs=0.5: the run trains 50 of the epoch's 100 chunks
    closed = [all(types[row] == "closed" for row in chunk) for chunk in _chunks(sampler)[:50]]
    assert closed == [True] * 25 + [False] * 25  # the switch sits at half of the run, not of the epoch
    with pytest.raises(ValueError, match="run_chunks is 50"):
        build().load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    with pytest.raises(ValueError, match="total_chunks"):
        sampler.set_run_length(0)


# ---------------------------------------------------------------------------------- adaptive


def test_adaptive_skips_flat_prompts_then_revisits_them() -> None:
    sampler = CurriculumSampler(
        _types(40), mini_repeat_count=2, batch_size=4, adaptive=True, lag=1, revisit_after=2
    )
    flat = {row for row in range(40) if row % 3 == 0}
    history: list[list[int]] = []
    per_epoch = []
    for epoch in range(4):
        _drive(sampler, range(epoch, epoch + 1), history, ng=4, prefetch=False)
        per_epoch.append([row for chunk in history[epoch * 10 :] for row in chunk])
    assert all(len(rows) == 40 for rows in per_epoch)
    assert flat <= set(per_epoch[0])
    assert not flat & set(per_epoch[1]) and not flat & set(per_epoch[2])  # sat out two epochs
    assert flat & set(per_epoch[3])  # back in epoch 3
    assert sampler.skipped_total == 2 * len(flat)
    assert sampler.substituted_total == 2 * len(flat)  # the budget went to prompts with variance
    stats = sampler.stats()
    assert set(stats) == set(STATS_KEYS)
    assert stats["curriculum/skipped"] == 2 * len(flat) and stats["curriculum/observed_fraction"] == 1.0


def test_saturation_patience_and_reset_by_variance() -> None:
    def build() -> CurriculumSampler:
        return CurriculumSampler(
            _types(4), mini_repeat_count=2, batch_size=4, adaptive=True, lag=1, saturation_patience=2
        )

    once = build()
    once.observe([0, 0, 1, 1], [1.0, 1.0, 0.0, 0.0], 2)
    once.set_epoch(1)
    assert sorted(row for chunk in _chunks(once) for row in chunk) == [
        0,
        1,
        2,
        3,
    ]  # one flat group is not enough

    sampler = build()
    for _ in range(2):
        sampler.observe([0, 0, 1, 1], [1.0, 1.0, 0.0, 0.0], 2)
    sampler.observe([0, 0, 1, 1], [1.0, 1.0, 0.0, 1.0], 2)  # row 1 varies again: its streak resets
    sampler.set_epoch(3)
    rows = sorted(row for chunk in _chunks(sampler) for row in chunk)
    assert rows == [1, 1, 2, 3]  # row 0 deferred, its slot refilled with the observed, unsaturated row 1
    assert (sampler.skipped_total, sampler.substituted_total) == (1, 1)
    assert sampler.stats()["curriculum/saturated_fraction"] == 0.25


def test_nan_rewards_are_ignored() -> None:
    sampler = CurriculumSampler(_types(4), mini_repeat_count=3, batch_size=4, adaptive=True, lag=1)
    nan = float("nan")
    sampler.observe([0, 0, 0, 1, 1, 1], [nan, 1.0, 1.0, nan, nan, 0.0], 3)  # row 1: < 2 finite rewards
    sampler.set_epoch(1)
    list(sampler)
    stats = sampler.stats()
    assert stats["curriculum/saturated_fraction"] == 0.25  # row 0 is flat despite the NaN
    assert stats["curriculum/observed_fraction"] == 0.25
    assert stats["curriculum/group_reward_mean"] == 1.0


def test_adaptive_yields_saturated_rows_when_nothing_else_is_left() -> None:
    sampler = CurriculumSampler(
        _types(8), mini_repeat_count=2, batch_size=8, adaptive=True, lag=1, revisit_after=0
    )
    sampler.observe(list(range(8)), [1.0] * 8, 1)  # groups of one reward: ignored, nothing is saturated
    sampler.observe([r for r in range(8) for _ in range(2)], [0.5] * 16, 2)  # every prompt is flat
    sampler.set_epoch(2)
    rows = [row for chunk in _chunks(sampler) for row in chunk]
    assert sorted(rows) == list(range(8))
    assert sampler.substituted_total == 0 and sampler.skipped_total == 0
    assert sampler.stats()["curriculum/saturated_fraction"] == 1.0


def test_observe_rejects_malformed_batches() -> None:
    sampler = CurriculumSampler(_types(4), mini_repeat_count=2, adaptive=True)
    with pytest.raises(ValueError, match="one reward per index"):
        sampler.observe([0, 0], [1.0], 2)
    with pytest.raises(ValueError, match="mix prompts"):
        sampler.observe([0, 1], [1.0, 0.0], 2)
    with pytest.raises(ValueError, match="outside the dataset"):
        sampler.observe([9, 9], [1.0, 0.0], 2)
    assert sampler.num_observations == 0


def test_draws_lazily_and_warns_once_when_lag_is_shorter_than_prefetch() -> None:
    def build(lag: int) -> CurriculumSampler:
        return CurriculumSampler(_types(24), mini_repeat_count=2, batch_size=2, adaptive=True, lag=lag)

    sampler = build(2)
    stream = iter(sampler)
    next(stream)
    assert len(sampler.state_dict()["chunks"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _drive(build(2), range(2), [], ng=2)
    with pytest.warns(UserWarning, match="expects observations") as caught:
        _drive(build(1), range(2), [], ng=2)
    assert len([w for w in caught if "expects observations" in str(w.message)]) == 1


@pytest.mark.parametrize("schedule", ["mixed", "ramp"])
def test_order_does_not_depend_on_when_observations_arrive(schedule: str) -> None:
    """With lag=2, observing chunk g-1 before or just after chunk g is drawn gives the same order."""
    orders = []
    for prefetch in (False, True):
        sampler = CurriculumSampler(
            _types(30), mini_repeat_count=2, batch_size=3, adaptive=True, schedule=schedule
        )
        history: list[list[int]] = []
        _drive(sampler, range(3), history, ng=2, prefetch=prefetch)
        orders.append(history)
    assert orders[0] == orders[1]


def _batches(stream: Iterator[int], size: int) -> Iterator[list[int]]:
    while batch := list(itertools.islice(stream, size)):
        yield batch


def _drive_like_trainer(sampler: CurriculumSampler, epochs: range, ga: int, workers: int, ng: int) -> list:
    """Iterate like transformers' Trainer on an accelerate DataLoader: each optimizer step fetches ``ga``
    batches (``get_batch_samples``), accelerate reads one batch beyond those and DataLoader workers
    ``workers`` more; a batch is one repeat of a chunk, and a chunk is observed when its first batch
    trains. Returns the chunks in training order."""
    per_batch = sampler.batch_size * sampler.mini_repeat_count
    chunks: list[list[int]] = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        batches = _batches(iter(sampler), per_batch)
        drawn = deque(itertools.islice(batches, 1 + workers))
        trained = 0
        while drawn:
            step = []
            for _ in range(ga):
                if drawn:
                    step.append(drawn.popleft())
                    drawn.extend(itertools.islice(batches, 1))
            for batch in step:
                if trained % sampler.repeat_count == 0:
                    chunks.append(batch[:: sampler.mini_repeat_count])
                    _observe(sampler, chunks[-1], len(chunks) - 1, ng)
                trained += 1
    return chunks


@pytest.mark.parametrize(
    ("ga", "rep", "workers"), [(1, 1, 0), (4, 1, 0), (4, 2, 0), (4, 4, 0), (3, 2, 2), (2, 3, 1), (5, 2, 4)]
)
def test_lookahead_lag_covers_a_gradient_accumulation_step(ga: int, rep: int, workers: int) -> None:
    """With the trainer's fetch pattern the order equals observing every chunk right after it trains."""

    def build(lag: int) -> CurriculumSampler:
        types = _types(36)
        return CurriculumSampler(
            types, mini_repeat_count=2, batch_size=2, repeat_count=rep, adaptive=True, num_epochs=3, lag=lag
        )

    lag = lookahead_lag(ga + workers, rep)
    reference: list[list[int]] = []
    _drive(build(lag), range(3), reference, ng=2, prefetch=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _drive_like_trainer(build(lag), range(3), ga, workers, ng=2) == reference
    if lag > 1:  # one chunk less and the first optimizer step already outruns the observations
        with pytest.warns(UserWarning, match="expects observations"):
            _drive_like_trainer(build(lag - 1), range(3), ga, workers, ng=2)


def test_lookahead_lag_values() -> None:
    assert lookahead_lag(1, 1) == 2  # one batch of prefetch, one batch per chunk: the historic default
    assert lookahead_lag(4, 1) == 5 and lookahead_lag(4, 2) == 3 and lookahead_lag(4, 4) == 2
    with pytest.raises(ValueError, match="batches_per_chunk"):
        lookahead_lag(1, 0)


# ------------------------------------------------------------------------------------ resume


RESUME_CASES = [
    {"schedule": "mixed"},
    {"schedule": "sequential"},
    {"schedule": "ramp", "ramp_start": 0.2, "ramp_end": 0.8},
    {"schedule": "mixed", "adaptive": True, "revisit_after": 1},
    {"schedule": "sequential", "adaptive": True, "saturation_patience": 2, "revisit_after": 0},
    {"schedule": "ramp", "adaptive": True},
]


def _build(**kw: Any) -> CurriculumSampler:
    types = _types(30, ("closed", "open", "report"))
    return CurriculumSampler(types, mini_repeat_count=2, batch_size=3, repeat_count=2, num_epochs=3, **kw)


@pytest.mark.parametrize("kw", RESUME_CASES)
@pytest.mark.parametrize(("stop_at", "peek"), [(4, False), (4, True), (13, True), (10, False), (10, True)])
def test_resume_reproduces_the_uninterrupted_order(kw: dict[str, Any], stop_at: int, peek: bool) -> None:
    full: list[list[int]] = []
    reference = _build(**kw)
    assert _drive(reference, range(3), full, ng=2)

    history: list[list[int]] = []
    first = _build(**kw)
    assert not _drive(first, range(3), history, ng=2, stop_at=stop_at, peek=peek)
    state = json.loads(json.dumps(first.state_dict()))
    epoch = state["epoch"]

    if len(state["chunks"]) == first.chunks_per_epoch:
        epoch += 1  # stopped at an epoch boundary: the Trainer resumes with set_epoch(next epoch)

    resumed = _build(**kw)
    resumed.load_state_dict(state)
    assert _drive(resumed, range(epoch, 3), history, ng=2)  # replays the saved epoch's chunks first
    assert history == full
    assert resumed.stats() == reference.stats()
    if kw.get("adaptive"):
        assert reference.skipped_total > 0


def test_restart_at_an_epoch_boundary_without_state() -> None:
    reference = CurriculumSampler(_types(20), mini_repeat_count=2, batch_size=4, seed=5)
    first_epoch = list(reference)
    reference.set_epoch(1)
    second_epoch = list(reference)
    restarted = CurriculumSampler(_types(20), mini_repeat_count=2, batch_size=4, seed=5)
    restarted.set_epoch(1)
    assert list(restarted) == second_epoch != first_epoch
    # TRL's sampler keeps its generator state only in memory, so a restart repeats epoch 0's order instead
    trl = RepeatSampler(range(20), mini_repeat_count=2, batch_size=4, seed=5)
    trl_first, trl_second = list(trl), list(trl)
    assert (
        list(RepeatSampler(range(20), mini_repeat_count=2, batch_size=4, seed=5)) == trl_first != trl_second
    )


# ------------------------------------------------------------------------------------ errors


def test_stale_iterator_refuses_to_draw_into_another_epoch() -> None:
    sampler = CurriculumSampler(_types(20), mini_repeat_count=1, batch_size=4)
    stale = iter(sampler)
    next(stale)
    sampler.set_epoch(1)
    with pytest.raises(RuntimeError, match="still iterated"):
        list(stale)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seed": 1}, "seed"),
        ({"schedule": "sequential"}, "schedule"),
        ({"batch_size": 2}, "batch_size"),
        ({"types": _types(30, ("open", "closed", "report"))}, "task_types"),
        ({"types": _types(31, ("closed", "open", "report"))}, "num_rows"),
    ],
)
def test_state_from_another_recipe_is_refused(change: dict[str, Any], field: str) -> None:
    state = json.loads(json.dumps(_build().state_dict()))
    kw: dict[str, Any] = {"mini_repeat_count": 2, "batch_size": 3, "repeat_count": 2, "num_epochs": 3}
    types = change.pop("types", _types(30, ("closed", "open", "report")))
    kw.update(change)
    other = CurriculumSampler(types, **kw)
    with pytest.raises(ValueError, match=rf"{field} is .* start a new run or use the same recipe"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict({"version": 99})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mini_repeat_count": 0}, "mini_repeat_count"),
        ({"batch_size": 0}, "batch_size"),
        ({"repeat_count": True}, "repeat_count"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"saturation_patience": 0}, "saturation_patience"),
        ({"revisit_after": -1}, "revisit_after"),
        ({"lag": 0}, "lag"),
        ({"seed": -1}, "seed"),
        ({"schedule": "random"}, "schedule must be one of"),
        ({"stage_order": ()}, "stage_order"),
        ({"stage_order": ("closed", "closed")}, "stage_order"),
        ({"stage_order": "closed"}, "stage_order"),
        ({"schedule": "ramp", "stage_order": ("closed", "open", "report")}, "exactly two stages"),
        ({"ramp_start": 0.8, "ramp_end": 0.2}, "ramp_start"),
        ({"ramp_end": 1.5}, "ramp_end"),
    ],
)
def test_bad_arguments(kw: dict[str, Any], message: str) -> None:
    kw = {"mini_repeat_count": 2, **kw}
    with pytest.raises(ValueError, match=message):
        CurriculumSampler(_types(10), **kw)


def test_bad_task_types_and_epoch() -> None:
    with pytest.raises(ValueError, match="not a single string"):
        CurriculumSampler("closed", mini_repeat_count=2)
    with pytest.raises(ValueError, match=r"task_types\[1\]"):
        CurriculumSampler(["closed", None], mini_repeat_count=2)  # type: ignore[list-item]
    sampler = CurriculumSampler(_types(10), mini_repeat_count=2)
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
