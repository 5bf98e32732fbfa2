"""Shared pytest fixtures. The test suite never touches the network: the Hub is forced offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_qwen25_vl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (seed 0), built once per test session into a pytest tmp dir."""
    from cxmind.testing import build_tiny_qwen25_vl

    return build_tiny_qwen25_vl(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=0)


@pytest.fixture(scope="session")
def phantom_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom record set (24 patients, every task, images ≤ 224²), built once per test session."""
    from cxmind.data.build import BuildConfig, SourceSpec, build
    from cxmind.data.images import ImageBudget
    from cxmind.data.phantom import write_phantom_dataset
    from cxmind.data.tasks import TaskConfig

    root = write_phantom_dataset(tmp_path_factory.mktemp("phantom-images"), n_patients=24, seed=0, size=128)
    out = tmp_path_factory.mktemp("phantom-records") / "set"
    task = TaskConfig(budget=ImageBudget(max_pixels=224 * 224), seed=0)
    build(BuildConfig(sources=[SourceSpec("phantom", root)], out=out, task=task), progress=False)
    return out


@pytest.fixture
def assert_train_has_nothing_left():
    """Check that ``cxmind train RECIPE`` reads a written recipe as is and skips all its finished stages."""
    import subprocess
    import sys

    def check(recipe: Path, stages: int) -> None:
        train = subprocess.run(
            [sys.executable, "-m", "cxmind", "train", str(recipe)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert train.returncode == 0, train.stderr[-3000:]
        assert train.stdout.count("skipped (finished earlier)") == stages, train.stdout[-2000:]

    return check
