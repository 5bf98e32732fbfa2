"""Training data for SFT and GRPO: cxmind record sets and plain instruction data, mixed, images lazy.

Every source is first reduced to one small table (:data:`TRAINING_COLUMNS`: ids, task fields and
image *paths*), so sources of different kinds concatenate or interleave. A ``datasets`` transform
then turns a row into what TRL consumes — ``prompt`` (conversational, built by
:func:`cxmind.data.prompts.prompt_messages`, the prompts evaluation uses too), ``completion`` and
``images`` (decoded and resized with :func:`cxmind.data.images.load_image` only when the row is
read). The transform runs inside the data loader for SFT and GRPO alike, so a dataset is never
decoded whole and the same path checks apply to both trainers.

A record set source has a ``style``: ``reasoning`` (default) asks each question with its format
instructions and learns the gold interleaved trajectory (``solution``); ``instruction`` asks the bare
question and learns the plain answer (:func:`instruction_turns`) — the instruction-tuning stage that
comes before the cold start, teaching the model to bind the asked finding to the image. SFT only: a
GRPO stage rewards the reasoning format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxmind.data.images import ImageBudget, load_image
from cxmind.data.prompts import prompt_messages
from cxmind.data.records import META_FILE, image_roots, load_records
from cxmind.errors import UserError
from cxmind.format import option_texts

__all__ = [
    "STYLES",
    "TRAINING_COLUMNS",
    "DataSource",
    "instruction_turns",
    "load_training_data",
    "plain_column",
]

#: How a record set's rows are asked and answered (``DataSource.style``); the first is the default.
STYLES = ("reasoning", "instruction")

# The shared table every source is reduced to (strings are "" where a source has no value).
TRAINING_COLUMNS = (
    "id",
    "task_type",
    "task",
    "question",
    "options",
    "solution",
    "images",
    "image_root",
    "prompt_json",
    "completion_json",
    "row_index",
)


@dataclass
class DataSource:
    """One entry of a stage's ``data`` list.

    ``path`` is a cxmind record set folder (``cxmind data build`` output), a local ``.json``/
    ``.jsonl``/``.parquet`` file, or a Hub dataset id. Plain instruction data needs a
    ``messages`` column (the last assistant turn is learned) or ``prompt``/``completion``
    columns; its optional ``images`` column holds paths under ``image_root``.

    ``style`` (record sets only): ``reasoning`` (default) prompts with the format instructions and
    learns the gold trajectory; ``instruction`` prompts with the bare question and learns the plain
    answer (see :func:`instruction_turns`), for SFT stages only.
    """

    path: str
    split: str = "train"
    task_types: list[str] | None = None
    tasks: list[str] | None = None
    weight: float | None = None
    limit: int | None = None
    image_root: str | None = None
    style: str = STYLES[0]

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise UserError(
                f"data source {self.path}: style must be one of {list(STYLES)}, got {self.style!r}"
            )
        if self.weight is not None and not (self.weight > 0 and math.isfinite(self.weight)):
            raise UserError(f"data source {self.path}: weight must be a positive number, got {self.weight!r}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"data source {self.path}: limit must be >= 1, got {self.limit!r}")

    @classmethod
    def from_value(cls, value: str | Mapping[str, Any] | DataSource) -> DataSource:
        """A recipe value: a path string or a mapping of this class's fields."""
        if isinstance(value, DataSource):
            return value
        if isinstance(value, str):
            return cls(path=value)
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserError(
                f"data source {dict(value)!r}: unknown key(s) {sorted(unknown)}; "
                f"allowed: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**value)

    @property
    def is_record_set(self) -> bool:
        return (Path(self.path) / META_FILE).is_file()


@dataclass
class _Roots:
    """Image roots by key; rows store only the key, so paths in data rows stay relative."""

    roots: dict[str, Path] = field(default_factory=dict)

    def add(self, key: str, root: Path) -> str:
        self.roots[key] = root
        return key


def load_training_data(
    sources: Sequence[str | Mapping[str, Any] | DataSource],
    *,
    kind: str,
    image_budget: ImageBudget | None = None,
    mix: str = "concatenate",
    seed: int = 0,
) -> Any:
    """One lazy ``datasets.Dataset`` for a stage (``kind`` "sft" adds the ``completion`` column).

    ``mix`` is "concatenate" (every row once) or "interleave" (sample sources by their ``weight``
    until the first is exhausted, as ``datasets.interleave_datasets`` does).
    """
    from datasets import concatenate_datasets, interleave_datasets

    if kind not in ("sft", "grpo"):
        raise ValueError(f"kind must be 'sft' or 'grpo', got {kind!r}")
    if mix not in ("concatenate", "interleave"):
        raise UserError(f"mix must be 'concatenate' or 'interleave', got {mix!r}")
    specs = [DataSource.from_value(s) for s in sources]
    if not specs:
        raise UserError("a training stage needs at least one data source (the stage's `data` list is empty)")
    if kind == "grpo":
        plain = [s.path for s in specs if s.style != "reasoning"]
        if plain:
            raise UserError(
                f"data source(s) {plain}: style 'instruction' is for SFT only; GRPO rewards the "
                "<think>/<answer> format, so its prompts must carry the format instructions "
                "(style 'reasoning')"
            )
    roots = _Roots()
    tables = [_table(spec, i, roots, kind) for i, spec in enumerate(specs)]
    if len(tables) == 1:
        table = tables[0]
    elif mix == "concatenate":
        table = concatenate_datasets(tables)
    else:
        weights = [s.weight if s.weight is not None else 1.0 for s in specs]
        total = sum(weights)
        table = interleave_datasets(tables, probabilities=[w / total for w in weights], seed=seed)
    table = table.remove_columns("row_index").add_column("row_index", list(range(len(table))))
    if len(table) == 0:
        raise UserError(
            "the stage's data sources hold no rows after filtering: "
            + "; ".join(
                f"{s.path} (split {s.split}, task_types {s.task_types}, tasks {s.tasks})" for s in specs
            )
        )
    return table.with_transform(_row_transform(roots.roots, kind, image_budget or ImageBudget()))


def plain_column(dataset: Any, column: str) -> list[Any]:
    """A column read without the lazy transform (no image is decoded); [] when the column is absent."""
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    if column not in (plain.column_names or ()):
        return []
    return list(plain[column])


# ------------------------------------------------------------------------------------------------
# Sources -> the shared table
# ------------------------------------------------------------------------------------------------


def _table(spec: DataSource, position: int, roots: _Roots, kind: str) -> Any:
    if spec.style != "reasoning" and not spec.is_record_set:
        raise UserError(
            f"data source {spec.path}: style {spec.style!r} applies to cxmind record sets; plain instruction "
            "data (messages or prompt/completion) is used as written, so remove `style`"
        )
    table = (
        _record_table(spec, position, roots) if spec.is_record_set else _plain_table(spec, position, roots)
    )
    if spec.task_types:
        wanted = set(spec.task_types)
        table = table.filter(lambda row: row["task_type"] in wanted)
    if spec.tasks:
        tasks = set(spec.tasks)
        table = table.filter(lambda row: row["task"] in tasks)
    if kind == "grpo":
        table = table.filter(lambda row: row["solution"] != "" or row["completion_json"] != "")
    if spec.limit is not None and len(table) > spec.limit:
        table = table.select(range(spec.limit))
    return table


def _record_table(spec: DataSource, position: int, roots: _Roots) -> Any:
    records = load_records(spec.path, spec.split, decode_images=False)
    keys = {
        source: roots.add(f"{position}:{source}", root) for source, root in image_roots(spec.path).items()
    }

    def reduce(row: dict[str, Any]) -> dict[str, Any]:
        if row["source"] not in keys:
            raise UserError(
                f"{spec.path}: record {row['id']} has source {row['source']!r} "
                f"with no image root in {META_FILE}"
            )
        reduced = {
            "id": row["id"],
            "task_type": row["task_type"],
            "task": row["task"],
            "question": row["question"],
            "options": list(row.get("options") or []),
            "solution": row["solution"] or row.get("answer") or "",
            "images": list(row["images"] or []),
            "image_root": keys[row["source"]],
            "prompt_json": "",
            "completion_json": "",
            "row_index": -1,
        }
        if spec.style == "instruction":  # stored like plain data: the transform uses them as written
            prompt, answer = instruction_turns(row)
            reduced["solution"] = answer
            reduced["prompt_json"] = json.dumps(prompt, ensure_ascii=False)
            reduced["completion_json"] = json.dumps(_assistant(answer), ensure_ascii=False)
        return reduced

    return records.map(reduce, remove_columns=records.column_names, features=_features())


def instruction_turns(record: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(prompt messages, plain answer) of a record asked in the ``instruction`` style.

    The prompt is the record's question without the format instructions (one image placeholder per
    image, as :func:`cxmind.data.prompts.prompt_messages`); the answer is the record's ``answer`` in
    plain words, never a ``<think>``/``<answer>`` trajectory:

    * closed, Yes/No options (``disease_binary``, ``image_text_matching``): the question stem without
      its options ("Is there edema on this chest X-ray?") -> the gold option's text ("Yes"/"No");
    * other closed (``disease_single_choice``, ``view_position``, ``progression``): the question with
      its options -> the gold option, letter and text ("B) Edema");
    * open (``disease_open``, ``disease_multi_choice``): the record's own question (it carries no
      format instruction; a scoped or multi-choice one names its candidates) -> the comma-separated
      findings or "No Finding";
    * report and grounding: the question -> the reference text / the ``bbox_2d`` JSON.
    """
    where = f"record {record.get('id')}"
    question, answer = str(record["question"]), str(record.get("answer") or "").strip()
    if not answer:
        raise UserError(f"{where} has no answer to learn in the instruction style")
    if record["task_type"] == "closed":
        options = [str(o) for o in record.get("options") or []]
        texts = option_texts(options) or {}
        if answer not in texts:
            raise UserError(f"{where}: its answer {answer!r} is not one of its options {options}")
        listed = "\n".join(options)
        if sorted(t.strip().lower() for t in texts.values()) == ["no", "yes"]:
            question, answer = question.removesuffix("\n" + listed), texts[answer]
        else:
            if listed not in question:
                question = f"{question}\n{listed}"
            answer = f"{answer}) {texts[answer]}"
    content: list[dict[str, Any]] = [{"type": "image"} for _ in record.get("images") or ()]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}], answer


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _plain_table(spec: DataSource, position: int, roots: _Roots) -> Any:
    from datasets import load_dataset

    path = Path(spec.path)
    if path.is_file():
        suffix = path.suffix.lower()
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if builder is None:
            raise UserError(
                f"data source {spec.path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet"
            )
        data = load_dataset(builder, data_files={spec.split: str(path)}, split=spec.split)
    elif path.is_dir() and not (path / META_FILE).is_file() and not any(path.iterdir()):
        raise UserError(f"data source {spec.path} is an empty folder")
    else:
        data = load_dataset(spec.path, split=spec.split)
    columns = set(data.column_names)
    if not ("messages" in columns or {"prompt", "completion"} <= columns):
        raise UserError(
            f"data source {spec.path}: needs a 'messages' column or 'prompt' and 'completion' columns "
            f"(has {sorted(columns)}), or point it at a cxmind record set folder"
        )
    root_key = roots.add(f"{position}:", Path(spec.image_root).absolute()) if spec.image_root else ""

    def reduce(row: dict[str, Any], index: int) -> dict[str, Any]:
        where = f"{spec.path} row {index}"
        prompt, completion = _split_conversation(row, where)
        images = list(row.get("images") or [])
        if images and not root_key:
            raise UserError(
                f"{where} has images but the data source declares no image_root; add `image_root:`"
            )
        return {
            "id": str(row.get("id") or f"{Path(spec.path).name}:{index}"),
            "task_type": str(row.get("task_type") or "instruction"),
            "task": str(row.get("task") or "instruction"),
            "question": "",
            "options": [],
            "solution": str(row.get("solution") or ""),
            "images": [str(i) for i in images],
            "image_root": root_key,
            "prompt_json": json.dumps(prompt, ensure_ascii=False),
            "completion_json": json.dumps(completion, ensure_ascii=False),
            "row_index": -1,
        }

    return data.map(reduce, with_indices=True, remove_columns=data.column_names, features=_features())


def _split_conversation(
    row: Mapping[str, Any], where: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt messages, completion messages): ``messages`` split before its last assistant turn."""
    if row.get("messages") is not None:
        messages = list(row["messages"])
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or last == 0:
            raise UserError(f"{where}: 'messages' needs a user turn followed by an assistant turn")
        return messages[:last], messages[last : last + 1]
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if not prompt or not completion:
        raise UserError(f"{where}: empty prompt or completion")
    return list(prompt), list(completion)


