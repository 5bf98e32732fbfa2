"""Run a recipe's stages in order (the paper: SFT → GRPO closed → GRPO open), resumably.

Each stage writes to ``<output_dir>/<stage>/`` and starts from the previous stage's weights:

- full fine-tuning: the previous stage's saved model; TRL builds the KL reference from the same path;
- LoRA ``merge``: the previous adapter merged into its base (``<stage>/merged``, merged on the CPU),
  with a fresh adapter — disabling the adapter gives the stage's starting policy as KL reference;
- LoRA ``continue``: the base plus the previous adapter, trainable; with ``beta`` > 0 TRL copies it
  into a frozen adapter named "ref" at the stage's start, the KL reference (the previous stage's policy).

A finished stage leaves ``cxmind_stage.json`` with a fingerprint of what it was trained from (its
settings, data and starting model, see :func:`stage_fingerprint`). Re-running the pipeline skips a
finished stage whose fingerprint still matches the recipe and refuses one that does not, naming the
changes; ``restart`` redoes a stage and every later one, ``overwrite`` the whole run. An interrupted
stage resumes from its last ``checkpoint-*`` (optimizer, scheduler, RNG, gate and curriculum state).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cxmind.training.data import DataSource, load_training_data
from cxmind.training.recipe import PeftSettings, Recipe, RecipeError, StageSpec

__all__ = ["DONE_FILE", "StageResult", "run_pipeline", "stage_fingerprint"]

DONE_FILE = "cxmind_stage.json"
_CARD_ARGS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "weight_decay",
    "max_grad_norm",
    "max_length",
    "num_generations",
    "max_completion_length",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "temperature",
    "top_p",
    "seed",
)

FINGERPRINT_VERSION = 1
# Trainer args that change how a run is carried out or reported, not what it learns: they are left out
# of a stage's fingerprint, so editing them never refuses a finished stage.
_OPERATIONAL_ARGS = frozenset(
    {
        "output_dir",
        "report_to",
        "run_name",
        "project",
        "disable_tqdm",
        "skip_memory_metrics",
        "include_num_input_tokens_seen",
        "num_completions_to_print",
        "push_to_hub",
        "resume_from_checkpoint",
        "restore_callback_states_from_checkpoint",
        "ignore_data_skip",
        "enable_jit_checkpoint",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "dataset_num_proc",
        "local_rank",
        "use_cpu",
        "deepspeed",
        "fsdp",
        "fsdp_config",
        "parallelism_config",
        "debug",
        "trust_remote_code",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "activation_checkpointing",
        "activation_checkpointing_kwargs",
        "activation_offloading",
        "use_liger_kernel",
        "liger_kernel_config",
        "torch_empty_cache_steps",
        "ds3_gather_for_generation",
        "use_cache",
        "cache_implementation",
        "use_transformers_paged",
        "use_transformers_continuous_batching",
        "transformers_continuous_batching_config",
        "vllm_mode",
        "vllm_group_port",
        "vllm_gpu_memory_utilization",
        "vllm_tensor_parallel_size",
        "vllm_enable_sleep_mode",
        "vllm_max_model_length",
        "vllm_model_impl",
        "per_device_eval_batch_size",
        "prediction_loss_only",
        "include_for_metrics",
        "batch_eval_metrics",
        "bf16_full_eval",
        "fp16_full_eval",
        "num_generations_eval",
    }
)
_OPERATIONAL_PREFIXES = (
    "logging_",
    "log_",
    "save_",
    "hub_",
    "eval_",
    "do_",
    "ddp_",
    "trackio_",
    "torch_compile",
)
# Args whose resolved value depends on the launch (world size, device): fingerprinted as written.
_LAUNCH_DERIVED_ARGS = ("generation_batch_size", "steps_per_generation", "pad_to_multiple_of")


@dataclass
class StageResult:
    """What a stage left behind. ``model`` is what the next stage (or evaluation) loads:
    a full model folder, with ``adapter`` the adapter folder to apply on top of it (or None)."""

    name: str
    type: str
    output_dir: str
    model: str
    adapter: str | None
    skipped: bool = False
    resumed_from: str | None = None
    num_examples: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    stage_id: str | None = None  # new each time the stage finishes; the next stage's fingerprint names it


def run_pipeline(
    recipe: Recipe,
    *,
    only: Sequence[str] | None = None,
    callbacks: Sequence[Any] | None = None,
    restart: str | None = None,
    overwrite: bool = False,
) -> list[StageResult]:
    """Run every stage of ``recipe``, skipping those finished with the same fingerprint.

    ``only`` runs the named stages (those before them must be finished; later ones are left alone).
    ``restart`` deletes and redoes that stage and every later one (their starting model changes);
    ``overwrite`` deletes and redoes every stage. A finished stage whose fingerprint differs from the
    recipe raises a :class:`RecipeError` naming the changed keys, before anything is trained or deleted.
    """
    names = [s.name for s in recipe.stages]
    for name in [*(only or ()), *([restart] if restart else [])]:
        recipe.stage(name)  # clear error for an unknown name
    if restart and overwrite:
        raise RecipeError("pass either --restart STAGE or --overwrite, not both")
    redo = names if overwrite else names[names.index(restart) :] if restart else []
    stages = recipe.stages[: max(names.index(n) for n in only) + 1] if only else recipe.stages
    done = _plan(recipe, stages, set(redo), only)
    _remove_stages(recipe, redo)
    results: list[StageResult] = []
    for index, stage in enumerate(stages):
        if done[index] is not None:
            result = _result(done[index], skipped=True)
        else:
            previous = results[-1] if results else None
            model, adapter = (previous.model, previous.adapter) if previous else (recipe.model, None)
            start = _start(recipe, index, previous.stage_id if previous else None)
            result = _run_stage(recipe, stage, model, adapter, start, callbacks)
        results.append(result)
    return results


def _plan(
    recipe: Recipe, stages: Sequence[StageSpec], redo: set[str], only: Sequence[str] | None
) -> list[dict[str, Any] | None]:
    """The done record of each stage to skip (None: train it), after checking every fingerprint."""
    plan: list[dict[str, Any] | None] = []
    trains: str | None = None  # the first stage that trains in this run
    previous_id: str | None = None
    for index, stage in enumerate(stages):
        done = None if stage.name in redo else _read_done(Path(recipe.output_dir) / stage.name)
        if done is None:
            if only and stage.name not in only:
                raise RecipeError(
                    f"stage {stage.name!r} has not finished, so {list(only)} cannot start from it; "
                    "run the earlier stages first (drop --only)"
                )
            trains = trains or stage.name
        elif trains is not None:  # it started from weights that are about to be replaced
            raise RecipeError(
                f"stage {stage.name!r} finished, but the stage before it, {trains!r}, has to be trained now; "
                f"pass --restart {trains} to redo it and the stages after it, or --overwrite to start the "
                "whole run over"
            )
        else:
            _check_done(recipe, stage, done, _start(recipe, index, previous_id))
            previous_id = done.get("stage_id")
        plan.append(done)
    return plan


def _check_done(recipe: Recipe, stage: StageSpec, done: dict[str, Any], start: dict[str, Any]) -> None:
    """Refuse a finished stage whose fingerprint differs from what the recipe would train now."""
    from accelerate import PartialState

    stored = done.get("fingerprint")
    if not isinstance(stored, dict) or stored.get("version") != FINGERPRINT_VERSION:
        # Refusing would force retraining work that is most likely fine, with no other way to go on.
        if PartialState().is_main_process:
            warnings.warn(
                f"stage {stage.name!r} finished before cxmind recorded the settings it was trained with; it "
                f"is skipped without checking the recipe against it (pass --restart {stage.name} to redo it)",
                UserWarning,
                stacklevel=3,
            )
        return
    current = stage_fingerprint(recipe, stage, recipe.stage_config(stage), start)
    changes = _changes(stored, current)
    if changes:
        shown = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise RecipeError(
            f"stage {stage.name!r} finished with different settings (changed: {shown}); pass --restart "
            f"{stage.name} to redo it (and the stages after it) or --overwrite to start the whole run over"
        )


def _remove_stages(recipe: Recipe, names: Sequence[str]) -> None:
    """Delete the folders of stages to redo (main process; the others wait), so nothing stale resumes."""
    from accelerate import PartialState

    if not names:
        return
    root = Path(recipe.output_dir).resolve()
    folders = [(root / name).resolve() for name in names]
    for name, folder in zip(names, folders, strict=True):
        if folder.parent != root:
            raise RecipeError(f"stage name {name!r} is not a plain folder name; refusing to delete {folder}")
    state = PartialState()
    if state.is_main_process:
        for folder in folders:
            if folder.is_dir():
                shutil.rmtree(folder)
    state.wait_for_everyone()


def _read_done(out: Path) -> dict[str, Any] | None:
    path = out / DONE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _result(done: dict[str, Any], **changes: Any) -> StageResult:
    """A StageResult from a done record (which also holds the fingerprint)."""
    names = {f.name for f in fields(StageResult)}
    return StageResult(**{**{k: v for k, v in done.items() if k in names}, **changes})


# ------------------------------------------------------------------------------------------------
# Fingerprints: what a finished stage was trained from
# ------------------------------------------------------------------------------------------------


def stage_fingerprint(recipe: Recipe, stage: StageSpec, config: Any, start: dict[str, Any]) -> dict[str, Any]:
    """What decides a stage's result: its resolved trainer args (less operational ones), the recipe
    settings that shape it (type, mix, PEFT, image budget, frozen vision tower), the content of its
    data sources and its starting model (``start``). JSON-ready."""
    args = config.to_dict()  # enums and nested configs as plain values; it masks every "*_token" field
    args.update({k: getattr(config, k) for k in ("pad_token", "eos_token") if k in args})
    for key in _LAUNCH_DERIVED_ARGS:
        if key in args:
            args[key] = stage.args.get(key)
    if isinstance(args.get("model_init_kwargs"), dict):
        placement = ("device_map", "attn_implementation")  # where and with which kernels: operational
        kept = {k: v for k, v in args["model_init_kwargs"].items() if k not in placement}
        args["model_init_kwargs"] = kept or None
    args = {
        k: v
        for k, v in args.items()
        if k not in _OPERATIONAL_ARGS and not k.startswith(_OPERATIONAL_PREFIXES)
    }
    fingerprint = {
        "version": FINGERPRINT_VERSION,
        "args": args,
        "setup": {
            "type": stage.type,
            "mix": stage.mix,
            "freeze_vision_tower": recipe.freezes_vision_tower(stage),
            "peft": asdict(recipe.peft) if recipe.peft is not None else {"method": "none"},
            "min_pixels": recipe.min_pixels,
            "max_pixels": recipe.max_pixels,
        },
        "data": [_data_identity(source) for source in stage.data],
        "start": start,
    }
    return json.loads(json.dumps(fingerprint, default=str))


def _start(recipe: Recipe, index: int, previous_id: str | None) -> dict[str, Any]:
    """The starting model's identity: the base model, or the previous stage's finished run."""
    if index == 0:
        return {"model": _model_identity(recipe.model)}
    return {"after": recipe.stages[index - 1].name, "stage_id": previous_id}


def _digest(value: Any) -> str:
    return (
        "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
    )


def _sizes(paths: Sequence[Path], root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(paths) if p.is_file()}


def _model_identity(model: str) -> str:
    """A local model folder by content (config + weight file sizes), so moving it changes nothing;
    a Hub id by name (a ``revision`` sits in ``model_init_kwargs``, part of the args). A folder that
    another run's stage wrote also by that stage's id: retraining it keeps the sizes, not the id."""
    path = Path(model)
    if not path.is_dir():
        return model
    config = path / "config.json"
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    text = config.read_text(encoding="utf-8") if config.is_file() else ""
    identity: dict[str, Any] = {"config": text, "weights": _sizes(weights, path)}
    done = path / DONE_FILE
    if done.is_file():
        identity["stage_id"] = json.loads(done.read_text(encoding="utf-8")).get("stage_id")
    return _digest(identity)


def _data_identity(source: DataSource) -> dict[str, Any]:
    """A data source's selection plus a cheap identity of its content, without its location.

    A record set: its build metadata (less the image roots, which name locations) and validation
    rejects, hashed, plus the sizes of the split's parquet shards — a rebuild, ``data teach`` or
    ``data validate`` changes them, copying or moving the folder does not (mtimes would). A local
    file or folder: its file sizes. A path that does not exist here: a Hub id by name, or a local
    source removed since (``None``: not compared; a finished stage needs no data).
    """
    from cxmind.data.records import META_FILE, VALIDATE_REJECTS_FILE

    selection = {
        k: v
        for k, v in asdict(source).items()
        # the default style is left out so that runs finished before it existed still resume
        if k not in ("path", "image_root") and not (k == "style" and v == "reasoning")
    }
    path = Path(source.path).expanduser()
    if source.is_record_set:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        meta.pop("image_roots", None)
        for entry in meta.get("sources") or []:
            if isinstance(entry, dict):
                entry.pop("root", None)
        rejects = path / VALIDATE_REJECTS_FILE
        content = _digest(
            {
                "meta": meta,
                "rejects": rejects.read_text(encoding="utf-8") if rejects.is_file() else "",
                "shards": _sizes(list((path / "data").glob(f"{source.split}-*.parquet")), path),
            }
        )
    elif path.is_file():
        content = _digest({path.name: path.stat().st_size})
    elif path.is_dir():
        content = _digest(_sizes([p for p in path.rglob("*") if ".cache" not in p.parts], path))
    elif source.path.startswith(("/", ".", "~")):
        content = None
    else:
        content = "hub:" + source.path
    return {**selection, "content": content}


def _hub_dataset_id(source: DataSource) -> str | None:
    """The Hub dataset repo a data source names, or None for local data (the rule of _data_identity)."""
    if Path(source.path).expanduser().exists() or source.path.startswith(("/", ".", "~")):
        return None
    return source.path


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    if isinstance(value, list) and prefix == "data":
        items = {f"data[{i}]": item for i, item in enumerate(value)}
        return {
            "data (sources)": len(value),
            **{k: v for p, i in items.items() for k, v in _flatten(i, p).items()},
        }
    return {prefix: value}


def _changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every difference. Args one side lacks (added or removed by a TRL
    upgrade) and data whose content cannot be read now are not differences."""
    old, new = ({}, {})
    for flat, fingerprint in ((old, stored), (new, current)):
        flat.update({f"args.{k}": v for k, v in (fingerprint.get("args") or {}).items()})
        for section in ("setup", "data", "start"):
            flat.update(_flatten(fingerprint.get(section), section))
    changes = []
    for key in [*old, *(k for k in new if k not in old)]:
        if key.startswith("args.") and (key not in old or key not in new):
            continue
        if key.endswith(".content") and new.get(key) is None:
            continue
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            changes.append(f"{_label(key)} {_show(old.get(key, _ABSENT))} -> {_show(new.get(key, _ABSENT))}")
    return changes


