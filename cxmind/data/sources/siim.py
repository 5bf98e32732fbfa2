"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019, stage 1 files): one ``Study`` per image.

Layout under ``root``::

    train-rle.csv                      ImageId, " EncodedPixels" (the header has a leading space);
                                       "-1" = no pneumothorax; several rows per image = several
                                       annotated regions; .gz/.zip accepted
    dicom-images-train/<study UID>/<series UID>/<ImageId>.dcm

The csv does not hold the study/series folders, so when ``dicom-images-train/`` exists it is
walked once to index the files; csv images missing from it are skipped (``skipped``/``rejects``).
Without the folder, image paths are ``dicom-images-train/<ImageId>.dcm``.

RLE: the stage-1 competition encoding on the 1024x1024 image: pairs of (start, length) where each
start is *relative* to the end of the previous run, over pixels numbered column by column
(pixel ``p`` is at x = p // 1024, y = p % 1024), as in the competition kernel and
torchxrayvision's ``rle2mask(...).T``. (The stage-2 ``stage_2_train.csv`` uses absolute starts and
is not read here.) ``rle_mask`` decodes one string; ``rle_extent`` gives its bounding box
without building the mask.

Conventions: any row other than "-1" -> positives ``("Pneumothorax",)`` with one box per row, the
extent of that row's mask in pixel-edge coordinates (``x1 = last column + 1``); only "-1" rows ->
negatives ``("Pneumothorax",)``. ``image_size`` is ``(1024, 1024)``. SIIM has no patient ids in
the csv: ``patient_id`` = ``study_id`` = ``ImageId``. ``view``, ``order`` and ``split`` are None.
No options.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cxmind.data.schema import Box, Study
from cxmind.data.sources._common import BaseSource, gc_paused, grouped
from cxmind.errors import UserError

__all__ = ["SIIM", "rle_extent", "rle_extents", "rle_mask", "rle_runs"]

COLUMNS = ("ImageId", "EncodedPixels")
SIZE = 1024
IMAGE_SIZE = (SIZE, SIZE)
PNEUMOTHORAX = ("Pneumothorax",)


def _numbers(rle: str) -> np.ndarray:
    """The integers of an RLE string (numpy's unparsable-token warning must be an error here)."""
    try:
        numbers = np.fromstring(rle, dtype=np.int64, sep=" ")
    except (DeprecationWarning, ValueError) as exc:
        raise ValueError(f"not a run-length encoding: {rle[:60]!r}") from exc
    if len(numbers) % 2 or (numbers < 0).any():
        raise ValueError(f"not a run-length encoding (odd count or negative numbers): {rle[:60]!r}")
    return numbers


