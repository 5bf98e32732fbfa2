"""GRPO step-time overhead of CXMindGRPOTrainer (gate + curriculum) over a plain ``trl.GRPOTrainer``.

Both arms train the same tiny random Qwen2.5-VL on the same phantom records (one lazy dataset object
from ``load_training_data``), with the same CuRL-VPR reward functions and weights and identical
``GRPOConfig`` values; ours adds ``curriculum="ramp"``, ``curriculum_adaptive=True`` and the accuracy
gate. After one untimed warm-up run per arm, runs alternate in one process (ABBA order: plain/ours,
then ours/plain, ...), each a fresh trainer with the same seed. A step's time is the wall clock from
one ``on_step_end`` to the next, so it covers the data loader (our sampler), generation, rewards (our
gate), the update and logging; each run's first step is dropped. Also printed: TRL's own
``step_time`` metric (``training_step`` only), the median of the per-round ratios (robust to
drifting machine load) and the mean tokens per step. The last line is ``overhead: <ratio>``
(median step time ours / plain; target <= 1.05).

The ramp spans the run, so ours serves first-stage (closed) prompts first, which are longer here
than the open ones: part of any gap is a different workload, not code.
``--curriculum mixed`` keeps plain's prompt mix and so isolates the code's own overhead.

On CPU the tiny model costs only a few hundred milliseconds of compute per step, so fixed per-step
Python work weighs far more than next to a 7B model on a GPU: read the ratio as an upper bound.

    python benchmarks/trainer_overhead.py [--rounds 20] [--steps 8] [--threads 1] [--quick]
                                          [--curriculum ramp|sequential|mixed] [--cache DIR]

Phantom data and the tiny model are built once into ``--cache`` (default ``$CXMIND_CACHE/bench``,
else ``~/.cache/cxmind/bench``) and reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import gc
import itertools
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers import logging as hf_logging
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import GRPOConfig, GRPOTrainer

from cxmind.data.build import BuildConfig, SourceSpec, build
from cxmind.data.images import ImageBudget
from cxmind.data.phantom import write_phantom_dataset
from cxmind.data.tasks import TaskConfig
from cxmind.rewards import DEFAULT_REWARD_WEIGHTS, curl_vpr_reward_funcs
from cxmind.testing import build_tiny_qwen25_vl, default_cache_dir
from cxmind.training.data import load_training_data
from cxmind.training.grpo import CXMindGRPOConfig, CXMindGRPOTrainer


class StepClock(TrainerCallback):
    """Wall time between consecutive ``on_step_end`` calls (the first from ``on_train_begin``)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def prepare(cache: Path) -> tuple[Path, Path]:
    """Phantom records and the tiny model under ``cache`` (built on first use, then reused)."""
    images = cache / "phantom-images"
    if not (images / "phantom.csv").is_file():  # written last: its presence means a complete dataset
        write_phantom_dataset(images, n_patients=24, seed=0, size=128)
    records = cache / "phantom-records"
    if not records.is_dir():  # build() renames a finished build into place
        task = TaskConfig(budget=ImageBudget(max_pixels=224 * 224), seed=0)
        build(BuildConfig(sources=[SourceSpec("phantom", images)], out=records, task=task), progress=False)
    return records, build_tiny_qwen25_vl(cache / "tiny-qwen2.5-vl", seed=0)


def common_args(output_dir: str, steps: int) -> dict[str, Any]:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        max_steps=steps,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )


