"""The multi-stage pipeline: SFT → GRPO closed → GRPO open from one recipe; skip finished, resume."""

import gc
import json
import math
import weakref

import pytest
import torch
from transformers import TrainerCallback

from cxmind.training.pipeline import DONE_FILE, run_pipeline
from cxmind.training.recipe import Recipe, RecipeError, apply_overrides

pytestmark = pytest.mark.slow

CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "logging_steps": 1, "learning_rate": 1e-3}
GRPO = {
    **CPU,
    "per_device_train_batch_size": 4,
    "num_generations": 4,
    "max_completion_length": 12,
    "max_steps": 2,
    "save_strategy": "steps",
    "save_steps": 1,
}


def recipe_dict(model, records, out, peft=None):
    raw = {
        "model": str(model),
        "output_dir": str(out),
        "seed": 0,
        "max_pixels": 224 * 224,
        "stages": [
            {
                "name": "sft",
                "type": "sft",
                "data": [{"path": str(records), "task_types": ["closed", "open"]}],
                "args": {**CPU, "per_device_train_batch_size": 4, "max_steps": 2, "save_strategy": "no"},
            },
            {
                "name": "grpo_closed",
                "type": "grpo",
                "data": [{"path": str(records), "task_types": ["closed"]}],
                "args": dict(GRPO),
            },
            {
                "name": "grpo_open",
                "type": "grpo",
                "data": [{"path": str(records), "task_types": ["open"]}],
                "args": dict(GRPO),
            },
        ],
    }
    if peft is not None:
        raw["peft"] = peft
    return raw


class Interrupt(TrainerCallback):
    """Simulates a crash in one stage right after its first checkpoint is written."""

    def __init__(self, stage):
        self.stage = stage

    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.stage) and state.global_step == 1:
            raise KeyboardInterrupt("simulated preemption")


class Spy(TrainerCallback):
    def __init__(self):
        self.starts = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        adapters = sorted(getattr(model, "peft_config", {}) or {})
        self.starts.append((args.output_dir.rsplit("/", 1)[-1], state.global_step, adapters))


def test_full_pipeline_runs_skips_and_resumes(tiny_qwen25_vl_path, phantom_records, tmp_path):
    recipe = Recipe.from_dict(recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, callbacks=[Interrupt("grpo_closed")])
    assert (tmp_path / "run" / "sft" / DONE_FILE).is_file()
    assert not (tmp_path / "run" / "grpo_closed" / DONE_FILE).exists()
    assert (tmp_path / "run" / "grpo_closed" / "checkpoint-1").is_dir()

    spy = Spy()
    results = run_pipeline(recipe, callbacks=[spy])
    assert [r.name for r in results] == ["sft", "grpo_closed", "grpo_open"]
    assert [r.skipped for r in results] == [True, False, False]
    assert results[1].resumed_from == "checkpoint-1" and results[2].resumed_from is None
    # the interrupted stage continued at step 1, the next one started fresh
    assert [(name, step) for name, step, _ in spy.starts] == [("grpo_closed", 1), ("grpo_open", 0)]
    # each stage starts from the previous one's weights
    assert results[1].model == str(tmp_path / "run" / "grpo_closed")
    for result in results:
        folder = tmp_path / "run" / result.name
        assert (folder / "model.safetensors").is_file() and (folder / DONE_FILE).is_file()
        card = (folder / "README.md").read_text()
        assert "not for clinical use" in card.lower()
    open_card = (tmp_path / "run" / "grpo_open" / "README.md").read_text()
    assert "grpo_closed" in open_card and "sft" in open_card
    assert str(tmp_path) not in open_card

    # a third run has nothing left to do
    again = run_pipeline(recipe)
    assert all(r.skipped for r in again)


