"""Task builders: one study (plus its patient's previous study) -> records of the paper's taxonomy.

Every builder is deterministic given (seed, source, study id): distractors, question wording and
option order come from a per-study random generator, so rebuilding reproduces the same records
whatever the order studies arrive in. Closed and open records carry a gold trajectory that must
pass :func:`cxmind.data.traces.check_record` against the study's labels (else: a reject). Closed
answers are balanced per question stem with the rates :func:`fit_answer_balance` fits per source.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cxmind.data.balance import AnswerBalance, SingleChoiceSlot, assign_single_choice, equal_answers
from cxmind.data.images import ImageBudget, box_to_qwen, smart_resize, transform_box
from cxmind.data.schema import TASKS, Record, Report, Study
from cxmind.data.traces import (
    check_record,
    closed_trace,
    finding_evidence,
    open_trace,
    report_sentences,
    summary_text,
)
from cxmind.errors import UserError
from cxmind.vocab import NO_FINDING, is_known, not_absent, resolve_labels

__all__ = [
    "BALANCE_MODES",
    "Reject",
    "StudyLabels",
    "TaskBuilder",
    "TaskConfig",
    "fit_answer_balance",
    "labels_differ",
    "study_labels",
]

BALANCE_MODES = ("answers", "none")

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
class StudyLabels:
    """What a study's labels let a question claim: vocabulary positives and negatives, made
    consistent with the finding hierarchy, and whether the study is known to be normal."""

    positives: tuple[str, ...]
    negatives: tuple[str, ...]  # explicit or implied absences; never related to a positive
    normal: bool  # the source says so ("No Finding"); never inferred from missing positives
    fully_known: bool  # every positive is a vocabulary finding, so a final list can be complete
    labels_normality: bool  # the source labels whole studies ("No Finding" is in its label space)

    @property
    def labelled(self) -> tuple[str, ...]:
        return (*self.positives, *self.negatives)


def study_labels(study: Study) -> StudyLabels:
    """The :class:`StudyLabels` of ``study`` (one rule for task building, balance fitting and checks)."""
    positives, negatives = resolve_labels(study.positives, study.negatives, study.label_space)
    known_positives = _known(positives)
    return StudyLabels(
        positives=tuple(known_positives),
        negatives=tuple(_known(negatives)),
        normal=study.normal and not known_positives,
        fully_known=all(is_known(p) for p in study.positives if p != NO_FINDING),
        labels_normality=NO_FINDING in study.label_space,
    )


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
    #: "answers": closed answers equally likely per question stem (cxmind.data.balance), fitted per
    #: source by the build; "none": natural label prevalence (image-blind guessing beats chance).
    balance: str = "answers"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise UserError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
        if self.balance not in BALANCE_MODES:
            raise UserError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if not 2 <= self.choices <= len(LETTERS):
            raise UserError(f"choices must lie in [2, {len(LETTERS)}], got {self.choices}")


@dataclass
class _Context:
    study: Study
    split: str
    rng: random.Random
    sentences: list[str]
    labels: StudyLabels

    @property
    def positives(self) -> list[str]:
        return list(self.labels.positives)

    @property
    def negatives(self) -> list[str]:
        return list(self.labels.negatives)


#: Another study's report for an image-text matching question that must answer "No":
#: (patient id, report, its labels).
OtherReport = tuple[str, Report, StudyLabels]


class TaskBuilder:
    """Builds the configured tasks for the studies of one source.

    ``balance`` holds the source's fitted answer balance (see :mod:`cxmind.data.balance`; the build
    fits it); without it, or with ``TaskConfig(balance="none")``, answers follow label prevalence.
    """

    def __init__(self, config: TaskConfig, balance: AnswerBalance | None = None) -> None:
        self.config = config
        self.balance = balance if config.balance == "answers" else None

    def subset(self, studies: set[str]) -> TaskBuilder:
        """A builder for ``studies`` only: the same records for them, a smaller plan to ship to a worker."""
        return TaskBuilder(self.config, self.balance.subset(studies) if self.balance is not None else None)

    def build(
        self,
        study: Study,
        split: str,
        *,
        previous: Study | None = None,
        other_report: OtherReport | None = None,
        image_text: bool = True,
    ) -> tuple[list[Record], list[Reject]]:
        """Records of ``study`` for every configured task that applies, and the rejects.

        Image-text matching (when ``image_text``) shows ``other_report`` and answers "No", or the
        study's own report and answers "Yes" when no other report is given.
        """
        rng = random.Random(f"{self.config.seed}\x1f{study.source}\x1f{study.study_id}")
        report = study.report or Report()
        sentences = report_sentences(report.findings, report.impression)
        ctx = _Context(study, split, rng, sentences, study_labels(study))
        records: list[Record] = []
        rejects: list[Reject] = []
        for task in self.config.tasks:
            if task == "progression":
                built = self._progression(ctx, previous) if previous is not None else None
            elif task == "image_text_matching":
                built = self._image_text_matching(ctx, other_report) if image_text else None
            else:
                built = getattr(self, f"_{task}")(ctx)
            if built is None:
                continue
            reason = check_record(built, ctx.labels)
            if reason is not None:
                rejects.append(Reject(built.id, "contradictory trace", reason))
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
        extra: dict | None = None,
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
            extra=extra or {},
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
        extra: dict | None = None,
    ) -> Record:
        options = [f"{LETTERS[i]}) {t}" for i, t in enumerate(texts)]
        by_letter = {LETTERS[i]: e for i, e in enumerate(evidence)}
        solution = closed_trace(options, LETTERS[gold], by_letter, summary)
        full_question = question + "\n" + "\n".join(options)
        return self._record(
            ctx,
            task,
            full_question,
            LETTERS[gold],
            options=options,
            solution=solution,
            images=images,
            extra=extra,
        )

    def _evidence(self, ctx: _Context, finding: str, present: bool) -> str:
        return finding_evidence(finding, present, ctx.sentences, ctx.rng)

    # --------------------------------------------------------------------------------- disease tasks

    def _disease_binary(self, ctx: _Context) -> Record | None:
        positives, negatives = ctx.positives, ctx.negatives
        if not positives and not negatives:
            return None
        if self.balance is None:
            present = bool(positives) and (not negatives or ctx.rng.random() < 0.5)
            finding = ctx.rng.choice(positives if present else negatives)
        else:
            planned = self.balance.binary.get(ctx.study.study_id)
            if planned is None:
                return None  # its answer would tip its finding's yes/no balance
            finding, present = planned, planned in positives
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
            ctx,
            "disease_binary",
            question,
            ["Yes", "No"],
            0 if present else 1,
            [seen, seen],
            summary,
            extra={"finding": finding},
        )

    def _disease_single_choice(self, ctx: _Context) -> Record | None:
        k = self.config.choices
        if self.balance is None:
            slot = single_choice_slot(ctx.labels)
            pool = [d for d in slot.distractors if d != NO_FINDING] if slot is not None else []
            if slot is None or len(pool) < k - 1:
                return None
            gold_name = ctx.rng.choice(slot.golds)
            distractors = ctx.rng.sample(pool, k - 1)  # natural: findings only, any prevalence
        else:
            assigned = self.balance.single_choice.get(ctx.study.study_id)
            if assigned is None:
                return None  # not part of a complete option set
            options, gold_name = assigned
            distractors = [t for t in options if t != gold_name]
        texts = [gold_name, *distractors]
        ctx.rng.shuffle(texts)
        gold = texts.index(gold_name)
        normal = ctx.labels.normal
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
        if not ctx.labels.fully_known or len(negatives) < k - min(len(positives), k - 2):
            return None
        n_pos = min(len(positives), k - 2)  # at least two options are absent findings
        candidates, present = self._candidates(ctx, n_pos, k - n_pos)
        question = "Which of the following findings are present on this chest X-ray? Select all that apply."
        return self._open(ctx, "disease_multi_choice", candidates, present, question, labelled=True)

    def _disease_open(self, ctx: _Context) -> Record | None:
        if not ctx.labels.fully_known:
            return None  # a positive outside the vocabulary cannot be judged against the gold list
        positives = ctx.positives
        candidates, present = self._candidates(ctx, len(positives), self.config.open_distractors)
        if not candidates:
            return None
        if ctx.labels.normal or (ctx.labels.labels_normality and _settled(ctx)):
            question = ctx.rng.choice(
                [
                    "What findings are present on this chest X-ray?",
                    "List the abnormal findings on this chest radiograph.",
                ]
            )
        else:
            # The labels do not settle the whole study (a single-finding source, or findings left
            # unmentioned): ask only about what is labelled, and say so.
            listed = ", ".join(c.lower() for c in sorted(candidates))
            question = (
                f"Considering only these findings: {listed}. Which of them are present on this chest "
                "X-ray? Answer No Finding if none of them is."
            )
            return self._open(ctx, "disease_open", candidates, present, question, scoped=True)
        return self._open(ctx, "disease_open", candidates, present, question)

    def _open(
        self,
        ctx: _Context,
        task: str,
        candidates: list[str],
        present: set[str],
        question: str,
        labelled: bool = False,
        scoped: bool = False,
    ) -> Record:
        """An open record over ``candidates``; ``scoped``: "No Finding" means none of them, not normal
        (also every multi-label choice, whose options are the scope)."""
        evidence = {c: self._evidence(ctx, c, c in present) for c in candidates}
        positives = [c for c in candidates if c in present]
        observation = (
            "Observation: I review the lungs, pleura, heart, mediastinum and bones for "
            + ", ".join(c.lower() for c in candidates)
            + "."
        )
        scoped = scoped or labelled
        summary = summary_text(positives, normal=ctx.labels.normal and not scoped)
        solution = open_trace(candidates, present, evidence, observation, summary)
        options = None
        if labelled:
            options = [f"{LETTERS[i]}) {c}" for i, c in enumerate(candidates)]
            question = question + "\n" + "\n".join(options)
        answer = ", ".join(positives) or NO_FINDING
        return self._record(
            ctx, task, question, answer, options=options, solution=solution, extra={"scoped": scoped}
        )

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
        view = view_class(ctx.study.view)
        if view is None:
            return None
        keys = list(VIEWS)
        if self.balance is not None:
            # only the classes this source has, each equally often
            keys = list(self.balance.views)
            if ctx.study.study_id not in self.balance.view_studies or view not in keys:
                return None
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

    def _image_text_matching(self, ctx: _Context, other: OtherReport | None) -> Record | None:
        own = ctx.study.report
        if own is None or not (own.findings or own.impression).strip():
            return None
        if not (ctx.labels.positives or ctx.labels.normal):
            return None  # no label says what the report describes: nothing to claim
        if other is not None and (
            other[0] == ctx.study.patient_id or not labels_differ(other[2], ctx.labels)
        ):
            return None
        report, labels = (other[1], other[2]) if other is not None else (own, ctx.labels)
        text = (report.findings or report.impression).strip()
        question = f"Does this report describe this chest X-ray?\nReport: {text}"
        described = ", ".join(p.lower() for p in labels.positives) or "a normal study"
        if other is not None:
            evidence = [f"the report describes {described}, which does not agree with the image"] * 2
        else:
            evidence = [f"the report describes {described}, which agrees with the image"] * 2
        summary = f"Summary: the report {'does not match' if other is not None else 'matches'} the image."
        return self._closed(
            ctx,
            "image_text_matching",
            question,
            ["Yes", "No"],
            1 if other is not None else 0,
            evidence,
            summary,
            images=ctx.study.images[:1],
        )

    def _progression(self, ctx: _Context, previous: Study) -> Record | None:
        if not previous.images or not ctx.study.images:
            return None
        pool = progression_pool(previous, ctx.study)
        if not pool:
            return None
        if self.balance is None:
            changing = [f for f, change in pool if change != PERSISTENT]
            finding = ctx.rng.choice(changing or [f for f, _ in pool])
            change = dict(pool)[finding]
        else:
            planned = self.balance.progression.get(ctx.study.study_id)
            if planned is None or planned not in pool:
                return None
            finding, change = planned
        before, after = change != NEWLY_APPEARED, change != RESOLVED
        texts = list(PROGRESSION)
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
            change,
            evidence,
            summary,
            images=[previous.images[0], ctx.study.images[0]],
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


# ------------------------------------------------------------------------------------- shared rules
# One definition each, used by the builders above and by the balance fit in cxmind.data.build.

PROGRESSION = ("Newly appeared", "Resolved", "Persistent")
MINOR_VIEW_SHARE = 20  # a view class with under 1/20 of the commonest class's studies is not asked
NEWLY_APPEARED, RESOLVED, PERSISTENT = range(3)


def view_class(view: str | None) -> str | None:
    """``PA``/``AP``/``LATERAL`` of a study's view, or None."""
    return _VIEW_ALIASES.get((view or "").strip().upper())


