"""Does the pipeline learn to *see*? Align, SFT, then GRPO on phantom chest X-rays, held-out patients.

Builds phantom chest X-rays (:mod:`cxmind.data.phantom`, findings drawn where the labels say) and a
record set from them, trains the tiny random Qwen2.5-VL (:mod:`cxmind.testing`) on the CPU with a
real recipe through :func:`cxmind.training.pipeline.run_pipeline`, and evaluates with
:func:`cxmind.eval.run.evaluate` (greedy decoding) after SFT, after GRPO, and once more on blank
images. The last line is ``sft_acc: a, grpo_acc: b, blank_acc: c, chance: h, format: f``; targets:
f >= 0.95, a >= 0.85, b >= a, c <= h + 0.10, under 30 minutes on two CPU cores.

Definitions:

* **held-out**: the record set's ``test`` split. Splits are patient-level (``cxmind.data.splits``), so
  no test patient has any study in training. The build uses split fractions 0.7/0/0.3 so the test
  split holds a few hundred evaluated records (the validation split is unused).
* **closed accuracy** (a after SFT, b after GRPO): the fraction of evaluated test records whose final
  option letter is the gold one (``metrics.overall.accuracy`` of results.json: pooled over records,
  not a mean of task means), over ``disease_binary`` ("Is there X?", Yes/No) and
  ``disease_single_choice`` ("Which finding is present?", four options). Their answers depend on the
  image only: findings are drawn where the labels say and the question carries no label. Left out:
  ``view_position`` (one of its three options, "Lateral", is never right for a phantom, and PA:AP is
  80:20, so text alone beats uniform guessing by far), ``progression`` (two images) and
  ``image_text_matching`` (also a reading test of the report quoted in the question). Multi-choice is
  scored as open; open tasks are neither trained nor scored here.
* **chance h**: the accuracy of a uniform guess over each question's options, averaged over the
  evaluated records: mean of ``1 / len(options)`` (0.5 binary, 0.25 single choice; 0.5 in the
  default one-finding world, which has binary questions only).
* **format f**: the format-valid rate (``metrics.overall.format``: only well-formed
  ``<think>…</think><answer>…</answer>`` rounds, at least two) on the evaluated records: the
  *minimum* over the SFT and GRPO evaluations.
* **blank control c**: the final (GRPO) model on the same test records through the same
  :func:`~cxmind.eval.run.evaluate` call, every image replaced by a blank one: a copy of the record
  set (same parquet shards) whose ``cxmind_data.json`` image root points at PNGs with the same sizes
  and relative paths, all one constant grey (the mean grey level of the evaluated images, so the
  blank carries no per-image information). A model that reads the image falls to about chance.

Data: 300 phantom patients at 224 px, image budget 224*224 (64 image tokens), in a one-finding
world: each first study shows Cardiomegaly with probability 0.5 (``p_normal=0``, so no extra
"normal" studies tilt the answers to "No"), which makes every scored question a binary one whose
answer is in the image alone. Harder worlds are a flag away; see "How far it goes".

Recipe (written to ``<out>/recipe.yaml``; ``cxmind train`` runs it as is):

1. ``align`` (SFT, 800 steps x 16, lr 2e-3): image -> ``report_impression`` text. Short prompts
   (the image is 64 of ~90 tokens), so the randomly initialised vision tower and the language model
   learn to connect; the usual VLM alignment stage. Closed-question SFT alone never does: its
   ~175-token format instructions dilute the image and the model learns the format but ignores
   the pixels (output distributions unchanged when the image is swapped).
2. ``sft`` (SFT, 600 steps x 8, lr 2e-3, cosine): the two scored tasks' gold trajectories (train
   split), mixed with the impressions so the visual pathway is kept.
3. ``grpo_closed`` (GRPO Stage I, 30 steps, 16 completions = 4 prompts x 4, lr 5e-5 constant, no KL,
   max 288 completion tokens): the same closed tasks, CuRL-VPR rewards, ``CXMindGRPOConfig``
   defaults (gate on). GRPO Stage II (open questions) is optional in the method and left out, as
   only closed questions are scored.

Seeds are fixed; runs are deterministic up to CPU thread scheduling. One torch thread by default:
with two threads a step stalls ~10x as soon as another process holds a core.

How far it goes (``--findings``; one run each, seed 0, two cores, ``--cache`` warm except for
the default row; per-run figures are in the README). The tiny model has 2 language layers of 2
heads. With one finding (default) every target is met. With two findings a closed question also
needs the *asked* finding looked up in the question, and the result swings with the alignment
length: ``--findings "Cardiomegaly,Pleural Effusion" --patients 600`` reached sft 0.623 / grpo 0.639
with 800 align steps, 0.829 / 0.832 with ``--align-steps 1200`` (21 min; 0.02 short of the SFT
target), and fell to a constant answer (0.449) with 1600. With all eight findings (``--findings all
--p-finding 0.3 --patients 2000 --test-fraction 0.1``, binary and single-choice questions, chance
0.376) accuracy stays at chance (sft 0.373, grpo 0.361), also with 4 layers x 4 heads. There, after
alignment the image carries the findings (held-out impression NLL 5.9 nats with the study's own
image vs 10-12 with another's), but the model does not look up the asked finding: layer-0 heads
assemble sub-word tokens, both layer-1 heads spread over the image tokens, and the finding's name
is copied into the summary no more often than by chance (13.5% vs 12.5%).

    python benchmarks/learning.py [--out DIR] [--cache DIR] [--quick] [--seed 0] [--threads 1]
                                  [--findings NAME,NAME,...|all] [--align-steps N ...]

Phantoms, records and the base model are built once into ``--cache`` (default
``$CXMIND_CACHE/bench-learning``, else ``~/.cache/cxmind/bench-learning``); ``--out`` (default: a new
temporary folder, kept) receives the recipe, stage models, evaluations (results.json, report.html),
the blank-image record set and ``learning.json``. Finished stages and predictions already in
``--out`` are reused, as ``cxmind train``/``cxmind eval`` do, so time a run on a fresh folder.
``--quick`` is a smoke run of about a minute on 40 patients; its numbers are not expected to meet
the targets.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from transformers import TrainerCallback

from cxmind.data.phantom import PHANTOM_FINDINGS

if TYPE_CHECKING:
    from datasets import Dataset

EVAL_TASKS = ("disease_binary", "disease_single_choice")
ALIGN_TASKS = ("report_impression",)  # image -> findings text: trained, never scored
_CPU = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}
_STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {text}", flush=True)


def run_settings(
    argv: list[str] | None, doc: str, full: Any, quick: Any, name: str, findings_default: str
) -> tuple[argparse.Namespace, Any, Path, Path]:
    """The command line every learning benchmark shares: (args, settings, cache, run folder).

    ``full``/``quick`` are the default and ``--quick`` settings (a frozen dataclass with ``findings``,
    ``seed``, numeric and string fields); every numeric or string field becomes a ``--flag``. Also
    quiets transformers, datasets and warnings, and sets the torch thread count.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a new temporary one)")
    parser.add_argument("--cache", type=Path, default=None, help="phantoms, records, base model (reused)")
    parser.add_argument("--quick", action="store_true", help="smoke run (a few minutes; no targets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--findings",
        default=None,
        help=f"comma-separated phantom label space, or 'all' (default: {findings_default})",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (2 stalls ~10x when a core is busy)"
    )
    tunable = parser.add_argument_group("settings (what to train on and how long; see Settings)")
    defaults = full.__dict__
    numbers = [n for n, v in defaults.items() if n != "seed" and isinstance(v, int | float)]
    words = [n for n, v in defaults.items() if isinstance(v, str)]
    for field_ in numbers + words:
        default = defaults[field_]
        flag = f"--{field_.replace('_', '-')}"
        tunable.add_argument(flag, dest=field_, type=type(default), default=None, help=f"default {default}")
    args = parser.parse_args(argv)

    import datasets
    import torch
    from transformers import logging as hf_logging

    from cxmind.testing import default_cache_dir
    from cxmind.vocab import canonical

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")  # deprecation chatter of transformers/TRL, once per stage
    torch.set_num_threads(args.threads)

    values = dict((quick if args.quick else full).__dict__, seed=args.seed)
    values.update({k: getattr(args, k) for k in numbers + words if getattr(args, k) is not None})
    if args.findings == "all":
        values["findings"] = PHANTOM_FINDINGS
    elif args.findings:
        chosen = {canonical(f.strip()) for f in args.findings.split(",") if f.strip()}
        values["findings"] = tuple(f for f in PHANTOM_FINDINGS if f in chosen)
        if len(values["findings"]) != len(chosen):
            parser.error(f"--findings: choose from {', '.join(PHANTOM_FINDINGS)}")
    settings = type(full)(**values)
    cache = (args.cache or default_cache_dir() / f"bench-{name}").expanduser().absolute()
    out = (args.out or Path(tempfile.mkdtemp(prefix=f"cxmind-bench-{name}-"))).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    say(f"settings: {settings}")
    say(f"cache {cache}; run folder {out}; torch threads {torch.get_num_threads()}")
    return args, settings, cache, out


