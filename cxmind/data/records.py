"""Reading a built record set back as a Hugging Face dataset, images decoded lazily."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxmind.data.images import resolve_under
from cxmind.errors import MissingFileError, UserError, hub_error

__all__ = ["image_roots", "load_records", "push_records", "read_meta", "rejected_ids"]

META_FILE = "cxmind_data.json"
VALIDATE_REJECTS_FILE = "validate.rejects.jsonl"  # written by cxmind.data.validate


def read_meta(out: str | Path) -> dict[str, Any]:
    """The build metadata of a record set (image roots, config, counts)."""
    path = Path(out) / META_FILE
    if not path.is_file():
        what = "does not exist" if not Path(out).exists() else f"has no {META_FILE}"
        raise MissingFileError(
            f"{out} {what}: not a cxmind record set (build one with `cxmind data build --out {out}`)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); rebuild the record set") from err
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a record set's metadata (a JSON object); rebuild the record set")
    return meta


def image_roots(out: str | Path) -> dict[str, Path]:
    """Absolute image root per source (roots stored relative to the record set are resolved against it)."""
    out = Path(out).absolute()
    return {
        name: (out / root if not Path(root).is_absolute() else Path(root))
        for name, root in read_meta(out)["image_roots"].items()
    }


def rejected_ids(out: str | Path) -> set[str]:
    """Ids of records that validation rejected (``validate.rejects.jsonl``)."""
    path = Path(out) / VALIDATE_REJECTS_FILE
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
        raise UserError(f"{out} has no {split!r} split; it has {sorted(files)}")
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


def push_records(
    out: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    include_images: bool = False,
    revision: str | None = None,
) -> str:
    """Push a record set (parquet shards + dataset card) to a Hub dataset repo in one commit.

    The token comes from the environment (``HF_TOKEN`` or ``huggingface-cli login``), never from an
    argument, so it cannot end up in scripts or logs. Local folder paths are removed from the pushed
    metadata, and images stay local unless ``include_images`` (they belong to their datasets'
    licenses: check that you may redistribute them). Returns the commit URL.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    out = Path(out)
    meta = read_meta(out)
    shards = sorted((out / "data").glob("*.parquet"))
    if not shards:
        raise MissingFileError(f"{out}/data holds no parquet shard; build the record set first")
    if not (out / "README.md").is_file():
        raise MissingFileError(f"{out}/README.md (the dataset card) not found; rebuild the record set")
    public_meta = dict(meta)
    public_meta["image_roots"] = {
        name: root if not Path(root).is_absolute() else "<local>"
        for name, root in meta["image_roots"].items()
    }
    public_meta["sources"] = [{**s, "root": "<local>"} for s in meta.get("sources", [])]
    operations = [CommitOperationAdd(f"data/{p.name}", str(p)) for p in shards]
    operations.append(CommitOperationAdd("README.md", str(out / "README.md")))
    operations.append(CommitOperationAdd(META_FILE, (json.dumps(public_meta, indent=2) + "\n").encode()))
    if include_images:
        operations += [
            CommitOperationAdd(p.relative_to(out).as_posix(), str(p))
            for p in sorted((out / "images").rglob("*"))
            if p.is_file()
        ]
    try:
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=f"cxmind records ({meta['records']} records)",
            repo_type="dataset",
            revision=revision,
        )
    except Exception as err:  # the Hub's refusals name their fix; anything else is a bug
        problem = hub_error(err, f"push to {repo_id}")
        if problem is None:
            raise
        raise UserError(f"cannot push {out} to {repo_id}: {problem}") from err
    return str(getattr(commit, "commit_url", commit))
