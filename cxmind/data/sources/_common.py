"""Plumbing shared by the dataset sources: official files, checked tables, views, label policies.

Speed model: each table is read once with ``pandas.read_csv`` (the needed columns), every
per-row transformation is either numpy or a plain list comprehension (pandas ``.str`` methods are
~10x slower than Python on these sizes), labels are resolved once per *distinct* label string or
label vector, and Python loops run once per study, where building the ``Study`` itself dominates.
"""

from __future__ import annotations

import gc
import math
import zipfile
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from itertools import compress
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import pandas as pd

from cxmind.data.schema import Study
from cxmind.errors import MissingFileError, UserError
from cxmind.vocab import CHEXPERT_14, NO_FINDING, canonical, is_known

__all__ = [
    "BLANK_POLICIES",
    "CHEXPERT_COLUMNS",
    "CHEXPERT_FINDINGS",
    "UNCERTAIN_POLICIES",
    "BaseSource",
    "ChexpertLabels",
    "canon",
    "check_choice",
    "chexpert_labels",
    "gc_paused",
    "group_bounds",
    "grouped",
    "image_size",
    "ints_or_none",
    "per_row",
    "per_unique",
    "rank_within",
    "view_name",
    "view_rank",
]

T = TypeVar("T")

#: Compressed variants accepted next to every official file name.
SUFFIXES = ("", ".gz", ".zip")

#: The 14 label columns of the CheXpert / MIMIC-CXR labeler tables, in file order.
CHEXPERT_COLUMNS: tuple[str, ...] = CHEXPERT_14
#: The 13 findings of those columns ("No Finding" is a study state, never a positive).
CHEXPERT_FINDINGS: tuple[str, ...] = tuple(c for c in CHEXPERT_COLUMNS if c != NO_FINDING)
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")
BLANK_POLICIES = ("negative", "ignore")
SUPPORT_DEVICES = "Support Devices"


@lru_cache(maxsize=65536)
def canon(term: str) -> tuple[str, bool]:
    """``(canonical(term), is_known(term))``, memoised: label tables repeat a few hundred terms."""
    name = canonical(term)
    return name, is_known(name)


