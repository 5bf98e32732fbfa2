"""Preflight: each check fires on a crafted recipe, names the key and the fix; the batch errors are TRL's
own at the launch's world size; the shipped recipes pass at their documented launches; the summary
reports the geometry TRL resolves."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from test_recipes import SEVEN_B_LAUNCHES

from cxmind.training import preflight
from cxmind.training.grpo import CXMindGRPOConfig
from cxmind.training.preflight import (
    Finding,
    GRPOGeometry,
    LaunchSettings,
    assume_training_gpu,
    check_recipe,
    describe_recipe,
    format_findings,
    image_tokens,
    model_spec,
    raise_for_errors,
    stage_config_at,
    training_state_gib,
)
from cxmind.training.recipe import Recipe, RecipeError, load_recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
ACCELERATE_DIR = RECIPES_DIR / "accelerate"
MODEL_7B = "Qwen/Qwen2.5-VL-7B-Instruct"

GRPO_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "generation_batch_size": 64,
    "num_generations": 8,
    "learning_rate": 1.0e-6,
    "max_completion_length": 1024,
    "bf16": True,
    "activation_checkpointing": True,
    "save_steps": 64,  # whole rollouts at every tested launch (TRL's default 500 is not at 1 process)
}


@pytest.fixture(autouse=True)
def _bf16_gpu() -> Iterator[None]:
    with assume_training_gpu():
        yield


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run where the recipes' data/cxset record set exists, with the Hub reachable (no download happens)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "cxset").mkdir(parents=True)
    (tmp_path / "data" / "cxset" / "cxmind_data.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(preflight, "_hub_offline", lambda: False)
    return tmp_path


def make_recipe(
    grpo: dict[str, Any] | None = None,
    *,
    sft: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **top: Any,
) -> Recipe:
    """A one- or two-stage recipe: GRPO ``args`` = GRPO_ARGS updated by ``grpo`` minus ``drop``."""
    args = {k: v for k, v in {**GRPO_ARGS, **(grpo or {})}.items() if k not in drop}
    stages: list[dict[str, Any]] = []
    if sft is not None:
        stages.append({"name": "sft", "type": "sft", "data": "data/cxset", "args": sft})
    stages.append({"name": "g", "type": "grpo", "data": "data/cxset", "args": args})
    raw = {"model": MODEL_7B, "output_dir": "runs/x", "stages": stages, **top}
    return Recipe.from_dict(copy.deepcopy(raw))


def only(findings: list[Finding], key: str, level: str | None = None) -> Finding:
    matching = [f for f in findings if f.key == key and (level is None or f.level == level)]
    assert len(matching) == 1, format_findings(findings)
    return matching[0]


def keys(findings: list[Finding], level: str | None = None) -> set[str]:
    return {f.key for f in findings if level is None or f.level == level}


def test_a_sound_recipe_has_no_findings() -> None:
    assert check_recipe(make_recipe(), num_processes=4) == []


# -- batch geometry --------------------------------------------------------------------------------


def test_generation_batch_must_split_over_the_processes() -> None:
    """Valid in one process (what parsing on a login node sees), broken at 3: TRL's error at 3 processes."""
    recipe = make_recipe()
    assert check_recipe(recipe, num_processes=1) == []
    finding = only(check_recipe(recipe, num_processes=3), "stages.g.generation_batch_size")
    assert finding.level == "error"
    assert "generation_batch_size (64) must be divisible by the global batch size (6)" in finding.message
    assert "(at 3 processes)" in finding.message
    assert "set generation_batch_size to 72" in finding.message  # 66 would still break num_generations 8


def test_generation_batch_must_hold_whole_groups() -> None:
    # steps_per_generation defaults to gradient_accumulation_steps: 2 × 3 × 1 = 6 completions, groups of 4
    recipe = make_recipe(
        {"gradient_accumulation_steps": 1, "num_generations": 4}, drop=("generation_batch_size",)
    )
    finding = only(check_recipe(recipe, num_processes=3), "stages.g.steps_per_generation")
    assert finding.level == "error"
    assert "generation_batch_size (6) must be divisible by num_generations (4)" in finding.message
    assert "set steps_per_generation to 2" in finding.message  # 2 × 3 × 2 = 12
    fixed = make_recipe({"steps_per_generation": 2, "num_generations": 4}, drop=("generation_batch_size",))
    assert check_recipe(fixed, num_processes=3) == []


