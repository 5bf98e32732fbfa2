"""The private TRL/transformers hooks cxmind overrides still exist with the signatures it relies on.

cxmind pins trl to one minor release (pyproject); when that pin moves, these fail first and say
which override to revisit instead of letting a renamed hook silently stop being called.
"""

import dataclasses
import inspect

import pytest
from transformers import Trainer
from trl import GRPOTrainer, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from cxmind.training.checkpoint import ConvertedCheckpointMixin
from cxmind.training.grpo import CXMindGRPOTrainer
from cxmind.training.sft import CXMindSFTTrainer, CXMindVisionCollator

HOOKS = [
    (GRPOTrainer, "_calculate_rewards", ["self", "inputs", "prompts", "completions", "completion_ids_list"]),
    (GRPOTrainer, "_get_train_sampler", ["self", "dataset"]),
    (GRPOTrainer, "_save_checkpoint", ["self", "model", "trial"]),
    (Trainer, "_get_output_dir", ["self", "trial"]),
    (Trainer, "_push_from_checkpoint", ["self", "checkpoint_folder"]),
    (GRPOTrainer, "evaluate", ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"]),
    (GRPOTrainer, "set_initial_training_values", ["self", "args", "dataloader"]),
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
    for name in ("_calculate_rewards", "_get_train_sampler", "evaluate", "set_initial_training_values"):
        assert getattr(CXMindGRPOTrainer, name) is not getattr(GRPOTrainer, name), name
    for trainer in (CXMindGRPOTrainer, CXMindSFTTrainer):
        assert trainer._load_from_checkpoint is ConvertedCheckpointMixin._load_from_checkpoint
    assert issubclass(CXMindSFTTrainer, SFTTrainer)


def test_checkpoint_pushes_happen_inside_save_checkpoint():
    """cxmind_state.json is written before calling the parent's _save_checkpoint, so before its push and
    its trainer_state.json; that holds while transformers pushes from inside that call."""
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "self._push_from_checkpoint(" in source and "TRAINER_STATE_NAME" in source


def test_initial_training_values_end_with_max_steps():
    """set_initial_training_values' 7-tuple is unpacked by position (steps per epoch 2nd, max_steps last)."""
    returned = inspect.getsource(Trainer.set_initial_training_values).rsplit("return (", 1)[1].split(")")[0]
    names = [name.strip() for name in returned.split(",") if name.strip()]
    assert len(names) == 7 and names[1] == "num_update_steps_per_epoch" and names[-1] == "max_steps"


def test_the_quieted_warnings_still_come_from_trl_and_peft_and_only_them():
    """cxmind.training.console ignores three transformers FutureWarnings because TRL's GRPO generation
    and PEFT call the deprecated checkpointing aliases. When both call the new names, remove
    quiet_dependency_aliases (and this test)."""
    import re

    from peft import PeftModel
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments
    from transformers.modeling_utils import PreTrainedModel
    from trl.models.utils import disable_gradient_checkpointing

    from cxmind.training.console import DEPENDENCY_ALIAS_WARNING

    callers = inspect.getsource(disable_gradient_checkpointing) + inspect.getsource(PeftModel.__init__)
    assert "is_gradient_checkpointing" in callers, "TRL and PEFT use the new names: remove the filter"
    assert "disable_gradient_checkpointing(self.model" in inspect.getsource(GRPOTrainer)
    for alias in (
        "is_gradient_checkpointing",
        "gradient_checkpointing_enable",
        "gradient_checkpointing_disable",
    ):
        assert re.match(DEPENDENCY_ALIAS_WARNING, f"`{alias}` is deprecated and will be removed in v6.")
        assert alias in inspect.getsource(PreTrainedModel)
    config_warning = "`gradient_checkpointing` is deprecated and will be removed in v6."
    assert not re.match(DEPENDENCY_ALIAS_WARNING, config_warning)  # a user's old config name still warns
    # the console replaces these two by exact type; they still print the logs dict from on_log
    for printer in (ProgressCallback, PrinterCallback):
        assert "on_log" in printer.__dict__
    assert "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}


def test_collator_fields_are_all_carried_over():
    """CXMindVisionCollator takes every init field of TRL's collator (max_length forced to None)."""
    trl_fields = {f.name for f in dataclasses.fields(DataCollatorForVisionLanguageModeling) if f.init}
    ours = {f.name for f in dataclasses.fields(CXMindVisionCollator) if f.init}
    assert {"processor", "max_length"} <= trl_fields and trl_fields | {"length_limit"} == ours


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