@dataclass(frozen=True)
class Settings:
    """What one run trains on and how long (``--quick`` shrinks everything)."""

    patients: int = 300
    test_fraction: float = 0.3  # patient-level held-out share
    image_size: int = 224  # phantom side in pixels
    max_pixels: int = 224 * 224  # model image budget: 64 image tokens
    findings: tuple[str, ...] = ("Cardiomegaly",)  # the phantoms' label space (see "How far it goes")
    p_finding: float = 0.5  # chance a first study shows each finding
    align_steps: int = 800  # stage "align": image -> impression text
    align_batch: int = 16
    align_lr: float = 2.0e-3
    sft_steps: int = 600  # stage "sft": closed questions (+ impressions)
    sft_batch: int = 8
    sft_lr: float = 2.0e-3
    grpo_steps: int = 30
    grpo_batch: int = 16
    grpo_generations: int = 4
    grpo_lr: float = 5.0e-5
    max_completion: int = 288  # gold single-choice trajectories are <= ~230 tokens
    eval_batch: int = 32
    freeze_after_align: int = 1  # 1: the vision tower is trained in "align" only
    text_layers: int = 2  # the tiny model's language model: layers x heads (hidden size 128)
    text_heads: int = 2
    seed: int = 0


QUICK = Settings(patients=40, test_fraction=0.3, align_steps=20, sft_steps=20, grpo_steps=2, grpo_batch=8)


