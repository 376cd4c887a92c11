#!/usr/bin/env bash
# The serving benchmark (CPU or GPU): one base model, K = 1, 10, 100 distinct LoRA / VeRA adapters,
# against the base alone and a single merged adapter at the same load. N concurrent clients
# on loopback (bench/serve/loadgen.c), fixed prompt and output lengths; then the decode step alone
# (bench/serve/mixed_bench.c).
# Usage: bash bench/serve/run.sh [BUILD]     (env: CLIENTS, REQUESTS, PROMPT, TOKENS, THREADS,
#        ROUNDS; the model: ARCH (gpt2, llama), LAYERS, HIDDEN, HEADS, KV_HEADS, INNER, VOCAB;
#        TARGETS: adapted modules; DEVICE: cpu or cuda; NO_BUILD=1: use BUILD's binaries as they
#        are; KEEP=1 keeps the work folder)
# The GPU run in docs/serve-bench.md: a TinyLlama-1.1B-shaped model, LoRA / VeRA on q_proj,v_proj:
#   DEVICE=cuda ARCH=llama LAYERS=22 HIDDEN=2048 HEADS=32 KV_HEADS=4 INNER=5632 VOCAB=32000 CLIENTS=32 bash bench/serve/run.sh
set -eu
B=${1:-build}
CLIENTS=${CLIENTS:-16} REQUESTS=${REQUESTS:-128} PROMPT=${PROMPT:-32} TOKENS=${TOKENS:-32} THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-3}
ARCH=${ARCH:-gpt2} LAYERS=${LAYERS:-4} HIDDEN=${HIDDEN:-256} HEADS=${HEADS:-4} KV_HEADS=${KV_HEADS:-$HEADS} DEVICE=${DEVICE:-cpu}
if [ "$ARCH" = gpt2 ]; then INNER=${INNER:-$((4 * HIDDEN))} TARGETS=${TARGETS:-c_attn,c_proj,c_fc}
else INNER=${INNER:-$((HIDDEN * 8 / 3))} TARGETS=${TARGETS:-q_proj,v_proj}; fi
if [ "${NO_BUILD:-0}" != 1 ]; then
    make -s BUILD="$B" "$B/peft" >/dev/null
    mkdir -p "$B/serve"
    make -s BUILD="$B" "$B/serve/loadgen" "$B/serve/make_adapters" "$B/serve/mixed_bench" >/dev/null
fi
PEFT=$B/peft
W=$(mktemp -d /tmp/peft-serve-bench.XXXXXX)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
export OMP_NUM_THREADS=$THREADS

echo "# peft serve benchmark: $(date -u +%Y-%m-%d) on $(nproc --all) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
[ "$DEVICE" = cuda ] && nvidia-smi -L 2>/dev/null | sed 's/^/# /'
echo "# model: $ARCH $LAYERS layers, hidden $HIDDEN, heads $HEADS/$KV_HEADS, MLP $INNER, vocabulary ${VOCAB:-257 (bytes)}; adapters on $TARGETS; $CLIENTS clients, $REQUESTS requests of $PROMPT prompt + $TOKENS generated tokens; --device $DEVICE --threads $THREADS"
"$PEFT" init --arch "$ARCH" --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --kv-heads "$KV_HEADS" --inner "$INNER" \
    ${VOCAB:+--vocab "$VOCAB"} --context 256 --seed 3 --out "$W/base" >/dev/null
for i in $(seq 1 100); do echo "the quick brown fox jumps over the lazy dog."; done > "$W/text.txt"
# One trained adapter of each kind (a few steps: the values only need to be adapter-like), then
# 100 perturbed copies of each, and each merged into a copy of the base.
"$PEFT" train --model "$W/base" --data "$W/text.txt" --method lora --r 16 --alpha 32 --targets "$TARGETS" --device "$DEVICE" \
    --lr 1e-2 --steps 5 --batch 2 --seq-len 64 --out "$W/src-lora" >/dev/null 2>&1
"$PEFT" train --model "$W/base" --data "$W/text.txt" --method vera --r 256 --targets "$TARGETS" --device "$DEVICE" \
    --lr 1e-2 --steps 5 --batch 2 --seq-len 64 --out "$W/src-vera" >/dev/null 2>&1
