"""``cxmind data audit``: blind shortcuts are found, balanced sets pass, contradictions and leaks counted.

Record sets are written directly as parquet (fast, and independent of the task builders); one test
audits the phantom build of ``conftest.phantom_records`` end to end.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxmind.data.audit import (
    AUDIT_FILE,
    add_parser,
    audit,
    audit_markdown,
    record_contradictions,
    run,
    violations,
    wilson,
)
from cxmind.data.schema import RECORD_FIELDS, TASKS
from cxmind.format import render, render_closed, render_open

LETTERS = "ABCDEFGH"
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None  # the bag-of-words baseline needs it
FINDINGS = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Nodule", "Edema"]


# ---------------------------------------------------------------------------------------------
# Building record sets
# ---------------------------------------------------------------------------------------------


def _schema() -> pa.Schema:
    types = {name: pa.string() for name in RECORD_FIELDS}
    types["images"] = types["options"] = pa.list_(pa.string())
    return pa.schema([(name, types[name]) for name in RECORD_FIELDS])


def write_set(out: Path, rows: list[dict], image_root: Path | None = None, empty=()) -> Path:
    """A record set folder: one parquet shard per split, the metadata file and a card."""
    (out / "data").mkdir(parents=True)
    by_split: dict[str, list[dict]] = {s: [] for s in empty}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    for split, items in by_split.items():
        columns = {name: [row.get(name) for row in items] for name in RECORD_FIELDS}
        pq.write_table(pa.table(columns, schema=_schema()), out / "data" / f"{split}-00000.parquet")
    root = str(image_root or out)
    meta = {"image_roots": {s: root for s in {r["source"] for r in rows} | {"s"}}}
    (out / "cxmind_data.json").write_text(json.dumps(meta))
    (out / "README.md").write_text("# records\n")
    return out


def closed(
    rid: str,
    split: str,
    question: str,
    texts: list[str],
    gold: int,
    *,
    task: str = "disease_single_choice",
    source: str = "s",
    images: list[str] | None = None,
) -> dict:
    """A closed record with a consistent gold trace (one round per option, then the answer)."""
    options = [f"{LETTERS[i]}) {t}" for i, t in enumerate(texts)]
    judgements = [(LETTERS[i], f"Option {LETTERS[i]}.", i == gold) for i in range(len(texts))]
    return {
        "id": rid,
        "images": images if images is not None else [f"{rid}.png"],
        "task_type": "closed",
        "task": task,
        "question": question + "\n" + "\n".join(options),
        "options": options,
        "answer": LETTERS[gold],
        "solution": render_closed(judgements, "Summary.", LETTERS[gold]),
        "source": source,
        "patient_id": rid,
        "study_id": rid,
        "split": split,
    }


def report(rid: str, split: str, text: str, task: str = "report_findings") -> dict:
    return {
        "id": rid,
        "images": [f"{rid}.png"],
        "task_type": "report",
        "task": task,
        "question": "Write the findings section of the radiology report for this chest X-ray.",
        "options": None,
        "answer": text,
        "solution": None,
        "source": "s",
        "patient_id": rid,
        "study_id": rid,
        "split": split,
    }


def single_choice(rng: random.Random, rid: str, split: str, source: str, shortcut: bool) -> dict:
    """Which finding is present? With ``shortcut``, "No Finding" is offered only when it is the answer
    (as a builder that draws distractors from the labelled negatives does); else it is always offered."""
    if shortcut:
        if rng.random() < 0.3:
            texts = ["No Finding", *rng.sample(FINDINGS, 3)]
            gold_text = "No Finding"
        else:
            texts = rng.sample(FINDINGS, 4)
            gold_text = rng.choice(texts)
    else:
        texts = ["No Finding", *rng.sample(FINDINGS, 3)]
        gold_text = rng.choice(texts)
    rng.shuffle(texts)
    question = "Which finding is present on this chest X-ray?"
    return closed(rid, split, question, texts, texts.index(gold_text), source=source)


def binary(rng: random.Random, rid: str, split: str) -> dict:
    finding = rng.choice(FINDINGS)
    question = f"Is there {finding.lower()} on this chest X-ray?"
    return closed(rid, split, question, ["Yes", "No"], rng.randrange(2), task="disease_binary")


def splits_of(n_train: int, n_test: int) -> list[str]:
    return ["train"] * n_train + ["test"] * n_test


@pytest.fixture(scope="module")
def shortcut_set(tmp_path_factory) -> Path:
    rng = random.Random(0)
    rows = [
        single_choice(rng, f"a/{i}", split, "a", shortcut=True) for i, split in enumerate(splits_of(500, 250))
    ]
    rows += [
        single_choice(rng, f"b/{i}", split, "b", shortcut=False)
        for i, split in enumerate(splits_of(500, 250))
    ]
    return write_set(tmp_path_factory.mktemp("shortcut") / "set", rows)


@pytest.fixture(scope="module")
def balanced_set(tmp_path_factory) -> Path:
    rng = random.Random(1)
    rows = [
        single_choice(rng, f"sc/{i}", split, "s", shortcut=False)
        for i, split in enumerate(splits_of(500, 300))
    ]
    rows += [binary(rng, f"bin/{i}", split) for i, split in enumerate(splits_of(500, 300))]
    rows += [
        report(f"r/{i}", split, f"Study {i}: the lungs are clear and the heart is normal in size.")
        for i, split in enumerate(splits_of(20, 10))
    ]
    return write_set(tmp_path_factory.mktemp("balanced") / "set", rows)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cxmind")
    sub = parser.add_subparsers(dest="command")
    data = sub.add_parser("data").add_subparsers(dest="data_command")
    add_parser(data)
    return run(parser.parse_args(argv))


# ---------------------------------------------------------------------------------------------
# Blind baselines
# ---------------------------------------------------------------------------------------------


def test_wilson_interval():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


def test_no_finding_offered_only_when_gold_is_a_blind_shortcut(shortcut_set, capsys):
    result = audit(shortcut_set, images=False)
    task = result["tasks"]["disease_single_choice"]
    assert task["n"] == 500 and task["n_fit"] == 1000 and task["chance"] == 0.25
    assert task["flagged"]
    rows = {e["source"]: e for e in result["by_source_task"]}
    a, b = rows["a"], rows["b"]
    # "No Finding" is gold whenever offered: the option prior answers 30 % + 70 % x 1/4 without the image
    assert a["best"]["accuracy"] > 0.4 and a["best"]["ci"][0] > 0.25 + 0.05
    assert a["baselines"]["option_prior"]["accuracy"] > 0.4
    if HAS_SKLEARN:
        assert a["baselines"]["bow"]["accuracy"] > 0.4
    assert a["flagged"] and not b["flagged"]
    assert a["answers"]["gold_text"]["No Finding"] > 50
    assert sum(a["answers"]["gold_letter"].values()) == 250
    assert any(v.startswith("a/disease_single_choice: blind baseline") for v in result["violations"])
    assert not any(v.startswith("b/") for v in result["violations"])
    assert "| disease_single_choice | 500 | 1000 | 0.25 |" in audit_markdown(result)
    assert "⚠" in audit_markdown(result) and "Per source:" in audit_markdown(result)

    assert cli(["data", "audit", str(shortcut_set), "--no-images", "--no-progress"]) == 0
    assert cli(["data", "audit", str(shortcut_set), "--no-images", "--no-progress", "--strict"]) == 1
    captured = capsys.readouterr()
    assert "| task | n test |" in captured.out
    assert "cxmind data audit: disease_single_choice: blind baseline" in captured.err
    written = json.loads((shortcut_set / AUDIT_FILE).read_text())
    assert written["tasks"]["disease_single_choice"]["best"] == task["best"]


def test_balanced_record_set_passes_strict(balanced_set, tmp_path, capsys):
    result = audit(balanced_set, images=False)
    for name in ("disease_single_choice", "disease_binary"):
        task = result["tasks"][name]
        assert not task["flagged"], task
        assert task["best"]["accuracy"] < task["chance"] + 0.05
        expected = {"majority", "option_prior", "letter_prior"} | ({"bow"} if HAS_SKLEARN else set())
        assert set(task["baselines"]) == expected
    assert 0.4 < result["tasks"]["disease_binary"]["answers"]["yes_rate"] < 0.6
    assert result["violations"] == [] and result["contradictions"] == {}
    assert result["duplicates"]["report_texts"]["groups"] == 0
    out = tmp_path / "audit.json"
    code = cli(["data", "audit", str(balanced_set), "--strict", "--no-images", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["violations"] == []
    assert "cxmind data audit:" not in capsys.readouterr().err
    # a lower margin alone does not flag: the interval must also clear chance
    assert violations(result, margin=-1.0) == []


def test_a_few_lucky_test_records_do_not_flag(tmp_path):
    rng = random.Random(3)
    rows = [binary(rng, f"t/{i}", "train") for i in range(40)]
    texts = ["Yes", "No"]
    rows += [closed("x/0", "test", "Is there edema on this chest X-ray?", texts, 1, task="disease_binary")]
    result = audit(write_set(tmp_path / "set", rows), images=False)
    task = result["tasks"]["disease_binary"]
    assert task["n"] == 1 and not task["flagged"]  # 1/1 right is no evidence of a shortcut


# ---------------------------------------------------------------------------------------------
# Contradictions
# ---------------------------------------------------------------------------------------------


def _open(rid: str, candidates: list[tuple[str, bool]], answer: str, task: str = "disease_open") -> dict:
    solution = render_open("Observation.", [(n, "Why.", ok) for n, ok in candidates], "Summary.")
    return {
        "id": rid,
        "images": [f"{rid}.png"],
        "task_type": "open",
        "task": task,
        "question": "What findings are present on this chest X-ray?",
        "options": None,
        "answer": answer,
        "solution": solution,
        "source": "s",
        "patient_id": rid,
        "study_id": rid,
        "split": "train",
    }


def test_record_contradictions_closed():
    q = "Which finding is present on this chest X-ray?"
    good = closed("ok", "train", q, ["Edema", "Nodule", "Pneumothorax"], 0)
    assert record_contradictions(good) == []

    wrong_final = dict(good, answer="B")
    assert {"final_vs_gold", "verdict_vs_gold"} <= set(record_contradictions(wrong_final))

    two = dict(
        good, solution=render_closed([("A", "t", True), ("B", "t", True), ("C", "t", False)], "s", "A")
    )
    assert {"accepted_count", "verdict_vs_gold"} <= set(record_contradictions(two))

    skipped = dict(good, solution=render_closed([("A", "t", True), ("B", "t", False)], "s", "A"))
    assert record_contradictions(skipped) == ["options_judged"]

    # gold Edema with "Lung Opacity" offered as a distractor: edema is an opacity, both are true
    overlap = closed("overlap", "train", q, ["Edema", "Lung Opacity", "Nodule"], 0)
    assert record_contradictions(overlap) == ["options_overlap"]
    assert record_contradictions(closed("no", "train", q, ["Lung Opacity", "Edema"], 0)) == []

    outside = dict(good, answer="E")
    assert "gold_not_an_option" in record_contradictions(outside)
    assert record_contradictions(dict(good, solution="no rounds at all")) == ["trace_unparsable"]


def test_record_contradictions_open():
    assert record_contradictions(_open("ok", [("Edema", True), ("Nodule", False)], "Edema")) == []
    assert record_contradictions(_open("nf", [("Edema", False)], "No Finding")) == []
    assert record_contradictions(_open("gold", [("Edema", True), ("Nodule", False)], "Nodule")) == [
        "final_list_vs_gold"
    ]
    # Edema accepted, its parent Lung Opacity rejected
    implied = _open("imp", [("Edema", True), ("Lung Opacity", False)], "Edema")
    assert record_contradictions(implied) == ["rejected_implied"]
    related = _open("rel", [("Pleural Effusion", True), ("Pleural Thickening", False)], "Pleural Effusion")
    assert record_contradictions(related) == ["rejected_related"]

    rounds = [
        ("Observation.", "Differential Diagnoses: [Edema, Nodule]"),
        ("Why.", "Edema ✅"),
        ("Why.", "Edema ✅"),
        ("Summary.", "Edema, Nodule"),
    ]
    twice = _open("twice", [], "Edema")
    twice["solution"] = render(rounds)
    assert set(record_contradictions(twice)) == {
        "candidates_judged",
        "accepted_vs_final",
        "final_list_vs_gold",
    }
    rounds[-1] = ("Summary.", "No Finding, Edema")
    mixed = dict(twice, solution=render(rounds))
    assert "final_mixed" in record_contradictions(mixed)
    report_row = report("r", "train", "Clear lungs.")
    assert record_contradictions(report_row) == []


def test_contradictory_traces_are_counted_per_task(tmp_path):
    rng = random.Random(2)
    rows = [binary(rng, f"ok/{i}", split) for i, split in enumerate(splits_of(20, 10))]
    bad = binary(rng, "bad/0", "test")
    bad["answer"] = "B" if bad["answer"] == "A" else "A"  # labels flipped, trace left as it was
    rows.append(bad)
    rows.append(_open("open/0", [("Edema", True), ("Lung Opacity", False)], "Edema"))
    result = audit(write_set(tmp_path / "set", rows), images=False, max_examples=3)
    assert result["tasks"]["disease_binary"]["contradictions"] == 1
    c = result["contradictions"]["disease_binary"]
    assert c["records"] == 1 and c["by_split"] == {"test": 1}
    assert c["examples"]["final_vs_gold"] == ["bad/0"]
    assert result["contradictions"]["disease_open"]["by_kind"] == {"rejected_implied": 1}
    assert any("disease_binary: 1 records contradict" in v for v in result["violations"])
    assert "| disease_open | 0 | 1 | – | – | – | 1 | 0 |" in audit_markdown(result)


# ---------------------------------------------------------------------------------------------
# Duplicates across splits
# ---------------------------------------------------------------------------------------------


def test_reports_duplicated_across_splits_are_counted(tmp_path):
    text = "The heart is enlarged. There is a small left pleural effusion."
    rows = [
        report("train/1", "train", text),
        report("test/1", "test", "  the HEART is enlarged.\nThere is a small left pleural effusion. "),
        report("train/2", "train", "Normal chest radiograph."),  # boilerplate: too short to count
        report("test/2", "test", "Normal chest radiograph."),
        report("test/3", "test", "No acute cardiopulmonary process is seen on this radiograph today."),
        report("train/3", "train", "Mild cardiomegaly without pulmonary edema; no focal consolidation."),
    ]
    # a matching question in train quotes the report of test/3 (a negative drawn across splits)
    matching = closed(
        "train/itm",
        "train",
        "Does this report describe this chest X-ray?\n"
        "Report: No acute cardiopulmonary process is seen on this radiograph today.",
        ["Yes", "No"],
        1,
        task="image_text_matching",
    )
    rows.append(matching)
    result = audit(write_set(tmp_path / "set", rows), images=False)
    texts = result["duplicates"]["report_texts"]
    assert texts["groups"] == 2 and texts["as_answers"] == 1 and texts["quoted_only"] == 1
    assert texts["records"] == 4
    groups = sorted(sorted(e["ids"]) for e in texts["examples"])
    assert groups == [["test/1", "train/1"], ["test/3", "train/itm"]]
    dup = result["tasks"]["report_findings"]["duplicates"]
    assert dup["records"] == 2 and dup["report_text"] == 2 and dup["image_path"] == 0
    assert "2 report texts appear in more than one split" in result["violations"]
    # no report text is copied into the outputs (some sources' reports are under a data use agreement)
    assert "enlarged" not in json.dumps(result) and "enlarged" not in audit_markdown(result)


def _cxr(seed: int):
    from cxmind.data.phantom import render_phantom

    image, _ = render_phantom(("Cardiomegaly",) if seed % 2 else (), seed=seed, size=192, anatomy_seed=seed)
    return image


def test_identical_and_near_duplicate_images_across_splits(tmp_path):
    pytest.importorskip("imagehash")
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    for seed in range(8):
        _cxr(seed).save(root / f"img{seed}.png")
    # a resized, JPEG-recompressed copy of img3 under another name
    buffer = io.BytesIO()
    _cxr(3).resize((150, 150)).save(buffer, "JPEG", quality=75)
    Image.open(buffer).save(root / "copy_of_img3.jpg", quality=90)

    q = "What is the view position of this chest X-ray?"
    texts = ["PA (posteroanterior)", "AP (anteroposterior)", "Lateral"]

    def row(i: int, split: str, image: str) -> dict:
        return closed(f"{split}/{i}", split, q, texts, i % 2, task="view_position", images=[image])

    rows = [row(i, "train", f"img{i}.png") for i in range(5)]
    rows += [row(5, "test", "img5.png"), row(6, "test", "img6.png"), row(7, "test", "copy_of_img3.jpg")]
    rows += [row(8, "validation", "img7.png"), row(9, "test", "img0.png")]  # img0: the same path again
    result = audit(write_set(tmp_path / "set", rows, image_root=root))
    paths = result["duplicates"]["image_paths"]
    assert paths["images"] == 1 and paths["examples"][0]["image"] == "s:img0.png"
    assert sorted(paths["examples"][0]["ids"]) == ["test/9", "train/0"]
    near = result["duplicates"]["near_images"]
    assert near["status"] == "ok" and near["images_hashed"] == 8 and near["missing"] == 0
    assert near["pairs"] == 1
    (pair,) = near["examples"]
    assert {i["image"] for i in pair["images"]} == {"s:img3.png", "s:copy_of_img3.jpg"}
    assert pair["distance"] <= near["max_distance"]
    dup = result["tasks"]["view_position"]["duplicates"]
    assert dup == {"records": 2, "report_text": 0, "image_path": 1, "image_near": 1}
    assert any("near-duplicate image pairs" in v for v in result["violations"])

    skipped = audit(tmp_path / "set", images=False)["duplicates"]["near_images"]
    assert skipped["status"] == "skipped"


def test_missing_images_are_noted_not_fatal(tmp_path):
    rng = random.Random(4)
    rows = [binary(rng, f"x/{i}", split) for i, split in enumerate(splits_of(6, 3))]
    result = audit(write_set(tmp_path / "set", rows))  # rows name image files that do not exist
    near = result["duplicates"]["near_images"]
    assert near["status"] == "skipped" and near["note"] in result["notes"]


# ---------------------------------------------------------------------------------------------
# Odd record sets
# ---------------------------------------------------------------------------------------------


def test_no_train_split_empty_split_and_missing_options(tmp_path):
    rng = random.Random(5)
    rows = [binary(rng, f"t/{i}", "test") for i in range(6)]
    no_options = closed("t/none", "test", "Is there edema?", ["Yes", "No"], 0, task="disease_binary")
    no_options["options"] = None
    rows.append(no_options)
    out = write_set(tmp_path / "set", rows, empty=("validation",))
    result = audit(out, images=False)
    task = result["tasks"]["disease_binary"]
    assert task["n"] == 7 and task["n_fit"] == 0 and task["best"] is None and not task["flagged"]
    assert task["answers"]["no_options"] == 1
    assert any("no 'train' split" in n for n in result["notes"])
    assert "not fitted" in audit_markdown(result)
    assert result["contradictions"] == {}  # the trace still names its letters: nothing contradicts
    json.dumps(result)

    nothing = audit(out, split="validation", images=False)
    assert nothing["tasks"]["disease_binary"]["n"] == 0
    assert nothing["tasks"]["disease_binary"]["chance"] is None
    with pytest.raises(ValueError, match="split must be one of"):
        audit(out, split="dev")
    with pytest.raises(FileNotFoundError):
        audit(tmp_path)


def test_result_is_plain_json_with_counts(balanced_set):
    result = audit(balanced_set, images=False, max_examples=2)
    assert json.loads(json.dumps(result)) == result
    assert result["format"] == "cxmind-audit/1"
    assert result["splits"] == {"train": 1020, "test": 610}
    assert result["record_counts"]["s"]["report_findings"] == {"train": 20, "test": 10}
    assert result["label_spaces"] is None
    assert set(result["tasks"]) == {"disease_binary", "disease_single_choice", "report_findings"}
    md = audit_markdown(result)
    assert md.startswith("## Audit") and md.count("\n| ") == 4  # header + 3 tasks


# ---------------------------------------------------------------------------------------------
# The phantom build
# ---------------------------------------------------------------------------------------------


def test_phantom_build_has_no_contradictions(phantom_records):
    result = audit(phantom_records, images=True)
    assert set(result["tasks"]) == set(TASKS)
    assert result["contradictions"] == {}, result["contradictions"]
    assert result["duplicates"]["image_paths"]["images"] == 0  # patient-level splits
    near = result["duplicates"]["near_images"]
    assert near.get("pairs", 0) == 0  # different patients' phantoms are never near-identical
    for task in result["tasks"].values():
        if task["task_type"] == "closed" and task["n"]:
            assert 0 < task["chance"] <= 0.5 and task["best"] is not None


def test_without_scikit_learn_the_other_baselines_still_run(shortcut_set, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    result = audit(shortcut_set, images=False)
    task = result["tasks"]["disease_single_choice"]
    assert "bow" not in task["baselines"] and task["flagged"]
    assert any("scikit-learn is not installed" in n for n in result["notes"])
