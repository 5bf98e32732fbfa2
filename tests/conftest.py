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
