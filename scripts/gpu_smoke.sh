#!/usr/bin/env bash
# GPU smoke check: the paths CPU CI cannot exercise, on the offline tiny model, in a few minutes.
#   bash scripts/gpu_smoke.sh            (needs one CUDA GPU; vLLM / flash-attn / DeepSpeed parts run when installed)
#
# Checks, in order. Each prints "ok <name> (<seconds>s)" (then its measurements, indented) or
# "skip <name>: <why>"; a failing check prints "FAIL <name>: ..." and the tail of its log, and the run goes on
# to the next check (device time is scarce: one run shows every failure) unless CXMIND_SMOKE_FAIL_FAST=1.
# A summary table closes the run; the exit status is 1 if any check failed (setup failing stops at once).
#   setup                       CUDA visible; tiny Qwen2.5-VL (cxmind.testing); phantom CXRs -> records
#                               (`cxmind data phantom` + `cxmind data build`)
#   hf-generate-sdpa            transformers bf16 batched greedy generate, sdpa
#   hf-generate-flash           the same with flash_attention_2                            (flash-attn)
#   vllm-generate               vLLM bf16 generate with an image                           (vllm)
#   eval-hf / eval-vllm         `cxmind eval` on the phantom records, HF bf16 / vLLM       (eval-vllm: vllm)
#   train-plain                 `python3 -m cxmind train scripts/gpu_smoke/tiny.yaml`: SFT -> GRPO closed, bf16,
#                               sdpa, one process, HF generation
#   train-lora                  the same with a LoRA adapter (peft), merged into <stage>/merged between stages
#   grpo-vllm-colocate          GRPO closed with colocated vLLM generation (use_vllm, vllm_mode colocate),
#                               starting from train-plain's SFT stage                      (vllm)
#   train-zero2 / train-zero3   SFT -> GRPO closed under `accelerate launch --config_file
#                               recipes/accelerate/zero{2,3}.yaml --num_processes 1 -m cxmind train ...` (deepspeed)
# Every training check then runs scripts/gpu_smoke/check_run.py: each stage's cxmind_stage.json; a saved model with
# no empty tensors and the base checkpoint's tensor names (what vLLM loads); a GRPO checkpoint with
# cxmind_state.json and finite losses/rewards; for vLLM, TRL's vLLM-only importance-sampling metrics; for
# DeepSpeed, ZeRO-2/ZeRO-3 checkpoint files (so a launch that silently ran without DeepSpeed fails).
#
# Time (measured 2026-11-28 on one H100, torch 2.11, no vLLM/flash-attn installed, so those checks skipped):
# setup 38s, hf-generate-sdpa 26s, eval-hf 32s, train-plain 51s, train-lora 55s, train-zero2 54s, train-zero3 55s:
# 5.5 minutes.
# Not yet measured: vllm-generate, eval-vllm and grpo-vllm-colocate (estimated ~45s, ~60s, ~90s: vLLM compiles
# and captures CUDA graphs, as TRL does not pass enforce_eager), hf-generate-flash (~15s). Each command runs
# under `timeout` (T_* below), so a hang costs at most that command's limit.
#
# Environment:
#   CXMIND_SMOKE_ONLY="train-zero3 ..."  run only these checks (setup always runs): a re-run within a budget
#   CXMIND_SMOKE_FAIL_FAST=1             stop at the first failing check
#   CXMIND_SMOKE_ZERO3_VLLM=1            train-zero3's GRPO generates with colocated vLLM, as the 7B recipe runs
#                                        (zero3.yaml + colocate: TRL gathers the shards at every weight sync);
#                                        adds ~60s, so it is off by default
#   CXMIND_CACHE                         where the tiny model is built (default: a fresh temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export CXMIND_CACHE="${CXMIND_CACHE:-$(mktemp -d)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# Per-command limits (seconds).
T_SETUP=120 T_GENERATE=120 T_VLLM=240 T_EVAL=180 T_TRAIN=180 T_TRAIN_VLLM=300 T_CHECK=60

work=$(mktemp -d)
logs="$work/logs"
mkdir -p "$logs"
echo "work dir: $work (logs in $logs)"
pixels=(--min-pixels 3136 --max-pixels 50176)  # 56²..224²: the recipe's min_pixels/max_pixels
recipe=scripts/gpu_smoke/tiny.yaml
# = `accelerate launch`, with this python (no need for the console script on PATH)
accelerate_launch=(python3 -m accelerate.commands.launch)
rows="$work/summary"  # one "status|check|time|detail" line per check (a file: checks run in subshells)
: >"$rows"