def test_each_stage_starts_from_and_is_regularised_towards_the_previous_one(
    tiny_qwen25_vl_path, phantom_records, tmp_path, monkeypatch
):
    from transformers import AutoModelForImageTextToText
    from trl.trainer import grpo_trainer

    loaded = []
    real = grpo_trainer.create_model_from_path
    monkeypatch.setattr(
        grpo_trainer, "create_model_from_path", lambda path, **kw: loaded.append(path) or real(path, **kw)
    )
    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run")
    raw["stages"] = raw["stages"][:2]
    raw["stages"][1]["args"]["beta"] = 0.01
    results = run_pipeline(Recipe.from_dict(raw))
    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_vl_path).state_dict()
    sft = AutoModelForImageTextToText.from_pretrained(results[0].output_dir).state_dict()
    assert any(not torch.equal(base[k], sft[k]) for k in base)
    # GRPO's policy and its KL reference (beta > 0) are both loaded from the SFT stage's output
    assert loaded == [results[0].output_dir, results[0].output_dir]


def test_vision_tower_frozen_per_stage(tiny_qwen25_vl_path, phantom_records, tmp_path):
    from transformers import AutoModelForImageTextToText

    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run")
    sft = raw["stages"][0]
    # an alignment stage trains everything; the next one trains the language model only
    raw["stages"] = [{**sft, "name": "align"}, {**sft, "name": "sft", "freeze_vision_tower": True}]
    recipe = Recipe.from_dict(raw)
    assert [recipe.freezes_vision_tower(s) for s in recipe.stages] == [False, True]
    run_pipeline(recipe)
    base, align, tuned = (
        AutoModelForImageTextToText.from_pretrained(path).state_dict()
        for path in (tiny_qwen25_vl_path, tmp_path / "run" / "align", tmp_path / "run" / "sft")
    )
    visual = [k for k in base if ".visual." in f".{k}"]
    assert visual and any(not torch.equal(base[k], align[k]) for k in visual)
    assert all(torch.equal(align[k], tuned[k]) for k in visual)
    assert any(not torch.equal(align[k], tuned[k]) for k in base if k not in visual)

    raw["peft"] = {"r": 4}
    with pytest.raises(RecipeError, match=r"peft.train_vision_tower.*\['sft'\]"):
        Recipe.from_dict(raw)


