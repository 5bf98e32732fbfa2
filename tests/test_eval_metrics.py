"""Evaluation metrics against hand-computed values and the reference implementations (nltk, rouge_score)."""

from __future__ import annotations

import json
import sys
import time
import types
import warnings
from typing import Any

import numpy as np
import pytest

from cxmind.eval import metrics as M
from cxmind.eval.metrics import (
    aggregate,
    bleu_tokens,
    bootstrap_ci,
    box_iou,
    parse_boxes,
    per_finding_recall,
    per_record,
    report_metrics,
    rouge_l,
)
from cxmind.format import render, render_closed, render_open
from cxmind.rewards import score

OPTIONS = ["A) Atelectasis", "B) Edema", "C) Mass"]
CLOSED_GOLD = render_closed(
    [("A", "No collapse.", False), ("B", "Hazy perihilar opacity.", True), ("C", "No mass.", False)],
    "Edema fits best.",
    "B",
)


def closed_row(prediction: str, **extra: Any) -> dict[str, Any]:
    row = {
        "id": "nih/1/disease_single_choice",
        "task": "disease_single_choice",
        "task_type": "closed",
        "source": "nih",
        "answer": "B",
        "solution": CLOSED_GOLD,
        "options": OPTIONS,
        "prediction": prediction,
        "n_tokens": 17,
    }
    return row | extra


def rounds(*pairs: tuple[str, str]) -> str:
    return render(pairs)


# ---------------------------------------------------------------------------------------------
# closed
# ---------------------------------------------------------------------------------------------


def test_closed_correct_prediction_gets_every_metric() -> None:
    m = per_record(closed_row(CLOSED_GOLD))
    expected = score(CLOSED_GOLD, CLOSED_GOLD, "closed", options=OPTIONS)
    assert m == {
        "accuracy": 1.0,
        "process_consistency": 1.0,
        "format": 1.0,
        "rounds": 4.0,
        "reward_format": expected.format,
        "reward_outcome": expected.outcome,
        "reward_think": expected.think,
        "reward_process": expected.process,
        "tokens": 17.0,
    }
    assert (m["reward_outcome"], m["reward_process"]) == (1.0, 0.5)


def test_closed_incorrect_final_letter_scores_zero_even_if_gold_letter_appears() -> None:
    prediction = rounds(("B looks likely, but the answer is C.", "C) ✅"))
    m = per_record(closed_row(prediction))
    assert m["accuracy"] == 0.0
    assert m["process_consistency"] == 0.0  # no option round before the last
    assert m["format"] == 0.0  # one round only
    assert m["rounds"] == 1.0


def test_closed_unparseable_prediction() -> None:
    m = per_record(closed_row("I think it is edema, probably."))
    assert (m["accuracy"], m["format"], m["rounds"], m["reward_outcome"]) == (0.0, 0.0, 0.0, 0.0)


def test_closed_answer_colon_letter_in_a_round_and_as_plain_text() -> None:
    assert per_record(closed_row(rounds(("Edema.", "Answer: B"))))["accuracy"] == 1.0
    plain = per_record(closed_row("Answer: B"))
    assert plain["accuracy"] == 1.0 and plain["rounds"] == 0.0
    assert per_record(closed_row("The answer is (b)."))["accuracy"] == 1.0
    assert per_record(closed_row("B. Edema"))["accuracy"] == 1.0
    # An article is not a label, and a lowercase letter after "answer is" is a word.
    assert per_record(closed_row("A chest film with edema", answer="A"))["accuracy"] == 0.0
    assert per_record(closed_row("The answer is a mass", answer="A"))["accuracy"] == 0.0


def test_closed_letter_outside_the_options_is_no_answer() -> None:
    m = per_record(closed_row(rounds(("x", "A) ❌"), ("y", "E) ✅")), answer="E"))
    assert m["accuracy"] == 0.0  # E is not an option; the gold "E" is unreadable too
    m = per_record(closed_row(rounds(("x", "A) ❌"), ("y", "D) ✅ or B"))))
    assert m["accuracy"] == 1.0  # the first *option* label of the block is B


def test_closed_only_the_final_round_decides() -> None:
    prediction = rounds(("b", "B) ✅"), ("s", "A) ✅"))
    assert per_record(closed_row(prediction))["accuracy"] == 0.0


def test_process_consistency_two_of_three() -> None:
    prediction = rounds(("a", "A) ❌"), ("b", "B) ❌"), ("c", "C) ❌"), ("s", "B) ✅"))
    m = per_record(closed_row(prediction))
    assert m["process_consistency"] == pytest.approx(2 / 3)
    assert m["accuracy"] == 1.0 and m["reward_process"] == 0.0
    # rounds without an option letter or mark: the letterless one is skipped, the markless one disagrees
    prediction = rounds(("a", "no letter ❌"), ("b", "B)"), ("c", "C) ❌"), ("s", "B) ✅"))
    assert per_record(closed_row(prediction))["process_consistency"] == 0.5


def test_closed_options_default_to_solution_letters() -> None:
    m = per_record(closed_row(CLOSED_GOLD, options=None))
    assert m["accuracy"] == 1.0 and m["reward_process"] == 0.5


# ---------------------------------------------------------------------------------------------
# open
# ---------------------------------------------------------------------------------------------


def open_row(prediction: str, answer: str, **extra: Any) -> dict[str, Any]:
    gold_set = [a.strip() for a in answer.split(",")]
    candidates = [(name, f"{name}?", name != "No Finding") for name in gold_set if name != "No Finding"]
    solution = render_open("Looked.", candidates or [("Edema", "no", False)], "Done.")
    row = {
        "id": "mimic/1/disease_open",
        "task": "disease_open",
        "task_type": "open",
        "source": "mimic",
        "answer": answer,
        "solution": solution,
        "options": None,
        "prediction": prediction,
        "n_tokens": 30,
    }
    return row | extra


