"""Audit a record set before training on it: shortcuts, answer balance, self-contradictions, leaks.

A VQA benchmark is only as good as its blindness: if a predictor that never sees the image answers
well above chance, a model can score by reading the question, and its accuracy says nothing about
vision. ``cxmind data audit RECORDS`` measures, per task and per source × task:

1. **answer distributions** of the evaluated split (gold option texts and letter positions, yes/no
   balance; finding-list sizes and "No Finding" rate of open tasks);
2. **blind baselines** fitted on ``fit_split`` (train) and scored on ``split`` (test) against chance
   (mean ``1/len(options)``) with 95 % Wilson intervals: the majority answer per question stem and
   option set, the per-option prior (how often a text is gold when offered), the letter prior (how
   often each position is gold) and a bag-of-words "is this option gold" classifier over question
   words × option text (scikit-learn, at most ``max_fit_rows`` train records per source × task).
   Baselines are fitted per source × task (a model tells sources apart from the image alone); a task
   row pools those predictions. A task is *flagged* when its best baseline beats chance by more than
   ``margin`` and its interval lies above chance (so a handful of lucky test records does not flag);
3. **contradictions** between a record's gold trace and its own labels, checkable from the record
   alone (every split: a model trains on them);
4. **duplicates across splits**: identical report texts (report answers and reports quoted in
   questions; texts under ``min_report_words`` words are boilerplate and skipped), identical image
   paths, and near-identical images by the build's 256-bit perceptual hash (:mod:`cxmind.data.dedupe`);
5. **records per source × task × split** (and per label space when records carry one).

The result is plain JSON (``audit.json``); :func:`audit_markdown` renders it for the terminal and
the dataset card, :func:`violations` lists what ``--strict`` fails on. No report text is copied
into either output: only record ids and counts (some sources' reports are under a data use
agreement).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxmind.data.dedupe import (
    MIN_REPORT_WORDS,
    PHASH_DISTANCE,
    PHASH_SIZE,
    image_hash,
    near_pairs,
    report_key,
)
from cxmind.data.schema import SPLITS, TASKS
from cxmind.data.workers import map_in_workers
from cxmind.errors import UserError
from cxmind.format import (
    ACCEPT,
    REJECT,
    final_letter,
    findings_in,
    mark_of,
    option_letter,
    option_texts,
    parse,
    question_letters,
)
from cxmind.vocab import NO_FINDING, canonical, implied, is_known, not_absent

__all__ = [
    "AUDIT_FILE",
    "BASELINES",
    "CONTRADICTIONS",
    "add_parser",
    "audit",
    "audit_markdown",
    "record_contradictions",
    "run",
    "violations",
    "wilson",
]

AUDIT_FILE = "audit.json"
FORMAT = "cxmind-audit/1"
#: Blind baselines, in the order ties are broken.
BASELINES = ("majority", "option_prior", "letter_prior", "bow")
MAX_FIT_ROWS = 200_000  # train records per source × task for the baselines (memory and time bound)
TOP = 30  # answer-distribution entries kept per task (the rest summed as "(other)")
_EXAMPLE_IDS = 5  # ids listed per duplicate group
_Z95 = 1.959963984540054
_REPORT_QUOTE = re.compile(r"^\s*(?:Report|Findings)\s*:\s*", re.IGNORECASE | re.MULTILINE)
_WORD = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` (sound at 0, n and small n)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _top(counter: Counter, n: int = TOP) -> dict[str, int]:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
    out = {str(k): v for k, v in items[:n]}
    rest = sum(v for _, v in items[n:])
    if rest:
        out["(other)"] = rest
    return out


def _option_lines(options: Sequence[str] | None) -> set[str]:
    return {str(o).strip() for o in options or ()}


def _stem(question: str, options: Sequence[str] | None) -> str:
    """The question without its written-out option lines (option order must not split a key)."""
    lines = _option_lines(options)
    return _norm(" ".join(line for line in str(question).splitlines() if line.strip() not in lines))


def _quoted_reports(question: str, options: Sequence[str] | None) -> list[str]:
    """Report text quoted inside a question ("Report: ..." of matching, "Findings: ..." of summary)."""
    match = _REPORT_QUOTE.search(question or "")
    if match is None:
        return []
    lines = _option_lines(options)
    rest = [line for line in question[match.end() :].splitlines() if line.strip() not in lines]
    text = " ".join(rest).strip()
    return [text] if text else []


# ---------------------------------------------------------------------------------------------
# Contradictions: a record's trace against its own labels
# ---------------------------------------------------------------------------------------------

#: Contradiction kinds and what they mean (the card explains the kinds it lists).
CONTRADICTIONS: dict[str, str] = {
    "trace_unparsable": "no rounds can be read from the solution",
    "trace_format": "the solution breaks the interleaved grammar",
    "gold_not_an_option": "the gold letter is not one of the options",
    "final_vs_gold": "closed: the final answer letter is not the gold answer",
    "accepted_count": "closed: not exactly one option round is marked ✅",
    "verdict_vs_gold": "closed: an option round's ✅/❌ disagrees with the gold letter",
    "options_judged": "closed: an option is not judged exactly once (or a round names no option/verdict)",
    "options_overlap": "closed: a distractor cannot be absent given the gold finding (hierarchy)",
    "candidates_judged": "open: a differential candidate is not judged exactly once",
    "accepted_vs_final": "open: the ✅ set differs from the final list",
    "final_mixed": "open: the final list holds No Finding together with findings",
    "final_list_vs_gold": "open: the final list is not the gold answer (canonical sets)",
    "rejected_implied": "open: ❌ on a finding an accepted one implies",
    "rejected_related": "open: ❌ on a finding related to an accepted one (unknown, never absent)",
}


def record_contradictions(row: Mapping[str, Any]) -> list[str]:
    """Kinds of contradiction between a closed/open record's gold trace and its labels (may be empty)."""
    task_type = row.get("task_type")
    solution = row.get("solution") or ""
    if task_type not in ("closed", "open"):
        return []
    parsed = parse(solution)
    if not parsed.rounds:
        return ["trace_unparsable"]
    kinds = ["trace_format"] if parsed.errors else []
    options = list(row["options"]) if row.get("options") else None
    if task_type == "closed":
        kinds += _closed_contradictions(parsed.rounds, options, str(row.get("answer") or "").strip())
    else:
        kinds += _open_contradictions(parsed.rounds, options, str(row.get("answer") or ""))
    return list(dict.fromkeys(kinds))