# ------------------------------------------------------------------------------------------------
# Data and model
# ------------------------------------------------------------------------------------------------


def world_name(s: Any) -> str:
    """The phantom label space as it appears in cache folder names."""
    return "all" if s.findings == PHANTOM_FINDINGS else "+".join(f.replace(" ", "") for f in s.findings)


def phantom_records(cache: Path, name: str, s: Any, tasks: tuple[str, ...], p_normal: float) -> Path:
    """Phantom studies and a record set of ``tasks`` over them (patient-level splits
    ``1 - s.test_fraction``/0/``s.test_fraction``), under ``cache``; each is built on first use only."""
    from cxmind.data.build import BuildConfig, SourceSpec, build
    from cxmind.data.images import ImageBudget
    from cxmind.data.phantom import write_phantom_dataset
    from cxmind.data.records import META_FILE
    from cxmind.data.tasks import TaskConfig

    phantom = cache / f"phantom-{name}"
    if not (phantom / "phantom.csv").is_file():  # written last: its presence means a complete dataset
        say(f"drawing phantoms: {s.patients} patients, {s.image_size}px, {len(s.findings)} findings")
        write_phantom_dataset(
            phantom,
            n_patients=s.patients,
            seed=s.seed,
            size=s.image_size,
            findings=s.findings,
            p_finding=s.p_finding,
            p_normal=p_normal,
        )
    records = cache / f"records-{name}-{s.max_pixels}px2-test{s.test_fraction}"
    if not (records / META_FILE).is_file():
        say(f"building records (patient-level splits {1 - s.test_fraction:g}/0/{s.test_fraction:g})")
        config = BuildConfig(
            sources=[SourceSpec("phantom", phantom)],
            out=records,
            task=TaskConfig(tasks=tasks, budget=ImageBudget(max_pixels=s.max_pixels), seed=s.seed),
            split_fractions=(1 - s.test_fraction, 0.0, s.test_fraction),
        )
        build(config, progress=False)
    return records