def final(answer: str) -> str:
    return rounds(("look", "Differential Diagnoses: [x]"), ("s", answer))


@pytest.mark.parametrize(
    ("prediction", "answer", "prf"),
    [
        (final("effusion, Atelectasis"), "Pleural Effusion, Cardiomegaly", (1 / 2, 1 / 2, 1 / 2)),
        (final("effusion, enlarged heart, Mass"), "Pleural Effusion, Cardiomegaly", (2 / 3, 1.0, 0.8)),
        (final("Pleural_Effusion; Cardiomegaly."), "Pleural Effusion, Cardiomegaly", (1.0, 1.0, 1.0)),
        (final("No Finding"), "No Finding", (1.0, 1.0, 1.0)),
        (final("normal"), "No Finding", (1.0, 1.0, 1.0)),
        # An empty final answer is no answer, not "No Finding" (it scored 1 before the integrity fix).
        (rounds(("look", "x"), ("s", "")), "No Finding", (0.0, 0.0, 0.0)),
        (final("No Finding, Edema"), "No Finding", (1 / 2, 1.0, 2 / 3)),
        (final("No Finding"), "Edema", (0.0, 0.0, 0.0)),
        (final("Edema"), "No Finding", (0.0, 0.0, 0.0)),
        ("effusion, oedema", "Pleural Effusion, Edema", (1.0, 1.0, 1.0)),  # no rounds: the whole text
    ],
)
def test_open_set_precision_recall_f1(prediction: str, answer: str, prf: tuple[float, float, float]) -> None:
    m = per_record(open_row(prediction, answer))
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(prf)


def test_open_carries_format_rounds_tokens_and_rewards() -> None:
    row = open_row("", "Edema")
    row["prediction"] = row["solution"]
    m = per_record(row)
    expected = score(row["solution"], row["solution"], "open")
    assert (m["f1"], m["format"], m["rounds"], m["tokens"]) == (1.0, 1.0, 3.0, 30.0)
    assert (m["reward_outcome"], m["reward_think"], m["reward_process"]) == (
        expected.outcome,
        expected.think,
        expected.process,
    )


def test_per_finding_recall() -> None:
    rows = [
        open_row(final("effusion, Edema"), "Pleural Effusion, Edema"),
        open_row(final("Edema"), "Pleural Effusion"),
        open_row(final(""), "No Finding"),
        open_row(final("Mass"), "No Finding"),
        closed_row(CLOSED_GOLD),  # ignored
    ]
    assert per_finding_recall(rows) == {
        "Edema": {"recall": 1.0, "n": 1},
        "No Finding": {"recall": 0.0, "n": 2},  # an empty answer no longer recalls "No Finding"
        "Pleural Effusion": {"recall": 0.5, "n": 2},
    }
    with_ci = per_finding_recall(rows, n_bootstrap=50)
    # one of one recalled: a Wilson interval, no longer the zero-width bootstrap [1, 1]
    assert with_ci["Edema"]["ci"] == pytest.approx([0.20654931437723745, 1.0])
    assert with_ci["Edema"]["ci_method"] == "wilson"


# ---------------------------------------------------------------------------------------------
# grounding
# ---------------------------------------------------------------------------------------------


def grounding_row(prediction: str, boxes: list[list[int]]) -> dict[str, Any]:
    answer = json.dumps([{"bbox_2d": b, "label": "Nodule"} for b in boxes])
    return {
        "id": "vindr/1/grounding",
        "task": "grounding",
        "task_type": "grounding",
        "source": "vindr",
        "answer": answer,
        "solution": None,
        "options": None,
        "prediction": prediction,
        "n_tokens": 12,
    }


def boxes_json(*boxes: list[int]) -> str:
    return json.dumps([{"bbox_2d": b, "label": "Nodule"} for b in boxes])


def test_box_iou_of_known_rectangles() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(4 / 100)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_iou_is_invariant_under_independent_axis_scaling() -> None:
    a, b = (10.0, 20.0, 50.0, 80.0), (30.0, 10.0, 70.0, 60.0)
    sx, sy = 0.37, 2.9
    scale = lambda r: (r[0] * sx, r[1] * sy, r[2] * sx, r[3] * sy)  # noqa: E731
    assert box_iou(scale(a), scale(b)) == pytest.approx(box_iou(a, b), rel=1e-12)


@pytest.mark.parametrize(
    ("prediction", "gold", "iou", "acc"),
    [
        (boxes_json([0, 0, 10, 10]), [[0, 0, 10, 10]], 1.0, 1.0),
        (boxes_json([5, 0, 15, 10]), [[0, 0, 10, 10]], 1 / 3, 0.0),
        ("[0, 0, 10, 5]", [[0, 0, 10, 10]], 0.5, 1.0),  # bare list; IoU exactly 0.5 counts
        ('The nodule is at {"bbox_2d": [0, 0, 10, 10]}.', [[0, 0, 10, 10]], 1.0, 1.0),
        ("<answer>" + boxes_json([10, 10, 0, 0]) + "</answer>", [[0, 0, 10, 10]], 1.0, 1.0),  # reordered
        ("I cannot find it.", [[0, 0, 10, 10]], 0.0, 0.0),
        ('[{"bbox_2d": [0, 0, 10', [[0, 0, 10, 10]], 0.0, 0.0),  # truncated JSON
        ("", [[0, 0, 10, 10]], 0.0, 0.0),
        (boxes_json([0, 0, 10, 10], [20, 20, 30, 25]), [[0, 0, 10, 10], [20, 20, 30, 30]], 0.75, 1.0),
        (boxes_json([0, 0, 10, 10]), [[0, 0, 10, 10], [20, 20, 30, 30]], 0.5, 0.5),
    ],
)
def test_grounding_iou_and_accuracy(prediction: str, gold: list[list[int]], iou: float, acc: float) -> None:
    m = per_record(grounding_row(prediction, gold))
    assert m["iou"] == pytest.approx(iou)
    assert m["acc@0.5"] == pytest.approx(acc)
    assert m["tokens"] == 12.0


