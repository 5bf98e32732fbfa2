"""``cxmind eval``: generate on a record split, score every task, write results.json + Markdown + HTML.

Runs on the full split unless ``limit`` is set explicitly (and then says so in the results), and
resumes: finished predictions live in ``predictions.jsonl`` in the output folder.

A resume only trusts predictions it can vouch for. ``manifest.json``, written before the first
prediction, says what made them (model and adapter identity, generation settings, backend, cxmind
version) and every prediction line carries its record's fingerprint. A rerun refuses
(:class:`StalePredictionsError`) when the manifest differs, when predictions exist without a
manifest, or when a stored prediction's record has changed; ``overwrite`` starts over instead.
Changing ``limit``, ``tasks`` or ``split`` still resumes: records already predicted are reused,
new ones appended. Scores always come from the current records; the predictions file only
contributes ``prediction``, ``n_tokens`` and ``error``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxmind.errors import UserError, require_model
from cxmind.eval.generate import (
    GenerationConfig,
    generate_predictions,
    load_backend,
    read_predictions,
    record_fingerprint,
    require_backend,
)

__all__ = [
    "MANIFEST_FILE",
    "PREDICTIONS_FILE",
    "EvalConfig",
    "StalePredictionsError",
    "evaluate",
    "run_manifest",
]

MANIFEST_FILE = "manifest.json"
PREDICTIONS_FILE = "predictions.jsonl"
MANIFEST_VERSION = 1
#: What ``overwrite`` deletes: this module's outputs, never anything else in the folder.
_OUTPUTS = (PREDICTIONS_FILE, MANIFEST_FILE, "results.json", "results.md", "report.html")
#: Manifest keys a resume may change: where a model lives (its content is compared), how many prompts
#: share a batch (a throughput knob, e.g. lowered after running out of memory) and which part of the data
#: a run covers (each prediction's record is checked by its own fingerprint instead).
_NOT_COMPARED = (
    "model.path",
    "model.files",
    "adapter.path",
    "adapter.files",
    "generation.batch_size",
    "data",
)
#: The only fields scoring takes from predictions.jsonl; everything else comes from the current record.
_FROM_PREDICTION = ("prediction", "n_tokens", "error")
#: Files of a model/adapter folder that decide its outputs: weights, configs, tokenizer and processor.
_MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".txt", ".model", ".tiktoken")
_NOT_MODEL_FILES = frozenset({"trainer_state.json", "training_args.bin", MANIFEST_FILE, "results.json"})
#: Files up to this size are always re-hashed; larger ones reuse the manifest's hash while their path,
#: size and mtime are unchanged (rewriting a weight file changes its mtime), so a resume does not
#: re-read many GB of weights.
_ALWAYS_HASH_BYTES = 16 << 20


class StalePredictionsError(UserError):
    """Predictions in the output folder that this evaluation must not resume from.

    They were made with another model, adapter, generation settings or cxmind version, for records
    that have changed since, or their provenance is unknown (no manifest). The message is one line
    naming what changed; ``cxmind eval`` prints it and exits with status 2.
    """


@dataclass
class EvalConfig:
    """What to evaluate and how.

    ``overwrite`` deletes the predictions, manifest and results of an earlier run in ``out`` and
    starts over, instead of refusing to resume from predictions made differently.
    """

    model: str
    data: Path
    out: Path
    adapter: str | None = None
    split: str = "test"
    backend: str = "hf"
    tasks: tuple[str, ...] | None = None
    limit: int | None = None  # None: the whole split (no silent caps)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    n_bootstrap: int = 1000
    bertscore_model: str | None = None
    html_samples: int | None = 500  # cards in report.html, drawn round-robin over tasks (metrics use all)
    overwrite: bool = False


def _identity(config: EvalConfig) -> dict[str, Any]:
    import transformers

    from cxmind import __version__

    identity: dict[str, Any] = {
        "model": config.model,
        "adapter": config.adapter,
        "backend": config.backend,
        "cxmind": __version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    local = Path(config.model)
    if (local / "config.json").is_file():
        model_config = json.loads((local / "config.json").read_text(encoding="utf-8"))
        identity["architectures"] = model_config.get("architectures")
        identity["model_type"] = model_config.get("model_type")
    return identity


# ---------------------------------------------------------------------------------------------
# The run manifest
# ---------------------------------------------------------------------------------------------


def run_manifest(config: EvalConfig, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What makes this run's predictions, as stored in ``manifest.json``.

    ``model``/``adapter``: :func:`model_identity`; ``generation``: every ``GenerationConfig`` field
    (image budget included); ``backend``; ``cxmind``: the version (it builds the prompts);
    ``data``: the record set and split of the first run (informational: records are checked one by
    one through their fingerprints). ``previous`` (the stored manifest) lets large weight files
    keep their hash while unchanged on disk.
    """
    from cxmind import __version__

    previous = previous or {}
    return {
        "manifest_version": MANIFEST_VERSION,
        "cxmind": __version__,
        "backend": config.backend,
        "model": model_identity(config.model, "config.json", previous.get("model")),
        "adapter": (
            model_identity(config.adapter, "adapter_config.json", previous.get("adapter"))
            if config.adapter
            else None
        ),
        "generation": asdict(config.generation),
        "data": {"path": str(config.data), "split": config.split},
    }


