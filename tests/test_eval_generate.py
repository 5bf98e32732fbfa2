"""Generation backends and resumable predictions on the tiny model (HF backend on CPU, vLLM faked)."""

import json

import pytest

from cxmind.data.images import ImageBudget, load_image
from cxmind.data.prompts import prompt_messages
from cxmind.eval.generate import (
    GenerationConfig,
    HFBackend,
    generate_predictions,
    read_predictions,
    record_fingerprint,
)

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
    by_id = {row["id"]: row for row in rows}
    assert all(line["record_sha256"] == record_fingerprint(by_id[line["id"]], root) for line in lines)
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


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module (no GPU here): records the engine's kwargs, returns scripted outputs."""
    import sys
    import types

    state = types.SimpleNamespace(engines=[], outputs=[], calls=[])

    class LLM:
        def __init__(self, **kwargs):
            state.engines.append(kwargs)

        def generate(self, requests, sampling, lora_request=None, use_tqdm=False):
            state.calls.append({"requests": requests, "sampling": sampling, "lora_request": lora_request})
            return [
                types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, token_ids=ids)])
                for text, ids in state.outputs[: len(requests)]
            ]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kwargs: kwargs
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, lora_id, path: {"name": name, "id": lora_id, "path": path}
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return state


def _adapter(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return str(folder)


def test_vllm_engine_is_sized_for_the_adapter_and_the_run(fake_vllm, tiny_qwen25_vl_path, tmp_path):
    from cxmind.eval.generate import VLLMBackend

    model = str(tiny_qwen25_vl_path)
    config = GenerationConfig(max_new_tokens=6, budget=BUDGET)
    r64 = _adapter(tmp_path / "r64", r=64, rank_pattern={"model.layers.0.self_attn.q_proj": 24})
    backend = VLLMBackend(model, r64, config, max_prompt_tokens=500)
    engine = fake_vllm.engines[-1]
    assert engine["max_lora_rank"] == 64 and engine["max_loras"] == 1 and engine["enable_lora"] is True
    assert engine["max_model_len"] == 506  # the longest prompt + max_new_tokens, not the model's 128k
    assert backend.lora == {"name": "adapter", "id": 1, "path": r64}
    # the largest rank of rank_pattern counts; ranks vLLM does not offer round up to one it does
    VLLMBackend(model, _adapter(tmp_path / "rp", r=16, rank_pattern={"q": 96}), config, max_prompt_tokens=1)
    assert fake_vllm.engines[-1]["max_lora_rank"] == 128
    VLLMBackend(model, _adapter(tmp_path / "r24", r=24), config, max_prompt_tokens=1)
    assert fake_vllm.engines[-1]["max_lora_rank"] == 32
    # an explicit cap wins; without an adapter no LoRA settings are passed
    VLLMBackend(model, None, GenerationConfig(max_model_len=4096), max_prompt_tokens=500)
    assert fake_vllm.engines[-1]["max_model_len"] == 4096 and fake_vllm.engines[-1]["enable_lora"] is False
    assert "max_lora_rank" not in fake_vllm.engines[-1]
    with pytest.raises(ValueError, match="max_model_len"):
        VLLMBackend(model, None, config)


def test_vllm_counts_tokens_like_the_hf_backend(fake_vllm, records, tiny_qwen25_vl_path):
    """vLLM's token_ids end with the eos it stopped on; n_tokens must not count it (as HF does not)."""
    from cxmind.eval.generate import VLLMBackend, count_until_stop

    root, rows = records
    config = GenerationConfig(max_new_tokens=6, budget=BUDGET)
    hf = HFBackend(str(tiny_qwen25_vl_path), config=config)
    vllm = VLLMBackend(str(tiny_qwen25_vl_path), config=config, max_prompt_tokens=100)
    assert vllm.stop_ids == hf.stop_ids
    tokenizer = hf.processor.tokenizer
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    fake_vllm.outputs = [
        ("abc", [5, 6, 7, im_end]),  # stopped on end-of-turn
        ("ab", [5, 6, endoftext]),  # stopped on eos
        ("abcdef", [5, 6, 7, 8, 9, 10]),  # hit max_new_tokens
    ]
    prompts = [(prompt_messages(r), [load_image(root, r["images"][0], BUDGET)]) for r in rows[:3]]
    assert [n for _, n in vllm.generate(prompts)] == [3, 2, 6]
    # the same generations as the HF backend sees them (finished rows padded in the batch)
    padded = [[5, 6, 7, im_end, endoftext, endoftext], [5, 6, endoftext, endoftext, endoftext, endoftext]]
    assert [count_until_stop(ids, hf.stop_ids) for ids in padded] == [3, 2]
    (call,) = fake_vllm.calls
    assert call["requests"][0]["multi_modal_data"]["image"].size == prompts[0][1][0].size
    assert call["sampling"]["max_tokens"] == 6 and call["lora_request"] is None