def _label(key: str) -> str:
    starts = {
        "start.model": "base model",
        "start.after": "stage before",
        "start.stage_id": "starting model (the stage before was trained again)",
    }
    return starts.get(key) or key.removeprefix("args.").removeprefix("setup.")


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _run_stage(
    recipe: Recipe,
    stage: StageSpec,
    start_model: str,
    start_adapter: str | None,
    start: dict[str, Any],
    callbacks: Sequence[Any] | None,
) -> StageResult:
    from transformers.trainer_utils import get_last_checkpoint

    from cxmind.data.images import ImageBudget

    out = Path(recipe.output_dir) / stage.name
    config = recipe.stage_config(stage)
    fingerprint = stage_fingerprint(recipe, stage, config, start)
    processor = load_processor(recipe)
    budget = ImageBudget.from_processor(processor)
    data = load_training_data(
        stage.data, kind=stage.type, image_budget=budget, mix=stage.mix, seed=config.seed
    )
    eval_data = (
        load_training_data(stage.eval_data, kind=stage.type, image_budget=budget) if stage.eval_data else None
    )
    model, peft_config, quantization = _policy(recipe, stage, start_model, start_adapter, config)
    trainer_class = _trainer_class(stage.type)
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=data,
        eval_dataset=eval_data,
        processing_class=processor,
        peft_config=peft_config,
        quantization_config=quantization,
        callbacks=list(callbacks or []),
    )
    del model
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    accelerator = trainer.accelerator
    del trainer  # the model, optimizer and any colocated vLLM engine go with it, before merging
    accelerator.free_memory()  # the accelerator's own references; gc.collect() and empty the device cache
    gc.collect()
    reference = out / "ref"  # PEFT saves every adapter: TRL's frozen KL reference copy is not a result
    if accelerator.is_main_process and (reference / "adapter_config.json").is_file():
        shutil.rmtree(reference)
    next_model, next_adapter = str(out), None
    if recipe.peft is not None:
        next_model, next_adapter = start_model, str(out)
        if recipe.peft.between_stages == "merge":
            next_model, next_adapter = str(out / "merged"), None
            if accelerator.is_main_process:
                _merge(start_model, out, processor, config.model_init_kwargs)
    metrics = {k: v for k, v in (output.metrics or {}).items() if isinstance(v, int | float)}
    result = StageResult(
        name=stage.name,
        type=stage.type,
        output_dir=str(out),
        model=next_model,
        adapter=next_adapter,
        resumed_from=Path(last).name if last else None,
        num_examples=len(data),
        metrics=metrics,
        stage_id=_shared_id(),
    )
    if accelerator.is_main_process:
        _write_card(recipe, stage, config, result)
        if stage.push_to_hub:
            _push(recipe, stage, config, result)
        done = {**asdict(result), "skipped": False, "fingerprint": fingerprint}
        tmp = out / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(done, indent=2), encoding="utf-8")
        os.replace(tmp, out / DONE_FILE)
    accelerator.wait_for_everyone()
    return result