def test_generation_batch_size_not_a_multiple_of_num_generations() -> None:
    recipe = make_recipe(
        {"generation_batch_size": 60, "num_generations": 8, "per_device_train_batch_size": 1}
    )
    findings = check_recipe(recipe, num_processes=2)
    finding = only(findings, "stages.g.generation_batch_size")
    assert "divisible by num_generations (8)" in finding.message
    assert "set generation_batch_size to 64" in finding.message
    assert "stages.g" not in keys(findings)  # one finding, on the key


def test_too_few_generations() -> None:
    findings = check_recipe(make_recipe({"num_generations": 1}), num_processes=1)
    finding = only(findings, "stages.g.num_generations")
    assert finding.level == "error" and "at least 2 generations" in finding.message
    assert keys(findings) == {"stages.g.num_generations"}


def test_generation_batch_size_and_steps_per_generation_exclusive() -> None:
    findings = check_recipe(make_recipe({"steps_per_generation": 4}), num_processes=1)
    assert "remove one" in only(findings, "stages.g.steps_per_generation").message


def test_eval_batch_must_hold_whole_groups() -> None:
    recipe = make_recipe({"eval_strategy": "steps", "eval_steps": 10, "per_device_eval_batch_size": 3})
    findings = check_recipe(recipe, num_processes=2)
    finding = only(findings, "stages.g.per_device_eval_batch_size")
    assert finding.level == "error" and "global eval batch size (3 * 2)" in finding.message
    assert "set per_device_eval_batch_size to 4" in finding.message


def test_rollout_not_aligned_with_optimizer_steps_warns() -> None:
    # 64 / (2 × 4) = 8 micro-batches per rollout, optimizer steps of 3
    recipe = make_recipe({"gradient_accumulation_steps": 3, "save_strategy": "epoch"})
    finding = only(check_recipe(recipe, num_processes=4), "stages.g.gradient_accumulation_steps")
    assert finding.level == "warning" and "divide steps_per_generation" in finding.message
    # saving by steps (TrainingArguments' default) cannot stay on rollout boundaries at all
    finding = only(
        check_recipe(make_recipe({"gradient_accumulation_steps": 3}), num_processes=4), "stages.g.save_steps"
    )
    assert finding.level == "error" and "gradient_accumulation_steps (3) to divide" in finding.message


def test_checkpoints_must_fall_between_rollouts_at_the_launch() -> None:
    """save_steps 12: whole rollouts of 2 steps at 4 processes (steps_per_generation 8, accumulation 4),
    not of 8 steps at 1 process (steps_per_generation 32)."""
    recipe = make_recipe({"save_strategy": "steps", "save_steps": 12})
    assert check_recipe(recipe, num_processes=4) == []
    finding = only(check_recipe(recipe, num_processes=1), "stages.g.save_steps")
    assert finding.level == "error"
    assert "save_steps=12 is not a whole number of rollouts" in finding.message
    assert "32 × 1 = 32 micro-batches" in finding.message and "e.g. 8 or 16" in finding.message


def test_number_read_as_text() -> None:
    """PyYAML reads 5e-7 (no dot) as a string, which TRL's parser passes on."""
    findings = check_recipe(make_recipe({"learning_rate": "5e-7"}), num_processes=1)
    finding = only(findings, "stages.g.learning_rate")
    assert finding.level == "error" and "write 5.0e-7" in finding.message


def test_parse_errors_become_findings() -> None:
    findings = check_recipe(make_recipe({"learning_rte": 1.0e-6}), num_processes=1)
    finding = only(findings, "stages.g")
    assert finding.level == "error" and "learning_rate" in finding.message  # "did you mean"
    # TRL's other refusals land on the field they name
    findings = check_recipe(make_recipe({"log_completions_hub_repo": "me/logs"}), num_processes=1)
    assert "log_completions is False" in only(findings, "stages.g.log_completions_hub_repo").message


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        ({"bf16": "maybe"}, "bf16", "'maybe' is not true or false"),
        ({"per_device_train_batch_size": 2.5}, "per_device_train_batch_size", "2.5 is not an integer"),
        ({"max_completion_length": "1k"}, "max_completion_length", "'1k' is not an integer or null"),
        ({"num_generations": "8"}, "num_generations", "'8' was read as text, not a number; write 8"),
        ({"curriculum": "linear"}, "curriculum", "is not one of ['mixed', 'sequential', 'ramp']"),
        ({"reward_weights": [1, "x"]}, "reward_weights", "is not a list of a number or null"),
        ({"gate": 1}, "gate", "1 is not true or false"),
    ],
)
def test_values_must_have_the_field_type(args: dict[str, Any], key: str, expected: str) -> None:
    """parse_dict converts nothing: without this bf16 "maybe" trains as bf16 true."""
    findings = check_recipe(make_recipe(args), num_processes=1)
    finding = only(findings, f"stages.g.{key}")
    assert finding.level == "error" and expected in finding.message, finding.message
    assert keys(findings) == {f"stages.g.{key}"}  # the stage is not parsed with a wrong value


