"""`cxmind demo` end to end (at a small scale; CI runs the full demo as its main job)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_trains_all_stages_evaluates_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("CXMIND_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    command = [
        sys.executable,
        "-m",
        "cxmind",
        "demo",
        "--out",
        str(out),
        "--scale",
        "0.02",
        "--eval-limit",
        "8",
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("sft", "grpo_closed", "grpo_open"):
        assert (out / "run" / stage / "cxmind_stage.json").is_file()
        assert f"model {stage}:" in done.stdout
    results = json.loads((out / "run" / "grpo_open" / "eval" / "results.json").read_text())
    assert results["n_records"] == 8 and results["limited"] and "accuracy" in results["metrics"]["overall"]
    assert "| disease_binary" in done.stdout or "disease_binary" in done.stdout
    assert (out / "run" / "grpo_open" / "eval" / "report.html").is_file()
    assert "recipe:" in done.stdout and (out / "recipe.yaml").is_file()
    # a quiet console: no checkpointing FutureWarnings, and one line per log instead of a metrics dict
    assert "checkpointing" not in done.stderr, done.stderr[-3000:]
    assert "{'" not in done.stdout
    for stage in ("sft", "grpo_closed", "grpo_open"):
        assert f"{stage} done step " in done.stdout

    # the written recipe is a real one: `cxmind train` finds every stage finished
    again = subprocess.run(
        [sys.executable, "-m", "cxmind", "train", str(out / "recipe.yaml")], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped (finished earlier)") == 3
