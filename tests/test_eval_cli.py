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


def test_eval_errors_are_clear(records_dir, tmp_path, capsys):
    code = main(
        ["eval", "--model", "m", "--data", str(records_dir), "--out", str(tmp_path), "--split", "nope"]
    )
    assert code == 2 and "no 'nope' split" in capsys.readouterr().err
