"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: GRPO on 2 CPU ranks.

Each rank writes what it saw (its sampler's chunks, its local row indices, the gathered outcomes
and the gate decisions) to ``<out>/rank<r>.json`` for the test to compare.
"""

import json
import os
import sys

from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, curl_vpr_reward_funcs
from cxmind.training.data import load_training_data
from cxmind.training.grpo import CXMindGRPOConfig, CXMindGRPOTrainer


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
    data = load_training_data([{"path": records, "task_types": ["closed", "open"]}], kind="grpo")
    args = CXMindGRPOConfig(
        output_dir=out,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=3,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=3,
        seed=0,
        use_cpu=True,
        bf16=False,
        curriculum="ramp",
        curriculum_adaptive=True,
        reward_weights=[*DEFAULT_REWARD_WEIGHTS, 1.0],
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=data,
        reward_funcs=[*curl_vpr_reward_funcs(), distinct_characters],
    )
    trainer.train()
    trainer.save_model(out)
    rank = int(os.environ["RANK"])
    trainer.record["sampler"] = trainer.curriculum_sampler.state_dict()
    trainer.record["world_size"] = trainer.accelerator.num_processes
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(trainer.record, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
