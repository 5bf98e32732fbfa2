"""CXMindGRPOTrainer on phantom data: rewards, the gate on the gathered batch, curriculum, resume."""

import itertools
import json
import math
import os
import warnings

import pytest
import torch
from transformers import TrainerCallback

from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, ConditionalGate, CuRLReward, curl_vpr_reward_funcs
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
    """Records each generation batch's gathered row indices, outcomes and gate decision."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[list[int]] = []
        self.outcomes: list[list[float]] = []
        self.stable: list[bool] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.seen.append([int(x["row_index"]) for x in inputs])
        self.outcomes.append(rewards[:, self._gate_columns[0]].tolist())
        self.stable.append(self.gates["train" if self.model.training else "eval"].last_stable)
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


def parity_reward(completions, row_index, **kwargs):
    """Even rows earn a flat 0 (the adaptive curriculum skips them), odd rows alternate 0/1 within a group."""
    return [0.0 if row % 2 == 0 else float(i % 2) for i, row in enumerate(row_index)]


class ObservationRecording(Recording):
    """Also records every (indices, rewards) batch the curriculum sampler observes."""

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        self.observed, observe = [], sampler.observe

        def record(indices, rewards, num_generations):
            self.observed.append((list(indices), list(rewards)))
            observe(indices, rewards, num_generations)

        sampler.observe = record
        return sampler


def test_gradient_accumulation_keeps_the_adaptive_order_deterministic(
    phantom_records, tiny_qwen25_vl_path, tmp_path
):
    """GA=4 fetches two generation batches per optimizer step: the sampler's lag must cover them."""
    source = {"path": str(phantom_records), "task_types": ["closed", "open"], "limit": 8}
    data = load_training_data([source], kind="grpo")
    args = grpo_args(
        tmp_path,
        per_device_train_batch_size=2,
        num_generations=2,
        gradient_accumulation_steps=4,
        steps_per_generation=2,
        max_completion_length=8,
        curriculum_adaptive=True,
        reward_weights=[*DEFAULT_REWARD_WEIGHTS, 1.0],
    )
    trainer = ObservationRecording(
        model=str(tiny_qwen25_vl_path),
        args=args,
        train_dataset=data,
        reward_funcs=[*curl_vpr_reward_funcs(), parity_reward],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "expects observations" in str(w.message)]
    sampler = trainer.curriculum_sampler
    assert sampler.lag == 3 and not sampler.state_dict()["warned"]
    assert sampler.skipped_total > 0  # epoch 1 skipped the even rows epoch 0 found flat
    trained = [batch[::2] for batch in trainer.seen]
    assert len(trained) == len(trainer.observed) == 8  # 4 steps x 4 micro-batches / 2 per generation

    # the same order as a sampler that sees each observation right after its chunk trained
    replay = CXMindGRPOTrainer._get_train_sampler(trainer)
    replay.set_run_length(sampler.run_chunks)
    replayed = []
    for epoch in range(2):
        replay.set_epoch(epoch)
        stream = iter(replay)
        for _ in range(replay.chunks_per_epoch):
            if replayed:
                replay.observe(*trainer.observed[len(replayed) - 1], 2)
            block = list(itertools.islice(stream, 2 * 2 * replay.repeat_count))
            replayed.append(block[:4:2])
    assert replayed == trained


class RowOutcome(CuRLReward):
    """An outcome reward of 0 for the listed rows and 1 for the others, whatever the completion."""

    def __init__(self, zero_rows=()):
        super().__init__("outcome")
        self.zero_rows = set(zero_rows)

    def __call__(self, prompts=None, completions=None, row_index=(), **kwargs):
        return [0.0 if row in self.zero_rows else 1.0 for row in row_index]


