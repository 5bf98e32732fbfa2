"""Evaluation: generation backends, CXR metrics, a report labeler and an HTML reasoning report.

``cxmind eval`` runs :func:`cxmind.eval.run.evaluate`; heavy modules are imported lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalConfig", "aggregate", "evaluate", "label_report", "per_record", "render_html"]

_LAZY = {
    "EvalConfig": "cxmind.eval.run",
    "evaluate": "cxmind.eval.run",
    "aggregate": "cxmind.eval.metrics",
    "per_record": "cxmind.eval.metrics",
    "label_report": "cxmind.eval.labeler",
    "render_html": "cxmind.eval.html",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxmind.eval' has no attribute {name!r}")
