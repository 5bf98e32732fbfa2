"""The ``cxmind`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cxmind import __version__
from cxmind.errors import MissingFileError, UserError

#: Set to 1 for full tracebacks of user errors (as ``--debug``).
DEBUG_ENV = "CXMIND_DEBUG"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help text with each option's default, where it has one worth showing and its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default in (argparse.SUPPRESS, [])
        ):
            return text
        return super()._get_help_string(action)


def _add_debug(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,  # a subcommand's flag does not reset the global one
        help=f"show the full traceback of user errors too (or set {DEBUG_ENV}=1)",
    )


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every (sub)parser shows defaults in its help and accepts --debug."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                if "--debug" not in child._option_string_actions:
                    _add_debug(child)
                _finish(child)


def _add_budget_arguments(parser: argparse.ArgumentParser, text: str) -> None:
    """--min-pixels/--max-pixels; their defaults are :class:`~cxmind.data.images.ImageBudget`'s."""
    from cxmind.data.images import ImageBudget

    for bound in ("min", "max"):
        default = getattr(ImageBudget, f"{bound}_pixels")
        parser.add_argument(
            f"--{bound}-pixels",
            type=int,
            default=None,
            help=f"{text.format(bound + 'imum')} (default: {default})",
        )


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    from cxmind.data.audit import add_parser as add_audit_parser
    from cxmind.data.schema import TASKS

    data = sub.add_parser("data", help="build and validate training records from public CXR datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    b = data_sub.add_parser(
        "build",
        help="read sources and write records (parquet shards + dataset card)",
        description="Read public chest X-ray datasets (official file layouts) and write training records.",
    )
    b.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="NAME=FOLDER",
        help="a dataset and the folder with its official files; repeat for several "
        "(names: nih, chexpert, padchest, vindr, rsna, siim, iu_xray, mimic, phantom)",
    )
    b.add_argument(
        "--source-option",
        action="append",
        default=[],
        metavar="NAME.OPTION=VALUE",
        help="a source policy, e.g. chexpert.uncertain=positive or vindr.merge=union",
    )
    b.add_argument("--out", required=True, type=Path, help="output folder for the record set")
    b.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default: all)")
    b.add_argument("--seed", type=int, default=0, help="seed for splits, distractors and wording")
    b.add_argument("--limit", type=int, default=None, help="read at most this many studies per source")
    b.add_argument("--choices", type=int, default=4, help="options of single/multi-choice questions")
    b.add_argument(
        "--balance",
        choices=("answers", "none"),
        default="answers",
        help="answers (default): closed answers equally likely per question stem, so guessing without the "
        "image stays at chance; none: natural label prevalence",
    )
    b.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,validation,test patient fractions")
    _add_budget_arguments(b, "image budget: {} pixels after resizing")
    b.add_argument(
        "--materialize-images",
        action="store_true",
        help="write each image once as a resized RGB PNG under OUT/images (needed for DICOM sources)",
    )
    b.add_argument(
        "--no-dedupe-images",
        action="store_true",
        help="do not hash the images to keep copies across sources in one split (faster; the card warns)",
    )
    b.add_argument(
        "--no-audit", action="store_true", help="do not audit the result into audit.json and the dataset card"
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per CPU, at most 8); the records are the same for any number",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing record set in --out")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")

    v = data_sub.add_parser(
        "validate",
        help="check images and token budgets; write validate.rejects.jsonl",
        description="Check every record's images (missing, corrupt, undersized, escaping the root) and, "
        "with --model, its prompt and completion token counts.",
    )
    v.add_argument("records", type=Path, help="a record set folder written by `cxmind data build`")
    v.add_argument("--model", default=None, help="tokenizer/processor (folder or Hub id) for token counts")
    v.add_argument("--max-prompt-tokens", type=int, default=None, help="reject prompts longer than this")
    v.add_argument(
        "--max-completion-tokens", type=int, default=None, help="reject gold answers longer than this"
    )
    _add_budget_arguments(v, "image budget, as in the build: {} pixels after resizing")
    v.add_argument(
        "--max-source-pixels",
        type=int,
        default=None,
        help="refuse image files declaring more pixels than this, before decoding (default 8192*8192)",
    )
    depth = v.add_mutually_exclusive_group()
    depth.add_argument(
        "--headers-only",
        action="store_true",
        help="read image headers only: fast, but truncated or damaged pixel data goes unnoticed",
    )
    depth.add_argument("--decode", action="store_true", help="decode every image fully (the default)")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")

    add_audit_parser(data_sub)

    h = data_sub.add_parser(
        "push",
        help="push a record set to a Hub dataset repo (token from HF_TOKEN / huggingface-cli login)",
    )
    h.add_argument("records", type=Path, help="a record set folder written by `cxmind data build`")
    h.add_argument("--repo-id", required=True, help="e.g. your-org/cxmind-records")
    h.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    h.add_argument(
        "--include-images",
        action="store_true",
        help="also push materialised images (only if their licenses allow redistribution)",
    )

    t = data_sub.add_parser(
        "teach",
        help="ask an LLM (OpenAI-compatible API) for richer traces; keep those passing the reward filter",
    )
    t.add_argument("records", type=Path, help="a record set folder written by `cxmind data build`")
    t.add_argument(
        "--base-url", required=True, help="e.g. http://localhost:8000/v1 (a `vllm serve` endpoint)"
    )
    t.add_argument("--model", required=True, help="the served teacher model name")
    t.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    t.add_argument("--max-concurrency", type=int, default=8, help="requests in flight at once")
    t.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    t.add_argument(
        "--label-only", action="store_true", help="reason from labels only, even where reports exist"
    )
    t.add_argument(
        "--redo-rejects",
        action="store_true",
        help="ask again for records whose traces the filter rejected (teacher.traces.rejects.jsonl)",
    )
    t.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=5,
        help="stop after this many requests in a row get no answer (unreachable server, bad key); "
        "nothing is rejected and a rerun asks again",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = data_sub.add_parser(
        "phantom", help="write a phantom CXR dataset (procedural images, labels, reports)"
    )
    p.add_argument("out", type=Path, help="folder to write; then --source phantom=OUT")
    p.add_argument("--patients", type=int, default=50, help="number of phantom patients")
    p.add_argument("--seed", type=int, default=0, help="seed of the images, labels and reports")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxmind",
        description="Train chest X-ray vision-language models with interleaved reasoning (CX-Mind) on TRL.",
        epilog="A mistake in a command, file or setting ends with one line naming the fix (exit status 2); "
        "anything else is a bug and shows its traceback.",
    )
    parser.add_argument("--version", action="version", version=f"cxmind {__version__}")
    _add_debug(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="run the CPU demo: tiny model, phantom data, SFT -> GRPO -> evaluation (offline, minutes)",
        description="Build a tiny Qwen2.5-VL and phantom chest X-rays, train SFT -> GRPO Stage I (closed) -> "
        "GRPO Stage II (open) from a written recipe, evaluate, and print the results table and the paths of "
        "the HTML report and the models. Re-running continues an interrupted demo.",
    )
    d.add_argument(
        "--out", type=Path, default=Path("cxmind-demo"), help="output folder (default: ./cxmind-demo)"
    )
    d.add_argument(
        "--scale", type=float, default=1.0, help="multiply the training steps (e.g. 0.1 for a smoke run)"
    )
    d.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N test records")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_data_commands(sub)
    _add_train_command(sub)
    _add_eval_commands(sub)
    _finish(parser)
    return parser


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="run a recipe's stages (SFT -> GRPO closed -> GRPO open); works under `accelerate launch`",
        description="Run the stages of a recipe YAML in order. Finished stages are skipped, an interrupted "
        "stage resumes from its last checkpoint, so re-running the same command continues a run. A finished "
        "stage whose settings, data or starting model changed since is refused (redo it with --restart "
        "STAGE, or everything with --overwrite). Any recipe "
        "value can be overridden: --output_dir runs/x, --peft.r 32, --stages.grpo_open.learning_rate 5e-7. "
        "Launch on several GPUs with: accelerate launch --config_file recipes/accelerate/zero3.yaml "
        "-m cxmind train RECIPE.",
        epilog="Every key under a stage's `args` is a field of trl.SFTConfig / trl.GRPOConfig or of cxmind's "
        "additions (cxmind.training.sft.CXMindSFTConfig, cxmind.training.grpo.CXMindGRPOConfig).",
        allow_abbrev=False,  # an override such as --over 1 must not silently become --overwrite
    )
    t.add_argument("recipe", type=Path, nargs="?", help="recipe YAML file (see recipes/)")
    t.add_argument(
        "--config", type=Path, default=None, metavar="RECIPE", help="the recipe, as TRL's scripts take it"
    )
    t.add_argument(
        "--only", default=None, help="comma-separated stage names to run (earlier ones must be done)"
    )
    redo = t.add_mutually_exclusive_group()
    redo.add_argument(
        "--restart",
        default=None,
        metavar="STAGE",
        help="delete and redo this stage and every stage after it (their starting model changes)",
    )
    redo.add_argument(
        "--overwrite", action="store_true", help="delete every stage's output folder and start the run over"
    )
    t.add_argument(
        "--check",
        action="store_true",
        help="only validate the recipe against a launch (batch sizes, vLLM, memory, lengths) and exit; "
        "describe the launch with the options below (default: this process's launch)",
    )
    t.add_argument("--accelerate-config", type=Path, default=None, help="with --check: the accelerate config")
    t.add_argument("--num-processes", type=int, default=None, help="with --check: total GPUs of the launch")
    t.add_argument("--gpu-memory-gib", type=float, default=None, help="with --check: memory of one GPU")


