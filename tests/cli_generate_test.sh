#!/usr/bin/env bash
# CLI test: an adapter trained with `peft train` changes what `peft generate` says, the way the
# training text says it should. A fresh tiny GPT-2 (peft init) learns one sentence with LoRA; greedy
# generation from its first words then completes the sentence with the adapter (merged or live),
# and the base model does not.
# Usage: PEFT=build/peft bash tests/cli_generate_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-gen.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }

"$PEFT" init --arch gpt2 --layers 2 --hidden 64 --heads 4 --context 64 --seed 5 --out "$TMP/base" >/dev/null
for i in $(seq 1 200); do echo "the cat sat on the mat."; done > "$TMP/text.txt"
OMP_NUM_THREADS=2 "$PEFT" train --model "$TMP/base" --data "$TMP/text.txt" --method lora --r 8 --alpha 32 \
    --targets c_attn,c_proj,c_fc --lr 1e-2 --steps 60 --batch 4 --seq-len 48 --seed 3 --out "$TMP/lora" >/dev/null 2>"$TMP/err" \
    || bad "train ($(tail -c 300 "$TMP/err"))"
gen() { OMP_NUM_THREADS=2 "$PEFT" generate --model "$TMP/base" "$@" --prompt "the cat" --max-tokens 20 2>/dev/null; }
base=$(gen)
merged=$(gen --adapter "$TMP/lora")
live=$(gen --adapter "$TMP/lora" --no-merge)
echo "  base:    the cat$base" | head -2
echo "  adapter: the cat$merged" | head -2
case "$merged" in " sat on the mat."*) ok "the adapter completes the trained sentence" ;; *) bad "the adapter completes the trained sentence" ;; esac
[ "$base" != "$merged" ] && ok "the base model says something else" || bad "the base model says something else"
[ "$merged" = "$live" ] && ok "merged and live adapters generate the same" || bad "merged and live adapters generate the same"
# A model saved in bf16 (as HF checkpoints are): its weights are read in bf16 (model_keep_bf16) unless
# --fp32, with the same greedy tokens, base and with the adapter live or merged (a merged weight is no
# longer bf16: it stays fp32).
"$PEFT" merge --model "$TMP/base" --adapter "$TMP/lora" --dtype bf16 --out "$TMP/bf16" >/dev/null 2>"$TMP/err" || bad "merge --dtype bf16 ($(tail -c 300 "$TMP/err"))"
gen16() { OMP_NUM_THREADS=2 "$PEFT" generate --model "$TMP/bf16" "$@" --prompt "the cat" --max-tokens 20 --ids 2>/dev/null; }
same=1
for args in "" "--adapter $TMP/lora" "--adapter $TMP/lora --no-merge"; do
    a=$(gen16 $args) b=$(gen16 $args --fp32)
    { [ -n "$a" ] && [ "$a" = "$b" ]; } || { same=0; echo "  $args: bf16 [$a] fp32 [$b]"; }
done
[ $same = 1 ] && ok "bf16 weights and --fp32 generate the same tokens" || bad "bf16 weights and --fp32 generate the same tokens"
echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
