#!/usr/bin/env bash
# bench/gpu/generate.sh [PEFT_BIN]: generation speed on the GPU, ours (`peft generate --device
# cuda`, bf16, KV cache) against HF transformers (bench/gpu/hf_generate.py) on the same GPU, one
# after the other: GPT-2 124M and a TinyLlama-1.1B-shaped Llama, random weights, 256 new tokens per
# row after a short prompt, batch 1 and 32, greedy and sampled (temperature 0.8, top-k 50, top-p 0.9:
# ours draws on the GPU, HF's generate with do_sample). Prints one markdown table.
# SKIP_HF=1 skips the HF rows; DECODING="greedy" (or "sample") runs one kind only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEFT=${1:-build/peft}
NEW=${NEW:-256}
W=$(mktemp -d /tmp/peft-gen-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
"$PEFT" init --arch gpt2 --layers 12 --hidden 768 --heads 12 --context 1024 --vocab 50257 --out "$W/gpt2-124m" >/dev/null
"$PEFT" init --arch llama --layers 22 --hidden 2048 --heads 32 --kv-heads 4 --inner 5632 --context 2048 --vocab 32000 \
    --out "$W/llama-1.1b" >/dev/null
for i in $(seq 32); do echo "The quick brown fox $i"; done > "$W/p32.txt"
head -1 "$W/p32.txt" > "$W/p1.txt"
SAMPLE=(--temperature 0.8 --top-k 50 --top-p 0.9 --seed 1)
echo "| model | batch | decoding | ours tok/s | HF tok/s | ours / HF |"
echo "| --- | ---: | --- | ---: | ---: | ---: |"
for model in gpt2-124m llama-1.1b; do
    for b in 1 32; do
        for dec in ${DECODING:-greedy sample}; do
            args=()
            [ "$dec" = sample ] && args=("${SAMPLE[@]}")
            # the best of 3 runs (each loads the model; the time counts generation only)
            ours=0
            for r in 1 2 3; do
                t=$("$PEFT" generate --model "$W/$model" --prompts "$W/p$b.txt" --batch "$b" --max-tokens "$NEW" --ignore-eos --device cuda \
                    ${args[@]+"${args[@]}"} 2>&1 >/dev/null | sed -n 's/.*(\([0-9.]*\) tokens\/s).*/\1/p')
                ours=$(awk -v a="$ours" -v b="$t" 'BEGIN { print (b > a ? b : a) }')
            done
            hf=-
            [ -z "${SKIP_HF:-}" ] && hf=$(python3 bench/gpu/hf_generate.py "$model" "$b" "$NEW" "$dec" |
                python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["tok_s"])')
            ratio=$(awk -v a="$ours" -v b="$hf" 'BEGIN { if (b + 0 > 0) printf "%.2fx", a / b; else print "-" }')
            echo "| $model | $b | $dec | $ours | $hf | $ratio |"
        done
    done
done