def test_grounding_precision_counts_spurious_boxes() -> None:
    m = per_record(grounding_row(boxes_json([0, 0, 10, 10], [50, 50, 60, 60]), [[0, 0, 10, 10]]))
    assert (m["iou"], m["acc@0.5"], m["precision@0.5"], m["pred_boxes"]) == (1.0, 1.0, 0.5, 2.0)
    assert per_record(grounding_row("", [[0, 0, 1, 1]]))["precision@0.5"] == 0.0


def test_parse_boxes_tolerates_junk() -> None:
    assert parse_boxes("[[1, 2, 3, 4], [5, 6, 7, 8]]") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_boxes('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6') == [(1, 2, 3, 4)]
    assert parse_boxes("[true, 1, 2, 3]") == [] and parse_boxes("[1, 2, 3, 4, 5]") == []
    assert parse_boxes("[-1.5, 2e1, 3., .5]") == [(-1.5, 0.5, 3.0, 20.0)]
    assert parse_boxes("[1,2,3,4] then again [1, 2, 3, 4]") == [(1, 2, 3, 4)]  # distinct boxes
    started = time.perf_counter()
    for junk in ("[" * 500_000, "[1" * 300_000, "[1, 2, 3, " * 100_000, "[ " + " " * 500_000):
        assert parse_boxes(junk) == []
    assert time.perf_counter() - started < 2.0
    with pytest.raises(ValueError, match="no gold box"):
        per_record(grounding_row("[0, 0, 1, 1]", []))


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

REPORTS = [
    ("The heart is enlarged. Small left pleural effusion.", "Cardiomegaly. Small left pleural effusion."),
    ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."),
    ("Lungs are clear, no pneumothorax.", "Clear lungs. No pneumothorax or effusion."),
    ("", "Normal chest radiograph."),
    ("Mild pulmonary edema, possible edema worsening.", "Moderate pulmonary edema."),
]


def test_bleu_tokens_lowercase_and_split_punctuation() -> None:
    assert bleu_tokens("No effusion. Heart size normal, lungs clear.") == [
        "no",
        "effusion",
        ".",
        "heart",
        "size",
        "normal",
        ",",
        "lungs",
        "clear",
        ".",
    ]


def nltk_bleu(pairs: list[tuple[str, str]]) -> dict[str, float]:
    from nltk.translate.bleu_score import corpus_bleu

    hyps = [bleu_tokens(p) for p, _ in pairs]
    refs = [[bleu_tokens(r)] for _, r in pairs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: float(corpus_bleu(refs, hyps, weights=w)) for name, w in M.BLEU_WEIGHTS.items()}


@pytest.mark.parametrize("pairs", [REPORTS, REPORTS[:1], REPORTS[1:2], REPORTS[3:4], REPORTS * 3])
def test_bleu_equals_nltk_corpus_bleu(pairs: list[tuple[str, str]]) -> None:
    got = report_metrics([p for p, _ in pairs], [r for _, r in pairs])
    expected = nltk_bleu(pairs)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-300), name


def test_bleu_hand_value() -> None:
    # hyp "a b c d" vs ref "a b c e": p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> BLEU-4 ~ 0; same length, bp = 1.
    got = report_metrics(["a b c d"], ["a b c e"])
    assert got["bleu_1"] == pytest.approx(3 / 4)
    assert got["bleu_2"] == pytest.approx((3 / 4 * 2 / 3) ** 0.5)
    assert got["bleu_3"] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3))
    assert got["bleu_4"] < 1e-70


def test_rouge_l_equals_rouge_score() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    for prediction, reference in REPORTS:
        expected = scorer.score(reference, prediction)["rougeL"].fmeasure
        assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)
        row = {
            "task_type": "report",
            "task": "report_findings",
            "answer": reference,
            "prediction": prediction,
        }
        assert per_record(row) == {"rouge_l": pytest.approx(expected, abs=1e-12)}
    mean = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in REPORTS])
    assert report_metrics([p for p, _ in REPORTS], [r for _, r in REPORTS])["rouge_l"] == pytest.approx(mean)


def test_report_prediction_inside_answer_tags_is_unwrapped() -> None:
    row = {"task_type": "report", "answer": "No effusion.", "prediction": rounds(("t", "No effusion."))}
    assert per_record(row)["rouge_l"] == 1.0


def stub_label_report(text: str) -> dict[str, int]:
    text = text.lower()
    labels: dict[str, int] = {}
    if "cardiomegaly" in text:
        labels["Cardiomegaly"] = 1
    if "effusion" in text:
        labels["pleural effusion"] = 1  # keys are canonicalised
    if "possible edema" in text:
        labels["Edema"] = -1  # uncertain counts as negative
    elif "edema" in text:
        labels["Edema"] = 1
    if "normal" in text:
        labels["No Finding"] = 1
    if "mass" in text:
        labels["Mass"] = 1  # not a CheXpert-14 label: ignored
    if "no pneumothorax" in text:
        labels["Pneumothorax"] = 0
    return labels


