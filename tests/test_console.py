"""The trainers' console: one compact line per log step, full metrics to the backends, no FutureWarnings."""

import warnings
from types import SimpleNamespace

import pytest
from peft import LoraConfig
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from cxmind.training.console import (
    GRPO_FIELDS,
    SFT_FIELDS,
    CompactPrinterCallback,
    CompactProgressCallback,
    compact_log_line,
    use_compact_console,
)
from cxmind.training.data import load_training_data
from cxmind.training.grpo import CXMindGRPOConfig, CXMindGRPOTrainer
from cxmind.training.sft import CXMindSFTConfig, CXMindSFTTrainer

# A GRPO log as TRL writes it (abridged: the real one has ~60 keys).
GRPO_LOG = {
    "loss": 0.0123,
    "grad_norm": 0.5,
    "learning_rate": 1e-6,
    "num_tokens": 7631.0,
    "completions/mean_length": 236.2,
    "curl_vpr/gate/stable": 0.5,
    "curl_vpr/gate/ema": 0.61,
    "rewards/format_reward/mean": 1.0,
    "rewards/outcome_reward/mean": 0.75,
    "rewards/outcome_reward/std": 0.43,
    "reward": 0.8312,
    "reward_std": 0.2,
    "step_time": 1.78,
    "epoch": 0.02,
}


def test_a_grpo_log_becomes_one_line_of_the_chosen_values():
    line = compact_log_line("grpo_closed", GRPO_LOG, 12, 64, GRPO_FIELDS, 3.14)
    assert line == (
        "grpo_closed step 12/64  reward 0.831  outcome 0.750  gate 0.50  loss 0.0123  lr 1.0e-06  3.1 s/step"
    )
    assert "\n" not in line and "{" not in line


def test_eval_summary_missing_and_unknown_values():
    evaluation = {f"eval_{key}": value for key, value in GRPO_LOG.items()} | {"eval_runtime": 4.25}
    assert compact_log_line("g", evaluation, 8, 64, GRPO_FIELDS, None) == (
        "g eval step 8/64  reward 0.831  outcome 0.750  gate 0.50  loss 0.0123  lr 1.0e-06  4.2 s"
    )
    summary = {"train_runtime": 37.6, "train_samples_per_second": 3.1, "train_loss": 1.5, "epoch": 1.0}
    assert (
        compact_log_line("sft", summary, 64, 64, SFT_FIELDS) == "sft done step 64/64  train_loss 1.5  37.6 s"
    )
    sparse = {"loss": 2.0, "learning_rate": 2e-5, "reward": None, "mean_token_accuracy": float("nan")}
    assert compact_log_line("x", sparse, 1, 0, GRPO_FIELDS) == "x step 1  loss 2  lr 2.0e-05"
    other = {"custom/a": 1.5, "note": "text", "custom/b": 2}
    assert compact_log_line("x", other, 3, 9, SFT_FIELDS) == "x step 3/9  custom/a 1.5  custom/b 2"


def test_only_the_dict_printing_callbacks_are_replaced():
    class MyProgress(ProgressCallback):
        pass

    for printer, compact in (
        (ProgressCallback(), CompactProgressCallback),
        (PrinterCallback(), CompactPrinterCallback),
    ):
        other = TrainerCallback()
        trainer = SimpleNamespace(
            args=SimpleNamespace(output_dir="/runs/exp/grpo_open/"),
            callback_handler=SimpleNamespace(callbacks=[other, printer]),
        )
        use_compact_console(trainer, GRPO_FIELDS)
        first, replaced = trainer.callback_handler.callbacks
        assert first is other and type(replaced) is compact and replaced.label == "grpo_open"
    for kept in (MyProgress(), TrainerCallback()):  # e.g. a notebook's table: not ours to replace
        trainer = SimpleNamespace(
            args=SimpleNamespace(output_dir="out"), callback_handler=SimpleNamespace(callbacks=[kept])
        )
        use_compact_console(trainer, SFT_FIELDS)
        assert trainer.callback_handler.callbacks == [kept]


def checkpointing_warnings(caught):
    return [str(w.message) for w in caught if "checkpointing" in str(w.message)]


