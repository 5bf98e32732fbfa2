"""Check what a `cxmind train` run of scripts/gpu_smoke/tiny.yaml left behind (used by scripts/gpu_smoke.sh).

    python3 scripts/gpu_smoke/check_run.py RUN_DIR --base MODEL_DIR [--vllm] [--skipped STAGE] [--zero 2|3]

For every stage (sft, grpo_closed):

- ``cxmind_stage.json``, the pipeline's "finished" marker, with a finite ``train_loss``;
- a saved model whose tensors are all non-empty (an un-gathered ZeRO-3 save writes 0-element shards) and
  carry the tensor names of the base checkpoint ``MODEL_DIR`` (the tiny model): vLLM's Qwen2.5-VL loader
  maps only those, while transformers also reloads some other spellings;
- GRPO: a checkpoint with ``cxmind_state.json`` (gate + curriculum state) whose log has finite losses
  and rewards.

Options: ``--vllm``: the GRPO log must hold TRL's vLLM importance-sampling metrics, which only vLLM
generation produces. ``--skipped STAGE``: the run dir holds only that stage's ``cxmind_stage.json``
(copied from another run), which the pipeline must have taken as finished: no model may have been
written next to it. ``--zero N``: each stage's last checkpoint must be a DeepSpeed ZeRO-N one (ZeRO-3
names its model states per rank, ``zero_pp_rank_0_mp_rank_00_model_states.pt``; ZeRO-1/2 write
``mp_rank_00_model_states.pt``), so a launch that silently ran without DeepSpeed fails.

Prints one ``RESULT`` line per stage; exits 1 on the first problem.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

STAGES = ("sft", "grpo_closed")
VLLM_METRIC = "sampling/importance_sampling_ratio/mean"  # TRL 1.16: logged only when use_vllm
LOGP_DIFF = "sampling/sampling_logp_difference/mean"


def fail(message: str) -> None:
    print(f"check_run: {message}", file=sys.stderr)
    sys.exit(1)


def tensor_shapes(folder: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        fail(f"{folder}: no *.safetensors (the stage's model was not saved)")
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[key] = handle.get_slice(key).get_shape()
    return shapes


# A tied lm_head may be written out (DeepSpeed's consolidated state dict holds it as its own tensor);
# loaders drop it again when tie_word_embeddings is set.
OPTIONAL_KEYS = {"lm_head.weight"}


def check_model(folder: Path, base: dict[str, list[int]]) -> int:
    shapes = tensor_shapes(folder)
    for key, shape in shapes.items():
        if math.prod(shape) == 0:
            fail(f"{folder}: tensor {key} is empty {shape} (sharded weights saved without gathering?)")
    unknown = sorted(set(shapes) - set(base) - OPTIONAL_KEYS)
    missing = sorted(set(base) - set(shapes))
    if unknown or missing:
        fail(
            f"{folder}: tensor names differ from the base checkpoint's ({len(unknown)} unknown, e.g. "
            f"{unknown[:3]}; {len(missing)} missing, e.g. {missing[:3]}): transformers may still load "
            "them, but vLLM (colocated GRPO, `cxmind eval --backend vllm`) maps only the standard names"
        )
    wrong = sorted(k for k in base if k in shapes and list(shapes[k]) != list(base[k]))
    if wrong:
        fail(f"{folder}: shapes differ from the base checkpoint's for {wrong[:3]}")
    return len(shapes)


def last_checkpoint(folder: Path) -> Path:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        fail(f"{folder}: no checkpoint-* (save_strategy steps, save_steps 2)")
    return checkpoints[-1]


def check_zero(folder: Path, stage: int) -> str:
    last = last_checkpoint(folder)
    tags = sorted(last.glob("global_step*"))
    if not tags:
        fail(f"{last}: no global_step*/ folder: not a DeepSpeed checkpoint (was DeepSpeed used?)")
    names = {p.name for p in tags[-1].iterdir()}
    partitioned = "zero_pp_rank_0_mp_rank_00_model_states.pt" in names
    if not any(n.endswith("zero_pp_rank_0_mp_rank_00_optim_states.pt") for n in names):
        fail(f"{tags[-1]}: no ZeRO optimizer shard among {sorted(names)}")
    if partitioned != (stage == 3):
        kind = "ZeRO-3 (partitioned weights)" if partitioned else "ZeRO-1/2"
        fail(f"{tags[-1]}: a {kind} checkpoint, expected ZeRO-{stage}: {sorted(names)}")
    return f"ZeRO-{stage} checkpoint {last.name}"


def check_grpo_log(folder: Path, vllm: bool) -> str:
    last = last_checkpoint(folder)
    if not (last / "cxmind_state.json").is_file():
        fail(f"{last}: no cxmind_state.json (gate/curriculum state)")
    history = json.loads((last / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    if not steps:
        fail(f"{last}/trainer_state.json: no logged training step")
    for entry in steps:
        for key in ("loss", "reward"):
            value = entry.get(key)
            if value is None or not math.isfinite(value):
                fail(f"{last}/trainer_state.json: step {entry.get('step')}: {key} = {value!r}")
    lengths = [entry["completions/mean_length"] for entry in steps if "completions/mean_length" in entry]
    rewards = [entry["reward"] for entry in steps]
    detail = (
        f"{len(steps)} steps logged, mean completion length {sum(lengths) / max(len(lengths), 1):.0f}, "
        f"mean reward {sum(rewards) / len(rewards):.3g}"
    )
    if vllm:
        if not any(VLLM_METRIC in entry for entry in steps):
            fail(f"{last}/trainer_state.json: no {VLLM_METRIC!r}: the completions were not generated by vLLM")
        # How far vLLM's sampling log-probs are from the trainer's for the same tokens (reported, not judged:
        # bf16 kernels differ; a weight-sync or image-feature mismatch shows as a large value here).
        diffs = [entry[LOGP_DIFF] for entry in steps if LOGP_DIFF in entry]
        if diffs:
            detail += f", vLLM-vs-trainer logp difference {max(diffs):.3g} (largest step mean)"
    return detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="the model the run started from")
    parser.add_argument("--vllm", action="store_true", help="GRPO must have generated with vLLM")
    parser.add_argument("--skipped", action="append", default=[], help="a stage that must have been skipped")
    parser.add_argument("--zero", type=int, choices=(2, 3), help="checkpoints must be DeepSpeed ZeRO-N ones")
    args = parser.parse_args()
    base = tensor_shapes(args.base)
    for stage in STAGES:
        folder = args.run_dir / stage
        done = folder / "cxmind_stage.json"
        if not done.is_file():
            fail(f"{done} is missing: stage {stage} did not finish")
        result = json.loads(done.read_text(encoding="utf-8"))
        if stage in args.skipped:
            if any(folder.glob("*.safetensors")):
                fail(f"{folder}: stage {stage} was trained again instead of skipped")
            print(f"RESULT {stage}: finished earlier, skipped; the next stage started from {result['model']}")
            continue
        if result.get("skipped"):
            fail(f"{done}: stage {stage} says it was skipped, but it should have trained here")
        tensors = check_model(Path(result["model"]), base)
        detail = f"{tensors} tensors saved, names as the base model's"
        if args.zero is not None:
            detail += "; " + check_zero(folder, args.zero)
        if stage.startswith("grpo"):
            detail += "; " + check_grpo_log(folder, args.vllm)
        loss = result.get("metrics", {}).get("train_loss")
        if loss is None or not math.isfinite(loss):
            fail(f"{done}: train_loss = {loss!r}")
        print(f"RESULT {stage}: {detail}; train_loss {loss:.4g}")


if __name__ == "__main__":
    main()