def _closed_contradictions(rounds: Sequence[Any], options: list[str] | None, gold: str) -> list[str]:
    kinds = []
    letters = question_letters(options, rounds) or ()
    texts = option_texts(options) or {}
    if letters and gold not in letters:
        kinds.append("gold_not_an_option")
    if final_letter(rounds[-1].answer, letters or None) != gold:
        kinds.append("final_vs_gold")
    judged = [(option_letter(r.answer, letters or None), mark_of(r.answer)) for r in rounds[:-1]]
    if sum(mark == ACCEPT for _, mark in judged) != 1:
        kinds.append("accepted_count")
    if any(letter and mark and (mark == ACCEPT) != (letter == gold) for letter, mark in judged):
        kinds.append("verdict_vs_gold")
    counts = Counter(letter for letter, _ in judged)
    if (
        any(letter is None or mark is None for letter, mark in judged)
        or any(counts[x] != 1 for x in letters)
        or set(counts) - set(letters)
    ):
        kinds.append("options_judged")
    if gold in texts:
        gold_name = canonical(texts[gold])
        if gold_name != NO_FINDING and is_known(gold_name):
            cannot_be_absent = not_absent([gold_name])
            for letter, text in texts.items():
                name = canonical(text)
                if letter != gold and name != gold_name and name in cannot_be_absent:
                    kinds.append("options_overlap")
                    break
    return kinds


def _open_contradictions(rounds: Sequence[Any], options: list[str] | None, answer: str) -> list[str]:
    if len(rounds) < 2:
        return ["candidates_judged", "accepted_vs_final"]
    kinds = []
    candidates = findings_in(rounds[0].answer, options)
    judged: list[tuple[str | None, str | None]] = []
    for r in rounds[1:-1]:
        names = findings_in(r.answer, options)
        judged.append((names[0] if len(names) == 1 else None, mark_of(r.answer)))
    counts = Counter(name for name, _ in judged)
    if (
        any(name is None or mark is None for name, mark in judged)
        or any(counts[c] != 1 for c in candidates)
        or set(counts) - set(candidates)
    ):
        kinds.append("candidates_judged")
    accepted = {name for name, mark in judged if name and mark == ACCEPT}
    rejected = {name for name, mark in judged if name and mark == REJECT}
    final = set(findings_in(rounds[-1].answer, options))
    if NO_FINDING in final and len(final) > 1:
        kinds.append("final_mixed")
    final.discard(NO_FINDING)
    accepted.discard(NO_FINDING)
    if accepted != final:
        kinds.append("accepted_vs_final")
    if final != set(findings_in(answer, options)) - {NO_FINDING}:
        kinds.append("final_list_vs_gold")
    implied_by = implied(accepted)
    if rejected & implied_by:
        kinds.append("rejected_implied")
    elif rejected & (not_absent(accepted) - implied_by):
        kinds.append("rejected_related")
    return kinds


# ---------------------------------------------------------------------------------------------
# Blind baselines
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Closed:
    """A closed record as the blind baselines see it: no image, only words and positions."""

    id: str
    stem: str
    texts: tuple[str, ...]  # option texts, normalised, in letter order
    gold: int | None  # position of the gold option, None when the gold letter is not an option


def _closed_view(row: Mapping[str, Any]) -> _Closed | None:
    texts = option_texts(list(row["options"])) if row.get("options") else None
    if not texts or len(texts) < 2:
        return None
    letters = list(texts)
    answer = str(row.get("answer") or "").strip()
    gold = letters.index(answer) if answer in letters else None
    return _Closed(
        row["id"], _stem(row["question"], row["options"]), tuple(_norm(t) for t in texts.values()), gold
    )