summary() {
    local status name took detail
    echo
    printf '%-20s %-6s %6s  %s\n' check result time detail
    while IFS='|' read -r status name took detail; do
        printf '%-20s %-6s %6s  %s\n' "$name" "$status" "$took" "$detail"
    done <"$rows"
}

wanted() {  # is check $1 selected by CXMIND_SMOKE_ONLY (all when unset)?
    [[ -z "${CXMIND_SMOKE_ONLY:-}" ]] && return 0
    [[ " ${CXMIND_SMOKE_ONLY//,/ } " == *" $1 "* ]]
}

step() {  # step LIMIT CMD...: one command of check $current under `timeout`, output to its log; exits on failure
    local limit=$1 rc=0 log="$logs/$current.log"
    shift
    echo "+ $*" >>"$log"
    timeout -k 15 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        local why="exit status $rc"
        ((rc == 124 || rc == 137)) && why="timed out after ${limit}s"
        echo "FAIL $current: $why ($((SECONDS - started))s); last lines of $log:" >&2
        tail -n 60 "$log" | sed 's/^/    /' >&2
        echo "FAIL|$current|$((SECONDS - started))s|$why: $*" | cut -c1-160 >>"$rows"
        exit 1  # leaves the check's subshell (or, in setup, the script)
    fi
}

ok() {  # ok [DETAIL]: check $current passed; its RESULT lines follow, indented (DETAIL: their join)
    local took=$((SECONDS - started)) lines
    lines=$(sed -n 's/^RESULT //p' "$logs/$current.log")
    echo "ok $current (${took}s)"
    sed -n 's/^RESULT /    /p' "$logs/$current.log"
    echo "ok|$current|${took}s|${1:-$(paste -sd '/' <<<"$lines")}" >>"$rows"
}

skip() {  # skip NAME WHY
    wanted "$1" || return 0
    echo "skip $1: $2"
    echo "skip|$1|-|$2" >>"$rows"
}

failed=()
check() {  # check NAME FUNCTION: run one check (if selected) in a subshell; a failure is recorded, not fatal
    wanted "$1" || return 0
    current=$1 started=$SECONDS
    if ! ("$2"); then
        failed+=("$1")
        if [[ ${CXMIND_SMOKE_FAIL_FAST:-0} == 1 ]]; then
            summary
            exit 1
        fi
    fi
}

importable() { timeout 120 python3 -c "import $1" >/dev/null 2>&1; }

have_vllm=false have_flash=false have_deepspeed=false
importable vllm && have_vllm=true
importable flash_attn && have_flash=true
importable deepspeed && have_deepspeed=true

# -- setup (not in a subshell: everything depends on it) ---------------------------------------------------
current=setup started=$SECONDS
step "$T_SETUP" python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"'
step "$T_SETUP" python3 -c 'import sys; from cxmind.testing import build_tiny_qwen25_vl as b
open(sys.argv[1], "w").write(str(b()))' "$work/model-path"
model=$(cat "$work/model-path")
step "$T_SETUP" python3 -m cxmind data phantom "$work/phantom" --patients 12 --size 224
step "$T_SETUP" python3 -m cxmind data build --source phantom="$work/phantom" --out "$work/records" \
    --no-progress "${pixels[@]}"
records="$work/records"
ok "model $model"

# -- generation and evaluation -----------------------------------------------------------------------------
hf_generate_sdpa() {
    step "$T_GENERATE" python3 scripts/gpu_smoke/generate.py hf sdpa
    ok
}
hf_generate_flash() {
    step "$T_GENERATE" python3 scripts/gpu_smoke/generate.py hf flash_attention_2
    ok
}
vllm_generate() {
    step "$T_VLLM" python3 scripts/gpu_smoke/generate.py vllm
    ok
}
eval_args=(--model "$model" --data "$records" --split train --dtype bfloat16 --max-new-tokens 32
    --bootstrap 100 --no-progress "${pixels[@]}")
eval_hf() {
    step "$T_EVAL" python3 -m cxmind eval "${eval_args[@]}" --out "$work/eval" --batch-size 16
    step "$T_CHECK" python3 scripts/gpu_smoke/generate.py eval-results "$work/eval"
    ok
}
eval_vllm() {
    step "$T_VLLM" python3 -m cxmind eval "${eval_args[@]}" --out "$work/eval-vllm" --backend vllm
    step "$T_CHECK" python3 scripts/gpu_smoke/generate.py eval-results "$work/eval-vllm"
    ok
}