def model_identity(
    name: str, marker: str = "config.json", previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Who a model (or adapter) is: a content hash for a local folder, the revision for a Hub id.

    Local: ``{"source": "local", "path", "sha256", "files": {name: {size, mtime_ns, sha256}}}``; the
    sha256 covers the contents of the top-level weight, config, tokenizer and processor files, so
    retraining into the same folder changes it while moving the folder does not. Hub id:
    ``{"source": "hub", "id", "revision"}`` with the commit sha of the locally cached snapshot
    (resolved offline through ``marker``), ``None`` when nothing is cached yet.
    """
    folder = Path(name)
    if not folder.is_dir():
        return {"source": "hub", "id": name, "revision": _cached_revision(name, marker)}
    folder = folder.resolve()
    old = previous if previous and previous.get("source") == "local" else {}
    reuse = (old.get("files") or {}) if old.get("path") == str(folder) else {}
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.iterdir()):
        if not _is_model_file(path):
            continue
        stat = path.stat()
        entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        known = reuse.get(path.name) or {}
        unchanged = all(known.get(key) == value for key, value in entry.items())
        if stat.st_size > _ALWAYS_HASH_BYTES and unchanged and known.get("sha256"):
            entry["sha256"] = known["sha256"]
        else:
            entry["sha256"] = _file_sha256(path)
        files[path.name] = entry
    digest = hashlib.sha256()
    for file_name, entry in files.items():
        digest.update(f"{file_name}\0{entry['sha256']}\n".encode())
    return {"source": "local", "path": str(folder), "sha256": digest.hexdigest(), "files": files}


def _is_model_file(path: Path) -> bool:
    name = path.name
    return (
        path.is_file()
        and not name.startswith(".")
        and name.endswith(_MODEL_SUFFIXES)
        and name not in _NOT_MODEL_FILES
    )


def _file_sha256(path: Path) -> str:
    """sha256 of a file's contents, streamed (weights may be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_revision(repo_id: str, marker: str) -> str | None:
    """The commit sha of ``repo_id``'s snapshot in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, marker)
    except Exception:  # not a valid repo id, or no cache: the id alone identifies it
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def _refresh_revisions(manifest: dict[str, Any]) -> None:
    """Resolve Hub revisions still unknown (a first run downloads the model only when loading it)."""
    for key, marker in (("model", "config.json"), ("adapter", "adapter_config.json")):
        entry = manifest.get(key)
        if entry and entry.get("source") == "hub" and entry.get("revision") is None:
            entry["revision"] = _cached_revision(entry["id"], marker)


def manifest_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys (``model.sha256``, ``generation.max_new_tokens``) whose values differ.

    Keys in ``_NOT_COMPARED`` are skipped; a section present on one side only (an adapter added)
    is named once rather than key by key.
    """
    return _diff(stored, json.loads(json.dumps(current)), "")  # compare as stored: tuples are lists


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if prefix in _NOT_COMPARED:
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        changed: list[str] = []
        for key in sorted(old.keys() | new.keys()):
            changed += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return changed
    return [] if old == new else [prefix]


def _what_changed(keys: list[str]) -> str:
    sections = {key.split(".")[0] for key in keys}
    words = {
        "model": "a different model",
        "adapter": "a different adapter",
        "backend": "different generation settings",
        "generation": "different generation settings",
        "cxmind": "another cxmind version",
    }
    phrases = list(dict.fromkeys(words.get(s, "a different manifest") for s in sorted(sections)))
    return " and ".join(phrases)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _write_json(path: Path, value: Any) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _resumable(
    out: Path, stored: dict[str, Any] | None, manifest: dict[str, Any], fingerprints: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The stored predictions, once it is sure they were made like this run would; else raises."""
    predictions = out / PREDICTIONS_FILE
    if not predictions.is_file() or predictions.stat().st_size == 0:
        return {}
    fix = "pass --overwrite to start over or choose another --out"
    if stored is None:
        raise StalePredictionsError(
            f"predictions in {out}/ have no readable {MANIFEST_FILE}, so what made them is unknown "
            f"(hand-written, or from an older cxmind); {fix}"
        )
    changed = manifest_changes(stored, manifest)
    if changed:
        raise StalePredictionsError(
            f"predictions in {out}/ were made with {_what_changed(changed)} (changed: {', '.join(changed)}); "
            f"{fix}"
        )
    done = read_predictions(predictions)
    stale = [
        key
        for key, row in done.items()
        if key in fingerprints and row.get("record_sha256") != fingerprints[key]
    ]
    if stale:
        raise StalePredictionsError(
            f"predictions in {out}/ were made for different records (changed: record_sha256 of "
            f"{len(stale)} stored predictions, e.g. {stale[0]!r}); {fix}"
        )
    return done


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(config: EvalConfig, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``config.model`` on ``config.data``; writes predictions, results.json/.md and report.html.

    Raises :class:`StalePredictionsError` before loading any model when ``config.out`` holds
    predictions this run cannot resume from (see the module docstring). A split without records, or
    a model or adapter that cannot be resolved (see :func:`cxmind.errors.require_model`), raises a
    :class:`~cxmind.errors.UserError` before ``config.out`` is created.
    """
    from cxmind.data.records import image_roots, load_records
    from cxmind.eval.html import markdown_table, write_html
    from cxmind.eval.metrics import aggregate, per_record

    out = Path(config.out)
    require_backend(config.backend)  # the model and backend first: loading records prints progress
    require_model(config.model)
    if config.adapter is not None:
        require_model(config.adapter, flag="--adapter", markers=("adapter_config.json",))
    rows = load_records(config.data, config.split, decode_images=False)
    if config.tasks:
        wanted = set(config.tasks)
        rows = rows.filter(lambda r: r["task"] in wanted)
    records = list(rows)
    if config.limit is not None:
        records = records[: config.limit]
    if not records:
        raise UserError(
            f"no records to evaluate in {config.data} split {config.split!r} (tasks: {config.tasks}); "
            "check --split and --tasks"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    roots = image_roots(config.data)
    if config.overwrite:
        for name in _OUTPUTS:
            (out / name).unlink(missing_ok=True)
    fingerprints = {r["id"]: record_fingerprint(r, roots.get(r["source"])) for r in records}
    stored = _read_manifest(out / MANIFEST_FILE)
    manifest = run_manifest(config, stored)
    done = _resumable(out, stored, manifest, fingerprints)
    todo = [r for r in records if r["id"] not in done]

    backend = None
    if todo:
        max_prompt_tokens = None
        if config.backend == "vllm" and config.generation.max_model_len is None:
            from transformers import AutoProcessor

            from cxmind.eval.generate import longest_prompt_tokens

            max_prompt_tokens = longest_prompt_tokens(
                todo,
                AutoProcessor.from_pretrained(config.model),
                image_root_of=lambda r: roots[r["source"]],
                budget=config.generation.budget,
            )
        backend = load_backend(
            config.backend,
            config.model,
            config.adapter,
            config.generation,
            max_prompt_tokens=max_prompt_tokens,
        )
    if not done:  # a fresh run: say what makes the predictions before the first one is written
        _refresh_revisions(manifest)
        _write_json(out / MANIFEST_FILE, manifest)
        stored = manifest
    predictions = generate_predictions(
        records,
        backend,
        out / PREDICTIONS_FILE,
        image_root_of=lambda r: roots[r["source"]],
        config=config.generation,
        progress=progress,
    )
    scored = []
    for record in records:
        # gold, options and task come from the record being evaluated now, not from the file
        row = dict(record)
        prediction = predictions[record["id"]]
        row.update({key: prediction[key] for key in _FROM_PREDICTION if key in prediction})
        row["per_record"] = per_record(row)
        scored.append(row)
    metrics = aggregate(
        scored,
        n_bootstrap=config.n_bootstrap,
        seed=config.generation.seed,
        bertscore_model=config.bertscore_model,
        baseline_report=_train_report_baselines(config, scored),
    )
    settings = asdict(config)
    settings["data"], settings["out"] = str(config.data), str(config.out)
    records_digest = hashlib.sha256("".join(sorted(fingerprints.values())).encode()).hexdigest()
    results = {
        "model": _identity(config),
        "config": settings,
        "manifest": stored,
        "records_sha256": records_digest,
        "n_records": len(scored),
        "limited": config.limit is not None,
        "metrics": metrics,
    }
    (out / "results.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "results.md").write_text(markdown_table(results) + "\n", encoding="utf-8")
    write_html(
        out / "report.html",
        results,
        scored,
        image_root_of=lambda r: roots.get(r["source"]),
        max_samples=config.html_samples,  # each card embeds its thumbnail: keep the page loadable
    )
    return results


def _train_report_baselines(config: EvalConfig, scored: list[dict[str, Any]]) -> dict[str, str] | None:
    """The most frequent *train* report per evaluated report task: the constant-report baseline
    printed beside the model's report metrics (a model must beat repeating the commonest report)."""
    from cxmind.data.records import load_records
    from cxmind.eval.metrics import baseline_reports

    tasks = {row["task"] for row in scored if row.get("task_type") == "report"}
    if not tasks or config.split == "train":
        return None
    try:
        train = load_records(config.data, "train", decode_images=False)
    except (FileNotFoundError, ValueError, KeyError):
        return None  # a record set without a train split: aggregate notes the missing baseline
    return baseline_reports(row for row in train.filter(lambda r: r["task"] in tasks))