def _add_generation_arguments(parser: argparse.ArgumentParser, *, batch: bool = True) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hub id (Qwen2.5-VL family)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder or Hub id")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="hf (CPU/GPU) or vllm (GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="longest answer, in tokens")
    if batch:
        parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together (hf)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="weights dtype (auto: the checkpoint's)",
    )
    _add_budget_arguments(parser, "image budget, as in training: {} pixels after resizing")
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="vllm: context to reserve KV cache for (default: longest prompt + --max-new-tokens)",
    )


def _add_eval_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="evaluate a model on a record split: results.json, results.md, report.html",
        description="Generate on every record of a split (resumable), score each task with bootstrap CIs, "
        "and write results.json, a Markdown table and a self-contained HTML reasoning report. A rerun "
        "resumes only from predictions made with the same model, adapter, generation settings and "
        "records (recorded in OUT/manifest.json); --limit and --tasks may change.",
    )
    _add_generation_arguments(e)
    e.add_argument("--data", required=True, type=Path, help="a record set folder (`cxmind data build`)")
    e.add_argument(
        "--out", required=True, type=Path, help="output folder (predictions.jsonl makes it resumable)"
    )
    e.add_argument("--split", default="test", help="the split to evaluate")
    e.add_argument("--tasks", default=None, help="comma-separated tasks (default: all in the split)")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N records (recorded)")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs")
    e.add_argument("--bertscore-model", default=None, help="local BERTScore model folder (else skipped)")
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="delete earlier predictions and results in --out and start over",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "predict",
        help="answer one question about one image and print the reasoning rounds",
        description="Answer one question about one image and print the model's reasoning rounds.",
    )
    _add_generation_arguments(p, batch=False)  # one prompt: nothing to batch
    p.add_argument("--image", required=True, type=Path, help="a PNG/JPEG/DICOM file")
    p.add_argument("--question", required=True, help="the question, as a user would ask it")
    p.add_argument(
        "--task-type",
        choices=("closed", "open", "report"),
        default="open",
        help="closed: pass --option for each option (two or more); open: finding list; report: free text",
    )
    p.add_argument(
        "--option",
        action="append",
        default=None,
        help='with --task-type closed: an option, e.g. --option "A) Edema"',
    )


