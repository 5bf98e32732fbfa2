"""CXMindGRPOTrainer on phantom data: rewards, the gate on the gathered batch, curriculum, resume."""

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, ConditionalGate, curl_vpr_reward_funcs
from cxmind.training.data import load_training_data, plain_column
from cxmind.training.grpo import STATE_FILE, CXMindGRPOConfig, CXMindGRPOTrainer

pytestmark = pytest.mark.slow


def grpo_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        max_steps=4,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        use_cpu=True,
        bf16=False,
    )
    values.update(overrides)
    return CXMindGRPOConfig(**values)


class Recording(CXMindGRPOTrainer):
    """Records each generation batch's gathered row indices and the gate decision."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[list[int]] = []
        self.outcomes: list[list[float]] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.seen.append([int(x["row_index"]) for x in inputs])
        self.outcomes.append(rewards[:, self._gate_columns[0]].tolist())
        return rewards


def distinct_characters(completions, **kwargs):
    """A test-only reward with variance for a random model (CuRL-VPR pays 0 to its gibberish)."""
    return [len(set(c[0]["content"] if isinstance(c, list) else c)) / 16 for c in completions]


def with_variance_reward(args):
    args.reward_weights = [*DEFAULT_REWARD_WEIGHTS, 1.0]
    return dict(args=args, reward_funcs=[*curl_vpr_reward_funcs(), distinct_characters])


@pytest.fixture(scope="module")
def grpo_data(phantom_records):
    return load_training_data([{"path": str(phantom_records), "task_types": ["closed", "open"]}], kind="grpo")


def test_grpo_trains_with_gate_and_curriculum_logged(grpo_data, tiny_qwen25_vl_path, tmp_path):
    setup = with_variance_reward(grpo_args(tmp_path, curriculum="sequential"))
    trainer = Recording(model=str(tiny_qwen25_vl_path), train_dataset=grpo_data, **setup)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 4 and all(math.isfinite(e["loss"]) for e in logs)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.named_parameters())
    for key in ("curl_vpr/gate/stable", "curl_vpr/gate/ema", "curl_vpr/gate/batch_outcome"):
        assert all(key in e for e in logs), key
    for name in ("format", "outcome", "think", "process"):
        assert all(f"rewards/{name}_reward/mean" in e for e in logs)
        assert any(k.startswith(f"curl_vpr/{name}/") for e in logs for k in e)
    # the gate replays exactly from the gathered outcomes, and an unstable batch pays no think/process
    gate = ConditionalGate()
    for entry, outcomes in zip(logs, trainer.outcomes, strict=True):
        stable = gate.update(outcomes)
        assert entry["curl_vpr/gate/stable"] == float(stable)
        assert entry["curl_vpr/gate/batch_outcome"] == pytest.approx(gate.last_mean)
        assert entry["rewards/outcome_reward/mean"] == pytest.approx(sum(outcomes) / len(outcomes))
        if not stable:
            assert entry["rewards/think_reward/mean"] == 0 and entry["rewards/process_reward/mean"] == 0
    # sequential curriculum: every closed prompt of the epoch comes before any open one
    types = plain_column(grpo_data, "task_type")
    seen_types = [types[i] for batch in trainer.seen for i in batch]
    assert seen_types[0] == "closed" and set(seen_types) == {"closed"}  # 4 chunks of 2 of ~160 closed


def test_the_gate_zeroes_think_and_process_of_an_unstable_batch(grpo_data, tiny_qwen25_vl_path, tmp_path):
    model = str(tiny_qwen25_vl_path)
    trainer = CXMindGRPOTrainer(model=model, args=grpo_args(tmp_path), train_dataset=grpo_data)
    rows = [dict(grpo_data[i]) for i in range(2)]
    gold = [r["solution"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    trainer.model.train()
    first = trainer._calculate_rewards(rows, prompts, gold, [[0]] * 2)  # gold answers: outcome 1, stable
    assert trainer.gates["train"].last_stable is True and (first[:, 2:] > 0).any()
    wrong = ["<think>x</think> <answer>Z</answer>"] * 2
    second = trainer._calculate_rewards(rows, prompts, wrong, [[0]] * 2)  # accuracy fell: unstable
    assert trainer.gates["train"].last_stable is False
    assert (second[:, 2:] == 0).all()
    # evaluation has its own gate: the train EMA is untouched, also through TRL's evaluate()
    metrics = trainer.evaluate(grpo_data.select(range(4)))
    assert "eval_curl_vpr/gate/stable" in metrics and "eval_rewards/outcome_reward/mean" in metrics
    eval_steps = trainer.gates["eval"].steps
    assert trainer.gates["train"].steps == 2 and eval_steps >= 1
    train_state = trainer.gates["train"].state_dict()
    trainer.model.eval()
    trainer._calculate_rewards(rows, prompts, gold, [[0]] * 2)
    assert (
        trainer.gates["train"].state_dict() == train_state and trainer.gates["eval"].steps == eval_steps + 1
    )


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@pytest.mark.parametrize("curriculum", ["ramp"])
def test_resume_continues_the_same_order_gate_and_weights(
    grpo_data, tiny_qwen25_vl_path, tmp_path, curriculum
):
    settings = dict(
        curriculum=curriculum, curriculum_adaptive=True, max_steps=6, save_strategy="steps", save_steps=3
    )
    full = Recording(
        model=str(tiny_qwen25_vl_path),
        train_dataset=grpo_data,
        **with_variance_reward(grpo_args(tmp_path / "a", **settings)),
    )
    full.train()

    first = Recording(
        model=str(tiny_qwen25_vl_path),
        train_dataset=grpo_data,
        callbacks=[StopAt(3)],
        **with_variance_reward(grpo_args(tmp_path / "b", **settings)),
    )
    first.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["gate"]["steps"] == 3 and "curriculum" in state
    resumed = Recording(
        model=str(tiny_qwen25_vl_path),
        train_dataset=grpo_data,
        **with_variance_reward(grpo_args(tmp_path / "b", **settings)),
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert first.seen + resumed.seen == full.seen
    assert resumed.gates["train"].state_dict() == full.gates["train"].state_dict()
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_foreign_checkpoint_cannot_resume(grpo_data, tiny_qwen25_vl_path, tmp_path):
    args = grpo_args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    trainer = CXMindGRPOTrainer(model=str(tiny_qwen25_vl_path), args=args, train_dataset=grpo_data)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    (checkpoint / STATE_FILE).unlink()
    again = CXMindGRPOTrainer(
        model=str(tiny_qwen25_vl_path), args=grpo_args(tmp_path, max_steps=2), train_dataset=grpo_data
    )
    with pytest.raises(FileNotFoundError, match="was not written by CXMindGRPOTrainer"):
        again.train(resume_from_checkpoint=str(checkpoint))