@pytest.fixture
def stub_labeler(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("cxmind.eval.labeler")
    module.label_report = stub_label_report  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cxmind.eval.labeler", module)


CE_GENERATED = ["cardiomegaly, mass", "effusion and edema", "possible edema", "no pneumothorax"]
CE_REFERENCE = ["cardiomegaly and effusion", "edema", "normal", "no pneumothorax"]


@pytest.mark.usefixtures("stub_labeler")
def test_clinical_efficacy_micro_and_per_finding() -> None:
    # TP: Cardiomegaly (1), Edema (2). FP: Pleural Effusion (2). FN: Pleural Effusion (1); the missed
    # No Finding (3) is left out of the headline micro average (it counted before: recall 1/2, F1 4/7).
    m = report_metrics(CE_GENERATED, CE_REFERENCE)
    assert m["ce_precision"] == pytest.approx(2 / 3)
    assert m["ce_recall"] == pytest.approx(2 / 3)
    assert m["ce_f1"] == pytest.approx(2 / 3)
    per = m["ce_per_finding"]
    assert per["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n": 1, "n_predicted": 1}
    assert per["Pleural Effusion"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1, "n_predicted": 1}
    assert per["Edema"]["f1"] == 1.0
    assert per["No Finding"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1, "n_predicted": 0}
    assert per["Pneumothorax"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 0, "n_predicted": 0}
    assert "Mass" not in per and len(per) == 14


def test_clinical_efficacy_without_labeler_is_none_with_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cxmind.eval.labeler", None)
    m = report_metrics(CE_GENERATED, CE_REFERENCE)
    assert m["ce_f1"] is None and m["ce_per_finding"] is None
    assert any("clinical efficacy not computed" in note for note in m["notes"])
    assert m["bleu_1"] is not None


def test_bertscore_needs_a_local_scorer(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = report_metrics(["a"], ["a"])
    assert m["bertscore_f1"] is None and any("BERTScore not computed" in n for n in m["notes"])
    m = report_metrics(["a"], ["a"], bertscore_model=str(tmp_path / "missing"))
    assert m["bertscore_f1"] is None and any("not a local model path" in n for n in m["notes"])

    class Scores(list):
        def tolist(self) -> list[float]:
            return list(self)

    calls: list[dict[str, Any]] = []

    def fake_score(cands: list[str], refs: list[str], **kwargs: Any) -> tuple[Scores, Scores, Scores]:
        calls.append(kwargs)
        f1 = Scores(1.0 if c == r else 0.5 for c, r in zip(cands, refs, strict=True))
        return f1, f1, f1

    stub = types.ModuleType("bert_score")
    stub.score = fake_score  # type: ignore[attr-defined]
    stub.utils = types.SimpleNamespace(model2layers={})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bert_score", stub)
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    m = report_metrics(["a", "b"], ["a", "c"], bertscore_model=str(tmp_path))
    assert m["bertscore_f1"] == 0.75
    assert calls[0]["num_layers"] == 6 and calls[0]["model_type"] == str(tmp_path)
    assert any("layer 6" in n for n in m["notes"])


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_is_the_percentile_interval_of_seeded_resamples() -> None:
    values = np.arange(20, dtype=float) ** 1.5
    lo, hi = bootstrap_ci(values, n=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 20, size=(300, 20))
    expected = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    assert (lo, hi) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert bootstrap_ci(values, n=300, seed=7) == (lo, hi)
    assert bootstrap_ci(values, n=300, seed=8) != (lo, hi)
    assert lo <= values.mean() <= hi
    assert type(lo) is float and type(hi) is float
    m_lo, m_hi = bootstrap_ci(values, n=300, statistic=np.median)
    assert m_lo <= np.median(values) <= m_hi


def test_bootstrap_ci_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.random(30) < 0.7, rng.random(3000) < 0.7
    s_lo, s_hi = bootstrap_ci(small.astype(float))
    l_lo, l_hi = bootstrap_ci(large.astype(float))
    assert l_hi - l_lo < (s_hi - s_lo) / 4
    assert l_lo <= large.mean() <= l_hi
    with pytest.raises(ValueError):
        bootstrap_ci([])


@pytest.mark.usefixtures("stub_labeler")
def test_corpus_bootstrap_recomputes_on_each_resample() -> None:
    pairs = REPORTS * 2
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    corpus = M._ReportCorpus(preds, refs, [])
    got = corpus.metrics(np.arange(len(pairs)), n_bootstrap=40, seed=3)
    idx = np.random.default_rng(3).integers(0, len(pairs), size=(40, len(pairs)))
    replicates = [nltk_bleu([pairs[i] for i in row])["bleu_2"] for row in idx]
    assert got["bleu_2"]["ci"] == pytest.approx(list(np.percentile(replicates, [2.5, 97.5])), rel=1e-9)
    assert got["bleu_2"]["value"] == pytest.approx(nltk_bleu(pairs)["bleu_2"])
    assert got["bleu_2"]["n"] == len(pairs)
    for name in ("bleu_1", "ce_f1"):
        lo, hi = got[name]["ci"]
        assert lo <= got[name]["value"] <= hi


# ---------------------------------------------------------------------------------------------
# aggregate
# ---------------------------------------------------------------------------------------------


def assert_plain_json(value: Any, path: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, path
            assert_plain_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_plain_json(item, f"{path}[{i}]")
    else:
        assert type(value) in (str, int, float, bool, type(None)), (path, type(value))


def mixed_rows() -> list[dict[str, Any]]:
    wrong = rounds(("a", "A) ✅"), ("b", "B) ❌"), ("c", "C) ❌"), ("s", "A) ✅"))
    rows = [
        closed_row(CLOSED_GOLD, id="c1"),
        closed_row(wrong, id="c2"),
        closed_row("Answer: B", id="c3", source="chexpert"),
        open_row(final("effusion"), "Pleural Effusion, Edema", id="o1"),
        open_row(final("No Finding"), "No Finding", id="o2"),
        grounding_row(boxes_json([0, 0, 10, 10]), [[0, 0, 10, 10]]) | {"id": "g1"},
        grounding_row("none", [[0, 0, 10, 10]]) | {"id": "g2"},
    ]
    for k, (prediction, reference) in enumerate(REPORTS):
        rows.append(
            {
                "id": f"r{k}",
                "task": "report_findings" if k % 2 else "report_impression",
                "task_type": "report",
                "source": "mimic",
                "answer": reference,
                "solution": None,
                "options": None,
                "prediction": prediction,
                "n_tokens": 20 + k,
            }
        )
    return rows


@pytest.mark.usefixtures("stub_labeler")
def test_aggregate_structure_values_and_json() -> None:
    rows = mixed_rows()
    result = aggregate(rows, n_bootstrap=100, seed=0)
    assert set(result) == {
        "overall",
        "by_type",
        "by_task",
        "by_source",
        "n_records",
        "baselines",
        "per_finding_recall",
        "ce_per_finding",
        "notes",
    }
    assert_plain_json(result)
    json.dumps(result, allow_nan=False)

    closed = result["by_task"]["disease_single_choice"]
    assert closed["accuracy"]["value"] == pytest.approx(2 / 3) and closed["accuracy"]["n"] == 3
    lo, hi = closed["accuracy"]["ci"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0
    assert closed["process_consistency"]["value"] == pytest.approx((1 + 1 / 3 + 0) / 3)

    overall = result["overall"]
    assert overall["accuracy"]["n"] == 3  # closed records only
    assert overall["format"]["n"] == 5  # closed and open
    assert overall["tokens"]["n"] == len(rows)
    assert overall["f1"]["value"] == pytest.approx((2 / 3 + 1) / 2)
    assert overall["iou"]["value"] == 0.5 and overall["acc@0.5"]["n"] == 2
    assert overall["rouge_l"]["n"] == len(REPORTS)
    preds, refs = [p for p, _ in REPORTS], [r for _, r in REPORTS]
    pooled = report_metrics(preds, refs)
    for name in ("bleu_1", "bleu_4", "ce_f1", "ce_precision"):
        assert overall[name]["value"] == pytest.approx(pooled[name]), name
    impression = result["by_task"]["report_impression"]
    assert impression["bleu_1"]["n"] == 3
    assert impression["bleu_1"]["value"] == pytest.approx(report_metrics(preds[::2], refs[::2])["bleu_1"])
    assert "accuracy" not in impression

    assert set(result["by_source"]) == {"chexpert", "mimic", "nih", "vindr"}
    assert set(result["by_source"]["chexpert"]) == {"disease_single_choice"}  # empty groups omitted
    assert result["by_source"]["chexpert"]["disease_single_choice"]["accuracy"]["value"] == 1.0
    assert result["by_source"]["nih"]["disease_single_choice"]["accuracy"]["n"] == 2

    recall = result["per_finding_recall"]
    assert recall["overall"]["Pleural Effusion"]["recall"] == 1.0
    assert recall["overall"]["Edema"]["recall"] == 0.0
    assert set(recall["by_task"]) == {"disease_open"}
    assert result["ce_per_finding"]["overall"]["Cardiomegaly"]["n"] == 1
    assert set(result["ce_per_finding"]["by_task"]) == {"report_findings", "report_impression"}

    notes = " | ".join(result["notes"])
    assert "closed: 1 of 3 predictions have no complete" in notes
    assert "grounding: 1 of 2 predictions contain no parseable box" in notes
    assert "100 resamples" in notes

    assert aggregate(rows, n_bootstrap=100, seed=0) == result


def test_aggregate_reuses_per_record_and_handles_no_bootstrap() -> None:
    row = closed_row(CLOSED_GOLD) | {"per_record": {"accuracy": 0.0}}
    result = aggregate([row], n_bootstrap=0)
    assert result["by_task"]["disease_single_choice"] == {"accuracy": {"value": 0.0, "ci": None, "n": 1}}
    assert result["ce_per_finding"] == {} and result["per_finding_recall"]["by_task"] == {}
    assert aggregate([], n_bootstrap=10)["overall"] == {}


def test_unknown_task_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown task_type"):
        per_record({"task_type": "vqa", "task": "x", "prediction": ""})
    assert (
        per_record({"task": "disease_binary", "answer": "A", "options": ["A) y", "B) n"], "prediction": "A"})[
            "accuracy"
        ]
        == 1.0
    )  # task_type inferred from the task table


# ---------------------------------------------------------------------------------------------
# Integrity: empty output, failed rows, final ❌, multi-choice letters, modifiers, CE, baselines, CIs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction",
    ["", "\n\n\n", "   ", rounds(("look", "x"), ("s", "")), rounds(("look", "x"), ("s", "[ ]"))],
    ids=["empty", "newlines", "spaces", "empty-final-round", "empty-list"],
)
def test_empty_open_output_is_an_empty_prediction_not_no_finding(prediction: str) -> None:
    m = per_record(open_row(prediction, "No Finding"))
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert M.final_findings(open_row(prediction, "No Finding")) == []


@pytest.mark.parametrize("said", ["No Finding", "normal", "No findings", "unremarkable"])
def test_only_an_explicit_no_finding_earns_credit(said: str) -> None:
    m = per_record(open_row(final(said), "No Finding"))
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)


def test_a_model_that_emits_only_newlines_scores_zero_open_f1() -> None:
    answers = ["No Finding"] * 6 + ["Cardiomegaly", "Pleural Effusion, Edema"]
    rows = [open_row("\n" * (k + 1), a, id=f"o{k}") for k, a in enumerate(answers)]
    rows.append(open_row(final("zzz"), "No Finding", id="unreadable"))
    result = aggregate(rows, n_bootstrap=0)
    assert result["by_task"]["disease_open"]["f1"]["value"] == 0.0  # 2/3 before: empty read as No Finding
    assert result["per_finding_recall"]["overall"]["No Finding"]["recall"] == 0.0
    assert any("9 of 9 predictions name no known finding" in note for note in result["notes"])


def test_failed_rows_score_as_wrong_whatever_their_text() -> None:
    error = {"error": "image missing: unreadable"}
    assert per_record(closed_row("", **error))["accuracy"] == 0.0
    assert per_record(closed_row(CLOSED_GOLD, **error))["accuracy"] == 0.0  # stale text is not graded
    assert per_record(open_row("", "No Finding", **error))["f1"] == 0.0
    assert per_record(open_row(final("No Finding"), "No Finding", **error))["f1"] == 0.0
    report = {"task_type": "report", "answer": "Clear.", "prediction": "Clear.", **error}
    assert per_record(report)["rouge_l"] == 0.0
    assert M.final_correct(closed_row(CLOSED_GOLD, **error)) is False
    result = aggregate([closed_row("", **error), open_row("", "No Finding", **error)], n_bootstrap=0)
    assert result["overall"]["accuracy"]["value"] == 0.0 and result["overall"]["f1"]["value"] == 0.0
    assert any("2 of 2 rows failed to generate" in note for note in result["notes"])


def test_closed_final_reject_names_no_answer() -> None:
    truncated = rounds(("a", "A) ❌"), ("c", "C) ✅"), ("d", "D) ❌"))
    assert per_record(closed_row(truncated, answer="D"))["accuracy"] == 0.0  # 1 before
    assert M.predicted_letter(truncated, "ABCD") is None
    assert per_record(closed_row("D) ❌", answer="D"))["accuracy"] == 0.0  # plain text too


@pytest.mark.parametrize(
    "answer", ["C）✅", "C✅", "[C] ✅", "**C** ✅", "A large heart; C) ✅", "Answer: C"]
)
def test_closed_final_round_uses_the_v2_letter_reader(answer: str) -> None:
    assert per_record(closed_row(rounds(("a", "A) ❌"), ("s", answer)), answer="C"))["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is B.", "B"),
        ("Answer: (b)", "B"),
        ("C✅", "C"),
        ("C）✅", "C"),
        ("**C**", "C"),
        ("[C] Mass", "C"),
        ("B ✅", "B"),
        ("B. Edema", "B"),
        ("B", "B"),
        ("A chest film with edema", None),
        ("A mass is seen", None),
        ("Atelectasis.", None),
        ("D) ❌", None),
        ("", None),
    ],
)
def test_plain_text_fallback_reads_letters_like_a_round(text: str, letter: str | None) -> None:
    assert M.predicted_letter(text, "ABCD") == letter


