#!/usr/bin/env bash
# classify_bench.sh: a small GLUE-style task from the data here, E2E references labelled by a slot of
# their meaning representation, training on devset.csv and scoring on testset_w_refs.csv:
#   LABEL=price (default): priceRange in three classes, cheap (cheap, less than £20), moderate
#     (moderate, £20-25) and high (high, more than £30), words the reference nearly always says;
#   LABEL=family: familyFriendly yes / no (said in many ways, often only implied).
# Rows without the slot are left out. One encoder, one run per method: the frozen base (the SEQ_CLS
# head alone, --head-only), full fine-tuning, LoRA, VeRA and AdaLoRA (PEFT's SEQ_CLS, the head trained
# as modules_to_save), with trainable parameters, the saved file, peak memory (the process's maximum
# RSS), train time, and the test accuracy, F1 (binary: class 1's; three classes: the macro mean, as
# sklearn's f1_score(average="macro")) and Matthews correlation. No pretrained encoder is available
# on this machine, so the base is a random RoBERTa from peft init (byte-level tokenizer): the methods
# learn on a random encoder, which says how they train here, not what they reach on a pretrained one.
#   bench/classify_bench.sh PEFT [E2E_DIR]      (E2E_DIR: ../shared/data/e2e)
# Sizes from the environment: LABEL (price), TRAIN (examples, 1200), TEST (600), LAYERS (2), HIDDEN (64),
# HEADS (4), BATCH (16), THREADS (2); each method's learning rate and epochs are below. Prints one Markdown table.
set -euo pipefail
PEFT=${1:?usage: bench/classify_bench.sh PEFT [E2E_DIR]}
E2E=${2:-../shared/data/e2e}
LABEL=${LABEL:-price} TRAIN=${TRAIN:-1200} TEST=${TEST:-600} LAYERS=${LAYERS:-2} HIDDEN=${HIDDEN:-64} HEADS=${HEADS:-4}
BATCH=${BATCH:-16} THREADS=${THREADS:-2}
case $LABEL in price) n_labels=3 ;; family) n_labels=2 ;; *) echo "LABEL must be price or family (got $LABEL)" >&2; exit 2 ;; esac
TMP=$(mktemp -d /tmp/peft-classify-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ref -> label, rows without the slot left out; the first N of each file. The tokenizer: WordPiece over
# the training references' words (BertNormalizer lowercasing, BertPreTokenizer's splits; a word seen
# once or not at all is [UNK]), so that a price word is one token.
mkdir -p "$TMP/tok"
python3 - "$LABEL" "$E2E/devset.csv" "$TMP/train.csv" "$TRAIN" "$E2E/testset_w_refs.csv" "$TMP/test.csv" "$TEST" "$TMP/tok/tokenizer.json" <<'PY'
import collections, csv, json, re, sys, unicodedata
classes = {"price": {"cheap": 0, "less than £20": 0, "moderate": 1, "£20-25": 1, "high": 2, "more than £30": 2},
           "family": {"no": 0, "yes": 1}}[sys.argv[1]]
slot = {"price": "priceRange", "family": "familyFriendly"}[sys.argv[1]]
words = collections.Counter()
def punct(c):  # BERT's: ASCII's non-alphanumerics and Unicode's P categories
    return 33 <= ord(c) <= 47 or 58 <= ord(c) <= 64 or 91 <= ord(c) <= 96 or 123 <= ord(c) <= 126 or unicodedata.category(c)[0] == "P"
def split(text):  # BertPreTokenizer: whitespace, then every punctuation character a word of its own
    for w in text.lower().split():
        yield from (p for p in re.split("(" + "|".join(re.escape(c) for c in set(w) if punct(c)) + ")", w) if p) if any(map(punct, w)) else [w]
for src, dst, n in ((sys.argv[2], sys.argv[3], int(sys.argv[4])), (sys.argv[5], sys.argv[6], int(sys.argv[7]))):
    rows = []
    for r in csv.DictReader(open(src, encoding="utf-8")):
        m = re.search(re.escape(slot) + r"\[([^\]]*)\]", r["mr"])
        if m: rows.append((r["ref"], classes[m.group(1)]))
    rows = rows[:n]
    if dst == sys.argv[3]: words.update(w for ref, _ in rows for w in split(ref))
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["text", "label"])
        w.writerows(rows)
special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
vocab = {t: i for i, t in enumerate(special + sorted(w for w, k in words.items() if k > 1))}
json.dump({"model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab},
           "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": False, "lowercase": True},
           "pre_tokenizer": {"type": "BertPreTokenizer"}, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
           "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(special) if t != "[UNK]"]},
          open(sys.argv[8], "w", encoding="utf-8"), ensure_ascii=False)
PY
"$PEFT" init --arch bert --tokenizer-from "$TMP/tok" --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --context 128 --labels "$n_labels" \
    --seed 1 --out "$TMP/model" >/dev/null
counts=$(tail -n +2 "$TMP/test.csv" | awk -F, '{ n[$NF]++ } END { for (k = 0; k < '"$n_labels"'; k++) printf "%s%d", k ? " / " : "", n[k] }')
n_test=$(($(wc -l <"$TMP/test.csv") - 1))

echo "| method | lr | epochs | trainable | saved file | peak RSS | train time | test accuracy | F1 | MCC |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
run() {  # name, lr, epochs, peft train options (--method ...)
    local name=$1 lr=$2 epochs=$3 out="$TMP/out-${1%% *}"
    shift 3
    /usr/bin/time -f "%M %e" -o "$TMP/time" "$PEFT" train --task classify --model "$TMP/model" --data "$TMP/train.csv" \
        --lr "$lr" --epochs "$epochs" --batch "$BATCH" --threads "$THREADS" --out "$out" "$@" 2>"$TMP/log" ||
        { cat "$TMP/log" >&2; exit 1; }
    local trainable file metrics
    trainable=$(grep -o '[0-9]* trainable parameters' "$TMP/log" | cut -d' ' -f1)
    if [ -e "$out/model.safetensors" ]; then  # full fine-tuning and the head alone: a model folder
        file=$(du -b "$out/model.safetensors" | cut -f1)
        metrics=$("$PEFT" eval --task classify --model "$out" --data "$TMP/test.csv" --threads "$THREADS")
    else
        file=$(du -b "$out/adapter_model.safetensors" | cut -f1)
        metrics=$("$PEFT" eval --task classify --model "$TMP/model" --adapter "$out" --data "$TMP/test.csv" --threads "$THREADS")
    fi
    read -r rss secs <"$TMP/time"
    echo "$metrics" | awk -v m="$name" -v lr="$lr" -v ep="$epochs" -v tr="$trainable" -v f="$file" -v rss="$rss" -v s="$secs" \
        '{ printf "| %s | %s | %s | %s | %.1f KiB | %.0f MiB | %.0f s | %s | %s | %s |\n", m, lr, ep, tr, f / 1024, rss / 1024, s, $2, $4, $6 }'
}
# Each method's learning rate and epochs: set after one trial run at 3 epochs each (docs/classification.md).
run "frozen base (head only)" 1e-1 6 --method full --head-only
run full 1e-3 3 --method full
run lora 3e-2 6 --method lora --r 8
run vera 1e-1 6 --method vera --r 64
run adalora 3e-2 6 --method adalora --targets query,key,value,intermediate.dense,output.dense --init-r 12 --target-r 8
echo
echo "$(($(wc -l <"$TMP/train.csv") - 1)) training and $n_test test references (LABEL=$LABEL, per class $counts); $LAYERS layers," \
     "hidden $HIDDEN, batch $BATCH, $THREADS threads; $("$PEFT" --version)."
