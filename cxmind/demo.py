"""``cxmind demo``: the whole method on a laptop CPU, offline, in a few minutes.

Builds the tiny Qwen2.5-VL (:mod:`cxmind.testing`) and a phantom chest X-ray set
(:mod:`cxmind.data.phantom`), writes a real recipe (``<out>/recipe.yaml``, runnable with
``cxmind train``), trains SFT → GRPO Stage I (closed) → GRPO Stage II (open) with the same code
paths as a GPU run, and evaluates the result. Every step reuses what an earlier run left in
``<out>``, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEMO_MAX_PIXELS", "demo_recipe", "run_demo"]

DEMO_MAX_PIXELS = 112 * 112  # 16 image tokens: enough for phantom findings, cheap on a CPU
DEMO_PATIENTS = 40
EVAL_TASKS = ("disease_binary", "disease_single_choice", "disease_multi_choice", "disease_open")
_CPU = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "dataloader_num_workers": 0,
    # TRL turns it on to save GPU memory; the tiny model needs none, so recomputing activations
    # would only make the CPU demo ~20% slower
    "activation_checkpointing": False,
}


def demo_recipe(model: Path, records: Path, out: Path, *, scale: float = 1.0) -> dict[str, Any]:
    """The demo's recipe (a plain dict, written to YAML). ``scale`` multiplies the step counts."""

    def steps(n: int) -> int:
        return max(2, round(n * scale))

    grpo = {
        **_CPU,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 256,
        "learning_rate": 2.0e-5,
        "lr_scheduler_type": "constant",
        "beta": 0.0,
        "temperature": 1.0,
        "logging_steps": 5,
        "save_strategy": "steps",
        "save_steps": 5,
        "save_total_limit": 1,
    }
    return {
        "model": str(model),
        "output_dir": str(out),
        "seed": 0,
        "max_pixels": DEMO_MAX_PIXELS,
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "data": [{"path": str(records), "task_types": ["closed", "open"]}],
                "args": {
                    **_CPU,
                    "per_device_train_batch_size": 8,
                    "max_steps": steps(250),
                    "learning_rate": 2.0e-3,
                    "lr_scheduler_type": "cosine",
                    "warmup_steps": 0.05,
                    "logging_steps": 25,
                    "save_strategy": "steps",
                    "save_steps": 100,
                    "save_total_limit": 1,
                },
            },
            {
                "name": "grpo_closed",
                "type": "grpo",
                "data": [{"path": str(records), "task_types": ["closed"]}],
                "args": {**grpo, "max_steps": steps(5)},
            },
            {
                "name": "grpo_open",
                "type": "grpo",
                "data": [{"path": str(records), "task_types": ["open"]}],
                "args": {**grpo, "max_steps": steps(5)},
            },
        ],
    }


def run_demo(
    out: str | Path = "cxmind-demo",
    *,
    scale: float = 1.0,
    eval_limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the evaluation results (as ``cxmind eval`` writes them).

    ``eval_limit`` evaluates only the first N test records (recorded in results.json as limited).
    """
    from cxmind.data.build import BuildConfig, SourceSpec, build
    from cxmind.data.images import ImageBudget
    from cxmind.data.phantom import write_phantom_dataset
    from cxmind.data.records import META_FILE
    from cxmind.data.tasks import TaskConfig
    from cxmind.eval.generate import GenerationConfig
    from cxmind.eval.html import markdown_table
    from cxmind.eval.run import EvalConfig, evaluate
    from cxmind.testing import build_tiny_qwen25_vl
    from cxmind.training.pipeline import run_pipeline
    from cxmind.training.recipe import load_recipe

    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(step: int, text: str) -> None:
        print(f"[{step}/5 {time.monotonic() - started:6.0f}s] {text}", flush=True)

    budget = ImageBudget(max_pixels=DEMO_MAX_PIXELS)
    say(1, "tiny Qwen2.5-VL (random weights, built offline)")
    model = build_tiny_qwen25_vl(out / "base-model")
    say(2, f"phantom chest X-rays ({DEMO_PATIENTS} patients)")
    phantom = out / "phantom"
    if not (phantom / "phantom.csv").is_file():
        write_phantom_dataset(phantom, n_patients=DEMO_PATIENTS, seed=0, size=128)
    say(3, "records: every task, patient-level splits, gold interleaved trajectories")
    records = out / "records"
    if not (records / META_FILE).is_file():
        config = BuildConfig(
            sources=[SourceSpec("phantom", phantom)], out=records, task=TaskConfig(budget=budget)
        )
        build(config, progress=progress)
    recipe_path = out / "recipe.yaml"
    recipe_path.write_text(
        "# Written by `cxmind demo`; re-run or edit it with `cxmind train "
        + str(recipe_path)
        + "`\n"
        + yaml.safe_dump(demo_recipe(model, records, out / "run", scale=scale), sort_keys=False),
        encoding="utf-8",
    )
    say(4, f"training SFT -> GRPO closed -> GRPO open ({recipe_path})")
    results = run_pipeline(load_recipe(recipe_path))
    final = results[-1]
    say(5, f"evaluation of {final.name} on the held-out test split")
    eval_out = Path(final.output_dir) / "eval"
    scores = evaluate(
        EvalConfig(
            model=final.model,
            adapter=final.adapter,
            data=records,
            out=eval_out,
            split="test",
            tasks=EVAL_TASKS,
            limit=eval_limit,
            generation=GenerationConfig(max_new_tokens=384, batch_size=16, budget=budget),
            n_bootstrap=200,
        ),
        progress=progress,
    )
    print()
    print(markdown_table(scores))
    print()
    print(f"HTML report:   {eval_out / 'report.html'}")
    print(f"results:       {eval_out / 'results.json'}")
    for result in results:
        print(f"model {result.name + ':':<13}{result.adapter or result.output_dir}")
    print(f"recipe:        {recipe_path}")
    print(f"done in {time.monotonic() - started:.0f}s")
    return scores
