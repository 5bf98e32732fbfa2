"""Instruction-style SFT data (``style: instruction``): bare questions, plain answers, images kept."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from cxmind.data.prompts import prompt_messages
from cxmind.data.records import load_records
from cxmind.errors import UserError
from cxmind.format import instructions
from cxmind.training.data import STYLES, DataSource, instruction_turns, load_training_data, plain_column
from cxmind.training.pipeline import DONE_FILE, run_pipeline
from cxmind.training.recipe import Recipe, RecipeError

DISEASE_TASKS = ["disease_binary", "disease_single_choice", "disease_open", "disease_multi_choice"]
FORMAT_MARKS = ("<think>", "</think>", "<answer>", "</answer>", "✅", "❌")


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text") or "" for m in messages for part in m["content"] if isinstance(part, dict)
    )


def _expected(record: dict[str, Any]) -> tuple[str, str]:
    """(question text, answer) the instruction style must produce, written out per task."""
    task, question, answer, options = record["task"], record["question"], record["answer"], record["options"]
    if task in ("disease_binary", "image_text_matching"):
        assert options == ["A) Yes", "B) No"]
        return question.removesuffix("\nA) Yes\nB) No"), {"A": "Yes", "B": "No"}[answer]
    if record["task_type"] == "closed":  # single choice, view position, progression: the labelled option
        (gold,) = [o for o in options if o.startswith(f"{answer}) ")]
        return question, gold
    return question, answer  # open: the finding list; report: the text; grounding: the JSON


@pytest.fixture(scope="module")
def records(phantom_records: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in load_records(phantom_records, "train", decode_images=False)}


def test_each_task_is_a_bare_question_with_its_plain_answer(phantom_records, records) -> None:
    data = load_training_data([{"path": str(phantom_records), "style": "instruction"}], kind="sft")
    rows = [data[i] for i in range(len(data))]
    assert len(rows) == len(records)
    seen: dict[str, int] = {}
    for row in rows:
        record = records[row["id"]]
        question, answer = _expected(record)
        (user,) = row["prompt"]
        assert user["role"] == "user"
        assert [p["type"] for p in user["content"]] == ["image"] * len(record["images"]) + ["text"]
        assert user["content"][-1]["text"] == question
        assert len(row["images"]) == len(record["images"])
        assert row["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        assert row["solution"] == answer
        prompt_text = _text(row["prompt"])
        if record["task_type"] in ("closed", "open"):
            assert instructions(record["task_type"], record["options"]) not in prompt_text
            assert instructions(record["task_type"], record["options"]) in _text(prompt_messages(record))
        assert not any(mark in prompt_text + answer for mark in FORMAT_MARKS), row["id"]
        seen[record["task"]] = seen.get(record["task"], 0) + 1
    assert set(DISEASE_TASKS) <= set(seen), seen  # the phantom set holds every disease task
    answers = {r["solution"] for r in rows if r["task"] == "disease_binary"}
    assert answers == {"Yes", "No"}


@pytest.mark.parametrize(
    ("task", "question", "answer"),
    [
        ("disease_binary", "Is there edema on this chest X-ray?", "No"),
        (
            "disease_single_choice",
            "Which finding is present on this chest X-ray?\nA) Mass\nB) Edema",
            "B) Edema",
        ),
        ("disease_open", "What findings are present on this chest X-ray?", "Cardiomegaly, Pleural Effusion"),
    ],
)
def test_instruction_turns_examples(task: str, question: str, answer: str) -> None:
    binary = task == "disease_binary"
    record = {
        "id": "x",
        "task": task,
        "task_type": "open" if task == "disease_open" else "closed",
        "images": ["a.png"],
        "question": question + ("\nA) Yes\nB) No" if binary else ""),
        "options": ["A) Yes", "B) No"]
        if binary
        else ["A) Mass", "B) Edema"]
        if task != "disease_open"
        else None,
        "answer": "B" if task != "disease_open" else answer,
    }
    prompt, got = instruction_turns(record)
    assert got == answer
    assert prompt == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def test_instruction_turns_refuses_unanswerable_records() -> None:
    record = {
        "id": "r/1",
        "task_type": "closed",
        "question": "Q?",
        "options": ["A) Yes", "B) No"],
        "answer": "C",
    }
    with pytest.raises(UserError, match=r"r/1: its answer 'C' is not one of its options"):
        instruction_turns(record)
    with pytest.raises(UserError, match="no answer"):
        instruction_turns({**record, "answer": ""})


def test_reasoning_is_the_default_and_unchanged(phantom_records, records) -> None:
    assert STYLES[0] == "reasoning" and DataSource(path="x").style == "reasoning"
    source = {"path": str(phantom_records), "tasks": DISEASE_TASKS}
    default = load_training_data([source], kind="sft")
    explicit = load_training_data([{**source, "style": "reasoning"}], kind="sft")
    assert len(default) == len(explicit) > 0
    for i in range(0, len(default), 7):
        row, same = default[i], explicit[i]
        record = records[row["id"]]
        assert row["prompt"] == same["prompt"] == prompt_messages(record)
        assert row["completion"][0]["content"][0]["text"] == record["solution"] == same["solution"]


def test_style_is_validated(phantom_records, tmp_path) -> None:
    with pytest.raises(
        UserError, match=r"style must be one of \['reasoning', 'instruction'\], got 'instructions'"
    ):
        DataSource.from_value({"path": "data", "style": "instructions"})
    source = {"path": str(phantom_records), "style": "instruction"}
    with pytest.raises(UserError, match="style 'instruction' is for SFT only"):
        load_training_data([source], kind="grpo")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "Hi?", "completion": "Hello."}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="applies to cxmind record sets"):
        load_training_data([{"path": str(plain), "style": "instruction"}], kind="sft")
    # the selection of an instruction source filters as any other
    only = load_training_data([{**source, "tasks": ["disease_binary"], "limit": 3}], kind="sft")
    assert plain_column(only, "task") == ["disease_binary"] * 3


def _recipe(model: Path, records: Path, out: Path, style: Any, stage_type: str = "sft") -> dict[str, Any]:
    args: dict[str, Any] = {
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "max_steps": 1,
        "save_strategy": "no",
    }
    if stage_type == "grpo":
        args.update(num_generations=4, max_completion_length=8)
    data = {"path": str(records), "tasks": DISEASE_TASKS, "style": style}
    return {
        "model": str(model),
        "output_dir": str(out),
        "seed": 0,
        "max_pixels": 224 * 224,
        "stages": [{"name": "instruct", "type": stage_type, "data": [data], "args": args}],
    }


def test_recipe_passes_style_and_refuses_bad_values(tiny_qwen25_vl_path, phantom_records, tmp_path) -> None:
    recipe = Recipe.from_dict(_recipe(tiny_qwen25_vl_path, phantom_records, tmp_path, "instruction"))
    assert recipe.stages[0].data[0].style == "instruction"
    with pytest.raises(RecipeError, match=r"stage 'instruct' data: .*style must be one of .*got 'plain'"):
        Recipe.from_dict(_recipe(tiny_qwen25_vl_path, phantom_records, tmp_path, "plain"))
    with pytest.raises(RecipeError, match=r"stage 'instruct' data: .*style must be one of .*got 1"):
        Recipe.from_dict(_recipe(tiny_qwen25_vl_path, phantom_records, tmp_path, 1))
    with pytest.raises(RecipeError, match=r"stage 'instruct': `style: instruction` .* SFT stages only"):
        Recipe.from_dict(_recipe(tiny_qwen25_vl_path, phantom_records, tmp_path, "instruction", "grpo"))


class _Seen(TrainerCallback):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = train_dataloader.dataset
        self.rows = [dataset[i] for i in range(4)]


@pytest.mark.slow
def test_one_instruction_sft_step_through_the_pipeline(
    tiny_qwen25_vl_path, phantom_records, tmp_path
) -> None:
    out = tmp_path / "run"
    recipe = Recipe.from_dict(_recipe(tiny_qwen25_vl_path, phantom_records, out, "instruction"))
    seen = _Seen()
    (result,) = run_pipeline(recipe, callbacks=[seen])
    assert not result.skipped and (out / "instruct" / "model.safetensors").is_file()
    done = json.loads((out / "instruct" / DONE_FILE).read_text(encoding="utf-8"))
    assert done["fingerprint"]["data"][0]["style"] == "instruction"
    assert math.isfinite(result.metrics["train_loss"]) and result.metrics["train_loss"] > 0
    # the trainer was fed the instruction rows: plain answers, no format
    assert seen.rows and all(not any(m in _text(r["completion"]) for m in FORMAT_MARKS) for r in seen.rows)