def run_arm(
    arm: str, model: Path, dataset: Any, steps: int, curriculum: str = "ramp"
) -> tuple[list[float], list[float], list[float]]:
    """Train ``steps`` steps with a fresh trainer; per step (wall time, TRL step_time, tokens), warm-up
    dropped. Tokens are TRL's ``num_tokens`` increments (prompt + completion tokens of the step)."""
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="cxmind-overhead-") as out:
        values = common_args(out, steps)
        if arm == "plain":
            trainer_cls, args = GRPOTrainer, GRPOConfig(**values)
        else:
            trainer_cls = CXMindGRPOTrainer
            args = CXMindGRPOConfig(**values, curriculum=curriculum, curriculum_adaptive=True, gate=True)
        args.reward_weights = list(DEFAULT_REWARD_WEIGHTS)
        trainer = trainer_cls(
            model=str(model),
            reward_funcs=curl_vpr_reward_funcs(),
            args=args,
            train_dataset=dataset,
            callbacks=[clock],
        )
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.train()
        logs = [e for e in trainer.state.log_history if "step_time" in e]
        trl_times = [e["step_time"] for e in logs]
        tokens = [b["num_tokens"] - a["num_tokens"] for a, b in itertools.pairwise(logs)]
    if arm == "ours" and trainer.curriculum_sampler is None:
        raise RuntimeError("CXMindGRPOTrainer did not build its curriculum sampler")
    del trainer
    gc.collect()
    return clock.times[1:], trl_times[1:], tokens


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lo = int(position)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def describe(name: str, values: list[float]) -> str:
    return (
        f"{name}: median {1e3 * statistics.median(values):.1f} ms, p10 {1e3 * quantile(values, 0.1):.1f}, "
        f"p90 {1e3 * quantile(values, 0.9):.1f}, n {len(values)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="plain/ours run pairs")
    parser.add_argument("--steps", type=int, default=8, help="steps per run (the first is dropped)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (>1 stalls badly on shared cores)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="where data and model are built")
    parser.add_argument(
        "--curriculum",
        choices=["ramp", "sequential", "mixed"],
        default="ramp",
        help="ours' schedule; 'mixed' keeps plain's prompt mix, isolating code overhead from data order",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 steps (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 3
    if args.rounds < 1 or args.steps < 2:
        parser.error("need --rounds >= 1 and --steps >= 2")

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames, once per run
    torch.set_num_threads(args.threads)
    cache = args.cache or default_cache_dir() / "bench"
    start = time.perf_counter()
    records, model = prepare(cache)
    dataset = load_training_data([{"path": str(records), "task_types": ["closed", "open"]}], kind="grpo")
    print(f"data: {len(dataset)} prompts, model: {model} ({time.perf_counter() - start:.1f}s to prepare)")
    print(
        f"torch threads: {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps per arm, "
        f"ours: curriculum={args.curriculum}, adaptive, gate"
    )

    for arm in ("plain", "ours"):  # untimed: first-run costs (lazy imports, allocator, caches)
        run_arm(arm, model, dataset, 2, args.curriculum)

    wall: dict[str, list[float]] = {"plain": [], "ours": []}
    paired: list[float] = []
    trl: dict[str, list[float]] = {"plain": [], "ours": []}
    tokens: dict[str, list[float]] = {"plain": [], "ours": []}
    for r in range(args.rounds):
        medians = {}
        for arm in ("plain", "ours") if r % 2 == 0 else ("ours", "plain"):
            begin = time.perf_counter()
            times, trl_times, step_tokens = run_arm(arm, model, dataset, args.steps, args.curriculum)
            wall[arm] += times
            trl[arm] += trl_times
            tokens[arm] += step_tokens
            medians[arm] = statistics.median(times)
            print(
                f"round {r + 1}/{args.rounds} {arm:5s}: median step {1e3 * medians[arm]:.1f} ms "
                f"(run {time.perf_counter() - begin:.1f}s)",
                flush=True,
            )
        paired.append(medians["ours"] / medians["plain"])

    for arm in ("plain", "ours"):
        print(describe(f"{arm:5s} step (wall)", wall[arm]))
        print(describe(f"{arm:5s} step (TRL step_time)", trl[arm]))
        print(f"{arm:5s} tokens per step (prompt + completion): mean {statistics.mean(tokens[arm]):.0f}")
    trl_ratio = statistics.median(trl["ours"]) / statistics.median(trl["plain"])
    print(f"TRL step_time ratio: {trl_ratio:.3f}")
    spread = f"min {min(paired):.3f}, max {max(paired):.3f}"
    print(f"per-round ratios: median {statistics.median(paired):.3f}, {spread}")
    print(f"overhead: {statistics.median(wall['ours']) / statistics.median(wall['plain']):.3f}")


if __name__ == "__main__":
    main()