check hf-generate-sdpa hf_generate_sdpa
if $have_flash; then check hf-generate-flash hf_generate_flash; else skip hf-generate-flash "flash-attn not importable"; fi
if $have_vllm; then check vllm-generate vllm_generate; else skip vllm-generate "vllm not importable"; fi
check eval-hf eval_hf
if $have_vllm; then check eval-vllm eval_vllm; else skip eval-vllm "vllm not importable"; fi

# -- training: scripts/gpu_smoke/tiny.yaml through the real CLI --------------------------------------------
# The recipe's placeholders (model, output_dir, data paths) are set here; see the recipe's header.
train_args=("$recipe" --model "$model"
    --stages.sft.data "{path: $records, task_types: [closed, open]}"
    --stages.grpo_closed.data "{path: $records, task_types: [closed]}")
vllm_args=(--stages.grpo_closed.use_vllm true)  # the recipe's vllm_* keys: colocate, 0.3 of the GPU, 1024 tokens

train_plain() {
    step "$T_TRAIN" python3 -m cxmind train "${train_args[@]}" --output_dir "$work/plain"
    step "$T_CHECK" python3 scripts/gpu_smoke/check_run.py "$work/plain" --base "$model"
    ok "bf16, sdpa, HF generation"
}

lora_args=(--peft "{method: lora, r: 8, lora_alpha: 16, target_modules: all-linear, between_stages: merge}")
train_lora() {
    step "$T_TRAIN" python3 -m cxmind train "${train_args[@]}" --output_dir "$work/lora" "${lora_args[@]}"
    step "$T_CHECK" python3 scripts/gpu_smoke/check_run.py "$work/lora" --base "$model"
    ok "bf16, LoRA r 8 on the language model, merged between stages"
}

grpo_vllm_colocate() {
    # Reuse train-plain's SFT stage: with its cxmind_stage.json (and no model) in <run>/sft the pipeline skips SFT
    # and starts GRPO from the model that file names (plain/sft), which vLLM loads too. Without it: SFT first.
    local skipped=()
    if [[ -f "$work/plain/sft/cxmind_stage.json" ]]; then
        mkdir -p "$work/vllm/sft" && cp "$work/plain/sft/cxmind_stage.json" "$work/vllm/sft/" || exit 1
        skipped=(--skipped sft)
    fi
    step "$T_TRAIN_VLLM" python3 -m cxmind train "${train_args[@]}" --output_dir "$work/vllm" "${vllm_args[@]}"
    step "$T_CHECK" python3 scripts/gpu_smoke/check_run.py "$work/vllm" --base "$model" --vllm "${skipped[@]}"
    ok "vllm colocate, 0.3 of the GPU, sleep mode off"
}

# DeepSpeed: the shipped accelerate configs, unchanged, with what one GPU needs overridden on the command line:
# --num_processes 1 (they say 8), --num_machines 1, --main_process_port 0 (a free port). Their mixed_precision
# (bf16) matches the recipe's bf16: true. Attention as the 3B (ZeRO-2) / 7B (ZeRO-3) recipes: flash-attn 2
# when installed, else sdpa.
attn=sdpa
$have_flash && attn=flash_attention_2
train_zero() {  # train_zero 2|3
    local zero=$1 extra=(--model_init_kwargs.attn_implementation "$attn") generation="HF generation" check_vllm=()
    if [[ $zero == 3 && ${CXMIND_SMOKE_ZERO3_VLLM:-0} == 1 ]] && $have_vllm; then
        extra+=("${vllm_args[@]}")
        generation="vllm colocate"
        check_vllm=(--vllm)
    fi
    step "$T_TRAIN" "${accelerate_launch[@]}" --config_file "recipes/accelerate/zero$zero.yaml" \
        --num_processes 1 --num_machines 1 --main_process_port 0 \
        -m cxmind train "${train_args[@]}" --output_dir "$work/zero$zero" "${extra[@]}"
    step "$T_CHECK" python3 scripts/gpu_smoke/check_run.py "$work/zero$zero" --base "$model" --zero "$zero" \
        "${check_vllm[@]}"
    ok "bf16, $attn, $generation"
}
train_zero2() { train_zero 2; }
train_zero3() { train_zero 3; }

check train-plain train_plain
check train-lora train_lora
if $have_vllm; then check grpo-vllm-colocate grpo_vllm_colocate; else skip grpo-vllm-colocate "vllm not importable"; fi
for zero in zero2 zero3; do
    if $have_deepspeed; then check "train-$zero" "train_$zero"; else skip "train-$zero" "deepspeed not importable"; fi
done

summary
if ((${#failed[@]})); then
    echo "gpu smoke: FAILED (${failed[*]}); logs in $logs"
    exit 1
fi
echo "gpu smoke: ok"
