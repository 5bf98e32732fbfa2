"""Generation checks of scripts/gpu_smoke.sh on the offline tiny Qwen2.5-VL (one CUDA GPU).

    python3 scripts/gpu_smoke/generate.py hf sdpa|flash_attention_2   HF bf16 batched greedy generate
    python3 scripts/gpu_smoke/generate.py vllm                        vLLM bf16 generate (one image prompt)
    python3 scripts/gpu_smoke/generate.py eval-results DIR            DIR/results.json of `cxmind eval`

Each prints what it measured on a ``RESULT ...`` line (the script shows it) and exits non-zero on failure.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _prompt():
    from PIL import Image
    from transformers import AutoProcessor

    from cxmind.format import instructions
    from cxmind.testing import build_tiny_qwen25_vl

    path = build_tiny_qwen25_vl()
    processor = AutoProcessor.from_pretrained(path)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instructions("open")}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.new("RGB", (448, 448), color=(90, 90, 90))
    return path, processor, prompt, image


def hf(impl: str) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cxmind.format import parse

    assert torch.cuda.is_available(), "no CUDA device visible"
    print("torch", torch.__version__, "device", torch.cuda.get_device_name(0))
    path, processor, prompt, image = _prompt()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation=impl
    ).to("cuda")
    inputs = processor(text=[prompt, prompt], images=[image, image], return_tensors="pt", padding=True).to(
        "cuda"
    )
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    torch.cuda.synchronize()
    new = out[:, inputs["input_ids"].shape[1] :]
    assert new.shape[1] > 0 and torch.equal(new[0], new[1]), "batched bf16 generation is not deterministic"
    text = processor.batch_decode(new, skip_special_tokens=True)[0]
    parse(text)  # the parser accepts whatever the random model writes
    print(f"RESULT hf-generate bf16 {impl}: {new.shape[1]} tokens in {time.perf_counter() - start:.2f}s")


def vllm() -> None:
    from vllm import LLM, SamplingParams

    path, _, prompt, image = _prompt()
    llm = LLM(
        model=str(path),
        dtype="bfloat16",
        gpu_memory_utilization=0.2,
        max_model_len=2048,
        limit_mm_per_prompt={"image": 1},
        enforce_eager=True,
        seed=0,
    )
    outs = llm.generate(
        [{"prompt": prompt, "multi_modal_data": {"image": image}}],
        SamplingParams(max_tokens=32, temperature=0.0),
    )
    assert outs[0].outputs[0].token_ids, "vLLM generated nothing"
    print(f"RESULT vllm-generate: {len(outs[0].outputs[0].token_ids)} tokens")


def eval_results(folder: str) -> None:
    results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
    assert results["n_records"] > 50 and results["metrics"]["by_task"], results.keys()
    print(f"RESULT eval: {results['n_records']} records, {len(results['metrics']['by_task'])} tasks")


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["--help"]
    if command == "hf" and len(rest) == 1:
        hf(rest[0])
    elif command == "vllm" and not rest:
        vllm()
    elif command == "eval-results" and len(rest) == 1:
        eval_results(rest[0])
    else:
        sys.exit(__doc__)
