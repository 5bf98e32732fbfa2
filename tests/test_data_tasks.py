"""Task builders and gold traces: every task of the taxonomy from a study, each trace passing the filter."""

import json
from dataclasses import replace

import pytest

from cxmind.data.schema import TASKS, Box, Report, Study
from cxmind.data.splits import assign_split, patient_splits
from cxmind.data.tasks import TaskBuilder, TaskConfig, study_labels
from cxmind.data.traces import check_record, finding_evidence, report_sentences
from cxmind.format import option_letter, parse
from cxmind.rewards import score
from cxmind.vocab import CHEXPERT_14, NO_FINDING

SPACE = tuple(n for n in CHEXPERT_14 if n != NO_FINDING)


def study(positives=("Cardiomegaly", "Pleural Effusion"), sid="s2", order=1, **kw):
    negatives = tuple(n for n in SPACE if n not in positives)
    defaults = dict(
        source="nih",
        study_id=sid,
        patient_id="p1",
        images=(f"images/{sid}.png",),
        positives=tuple(positives),
        negatives=negatives,
        view="PA",
        image_size=(1024, 1024),
        boxes=(Box("Cardiomegaly", 300, 400, 700, 800),),
        report=Report(
            findings="The heart is enlarged. There is a small left pleural effusion. No pneumothorax.",
            impression="Cardiomegaly with small effusion.",
            indication="Shortness of breath.",
        ),
        order=order,
        normal=not positives,
        label_space=(*SPACE, NO_FINDING),
    )
    defaults.update(kw)
    return Study(**defaults)


def build_all(s, **kw):
    builder = TaskBuilder(TaskConfig(seed=0))
    normal = study(positives=(), sid="s9", patient_id="p9")
    other = ("p9", Report(findings="Normal heart. Lungs clear."), study_labels(normal))
    return builder.build(s, "train", other_report=other, **kw)


def test_every_task_builds_from_a_rich_study():
    prev = study(positives=("Cardiomegaly",), sid="s1", order=0)
    records, rejects = build_all(study(), previous=prev)
    assert rejects == []
    assert {r.task for r in records} == set(TASKS)
    for record in records:
        assert record.task_type == TASKS[record.task]
        assert record.id == f"nih/s2/{record.task}"
        if record.task_type in ("closed", "open"):
            full = score(record.solution, record.solution, record.task_type, options=record.options)
            assert (full.format, full.outcome) == (1.0, 1.0)
            assert full.process == (0.5 if record.task_type == "closed" else 0.2)
        if record.task_type == "closed":
            assert option_letter(parse(record.solution).rounds[-1].answer) == record.answer
            assert len(record.options) >= 2 and all(o in record.question for o in record.options)


def test_building_is_deterministic_and_seed_dependent():
    a, _ = build_all(study())
    b, _ = build_all(study())
    assert a == b
    other = TaskBuilder(TaskConfig(seed=1)).build(study(), "train")[0]
    assert [r.question + str(r.options) for r in a] != [r.question + str(r.options) for r in other]


def test_single_choice_distractors_are_known_absent_findings():
    # Cardiomegaly implies an enlarged cardiomediastinum (the CheXpert hierarchy): both are present.
    present = ("Cardiomegaly", "Pleural Effusion", "Enlarged Cardiomediastinum")
    for sid in range(30):
        records, _ = TaskBuilder(TaskConfig(seed=0)).build(study(sid=f"s{sid}"), "train")
        (single,) = [r for r in records if r.task == "disease_single_choice"]
        names = [o.split(") ", 1)[1] for o in single.options]
        gold = names["ABCD".index(single.answer)]
        assert gold in present
        assert all(n not in present for n in names if n != gold)


def test_normal_study_answers_no_finding():
    records, _ = build_all(study(positives=(), boxes=()))
    by_task = {r.task: r for r in records}
    assert by_task["disease_open"].answer == NO_FINDING
    assert parse(by_task["disease_open"].solution).rounds[-1].answer == NO_FINDING
    single = by_task["disease_single_choice"]
    assert single.options["ABCD".index(single.answer)].endswith(NO_FINDING)
    assert "grounding" not in by_task


def test_open_lists_every_positive_and_some_distractors():
    records, _ = build_all(study())
    (open_,) = [r for r in records if r.task == "disease_open"]
    differential = parse(open_.solution).rounds[0].answer
    assert "Cardiomegaly" in differential and "Pleural Effusion" in differential
    assert set(open_.answer.split(", ")) == {"Cardiomegaly", "Pleural Effusion", "Enlarged Cardiomediastinum"}
    assert len(parse(open_.solution).rounds) == 2 + 3 + 2  # differential, 3 positives, 2 distractors, final


def test_traces_cite_report_sentences_with_the_right_polarity():
    sentences = report_sentences("The heart is enlarged. No pneumothorax.<think>x</think>")
    assert "<think>" not in " ".join(sentences)
    assert "enlarged" in finding_evidence("Cardiomegaly", True, ["The heart is enlarged (cardiomegaly)."])
    assert (
        finding_evidence("Pneumothorax", False, ["No pneumothorax."])
        == 'the report states: "No pneumothorax."'
    )
    # a sentence of the wrong polarity is not cited
    assert "report" not in finding_evidence("Pneumothorax", True, ["No pneumothorax."])