def test_each_evaluate_starts_from_a_fresh_eval_gate(grpo_data, tiny_qwen25_vl_path, tmp_path):
    format_, _, think, process = curl_vpr_reward_funcs()
    outcome = RowOutcome()
    args = grpo_args(tmp_path, num_generations=4, per_device_eval_batch_size=4, max_completion_length=4)
    trainer = Recording(
        model=str(tiny_qwen25_vl_path),
        args=args,
        train_dataset=grpo_data,
        reward_funcs=[format_, outcome, think, process],
    )
    evaluation = grpo_data.select(range(4))  # one prompt per eval batch, in the same order each time
    first_row = evaluation[next(iter(trainer._get_eval_sampler(evaluation)))]["row_index"]
    outcome.zero_rows = {first_row}  # batch means 0, 1, 1, 1: a carried-over EMA calls batch 0 unstable

    trainer.evaluate(evaluation)
    first = trainer.stable[:]
    trainer.evaluate(evaluation)
    second = trainer.stable[len(first) :]
    assert trainer.seen[0][0] == trainer.seen[len(first)][0] == first_row
    assert first == second == [True] * 4
    assert trainer.gates["eval"].steps == 4 and trainer.gates["train"].steps == 0


def test_checkpoint_state_is_written_before_the_hub_push(grpo_data, tiny_qwen25_vl_path, tmp_path):
    """A push (hub_strategy="checkpoint") uploads the folder: it must already hold cxmind_state.json."""
    model = str(tiny_qwen25_vl_path)
    args = grpo_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer = CXMindGRPOTrainer(model=model, args=args, train_dataset=grpo_data)
    pushed = []

    def push(folder):  # the upload fails, as a crash between saving and pushing would stop the run
        pushed.append(sorted(os.listdir(folder)))
        raise RuntimeError("network down")

    trainer.args.push_to_hub = True  # set after __init__, which would create a Hub repo
    trainer._push_from_checkpoint = push
    with pytest.raises(RuntimeError, match="network down"):
        trainer.train()
    assert STATE_FILE in pushed[0] and "trainer_state.json" in pushed[0]
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert json.loads((checkpoint / STATE_FILE).read_text())["gate"] == trainer.gates["train"].state_dict()
    resumed = CXMindGRPOTrainer(model=model, args=grpo_args(tmp_path, max_steps=2), train_dataset=grpo_data)
    resumed.train(resume_from_checkpoint=str(checkpoint))  # the interrupted checkpoint resumes
    assert resumed.state.global_step == 2 and resumed.gates["train"].steps == 2


def test_fractional_epochs_end_the_ramp_at_the_last_step(phantom_records, tiny_qwen25_vl_path, tmp_path):
    """num_train_epochs=1.5 runs 18 of 24 chunks: the ramp spans those 18, not two whole epochs."""
    path = str(phantom_records)
    data = load_training_data(
        [{"path": path, "task_types": [kind], "limit": 12} for kind in ("closed", "open")], kind="grpo"
    )
    types = plain_column(data, "task_type")
    assert types == ["closed"] * 12 + ["open"] * 12
    args = grpo_args(
        tmp_path,
        per_device_train_batch_size=4,
        num_generations=2,  # 2 prompts per chunk, 12 chunks per epoch
        max_completion_length=4,
        max_steps=-1,
        num_train_epochs=1.5,
        curriculum="ramp",
        curriculum_ramp_start=0.9,  # a step: first stage before 90 % of the run, last stage after
        curriculum_ramp_end=0.9,
    )
    trainer = Recording(model=str(tiny_qwen25_vl_path), args=args, train_dataset=data)
    trainer.train()
    kinds = [{types[row] for row in batch} for batch in trainer.seen]
    assert len(kinds) == trainer.state.max_steps == 18
    # chunks 0-5 closed, 6-11 open (closed ran out), epoch 1: closed until 16.2 = 90 % of 18, then open
    assert kinds[:6] == [{"closed"}] * 6 and kinds[6:12] == [{"open"}] * 6
    assert kinds[12:17] == [{"closed"}] * 5 and kinds[17] == {"open"}
    assert trainer.state.log_history[-2]["curriculum/first_stage_share"] == 0.0
    assert trainer.curriculum_sampler.run_chunks == 18


