"""Preflight: each check fires on a crafted recipe, names the key and the fix; the shipped recipes pass
at their documented launches; the batch arithmetic agrees with TRL's own."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from test_recipes import SEVEN_B_LAUNCHES

from cxmind.training.grpo import CXMindGRPOConfig
from cxmind.training.preflight import (
    Finding,
    LaunchSettings,
    assume_training_gpu,
    check_recipe,
    format_findings,
    grpo_geometry,
    image_tokens,
    model_spec,
    raise_for_errors,
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
}


@pytest.fixture(autouse=True)
def _bf16_gpu() -> Iterator[None]:
    with assume_training_gpu():
        yield


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
    """Valid in one process (all TRL can check while parsing), broken at 3: 64 % (2 × 3) != 0."""
    recipe = make_recipe()
    assert check_recipe(recipe, num_processes=1) == []
    finding = only(check_recipe(recipe, num_processes=3), "stages.g.generation_batch_size")
    assert finding.level == "error"
    assert "2 × 3 = 6" in finding.message and "set generation_batch_size to 72" in finding.message


def test_generation_batch_must_hold_whole_groups() -> None:
    # steps_per_generation defaults to gradient_accumulation_steps: 2 × 3 × 1 = 6 completions, groups of 4
    recipe = make_recipe(
        {"gradient_accumulation_steps": 1, "num_generations": 4}, drop=("generation_batch_size",)
    )
    finding = only(check_recipe(recipe, num_processes=3), "stages.g.steps_per_generation")
    assert finding.level == "error"
    assert "= 6 must be divisible by num_generations (4)" in finding.message
    assert "set steps_per_generation to 2" in finding.message  # 2 × 3 × 2 = 12
    fixed = make_recipe({"steps_per_generation": 2, "num_generations": 4}, drop=("generation_batch_size",))
    assert check_recipe(fixed, num_processes=3) == []


def test_generation_batch_size_not_a_multiple_of_num_generations() -> None:
    recipe = make_recipe(
        {"generation_batch_size": 60, "num_generations": 8, "per_device_train_batch_size": 1}
    )
    findings = check_recipe(recipe, num_processes=2)
    finding = only(findings, "stages.g.generation_batch_size")
    assert "divisible by num_generations (8)" in finding.message and "set it to 64" in finding.message
    assert "stages.g" not in keys(findings)  # TRL's parse error is not repeated


def test_too_few_generations() -> None:
    findings = check_recipe(make_recipe({"num_generations": 1}), num_processes=1)
    assert only(findings, "stages.g.num_generations").level == "error"
    assert keys(findings) == {"stages.g.num_generations"}


def test_generation_batch_size_and_steps_per_generation_exclusive() -> None:
    findings = check_recipe(make_recipe({"steps_per_generation": 4}), num_processes=1)
    assert "remove one" in only(findings, "stages.g.steps_per_generation").message


def test_eval_batch_must_hold_whole_groups() -> None:
    recipe = make_recipe({"eval_strategy": "steps", "eval_steps": 10, "per_device_eval_batch_size": 3})
    findings = check_recipe(recipe, num_processes=2)
    finding = only(findings, "stages.g.per_device_eval_batch_size")
    assert finding.level == "error" and "per-device eval batch of 4" in finding.message


def test_rollout_not_aligned_with_optimizer_steps_warns() -> None:
    # 64 / (2 × 4) = 8 micro-batches per rollout, optimizer steps of 3
    findings = check_recipe(make_recipe({"gradient_accumulation_steps": 3}), num_processes=4)
    finding = only(findings, "stages.g.gradient_accumulation_steps")
    assert finding.level == "warning" and "divide steps_per_generation" in finding.message


def test_number_read_as_text() -> None:
    """PyYAML reads 5e-7 (no dot) as a string, which TRL's parser passes on."""
    findings = check_recipe(make_recipe({"learning_rate": "5e-7"}), num_processes=1)
    finding = only(findings, "stages.g.learning_rate")
    assert finding.level == "error" and "write 5.0e-7" in finding.message


def test_parse_errors_become_findings() -> None:
    findings = check_recipe(make_recipe({"learning_rte": 1.0e-6}), num_processes=1)
    finding = only(findings, "stages.g")
    assert finding.level == "error" and "learning_rate" in finding.message  # "did you mean"


# -- vLLM ------------------------------------------------------------------------------------------

VLLM = {"use_vllm": True, "vllm_mode": "colocate"}


def test_vllm_tensor_parallel_must_divide_the_processes() -> None:
    recipe = make_recipe({**VLLM, "vllm_tensor_parallel_size": 2})
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
    recipe = make_recipe({"use_vllm": True, "vllm_mode": "server", "vllm_tensor_parallel_size": 4})
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


def test_unknown_models_skip_the_memory_checks() -> None:
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
        (
            {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 10,
                "generation_batch_size": 640,
            },
            8,
        ),
        (
            {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 20,
                "generation_batch_size": 640,
            },
            4,
        ),
        ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_generation": 8}, 3),
        ({"per_device_train_batch_size": 3, "gradient_accumulation_steps": 4}, 2),
    ],
)
def test_geometry_agrees_with_trl(args: dict[str, Any], processes: int) -> None:
    """grpo_geometry resolves generation_batch_size/steps_per_generation as GRPOConfig does there."""
    drop = tuple(k for k in ("generation_batch_size",) if k not in args)
    recipe = make_recipe({**args, "num_generations": 2}, drop=drop)
    stage = recipe.stage("g")
    with mock.patch.object(CXMindGRPOConfig, "world_size", property(lambda self: processes)):
        trl_config = recipe.stage_config(stage)
    geometry = grpo_geometry(recipe.stage_config(stage), stage.args, processes)
    assert geometry.generation_batch_size == trl_config.generation_batch_size
    assert geometry.steps_per_generation == trl_config.steps_per_generation


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
