#!/usr/bin/env bash
# pack_train.sh: training throughput with and without --pack on short Alpaca-style examples, measured
# by peft train itself. A random Llama (peft init: byte-level tokenizer, so a token is a byte) and
# EXAMPLES Alpaca records (Stanford's prompt; outputs mostly short with a long tail, as Alpaca's); one
# epoch of LoRA r 8 on every linear layer each way, micro-batches of BATCH sequences of up to SEQ
# tokens: unpacked, BATCH examples each padded to the longest; --pack, BATCH sequences of several
# examples. tokens/s counts the examples' tokens (no padding) over the steps' time from
# train_log.jsonl, the first step (warm-up) left out.
#   bench/pack_train.sh PEFT [DEVICE]      DEVICE: cpu (default) or cuda (bf16)
# Sizes from the environment: EXAMPLES (256), LAYERS (4), HIDDEN (256), HEADS (4), KV_HEADS (2),
# BATCH (4), SEQ (1024), THREADS (CPU threads, default 2). Prints one table (Markdown).
set -euo pipefail
PEFT=${1:?usage: bench/pack_train.sh PEFT [cpu|cuda]}
DEVICE=${2:-cpu}
EXAMPLES=${EXAMPLES:-256} LAYERS=${LAYERS:-4} HIDDEN=${HIDDEN:-256} HEADS=${HEADS:-4} KV_HEADS=${KV_HEADS:-2}
BATCH=${BATCH:-4} SEQ=${SEQ:-1024} THREADS=${THREADS:-2}
TMP=$(mktemp -d /tmp/peft-pack-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

"$PEFT" init --arch llama --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --kv-heads "$KV_HEADS" --context "$SEQ" \
    --out "$TMP/model" >/dev/null
# Instructions of 3-12 words, an input half the time, outputs of 2 + 100 u^3 words (median 14, up to
# ~100): with the prompt, 160 to under 1000 tokens (median ~340), nothing cut at SEQ 1024.
awk -v n="$EXAMPLES" 'BEGIN {
    srand(7);
    split("the a model data train answer list write short story explain why how city river food price " \
          "number sum color small large quick letter word poem code test value name give make", w, " ");
    nw = length(w);
    for (i = 0; i < n; i++) {
        ins = ""; k = 3 + int(rand() * 10); for (j = 0; j < k; j++) ins = ins (j ? " " : "") w[1 + int(rand() * nw)];
        inp = ""; if (rand() < 0.5) { k = 2 + int(rand() * 7); for (j = 0; j < k; j++) inp = inp (j ? " " : "") w[1 + int(rand() * nw)]; }
        out = ""; u = rand(); k = 2 + int(100 * u * u * u); for (j = 0; j < k; j++) out = out (j ? " " : "") w[1 + int(rand() * nw)];
        printf "{\"instruction\": \"%s\", \"input\": \"%s\", \"output\": \"%s.\"}\n", ins, inp, out;
    }
}' >"$TMP/alpaca.jsonl"

run() {  # name, extra train options: one line of the table
    local name=$1 out="$TMP/out-$1"
    shift
    "$PEFT" train --model "$TMP/model" --data "$TMP/alpaca.jsonl" --method lora --r 8 --targets all-linear --epochs 1 \
        --batch "$BATCH" --seq-len "$SEQ" --threads "$THREADS" --device "$DEVICE" --log-every 100000 --out "$out" "$@" \
        >/dev/null 2>"$TMP/err-$name" || { cat "$TMP/err-$name" >&2; exit 1; }
    local seqs
    seqs=$(sed -n 's/^packing: [0-9]* examples in \([0-9]*\) sequences.*/\1/p; s/^data: .*: \([0-9]*\) sequences from .*/\1/p' \
        "$TMP/err-$name" | tail -1)
    # Each step's tokens and tokens/s -> the tokens and seconds of steps 2.. (step 1 warms up).
    sed -n 's/.*"step":\([0-9]*\),.*"tokens":\([0-9.e+]*\),"tokens_per_s":\([0-9.e+]*\).*/\1 \2 \3/p' "$out/train_log.jsonl" |
        awk -v name="$name" -v seqs="$seqs" -v batch="$BATCH" '
            $1 > 1 { tok += $2; sec += $2 / $3 } END { n = NR;
            printf "| %s | %d | %d | %d | %d | %.2f | %.0f |\n", name, seqs, batch, n, tok, sec, (sec > 0 ? tok / sec : 0) }'
}

echo "$("$PEFT" --version), --device $DEVICE: Llama $LAYERS x $HIDDEN ($HEADS heads, $KV_HEADS kv), byte-level, LoRA r 8 all-linear;" \
    "$EXAMPLES Alpaca examples, --seq-len $SEQ, 1 epoch"
echo
echo "| run | sequences | batch | steps | tokens (steps 2..) | seconds | tokens/s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
run unpacked
run packed --pack