@pytest.mark.parametrize(
    ("before", "after", "gold"),
    [((), ("Cardiomegaly",), "A"), (("Cardiomegaly",), (), "B"), (("Cardiomegaly",), ("Cardiomegaly",), "C")],
)
def test_progression_between_consecutive_studies(before, after, gold):
    prev = study(positives=before, sid="s1", order=0, boxes=())
    cur = study(positives=after, sid="s2", order=1, boxes=())
    records, _ = TaskBuilder(TaskConfig(tasks=("progression",))).build(cur, "train", previous=prev)
    (record,) = records
    assert record.answer == gold and record.images == ["images/s1.png", "images/s2.png"]


def test_grounding_boxes_are_in_the_resized_frame():
    from cxmind.data.images import ImageBudget, smart_resize

    budget = ImageBudget(min_pixels=56 * 56, max_pixels=448 * 448)
    records, _ = TaskBuilder(TaskConfig(tasks=("grounding",), budget=budget)).build(study(), "train")
    (record,) = records
    h, w = smart_resize(1024, 1024, budget)
    assert (h, w) == (448, 448)
    (item,) = json.loads(record.answer)
    assert item["label"] == "Cardiomegaly"
    assert item["bbox_2d"] == [round(300 * 448 / 1024), round(400 * 448 / 1024), round(700 * 448 / 1024), 350]
    assert "448x448" in record.question


def test_view_position_and_image_text_matching():
    records, _ = build_all(study(view="AP"))
    by_task = {r.task: r for r in records}
    view = by_task["view_position"]
    assert view.options[ord(view.answer) - 65].split(") ", 1)[1].startswith("AP")
    itm = by_task["image_text_matching"]
    assert itm.answer in ("A", "B") and "Report:" in itm.question
    assert by_task["report_summary"].images == []
    assert by_task["report_findings_with_indication"].question.startswith("Indication: Shortness of breath.")


def test_check_record_names_how_a_trace_contradicts_the_labels():
    records, _ = build_all(study())
    by_task = {r.task: r for r in records}
    labels = study_labels(study())
    assert all(check_record(r, labels) is None for r in records)
    single = by_task["disease_single_choice"]
    gold = "ABCD".index(single.answer)
    wrong = "ABCD"[(gold + 1) % 4]
    # the same trace, but a study where the gold finding is absent
    absent = study_labels(study(positives=("Pneumothorax",)))
    assert "gold option" in check_record(single, absent)
    # a rejected positive in an open trace
    open_ = by_task["disease_open"]
    flipped = open_.solution.replace("Cardiomegaly ✅", "Cardiomegaly ❌")
    assert "rejects Cardiomegaly" in check_record(replace(open_, solution=flipped), labels)
    # a closed trace that accepts two options
    two = single.solution.replace(f"{wrong}) ❌", f"{wrong}) ✅")
    assert "accepts" in check_record(replace(single, solution=two), labels)
    # a normality claim on a study the source does not call normal
    rsna = study(positives=(), negatives=("Pneumonia",), normal=False, label_space=("Pneumonia",))
    claim = open_.solution.replace("Summary:", "Summary: the study is normal.")
    assert "normal" in check_record(replace(open_, solution=claim), study_labels(rsna))


def test_builder_rejects_records_whose_trace_fails_the_filter(monkeypatch):
    import cxmind.data.tasks as tasks

    def broken(options, gold_letter, evidence, summary):
        return "<think>only one round</think><answer>A) ✅</answer>"

    monkeypatch.setattr(tasks, "closed_trace", broken)
    records, rejects = TaskBuilder(TaskConfig(tasks=("disease_binary", "disease_open"))).build(
        study(), "train"
    )
    assert [r.task for r in records] == ["disease_open"]
    assert [(r.id, r.reason) for r in rejects] == [("nih/s2/disease_binary", "contradictory trace")]
    assert "malformed trace" in rejects[0].detail


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task"):
        TaskConfig(tasks=("disease_guess",))


def test_splits_are_patient_level_deterministic_and_keep_official_held_out_sets():
    assert assign_split("nih", "p1", seed=3) == assign_split("nih", "p1", seed=3)
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(5000):
        counts[assign_split("nih", str(i))] += 1
    assert 3800 < counts["train"] < 4200 and 350 < counts["validation"] < 650 and 350 < counts["test"] < 650
    splits = patient_splits("x", [("a", None), ("a", "test"), ("b", "train")])
    assert splits["a"] == "test" and splits["b"] in ("train", "validation")
    assert all(assign_split("x", str(i), official="train") != "test" for i in range(500))
    with pytest.raises(ValueError, match="fractions"):
        assign_split("x", "1", fractions=(0.5, 0.5, 0.5))
