"""SFT on cxmind records: lazy images, completion-only labels, no truncation through images, training."""

import dataclasses
import json

import pytest
import torch
from trl.trainer import sft_trainer

from cxmind.data.images import PathEscapeError
from cxmind.training import data as training_data
from cxmind.training.data import DataSource, load_training_data, plain_column
from cxmind.training.sft import CXMindSFTConfig, CXMindSFTTrainer, CXMindVisionCollator, SequenceTooLongError

pytestmark = pytest.mark.slow


def sft_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        max_length=2048,
        seed=0,
    )
    values.update(overrides)
    return CXMindSFTConfig(**values)


def test_rows_are_built_lazily_and_filtered(phantom_records, monkeypatch):
    calls = []
    real = training_data.load_image
    monkeypatch.setattr(training_data, "load_image", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    ds = load_training_data([{"path": str(phantom_records), "task_types": ["closed"]}], kind="sft")
    assert calls == []  # building the dataset decodes nothing
    assert set(plain_column(ds, "task_type")) == {"closed"}
    assert plain_column(ds, "row_index") == list(range(len(ds)))
    row = ds[3]
    assert len(calls) == len(row["images"]) >= 1
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0] == {"type": "image"}
    assert row["completion"][0]["content"][0]["text"] == row["solution"]
    width, height = row["images"][0].size
    assert width % 28 == 0 and height % 28 == 0 and width * height <= 224 * 224


def test_labels_learn_only_the_trajectory_and_its_end_of_turn(phantom_records, tiny_qwen25_vl_path, tmp_path):
    ds = load_training_data([{"path": str(phantom_records), "task_types": ["closed", "open"]}], kind="sft")
    trainer = CXMindSFTTrainer(model=str(tiny_qwen25_vl_path), args=sft_args(tmp_path), train_dataset=ds)
    tokenizer = trainer.processing_class.tokenizer
    rows = [ds[0], ds[1]]
    batch = trainer.data_collator([dict(r) for r in rows])
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, row in enumerate(rows):
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        learned = ids[labels != -100]
        assert (labels[ids == image_pad] == -100).all()
        assert image_pad in ids.tolist()
        text = tokenizer.decode(learned)
        assert text.startswith(row["solution"][:40])
        assert text.rstrip("\n").endswith("<|im_end|>")
        assert im_end in learned.tolist()
        # the prompt (user turn, question text) is never learned
        assert "<|im_start|>user" not in text and row["prompt"][0]["content"][-1]["text"][:30] not in text
        assert (labels[batch["attention_mask"][i] == 0] == -100).all()


def test_an_over_long_sample_raises_naming_the_record(phantom_records, tiny_qwen25_vl_path, tmp_path):
    ds = load_training_data([str(phantom_records)], kind="sft")
    trainer = CXMindSFTTrainer(
        model=str(tiny_qwen25_vl_path), args=sft_args(tmp_path, max_length=64), train_dataset=ds
    )
    row = ds[0]
    with pytest.raises(SequenceTooLongError, match=row["id"]) as err:
        trainer.data_collator([dict(row)])
    assert "cxmind data validate" in str(err.value)


def test_sft_trains_saves_and_reloads(phantom_records, tiny_qwen25_vl_path, tmp_path):
    from transformers import AutoModelForImageTextToText

    ds = load_training_data([{"path": str(phantom_records), "task_types": ["closed", "open"]}], kind="sft")
    args = sft_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = CXMindSFTTrainer(model=str(tiny_qwen25_vl_path), args=args, train_dataset=ds)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    assert any("visual" in k for k in changed) and any("language_model" in k for k in changed)
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "final")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name
    assert (tmp_path / "out" / "checkpoint-2" / "model.safetensors").is_file()


