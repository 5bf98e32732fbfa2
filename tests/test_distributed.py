"""Two CPU processes (torchrun, gloo): same sampler order and gate decisions on every rank."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxmind.rewards import ConditionalGate

pytestmark = pytest.mark.slow


def gate_decisions(batches):
    gate = ConditionalGate()
    return [gate.update(outcomes) for outcomes in batches]


def test_grpo_on_two_processes_agrees_across_ranks(tiny_qwen25_vl_path, phantom_records, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        torchrun,
        "--standalone",  # a free local port for the rendezvous
        "--nproc_per_node",
        "2",
        str(Path(__file__).with_name("distributed_grpo_worker.py")),
        str(out),
        str(phantom_records),
        str(tiny_qwen25_vl_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    # 2 optimizer steps x 4 accumulated micro-batches, 2 micro-batches per generation batch
    gathered = ranks[0]["gathered_outcomes"]
    assert len(gathered) == 4 and all(len(batch) == 8 for batch in gathered)
    # every rank drew the same chunks, in the same order, without outrunning its observations
    assert ranks[0]["sampler"] == ranks[1]["sampler"]
    assert not ranks[0]["sampler"]["warned"]
    assert ranks[1]["gathered_outcomes"] == gathered
    # every rank took the same gate decisions, equal to one process gating the gathered batches ...
    assert ranks[0]["stable"] == ranks[1]["stable"] == gate_decisions(gathered)
    assert False in ranks[0]["stable"]  # ... and at least one batch was unstable
    # the scripted outcomes make a per-rank gate (each rank gating its own half) decide otherwise
    halves = [[batch[4 * r : 4 * r + 4] for batch in gathered] for r in range(2)]
    assert halves[0][0] == [1.0] * 4 and halves[1][0] == [0.0] * 4
    assert any(gate_decisions(half) != ranks[0]["stable"] for half in halves)
    # the ranks held different halves of each chunk (4 prompts x 2 generations over 2 ranks)
    chunks = ranks[0]["sampler"]["chunks"]
    for g, (local0, local1) in enumerate(zip(ranks[0]["local"], ranks[1]["local"], strict=True)):
        assert len(local0) == len(local1) == 4
        assert local0 + local1 == [i for i in chunks[g] for _ in range(2)]
    assert (out / "checkpoint-2" / "cxmind_state.json").is_file()
    assert (out / "model.safetensors").is_file()
