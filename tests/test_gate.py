"""The accuracy gate (docs/rewards.md §4)."""

import json
import math

import pytest

from cxmind.rewards import ConditionalGate


def test_first_batch_is_stable_and_seeds_the_ema():
    gate = ConditionalGate()
    assert gate.step(0.3) is True
    assert gate.ema == pytest.approx(0.3)


def test_decisions_follow_the_spec_formula():
    means = [0.5, 0.4, 0.45, 0.6, 0.2, 0.9]
    gate = ConditionalGate(ema_alpha=0.2, margin=0.0)
    ema, expected = None, []
    for m in means:
        expected.append(True if ema is None else m >= ema)
        ema = m if ema is None else 0.2 * m + 0.8 * ema
    assert [gate.step(m) for m in means] == expected
    assert gate.ema == pytest.approx(ema)
    assert expected == [True, False, False, True, False, True]


def test_margin_raises_the_bar():
    gate = ConditionalGate(margin=0.05)
    gate.step(0.5)
    assert gate.step(0.52) is False
    assert gate.step(0.60) is True


def test_update_takes_per_completion_outcomes_and_skips_unscored_rows():
    gate = ConditionalGate()
    assert gate.update([1.0, 0.0, None, float("nan"), 1.0]) is True
    assert gate.last_mean == pytest.approx(2 / 3)
    # a batch without any scorable row changes nothing
    state = gate.state_dict()
    assert gate.update([None, float("nan")]) is True
    assert gate.state_dict() == state


def test_state_round_trips_through_json_and_resumes_identically():
    means = [0.2, 0.5, 0.1, 0.7, 0.65, 0.3, 0.9]
    uninterrupted = ConditionalGate()
    decisions = [uninterrupted.step(m) for m in means]

    first = ConditionalGate()
    resumed_decisions = [first.step(m) for m in means[:3]]
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = ConditionalGate()
    resumed.load_state_dict(saved)
    resumed_decisions += [resumed.step(m) for m in means[3:]]
    assert resumed_decisions == decisions
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_train_and_eval_gates_are_independent():
    train, evaluation = ConditionalGate(), ConditionalGate()
    train.step(0.9)
    evaluation.step(0.1)
    assert train.step(0.5) is False  # would be True had the eval batch moved the EMA down
    assert evaluation.ema == pytest.approx(0.1)


def test_bad_configuration_and_resume_mismatch_are_clear_errors():
    with pytest.raises(ValueError, match="ema_alpha"):
        ConditionalGate(ema_alpha=0)
    with pytest.raises(ValueError, match="margin"):
        ConditionalGate(margin=math.inf)
    with pytest.raises(ValueError, match="finite"):
        ConditionalGate().step(float("nan"))
    with pytest.raises(ValueError, match=r"ema_alpha=0\.5"):
        ConditionalGate().load_state_dict(ConditionalGate(ema_alpha=0.5).state_dict())
