"""Resuming GRPO with generation batches reused over several optimizer steps.

TRL reuses one generation batch for ``steps_per_generation × num_iterations`` micro-batches and does
not checkpoint where it is inside that rollout, so only checkpoints on rollout boundaries resume
exactly. ``CXMindGRPOConfig`` refuses any other ``save_steps``; these tests pin both halves: an allowed
checkpoint resumes into the uninterrupted run, a forbidden one (forced past the check) does not.
"""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, curl_vpr_reward_funcs
from cxmind.training.data import load_training_data
from cxmind.training.grpo import CXMindGRPOConfig, CXMindGRPOTrainer

# 4 completions per micro-batch, a generation batch of 2 micro-batches (2 prompts × 4 generations), each
# used twice: a rollout is 2 × 2 = 4 micro-batches = 4 optimizer steps of one micro-batch.
GEOMETRY = dict(
    per_device_train_batch_size=4,
    num_generations=4,
    steps_per_generation=2,
    num_iterations=2,
    gradient_accumulation_steps=1,
)


def config(tmp_path, **overrides) -> CXMindGRPOConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        **GEOMETRY,
        max_completion_length=8,
        max_steps=8,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=4,
        seed=0,
        use_cpu=True,
        bf16=False,
        curriculum="ramp",
        curriculum_adaptive=True,
    )
    values.update(overrides)
    return CXMindGRPOConfig(**values)


# -- the refusal (no training) -----------------------------------------------------------------------


def test_steps_per_rollout_follows_trl_generation_schedule() -> None:
    """lcm(gas, steps_per_generation × num_iterations) / gas, gas = gradient_accumulation_steps."""
    common = dict(output_dir="unused", use_cpu=True, bf16=False, save_strategy="no")
    cases = [
        (dict(GEOMETRY), 4),
        (dict(GEOMETRY, gradient_accumulation_steps=2), 2),  # 4 micro-batches = 2 steps of 2
        (dict(GEOMETRY, gradient_accumulation_steps=4), 1),
        (dict(GEOMETRY, gradient_accumulation_steps=8), 1),  # a step spans two rollouts
        (dict(GEOMETRY, steps_per_generation=4, gradient_accumulation_steps=2, num_iterations=1), 2),
        # TRL's default: steps_per_generation = gradient_accumulation_steps, one step per rollout
        (dict(per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=3), 1),
    ]
    for geometry, steps in cases:
        assert CXMindGRPOConfig(**common, **geometry).steps_per_rollout == steps, geometry


@pytest.mark.parametrize(
    ("save_steps", "nearest"),
    [(2, "e.g. 4"), (6, "e.g. 4 or 8"), (50, "e.g. 48 or 52"), (1, "e.g. 4")],
)
def test_a_checkpoint_inside_a_rollout_is_refused(tmp_path, save_steps: int, nearest: str) -> None:
    with pytest.raises(ValueError) as info:
        config(tmp_path, save_steps=save_steps)
    message = str(info.value)
    assert f"save_steps={save_steps} is not a whole number of rollouts" in message
    assert "2 × 2 = 4 micro-batches" in message and "a rollout ends every 4 optimizer steps" in message
    assert f"multiple of 4, {nearest}" in message


def test_allowed_checkpoint_settings(tmp_path) -> None:
    for settings in (
        dict(save_steps=4),
        dict(save_steps=12),
        dict(save_strategy="epoch"),
        dict(save_strategy="no", save_steps=3),
        dict(save_steps=3, gradient_accumulation_steps=4),  # one optimizer step per rollout
    ):
        config(tmp_path, **settings)


def test_fractional_and_best_checkpoints_are_checked_too(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"save_steps=0.5 is a fraction of the run.*multiple of 4"):
        config(tmp_path, save_steps=0.5)
    # save_strategy "best" saves at evaluations
    best = dict(save_strategy="best", eval_strategy="steps", metric_for_best_model="loss")
    with pytest.raises(ValueError, match="eval_steps=6 is not a whole number of rollouts"):
        config(tmp_path, **best, eval_steps=6, per_device_eval_batch_size=4)
    config(tmp_path, **best, eval_steps=8, per_device_eval_batch_size=4)


