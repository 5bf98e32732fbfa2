"""benchmarks/efficacy.py runs end to end in --quick mode: three recipes, both branches, four evaluations."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "efficacy.py"
KEYS = (
    "closed_acc",
    "open_f1_sft",
    "open_f1",
    "blank_acc",
    "blank_f1",
    "chance",
    "const_f1",
    "format",
    "pc_curl",
    "pc_outcome",
)
LAST_LINE = re.compile(", ".join(rf"{key}: (\d\.\d{{3}})" for key in KEYS))


def test_efficacy_benchmark_quick(tmp_path, assert_train_has_nothing_left):
    out = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache", str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    match = LAST_LINE.fullmatch(result.stdout.strip().splitlines()[-1])
    assert match, result.stdout[-2000:]
    summary = json.loads((out / "efficacy.json").read_text())
    shown = tuple(map(float, match.groups()))
    assert shown == tuple(round(summary[key], 3) for key in KEYS)
    assert all(0 <= value <= 1 for value in shown)
    assert 0.25 <= summary["chance"] <= 0.5
    assert set(summary["targets"]) == {
        "format >= 0.98",
        "closed_acc >= 0.90",
        "open_f1 >= 0.70",
        "open_f1 >= open_f1_sft + 0.05",
        "blank_acc <= chance + 0.05",
        "blank_f1 <= const_f1 + 0.05",
        "pc_curl >= pc_outcome + 0.05 and open_f1 >= open_f1_outcome",
        "measured part <= 30 min",
    }
    assert all(isinstance(v, bool) for v in summary["targets"].values())
    assert summary["pretraining_seconds"] > 0 and summary["measured_seconds"] > 0
    # the pretrained model was asked the held-out questions in the instruction style it learnt
    assert set(summary["pretraining_check"]) == {"disease_binary", "disease_single_choice", "disease_open"}
    assert all(0 <= value <= 1 for value in summary["pretraining_check"].values())
    # both models were asked whether they read the question (gold-answer likelihood under swaps)
    assert set(summary["reading_check"]) == {"pretrained", "cold_start"}
    for by_task in summary["reading_check"].values():
        assert set(by_task) == {"disease_binary", "disease_single_choice", "disease_open"}
        for figures in by_task.values():
            assert figures["records"] >= 1 and figures["nll"] > 0
            assert all(math.isfinite(figures[k]) for k in ("question_swapped", "image_swapped"))
    # every stage of both branches finished (pretraining in the cache, the rest in the run folder)
    stages = [(s["branch"], s["name"]) for s in summary["stages"]]
    assert stages == [
        ("pretrain", "align"),
        ("pretrain", "instruct"),
        ("curl", "cold_start"),
        ("curl", "grpo_closed"),
        ("curl", "grpo_open"),
        ("outcome", "outcome_grpo_closed"),
        ("outcome", "outcome_grpo_open"),
    ]
    folders = {
        "pretrain": Path(summary["pretraining_dir"]),
        "curl": out / "run",
        "outcome": out / "run-outcome",
    }
    for stage in summary["stages"]:
        assert not stage["reused"] and stage["seconds"] > 0
        assert (folders[stage["branch"]] / stage["name"] / "cxmind_stage.json").is_file()
    # the ablation starts from the main run's cold-start model, with outcome-only rewards and no gate
    ablation = yaml.safe_load((out / "recipe-outcome.yaml").read_text())
    assert Path(ablation["model"]) == out / "run" / "cold_start"
    for stage in ablation["stages"]:
        assert stage["args"]["reward_weights"] == [0.1, 0.9, 0.0, 0.0] and stage["args"]["gate"] is False
    # the evaluations saw the same held-out records, closed and open
    evaluated = {
        name: [json.loads(line)["id"] for line in (out / "eval" / name / "predictions.jsonl").open()]
        for name in ("cold_start", "curl", "outcome", "blank")
    }
    assert evaluated["cold_start"] == evaluated["curl"] == evaluated["outcome"] == evaluated["blank"]
    assert len(evaluated["curl"]) == summary["n_eval"] == summary["n_closed"] + summary["n_open"]
    assert summary["n_closed"] > 0 and summary["n_open"] > 0
    # a second run in the same folders reuses the pretraining and every stage
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = json.loads((out / "efficacy.json").read_text())
    assert all(stage["reused"] for stage in again["stages"]) and again["pretraining_reused"]
    assert again["pretraining_seconds"] == summary["pretraining_seconds"]
    # ... and reports the measured seconds of the run that trained and evaluated, not its own
    measured = [(s["name"], s["seconds"]) for s in summary["stages"] if s["branch"] != "pretrain"]
    assert [(s["name"], s["seconds"]) for s in again["stages"] if s["branch"] != "pretrain"] == measured
    assert again["eval_seconds"] == summary["eval_seconds"] and len(summary["eval_seconds"]) == 4
    assert again["measured_seconds"] >= sum(seconds for _, seconds in measured)
    assert rerun.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
    # `cxmind train` reads the written main recipe as is and finds nothing left to do
    assert_train_has_nothing_left(out / "recipe.yaml", stages=3)
