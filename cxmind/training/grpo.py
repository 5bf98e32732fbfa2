"""GRPO the CX-Mind way: TRL's ``GRPOTrainer`` plus the CuRL-VPR gate and a curriculum sampler.

Two private TRL hooks are overridden, each in a few lines (``tests/test_trl_hooks.py`` fails
loudly if TRL changes their signatures):

- ``_calculate_rewards`` returns the rewards of the *gathered* generation batch (every process
  holds the same tensor). The gate decides there, from the batch's mean outcome, and zeroes the
  think and process columns of an unstable batch — so every process takes the same decision,
  equal to a single-process computation on the same batch (docs/rewards.md §4). The curriculum sampler's
  statistics are fed from the same gathered batch.
- ``_get_train_sampler`` returns a :class:`~cxmind.training.curriculum.CurriculumSampler`, which
  keeps TRL's ``RepeatSampler`` batch geometry; ``set_initial_training_values`` hands it the run's
  real length (the Trainer's ``max_steps``) so the ramp ends with the run.

Gate and sampler state go into ``cxmind_state.json`` in every checkpoint (the pattern TRL uses
for its adaptive entropy state), written before the parent saves (and pushes) the checkpoint, and
are restored on resume. Each ``evaluate()`` starts from a fresh eval gate.

The console shows one line per log step — reward, outcome, gate, loss, lr, time
(:mod:`cxmind.training.console`); the full metrics go to the ``report_to`` backends and
``trainer.state.log_history``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from cxmind.errors import MissingFileError
from cxmind.rewards import ConditionalGate, CuRLReward, curl_vpr_reward_funcs
from cxmind.rewards.functions import DEFAULT_REWARD_WEIGHTS
from cxmind.rewards.gate import DEFAULT_EMA_ALPHA, DEFAULT_MARGIN
from cxmind.rewards.scoring import DEFAULT_W_CLOSED, DEFAULT_W_OPEN, MODES
from cxmind.rewards.similarity import DEFAULT_ALPHA
from cxmind.training.checkpoint import ConvertedCheckpointMixin
from cxmind.training.console import (
    GRPO_FIELDS,
    ActivationCheckpointingArgs,
    quiet_dependency_aliases,
    use_compact_console,
)
from cxmind.training.curriculum import CurriculumSampler, lookahead_lag
from cxmind.training.data import plain_column

__all__ = ["STATE_FILE", "CXMindGRPOConfig", "CXMindGRPOTrainer"]

STATE_FILE = "cxmind_state.json"
_GATED = ("think", "process")


@dataclass
class CXMindGRPOConfig(ActivationCheckpointingArgs, GRPOConfig):
    """``trl.GRPOConfig`` plus the CuRL-VPR reward, gate and curriculum knobs (all TRL options remain).

    When ``reward_funcs`` are not passed to the trainer, the four CuRL-VPR components are built from
    ``reward_mode``/``w_closed``/``w_open``/``think_alpha`` and ``reward_weights`` defaults to
    (format 0.1, outcome 0.9, think 1, process 1). Activation checkpointing is on by default, set
    under its transformers 5 name (:class:`~cxmind.training.console.ActivationCheckpointingArgs`).
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
        self._check_checkpoints_at_rollout_boundaries()

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps in one rollout: the steps that consume one generation batch, reused
        ``num_iterations`` times, rounded up to whole steps when a step spans several rollouts.

        TRL's ``_prepare_inputs`` generates when its micro-batch counter ``_step`` is a multiple of
        ``steps_per_generation * num_iterations`` and an optimizer step is
        ``gradient_accumulation_steps`` micro-batches, so ``n`` steps end on a rollout boundary iff
        ``n * gradient_accumulation_steps`` is a multiple of ``steps_per_generation * num_iterations``.
        The smallest such ``n`` is ``lcm(gas, spg * num_iterations) / gas``.
        """
        from math import gcd

        micro_batches = self.steps_per_generation * self.num_iterations
        return micro_batches // gcd(micro_batches, self.gradient_accumulation_steps)

    def _check_checkpoints_at_rollout_boundaries(self) -> None:
        """Refuse checkpoints that fall inside a rollout: they cannot be resumed exactly.

        TRL does not save its micro-batch counter or the buffered generation batch, so a run resumed
        from a mid-rollout checkpoint generates the interrupted rollout a second time (the gate and
        the curriculum count it twice) and every later rollout starts at a shifted step.
        """
        unit = self.steps_per_rollout
        if unit == 1:
            return
        strategy = str(getattr(self.save_strategy, "value", self.save_strategy))
        if strategy == "steps":
            key, every = "save_steps", self.save_steps
        elif strategy == "best" and str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "steps":
            key, every = "eval_steps", self.eval_steps  # save_strategy "best" saves only at evaluations
        else:
            return  # "no", or per epoch: an epoch is a whole number of rollouts
        spg, iterations, accumulation = (
            self.steps_per_generation,
            self.num_iterations,
            self.gradient_accumulation_steps,
        )
        why = (
            f"a rollout (one generation batch, used num_iterations={iterations} times) spans "
            f"steps_per_generation × num_iterations = {spg} × {iterations} = {spg * iterations} "
            f"micro-batches and an optimizer step gradient_accumulation_steps = {accumulation}, so a rollout "
            f"ends every {unit} optimizer steps; TRL resumes exactly only there (it restarts its micro-batch "
            "counter, so a mid-rollout checkpoint would generate that rollout again and shift every later "
            "one)"
        )
        if (spg * iterations) % accumulation:
            raise ValueError(
                f"checkpoints every {key} need gradient_accumulation_steps ({accumulation}) to divide "
                f"steps_per_generation × num_iterations ({spg} × {iterations}): {why}, but an epoch may end "
                "with a shorter optimizer step, after which the boundaries move; make steps_per_generation "
                "a multiple of gradient_accumulation_steps, or save_strategy 'epoch'"
            )
        if every < 1 or every != int(every):
            raise ValueError(
                f"{key}={every} is a fraction of the run, which cannot be kept on rollout boundaries: {why}; "
                f"set {key} to a multiple of {unit} optimizer steps"
            )
        every = int(every)
        if every % unit:
            below, above = every // unit * unit, (every // unit + 1) * unit
            nearest = f"{below} or {above}" if below else str(above)
            raise ValueError(
                f"{key}={every} is not a whole number of rollouts: {why}; set {key} to a multiple of "
                f"{unit}, e.g. {nearest}"
            )


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
        quiet_dependency_aliases()
        super().__init__(model, reward_funcs, args, *pos, **kwargs)
        use_compact_console(self, GRPO_FIELDS)
        self._check_map_style(self.train_dataset)
        self._gate_columns = self._find_gate_columns() if getattr(args, "gate", False) else None
        self.gates = {mode: self._new_gate() for mode in ("train", "eval")}
        self.curriculum_sampler: CurriculumSampler | None = None

    def _check_map_style(self, dataset: Any) -> None:
        """TRL streams an iterable dataset without a sampler: refuse it rather than drop the curriculum."""
        args = self.args
        schedule, adaptive = getattr(args, "curriculum", "mixed"), getattr(args, "curriculum_adaptive", False)
        streamed = isinstance(dataset, (datasets.IterableDataset, torch.utils.data.IterableDataset))
        if streamed and (schedule != "mixed" or adaptive):
            raise ValueError(
                f"curriculum={schedule!r} (curriculum_adaptive={adaptive}) needs a map-style train_dataset "
                "with a known length: the CurriculumSampler orders rows by index, and TRL streams a "
                f"{type(dataset).__name__} without any sampler, so the curriculum would be silently dropped. "
                "Load the data without streaming (e.g. cxmind.training.data.load_training_data or "
                "datasets.Dataset.from_generator), or set curriculum='mixed' and curriculum_adaptive=False"
            )

    def _new_gate(self) -> ConditionalGate:
        return ConditionalGate(
            ema_alpha=getattr(self.args, "gate_ema_alpha", DEFAULT_EMA_ALPHA),
            margin=getattr(self.args, "gate_margin", DEFAULT_MARGIN),
        )

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

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Every evaluation starts from a fresh eval gate (its first batch is stable), so runs compare."""
        self.gates["eval"] = self._new_gate()
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

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
            adaptive=getattr(args, "curriculum_adaptive", False),
            saturation_patience=getattr(args, "curriculum_saturation_patience", 1),
            revisit_after=getattr(args, "curriculum_revisit_after", 2),
            # batches drawn past the first untrained one: a whole optimizer step (transformers'
            # get_batch_samples), accelerate's one-batch prefetch, and the worker prefetch queue
            lag=lookahead_lag(
                args.gradient_accumulation_steps
                + args.dataloader_num_workers * (args.dataloader_prefetch_factor or 2),
                repeat_count,
            ),
            shuffle=self.shuffle_dataset,
            seed=args.seed,
        )
        return self.curriculum_sampler

    def set_initial_training_values(self, args, dataloader):
        """The Trainer's own run length (``max_steps``, also for fractional epochs) sets the ramp's length."""
        values = super().set_initial_training_values(args, dataloader)
        _, steps_per_epoch, _, _, _, _, max_steps = values  # unpacking fails loudly if the tuple changes
        sampler = self.curriculum_sampler
        if sampler is not None and sampler.chunks_per_epoch > 0:
            # an epoch is chunks_per_epoch * repeat_count batches per rank, steps_per_epoch optimizer steps
            epoch_batches = sampler.chunks_per_epoch * sampler.repeat_count
            full_epochs, steps = divmod(max_steps, steps_per_epoch)
            last_batches = min(steps * args.gradient_accumulation_steps, epoch_batches)
            chunks = full_epochs * sampler.chunks_per_epoch + math.ceil(last_batches / sampler.repeat_count)
            sampler.set_run_length(max(1, chunks))
        return values

    # -- checkpoint state -----------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        # Written first: the parent pushes the folder to the Hub (hub_strategy="checkpoint") and writes
        # trainer_state.json inside this call, so neither a push nor a finished-looking checkpoint lacks it.
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            state = {"gate": self.gates["train"].state_dict()}
            if self.curriculum_sampler is not None:
                state["curriculum"] = self.curriculum_sampler.state_dict()
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as handle:
                json.dump(state, handle)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise MissingFileError(
                f"{path} is missing: {checkpoint} was not written by CXMindGRPOTrainer, so the gate and "
                "curriculum cannot resume; start a new run or resume from a cxmind checkpoint"
            )
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        self.gates["train"].load_state_dict(state["gate"])
        if self.curriculum_sampler is not None and "curriculum" in state:
            self.curriculum_sampler.load_state_dict(state["curriculum"])
