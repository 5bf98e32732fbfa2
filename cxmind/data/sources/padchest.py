"""PadChest (BIMCV, Alicante): one ``Study`` per ``StudyID`` from the official labels csv.

Layout under ``root`` (official names; ``.gz``/``.zip`` variants accepted)::

    PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv    one row per image
    <ImageDir>/<ImageID>                                   the PNGs, in their numbered folders

Labels: the ``Labels`` column is a Python-list-looking string (``"['pleural effusion', ' nodule']"``)
parsed with a regex once per distinct string. Each term is stripped and mapped to the vocabulary:
first through ``PADCHEST_TERMS`` (children of PadChest's label tree whose parent is a vocabulary
finding, e.g. "loculated pleural effusion" -> Pleural Effusion, "NSG tube" -> Support Devices),
then through ``cxmind.vocab.canonical`` (e.g. "laminar atelectasis" -> Atelectasis).

* ``"normal"`` alone is a normal study: empty positives, all of ``label_space`` as negatives.
  Next to other terms (226 images) it is ignored and the other terms win.
* ``label_space`` is the vocabulary findings that occur in the table (it reads the table once).
  ``negatives`` = ``label_space`` minus the positives, and minus any finding one of the study's
  unmapped terms names in whole words ("tuberculosis sequelae" leaves Tuberculosis out of the
  negatives without making it positive: a more specific term never asserts absence).
* Terms outside the vocabulary are counted per study in ``unmapped_labels`` (to extend the
  vocabulary) and handled by the ``unmapped`` option.
* Rows are skipped (counted in ``skipped``/``rejects`` per image) when ``Labels`` is missing
  (103 rows, reports without labels), an empty list (777), or contains ``"exclude"`` (1,312
  images PadChest marks as unusable).

Other fields: ``images`` are ``{ImageDir}/{ImageID}``, frontal views first (``Projection``:
PA, AP, ``AP_horizontal`` -> AP, ``L`` -> LATERAL; ``COSTAL`` kept, ``UNK``/``EXCLUDE`` -> None);
``image_size`` is ``(Columns_DICOM, Rows_DICOM)`` of the first image when numeric (the PNGs keep
the DICOM resolution); ``patient_id`` is ``PatientID`` (one StudyID carries two PatientIDs in
the table: the first row's is used); ``order`` ranks a patient's studies by ``StudyDate_DICOM``
then StudyID; ``split`` is None (no official split).

Options:

``unmapped`` (``"keep"`` default | ``"drop"``)
    keep unmapped terms in ``positives`` as their normalised text ("chronic changes"), or leave
    them out; with ``"drop"`` a study whose terms are all unmapped gets no labels at all (neither
    positives nor negatives), because calling it normal would be wrong.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from cxmind.data.schema import Study
from cxmind.data.sources._common import (
    BaseSource,
    canon,
    check_choice,
    gc_paused,
    grouped,
    is_missing,
    per_row,
    per_unique,
    rank_within,
    view_name,
    view_rank,
)
from cxmind.vocab import FINDINGS, NO_FINDING, lookup_key

__all__ = ["PADCHEST_TERMS", "PadChest"]

FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS = (
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "Projection",
    "Rows_DICOM",
    "Columns_DICOM",
    "Labels",
)

_DEVICES = (
    "nsg tube",
    "chest drain tube",
    "ventriculoperitoneal drain tube",
    "gastrostomy tube",
    "nephrostomy tube",
    "catheter",
    "reservoir central venous catheter",
    "central venous catheter via jugular vein",
    "central venous catheter via subclavian vein",
    "central venous catheter via umbilical vein",
    "dual chamber device",
    "single chamber device",
    "electrical device",
)

#: PadChest terms (lookup keys) whose parent in PadChest's label tree is a vocabulary finding.
PADCHEST_TERMS: dict[str, tuple[str, ...]] = {
    "loculated pleural effusion": ("Pleural Effusion",),
    "loculated fissural effusion": ("Pleural Effusion",),
    "empyema": ("Pleural Effusion",),
    "hydropneumothorax": ("Pneumothorax", "Pleural Effusion"),
    "segmental atelectasis": ("Atelectasis",),
    "total atelectasis": ("Atelectasis",),
    "round atelectasis": ("Atelectasis",),
    "atelectasis basal": ("Atelectasis",),
    "callus rib fracture": ("Fracture",),
    "humeral fracture": ("Fracture",),
    "calcified pleural thickening": ("Pleural Thickening",),
    "calcified pleural plaques": ("Pleural Thickening",),
    "atypical pneumonia": ("Pneumonia",),
    "multiple nodules": ("Nodule",),
    "reticular interstitial pattern": ("Interstitial Pattern",),
    "reticulonodular interstitial pattern": ("Interstitial Pattern",),
    "ascendent aortic elongation": ("Aortic Elongation",),
    "descendent aortic elongation": ("Aortic Elongation",),
    "supra aortic elongation": ("Aortic Elongation",),
    "vascular hilar enlargement": ("Hilar Enlargement",),
    **dict.fromkeys(_DEVICES, ("Support Devices",)),
}

_QUOTED = re.compile(r"'([^'\\]*)'|\"([^\"\\]*)\"")
_SPELLINGS = tuple(
    (f" {lookup_key(spelling)} ", finding.name)
    for finding in FINDINGS
    if finding.name != NO_FINDING
    for spelling in (finding.name, *finding.synonyms)
)


def parse_labels(text: str) -> list[str] | None:
    """The terms of a ``Labels`` cell (stripped, empties dropped); None when it is not a list."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    if "\\" in text:  # escaped quotes: rare enough for the slow, exact parser
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return [str(t).strip() for t in items if str(t).strip()]
    return [t.strip() for a, b in _QUOTED.findall(text) if (t := a or b).strip()]


