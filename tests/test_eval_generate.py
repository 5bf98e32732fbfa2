"""Generation backends and resumable predictions on the tiny model (HF backend, CPU)."""

import json

import pytest

from cxmind.data.images import ImageBudget
from cxmind.eval.generate import GenerationConfig, HFBackend, generate_predictions, read_predictions

pytestmark = pytest.mark.slow
BUDGET = ImageBudget(min_pixels=56 * 56, max_pixels=112 * 112)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rows = []
    for i in range(5):
        Image.new("RGB", (96, 96), (30 * i, 30 * i, 30 * i)).save(root / f"{i}.png")
        rows.append(
            {
                "id": f"r{i}",
                "task": "disease_binary",
                "task_type": "closed",
                "source": "phantom",
                "split": "test",
                "question": "Is there edema?\nA) Yes\nB) No",
                "options": ["A) Yes", "B) No"],
                "answer": "B",
                "solution": None,
                "images": [f"{i}.png"],
            }
        )
    rows.append({**rows[0], "id": "missing", "images": ["nope.png"]})
    return root, rows


def test_hf_backend_batches_greedily_and_resumes(records, tiny_qwen25_vl_path, tmp_path):
    root, rows = records
    config = GenerationConfig(max_new_tokens=6, batch_size=2, budget=BUDGET)
    backend = HFBackend(str(tiny_qwen25_vl_path), config=config)
    out = tmp_path / "predictions.jsonl"
    first = generate_predictions(
        rows[:3], backend, out, image_root_of=lambda r: root, config=config, progress=False
    )
    assert set(first) == {"r0", "r1", "r2"}

    # an interrupted run leaves a torn line; a rerun drops it and predicts only what is missing
    with open(out, "a") as handle:
        handle.write('{"id": "r3", "predic')
    calls = []
    original = backend.generate
    backend.generate = lambda prompts: calls.append(len(prompts)) or original(prompts)
    done = generate_predictions(
        rows, backend, out, image_root_of=lambda r: root, config=config, progress=False
    )
    assert set(done) == {r["id"] for r in rows}
    assert sum(calls) == 2  # r3, r4; "missing" fails before generation
    assert done["missing"]["error"].startswith("image missing") and done["missing"]["prediction"] == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(rows) and len({line["id"] for line in lines}) == len(rows)
    assert read_predictions(out).keys() == done.keys()
    # greedy decoding is deterministic, batched or not
    single = HFBackend(
        str(tiny_qwen25_vl_path), config=GenerationConfig(max_new_tokens=6, batch_size=1, budget=BUDGET)
    )
    again = generate_predictions(
        rows[:2],
        single,
        tmp_path / "p2.jsonl",
        image_root_of=lambda r: root,
        config=single.config,
        progress=False,
    )
    assert [again[i]["prediction"] for i in ("r0", "r1")] == [done[i]["prediction"] for i in ("r0", "r1")]
    assert all(0 < done[i]["n_tokens"] <= 6 for i in ("r0", "r1"))
