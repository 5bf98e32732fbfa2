"""Spec §6 invariants: no reward raises, values stay in range, parsing is linear-time; and the
linear re-implementations of the reference code's regular expressions agree with the expressions."""

import math
import re
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rewards import CLOSED_GOLD, OPEN_GOLD

from cxmind.format import parse
from cxmind.rewards import curl_vpr_reward_funcs, score
from cxmind.rewards.reference import is_single_block, last_answer, pairs, squeeze_tags

# Fragments that make tag soup: every way the grammar can break, in both cases.
FRAGMENTS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<THINK>",
    "</Answer>",
    "< think >",
    "</ think>",
    " ",
    "\n",
    "\t",
    "\u3000",
    "a",
    "Option ",
    "A) ",
    "b) ",
    "C",
    "✅",
    "❌",
    "/",
    "<",
    ">",
    ".",
    ",",
    "Atelectasis",
    "effusion",
    "No Finding",
    "Differential Diagnoses: [",
    "]",
    "😀",
    "\u202e",
    "\x00",
]
tag_soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_text = st.one_of(tag_soup, st.text(max_size=200))


def check_in_range(scores, w_process):
    for name in ("format", "outcome", "think", "process"):
        value = getattr(scores, name)
        assert isinstance(value, float) and math.isfinite(value), (name, value)
    assert scores.format in (0.0, 1.0)
    assert 0.0 <= scores.outcome <= 1.0
    assert 0.0 <= scores.think <= 1.0 + 1e-12
    assert scores.process in (0.0, w_process)


@settings(max_examples=400, deadline=None)
@given(completion=any_text, solution=st.one_of(any_text, st.sampled_from([CLOSED_GOLD, OPEN_GOLD])))
def test_no_reward_raises_and_values_stay_in_range(completion, solution):
    for mode in ("fixed", "reference"):
        check_in_range(score(completion, solution, "closed", mode=mode), 0.5)
        check_in_range(score(completion, solution, "open", mode=mode), 0.2)
    parse(completion)


@settings(max_examples=100, deadline=None)
@given(completions=st.lists(any_text, min_size=1, max_size=4))
def test_trl_reward_functions_never_raise(completions):
    n = len(completions)
    kwargs = {"solution": [CLOSED_GOLD] * n, "task_type": (["closed", "open", "report"] * n)[:n]}
    for func in curl_vpr_reward_funcs():
        values = func(prompts=[""] * n, completions=completions, completion_ids=[[]] * n, **kwargs)
        assert len(values) == n
        assert all(v is None or math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------- linear time

MB = 1 << 20
ADVERSARIAL = {
    "open tags": "<think>" * (MB // 7),
    "close tags": "</think>" * (MB // 8),
    "unanswered thinks": "<think>a</think> " * (MB // 17),
    "spaces then junk": "<think>" + " " * MB + "x",
    "spaces around nothing": " " * MB + "x" + " " * 10,
    "rounds without closing answer": ("<think>a</think><answer>" * (MB // 24)),
    "letters": "A" * MB,
    "nested": "<think>" * 1000 + "x" * (MB - 14000) + "</think>" * 1000,
    "many rounds": "<think>Considering Atelectasis, volume loss.</think><answer>Atelectasis ✅</answer>"
    * (MB // 80),
    "many closed rounds": "<think>Option C fits the enlarged heart.</think><answer>C) ✅</answer>"
    * (MB // 66),
    "binary junk": bytes(range(256)).decode("latin-1") * (MB // 256),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_one_megabyte_adversarial_completion_scores_fast(name):
    completion = ADVERSARIAL[name]
    assert len(completion) >= MB - 100
    for task, gold in (("closed", CLOSED_GOLD), ("open", OPEN_GOLD)):
        for mode in ("fixed", "reference"):
            start = time.perf_counter()
            scores = score(completion, gold, task, mode=mode)
            elapsed = time.perf_counter() - start
            check_in_range(scores, 0.5 if task == "closed" else 0.2)
            # Quadratic backtracking on 1 MB takes minutes; linear parsing takes well under a second.
            assert elapsed < 1.0, f"{name}/{task}/{mode}: {elapsed:.2f}s"


def test_one_megabyte_of_distinct_words_scores_fast():
    """The think similarity stems every distinct word; v2 bounds it by the reference's length."""
    words = " ".join(f"w{i:x}y" for i in range(MB // 7))
    completion = CLOSED_GOLD.replace("the cardiothoracic ratio exceeds one half.", words)
    assert len(completion) >= MB
    start = time.perf_counter()
    scores = score(completion, CLOSED_GOLD, "closed")
    elapsed = time.perf_counter() - start
    assert scores.outcome == 1.0 and 0 < scores.think < 1
    assert elapsed < 0.5, f"{elapsed:.2f}s"


option_lists = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=50),
    st.lists(st.text(max_size=12), max_size=30),
    st.dictionaries(st.text(max_size=3), st.text(max_size=10), max_size=5),
)
rows = st.fixed_dictionaries(
    {
        "completion": any_text,
        "solution": st.one_of(st.none(), any_text, st.sampled_from([CLOSED_GOLD, OPEN_GOLD])),
        "task_type": st.one_of(st.none(), st.sampled_from(["closed", "open", "report", "grounding", "x"])),
        "options": option_lists,
    }
)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(rows, min_size=1, max_size=4))
def test_no_trl_reward_function_raises_on_any_row(batch):
    n = len(batch)
    kwargs = {key: [row[key] for row in batch] for key in ("solution", "task_type", "options")}
    for func in curl_vpr_reward_funcs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values = func(
                prompts=[""] * n,
                completions=[row["completion"] for row in batch],
                completion_ids=[[]] * n,
                log_metric=lambda name, value: None,
                **kwargs,
            )
        assert len(values) == n
        for value, row in zip(values, batch, strict=True):
            if row["task_type"] in ("report", "grounding"):
                assert value is None
            else:
                assert isinstance(value, float) and math.isfinite(value)


# ----------------------------------------------------------------------------- reference regexes

PAIR = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
FORMAT = re.compile(r"(?:<think>.*?</think>\s*<answer>.*?</answer>\s*)+", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@settings(max_examples=1500, deadline=None)
@given(tag_soup)
def test_linear_parsers_equal_the_reference_expressions(text):
    assert pairs(text) == PAIR.findall(text)
    found = ANSWER.findall(text)
    assert last_answer(text) == (found[-1] if found else "")
    assert is_single_block(text) == bool(FORMAT.fullmatch(text))
    assert squeeze_tags(text) == re.sub(r"\s*(<|>|/)\s*", r"\1", text)


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(
        tag_soup, st.lists(st.sampled_from([CLOSED_GOLD, OPEN_GOLD, " ", "\n", "x", "<", "a<b"])).map("".join)
    )
)
def test_fast_path_parse_equals_the_general_parser(text):
    from cxmind.format import _parse_general

    assert parse(text) == _parse_general(text)


def test_white_space_class_matches_str_isspace():
    """The linear code relies on str.strip/isspace agreeing with the regex \\s class."""
    mismatches = [c for c in map(chr, range(0x3000 + 1)) if bool(re.fullmatch(r"\s", c)) != c.isspace()]
    assert mismatches == []
