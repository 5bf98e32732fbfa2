"""benchmarks/learning.py runs end to end in --quick mode: recipe, stages, evaluations, blank control."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxmind.data.records import image_roots, read_meta

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning.py"
LAST_LINE = re.compile(
    ", ".join(rf"{key}: (\d\.\d{{3}})" for key in ("sft_acc", "grpo_acc", "blank_acc", "chance", "format"))
)


def test_learning_benchmark_quick(tmp_path, assert_train_has_nothing_left):
    out = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache", str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    match = LAST_LINE.fullmatch(result.stdout.strip().splitlines()[-1])
    assert match, result.stdout[-2000:]
    summary = json.loads((out / "learning.json").read_text())
    a, b, c, h, f = map(float, match.groups())
    assert (a, b, c, h, f) == tuple(
        round(summary[k], 3) for k in ("sft_acc", "grpo_acc", "blank_acc", "chance", "format")
    )
    assert 0.25 <= h <= 0.5 and all(0 <= v <= 1 for v in (a, b, c, f))
    assert set(summary["targets"]) == {
        "format >= 0.95",
        "sft_acc >= 0.85",
        "grpo_acc >= sft_acc",
        "blank_acc <= chance + 0.10",
    }
    # every stage of the written recipe finished; the evaluations saw the same records
    assert [s["name"] for s in summary["stages"]] == ["align", "sft", "grpo_closed"]
    for stage in summary["stages"]:
        assert not stage["reused"] and stage["seconds"] > 0
        assert (out / "run" / stage["name"] / "cxmind_stage.json").is_file()
    evaluated = {
        name: [json.loads(line)["id"] for line in (out / "eval" / name / "predictions.jsonl").open()]
        for name in ("sft", "grpo_closed", "blank")
    }
    assert evaluated["sft"] == evaluated["grpo_closed"] == evaluated["blank"]
    assert len(evaluated["sft"]) == summary["n_eval"]
    # the blank control's images: same sizes and relative paths as the originals, one grey level
    meta = read_meta(out / "records-blank")
    blank_root = image_roots(out / "records-blank")["phantom"]
    original_root = image_roots(summary["records"])["phantom"]
    shown = sorted(blank_root.rglob("*.png"))
    assert shown
    for path in shown:
        pixels = np.asarray(Image.open(path).convert("L"))
        assert pixels.min() == pixels.max() == meta["blank_grey_level"]
    for path in shown:
        with Image.open(original_root / path.relative_to(blank_root)) as image:
            assert image.size == Image.open(path).size
    # `cxmind train` reads the written recipe as is and finds nothing left to do
    assert_train_has_nothing_left(out / "recipe.yaml", stages=3)