MULTI = ["A) Cardiomegaly", "B) Edema", "C) Mass", "D) Pneumothorax"]


@pytest.mark.parametrize(
    ("answer", "prf"),
    [
        ("A, C", (1.0, 1.0, 1.0)),
        ("A) Cardiomegaly, C) Mass", (1.0, 1.0, 1.0)),
        ("(a); (c)", (1.0, 1.0, 1.0)),
        ("Cardiomegaly, C", (1.0, 1.0, 1.0)),
        ("A", (1.0, 0.5, 2 / 3)),
        ("A, B", (0.5, 0.5, 0.5)),
    ],
)
def test_multi_choice_letters_map_through_the_options(answer: str, prf: tuple[float, float, float]) -> None:
    row = open_row(final(answer), "Cardiomegaly, Mass", task="disease_multi_choice", options=MULTI)
    m = per_record(row)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(prf)
    assert m["reward_outcome"] == score(row["prediction"], row["solution"], "open", options=MULTI).outcome
    assert per_finding_recall([row])["Cardiomegaly"]["recall"] == 1.0


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("left pleural effusion, mild cardiomegaly", "Pleural Effusion, Cardiomegaly"),
        ("Atelectasis (left lower lobe)", "Atelectasis"),
        ("small bilateral pleural effusions", "Pleural Effusion"),
    ],
)
def test_findings_with_modifiers_count_as_the_finding(answer: str, gold: str) -> None:
    m = per_record(open_row(final(answer), gold))
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)