def _argmax(scores: Sequence[float]) -> int:
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def _majority(fit: list[_Closed]) -> Any:
    by_key: dict[tuple, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for r in fit:
        if r.gold is not None:
            by_key[(r.stem, frozenset(r.texts))][r.texts[r.gold]] += 1
            overall[r.texts[r.gold]] += 1

    def predict(r: _Closed) -> int:
        seen = by_key.get((r.stem, frozenset(r.texts)))
        if seen:
            text = min(seen, key=lambda t: (-seen[t], t))
            return r.texts.index(text)
        return _argmax([overall[t] for t in r.texts])  # all unseen: the first option

    return predict


def _option_prior(fit: list[_Closed]) -> Any:
    offered: Counter = Counter()
    gold: Counter = Counter()
    for r in fit:
        if r.gold is not None:
            offered.update(set(r.texts))
            gold[r.texts[r.gold]] += 1

    def predict(r: _Closed) -> int:  # an option never offered on train scores chance
        return _argmax([gold[t] / offered[t] if offered[t] else 1 / len(r.texts) for t in r.texts])

    return predict


def _letter_prior(fit: list[_Closed]) -> Any:
    by_n: dict[int, Counter] = defaultdict(Counter)
    for r in fit:
        if r.gold is not None:
            by_n[len(r.texts)][r.gold] += 1

    def predict(r: _Closed) -> int:
        seen = by_n.get(len(r.texts), Counter())
        return _argmax([seen[i] for i in range(len(r.texts))])

    return predict


def _pair_features(r: _Closed, i: int, stem_words: Sequence[str]) -> list[str]:
    """Features of "option i is gold": its text and words, its position, question words × its text
    and the other options × its text (so "is there X?" × "No" and "offered with Y" can be learnt)."""
    text = r.texts[i]
    feats = [f"o={text}", f"pos={i}/{len(r.texts)}"]
    feats += [f"ow={w}" for w in sorted(set(_WORD.findall(text)))]
    feats += [f"q={w}|{text}" for w in stem_words]
    feats += [f"with={other}|{text}" for j, other in enumerate(r.texts) if j != i]
    return feats


def _bow(fit: list[_Closed]) -> Any:
    """A logistic-regression "is gold" scorer over the pair features seen on train (unseen ones are
    dropped at test time); None when train offers no contrast. Raises ImportError without scikit-learn."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    vocabulary: dict[str, int] = {}

    def pairs(r: _Closed) -> list[list[str]]:
        words = sorted(set(_WORD.findall(r.stem)))
        return [_pair_features(r, i, words) for i in range(len(r.texts))]

    def matrix(rows: list[list[str]], grow: bool) -> Any:
        indices: list[int] = []
        indptr = [0]
        for feats in rows:
            for f in feats:
                index = vocabulary.get(f)
                if index is None and grow:
                    index = vocabulary[f] = len(vocabulary)
                if index is not None:
                    indices.append(index)
            indptr.append(len(indices))
        data = np.ones(len(indices), dtype=np.float64)
        return csr_matrix((data, indices, indptr), shape=(len(rows), max(len(vocabulary), 1)))

    rows: list[list[str]] = []
    labels: list[int] = []
    for r in fit:
        if r.gold is not None:
            rows += pairs(r)
            labels += [int(i == r.gold) for i in range(len(r.texts))]
    if len(set(labels)) < 2:
        return None
    model = LogisticRegression(C=1.0, solver="liblinear", max_iter=200)
    model.fit(matrix(rows, grow=True), labels)

    def predict_many(records: list[_Closed]) -> list[int]:
        if not records:
            return []
        features = [p for r in records for p in pairs(r)]
        scores = model.decision_function(matrix(features, grow=False)).tolist()
        out, start = [], 0
        for r in records:
            out.append(_argmax(scores[start : start + len(r.texts)]))
            start += len(r.texts)
        return out

    return predict_many


def _score_group_job(job: tuple[list[_Closed], list[_Closed]]) -> tuple[dict[str, list[int]], set[str]]:
    notes: set[str] = set()
    return _score_group(*job, notes), notes


def _score_group(fit: list[_Closed], test: list[_Closed], notes: set[str]) -> dict[str, list[int]]:
    """Per baseline, 1/0 per scored test record (empty when the baseline could not be fitted)."""
    scored = [r for r in test if r.gold is not None]
    if not any(r.gold is not None for r in fit):
        return {}
    out: dict[str, list[int]] = {}
    for name, make in (
        ("majority", _majority),
        ("option_prior", _option_prior),
        ("letter_prior", _letter_prior),
    ):
        predict = make(fit)
        out[name] = [int(predict(r) == r.gold) for r in scored]
    try:
        predict_many = _bow(fit)
    except ImportError:
        notes.add(
            "scikit-learn is not installed: the bag-of-words baseline is skipped (pip install scikit-learn)"
        )
        predict_many = None
    if predict_many is not None:
        out["bow"] = [int(p == r.gold) for p, r in zip(predict_many(scored), scored, strict=True)]
    return out


# ---------------------------------------------------------------------------------------------
# Reading the record set (streamed: only compact views of what each check needs are kept)
# ---------------------------------------------------------------------------------------------


def _shards(path: Path) -> dict[str, list[Path]]:
    shards: dict[str, list[Path]] = defaultdict(list)
    for shard in sorted((path / "data").glob("*.parquet")):
        shards[shard.name.split("-")[0]].append(shard)
    return dict(shards)


def _rows(shards: Iterable[Path], skip: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for shard in shards:
        file = pq.ParquetFile(shard)
        columns = [name for name in file.schema_arrow.names if name not in skip]
        for batch in file.iter_batches(batch_size=4096, columns=columns):
            yield from batch.to_pylist()


_TRACE_COLUMNS = ["id", "task_type", "solution", "options", "answer"]


def _shard_contradictions(shard: Path) -> dict[str, list[str]]:
    """Record id -> contradiction kinds, for the records of one shard that have any (a worker job)."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(shard)
    columns = [name for name in _TRACE_COLUMNS if name in file.schema_arrow.names]
    found = {}
    for batch in file.iter_batches(batch_size=4096, columns=columns):
        for row in batch.to_pylist():
            kinds = record_contradictions(row)
            if kinds:
                found[row["id"]] = kinds
    return found


def _label_space(row: Mapping[str, Any]) -> str | None:
    space = row.get("label_space")
    if space is None and isinstance(row.get("extra"), Mapping):
        space = row["extra"].get("label_space")
    if space is None:
        return None
    return "|".join(space) if isinstance(space, list | tuple) else str(space)


@dataclass
class _Group:
    """What is gathered for one (source, task) or one task on the evaluated split."""

    task_type: str
    n: int = 0
    n_fit: int = 0
    fit_seen: int = 0
    gold_text: Counter = field(default_factory=Counter)
    gold_letter: Counter = field(default_factory=Counter)
    n_options: Counter = field(default_factory=Counter)
    yes_no: Counter = field(default_factory=Counter)
    list_size: Counter = field(default_factory=Counter)
    findings: Counter = field(default_factory=Counter)
    no_options: int = 0
    fit: list[_Closed] = field(default_factory=list)
    test: list[_Closed] = field(default_factory=list)


def _answers(group: _Group, row: Mapping[str, Any]) -> None:
    """Adds an evaluated-split row to its group's answer distribution."""
    group.n += 1
    options = list(row["options"]) if row.get("options") else None
    if group.task_type == "closed":
        texts = option_texts(options) if options else None
        answer = str(row.get("answer") or "").strip()
        if not texts:
            group.no_options += 1
            return
        group.n_options[len(texts)] += 1
        group.gold_letter[answer] += 1
        group.gold_text[texts.get(answer, "(not an option)")] += 1
        if {_norm(t) for t in texts.values()} == {"yes", "no"} and answer in texts:
            group.yes_no[_norm(texts[answer])] += 1
    elif group.task_type == "open":
        gold = [f for f in findings_in(str(row.get("answer") or ""), options) if f != NO_FINDING]
        group.list_size[len(gold)] += 1
        group.findings.update(gold or [NO_FINDING])


# ---------------------------------------------------------------------------------------------
# Images: identical paths and perceptual near-duplicates across splits
# ---------------------------------------------------------------------------------------------


def _near_duplicates(
    images: dict[str, dict[str, Any]],
    roots: Mapping[str, Path],
    distance: int,
    max_examples: int,
    progress: bool,
) -> tuple[dict[str, Any], set[str]]:
    """pHash every image used in a single split and pair images of different splits within
    ``distance`` bits (pigeonhole index: two hashes that close share one of ``distance + 1`` chunks)."""
    from tqdm.auto import tqdm

    from cxmind.data.images import ImageError, read_image

    bits = PHASH_SIZE * PHASH_SIZE
    hashes: list[tuple[int, str, str]] = []  # (hash, image key, split)
    missing = unreadable = 0
    for key, info in tqdm(sorted(images.items()), desc="audit: hashing images", disable=not progress):
        if len(info["splits"]) != 1:
            continue  # the same file in several splits is already an identical-path duplicate
        path = _image_path(roots, info["source"], info["rel"])
        if path is None or not path.is_file():
            missing += 1
            continue
        try:
            image = read_image(path)
        except (ImageError, OSError, ValueError):
            unreadable += 1
            continue
        hashes.append((image_hash(image), key, next(iter(info["splits"]))))
    pairs = {
        (i, j): d
        for i, j, d in near_pairs([h for h, _, _ in hashes], distance)
        if hashes[i][2] != hashes[j][2]  # only copies in different splits are a leak
    }
    flagged = {hashes[i][1] for pair in pairs for i in pair}
    examples = []
    for (i, j), d in sorted(pairs.items(), key=lambda kv: (kv[1], hashes[kv[0][0]][1]))[:max_examples]:
        examples.append(
            {
                "distance": d,
                "images": [
                    {
                        "split": hashes[k][2],
                        "image": hashes[k][1],
                        "ids": _ids(images[hashes[k][1]]),
                    }
                    for k in (i, j)
                ],
            }
        )
    result = {
        "status": "ok",
        "hash": f"phash {bits}-bit",
        "max_distance": distance,
        "images_hashed": len(hashes),
        "missing": missing,
        "unreadable": unreadable,
        "pairs": len(pairs),
        "images": len(flagged),
        "examples": examples,
    }
    if not hashes:
        result["status"] = "skipped"
        result["note"] = "no image file could be read (images absent or roots unknown)"
    return result, flagged


def _image_path(roots: Mapping[str, Path], source: str, rel: str) -> Path | None:
    """The image file under its source's root; None when the root is unknown or the path escapes it."""
    from cxmind.data.images import ImageError, resolve_under

    root = roots.get(source)
    if root is None:
        return None
    try:
        return resolve_under(root, rel)
    except ImageError:
        return None


# ---------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------


class _Collector:
    """One streamed pass over every record: contradictions, duplicate candidates, answer
    distributions and the compact closed views the baselines need (train reservoir-sampled)."""

    def __init__(
        self,
        split: str,
        fit_split: str,
        max_examples: int,
        max_fit_rows: int,
        min_words: int,
        contradictions: Mapping[str, list[str]],
    ):
        self.found = contradictions  # record id -> kinds (checked per shard in worker processes)
        self.split, self.fit_split = split, fit_split
        self.max_examples, self.max_fit_rows, self.min_words = max_examples, max_fit_rows, min_words
        self.groups: dict[tuple[str, str], _Group] = {}  # (source, task)
        self.counts: Counter = Counter()  # (source, task, split)
        self.label_spaces: Counter = Counter()  # (source, label space)
        self.contradictions: dict[str, dict[str, Any]] = {}
        self.texts: dict[bytes, dict[str, Any]] = {}  # report text digest -> splits, ids
        self.images: dict[str, dict[str, Any]] = {}  # "source:path" -> splits, ids
        self.evaluated: list[tuple[str, str, list[bytes], list[str]]] = []  # task, source, digests, images
        self.rng = random.Random(f"cxmind-audit\x1f{max_fit_rows}")

    def add(self, row: Mapping[str, Any], split: str) -> None:
        task, source = row["task"], row["source"]
        task_type = row.get("task_type") or TASKS.get(task, "closed")
        self.counts[(source, task, split)] += 1
        space = _label_space(row)
        if space is not None:
            self.label_spaces[(source, space)] += 1
        self._contradictions(row, task, split)
        digests = self._reports(row, task_type, split)
        keys = []
        for rel in row.get("images") or ():
            key = f"{source}:{rel}"
            keys.append(key)
            info = self.images.setdefault(
                key, {"splits": set(), "ids": [], "n": 0, "source": source, "rel": rel}
            )
            _remember(info, split, row["id"])

        group = self.groups.get((source, task))
        if group is None:
            group = self.groups[(source, task)] = _Group(task_type)
        if split == self.split:
            _answers(group, row)
            self.evaluated.append((task, source, digests, keys))
        if split == self.fit_split:
            group.n_fit += 1
        if task_type != "closed" or split not in (self.split, self.fit_split):
            return
        view = _closed_view(row)
        if view is None:
            return
        if split == self.split:
            group.test.append(view)
        if split == self.fit_split:
            group.fit_seen += 1
            if len(group.fit) < self.max_fit_rows:
                group.fit.append(view)
            else:  # reservoir sample: every train record is equally likely to be kept
                j = self.rng.randrange(group.fit_seen)
                if j < self.max_fit_rows:
                    group.fit[j] = view

    def _contradictions(self, row: Mapping[str, Any], task: str, split: str) -> None:
        kinds = self.found.get(row["id"])
        if not kinds:
            return
        entry = self.contradictions.setdefault(
            task, {"records": 0, "by_kind": Counter(), "by_split": Counter(), "examples": {}}
        )
        entry["records"] += 1
        entry["by_split"][split] += 1
        for kind in kinds:
            entry["by_kind"][kind] += 1
            ids = entry["examples"].setdefault(kind, [])
            if len(ids) < self.max_examples:
                ids.append(row["id"])

    def _reports(self, row: Mapping[str, Any], task_type: str, split: str) -> list[bytes]:
        """Digests of the report texts a row carries (its answer, a quote in its question)."""
        reports = [(row.get("answer") or "", True)] if task_type == "report" else []
        reports += [(q, False) for q in _quoted_reports(row.get("question") or "", row.get("options"))]
        digests = []
        for text, is_answer in reports:
            key = report_key(text, self.min_words)  # the build's rule for "the same report"
            if key is None:
                continue
            digest = _digest(key)
            digests.append(digest)
            entry = self.texts.setdefault(digest, {"splits": set(), "ids": [], "n": 0, "answered": set()})
            _remember(entry, split, row["id"])
            if is_answer:
                entry["answered"].add(split)
        return digests


def _remember(entry: dict[str, Any], split: str, record_id: str) -> None:
    """Counts a record under a duplicate candidate; keeps a few ids, at least one per split."""
    entry["n"] += 1
    if split not in entry["splits"] or len(entry["ids"]) < _EXAMPLE_IDS:
        entry["ids"].append((split, record_id))
    entry["splits"].add(split)


def _ids(entry: Mapping[str, Any]) -> list[str]:
    return [record_id for _, record_id in entry["ids"]]


def _in_order(splits: Iterable[str]) -> list[str]:
    return sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))