def test_text_only_instruction_data_mixes_with_records(phantom_records, tiny_qwen25_vl_path, tmp_path):
    path = tmp_path / "medical.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What does finding {i} on a chest X-ray suggest?"},
                {"role": "assistant", "content": f"Finding {i} suggests a consolidation."},
            ]
        }
        for i in range(8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    ds = load_training_data(
        [
            {"path": str(path), "weight": 1.0},
            {"path": str(phantom_records), "task_types": ["closed"], "weight": 1.0},
        ],
        kind="sft",
        mix="interleave",
        seed=0,
    )
    kinds = plain_column(ds, "task_type")
    assert {"instruction", "closed"} <= set(kinds)
    text_row = ds[kinds.index("instruction")]
    assert text_row["images"] == [] and text_row["completion"][0]["role"] == "assistant"
    args = sft_args(tmp_path, max_steps=2)
    trainer = CXMindSFTTrainer(model=str(tiny_qwen25_vl_path), args=args, train_dataset=ds)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


def test_bad_sources_fail_with_the_fix(tmp_path, phantom_records):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'messages' column or 'prompt' and 'completion'"):
        load_training_data([str(bad)], kind="sft")
    with_images = tmp_path / "img.jsonl"
    with_images.write_text(json.dumps({"prompt": "q", "completion": "a", "images": ["x.png"]}) + "\n")
    with pytest.raises(ValueError, match="image_root"):
        load_training_data([str(with_images)], kind="sft")
    escaping = tmp_path / "esc.jsonl"
    escaping.write_text(json.dumps({"prompt": "q", "completion": "a", "images": ["../../etc/passwd"]}) + "\n")
    ds = load_training_data([{"path": str(escaping), "image_root": str(tmp_path)}], kind="sft")
    with pytest.raises(PathEscapeError):
        ds[0]
    with pytest.raises(ValueError, match="unknown key"):
        DataSource.from_value({"path": str(phantom_records), "task_type": ["closed"]})
    with pytest.raises(ValueError, match="no rows"):
        load_training_data([{"path": str(phantom_records), "tasks": ["no_such_task"]}], kind="sft")


def test_a_two_image_record_collates_both_images(phantom_records, tiny_qwen25_vl_path, tmp_path):
    ds = load_training_data([{"path": str(phantom_records), "tasks": ["progression"]}], kind="sft")
    row = ds[0]
    assert len(row["images"]) == 2
    trainer = CXMindSFTTrainer(model=str(tiny_qwen25_vl_path), args=sft_args(tmp_path), train_dataset=ds)
    batch = trainer.data_collator([dict(row)])
    assert batch["image_grid_thw"].shape[0] == 2
    image_pad = trainer.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = 4  # 2x2 patches per token
    assert (
        int((batch["input_ids"] == image_pad).sum())
        == int(batch["image_grid_thw"].prod(dim=1).sum()) // merge
    )
    assert (batch["labels"][batch["input_ids"] == image_pad] == -100).all()


def test_every_field_of_trls_collator_survives(phantom_records, tiny_qwen25_vl_path, tmp_path, monkeypatch):
    """The replacement collator keeps all of TRL's settings (only truncation moves to length_limit)."""
    built = []

    @dataclasses.dataclass
    class Marked(sft_trainer.DataCollatorForVisionLanguageModeling):
        return_tensors: str = "np"  # a value SFTTrainer never passes, so only copying all fields keeps it

        def __post_init__(self):
            built.append(self)

    monkeypatch.setattr(sft_trainer, "DataCollatorForVisionLanguageModeling", Marked)
    ds = load_training_data([{"path": str(phantom_records), "task_types": ["closed"]}], kind="sft")
    args = sft_args(tmp_path, pad_to_multiple_of=8, max_length=1024)
    trainer = CXMindSFTTrainer(model=str(tiny_qwen25_vl_path), args=args, train_dataset=ds)
    [trl_collator] = built
    ours = trainer.data_collator
    assert isinstance(ours, CXMindVisionCollator) and ours.length_limit == 1024 and ours.max_length is None
    names = [f.name for f in dataclasses.fields(trl_collator)]
    assert "return_tensors" in names and ours.return_tensors == "np"
    for name in names:
        if name != "max_length":
            assert getattr(ours, name) == getattr(trl_collator, name), name
