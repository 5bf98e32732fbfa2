"""Issue 17's efficacy benchmark: the paper's five-stage sequence on multi-finding phantoms, held out.

Builds phantom chest X-rays with six co-occurring findings (Cardiomegaly, Pleural Effusion,
Pneumothorax, Nodule, Consolidation, Atelectasis; each present with p = 0.3, independently, and no
extra all-normal studies, ``p_normal = 0``; :mod:`cxmind.data.phantom`) and a record set of them
(patient-level splits 0.95/0/0.05 over 1000 patients: ~50 held-out patients, ~300 scored test
records), then trains the "small" random Qwen2.5-VL
(:func:`cxmind.testing.build_tiny_qwen25_vl`, ``size="small"``) on the CPU through
:func:`cxmind.training.pipeline.run_pipeline` with three recipes:

1. ``pretrain`` (in ``--cache``, a one-time "pretraining", timed separately): ``align`` (SFT, image
   -> ``report_impression`` text) then ``instruct`` (SFT, ``style: instruction``: "Is there X?" ->
   Yes/No, single choice -> "B) X", open -> the finding list; mixed with the impressions).
2. ``main`` (``<out>/run``, from the instruct model): ``cold_start`` (SFT on the gold interleaved
   ``<think>``/``<answer>`` traces of the three scored tasks), ``grpo_closed`` (GRPO Stage I,
   ``disease_binary`` + ``disease_single_choice``, CuRL-VPR rewards, gate on) and ``grpo_open``
   (GRPO Stage II, ``disease_open``).
3. ``outcome`` (``<out>/run-outcome``, from the main run's ``cold_start`` model): the same two GRPO
   stages with the same budget but outcome-only rewards (``reward_weights: [0.1, 0.9, 0.0, 0.0]``,
   ``gate: false``: format + outcome, no think/process, no gate) — the ablation.

Default budget (every figure is a flag: ``--align-steps``, ``--instruct-steps``, ``--cold-start-steps``,
``--grpo-closed-steps``, ``--grpo-open-steps``, batches, learning rates, token limits): align 400 x 16
(lr 1e-3), instruct 1600 x 16 (lr 1e-3), cold start 350 x 8 (lr 1e-3), GRPO I 30 steps and GRPO II 20
steps of 16 completions (4 prompts x 4, lr 5e-5 constant, no KL), completions of at most 288 tokens in
Stage I (gold closed traces <= ~215 tokens) and 384 in Stage II and evaluation (gold open traces with
six findings reach ~355 tokens; at 288 a tenth of them would be cut). The vision tower is trained in
``align`` and ``instruct`` only. Measured per-step times with one torch thread and a second run beside
it: align 1.3 s, instruct 1.3 s, cold start 2.6 s, GRPO I 6-9 s, GRPO II 6-11 s; so pretraining ~43
min and the measured part 29-35 min (cold start ~15, GRPO ~13, four evaluations 15-80 s each).

Why these figures (measured on seed 0, 2026-11-29): with 600 align + 500 instruct steps at lr 2e-3 the
pretrained model answered the held-out instruction-style questions at binary 0.58, single choice 0.27,
open F1 0.40 (chance: 0.50, 0.25; the issue's probe saw lr 2e-3 stall the same way and reached 0.78
at lr 1e-3 with 1600 instruction steps); a 200-step cold start left the format unlearnt (0.54 and 0.00
well-formed for seeds 0 and 1) and GRPO then collapsed it to short malformed guesses, while 400 steps
from the same model reached format 1.000 (loss 0.19) and kept 0.94 through a 30-step GRPO I. The
README's Benchmarks section has the figures of both seeds with these defaults.

Every model is evaluated with :func:`cxmind.eval.run.evaluate` (greedy) on the held-out ``test``
split's ``disease_binary``, ``disease_single_choice`` and ``disease_open`` records: the cold-start
model (``eval/cold_start``), the CuRL-VPR final model (``eval/curl``), the outcome-only final model
(``eval/outcome``) and the CuRL-VPR final model on blank images (``eval/blank``: the record set
copied with every evaluated image one constant grey, see :func:`learning.blank_copy`).

Before the measured part, the pretrained ``instruct`` model is asked the same held-out questions in
the short instruction style it learnt (``pretraining_check`` in ``efficacy.json``: binary and single
choice accuracy, open F1; see :func:`instruction_check`), which tells whether the binding of the asked
finding to the image exists before the cold start. After the measured part, :func:`reading_check`
(``reading_check`` in ``efficacy.json``) asks of the pretrained and the cold-start model whether they
read the question at all: how much the gold answer's likelihood drops when the question, or the
image, is swapped for another record's.

Figures (the last line, 3 decimals each):
``closed_acc: a, open_f1_sft: s, open_f1: o, blank_acc: c, blank_f1: bf, chance: h, const_f1: k,
format: f, pc_curl: p1, pc_outcome: p2``

* a: closed accuracy of the CuRL-VPR final model (``by_type.closed.accuracy`` of results.json:
  binary and single choice pooled over records);
* s, o: open F1 (``by_type.open.f1``, the mean per-record set F1 of the final answer's findings)
  after cold-start SFT and after GRPO II;
* c, bf: closed accuracy and open F1 of the final model on blank images;
* h: uniform-guess accuracy over the evaluated closed questions' options;
* k: the best constant answer's open F1 on the same test records and metric
  (:func:`cxmind.eval.metrics.per_record`), over "No Finding" and every non-empty set of the world's
  findings (:func:`constant_f1`);
* f: format-valid rate (``overall.format``), the minimum over the cold-start and final evaluations;
* p1, p2: process consistency (``by_type.closed.process_consistency``: the share of earlier rounds
  whose ✅/❌ agrees with gold) of the CuRL-VPR and of the outcome-only final model.

Targets (``targets`` in ``efficacy.json``): f >= 0.98, a >= 0.90, o >= 0.70, o >= s + 0.05,
c <= h + 0.05, bf <= k + 0.05, p1 >= p2 + 0.05 with o >= the outcome-only open F1, and the measured
part (cold start -> GRPO I -> GRPO II for both branches -> evaluations) within 30 minutes.

    python benchmarks/efficacy.py [--out DIR] [--cache DIR] [--quick] [--seed 0] [--threads 1]
                                  [--findings NAME,...|all] [--align-steps N ...]

``--out`` (default: a new temporary folder, kept) receives the three recipes, stage models,
evaluations, the blank record set and ``efficacy.json``; finished stages and predictions already in
it are reused, so time a run on a fresh folder. ``--quick`` is a smoke run of a few minutes on a
handful of patients and steps; its numbers are not expected to meet the targets.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from learning import (
    _STARTED,
    Progress,
    _quiet_trainer_logs,
    blank_copy,
    chance,
    evaluate_model,
    grpo_args,
    phantom_records,
    recipe_dict,
    run_settings,
    say,
    sft_args,
    world_name,
)

from cxmind.data.phantom import PHANTOM_FINDINGS

CLOSED_TASKS = ("disease_binary", "disease_single_choice")
OPEN_TASKS = ("disease_open",)
EVAL_TASKS = CLOSED_TASKS + OPEN_TASKS
ALIGN_TASKS = ("report_impression",)  # image -> findings text: trained, never scored
OUTCOME_ONLY = {"reward_weights": [0.1, 0.9, 0.0, 0.0], "gate": False}  # format, outcome, think, process
MAIN_STAGES = ("cold_start", "grpo_closed", "grpo_open")
OUTCOME_STAGES = ("outcome_grpo_closed", "outcome_grpo_open")
MEASURED_LIMIT_S = 30 * 60


@dataclass(frozen=True)
class Settings:
    """What one run trains on and how long (``--quick`` shrinks everything)."""

    patients: int = 1000
    test_fraction: float = 0.05  # patient-level held-out share (~50 patients, ~300 scored records)
    image_size: int = 224
    max_pixels: int = 224 * 224  # 64 image tokens
    findings: tuple[str, ...] = PHANTOM_FINDINGS[:6]
    p_finding: float = 0.3  # each finding, independently
    p_normal: float = 0.0  # extra all-normal first studies (0: only the 0.7**6 = 12% drawn normal)
    model_size: str = "small"
    align_steps: int = 400
    align_batch: int = 16
    align_lr: float = 1.0e-3
    instruct_steps: int = 1600
    instruct_batch: int = 16
    instruct_lr: float = 1.0e-3
    cold_start_steps: int = 350
    cold_start_batch: int = 8
    cold_start_lr: float = 1.0e-3
    grpo_closed_steps: int = 30
    grpo_open_steps: int = 20
    grpo_batch: int = 16
    grpo_generations: int = 4
    grpo_lr: float = 5.0e-5
    max_completion: int = 288  # GRPO Stage I: gold closed traces are <= ~215 tokens
    max_completion_open: int = 384  # GRPO Stage II: gold open traces reach ~355 tokens with 6 findings
    eval_max_tokens: int = 384  # greedy evaluation, every task
    eval_batch: int = 32
    freeze_after_pretraining: int = 1  # 1: the vision tower is trained in "align" and "instruct" only
    seed: int = 0


QUICK = Settings(
    patients=40,
    test_fraction=0.25,
    align_steps=16,
    align_batch=8,
    instruct_steps=16,
    instruct_batch=8,
    cold_start_steps=8,
    cold_start_batch=4,
    grpo_closed_steps=2,
    grpo_open_steps=2,
    grpo_batch=8,
    max_completion=96,
    max_completion_open=96,
    eval_max_tokens=128,
)


# ------------------------------------------------------------------------------------------------
# Data and model
# ------------------------------------------------------------------------------------------------


def prepare(cache: Path, s: Settings) -> tuple[Path, Path]:
    """(record set, base model) under ``cache``, built on first use and reused afterwards."""
    from cxmind.testing import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(cache / f"{s.model_size}-qwen2.5-vl", seed=0, size=s.model_size)
    name = f"{s.patients}p-{s.image_size}px-{world_name(s)}-p{s.p_finding}-normal{s.p_normal}-seed{s.seed}"
    return phantom_records(cache, name, s, EVAL_TASKS + ALIGN_TASKS, p_normal=s.p_normal), model


# ------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------


def pretrain_recipe(model: Path, records: Path, out: Path, s: Settings) -> dict[str, Any]:
    """align -> instruct (the stages before the cold start; cached)."""
    align = {"path": str(records), "tasks": list(ALIGN_TASKS)}
    instruct = {"path": str(records), "tasks": list(EVAL_TASKS), "style": "instruction"}
    return recipe_dict(
        model,
        out,
        s,
        [
            {
                "name": "align",
                "type": "sft",
                "data": [align],
                "args": sft_args(s.align_steps, s.align_batch, s.align_lr),
            },
            {
                "name": "instruct",
                "type": "sft",
                "data": [instruct, align],
                "args": sft_args(s.instruct_steps, s.instruct_batch, s.instruct_lr),
            },
        ],
    )


def grpo_stages(records: Path, s: Settings, prefix: str = "", **extra: Any) -> list[dict[str, Any]]:
    """GRPO Stage I (closed) -> Stage II (open); ``extra`` args go to both (e.g. the ablation's)."""
    stages = (
        ("grpo_closed", CLOSED_TASKS, s.grpo_closed_steps, s.max_completion),
        ("grpo_open", OPEN_TASKS, s.grpo_open_steps, s.max_completion_open),
    )
    return [
        {
            "name": f"{prefix}{name}",
            "type": "grpo",
            "freeze_vision_tower": bool(s.freeze_after_pretraining),
            "data": [{"path": str(records), "tasks": list(tasks)}],
            "args": grpo_args(steps, s, max_completion, **extra),
        }
        for name, tasks, steps, max_completion in stages
    ]


def main_recipe(model: str, records: Path, out: Path, s: Settings) -> dict[str, Any]:
    """cold start -> GRPO I -> GRPO II with CuRL-VPR rewards (defaults: all four, gate on)."""
    return recipe_dict(
        model,
        out,
        s,
        [
            {
                "name": "cold_start",
                "type": "sft",
                "freeze_vision_tower": bool(s.freeze_after_pretraining),
                "data": [{"path": str(records), "tasks": list(EVAL_TASKS)}],
                "args": sft_args(s.cold_start_steps, s.cold_start_batch, s.cold_start_lr),
            },
            *grpo_stages(records, s),
        ],
    )


def outcome_recipe(cold_start: str, records: Path, out: Path, s: Settings) -> dict[str, Any]:
    """The ablation: the same GRPO I -> II from the same cold-start model, format + outcome only."""
    return recipe_dict(cold_start, out, s, grpo_stages(records, s, prefix="outcome_", **OUTCOME_ONLY))


def run_recipe(raw: dict[str, Any], path: Path, progress: Progress, start: Any = None) -> list[Any]:
    """Write ``raw`` to ``path`` and run it. ``start``: the ``stage_id`` of the stage whose model the
    recipe starts from. The pipeline refuses a run folder whose starting stage was trained again (as
    ``cxmind train`` does); the benchmark redoes such a folder instead, as a rerun should."""
    from cxmind.training.pipeline import run_pipeline
    from cxmind.training.recipe import Recipe

    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    plan = Recipe.from_dict(raw, source=str(path))
    plan.validate()
    say(f"recipe {path}: " + " -> ".join(stage.name for stage in plan.stages))
    marker = Path(raw["output_dir"]) / "started_from.json"
    stale = marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) != {"stage_id": start}
    if stale:
        say(f"{raw['output_dir']} was trained from another {raw['model']}; training it again")
    with _quiet_trainer_logs():
        results = run_pipeline(plan, callbacks=[progress], overwrite=stale)
    marker.write_text(json.dumps({"stage_id": start}) + "\n", encoding="utf-8")
    for result in results:
        if result.skipped:
            say(f"stage {result.name}: reused the finished stage in {result.output_dir}")
    return results


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> dict[str, float]:
    """closed accuracy, open F1, format and process consistency of one results.json."""
    m = results["metrics"]

    def value(group: dict[str, Any], key: str) -> float:
        return float((group.get(key) or {}).get("value", float("nan")))

    closed, open_ = m["by_type"].get("closed", {}), m["by_type"].get("open", {})
    return {
        "closed_acc": value(closed, "accuracy"),
        "open_f1": value(open_, "f1"),
        "format": value(m["overall"], "format"),
        "process_consistency": value(closed, "process_consistency"),
    }


