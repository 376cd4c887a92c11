#!/usr/bin/env bash
# CLI tests of sequence classification with an encoder: `peft init --arch roberta` (a tiny random
# RoBERTa classifier with the byte-level tokenizer), `peft train --task classify` with LoRA, VeRA,
# AdaLoRA, full fine-tuning and the head alone (--head-only) on JSONL and CSV (text pairs too),
# `peft eval --task classify`'s metrics, `peft predict`'s labels (and --logits), regression, and what
# is refused by name (generation, bad labels naming the file and line); --device cuda goes on to the
# GPU (none here).
# Usage: PEFT=build/peft bash tests/cli_classify_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-classify.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"

M=$TMP/model
"$PEFT" init --arch roberta --layers 2 --hidden 32 --heads 4 --context 64 --labels 3 --seed 3 --out "$M" >/dev/null
D=$TMP/data
mkdir -p "$D"
# Three classes told apart by one word; the pair file repeats the text as its second column.
words=(awful great table)
for i in $(seq 0 89); do y=$((i % 3)); echo "{\"text\": \"the ${words[$y]} thing $i\", \"label\": $y}"; done >"$D/train.jsonl"
{ echo "sentence,other,label"; for i in $(seq 90 119); do y=$((i % 3)); echo "\"the ${words[$y]} thing $i\",\"thing $i\",$y"; done; } >"$D/val.csv"
COMMON=(--task classify --model "$M" --batch 8 --threads 1)

echo "# peft train --task classify"
run_ok "train lora (JSONL, CSV validation)" "$PEFT" train "${COMMON[@]}" --data "$D/train.jsonl" --val "$D/val.csv" --method lora \
    --epochs 12 --lr 3e-2 --out "$TMP/lora"
check "lora: accuracy 1 on the validation data after training" grep -q "after training: accuracy 1.0000" "$TMP/err"
check "lora adapter_config.json: task_type SEQ_CLS, modules_to_save classifier" \
    grep -q '"task_type":[[:space:]]*"SEQ_CLS"' "$TMP/lora/adapter_config.json"
check "lora adapter holds the head under PEFT's names" grep -q "base_model.model.classifier.out_proj.weight" "$TMP/lora/adapter_model.safetensors"
check "train_log.jsonl: a line per step" test "$(grep -c '"cls_loss"' "$TMP/lora/train_log.jsonl")" -eq 144
run_ok "eval --task classify" "$PEFT" eval --task classify --model "$M" --adapter "$TMP/lora" --data "$D/val.csv"
check "eval: accuracy, f1 and mcc of the saved adapter" grep -q "accuracy 1.0000  f1 1.0000  mcc 1.0000  (30 examples)" "$TMP/out"
run_ok "predict to a file" "$PEFT" predict --model "$M" --adapter "$TMP/lora" --data "$D/val.csv" --out "$TMP/pred.txt"
check "predict: one label a line, the gold ones" test "$(tail -n +2 "$D/val.csv" | sed 's/.*,//' | tr -d '\r')" = "$(cat "$TMP/pred.txt")"
run_ok "predict --logits" "$PEFT" predict --model "$M" --adapter "$TMP/lora" --data "$D/val.csv" --logits "$TMP/logits.safetensors"
check "predict --logits: the same labels on stdout" test "$(cat "$TMP/out")" = "$(cat "$TMP/pred.txt")"
check "predict --logits: ids and mask [30, T], logits [30, 3]" grep -qE \
    '"input_ids":\{"dtype":"I64","shape":\[30,[0-9]+\].*"attention_mask":\{"dtype":"I64","shape":\[30,[0-9]+\].*"logits":\{"dtype":"F32","shape":\[30,3\]' \
    "$TMP/logits.safetensors"
for method in vera adalora full; do
    run_ok "train $method (text pairs)" "$PEFT" train "${COMMON[@]}" --data "$D/val.csv" --text-pair-column other --method $method \
        --steps 3 --out "$TMP/$method"