def _shared_id() -> str:
    """A new id, the main process's on every process."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([uuid.uuid4().hex])[0]


def _trainer_class(stage_type: str) -> type:
    if stage_type == "sft":
        from cxmind.training.sft import CXMindSFTTrainer

        return CXMindSFTTrainer
    from cxmind.training.grpo import CXMindGRPOTrainer

    return CXMindGRPOTrainer


def load_processor(recipe: Recipe) -> Any:
    """The base model's processor with the recipe's image pixel bounds (left padding for generation)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(recipe.model)
    size = dict(processor.image_processor.size)
    if recipe.min_pixels is not None:
        size["shortest_edge"] = recipe.min_pixels
    if recipe.max_pixels is not None:
        size["longest_edge"] = recipe.max_pixels
    processor.image_processor.size = size  # pixel bounds (transformers 5 dropped min_pixels/max_pixels)
    processor.tokenizer.padding_side = "left"
    return processor


def _policy(
    recipe: Recipe, stage: StageSpec, start_model: str, start_adapter: str | None, config: Any
) -> tuple[Any, Any, Any]:
    """(model or path, peft_config, quantization_config) for a stage's trainer."""
    peft = recipe.peft
    quantization = _quantization(peft) if peft is not None else None
    if peft is not None and start_adapter is not None:  # LoRA "continue": keep training the same adapter
        from peft import PeftModel
        from trl.trainer.utils import create_model_from_path

        init = dict(config.model_init_kwargs or {})
        if quantization is not None:
            init["quantization_config"] = quantization
        base = create_model_from_path(start_model, **init)
        # With beta > 0, TRL's GRPOTrainer copies this adapter, as loaded, into a frozen "ref" adapter: the KL
        # reference is the previous stage's policy. (Loading a "ref" here too would collide with TRL's.)
        model = PeftModel.from_pretrained(base, start_adapter, is_trainable=True)
        return model, None, None
    if peft is not None:
        return start_model, _lora_config(peft), quantization
    if recipe.freezes_vision_tower(stage):
        from trl.trainer.utils import create_model_from_path

        model = create_model_from_path(start_model, **dict(config.model_init_kwargs or {}))
        frozen = 0
        for name, parameter in model.named_parameters():
            if ".visual." in f".{name}":
                parameter.requires_grad_(False)
                frozen += 1
        if not frozen:
            raise RecipeError(f"freeze_vision_tower: {start_model} has no parameters under a 'visual' module")
        return model, None, None
    return start_model, None, None


