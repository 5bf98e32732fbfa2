"""Answer balance: closed questions whose answer cannot be guessed without the image.

Natural label prevalence makes questions answerable blind: "Is there a nodule?" is "No" three
times in four, and a finding that is often gold is a safe guess whenever it is offered. As balanced
VQA sets do, the builder fixes this by construction, from label counts taken from the whole source
before any record is written:

* **per question stem, every answer equally often** (binary yes/no per finding, each view class,
  each progression class per finding): each study draws the question it would ask, and per stem
  only as many questions of each answer are kept as the rarest answer has (:func:`equal_answers`);
* **single choice**: questions come in complete option sets — the same k options asked on k
  studies, each option the answer once — so that given the options every one is equally likely
  (:func:`assign_single_choice`), and the options never imply or overlap each other.

``TaskConfig(balance="none")`` keeps natural prevalence (and this module is not used).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["AnswerBalance", "SingleChoiceSlot", "assign_single_choice", "equal_answers"]


def equal_answers(candidates: Iterable[tuple[str, Hashable, Hashable]], seed: int) -> set[str]:
    """The keys to keep so that, per question stem, every answer occurs equally often.

    ``candidates`` are ``(key, stem, answer)``; per stem, each answer keeps as many candidates as the
    rarest answer has (a stem with a single answer keeps none: it would be answerable blind). Which
    ones are kept is a deterministic pseudo-random choice.

    >>> sorted(equal_answers([("a", "nodule", "yes"), ("b", "nodule", "no"), ("c", "nodule", "no")], 0))
    ['a', 'c']
    """
    groups: dict[Hashable, dict[Hashable, list[str]]] = {}
    for key, stem, answer in candidates:
        groups.setdefault(stem, {}).setdefault(answer, []).append(key)
    kept: set[str] = set()
    for by_answer in groups.values():
        if len(by_answer) < 2:
            continue
        n = min(len(keys) for keys in by_answer.values())
        for keys in by_answer.values():
            kept.update(sorted(keys, key=lambda k: _rank(seed, k))[:n])
    return kept


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x1fbalance\x1f{key}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class SingleChoiceSlot:
    """One study's single-choice possibilities: gold candidates (uniform) and eligible distractors."""

    golds: tuple[str, ...]
    distractors: tuple[str, ...]


@dataclass
class AnswerBalance:
    """One source's balanced question plan (see the module docstring), by study id."""

    binary: dict[str, str] = field(default_factory=dict)  # study -> the finding to ask about
    views: tuple[str, ...] = ()  # the view classes this source has (the options)
    view_studies: set[str] = field(default_factory=set)  # studies asked their view
    progression: dict[str, tuple[str, int]] = field(default_factory=dict)  # study -> (finding, change)
    #: study -> (option texts, gold text): complete option sets (see :func:`assign_single_choice`)
    single_choice: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)

    def subset(self, studies: set[str]) -> AnswerBalance:
        """The plan of ``studies`` only (what a build worker needs for its share of the studies)."""
        return AnswerBalance(
            binary={k: v for k, v in self.binary.items() if k in studies},
            views=self.views,
            view_studies=self.view_studies & studies,
            progression={k: v for k, v in self.progression.items() if k in studies},
            single_choice={k: v for k, v in self.single_choice.items() if k in studies},
        )


def assign_single_choice(
    slots: Sequence[tuple[str, SingleChoiceSlot]], k: int, seed: int, tries: int = 48
) -> dict[str, tuple[tuple[str, ...], str]]:
    """Single-choice questions in *complete option sets*: study id -> (option texts, gold text).

    Every option set is used k times, once with each of its texts as the gold answer, each time on
    a different study where that text is true and the other k - 1 are known false. Given the
    options, every one is then equally likely to be the answer, so no image-blind rule (majority per
    option set, per-text prior, co-occurrence of texts) beats 1/k. A study joins at most one set; a
    study whose set cannot be completed gets no single-choice question.
    """
    rng = random.Random(f"{seed}\x1fsingle-choice")
    texts = sorted({t for _, slot in slots for t in (*slot.golds, *slot.distractors)})
    bit = {t: 1 << i for i, t in enumerate(texts)}
    negatives = [sum(bit[t] for t in slot.distractors) for _, slot in slots]
    holders: dict[str, list[int]] = {t: [] for t in texts}  # studies where the text can be gold
    for i, (_, slot) in enumerate(slots):
        for g in slot.golds:
            holders[g].append(i)
    for pool in holders.values():
        rng.shuffle(pool)
    used = [False] * len(slots)
    order = list(range(len(slots)))
    rng.shuffle(order)
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for i in order:
        slot = slots[i][1]
        if used[i] or len(slot.distractors) < k - 1:
            continue
        for _attempt in range(4):  # a few draws of distractors before giving the study up
            gold = rng.choice(slot.golds)
            options = (gold, *rng.sample(slot.distractors, k - 1))
            members = _complete(options, i, bit, negatives, holders, used, tries)
            if members is not None:
                break
        if members is None:
            continue
        for text, j in members.items():
            used[j] = True
            out[slots[j][0]] = (options, text)
        for text in options:  # drop used studies from the front of the pools (keeps scans short)
            holders[text] = [j for j in holders[text][: tries * 2] if not used[j]] + holders[text][
                tries * 2 :
            ]
    return out


def _complete(
    options: tuple[str, ...],
    seed_study: int,
    bit: dict[str, int],
    negatives: list[int],
    holders: dict[str, list[int]],
    used: list[bool],
    tries: int,
) -> dict[str, int] | None:
    """Studies for the other options of a set (each the answer once), or None if one is missing."""
    mask = sum(bit[t] for t in options)
    members = {options[0]: seed_study}
    for other in options[1:]:
        rest = mask ^ bit[other]  # the other options must all be known false on that study
        found = next(
            (
                j
                for j in holders[other][:tries]
                if not used[j] and j not in members.values() and rest & ~negatives[j] == 0
            ),
            None,
        )
        if found is None:
            return None
        members[other] = found
    return members