def prepare(cache: Path, s: Settings) -> tuple[Path, Path]:
    """(record set, base model) under ``cache``, built on first use and reused afterwards."""
    from cxmind.testing import build_tiny_qwen25_vl

    model = build_tiny_qwen25_vl(cache / "tiny-qwen2.5-vl", seed=0)
    if (s.text_layers, s.text_heads) != (2, 2):
        model = widen(model, cache / f"tiny-qwen2.5-vl-L{s.text_layers}H{s.text_heads}", s)
    name = f"{s.patients}p-{s.image_size}px-{world_name(s)}-p{s.p_finding}-normal0-seed{s.seed}"
    return phantom_records(cache, name, s, EVAL_TASKS + ALIGN_TASKS, p_normal=0.0), model


def widen(base: Path, target: Path, s: Settings) -> Path:
    """The tiny model with another language-model depth / head count (random init, same processor)."""
    import torch
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    if (target / "model.safetensors").is_file():
        return target
    config = AutoConfig.from_pretrained(base)
    text = config.text_config
    head_dim = text.hidden_size // s.text_heads
    text.num_hidden_layers = text.max_window_layers = s.text_layers
    text.layer_types = ["full_attention"] * s.text_layers
    text.num_attention_heads = s.text_heads
    text.num_key_value_heads = max(1, s.text_heads // 2)
    unit = head_dim // 16  # mrope_section: head_dim / 2 rotary frequencies over (t, h, w), split 2:3:3
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [2 * unit, 3 * unit, 3 * unit]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = Qwen2_5_VLForConditionalGeneration.from_pretrained(base).generation_config
    model.save_pretrained(target)
    AutoProcessor.from_pretrained(base).save_pretrained(target)
    return target


def blank_copy(records: Path, out: Path, evaluated: Dataset) -> tuple[Path, int]:
    """A copy of ``records`` whose ``evaluated`` rows' images are constant grey PNGs of the same sizes.

    Returns (copy, grey level).

    Parquet shards are copied unchanged; only ``image_roots`` in the metadata is re-pointed, so the
    copy is evaluated by the very same code path as the original.
    """
    import numpy as np
    from PIL import Image

    from cxmind.data.records import META_FILE, image_roots, read_meta

    target = out / "records-blank"
    if (target / META_FILE).is_file():
        meta = read_meta(target)
        return target, int(meta["blank_grey_level"])
    staging = out / ".records-blank.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(records / "data", staging / "data")
    roots = image_roots(records)
    wanted = sorted({(r["source"], rel) for r in evaluated for rel in r["images"]})
    means = []
    sizes = {}
    for source, rel in wanted:
        with Image.open(roots[source] / rel) as image:
            sizes[(source, rel)] = image.size
            means.append(float(np.asarray(image.convert("L"), dtype=np.float32).mean()))
    grey = round(sum(means) / len(means))
    for (source, rel), size in sizes.items():
        path = staging / "images" / source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (grey, grey, grey)).save(path)
    meta = read_meta(records)
    meta["image_roots"] = {source: f"images/{source}" for source in roots}
    meta["blank_grey_level"] = grey
    (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, target)
    return target, grey


