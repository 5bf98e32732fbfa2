"""Model cards and Hub pushes for trained cxmind stages (a PEFT adapter or a merged model).

A card is what strangers see first, so it states up front that the model is a research artifact and
not for clinical use, and it says exactly how the model was trained (stages, data, hyperparameters,
CuRL-VPR reward settings) and evaluated. Its Hub metadata is a ``huggingface_hub.ModelCardData``
(with a ``model-index`` of the evaluation results, so the Hub shows them) and its text is the
Markdown template ``cxmind/templates/model_card.md``, rendered by ``ModelCard.from_template``; this
module only computes the values and tables. Everything that goes into it passes through :func:`scrub`,
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

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

__all__ = [
    "LOCAL_RECORDS",
    "MODEL_CARD_TEMPLATE",
    "MODEL_INDEX_METRICS",
    "MODEL_INDEX_TASKS",
    "PAPER_URL",
    "PUSH_IGNORE_PATTERNS",
    "REFERENCE_CODE_URL",
    "SENSITIVE_KEY_PARTS",
    "StageCardInfo",
    "model_index_results",
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
_RESUME_STATE = (
    "checkpoint-*/",
    "global_step*/",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
)
PUSH_IGNORE_PATTERNS: tuple[str, ...] = (
    *(pattern for name in _RESUME_STATE for pattern in (name, f"*/{name}")),  # at the top and one level down
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
    dataset_ids: list[str] = field(default_factory=list)  # Hub dataset repos trained on (card metadata)

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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> _Markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return _Markdown("\n".join(lines))


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


def _eval_context(results: Mapping[str, Any]) -> dict[str, Any]:
    """The template's ``evaluation`` block: facts, the per-task and scalar tables, notes."""
    groups, scalars = _eval_groups(results)
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
    task_table, has_n = "", False
    if groups:
        cells = {g: {m: _metric_cell(e) for m, e in ms.items()} for g, ms in groups.items()}
        names = list(dict.fromkeys(m for group_cells in cells.values() for m in group_cells))
        counts = {
            g: [c[1] for c in gc.values() if c is not None and c[1] is not None] for g, gc in cells.items()
        }
        has_n = any(counts.values())
        rows = []
        for group, group_cells in cells.items():
            n = [max(counts[group]) if counts[group] else ""] if has_n else []
            rows.append([group, *n, *((group_cells.get(m) or ("",))[0] for m in names)])
        task_table = _table([_cell(h) for h in ["task", *(["n"] if has_n else []), *names]], rows)
    scalar_rows = [(k, cell[0]) for k, v in scalars.items() if (cell := _metric_cell(v)) is not None]
    metrics = results.get("metrics")
    notes = metrics.get("notes") if isinstance(metrics, Mapping) else None
    return {
        "facts": ", ".join(facts),
        "task_table": task_table,
        "has_n": has_n,
        "scalar_table": _table(["metric", "value"], scalar_rows) if scalar_rows else "",
        "empty": not groups and not scalars,
        "notes": [_cell(str(n)) for n in notes]
        if isinstance(notes, Sequence) and not isinstance(notes, str)
        else [],
    }


# ---- model-index (the Hub's evaluation results widget) ---------------------------------------

#: ``results.json`` metric -> model-index metric name; other metrics stay in the card's table only.
MODEL_INDEX_METRICS: dict[str, str] = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "format": "Format compliance",
    "bleu_1": "BLEU-1",
    "bleu_4": "BLEU-4",
    "rouge_l": "ROUGE-L",
    "bertscore_f1": "BERTScore F1",
    "ce_f1": "Clinical efficacy F1 (CheXpert)",
    "iou": "Mean IoU",
    "acc@0.5": "Accuracy at IoU 0.5",
}
#: cxmind task type -> Hub task id of the model-index entry.
MODEL_INDEX_TASKS = {
    "closed": "visual-question-answering",
    "open": "visual-question-answering",
    "report": "image-to-text",
    "grounding": "object-detection",
}
#: The model-index dataset type of a record set that has no Hub repo.
LOCAL_RECORDS = "cxmind-records"


def _metric_value(entry: Any) -> float | None:
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(float(value), 4)


def model_index_results(results: Mapping[str, Any], *, dataset_ids: Sequence[str] = ()) -> list[EvalResult]:
    """The Hub ``model-index`` entries of a ``cxmind eval`` results.json: one per task and headline metric.

    Only results in ``cxmind eval``'s shape (``metrics.by_task``) qualify, since only they say which
    task, split and records were scored. Each task is one dataset *config* (the Hub groups entries by
    task type, dataset, config and split); its metrics are those of :data:`MODEL_INDEX_METRICS` it has.
    The dataset is the Hub repo among ``dataset_ids`` whose name is the evaluated folder's name (a
    record set pushed with ``cxmind data push``), else :data:`LOCAL_RECORDS` with the folder's name.
    """
    from cxmind.data.schema import TASKS

    results = scrub(dict(results))
    metrics = results.get("metrics")
    by_task = metrics.get("by_task") if isinstance(metrics, Mapping) else None
    if not isinstance(by_task, Mapping):
        return []
    config = results.get("config") if isinstance(results.get("config"), Mapping) else {}
    folder = re.split(r"[\\/]", str(config.get("data") or "").rstrip("/\\"))[-1] or "records"
    repo = next((d for d in dataset_ids if d.rsplit("/", 1)[-1] == folder), None)
    split = str(config["split"]) if config.get("split") else None
    name = f"cxmind records {folder}" if repo is None else repo
    if results.get("limited"):
        name += f" ({results.get('n_records', '?')}-record subset, --limit)"
    entries = []
    for task, task_metrics in by_task.items():
        if not isinstance(task_metrics, Mapping):
            continue
        for metric, metric_name in MODEL_INDEX_METRICS.items():
            value = _metric_value(task_metrics.get(metric))
            if value is None:
                continue
            entries.append(
                EvalResult(
                    task_type=MODEL_INDEX_TASKS.get(TASKS.get(str(task), ""), "image-text-to-text"),
                    task_name=str(task),
                    dataset_type=repo or LOCAL_RECORDS,
                    dataset_name=name,
                    dataset_config=str(task),
                    dataset_split=split,
                    metric_type=metric,
                    metric_name=metric_name,
                    metric_value=value,
                )
            )
    return entries


