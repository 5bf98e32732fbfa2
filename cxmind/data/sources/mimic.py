"""MIMIC-CXR-JPG 2.0.0 (PhysioNet, credentialed): one ``Study`` per ``study_id`` with its images.

Layout under ``root`` (official names as distributed, ``.csv.gz``; plain ``.csv`` accepted)::

    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns,
                                      StudyDate, StudyTime, ... (one row per image)   required
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id + the 14 CheXpert columns  (labeler)
    mimic-cxr-2.0.0-negbio.csv.gz     same columns, NegBio labeler                     (labeler)
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split             optional
    files/p10/p10000032/s50414267/<dicom_id>.jpg                                       images
    files/p10/p10000032/s50414267.txt  free-text reports (from MIMIC-CXR), optional: copy or
                                       link MIMIC-CXR's files/ report .txt files into this tree

Options:

``labeler`` (``"chexpert"`` default | ``"negbio"``)
    which label table to read (it must exist).
``uncertain`` (``"ignore"`` default | ``"positive"`` | ``"negative"``), ``blank`` (``"ignore"``
default | ``"negative"``)
    as for CheXpert: what -1 and blank ("no mention") labels become; ``No Finding`` = 1 makes blank
    pathology columns negatives (``Support Devices`` excepted), "No Finding" is never a positive, and a
    study with no positive, an undecided (ignored) label and ``No Finding`` not 1 gets no
    negatives (it is not known to be normal).

Conventions: ``images`` are ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg``,
PA/AP first, other or unknown views next, laterals last, then file order; ``view`` and
``image_size`` (``(Columns, Rows)``; the JPGs keep the DICOM resolution) are those of the first
image. ``patient_id`` is ``subject_id``; ``order`` ranks a subject's studies by their earliest
``StudyDate``/``StudyTime``. ``split`` comes from the split table (``validate`` ->
``"validation"``), else None. ``report`` is parsed from the study's ``.txt`` when present: the
INDICATION (or HISTORY / REASON FOR EXAM / CLINICAL INFORMATION), FINDINGS and IMPRESSION (or
CONCLUSION) sections, whitespace collapsed; None without the file or when all three are empty.
Studies absent from the label table (a few in the official release) are still yielded, with
empty positives and negatives.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cxmind.data.schema import Report, Study
from cxmind.data.sources._common import (
    BLANK_POLICIES,
    CHEXPERT_COLUMNS,
    CHEXPERT_FINDINGS,
    UNCERTAIN_POLICIES,
    BaseSource,
    ChexpertLabels,
    check_choice,
    chexpert_labels,
    gc_paused,
    grouped,
    per_row,
    rank_within,
    view_name,
    view_rank,
)
from cxmind.vocab import NO_FINDING

__all__ = ["MIMIC", "parse_report"]

NO_LABELS = ChexpertLabels((), (), False, ())  # a study missing from the label table

PREFIX = "mimic-cxr-2.0.0"
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
)
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_COLUMNS)
SPLIT_COLUMNS = ("dicom_id", "split")
SPLITS = {"train": "train", "validate": "validation", "validation": "validation", "test": "test"}
LABELERS = ("chexpert", "negbio")

_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z /&,()-]*[A-Z)]):", re.MULTILINE)
_SPACE = re.compile(r"\s+")
_SECTIONS = {
    "findings": ("FINDINGS",),
    "impression": ("IMPRESSION", "CONCLUSION", "CONCLUSIONS"),
    "indication": (
        "INDICATION",
        "INDICATIONS",
        "CLINICAL INDICATION",
        "HISTORY",
        "CLINICAL HISTORY",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "CLINICAL INFORMATION",
    ),
}


def parse_report(text: str) -> Report:
    """Findings, impression and indication sections of a MIMIC-CXR free-text report."""
    found: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)] if matches else []
    for match, end in zip(matches, ends, strict=True):
        body = text[match.end() : end]
        heading = _SPACE.sub(" ", match.group(1)).strip()
        found.setdefault(heading, _SPACE.sub(" ", body).strip())
    first = {field: next((found[h] for h in names if found.get(h)), "") for field, names in _SECTIONS.items()}
    return Report(findings=first["findings"], impression=first["impression"], indication=first["indication"])


class MIMIC(BaseSource):
    """MIMIC-CXR-JPG (see the module docstring for the layout, options and conventions)."""

    name = "mimic"
    layout = f"the MIMIC-CXR-JPG folder holding {PREFIX}-metadata.csv.gz and files/"
    label_space: tuple[str, ...] = CHEXPERT_FINDINGS

    def __init__(
        self,
        root: str | Path,
        *,
        labeler: str = "chexpert",
        uncertain: str = "ignore",
        blank: str = "ignore",
    ) -> None:
        super().__init__(root)
        self.labeler = check_choice(self.name, "labeler", labeler, LABELERS)
        self.uncertain = check_choice(self.name, "uncertain", uncertain, UNCERTAIN_POLICIES)
        self.blank = check_choice(self.name, "blank", blank, BLANK_POLICIES)
        self.metadata_path = self.locate(f"{PREFIX}-metadata.csv")
        self.header(self.metadata_path, METADATA_COLUMNS)
        self.labels_path = self.locate(f"{PREFIX}-{self.labeler}.csv")
        self.header(self.labels_path, LABEL_COLUMNS)
        self.split_path = self.find(f"{PREFIX}-split.csv")
        if self.split_path is not None:
            self.header(self.split_path, SPLIT_COLUMNS)

    def _labels(self) -> dict[str, ChexpertLabels]:
        table = self.read(self.labels_path, LABEL_COLUMNS, text=("study_id",))
        labels = chexpert_labels(table, self.uncertain, self.blank, where=f"{self.name}: {self.labels_path}")
        return dict(zip(table["study_id"].tolist(), labels, strict=True))

    def _splits(self) -> dict[str, str | None]:
        if self.split_path is None:
            return {}
        table = self.read(self.split_path, SPLIT_COLUMNS, text=SPLIT_COLUMNS)
        splits = per_row(
            table["split"], lambda s: SPLITS.get(str(s).strip().lower()) if isinstance(s, str) else None
        )
        return dict(zip(table["dicom_id"].tolist(), splits, strict=True))

    def report(self, subject: str, study: str) -> Report | None:
        """The parsed report of a study, None when its .txt is absent."""
        path = self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        try:
            report = parse_report(path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return None
        return report if report != Report() else None

    def studies(self) -> Iterator[Study]:
        self.reset()
        table = self.read(
            self.metadata_path,
            METADATA_COLUMNS,
            text=("dicom_id", "subject_id", "study_id"),
            study_key="study_id",
            patient_key="subject_id",
        )
        with gc_paused():
            views = per_row(table["ViewPosition"], view_name)
            order, starts, ends = grouped(table["study_id"], np.array([view_rank(v) for v in views]))
            dicoms = table["dicom_id"].to_numpy(dtype=object)
            subjects = table["subject_id"].to_numpy(dtype=object)
            study_col = table["study_id"].to_numpy(dtype=object)
            images = [
                f"files/p{subjects[i][:2]}/p{subjects[i]}/s{study_col[i]}/{dicoms[i]}.jpg"
                for i in order.tolist()
            ]
            firsts = order[starts]
            study_ids = study_col[firsts].tolist()
            patients = subjects[firsts].tolist()
            numbers = {
                c: pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float)
                for c in ("Columns", "Rows", "StudyDate", "StudyTime")
            }
            when = np.nan_to_num(numbers["StudyDate"], nan=np.inf) * 1e6 + np.nan_to_num(numbers["StudyTime"])
            earliest = np.minimum.reduceat(when[order], starts) if len(order) else np.zeros(0)
            orders = rank_within(patients, earliest, study_ids)
            width = np.nan_to_num(numbers["Columns"][firsts])
            height = np.nan_to_num(numbers["Rows"][firsts])
            sizes = [
                (int(w), int(h)) if w > 0 and h > 0 else None
                for w, h in zip(width.tolist(), height.tolist(), strict=True)
            ]
            first_views = [views[i] for i in firsts.tolist()]
            first_dicoms = dicoms[firsts].tolist()
            labels = self._labels()
            splits = self._splits()
        for study, patient, start, end, view, size, rank, dicom in zip(
            study_ids, patients, starts, ends, first_views, sizes, orders, first_dicoms, strict=True
        ):
            label = labels.get(study, NO_LABELS)
            yield Study(
                source="mimic",
                study_id=study,
                patient_id=patient,
                images=tuple(images[start:end]),
                positives=label.positives,
                negatives=label.negatives,
                view=view,
                image_size=size,
                report=self.report(patient, study),
                order=rank,
                split=splits.get(dicom),
                normal=label.normal,
                label_space=(*self.label_space, NO_FINDING),  # labels whole studies
                assumed_negatives=label.assumed,
            )
