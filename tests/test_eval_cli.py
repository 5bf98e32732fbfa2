"""`cxmind eval` and `cxmind predict` end to end on the tiny model with phantom records."""

import json

import pytest

from cxmind.cli import main
from cxmind.data.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
PIXELS = ["--min-pixels", str(56 * 56), "--max-pixels", str(112 * 112)]


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_patients=10, seed=1, size=112)
    out = tmp_path_factory.mktemp("records") / "set"
    assert (
        main(["data", "build", "--source", f"phantom={root}", "--out", str(out), "--no-progress", *PIXELS])
        == 0
    )
    return out


def test_eval_writes_results_markdown_and_html_and_resumes(records_dir, tiny_qwen25_vl_path, tmp_path):
    out = tmp_path / "eval"
    args = [
        "eval",
        "--model",
        str(tiny_qwen25_vl_path),
        "--data",
        str(records_dir),
        "--out",
        str(out),
        "--split",
        "train",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "8",
        "--bootstrap",
        "50",
        "--no-progress",
        *PIXELS,
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["model"] == str(tiny_qwen25_vl_path) and results["limited"] is False
    n = results["n_records"]
    predictions = (out / "predictions.jsonl").read_text().splitlines()
    assert n == len(predictions) > 50  # the whole split, no silent cap
    by_task = results["metrics"]["by_task"]
    assert {"disease_binary", "disease_open", "grounding", "report_findings"} <= set(by_task)
    assert "accuracy" in by_task["disease_binary"]
    assert (out / "results.md").read_text().count("|") > 10
    html = (out / "report.html").read_text()
    assert "disease_binary" in html and "data:image" in html
    # a rerun finds every prediction done and generates nothing new
    mtime = (out / "predictions.jsonl").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "predictions.jsonl").read_text().splitlines() == predictions
    assert (out / "predictions.jsonl").stat().st_mtime_ns >= mtime
    manifest = json.loads((out / "manifest.json").read_text())
    assert results["manifest"] == manifest and manifest["generation"]["max_new_tokens"] == 8


def test_eval_refuses_other_settings_until_overwrite(records_dir, tiny_qwen25_vl_path, tmp_path, capsys):
    out = tmp_path / "eval"

    def args(max_new_tokens):
        return [
            "eval",
            "--model",
            str(tiny_qwen25_vl_path),
            "--data",
            str(records_dir),
            "--out",
            str(out),
            "--split",
            "train",
            "--limit",
            "4",
            "--max-new-tokens",
            str(max_new_tokens),
            "--bootstrap",
            "10",
            "--no-progress",
            *PIXELS,
        ]

    assert main(args(4)) == 0
    capsys.readouterr()
    assert main(args(6)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cxmind eval: error: predictions in ")
    assert "(changed: generation.max_new_tokens)" in err and "--overwrite" in err
    assert main([*args(6), "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["generation"]["max_new_tokens"] == 6
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4


def test_eval_refuses_predictions_of_unknown_provenance(records_dir, tiny_qwen25_vl_path, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    row = {"id": "x", "task": "disease_binary", "task_type": "closed", "answer": "A", "prediction": "A"}
    (out / "predictions.jsonl").write_text(json.dumps(row) + "\n")
    args = ["eval", "--model", str(tiny_qwen25_vl_path), "--data", str(records_dir), "--out", str(out)]
    assert main([*args, "--split", "train", "--no-progress", *PIXELS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable manifest.json" in err and "--overwrite" in err


def test_predict_prints_rounds(tiny_qwen25_vl_path, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (100, 120), (90, 90, 90)).save(image)
    code = main(
        [
            "predict",
            "--model",
            str(tiny_qwen25_vl_path),
            "--image",
            str(image),
            "--question",
            "Is there edema?",
            "--task-type",
            "closed",
            "--option",
            "A) Yes",
            "--option",
            "B) No",
            "--max-new-tokens",
            "8",
            *PIXELS,
        ]
    )
    assert code == 0
    assert "tokens)" in capsys.readouterr().out


def test_eval_errors_are_clear(records_dir, tiny_qwen25_vl_path, tmp_path, capsys):
    model = str(tiny_qwen25_vl_path)  # a model that resolves: the model is checked before the records
    code = main(
        ["eval", "--model", model, "--data", str(records_dir), "--out", str(tmp_path), "--split", "nope"]
    )
    assert code == 2 and "no 'nope' split" in capsys.readouterr().err
