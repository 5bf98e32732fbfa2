"""``mode="reference"``: the public CX-Mind reward code's behaviour, defects included (docs/rewards.md §5).

The public code is the CX-Mind authors' training repository, https://github.com/SII-zyj/CX-Mind-private
(an EasyR1/verl fork); docs/rewards.md §5 lists what it computes and where fixed mode differs.

Each function here returns what the reference implementation's regular expressions return, but
computes it in one forward pass: the original patterns (lazy ``.*?`` under ``re.DOTALL`` and
``\\s*(<|>|/)\\s*``) backtrack quadratically on adversarial text, which a reward function fed by a
policy under optimisation must not do. Equivalence with the original expressions is tested.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cxmind.rewards.similarity import bleu1, rouge_l, rouge_tokens

__all__ = [
    "diseases",
    "is_single_block",
    "last_answer",
    "letter",
    "pairs",
    "score_closed",
    "score_open",
    "squeeze_tags",
]

Similarity = Callable[[str, str, float], float]
Components = tuple[float, float, float, float]

_THINK_OPEN = re.compile(re.escape("<think>"), re.IGNORECASE)
_THINK_CLOSE = re.compile(re.escape("</think>"), re.IGNORECASE)
_WS_ANSWER_OPEN = re.compile(r"\s*<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(re.escape("</answer>"), re.IGNORECASE)
_WS_RUN = re.compile(r"\s+")
_WS_AFTER_THINK_CLOSE = re.compile(r"\s*<answer>")
_OPTION = re.compile(r"([A-G])\s*[)）\.]?", re.IGNORECASE)
_LIST_SPLIT = re.compile(r"[,;\n]")
_MARKS = re.compile(r"[✅❌]")
_TAG_DELIMITERS = frozenset("<>/")


def pairs(text: str) -> list[tuple[str, str]]:
    """``re.findall(r"<think>(.*?)</think>\\s*<answer>(.*?)</answer>", text, re.DOTALL | re.I)``."""
    found: list[tuple[str, str]] = []
    pos = 0
    while (think := _THINK_OPEN.search(text, pos)) is not None:
        search_from = think.end()
        while True:  # the lazy think body grows to the first </think> that is followed by <answer>
            close = _THINK_CLOSE.search(text, search_from)
            if close is None:
                return found
            answer = _WS_ANSWER_OPEN.match(text, close.end())
            if answer is not None:
                break
            search_from = close.start() + 1
        end = _ANSWER_CLOSE.search(text, answer.end())
        if end is None:  # no later start can find a closing tag either
            return found
        found.append((text[think.end() : close.start()], text[answer.end() : end.start()]))
        pos = end.end()
    return found


def last_answer(text: str) -> str:
    """The last match of ``<answer>(.*?)</answer>`` (case-sensitive, as in the open-task code)."""
    last, pos = "", 0
    while (start := text.find("<answer>", pos)) != -1:
        end = text.find("</answer>", start + 8)
        if end == -1:
            break
        last, pos = text[start + 8 : end], end + 9
    return last


def is_single_block(text: str) -> bool:
    """``re.fullmatch(r"(?:<think>.*?</think>\\s*<answer>.*?</answer>\\s*)+", text, re.DOTALL)``.

    Any repetition of the group is itself one group match (the lazy bodies may span tags), so the
    text matches iff it is ``<think>`` … ``</think>`` ws ``<answer>`` … ``</answer>`` ws.
    """
    body = text.rstrip()
    if not (text.startswith("<think>") and body.endswith("</answer>")):
        return False
    answer_close = len(body) - len("</answer>")
    close = text.find("</think>", len("<think>"))
    while close != -1:
        answer = _WS_AFTER_THINK_CLOSE.match(text, close + len("</think>"))
        if answer is not None and answer.end() <= answer_close:
            return True
        if answer is not None or close >= answer_close:
            return False  # later candidates only start later
        close = text.find("</think>", close + 1)
    return False


def squeeze_tags(text: str) -> str:
    """``re.sub(r"\\s*(<|>|/)\\s*", r"\\1", text)``: drop white space next to ``<``, ``>`` or ``/``."""
    out: list[str] = []
    pos = 0
    for run in _WS_RUN.finditer(text):
        start, end = run.span()
        out.append(text[pos:start])
        before = text[start - 1] if start else ""
        after = text[end] if end < len(text) else ""
        if before not in _TAG_DELIMITERS and after not in _TAG_DELIMITERS:
            out.append(text[start:end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def letter(block: str) -> str:
    """First ``[A-G]`` anywhere in the block, case-insensitive (so "No finding" reads as F)."""
    match = _OPTION.search(block.strip())
    return match.group(1).upper() if match else ""


def diseases(block: str) -> list[str]:
    """Items of an answer split on ``[,;\\n]``, stripped and lowercased (no vocabulary)."""
    return [p.strip().lower() for p in _LIST_SPLIT.split(block) if p.strip()]


def _closed_similarity(prediction: str, gold: str, alpha: float) -> float:
    # Closed-task code: tokens split on single spaces and both scores rounded to 4 decimals.
    def tokens(text: str) -> list[str]:
        return text.lower().replace(".", " .").split(" ")

    bleu = round(bleu1(tokens(prediction), tokens(gold)), 4)
    rouge = round(rouge_l(rouge_tokens(prediction), rouge_tokens(gold)), 4)
    return alpha * bleu + (1 - alpha) * rouge


def score_closed(
    completion: str, solution: str, w_closed: float, alpha: float, sim: Similarity
) -> Components:
    """Closed-task components as the reference code computes them."""
    del sim  # the closed-task code has its own tokenisation and rounding
    pred_pairs, gold_pairs = pairs(completion), pairs(solution)
    fmt = 1.0 if is_single_block(completion) else 0.0
    pred = letter(pred_pairs[-1][1]) if pred_pairs else ""
    gold = letter(gold_pairs[-1][1]) if gold_pairs else ""
    outcome = 1.0 if pred and pred == gold else 0.0

    process = 0.0
    if (
        pred_pairs
        and gold
        and all(
            ("✅" in ans and letter(ans) == gold) or ("❌" in ans and letter(ans) != gold)
            for _, ans in pred_pairs
        )
    ):
        process = w_closed

    think = 0.0
    if outcome:
        pred_think = next((t.strip() for t, a in pred_pairs if letter(a) == gold), "")
        gold_think = next((t.strip() for t, a in gold_pairs if letter(a) == gold), "")
        if pred_think and gold_think:
            think = _closed_similarity(pred_think, gold_think, alpha)
    return fmt, outcome, think, process


def score_open(completion: str, solution: str, w_open: float, alpha: float, sim: Similarity) -> Components:
    """Open-task components as the reference code computes them."""
    fmt = 1.0 if is_single_block(squeeze_tags(completion.strip())) else 0.0
    pred_list, gold_list = diseases(last_answer(completion)), diseases(last_answer(solution))
    if not pred_list and not gold_list:
        outcome = 1.0
    elif not pred_list or not gold_list:
        outcome = 0.0
    else:
        pred_set, gold_set = set(pred_list), set(gold_list)
        outcome = 2 * len(pred_set & gold_set) / (len(pred_set) + len(gold_set))

    pred_pairs, gold_pairs = pairs(completion), pairs(solution)
    middle = [(think, ans, _MARKS.sub("", ans).strip().lower()) for think, ans in pred_pairs[1:-1]]
    process = 0.0
    if len(pred_pairs) > 2 and all(
        ("✅" in ans and name in gold_list) or ("❌" in ans and name not in gold_list)
        for _, ans, name in middle
    ):
        process = w_open

    sims = []
    for think, ans, name in middle:
        if "✅" in ans and name in gold_list:
            gold_think = next((t.strip() for t, a in gold_pairs if name in diseases(a)), "")
            if gold_think:
                sims.append(sim(think.strip(), gold_think, alpha))
    think_score = sum(sims) / len(sims) if sims else 0.0
    return fmt, outcome, think_score, process
