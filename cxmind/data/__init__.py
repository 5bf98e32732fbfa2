"""Training-ready records from public chest X-ray datasets (and phantoms): ``cxmind data``.

Sources (``cxmind.data.sources``) read official dataset layouts into ``Study`` objects; task
builders (``cxmind.data.tasks``) turn studies into ``Record`` rows with gold interleaved
trajectories (``cxmind.data.traces``); ``build`` writes parquet shards and ``validate`` checks
images and token budgets. Heavy modules are imported lazily.
"""

from __future__ import annotations

from typing import Any

from cxmind.data.schema import TASK_TYPES, TASKS, Box, Record, Report, Study

__all__ = [
    "TASKS",
    "TASK_TYPES",
    "Box",
    "BuildConfig",
    "Record",
    "Report",
    "SourceSpec",
    "Study",
    "TaskConfig",
    "ValidationConfig",
    "build",
    "load_records",
    "validate",
]

_LAZY = {
    "BuildConfig": "cxmind.data.build",
    "SourceSpec": "cxmind.data.build",
    "build": "cxmind.data.build",
    "TaskConfig": "cxmind.data.tasks",
    "ValidationConfig": "cxmind.data.validate",
    "validate": "cxmind.data.validate",
    "load_records": "cxmind.data.records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxmind.data' has no attribute {name!r}")
