"""Dataset sources: each reads one public dataset's *official* file layout into ``Study`` objects.

>>> from cxmind.data.sources import SOURCES, get_source
>>> sorted(SOURCES)
['chexpert', 'iu_xray', 'mimic', 'nih', 'padchest', 'phantom', 'rsna', 'siim', 'vindr']

``get_source(name, root, **options)`` builds one: ``root`` is the folder holding the dataset's
official files (image paths in the studies are relative to it) and the options are the source's
label policies (each module's docstring documents its layout and options). Every source has a
``name``, a ``label_space`` (the canonical ``cxmind.vocab`` findings it labels), ``studies()``
(an iterator of ``Study``) and, describing the last iteration, ``skipped`` (reason -> count),
``rejects`` (``(id, reason, detail)`` rows) and ``unmapped_labels`` (label terms outside the
vocabulary -> number of studies).

Shared label convention: ``positives`` never contain "No Finding"; a study with empty positives
and non-empty negatives is a normal study; a study with neither has no labels (e.g. a report-only
study, or labels a policy left undecided).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from cxmind.data.phantom import PhantomSource
from cxmind.data.schema import Source
from cxmind.data.sources._common import BaseSource
from cxmind.data.sources.chexpert import CheXpert
from cxmind.data.sources.iu_xray import IUXray
from cxmind.data.sources.mimic import MIMIC
from cxmind.data.sources.nih import NIH
from cxmind.data.sources.padchest import PadChest
from cxmind.data.sources.rsna import RSNA
from cxmind.data.sources.siim import SIIM
from cxmind.data.sources.vindr import VinDr
from cxmind.errors import UserError

__all__ = [
    "MIMIC",
    "NIH",
    "RSNA",
    "SIIM",
    "SOURCES",
    "BaseSource",
    "CheXpert",
    "IUXray",
    "PadChest",
    "VinDr",
    "get_source",
    "source_options",
]

#: Registry name -> source class (``phantom``: procedural images for tests, demos and benchmarks).
SOURCES: dict[str, type[Any]] = {
    cls.name: cls for cls in (NIH, CheXpert, PadChest, VinDr, RSNA, SIIM, IUXray, MIMIC, PhantomSource)
}


def source_options(name: str) -> dict[str, Any]:
    """The options a source accepts, with their defaults."""
    cls = _lookup(name)
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _lookup(name: str) -> type[Any]:
    key = name.strip().lower().replace("-", "_")
    if key not in SOURCES:
        raise UserError(f"unknown source {name!r}; valid sources: {', '.join(sorted(SOURCES))}")
    return SOURCES[key]


def get_source(name: str, root: str | Path, **options: Any) -> Source:
    """The source ``name`` reading the official files under ``root``, with its label-policy options."""
    cls = _lookup(name)
    accepted = source_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise UserError(f"{cls.name}: unknown option {', '.join(unknown)}; valid options (defaults): {valid}")
    return cls(root, **options)