def _features() -> Any:
    from datasets import Features, Sequence, Value

    return Features(
        {
            "id": Value("string"),
            "task_type": Value("string"),
            "task": Value("string"),
            "question": Value("string"),
            "options": Sequence(Value("string")),
            "solution": Value("string"),
            "images": Sequence(Value("string")),
            "image_root": Value("string"),
            "prompt_json": Value("string"),
            "completion_json": Value("string"),
            "row_index": Value("int64"),
        }
    )


# ------------------------------------------------------------------------------------------------
# The lazy transform
# ------------------------------------------------------------------------------------------------


def _row_transform(
    roots: dict[str, Path], kind: str, budget: ImageBudget
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out: dict[str, list[Any]] = {
            "id": [],
            "task_type": [],
            "task": [],
            "solution": [],
            "options": [],
            "row_index": [],
            "prompt": [],
            "images": [],
        }
        if kind == "sft":
            out["completion"] = []
        for row in rows:
            images = [load_image(roots[row["image_root"]], rel, budget) for rel in row["images"]]
            if row["prompt_json"]:
                prompt = json.loads(row["prompt_json"])
                completion = json.loads(row["completion_json"])
            else:
                prompt = prompt_messages(row)
                completion = _assistant(row["solution"])
            for key in ("id", "task_type", "task", "solution", "options", "row_index"):
                out[key].append(row[key])
            out["prompt"].append(prompt)
            out["images"].append(images)
            if kind == "sft":
                out["completion"].append(completion)
        return out

    return transform