def test_recipe_level_values_must_have_the_field_type() -> None:
    """A recipe with mistyped values does not load at all (so neither training nor preflight runs on it)."""
    with pytest.raises(RecipeError, match=r"hub_private: 'maybe' is not true or false.*max_pixels: '1M'"):
        make_recipe(hub_private="maybe", max_pixels="1M")
    with pytest.raises(RecipeError, match=r"peft\.train_vision_tower: 'no' is not true or false"):
        make_recipe(peft={"method": "lora", "between_stages": "continue", "train_vision_tower": "no"})


# -- paths and the Hub -----------------------------------------------------------------------------


def test_missing_model_and_data(_workdir: Path) -> None:
    recipe = make_recipe(model="runs/previous/merged")
    assert (
        "runs/previous/merged is not a model folder"
        in only(check_recipe(recipe, num_processes=1), "model").message
    )
    (_workdir / "runs" / "previous" / "merged").mkdir(parents=True)
    assert "without config.json" in only(check_recipe(recipe, num_processes=1), "model").message
    (_workdir / "runs" / "previous" / "merged" / "config.json").write_text("{}", encoding="utf-8")
    assert check_recipe(recipe, num_processes=1) == []

    for path, level, expected in [
        ("data/cxsett", "error", "data/cxsett not found"),  # data/ exists: a local typo
        ("records.jsonl", "error", "records.jsonl not found"),
        ("/nowhere/set", "error", "/nowhere/set not found"),
        ("org/instructions", "warning", "will be loaded as a Hub dataset id"),
    ]:
        raw = make_recipe()
        raw.stages[0].data[0].path = path
        finding = only(check_recipe(raw, num_processes=1), "stages.g.data")
        assert (finding.level, expected in finding.message) == (level, True), finding


def test_offline_hub_model_must_be_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "_hub_offline", lambda: True)
    finding = only(check_recipe(make_recipe(), num_processes=1), "model")
    assert finding.level == "error" and "HF_HUB_OFFLINE" in finding.message
    with mock.patch("huggingface_hub.try_to_load_from_cache", return_value="/cache/config.json"):
        assert check_recipe(make_recipe(), num_processes=1) == []


def test_push_to_hub_needs_hub_model_id() -> None:
    """The pipeline pushes after a stage has trained; without hub_model_id the push fails only then."""
    recipe = make_recipe()
    recipe.stages[0].push_to_hub = True
    finding = only(check_recipe(recipe, num_processes=1), "stages.g.push_to_hub")
    assert finding.level == "error" and "hub_model_id" in finding.message
    recipe.hub_model_id = "org/cxmind"
    assert check_recipe(recipe, num_processes=1) == []
    trl_push = make_recipe({"push_to_hub": True})
    assert only(check_recipe(trl_push, num_processes=1), "stages.g.push_to_hub").level == "warning"


# -- vLLM ------------------------------------------------------------------------------------------

VLLM = {"use_vllm": True, "vllm_mode": "colocate"}
# a batch that splits over 3 and 4 processes (48 = 2 × 3 × 8 = 2 × 4 × 6), to reach the checks after TRL's
BATCH_3_OR_4 = {"generation_batch_size": 48, "gradient_accumulation_steps": 2, "save_strategy": "no"}


def test_vllm_tensor_parallel_must_divide_the_processes() -> None:
    recipe = make_recipe({**VLLM, **BATCH_3_OR_4, "vllm_tensor_parallel_size": 2})
    assert check_recipe(recipe, num_processes=4) == []
    finding = only(check_recipe(recipe, num_processes=3), "stages.g.vllm_tensor_parallel_size")
    assert finding.level == "error" and "use one of [1]" in finding.message  # 3 is not allowed by 7B's heads


