#!/usr/bin/env bash
# CLI tests of PEFT's LoRA layout options through --lora-options (exclude_modules, layers_to_transform
# + layers_pattern, rank_pattern, alpha_pattern, bias, modules_to_save): train writes them as PEFT does,
# info shows them, estimate counts the trained parameters and the file exactly, generate loads the
# adapter, and what does not run (on the CUDA backend, in a GGUF LoRA) is refused by name.
# Usage: PEFT=build/peft bash tests/cli_lora_options_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-lora-options.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"

M=$TMP/model
"$PEFT" init --arch gpt2 --layers 2 --hidden 32 --heads 4 --context 64 --seed 5 --out "$M" >/dev/null
for i in $(seq 1 40); do echo "The Eagle $i is a coffee shop near the river."; done >"$TMP/train.txt"
cat >"$TMP/opts.json" <<'JSON'
{"exclude_modules": ["mlp.c_proj"], "layers_to_transform": [1], "layers_pattern": "h",
 "rank_pattern": {"c_fc": 2}, "alpha_pattern": {"attn.c_proj": 16}, "bias": "all"}
JSON
COMMON=(--model "$M" --data "$TMP/train.txt" --seq-len 32 --batch 2 --threads 1 --steps 2 --targets c_attn,c_proj,c_fc)

run_ok "train with --lora-options" "$PEFT" train "${COMMON[@]}" --lora-options "$TMP/opts.json" --out "$TMP/a"
CFG=$TMP/a/adapter_config.json
check "adapter_config.json: the options as PEFT writes them" perl -MJSON::PP -e 'local $/; open my $h, "<", $ARGV[0] or exit 1;
    my $j = JSON::PP->new->decode(<$h>); exit !($j->{bias} eq "all" && $j->{rank_pattern}{c_fc} == 2 && $j->{alpha_pattern}{"attn.c_proj"} == 16
    && $j->{layers_to_transform}[0] == 1 && $j->{layers_pattern} eq "h" && $j->{exclude_modules}[0] eq "mlp.c_proj")' "$CFG"
ST=$TMP/a/adapter_model.safetensors
check "adapter file: layer 1's modules only, biases under PEFT's names" \
    bash -c "head -c 4000 '$ST' | grep -q 'transformer.h.1.mlp.c_fc.lora_A.weight' && ! head -c 4000 '$ST' | grep -q 'h.0.attn.c_attn.lora_A' \
             && head -c 4000 '$ST' | grep -q 'base_model.model.transformer.h.1.attn.c_attn.base_layer.bias' \
             && head -c 4000 '$ST' | grep -q 'base_model.model.transformer.h.0.ln_1.bias'"
run_ok "info on the adapter" "$PEFT" info --model "$M" --adapter "$TMP/a"
check "info shows the options in force" bash -c "grep -q '^bias  *all' '$TMP/out' && grep -q '^rank_pattern  c_fc: 2' '$TMP/out' \
    && grep -q '^alpha_pattern attn.c_proj: 16' '$TMP/out' && grep -q '^layers  *1 (layers_to_transform; layers_pattern h)' '$TMP/out' \
    && grep -q '^exclude  *mlp.c_proj' '$TMP/out' && grep -q 'on 3 modules' '$TMP/out'"
trainable=$(sed -n 's/^trainable *\([0-9,]*\).*/\1/p' "$TMP/out" | tr -d ,)
run_ok "estimate with --lora-options" "$PEFT" estimate --model "$M" --method lora --targets c_attn,c_proj,c_fc --lora-options "$TMP/opts.json" --json
check "estimate: trainable parameters as the built model's ($trainable)" \
    perl -MJSON::PP -e 'local $/; my $j = JSON::PP->new->decode(<STDIN>); exit !($j->{trainable_parameters} == $ARGV[0])' "$trainable" <"$TMP/out"
check "estimate: adapter file bytes as written ($(stat -c %s "$ST"))" \
    perl -MJSON::PP -e 'local $/; my $j = JSON::PP->new->decode(<STDIN>); exit !($j->{file}{bytes} == $ARGV[0])' "$(stat -c %s "$ST")" <"$TMP/out"
run_ok "generate with the adapter (merged)" "$PEFT" generate --model "$M" --adapter "$TMP/a" --prompt "The" --max-tokens 3 --threads 1
run_ok "generate with the adapter (live)" "$PEFT" generate --model "$M" --adapter "$TMP/a" --prompt "The" --max-tokens 3 --threads 1 --no-merge

run_fails "export --to gguf refuses the adapter's trained biases" 1 'GGUF LoRA cannot hold' \
    "$PEFT" export --model "$M" --adapter "$TMP/a" --to gguf --out "$TMP/a.gguf"
check "nothing written" test ! -e "$TMP/a.gguf"
run_ok "export --merge --to gguf takes them in the merged model" "$PEFT" export --model "$M" --adapter "$TMP/a" --merge --to gguf --out "$TMP/m.gguf"

echo '{"modules_to_save": ["ln_f"]}' >"$TMP/mts.json"  # (bias and modules_to_save on --device cuda: tests/gpu/test_gpu.c)
run_ok "train with modules_to_save on the CPU" "$PEFT" train "${COMMON[@]}" --lora-options "$TMP/mts.json" --out "$TMP/mts"
check "the module to save is in the adapter file under PEFT's name" \
    bash -c "head -c 3000 '$TMP/mts/adapter_model.safetensors' | grep -q 'base_model.model.transformer.ln_f.weight'"
echo '{"use_dora": true}' >"$TMP/bad.json"
run_fails "an options file with another key" 1 'bad.json: "use_dora" is not an option' \
    "$PEFT" train "${COMMON[@]}" --lora-options "$TMP/bad.json" --out "$TMP/b"
echo '{"layers_pattern": "h"}' >"$TMP/bad.json"
run_fails "layers_pattern without layers_to_transform (PEFT refuses it)" 1 'without layers_to_transform' \
    "$PEFT" train "${COMMON[@]}" --lora-options "$TMP/bad.json" --out "$TMP/b"
echo '{"layers_to_transform": [0]}' >"$TMP/bad.json"
run_fails "layers_to_transform with a regex target (PEFT refuses it)" 1 'target_modules is a string' \
    "$PEFT" estimate --model "$M" --method lora --targets 're:.*c_attn' --lora-options "$TMP/bad.json"
echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