def test_open_row_without_a_gold_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty gold list"):
        per_record(open_row(final("Edema"), ""))


def test_round_verdicts_final_correct_and_format_score_are_the_metrics_rules() -> None:
    wrong = rounds(("a", "A) ✅"), ("b", "B) ❌"), ("c", "C) ❌"), ("s", "A) ✅"))
    assert M.round_verdicts(closed_row(wrong)) == [False, False, True, False]
    assert M.round_verdicts(closed_row(CLOSED_GOLD)) == [True, True, True, True]
    assert M.round_verdicts(closed_row(rounds(("a", "no letter ❌"), ("b", "B)")))) == [None, None]
    assert M.final_correct(closed_row(CLOSED_GOLD)) is True and M.final_correct(closed_row(wrong)) is False
    # the row's own per_record grades win, as in aggregate
    assert M.final_correct(closed_row(wrong, per_record={"accuracy": 1.0})) is True
    row = open_row("", "Pleural Effusion, Edema")
    row["prediction"] = row["solution"]
    assert M.final_correct(row) is True and M.round_verdicts(row)[1:3] == [True, True]
    assert M.final_correct({"task_type": "report", "answer": "x", "prediction": "x"}) is None
    assert M.final_correct(grounding_row(boxes_json([0, 0, 10, 10]), [[0, 0, 10, 10]])) is True
    one = rounds(("s", "B) ✅"))
    assert M.format_score(one) == 0.0 and per_record(closed_row(one))["format"] == 0.0
    assert M.format_score(CLOSED_GOLD) == 1.0


