"""The TRL reward functions built on the scoring core."""

import pickle

import pytest
from test_rewards import CLOSED_GOLD, OPEN_GOLD

from cxmind.rewards import (
    COMPONENTS,
    DEFAULT_REWARD_WEIGHTS,
    CuRLReward,
    completion_text,
    curl_vpr_reward_funcs,
    format_reward,
    functions,
    score,
)


def batch(completions, solutions, task_types, options=None):
    kwargs = {"solution": solutions, "task_type": task_types}
    if options is not None:
        kwargs["options"] = options
    return {
        "prompts": ["q"] * len(completions),
        "completions": completions,
        "completion_ids": [[1]] * len(completions),
        **kwargs,
    }


def test_one_function_per_component_matching_score():
    completions = [CLOSED_GOLD, "junk", OPEN_GOLD, "<think>x</think><answer>Edema</answer>"]
    solutions = [CLOSED_GOLD, CLOSED_GOLD, OPEN_GOLD, OPEN_GOLD]
    tasks = ["closed", "closed", "open", "open"]
    funcs = curl_vpr_reward_funcs()
    assert [f.__name__ for f in funcs] == [f"{c}_reward" for c in COMPONENTS]
    assert len(DEFAULT_REWARD_WEIGHTS) == len(funcs)
    for func, component in zip(funcs, COMPONENTS, strict=True):
        got = func(**batch(completions, solutions, tasks))
        want = [
            getattr(score(c, s, t), component) for c, s, t in zip(completions, solutions, tasks, strict=True)
        ]
        assert got == want


def test_other_task_types_get_none_so_trl_skips_them():
    values = format_reward(
        **batch([CLOSED_GOLD, "a report"], [CLOSED_GOLD, "gold report"], ["closed", "report"])
    )
    assert values == [1.0, None]


def test_conversational_completions_and_content_parts():
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert (
        completion_text(
            [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image"},
                        {"type": "text", "text": "b"},
                    ],
                }
            ]
        )
        == "ab"
    )
    conversational = [[{"role": "assistant", "content": CLOSED_GOLD}]]
    assert format_reward(**batch(conversational, [CLOSED_GOLD], ["closed"])) == [1.0]


def test_options_column_is_used():
    process = CuRLReward("process")
    options = [["A) a", "B) b", "C) c", "D) d", "E) e"]]
    assert process(**batch([CLOSED_GOLD], [CLOSED_GOLD], ["closed"], options)) == [0.0]
    assert process(**batch([CLOSED_GOLD], [CLOSED_GOLD], ["closed"], [None])) == [0.5]


def test_mode_and_weights_are_configurable():
    lone = "<think>B is not it.</think><answer>B) ❌</answer>"
    reference = CuRLReward("process", mode="reference", w_closed=0.2)
    assert reference(**batch([lone], [CLOSED_GOLD], ["closed"])) == [0.2]
    assert CuRLReward("process")(**batch([lone], [CLOSED_GOLD], ["closed"])) == [0.0]


def test_logs_mean_per_task_type():
    logged = {}
    completions = [CLOSED_GOLD, "junk", OPEN_GOLD]
    format_reward(
        **batch(completions, [CLOSED_GOLD, CLOSED_GOLD, OPEN_GOLD], ["closed", "closed", "open"]),
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert logged == {"curl_vpr/format/closed": 0.5, "curl_vpr/format/open": 1.0, "curl_vpr/row_errors": 0.0}


@pytest.mark.parametrize(
    ("solution", "task_type", "options"),
    [
        (CLOSED_GOLD, "clsoed", None),  # unknown task type
        (CLOSED_GOLD, None, None),
        (CLOSED_GOLD, "closed", [f"finding {i}" for i in range(27)]),  # more options than letters
        (CLOSED_GOLD, "closed", 42),  # options of the wrong type
        ("the heart is enlarged", "closed", None),  # no round in the reference
        ("<think>a</think><answer>maybe</answer>", "closed", None),  # no letter in the final answer
        (CLOSED_GOLD, "closed", ["A) a", "B) b"]),  # the gold letter C is not an option
        ("<think>a</think><answer>[]</answer>", "open", None),  # empty final list
        (None, "open", None),
        ("", "closed", None),
    ],
)
def test_a_malformed_row_scores_zero_and_is_counted(solution, task_type, options, monkeypatch):
    """One bad row must not stop a GRPO step: it scores 0, the others are scored as usual."""
    monkeypatch.setattr(functions, "_warned", set())  # each message is warned once per process
    logged = {}
    kwargs = batch(
        [CLOSED_GOLD, CLOSED_GOLD], [solution, CLOSED_GOLD], [task_type, "closed"], [options, None]
    )
    with pytest.warns(RuntimeWarning, match="scores 0"):
        for func in curl_vpr_reward_funcs():
            values = func(**kwargs, log_metric=lambda name, value: logged.__setitem__(name, value))
            assert values == [0.0, getattr(score(CLOSED_GOLD, CLOSED_GOLD, "closed"), func.component)]
            assert logged["curl_vpr/row_errors"] == 1.0


def test_missing_columns_name_the_fix():
    with pytest.raises(KeyError, match=r"'solution' and 'task_type'.*missing: solution"):
        format_reward(prompts=["q"], completions=["x"], completion_ids=[[1]], task_type=["closed"])
    with pytest.raises(ValueError, match="component"):
        CuRLReward("accuracy")


def test_reward_functions_pickle():
    func = pickle.loads(pickle.dumps(CuRLReward("think", mode="reference")))
    assert func.__name__ == "think_reward" and func.mode == "reference"