def _lora_config(peft: PeftSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=peft.r,
        lora_alpha=peft.lora_alpha,
        lora_dropout=peft.lora_dropout,
        target_modules=peft.target_modules,
        exclude_modules=None if peft.train_vision_tower else r".*\.visual\..*",
        task_type="CAUSAL_LM",
    )


def _quantization(peft: PeftSettings) -> Any:
    if peft.method != "qlora":
        return None
    import torch

    if not torch.cuda.is_available():
        raise RecipeError(
            "peft.method 'qlora' needs a CUDA GPU (bitsandbytes 4-bit); use 'lora' on this machine"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RecipeError("peft.method 'qlora' needs bitsandbytes: pip install 'cxmind[quant]'") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _merge(start_model: str, out: Path, processor: Any, model_init_kwargs: dict[str, Any] | None) -> None:
    """Merge the stage's adapter into an unquantised copy of its base, saved as ``<out>/merged``.

    The copy is loaded on the CPU, in the dtype training loaded the base in (the stage's ``model_init_kwargs``
    ``dtype``, TRL's default float32 otherwise): a second model on the GPU could meet the memory a
    trainer or colocated vLLM has not returned yet. It needs CPU RAM for one copy of the base model
    in that dtype (a 7B model: ~16 GB in bfloat16, ~31 GB in float32), on the main process only.
    """
    from peft import PeftModel
    from trl.trainer.utils import create_model_from_path

    init = {k: v for k, v in (model_init_kwargs or {}).items() if k != "quantization_config"}
    init["device_map"] = "cpu"
    base = create_model_from_path(start_model, **init)
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    merged.save_pretrained(out / "merged", safe_serialization=True)
    processor.save_pretrained(out / "merged")


def _describe(source: DataSource) -> str:
    parts = [f"{Path(source.path).name} ({source.split})"]
    if source.task_types:
        parts.append("task types " + ", ".join(source.task_types))
    if source.tasks:
        parts.append("tasks " + ", ".join(source.tasks))
    return "; ".join(parts)


def _card_info(stage: StageSpec, config: Any, result: StageResult) -> Any:
    from cxmind.hub import StageCardInfo

    hyper = {k: getattr(config, k) for k in _CARD_ARGS if hasattr(config, k)}
    rewards = None
    if stage.type == "grpo":
        rewards = {
            "mode": config.reward_mode,
            "reward_weights (format, outcome, think, process)": list(config.reward_weights or []),
            "w_closed": config.w_closed,
            "w_open": config.w_open,
            "think_alpha": config.think_alpha,
            "gate": config.gate,
            "gate_ema_alpha": config.gate_ema_alpha,
            "gate_margin": config.gate_margin,
            "curriculum": config.curriculum,
            "curriculum_adaptive": config.curriculum_adaptive,
        }
    return StageCardInfo(
        name=stage.name,
        kind=stage.type,
        datasets=[_describe(s) for s in stage.data],
        dataset_ids=[i for i in map(_hub_dataset_id, stage.data) if i is not None],
        num_examples=result.num_examples,
        hyperparameters=hyper,
        rewards=rewards,
    )


def _stage_infos(recipe: Recipe, upto: StageSpec, config: Any, result: StageResult) -> list[Any]:
    """Card entries for every finished stage up to and including this one."""
    infos = []
    for stage in recipe.stages:
        if stage is upto:
            infos.append(_card_info(stage, config, result))
            break
        done = _read_done(Path(recipe.output_dir) / stage.name)
        if done is not None:
            previous = _result(done)
            infos.append(_card_info(stage, recipe.stage_config(stage), previous))
    return infos


def _eval_results(out: Path) -> dict[str, Any] | None:
    path = out / "eval" / "results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _card_kwargs(recipe: Recipe, stage: StageSpec, config: Any, result: StageResult) -> dict[str, Any]:
    return {
        "base_model": recipe.model,
        "stages": _stage_infos(recipe, stage, config, result),
        "adapter": result.adapter is not None,
        "eval_results": _eval_results(Path(result.output_dir)),
        "repo_id": recipe.hub_model_id,
        "peft_config": asdict(recipe.peft) if recipe.peft else None,
    }


def _write_card(recipe: Recipe, stage: StageSpec, config: Any, result: StageResult) -> None:
    from cxmind.hub import write_model_card

    kwargs = _card_kwargs(recipe, stage, config, result)
    write_model_card(result.output_dir, **{**kwargs, "adapter": recipe.peft is not None})
    if recipe.peft is not None and result.adapter is None:  # LoRA "merge": the merged model has a card too
        write_model_card(result.model, **kwargs)


def _push(recipe: Recipe, stage: StageSpec, config: Any, result: StageResult) -> None:
    """Push what a user can load: the adapter (LoRA "continue", on the recipe's base model), the
    merged model (LoRA "merge": later adapters sit on merged weights no one else has) or the full model."""
    from cxmind.hub import push_stage

    if not recipe.hub_model_id:
        raise RecipeError(f"stage {stage.name!r} has push_to_hub: true but the recipe sets no hub_model_id")
    kwargs = _card_kwargs(recipe, stage, config, result)
    push_stage(
        result.output_dir if result.adapter is not None else result.model,
        f"{recipe.hub_model_id}-{stage.name}",
        private=recipe.hub_private,
        commit_message=f"cxmind: stage {stage.name}",
        **kwargs,
    )