def chance(evaluated: Dataset) -> float:
    """Uniform-guess accuracy over each evaluated question's options, averaged."""
    values = [1 / len(options) for options in evaluated["options"]]
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def sft_args(steps: int, batch: int, lr: float) -> dict[str, Any]:
    """SFT arguments of a benchmark stage: CPU, cosine schedule with 5% warm-up, no checkpoints."""
    return {
        **_CPU,
        "per_device_train_batch_size": batch,
        "max_steps": steps,
        "learning_rate": lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "logging_steps": max(1, steps // 8),
        "save_strategy": "no",
    }


def grpo_args(steps: int, s: Any, max_completion: int, **extra: Any) -> dict[str, Any]:
    """GRPO arguments of a benchmark stage: CPU, constant lr, no KL, sampling at temperature 1."""
    return {
        **_CPU,
        "per_device_train_batch_size": s.grpo_batch,
        "num_generations": s.grpo_generations,
        "max_completion_length": max_completion,
        "max_steps": steps,
        "learning_rate": s.grpo_lr,
        "lr_scheduler_type": "constant",
        "beta": 0.0,
        "temperature": 1.0,
        "logging_steps": max(1, steps // 6),
        "save_strategy": "no",
        **extra,
    }


def recipe_dict(model: Path | str, out: Path, s: Any, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """A recipe as ``cxmind train`` reads it (YAML), from ``model`` into ``out`` with the run's seed."""
    return {
        "model": str(model),
        "output_dir": str(out),
        "seed": s.seed,
        "max_pixels": s.max_pixels,
        "stages": stages,
    }


def recipe(model: Path, records: Path, out: Path, s: Settings) -> dict[str, Any]:
    """align -> SFT -> GRPO Stage I (closed), as a recipe dict (``cxmind train`` reads it as YAML too)."""
    closed = {"path": str(records), "tasks": list(EVAL_TASKS)}
    align = {"path": str(records), "tasks": list(ALIGN_TASKS)}
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
                "name": "sft",
                "type": "sft",
                "freeze_vision_tower": bool(s.freeze_after_align),
                "data": [closed, align],
                "args": sft_args(s.sft_steps, s.sft_batch, s.sft_lr),
            },
            {
                "name": "grpo_closed",
                "type": "grpo",
                "freeze_vision_tower": bool(s.freeze_after_align),
                "data": [closed],
                "args": grpo_args(s.grpo_steps, s, s.max_completion),
            },
        ],
    )