def single_choice_slot(labels: StudyLabels, texts: frozenset[str] | None = None) -> SingleChoiceSlot | None:
    """Gold candidates and eligible distractors of a study's single-choice question.

    Gold: a positive (uniformly), or "No Finding" on a study the source calls normal. Distractors:
    known-absent findings (never one a positive implies or is related to), and "No Finding" on an
    abnormal study of a source that labels normality — as often a distractor as it is an answer.
    ``texts`` restricts both to a set of mutually unrelated findings (:func:`independent_texts`).
    """
    allowed = (lambda name: True) if texts is None else texts.__contains__
    if labels.normal:
        golds: tuple[str, ...] = (NO_FINDING,)
    else:
        golds = tuple(p for p in labels.positives if allowed(p))
        if not golds:
            return None
    distractors = tuple(n for n in labels.negatives if allowed(n))
    if labels.positives and labels.labels_normality:
        distractors = (*distractors, NO_FINDING)
    return SingleChoiceSlot(golds, distractors)


def independent_texts(frequency: Counter) -> frozenset[str]:
    """The single-choice option texts of a source: no two related by the hierarchy or RELATED.

    Options that imply or overlap each other leak the answer without the image: if Edema were gold,
    Lung Opacity could not be a wrong option, so offering both says Edema is not the answer. Findings
    are taken greedily by how often they are positive, so the common ones stay.

    >>> sorted(independent_texts(Counter({"Edema": 5, "Lung Opacity": 3, "Pneumothorax": 1})))
    ['Edema', 'No Finding', 'Pneumothorax']
    """
    chosen: list[str] = []
    for name in sorted(frequency, key=lambda n: (-frequency[n], n)):
        near = not_absent([name])
        if not any(name in not_absent([c]) or c in near for c in chosen):
            chosen.append(name)
    return frozenset([*chosen, NO_FINDING])


