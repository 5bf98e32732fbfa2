"""Recipe variants: the 7B recipe for hosts without vLLM is the reference recipe with generation moved into
the trainer, and it passes the launch checks at the GPU counts its comments document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from cxmind.training import preflight
from cxmind.training.grpo import CXMindGRPOConfig
from cxmind.training.preflight import LaunchSettings, assume_training_gpu, check_recipe
from cxmind.training.recipe import Recipe, load_recipe

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
SEVEN_B = RECIPES_DIR / "cxmind-qwen2.5-vl-7b" / "recipe.yaml"
NO_VLLM = RECIPES_DIR / "cxmind-qwen2.5-vl-7b" / "recipe-no-vllm.yaml"
ZERO3 = RECIPES_DIR / "accelerate" / "zero3.yaml"
GRPO = ("grpo_closed", "grpo_open")
# The overrides the file documents per GPU count (checked to appear in its comments).
LAUNCHES = {
    8: [],
    4: [
        f"--stages.{stage}.{key}"
        for stage in GRPO
        for key in ("gradient_accumulation_steps 20", "generation_batch_size 160")
    ],
}
#: GRPO args that only configure vLLM: the variant leaves them out.
VLLM_ONLY = (
    "use_vllm",
    "vllm_mode",
    "vllm_tensor_parallel_size",
    "vllm_gpu_memory_utilization",
    "vllm_max_model_length",
)


@pytest.fixture(autouse=True)
def _bf16_gpu() -> Iterator[None]:
    with assume_training_gpu():
        yield


def _load(path: Path, overrides: list[str] | None = None) -> Recipe:
    return load_recipe(path, [part for o in overrides or [] for part in o.split()])


def _parsed_at(recipe: Recipe, stage: str, world_size: int) -> CXMindGRPOConfig:
    with mock.patch.object(CXMindGRPOConfig, "world_size", property(lambda self: world_size)):
        return recipe.stage_config(recipe.stage(stage))


def test_no_vllm_recipe_is_the_7b_recipe_without_vllm() -> None:
    ours, reference = _load(NO_VLLM), _load(SEVEN_B)
    for field in (
        "model",
        "min_pixels",
        "max_pixels",
        "model_init_kwargs",
        "peft",
        "freeze_vision_tower",
        "seed",
    ):
        assert getattr(ours, field) == getattr(reference, field), field
    assert [(s.name, s.type) for s in ours.stages] == [(s.name, s.type) for s in reference.stages]
    for stage in ours.stages:
        other = reference.stage(stage.name)
        assert [(d.path, d.task_types) for d in stage.data] == [(d.path, d.task_types) for d in other.data]
    assert ours.stage("sft").args == reference.stage("sft").args
    for name in GRPO:
        ours_args, reference_args = dict(ours.stage(name).args), dict(reference.stage(name).args)
        assert ours_args.pop("use_vllm") is False
        assert (
            ours_args.pop("generation_batch_size") == 320
            and reference_args.pop("generation_batch_size") == 640
        )
        assert ours_args.pop("ds3_gather_for_generation") is True  # TRL's default, stated
        assert ours_args == {k: v for k, v in reference_args.items() if k not in VLLM_ONLY}, name
        config = ours.stage_config(ours.stage(name))
        assert not config.use_vllm and config.reward_mode == "fixed" and config.gate
    assert ours.output_dir != reference.output_dir  # the two runs never resume each other


@pytest.mark.parametrize("gpus", sorted(LAUNCHES))
def test_no_vllm_batch_arithmetic(gpus: int) -> None:
    """160 completions per optimizer step as in the reference run, 40 sequences per GPU per generate call,
    and checkpoints on rollout boundaries at the launch and in the one process that parses it."""
    text = NO_VLLM.read_text(encoding="utf-8")
    for override in LAUNCHES[gpus]:
        assert re.search(rf"{re.escape(override)}\b", text), f"{override} not documented"
    recipe = _load(NO_VLLM, LAUNCHES[gpus])
    for stage in GRPO:
        c = _parsed_at(recipe, stage, gpus)
        assert c.per_device_train_batch_size * gpus * c.gradient_accumulation_steps == 160
        assert c.generation_batch_size // gpus == 40  # each GPU's share of a rollout, generated at once
        assert c.generation_batch_size % c.num_generations == 0
        for world_size in sorted({gpus, 1}):
            parsed = _parsed_at(recipe, stage, world_size)
            assert parsed.save_steps % parsed.steps_per_rollout == 0
        assert c.steps_per_rollout == {8: 2, 4: 1}[gpus]


@pytest.mark.parametrize("gpus", sorted(LAUNCHES))
def test_no_vllm_recipe_passes_the_launch_checks(gpus: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `cxmind train RECIPE --check --accelerate-config zero3.yaml --num-processes N --gpu-memory-gib 80`
    reports on a login node with Hub access: no error (warnings only for the record set not built here)."""
    monkeypatch.setattr(
        preflight, "_hub_offline", lambda: False
    )  # the tests run offline; the check asks no Hub
    launch = LaunchSettings.from_accelerate_config(ZERO3, num_processes=gpus)
    findings = check_recipe(_load(NO_VLLM, LAUNCHES[gpus]), **vars(launch), gpu_memory_gib=80)
    assert [f for f in findings if f.level == "error"] == []
    assert not [f for f in findings if "vllm" in f.key]