@lru_cache(maxsize=4096)
def _term(term: str) -> tuple[tuple[str, ...], bool]:
    """Vocabulary names of a PadChest term and whether it mapped (else the name is its lookup key)."""
    key = lookup_key(term)
    if key in PADCHEST_TERMS:
        return PADCHEST_TERMS[key], True
    name, known = canon(term)
    return (name,), known


@lru_cache(maxsize=4096)
def _suspected(unmapped: str) -> frozenset[str]:
    """Vocabulary findings an unmapped term names in whole words ("tuberculosis sequelae")."""
    padded = f" {unmapped} "
    return frozenset(name for spelling, name in _SPELLINGS if spelling in padded)


@dataclass(frozen=True)
class _Parsed:
    skip: str | None = None  # reason to skip the row
    known: tuple[str, ...] = ()  # vocabulary positives (no "No Finding")
    unmapped: tuple[str, ...] = ()  # "normal" alone leaves both empty: a normal study


class PadChest(BaseSource):
    """PadChest (see the module docstring for the layout, options and conventions)."""

    name = "padchest"
    layout = f"the folder holding {FILE} and the numbered image folders"

    def __init__(self, root: str | Path, *, unmapped: str = "keep") -> None:
        super().__init__(root)
        self.unmapped = check_choice(self.name, "unmapped", unmapped, ("keep", "drop"))
        self.table_path = self.locate(FILE)
        self.header(self.table_path, COLUMNS)
        self._label_space: tuple[str, ...] | None = None

    @property
    def label_space(self) -> tuple[str, ...]:
        """Vocabulary findings occurring in the table, in vocabulary order (reads the table once)."""
        if self._label_space is None:
            labels = self.read(self.table_path, ("Labels",))["Labels"]
            self._label_space = self._space(per_unique(labels, self._parse)[1])
        return self._label_space

    @staticmethod
    def _space(parsed: list[_Parsed]) -> tuple[str, ...]:
        seen = {name for p in parsed for name in p.known}
        return tuple(f.name for f in FINDINGS if f.name in seen)

    @staticmethod
    def _parse(text: object) -> _Parsed:
        if is_missing(text):
            return _Parsed(skip="missing Labels")
        terms = parse_labels(str(text))
        if terms is None:
            return _Parsed(skip="unparsable Labels")
        if not terms:
            return _Parsed(skip="empty Labels")
        if any(t.lower() == "exclude" for t in terms):
            return _Parsed(skip="labelled 'exclude'")
        known: dict[str, None] = {}
        unmapped: dict[str, None] = {}
        for term in terms:
            names, mapped = _term(term)
            for name in names:
                if not mapped:
                    unmapped[name] = None
                elif name != NO_FINDING:  # "normal" adds nothing; next to other terms it is moot
                    known[name] = None
        return _Parsed(None, tuple(known), tuple(unmapped))

    def _labels(
        self, parsed: _Parsed, space: tuple[str, ...], memo: dict[frozenset[str], tuple[str, ...]]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if parsed.skip is not None or (self.unmapped == "drop" and parsed.unmapped and not parsed.known):
            return (), ()
        positives = parsed.known + (parsed.unmapped if self.unmapped == "keep" else ())
        excluded = frozenset(parsed.known).union(*(_suspected(t) for t in parsed.unmapped))
        if excluded not in memo:
            memo[excluded] = tuple(n for n in space if n not in excluded)
        return positives, memo[excluded]

    def studies(self) -> Iterator[Study]:
        self.reset()
        table = self.read(
            self.table_path,
            COLUMNS,
            text=("ImageID", "StudyID", "PatientID", "ImageDir"),
            study_key="StudyID",
            patient_key="PatientID",
        )
        with gc_paused():
            codes, distinct = per_unique(table["Labels"], self._parse)
            # a limited read sees part of the table: the label space is the whole table's
            space = self.label_space if self.truncated else self._space(distinct)
            self._label_space = space
            memo: dict[frozenset[str], tuple[str, ...]] = {}
            resolved = [self._labels(p, space, memo) for p in distinct]
            keep = np.array([p.skip is None for p in distinct], dtype=bool)[codes]
            image_ids = table["ImageID"].to_numpy(dtype=object)
            labels_text = table["Labels"].to_numpy(dtype=object)
            for i in np.flatnonzero(~keep).tolist():
                text = labels_text[i]
                self.skip(
                    image_ids[i], distinct[codes[i]].skip or "", "" if is_missing(text) else str(text)[:200]
                )
            rows = np.flatnonzero(keep)
            all_views = per_row(table["Projection"], view_name)
            views = [all_views[i] for i in rows.tolist()]
            order, starts, ends = grouped(
                table["StudyID"].to_numpy(dtype=object)[rows], np.array([view_rank(v) for v in views])
            )
            firsts = order[starts]
            ordered = rows[order]
            folders = table["ImageDir"].to_numpy(dtype=object)
            paths = [f"{folders[i]}/{image_ids[i]}" for i in ordered.tolist()]
            study_rows = rows[firsts]
            study_ids = table["StudyID"].to_numpy(dtype=object)[study_rows].tolist()
            patients = table["PatientID"].to_numpy(dtype=object)[study_rows].tolist()
            number = {
                c: pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float)[study_rows]
                for c in ("StudyDate_DICOM", "Columns_DICOM", "Rows_DICOM")
            }
            orders = rank_within(patients, number["StudyDate_DICOM"], study_ids)
            width, height = np.nan_to_num(number["Columns_DICOM"]), np.nan_to_num(number["Rows_DICOM"])
            sizes = [
                (int(w), int(h)) if w > 0 and h > 0 else None
                for w, h in zip(width.tolist(), height.tolist(), strict=True)
            ]
            study_codes = codes[study_rows].tolist()
            study_views = [views[i] for i in firsts.tolist()]
        for study_id, patient, start, end, code, view, size, order in zip(
            study_ids, patients, starts, ends, study_codes, study_views, sizes, orders, strict=True
        ):
            unmapped = distinct[code].unmapped
            if unmapped:
                self.unmapped_labels.update(unmapped)
            positives, negatives = resolved[code]
            yield Study(
                source="padchest",
                study_id=study_id,
                patient_id=patient,
                images=tuple(paths[start:end]),
                positives=positives,
                negatives=negatives,
                view=view,
                image_size=size,
                order=order,
                normal=not positives and bool(negatives),  # "normal" is PadChest's explicit label
                label_space=(*space, NO_FINDING),  # labels whole studies
            )