def progression_pool(previous: Study, current: Study) -> list[tuple[str, int]]:
    """(finding, change) pairs a progression question may ask: findings *explicitly* labelled in
    both studies (no blank read as negative) and present in at least one of them."""

    def explicit(study: Study) -> tuple[set[str], set[str]]:
        labels = study_labels(study)
        return set(labels.positives), set(labels.negatives) - set(study.assumed_negatives)

    before_pos, before_neg = explicit(previous)
    after_pos, after_neg = explicit(current)
    pool = []
    for finding in sorted((before_pos | before_neg) & (after_pos | after_neg)):
        before, after = finding in before_pos, finding in after_pos
        if before or after:
            change = PERSISTENT if before and after else NEWLY_APPEARED if after else RESOLVED
            pool.append((finding, change))
    return pool


def labels_differ(a: StudyLabels, b: StudyLabels) -> bool:
    """Whether two studies' labels describe different findings (so one's report mismatches the other)."""
    return (set(a.positives), a.normal) != (set(b.positives), b.normal)


def _settled(ctx: _Context) -> bool:
    """Whether the labels decide every finding the source labels (so a full list can be asked for)."""
    space = set(ctx.study.label_space) - {NO_FINDING}
    return space <= set(ctx.labels.labelled)


def fit_answer_balance(
    studies: Iterable[tuple[Study, Study | None]], config: TaskConfig
) -> AnswerBalance | None:
    """The balanced question plan of one source's studies (each with its patient's previous study).

    ``None`` with ``balance="none"``. Each study draws the question it would ask with its own
    deterministic generator; :mod:`cxmind.data.balance` then keeps an answer-balanced subset.
    """
    if config.balance == "none":
        return None
    binary, views, progression = [], [], []
    positive_counts: Counter = Counter()
    slot_labels: list[tuple[str, StudyLabels]] = []
    for study, previous in studies:
        rng = random.Random(f"{config.seed}\x1fplan\x1f{study.source}\x1f{study.study_id}")
        labels = study_labels(study)
        positive_counts.update(labels.positives)
        if labels.labelled:
            finding = rng.choice(labels.labelled)
            binary.append((study.study_id, finding, finding in labels.positives))
        view = view_class(study.view)
        if view is not None:
            views.append((study.study_id, "view", view))
        pool = progression_pool(previous, study) if previous is not None and previous.images else []
        if pool and study.images:
            finding, change = rng.choice(pool)
            progression.append((study.study_id, finding, change))
        slot_labels.append((study.study_id, labels))
    texts = independent_texts(positive_counts)
    slots = [(sid, slot) for sid, labels in slot_labels if (slot := single_choice_slot(labels, texts))]
    kept_binary = equal_answers(binary, config.seed)
    kept_progression = equal_answers(progression, config.seed)
    view_counts = Counter(view for _, _, view in views)
    # a view class a source barely has (CheXpert studies rarely lead with a lateral) would thin every
    # other class down to its count: leave it out, so it is neither an answer nor an option
    most = max(view_counts.values(), default=0)
    common = {v for v, n in view_counts.items() if n * MINOR_VIEW_SHARE >= most}
    views = [item for item in views if item[2] in common]
    kept_views = equal_answers(views, config.seed)
    return AnswerBalance(
        binary={sid: finding for sid, finding, _ in binary if sid in kept_binary},
        views=tuple(v for v in VIEWS if v in common) if len(common) > 1 else (),
        view_studies=kept_views,
        progression={sid: (f, change) for sid, f, change in progression if sid in kept_progression},
        single_choice=assign_single_choice(slots, config.choices, config.seed),
    )