class Progress(TrainerCallback):
    """One compact line per logging step (instead of transformers' printed log dicts); stage times."""

    KEYS = (
        "loss",
        "mean_token_accuracy",
        "reward",
        "rewards/outcome/mean",
        "rewards/format/mean",
        "curl_vpr/gate/stable",
        "completions/mean_length",
    )

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.begin = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.monotonic()
        say(f"stage {Path(args.output_dir).name}: {state.max_steps} steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        shown = [
            f"{key.split('/')[1] if key.startswith('rewards/') else key.split('/')[-1]} {logs[key]:.3g}"
            for key in self.KEYS
            if isinstance(logs.get(key), int | float)
        ]
        if shown:
            elapsed = time.monotonic() - self.begin
            say(f"  step {state.global_step:>4}/{state.max_steps} ({elapsed:4.0f}s)  " + ", ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        name = Path(args.output_dir).name
        self.seconds[name] = time.monotonic() - self.begin
        say(f"stage {name} done in {self.seconds[name]:.0f}s")


@contextlib.contextmanager
def _quiet_trainer_logs() -> Iterator[None]:
    """Trainers print every log dict when tqdm is off; the progress callback prints one line instead."""
    import transformers.trainer as hf_trainer

    saved = hf_trainer.PrinterCallback
    hf_trainer.PrinterCallback = TrainerCallback
    try:
        yield
    finally:
        hf_trainer.PrinterCallback = saved


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def evaluate_model(
    model: str, records: Path, out: Path, s: Settings, tasks: tuple[str, ...]
) -> dict[str, Any]:
    from cxmind.data.images import ImageBudget
    from cxmind.eval.generate import GenerationConfig
    from cxmind.eval.run import EvalConfig, evaluate

    config = EvalConfig(
        model=model,
        data=records,
        out=out,
        split="test",
        tasks=tasks,
        generation=GenerationConfig(
            max_new_tokens=s.max_completion,
            batch_size=s.eval_batch,
            seed=s.seed,
            budget=ImageBudget(max_pixels=s.max_pixels),
        ),
        n_bootstrap=1000,
        html_samples=100,
    )
    return evaluate(config, progress=False)


def _cell(metric: dict[str, Any] | None) -> str:
    if not metric:
        return "-"
    ci = metric.get("ci")
    return f"{metric['value']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def metrics_table(title: str, results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    groups = {"closed (pooled)": metrics["overall"], **metrics["by_task"]}
    lines = [
        f"{title}",
        f"  {'task':<24}{'n':>5}  {'accuracy [95% CI]':<22}{'format [95% CI]':<22}"
        f"{'consistency':>12}{'tokens':>8}",
    ]
    for name, m in groups.items():
        n = (m.get("accuracy") or {}).get("n", 0)
        consistency = m.get("process_consistency", {}).get("value", float("nan"))
        tokens = m.get("tokens", {}).get("value", float("nan"))
        lines.append(
            f"  {name:<24}{n:>5}  {_cell(m.get('accuracy')):<22}{_cell(m.get('format')):<22}"
            f"{consistency:>12.3f}{tokens:>8.0f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args, s, cache, out = run_settings(argv, __doc__, Settings(), QUICK, "learning", "Cardiomegaly")

    from cxmind.data.records import load_records
    from cxmind.training.pipeline import run_pipeline
    from cxmind.training.recipe import Recipe

    records, model = prepare(cache, s)
    test = load_records(records, "test", decode_images=False)
    present = set(test["task"])
    tasks = tuple(t for t in EVAL_TASKS if t in present)  # a one-finding world has no single choice
    evaluated = test.filter(lambda r: r["task"] in tasks)
    h, n_eval = chance(evaluated), len(evaluated)
    counts = json.loads((records / "cxmind_data.json").read_text(encoding="utf-8"))["records_by_split_task"]
    say(f"records: {counts}")
    say(f"evaluated: {n_eval} test records of {', '.join(tasks)}; chance {h:.3f}")

    raw = recipe(model, records, out / "run", s)
    (out / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    plan = Recipe.from_dict(raw)
    plan.validate()
    say(f"recipe: {out / 'recipe.yaml'}")
    say("training: align -> SFT -> GRPO Stage I (closed questions; CuRL-VPR rewards, gate on)")
    progress = Progress()
    with _quiet_trainer_logs():
        results = run_pipeline(plan, callbacks=[progress])
    for result in results:
        if result.skipped:
            say(f"stage {result.name}: reused the finished stage in {result.output_dir}")

    scores: dict[str, dict[str, Any]] = {}
    by_name = {result.name: result for result in results}
    for name in ("sft", "grpo_closed"):
        begin = time.monotonic()
        scores[name] = evaluate_model(by_name[name].model, records, out / "eval" / name, s, tasks)
        say(f"evaluated {name} on {n_eval} held-out records in {time.monotonic() - begin:.0f}s")
        print(metrics_table(f"after {name} (held-out test split)", scores[name]), flush=True)
    blank, grey = blank_copy(records, out, evaluated)
    begin = time.monotonic()
    scores["blank"] = evaluate_model(by_name["grpo_closed"].model, blank, out / "eval" / "blank", s, tasks)
    say(f"evaluated grpo_closed on blank images (grey level {grey}) in {time.monotonic() - begin:.0f}s")
    print(metrics_table("control: grpo_closed on blank images (same records)", scores["blank"]), flush=True)

    def overall(name: str, metric: str) -> float:
        return scores[name]["metrics"]["overall"][metric]["value"]

    a, b, c = overall("sft", "accuracy"), overall("grpo_closed", "accuracy"), overall("blank", "accuracy")
    f = min(overall("sft", "format"), overall("grpo_closed", "format"))
    checks = {
        "format >= 0.95": f >= 0.95,
        "sft_acc >= 0.85": a >= 0.85,
        "grpo_acc >= sft_acc": b >= a,
        "blank_acc <= chance + 0.10": c <= h + 0.10,
    }
    total = time.monotonic() - _STARTED
    summary = {
        "settings": s.__dict__,
        "records": str(records),
        "tasks": tasks,
        "n_eval": n_eval,
        "sft_acc": a,
        "grpo_acc": b,
        "blank_acc": c,
        "chance": h,
        "format": f,
        "stages": [
            {"name": r.name, "model": r.model, "reused": r.skipped, "seconds": progress.seconds.get(r.name)}
            for r in results
        ],
        "wall_seconds": total,
        "targets": checks,
    }
    (out / "learning.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"results: {out / 'learning.json'}; evaluations: {out / 'eval'}")
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in progress.seconds.items()))
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items()))
    note = "  [--quick: targets not expected]" if args.quick else ""
    print(f"wall time: {total:.0f}s ({total / 60:.1f} min){note}")
    print(f"sft_acc: {a:.3f}, grpo_acc: {b:.3f}, blank_acc: {c:.3f}, chance: {h:.3f}, format: {f:.3f}")


if __name__ == "__main__":
    main()
