"""NIH ChestX-ray14: one ``Study`` per image from the official metadata tables.

Layout under ``root`` (official names; ``.gz``/``.zip`` variants accepted)::

    Data_Entry_2017_v2020.csv   (or Data_Entry_2017.csv)  one row per image   required
    BBox_List_2017.csv          984 boxes for 880 images                      optional
    train_val_list.txt          official split, one image name a line         optional
    test_list.txt                                                             optional
    images/<Image Index>        the PNGs (paths in studies are relative to root)

Conventions:

* ``positives`` are the ``Finding Labels`` split on ``|`` and mapped through ``cxmind.vocab``
  ("Effusion" -> "Pleural Effusion", "Pleural_Thickening" -> "Pleural Thickening");
  ``negatives`` are the rest of the 14 labels (the labels were text-mined, absence = negative).
  "No Finding" never appears in positives: a normal image has empty positives and all 14 labels
  as negatives.
* The distributed PNGs are resized to 1024x1024 and ``BBox_List_2017.csv`` is in that frame, so
  ``image_size`` is ``(1024, 1024)`` (the ``OriginalImage[Width,Height]`` columns describe the
  DICOMs, not the PNGs); a box ``[x, y, w, h]`` becomes ``Box(finding, x, y, x + w, y + h)``.
* ``view`` is ``View Position`` (PA/AP), ``order`` is ``Follow-up #``, ``patient_id`` is
  ``Patient ID``, ``study_id`` is the image name without ``.png``.
* ``split`` is ``"train"`` for images in ``train_val_list.txt``, ``"test"`` for ``test_list.txt``,
  ``None`` when the lists are absent (the builder then assigns patient-level splits).

No options.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd

from cxmind.data.schema import Box, Study
from cxmind.data.sources._common import (
    BaseSource,
    canon,
    gc_paused,
    ints_or_none,
    is_missing,
    per_row,
    per_unique,
    view_name,
)
from cxmind.vocab import NIH_14, NO_FINDING, canonical

__all__ = ["NIH"]

ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")
BBOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x")  # the header's "[x,y,w,h]" splits in four
IMAGE_SIZE = (1024, 1024)

Labels = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # positives, negatives, unmapped


class NIH(BaseSource):
    """ChestX-ray14 (see the module docstring for the layout and conventions)."""

    name = "nih"
    layout = "the folder holding the official Data_Entry csv (Data_Entry_2017_v2020.csv) and images/"
    label_space: tuple[str, ...] = NIH_14

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.entries = self.locate("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
        self.header(self.entries, ENTRY_COLUMNS)
        self.bbox_list = self.find("BBox_List_2017.csv")
        if self.bbox_list is not None:
            self.header(self.bbox_list, BBOX_COLUMNS)
        self.train_list = self.find("train_val_list.txt")
        self.test_list = self.find("test_list.txt")

    def _labels(self, text: object) -> Labels:
        if is_missing(text):
            return (), (), ()
        names = [canon(part) for part in str(text).split("|") if part.strip()]
        positives = tuple(dict.fromkeys(n for n, _ in names if n != NO_FINDING))
        unmapped = tuple(dict.fromkeys(n for n, known in names if not known))
        negatives = tuple(n for n in self.label_space if n not in positives)
        return positives, negatives, unmapped

    def boxes(self) -> dict[str, tuple[Box, ...]]:
        """Image name -> its boxes from ``BBox_List_2017.csv`` (empty without the file)."""
        if self.bbox_list is None:
            return {}
        table = pd.read_csv(
            self.bbox_list, usecols=range(6), header=0, names=["image", "finding", "x", "y", "w", "h"]
        )
        found: dict[str, list[Box]] = {}
        for image, finding, x, y, w, h in zip(*(table[c].tolist() for c in table.columns), strict=True):
            found.setdefault(image, []).append(Box(canonical(finding), x, y, x + w, y + h))
        return {image: tuple(boxes) for image, boxes in found.items()}

    def _splits(self) -> dict[str, str]:
        split: dict[str, str] = {}
        for path, name in ((self.train_list, "train"), (self.test_list, "test")):
            if path is not None:
                split.update(dict.fromkeys(path.read_text(encoding="utf-8").split(), name))
        return split

    def studies(self) -> Iterator[Study]:
        self.reset()
        table = self.read(self.entries, ENTRY_COLUMNS, text=("Patient ID",), study_key="Image Index")
        with gc_paused():
            codes, distinct = per_unique(table["Finding Labels"], self._labels)
            for (_, _, unmapped), count in zip(distinct, np.bincount(codes).tolist(), strict=False):
                for term in unmapped:
                    self.unmapped_labels[term] += count
            labels = [distinct[c] for c in codes.tolist()]
            images = table["Image Index"].tolist()
            orders = ints_or_none(table["Follow-up #"])
            views = per_row(table["View Position"], view_name)
            boxes = self.boxes()
            splits = self._splits()
            patients = table["Patient ID"].tolist()
        for image, (positives, negatives, _), patient, view, order, box, split in zip(
            images,
            labels,
            patients,
            views,
            orders,
            [boxes.get(i, ()) for i in images] if boxes else repeat(()),
            [splits.get(i) for i in images] if splits else repeat(None),
            strict=False,
        ):
            yield Study(
                source="nih",
                study_id=image.removesuffix(".png"),
                patient_id=patient,
                images=(f"images/{image}",),
                positives=positives,
                negatives=negatives,
                view=view,
                image_size=IMAGE_SIZE,
                boxes=box,
                order=order,
                split=split,
                normal=not positives and bool(negatives),  # "No Finding" is NIH's explicit label
                label_space=(*self.label_space, NO_FINDING),  # labels whole studies
            )
