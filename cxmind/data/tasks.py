"""Task builders: one study (plus its patient's previous study) -> records of the paper's taxonomy.

Every builder is deterministic given (seed, source, study id): distractors, question wording and
option order come from a per-study random generator, so rebuilding reproduces the same records
whatever the order studies arrive in. Closed and open records carry a gold trajectory that must
pass :func:`cxmind.data.traces.check_trace`; a record that fails is returned as a reject.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from cxmind.data.images import ImageBudget, box_to_qwen, smart_resize, transform_box
from cxmind.data.schema import TASKS, Record, Report, Study
from cxmind.data.traces import (
    check_trace,
    closed_trace,
    finding_evidence,
    open_trace,
    report_sentences,
    summary_text,
)
from cxmind.vocab import NO_FINDING, is_known

__all__ = ["Reject", "TaskBuilder", "TaskConfig"]

LETTERS = "ABCDEFGH"
VIEWS = {"PA": "PA (posteroanterior)", "AP": "AP (anteroposterior)", "LATERAL": "Lateral"}
_VIEW_ALIASES = {
    "PA": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "ANTEROPOSTERIOR": "AP",
    "AP SUPINE": "AP",
    "AP AXIAL": "AP",
    "LATERAL": "LATERAL",
    "LL": "LATERAL",
    "L": "LATERAL",
    "RL": "LATERAL",
    "LAT": "LATERAL",
    "AP_HORIZONTAL": "AP",
}
_VIEW_EVIDENCE = {
    "PA": (
        "the scapulae are projected clear of the lungs and the heart is not magnified",
        "the scapulae do not overlap the lung fields, which argues against an AP film",
    ),
    "AP": (
        "the scapulae overlap the upper lungs and the heart appears magnified",
        "the heart is not magnified and the scapulae are clear of the lungs",
    ),
    "LATERAL": (
        "the spine and sternum are seen in profile with the heart in front of the spine",
        "both lungs are seen side by side, so this is a frontal projection",
    ),
}


def _known(names: Sequence[str]) -> list[str]:
    return [n for n in names if n != NO_FINDING and is_known(n)]


@dataclass(frozen=True)
class Reject:
    """A record (or study) that could not be built, with the reason."""

    id: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class TaskConfig:
    """Which tasks to build and how."""

    tasks: tuple[str, ...] = tuple(TASKS)
    choices: int = 4  # options of single- and multi-choice questions
    open_distractors: int = 2  # absent findings added to an open question's differential list
    budget: ImageBudget = field(default_factory=ImageBudget)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
        if not 2 <= self.choices <= len(LETTERS):
            raise ValueError(f"choices must lie in [2, {len(LETTERS)}], got {self.choices}")


@dataclass
class _Context:
    study: Study
    split: str
    rng: random.Random
    sentences: list[str]
    positives: list[str]  # vocabulary findings only ("No Finding" excluded)
    negatives: list[str]
    fully_known: bool  # every positive is a vocabulary finding, so final lists are truthful


class TaskBuilder:
    """Builds the configured tasks for the studies of one source."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    def build(
        self,
        study: Study,
        split: str,
        *,
        previous: Study | None = None,
        other_report: tuple[str, Report, tuple[str, ...]] | None = None,
    ) -> tuple[list[Record], list[Reject]]:
        """Records of ``study`` for every configured task that applies, and the rejects."""
        rng = random.Random(f"{self.config.seed}\x1f{study.source}\x1f{study.study_id}")
        report = study.report or Report()
        positives, negatives = _known(study.positives), _known(study.negatives)
        sentences = report_sentences(report.findings, report.impression)
        ctx = _Context(
            study, split, rng, sentences, positives, negatives, len(positives) == len(study.positives)
        )
        records: list[Record] = []
        rejects: list[Reject] = []
        for task in self.config.tasks:
            if task == "progression":
                built = self._progression(ctx, previous) if previous is not None else None
            elif task == "image_text_matching":
                built = self._image_text_matching(ctx, other_report)
            else:
                built = getattr(self, f"_{task}")(ctx)
            if built is None:
                continue
            if built.task_type in ("closed", "open"):
                reason = check_trace(built.solution or "", built.task_type, built.options)
                if reason is not None:
                    rejects.append(Reject(built.id, reason, "gold trajectory failed the reward filter"))
                    continue
            records.append(built)
        return records, rejects

    # --------------------------------------------------------------------------------- helpers

    def _record(
        self,
        ctx: _Context,
        task: str,
        question: str,
        answer: str,
        *,
        options=None,
        solution=None,
        images: Sequence[str] | None = None,
    ) -> Record:
        study = ctx.study
        return Record(
            id=f"{study.source}/{study.study_id}/{task}",
            images=list(study.images if images is None else images),
            task_type=TASKS[task],
            task=task,
            question=question,
            options=list(options) if options is not None else None,
            answer=answer,
            solution=solution,
            source=study.source,
            patient_id=study.patient_id,
            study_id=study.study_id,
            split=ctx.split,
        )

    def _closed(
        self,
        ctx: _Context,
        task: str,
        question: str,
        texts: Sequence[str],
        gold: int,
        evidence: Sequence[str],
        summary: str,
        images: Sequence[str] | None = None,
    ) -> Record:
        options = [f"{LETTERS[i]}) {t}" for i, t in enumerate(texts)]
        by_letter = {LETTERS[i]: e for i, e in enumerate(evidence)}
        solution = closed_trace(options, LETTERS[gold], by_letter, summary)
        full_question = question + "\n" + "\n".join(options)
        return self._record(
            ctx, task, full_question, LETTERS[gold], options=options, solution=solution, images=images
        )

    def _evidence(self, ctx: _Context, finding: str, present: bool) -> str:
        return finding_evidence(finding, present, ctx.sentences, ctx.rng)

    # --------------------------------------------------------------------------------- disease tasks

    def _disease_binary(self, ctx: _Context) -> Record | None:
        positives, negatives = ctx.positives, ctx.negatives
        if not positives and not negatives:
            return None
        present = bool(positives) and (not negatives or ctx.rng.random() < 0.5)
        finding = ctx.rng.choice(positives if present else negatives)
        question = ctx.rng.choice(
            [
                f"Is there {finding.lower()} on this chest X-ray?",
                f"Does this radiograph show {finding.lower()}?",
            ]
        )
        seen = self._evidence(ctx, finding, present)  # what the image shows decides both options
        state, answer = ("present", "yes") if present else ("absent", "no")
        summary = f"Summary: {finding.lower()} is {state}, so the answer is {answer}."
        return self._closed(
            ctx, "disease_binary", question, ["Yes", "No"], 0 if present else 1, [seen, seen], summary
        )

    def _disease_single_choice(self, ctx: _Context) -> Record | None:
        positives, negatives = ctx.positives, ctx.negatives
        k = self.config.choices
        normal = not positives and not ctx.study.positives
        if len(negatives) < k - 1 or (not positives and not normal):
            return None
        gold_name = NO_FINDING if normal else ctx.rng.choice(positives)
        texts = [gold_name, *ctx.rng.sample(negatives, k - 1)]
        ctx.rng.shuffle(texts)
        gold = texts.index(gold_name)
        evidence = []
        for name in texts:
            if name == NO_FINDING:
                evidence.append("no abnormality is seen" if normal else "an abnormality is present")
            else:
                evidence.append(self._evidence(ctx, name, name == gold_name))
        question = "Which finding is present on this chest X-ray?"
        summary = f"Summary: the image is best described by {gold_name.lower()}."
        return self._closed(ctx, "disease_single_choice", question, texts, gold, evidence, summary)

    def _candidates(
        self, ctx: _Context, max_positives: int, n_distractors: int
    ) -> tuple[list[str], set[str]]:
        """Shuffled candidates: up to ``max_positives`` present findings plus known-absent distractors."""
        positives, negatives = ctx.positives, ctx.negatives
        positives = ctx.rng.sample(positives, min(len(positives), max_positives))
        candidates = positives + ctx.rng.sample(negatives, min(len(negatives), n_distractors))
        ctx.rng.shuffle(candidates)
        return candidates, set(positives)

    def _disease_multi_choice(self, ctx: _Context) -> Record | None:
        k = self.config.choices
        positives, negatives = ctx.positives, ctx.negatives
        if not ctx.fully_known or len(negatives) < k - min(len(positives), k - 2):
            return None
        n_pos = min(len(positives), k - 2)  # at least two options are absent findings
        candidates, present = self._candidates(ctx, n_pos, k - n_pos)
        question = "Which of the following findings are present on this chest X-ray? Select all that apply."
        return self._open(ctx, "disease_multi_choice", candidates, present, question, labelled=True)

    def _disease_open(self, ctx: _Context) -> Record | None:
        if not ctx.fully_known:
            return None  # a positive outside the vocabulary cannot be judged against the gold list
        positives = ctx.positives
        candidates, present = self._candidates(ctx, len(positives), self.config.open_distractors)
        if not candidates:
            return None
        question = ctx.rng.choice(
            [
                "What findings are present on this chest X-ray?",
                "List the abnormal findings on this chest radiograph.",
            ]
        )
        return self._open(ctx, "disease_open", candidates, present, question)

    def _open(
        self,
        ctx: _Context,
        task: str,
        candidates: list[str],
        present: set[str],
        question: str,
        labelled: bool = False,
    ) -> Record:
        evidence = {c: self._evidence(ctx, c, c in present) for c in candidates}
        positives = [c for c in candidates if c in present]
        observation = (
            "Observation: I review the lungs, pleura, heart, mediastinum and bones for "
            + ", ".join(c.lower() for c in candidates)
            + "."
        )
        solution = open_trace(candidates, present, evidence, observation, summary_text(positives))
        options = None
        if labelled:
            options = [f"{LETTERS[i]}) {c}" for i, c in enumerate(candidates)]
            question = question + "\n" + "\n".join(options)
        answer = ", ".join(positives) or NO_FINDING
        return self._record(ctx, task, question, answer, options=options, solution=solution)

    # --------------------------------------------------------------------------------- report tasks

    def _report(self, ctx: _Context, task: str, section: str, with_indication: bool) -> Record | None:
        report = ctx.study.report
        if report is None or not getattr(report, section).strip():
            return None
        if with_indication and not report.indication.strip():
            return None
        name = "findings" if section == "findings" else "impression"
        question = f"Write the {name} section of the radiology report for this chest X-ray."
        if with_indication:
            question = f"Indication: {report.indication.strip()}\n{question}"
        return self._record(ctx, task, question, getattr(report, section).strip())

    def _report_findings(self, ctx: _Context) -> Record | None:
        return self._report(ctx, "report_findings", "findings", False)

    def _report_findings_with_indication(self, ctx: _Context) -> Record | None:
        return self._report(ctx, "report_findings_with_indication", "findings", True)

    def _report_impression(self, ctx: _Context) -> Record | None:
        return self._report(ctx, "report_impression", "impression", False)

    def _report_impression_with_indication(self, ctx: _Context) -> Record | None:
        return self._report(ctx, "report_impression_with_indication", "impression", True)

    def _report_summary(self, ctx: _Context) -> Record | None:
        report = ctx.study.report
        if report is None or not report.findings.strip() or not report.impression.strip():
            return None
        question = (
            f"Summarize these chest X-ray findings into an impression.\nFindings: {report.findings.strip()}"
        )
        return self._record(ctx, "report_summary", question, report.impression.strip(), images=[])

    # --------------------------------------------------------------------------------- other tasks

    def _view_position(self, ctx: _Context) -> Record | None:
        view = _VIEW_ALIASES.get((ctx.study.view or "").strip().upper())
        if view is None:
            return None
        keys = list(VIEWS)
        evidence = [_VIEW_EVIDENCE[k][0] if k == view else _VIEW_EVIDENCE[k][1] for k in keys]
        summary = f"Summary: the projection is {VIEWS[view]}."
        question = "What is the view position of this chest X-ray?"
        return self._closed(
            ctx,
            "view_position",
            question,
            [VIEWS[k] for k in keys],
            keys.index(view),
            evidence,
            summary,
            images=ctx.study.images[:1],
        )

    def _image_text_matching(
        self, ctx: _Context, other: tuple[str, Report, tuple[str, ...]] | None
    ) -> Record | None:
        own = ctx.study.report
        if own is None or not (own.findings or own.impression).strip():
            return None
        own_positives = tuple(sorted(ctx.study.positives))
        use_other = (
            other is not None
            and other[0] != ctx.study.patient_id
            and tuple(sorted(other[2])) != own_positives
            and ctx.rng.random() < 0.5
        )
        report, positives = (other[1], other[2]) if use_other and other else (own, own_positives)
        text = (report.findings or report.impression).strip()
        question = f"Does this report describe this chest X-ray?\nReport: {text}"
        described = ", ".join(p.lower() for p in positives) or "a normal study"
        if use_other:
            evidence = [
                f"the report describes {described}, which does not agree with the image",
                f"the report describes {described}, which does not agree with the image",
            ]
        else:
            evidence = [f"the report describes {described}, which agrees with the image"] * 2
        summary = f"Summary: the report {'does not match' if use_other else 'matches'} the image."
        return self._closed(
            ctx,
            "image_text_matching",
            question,
            ["Yes", "No"],
            1 if use_other else 0,
            evidence,
            summary,
            images=ctx.study.images[:1],
        )

    def _progression(self, ctx: _Context, previous: Study) -> Record | None:
        cur, prev = ctx.study, previous
        labelled_both = (set(cur.positives) | set(cur.negatives)) & (
            set(prev.positives) | set(prev.negatives)
        )
        changing = sorted(
            f for f in labelled_both if (f in cur.positives) != (f in prev.positives) and is_known(f)
        )
        persistent = sorted(
            f for f in labelled_both if f in cur.positives and f in prev.positives and is_known(f)
        )
        pool = changing or persistent
        if not pool or not prev.images or not cur.images:
            return None
        finding = ctx.rng.choice(pool)
        before, after = finding in prev.positives, finding in cur.positives
        texts = ["Newly appeared", "Resolved", "Persistent"]
        gold = 0 if after and not before else 1 if before and not after else 2
        was = "present" if before else "absent"
        now = "present" if after else "absent"
        evidence = [f"it was {was} on the prior image and is {now} now"] * 3
        summary = f"Summary: {finding.lower()} was {was} before and is {now} now."
        question = (
            f"The first image is the prior study and the second the current one. "
            f"How has {finding.lower()} changed?"
        )
        return self._closed(
            ctx,
            "progression",
            question,
            texts,
            gold,
            evidence,
            summary,
            images=[prev.images[0], cur.images[0]],
        )

    def _grounding(self, ctx: _Context) -> Record | None:
        study = ctx.study
        if not study.boxes or study.image_size is None or not study.images:
            return None
        width, height = study.image_size
        new_h, new_w = smart_resize(height, width, self.config.budget)
        finding = ctx.rng.choice(sorted({b.finding for b in study.boxes}))
        boxes = [
            transform_box(b, (width, height), (new_w, new_h)) for b in study.boxes if b.finding == finding
        ]
        answer = json.dumps([{"bbox_2d": box_to_qwen(b), "label": finding} for b in boxes])
        question = (
            f"Locate every {finding.lower()} in this chest X-ray (image {new_w}x{new_h} pixels). "
            'Answer with a JSON list of objects with "bbox_2d": [x1, y1, x2, y2] and "label".'
        )
        return self._record(ctx, "grounding", question, answer, images=study.images[:1])
