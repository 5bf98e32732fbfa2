"""Build training-ready records from public datasets: sources -> studies -> tasks -> parquet shards.

Output folder layout::

    out/
      data/{split}-{source}-{chunk}-{n}.parquet
                                     records (see cxmind.data.schema); shards per split and work unit
      images/{source}/...png         processed images (only with materialize_images)
      rejects.jsonl                  every study/record/image that was not built, with the reason
      cxmind_data.json               image roots per source, build config, counts
      README.md                      dataset card

The build writes into a temporary sibling folder and renames it into place when complete, so an
interrupted build never leaves a half-written record set; materialised images already present in
a previous output are reused, which is where a re-run saves its time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from cxmind.data.dedupe import align_duplicate_splits
from cxmind.data.images import ImageBudget, ImageError, load_image, save_normalised
from cxmind.data.records import META_FILE
from cxmind.data.schema import RECORD_FIELDS, Record, Study
from cxmind.data.splits import DEFAULT_FRACTIONS, patient_splits
from cxmind.data.tasks import (
    Reject,
    TaskBuilder,
    TaskConfig,
    fit_answer_balance,
    labels_differ,
    study_labels,
)
from cxmind.data.workers import map_in_workers
from cxmind.errors import ExistingOutputError, UserError

__all__ = ["BuildConfig", "BuildSummary", "SourceSpec", "build", "parse_source_spec", "parse_source_specs"]

REJECTS_FILE = "rejects.jsonl"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SourceSpec:
    """A source to read: registry name, folder with its official files, and its options."""

    name: str
    root: Path
    options: dict[str, Any] = field(default_factory=dict)


def parse_source_spec(text: str, options: Iterable[str] = ()) -> SourceSpec:
    """``"nih=/data/nih"`` plus ``["nih.uncertain=positive", ...]`` -> SourceSpec (CLI syntax)."""
    name, sep, root = text.partition("=")
    if not sep or not name or not root:
        raise UserError(f"--source {text!r}: expected NAME=FOLDER, e.g. --source nih=/data/ChestX-ray14")
    opts: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        src, dot, opt = key.partition(".")
        if not sep or not dot:
            raise UserError(
                f"--source-option {item!r}: expected SOURCE.OPTION=VALUE, e.g. chexpert.uncertain=positive"
            )
        if _source_key(src) == _source_key(name):
            opts[opt] = _literal(value)
    return SourceSpec(name.strip(), Path(root).expanduser(), opts)


def parse_source_specs(sources: Iterable[str], options: Iterable[str] = ()) -> list[SourceSpec]:
    """Every ``--source`` with its ``--source-option`` s; an option for no source being built is an error.

    A typo in the source part of an option (``nhi.foo=1`` while building ``nih``) would otherwise be
    silently ignored and the source built with its defaults.
    """
    from cxmind.data.sources import SOURCES

    options = list(options)
    specs = [parse_source_spec(text, options) for text in sources]
    building = {_source_key(spec.name) for spec in specs}
    for item in options:
        src = item.partition("=")[0].partition(".")[0]
        if _source_key(src) not in building:
            raise UserError(
                f"--source-option {item!r}: {src!r} is not a source being built "
                f"({', '.join(spec.name for spec in specs)}); valid sources: {', '.join(sorted(SOURCES))}; "
                "fix: spell the source as in --source, or drop the option"
            )
    return specs


def _source_key(name: str) -> str:
    """A source name as the registry spells it (``get_source`` accepts any case and '-' for '_')."""
    return name.strip().lower().replace("-", "_")


def _literal(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@dataclass
class BuildConfig:
    """What to build. ``limit`` caps studies per source (for trials); ``None`` builds everything."""

    sources: list[SourceSpec]
    out: Path
    task: TaskConfig = field(default_factory=TaskConfig)
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    limit: int | None = None
    materialize_images: bool = False
    shard_rows: int = 100_000
    overwrite: bool = False
    #: pHash every readable image to give copies across sources one split (slow: decodes each image)
    dedupe_images: bool = True
    #: run ``cxmind data audit`` on the result and put it in the dataset card (and audit.json)
    audit: bool = True
    #: worker processes (None: one per CPU, at most 8); the records do not depend on it
    workers: int | None = None


@dataclass
class BuildSummary:
    """Counts of what was built and rejected (``table()`` renders them for the terminal)."""

    out: Path
    studies: Counter = field(default_factory=Counter)  # per source
    records: Counter = field(default_factory=Counter)  # per (source, task, split)
    rejects: Counter = field(default_factory=Counter)  # per reason
    duplicates: dict[str, Any] = field(default_factory=dict)  # see align_duplicate_splits

    @property
    def total_records(self) -> int:
        return sum(self.records.values())

    def table(self) -> str:
        lines = [f"{'source':<12}{'task':<36}{'train':>9}{'validation':>12}{'test':>9}"]
        keys = sorted({(s, t) for s, t, _ in self.records})
        for source, task in keys:
            counts = [self.records[(source, task, split)] for split in ("train", "validation", "test")]
            lines.append(f"{source:<12}{task:<36}{counts[0]:>9}{counts[1]:>12}{counts[2]:>9}")
        lines.append(f"records: {self.total_records}  studies: {sum(self.studies.values())}")
        if self.rejects:
            lines.append(
                "rejects: " + ", ".join(f"{reason}: {n}" for reason, n in self.rejects.most_common())
            )
        return "\n".join(lines)


class _ShardWriter:
    """Buffers records per split and writes parquet shards of ``rows`` rows."""

    def __init__(self, folder: Path, rows: int, prefix: str) -> None:
        self.folder, self.rows, self.prefix = folder, rows, prefix
        self.buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.shards: Counter = Counter()

    def add(self, record: Record) -> None:
        buffer = self.buffers[record.split]
        buffer.append(record.to_row())
        if len(buffer) >= self.rows:
            self._flush(record.split)

    def _flush(self, split: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.buffers.pop(split, [])
        if not rows:
            return
        columns = {name: [row[name] for row in rows] for name in RECORD_FIELDS}
        table = pa.table(columns, schema=_arrow_schema())
        pq.write_table(table, self.folder / f"{split}-{self.prefix}-{self.shards[split]:03d}.parquet")
        self.shards[split] += 1

    def close(self) -> None:
        for split in list(self.buffers):
            self._flush(split)


def _arrow_schema() -> Any:
    import pyarrow as pa

    text = pa.string()
    types = {name: text for name in RECORD_FIELDS}
    types["images"] = pa.list_(text)
    types["options"] = pa.list_(text)
    return pa.schema([(name, types[name]) for name in RECORD_FIELDS])


def _read_studies(spec: SourceSpec, limit: int | None, progress: bool) -> tuple[Any, list[Study]]:
    from tqdm.auto import tqdm

    from cxmind.data.sources import get_source

    source = get_source(spec.name, spec.root, **spec.options)
    source.limit = limit  # large tables: parse only the rows of the first `limit` studies
    studies = source.limited if hasattr(source, "limited") else source.studies
    read = list(tqdm(islice(studies(), limit), desc=f"{spec.name}: studies", disable=not progress))
    while limit is not None and len(read) < limit and getattr(source, "truncated", False):
        source.limit *= 2  # the source skipped some of those studies: read further
        read = list(islice(studies(), limit))
    return source, read


def _in_patient_order(studies: list[Study]) -> Iterator[tuple[Study, Study | None]]:
    """Each study with its patient's previous study (by ``order``, then study id)."""
    by_patient: dict[str, list[Study]] = defaultdict(list)
    for study in studies:
        by_patient[study.patient_id].append(study)
    for patient_studies in by_patient.values():
        patient_studies.sort(
            key=lambda s: (s.order is None, s.order if s.order is not None else 0, s.study_id)
        )
        previous = None
        for study in patient_studies:
            yield study, previous
            previous = study