done
run_ok "eval of full fine-tuning's model folder" "$PEFT" eval --task classify --model "$TMP/full" --data "$D/val.csv" --text-pair-column other
run_ok "eval of the AdaLoRA adapter" "$PEFT" eval --task classify --model "$M" --adapter "$TMP/adalora" --data "$D/val.csv" --text-pair-column other

echo "# the frozen base: the head alone (linear probing)"
# The tensors whose bytes differ between two safetensors files (or are missing from the second).
diff_tensors() {
    perl -MJSON::PP -e 'sub rd { open my $h, "<:raw", $_[0] or die "$_[0]: $!"; local $/; my $d = <$h>; my $n = unpack "Q<", substr $d, 0, 8;
            my $j = JSON::PP->new->decode(substr $d, 8, $n); delete $j->{__metadata__}; return ($j, substr $d, 8 + $n) }
        my ($a, $da) = rd($ARGV[0]); my ($b, $db) = rd($ARGV[1]);
        for my $k (sort keys %$a) { my ($s, $e) = @{$a->{$k}{data_offsets}}; my ($s2, $e2) = @{$b->{$k} ? $b->{$k}{data_offsets} : [0, 0]};
            print "$k\n" if substr($da, $s, $e - $s) ne substr($db, $s2, $e2 - $s2) }' "$1" "$2"
}
run_ok "train --head-only (no --method: full's model folder)" "$PEFT" train "${COMMON[@]}" --data "$D/train.jsonl" --val "$D/val.csv" --head-only \
    --epochs 2 --lr 1e-2 --out "$TMP/head"
check "head-only: the head's 1155 parameters train (classifier.dense 32x32+32, out_proj 32x3+3)" grep -q "1155 trainable parameters" "$TMP/err"
check "head-only: saved as a model folder" \
    test -s "$TMP/head/model.safetensors" -a -s "$TMP/head/config.json" -a ! -e "$TMP/head/adapter_model.safetensors"
check "head-only: the head's four tensors changed, every base weight is the base's" \
    test "$(diff_tensors "$M/model.safetensors" "$TMP/head/model.safetensors" | tr '\n' ' ')" = \
    "classifier.dense.bias classifier.dense.weight classifier.out_proj.bias classifier.out_proj.weight "
run_ok "eval of the head-only model folder" "$PEFT" eval --task classify --model "$TMP/head" --data "$D/val.csv"
check "eval: the metrics of the trained head" grep -q "^accuracy .* f1 .* mcc .*(30 examples)" "$TMP/out"
run_ok "predict with the head-only model folder" "$PEFT" predict --model "$TMP/head" --data "$D/val.csv" --out "$TMP/head-pred.txt"
check "predict: a label for each of the 30 examples" test "$(wc -l <"$TMP/head-pred.txt")" -eq 30
run_fails "--head-only on --task lm is refused by name" 1 "--head-only trains a classifier's head: it is a --task classify option" \
    "$PEFT" train --model "$M" --data "$D/train.jsonl" --head-only --out "$TMP/x"
run_fails "--head-only with an adapter method is refused" 1 "--head-only .* takes --method full \(got lora\)" \
    "$PEFT" train "${COMMON[@]}" --data "$D/train.jsonl" --head-only --method lora --out "$TMP/x"
run_fails "--head-only on the GPU is refused by name" 1 "--head-only with --device cuda is not implemented" \
    "$PEFT" train "${COMMON[@]}" --data "$D/train.jsonl" --head-only --device cuda --out "$TMP/x"
check "nothing written by the refused head-only runs" test ! -e "$TMP/x/model.safetensors"

echo "# BERT with a WordPiece tokenizer (BertNormalizer, BertPreTokenizer), text pairs with token types"
T=$TMP/wp
mkdir -p "$T"
vocab='"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "awful": 5, "great": 6, "table": 7, "thing": 8'
for d in 0 1 2 3 4 5 6 7 8 9; do vocab="$vocab, \"$d\": $((9 + d)), \"##$d\": $((19 + d))"; done
cat >"$T/tokenizer.json" <<JSON
{"model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {$vocab}},
 "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
 "pre_tokenizer": {"type": "BertPreTokenizer"}, "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
 "added_tokens": [{"id": 0, "content": "[PAD]", "special": true}, {"id": 2, "content": "[CLS]", "special": true}, {"id": 3, "content": "[SEP]", "special": true}]}