def test_vllm_tensor_parallel_must_divide_the_heads() -> None:
    recipe = make_recipe({**VLLM, "vllm_tensor_parallel_size": 8})
    finding = only(check_recipe(recipe, num_processes=8), "stages.g.vllm_tensor_parallel_size")
    assert "28 text, 16 vision" in finding.message and "[1, 2, 4]" in finding.message


def test_vllm_memory_utilization_range() -> None:
    finding = only(
        check_recipe(make_recipe({**VLLM, "vllm_gpu_memory_utilization": 1.5}), num_processes=1),
        "stages.g.vllm_gpu_memory_utilization",
    )
    assert finding.level == "error" and "(0, 1]" in finding.message


def test_zero3_without_gathering_breaks_vllm() -> None:
    recipe = make_recipe({**VLLM, "ds3_gather_for_generation": False})
    assert check_recipe(recipe, num_processes=4, deepspeed_stage=2) == []
    finding = only(
        check_recipe(recipe, num_processes=4, deepspeed_stage=3), "stages.g.ds3_gather_for_generation"
    )
    assert finding.level == "error" and "set it to true" in finding.message


def test_lora_with_tensor_parallel_vllm_warns() -> None:
    recipe = make_recipe({**VLLM, "vllm_tensor_parallel_size": 2}, peft={"method": "lora"})
    finding = only(check_recipe(recipe, num_processes=2), "stages.g.vllm_tensor_parallel_size")
    assert finding.level == "warning" and "set vllm_tensor_parallel_size 1" in finding.message


def test_lora_fsdp_vllm_warns() -> None:
    recipe = make_recipe(VLLM, peft={"method": "lora"})
    finding = only(check_recipe(recipe, num_processes=2, fsdp=True), "stages.g.use_vllm")
    assert finding.level == "warning" and "ddp.yaml" in finding.message
    assert check_recipe(make_recipe(VLLM), num_processes=2, fsdp=True) == []  # full fine-tuning: supported


def test_lora_zero3_vllm_gathers_the_whole_model() -> None:
    recipe = make_recipe(VLLM, peft={"method": "lora"})
    finding = only(check_recipe(recipe, num_processes=2, deepspeed_stage=3), "stages.g.use_vllm")
    assert finding.level == "warning" and "15.5 GiB" in finding.message


def test_server_mode_ignores_colocate_settings() -> None:
    recipe = make_recipe(
        {**BATCH_3_OR_4, "use_vllm": True, "vllm_mode": "server", "vllm_tensor_parallel_size": 4}
    )
    finding = only(check_recipe(recipe, num_processes=3), "stages.g.vllm_tensor_parallel_size")
    assert finding.level == "warning" and "trl vllm-serve" in finding.message


# -- memory ----------------------------------------------------------------------------------------


def test_vllm_share_too_small_for_the_weights() -> None:
    recipe = make_recipe({**VLLM, "vllm_gpu_memory_utilization": 0.1}, peft={"method": "lora"})
    finding = only(
        check_recipe(recipe, num_processes=1, gpu_memory_gib=80), "stages.g.vllm_gpu_memory_utilization"
    )
    assert finding.level == "error"
    assert "8.0 GiB cannot hold vLLM's copy" in finding.message and "15.5 GiB" in finding.message
    suggested = float(finding.message.split(">= ")[1].split(",")[0])
    fixed = make_recipe({**VLLM, "vllm_gpu_memory_utilization": suggested}, peft={"method": "lora"})
    assert check_recipe(fixed, num_processes=1, gpu_memory_gib=80) == []
    # tensor parallel 2 halves vLLM's weights per GPU
    split = make_recipe({**VLLM, "vllm_gpu_memory_utilization": 0.15, "vllm_tensor_parallel_size": 2})
    assert "error" not in {f.level for f in check_recipe(split, num_processes=2, gpu_memory_gib=80)}


def test_little_kv_cache_warns() -> None:
    recipe = make_recipe({**VLLM, "vllm_gpu_memory_utilization": 0.2}, peft={"method": "lora"})
    finding = only(
        check_recipe(recipe, num_processes=1, gpu_memory_gib=80), "stages.g.vllm_gpu_memory_utilization"
    )
    assert finding.level == "warning" and "KV cache" in finding.message


