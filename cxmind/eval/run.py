"""``cxmind eval``: generate on a record split, score every task, write results.json + Markdown + HTML.

Runs on the full split unless ``limit`` is set explicitly (and then says so in the results), and
resumes: finished predictions live in ``predictions.jsonl`` in the output folder.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxmind.eval.generate import GenerationConfig, generate_predictions, load_backend

__all__ = ["EvalConfig", "evaluate"]


@dataclass
class EvalConfig:
    """What to evaluate and how."""

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


def evaluate(config: EvalConfig, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate ``config.model`` on ``config.data``; writes predictions, results.json/.md and report.html."""
    from cxmind.data.records import image_roots, load_records
    from cxmind.eval.html import markdown_table, write_html
    from cxmind.eval.metrics import aggregate, per_record

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_records(config.data, config.split, decode_images=False)
    if config.tasks:
        wanted = set(config.tasks)
        rows = rows.filter(lambda r: r["task"] in wanted)
    records = list(rows)
    if config.limit is not None:
        records = records[: config.limit]
    if not records:
        raise ValueError(
            f"no records to evaluate in {config.data} split {config.split!r} (tasks: {config.tasks})"
        )
    roots = image_roots(config.data)
    backend = load_backend(config.backend, config.model, config.adapter, config.generation)
    predictions = generate_predictions(
        records,
        backend,
        out / "predictions.jsonl",
        image_root_of=lambda r: roots[r["source"]],
        config=config.generation,
        progress=progress,
    )
    scored = []
    for record in records:
        row = dict(predictions[record["id"]])
        row["per_record"] = per_record(row)
        scored.append(row)
    metrics = aggregate(
        scored,
        n_bootstrap=config.n_bootstrap,
        seed=config.generation.seed,
        bertscore_model=config.bertscore_model,
    )
    settings = asdict(config)
    settings["data"], settings["out"] = str(config.data), str(config.out)
    results = {
        "model": _identity(config),
        "config": settings,
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