def test_an_iterable_dataset_cannot_carry_a_curriculum(grpo_data, tiny_qwen25_vl_path, tmp_path):
    stream = grpo_data.with_format(None).to_iterable_dataset()

    def build(**settings):
        args = grpo_args(tmp_path, **settings)
        return CXMindGRPOTrainer(model=str(tiny_qwen25_vl_path), args=args, train_dataset=stream)

    with pytest.raises(ValueError, match=r"curriculum='ramp'.* needs a map-style train_dataset with a known"):
        build(curriculum="ramp")
    with pytest.raises(ValueError, match="curriculum_adaptive=True"):
        build(curriculum_adaptive=True)
    assert build().curriculum_sampler is None  # mixed, not adaptive: TRL's stream shuffle drops nothing


# -- ablation: outcome-only rewards (format + outcome; think and process weighted 0; no gate) ---------

#: The outcome-only ablation as recipe args (docs/architecture.md, "Outcome-only ablation").
OUTCOME_ONLY = {"reward_weights": [0.1, 0.9, 0.0, 0.0], "gate": False}


class HalfGold(CXMindGRPOTrainer):
    """Scores the gold trajectory in place of every other completion, so every component pays something."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_func: list[torch.Tensor] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        swapped = [
            x["solution"] if i % 2 == 0 else c
            for i, (x, c) in enumerate(zip(inputs, completions, strict=True))
        ]
        rewards = super()._calculate_rewards(inputs, prompts, swapped, completion_ids_list)
        self.per_func.append(rewards.clone())
        return rewards


def test_outcome_only_ablation_pays_format_and_outcome_only(grpo_data, tiny_qwen25_vl_path, tmp_path):
    args = grpo_args(tmp_path, max_steps=1, **OUTCOME_ONLY)
    trainer = HalfGold(model=str(tiny_qwen25_vl_path), args=args, train_dataset=grpo_data)
    assert trainer._gate_columns is None
    assert [f.component for f in trainer.reward_funcs] == ["format", "outcome", "think", "process"]
    trainer.train()
    (log,) = [e for e in trainer.state.log_history if "loss" in e]
    assert not any(k.startswith("curl_vpr/gate/") for k in log)
    # think and process are still computed and logged (not dropped), but weigh nothing in the reward
    (rewards,) = trainer.per_func
    assert (rewards[:, 2] > 0).any() and (rewards[:, 3] > 0).any()
    assert log["rewards/think_reward/mean"] == pytest.approx(rewards[:, 2].nanmean().item())
    total = 0.1 * rewards[:, 0].nan_to_num() + 0.9 * rewards[:, 1].nan_to_num()
    assert log["reward"] == pytest.approx(total.mean().item(), abs=1e-6)
    assert log["reward"] > 0


def test_outcome_only_ablation_is_plain_recipe_args(phantom_records, tiny_qwen25_vl_path, tmp_path):
    from cxmind.training.recipe import Recipe

    stage = {
        "name": "grpo_closed",
        "type": "grpo",
        "data": [str(phantom_records)],
        "args": {**OUTCOME_ONLY, "use_cpu": True, "bf16": False},
    }
    recipe = Recipe.from_dict(
        {"model": str(tiny_qwen25_vl_path), "output_dir": str(tmp_path), "stages": [stage]}
    )
    config = recipe.stage_config(recipe.stages[0])
    assert (config.reward_weights, config.gate) == ([0.1, 0.9, 0.0, 0.0], False)
    # everything else stays at the CuRL-VPR defaults
    default = CXMindGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (config.reward_mode, config.w_closed, config.w_open) == (
        default.reward_mode,
        default.w_closed,
        default.w_open,
    )
    # the same format and outcome weights as the full CuRL-VPR reward
    assert list(DEFAULT_REWARD_WEIGHTS[:2]) == OUTCOME_ONLY["reward_weights"][:2]
