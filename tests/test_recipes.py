"""The shipped recipes and accelerate configs: they load, chain the paper's stages, and the 7B recipe's
batch arithmetic is the reference run's (640 completions per rollout, 160 per optimizer step)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from cxmind.training.grpo import CXMindGRPOConfig
from cxmind.training.preflight import assume_training_gpu
from cxmind.training.recipe import Recipe, load_recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
ACCELERATE_DIR = RECIPES_DIR / "accelerate"
RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml") if ACCELERATE_DIR not in p.parents)
ACCELERATE_CONFIGS = sorted(ACCELERATE_DIR.glob("*.yaml"))
SEVEN_B = RECIPES_DIR / "cxmind-qwen2.5-vl-7b" / "recipe.yaml"
# The overrides the 7B recipe documents for each GPU count (checked to appear in the file).
SEVEN_B_LAUNCHES = {
    8: [],
    4: [
        "--stages.grpo_closed.gradient_accumulation_steps",
        "20",
        "--stages.grpo_open.gradient_accumulation_steps",
        "20",
        "--stages.grpo_closed.vllm_gpu_memory_utilization",
        "0.45",
        "--stages.grpo_open.vllm_gpu_memory_utilization",
        "0.45",
    ],
}


@pytest.fixture(autouse=True)
def _bf16_gpu() -> Iterator[None]:
    """The recipes use bf16, which TrainingArguments refuses on a machine without a bf16 GPU."""
    with assume_training_gpu():
        yield


def _load(path: Path, overrides: list[str] | None = None) -> Recipe:
    return load_recipe(path, overrides or [])


def _parsed_at(recipe: Recipe, stage: str, world_size: int) -> CXMindGRPOConfig:
    """The stage's config as TRL resolves it in a run of ``world_size`` processes."""
    with mock.patch.object(CXMindGRPOConfig, "world_size", property(lambda self: world_size)):
        return recipe.stage_config(recipe.stage(stage))


def test_recipes_are_found() -> None:
    names = {p.relative_to(RECIPES_DIR).as_posix() for p in RECIPES}
    assert {
        "cxmind-qwen2.5-vl-7b/recipe.yaml",
        "lora-single-gpu.yaml",
        "qlora.yaml",
        "qwen2.5-vl-3b.yaml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(RECIPES_DIR).as_posix())
def test_recipe_loads_with_the_paper_stages(path: Path) -> None:
    recipe = _load(path)
    assert [(s.name, s.type) for s in recipe.stages] == [
        ("sft", "sft"),
        ("grpo_closed", "grpo"),
        ("grpo_open", "grpo"),
    ]
    assert recipe.stage("grpo_closed").data[0].task_types == ["closed"]
    assert recipe.stage("grpo_open").data[0].task_types == ["open"]
    assert set(recipe.stage("sft").data[0].task_types or []) == {"closed", "open"}
    closed = recipe.stage_config(recipe.stage("grpo_closed"))
    opened = recipe.stage_config(recipe.stage("grpo_open"))
    # Stage II inherits Stage I's args (YAML anchor) and trains longer
    assert (closed.num_train_epochs, opened.num_train_epochs) == (1, 2)
    for name in ("learning_rate", "num_generations", "generation_batch_size", "beta", "use_vllm"):
        assert getattr(closed, name) == getattr(opened, name), name
    no_vllm = "no-vllm" in path.name  # the variant for hosts without vLLM generates in the trainer
    assert closed.use_vllm is not no_vllm and (no_vllm or closed.vllm_mode == "colocate")
    assert closed.reward_mode == "fixed" and closed.gate
    assert closed.bf16 and closed.activation_checkpointing


def test_override_of_one_stage_leaves_the_other() -> None:
    recipe = _load(SEVEN_B, ["--stages.grpo_open.learning_rate", "5.0e-7"])
    assert recipe.stage_config(recipe.stage("grpo_open")).learning_rate == 5e-7
    assert recipe.stage_config(recipe.stage("grpo_closed")).learning_rate == 1e-6


def test_7b_recipe_is_the_reference_run() -> None:
    recipe = _load(SEVEN_B)
    assert recipe.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert recipe.peft is None and not recipe.freeze_vision_tower  # full fine-tuning, vision tower too
    assert (recipe.min_pixels, recipe.max_pixels) == (512 * 512, 2048 * 2048)
    assert recipe.model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "flash_attention_2"}
    sft = recipe.stage_config(recipe.stage("sft"))
    assert sft.learning_rate == 1e-5 and sft.max_length == 8192 and sft.bf16
    for stage in ("grpo_closed", "grpo_open"):
        c = recipe.stage_config(recipe.stage(stage))
        assert c.learning_rate == 1e-6 and c.lr_scheduler_type.value == "constant"
        assert (c.weight_decay, c.max_grad_norm, c.beta, c.epsilon, c.epsilon_high) == (
            0.01,
            1.0,
            0.01,
            0.2,
            0.3,
        )
        assert (c.temperature, c.top_p, c.max_completion_length) == (1.0, 0.99, 4096)
        assert c.num_generations == 10
        assert (c.vllm_tensor_parallel_size, c.vllm_gpu_memory_utilization) == (2, 0.6)


