#!/usr/bin/env bash
# Issue 19's Llama-2-7B QLoRA figure, measured by `peft train --device cuda` itself (no harness): a random
# Llama-2-7B-shaped model folder (`peft init`: fp32 safetensors, 27 GB, drawn on every core), then LoRA r 64
# (alpha 16) on every linear at 1 x 2048 tokens for a few steps, on the nf4 base (--quantize nf4, double
# quantization on) and on the bf16 base, both with --recompute layer. Prints each run's tokens/s (the
# median over the steps after the first two) and peak GPU memory (train_log.jsonl's tokens_per_s and
# gpu_peak_bytes: every byte the CUDA backend allocated), peft estimate's figure next to it, and the ratio.
# The issue's bars: nf4 peak <= 10 GiB, nf4 tokens/s >= 0.75 x the bf16 base's.
#   bash bench/gpu/qlora_7b.sh [PEFT (.carry/gpu/peft)] [WORK_DIR (/tmp/qlora7b)]
# Environment: STEPS (8), RECOMPUTE (layer; mlp, or none for the default path); SHAPE (peft init's size
# options) and DEVICE (cuda) to try the script on a small model. The model folder is kept in WORK_DIR and
# reused by a second run.
set -euo pipefail
PEFT=${1:-.carry/gpu/peft}
W=${2:-/tmp/qlora7b}
STEPS=${STEPS:-8}
RC=${RECOMPUTE:-layer}
SHAPE=${SHAPE:---layers 32 --hidden 4096 --heads 32 --inner 11008 --context 4096 --vocab 32000}
DEVICE=${DEVICE:-cuda}
RC_ARGS=()
[ "$RC" = none ] || RC_ARGS=(--recompute "$RC")
TARGETS=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
mkdir -p "$W"
t0=$(date +%s)
if [ ! -f "$W/model/model.safetensors" ]; then
    # shellcheck disable=SC2086
    "$PEFT" init --arch llama $SHAPE --out "$W/model"
    echo "# model folder: $(( $(date +%s) - t0 )) s"
fi
# 16 blocks of 2048 byte-level tokens (one a byte; the stream is bos? + text + eos, cut into --seq-len blocks).
python3 -c "import random; random.seed(1); print(''.join(random.choice('abcdefghij klmnopqrst uvwxyz.,') for _ in range(2048 * 16 - 2)), end='')" > "$W/data.txt"

run() {  # NAME [peft train options...]: one run, then its summary line
    local name=$1 out="$W/run-$1"
    shift
    rm -rf "$out"
    local t1
    t1=$(date +%s)
    "$PEFT" train --model "$W/model" --data "$W/data.txt" --out "$out" --device "$DEVICE" "${RC_ARGS[@]}" --method lora --r 64 --alpha 16 \
        --targets "$TARGETS" --batch 1 --seq-len 2048 --steps "$STEPS" --lr 1e-4 --log-every 1 --no-cache "$@" 2> "$W/$name.log" ||
        { tail -n 20 "$W/$name.log"; exit 1; }
    python3 - "$out/train_log.jsonl" "$name" "$(( $(date +%s) - t1 ))" <<'EOF' | tee -a "$W/summary.txt"
import json, statistics, sys
steps = [j for j in map(json.loads, open(sys.argv[1])) if "tokens_per_s" in j]
tok = statistics.median(j["tokens_per_s"] for j in steps[2:] or steps)
peak = max(j.get("gpu_peak_bytes", 0) for j in steps) / 2**30
print(f"{sys.argv[2]}: {tok:.0f} tok/s, peak {peak:.2f} GiB, {len(steps)} steps of {steps[-1]['tokens']:.0f} tokens, loss {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}; run {sys.argv[3]} s")
EOF
}
estimate() {  # [--quantize nf4]: peft estimate's GPU total in GiB
    "$PEFT" estimate --model "$W/model" --method lora --r 64 --targets "$TARGETS" --batch 1 --context 2048 --recompute "$RC" --json "$@" |
        python3 -c "import json, sys; print(f\"{json.load(sys.stdin)['memory']['gpu_bf16']['method']['total'] / 2**30:.2f}\")"
}
rm -f "$W/summary.txt"
echo "# $("$PEFT" --version); recompute $RC; peft estimate: nf4 $(estimate --quantize nf4) GiB, bf16 $(estimate) GiB"
run nf4 --quantize nf4
run bf16
python3 - "$W/summary.txt" <<'EOF'
import re, sys
tok = {l.split(":")[0]: float(re.search(r": (\d+) tok/s", l).group(1)) for l in open(sys.argv[1])}
print(f"nf4 / bf16 tokens/s: {tok['nf4'] / tok['bf16']:.2f}x")
EOF
echo "# total $(( $(date +%s) - t0 )) s"
