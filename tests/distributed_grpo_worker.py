"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: GRPO on 2 CPU ranks.

Each rank writes what it saw (its sampler's chunks, its local row indices, the gathered outcomes
and the gate decisions) to ``<out>/rank<r>.json`` for the test to compare.

The outcome reward is scripted per rank and generation batch (:data:`OUTCOMES`): rank 0 sees high
outcomes, rank 1 low ones, so a gate fed one rank's half would decide differently from the gate fed
the gathered batch — the test can tell them apart. Gradient accumulation (4) spans two generation
batches (steps_per_generation 2), so the sampler's look-ahead covers a whole optimizer step.
"""

import json
import os
import sys

from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, CuRLReward, curl_vpr_reward_funcs
from cxmind.training.data import load_training_data
from cxmind.training.grpo import CXMindGRPOConfig, CXMindGRPOTrainer

# mean outcome of (rank 0, rank 1) per generation batch. The gathered means 0.5, 0.6, 0.4, 0.9 gate
# T, T, F, T; rank 0's half alone would gate T, F, F, T and rank 1's T, T, T, T.
OUTCOMES = [(1.0, 0.0), (0.8, 0.4), (0.6, 0.2), (0.9, 0.9)]


class ScriptedOutcome(CuRLReward):
    """The gate's outcome column, paying every completion of a rank's batch the scripted value."""

    def __init__(self, rank: int):
        super().__init__("outcome")
        self.rank, self.calls = rank, 0

    def __call__(self, prompts=None, completions=None, **kwargs):
        value = OUTCOMES[self.calls % len(OUTCOMES)][self.rank]
        self.calls += 1
        return [value] * len(completions)


def distinct_characters(completions, **kwargs):  # reward variance for a random model
    return [len(set(c[0]["content"] if isinstance(c, list) else c)) / 16 for c in completions]


class Recording(CXMindGRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {"local": [], "gathered_outcomes": [], "stable": []}

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.record["local"].append([int(x["row_index"]) for x in inputs])
        self.record["gathered_outcomes"].append(rewards[:, self._gate_columns[0]].tolist())
        self.record["stable"].append(self.gates["train"].last_stable)
        return rewards


def main(out: str, records: str, model: str) -> None:
    rank = int(os.environ["RANK"])
    data = load_training_data([{"path": records, "task_types": ["closed", "open"]}], kind="grpo")
    args = CXMindGRPOConfig(
        output_dir=out,
        per_device_train_batch_size=2,
        num_generations=2,
        gradient_accumulation_steps=4,
        steps_per_generation=2,
        max_completion_length=12,
        max_steps=2,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=2,
        seed=0,
        use_cpu=True,
        bf16=False,
        curriculum="ramp",
        curriculum_adaptive=True,
        reward_weights=[*DEFAULT_REWARD_WEIGHTS, 1.0],
    )
    format_, _, think, process = curl_vpr_reward_funcs()
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=data,
        reward_funcs=[format_, ScriptedOutcome(rank), think, process, distinct_characters],
    )
    trainer.train()
    trainer.save_model(out)
    trainer.record["sampler"] = trainer.curriculum_sampler.state_dict()
    trainer.record["world_size"] = trainer.accelerator.num_processes
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(trainer.record, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
