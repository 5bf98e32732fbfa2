"""RSNA Pneumonia Detection Challenge (Kaggle 2018): one ``Study`` per image.

Layout under ``root``::

    stage_2_train_labels.csv          patientId,x,y,width,height,Target; one row per box
                                      (one row without a box for Target 0); .gz/.zip accepted
                                      (torchxrayvision ships it as a zip)
    stage_2_train_images_dicom_headers.csv(.gz)
                                      optional: the DICOM headers as torchxrayvision ships them
                                      (PatientID, ViewPosition, ...), for ``view``
    stage_2_train_images/<patientId>.dcm

Conventions: Target 1 -> positives ``("Pneumonia",)`` with one ``Box("Pneumonia", x, y, x + width,
y + height)`` per row; Target 0 -> negatives ``("Pneumonia",)``; ``label_space`` is
``("Pneumonia",)``. Images are 1024x1024 (``image_size``). The competition's ``patientId`` names
one image (the images are a re-annotated subset of NIH ChestX-ray14 with the NIH ids removed), so
``patient_id`` = ``study_id`` = ``patientId``: patient-level splits cannot group a person's images,
and combining this source with ``nih`` can put the same image in two splits. ``view`` is
``ViewPosition`` (PA/AP) from the optional header table, else None.

Option ``nih_mapping`` (a path): the published RSNA-to-NIH mapping file (Kaggle's
``pneumonia-challenge-dataset-mappings_2018.json``, or a csv with the same ``subset_img_id`` and
``img_id`` columns); each study then carries its NIH image as an alias, and a build with both
sources keeps the two copies in one split even without the images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from cxmind.data.schema import Box, Study
from cxmind.data.sources._common import BaseSource, gc_paused, grouped, per_row, view_name
from cxmind.errors import MissingFileError, UserError

__all__ = ["RSNA"]

COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
HEADER_COLUMNS = ("PatientID", "ViewPosition")
IMAGE_SIZE = (1024, 1024)
PNEUMONIA = ("Pneumonia",)


class RSNA(BaseSource):
    """RSNA Pneumonia (see the module docstring for the layout and conventions)."""

    name = "rsna"
    layout = "the folder holding stage_2_train_labels.csv and stage_2_train_images/"
    label_space: tuple[str, ...] = PNEUMONIA

    def __init__(self, root: str | Path, *, nih_mapping: str | Path | None = None) -> None:
        super().__init__(root)
        self.nih_mapping = Path(nih_mapping).expanduser() if nih_mapping else None
        if self.nih_mapping is not None and not self.nih_mapping.is_file():
            raise MissingFileError(
                f"{self.name}: nih_mapping {self.nih_mapping} not found; give the published RSNA-to-NIH "
                "mapping (pneumonia-challenge-dataset-mappings_2018.json or its csv form)"
            )
        self.labels_path = self.locate("stage_2_train_labels.csv")
        self.header(self.labels_path, COLUMNS)
        self.headers_path = self.find("stage_2_train_images_dicom_headers.csv")
        if self.headers_path is not None:
            self.header(self.headers_path, HEADER_COLUMNS)

    def _views(self) -> dict[str, str | None]:
        if self.headers_path is None:
            return {}
        headers = self.read(self.headers_path, HEADER_COLUMNS, text=("PatientID",))
        return dict(
            zip(headers["PatientID"].tolist(), per_row(headers["ViewPosition"], view_name), strict=True)
        )

    def _nih_ids(self) -> dict[str, str]:
        """RSNA patientId -> the NIH image id it re-releases (``subset_img_id`` -> ``img_id``)."""
        if self.nih_mapping is None:
            return {}
        path = self.nih_mapping
        try:
            if path.suffix.lower() == ".json":
                rows = json.loads(path.read_text(encoding="utf-8"))
            else:
                rows = pd.read_csv(path, dtype=str).to_dict("records")
            pairs = {str(r["subset_img_id"]): str(r["img_id"]) for r in rows}
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise UserError(
                f"{self.name}: cannot read {path} as the RSNA-to-NIH mapping ({exc}); expected rows with "
                "'subset_img_id' (the RSNA patientId) and 'img_id' (the NIH image name)"
            ) from exc
        return {rsna: nih.removesuffix(".png") for rsna, nih in pairs.items()}

    def studies(self) -> Iterator[Study]:
        self.reset()
        nih_ids = self._nih_ids()
        table = self.read(self.labels_path, COLUMNS, text=("patientId",), study_key="patientId")
        with gc_paused():
            target = table["Target"].to_numpy(dtype=float, na_value=np.nan)
            bad = ~np.isin(target, (0.0, 1.0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                value = float(target[row])
                raise UserError(
                    f"{self.name}: {self.labels_path}: column 'Target' holds {value!r} (row {row}); "
                    "expected 0 or 1"
                )
            order, starts, _ = grouped(table["patientId"])
            ids = table["patientId"].to_numpy(dtype=object)
            coords = table[["x", "y", "width", "height"]].to_numpy(dtype=float, na_value=np.nan)
            boxed = (target == 1) & np.isfinite(coords).all(axis=1)
            boxes: dict[str, list[Box]] = {}
            for i in np.flatnonzero(boxed).tolist():
                x, y, w, h = coords[i].tolist()
                boxes.setdefault(ids[i], []).append(Box("Pneumonia", x, y, x + w, y + h))
            positive = np.maximum.reduceat(target[order], starts) == 1 if len(order) else np.zeros(0, bool)
            study_ids = ids[order[starts]].tolist()
            views = self._views()
        for image, is_positive in zip(study_ids, positive.tolist(), strict=True):
            yield Study(
                source="rsna",
                study_id=image,
                patient_id=image,
                images=(f"stage_2_train_images/{image}.dcm",),
                positives=PNEUMONIA if is_positive else (),
                negatives=() if is_positive else PNEUMONIA,
                view=views.get(image),
                image_size=IMAGE_SIZE,
                boxes=tuple(boxes.get(image, ())),
                label_space=self.label_space,  # never normal: Target 0 only says "no pneumonia"
                aliases=(f"nih/{nih_ids[image]}",) if image in nih_ids else (),
            )