# ---- the card ---------------------------------------------------------------------------------

#: The Markdown (Jinja) template of the card's text, shipped in the package.
MODEL_CARD_TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
REFERENCE_CODE_URL = "https://github.com/SII-zyj/CX-Mind-private"

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


def _versions() -> list[tuple[str, str]]:
    found = []
    for package in ("cxmind", "trl", "transformers", "peft", "torch"):
        try:
            found.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            continue
    return found


def _dataset_ids(values: Sequence[str]) -> list[str]:
    """Hub dataset repo ids among ``values`` (local paths and descriptions dropped), first seen first."""
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and _hub_id(v)))


def render_model_card(
    *,
    base_model: str,
    stages: list[StageCardInfo],
    adapter: bool,
    eval_results: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    peft_config: Mapping[str, Any] | None = None,
    datasets: Sequence[str] = (),
) -> str:
    """The README.md of a trained stage: Hub metadata (YAML front matter) and the model card text.

    The metadata is a :class:`~huggingface_hub.ModelCardData` (base model, library, pipeline tag,
    tags, license, the Hub ``datasets`` the stages trained on, and a ``model-index`` built by
    :func:`model_index_results` from ``cxmind eval`` results); the text is
    :data:`MODEL_CARD_TEMPLATE` rendered by :meth:`~huggingface_hub.ModelCard.from_template`.
    ``eval_results`` may be ``cxmind eval``'s results.json, ``{"metrics": {task: {metric: value}}}``
    or a flat ``{metric: value}``. ``datasets`` adds Hub dataset ids to the stages' ``dataset_ids``.
    Every user-supplied string is scrubbed of local paths and secrets, and config keys that look like
    secrets (``hub_token``, ``api_key``, ...) are dropped.
    """
    if not stages:
        raise ValueError("a model card needs at least one training stage")
    if eval_results is not None and not isinstance(eval_results, Mapping):
        raise TypeError(f"eval_results must be a mapping (results.json), got {type(eval_results).__name__}")
    base_display = scrub(base_model)
    base_hub = _hub_id(base_model)
    repo_display = scrub(repo_id) if repo_id else "your-username/your-model"
    kinds = {stage.kind for stage in stages}
    peft = _public_config(peft_config) if peft_config else {}
    dataset_ids = _dataset_ids([*(d for s in stages for d in s.dataset_ids), *datasets])
    title = repo_display.split("/")[-1] if repo_id else "CX-Mind-style chest X-ray reasoning model"
    evaluation = scrub(dict(eval_results)) if eval_results else None
    index = model_index_results(evaluation, dataset_ids=dataset_ids) if evaluation else []

    tags = ["cxmind", "chest-x-ray", "medical", "radiology", "vision-language", "reasoning", "trl"]
    tags += [kind for kind in STAGE_KINDS if kind in kinds]
    if adapter:
        tags.append("peft")
        if str(peft.get("peft_type", "")).lower() == "lora":
            tags.append("lora")
    card_data = ModelCardData(
        model_name=title if index else None,
        base_model=base_hub,
        datasets=dataset_ids or None,
        library_name="peft" if adapter else "transformers",
        license=scrub(license),
        language="en",
        pipeline_tag="image-text-to-text",
        tags=tags,
        eval_results=index or None,
    )

    base_link = f"[`{base_hub}`](https://huggingface.co/{base_hub})" if base_hub else _code(base_display)
    stage_rows = [
        [
            i,
            _code(scrub(stage.name)),
            stage.kind.upper(),
            _Markdown("<br>".join(_cell(scrub(d)) for d in stage.datasets) or "–"),
            stage.num_examples,
            _hyperparameter_text(_public_config(stage.hyperparameters)),
        ]
        for i, stage in enumerate(stages, 1)
    ]
    shown_peft = {k: peft[k] for k in _PEFT_KEYS if k in peft and peft[k] is not None} if adapter else {}
    card = ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        title=_cell(title),
        paper_url=PAPER_URL,
        reference_code_url=REFERENCE_CODE_URL,
        training_path=" → ".join(f"{_code(scrub(s.name))} ({s.kind.upper()})" for s in stages),
        base_link=base_link,
        stage_table=_table(["#", "stage", "kind", "data", "examples", "key hyperparameters"], stage_rows),
        reward_stages=[
            {
                "name": _code(scrub(s.name)),
                "table": _table(["setting", "value"], _reward_rows(_public_config(s.rewards))),
            }
            for s in stages
            if s.kind == "grpo" and s.rewards
        ],
        adapter_table=_table(["setting", "value"], list(shown_peft.items())) if shown_peft else "",
        evaluation=_eval_context(evaluation) if evaluation else None,
        adapter=adapter,
        base_model_id=base_display,
        repo=repo_display,
        versions=_versions(),
    )
    text = re.sub(r"\n{3,}", "\n\n", str(card)).strip() + "\n"  # template blocks leave blank lines
    return str(ModelCard(_scrub_text(text)))  # parse round trip: the front matter must be valid YAML


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
    datasets: Sequence[str] = (),
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
        datasets=datasets,
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
    datasets: Sequence[str] = (),
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
        datasets=datasets,
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
