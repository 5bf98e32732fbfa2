"""The interleaved ``<think>…</think><answer>…</answer>`` format: parse, validate, render, instruct.

A completion is one or more *rounds*; each round judges one option (closed questions) or one
candidate finding (open questions) — see ``docs/rewards.md`` §1–2. This module is the
single source of truth for the grammar: the rewards, the gold-trace builders and evaluation all
parse through it, and the prompt instructions that teach the format live next to the parser.

The parser is a single left-to-right pass over the tag positions (no backtracking regex), so it
runs in linear time on arbitrary model output.

>>> text = "<think>Option A: no.</think> <answer>A) ❌</answer><think>So B.</think><answer>B) ✅</answer>"
>>> parsed = parse(text)
>>> parsed.well_formed, len(parsed.rounds), option_letter(parsed.rounds[-1].answer)
(True, 2, 'B')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cxmind.vocab import NO_FINDING, canonical

__all__ = [
    "ACCEPT",
    "DEFAULT_LETTERS",
    "REJECT",
    "Parsed",
    "Round",
    "closed_instructions",
    "final_letter",
    "findings_in",
    "instructions",
    "mark_of",
    "open_instructions",
    "option_letter",
    "option_letters",
    "option_texts",
    "parse",
    "question_letters",
    "render",
    "render_closed",
    "render_open",
]

ACCEPT = "✅"
REJECT = "❌"
DEFAULT_LETTERS = "ABCDEFGH"
TASK_TYPES = ("closed", "open")
#: A question's ``options`` column: labelled lines, unlabelled texts, a ``{letter: text}`` mapping or None.
Options = Sequence[str] | Mapping[str, str] | str | None

_TAG = re.compile(r"<(/?)(think|answer)>")
# One well-formed round whose texts contain no "<" at all: the common case, matched without backtracking.
_PLAIN_ROUND = re.compile(r"\s*<think>([^<]*)</think>\s*<answer>([^<]*)</answer>")


@dataclass(frozen=True)
class Round:
    """One reasoning round: the think text and the answer text, both stripped."""

    think: str
    answer: str


@dataclass(frozen=True)
class Parsed:
    """Rounds recovered from a completion, and every grammar violation met on the way.

    Rounds are recovered leniently (a malformed completion still yields its complete
    think/answer pairs) so that outcome rewards and evaluation can read them; ``errors``
    says why the completion is not well formed.
    """

    rounds: tuple[Round, ...]
    errors: tuple[str, ...]

    @property
    def well_formed(self) -> bool:
        return not self.errors


def parse(text: str) -> Parsed:
    """Split ``text`` into rounds and list its violations of the interleaved grammar.

    Well formed means: only rounds ``<think>T</think>`` + optional white space +
    ``<answer>A</answer>``, separated by optional white space, with no tag inside T or A.

    >>> parse("<think>a<think>b</think><answer>C</answer>").errors
    ('nested <think> inside <think>',)
    >>> parse("Sure! <think>t</think><answer>A</answer>").errors
    ('text outside rounds',)
    """
    rounds: list[Round] = []
    pos = 0
    while (match := _PLAIN_ROUND.match(text, pos)) is not None:
        rounds.append(Round(match.group(1).strip(), match.group(2).strip()))
        pos = match.end()
    if rounds and not text[pos:].strip():
        return Parsed(tuple(rounds), ())
    return _parse_general(text)


def _parse_general(text: str) -> Parsed:
    """The full tag-by-tag pass: recovers rounds from any text and names every violation."""
    rounds: list[Round] = []
    errors: list[str] = []
    block: str | None = None  # "think" or "answer" while inside a block
    block_start = 0
    pending_think: str | None = None  # closed think waiting for its answer
    pos = 0

    def error(message: str) -> None:
        if message not in errors:
            errors.append(message)

    for match in _TAG.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        between = text[pos : match.start()]
        pos = match.end()
        if block is not None:
            if closing and name == block:
                content = text[block_start : match.start()].strip()
                if block == "think":
                    pending_think = content
                else:
                    if pending_think is None:
                        error("<answer> without a preceding <think>")
                    rounds.append(Round(pending_think or "", content))
                    pending_think = None
                block = None
                continue
            # A tag inside an open block: report it, drop the block, read an opening tag afresh.
            error(f"nested <{'/' if closing else ''}{name}> inside <{block}>")
            block = None
            if closing:
                continue
        elif between.strip():
            error(
                "text between </think> and <answer>" if pending_think is not None else "text outside rounds"
            )
        if closing:
            error(f"stray </{name}>")
            continue
        if name == "think" and pending_think is not None:
            error("<think> without an <answer>")
            pending_think = None
        block, block_start = name, match.end()

    if block is not None:
        error(f"unclosed <{block}>")
    elif text[pos:].strip():
        error("text outside rounds")
    if pending_think is not None and block is None:
        error("<think> without an <answer>")
    if not rounds and not errors:
        error("no rounds")
    return Parsed(tuple(rounds), tuple(errors))


# ---------------------------------------------------------------------------------------------
# Reading answers
# ---------------------------------------------------------------------------------------------

# An option-letter candidate (docs/rewards.md §2): a letter with no letter or digit just before it,
# followed by a *strong* terminator (")", "）", "]", ".", ":", "*", ✅, ❌) or a *weak* one (white space
# or the end of the block). Openers "(", "[", "**" need no rule: they are neither letters nor digits.
# A lowercase letter counts only before ")", "）" or "]" ("(b) Not matched"), never in prose ("e.g.").
_STRONG_END = ")）].:*" + "✅❌"
_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9])(?:([A-Z])|([a-z])(?=[)）\]]))"  # the letter; lowercase only before a bracket
    r"(?:([" + re.escape(_STRONG_END) + r"])|(?=\s|\Z))"  # group 3: a strong terminator, else weak
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # options are lettered by position, at most 26


def option_letter(answer: str, letters: Iterable[str] | None = None) -> str | None:
    """The option letter an answer block names, or ``None`` (docs/rewards.md §2).

    Only letters among ``letters`` count (A–H when the options are unknown). A letter followed by a
    bracket, ".", ":", "*" or a verdict mark (*strong*) wins over one followed only by white space or
    the end of the block (*weak*); among equals, the first.

    >>> [option_letter(a) for a in ["C) ✅", "C）✅", "C✅", "[C] ✅", "**C** ✅", "(b) Not matched"]]
    ['C', 'C', 'C', 'C', 'C', 'B']
    >>> [option_letter(a) for a in ["Answer: D", "B. Lung Opacity", "A large heart; C) ✅", "No"]]
    ['D', 'B', 'C', None]
    >>> option_letter("X-ray shows"), option_letter("E) ❌", letters="ABCD")
    (None, None)
    """
    allowed = set(letters) if letters is not None else set(DEFAULT_LETTERS)
    weak: str | None = None
    for match in _CANDIDATE.finditer(answer):
        letter = (match.group(1) or match.group(2)).upper()
        if letter not in allowed:
            continue
        if match.group(3):
            return letter
        weak = weak or letter
    return weak


def final_letter(answer: str, letters: Iterable[str] | None = None) -> str | None:
    """The option a *final* answer block commits to: its letter, unless the block rejects it (❌).

    A completion cut off mid-way usually ends on a rejected option ("D) ❌"); that names no answer.

    >>> final_letter("C) ✅"), final_letter("D) ❌"), final_letter("Answer: B")
    ('C', None, 'B')
    """
    return None if mark_of(answer) == REJECT else option_letter(answer, letters)


def mark_of(answer: str) -> str | None:
    """The verdict of an answer block: ``ACCEPT``, ``REJECT``, or ``None`` if neither or both."""
    accept, reject = ACCEPT in answer, REJECT in answer
    if accept == reject:
        return None
    return ACCEPT if accept else REJECT


_LIST_SPLIT = re.compile(r"[,;\n]")


def findings_in(answer: str, options: Options = None) -> list[str]:
    """Canonical finding names listed in an answer block, in order, without duplicates.

    Items are separated by commas, semicolons or new lines; a leading "Differential
    Diagnoses:", brackets, marks and modifiers ("left", "mild", "(left lower lobe)") are ignored
    (:func:`cxmind.vocab.canonical`). With the question's ``options``, an item naming an option by
    its letter ("A", "(c)", "A) Cardiomegaly") stands for that option's text.

    >>> findings_in("Differential Diagnoses: [effusion, Enlarged heart]")
    ['Pleural Effusion', 'Cardiomegaly']
    >>> findings_in("A, C", options=["A) Cardiomegaly", "B) Edema", "C) Mass"])
    ['Cardiomegaly', 'Mass']
    """
    if options is None:
        return list(_findings(answer, None))
    if type(options) in (list, tuple):  # the common case, keyed as given: no per-call lettering
        return list(_findings(answer, _lettered(tuple(map(str, options)))))
    texts = option_texts(options)
    return list(_findings(answer, tuple(texts.items()) if texts else None))


@lru_cache(maxsize=1 << 16)  # answer blocks ("Edema ❌", "A) Mass ✅") repeat across records and completions
def _findings(answer: str, options: tuple[tuple[str, str], ...] | None) -> tuple[str, ...]:
    texts = dict(options) if options else None
    seen: dict[str, None] = {}
    for item in _LIST_SPLIT.split(answer):
        if texts:
            label = _OPTION_LABEL.match(item)
            letter = label and (label.group(1) or label.group(2)).upper()
            if letter in texts:
                item = texts[letter]
        name = canonical(item)
        if name:
            seen.setdefault(name, None)
    return tuple(seen)


# A label opening an option or list item: "A", "A) ...", "(b) ...", "[C] ...", "**D** ...", "E. ...".
_OPTION_LABEL = re.compile(r"\s*[(\[]?(?:\*\*)?(?:([A-Z])|([a-z])(?=[)）\]]))(?:[)）\].:*]+\s*|\s*\Z)")


def option_texts(options: Options) -> dict[str, str] | None:
    """The question's options as ``{letter: text}``, from the dataset's ``options`` column.

    Accepts a mapping ``{"A": "...", ...}``, a list of labelled options ``["A) ...", ...]`` or of bare
    letters, a list of unlabelled texts (lettered A, B, ... in order), or one string with one
    labelled option per line. Returns ``None`` when no options are given; raises ``ValueError`` for
    more than 26 unlabelled options.

    >>> option_texts(["A) Atelectasis", "B) Edema"]), option_texts(["Atelectasis", "Edema"])
    ({'A': 'Atelectasis', 'B': 'Edema'}, {'A': 'Atelectasis', 'B': 'Edema'})
    """
    if options is None:
        return None
    if type(options) in (list, tuple):  # the common case first: isinstance(Mapping) is slow
        texts = _lettered(tuple(map(str, options)))
        return dict(texts) if texts else None
    if isinstance(options, Mapping):
        pairs = [(str(k).strip().upper(), str(v)) for k, v in options.items()]
        return dict(pairs) or None
    if isinstance(options, str):
        items = tuple(line for line in options.splitlines() if line.strip())
    else:
        items = tuple(str(o) for o in options)
    texts = _lettered(items)
    return dict(texts) if texts else None


@lru_cache(maxsize=1 << 14)  # option lists repeat ("A) Yes", "B) No"; view classes; finding sets)
def _lettered(items: tuple[str, ...]) -> tuple[tuple[str, str], ...] | None:
    if not items:
        return None
    labels = [_OPTION_LABEL.match(item) for item in items]
    letters = [(m.group(1) or m.group(2)).upper() if m else None for m in labels]
    if all(letters) and len(set(letters)) == len(letters):
        return tuple((x, item[m.end() :].strip()) for x, item, m in zip(letters, items, labels, strict=True))  # type: ignore[union-attr,misc]
    if len(items) > len(LETTERS):
        raise ValueError(f"{len(items)} options given; at most {len(LETTERS)} (A–Z) are supported")
    return tuple((LETTERS[i], item.strip()) for i, item in enumerate(items))


def option_letters(options: Options) -> tuple[str, ...] | None:
    """Letters of a question's options (see :func:`option_texts`), or ``None`` without options.

    >>> option_letters(["A) Atelectasis", "B) Edema"]), option_letters({"A": "x", "C": "y"})
    (('A', 'B'), ('A', 'C'))
    >>> option_letters(["Atelectasis", "Edema", "Mass"])
    ('A', 'B', 'C')
    """
    texts = option_texts(options)
    return tuple(texts) if texts else None


def question_letters(options: Options, solution_rounds: Sequence[Round]) -> tuple[str, ...] | None:
    """A question's option letters: the ``options`` column, else the letters the gold solution judges
    in its rounds before the last (docs/rewards.md §3); ``None`` when neither gives any."""
    letters = option_letters(options)
    if letters:
        return letters
    judged = (option_letter(r.answer) for r in solution_rounds[:-1])
    return tuple(dict.fromkeys(letter for letter in judged if letter)) or None


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render(rounds: Iterable[Round | tuple[str, str]], sep: str = "\n") -> str:
    """Write rounds back as text; ``parse(render(r)).rounds == r`` for tag-free contents."""
    parts = []
    for item in rounds:
        think, answer = (item.think, item.answer) if isinstance(item, Round) else item
        for part in (think, answer):
            if _TAG.search(part):
                raise ValueError(f"round text may not contain <think>/<answer> tags: {part[:80]!r}")
        parts.append(f"<think>{think}</think> <answer>{answer}</answer>")
    if not parts:
        raise ValueError("a completion needs at least one round")
    return sep.join(parts)


def render_closed(judgements: Sequence[tuple[str, str, bool]], summary: str, answer_letter: str) -> str:
    """A closed-ended trajectory: one ``(letter, think, accepted)`` round per option, then the summary.

    >>> print(render_closed([("A", "No effusion.", False), ("B", "Heart is wide.", True)], "B fits.", "B"))
    <think>No effusion.</think> <answer>A) ❌</answer>
    <think>Heart is wide.</think> <answer>B) ✅</answer>
    <think>B fits.</think> <answer>B) ✅</answer>
    """
    rounds = [Round(think, f"{letter}) {ACCEPT if ok else REJECT}") for letter, think, ok in judgements]
    rounds.append(Round(summary, f"{answer_letter}) {ACCEPT}"))
    return render(rounds)


def render_open(
    observation: str,
    candidates: Sequence[tuple[str, str, bool]],
    summary: str,
) -> str:
    """An open-ended trajectory: differential list, one ``(finding, think, present)`` round each, final list.

    The final list holds the accepted findings, or "No Finding" when none is accepted.
    """
    names = [name for name, _, _ in candidates]
    final = [name for name, _, ok in candidates if ok] or [NO_FINDING]
    rounds = [Round(observation, f"Differential Diagnoses: [{', '.join(names)}]")]
    rounds += [Round(think, f"{name} {ACCEPT if ok else REJECT}") for name, think, ok in candidates]
    rounds.append(Round(summary, ", ".join(final)))
    return render(rounds)


# ---------------------------------------------------------------------------------------------
# Prompt instructions (our wording; one source of truth for what the model is asked to write)
# ---------------------------------------------------------------------------------------------

_CLOSED_INSTRUCTIONS = (
    "Reason step by step in rounds. For each option, in order, write one round: "
    "<think>why the image supports or rules out this option</think> "
    "<answer>the option letter followed by ✅ if it fits or ❌ if it does not, e.g. A) ❌</answer>. "
    "Then write a final round: <think>a short summary of the evidence</think> "
    "<answer>the letter of the single best option followed by ✅, e.g. C) ✅</answer>. "
    "Write nothing outside the rounds."
)

_OPEN_INSTRUCTIONS = (
    "Reason step by step in rounds. First: <think>what you observe on the image</think> "
    "<answer>Differential Diagnoses: [candidate findings, separated by commas]</answer>. "
    "Then one round per candidate, in the same order: <think>the evidence for or against it</think> "
    "<answer>the finding followed by ✅ if present or ❌ if absent, e.g. Atelectasis ✅</answer>. "
    "Finally: <think>a short summary</think> <answer>the present findings separated by commas, "
    "or No Finding if none is present</answer>. Write nothing outside the rounds."
)


def closed_instructions(options: Options = None) -> str:
    """Instructions appended to a closed-ended question (multiple choice or yes/no as options)."""
    letters = option_letters(options)
    if letters:
        return f"{_CLOSED_INSTRUCTIONS} The options are {', '.join(letters)}."
    return _CLOSED_INSTRUCTIONS


def open_instructions() -> str:
    """Instructions appended to an open-ended diagnosis question."""
    return _OPEN_INSTRUCTIONS


def instructions(task_type: str, options: Options = None) -> str:
    """Format instructions for ``task_type`` ("closed" or "open")."""
    if task_type == "closed":
        return closed_instructions(options)
    if task_type == "open":
        return open_instructions()
    raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
