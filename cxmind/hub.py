"""Model cards and Hub pushes for trained cxmind stages (a PEFT adapter or a merged model).

A card is what strangers see first, so it states up front that the model is a research artifact and
not for clinical use, and it says exactly how the model was trained (stages, data, hyperparameters,
CuRL-VPR reward settings) and evaluated. Everything that goes into it passes through :func:`scrub`,
so local absolute paths and access tokens never leave the machine. :func:`push_stage` reads the
token only from the environment (``HF_TOKEN`` or ``hf auth login``, resolved by ``huggingface_hub``)
and uploads the folder in one commit, safetensors weights only.

>>> scrub({"data": "records: /home/alice/data/cxr (train)", "hub_token": "hf_" + "a" * 24})
{'data': 'records: <local>/cxr (train)', 'hub_token': '<redacted>'}
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

__all__ = [
    "PAPER_URL",
    "PUSH_IGNORE_PATTERNS",
    "SENSITIVE_KEY_PARTS",
    "StageCardInfo",
    "push_stage",
    "render_model_card",
    "scrub",
    "upload_files",
    "write_model_card",
]

PAPER_URL = "https://arxiv.org/abs/2508.03733"
STAGE_KINDS = ("sft", "grpo")

#: Config keys containing any of these (case-insensitive) are dropped from the card entirely.
SENSITIVE_KEY_PARTS = ("token", "key", "secret", "password", "passwd", "credential")

#: Files of a training output folder that are never pushed: resume state (optimizer, scheduler, RNG,
#: trainer state, pickled training args), intermediate checkpoints, logs (TensorBoard event file
#: names carry the host name) and per-record evaluation outputs (they quote the datasets' images and
#: reports, which belong to their licenses). Folder patterns end with "/", as ``upload_folder`` reads them.
PUSH_IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoint-*/",
    "*/checkpoint-*/",
    "global_step*/",
    "*/global_step*/",
    "optimizer.pt",
    "*/optimizer.pt",
    "scheduler.pt",
    "*/scheduler.pt",
    "scaler.pt",
    "*/scaler.pt",
    "rng_state*.pth",
    "*/rng_state*.pth",
    "trainer_state.json",
    "*/trainer_state.json",
    "training_args.bin",
    "*/training_args.bin",
    "runs/",
    "wandb/",
    ".cache/",
    ".git/",
    "predictions.jsonl",
    "report.html",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".jinja", ".cfg", ".ini", ".py", ".csv")
_SCAN_MAX_BYTES = 1 << 20  # tokenizer vocabularies are larger and hold no secrets worth the scan time

# ---------------------------------------------------------------------------------------------
# Scrubbing
# ---------------------------------------------------------------------------------------------

_SECRET = re.compile(
    r"hf_[A-Za-z0-9]{20,}"  # Hugging Face tokens
    r"|(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}"  # OpenAI/Anthropic-style API keys
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}"  # Authorization headers
)
_PART = r"[^\s/\\'\"`<>|;,()\[\]{}=*?]+"  # one path component (stops at quotes, brackets, separators)
_PATH = re.compile(
    rf"file://(?:localhost)?(?:/{_PART})+/?"  # file:///home/alice/x
    rf"|(?<![\w\\])[A-Za-z]:[\\/]+{_PART}(?:[\\/]+{_PART})*[\\/]?"  # C:\Users\alice\x, D:/data/x
    rf"|(?<![\w\\])\\\\{_PART}(?:\\{_PART})+\\?"  # \\server\share\x
    rf"|(?<![\w.~$/\\-])~[\w.-]*[\\/]{_PART}(?:[\\/]{_PART})*[\\/]?"  # ~/data/x, ~alice/x
    # /home/alice/x: never inside a URL ("https://host/a/b": its slashes follow ":", "/" or a word)
    rf"|(?<![\w.~$/\\-])(?:/{_PART}){{2,}}/?"
)


def _local_name(match: re.Match[str]) -> str:
    parts = [p for p in re.split(r"[\\/]+", match.group(0)) if p]
    return f"<local>/{parts[-1]}" if parts else "<local>"


def _scrub_text(text: str) -> str:
    return _SECRET.sub("<redacted>", _PATH.sub(_local_name, text))  # paths first: "<" ends a component


def scrub(value: Any) -> Any:
    """``value`` with local absolute paths reduced to ``<local>/<last component>`` and secrets redacted.

    Strings are rewritten; mappings (keys and values), lists, tuples and sets are scrubbed
    recursively (sets become sorted lists), paths become scrubbed strings; other values (numbers,
    booleans, None) are returned unchanged. Relative paths and URLs are kept: they reveal nothing of
    this machine.
    """
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, PurePath):
        return _scrub_text(str(value))
    if isinstance(value, Mapping):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((scrub(v) for v in value), key=str)
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def _is_sensitive(key: object) -> bool:
    name = str(key).lower()
    return any(part in name for part in SENSITIVE_KEY_PARTS)


def _public_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A config with secret-looking keys dropped (at any depth) and every value scrubbed."""

    def drop(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: drop(v) for k, v in value.items() if not _is_sensitive(k)}
        if isinstance(value, (list, tuple)):
            return [drop(v) for v in value]
        return value

    return scrub(drop(dict(config or {})))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class StageCardInfo:
    """What one finished training stage contributes to the card."""

    name: str  # e.g. "sft", "grpo_closed", "grpo_open"
    kind: str  # "sft" | "grpo"
    datasets: list[str]  # human-readable data descriptions (scrubbed when rendered)
    num_examples: int | None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # selected TRL config values
    rewards: dict[str, Any] | None = None  # GRPO reward settings: mode, weights, w_closed, w_open, gate, ...

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name!r}: kind must be one of {STAGE_KINDS}, got {self.kind!r}")


