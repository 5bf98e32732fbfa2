"""GRPO the CX-Mind way: TRL's ``GRPOTrainer`` plus the CuRL-VPR gate and a curriculum sampler.

Two private TRL hooks are overridden, each in a few lines (``tests/test_trl_hooks.py`` fails
loudly if TRL changes their signatures):

- ``_calculate_rewards`` returns the rewards of the *gathered* generation batch (every process
  holds the same tensor). The gate decides there, from the batch's mean outcome, and zeroes the
  think and process columns of an unstable batch — so every process takes the same decision,
  equal to a single-process computation on the same batch (docs/rewards.md §4). The curriculum sampler's
  statistics are fed from the same gathered batch.
- ``_get_train_sampler`` returns a :class:`~cxmind.training.curriculum.CurriculumSampler`, which
  keeps TRL's ``RepeatSampler`` batch geometry.

Gate and sampler state go into ``cxmind_state.json`` in every checkpoint (the pattern TRL uses
for its adaptive entropy state) and are restored on resume.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from cxmind.rewards import ConditionalGate, CuRLReward, curl_vpr_reward_funcs
from cxmind.rewards.functions import DEFAULT_REWARD_WEIGHTS
from cxmind.rewards.gate import DEFAULT_EMA_ALPHA, DEFAULT_MARGIN
from cxmind.rewards.scoring import DEFAULT_W_CLOSED, DEFAULT_W_OPEN, MODES
from cxmind.rewards.similarity import DEFAULT_ALPHA
from cxmind.training.checkpoint import ConvertedCheckpointMixin
from cxmind.training.curriculum import CurriculumSampler
from cxmind.training.data import plain_column

__all__ = ["STATE_FILE", "CXMindGRPOConfig", "CXMindGRPOTrainer"]

STATE_FILE = "cxmind_state.json"
_GATED = ("think", "process")


@dataclass
class CXMindGRPOConfig(GRPOConfig):
    """``trl.GRPOConfig`` plus the CuRL-VPR reward, gate and curriculum knobs (all TRL options remain).

    When ``reward_funcs`` are not passed to the trainer, the four CuRL-VPR components are built from
    ``reward_mode``/``w_closed``/``w_open``/``think_alpha`` and ``reward_weights`` defaults to
    (format 0.1, outcome 0.9, think 1, process 1).
    """

    reward_mode: str = field(default="fixed", metadata={"help": "CuRL-VPR parsing: 'fixed' or 'reference'."})
    w_closed: float = field(
        default=DEFAULT_W_CLOSED, metadata={"help": "Process reward of a closed question."}
    )
    w_open: float = field(default=DEFAULT_W_OPEN, metadata={"help": "Process reward of an open diagnosis."})
    think_alpha: float = field(
        default=DEFAULT_ALPHA, metadata={"help": "BLEU-1 share of the think similarity."}
    )
    gate: bool = field(
        default=True, metadata={"help": "Gate think/process rewards on batch accuracy (docs/rewards.md §4)."}
    )
    gate_ema_alpha: float = field(
        default=DEFAULT_EMA_ALPHA, metadata={"help": "EMA rate of the gate's accuracy."}
    )
    gate_margin: float = field(
        default=DEFAULT_MARGIN, metadata={"help": "Batch accuracy must reach EMA + margin."}
    )
    curriculum: str = field(
        default="mixed",
        metadata={
            "help": "Prompt order: 'mixed' (shuffled), 'sequential' (each epoch: stages in order), or 'ramp' "
            "(first-stage share decays to the last over curriculum_ramp_start..end of the run).",
            "choices": ["mixed", "sequential", "ramp"],
        },
    )
    curriculum_stage_order: list[str] = field(
        default_factory=lambda: ["closed", "open"], metadata={"help": "Task types in curriculum order."}
    )
    curriculum_ramp_start: float = field(
        default=0.0, metadata={"help": "Ramp start, as a fraction of the run."}
    )
    curriculum_ramp_end: float = field(default=1.0, metadata={"help": "Ramp end, as a fraction of the run."})
    curriculum_adaptive: bool = field(
        default=False,
        metadata={"help": "Skip prompts whose recent groups had zero reward variance (no GRPO signal)."},
    )
    curriculum_saturation_patience: int = field(
        default=1, metadata={"help": "Zero-variance groups in a row before a prompt is skipped."}
    )
    curriculum_revisit_after: int = field(
        default=2, metadata={"help": "Epochs after which a skipped prompt returns."}
    )

    def __post_init__(self) -> None:
        if self.reward_mode not in MODES:
            raise ValueError(f"reward_mode must be one of {MODES}, got {self.reward_mode!r}")
        super().__post_init__()


class CXMindGRPOTrainer(ConvertedCheckpointMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` with CuRL-VPR rewards, the accuracy gate and the curriculum sampler."""

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: CXMindGRPOConfig | None = None,
        *pos: Any,
        **kwargs: Any,
    ) -> None:
        if args is None:
            raise ValueError("CXMindGRPOTrainer needs `args=CXMindGRPOConfig(...)`")
        if reward_funcs is None:
            reward_funcs = curl_vpr_reward_funcs(
                mode=args.reward_mode, w_closed=args.w_closed, w_open=args.w_open, alpha=args.think_alpha
            )
            if args.reward_weights is None:
                args.reward_weights = list(DEFAULT_REWARD_WEIGHTS)
        super().__init__(model, reward_funcs, args, *pos, **kwargs)
        self._gate_columns = self._find_gate_columns() if getattr(args, "gate", False) else None
        self.gates = {
            mode: ConditionalGate(
                ema_alpha=getattr(args, "gate_ema_alpha", DEFAULT_EMA_ALPHA),
                margin=getattr(args, "gate_margin", DEFAULT_MARGIN),
            )
            for mode in ("train", "eval")
        }
        self.curriculum_sampler: CurriculumSampler | None = None

    # -- gate ---------------------------------------------------------------------------------

    def _find_gate_columns(self) -> tuple[int, list[int]]:
        """(outcome column, think/process columns) among the reward functions; error if no outcome."""
        components = {f.component: i for i, f in enumerate(self.reward_funcs) if isinstance(f, CuRLReward)}
        if "outcome" not in components:
            raise ValueError(
                "gate=True needs the CuRL-VPR outcome reward among reward_funcs (cxmind.rewards.CuRLReward"
                "('outcome')); add it or set gate=False"
            )
        return components["outcome"], [components[c] for c in _GATED if c in components]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        if self._gate_columns is not None:
            outcome_column, gated_columns = self._gate_columns
            gate = self.gates[mode]
            stable = gate.update(rewards[:, outcome_column].tolist())
            if not stable:
                for column in gated_columns:
                    values = rewards[:, column]
                    rewards[:, column] = torch.where(torch.isnan(values), values, torch.zeros_like(values))
            metrics["curl_vpr/gate/stable"].append(float(stable))
            if gate.ema is not None:
                metrics["curl_vpr/gate/ema"].append(gate.ema)
            if gate.last_mean is not None:
                metrics["curl_vpr/gate/batch_outcome"].append(gate.last_mean)
        if mode == "train" and self.curriculum_sampler is not None and self.curriculum_sampler.adaptive:
            self._observe_for_curriculum(inputs, rewards)
        if mode == "train" and self.curriculum_sampler is not None:
            for name, value in self.curriculum_sampler.stats().items():
                metrics[name].append(float(value))
        return rewards

    def _observe_for_curriculum(self, inputs: list[dict[str, Any]], rewards: torch.Tensor) -> None:
        if "row_index" not in inputs[0]:
            raise ValueError(
                "curriculum_adaptive needs a 'row_index' column (dataset row number); "
                "cxmind.training.data.load_training_data adds it"
            )
        local = torch.tensor([int(x["row_index"]) for x in inputs], device=rewards.device)
        indices = self.accelerator.gather(local).tolist()
        weights = self.reward_weights.to(rewards.device)
        totals = (rewards * weights.unsqueeze(0)).nansum(dim=1)
        totals[torch.isnan(rewards).all(dim=1)] = math.nan
        self.curriculum_sampler.observe(indices, totals.tolist(), self.num_generations)

    # -- curriculum ---------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        args = self.args
        task_types = plain_column(dataset, "task_type") or ["other"] * len(dataset)
        batch_size = args.generation_batch_size // self.num_generations
        repeat_count = self.num_iterations * args.steps_per_generation
        self.curriculum_sampler = CurriculumSampler(
            task_types,
            mini_repeat_count=self.num_generations,
            batch_size=batch_size,
            repeat_count=repeat_count,
            schedule=getattr(args, "curriculum", "mixed"),
            stage_order=tuple(getattr(args, "curriculum_stage_order", ("closed", "open"))),
            ramp_start=getattr(args, "curriculum_ramp_start", 0.0),
            ramp_end=getattr(args, "curriculum_ramp_end", 1.0),
            num_epochs=self._sampler_epochs(len(task_types) // batch_size, repeat_count),
            adaptive=getattr(args, "curriculum_adaptive", False),
            saturation_patience=getattr(args, "curriculum_saturation_patience", 1),
            revisit_after=getattr(args, "curriculum_revisit_after", 2),
            lag=2 + args.dataloader_num_workers * (args.dataloader_prefetch_factor or 2),
            shuffle=self.shuffle_dataset,
            seed=args.seed,
        )
        return self.curriculum_sampler

    def _sampler_epochs(self, chunks_per_epoch: int, repeat_count: int) -> int:
        """Epochs the run will take (the ramp spans them all)."""
        args = self.args
        if args.max_steps > 0 and chunks_per_epoch > 0:
            batches = args.max_steps * args.gradient_accumulation_steps  # data-loader batches of the run
            chunks = math.ceil(batches / repeat_count)
            return max(1, math.ceil(chunks / chunks_per_epoch))
        return max(1, math.ceil(args.num_train_epochs))

    # -- checkpoint state -----------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            state = {"gate": self.gates["train"].state_dict()}
            if self.curriculum_sampler is not None:
                state["curriculum"] = self.curriculum_sampler.state_dict()
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(state, handle)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: {checkpoint} was not written by CXMindGRPOTrainer, so the gate and "
                "curriculum cannot resume; start a new run or resume from a cxmind checkpoint"
            )
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        self.gates["train"].load_state_dict(state["gate"])
        if self.curriculum_sampler is not None and "curriculum" in state:
            self.curriculum_sampler.load_state_dict(state["curriculum"])
