"""The data model: ``Study`` (what a source reads) and ``Record`` (what training consumes).

Sources read official dataset layouts into ``Study`` objects — one imaging study with its images,
canonical labels, boxes and report. Task builders turn studies into ``Record`` rows, one schema for
every task, stored as Hugging Face ``datasets`` parquet shards.

Record fields (all tasks):

=============  =====================================================================================
id             unique and deterministic: ``{source}/{study_id}/{task}[/{n}]``
images         image paths relative to the source's declared image root (one or several views;
               progression tasks hold the prior study's image first)
task_type      ``closed`` (options, one correct letter) | ``open`` (finding list) | ``report`` |
               ``grounding``
task           fine task name, one of ``TASKS``
question       the user question, options written out; format instructions are added at prompt time
               from ``cxmind.format.instructions``
options        labelled options ``["A) Yes", "B) No"]`` (closed tasks, and the candidate list of
               multi-label choice), else ``None``
answer         short answer: the letter (closed), comma-separated findings or "No Finding" (open),
               the reference text (report), Qwen2.5-VL ``bbox_2d`` JSON in the resized frame (grounding)
solution       the gold interleaved trajectory (closed/open, ``docs/rewards.md`` §1), else ``None``
source         dataset name (``nih``, ``chexpert``, ...)
patient_id     patient identifier within the source (splits never cross patients)
study_id       study identifier within the source
split          ``train`` | ``validation`` | ``test``
=============  =====================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "RECORD_FIELDS",
    "SPLITS",
    "TASKS",
    "TASK_TYPES",
    "Box",
    "Record",
    "Report",
    "Source",
    "Study",
    "record_features",
]

TASK_TYPES = ("closed", "open", "report", "grounding")
SPLITS = ("train", "validation", "test")

#: Fine task name -> task type (the paper's taxonomy).
TASKS: dict[str, str] = {
    "disease_binary": "closed",
    "disease_single_choice": "closed",
    "disease_multi_choice": "open",  # several correct options: scored as a finding list over the options
    "disease_open": "open",
    "report_findings": "report",
    "report_findings_with_indication": "report",
    "report_impression": "report",
    "report_impression_with_indication": "report",
    "report_summary": "report",  # findings -> impression
    "view_position": "closed",
    "image_text_matching": "closed",
    "progression": "closed",
    "grounding": "grounding",
}


@dataclass(frozen=True)
class Box:
    """A finding's bounding box in the *original* image's pixel frame (x right, y down)."""

    finding: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Report:
    """Free-text report sections; empty strings where a section is absent."""

    findings: str = ""
    impression: str = ""
    indication: str = ""


@dataclass(frozen=True)
class Study:
    """One imaging study as a source reads it.

    ``positives``/``negatives`` are canonical ``cxmind.vocab`` names the source labels as present or
    known absent (uncertain labels already resolved by the source's policy); findings the source does
    not label are in neither. ``normal`` is True only when the source *says* the whole study is
    normal (NIH "No Finding", CheXpert ``No Finding`` = 1, PadChest/IU "normal", ...): an empty
    ``positives`` never means normal by itself (RSNA labels pneumonia only, so "no pneumonia" says
    nothing about the rest). ``label_space`` is what the source labels (empty: only the findings in
    ``positives``/``negatives``), with "No Finding" in it when the source labels whole studies (it can
    call a study normal); ``assumed_negatives`` are the negatives that come from a convention
    rather than an explicit label (e.g. a blank CheXpert cell read as negative by policy), which
    comparisons across studies (progression) must not use. ``aliases`` name the same image in another
    source (``"nih/00000013_005"`` for an RSNA image, from the published mapping), so the build keeps
    the copies in one split. ``image_size`` is ``(width, height)`` of ``images[0]`` when the
    metadata gives it. ``order`` places the study in its patient's sequence.
    """

    source: str
    study_id: str
    patient_id: str
    images: tuple[str, ...]
    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    view: str | None = None
    image_size: tuple[int, int] | None = None
    boxes: tuple[Box, ...] = ()
    report: Report | None = None
    order: int | None = None
    split: str | None = None  # the source's official split, when it has one
    normal: bool = False
    label_space: tuple[str, ...] = ()
    assumed_negatives: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # "source/study_id" of copies of this image in other sources


class Source(Protocol):
    """A dataset reader: ``studies()`` yields every study of the official files under ``root``."""

    name: str

    def studies(self) -> Any:  # Iterator[Study]
        ...


@dataclass(frozen=True)
class Record:
    """One training/evaluation row (see the module docstring for the fields)."""

    id: str
    images: list[str]
    task_type: str
    task: str
    question: str
    options: list[str] | None
    answer: str
    solution: str | None
    source: str
    patient_id: str
    study_id: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"record {self.id}: unknown task {self.task!r}; expected one of {sorted(TASKS)}")
        if TASKS[self.task] != self.task_type:
            raise ValueError(f"record {self.id}: task {self.task} has task_type {TASKS[self.task]}")
        if self.split not in SPLITS:
            raise ValueError(f"record {self.id}: split must be one of {SPLITS}, got {self.split!r}")
        if self.task_type in ("closed", "open") and not self.solution:
            raise ValueError(f"record {self.id}: {self.task_type} tasks need a gold solution trajectory")

    def to_row(self) -> dict[str, Any]:
        """The parquet row (``extra`` is build-time metadata and is not stored)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}


RECORD_FIELDS = tuple(f for f in Record.__dataclass_fields__ if f != "extra")


def record_features() -> Any:
    """The ``datasets.Features`` of a record table (paths as strings; see ``cxmind.data.load_records``)."""
    from datasets import Features, Sequence, Value

    text = Value("string")
    return Features(
        {
            "id": text,
            "images": Sequence(text),
            "task_type": text,
            "task": text,
            "question": text,
            "options": Sequence(text),
            "answer": text,
            "solution": text,
            "source": text,
            "patient_id": text,
            "study_id": text,
            "split": text,
        }
    )
