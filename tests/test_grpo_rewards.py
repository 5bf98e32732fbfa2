"""The reward functions drive a real TRL GRPOTrainer on the tiny model (image prompts, CPU)."""

import pytest
from datasets import Dataset
from PIL import Image
from test_rewards import CLOSED_GOLD, OPEN_GOLD

from cxmind.format import instructions
from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, curl_vpr_reward_funcs

pytestmark = pytest.mark.slow


def rows():
    options = ["A) Pleural effusion", "B) Pneumothorax", "C) Cardiomegaly", "D) Nodule"]
    questions = [
        (
            "Which finding is present?\n" + "\n".join(options) + "\n" + instructions("closed", options),
            CLOSED_GOLD,
            "closed",
            options,
        ),
        ("List the findings on this chest X-ray. " + instructions("open"), OPEN_GOLD, "open", None),
    ]
    out = []
    for i in range(4):
        question, solution, task, opts = questions[i % 2]
        out.append(
            {
                "prompt": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
                ],
                "image": Image.new("RGB", (112, 112), color=(40 * i, 40 * i, 40 * i)),
                "solution": solution,
                "task_type": task,
                "options": opts,
            }
        )
    return out


def test_grpo_trainer_trains_with_the_four_reward_functions(tiny_qwen25_vl_path, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        max_steps=2,
        learning_rate=1e-4,
        logging_steps=1,
        report_to="none",
        reward_weights=list(DEFAULT_REWARD_WEIGHTS),
        save_strategy="no",
        seed=0,
        use_cpu=True,
        bf16=False,  # TRL 1.16 defaults to bf16, which the CPU test machine lacks
    )
    trainer = GRPOTrainer(
        model=str(tiny_qwen25_vl_path),
        reward_funcs=curl_vpr_reward_funcs(),
        args=args,
        train_dataset=Dataset.from_list(rows()),
    )
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    for name in ("format", "outcome", "think", "process"):
        assert f"rewards/{name}_reward/mean" in logged
        assert any(k.startswith(f"curl_vpr/{name}/") for k in logged), sorted(logged)