def check_choice(source: str, option: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the source and the choices."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise UserError(f"{source}: {option}={value!r} is not one of {allowed}")
    return str(value)


class BaseSource:
    """Common state of a source: its root, how to find and read its files, and what it skipped.

    ``skipped`` counts rows/studies left out by reason and ``rejects`` lists them as
    ``(id, reason, detail)`` (the builder's reject rows); ``unmapped_labels`` counts label terms
    outside ``cxmind.vocab`` per study. All three describe the last ``studies()`` iteration.
    """

    name: ClassVar[str] = ""
    #: What ``root`` must be, completing "point --source NAME=<dir> at ..." in error messages.
    layout: ClassVar[str] = ""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingFileError(f"{self.name}: {self.root} is not a folder; {self.hint}")
        self.skipped: Counter[str] = Counter()
        self.unmapped_labels: Counter[str] = Counter()
        self.rejects: list[tuple[str, str, str]] = []
        #: Set by a build with ``--limit``: tables read with a ``study_key`` keep only the rows of
        #: their first ``limit`` studies (see :meth:`read`); ``truncated`` says whether one was cut.
        self.limit: int | None = None
        self.truncated = False
        #: With a limit and a ``patient_key``: the study ids the limit allows (other studies of the
        #: same patients are read only for their order and must not be yielded; see :meth:`limited`).
        self.limited_studies: set[str] | None = None

    @property
    def hint(self) -> str:
        return f"point --source {self.name}=<dir> at {self.layout}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"

    def studies(self) -> Iterator[Study]:  # pragma: no cover - every source overrides it
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ files

    def find(self, *names: str) -> Path | None:
        """The first of ``names`` (relative to root, each also as .gz/.zip) that exists, else None."""
        for name in names:
            for suffix in SUFFIXES:
                path = self.root / f"{name}{suffix}"
                if path.is_file():
                    return path
        return None

    def locate(self, *names: str) -> Path:
        """Like ``find`` but a missing file is an error that names it and says where root should point."""
        path = self.find(*names)
        if path is None:
            others = ", ".join(names[1:])
            tried = f" (nor {others}, nor a .gz/.zip variant)" if others else " (nor a .gz/.zip variant)"
            raise MissingFileError(f"{self.name}: {self.root / names[0]} not found{tried}; {self.hint}")
        return path

    def header(self, path: Path, required: Sequence[str]) -> dict[str, str]:
        """Column name (stripped) -> name as written; a missing required column is a clear error."""
        try:
            columns = pd.read_csv(path, nrows=0).columns
        except (ValueError, OSError, zipfile.BadZipFile) as exc:  # empty, not a csv, bad archive
            raise UserError(f"{self.name}: cannot read {path} as a csv table ({exc}); {self.hint}") from exc
        by_name = {str(c).strip(): str(c) for c in columns}
        missing = [c for c in required if c not in by_name]
        if missing:
            found = ", ".join(repr(c) for c in list(by_name)[:15])
            raise UserError(
                f"{self.name}: {path} has no column {', '.join(repr(c) for c in missing)} (found: {found}); "
                f"expected the official file, unmodified; {self.hint}"
            )
        return by_name

    def read(
        self,
        path: Path,
        required: Sequence[str],
        optional: Sequence[str] = (),
        *,
        text: Sequence[str] = (),
        study_key: str | None = None,
        key_of: Callable[[str], str] | None = None,
        patient_key: str | None = None,
    ) -> pd.DataFrame:
        """The ``required`` (checked) and present ``optional`` columns of a table, names stripped.

        ``text`` columns are read as strings so that identifiers keep their exact spelling. With
        ``self.limit`` and a ``study_key`` column (mapped through ``key_of`` to the study it belongs
        to), only the rows of the first ``limit`` studies in order of first appearance are parsed —
        every row of each, wherever it lies in the file — so a trial build reads a prefix of a large
        table and still sees exactly the studies a full read would give first. Where a study depends
        on its patient's other studies (their order by date), ``patient_key`` keeps every row of
        those patients too.
        """
        by_name = self.header(path, required)
        wanted = [by_name[c] for c in (*required, *optional) if c in by_name]
        dtype = {by_name[c]: str for c in text if c in by_name}
        keep = None
        if self.limit is not None and study_key is not None:
            patient = by_name[patient_key] if patient_key is not None else None
            keep = self._first_studies(path, by_name[study_key], key_of, patient)
        nrows = None if keep is None else len(keep)
        if 2 * len(wanted) >= len(by_name):  # usecols costs more than it saves when most columns are used
            frame = pd.read_csv(path, dtype=dtype, nrows=nrows)[wanted]
        else:
            frame = pd.read_csv(path, usecols=wanted, dtype=dtype, nrows=nrows)
        frame.columns = [c.strip() for c in wanted]
        if keep is not None and not keep.all():
            frame = frame[keep].reset_index(drop=True)
        return frame

    def _first_studies(
        self, path: Path, column: str, key_of: Callable[[str], str] | None, patient: str | None
    ) -> np.ndarray | None:
        """Row mask over the shortest prefix holding every row of the first ``limit`` studies (and of
        their patients); None when the whole table is needed. Only the key columns are parsed."""
        keys = pd.read_csv(path, usecols=[column, patient] if patient else [column], dtype=str)
        studies = keys[column] if key_of is None else keys[column].map(key_of, na_action="ignore")
        codes, _ = pd.factorize(studies)  # in order of first appearance; missing keys get -1
        first = (codes >= 0) & (codes < self.limit)
        if not first.any() or codes.max() < self.limit:
            return None
        if patient is not None:
            self.limited_studies = set(studies[first])
            first |= keys[patient].isin(set(keys[patient][first])).to_numpy()
        end = int(np.flatnonzero(first)[-1]) + 1
        self.truncated = True
        return (first | (codes < 0))[:end]  # rows without a key stay: the source reports them

    # ----------------------------------------------------------------------------------- skips

    def limited(self) -> Iterator[Study]:
        """``studies()`` as a build with ``limit`` reads them: exactly the first ``limit`` studies of
        a full read, without the extra studies read for their patients' order."""
        for study in self.studies():
            if self.limited_studies is None or study.study_id in self.limited_studies:
                yield study

    def reset(self) -> None:
        self.truncated = False
        self.limited_studies = None
        self.skipped.clear()
        self.unmapped_labels.clear()
        self.rejects.clear()

    def skip(self, item: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self.rejects.append((f"{self.name}/{item}", reason, detail))


# ------------------------------------------------------------------------------------ grouping


def group_bounds(sorted_codes: np.ndarray) -> tuple[list[int], list[int]]:
    """Start and end offsets of the runs of equal values in ``sorted_codes``."""
    n = len(sorted_codes)
    if n == 0:
        return [], []
    change = np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1
    return [0, *change.tolist()], [*change.tolist(), n]


def grouped(
    keys: Sequence[Hashable] | pd.Series, rank: np.ndarray | None = None
) -> tuple[np.ndarray, list[int], list[int]]:
    """Row order that groups equal ``keys`` (first-appearance order), ``rank`` then file order inside.

    Returns ``(order, starts, ends)``: group ``i`` is ``order[starts[i]:ends[i]]``.
    """
    codes, _ = pd.factorize(keys if isinstance(keys, pd.Series) else pd.Series(keys, dtype=object))
    order = np.argsort(codes, kind="stable") if rank is None else np.lexsort((rank, codes))
    starts, ends = group_bounds(codes[order])
    return order, starts, ends


def per_unique(values: pd.Series, fn: Callable[[Any], T]) -> tuple[np.ndarray, list[T]]:
    """``fn`` applied once per distinct value: ``(codes, results)``, row ``i`` maps to ``results[codes[i]]``.

    Missing values are passed to ``fn`` as ``None`` (they form one extra distinct value).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    distinct: list[Any] = list(uniques)
    if (codes < 0).any():
        codes = np.where(codes < 0, len(distinct), codes)
        distinct.append(None)
    return codes, [fn(v) for v in distinct]


def per_row(values: pd.Series, fn: Callable[[Any], T]) -> list[T]:
    """``fn(value)`` for every row, computed once per distinct value."""
    codes, results = per_unique(values, fn)
    return [results[c] for c in codes.tolist()]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building large acyclic lists (it rescans them for nothing).

    Never hold it across a ``yield``: the consumer's code runs there.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rank_within(groups: Sequence[Hashable], when: np.ndarray, ids: Sequence[Hashable]) -> list[int]:
    """0-based rank of each item within its group by ``when`` (NaN last), ties broken by ``ids``."""
    group_codes = pd.factorize(pd.Series(list(groups), dtype=object))[0]
    id_codes = pd.factorize(pd.Series(list(ids), dtype=object), sort=True)[0]
    order = np.lexsort((id_codes, np.nan_to_num(np.asarray(when, dtype=float), nan=np.inf), group_codes))
    sorted_groups = group_codes[order]
    positions = np.arange(len(order))
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
    rank_sorted = positions - np.maximum.accumulate(np.where(new_group, positions, 0))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = rank_sorted
    return ranks.tolist()


def ints_or_none(values: pd.Series) -> list[int | None]:
    """Integers of a numeric column, None where missing or not a number."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if not np.isnan(numbers).any():
        return numbers.astype(np.int64).tolist()
    return [None if np.isnan(v) else int(v) for v in numbers.tolist()]


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from a DICOM header or an image header, without decoding pixels."""
    try:
        if path.suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            return int(header.Columns), int(header.Rows)
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except Exception:  # an unreadable file has no size; the builder rejects it when it loads the image
        return None


# --------------------------------------------------------------------------------------- views

_VIEWS = {
    "PA": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "ANTEROPOSTERIOR": "AP",
    "AP_HORIZONTAL": "AP",  # PadChest: AP supine, horizontal beam
    "AP SUPINE": "AP",
    "L": "LATERAL",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
    "LARGE LATERAL": "LATERAL",
    "XTABLE LATERAL": "LATERAL",
}
_NO_VIEW = {"", "UNK", "UNKNOWN", "EXCLUDE", "NAN", "NONE"}


def view_name(raw: object) -> str | None:
    """``PA``/``AP``/``LATERAL`` for the usual spellings, other views upper-cased, None when unknown."""
    if is_missing(raw):
        return None
    text = str(raw).strip().upper()
    if text in _NO_VIEW:
        return None
    return _VIEWS.get(text, text)


def view_rank(view: str | None) -> int:
    """Sort key putting frontal views first and laterals last (unknown and other views between)."""
    return 0 if view in ("PA", "AP") else 2 if view == "LATERAL" else 1


# ----------------------------------------------------------------------------- label policies

# cell code of a labeler value: blank 0, positive 1, negative 2, uncertain 3
_CELL = {1.0: 1, 0.0: 2, -1.0: 3}


class ChexpertLabels(NamedTuple):
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    normal: bool  # ``No Finding`` = 1 and no positive
    assumed: tuple[str, ...]  # negatives read from blank cells by the ``blank="negative"`` policy


def chexpert_labels(
    frame: pd.DataFrame, uncertain: str, blank: str, *, where: str, rows: np.ndarray | None = None
) -> list[ChexpertLabels]:
    """Labels per row of a CheXpert-labeler table (CheXpert, MIMIC-CXR).

    Cells: 1 positive, 0 negative, -1 uncertain (``uncertain`` policy), blank = not mentioned in the
    report (``blank`` policy; the labeler's own definition, Irvin et al. 2019, §2.1: a blank is "no
    mention", not an absence). ``No Finding`` = 1 is the labeler's statement that no pathology is
    mentioned as present or uncertain, so the blank pathology columns become negatives whatever
    ``blank`` says and the study is normal; ``Support Devices`` is not a pathology and keeps its own
    value. Positives never contain "No Finding". A row without positives whose policies leave some
    label undecided (an ignored -1 or blank) and without ``No Finding`` = 1 gets no negatives either:
    it is not known to be normal. ``rows`` selects the rows to resolve (all by default).
    """
    values = frame[list(CHEXPERT_COLUMNS)].to_numpy(dtype=float, na_value=np.nan)
    if rows is not None:
        values = values[rows]
    blank_cells = np.isnan(values)
    valid = blank_cells | np.isin(values, (1.0, 0.0, -1.0))
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        row = int(rows[row]) if rows is not None else int(row)
        column = CHEXPERT_COLUMNS[col]
        value = float(frame[column].iat[row])
        raise UserError(f"{where}: column {column!r} holds {value!r} (row {row}); expected 1, 0, -1 or blank")
    cells = np.zeros(values.shape, dtype=np.int64)
    for value, code in _CELL.items():
        cells[values == value] = code
    # one label vector per distinct row: resolve those, then index back
    keys = cells @ (4 ** np.arange(len(CHEXPERT_COLUMNS), dtype=np.int64))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    distinct = cells[first]
    columns = [CHEXPERT_COLUMNS.index(c) for c in CHEXPERT_FINDINGS]
    found = distinct[:, columns]
    normal = distinct[:, [CHEXPERT_COLUMNS.index(NO_FINDING)]] == 1
    pathology = np.array([c != SUPPORT_DEVICES for c in CHEXPERT_FINDINGS])
    positive = (found == 1) | ((found == 3) & (uncertain == "positive"))
    negative = (
        (found == 2)
        | ((found == 3) & (uncertain == "negative"))
        | ((found == 0) & ((blank == "negative") | (normal & pathology)))
    )
    # no positive and some label left undecided (ignored -1 or blank) without "No Finding" = 1:
    # not known to be normal, so no negatives either (they would make the study read as normal)
    undecided = ~positive.any(axis=1) & ~(positive | negative).all(axis=1) & ~normal[:, 0]
    negative[undecided] = False
    assumed = negative & (found == 0) & ~(normal & pathology)
    is_normal = normal[:, 0] & ~positive.any(axis=1)
    table = [
        ChexpertLabels(
            tuple(compress(CHEXPERT_FINDINGS, pos)),
            tuple(compress(CHEXPERT_FINDINGS, neg)),
            bool(ok),
            tuple(compress(CHEXPERT_FINDINGS, blank_negative)),
        )
        for pos, neg, ok, blank_negative in zip(
            positive.tolist(), negative.tolist(), is_normal.tolist(), assumed.tolist(), strict=True
        )
    ]
    return [table[i] for i in inverse.ravel().tolist()]