def test_accumulation_must_divide_the_rollout_when_saving_by_steps(tmp_path) -> None:
    """gas 3 ∤ 4 micro-batches: an epoch's short last step moves the boundaries, no save_steps is safe."""
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps \(3\) to divide"):
        config(tmp_path, gradient_accumulation_steps=3, save_steps=4)
    config(tmp_path, gradient_accumulation_steps=3, save_strategy="epoch")


# -- resume on the tiny model ------------------------------------------------------------------------


class Recording(CXMindGRPOTrainer):
    """Records every generation (gathered row indices) and every training micro-batch it returns."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated: list[list[int]] = []
        self.micro_batches: list[tuple[tuple[int, ...], ...]] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self.generated.append([int(x["row_index"]) for x in inputs])
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        if self.model.training:
            ids = inputs["prompt_ids"].tolist() + inputs["completion_ids"].tolist()
            self.micro_batches.append(tuple(tuple(row) for row in ids))
        return inputs


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def distinct_characters(completions, **kwargs):
    """A reward with variance for a random model, so the adaptive curriculum sees informative groups."""
    return [len(set(c[0]["content"] if isinstance(c, list) else c)) / 8 for c in completions]


@pytest.fixture(scope="module")
def grpo_data(phantom_records):
    return load_training_data([{"path": str(phantom_records), "task_types": ["closed", "open"]}], kind="grpo")


def trainer(model_path, data, args, **kwargs) -> Recording:
    args.reward_weights = [*DEFAULT_REWARD_WEIGHTS, 1.0]
    funcs = [*curl_vpr_reward_funcs(), distinct_characters]
    return Recording(model=str(model_path), args=args, reward_funcs=funcs, train_dataset=data, **kwargs)


def run(model_path, data, tmp_path, *, stop_at: int, save_steps: int | None = None):
    """(uninterrupted, interrupted at ``stop_at``, resumed) trainers; ``save_steps`` forced past the check."""
    full = trainer(model_path, data, config(tmp_path / "full"))
    full.train()
    args = config(tmp_path / "cut")  # checked with save_steps 4 ...
    if save_steps is not None:
        args.save_steps = save_steps  # ... then forced to the forbidden value
    first = trainer(model_path, data, args, callbacks=[StopAt(stop_at)])
    first.train()
    resumed = trainer(model_path, data, args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "out" / f"checkpoint-{stop_at}"))
    return full, first, resumed


@pytest.mark.slow
def test_resume_at_a_rollout_boundary_repeats_the_uninterrupted_run(grpo_data, tiny_qwen25_vl_path, tmp_path):
    full, first, resumed = run(tiny_qwen25_vl_path, grpo_data, tmp_path, stop_at=4)
    assert len(full.generated) == 2 and len(first.generated) == 1  # 8 steps = 2 rollouts
    assert first.generated + resumed.generated == full.generated  # same generations, same prompts, same order
    assert first.micro_batches + resumed.micro_batches == full.micro_batches  # same samples per step
    assert len(full.micro_batches) == 8
    assert resumed.gates["train"].state_dict() == full.gates["train"].state_dict()
    assert resumed.curriculum_sampler.state_dict() == full.curriculum_sampler.state_dict()


@pytest.mark.slow
def test_resume_inside_a_rollout_generates_it_twice(grpo_data, tiny_qwen25_vl_path, tmp_path):
    """Why the config refuses such checkpoints: TRL restarts its micro-batch counter on resume (if TRL
    ever resumes mid-rollout exactly, this fails and the refusal in CXMindGRPOConfig can go)."""
    full, first, resumed = run(tiny_qwen25_vl_path, grpo_data, tmp_path, stop_at=2, save_steps=2)
    assert first.generated == full.generated[:1]
    assert resumed.generated[0] == first.generated[0]  # the interrupted rollout is generated again
    assert len(first.generated) + len(resumed.generated) == len(full.generated) + 1
    assert resumed.gates["train"].steps == full.gates["train"].steps + 1  # the gate counts it twice
    assert first.micro_batches + resumed.micro_batches != full.micro_batches