def build(config: BuildConfig, *, progress: bool = True) -> BuildSummary:
    """Build the record set described by ``config`` into ``config.out``; returns what was built."""
    from tqdm.auto import tqdm

    out = Path(config.out).expanduser().absolute()
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ExistingOutputError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    if not config.sources:
        raise UserError("no source given; e.g. --source nih=/data/ChestX-ray14 (or --source phantom=<dir>)")
    out.parent.mkdir(parents=True, exist_ok=True)
    restore_signals = _exit_on_sigterm()
    staging = _new_folder(out.parent, prefix=f".{out.name}.building-")
    summary = BuildSummary(out=out)
    image_roots: dict[str, str] = {}
    built: Generator[tuple[Counter, list[Reject]], None, None] | None = None
    try:
        with open(staging / REJECTS_FILE, "w", encoding="utf-8") as rejects_file:

            def reject(item: Reject, source: str) -> None:
                summary.rejects[item.reason] += 1
                rejects_file.write(json.dumps({"source": source, **asdict(item)}) + "\n")

            read: dict[str, list[Study]] = {}
            all_splits: dict[str, dict[str, str]] = {}
            for spec in config.sources:
                source, studies = _read_studies(spec, config.limit, progress)
                summary.studies[spec.name] = len(studies)
                for item in getattr(source, "rejects", ()):  # studies a source could not read
                    reject(item if isinstance(item, Reject) else Reject(*item), spec.name)
                read[spec.name] = studies
                all_splits[spec.name] = patient_splits(
                    spec.name,
                    ((s.patient_id, s.split) for s in studies),
                    fractions=config.split_fractions,
                    seed=config.task.seed,
                )
            roots = {spec.name: Path(spec.root).expanduser() for spec in config.sources}
            summary.duplicates = align_duplicate_splits(
                read, roots, all_splits, images=config.dedupe_images, seed=config.task.seed, progress=progress
            )
            chunks = []
            for spec in config.sources:
                studies, splits = read.pop(spec.name), all_splits[spec.name]
                ordered = list(_in_patient_order(studies))
                builder = TaskBuilder(config.task, fit_answer_balance(ordered, config.task))
                matches = _image_text_pairs(studies, splits, config.task.seed)
                materializer = (
                    _Materializer(spec, out, staging, config.task.budget)
                    if config.materialize_images
                    else None
                )
                image_roots[spec.name] = (
                    f"images/{spec.name}" if materializer else str(Path(spec.root).expanduser().absolute())
                )
                for start in range(0, len(ordered), CHUNK_STUDIES):
                    pairs = ordered[start : start + CHUNK_STUDIES]
                    chunks.append(
                        _Chunk(
                            spec.name, start // CHUNK_STUDIES, pairs, splits, matches, builder, materializer
                        )
                    )
            bar = tqdm(total=len(chunks), desc="records", unit=" chunks", disable=not progress)
            (staging / "data").mkdir()
            jobs = [(chunk, staging / "data", config.shard_rows) for chunk in chunks]
            built = map_in_workers(_build_chunk, jobs, config.workers)
            for chunk, (counts, rejected) in zip(chunks, built, strict=True):
                summary.records.update(counts)
                for item in rejected:
                    reject(item, chunk.source)
                bar.update()
            bar.close()
        _write_meta(staging, config, summary, image_roots)
        if config.audit:
            _append_audit(staging, out, progress, config.workers)
        with _signals_held():  # never stopped between removing the old output and renaming the new
            if out.exists():
                _discard(out)
            os.replace(staging, out)
    finally:
        if built is not None:
            built.close()  # interrupted: end the workers before removing what they write into
        shutil.rmtree(staging, ignore_errors=True)
        restore_signals()
    return summary


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new uniquely named folder, readable as the umask allows (``mkdtemp`` makes it ``0o700``,
    which would leave the finished record set unreadable by the rest of a team)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


