#!/usr/bin/env bash
# GPU smoke check: the paths CPU CI cannot exercise, on the offline tiny model, in a few minutes.
#   bash scripts/gpu_smoke.sh            (needs one CUDA GPU; vLLM / flash-attn parts run when installed)
# Each check prints "ok <name>" or "skip <name>: <why>"; any failure exits non-zero.
# Later stages (vLLM-colocate GRPO, DeepSpeed ZeRO-2/3) are added here as the trainers land.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export CXMIND_CACHE="${CXMIND_CACHE:-$(mktemp -d)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

python3 - <<'PY'
import importlib.util
import time

import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from cxmind.format import instructions, parse
from cxmind.testing import build_tiny_qwen25_vl

assert torch.cuda.is_available(), "no CUDA device visible"
print("torch", torch.__version__, "device", torch.cuda.get_device_name(0))
path = build_tiny_qwen25_vl()
processor = AutoProcessor.from_pretrained(path)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instructions("open")}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
image = Image.new("RGB", (448, 448), color=(90, 90, 90))

attn = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
for impl in attn:
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation=impl
    ).to("cuda")
    inputs = processor(text=[prompt, prompt], images=[image, image], return_tensors="pt", padding=True).to("cuda")
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    torch.cuda.synchronize()
    new = out[:, inputs["input_ids"].shape[1]:]
    assert new.shape[1] > 0 and torch.equal(new[0], new[1]), "batched bf16 generation is not deterministic"
    text = processor.batch_decode(new, skip_special_tokens=True)[0]
    parse(text)  # the parser accepts whatever the random model writes
    print(f"ok hf-generate bf16 {impl}: {new.shape[1]} tokens in {time.perf_counter() - start:.2f}s")
    del model
if "flash_attention_2" not in attn:
    print("skip hf-generate flash_attention_2: flash-attn not installed")

if importlib.util.find_spec("vllm") is None:
    print("skip vllm: vllm not installed")
else:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="bfloat16", gpu_memory_utilization=0.2, max_model_len=2048,
              limit_mm_per_prompt={"image": 1}, enforce_eager=True, seed=0)
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}],
                        SamplingParams(max_tokens=32, temperature=0.0))
    assert outs[0].outputs[0].token_ids, "vLLM generated nothing"
    print(f"ok vllm-generate: {len(outs[0].outputs[0].token_ids)} tokens")
PY

# Evaluation on the GPU: phantom records -> `cxmind eval` (HF backend, bf16; vLLM when installed).
work=$(mktemp -d)
pixels="--min-pixels 3136 --max-pixels 50176"
python3 -m cxmind data phantom "$work/phantom" --patients 12 --size 224
python3 -m cxmind data build --source phantom="$work/phantom" --out "$work/records" --no-progress $pixels
python3 -m cxmind eval --model "$(python3 -c 'from cxmind.testing import build_tiny_qwen25_vl as b; print(b())')" \
    --data "$work/records" --split train --out "$work/eval" --dtype bfloat16 --max-new-tokens 32 \
    --batch-size 16 --bootstrap 100 --no-progress $pixels > "$work/eval.log"
python3 - "$work/eval" <<'PY'
import json, sys
results = json.load(open(f"{sys.argv[1]}/results.json"))
assert results["n_records"] > 50 and results["metrics"]["by_task"], results.keys()
print(f"ok eval hf bf16: {results['n_records']} records, {len(results['metrics']['by_task'])} tasks")
PY
if python3 -c "import vllm" 2>/dev/null; then
    python3 -m cxmind eval --model "$(python3 -c 'from cxmind.testing import build_tiny_qwen25_vl as b; print(b())')" \
        --data "$work/records" --split train --out "$work/eval-vllm" --backend vllm --dtype bfloat16 \
        --max-new-tokens 32 --bootstrap 100 --no-progress $pixels > "$work/eval-vllm.log"
    echo "ok eval vllm"
else
    echo "skip eval vllm: vllm not installed"
fi
echo "gpu smoke: ok"
