"""VinDr-CXR: one ``Study`` per image from the per-radiologist annotation table.

Layout under ``root`` (official names; ``.gz``/``.zip`` variants accepted)::

    train.csv                          Kaggle VinBigData: image_id, class_name, class_id, rad_id,
                                       x_min, y_min, x_max, y_max (one row per finding per reader)
    (or annotations/annotations_train.csv, the PhysioNet release, same columns minus class_id)
    train/<image_id>.dicom             images (``.dcm`` or ``.png`` are used when that is what exists)

Each training image was read independently by three radiologists; a reader who saw nothing
writes one "No finding" row without a box. Class names map through ``cxmind.vocab``
("Aortic enlargement" -> Aortic Enlargement, "ILD" -> Interstitial Lung Disease, "Pleural
effusion" -> Pleural Effusion, "Pulmonary fibrosis" -> Fibrosis, "Nodule/Mass" and "Other lesion"
stay as such); names outside the vocabulary are kept as their normalised text and counted in
``unmapped_labels``.

Options:

``merge`` (``"majority"`` default | ``"union"`` | ``"any"``, an alias of union)
    *majority*: a finding is positive when at least 2 of the image's readers marked it (1 when
    the image has a single reader, e.g. consensus tables). Boxes: the boxes of one finding are
    linked when they come from different readers and overlap with IoU >= 0.4; each connected
    group (single linkage) is one cluster, kept when at least 2 distinct readers support it, and
    becomes one box with the mean coordinates of its members. A positive finding may end with no
    box when its readers' boxes do not overlap.
    *union*: a finding is positive when any reader marked it; every reader's box is kept as is.
    In both modes ``negatives`` are the ``label_space`` findings no reader marked (a finding
    marked by one reader under majority is neither positive nor negative). An image no reader
    marked is normal (empty positives, all negatives); an image with single-reader findings only
    (42 under majority) is not known to be normal and gets no labels, as for CheXpert's ignored
    uncertain labels.
``probe_size`` (bool, default True)
    read ``Rows``/``Columns`` from each existing image's DICOM header for ``image_size`` (boxes
    are in that pixel frame); without the images, or with False, ``image_size`` is None.

``label_space`` is the vocabulary findings among the table's class names. VinDr has no patient
ids: ``patient_id`` = ``study_id`` = ``image_id``. ``view`` and ``split`` are None.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cxmind.data.schema import Box, Study
from cxmind.data.sources._common import BaseSource, canon, check_choice, gc_paused, image_size, per_unique
from cxmind.vocab import FINDINGS, NO_FINDING

__all__ = ["VinDr", "cluster_boxes"]

COLUMNS = ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max")
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png")
IOU = 0.4
MERGES = ("majority", "union", "any")


def cluster_boxes(boxes: pd.DataFrame, iou: float = IOU) -> np.ndarray:
    """Cluster label per box: single linkage over IoU >= ``iou`` between boxes of different readers.

    ``boxes`` has integer columns ``group`` (image x finding) and ``reader``, and the coordinates
    ``x0 y0 x1 y1``; only boxes of the same group are compared.
    """
    n = len(boxes)
    nodes = pd.DataFrame({"group": boxes["group"].to_numpy(), "node": np.arange(n)})
    pairs = nodes.merge(nodes, on="group")
    a, b = pairs["node_x"].to_numpy(), pairs["node_y"].to_numpy()
    readers = boxes["reader"].to_numpy()
    keep = (a < b) & (readers[a] != readers[b])
    a, b = a[keep], b[keep]
    x0, y0, x1, y1 = (boxes[c].to_numpy(dtype=float) for c in ("x0", "y0", "x1", "y1"))
    width = np.clip(np.minimum(x1[a], x1[b]) - np.maximum(x0[a], x0[b]), 0, None)
    height = np.clip(np.minimum(y1[a], y1[b]) - np.maximum(y0[a], y0[b]), 0, None)
    inter = width * height
    area = (x1 - x0) * (y1 - y0)
    union = area[a] + area[b] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        linked = np.where(union > 0, inter / union, 0.0) >= iou
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a[linked].tolist(), b[linked].tolist(), strict=True):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


class VinDr(BaseSource):
    """VinDr-CXR (see the module docstring for the layout, options and conventions)."""

    name = "vindr"
    layout = "the folder holding the VinDr-CXR train.csv (Kaggle) or annotations/ (PhysioNet) and train/"

    def __init__(self, root: str | Path, *, merge: str = "majority", probe_size: bool = True) -> None:
        super().__init__(root)
        self.merge = check_choice(self.name, "merge", merge, MERGES)
        self.probe_size = bool(probe_size)
        self.table_path = self.locate("train.csv", "annotations/annotations_train.csv")
        self.header(self.table_path, COLUMNS)
        self._label_space: tuple[str, ...] | None = None

    @property
    def label_space(self) -> tuple[str, ...]:
        """Vocabulary findings among the table's class names, in vocabulary order."""
        if self._label_space is None:
            names = self.read(self.table_path, ("class_name",))["class_name"]
            self._label_space = _space(per_unique(names, _class)[1])
        return self._label_space

    def _image_files(self) -> dict[str, str]:
        """image_id -> file name under train/, for the images that exist."""
        folder = self.root / "train"
        if not folder.is_dir():
            return {}
        found: dict[str, str] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in IMAGE_SUFFIXES and (
                    stem not in found or IMAGE_SUFFIXES.index(suffix.lower()) < _rank(found[stem])
                ):
                    found[stem] = entry.name
        return found

    def studies(self) -> Iterator[Study]:
        self.reset()
        table = self.read(
            self.table_path, COLUMNS, text=("image_id", "rad_id", "class_name"), study_key="image_id"
        )
        with gc_paused():
            class_codes, classes = per_unique(table["class_name"], _class)
            # a limited read sees part of the table: the label space is the whole table's
            space = self.label_space if self.truncated else _space(classes)
            self._label_space = space
            image_codes, images = pd.factorize(table["image_id"])
            reader_codes = pd.factorize(table["rad_id"])[0]
            finding = np.array([name not in (NO_FINDING, "") for name, _ in classes], dtype=bool)[class_codes]
            marks = (
                pd.DataFrame({"image": image_codes, "cls": class_codes, "reader": reader_codes})[finding]
                .drop_duplicates()
                .groupby(["image", "cls"])
                .size()
            )
            pairs = pd.DataFrame({"image": image_codes, "reader": reader_codes}).drop_duplicates()
            readers = np.bincount(pairs["image"].to_numpy(), minlength=len(images))
            majority = self.merge == "majority"
            need = np.minimum(2, readers) if majority else np.ones(len(images), dtype=np.int64)
            votes = marks.to_numpy() >= need[marks.index.get_level_values(0).to_numpy()]
            marked: dict[int, list[int]] = {}
            positive: dict[int, list[int]] = {}
            for (image, cls), is_positive in zip(marks.index.tolist(), votes.tolist(), strict=True):
                marked.setdefault(image, []).append(cls)
                if is_positive:
                    positive.setdefault(image, []).append(cls)
            boxes = self._boxes(
                table, image_codes, class_codes, reader_codes, finding, classes, need if majority else None
            )
            files = self._image_files()
            order_of = {name: i for i, name in enumerate(space)}
            rank = [order_of.get(name, len(space)) for name, _ in classes]
            negatives_memo: dict[frozenset[int], tuple[str, ...]] = {}
            unmapped = [not known for _, known in classes]
        label_space = tuple(space)
        for image, image_id in enumerate(images.tolist()):
            pos = sorted(positive.get(image, ()), key=rank.__getitem__)
            seen = frozenset(marked.get(image, ()))
            if seen not in negatives_memo:
                names = {classes[c][0] for c in seen}
                negatives_memo[seen] = tuple(n for n in space if n not in names)
            for c in pos:
                if unmapped[c]:
                    self.unmapped_labels[classes[c][0]] += 1
            file = files.get(image_id)
            path = f"train/{file or image_id + IMAGE_SUFFIXES[0]}"
            yield Study(
                source="vindr",
                study_id=image_id,
                patient_id=image_id,
                images=(path,),
                positives=tuple(classes[c][0] for c in pos),
                negatives=negatives_memo[seen] if pos or not seen else (),  # see "not known to be normal"
                image_size=image_size(self.root / path) if file and self.probe_size else None,
                boxes=boxes.get(image, ()),
                normal=not seen,  # every reader wrote "No finding"
                label_space=(*label_space, NO_FINDING),  # labels whole studies
            )

    def _boxes(
        self,
        table: pd.DataFrame,
        image_codes: np.ndarray,
        class_codes: np.ndarray,
        reader_codes: np.ndarray,
        finding: np.ndarray,
        classes: list[tuple[str, bool]],
        need: np.ndarray | None,
    ) -> dict[int, tuple[Box, ...]]:
        """Image code -> boxes, sorted by finding then x0: every box, or (``need`` = readers needed
        per image code) the majority clusters."""
        coords = table[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=float, na_value=np.nan)
        has_box = finding & np.isfinite(coords).all(axis=1)
        frame = pd.DataFrame(
            {
                "image": image_codes[has_box],
                "cls": class_codes[has_box],
                "reader": reader_codes[has_box],
                "x0": coords[has_box, 0],
                "y0": coords[has_box, 1],
                "x1": coords[has_box, 2],
                "y1": coords[has_box, 3],
            }
        )
        if need is not None and len(frame):
            frame["group"] = pd.factorize(frame["image"].astype(np.int64) * len(classes) + frame["cls"])[0]
            frame["cluster"] = cluster_boxes(frame)
            merged = frame.groupby("cluster").agg(
                image=("image", "first"),
                cls=("cls", "first"),
                support=("reader", "nunique"),
                x0=("x0", "mean"),
                y0=("y0", "mean"),
                x1=("x1", "mean"),
                y1=("y1", "mean"),
            )
            frame = merged[merged["support"].to_numpy() >= need[merged["image"].to_numpy()]]
        frame = frame.sort_values(["image", "cls", "x0", "y0"], kind="stable")
        out: dict[int, list[Box]] = {}
        for image, cls, x0, y0, x1, y1 in zip(
            *(frame[c].tolist() for c in ("image", "cls", "x0", "y0", "x1", "y1")), strict=True
        ):
            out.setdefault(image, []).append(Box(classes[cls][0], x0, y0, x1, y1))
        return {image: tuple(boxes) for image, boxes in out.items()}


def _class(name: object) -> tuple[str, bool]:
    return canon(str(name)) if isinstance(name, str) else ("", False)


def _space(classes: list[tuple[str, bool]]) -> tuple[str, ...]:
    seen = {name for name, known in classes if known and name != NO_FINDING}
    return tuple(f.name for f in FINDINGS if f.name in seen)


def _rank(file: str) -> int:
    return IMAGE_SUFFIXES.index(os.path.splitext(file)[1].lower())