def _exit_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM (a cluster pre-emption, ``kill``) into ``SystemExit(143)`` so that the build's
    ``finally`` removes its staging folder, as Ctrl-C already does; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM (delivered on exit) while a few file operations must finish together."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


#: Studies per work unit. Fixed, not derived from the number of workers, so that the shards and
#: every record in them are the same however many processes build them.
CHUNK_STUDIES = 20_000


@dataclass
class _Chunk:
    """Consecutive (study, previous study) pairs of one source, with what building them needs.

    Only the chunk's own patients and studies travel to a worker (see :meth:`__getstate__`)."""

    source: str
    index: int
    pairs: list[tuple[Study, Study | None]]
    splits: dict[str, str]  # patient id -> split
    matches: dict[str, Any]  # study id -> image-text pairing (see _image_text_pairs)
    builder: TaskBuilder
    materializer: _Materializer | None

    def __getstate__(self) -> dict[str, Any]:
        ids = {study.study_id for study, _ in self.pairs}
        state = dict(self.__dict__)
        state["splits"] = {s.patient_id: self.splits[s.patient_id] for s, _ in self.pairs}
        state["matches"] = {k: v for k, v in self.matches.items() if k in ids}
        state["builder"] = self.builder.subset(ids)
        return state


def _build_chunk(job: tuple[_Chunk, Path, int]) -> tuple[Counter, list[Reject]]:
    """Builds one chunk's records into its own shards; returns record counts and rejects."""
    chunk, folder, shard_rows = job
    writer = _ShardWriter(folder, shard_rows, prefix=f"{chunk.source}-{chunk.index:04d}")
    counts: Counter = Counter()
    rejected: list[Reject] = []
    for study, previous in chunk.pairs:
        match = chunk.matches.get(study.study_id)
        records, problems = chunk.builder.build(
            study,
            chunk.splits[study.patient_id],
            previous=previous,
            other_report=None if match == _OWN_REPORT else match,
            image_text=match is not None,
        )
        rejected += problems
        for record in records:
            if chunk.materializer is not None:
                record, problem = chunk.materializer.apply(record)
                if problem is not None:
                    rejected.append(problem)
                    continue
            writer.add(record)
            counts[(record.source, record.task, record.split)] += 1
    writer.close()
    return counts, rejected