def test_training_state_beside_vllm_warns() -> None:
    recipe = make_recipe({**VLLM, "vllm_gpu_memory_utilization": 0.5, "beta": 0.01})
    findings = check_recipe(recipe, num_processes=8, gpu_memory_gib=80, deepspeed_stage=2)
    finding = only(findings, "stages.g.vllm_gpu_memory_utilization")
    assert finding.level == "warning" and "zero3.yaml" in finding.message and "reference" in finding.message
    assert check_recipe(recipe, num_processes=8, gpu_memory_gib=80, deepspeed_stage=3) == []
    # sleep mode gives training the whole GPU while vLLM sleeps
    sleeping = make_recipe({**VLLM, "vllm_gpu_memory_utilization": 0.5, "vllm_enable_sleep_mode": True})
    assert check_recipe(sleeping, num_processes=8, gpu_memory_gib=80, deepspeed_stage=2) == []


def test_training_state_estimates() -> None:
    spec = model_spec(MODEL_7B)
    assert spec is not None
    full = make_recipe()
    gib = 8.3e9 / 2**30
    assert training_state_gib(spec, full, num_processes=1) == pytest.approx(16 * gib)
    assert training_state_gib(spec, full, num_processes=8, deepspeed_stage=3) == pytest.approx(2 * gib)
    assert training_state_gib(spec, full, num_processes=8, deepspeed_stage=2) == pytest.approx(
        (2 + 14 / 8) * gib
    )
    assert training_state_gib(spec, full, num_processes=8, fsdp=True, reference_model=True) == pytest.approx(
        (2 + 2 / 8) * gib
    )
    lora = make_recipe(peft={"method": "lora", "r": 64})
    adapter = spec.lora_params(64)
    assert adapter == pytest.approx(161.5e6, rel=0.01)  # Qwen2.5-7B, r 64 on every linear
    assert training_state_gib(spec, lora, num_processes=1) == pytest.approx(
        (2 * 8.3e9 + 16 * adapter) / 2**30
    )


def test_sft_training_state_warns() -> None:
    recipe = make_recipe(sft={"bf16": True, "activation_checkpointing": True, "max_length": 8192})
    finding = only(
        check_recipe(recipe, num_processes=1, gpu_memory_gib=80), "stages.sft.per_device_train_batch_size"
    )
    assert finding.level == "warning" and "123.7 GiB" in finding.message


def test_unknown_models_skip_the_memory_checks(_workdir: Path) -> None:
    model = _workdir / "runs" / "previous" / "grpo_closed"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}", encoding="utf-8")
    recipe = make_recipe({**VLLM, "vllm_gpu_memory_utilization": 0.01}, model="runs/previous/grpo_closed")
    assert check_recipe(recipe, num_processes=1, gpu_memory_gib=24) == []


# -- known crashes and hangs -----------------------------------------------------------------------


@pytest.mark.parametrize("launch", [{"deepspeed_stage": 3}, {"fsdp": True}])
def test_qlora_cannot_be_sharded(launch: dict[str, Any]) -> None:
    recipe = make_recipe(peft={"method": "qlora"})
    finding = only(check_recipe(recipe, num_processes=2, **launch), "peft.method", "error")
    assert "ddp.yaml" in finding.message


def test_qlora_needs_bitsandbytes() -> None:
    recipe = make_recipe(peft={"method": "qlora"})
    with mock.patch("importlib.util.find_spec", return_value=None):
        finding = only(check_recipe(recipe, num_processes=1, deepspeed_stage=2), "peft.method")
    assert finding.level == "warning" and "cxmind[quant]" in finding.message


def test_high_learning_rate_for_full_fine_tuning_warns() -> None:
    findings = check_recipe(make_recipe({"learning_rate": 1.0e-3}), num_processes=1)
    assert only(findings, "stages.g.learning_rate").level == "warning"
    assert (
        check_recipe(make_recipe({"learning_rate": 1.0e-3}, peft={"method": "lora"}), num_processes=1) == []
    )


# -- image tokens ----------------------------------------------------------------------------------


def test_image_tokens() -> None:
    assert image_tokens(2048 * 2048) == 5349 + 2
    assert image_tokens(None) == 12845056 // 784 + 2  # the processor default


