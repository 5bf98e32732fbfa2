"""CheXpert (Stanford): one ``Study`` per study folder, its views grouped, from the official csvs.

Layout: ``root`` is either the folder *containing* the dataset folder or the dataset folder
itself (the one holding ``train.csv``)::

    <root>/CheXpert-v1.0-small/train.csv     (also CheXpert-v1.0/, or any CheXpert*/ folder)
    <root>/CheXpert-v1.0-small/valid.csv     optional
    <root>/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...

The csv ``Path`` column starts with the dataset folder's name
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``); that first component is
replaced by the folder the csv was found in, so image paths are relative to ``root`` either way
(and a renamed dataset folder still works). ``.gz``/``.zip`` variants of the csvs are accepted.

Options:

``uncertain`` (``"ignore"`` default | ``"positive"`` | ``"negative"``)
    what a -1 (uncertain) label becomes: neither list (U-Ignore), a positive (U-Ones) or a
    negative (U-Zeros).
``blank`` (``"ignore"`` default | ``"negative"``)
    what an unmentioned (blank) label becomes: neither list (a blank is "no mention" in the
    labeler's definition, so absence is unknown), or a negative (the common "blank = 0" shortcut;
    those negatives are marked ``assumed_negatives`` and never used to compare studies).

Conventions: labels are per study (identical on every view of a study) and read from its first
row; ``label_space`` is the 13 CheXpert findings. "No Finding" is never a positive: ``No Finding``
= 1 makes every blank pathology a negative whatever ``blank`` says (``Support Devices`` is not a
pathology and keeps its own label), so a normal study has empty positives and non-empty
negatives. A study with no positive, an undecided label (an ignored -1 or blank) and ``No
Finding`` not 1 gets no negatives either, since it is not known to be normal (e.g. only
"Enlarged Cardiomediastinum: -1" under U-Ignore; 4,891 train studies with the defaults).

Views are ordered frontal first (then file order); ``view`` is ``AP``/``PA`` from the ``AP/PA``
column, or ``LATERAL`` (also for the 17 train images marked Frontal with AP/PA ``LL``/``RL``).
``study_id`` is ``train/patient00001/study1``, ``patient_id`` ``patient00001``, ``order`` the study
number minus one (CheXpert numbers each patient's studies in sequence). ``split``: ``valid.csv``
-> ``"validation"``; ``train.csv`` -> ``None`` so the builder assigns patient-level splits.
``image_size`` is ``None`` (not in the csv).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cxmind.data.schema import Study
from cxmind.data.sources._common import (
    BLANK_POLICIES,
    CHEXPERT_COLUMNS,
    CHEXPERT_FINDINGS,
    SUFFIXES,
    UNCERTAIN_POLICIES,
    BaseSource,
    check_choice,
    chexpert_labels,
    gc_paused,
    grouped,
    per_row,
    view_name,
)
from cxmind.errors import MissingFileError, UserError
from cxmind.vocab import NO_FINDING

__all__ = ["CheXpert"]

COLUMNS = ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS)
DATASET_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
TABLES = (("train.csv", None), ("valid.csv", "validation"))


class CheXpert(BaseSource):
    """CheXpert (see the module docstring for the layout, options and conventions)."""

    name = "chexpert"
    layout = "the folder holding CheXpert-v1.0-small/ (or at that folder itself, where train.csv is)"
    label_space: tuple[str, ...] = CHEXPERT_FINDINGS

    def __init__(self, root: str | Path, *, uncertain: str = "ignore", blank: str = "ignore") -> None:
        super().__init__(root)
        self.uncertain = check_choice(self.name, "uncertain", uncertain, UNCERTAIN_POLICIES)
        self.blank = check_choice(self.name, "blank", blank, BLANK_POLICIES)
        self.folder, self.tables = self._find_tables()
        for path, _ in self.tables:
            self.header(path, COLUMNS)

    def _find_tables(self) -> tuple[str, list[tuple[Path, str | None]]]:
        """The dataset folder (relative to root, "" for root itself) and its csvs with their split."""
        extra = sorted(
            p.name for p in self.root.glob("CheXpert*") if p.is_dir() and p.name not in DATASET_FOLDERS
        )
        for folder in ("", *DATASET_FOLDERS, *extra):
            tables = []
            for name, split in TABLES:
                path = self.find(f"{folder}/{name}" if folder else name)
                if path is not None:
                    tables.append((path, split))
            if tables:
                return folder, tables
        raise MissingFileError(
            f"{self.name}: {self.root / 'train.csv'} not found (nor {DATASET_FOLDERS[0]}/train.csv, "
            f"{DATASET_FOLDERS[1]}/train.csv or valid.csv; {', '.join(SUFFIXES[1:])} variants accepted "
            f"too); {self.hint}"
        )

    def studies(self) -> Iterator[Study]:
        self.reset()
        for path, split in self.tables:
            yield from self._studies(path, split)

    def _studies(self, path: Path, split: str | None) -> Iterator[Study]:
        table = self.read(path, COLUMNS, study_key="Path", key_of=_study_folder)
        prefix = f"{self.folder}/" if self.folder else ""
        with gc_paused():
            paths = table["Path"].tolist()
            try:
                # drop the dataset folder's name, unless the csv was rewritten without it
                bare = bool(paths) and paths[0].startswith(("train/", "valid/", "test/"))
                rest = paths if bare else [p.split("/", 1)[1] for p in paths]
            except (IndexError, AttributeError) as exc:
                raise UserError(
                    f"{self.name}: {path} column 'Path' should hold paths like "
                    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
                ) from exc
            marked = (table["Frontal/Lateral"] == "Lateral").to_numpy(dtype=bool, na_value=False).tolist()
            views = per_row(table["AP/PA"], view_name)
            views = ["LATERAL" if lat else v for lat, v in zip(marked, views, strict=True)]
            lateral = np.array([v == "LATERAL" for v in views], dtype=bool)
            keys = [r[: r.rfind("/")] for r in rest]
            order, starts, ends = grouped(keys, np.where(lateral, 2, 0))
            firsts = order[starts]
            labels = chexpert_labels(
                table, self.uncertain, self.blank, where=f"{self.name}: {path}", rows=firsts
            )
            images = [prefix + rest[i] for i in order.tolist()]
            firsts_list = firsts.tolist()
            study_keys = [keys[i] for i in firsts_list]
            study_views = [views[i] for i in firsts_list]
            patients = [k.split("/", 2)[1] if "/" in k else "" for k in study_keys]
            orders = [_study_order(k[k.rfind("/") + 1 :]) for k in study_keys]
        for key, patient, order, view, start, end, label in zip(
            study_keys, patients, orders, study_views, starts, ends, labels, strict=True
        ):
            yield Study(
                source="chexpert",
                study_id=key,
                patient_id=patient,
                images=tuple(images[start:end]),
                positives=label.positives,
                negatives=label.negatives,
                view=view,
                order=order,
                split=split,
                normal=label.normal,
                label_space=(*self.label_space, NO_FINDING),  # labels whole studies
                assumed_negatives=label.assumed,
            )


def _study_order(folder: str) -> int | None:
    """``study3`` -> 2."""
    number = folder.removeprefix("study")
    return int(number) - 1 if number.isdigit() else None


def _study_folder(path: str) -> str:
    """``.../patient00001/study1/view1_frontal.jpg`` -> ``.../patient00001/study1`` (a study's rows)."""
    return path[: path.rfind("/")]