def _budget(args: argparse.Namespace):
    from cxmind.data.images import ImageBudget

    default = ImageBudget()
    return ImageBudget(
        min_pixels=args.min_pixels if args.min_pixels is not None else default.min_pixels,
        max_pixels=args.max_pixels if args.max_pixels is not None else default.max_pixels,
    )


def _task_list(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")`` (the --tasks syntax)."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _generation(args: argparse.Namespace):
    from cxmind.eval.generate import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=getattr(args, "batch_size", 1),  # predict has no --batch-size: it generates once
        temperature=args.temperature,
        seed=args.seed,
        dtype=args.dtype,
        budget=_budget(args),
        max_model_len=args.max_model_len,
    )


def _eval(args: argparse.Namespace) -> int:
    from cxmind.eval.run import EvalConfig, evaluate

    tasks = _task_list(args.tasks) if args.tasks else None
    config = EvalConfig(
        model=args.model,
        data=args.data,
        out=args.out,
        adapter=args.adapter,
        split=args.split,
        backend=args.backend,
        tasks=tasks,
        limit=args.limit,
        generation=_generation(args),
        n_bootstrap=args.bootstrap,
        bertscore_model=args.bertscore_model,
        overwrite=args.overwrite,
    )
    results = evaluate(config, progress=not args.no_progress)  # StalePredictionsError is a UserError
    from cxmind.eval.html import markdown_table

    print(markdown_table(results))
    print(f"results: {args.out / 'results.json'}\nreport: {args.out / 'report.html'}")
    return 0