def test_image_tokens_must_fit_vllm_context() -> None:
    grpo = {**VLLM, "vllm_max_model_length": 8192, "max_completion_length": 4096}
    recipe = make_recipe(grpo, max_pixels=2048 * 2048)
    finding = only(check_recipe(recipe, num_processes=1), "stages.g.vllm_max_model_length")
    assert finding.level == "error"
    assert "5351" in finding.message and "= 9959" in finding.message and ">= 10240" in finding.message
    pixels = int(finding.message.split("lower max_pixels to <= ")[1].split(",")[0])
    assert check_recipe(make_recipe(grpo, max_pixels=pixels), num_processes=1) == []
    assert (
        check_recipe(
            make_recipe({**grpo, "vllm_max_model_length": 10240}, max_pixels=2048 * 2048), num_processes=1
        )
        == []
    )
    # no vllm_max_model_length: vLLM takes the model's context (128k for Qwen2.5-VL)
    assert check_recipe(make_recipe(VLLM, max_pixels=2048 * 2048), num_processes=1) == []


def test_sft_max_length_below_an_image_warns() -> None:
    recipe = make_recipe(
        sft={"bf16": True, "activation_checkpointing": True, "max_length": 4096}, max_pixels=2048 * 2048
    )
    finding = only(check_recipe(recipe, num_processes=1), "stages.sft.max_length")
    assert finding.level == "warning" and ">= 7168" in finding.message  # 5351 + 512 + 1024 for a trace


def test_min_pixels_above_max_pixels() -> None:
    findings = check_recipe(make_recipe(min_pixels=4096 * 4096, max_pixels=1024 * 1024), num_processes=1)
    assert only(findings, "min_pixels").level == "error"


# -- API -------------------------------------------------------------------------------------------


def test_raise_for_errors_lists_every_error() -> None:
    findings = [
        Finding("error", "a", "fix a"),
        Finding("warning", "b", "maybe b"),
        Finding("error", "c", "fix c"),
    ]
    with pytest.raises(RecipeError) as info:
        raise_for_errors(findings)
    assert "2 error(s)" in str(info.value) and "a: fix a" in str(info.value) and "c: fix c" in str(info.value)
    assert "maybe b" not in str(info.value)
    raise_for_errors([Finding("warning", "b", "maybe b")])


def test_one_error_is_one_line() -> None:
    """The command prints a RecipeError as one line: a single error is not a one-item list."""
    with pytest.raises(RecipeError) as info:
        raise_for_errors(
            [Finding("error", "model", "x is not a model folder"), Finding("warning", "b", "maybe")]
        )
    assert str(info.value) == "the recipe will fail at this launch: model: x is not a model folder"


