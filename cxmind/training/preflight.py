"""Check a recipe against the launch it is meant for, before hours of queueing and loading.

TRL validates a ``GRPOConfig`` when it is built, but several constraints depend on the launch — the
number of processes, DeepSpeed/FSDP, the GPUs' memory — and TRL (or vLLM, or DeepSpeed) only trips on
them after the model is loaded, sometimes by hanging. :func:`check_recipe` repeats TRL 1.16's batch
checks with the real world size and adds the launch-dependent ones; every :class:`Finding` names the
recipe key (in override syntax, ``stages.<stage>.<arg>``) and says what to change.

Memory figures are deliberately rough (documented on :func:`training_state_gib`): they catch
configurations that cannot fit, not ones that are merely tight, so memory problems beyond vLLM's own
weights are warnings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cxmind.training.recipe import Recipe, RecipeError, StageSpec

__all__ = [
    "KNOWN_MODELS",
    "Finding",
    "GRPOGeometry",
    "LaunchSettings",
    "ModelSpec",
    "assume_training_gpu",
    "check_recipe",
    "format_findings",
    "grpo_geometry",
    "image_tokens",
    "model_spec",
    "raise_for_errors",
    "training_state_gib",
    "vllm_weights_gib",
]

GIB = 2**30
#: Qwen2(.5)-VL: 14-px patches merged 2×2 → one token per 28×28 = 784 pixels.
PIXELS_PER_TOKEN = 784
#: <|vision_start|> and <|vision_end|> around every image's pads.
VISION_MARKERS = 2
#: Tokens allowed for the chat template, system prompt and question around the image.
QUESTION_ALLOWANCE = 512
#: Qwen2.5-VL's image processor default ``max_pixels`` (used when a recipe sets none).
DEFAULT_MAX_PIXELS = 12845056
#: Bytes per parameter of full fine-tuning with AdamW in bf16 mixed precision: bf16 weights 2 + bf16
#: grads 2 + fp32 master weights 4 + Adam moments 8.
FULL_FT_BYTES = 16
BF16_BYTES = 2
#: NF4 weights with double quantisation, plus the unquantised embeddings, norms and vision parts.
QLORA_BYTES = 0.6
#: Below this much KV-cache room vLLM starts but generates a few sequences at a time, if at all.
MIN_KV_CACHE_GIB = 2.0
#: Learning rate above which full-parameter GRPO is almost certainly a typo (the paper uses 1e-6).
MAX_FULL_FT_GRPO_LR = 1e-4


@dataclass(frozen=True)
class Finding:
    """One problem: ``key`` is the recipe key to change, ``message`` says how."""

    level: Literal["error", "warning"]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


@dataclass(frozen=True)
class ModelSpec:
    """What the checks need of an architecture: parameter count and shapes that bound TP and LoRA."""

    name: str
    params: float
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vision_heads: int = 16

    def lora_params(self, r: int) -> float:
        """LoRA parameters on every linear of the language model ("all-linear"; an upper bound otherwise)."""
        kv_dim = self.kv_heads * (self.hidden // self.heads)
        # q, o: h→h; k, v: h→kv_dim; gate, up: h→I; down: I→h — each adds r × (in + out)
        per_layer = 9 * self.hidden + 2 * kv_dim + 3 * self.intermediate
        return float(r * per_layer * self.layers)

    def tp_sizes(self, limit: int = 64) -> list[int]:
        """Tensor-parallel sizes vLLM accepts: they must divide the text and the vision attention heads."""
        return [t for t in range(1, limit + 1) if self.heads % t == 0 and self.vision_heads % t == 0]


#: Qwen2.5-VL sizes (from the Hub configs; parameter counts include the ~0.67B vision tower).
KNOWN_MODELS: dict[str, ModelSpec] = {
    "3b": ModelSpec("Qwen2.5-VL-3B", 3.8e9, 2048, 36, 11008, 16, 2),
    "7b": ModelSpec("Qwen2.5-VL-7B", 8.3e9, 3584, 28, 18944, 28, 4),
    "32b": ModelSpec("Qwen2.5-VL-32B", 33.5e9, 5120, 64, 27648, 40, 8),
    "72b": ModelSpec("Qwen2.5-VL-72B", 73.4e9, 8192, 80, 29568, 64, 8),
}


def model_spec(model: str) -> ModelSpec | None:
    """The spec of a Qwen2.5-VL size named in ``model`` (a Hub id or a path), or None when unknown."""
    match = re.search(r"qwen2\.5-vl-(\d+)b", model, flags=re.IGNORECASE)
    return KNOWN_MODELS.get(f"{match.group(1)}b") if match else None


def image_tokens(max_pixels: int | None) -> int:
    """Tokens of the largest image a budget allows, vision markers included."""
    return (max_pixels or DEFAULT_MAX_PIXELS) // PIXELS_PER_TOKEN + VISION_MARKERS


@dataclass(frozen=True)
class GRPOGeometry:
    """A GRPO stage's batch as TRL will see it with ``num_processes`` processes."""

    per_device_train_batch_size: int
    num_processes: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    generation_batch_size: int
    num_generations: int
    num_iterations: int

    @property
    def prompts_per_rollout(self) -> float:
        return self.generation_batch_size / self.num_generations

    @property
    def completions_per_step(self) -> int:
        """Completions behind one optimizer step."""
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @property
    def steps_per_rollout(self) -> float:
        """Optimizer steps taken on one generation batch (TRL reuses it ``num_iterations`` times)."""
        return self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps


