"""The private TRL/transformers hooks cxmind overrides still exist with the signatures it relies on.

cxmind pins trl to one minor release (pyproject); when that pin moves, these fail first and say
which override to revisit instead of letting a renamed hook silently stop being called.
"""

import inspect

import pytest
from transformers import Trainer
from trl import GRPOTrainer, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from cxmind.training.checkpoint import ConvertedCheckpointMixin
from cxmind.training.grpo import CXMindGRPOTrainer
from cxmind.training.sft import CXMindSFTTrainer

HOOKS = [
    (GRPOTrainer, "_calculate_rewards", ["self", "inputs", "prompts", "completions", "completion_ids_list"]),
    (GRPOTrainer, "_get_train_sampler", ["self", "dataset"]),
    (GRPOTrainer, "_save_checkpoint", ["self", "model", "trial"]),
    (GRPOTrainer, "_load_optimizer_and_scheduler", ["self", "checkpoint"]),
    (Trainer, "_load_from_checkpoint", ["self", "resume_from_checkpoint", "model"]),
    (DataCollatorForVisionLanguageModeling, "torch_call", ["self", "examples"]),
]


@pytest.mark.parametrize(
    ("owner", "name", "parameters"), HOOKS, ids=[f"{o.__name__}.{n}" for o, n, _ in HOOKS]
)
def test_overridden_hook_keeps_its_signature(owner, name, parameters):
    hook = getattr(owner, name, None)
    assert hook is not None, f"{owner.__name__}.{name} is gone: revisit cxmind's override of it"
    assert list(inspect.signature(hook).parameters) == parameters


def test_our_overrides_are_the_ones_called():
    assert CXMindGRPOTrainer._calculate_rewards is not GRPOTrainer._calculate_rewards
    assert CXMindGRPOTrainer._get_train_sampler is not GRPOTrainer._get_train_sampler
    for trainer in (CXMindGRPOTrainer, CXMindSFTTrainer):
        assert trainer._load_from_checkpoint is ConvertedCheckpointMixin._load_from_checkpoint
    assert issubclass(CXMindSFTTrainer, SFTTrainer)


def test_collator_fields_cxmind_copies_exist():
    fields = set(DataCollatorForVisionLanguageModeling.__dataclass_fields__)
    assert {
        "processor",
        "max_length",
        "completion_only_loss",
        "pad_to_multiple_of",
        "dataset_text_field",
        "assistant_only_loss",
        "chat_template",
    } <= fields


def test_zero3_loaded_models_save_standard_names(tiny_qwen25_vl_path, tmp_path, monkeypatch):
    """ZeRO-3 loads keep every conversion rule; saving then wrote model.model.layers.* (vLLM fails)."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText
    from transformers.conversion_mapping import get_model_conversion_mapping

    from cxmind.training import checkpoint

    def saved_keys(model, name):
        model.save_pretrained(tmp_path / name)
        with safe_open(tmp_path / name / "model.safetensors", "pt") as handle:
            return sorted(handle.keys())

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_vl_path)
    standard = saved_keys(model, "plain")
    assert any(k.startswith("model.layers.") for k in standard)
    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=True)  # what ZeRO-3 leaves
    assert any(k.startswith("model.model.") for k in saved_keys(model, "zero3"))
    checkpoint.standard_save_names(model)  # not under ZeRO-3: untouched
    assert model._weight_conversions
    monkeypatch.setattr(checkpoint, "is_deepspeed_zero3_enabled", lambda: True)
    checkpoint.standard_save_names(model)
    assert saved_keys(model, "fixed") == standard