def _fmt_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.3g}"
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def _fmt_value(value: Any) -> str:
    """One table cell's text (values are already scrubbed)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return _fmt_number(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))


class _Markdown(str):
    """Text that is already Markdown (a code span, joined cells): :func:`_cell` does not escape it again."""

    __slots__ = ()


def _cell(value: Any) -> str:
    """One line of Markdown-safe text: no line breaks or table pipes, and no raw HTML (``<local>`` shows)."""
    text = value if isinstance(value, str) else _fmt_value(value)
    if not isinstance(value, _Markdown):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").split())


def _code(value: Any) -> _Markdown:
    """A code span: shown verbatim, so it needs no HTML escaping (only its backticks and pipes)."""
    text = " ".join(str(value).replace("`", "'").split())
    return _Markdown(f"`{text}`")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", align or "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")


def _hub_id(model: str) -> str | None:
    """``model`` when it names a Hub repo (metadata must not hold a local path), else None."""
    if not _HUB_ID.fullmatch(model) or ".." in model or "--" in model or Path(model).exists():
        return None
    return model


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


_COMPONENTS = ("format", "outcome", "think", "process")
_REWARD_ORDER = ("mode", "reward_mode", "weights", "reward_weights", "w_closed", "w_open", "alpha")


def _reward_rows(rewards: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(setting, value) rows; a 4-element weight list is spelled out per CuRL-VPR component."""
    ordered = {k: rewards[k] for k in _REWARD_ORDER if k in rewards}
    ordered |= {k: v for k, v in rewards.items() if k not in ordered}
    rows: list[tuple[str, Any]] = []
    for key, value in ordered.items():
        is_list = isinstance(value, Sequence) and not isinstance(value, str)
        if key in ("weights", "reward_weights") and is_list and len(value) == len(_COMPONENTS):
            rows += [(f"weight: {c}", w) for c, w in zip(_COMPONENTS, value, strict=True)]
            continue
        if isinstance(value, Mapping) and value:
            label = "weight" if key in ("weights", "reward_weights") else key
            rows += [
                (f"{label}: {k}" if label == "weight" else f"{label}.{k}", v)
                for k, v in _flatten(value).items()
            ]
            continue
        rows.append((key, value))
    return rows


def _hyperparameter_text(hyperparameters: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in _flatten(hyperparameters).items()) or "–"


# ---- evaluation results -----------------------------------------------------------------------


def _metric_cell(entry: Any) -> tuple[str, int | None] | None:
    """Text and n of one metric: a number, a string, or ``{"value", "ci", "n"}`` (``cxmind eval``)."""
    n: int | None = None
    if isinstance(entry, Mapping):
        if "value" not in entry:
            return None
        value, ci = entry.get("value"), entry.get("ci")
        raw_n = entry.get("n")
        n = raw_n if isinstance(raw_n, int) and not isinstance(raw_n, bool) else None
        text = _fmt_value(value)
        if (
            isinstance(ci, Sequence)
            and not isinstance(ci, str)
            and len(ci) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in ci)
        ):
            text += f" [{_fmt_number(ci[0])}, {_fmt_number(ci[1])}]"
        return text, n
    if entry is None or isinstance(entry, (bool, int, float, str)):
        return _fmt_value(entry), None
    return None