def _check_options(task_type: str, options: Sequence[str] | None) -> None:
    if task_type == "closed" and len(options or ()) < 2:
        got = f"got {len(options)}" if options else "got none"
        raise UserError(
            f'--task-type closed needs two or more --option (e.g. --option "A) Yes" --option "B) No"); {got}'
        )
    if task_type != "closed" and options:
        raise UserError(
            f"--option is for --task-type closed; drop it or pass --task-type closed (not {task_type})"
        )


def _predict(args: argparse.Namespace) -> int:
    from cxmind.data.images import read_image, smart_resize
    from cxmind.errors import require_model
    from cxmind.eval.generate import load_backend, prompt_tokens, require_backend
    from cxmind.format import mark_of, parse

    _check_options(args.task_type, args.option)
    require_backend(args.backend)
    config = _generation(args)
    if not args.image.is_file():
        raise MissingFileError(
            f"--image {args.image}: {'is a folder, not' if args.image.is_dir() else 'no such'} file"
        )
    require_model(args.model)
    if args.adapter is not None:
        require_model(args.adapter, flag="--adapter", markers=("adapter_config.json",))
    image = read_image(args.image)
    height, width = smart_resize(image.height, image.width, config.budget)
    image = image.resize((width, height))
    record = {"question": args.question, "task_type": args.task_type, "options": args.option, "images": ["x"]}
    if args.task_type == "closed":
        record["question"] = args.question + "\n" + "\n".join(args.option)
    from cxmind.data.prompts import prompt_messages

    messages = prompt_messages(record)
    max_prompt_tokens = None
    if args.backend == "vllm" and config.max_model_len is None:  # size vLLM's context for this prompt
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
        max_prompt_tokens = prompt_tokens(processor, messages, [(image.width, image.height)], config.budget)
    backend = load_backend(
        args.backend, args.model, args.adapter, config, max_prompt_tokens=max_prompt_tokens
    )
    ((text, n_tokens),) = backend.generate([(messages, [image])])
    parsed = parse(text)
    if not parsed.rounds or args.task_type == "report":
        print(text)
    for i, round_ in enumerate(parsed.rounds, 1):
        mark = mark_of(round_.answer)
        verdict = {"✅": "  [accepted]", "❌": "  [rejected]"}.get(mark or "", "")
        print(f"round {i}\n  think : {round_.think}\n  answer: {round_.answer}{verdict}")
    if parsed.errors:
        print(f"format problems: {'; '.join(parsed.errors)}")
    print(f"({n_tokens} tokens)")
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from cxmind.data.build import BuildConfig, build, parse_source_specs
    from cxmind.data.sources import source_options
    from cxmind.data.tasks import TaskConfig

    expected = f"--split-fractions {args.split_fractions!r}: expected three non-negative numbers summing to 1"
    try:
        fractions = tuple(float(x) for x in args.split_fractions.split(","))
    except ValueError as error:
        raise UserError(f"{expected}, like 0.8,0.1,0.1") from error
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise UserError(f"{expected}, like 0.8,0.1,0.1")
    tasks = _task_list(args.tasks)
    sources = parse_source_specs(args.source, args.source_option)
    for spec in sources:
        source_options(spec.name)  # an unknown source name fails now, before the build starts
    task = TaskConfig(
        tasks=tasks, choices=args.choices, budget=_budget(args), seed=args.seed, balance=args.balance
    )
    config = BuildConfig(
        sources=sources,
        out=args.out,
        task=task,
        split_fractions=fractions,  # type: ignore[arg-type]
        limit=args.limit,
        materialize_images=args.materialize_images,
        dedupe_images=not args.no_dedupe_images,
        audit=not args.no_audit,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    summary = build(config, progress=not args.no_progress)
    print(summary.table())
    print(f"records: {summary.out}")
    return 0


def _data_validate(args: argparse.Namespace) -> int:
    import dataclasses

    from cxmind.data.validate import ValidationConfig, validate

    budget = _budget(args)
    if args.max_source_pixels is not None:
        budget = dataclasses.replace(budget, max_source_pixels=args.max_source_pixels)
    config = ValidationConfig(
        budget=budget,
        max_prompt_tokens=args.max_prompt_tokens,
        max_completion_tokens=args.max_completion_tokens,
        model=args.model,
        decode=not args.headers_only,
    )
    report = validate(args.records, config, progress=not args.no_progress)
    print(report.table())
    print(f"rejects: {args.records / 'validate.rejects.jsonl'}")
    return 0


def _data_audit(args: argparse.Namespace) -> int:
    from cxmind.data.audit import run

    return run(args)


def _data_push(args: argparse.Namespace) -> int:
    from cxmind.data.records import push_records

    url = push_records(
        args.records, args.repo_id, private=not args.public, include_images=args.include_images
    )
    print(f"pushed: {url}")
    return 0


def _data_teach(args: argparse.Namespace) -> int:
    from cxmind.data.teacher import TeacherConfig, teach_record_set

    config = TeacherConfig(
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency,
        timeout_s=args.timeout,
        max_consecutive_failures=args.max_consecutive_failures,
    )
    stats = teach_record_set(
        args.records,
        config,
        label_only=args.label_only,
        redo_rejects=args.redo_rejects,
        progress=not args.no_progress,
    )
    print(stats)
    print(f"traces: {args.records / 'teacher.traces.jsonl'}")
    return 0


def _data_phantom(args: argparse.Namespace) -> int:
    from cxmind.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(args.out, n_patients=args.patients, seed=args.seed, size=args.size)
    print(f"phantom dataset: {root}  (use: cxmind data build --source phantom={root} --out <records>)")
    return 0


def _recipe_path(args: argparse.Namespace) -> Path:
    """The recipe: the positional RECIPE or --config RECIPE, exactly one of them."""
    if args.recipe is not None and args.config is not None:
        raise UserError(f"pass the recipe once: {args.recipe} or --config {args.config}, not both")
    if args.recipe is None and args.config is None:
        raise UserError("no recipe: run `cxmind train RECIPE` (or `--config RECIPE`); see recipes/")
    return args.recipe if args.recipe is not None else args.config


def _accelerate_flags() -> set[str]:
    """Every option of ``accelerate launch`` (``--num_processes``, ``--config-file``, ...)."""
    from accelerate.commands.launch import launch_command_parser

    return {name for action in launch_command_parser()._actions for name in action.option_strings}


def _check_override_names(overrides: Sequence[str], args: argparse.Namespace, recipe: Path) -> None:
    """An ``accelerate launch`` option given to ``cxmind train`` gets the command it belongs to.

    Overrides are recipe keys (``--output_dir``, ``--peft.r``); an option that is no recipe key but an
    ``accelerate launch`` one (``--num_processes 2``) was meant for the launcher, so say how to launch.
    An unknown key that is neither is refused by the recipe with its nearest keys.
    """
    from cxmind.training.recipe import recipe_keys

    keys = set(recipe_keys())
    flags: set[str] | None = None
    for i, item in enumerate(overrides):
        if not item.startswith("--"):
            continue
        name, _, inline = item.partition("=")
        if name[2:].split(".")[0] in keys:
            continue
        flags = _accelerate_flags() if flags is None else flags
        if name not in flags:
            continue
        value = inline or (overrides[i + 1] if i + 1 < len(overrides) else "")
        words = name[2:].replace("-", "_")
        if args.check and words in ("num_processes", "config_file"):
            own = "--num-processes" if words == "num_processes" else "--accelerate-config"
            fix = f"{own} {value}".rstrip()
            raise UserError(
                f"{name} is an `accelerate launch` flag; with --check, describe the launch with {fix}"
            )
        launch = f"accelerate launch {name} {value}".rstrip()
        raise UserError(
            f"{name} is an `accelerate launch` flag, not a recipe key: "
            f"run `{launch} -m cxmind train {recipe}`"
        )


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from cxmind.errors import require_model
    from cxmind.training.pipeline import run_pipeline
    from cxmind.training.preflight import (
        LaunchSettings,
        assume_training_gpu,
        check_recipe,
        describe_recipe,
        local_gpu_memory_gib,
        raise_for_errors,
    )
    from cxmind.training.recipe import load_recipe

    path = _recipe_path(args)
    _check_override_names(overrides, args, path)
    if not args.check and args.num_processes is not None:  # it describes a launch; it launches nothing
        raise UserError(
            f"--num-processes only describes a launch for --check; to train on {args.num_processes} GPUs run "
            f"`accelerate launch --num_processes {args.num_processes} -m cxmind train {path}`"
        )
    if not args.check and (args.accelerate_config is not None or args.gpu_memory_gib is not None):
        flag = "--accelerate-config" if args.accelerate_config is not None else "--gpu-memory-gib"
        raise UserError(f"{flag} only describes a launch for --check; add --check or drop it")
    if args.check:  # checked on a login node or laptop for the GPUs it will run on
        if args.accelerate_config is not None:
            launch = LaunchSettings.from_accelerate_config(args.accelerate_config, args.num_processes)
        else:
            launch = LaunchSettings(num_processes=args.num_processes or 1)
        with assume_training_gpu():
            recipe = load_recipe(path, overrides, validate=False)  # validated at launch's size
        findings = check_recipe(recipe, **vars(launch), gpu_memory_gib=args.gpu_memory_gib)
    else:
        recipe = load_recipe(path, overrides)
        require_model(recipe.model, flag=f"{path}: model")  # before anything loads: cached/on the Hub
        findings = check_recipe(
            recipe, **vars(LaunchSettings.from_env()), gpu_memory_gib=local_gpu_memory_gib()
        )
    main_process = int(os.environ.get("RANK", "0")) == 0
    for finding in findings:
        if finding.level != "error" and main_process:
            print(f"cxmind train: warning: {finding.key}: {finding.message}", file=sys.stderr)
    raise_for_errors(findings)
    if args.check:
        with assume_training_gpu():
            print(describe_recipe(recipe, **vars(launch), gpu_memory_gib=args.gpu_memory_gib))
        print(f"cxmind train: {path}: no errors ({len(recipe.stages)} stages)")
        return 0
    results = run_pipeline(
        recipe,
        only=_task_list(args.only) if args.only else None,
        restart=args.restart,
        overwrite=args.overwrite,
    )
    if main_process:
        for result in results:
            state = "skipped (finished earlier)" if result.skipped else "trained"
            print(f"{result.name:<16} {state:<26} {result.adapter or result.model}")
    return 0


def _split_train_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """``argv`` without the recipe overrides of ``cxmind train`` (``--key value``), and the overrides.

    An option ``cxmind train`` does not define is an override, and takes the next word as its value
    (unless written ``--key=value``), so argparse never mistakes a value for the RECIPE positional.
    """
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if at is None or argv[at] != "train":
        return argv, []
    known = commands["train"]._option_string_actions
    kept, overrides = argv[: at + 1], []
    i = at + 1
    while i < len(argv):
        word = argv[i]
        name = word.partition("=")[0]
        if word == "--":
            kept += argv[i:]
            break
        if name in known:
            takes_value = known[name].nargs != 0 and "=" not in word
            kept += argv[i : i + 1 + takes_value]
            i += 1 + takes_value
        elif word.startswith("--"):
            takes_value = "=" not in word and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            overrides += argv[i : i + 1 + takes_value]
            i += 1 + takes_value
        else:
            kept.append(word)
            i += 1
    return kept, overrides


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "data_command", None) if args.command == "data" else None
    return f"{args.command} {sub}" if sub else str(args.command)


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.command == "demo":
        from cxmind.demo import run_demo

        run_demo(args.out, scale=args.scale, eval_limit=args.eval_limit, progress=not args.no_progress)
        return 0
    if args.command == "train":
        return _train(args, overrides)
    if args.command == "eval":
        return _eval(args)
    if args.command == "predict":
        return _predict(args)
    handler = {
        "build": _data_build,
        "validate": _data_validate,
        "audit": _data_audit,
        "push": _data_push,
        "teach": _data_teach,
        "phantom": _data_phantom,
    }
    return handler[args.data_command](args)


def main(argv: list[str] | None = None) -> int:
    """Run the ``cxmind`` command: the one place where errors become exit statuses.

    A :class:`~cxmind.errors.UserError` (a mistake the user can fix) prints one line,
    ``cxmind COMMAND: error: MESSAGE``, and returns 2; Ctrl-C prints ``cxmind COMMAND: interrupted`` and
    returns 130. Every other exception is a bug and propagates with its traceback. ``--debug`` (or
    ``CXMIND_DEBUG=1``) shows the traceback of user errors and interrupts too.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, overrides = _split_train_overrides(argv, parser)
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    name = _command_name(args)
    try:
        return _run(args, overrides)
    except UserError as error:
        if debug:
            raise
        print(f"cxmind {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"cxmind {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