"$B/serve/make_adapters" --model "$W/base" --adapter "$W/src-lora" --out "$W/adapters" --count 100 --prefix lora >/dev/null
"$B/serve/make_adapters" --model "$W/base" --adapter "$W/src-vera" --out "$W/adapters" --count 100 --prefix vera --seed 2 >/dev/null
"$PEFT" merge --model "$W/base" --adapter "$W/adapters/lora-000" --out "$W/merged-lora" >/dev/null
"$PEFT" merge --model "$W/base" --adapter "$W/adapters/vera-000" --out "$W/merged-vera" >/dev/null

. "$(dirname "$0")/../../tools/serve_start.sh"
serve() {  # model-dir: starts the server (all 200 adapters in memory), sets PORT; every client is one address here
    local rc=0
    serve_start "$W/server.out" "$W/server.err" 1200 --model "$1" --adapters "$W/adapters" --max-requests "$CLIENTS" --max-adapters 256 \
        --max-connections-per-ip 0 --max-tokens "$TOKENS" --threads "$THREADS" --device "$DEVICE" --quiet || rc=1
    SERVER=$SERVE_PID
    [ $rc = 0 ] || { echo "server did not start: $(cat "$W/server.err")"; exit 1; }
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=; }
load() { "$B/serve/loadgen" --port "$PORT" --clients "$CLIENTS" --requests "$REQUESTS" --prompt-tokens "$PROMPT" --max-tokens "$TOKENS" "$@"; }

# ROUNDS rounds, every configuration once per round (interleaved, so that a busy machine's
# slow spells spread over all of them); the table takes each configuration's median round.
: > "$W/runs.txt"
for round in $(seq 1 "$ROUNDS"); do
    serve "$W/base"
    load --requests "$CLIENTS" --base --label warm-up >/dev/null
    load --base --label "base" | tee -a "$W/runs.txt"
    # Each measurement starts with its K adapters loaded (one request each, untimed): the table is
    # the steady state of serving them, not the one-off cost of reading them from disk.
    for k in 1 10 100; do
        load --prefix lora --adapters $k --requests $k --label warm-up >/dev/null
        load --prefix lora --adapters $k --label "LoRA-r16" | tee -a "$W/runs.txt"
    done
    for k in 1 10 100; do
        load --prefix vera --adapters $k --requests $k --label warm-up >/dev/null
        load --prefix vera --adapters $k --label "VeRA-r256" | tee -a "$W/runs.txt"
    done
    stop
    serve "$W/merged-lora"
    load --base --label "LoRA-r16-merged" | tee -a "$W/runs.txt"
    stop
    serve "$W/merged-vera"
    load --base --label "VeRA-r256-merged" | tee -a "$W/runs.txt"
    stop
done
echo
echo "| configuration | adapters in the batch | requests/s | tokens/s | p50 latency (s) | p99 latency (s) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
# Median round per configuration (by tokens/s).
awk '{ key = $1 " " $2; for (i = 1; i <= NF; i++) { if ($i == "req/s") rs = $(i-1); if ($i == "tok/s") ts = $(i-1); if ($i == "p50") p50 = $(i+1); if ($i == "p99") p99 = $(i+1) }
       n[key]++; row[key, n[key]] = ts " " rs " " p50 " " p99; if (!(key in order)) { order[key] = ++nk; keys[nk] = key } }
     END { for (k = 1; k <= nk; k++) { key = keys[k]; m = n[key];
             for (i = 1; i <= m; i++) v[i] = row[key, i];
             for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) { split(v[i], a, " "); split(v[j], b, " "); if (b[1] + 0 < a[1] + 0) { t = v[i]; v[i] = v[j]; v[j] = t } }
             split(v[int((m + 1) / 2)], x, " "); split(key, kk, " "); sub("K=", "", kk[2]);
             name = kk[1]; gsub("-", " ", name); if (name ~ /merged/) kk[2] = "1 (merged)"; else if (kk[2] == 0) kk[2] = "0 (base)";
             printf "| %s | %s | %.2f | %.0f | %s | %s |\n", name, kk[2], x[2], x[1], x[3], x[4] } }' "$W/runs.txt"

# The same comparison without HTTP: one decode step of CLIENTS rows (bench/serve/mixed_bench.c),
# best of 30, for this model and a wider one (where an adapter is a smaller share of the base).
echo
"$B/serve/mixed_bench" --arch "$ARCH" --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --kv-heads "$KV_HEADS" --inner "$INNER" \
    ${VOCAB:+--vocab "$VOCAB"} --targets "$TARGETS" --batch "$CLIENTS" --adapters 100 --device "$DEVICE" --reps 30
if [ "$DEVICE" = cpu ]; then
    echo
    "$B/serve/mixed_bench" --layers 2 --hidden 1024 --batch "$CLIENTS" --reps 20
fi