def test_chance_accuracy_per_group() -> None:
    rows = [
        closed_row(CLOSED_GOLD, id="c1"),  # 3 options
        closed_row("A", id="c2", task="disease_binary", options=["A) Yes", "B) No"], answer="A"),
    ]
    assert M.chance_accuracy(rows) == pytest.approx((1 / 3 + 1 / 2) / 2)
    base = aggregate(rows, n_bootstrap=0)["baselines"]
    assert base["by_task"]["disease_single_choice"]["accuracy"] == {
        "value": pytest.approx(1 / 3),
        "ci": None,
        "n": 1,
        "kind": "chance",
    }
    assert base["by_task"]["disease_binary"]["accuracy"]["value"] == 0.5
    assert base["by_type"]["closed"]["accuracy"]["value"] == pytest.approx(5 / 12)
    assert base["overall"]["accuracy"]["n"] == 2


def test_open_majority_answer_baseline() -> None:
    rows = [
        open_row(final("Edema"), "No Finding", id="o1"),
        open_row(final("Edema"), "No Finding", id="o2"),
        open_row(final("Edema"), "Edema, Mass", id="o3"),
    ]
    base = aggregate(rows, n_bootstrap=0)["baselines"]["by_task"]["disease_open"]
    assert base["f1"] == {
        "value": pytest.approx(2 / 3),
        "ci": None,
        "n": 3,
        "kind": "majority_answer",
        "answer": "No Finding",
    }
    assert base["precision"]["value"] == pytest.approx(2 / 3)


def test_most_frequent_report_and_baseline_reports() -> None:
    records = [
        {"task": "report_impression", "answer": "No acute disease."},
        {"task": "report_impression", "answer": "  No acute\ndisease. "},
        {"task": "report_impression", "answer": "Cardiomegaly."},
        {"task": "report_findings", "answer": "Clear lungs."},
        {"task": "report_findings", "answer": "Aa."},  # a tie: the alphabetically first wins
        {"task": "disease_open", "answer": "Edema"},
        {"task": "disease_open", "answer": "Edema"},
        {"task": "report_findings", "answer": ""},
    ]
    assert M.most_frequent_report(records) == "No acute disease."
    assert M.baseline_reports(records) == {"report_findings": "Aa.", "report_impression": "No acute disease."}
    assert M.most_frequent_report([{"task": "disease_open", "answer": "Edema"}]) is None


@pytest.mark.usefixtures("stub_labeler")
def test_clinical_efficacy_headline_leaves_out_no_finding() -> None:
    # A constant report that names nothing: the labeler says "No Finding", which matched every normal
    # reference and earned CE F1 > 0 before.
    references = ["normal", "normal", "normal", "cardiomegaly"]
    m = report_metrics(["zzz normal"] * 4, references)
    assert (m["ce_precision"], m["ce_recall"], m["ce_f1"]) == (0.0, 0.0, 0.0)
    assert m["ce_per_finding"]["No Finding"]["f1"] == pytest.approx(6 / 7)  # still reported per finding
    assert tuple(n for n in M.CHEXPERT_14 if n != "No Finding") == M.CE_FINDINGS and len(M.CE_FINDINGS) == 13
    # a blank generated report asserts nothing, not "No Finding"
    assert report_metrics([""], ["normal"])["ce_per_finding"]["No Finding"]["n_predicted"] == 0


@pytest.mark.usefixtures("stub_labeler")
@pytest.mark.parametrize("per_task", [False, True])
def test_constant_report_baseline_equals_the_metrics_of_constant_predictions(per_task: bool) -> None:
    rows = mixed_rows()
    text = "Cardiomegaly and edema."
    given: Any = {"report_findings": text, "report_impression": text} if per_task else text
    result = aggregate(rows, n_bootstrap=50, seed=1, baseline_report=given)
    constant = [r | {"prediction": text} if r["task_type"] == "report" else r for r in rows]
    expected = aggregate(constant, n_bootstrap=50, seed=1)
    names = [*M.BLEU_WEIGHTS, "rouge_l", *M.CE_METRICS]
    for group in ("report_findings", "report_impression"):
        base = result["baselines"]["by_task"][group]
        for name in names:
            assert base[name] == expected["by_task"][group][name] | {"kind": "constant_report"}, (group, name)
    assert (
        result["baselines"]["by_type"]["report"]["ce_f1"]["value"]
        == expected["by_type"]["report"]["ce_f1"]["value"]
    )
    assert result["baselines"]["constant_report"] == {"report_findings": text, "report_impression": text}
    # the model's own numbers are unchanged by asking for a baseline
    plain = aggregate(rows, n_bootstrap=50, seed=1)
    assert result["by_task"] == plain["by_task"] and result["overall"] == plain["overall"]
    assert_plain_json(result)


@pytest.mark.usefixtures("stub_labeler")
def test_report_baseline_for_some_tasks_only_says_so() -> None:
    result = aggregate(mixed_rows(), n_bootstrap=0, baseline_report={"report_findings": "normal"})
    assert "bleu_1" in result["baselines"]["by_task"]["report_findings"]
    assert "bleu_1" not in result["baselines"]["by_task"]["report_impression"]
    assert any("report baseline not computed for report_impression" in n for n in result["notes"])


def test_n_records_and_by_type_count_every_record() -> None:
    rows = mixed_rows()
    result = aggregate(rows, n_bootstrap=0)
    counts = result["n_records"]
    assert counts["overall"] == len(rows) == 12
    assert counts["by_type"] == {"closed": 3, "open": 2, "report": 5, "grounding": 2}
    assert counts["by_task"]["disease_single_choice"] == 3 and counts["by_task"]["report_impression"] == 3
    assert counts["by_source"]["chexpert"] == {"disease_single_choice": 1}
    assert result["by_type"]["closed"]["accuracy"] == result["overall"]["accuracy"]
    assert result["by_type"]["open"]["format"]["n"] == 2