def audit(
    path: str | Path,
    *,
    split: str = "test",
    fit_split: str = "train",
    max_examples: int = 20,
    images: bool = True,
    margin: float = 0.05,
    max_fit_rows: int = MAX_FIT_ROWS,
    min_report_words: int = MIN_REPORT_WORDS,
    phash_distance: int = PHASH_DISTANCE,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Audit the record set folder ``path``; returns the plain-JSON result (see the module docstring)."""
    from cxmind.data.records import image_roots, read_meta, rejected_ids

    path = Path(path)
    for name, value in (("split", split), ("fit_split", fit_split)):
        if value not in SPLITS:
            raise UserError(f"{name} must be one of {SPLITS}, got {value!r}")
    read_meta(path)  # a clear error when this is not a record set
    rejected = rejected_ids(path)
    shards = _shards(path)
    notes: set[str] = set()
    if rejected:
        notes.add(f"{len(rejected)} record ids rejected by `cxmind data validate` are left out")
    if split not in shards:
        notes.add(f"no {split!r} split: nothing to score")
    if fit_split not in shards:
        notes.add(f"no {fit_split!r} split: blind baselines are not fitted")
    if fit_split == split:
        notes.add("baselines are fitted and scored on the same split: their accuracies are optimistic")

    found: dict[str, list[str]] = {}
    every_shard = [shard for row_split in _in_order(shards) for shard in shards[row_split]]
    for part in map_in_workers(_shard_contradictions, every_shard, workers):
        found.update(part)
    collector = _Collector(split, fit_split, max_examples, max_fit_rows, min_report_words, found)
    for row_split in _in_order(shards):
        for row in _rows(shards[row_split], skip=("solution",)):
            if row["id"] not in rejected:
                collector.add(row, row_split)

    duplicates, dup_by_task, dup_by_source_task = _duplicates(
        collector, image_roots(path) if images else None, phash_distance, max_examples, progress
    )
    if duplicates["near_images"].get("note"):
        notes.add(duplicates["near_images"]["note"])
    tasks, by_source_task = _baselines(collector, margin, notes, workers)
    for task, entry in tasks.items():
        entry["contradictions"] = collector.contradictions.get(task, {}).get("records", 0)
        entry["duplicates"] = dup_by_task.get(task, {})
    for entry in by_source_task:
        entry["duplicates"] = dup_by_source_task.get((entry["source"], entry["task"]), {})
    for entry in collector.contradictions.values():
        entry["by_kind"] = dict(entry["by_kind"].most_common())
        entry["by_split"] = dict(entry["by_split"])

    split_counts: Counter = Counter()
    record_counts: dict[str, dict[str, dict[str, int]]] = {}
    for (source, task, s), n in sorted(collector.counts.items()):
        split_counts[s] += n
        record_counts.setdefault(source, {}).setdefault(task, {})[s] = n
    label_spaces = [
        {"source": s, "label_space": space, "records": n}
        for (s, space), n in sorted(collector.label_spaces.items())
    ]
    if not label_spaces:
        notes.add("records carry no label space: counts are per source × task × split")

    result: dict[str, Any] = {
        "format": FORMAT,
        "records": str(path),
        "split": split,
        "fit_split": fit_split,
        "settings": {
            "margin": margin,
            "max_fit_rows": max_fit_rows,
            "min_report_words": min_report_words,
            "phash_bits": PHASH_SIZE * PHASH_SIZE,
            "phash_distance": phash_distance,
            "max_examples": max_examples,
            "baselines": list(BASELINES),
        },
        "splits": {s: split_counts[s] for s in _in_order(split_counts)},
        "sources": sorted({s for s, _ in collector.groups}),
        "tasks": tasks,
        "by_source_task": by_source_task,
        "contradictions": collector.contradictions,
        "duplicates": duplicates,
        "label_spaces": label_spaces or None,
        "record_counts": record_counts,
        "notes": sorted(notes),
    }
    result["violations"] = violations(result, margin)
    return result


def _duplicates(
    collector: _Collector,
    roots: Mapping[str, Path] | None,
    phash_distance: int,
    max_examples: int,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, dict[str, int]], dict[tuple[str, str], dict[str, int]]]:
    """Report texts and images shared across splits, and per (source ×) task how many evaluated
    records share one (``roots`` None: no image hashing)."""
    shared_texts = {d: e for d, e in collector.texts.items() if len(e["splits"]) > 1}
    shared_paths = {k: e for k, e in collector.images.items() if len(e["splits"]) > 1}
    if roots is None:
        near, near_keys = {"status": "skipped", "note": "image checks turned off (--no-images)"}, set()
    else:
        near, near_keys = _near_duplicates(collector.images, roots, phash_distance, max_examples, progress)
    by_task: dict[str, Counter] = defaultdict(Counter)
    by_source_task: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for task, source, digests, keys in collector.evaluated:
        found = {
            "report_text": any(d in shared_texts for d in digests),
            "image_path": any(k in shared_paths for k in keys),
            "image_near": any(k in near_keys for k in keys),
        }
        for counter in (by_task[task], by_source_task[(source, task)]):
            counter["records"] += any(found.values())
            for kind, hit in found.items():
                counter[kind] += hit
    result = {
        "report_texts": {
            "min_words": collector.min_words,
            "groups": len(shared_texts),
            # the same text is a report answer in two splits (identical reports of different studies)
            "as_answers": sum(len(e["answered"]) > 1 for e in shared_texts.values()),
            # otherwise a question quotes a report of another split (e.g. a matching negative)
            "quoted_only": sum(len(e["answered"]) <= 1 for e in shared_texts.values()),
            "records": sum(e["n"] for e in shared_texts.values()),
            "examples": [
                {"splits": _in_order(e["splits"]), "ids": _ids(e)}
                for e in sorted(shared_texts.values(), key=lambda e: e["ids"][0][1])[:max_examples]
            ],
        },
        "image_paths": {
            "images": len(shared_paths),
            "records": sum(e["n"] for e in shared_paths.values()),
            "examples": [
                {"image": k, "splits": _in_order(e["splits"]), "ids": _ids(e)}
                for k, e in sorted(shared_paths.items())[:max_examples]
            ],
        },
        "near_images": near,
    }
    return result, {t: dict(c) for t, c in by_task.items()}, {k: dict(c) for k, c in by_source_task.items()}


def _baselines(
    collector: _Collector, margin: float, notes: set[str], workers: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Task rows and source × task rows: answer distributions, baselines fitted per source × task
    (in worker processes) and pooled per task."""
    groups = sorted(collector.groups.items())
    closed = [(g.fit, g.test) for _, g in groups if g.task_type == "closed"]
    fitted = iter(list(map_in_workers(_score_group_job, closed, workers)))
    pooled_hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    pooled_chance: dict[str, list[float]] = defaultdict(list)
    unfitted_chance: dict[str, list[float]] = defaultdict(list)
    unfitted: Counter = Counter()
    rows = []
    for (source, task), group in groups:
        scores: Mapping[str, list[int]] = {}
        if group.task_type == "closed":
            scores, group_notes = next(fitted)
            notes |= group_notes
        chances = [1 / len(r.texts) for r in group.test if r.gold is not None]
        if scores:
            pooled_chance[task] += chances
            for name, hits in scores.items():
                pooled_hits[task][name] += hits
        elif chances:
            unfitted[task] += len(chances)
            unfitted_chance[task] += chances
        entry = {"source": source, **_summary(task, group, scores, chances, margin)}
        if group.fit_seen > len(group.fit):
            entry["fit_sampled"] = len(group.fit)
        if chances and not scores:
            entry["notes"] = [f"no {collector.fit_split!r} records of this source and task: not fitted"]
        rows.append(entry)

    tasks: dict[str, Any] = {}
    order = list(TASKS)
    names = sorted({t for _, t in collector.groups}, key=lambda t: (order.index(t) if t in order else 99, t))
    for task in names:
        parts = [g for (_, t), g in collector.groups.items() if t == task]
        merged = _Group(parts[0].task_type)
        for g in parts:
            for name in ("gold_text", "gold_letter", "n_options", "yes_no", "list_size", "findings"):
                getattr(merged, name).update(getattr(g, name))
            merged.n += g.n
            merged.n_fit += g.n_fit
            merged.no_options += g.no_options
        hits = pooled_hits.get(task, {})
        chances = pooled_chance.get(task) or unfitted_chance.get(task, [])  # chance of what was scored
        tasks[task] = _summary(task, merged, hits, chances, margin)
        if unfitted[task]:
            tasks[task]["unfitted"] = unfitted[task]
    return tasks, rows


def _summary(
    task: str, group: _Group, scores: Mapping[str, list[int]], chances: list[float], margin: float
) -> dict[str, Any]:
    """One task (or source × task) row of the result."""
    entry: dict[str, Any] = {"task": task, "task_type": group.task_type, "n": group.n, "n_fit": group.n_fit}
    if group.task_type == "closed":
        answers: dict[str, Any] = {
            "gold_text": _top(group.gold_text),
            "gold_letter": dict(sorted(group.gold_letter.items())),
            "n_options": {str(k): v for k, v in sorted(group.n_options.items())},
        }
        if group.yes_no:
            total = sum(group.yes_no.values())
            answers["yes_rate"] = _r(group.yes_no["yes"] / total)
        if group.no_options:
            answers["no_options"] = group.no_options
        entry["answers"] = answers
        entry["chance"] = _r(sum(chances) / len(chances)) if chances else None
        baselines = {}
        for name in BASELINES:
            hits = scores.get(name)
            if hits:
                lo, hi = wilson(sum(hits), len(hits))
                baselines[name] = {
                    "accuracy": _r(sum(hits) / len(hits)),
                    "ci": [_r(lo), _r(hi)],
                    "n": len(hits),
                }
        entry["baselines"] = baselines
        best = max(baselines, key=lambda b: baselines[b]["accuracy"], default=None)  # ties: BASELINES order
        entry["best"] = {"baseline": best, **baselines[best]} if best else None
        entry["flagged"] = _flagged(entry, margin)
    elif group.task_type == "open":
        total = sum(group.list_size.values())
        entry["answers"] = {
            "list_size": {str(k): v for k, v in sorted(group.list_size.items())},
            "no_finding_rate": _r(group.list_size[0] / total) if total else None,
            "findings": _top(group.findings),
        }
    return entry


def _flagged(entry: Mapping[str, Any], margin: float) -> bool:
    best, chance = entry.get("best"), entry.get("chance")
    if not best or chance is None:
        return False
    return best["accuracy"] > chance + margin and best["ci"][0] > chance


def violations(result: Mapping[str, Any], margin: float | None = None) -> list[str]:
    """One line per problem ``--strict`` fails on: a blind shortcut, a contradiction, a leak."""
    margin = result["settings"]["margin"] if margin is None else margin
    lines = []
    rows = [(task, e) for task, e in result["tasks"].items()]
    if len(result.get("sources", ())) > 1:  # a shortcut in one source can hide in the pooled row
        rows += [(f"{e['source']}/{e['task']}", e) for e in result["by_source_task"]]
    for name, e in rows:
        if _flagged(e, margin):
            b = e["best"]
            lines.append(
                f"{name}: blind baseline {b['baseline']} scores {b['accuracy']:.3f} "
                f"[{b['ci'][0]:.3f}, {b['ci'][1]:.3f}] on {b['n']} {result['split']} records, "
                f"above chance {e['chance']:.3f} + {margin:g}"
            )
    for task, c in result["contradictions"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in c["by_kind"].items())
        lines.append(f"{task}: {c['records']} records contradict their own trace ({kinds})")
    dups = result["duplicates"]
    if dups["report_texts"]["groups"]:
        lines.append(f"{dups['report_texts']['groups']} report texts appear in more than one split")
    if dups["image_paths"]["images"]:
        lines.append(f"{dups['image_paths']['images']} image paths appear in more than one split")
    near = dups["near_images"]
    if near.get("pairs"):
        lines.append(
            f"{near['pairs']} near-duplicate image pairs across splits (pHash ≤ {near['max_distance']} bits)"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _blind_cell(e: Mapping[str, Any]) -> tuple[str, str, str]:
    if e["task_type"] != "closed" or not e["n"]:
        return "–", "–", "–"
    chance = f"{e['chance']:.2f}" if e.get("chance") is not None else "–"
    best = e.get("best")
    if not best:
        return chance, "not fitted", "–"
    flag = " ⚠" if e.get("flagged") else ""
    return (
        chance,
        f"{best['accuracy']:.2f} [{best['ci'][0]:.2f}, {best['ci'][1]:.2f}]{flag}",
        best["baseline"],
    )


def _table(
    rows: Iterable[tuple[str, Mapping[str, Any]]], split: str, fit_split: str, contradictions: bool
) -> list[str]:
    head = f"| task | n {split} | n {fit_split} | chance | best blind [95% CI] | baseline |"
    head += " contradictions |" if contradictions else ""
    head += " cross-split dup |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in rows:
        chance, best, baseline = _blind_cell(e)
        line = f"| {name} | {e['n']} | {e['n_fit']} | {chance} | {best} | {baseline} |"
        if contradictions:
            line += f" {e.get('contradictions', 0)} |"
        line += f" {e.get('duplicates', {}).get('records', 0)} |"
        lines.append(line)
    return lines


def audit_markdown(result: Mapping[str, Any]) -> str:
    """The audit as Markdown: the per-task table, duplicates, violations and notes (for the card)."""
    split = result["split"]
    lines = [
        "## Audit",
        "",
        f"Blind baselines (no image) fitted on `{result['fit_split']}` and scored on `{split}`; "
        f"⚠ marks a task whose best blind accuracy beats chance by more than "
        f"{result['settings']['margin']:g} with its 95% Wilson interval above chance. "
        "Contradictions count records of every split whose gold trace disagrees with its own labels; "
        f"cross-split dup counts `{split}` records sharing a report text or an image with another split.",
        "",
        *_table(result["tasks"].items(), split, result["fit_split"], contradictions=True),
    ]
    if len(result.get("sources", ())) > 1:
        lines += ["", "Per source:", ""]
        rows = [(f"{e['source']}/{e['task']}", e) for e in result["by_source_task"]]
        lines += _table(rows, split, result["fit_split"], contradictions=False)
    dups = result["duplicates"]
    texts, near = dups["report_texts"], dups["near_images"]
    near_text = (
        f"{near['pairs']} near-duplicate image pairs (pHash {near['hash']}, ≤ {near['max_distance']} bits, "
        f"{near['images_hashed']} images hashed)"
        if near.get("status") == "ok"
        else f"near-duplicate images not checked: {near.get('note', 'skipped')}"
    )
    lines += [
        "",
        f"Across splits: {texts['groups']} shared report texts (≥ {texts['min_words']} words; "
        f"{texts['as_answers']} are report answers in two splits, {texts['quoted_only']} reach another split "
        f"only as a quote in a question), {dups['image_paths']['images']} shared image paths, "
        f"{near_text}.",
    ]
    kinds = Counter()
    for c in result["contradictions"].values():
        kinds.update(c["by_kind"])
    if kinds:
        lines += ["", "Contradictions by kind:", ""]
        lines += [f"- {k}: {n} ({CONTRADICTIONS.get(k, '')})" for k, n in kinds.most_common()]
    if result.get("violations"):
        lines += ["", "Violations:", "", *[f"- {v}" for v in result["violations"]]]
    if result.get("notes"):
        lines += ["", "Notes:", "", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line (wired into `cxmind data` by cxmind.cli)
# ---------------------------------------------------------------------------------------------


def add_parser(data_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``cxmind data audit`` to the ``data`` sub-commands."""
    a = data_sub.add_parser(
        "audit",
        help="shortcut and quality report: blind baselines, contradictions, cross-split duplicates",
        description="Fit image-blind baselines on the train split and score them on the test split against "
        "chance, count records whose gold trace contradicts their own labels, and find report texts and "
        "images shared across splits. Writes audit.json and prints a Markdown table.",
    )
    a.add_argument("records", type=Path, help="a record set folder written by `cxmind data build`")
    a.add_argument("--split", default="test", choices=SPLITS, help="split to score (default: test)")
    a.add_argument("--fit-split", default="train", choices=SPLITS, help="split to fit baselines on")
    a.add_argument("--out", type=Path, default=None, help="audit JSON path (default: RECORDS/audit.json)")
    a.add_argument("--max-examples", type=int, default=20, help="example ids listed per finding")
    a.add_argument("--margin", type=float, default=0.05, help="flag blind accuracy above chance + margin")
    a.add_argument(
        "--max-fit-rows", type=int, default=MAX_FIT_ROWS, help="train records per source x task for baselines"
    )
    a.add_argument(
        "--min-report-words",
        type=int,
        default=MIN_REPORT_WORDS,
        help="shorter report texts are boilerplate, not duplicates",
    )
    a.add_argument(
        "--phash-distance", type=int, default=PHASH_DISTANCE, help="near-duplicate images: max differing bits"
    )
    a.add_argument("--no-images", action="store_true", help="skip the image checks (no hashing)")
    a.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU, at most 8)"
    )
    a.add_argument(
        "--strict", action="store_true", help="exit 1 on a blind shortcut, a contradiction or a duplicate"
    )
    a.add_argument("--no-progress", action="store_true")
    return a


def run(args: argparse.Namespace) -> int:
    """``cxmind data audit``: write the JSON, print the table; 1 under --strict with violations."""
    result = audit(
        args.records,
        split=args.split,
        fit_split=args.fit_split,
        max_examples=args.max_examples,
        images=not args.no_images,
        margin=args.margin,
        max_fit_rows=args.max_fit_rows,
        min_report_words=args.min_report_words,
        phash_distance=args.phash_distance,
        progress=not args.no_progress,
        workers=args.workers,
    )
    out = args.out if args.out is not None else Path(args.records) / AUDIT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(audit_markdown(result))
    print(f"audit: {out}")
    if args.strict and result["violations"]:
        for line in result["violations"]:
            print(f"cxmind data audit: {line}", file=sys.stderr)
        return 1
    return 0
