"""Reading a built record set back as a Hugging Face dataset, images decoded lazily."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxmind.data.images import resolve_under

__all__ = ["image_roots", "load_records", "read_meta", "rejected_ids"]

META_FILE = "cxmind_data.json"


def read_meta(out: str | Path) -> dict[str, Any]:
    """The build metadata of a record set (image roots, config, counts)."""
    path = Path(out) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {out} is not a cxmind record set (build one with `cxmind data build`)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def image_roots(out: str | Path) -> dict[str, Path]:
    """Absolute image root per source (roots stored relative to the record set are resolved against it)."""
    out = Path(out).absolute()
    return {
        name: (out / root if not Path(root).is_absolute() else Path(root))
        for name, root in read_meta(out)["image_roots"].items()
    }


def rejected_ids(out: str | Path) -> set[str]:
    """Ids of records that validation rejected (``validate.rejects.jsonl``)."""
    path = Path(out) / "validate.rejects.jsonl"
    if not path.is_file():
        return set()
    with open(path, encoding="utf-8") as handle:
        return {json.loads(line)["id"] for line in handle if line.strip()}


def load_records(
    out: str | Path,
    split: str | None = None,
    *,
    decode_images: bool = True,
    exclude_rejects: bool = True,
) -> Any:
    """Load a record set as a ``datasets.Dataset`` (one split) or ``DatasetDict`` (all splits).

    With ``decode_images`` the ``images`` column holds ``datasets.Image`` features pointing at the
    files (decoded only when a row is read); every path is resolved under its source's declared
    root and a path escaping it raises. ``exclude_rejects`` drops the ids validation rejected.
    """
    from datasets import Image, Sequence, load_dataset

    out = Path(out)
    read_meta(out)  # clear error when this is not a record set
    files = {p.name.split("-")[0] for p in (out / "data").glob("*.parquet")}
    if split is not None and split not in files:
        raise ValueError(f"{out} has no {split!r} split; it has {sorted(files)}")
    wanted = [split] if split is not None else sorted(files)
    data_files = {s: str(out / "data" / f"{s}-*.parquet") for s in wanted}
    dataset = load_dataset("parquet", data_files=data_files)
    if exclude_rejects:
        rejected = rejected_ids(out)
        if rejected:
            dataset = dataset.filter(lambda row: row["id"] not in rejected)
    if decode_images:
        roots = image_roots(out)

        def absolute(row: dict[str, Any]) -> dict[str, Any]:
            root = roots[row["source"]]
            return {"images": [str(resolve_under(root, rel)) for rel in row["images"]]}

        dataset = dataset.map(absolute)
        for name in dataset:
            features = dataset[name].features.copy()
            features["images"] = Sequence(Image(mode="RGB"))  # grey PNGs decode as RGB
            dataset[name] = dataset[name].cast(features)
    return dataset[split] if split is not None else dataset