@pytest.mark.parametrize("gpus", sorted(SEVEN_B_LAUNCHES))
def test_7b_batch_arithmetic(gpus: int) -> None:
    """640 completions per rollout (64 prompts × 10), 160 per optimizer step, 4 steps per rollout —
    resolved by TRL's own GRPOConfig.__post_init__ at the documented GPU counts."""
    overrides = SEVEN_B_LAUNCHES[gpus]
    text = SEVEN_B.read_text(encoding="utf-8")
    for flag, value in zip(overrides[::2], overrides[1::2], strict=True):
        assert re.search(rf"{re.escape(flag)} {re.escape(value)}\b", text), f"{flag} {value} not documented"
    recipe = _load(SEVEN_B, overrides)
    for stage in ("grpo_closed", "grpo_open"):
        c = _parsed_at(recipe, stage, gpus)
        assert c.generation_batch_size == 640
        assert c.generation_batch_size // c.num_generations == 64
        per_step = c.per_device_train_batch_size * gpus * c.gradient_accumulation_steps
        assert per_step == 160
        assert c.steps_per_generation * c.num_iterations // c.gradient_accumulation_steps == 4
        assert c.steps_per_generation % c.gradient_accumulation_steps == 0


def _grpo_accumulation(value: int) -> list[str]:
    return [
        "--stages.grpo_closed.gradient_accumulation_steps",
        str(value),
        "--stages.grpo_open.gradient_accumulation_steps",
        str(value),
    ]


# Every launch the recipes document: (recipe, overrides, processes).
DOCUMENTED_LAUNCHES = [
    (SEVEN_B, [], 8),
    (SEVEN_B, SEVEN_B_LAUNCHES[4], 4),
    (SEVEN_B, _grpo_accumulation(5), 16),
    (RECIPES_DIR / "qwen2.5-vl-3b.yaml", [], 4),
    (RECIPES_DIR / "qwen2.5-vl-3b.yaml", _grpo_accumulation(2), 8),
    (RECIPES_DIR / "lora-single-gpu.yaml", [], 1),
    (RECIPES_DIR / "qlora.yaml", [], 1),
]


@pytest.mark.parametrize(
    ("path", "overrides", "gpus"),
    DOCUMENTED_LAUNCHES,
    ids=[f"{p.relative_to(RECIPES_DIR).as_posix()}@{n}" for p, _, n in DOCUMENTED_LAUNCHES],
)
def test_grpo_checkpoints_fall_between_rollouts(path: Path, overrides: list[str], gpus: int) -> None:
    """A checkpoint inside a rollout cannot be resumed exactly (TRL restarts its micro-batch counter), so
    save_steps must be a whole number of rollouts — at the launch, and in the one process of a login node
    that parses the recipe for `--check`. Every recipe has 4 optimizer steps per rollout at its launch."""
    recipe = _load(path, overrides)
    for stage in ("grpo_closed", "grpo_open"):
        for world_size in sorted({gpus, 1}):
            c = _parsed_at(recipe, stage, world_size)  # CXMindGRPOConfig refuses misaligned checkpoints
            assert c.save_strategy.value == "steps" and c.save_steps % c.steps_per_rollout == 0
        c = _parsed_at(recipe, stage, gpus)
        assert c.steps_per_rollout == 4 and c.save_steps == 64  # 16 rollouts