def grpo_geometry(config: Any, args: Mapping[str, Any], num_processes: int) -> GRPOGeometry:
    """The stage's geometry at ``num_processes``, resolved as ``GRPOConfig.__post_init__`` does.

    ``args`` are the stage's raw recipe args: the parsed ``config`` already filled in
    ``generation_batch_size``/``steps_per_generation`` for the world size of the parsing process,
    so which of the two the user set is read from ``args``.
    """
    per_device = int(config.per_device_train_batch_size)
    accumulation = int(config.gradient_accumulation_steps)
    global_micro = per_device * num_processes
    generation_batch_size = args.get("generation_batch_size")
    steps = args.get("steps_per_generation")
    if generation_batch_size is not None:
        steps = int(generation_batch_size) // global_micro
        total = int(generation_batch_size)
    else:
        steps = int(steps) if steps is not None else accumulation
        total = global_micro * steps
    return GRPOGeometry(
        per_device_train_batch_size=per_device,
        num_processes=num_processes,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=steps,
        generation_batch_size=total,
        num_generations=int(config.num_generations),
        num_iterations=int(config.num_iterations),
    )


@dataclass(frozen=True)
class LaunchSettings:
    """How a run is launched, as :func:`check_recipe` needs it (``check_recipe(r, **vars(settings))``)."""

    num_processes: int = 1
    deepspeed_stage: int | None = None
    fsdp: bool = False

    @classmethod
    def from_accelerate_config(cls, path: str | Path, num_processes: int | None = None) -> LaunchSettings:
        """Read an ``accelerate launch --config_file`` YAML/JSON (``num_processes`` overrides its value)."""
        from accelerate.commands.config.config_args import load_config_from_file

        config = load_config_from_file(str(path))
        kind = str(getattr(config.distributed_type, "value", config.distributed_type))
        stage = None
        if kind == "DEEPSPEED":
            ds = config.deepspeed_config or {}
            stage = ds.get("zero_stage")
            if stage is None and ds.get("deepspeed_config_file"):
                stage = _zero_stage_of(ds["deepspeed_config_file"])
        return cls(
            num_processes=int(num_processes or config.num_processes or 1),
            deepspeed_stage=None if stage is None else int(stage),
            fsdp=kind == "FSDP",
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LaunchSettings:
        """Read the variables ``accelerate launch`` sets in each process (for a check inside the run)."""
        env = os.environ if environ is None else environ
        stage: int | None = None
        if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
                stage = int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
            elif env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
                stage = _zero_stage_of(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
        return cls(
            num_processes=int(env.get("WORLD_SIZE", "1")),
            deepspeed_stage=stage,
            fsdp=env.get("ACCELERATE_USE_FSDP", "").lower() == "true",
        )


def local_gpu_memory_gib() -> float | None:
    """Memory of this machine's first GPU (None without CUDA): what a check inside the run compares with."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def _zero_stage_of(path: str) -> int | None:
    with open(path, encoding="utf-8") as handle:
        stage = json.load(handle).get("zero_optimization", {}).get("stage")
    return None if stage in (None, "auto") else int(stage)


@contextlib.contextmanager
def assume_training_gpu() -> Iterator[None]:
    """Parse configs as on the training GPUs.

    ``TrainingArguments`` refuses ``bf16``/``tf32`` on a machine without such a GPU, and TRL turns
    ``bf16`` on by default, so without this no GPU recipe could be checked on a login node or in CI.
    """
    from unittest import mock

    import transformers.training_args as training_args

    with (
        mock.patch.object(training_args, "is_torch_bf16_gpu_available", lambda *a, **k: True),
        mock.patch.object(training_args, "is_torch_tf32_available", lambda *a, **k: True),
        mock.patch.object(training_args, "enable_tf32", lambda *a, **k: None),
    ):
        yield


# -- memory estimates -----------------------------------------------------------------------------


def _shards(num_processes: int, deepspeed_stage: int | None, fsdp: bool) -> tuple[int, int, int]:
    """How many ways (weights, grads, optimizer state) are sharded."""
    if fsdp or deepspeed_stage == 3:
        return num_processes, num_processes, num_processes
    if deepspeed_stage == 2:
        return 1, num_processes, num_processes
    if deepspeed_stage == 1:
        return 1, 1, num_processes
    return 1, 1, 1


def training_state_gib(
    spec: ModelSpec,
    recipe: Recipe,
    *,
    num_processes: int,
    deepspeed_stage: int | None = None,
    fsdp: bool = False,
    reference_model: bool = False,
) -> float:
    """Per-GPU weights + gradients + optimizer state (+ KL reference), activations not included.

    Full fine-tuning: 16 bytes/param (:data:`FULL_FT_BYTES`), sharded as ZeRO-1 (optimizer), ZeRO-2
    (+ gradients), ZeRO-3/FSDP (+ weights). LoRA: the frozen base at 2 bytes/param (QLoRA
    :data:`QLORA_BYTES`), sharded only by ZeRO-3/FSDP, plus 16 bytes per adapter parameter. The
    reference model (``beta > 0``, full fine-tuning only; LoRA disables the adapter instead) is bf16,
    sharded under ZeRO-3/FSDP and whole otherwise.
    """
    w_shard, g_shard, o_shard = _shards(num_processes, deepspeed_stage, fsdp)
    n = spec.params
    if recipe.peft is not None:
        base = (QLORA_BYTES if recipe.peft.method == "qlora" else BF16_BYTES) * n / w_shard
        adapter = spec.lora_params(recipe.peft.r)
        total = base + adapter * (BF16_BYTES / w_shard + BF16_BYTES / g_shard + 12 / o_shard)
    else:
        total = n * (BF16_BYTES / w_shard + BF16_BYTES / g_shard + 12 / o_shard)
        if reference_model:
            total += BF16_BYTES * n / w_shard
    return total / GIB


def vllm_weights_gib(spec: ModelSpec, recipe: Recipe, tensor_parallel_size: int) -> float:
    """vLLM's copy of the weights per GPU: bf16 (4-bit for a QLoRA policy, as TRL tells vLLM), split by TP."""
    per_param = QLORA_BYTES if recipe.peft is not None and recipe.peft.method == "qlora" else BF16_BYTES
    return per_param * spec.params / tensor_parallel_size / GIB


# -- the checks -----------------------------------------------------------------------------------


def check_recipe(
    recipe: Recipe,
    *,
    num_processes: int,
    gpu_memory_gib: float | None = None,
    deepspeed_stage: int | None = None,
    fsdp: bool = False,
) -> list[Finding]:
    """Every problem of ``recipe`` launched on ``num_processes`` GPUs (errors first, then warnings).

    ``gpu_memory_gib`` (one GPU's memory) enables the memory checks; ``deepspeed_stage`` (0-3) or
    ``fsdp`` say how training state is sharded (see :class:`LaunchSettings` to read them from an
    accelerate config).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if deepspeed_stage not in (None, 0, 1, 2, 3):
        raise ValueError(f"deepspeed_stage must be 0-3 or None, got {deepspeed_stage!r}")
    if fsdp and deepspeed_stage:
        raise ValueError("a launch uses DeepSpeed or FSDP, not both")
    launch = LaunchSettings(num_processes, deepspeed_stage, fsdp)
    findings = _check_recipe_level(recipe, launch)
    for stage in recipe.stages:
        typos = _check_numbers(stage)
        if typos:  # the other checks compute with these values
            findings += typos
            continue
        # The batch checks read the raw args (TRL refuses some bad geometries while parsing, and its
        # message would not name the key) ...
        batch = _check_grpo_batch(stage, launch) if stage.type == "grpo" else []
        findings += batch
        try:
            with assume_training_gpu():
                config = recipe.stage_config(stage)
        except RecipeError as err:
            # ... so a parse error they already explain (TRL's batch messages all say "generation")
            # is not repeated.
            explained = any(f.level == "error" for f in batch) and "generation" in str(err)
            if not explained:
                findings.append(Finding("error", f"stages.{stage.name}", str(err)))
            continue
        if stage.type == "grpo":
            findings += _check_vllm(recipe, stage, config, launch)
            findings += _check_grpo_memory(recipe, stage, config, launch, gpu_memory_gib)
            findings += _check_grpo_context(recipe, stage, config)
            if recipe.peft is None and config.learning_rate > MAX_FULL_FT_GRPO_LR:
                findings.append(
                    _warn(
                        stage,
                        "learning_rate",
                        f"{config.learning_rate:g} is very high for full-parameter GRPO (the paper uses "
                        "1e-6) and usually collapses the policy; use 1e-6 to 5e-6, or LoRA (peft) for larger "
                        "rates",
                    )
                )
        else:
            findings += _check_sft(recipe, stage, config, launch, gpu_memory_gib)
    return sorted(findings, key=lambda f: f.level != "error")


def raise_for_errors(findings: Sequence[Finding]) -> None:
    """Raise :class:`RecipeError` listing every error finding (warnings do not raise)."""
    errors = [f for f in findings if f.level == "error"]
    if errors:
        listed = "\n".join(f"  - {f.key}: {f.message}" for f in errors)
        raise RecipeError(f"the recipe will fail at this launch ({len(errors)} error(s)):\n{listed}")


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, for a terminal."""
    return "\n".join(str(f) for f in findings) if findings else "no problems found"


def _key(stage: StageSpec, arg: str) -> str:
    return f"stages.{stage.name}.{arg}"


def _error(stage: StageSpec, arg: str, message: str) -> Finding:
    return Finding("error", _key(stage, arg), message)


def _warn(stage: StageSpec, arg: str, message: str) -> Finding:
    return Finding("warning", _key(stage, arg), message)


def _check_recipe_level(recipe: Recipe, launch: LaunchSettings) -> list[Finding]:
    findings: list[Finding] = []
    if (
        recipe.min_pixels is not None
        and recipe.max_pixels is not None
        and recipe.min_pixels > recipe.max_pixels
    ):
        findings.append(
            Finding(
                "error",
                "min_pixels",
                f"{recipe.min_pixels} exceeds max_pixels ({recipe.max_pixels}); lower min_pixels",
            )
        )
    if recipe.peft is not None and recipe.peft.method == "qlora":
        sharded = "DeepSpeed ZeRO-3" if launch.deepspeed_stage == 3 else "FSDP" if launch.fsdp else None
        if sharded:
            findings.append(
                Finding(
                    "error",
                    "peft.method",
                    f"QLoRA cannot run under {sharded}: cxmind loads 4-bit weights without the "
                    "bnb_4bit_quant_storage that sharding them needs; launch with "
                    "recipes/accelerate/ddp.yaml or zero2.yaml, or use peft.method lora",
                )
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            findings.append(
                Finding(
                    "warning",
                    "peft.method",
                    "QLoRA needs a CUDA GPU and bitsandbytes, which is not installed here; on the training "
                    "machines: pip install 'cxmind[quant]'",
                )
            )
    return findings


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _yaml_float(value: float) -> str:
    """``value`` as a literal YAML 1.1 reads as a float: a dot in the mantissa, a signed exponent."""
    mantissa, exponent = f"{value:.6e}".split("e")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}0e{int(exponent):+d}" if mantissa.endswith(".") else f"{mantissa}e{int(exponent):+d}"


def _check_numbers(stage: StageSpec) -> list[Finding]:
    """Numeric args that arrived as text: PyYAML (YAML 1.1) reads ``1e-6`` — no dot — as a string,
    and ``HfArgumentParser.parse_dict`` passes it on unconverted, to fail deep inside the optimizer."""
    import dataclasses

    from cxmind.training.recipe import config_class

    findings: list[Finding] = []
    for f in dataclasses.fields(config_class(stage.type)):
        value = stage.args.get(f.name)
        if not isinstance(value, str):
            continue
        words = set(re.findall(r"\w+", f.type if isinstance(f.type, str) else repr(f.type)))
        if not words & {"int", "float"} or words & {"str", "dict", "list", "bool"}:
            continue
        try:
            number = float(value)
        except ValueError:
            findings.append(_error(stage, f.name, f"{value!r} is not a number"))
            continue
        literal = _yaml_float(number) if "float" in words else str(int(number))
        findings.append(
            _error(
                stage,
                f.name,
                f"{value!r} was read as text, not a number (YAML reads an exponent without a dot as a "
                f"string); write {literal}",
            )
        )
    return findings


def _raw_args(stage: StageSpec) -> Any:
    """The stage's args over its config class's defaults, unparsed (attribute access like a config)."""
    import dataclasses
    from types import SimpleNamespace

    from cxmind.training.recipe import config_class

    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_class(stage.type)):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    values.update(stage.args)
    return SimpleNamespace(**values)


def _check_grpo_batch(stage: StageSpec, launch: LaunchSettings) -> list[Finding]:
    """TRL 1.16's ``GRPOConfig.__post_init__`` batch checks, with the launch's world size."""
    findings: list[Finding] = []
    config = _raw_args(stage)
    processes = launch.num_processes
    generations = int(config.num_generations)
    if generations < 2:
        return [
            _error(
                stage,
                "num_generations",
                f"is {generations}; GRPO compares completions of the same prompt, so it needs >= 2 "
                "(TRL refuses fewer); use 8 or more",
            )
        ]
    if (
        stage.args.get("generation_batch_size") is not None
        and stage.args.get("steps_per_generation") is not None
    ):
        return [
            _error(
                stage,
                "steps_per_generation",
                "and generation_batch_size cannot both be set (TRL derives one from the other); remove one",
            )
        ]
    per_device = int(config.per_device_train_batch_size)
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if int(getattr(config, key)) < 1:
            return [_error(stage, key, f"is {getattr(config, key)}; it must be >= 1")]
    global_micro = per_device * processes
    raw_generation_batch = stage.args.get("generation_batch_size")
    if raw_generation_batch is not None and int(raw_generation_batch) % global_micro:
        target = _round_up(int(raw_generation_batch), math.lcm(global_micro, generations))
        findings.append(
            _error(
                stage,
                "generation_batch_size",
                f"{raw_generation_batch} must be divisible by per_device_train_batch_size × processes "
                f"({per_device} × {processes} = {global_micro}) (TRL checks this at launch); "
                f"set generation_batch_size to {target}, or change per_device_train_batch_size",
            )
        )
        return findings
    geometry = grpo_geometry(config, stage.args, processes)
    if geometry.generation_batch_size % generations:
        if raw_generation_batch is not None:
            target = _round_up(geometry.generation_batch_size, math.lcm(global_micro, generations))
            findings.append(
                _error(
                    stage,
                    "generation_batch_size",
                    f"{geometry.generation_batch_size} must be divisible by num_generations ({generations}) "
                    f"so every prompt gets a full group; set it to {target}",
                )
            )
        else:
            step = generations // math.gcd(global_micro, generations)
            steps = _round_up(geometry.steps_per_generation, step)
            source = (
                "steps_per_generation"
                if "steps_per_generation" in stage.args
                else "gradient_accumulation_steps"
            )
            findings.append(
                _error(
                    stage,
                    "steps_per_generation",
                    f"the generation batch per_device_train_batch_size × processes × {source} = "
                    f"{per_device} × {processes} × {geometry.steps_per_generation} = "
                    f"{geometry.generation_batch_size} must be divisible by num_generations ({generations}) "
                    f"so every prompt gets a full group; set steps_per_generation to {steps} "
                    f"(or generation_batch_size to a multiple of {math.lcm(global_micro, generations)})",
                )
            )
    # TrainingArguments turns do_eval on whenever eval_strategy is not "no", which is TRL's condition
    if str(getattr(config.eval_strategy, "value", config.eval_strategy)) != "no":
        eval_generations = int(config.num_generations_eval or generations)
        eval_batch = int(config.per_device_eval_batch_size) * processes
        if eval_batch % eval_generations:
            findings.append(
                _error(
                    stage,
                    "per_device_eval_batch_size",
                    f"per_device_eval_batch_size × processes ({eval_batch}) must be divisible by the eval "
                    f"generations ({eval_generations}); use a per-device eval batch of "
                    f"{eval_generations // math.gcd(processes, eval_generations)} or a multiple",
                )
            )
    spg, accumulation = geometry.steps_per_generation, geometry.gradient_accumulation_steps
    if spg % accumulation and accumulation % spg:
        findings.append(
            _warn(
                stage,
                "gradient_accumulation_steps",
                f"a rollout spans {spg} micro-batches per process, not a whole number of optimizer steps of "
                f"{accumulation}: optimizer steps mix completions of two policies; make "
                "gradient_accumulation_steps divide steps_per_generation",
            )
        )
    return findings


def _check_vllm(recipe: Recipe, stage: StageSpec, config: Any, launch: LaunchSettings) -> list[Finding]:
    findings: list[Finding] = []
    if not config.use_vllm:
        return findings
    if launch.deepspeed_stage == 3 and not config.ds3_gather_for_generation:
        findings.append(
            _error(
                stage,
                "ds3_gather_for_generation",
                "is false under ZeRO-3, which TRL does not support with vLLM (vLLM needs the gathered "
                "weights); set it to true, or use_vllm false",
            )
        )
    mode = config.vllm_mode
    if mode not in ("colocate", "server"):
        findings.append(_error(stage, "vllm_mode", f"{mode!r} is not 'colocate' or 'server'"))
        return findings
    if mode == "server":
        ignored = [k for k in ("vllm_tensor_parallel_size", "vllm_gpu_memory_utilization") if k in stage.args]
        for key in ignored:
            flag = "--tensor-parallel-size" if "tensor" in key else "--gpu-memory-utilization"
            findings.append(
                _warn(
                    stage, key, f"is ignored with vllm_mode server; pass {flag} to `trl vllm-serve` instead"
                )
            )
        return findings
    tp = int(config.vllm_tensor_parallel_size)
    processes = launch.num_processes
    spec = model_spec(recipe.model)
    if tp < 1 or processes % tp:
        choices = [t for t in range(1, processes + 1) if processes % t == 0]
        if spec is not None:
            choices = [t for t in choices if t in spec.tp_sizes()]
        findings.append(
            _error(
                stage,
                "vllm_tensor_parallel_size",
                f"{tp} must divide the number of processes ({processes}): TRL groups consecutive ranks into "
                f"vLLM tensor-parallel groups; use one of {choices} or launch a multiple of {max(tp, 1)} "
                "processes",
            )
        )
    elif spec is not None and tp not in spec.tp_sizes():
        findings.append(
            _error(
                stage,
                "vllm_tensor_parallel_size",
                f"{tp} does not divide {spec.name}'s attention heads ({spec.heads} text, "
                f"{spec.vision_heads} vision), which vLLM shards; use one of "
                f"{[t for t in spec.tp_sizes() if processes % t == 0]}",
            )
        )
    utilization = float(config.vllm_gpu_memory_utilization)
    if not 0 < utilization <= 1:
        findings.append(
            _error(
                stage,
                "vllm_gpu_memory_utilization",
                f"{utilization} must be in (0, 1]: it is the share of each GPU vLLM may take",
            )
        )
    if recipe.peft is not None and tp > 1:
        findings.append(
            _warn(
                stage,
                "vllm_tensor_parallel_size",
                f"LoRA with colocated vLLM at tensor parallel {tp} has hung in TRL (huggingface/trl#3671; "
                "1.16 adds a barrier for it); if generation stalls, set vllm_tensor_parallel_size 1",
            )
        )
    if recipe.peft is not None and launch.fsdp:
        findings.append(
            _warn(
                stage,
                "use_vllm",
                "LoRA + FSDP + vLLM weight sync is untested in TRL 1.16 (marked TODO in its vLLM "
                "generation code); prefer recipes/accelerate/ddp.yaml for LoRA",
            )
        )
    return findings


def _check_grpo_memory(
    recipe: Recipe, stage: StageSpec, config: Any, launch: LaunchSettings, gpu_memory_gib: float | None
) -> list[Finding]:
    findings: list[Finding] = []
    spec = model_spec(recipe.model)
    colocated = bool(config.use_vllm) and config.vllm_mode == "colocate"
    if recipe.peft is not None and config.use_vllm and launch.deepspeed_stage == 3:
        size = f" ({BF16_BYTES * spec.params / GIB:.1f} GiB)" if spec else ""
        findings.append(
            _warn(
                stage,
                "use_vllm",
                f"with LoRA under ZeRO-3, TRL gathers the whole model on every GPU{size} to merge the "
                "adapter for vLLM at each sync; ZeRO-3 saves little here — launch with ddp.yaml or "
                "zero2.yaml",
            )
        )
    if spec is None or gpu_memory_gib is None:
        return findings
    utilization = float(config.vllm_gpu_memory_utilization)
    tp = int(config.vllm_tensor_parallel_size)
    available = gpu_memory_gib
    if colocated and 0 < utilization <= 1 and tp >= 1:
        share = utilization * gpu_memory_gib
        weights = vllm_weights_gib(spec, recipe, tp)
        needed = (weights + MIN_KV_CACHE_GIB) / gpu_memory_gib
        if weights >= share:
            findings.append(
                _error(
                    stage,
                    "vllm_gpu_memory_utilization",
                    f"{utilization} × {gpu_memory_gib:g} GiB = {share:.1f} GiB cannot hold vLLM's copy of "
                    f"{spec.name} ({weights:.1f} GiB per GPU at tensor parallel {tp}); raise "
                    f"vllm_gpu_memory_utilization to >= {math.ceil(needed * 100) / 100:.2f}, raise "
                    "vllm_tensor_parallel_size, or use LoRA/QLoRA (peft)",
                )
            )
        elif share - weights < MIN_KV_CACHE_GIB:
            findings.append(
                _warn(
                    stage,
                    "vllm_gpu_memory_utilization",
                    f"leaves {share - weights:.1f} GiB of KV cache beside vLLM's {weights:.1f} GiB of "
                    "weights; "
                    f"generation will crawl — raise it to >= {math.ceil(needed * 100) / 100:.2f} or raise "
                    "vllm_tensor_parallel_size",
                )
            )
        if not config.vllm_enable_sleep_mode:
            available = gpu_memory_gib - share
    state = training_state_gib(
        spec,
        recipe,
        num_processes=launch.num_processes,
        deepspeed_stage=launch.deepspeed_stage,
        fsdp=launch.fsdp,
        reference_model=float(config.beta) != 0.0,
    )
    if state > available:
        beside = " beside colocated vLLM" if available < gpu_memory_gib else ""
        findings.append(
            _warn(
                stage,
                "vllm_gpu_memory_utilization"
                if available < gpu_memory_gib
                else "per_device_train_batch_size",
                f"training state of {spec.name} is ~{state:.1f} GiB per GPU (weights, grads, optimizer"
                f"{', reference' if config.beta and recipe.peft is None else ''}; activations extra) but "
                f"only "
                f"{available:.1f} GiB are left{beside}; shard more (zero3.yaml/fsdp2.yaml, more GPUs), lower "
                "vllm_gpu_memory_utilization, set vllm_enable_sleep_mode, or use LoRA (peft)",
            )
        )
    return findings


def _check_grpo_context(recipe: Recipe, stage: StageSpec, config: Any) -> list[Finding]:
    """The prompt (image + question) plus the completion must fit vLLM's context."""
    limit = config.vllm_max_model_length
    if not config.use_vllm or config.vllm_mode != "colocate" or limit is None:
        return []
    image = image_tokens(recipe.max_pixels)
    completion = int(config.max_completion_length or 0)
    needed = image + QUESTION_ALLOWANCE + completion
    if needed <= limit:
        return []
    source = "max_pixels" if recipe.max_pixels is not None else "the Qwen2.5-VL processor default max_pixels"
    room = int(limit) - completion - QUESTION_ALLOWANCE - VISION_MARKERS
    fix_pixels = f", lower max_pixels to <= {room * PIXELS_PER_TOKEN}" if room > 0 else ""
    return [
        _error(
            stage,
            "vllm_max_model_length",
            f"{limit} < image tokens ({image}, from {source} / {PIXELS_PER_TOKEN} + {VISION_MARKERS}) + "
            f"question "
            f"(~{QUESTION_ALLOWANCE}) + max_completion_length ({completion}) = {needed}: vLLM refuses longer "
            f"prompts; raise vllm_max_model_length to >= {_round_up(needed, 1024)}{fix_pixels}, or lower "
            "max_completion_length (per image: multi-image prompts need more)",
        )
    ]


def _check_sft(
    recipe: Recipe, stage: StageSpec, config: Any, launch: LaunchSettings, gpu_memory_gib: float | None
) -> list[Finding]:
    findings: list[Finding] = []
    limit = config.max_length
    image = image_tokens(recipe.max_pixels)
    if limit is not None and image + QUESTION_ALLOWANCE > limit:
        findings.append(
            _warn(
                stage,
                "max_length",
                f"{limit} leaves no room for the reasoning trace after a max-size image ({image} tokens) and "
                f"its question (~{QUESTION_ALLOWANCE}); such samples raise SequenceTooLongError — raise "
                f"max_length to >= {_round_up(image + QUESTION_ALLOWANCE + 1024, 1024)} or lower max_pixels",
            )
        )
    spec = model_spec(recipe.model)
    if spec is not None and gpu_memory_gib is not None:
        state = training_state_gib(
            spec,
            recipe,
            num_processes=launch.num_processes,
            deepspeed_stage=launch.deepspeed_stage,
            fsdp=launch.fsdp,
        )
        if state > gpu_memory_gib:
            findings.append(
                _warn(
                    stage,
                    "per_device_train_batch_size",
                    f"training state of {spec.name} is ~{state:.1f} GiB per GPU (activations extra), more "
                    f"than the GPU's {gpu_memory_gib:g} GiB; shard more (zero3.yaml/fsdp2.yaml, more GPUs) "
                    "or use LoRA (peft)",
                )
            )
    return findings