@pytest.mark.parametrize("config_class", [CXMindSFTConfig, CXMindGRPOConfig])
def test_configs_default_to_activation_checkpointing_without_a_warning(config_class, tmp_path):
    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    if config_class is CXMindGRPOConfig:
        common.update(per_device_train_batch_size=4, num_generations=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = config_class(**common)
        off = config_class(**common, activation_checkpointing=False)
    assert checkpointing_warnings(caught) == []
    assert default.activation_checkpointing is default.gradient_checkpointing is True  # TRL's default
    assert off.activation_checkpointing is off.gradient_checkpointing is False
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated"):
        old = config_class(**common, gradient_checkpointing=False)  # the old name still works, and warns
    assert old.activation_checkpointing is False


# ----------------------------------------------------------------------------- real runs


class Recorder(TrainerCallback):
    """A ``report_to`` backend's view: every log, as it reaches callbacks after the console's."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def check_console(out: str, trainer, recorder: Recorder, label: str, names: list[str]) -> None:
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert not any("{" in line or "}" in line for line in lines), out  # no dict dumps
    steps = [line for line in lines if line.startswith(f"{label} step ")]
    max_steps = trainer.state.max_steps
    assert [line.split()[2] for line in steps] == [f"{n}/{max_steps}" for n in range(1, max_steps + 1)]
    for line in steps:
        assert all(f"  {name} " in line for name in names) and line.endswith(" s/step"), line
    assert [line for line in lines if line.startswith(f"{label} done step ")] == [
        lines[-1]
    ] and "train_loss" in lines[-1]
    # every key of every log still reaches the callbacks after the console and the log history
    assert len(recorder.logs) == len(trainer.state.log_history) == max_steps + 1
    for seen, kept in zip(recorder.logs, trainer.state.log_history, strict=True):
        assert {**seen, "step": kept["step"]} == kept
    assert "total_flos" in recorder.logs[-1]  # transformers' PrinterCallback pops it from the shared dict


@pytest.mark.slow
def test_lora_sft_prints_one_line_per_log_step(phantom_records, tiny_qwen25_vl_path, tmp_path, capsys):
    data = load_training_data([{"path": str(phantom_records), "task_types": ["closed"]}], kind="sft")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = CXMindSFTConfig(
            output_dir=str(tmp_path / "sft"),
            per_device_train_batch_size=4,
            max_steps=2,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            max_length=2048,
            disable_tqdm=True,
        )
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])  # PEFT wraps the model
        trainer = CXMindSFTTrainer(
            model=str(tiny_qwen25_vl_path), args=args, train_dataset=data, peft_config=lora
        )
        recorder = Recorder()
        trainer.add_callback(recorder)
        capsys.readouterr()
        trainer.train()
    assert checkpointing_warnings(caught) == []  # neither the config nor PEFT's wrapping warns
    check_console(capsys.readouterr().out, trainer, recorder, "sft", ["loss", "token_accuracy", "lr"])
    assert {"loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens"} <= set(recorder.logs[0])


@pytest.mark.slow
def test_grpo_prints_one_line_per_log_step_under_the_progress_bar(
    phantom_records, tiny_qwen25_vl_path, tmp_path, capsys
):
    data = load_training_data([{"path": str(phantom_records), "task_types": ["closed"]}], kind="grpo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = CXMindGRPOConfig(
            output_dir=str(tmp_path / "grpo_closed"),
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=16,
            max_steps=2,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            disable_tqdm=False,
        )
        trainer = CXMindGRPOTrainer(model=str(tiny_qwen25_vl_path), args=args, train_dataset=data)
        assert type(trainer.callback_handler.callbacks[-1]) is CompactProgressCallback
        recorder = Recorder()
        trainer.add_callback(recorder)
        capsys.readouterr()
        trainer.train()
    # neither the config nor TRL's generation (deprecated checkpointing aliases) warns
    assert checkpointing_warnings(caught) == []
    names = ["reward", "outcome", "gate", "loss", "lr"]
    check_console(capsys.readouterr().out, trainer, recorder, "grpo_closed", names)
    full = set(recorder.logs[0])
    assert len(full) > 30
    assert {"rewards/outcome_reward/mean", "curl_vpr/gate/stable", "curl_vpr/gate/ema", "reward"} <= full