_OWN_REPORT = "own report"  # image-text matching with the study's own report ("Yes"); survives pickling


def _image_text_pairs(studies: list[Study], splits: dict[str, str], seed: int) -> dict[str, Any]:
    """Image-text matching pairs, within each split: study id -> ``_OWN_REPORT`` or another's report.

    Each used report is shown once with its own image ("Yes") and once with the image of a study of
    the same split, another patient and different labels ("No"), so the report text alone never
    predicts the answer, and no prompt quotes a report from another split.
    """
    labels = {
        s.study_id: study_labels(s)
        for s in studies
        if s.report is not None and (s.report.findings or s.report.impression).strip()
    }
    eligible = [
        s
        for s in studies
        if s.study_id in labels and (labels[s.study_id].positives or labels[s.study_id].normal)
    ]
    eligible.sort(key=lambda s: hashlib.blake2b(f"{seed}\x1fitm\x1f{s.study_id}".encode()).digest())
    out: dict[str, Any] = {}
    waiting: dict[str, list[Study]] = defaultdict(list)  # per split, studies not yet paired
    for study in eligible:
        queue = waiting[splits[study.patient_id]]
        own = labels[study.study_id]
        mate = next(
            (q for q in queue if q.patient_id != study.patient_id and labels_differ(labels[q.study_id], own)),
            None,
        )
        if mate is None:
            if len(queue) < 64:  # bounded look-back keeps this linear
                queue.append(study)
            continue
        queue.remove(mate)
        out[mate.study_id] = _OWN_REPORT
        out[study.study_id] = (mate.patient_id, mate.report, labels[mate.study_id])
    return out


class _Materializer:
    """Writes each record's images once as normalised PNGs (RGB, resized to the budget)."""

    def __init__(self, spec: SourceSpec, out: Path, staging: Path, budget: ImageBudget) -> None:
        self.spec, self.budget = spec, budget
        self.previous = out / "images" / spec.name  # a prior build's images are reused
        self.target = staging / "images" / spec.name
        self.done: dict[str, str | Reject] = {}

    def apply(self, record: Record) -> tuple[Record, Reject | None]:
        paths = []
        for rel in record.images:
            result = self.done.get(rel)
            if result is None:
                result = self.done[rel] = self._write(rel)
            if isinstance(result, Reject):
                return record, Reject(record.id, result.reason, result.detail)
            paths.append(result)
        return replace(record, images=paths), None

    def _write(self, rel: str) -> str | Reject:
        name = str(Path(rel).with_suffix(".png"))
        target = self.target / name
        reused = self.previous / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if reused.is_file():
            try:
                os.link(reused, target)  # same file system: no copy
            except OSError:
                shutil.copy2(reused, target)
            return name
        try:
            image = load_image(self.spec.root, rel, self.budget)
        except ImageError as error:
            return Reject(rel, f"image {error.reason}", str(error))
        save_normalised(image, target)
        return name