def test_missing_or_unreadable_accelerate_config(tmp_path: Path) -> None:
    from cxmind.errors import MissingFileError, UserError

    with pytest.raises(MissingFileError, match=r"accelerate config .*nope\.yaml not found"):
        LaunchSettings.from_accelerate_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("x: [", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.yaml cannot be read"):
        LaunchSettings.from_accelerate_config(tmp_path / "bad.yaml")


def test_errors_come_first() -> None:
    recipe = make_recipe({"learning_rate": 1.0e-3, "generation_batch_size": 60})
    levels = [f.level for f in check_recipe(recipe, num_processes=2)]
    assert levels == sorted(levels, key=lambda level: level != "error") and "error" in levels


def test_bad_launch_arguments() -> None:
    with pytest.raises(ValueError, match="num_processes"):
        check_recipe(make_recipe(), num_processes=0)
    with pytest.raises(ValueError, match="not both"):
        check_recipe(make_recipe(), num_processes=2, deepspeed_stage=3, fsdp=True)


def test_model_spec() -> None:
    spec = model_spec("Qwen/Qwen2.5-VL-7B-Instruct")
    assert spec is not None and spec.tp_sizes() == [1, 2, 4]
    assert model_spec("/models/qwen2.5-vl-3b-instruct").name == "Qwen2.5-VL-3B"  # type: ignore[union-attr]
    assert model_spec("runs/x/grpo_closed") is None


@pytest.mark.parametrize(
    ("args", "processes"),
    [
        ({"gradient_accumulation_steps": 10, "generation_batch_size": 640}, 8),
        ({"gradient_accumulation_steps": 20, "generation_batch_size": 640}, 4),
        ({"gradient_accumulation_steps": 2, "steps_per_generation": 8}, 3),
        ({"gradient_accumulation_steps": 4}, 2),
    ],
)
def test_configs_are_built_at_the_launch_world_size(args: dict[str, Any], processes: int) -> None:
    """stage_config_at resolves the generation batch as TRL does in each of ``processes`` processes."""
    drop = tuple(k for k in ("generation_batch_size",) if k not in args)
    recipe = make_recipe({**args, "num_generations": 2, "save_strategy": "no"}, drop=drop)
    stage = recipe.stage("g")
    with mock.patch.object(CXMindGRPOConfig, "world_size", property(lambda self: processes)):
        trl_config = recipe.stage_config(stage)
    config = stage_config_at(recipe, stage, processes)
    assert (config.generation_batch_size, config.steps_per_generation) == (
        trl_config.generation_batch_size,
        trl_config.steps_per_generation,
    )
    geometry = GRPOGeometry.from_config(config, processes)
    assert geometry.steps_per_rollout == config.steps_per_rollout
    assert geometry.completions_per_step == 2 * processes * args["gradient_accumulation_steps"]
    assert recipe.stage_config(stage).world_size == 1  # the patch does not outlive the build


# -- the summary -----------------------------------------------------------------------------------


def test_describe_the_7b_recipe_at_8_gpus() -> None:
    recipe = load_recipe(RECIPES_DIR / "cxmind-qwen2.5-vl-7b/recipe.yaml")
    rows = {"sft": 64_000, "grpo_closed": 6_400, "grpo_open": 3_200}
    text = describe_recipe(recipe, num_processes=8, deepspeed_stage=3, gpu_memory_gib=80, rows=rows)
    print(text)
    assert (
        "Qwen/Qwen2.5-VL-7B-Instruct (Qwen2.5-VL-7B), full fine-tuning, 8 processes, DeepSpeed ZeRO-3" in text
    )
    assert "image tokens per image: 336 to 5351" in text
    assert "1 per device × 8 processes × 8 accumulation = 64 sequences per optimizer step" in text
    assert "epoch: 64000 rows → 1000 optimizer steps; run: 2000 optimizer steps (2 epochs)" in text
    assert "2 per device × 8 processes × 10 accumulation = 160 completions per optimizer step" in text
    assert (
        "generation batch 640 = 64 prompts × 10 generations; steps_per_generation 40 × num_iterations 1 = 40 "
        "micro-batches = 4 optimizer step(s) per rollout"
    ) in text
    assert "epoch: 6400 rows → 100 rollouts = 400 optimizer steps; run: 400 optimizer steps (1 epoch)" in text
    assert "epoch: 3200 rows → 50 rollouts = 200 optimizer steps; run: 400 optimizer steps (2 epochs)" in text
    assert text.count("checkpoints: every 64 optimizer steps = 16 rollouts") == 2
    assert "KL reference: a frozen copy of the stage's starting model runs/cxmind-qwen2.5-vl-7b/sft" in text
    # 16 bytes/param over 8 GPUs + the bf16 reference over 8: (16 + 2) × 8.3e9 / 8 B = 17.4 GiB
    assert "memory per GPU: training state ~17.4 GiB" in text
    assert "vLLM weights ~7.7 GiB (tensor parallel 2)" in text


def test_describe_counts_local_rows(_workdir: Path) -> None:
    rows = [{"prompt": f"question {i}", "completion": "answer"} for i in range(10)]
    (_workdir / "instructions.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recipe = make_recipe(sft={"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})
    recipe.stages[0].data[0].path = "instructions.jsonl"
    text = describe_recipe(recipe, num_processes=1)
    assert "epoch: 10 rows → 3 optimizer steps; run: 9 optimizer steps (3 epochs)" in text  # ceil(10/2/2)
    assert "training rows unknown" in text  # the GRPO stage's data/cxset is a stand-in without records


def test_describe_names_the_kl_reference_of_lora_continue() -> None:
    """between_stages continue: the previous stage's adapter, loaded frozen as TRL's "ref" adapter."""
    recipe = make_recipe({"beta": 0.04}, sft={}, peft={"method": "lora", "between_stages": "continue"})
    recipe.stages.append(dataclasses.replace(recipe.stages[1], name="g2"))
    text = describe_recipe(recipe, num_processes=1, rows={})
    assert "KL reference: the adapter runs/x/sft on Qwen/Qwen2.5-VL-7B-Instruct as the stage starts" in text
    assert "KL reference: the adapter runs/x/g on" in text and "'ref' adapter" in text
    merge = make_recipe({"beta": 0.04}, peft={"method": "lora"})
    assert "KL reference: Qwen/Qwen2.5-VL-7B-Instruct itself: the stage's fresh adapter switched off" in (
        describe_recipe(merge, num_processes=1, rows={})
    )
    assert "KL reference: none (beta 0" in describe_recipe(
        make_recipe({"beta": 0.0}), num_processes=1, rows={}
    )


