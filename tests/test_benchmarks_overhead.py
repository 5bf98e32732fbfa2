"""benchmarks/trainer_overhead.py runs end to end in --quick mode and ends with its one-line result."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_overhead.py"


def test_trainer_overhead_quick(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"overhead: \d+\.\d{3}", lines[-1]), lines[-5:]
    assert float(lines[-1].split()[1]) > 0
    assert any(line.startswith("plain step (wall): ") and "n 2" in line for line in lines)
    assert any(line.startswith("ours  step (wall): ") and "n 2" in line for line in lines)
