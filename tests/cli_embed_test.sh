#!/usr/bin/env bash
# CLI tests of the token embedding in a LoRA adapter (src/methods/adapter_embed.c): LoRA on GPT-2's wte through
# --targets and trainable_token_indices through --lora-options train, save under PEFT's names, show in
# info, count exactly in estimate, generate (merged and live); the GPU's live generate and a GGUF LoRA
# refuse them by name (train --device cuda runs them: tests/gpu/test_gpu.c).
# Usage: PEFT=build/peft bash tests/cli_embed_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-embed.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"

M=$TMP/model
"$PEFT" init --arch gpt2 --layers 2 --hidden 32 --heads 4 --context 64 --seed 5 --out "$M" >/dev/null
for i in $(seq 1 40); do echo "The Eagle $i is a coffee shop near the river."; done >"$TMP/train.txt"
COMMON=(--model "$M" --data "$TMP/train.txt" --seq-len 32 --batch 2 --threads 1 --steps 2)

# count KEY FILE: the value of a "trainable" / file bytes line of estimate --json, compared with what was built.
estimate_matches() {
    local dir=$1; shift
    local trainable bytes
    "$PEFT" info --model "$M" --adapter "$dir" >"$TMP/info" 2>&1 || return 1
    trainable=$(sed -n 's/^trainable *\([0-9,]*\).*/\1/p' "$TMP/info" | tr -d ,)
    bytes=$(stat -c %s "$dir/adapter_model.safetensors")
    "$PEFT" estimate --model "$M" --method lora "$@" --json >"$TMP/est" 2>&1 || return 1
    perl -MJSON::PP -e 'local $/; my $j = JSON::PP->new->decode(<STDIN>); exit !($j->{trainable_parameters} == $ARGV[0] && $j->{file}{bytes} == $ARGV[1])' \
        "$trainable" "$bytes" <"$TMP/est"
}

run_ok "train LoRA on wte and c_attn" "$PEFT" train "${COMMON[@]}" --targets wte,c_attn --out "$TMP/lora"
check "the adapter file holds lora_embedding_A / lora_embedding_B under PEFT's names" \
    bash -c "head -c 3000 '$TMP/lora/adapter_model.safetensors' | grep -q 'base_model.model.transformer.wte.lora_embedding_A' \
             && head -c 3000 '$TMP/lora/adapter_model.safetensors' | grep -q 'base_model.model.transformer.wte.lora_embedding_B'"
run_ok "info on it" "$PEFT" info --model "$M" --adapter "$TMP/lora"
check "info shows LoRA on the embedding" grep -q '^embedding  *LoRA on transformer.wte r=8' "$TMP/out"
check "estimate counts its parameters and file bytes exactly" estimate_matches "$TMP/lora" --targets wte,c_attn
run_ok "generate with it" "$PEFT" generate --model "$M" --adapter "$TMP/lora" --prompt "The" --max-tokens 3 --threads 1
cp "$TMP/out" "$TMP/first.txt"
check "it runs live: merging it would change GPT-2's tied head (PEFT's merge)" grep -q 'applies live (merging LoRA on the tied embedding' "$TMP/err"
run_ok "generate with it (--no-merge)" "$PEFT" generate --model "$M" --adapter "$TMP/lora" --prompt "The" --max-tokens 3 --threads 1 --no-merge
check "the same text" cmp -s "$TMP/out" "$TMP/first.txt"
run_fails "generate --device cuda refuses it by name (it is not merged)" 1 'LoRA on the token embedding.*does not run live on the GPU' \
    "$PEFT" generate --model "$M" --adapter "$TMP/lora" --device cuda --prompt "The" --max-tokens 2

echo '{"trainable_token_indices": [5, 7, 9]}' >"$TMP/tokens.json"
run_ok "train trainable_token_indices" "$PEFT" train "${COMMON[@]}" --targets c_attn --lora-options "$TMP/tokens.json" --out "$TMP/tok"
check "adapter_config.json and the file as PEFT writes them" bash -c "grep -q '\"trainable_token_indices\"' '$TMP/tok/adapter_config.json' \
    && head -c 3000 '$TMP/tok/adapter_model.safetensors' | grep -q 'base_model.model.transformer.wte.token_adapter.trainable_tokens_delta'"
run_ok "info on it" "$PEFT" info --model "$M" --adapter "$TMP/tok"
check "info shows the trained tokens" grep -q '^trainable tokens the input embedding: 3 tokens (5, 7, 9)' "$TMP/out"
check "estimate counts them exactly" estimate_matches "$TMP/tok" --targets c_attn --lora-options "$TMP/tokens.json"
run_ok "generate with it (live)" "$PEFT" generate --model "$M" --adapter "$TMP/tok" --prompt "The" --max-tokens 3 --threads 1 --no-merge

run_fails "generate --no-merge --device cuda refuses it by name" 1 'trainable_token_indices.*does not run live on the GPU' \
    "$PEFT" generate --model "$M" --adapter "$TMP/tok" --no-merge --device cuda --prompt "The" --max-tokens 2
run_fails "export --to gguf refuses it by name" 1 'LoRA on the token embedding.*--merge' \
    "$PEFT" export --model "$M" --adapter "$TMP/lora" --to gguf --out "$TMP/a.gguf"
check "nothing written" test ! -e "$TMP/a.gguf"
echo '{"trainable_token_indices": [5, 5]}' >"$TMP/bad.json"
run_fails "a repeated token index is refused" 1 'lists token 5 twice' \
    "$PEFT" train "${COMMON[@]}" --targets c_attn --lora-options "$TMP/bad.json" --out "$TMP/b"
echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