# -- launch settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ddp.yaml", LaunchSettings(8, None, False)),
        ("zero2.yaml", LaunchSettings(8, 2, False)),
        ("zero3.yaml", LaunchSettings(8, 3, False)),
        ("fsdp2.yaml", LaunchSettings(8, None, True)),
        ("multi-node.yaml", LaunchSettings(16, 3, False)),
    ],
)
def test_launch_settings_from_accelerate_config(name: str, expected: LaunchSettings) -> None:
    assert LaunchSettings.from_accelerate_config(ACCELERATE_DIR / name) == expected
    assert LaunchSettings.from_accelerate_config(ACCELERATE_DIR / name, num_processes=4).num_processes == 4


def test_launch_settings_from_env(tmp_path: Path) -> None:
    env = {"WORLD_SIZE": "8", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    assert LaunchSettings.from_env(env) == LaunchSettings(8, 3, False)
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}', encoding="utf-8")
    env = {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds)}
    assert LaunchSettings.from_env(env) == LaunchSettings(2, 2, False)
    assert LaunchSettings.from_env({"WORLD_SIZE": "4", "ACCELERATE_USE_FSDP": "true"}) == LaunchSettings(
        4, None, True
    )
    assert LaunchSettings.from_env({}) == LaunchSettings(1, None, False)


# -- the shipped recipes ---------------------------------------------------------------------------

SEVEN_B_4_GPUS = SEVEN_B_LAUNCHES[4]  # the overrides the recipe documents for 4 GPUs
SEVEN_B_16_GPUS = [
    "--stages.sft.gradient_accumulation_steps",
    "4",
    "--stages.grpo_closed.gradient_accumulation_steps",
    "5",
    "--stages.grpo_open.gradient_accumulation_steps",
    "5",
]
SHIPPED = [
    # recipe, overrides, accelerate config, processes, GPU GiB
    ("cxmind-qwen2.5-vl-7b/recipe.yaml", [], "zero3.yaml", 8, 80),
    ("cxmind-qwen2.5-vl-7b/recipe.yaml", SEVEN_B_4_GPUS, "zero3.yaml", 4, 80),
    ("cxmind-qwen2.5-vl-7b/recipe.yaml", SEVEN_B_16_GPUS, "multi-node.yaml", 16, 80),
    ("cxmind-qwen2.5-vl-7b/recipe.yaml", [], "fsdp2.yaml", 8, 80),
    ("qwen2.5-vl-3b.yaml", [], "zero2.yaml", 4, 80),
    ("qwen2.5-vl-3b.yaml", ["--stages.grpo_closed.gradient_accumulation_steps", "2"], "zero2.yaml", 8, 80),
    ("lora-single-gpu.yaml", [], "ddp.yaml", 1, 80),
    ("lora-single-gpu.yaml", [], "ddp.yaml", 1, 48),
    ("qlora.yaml", [], "ddp.yaml", 1, 24),
]


@pytest.mark.parametrize(("recipe", "overrides", "launch", "processes", "gib"), SHIPPED)
def test_shipped_recipes_pass_at_their_documented_launch(
    recipe: str, overrides: list[str], launch: str, processes: int, gib: int
) -> None:
    loaded = load_recipe(RECIPES_DIR / recipe, overrides)
    settings = LaunchSettings.from_accelerate_config(ACCELERATE_DIR / launch, num_processes=processes)
    findings = check_recipe(loaded, **vars(settings), gpu_memory_gib=gib)
    # QLoRA's "install bitsandbytes" note is the only finding allowed on a machine without it
    assert [f for f in findings if f.key != "peft.method" or f.level == "error"] == [], format_findings(
        findings
    )


def test_7b_at_4_gpus_needs_the_documented_memory_override() -> None:
    loaded = load_recipe(RECIPES_DIR / "cxmind-qwen2.5-vl-7b/recipe.yaml", SEVEN_B_4_GPUS[:4])
    findings = check_recipe(loaded, num_processes=4, gpu_memory_gib=80, deepspeed_stage=3)
    assert keys(findings, "warning") == {
        "stages.grpo_closed.vllm_gpu_memory_utilization",
        "stages.grpo_open.vllm_gpu_memory_utilization",
    }
    assert keys(findings, "error") == set()