def _eval_groups(results: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``({group: {metric: entry}}, {metric: entry})`` from any accepted results shape."""
    metrics = results.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else results
    groups: dict[str, dict[str, Any]] = {}
    scalars: dict[str, Any] = {}
    if isinstance(metrics.get("overall"), Mapping) or isinstance(metrics.get("by_task"), Mapping):
        # cxmind eval: {"overall": M, "by_task": {task: M}, "by_source": ..., "notes": [...]}
        if isinstance(metrics.get("overall"), Mapping) and metrics["overall"]:
            groups["overall"] = dict(metrics["overall"])
        by_task = metrics.get("by_task")
        for task, task_metrics in by_task.items() if isinstance(by_task, Mapping) else ():
            if isinstance(task_metrics, Mapping):
                groups[str(task)] = dict(task_metrics)
        return groups, scalars
    for name, entry in metrics.items():
        if _metric_cell(entry) is not None:
            scalars[str(name)] = entry
        elif isinstance(entry, Mapping):
            cells = {str(k): v for k, v in entry.items() if _metric_cell(v) is not None}
            if cells:
                groups[str(name)] = cells
    return groups, scalars


def _eval_section(results: Mapping[str, Any]) -> list[str]:
    results = scrub(dict(results))
    groups, scalars = _eval_groups(results)
    lines = ["## Evaluation", ""]
    facts = []
    config = results.get("config") if isinstance(results.get("config"), Mapping) else {}
    if config.get("data"):
        facts.append(f"data {_code(config['data'])}")
    if config.get("split"):
        facts.append(f"split {_code(config['split'])}")
    if isinstance(results.get("n_records"), int):
        facts.append(f"{results['n_records']} records")
    if results.get("limited"):
        facts.append("**a limited subset** (`--limit`), not the whole split")
    if facts:
        lines += ["Evaluated with `cxmind eval` on " + ", ".join(facts) + ".", ""]
    if groups:
        cells = {g: {m: _metric_cell(e) for m, e in ms.items()} for g, ms in groups.items()}
        names = list(dict.fromkeys(m for group_cells in cells.values() for m in group_cells))
        counts = {
            g: [c[1] for c in group_cells.values() if c is not None and c[1] is not None]
            for g, group_cells in cells.items()
        }
        has_n = any(counts.values())
        rows = []
        for group, group_cells in cells.items():
            n = [max(counts[group]) if counts[group] else ""] if has_n else []
            rows.append([group, *n, *((group_cells.get(m) or ("",))[0] for m in names)])
        lines += _table([_cell(h) for h in ["task", *(["n"] if has_n else []), *names]], rows)
        lines.append("")
        if has_n:
            lines += ["Values are means; brackets hold percentile-bootstrap 95% confidence intervals.", ""]
    if scalars:
        scalar_rows = [(k, cell[0]) for k, v in scalars.items() if (cell := _metric_cell(v)) is not None]
        lines += _table(["metric", "value"], scalar_rows)
        lines.append("")
    if not groups and not scalars:
        lines += ["_No metrics recorded._", ""]
    notes = results.get("metrics", {}).get("notes") if isinstance(results.get("metrics"), Mapping) else None
    if isinstance(notes, Sequence) and not isinstance(notes, str) and notes:
        lines += ["Notes:", "", *(f"- {_cell(str(n))}" for n in notes), ""]
    lines += [
        "These numbers describe held-out splits of public research datasets. They are not evidence of "
        "clinical performance.",
        "",
    ]
    return lines


# ---- card sections ----------------------------------------------------------------------------

_PEFT_KEYS = (
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "use_dora",
    "bias",
    "target_modules",
    "modules_to_save",
)

_CITATION = """\
```bibtex
@article{li2025cxmind,
  title   = {{CX-Mind}: A Pioneering Multimodal Large Language Model for Interleaved Reasoning in
             Chest X-ray via Curriculum-Guided Reinforcement Learning},
  author  = {Li, Wenjie and Zhang, Yujie and Sun, Haoran and others},
  journal = {arXiv preprint arXiv:2508.03733},
  year    = {2025},
  url     = {https://arxiv.org/abs/2508.03733}
}

@misc{vonwerra2020trl,
  title        = {{TRL: Transformer Reinforcement Learning}},
  author       = {Leandro von Werra and Younes Belkada and Lewis Tunstall and Edward Beeching and
                  Tristan Thrush and Nathan Lambert and Shengyi Huang and Kashif Rasul and
                  Quentin Gallou{\\'e}dec},
  year         = {2020},
  journal      = {GitHub repository},
  publisher    = {GitHub},
  howpublished = {\\url{https://github.com/huggingface/trl}}
}
```"""


def _usage(base: str, repo: str, adapter: bool) -> list[str]:
    if adapter:
        load = [
            f'base = AutoModelForImageTextToText.from_pretrained("{base}", dtype="auto", device_map="auto")',
            f'model = PeftModel.from_pretrained(base, "{repo}")  # .merge_and_unload() to merge',
            f'processor = AutoProcessor.from_pretrained("{base}")',
        ]
        imports = [
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
        ]
        install = "pip install transformers peft accelerate"
    else:
        load = [
            f'model = AutoModelForImageTextToText.from_pretrained("{repo}", dtype="auto", device_map="auto")',
            f'processor = AutoProcessor.from_pretrained("{repo}")',
        ]
        imports = ["from transformers import AutoModelForImageTextToText, AutoProcessor"]
        install = "pip install transformers accelerate"
    return [
        "## How to use",
        "",
        f"`{install}`, then (Qwen2.5-VL bases can equally use `Qwen2_5_VLForConditionalGeneration`):",
        "",
        "```python",
        *imports,
        "",
        *load,
        "",
        "messages = [{",
        '    "role": "user",',
        '    "content": [',
        '        {"type": "image", "url": "chest_xray.png"},',
        '        {"type": "text", "text": "Which finding is present? '
        'A) Effusion B) Pneumothorax C) Cardiomegaly D) Nodule"},',
        "    ],",
        "}]",
        "inputs = processor.apply_chat_template(",
        '    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"',
        ").to(model.device)",
        "output = model.generate(**inputs, max_new_tokens=1024)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        "```",
        "",
        "For answers in the trained format, append the format instructions the model was trained with: "
        '`cxmind.format.instructions("closed", options)` or `cxmind.format.instructions("open")`, and '
        "read the answer with `cxmind.format.parse`.",
        "",
    ]


def _versions() -> list[str]:
    lines = []
    for package in ("cxmind", "trl", "transformers", "peft", "torch"):
        try:
            lines.append(f"- {package}: {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return lines


def render_model_card(
    *,
    base_model: str,
    stages: list[StageCardInfo],
    adapter: bool,
    eval_results: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    peft_config: Mapping[str, Any] | None = None,
) -> str:
    """The README.md of a trained stage: Hub metadata (YAML front matter) and the model card text.

    ``eval_results`` may be ``cxmind eval``'s results.json, ``{"metrics": {task: {metric: value}}}``
    or a flat ``{metric: value}``. Every user-supplied string is scrubbed of local paths and secrets,
    and config keys that look like secrets (``hub_token``, ``api_key``, ...) are dropped.
    """
    if not stages:
        raise ValueError("a model card needs at least one training stage")
    base_display = scrub(base_model)
    base_hub = _hub_id(base_model)
    repo_display = scrub(repo_id) if repo_id else "your-username/your-model"
    kinds = {stage.kind for stage in stages}
    peft = _public_config(peft_config) if peft_config else {}

    tags = ["cxmind", "chest-x-ray", "medical", "radiology", "vision-language", "reasoning", "trl"]
    tags += [kind for kind in STAGE_KINDS if kind in kinds]
    if adapter:
        tags.append("peft")
        if str(peft.get("peft_type", "")).lower() == "lora":
            tags.append("lora")
    card_data = ModelCardData(
        base_model=base_hub,
        library_name="peft" if adapter else "transformers",
        license=scrub(license),
        language="en",
        pipeline_tag="image-text-to-text",
        tags=tags,
    )

    title = repo_display.split("/")[-1] if repo_id else "CX-Mind-style chest X-ray reasoning model"
    base_link = f"[`{base_hub}`](https://huggingface.co/{base_hub})" if base_hub else _code(base_display)
    what = f"a PEFT adapter for {base_link}" if adapter else f"a fine-tuned version of {base_link}"
    path = " → ".join(f"{_code(scrub(s.name))} ({s.kind.upper()})" for s in stages)
    lines = [
        f"# {_cell(title)}",
        "",
        f"This model is {what}, trained with cxmind on Hugging Face "
        f"[TRL](https://github.com/huggingface/trl) to read chest X-rays the way "
        f"[CX-Mind]({PAPER_URL}) does. "
        "Instead of a one-shot answer it reasons in interleaved rounds, `<think>…</think>` followed by "
        "`<answer>…</answer>`, judging each option of a closed-ended question (or each candidate finding "
        "of an open-ended one) in turn before a final summary round. Supervised fine-tuning on gold "
        "interleaved traces teaches the format; Group Relative Policy Optimization (GRPO) then trains in "
        "a curriculum, closed-ended questions before open-ended diagnosis, with CuRL-VPR rewards: "
        "verifiable format and outcome rewards plus process rewards on the reasoning that count only "
        f"while accuracy is not falling. Training path: {path}.",
        "",
        "## Intended use and limitations",
        "",
        "> [!WARNING]",
        "> **Not for clinical use.** This model is a research artifact. It is not a medical device, has not "
        "been validated on real patients or in any clinical setting, and must not be used for diagnosis, "
        "treatment, triage or any other decision about a patient. Its answers and its reasoning text may "
        "be wrong, incomplete or biased, and may sound convincing when they are wrong.",
        "",
        "- **Intended use:** research on reasoning vision-language models for chest radiographs: "
        "reproducing and ablating CX-Mind-style training, benchmarking, studying interleaved reasoning.",
        "- **Out of scope:** any clinical or patient-facing use; images other than chest radiographs; "
        "use without expert oversight.",
        "- **Limitations:** trained on public research datasets whose labels are partly extracted from "
        "reports by NLP and are noisy; these datasets under-represent many populations, devices and "
        "institutions, so performance and biases elsewhere are unknown. The rewards check answers and "
        "the consistency of per-option verdicts, not the clinical truth of the explanations.",
        "",
        "## Training",
        "",
        f"Base model: {base_link}. Stages, in order:",
        "",
    ]
    rows = []
    for i, stage in enumerate(stages, 1):
        data = _Markdown("<br>".join(_cell(scrub(d)) for d in stage.datasets) or "–")
        hyper = _hyperparameter_text(_public_config(stage.hyperparameters))
        rows.append([i, _code(scrub(stage.name)), stage.kind.upper(), data, stage.num_examples, hyper])
    lines += _table(["#", "stage", "kind", "data", "examples", "key hyperparameters"], rows)
    lines.append("")

    reward_stages = [s for s in stages if s.kind == "grpo" and s.rewards]
    if reward_stages:
        lines += [
            "### Reward configuration (CuRL-VPR)",
            "",
            "Each GRPO completion gets four reward components: **format** (well-formed interleaved "
            "rounds), **outcome** (the final answer is right), **think** (similarity of the reasoning to "
            "the gold trace) and **process** (per-option verdicts agree with the gold answer), weighted "
            "by TRL's `reward_weights`. `w_closed` / `w_open` scale the process reward of closed- and "
            "open-ended questions; the accuracy **gate** withholds think and process rewards from a batch "
            "whose mean outcome falls below its running average (`ema_alpha`) plus `margin`.",
            "",
        ]
        for stage in reward_stages:
            lines += [f"#### {_code(scrub(stage.name))}", ""]
            lines += _table(["setting", "value"], _reward_rows(_public_config(stage.rewards)))
            lines.append("")
    if adapter and peft:
        shown = {k: peft[k] for k in _PEFT_KEYS if k in peft and peft[k] is not None}
        if shown:
            lines += ["### Adapter", ""]
            lines += _table(["setting", "value"], list(shown.items()))
            lines.append("")

    if eval_results is not None and not isinstance(eval_results, Mapping):
        raise TypeError(f"eval_results must be a mapping (results.json), got {type(eval_results).__name__}")
    if eval_results:
        lines += _eval_section(eval_results)
    lines += _usage(base_display, repo_display, adapter)
    versions = _versions()
    if versions:
        lines += ["## Framework versions", "", *versions, ""]
    lines += ["## Citation", "", "If you use this model, please cite CX-Mind and TRL:", "", _CITATION, ""]

    body = "\n".join(lines)
    content = f"---\n{card_data.to_yaml()}\n---\n\n{body}"
    return str(ModelCard(_scrub_text(content)))  # parse round trip: the front matter must be valid YAML


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_model_card(
    folder: str | Path,
    *,
    base_model: str,
    stages: list[StageCardInfo],
    adapter: bool,
    eval_results: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    peft_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/README.md`` (replacing the trainer's stub) and return its path.

    Missing inputs come from the folder when it has them: ``peft_config`` from adapter_config.json
    (adapters), ``eval_results`` from a ``cxmind eval`` results.json.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: save the trained stage first")
    if adapter and peft_config is None:
        peft_config = _load_json(folder / "adapter_config.json")
    if eval_results is None:
        found = _load_json(folder / "results.json")
        eval_results = found if found and isinstance(found.get("metrics"), Mapping) else None
    text = render_model_card(
        base_model=base_model,
        stages=stages,
        adapter=adapter,
        eval_results=eval_results,
        repo_id=repo_id,
        license=license,
        peft_config=peft_config,
    )
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------


def upload_files(folder: str | Path) -> list[str]:
    """The folder's files (POSIX paths relative to it) that :func:`push_stage` uploads."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=list(PUSH_IGNORE_PATTERNS)))


def _check_folder(folder: Path, files: list[str]) -> None:
    """Refuse pickled weights, folders without safetensors and files holding secrets; warn on local paths."""
    pickles = [f for f in files if f.lower().endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"refusing to push pickled weights ({', '.join(pickles)}): loading them can run arbitrary code. "
            "Save with safetensors (save_pretrained(..., safe_serialization=True), the default) and remove "
            "the pickle files"
        )
    if not any(f.endswith(".safetensors") for f in files):
        raise ValueError(f"{scrub(str(folder))} holds no *.safetensors weights: save the trained stage first")
    secrets, paths = [], []
    for name in files:
        path = folder / name
        if not name.lower().endswith(_TEXT_SUFFIXES) or path.stat().st_size > _SCAN_MAX_BYTES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if _SECRET.search(text):
            secrets.append(name)
        elif name != "README.md" and _PATH.search(text):
            paths.append(name)
    if secrets:
        raise ValueError(
            f"refusing to push: {', '.join(secrets)} look(s) like it holds an access token or API key; "
            "remove it first"
        )
    if paths:
        warnings.warn(
            f"{', '.join(paths)} mention(s) local absolute paths; they are uploaded as they are",
            UserWarning,
            stacklevel=3,
        )


def push_stage(
    folder: str | Path,
    repo_id: str,
    *,
    base_model: str,
    stages: list[StageCardInfo],
    adapter: bool,
    eval_results: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    peft_config: Mapping[str, Any] | None = None,
    private: bool = True,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Write the model card into ``folder`` and push the folder to ``repo_id`` in one commit.

    There is deliberately no token argument: ``huggingface_hub`` resolves it from ``HF_TOKEN`` or
    ``hf auth login``, so it never lands in scripts, shell history or logs. Resume state, logs and
    per-record eval outputs are left out (:data:`PUSH_IGNORE_PATTERNS`); pickled weights are refused.
    Returns the commit URL; any Hub failure is raised as one ``RuntimeError``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: save the trained stage first")
    _check_folder(folder, upload_files(folder))
    write_model_card(
        folder,
        base_model=base_model,
        stages=stages,
        adapter=adapter,
        eval_results=eval_results,
        repo_id=repo_id,
        license=license,
        peft_config=peft_config,
    )
    what = "adapter" if adapter else "model"
    message = commit_message or f"cxmind {what} after {' → '.join(s.name for s in stages)}"
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=message,
            revision=revision,
            ignore_patterns=list(PUSH_IGNORE_PATTERNS),  # a fresh list: upload_folder extends it
        )
    except Exception as exc:  # one clear message for auth, offline, network and validation failures
        reason = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise RuntimeError(
            f"push to {repo_id} failed: {reason}; set HF_TOKEN or run `hf auth login` "
            "(and unset HF_HUB_OFFLINE)"
        ) from exc
    return str(getattr(commit, "commit_url", commit))
