"""Run a recipe's stages in order (the paper: SFT → GRPO closed → GRPO open), resumably.

Each stage writes to ``<output_dir>/<stage>/`` and starts from the previous stage's weights:

- full fine-tuning: the previous stage's saved model; TRL builds the KL reference from the same path;
- LoRA ``merge``: the previous adapter merged into its base (``<stage>/merged``), with a fresh adapter —
  disabling the adapter gives the stage's starting policy as KL reference;
- LoRA ``continue``: the base plus the previous adapter, trainable, and a frozen copy loaded as the
  adapter TRL names "ref", the KL reference.

A finished stage leaves ``cxmind_stage.json``; re-running the pipeline skips it. An interrupted
stage resumes from its last ``checkpoint-*`` (optimizer, scheduler, RNG, gate and curriculum state).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxmind.training.data import DataSource, load_training_data
from cxmind.training.recipe import PeftSettings, Recipe, RecipeError, StageSpec

__all__ = ["DONE_FILE", "StageResult", "run_pipeline"]

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


def run_pipeline(
    recipe: Recipe,
    *,
    only: Sequence[str] | None = None,
    callbacks: Sequence[Any] | None = None,
) -> list[StageResult]:
    """Run (or skip, if finished) every stage of ``recipe``; ``only`` limits to named stages."""
    if only:
        for name in only:
            recipe.stage(name)  # clear error for an unknown name
    model, adapter = recipe.model, None
    results: list[StageResult] = []
    for stage in recipe.stages:
        out = Path(recipe.output_dir) / stage.name
        done = _read_done(out)
        if done is not None:
            result = StageResult(**{**done, "skipped": True})
        elif only and stage.name not in only:
            raise RecipeError(
                f"stage {stage.name!r} has not finished, so {list(only)} cannot start from it; "
                "run the earlier stages first (drop --only)"
            )
        else:
            result = _run_stage(recipe, stage, model, adapter, out, callbacks)
        results.append(result)
        model, adapter = result.model, result.adapter
    return results


def _read_done(out: Path) -> dict[str, Any] | None:
    path = out / DONE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _run_stage(
    recipe: Recipe,
    stage: StageSpec,
    start_model: str,
    start_adapter: str | None,
    out: Path,
    callbacks: Sequence[Any] | None,
) -> StageResult:
    from transformers.trainer_utils import get_last_checkpoint

    from cxmind.data.images import ImageBudget

    config = recipe.stage_config(stage)
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
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    accelerator = trainer.accelerator
    next_model, next_adapter = str(out), None
    if recipe.peft is not None:
        next_model, next_adapter = start_model, str(out)
        if recipe.peft.between_stages == "merge":
            next_model, next_adapter = str(out / "merged"), None
            if accelerator.is_main_process:
                _merge(recipe, start_model, out, processor)
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
    )
    if accelerator.is_main_process:
        _write_card(recipe, stage, config, result)
        if stage.push_to_hub:
            _push(recipe, stage, config, result)
        tmp = out / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps({**asdict(result), "skipped": False}, indent=2), encoding="utf-8")
        os.replace(tmp, out / DONE_FILE)
    accelerator.wait_for_everyone()
    del trainer
    return result


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
        model = PeftModel.from_pretrained(base, start_adapter, is_trainable=True)
        model.load_adapter(
            start_adapter, adapter_name="ref", is_trainable=False
        )  # KL reference (TRL's "ref")
        model.set_adapter("default")
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


def _merge(recipe: Recipe, start_model: str, out: Path, processor: Any) -> None:
    """Merge the stage's adapter into an unquantised copy of its base, saved as ``<out>/merged``."""
    from peft import PeftModel
    from trl.trainer.utils import create_model_from_path

    init = {k: v for k, v in (recipe.model_init_kwargs or {}).items() if k != "quantization_config"}
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
            previous = StageResult(**done)
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
