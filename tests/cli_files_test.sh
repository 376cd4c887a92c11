#!/usr/bin/env bash
# CLI tests of model and adapter folders that lie or ask for what is not implemented, made here
# (peft init, peft train; no fixtures needed). Each must be refused with an error naming the file
# and the key or tensor, a non-zero exit and no crash:
#  - absurd sizes in config.json and adapter_config.json (refused before anything is allocated);
# Usage: PEFT=build/peft bash tests/cli_files_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-files.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=1
. "$(dirname "$0")/cli_lib.sh"

copy() { rm -rf "$TMP/$1"; cp -r "$TMP/$2" "$TMP/$1"; }

# ---- a GPT-2 and a Llama, and adapters trained on the GPT-2 ----
"$PEFT" init --arch gpt2 --layers 2 --hidden 32 --heads 2 --context 64 --out "$TMP/gpt2" >/dev/null || { bad "peft init gpt2"; exit 1; }
"$PEFT" init --arch llama --layers 2 --hidden 32 --heads 4 --kv-heads 2 --context 64 --out "$TMP/llama" >/dev/null || { bad "peft init llama"; exit 1; }
for i in $(seq 1 40); do echo "the cat sat on the mat."; done >"$TMP/text.txt"
train() {  # name method args...
    local name=$1 method=$2; shift 2
    "$PEFT" train --model "$TMP/gpt2" --data "$TMP/text.txt" --method "$method" --steps 2 --batch 2 --seq-len 32 \
        --targets c_attn,c_fc "$@" --out "$TMP/$name" >/dev/null 2>"$TMP/err" || bad "train $name ($(tail -c 300 "$TMP/err"))"
}
train lora lora --r 4
train adalora adalora --init-r 4 --target-r 2
train vera vera --r 8

# ---- absurd sizes ----
echo "# absurd sizes are refused before anything is allocated"
for kv in n_layer n_embd n_head n_inner n_positions vocab_size; do
    copy m gpt2; json_set "$TMP/m/config.json" $kv 1000000000
    run_fails "info: $kv 1e9" 1 "config.json: $kv 1000000000 is out of range" "$PEFT" info --model "$TMP/m"
done
for kv in num_hidden_layers hidden_size intermediate_size max_position_embeddings head_dim; do
    copy m llama; json_set "$TMP/m/config.json" $kv 1000000000
    run_fails "info: llama $kv 1e9" 1 "config.json: .*$kv 1000000000" "$PEFT" info --model "$TMP/m"
done
copy m gpt2; json_set "$TMP/m/config.json" n_layer 1000000000
run_fails "generate: n_layer 1e9" 1 "config.json: n_layer 1000000000 is out of range" "$PEFT" generate --model "$TMP/m" --prompt hi
# The trained AdaLoRA adapter has a rank_pattern (init_r entries per module); without one, its tensors bound init_r.
copy ada-nopattern adalora; json_set "$TMP/ada-nopattern/adapter_config.json" rank_pattern null
for a in lora:r vera:r adalora:init_r ada-nopattern:init_r; do
    copy a "${a%%:*}"; json_set "$TMP/a/adapter_config.json" "${a#*:}" 1000000000
    run_fails "info: ${a%%:*} ${a#*:} 1e9" 1 "adapter_(config.json|model.safetensors): .*1000000000" \
        "$PEFT" info --model "$TMP/gpt2" --adapter "$TMP/a"
    run_fails "generate: ${a%%:*} ${a#*:} 1e9" 1 "adapter_(config.json|model.safetensors): .*1000000000" \
        "$PEFT" generate --model "$TMP/gpt2" --adapter "$TMP/a" --prompt hi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
