#!/usr/bin/env bash
# classify_bench.sh: a small GLUE-style task from the data here: E2E references labelled by their
# meaning representation's familyFriendly slot (yes / no: the reference usually says it, in many
# ways), training on devset.csv and scoring on testset_w_refs.csv. One encoder, one run per method
# (full fine-tuning, LoRA, VeRA, AdaLoRA: PEFT's SEQ_CLS, the head trained as modules_to_save), with
# trainable parameters, the adapter file, peak memory (the process's maximum RSS), time, and the
# test accuracy, F1 and Matthews correlation. No pretrained encoder is available on this machine, so
# the base is a random RoBERTa from peft init (byte-level tokenizer): the adapters learn on a frozen
# random encoder, which says how the methods train here, not what they reach on a pretrained one.
#   bench/classify_bench.sh PEFT [E2E_DIR]      (E2E_DIR: ../shared/data/e2e)
# Sizes from the environment: TRAIN (examples, 1500), TEST (600), LAYERS (4), HIDDEN (128), HEADS (4),
# EPOCHS (3), BATCH (16), THREADS (2). Prints one Markdown table.
set -euo pipefail
PEFT=${1:?usage: bench/classify_bench.sh PEFT [E2E_DIR]}
E2E=${2:-../shared/data/e2e}
TRAIN=${TRAIN:-1500} TEST=${TEST:-600} LAYERS=${LAYERS:-4} HIDDEN=${HIDDEN:-128} HEADS=${HEADS:-4}
EPOCHS=${EPOCHS:-3} BATCH=${BATCH:-16} THREADS=${THREADS:-2}
TMP=$(mktemp -d /tmp/peft-classify-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ref -> label (1: familyFriendly[yes]), rows without the slot left out; the first N of each file.
python3 - "$E2E/devset.csv" "$TMP/train.csv" "$TRAIN" "$E2E/testset_w_refs.csv" "$TMP/test.csv" "$TEST" <<'PY'
import csv, sys
for src, dst, n in ((sys.argv[1], sys.argv[2], int(sys.argv[3])), (sys.argv[4], sys.argv[5], int(sys.argv[6]))):
    rows = []
    for r in csv.DictReader(open(src, encoding="utf-8")):
        if "familyFriendly[yes]" in r["mr"]: rows.append((r["ref"], 1))
        elif "familyFriendly[no]" in r["mr"]: rows.append((r["ref"], 0))
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(rows[:n])
PY
"$PEFT" init --arch roberta --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --context 256 --labels 2 --seed 1 \
    --out "$TMP/model" >/dev/null
pos=$(awk -F, 'NR > 1 && $NF == 1' "$TMP/test.csv" | wc -l)
n_test=$(($(wc -l <"$TMP/test.csv") - 1))

echo "| method | lr | trainable | adapter file | peak RSS | train time | test accuracy | F1 | MCC |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
run() {  # method, lr, extra options
    local method=$1 lr=$2 out="$TMP/out-$1"
    shift 2
    /usr/bin/time -f "%M %e" -o "$TMP/time" "$PEFT" train --task classify --model "$TMP/model" --data "$TMP/train.csv" \
        --method "$method" --lr "$lr" --epochs "$EPOCHS" --batch "$BATCH" --threads "$THREADS" --out "$out" "$@" 2>"$TMP/log" ||
        { cat "$TMP/log" >&2; exit 1; }
    local trainable file adapter metrics
    trainable=$(grep -o '[0-9]* trainable parameters' "$TMP/log" | cut -d' ' -f1)
    file=$([ "$method" = full ] && echo "$out/model.safetensors" || echo "$out/adapter_model.safetensors")
    adapter=$(du -b "$file" | cut -f1)
    if [ "$method" = full ]; then metrics=$("$PEFT" eval --task classify --model "$out" --data "$TMP/test.csv" --threads "$THREADS")
    else metrics=$("$PEFT" eval --task classify --model "$TMP/model" --adapter "$out" --data "$TMP/test.csv" --threads "$THREADS"); fi
    read -r rss secs <"$TMP/time"
    echo "$metrics" | awk -v m="$method" -v lr="$lr" -v tr="$trainable" -v f="$adapter" -v rss="$rss" -v s="$secs" \
        '{ printf "| %s | %s | %s | %.1f KiB | %.0f MiB | %.0f s | %s | %s | %s |\n", m, lr, tr, f / 1024, rss / 1024, s, $2, $4, $6 }'
}
run full 1e-3
run lora 3e-3 --r 8
run vera 1e-2 --r 64
run adalora 3e-3 --targets query,key,value,intermediate.dense,output.dense --init-r 12 --target-r 8
echo
echo "$(($(wc -l <"$TMP/train.csv") - 1)) training and $n_test test references ($pos family-friendly); $LAYERS layers, hidden $HIDDEN," \
     "$EPOCHS epochs of batch $BATCH, $THREADS threads; $("$PEFT" --version)."