class Finals(TrainerCallback):
    """Keeps a weak reference to each stage's trained model, its LoRA weights by adapter, and its logs."""

    def __init__(self):
        self.models, self.adapters, self.logs = [], [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from peft import get_peft_model_state_dict

        self.models.append(weakref.ref(model))
        self.adapters.append(
            {
                name: {
                    k: v.detach().clone()
                    for k, v in get_peft_model_state_dict(model, adapter_name=name).items()
                }
                for name in sorted(getattr(model, "peft_config", {}) or {})
            }
        )


def test_lora_merge_frees_the_trainer_and_merges_on_cpu(
    tiny_qwen25_vl_path, phantom_records, tmp_path, monkeypatch
):
    from trl.trainer import utils as trl_utils

    from cxmind.training import pipeline

    loads, alive = [], []
    real_load, real_merge = trl_utils.create_model_from_path, pipeline._merge
    monkeypatch.setattr(
        trl_utils, "create_model_from_path", lambda path, **kw: loads.append(kw) or real_load(path, **kw)
    )

    def merge(*args, **kwargs):  # the trainer that just finished must be gone: its memory is free
        gc.collect()
        alive.append(any(ref() is not None for ref in finals.models))
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_merge", merge)
    peft = {"r": 4, "lora_alpha": 8, "between_stages": "merge", "train_vision_tower": False}
    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run", peft=peft)
    spy, finals = Spy(), Finals()
    results = run_pipeline(Recipe.from_dict(raw), callbacks=[spy, finals])
    adapter_config = json.loads((tmp_path / "run" / "sft" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert "visual" in str(adapter_config["exclude_modules"])
    assert results[0].model.endswith("merged") and results[0].adapter is None
    assert (tmp_path / "run" / "sft" / "merged" / "model.safetensors").is_file()
    assert all(adapters == ["default"] for _, _, adapters in spy.starts)
    # every merge loaded its base on the CPU, after the stage's trainer and model were released
    assert alive == [False, False, False]
    assert [kw.get("device_map") for kw in loads] == ["cpu", "cpu", "cpu"]
    card = (tmp_path / "run" / "grpo_open" / "README.md").read_text()
    assert "library_name: peft" in card


def test_lora_continue_is_regularised_towards_the_previous_stage_adapter(
    tiny_qwen25_vl_path, phantom_records, tmp_path, monkeypatch
):
    """beta > 0: TRL's "ref" adapter is the previous stage's adapter; the KL term is computed against it."""
    from safetensors.torch import load_file

    from cxmind.training.grpo import CXMindGRPOTrainer

    real_rewards = CXMindGRPOTrainer._calculate_rewards

    def noisy_rewards(
        self, *args, **kwargs
    ):  # the random tiny model earns equal rewards: make the policy move
        rewards = real_rewards(self, *args, **kwargs)
        return rewards + torch.rand_like(rewards)

    monkeypatch.setattr(CXMindGRPOTrainer, "_calculate_rewards", noisy_rewards)
    peft = {"r": 4, "lora_alpha": 8, "between_stages": "continue", "train_vision_tower": False}
    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "run", peft=peft)
    raw["stages"] = raw["stages"][:2]
    raw["stages"][1]["args"].update(beta=0.01, save_strategy="no")
    spy, finals = Spy(), Finals()
    results = run_pipeline(Recipe.from_dict(raw), callbacks=[spy, finals])
    assert results[0].model == str(tiny_qwen25_vl_path) and results[0].adapter.endswith("sft")
    assert results[1].model == str(tiny_qwen25_vl_path) and results[1].adapter.endswith("grpo_closed")
    # stages after the first keep training the same adapter; TRL adds its stage-start copy as "ref"
    assert [adapters for _, _, adapters in spy.starts] == [["default"], ["default", "ref"]]
    kl = [logs["kl"] for logs in finals.logs if "kl" in logs]
    assert len(kl) == 2 and all(math.isfinite(v) for v in kl) and kl[-1] > 0
    previous = load_file(str(tmp_path / "run" / "sft" / "adapter_model.safetensors"))
    ref, trained = finals.adapters[1]["ref"], finals.adapters[1]["default"]
    assert previous.keys() == ref.keys() == trained.keys()
    assert all(torch.equal(ref[k], previous[k].to(ref[k].dtype)) for k in previous)
    assert any(not torch.equal(trained[k], previous[k].to(trained[k].dtype)) for k in previous)
    assert not (tmp_path / "run" / "grpo_closed" / "ref").exists()  # the reference copy is not a result
    card = (tmp_path / "run" / "grpo_closed" / "README.md").read_text()
    assert "library_name: peft" in card


def test_recipe_errors_name_the_key_and_fix(tiny_qwen25_vl_path, phantom_records, tmp_path):
    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path)
    raw["stages"][1]["args"]["learnig_rate"] = 1.0
    with pytest.raises(
        RecipeError, match=r"stage 'grpo_closed'.*'learnig_rate' \(did you mean 'learning_rate'\?\)"
    ):
        Recipe.from_dict(raw).validate()
    raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path)
    raw["stages"][0]["args"]["output_dir"] = "elsewhere"
    with pytest.raises(RecipeError, match="set by the pipeline"):
        Recipe.from_dict(raw).validate()
    with pytest.raises(RecipeError, match="no stage named 'grpo'"):
        apply_overrides(
            recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path), ["--stages.grpo.beta", "0.1"]
        )
    raw = apply_overrides(
        recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path),
        ["--stages.grpo_open.beta", "0.04", "--peft.r=8", "--seed", "3"],
    )
    recipe = Recipe.from_dict(raw)
    assert recipe.stage_config(recipe.stage("grpo_open")).beta == 0.04
    assert recipe.peft.r == 8 and recipe.stage_config(recipe.stage("sft")).seed == 3
    with pytest.raises(RecipeError, match="needs a CUDA GPU"):
        raw = recipe_dict(tiny_qwen25_vl_path, phantom_records, tmp_path / "q", peft={"method": "qlora"})
        run_pipeline(Recipe.from_dict(raw))
