"""Check a recipe against the launch it is meant for, before hours of queueing and loading.

Each stage's real ``GRPOConfig``/``SFTConfig`` is built as it will be in every process of the launch
(:func:`at_world_size` patches ``TrainingArguments.world_size`` while it is built), so the batch errors
reported are TRL's own, with the recipe key to change and the nearest value TRL accepts. On top come the
checks no config can make: argument types (``HfArgumentParser.parse_dict`` passes ``bf16: maybe``
through), model and data paths, Hub settings, vLLM and memory against the launch. Every
:class:`Finding` names the recipe key (in override syntax, ``stages.<stage>.<arg>``) and says what to
change; :func:`describe_recipe` prints what a sound recipe will do (batch geometry, image tokens, memory).

Memory figures are deliberately rough (documented on :func:`training_state_gib`): they catch
configurations that cannot fit, not ones that are merely tight, so memory problems beyond vLLM's own
weights are warnings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cxmind.training.recipe import Recipe, RecipeError, StageSpec, config_class, type_problems

__all__ = [
    "KNOWN_MODELS",
    "Finding",
    "GRPOGeometry",
    "LaunchSettings",
    "ModelSpec",
    "assume_training_gpu",
    "at_world_size",
    "check_recipe",
    "describe_recipe",
    "format_findings",
    "image_tokens",
    "model_spec",
    "raise_for_errors",
    "stage_config_at",
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
#: Qwen2.5-VL's image processor defaults (used when a recipe sets none).
DEFAULT_MIN_PIXELS = 3136
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
#: Data files ``load_training_data`` reads (anything else local must be a folder).
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


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
    """A GRPO stage's batch as TRL resolved it (read from a config built at the launch's world size)."""

    per_device_train_batch_size: int
    num_processes: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    generation_batch_size: int
    num_generations: int
    num_iterations: int

    @classmethod
    def from_config(cls, config: Any, num_processes: int) -> GRPOGeometry:
        return cls(
            per_device_train_batch_size=int(config.per_device_train_batch_size),
            num_processes=num_processes,
            gradient_accumulation_steps=int(config.gradient_accumulation_steps),
            steps_per_generation=int(config.steps_per_generation),
            generation_batch_size=int(config.generation_batch_size),
            num_generations=int(config.num_generations),
            num_iterations=int(config.num_iterations),
        )

    @property
    def prompts_per_rollout(self) -> int:
        return self.generation_batch_size // self.num_generations

    @property
    def completions_per_step(self) -> int:
        """Completions behind one optimizer step."""
        return self.per_device_train_batch_size * self.num_processes * self.gradient_accumulation_steps

    @property
    def micro_batches_per_rollout(self) -> int:
        """Micro-batches per process between two generations (TRL's ``generate_every``)."""
        return self.steps_per_generation * self.num_iterations

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps from one rollout boundary to the next (as ``CXMindGRPOConfig``'s)."""
        return self.micro_batches_per_rollout // math.gcd(
            self.micro_batches_per_rollout, self.gradient_accumulation_steps
        )

    def steps_per_epoch(self, rows: int) -> tuple[int, int]:
        """(rollouts, optimizer steps) of one epoch over ``rows`` prompts, as the Trainer counts them."""
        rollouts = rows // self.prompts_per_rollout
        micro_batches = rollouts * self.micro_batches_per_rollout
        return rollouts, max(math.ceil(micro_batches / self.gradient_accumulation_steps), 1)


@dataclass(frozen=True)
class LaunchSettings:
    """How a run is launched, as :func:`check_recipe` needs it (``check_recipe(r, **vars(settings))``)."""

    num_processes: int = 1
    deepspeed_stage: int | None = None
    fsdp: bool = False

    @classmethod
    def from_accelerate_config(cls, path: str | Path, num_processes: int | None = None) -> LaunchSettings:
        """Read an ``accelerate launch --config_file`` YAML/JSON (``num_processes`` overrides its value)."""
        import yaml
        from accelerate.commands.config.config_args import load_config_from_file

        from cxmind.errors import MissingFileError, UserError

        if not Path(path).is_file():
            raise MissingFileError(
                f"accelerate config {path} not found; fix the path (see recipes/accelerate/)"
            )
        try:
            config = load_config_from_file(str(path))
        except (yaml.YAMLError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise UserError(f"accelerate config {path} cannot be read ({type(err).__name__}: {err})") from err
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

    def __str__(self) -> str:
        sharding = (
            f", DeepSpeed ZeRO-{self.deepspeed_stage}"
            if self.deepspeed_stage
            else ", FSDP"
            if self.fsdp
            else ""
        )
        return f"{self.num_processes} process{'es' if self.num_processes > 1 else ''}{sharding}"


def local_gpu_memory_gib() -> float | None:
    """Memory of this machine's first GPU (None without CUDA): what a check inside the run compares with."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def _zero_stage_of(path: str) -> int | None:
    from cxmind.errors import MissingFileError, UserError

    try:
        with open(path, encoding="utf-8") as handle:
            stage = json.load(handle).get("zero_optimization", {}).get("stage")
    except FileNotFoundError as err:
        raise MissingFileError(f"DeepSpeed config {path} not found; fix deepspeed_config_file") from err
    except json.JSONDecodeError as err:
        raise UserError(f"DeepSpeed config {path} is not valid JSON: {err}") from err
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


@contextlib.contextmanager
def at_world_size(num_processes: int) -> Iterator[None]:
    """Build configs as every process of a ``num_processes`` launch will, on the training GPUs.

    ``GRPOConfig.__post_init__`` resolves the generation batch with ``TrainingArguments.world_size``
    (accelerate's process count), the only launch-dependent input of config parsing; nothing else
    reads it while a config is built.
    """
    from unittest import mock

    from transformers import TrainingArguments

    with (
        assume_training_gpu(),
        mock.patch.object(TrainingArguments, "world_size", property(lambda self: num_processes)),
    ):
        yield


def stage_config_at(recipe: Recipe, stage: StageSpec, num_processes: int) -> Any:
    """The stage's config as each process of a ``num_processes`` launch builds it (or RecipeError)."""
    with at_world_size(num_processes):
        return recipe.stage_config(stage)


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
    accelerate config). Relative model and data paths are resolved against the working directory,
    as the run resolves them.
    """
    launch = _launch(num_processes, deepspeed_stage, fsdp)
    findings = _check_recipe_level(recipe, launch)
    for stage in recipe.stages:
        findings += _check_stage_paths(stage)
        typos = _check_types(stage)
        if typos:  # the other checks compute with these values
            findings += typos
            continue
        try:
            config = stage_config_at(recipe, stage, launch.num_processes)
        except RecipeError as err:
            findings.append(_parse_error(recipe, stage, err, launch.num_processes))
            continue
        if stage.type == "grpo":
            findings += _check_rollouts(stage, config, launch)
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
        if config.push_to_hub and not config.hub_model_id:
            findings.append(
                _warn(
                    stage,
                    "push_to_hub",
                    f"args.push_to_hub without args.hub_model_id pushes every checkpoint to a Hub repo named "
                    f"{Path(config.output_dir).name!r} (TRL names it after the output folder); set "
                    "args.hub_model_id, or use the stage's push_to_hub (outside args) with the recipe's "
                    "hub_model_id",
                )
            )
    return sorted(findings, key=lambda f: f.level != "error")


def raise_for_errors(findings: Sequence[Finding]) -> None:
    """Raise :class:`RecipeError` listing every error finding (warnings do not raise)."""
    errors = [f for f in findings if f.level == "error"]
    if len(errors) == 1:  # one line, as the command prints it
        raise RecipeError(f"the recipe will fail at this launch: {errors[0].key}: {errors[0].message}")
    if errors:
        listed = "\n".join(f"  - {f.key}: {f.message}" for f in errors)
        raise RecipeError(f"the recipe will fail at this launch ({len(errors)} error(s)):\n{listed}")


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, for a terminal."""
    return "\n".join(str(f) for f in findings) if findings else "no problems found"


def _launch(num_processes: int, deepspeed_stage: int | None, fsdp: bool) -> LaunchSettings:
    from cxmind.errors import UserError

    if num_processes < 1:
        raise UserError(f"num_processes must be >= 1, got {num_processes}")
    if deepspeed_stage not in (None, 0, 1, 2, 3):
        raise UserError(f"deepspeed_stage must be 0-3 or None, got {deepspeed_stage!r}")
    if fsdp and deepspeed_stage:
        raise UserError("a launch uses DeepSpeed or FSDP, not both")
    return LaunchSettings(num_processes, deepspeed_stage, fsdp)


def _key(stage: StageSpec, arg: str) -> str:
    return f"stages.{stage.name}.{arg}"


def _error(stage: StageSpec, arg: str, message: str) -> Finding:
    return Finding("error", _key(stage, arg), message)


def _warn(stage: StageSpec, arg: str, message: str) -> Finding:
    return Finding("warning", _key(stage, arg), message)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# -- TRL's own errors -----------------------------------------------------------------------------

#: TRL messages that name no field, or whose first field is not the one to change.
_MESSAGE_KEYS = (
    ("global eval batch size", "per_device_eval_batch_size"),
    ("at least 2 generations", "num_generations"),
    ("can not be both configured", "steps_per_generation"),
)
#: Batch sizes whose nearest accepted value is worth searching for.
_SEARCHED = ("generation_batch_size", "steps_per_generation", "per_device_eval_batch_size")


def _parse_error(recipe: Recipe, stage: StageSpec, err: RecipeError, processes: int) -> Finding:
    """TRL's (or cxmind's config) refusal, on the key to change, with the nearest value TRL accepts."""
    cause = err.__cause__
    if not isinstance(cause, (ValueError, TypeError)):  # unknown or reserved keys: the recipe's message
        return Finding("error", f"stages.{stage.name}", str(err))
    message = str(cause)
    key = next((k for phrase, k in _MESSAGE_KEYS if phrase in message), None) or _first_field(stage, message)
    if key == "generation_batch_size" and key not in stage.args:  # derived from steps_per_generation
        key = "steps_per_generation"
    if key is None:
        return Finding("error", f"stages.{stage.name}", message)
    text = f"{message} (at {processes} process{'es' if processes > 1 else ''})"
    if "can not be both configured" in message:
        text += "; remove one of them (TRL derives the other)"
    elif key in _SEARCHED:
        accepted = _nearest_accepted(recipe, stage, key, processes)
        if accepted is not None:
            text += f"; set {key} to {accepted}, the nearest value that passes this check"
    return _error(stage, key, text)


def _first_field(stage: StageSpec, message: str) -> str | None:
    names = [f.name for f in dataclasses.fields(config_class(stage.type)) if f.init]
    found = [
        (m.start(), -len(m.group()), m.group()) for m in re.finditer(r"\w+", message) if m.group() in names
    ]
    return min(found)[2] if found else None


def _nearest_accepted(
    recipe: Recipe, stage: StageSpec, key: str, processes: int, tries: int = 512
) -> int | None:
    """The smallest value above the current one that clears TRL's batch checks ("must be divisible")."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class(stage.type))}
    # steps_per_generation defaults to gradient_accumulation_steps
    current = stage.args.get(key) or defaults[key] or stage.args.get("gradient_accumulation_steps", 1)
    for value in range(int(current) + 1, int(current) + 1 + tries):
        trial = dataclasses.replace(stage, args={**stage.args, key: value})
        try:
            stage_config_at(recipe, trial, processes)
        except RecipeError as err:
            if "divisible" in str(err.__cause__):
                continue
        return value
    return None


# -- argument types -------------------------------------------------------------------------------


def _check_types(stage: StageSpec) -> list[Finding]:
    """Stage args against the config's field types: ``HfArgumentParser.parse_dict`` converts nothing,
    so ``bf16: maybe`` would train as true and ``learning_rate: 1e-6`` (text in YAML 1.1) fail deep
    inside the optimizer."""
    return [
        _error(stage, name, problem) for name, problem in type_problems(stage.args, config_class(stage.type))
    ]


# -- paths and the Hub ----------------------------------------------------------------------------


def _hub_offline() -> bool:
    from cxmind.errors import hub_offline

    return hub_offline()


def _local_looking(path: str) -> bool:
    """Whether ``path`` can only mean a local path: Hub ids are ``name`` or ``namespace/name``."""
    p = Path(path).expanduser()
    return (
        p.is_absolute()
        or path.startswith((".", "~"))
        or "\\" in path
        or path.count("/") > 1
        or path.lower().endswith(DATA_SUFFIXES)
        or (len(p.parts) > 1 and Path(p.parts[0]).is_dir())  # the folder exists, the entry does not
    )


def _check_model(recipe: Recipe) -> list[Finding]:
    from cxmind.errors import model_problem

    problem = model_problem(recipe.model, offline=_hub_offline())  # no Hub request: --check runs anywhere
    return [Finding("error", "model", f"{recipe.model} {problem}")] if problem else []


def _check_stage_paths(stage: StageSpec) -> list[Finding]:
    """Every stage loads its data when it starts: a missing path in the last stage fails after the others."""
    from cxmind.data.records import META_FILE

    findings: list[Finding] = []
    for which, sources in (("data", stage.data), ("eval_data", stage.eval_data or [])):
        for i, source in enumerate(sources):
            key, path = _key(stage, which if len(sources) == 1 else f"{which}[{i}]"), Path(source.path)
            level, problem = "error", None
            if source.image_root is not None and not Path(source.image_root).expanduser().is_dir():
                problem = f"image_root {source.image_root} is not a folder"
            elif path.is_file() and path.suffix.lower() not in DATA_SUFFIXES:
                problem = f"{source.path}: use a {'/'.join(DATA_SUFFIXES)} file or a folder"
            elif path.is_dir() and not (path / META_FILE).is_file() and not any(path.iterdir()):
                problem = f"{source.path} is an empty folder"
            elif not path.exists() and _local_looking(source.path):
                problem = (
                    f"{source.path} not found (from {Path.cwd()}); build a record set there "
                    f"(cxmind data build --out {source.path}) or fix the path"
                )
            elif not path.exists():
                level, problem = (
                    "warning",
                    (
                        f"{source.path} is not a local path, so it will be loaded as a Hub dataset id"
                        f"{' (from the cache only: HF_HUB_OFFLINE is set)' if _hub_offline() else ''}; for a "
                        f"record set, build it first (cxmind data build --out {source.path})"
                    ),
                )
            if problem:
                findings.append(Finding(level, key, problem))
    return findings


def _check_recipe_level(recipe: Recipe, launch: LaunchSettings) -> list[Finding]:
    findings = _check_model(recipe)
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
    for stage in recipe.stages:
        if stage.push_to_hub and not recipe.hub_model_id:
            findings.append(
                _error(
                    stage,
                    "push_to_hub",
                    "needs the recipe's hub_model_id (the stage is pushed to <hub_model_id>-<stage>); "
                    "without it the push fails after training; set hub_model_id: your-org/name",
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


# -- launch-dependent GRPO checks -----------------------------------------------------------------


def _check_rollouts(stage: StageSpec, config: Any, launch: LaunchSettings) -> list[Finding]:
    geometry = GRPOGeometry.from_config(config, launch.num_processes)
    micro, accumulation = geometry.micro_batches_per_rollout, geometry.gradient_accumulation_steps
    if micro % accumulation and accumulation % micro:
        return [
            _warn(
                stage,
                "gradient_accumulation_steps",
                f"a rollout spans {micro} micro-batches per process (steps_per_generation × "
                f"num_iterations), not a whole number of optimizer steps of {accumulation}: optimizer steps "
                "mix completions of two policies; make gradient_accumulation_steps divide "
                "steps_per_generation",
            )
        ]
    return []


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


def _grpo_memory(
    recipe: Recipe, config: Any, launch: LaunchSettings, spec: ModelSpec, gpu_memory_gib: float | None
) -> tuple[float, float | None, float | None]:
    """(training state, vLLM weights or None, memory left for training or None) per GPU, in GiB."""
    state = training_state_gib(
        spec,
        recipe,
        num_processes=launch.num_processes,
        deepspeed_stage=launch.deepspeed_stage,
        fsdp=launch.fsdp,
        reference_model=float(config.beta) != 0.0,
    )
    colocated = bool(config.use_vllm) and config.vllm_mode == "colocate"
    tp = int(config.vllm_tensor_parallel_size)
    weights = vllm_weights_gib(spec, recipe, tp) if colocated and tp >= 1 else None
    available = gpu_memory_gib
    if colocated and gpu_memory_gib is not None and not config.vllm_enable_sleep_mode:
        available = gpu_memory_gib * (1 - float(config.vllm_gpu_memory_utilization))
    return state, weights, available


def _check_grpo_memory(
    recipe: Recipe, stage: StageSpec, config: Any, launch: LaunchSettings, gpu_memory_gib: float | None
) -> list[Finding]:
    findings: list[Finding] = []
    spec = model_spec(recipe.model)
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
    utilization = float(config.vllm_gpu_memory_utilization)
    if spec is None or gpu_memory_gib is None or not 0 < utilization <= 1:
        return findings
    state, weights, available = _grpo_memory(recipe, config, launch, spec, gpu_memory_gib)
    if weights is not None:
        share = utilization * gpu_memory_gib
        needed = math.ceil((weights + MIN_KV_CACHE_GIB) / gpu_memory_gib * 100) / 100
        tp = int(config.vllm_tensor_parallel_size)
        if weights >= share:
            findings.append(
                _error(
                    stage,
                    "vllm_gpu_memory_utilization",
                    f"{utilization} × {gpu_memory_gib:g} GiB = {share:.1f} GiB cannot hold vLLM's copy of "
                    f"{spec.name} ({weights:.1f} GiB per GPU at tensor parallel {tp}); raise "
                    f"vllm_gpu_memory_utilization to >= {needed:.2f}, raise vllm_tensor_parallel_size, or "
                    "use LoRA/QLoRA (peft)",
                )
            )
        elif share - weights < MIN_KV_CACHE_GIB:
            findings.append(
                _warn(
                    stage,
                    "vllm_gpu_memory_utilization",
                    f"leaves {share - weights:.1f} GiB of KV cache beside vLLM's {weights:.1f} GiB of "
                    f"weights; generation will crawl — raise it to >= {needed:.2f} or raise "
                    "vllm_tensor_parallel_size",
                )
            )
    assert available is not None
    if state > available:
        beside = available < gpu_memory_gib
        findings.append(
            _warn(
                stage,
                "vllm_gpu_memory_utilization" if beside else "per_device_train_batch_size",
                f"training state of {spec.name} is ~{state:.1f} GiB per GPU (weights, grads, optimizer"
                f"{', reference' if config.beta and recipe.peft is None else ''}; activations extra) but "
                f"only {available:.1f} GiB are left{' beside colocated vLLM' if beside else ''}; shard more "
                "(zero3.yaml/fsdp2.yaml, more GPUs), lower vllm_gpu_memory_utilization, set "
                "vllm_enable_sleep_mode, or use LoRA (peft)",
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
            f"question (~{QUESTION_ALLOWANCE}) + max_completion_length ({completion}) = {needed}: vLLM "
            f"refuses longer prompts; raise vllm_max_model_length to >= {_round_up(needed, 1024)}"
            f"{fix_pixels}, or lower max_completion_length (per image: multi-image prompts need more)",
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
        state = _sft_memory(recipe, launch, spec)
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


def _sft_memory(recipe: Recipe, launch: LaunchSettings, spec: ModelSpec) -> float:
    return training_state_gib(
        spec,
        recipe,
        num_processes=launch.num_processes,
        deepspeed_stage=launch.deepspeed_stage,
        fsdp=launch.fsdp,
    )


# -- the summary ----------------------------------------------------------------------------------


def describe_recipe(
    recipe: Recipe,
    *,
    num_processes: int,
    gpu_memory_gib: float | None = None,
    deepspeed_stage: int | None = None,
    fsdp: bool = False,
    rows: Mapping[str, int | None] | None = None,
) -> str:
    """What a recipe without errors will do at this launch: per stage the batch geometry (per-device and
    global batch, generation batch, steps per generation, steps per rollout, rollouts and optimizer
    steps per epoch and in all), checkpoints, the KL reference, and the memory estimate.

    ``rows`` (training rows per stage name) defaults to counting the stages' data where it is local.
    Call it once :func:`check_recipe` found no errors: a stage TRL refuses raises ``RecipeError``.
    """
    launch = _launch(num_processes, deepspeed_stage, fsdp)
    spec = model_spec(recipe.model)
    tuning = "full fine-tuning" if recipe.peft is None else f"{recipe.peft.method} r {recipe.peft.r}"
    gpu = f", {gpu_memory_gib:g} GiB per GPU" if gpu_memory_gib else ""
    low, high = recipe.min_pixels or DEFAULT_MIN_PIXELS, recipe.max_pixels or DEFAULT_MAX_PIXELS
    lines = [
        f"{recipe.model} ({spec.name if spec else 'unknown size: no memory estimate'}), {tuning}, "
        f"{launch}{gpu}",
        f"image tokens per image: {image_tokens(low)} to {image_tokens(high)} (pixels {low}..{high}, "
        f"{PIXELS_PER_TOKEN} per token, +{VISION_MARKERS} markers)",
    ]
    for index, stage in enumerate(recipe.stages):
        config = stage_config_at(recipe, stage, launch.num_processes)
        count = rows.get(stage.name) if rows is not None else _count_rows(stage)
        lines.append(f"{stage.name} ({stage.type}):")
        lines += [
            f"  {line}" for line in _describe_stage(recipe, index, config, launch, count, gpu_memory_gib)
        ]
    return "\n".join(lines)


def _describe_stage(
    recipe: Recipe,
    index: int,
    config: Any,
    launch: LaunchSettings,
    rows: int | None,
    gpu_memory_gib: float | None,
) -> list[str]:
    per_device, processes = int(config.per_device_train_batch_size), launch.num_processes
    accumulation = int(config.gradient_accumulation_steps)
    grpo = recipe.stages[index].type == "grpo"
    unit = "completions" if grpo else "sequences"
    lines = [
        f"batch: {per_device} per device × {processes} processes × {accumulation} accumulation = "
        f"{per_device * processes * accumulation} {unit} per optimizer step"
    ]
    if grpo:
        g = GRPOGeometry.from_config(config, processes)
        lines.append(
            f"rollout: generation batch {g.generation_batch_size} = {g.prompts_per_rollout} prompts × "
            f"{g.num_generations} generations; steps_per_generation {g.steps_per_generation} × "
            f"num_iterations {g.num_iterations} = {g.micro_batches_per_rollout} micro-batches = "
            f"{g.steps_per_rollout} optimizer step(s) per rollout"
        )
        per_epoch = g.steps_per_epoch(rows) if rows is not None else None
    elif rows is not None:
        micro = math.ceil(rows / (per_device * processes))
        per_epoch = (None, max(math.ceil(micro / accumulation), 1))
    else:
        per_epoch = None
    if per_epoch is None:
        lines.append("epoch: training rows unknown (the data is not local, or not readable here)")
    else:
        rollouts, steps = per_epoch
        total = int(config.max_steps) if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps)
        of_rollouts = f"{rollouts} rollouts = " if rollouts is not None else ""
        lines.append(
            f"epoch: {rows} rows → {of_rollouts}{steps} optimizer steps; run: {total} optimizer steps "
            f"({'max_steps' if config.max_steps > 0 else _epochs(config.num_train_epochs)})"
        )
    strategy = str(getattr(config.save_strategy, "value", config.save_strategy))
    if strategy == "steps" and config.save_steps < 1:
        lines.append(f"checkpoints: every {config.save_steps:g} of the run")
    elif strategy == "steps":
        every = f"every {config.save_steps:g} optimizer steps"
        if grpo:
            rollouts = config.save_steps / GRPOGeometry.from_config(config, processes).steps_per_rollout
            every += f" = {rollouts:g} rollouts (a rollout boundary: resumes exactly)"
        lines.append(f"checkpoints: {every}")
    else:
        lines.append(f"checkpoints: save_strategy {strategy}")
    if grpo:
        lines.append(f"KL reference: {_reference(recipe, index, config)}")
    spec = model_spec(recipe.model)
    if spec is not None:
        if grpo:
            state, weights, available = _grpo_memory(recipe, config, launch, spec, gpu_memory_gib)
            memory = f"memory per GPU: training state ~{state:.1f} GiB (activations extra)"
            if weights is not None:
                memory += (
                    f", vLLM weights ~{weights:.1f} GiB (tensor parallel {config.vllm_tensor_parallel_size}) "
                    f"within vllm_gpu_memory_utilization {config.vllm_gpu_memory_utilization}"
                )
            if available is not None:
                memory += f"; {available:.1f} GiB for training"
        else:
            state = _sft_memory(recipe, launch, spec)
            memory = f"memory per GPU: training state ~{state:.1f} GiB (activations extra)"
        lines.append(memory)
    return lines


def _epochs(count: float) -> str:
    return f"{count:g} epoch{'' if count == 1 else 's'}"


def _reference(recipe: Recipe, index: int, config: Any) -> str:
    """The model the KL term compares with, as cxmind.training.pipeline builds each stage."""
    if float(config.beta) == 0.0:
        return "none (beta 0: no KL term)"
    stages, out = recipe.stages, Path(recipe.output_dir)
    previous = stages[index - 1].name if index else None
    if recipe.peft is None:
        start = out / previous if previous else recipe.model
        return f"a frozen copy of the stage's starting model {start}, loaded by TRL (bf16, one more model)"
    if recipe.peft.between_stages == "merge" or previous is None:
        start = out / previous / "merged" if previous else recipe.model
        return f"{start} itself: the stage's fresh adapter switched off (no extra copy)"
    return (
        f"the adapter {out / previous} on {recipe.model} as the stage starts (between_stages continue: "
        "a frozen copy loaded as TRL's 'ref' adapter), so KL is to the previous stage's result, not to "
        "the base model"
    )


def _count_rows(stage: StageSpec) -> int | None:
    """Training rows of a stage whose data is all local (None otherwise or when it cannot be read)."""
    if not all(Path(s.path).expanduser().exists() for s in stage.data):
        return None
    try:
        from cxmind.training.data import load_training_data

        return len(load_training_data(stage.data, kind=stage.type, mix=stage.mix))
    except Exception:  # the summary says "unknown"; check_recipe reports real problems
        return None