def rle_runs(rle: str, width: int = SIZE, height: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Absolute ``(starts, ends)`` (end exclusive) of the runs of a relative-start RLE string."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        bounds = np.cumsum(_numbers(rle))
    if len(bounds) and bounds[-1] > width * height:
        raise ValueError(f"run-length encoding runs past the {width}x{height} image: {rle[:60]!r}")
    return bounds[0::2], bounds[1::2]


def rle_mask(rle: str, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """The ``(height, width)`` boolean mask of an RLE string."""
    flat = np.zeros(width * height, dtype=bool)
    for start, end in zip(*(a.tolist() for a in rle_runs(rle, width, height)), strict=True):
        flat[start:end] = True
    return flat.reshape(width, height).T


def rle_extents(
    rles: list[str], width: int = SIZE, height: int = SIZE
) -> list[tuple[int, int, int, int] | None]:
    """``(x0, y0, x1, y1)`` of each RLE mask (x1/y1 exclusive; None when empty), in one numpy pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        arrays = [_numbers(r) for r in rles]
    out: list[tuple[int, int, int, int] | None] = [None] * len(rles)
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    if not sizes.sum():
        return out
    flat = np.concatenate(arrays)
    bounds = np.cumsum(flat)
    first = np.cumsum(sizes) - sizes  # offset of each row in ``flat``
    before = np.where(first > 0, bounds[np.maximum(first - 1, 0)], 0)
    bounds = bounds - np.repeat(before, sizes)  # restart the running sum on every row
    rows = np.repeat(np.arange(len(rles)), sizes // 2)
    starts, ends = bounds[0::2], bounds[1::2]
    too_far = ends > width * height
    if too_far.any():
        bad = rles[int(rows[np.flatnonzero(too_far)[0]])]
        raise ValueError(f"run-length encoding runs past the {width}x{height} image: {bad[:60]!r}")
    used = ends > starts
    rows, starts, last = rows[used], starts[used], ends[used] - 1
    first_col, last_col = starts // height, last // height
    single = first_col == last_col  # a run that wraps into the next column spans every row
    frame = pd.DataFrame(
        {
            "row": rows,
            "x0": first_col,
            "x1": last_col + 1,
            "y0": np.where(single, starts % height, 0),
            "y1": np.where(single, last % height, height - 1) + 1,
        }
    )
    extent = frame.groupby("row").agg(x0=("x0", "min"), y0=("y0", "min"), x1=("x1", "max"), y1=("y1", "max"))
    for row, x0, y0, x1, y1 in zip(
        extent.index.tolist(), *(extent[c].tolist() for c in extent.columns), strict=True
    ):
        out[row] = (x0, y0, x1, y1)
    return out


def rle_extent(rle: str, width: int = SIZE, height: int = SIZE) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of an RLE mask (x1/y1 exclusive), None when it is empty."""
    return rle_extents([rle], width, height)[0]


class SIIM(BaseSource):
    """SIIM-ACR Pneumothorax (see the module docstring for the layout and conventions)."""

    name = "siim"
    layout = "the folder holding train-rle.csv and dicom-images-train/"
    label_space: tuple[str, ...] = PNEUMOTHORAX

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.table_path = self.locate("train-rle.csv")
        self.header(self.table_path, COLUMNS)

    def _image_index(self) -> dict[str, str] | None:
        """ImageId -> path relative to root, by walking dicom-images-train/ once (None without it)."""
        folder = self.root / "dicom-images-train"
        if not folder.is_dir():
            return None
        index: dict[str, str] = {}
        for directory, _, files in os.walk(folder):
            relative = Path(directory).relative_to(self.root).as_posix()
            for file in files:
                if file.lower().endswith(".dcm"):
                    index.setdefault(file[:-4], f"{relative}/{file}")
        return index

    def studies(self) -> Iterator[Study]:
        self.reset()
        table = self.read(self.table_path, COLUMNS, text=COLUMNS, study_key="ImageId")
        index = self._image_index()
        with gc_paused():
            ids = table["ImageId"].to_numpy(dtype=object)
            rles = [str(r).strip() if isinstance(r, str) else "-1" for r in table["EncodedPixels"].tolist()]
            positive = [i for i, rle in enumerate(rles) if rle != "-1"]
            try:
                extents = rle_extents([rles[i] for i in positive])
            except ValueError as exc:
                raise UserError(f"{self.name}: {self.table_path}: {exc}") from exc
            boxes: dict[str, list[Box]] = {}
            for i, extent in zip(positive, extents, strict=True):
                found = boxes.setdefault(ids[i], [])
                if extent is not None:
                    found.append(Box("Pneumothorax", *map(float, extent)))
            order, starts, _ = grouped(pd.Series(ids, dtype=object))
            study_ids = ids[order[starts]].tolist()
        for image in study_ids:
            if index is None:
                path = f"dicom-images-train/{image}.dcm"
            elif image in index:
                path = index[image]
            else:
                self.skip(image, "image not found under dicom-images-train")
                continue
            positive = image in boxes
            yield Study(
                source="siim",
                study_id=image,
                patient_id=image,
                images=(path,),
                positives=PNEUMOTHORAX if positive else (),
                negatives=() if positive else PNEUMOTHORAX,
                image_size=IMAGE_SIZE,
                boxes=tuple(boxes.get(image, ())),
                label_space=self.label_space,  # never normal: only pneumothorax is labelled
            )