def constant_f1(test_open: list[dict[str, Any]], s: Settings) -> dict:
    """The best constant answer's mean open F1 on ``test_open`` (same per-record metric as eval):
    every answer a model could give without looking, "No Finding" and each non-empty subset of the
    world's findings, is scored and the best one kept (an oracle constant: chosen on this split)."""
    from itertools import combinations

    from cxmind.eval.metrics import per_record
    from cxmind.vocab import NO_FINDING

    answers = [NO_FINDING] + [
        ", ".join(subset) for n in range(1, len(s.findings) + 1) for subset in combinations(s.findings, n)
    ]
    scores = {}
    for answer in answers:
        prediction = f"<think>constant</think><answer>{answer}</answer>"
        values = [per_record({**r, "prediction": prediction, "error": None})["f1"] for r in test_open]
        scores[answer] = sum(values) / len(values) if values else 0.0
    ranked = sorted(scores, key=lambda a: -scores[a])
    return {
        "best": ranked[0],
        "f1": scores[ranked[0]],
        "no_finding": scores[NO_FINDING],
        "top5": {a: scores[a] for a in ranked[:5]},
    }


def instruction_check(model: str, records: Path, rows: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    """How well the pretrained (``instruct``) model answers the held-out questions in the short
    instruction style it was trained on: does it bind the asked finding to the image before the
    cold start? Greedy, at most 24 new tokens. Binary: the Yes/No word; single choice: the option
    letter; open: the mean per-record set F1 of the listed findings (as the evaluation scores it)."""
    from cxmind.data.images import ImageBudget, load_image
    from cxmind.data.records import image_roots
    from cxmind.eval.generate import GenerationConfig, HFBackend
    from cxmind.eval.metrics import finding_set, set_prf
    from cxmind.format import option_letter, option_letters
    from cxmind.training.data import instruction_turns

    config = GenerationConfig(
        max_new_tokens=24, batch_size=s.eval_batch, budget=ImageBudget(max_pixels=s.max_pixels)
    )
    backend, roots = HFBackend(model, None, config), image_roots(records)
    scores: dict[str, list[float]] = {task: [] for task in EVAL_TASKS}
    for start in range(0, len(rows), config.batch_size):
        batch = rows[start : start + config.batch_size]
        prompts = [
            (
                instruction_turns(r)[0],
                [load_image(roots[r["source"]], rel, config.budget) for rel in r["images"]],
            )
            for r in batch
        ]
        for r, (text, _) in zip(batch, backend.generate(prompts), strict=True):
            gold = instruction_turns(r)[1]
            if r["task"] in OPEN_TASKS:
                score = set_prf(finding_set(text), finding_set(gold))[2]
            elif gold.lower() in ("yes", "no"):
                words = text.strip().lower().split()
                score = float(bool(words) and words[0].strip(".,") == gold.lower())
            else:
                letters = option_letters(r["options"])
                score = float(option_letter(text, letters) == option_letter(gold, letters))
            scores[r["task"]].append(score)
    return {task: sum(v) / len(v) for task, v in scores.items() if v}


def reading_check(
    model: str, records: Path, rows: list[dict[str, Any]], s: Settings, style: str, per_task: int = 40
) -> dict[str, dict[str, float | int | None]]:
    """Does ``model`` read the question and look at the image? Per task, the mean negative
    log-likelihood (nats) of each record's gold answer given its own question and image, and how much
    it rises when the question is swapped for another record's question of the same task (image
    kept), or the image for another study's (question kept). A model that ignores the question shows
    a rise near 0 even where the gold answer depends on it (the option texts a trace repeats, the
    asked finding). ``style``: ``"trace"`` (the format-instructed prompt, gold ``solution``) or
    ``"instruction"`` (:func:`cxmind.training.data.instruction_turns`). At most ``per_task`` records
    per task, the others drawn with the run's seed."""
    import random

    import torch

    from cxmind.data.images import ImageBudget, load_image
    from cxmind.data.prompts import prompt_messages
    from cxmind.data.records import image_roots
    from cxmind.eval.generate import GenerationConfig, HFBackend
    from cxmind.training.data import instruction_turns

    budget = ImageBudget(max_pixels=s.max_pixels)
    backend, roots = HFBackend(model, None, GenerationConfig(budget=budget)), image_roots(records)
    processor, net = backend.processor, backend.model

    def turns(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        if style == "instruction":
            return instruction_turns(record)
        return prompt_messages(record), str(record["solution"])

    def nll(asked: dict[str, Any], shown: dict[str, Any], answer: str) -> float:
        prompt = turns(asked)[0]
        reply = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        images = [load_image(roots[shown["source"]], rel, budget) for rel in shown["images"]]
        start = processor(
            text=[processor.apply_chat_template(prompt, add_generation_prompt=True)],
            images=images,
            return_tensors="pt",
        )["input_ids"].shape[1]
        full = processor(
            text=[processor.apply_chat_template(prompt + reply)], images=images, return_tensors="pt"
        )
        with torch.no_grad():
            logits = net(**full).logits[0, start - 1 : -1].float()
        target = full["input_ids"][0, start:]
        return -torch.log_softmax(logits, -1).gather(1, target[:, None]).sum().item()

    rng = random.Random(s.seed)
    out: dict[str, dict[str, float | int | None]] = {}
    for task in sorted({r["task"] for r in rows}):
        group = [r for r in rows if r["task"] == task]
        prompts = [turns(r)[0] for r in group]  # built once: each sampled record compares against all
        own, question_rise, image_rise = [], [], []
        for index in rng.sample(range(len(group)), min(per_task, len(group))):
            record = group[index]
            answer = turns(record)[1]
            base = nll(record, record, answer)
            own.append(base)
            asked = [r for r, prompt in zip(group, prompts, strict=True) if prompt != prompts[index]]
            if asked:
                question_rise.append(nll(rng.choice(asked), record, answer) - base)
            shown = [r for r in group if r["study_id"] != record["study_id"]]
            if shown:
                image_rise.append(nll(record, rng.choice(shown), answer) - base)
        out[task] = {
            "records": len(own),
            "nll": _mean(own),
            "question_swapped": _mean(question_rise),
            "image_swapped": _mean(image_rise),
        }
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None  # None: nothing to swap in


def measured_timings(
    out: Path, results: list[Any], progress: Progress, evaluations: dict[str, float]
) -> dict[str, Any]:
    """Seconds of every measured stage and evaluation: this run's where it ran them, else those of
    the run that did (kept in ``<out>/measured_seconds.json``), so a rerun that reuses finished
    stages reports the measured time they took, not the seconds it spent finding them. A stage
    finished before that file existed counts its trainer's ``train_runtime``."""
    path = out / "measured_seconds.json"
    kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    stages = dict(kept.get("stages", {}))
    for r in results:
        if not r.skipped:
            stages[r.name] = progress.seconds[r.name]
        elif r.name not in stages:
            info = json.loads((Path(r.output_dir) / "cxmind_stage.json").read_text(encoding="utf-8"))
            stages[r.name] = float(info["metrics"]["train_runtime"])
    timings = {"stages": stages, "evaluations": {**kept.get("evaluations", {}), **evaluations}}
    path.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    return timings


def table(name: str, fig: dict[str, float]) -> str:
    return (
        f"  {name:<12} closed acc {fig['closed_acc']:.3f}  open F1 {fig['open_f1']:.3f}  "
        f"format {fig['format']:.3f}  process consistency {fig['process_consistency']:.3f}"
    )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args, s, cache, out = run_settings(argv, __doc__, Settings(), QUICK, "efficacy", "the first six")

    from cxmind.data.records import load_records

    records, model = prepare(cache, s)
    test = load_records(records, "test", decode_images=False)
    evaluated = test.filter(lambda r: r["task"] in EVAL_TASKS)
    closed = evaluated.filter(lambda r: r["task"] in CLOSED_TASKS)
    tasks = tuple(t for t in EVAL_TASKS if t in set(evaluated["task"]))
    h, n_eval = chance(closed), len(evaluated)
    counts = json.loads((records / "cxmind_data.json").read_text(encoding="utf-8"))["records_by_split_task"]
    say(f"records: {counts}")
    say(f"evaluated: {n_eval} test records of {', '.join(tasks)}; closed chance {h:.3f}")

    # -- pretraining (cached): align -> instruct ------------------------------------------------
    progress = Progress()
    pre_raw = pretrain_recipe(model, records, Path("PLACEHOLDER"), s)
    key = _digest({k: v for k, v in pre_raw.items() if k != "output_dir"})
    pre_dir = cache / f"pretrain-{key}"
    pre_raw["output_dir"] = str(pre_dir)
    say("pretraining: align -> instruct (cached in --cache)")
    begin = time.monotonic()
    pre_results = run_recipe(pre_raw, out / "recipe-pretrain.yaml", progress)
    pre_seconds_now = time.monotonic() - begin
    pre_log = pre_dir / "pretrain_seconds.json"
    pre_reused = all(r.skipped for r in pre_results)
    if not pre_reused:
        pre_log.write_text(json.dumps({"seconds": pre_seconds_now}) + "\n", encoding="utf-8")
    pre_seconds = json.loads(pre_log.read_text())["seconds"] if pre_log.is_file() else pre_seconds_now
    instruct_model = pre_results[-1].model
    check_rows = [dict(r) for r in evaluated]
    pre_check = instruction_check(instruct_model, records, check_rows, s)
    say(
        "pretrained model, instruction-style questions on the test split: "
        + ", ".join(f"{task} {value:.3f}" for task, value in pre_check.items())
    )

    # -- measured part: cold start -> GRPO I -> GRPO II (both branches) -> evaluations ----------
    measured_begin = time.monotonic()
    say("measured part: cold start -> GRPO I (closed) -> GRPO II (open), CuRL-VPR rewards")
    main_results = run_recipe(
        main_recipe(instruct_model, records, out / "run", s),
        out / "recipe.yaml",
        progress,
        start=pre_results[-1].stage_id,
    )
    by_name = {r.name: r for r in main_results}
    say("ablation: GRPO I -> II from the same cold-start model, outcome-only rewards, no gate")
    outcome_results = run_recipe(
        outcome_recipe(by_name["cold_start"].model, records, out / "run-outcome", s),
        out / "recipe-outcome.yaml",
        progress,
        start=by_name["cold_start"].stage_id,
    )
    by_name.update({r.name: r for r in outcome_results})

    models = {
        "cold_start": by_name["cold_start"].model,
        "curl": by_name["grpo_open"].model,
        "outcome": by_name["outcome_grpo_open"].model,
    }
    generation = replace(s, max_completion=s.eval_max_tokens)  # what learning.evaluate_model reads
    trained = {r.name for r in (*main_results, *outcome_results) if not r.skipped}
    redo = {
        "cold_start": {"cold_start"},
        "curl": set(MAIN_STAGES),
        "blank": set(MAIN_STAGES),
        "outcome": {"cold_start", *OUTCOME_STAGES},
    }
    for name, stages_ in redo.items():  # predictions of a model trained again in this run are stale
        if trained & stages_ and (out / "eval" / name).is_dir():
            shutil.rmtree(out / "eval" / name)
    scores: dict[str, dict[str, Any]] = {}
    eval_seconds: dict[str, float] = {}
    blank, grey = blank_copy(records, out, evaluated)
    say(f"blank control: the final model on the test images painted grey (level {grey})")
    evaluations = {name: (path, records) for name, path in models.items()}
    evaluations["blank"] = (models["curl"], blank)
    for name, (path, data) in evaluations.items():
        begin, fresh = time.monotonic(), not (out / "eval" / name).is_dir()
        scores[name] = evaluate_model(path, data, out / "eval" / name, generation, tasks)
        if fresh:
            eval_seconds[name] = time.monotonic() - begin
        say(f"evaluated {name} on {n_eval} held-out records in {time.monotonic() - begin:.0f}s")

    test_open = [dict(r) for r in evaluated if r["task"] in OPEN_TASKS]
    const = constant_f1(test_open, s)
    timings = measured_timings(out, [*main_results, *outcome_results], progress, eval_seconds)
    reused = [r for r in (*main_results, *outcome_results) if r.skipped]
    measured = (
        time.monotonic()
        - measured_begin
        + sum(timings["stages"][r.name] for r in reused)
        + sum(v for k, v in timings["evaluations"].items() if k not in eval_seconds)
    )

    # -- diagnostics outside the measured part: do the models read the question? ----------------
    reading = {
        "pretrained": reading_check(instruct_model, records, check_rows, s, "instruction"),
        "cold_start": reading_check(models["cold_start"], records, check_rows, s, "trace"),
    }
    for name, by_task in reading.items():
        say(
            f"reading check, {name} (gold-answer NLL rise in nats, question swapped / image swapped): "
            + ", ".join(f"{t} {v['question_swapped']} / {v['image_swapped']}" for t, v in by_task.items())
        )

    fig = {name: figures(results) for name, results in scores.items()}
    print("held-out test split:", flush=True)
    for name, values_ in fig.items():
        print(table(name, values_), flush=True)
    a, s_f1, o = fig["curl"]["closed_acc"], fig["cold_start"]["open_f1"], fig["curl"]["open_f1"]
    c, bf, k = fig["blank"]["closed_acc"], fig["blank"]["open_f1"], const["f1"]
    f = min(fig["cold_start"]["format"], fig["curl"]["format"])
    p1, p2 = fig["curl"]["process_consistency"], fig["outcome"]["process_consistency"]
    o2 = fig["outcome"]["open_f1"]
    checks = {
        "format >= 0.98": f >= 0.98,
        "closed_acc >= 0.90": a >= 0.90,
        "open_f1 >= 0.70": o >= 0.70,
        "open_f1 >= open_f1_sft + 0.05": o >= s_f1 + 0.05,
        "blank_acc <= chance + 0.05": c <= h + 0.05,
        "blank_f1 <= const_f1 + 0.05": bf <= k + 0.05,
        "pc_curl >= pc_outcome + 0.05 and open_f1 >= open_f1_outcome": p1 >= p2 + 0.05 and o >= o2,
        "measured part <= 30 min": measured <= MEASURED_LIMIT_S,
    }
    stages = [
        {
            "name": r.name,
            "branch": branch,
            "model": r.model,
            "reused": r.skipped,
            "seconds": progress.seconds.get(r.name) or timings["stages"].get(r.name),
        }
        for branch, results in (
            ("pretrain", pre_results),
            ("curl", main_results),
            ("outcome", outcome_results),
        )
        for r in results
    ]
    total = time.monotonic() - _STARTED
    summary = {
        "settings": asdict(s),
        "records": str(records),
        "tasks": tasks,
        "n_eval": n_eval,
        "n_closed": len(closed),
        "n_open": len(test_open),
        "closed_acc": a,
        "open_f1_sft": s_f1,
        "open_f1": o,
        "blank_acc": c,
        "blank_f1": bf,
        "chance": h,
        "const_f1": k,
        "format": f,
        "pc_curl": p1,
        "pc_outcome": p2,
        "open_f1_outcome": o2,
        "closed_acc_outcome": fig["outcome"]["closed_acc"],
        "closed_acc_sft": fig["cold_start"]["closed_acc"],
        "evaluations": fig,
        "constant_answers": const,
        "blank_grey_level": grey,
        "stages": stages,
        "eval_seconds": timings["evaluations"],
        "pretraining_check": pre_check,
        "reading_check": reading,
        "pretraining_seconds": pre_seconds,
        "pretraining_reused": pre_reused,
        "pretraining_dir": str(pre_dir),
        "measured_seconds": measured,
        "wall_seconds": total,
        "targets": checks,
    }
    (out / "efficacy.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"results: {out / 'efficacy.json'}; evaluations: {out / 'eval'}")
    print("stage seconds: " + ", ".join(f"{k_} {v:.0f}" for k_, v in timings["stages"].items()))
    print(
        f"pretraining: {pre_seconds:.0f}s{' (cached)' if pre_reused else ''}; measured part: {measured:.0f}s"
    )
    print("targets: " + ", ".join(f"{k_} {'met' if v else 'MISSED'}" for k_, v in checks.items()))
    note = "  [--quick: targets not expected]" if args.quick else ""
    print(f"wall time: {total:.0f}s ({total / 60:.1f} min){note}")
    print(
        f"closed_acc: {a:.3f}, open_f1_sft: {s_f1:.3f}, open_f1: {o:.3f}, blank_acc: {c:.3f}, "
        f"blank_f1: {bf:.3f}, chance: {h:.3f}, const_f1: {k:.3f}, format: {f:.3f}, "
        f"pc_curl: {p1:.3f}, pc_outcome: {p2:.3f}"
    )


if __name__ == "__main__":
    main()