# ---------------------------------------------------------------------------------------------
# Intervals: Wilson for proportions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(3, 3), (0, 10), (5, 10), (81, 263), (1, 1)])
def test_wilson_ci_is_the_score_interval(k: int, n: int) -> None:
    # The Wilson interval holds the p whose score test does not reject: (k/n - p)^2 = z^2 p (1 - p) / n.
    z = 1.959963984540054
    p_hat = k / n
    roots = sorted(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat]).real)
    assert M.wilson_ci(k, n) == (
        pytest.approx(max(0.0, roots[0]), abs=1e-12),
        pytest.approx(roots[1], abs=1e-12),
    )
    assert M.wilson_ci(3, 3)[0] == pytest.approx(3 / (3 + z * z))  # all successes: lo = n / (n + z^2)
    with pytest.raises(ValueError):
        M.wilson_ci(0, 0)


def test_small_all_correct_group_gets_a_non_zero_width_interval() -> None:
    rows = [closed_row(CLOSED_GOLD, id=f"c{k}") for k in range(3)]
    result = aggregate(rows, n_bootstrap=200)
    accuracy = result["by_task"]["disease_single_choice"]["accuracy"]
    assert accuracy["value"] == 1.0 and accuracy["ci_method"] == "wilson"
    assert accuracy["ci"] == [pytest.approx(3 / (3 + 1.959963984540054**2)), 1.0]  # [1, 1] before
    assert result["by_task"]["disease_single_choice"]["format"]["ci_method"] == "wilson"
    assert result["by_task"]["disease_single_choice"]["tokens"]["ci_method"] == "bootstrap"  # a count
    assert "Wilson score interval" in " ".join(result["notes"])


@pytest.mark.usefixtures("stub_labeler")
def test_ci_method_of_every_entry() -> None:
    result = aggregate(mixed_rows(), n_bootstrap=50)
    for group in (result["overall"], *result["by_task"].values()):
        for name, entry in group.items():
            assert entry["ci_method"] in ("wilson", "bootstrap"), name
    report = result["by_task"]["report_findings"]
    assert report["rouge_l"]["ci_method"] == "bootstrap" and report["bleu_1"]["ci_method"] == "bootstrap"
    assert report["ce_f1"]["ci_method"] == "bootstrap"
    open_ = result["by_task"]["disease_open"]
    assert open_["f1"]["ci_method"] == "bootstrap"  # 2/3 and 1: not a proportion
    assert result["by_task"]["grounding"]["acc@0.5"]["ci_method"] == "wilson"


def test_similarity_scores_of_zero_are_not_proportions() -> None:
    rows = [
        {
            "id": f"r{k}",
            "task": "report_findings",
            "task_type": "report",
            "answer": "Clear lungs.",
            "prediction": "",
        }
        for k in range(3)
    ]
    entry = aggregate(rows, n_bootstrap=20)["by_task"]["report_findings"]["rouge_l"]
    assert entry["value"] == 0.0 and entry["ci_method"] == "bootstrap"  # a ROUGE of 0 is not a failure count


# ---------------------------------------------------------------------------------------------
# Clinical efficacy on real reports (IU X-ray, shipped by torchxrayvision)
# ---------------------------------------------------------------------------------------------

_IU_ABSTRACT = r'<AbstractText Label="(?:FINDINGS|IMPRESSION)">(.*?)</AbstractText>'


def _iu_reports() -> list[str]:
    """Whole IU X-ray reports (findings and impression joined), as in tests/test_labeler.py."""
    import re
    import tarfile
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("torchxrayvision")  # located, not imported (its import takes seconds)
    if spec is None or spec.origin is None:
        pytest.skip("torchxrayvision (the IU X-ray report collection) is not installed")
    archive = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"
    reports: list[str] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name.endswith(".xml"):
                xml = tar.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                parts = [t.strip() for t in re.findall(_IU_ABSTRACT, xml, re.S) if t.strip()]
                if parts:
                    reports.append(" ".join(parts))
    return reports


def test_constant_reports_get_no_clinical_efficacy_on_real_reports() -> None:
    reports = _iu_reports()
    assert len(reports) > 3500
    rows = [
        {"id": f"iu/{k}", "task": "report_findings", "task_type": "report", "source": "iu", "answer": r}
        for k, r in enumerate(reports)
    ]
    frequent = M.most_frequent_report(rows)
    assert frequent is not None and "No active disease" in frequent
    result = aggregate([r | {"prediction": "zzz"} for r in rows], n_bootstrap=0, baseline_report=frequent)
    # "zzz" scored CE F1 0.56 when the labeler's "No Finding" counted (most IU studies are normal).
    zzz = result["by_task"]["report_findings"]
    assert zzz["ce_f1"]["value"] == 0.0 and zzz["ce_recall"]["value"] == 0.0
    # The most frequent report, as a constant baseline: some n-gram overlap, still no clinical efficacy.
    base = result["baselines"]["by_task"]["report_findings"]
    assert (
        base["ce_f1"]["value"] < 0.05 and base["rouge_l"]["value"] > 0.15 and base["bleu_1"]["value"] > 0.15
    )
    assert base["ce_f1"]["n"] == len(reports) and base["ce_f1"]["kind"] == "constant_report"
    # ... while copying the reference is perfect, so the metric can still tell reports apart.
    copied = aggregate([r | {"prediction": r["answer"]} for r in rows[:500]], n_bootstrap=0)
    assert copied["by_task"]["report_findings"]["ce_f1"]["value"] == 1.0