def test_recipe_readme_lists_every_recipe() -> None:
    readme = (RECIPES_DIR / "README.md").read_text(encoding="utf-8")
    for path in [*RECIPES, *ACCELERATE_CONFIGS]:
        assert f"]({path.relative_to(RECIPES_DIR).as_posix()})" in readme, path
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (RECIPES_DIR / link).exists(), link
    assert "think_alpha" in readme and "reward_weights" in readme


# -- accelerate configs ------------------------------------------------------------------------------


def test_accelerate_configs_are_found() -> None:
    assert {p.name for p in ACCELERATE_CONFIGS} == {
        "ddp.yaml",
        "zero2.yaml",
        "zero3.yaml",
        "fsdp2.yaml",
        "multi-node.yaml",
    }


def _launch_args(path: Path) -> object:
    """The argparse namespace `accelerate launch --config_file path` builds (nothing is launched)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), "-m", "cxmind", "train", "recipe.yaml"])
    args, _, _ = _validate_launch_command(args)
    return args


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))
    assert config.mixed_precision == "bf16"
    assert config.num_processes == 8 * config.num_machines
    # accelerate copies these blocks onto `accelerate launch` arguments; a misspelt key is dropped silently
    dests = {action.dest for action in launch_command_parser()._actions}
    for key in [*config.deepspeed_config, *config.fsdp_config]:
        assert key in dests, f"{path.name}: {key} is not an accelerate launch option"
    _launch_args(path)


def test_deepspeed_configs() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    stages = {}
    for name in ("zero2.yaml", "zero3.yaml", "multi-node.yaml"):
        config = load_config_from_file(str(ACCELERATE_DIR / name))
        assert config.distributed_type.value == "DEEPSPEED"
        ds = config.deepspeed_config
        assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
        stages[name] = ds["zero_stage"]
        if ds["zero_stage"] == 3:  # the next stage loads the saved model
            assert ds["zero3_save_16bit_model"] is True
    assert stages == {"zero2.yaml": 2, "zero3.yaml": 3, "multi-node.yaml": 3}


def test_multi_node_config() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_DIR / "multi-node.yaml"))
    assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, 0)
    assert config.main_process_ip and config.main_process_port


def test_fsdp2_config_builds_the_plugin() -> None:
    """The FSDP2 file goes through accelerate's launch → environment → plugin path, and wraps real
    Qwen2.5-VL block classes."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.constants import FSDP2_STATE_DICT_TYPE
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    args = _launch_args(ACCELERATE_DIR / "fsdp2.yaml")
    env = prepare_multi_gpu_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
    for name in plugin.transformer_cls_names_to_wrap:
        assert hasattr(modeling_qwen2_5_vl, name)
    assert set(modeling_qwen2_5_vl.Qwen2_5_VLModel._no_split_modules) == set(
        plugin.transformer_cls_names_to_wrap
    )
    assert plugin.state_dict_type.name in FSDP2_STATE_DICT_TYPE
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # the next stage loads a full model
    assert not plugin.activation_checkpointing  # the recipes use the trainer's activation_checkpointing


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--peft.r=sixty-four", r"peft\.r: 'sixty-four' is not an integer"),
        ("--peft.lora_dropout=high", r"peft\.lora_dropout: 'high' is not a number"),
        ("--freeze_vision_tower=maybe", r"freeze_vision_tower: 'maybe' is not true or false"),
        ("--stages.sft.push_to_hub=maybe", r"stage 'sft': wrong value type: push_to_hub: 'maybe' is not"),
    ],
)
def test_mistyped_recipe_values_are_clear_errors(override: str, message: str) -> None:
    """A wrong type is a one-line RecipeError naming the key, never a TypeError from deep inside."""
    from cxmind.training.recipe import RecipeError

    path = next(p for p in RECIPES if "lora-single-gpu" in p.name)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path, [override])


def test_mistyped_trainer_args_fail_when_the_recipe_loads() -> None:
    """``bf16: maybe`` would otherwise train as true: refused at load, before any training."""
    from cxmind.training.recipe import RecipeError

    path = next(p for p in RECIPES if "lora-single-gpu" in p.name)
    with pytest.raises(
        RecipeError, match=r"stage 'sft': wrong value type: args\.bf16: 'maybe' is not true or false"
    ):
        load_recipe(path, ["--stages.sft.bf16=maybe"])