JSON
run_ok "init --arch bert with the WordPiece tokenizer" "$PEFT" init --arch bert --tokenizer-from "$T" --layers 2 --hidden 32 --heads 4 \
    --context 32 --labels 3 --out "$TMP/bert"
run_ok "train bert lora on text pairs" "$PEFT" train "${COMMON[@]}" --model "$TMP/bert" --data "$D/val.csv" --val "$D/val.csv" \
    --text-pair-column other --method lora --epochs 25 --lr 3e-2 --out "$TMP/bert-lora"
check "bert: accuracy 1 on the validation data after training" grep -q "after training: accuracy 1.0000" "$TMP/err"
check "bert adapter holds the classifier under PEFT's name" grep -q "base_model.model.classifier.weight" "$TMP/bert-lora/adapter_model.safetensors"

echo "# regression (one output)"
"$PEFT" init --arch roberta --layers 1 --hidden 16 --heads 2 --context 32 --labels 1 --out "$TMP/reg" >/dev/null
for i in $(seq 1 16); do echo "{\"text\": \"score $i\", \"label\": $i.5}"; done >"$D/reg.jsonl"
run_ok "train lora, regression" "$PEFT" train "${COMMON[@]}" --model "$TMP/reg" --data "$D/reg.jsonl" --steps 2 --out "$TMP/reg-lora"
run_ok "eval regression" "$PEFT" eval --task classify --model "$TMP/reg" --adapter "$TMP/reg-lora" --data "$D/reg.jsonl"
check "eval regression: pearson, spearman, mse" grep -q "^pearson .* spearman .* mse .*(16 examples)" "$TMP/out"

echo "# refusals"
# --device cuda trains on the GPU (tests/gpu/test_gpu.c: "train classify"): here it goes on to the missing GPU.
run_fails "--device cuda goes on to the GPU" 1 "CUDA backend: " "$PEFT" train "${COMMON[@]}" --data "$D/train.jsonl" \
    --device cuda --out "$TMP/x"
check "--device cuda is no longer refused as a classify option" bash -c "! grep -q 'task classify: --device cuda' '$TMP/err'"
run_fails "causal-LM training of an encoder is refused" 1 "roberta is an encoder" "$PEFT" train --model "$M" --data "$D/train.jsonl" --out "$TMP/x"
run_fails "generation with an encoder is refused" 1 "roberta is an encoder" "$PEFT" generate --model "$M" --prompt hi
printf '{"text": "a", "label": 0}\n{"text": "b", "label": 7}\n' >"$D/bad.jsonl"
run_fails "a label outside the classes names the file and line" 1 'bad.jsonl:2: label "7"' "$PEFT" train "${COMMON[@]}" --data "$D/bad.jsonl" --out "$TMP/x"
run_fails "an unknown task" 2 "task must be lm or classify" "$PEFT" train "${COMMON[@]}" --task tag --data "$D/train.jsonl" --out "$TMP/x"
check "nothing written by the refused runs" test ! -e "$TMP/x/adapter_model.safetensors"
mkdir -p "$TMP/case"
echo '{"name": "roberta-lora", "family": "roberta", "method": "lora", "task": "seq_cls"}' >"$TMP/case/case.json"
"$PEFT" check --device cuda "$TMP/case" >"$TMP/out" 2>&1
check "peft check --device cuda takes a seq_cls case to the GPU (skipped here: no GPU)" grep -q 'SKIP case no GPU' "$TMP/out"
run_ok "peft info names the task and modules_to_save" "$PEFT" info --model "$M" --adapter "$TMP/lora"
check "peft info: task SEQ_CLS" grep -q "^task  *SEQ_CLS$" "$TMP/out"
check "peft info: modules_to_save classifier, score" grep -q "^modules_to_save classifier, score (trained in full" "$TMP/out"

echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