def _discard(out: Path) -> None:
    """Move the previous output aside (rename cannot replace a non-empty folder) and delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / "old")
    shutil.rmtree(trash, ignore_errors=True)


def _write_meta(
    folder: Path, config: BuildConfig, summary: BuildSummary, image_roots: dict[str, str]
) -> None:
    from cxmind import __version__

    counts: dict[str, int] = Counter()
    for (_, task, split), n in summary.records.items():
        counts[f"{split}/{task}"] += n
    meta = {
        "format_version": FORMAT_VERSION,
        "cxmind_version": __version__,
        "image_roots": image_roots,
        "materialized_images": config.materialize_images,
        "sources": [{"name": s.name, "root": str(s.root), "options": s.options} for s in config.sources],
        "tasks": list(config.task.tasks),
        "seed": config.task.seed,
        "split_fractions": list(config.split_fractions),
        "limit": config.limit,
        "image_budget": asdict(config.task.budget),
        "studies": dict(summary.studies),
        "records": summary.total_records,
        "records_by_split_task": dict(sorted(counts.items())),
        "rejects": dict(summary.rejects),
        "balance": config.task.balance,
        "duplicates": summary.duplicates,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(_dataset_card(meta, summary), encoding="utf-8")


def _duplicates_text(found: dict[str, Any]) -> str:
    if not found:
        return "Not checked."
    hashed = (
        ", ".join(f"{s}: {n}" for s, n in found.get("images_hashed", {}).items()) or "none (no image files)"
    )
    lines = [
        f"{found['groups']} groups of patients share an image, a report text or an id alias and were "
        f"given one split each ({found['patients_moved']} patients moved); images hashed: {hashed}."
    ]
    lines += [f"- **Warning**: {note}" for note in found.get("notes", ())]
    return "\n".join(lines)


def _append_audit(folder: Path, out: Path, progress: bool, workers: int | None) -> None:
    """Audit the finished record set (image-blind baselines, contradictions, cross-split
    duplicates) into ``audit.json`` and the dataset card."""
    from cxmind.data.audit import AUDIT_FILE, audit, audit_markdown

    result = audit(folder, images=False, progress=progress, workers=workers)
    result["records"] = str(out)  # where the set will be, not the staging folder audited
    (folder / AUDIT_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(folder / "README.md", "a", encoding="utf-8") as card:
        card.write("\n" + audit_markdown(result) + "\n")


DATASET_CARD_TEMPLATE = Path(__file__).parent.parent / "templates" / "dataset_card.md"


def _dataset_card(meta: dict[str, Any], summary: BuildSummary) -> str:
    """The record set's README.md: Hub metadata (``DatasetCardData``) and the build's description."""
    from huggingface_hub import DatasetCard, DatasetCardData

    total = summary.total_records
    size = next(
        (name for limit, name in _SIZE_CATEGORIES if total < limit), "n>1T"
    )  # the Hub's size_categories buckets
    card_data = DatasetCardData(
        license="other",
        pretty_name="cxmind chest X-ray records",
        task_categories=["visual-question-answering", "image-to-text"],
        tags=["medical", "chest-x-ray", "cxmind"],
        size_categories=[size],
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        pretty_name=card_data.pretty_name,
        cxmind_version=meta["cxmind_version"],
        sources=", ".join(s["name"] for s in meta["sources"]),
        counts=summary.table(),
        seed=meta["seed"],
        split_fractions=meta["split_fractions"],
        tasks=", ".join(meta["tasks"]),
        balance=meta["balance"],
        duplicates=_duplicates_text(summary.duplicates),
    )
    return str(card).rstrip("\n") + "\n"


_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
