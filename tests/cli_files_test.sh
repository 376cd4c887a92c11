#!/usr/bin/env bash
# CLI tests of model and adapter folders that lie or ask for what is not implemented, made here
# (peft init, peft train; no fixtures needed). Each must be refused with an error naming the file
# and the key or tensor, a non-zero exit and no crash:
#  - absurd sizes in config.json and adapter_config.json (refused before anything is allocated);
#  - settings that would change the math but are not implemented, unknown adapter keys, non-finite
#    numbers, degenerate tokenizers;
#  - peft init's vocabulary from --tokenizer-from (GPT-2's vocab.json + merges.txt, made here), peft
#    info's check that the tokenizer fits the model, and peft train's --out (--overwrite; the log
#    and the adapter of one run together).
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
# peft init checks its sizes the same way (it aborted too).
run_fails "init: --layers 1e9" 2 "n_layer 1000000000 is out of range" "$PEFT" init --layers 1000000000 --out "$TMP/x"
run_fails "init: a model larger than memory" 2 "more than this machine's memory" "$PEFT" init --layers 4096 --hidden 1048576 --inner 1024 --heads 4 --out "$TMP/x"
# The trained AdaLoRA adapter has a rank_pattern (init_r entries per module); without one, its tensors bound init_r.
copy ada-nopattern adalora; json_set "$TMP/ada-nopattern/adapter_config.json" rank_pattern null
for a in lora:r vera:r adalora:init_r ada-nopattern:init_r; do
    copy a "${a%%:*}"; json_set "$TMP/a/adapter_config.json" "${a#*:}" 1000000000
    run_fails "info: ${a%%:*} ${a#*:} 1e9" 1 "adapter_(config.json|model.safetensors): .*1000000000" \
        "$PEFT" info --model "$TMP/gpt2" --adapter "$TMP/a"
    run_fails "generate: ${a%%:*} ${a#*:} 1e9" 1 "adapter_(config.json|model.safetensors): .*1000000000" \
        "$PEFT" generate --model "$TMP/gpt2" --adapter "$TMP/a" --prompt hi
done

# ---- settings that are not implemented are refused, not ignored ----
echo "# adapter_config.json: every key implemented or refused by name"
for kv in 'modules_to_save:"lm_head"' 'layers_to_transform:[-1]' 'lora_alpha:1e39' 'bias:true' 'bias:"some"' 'use_dora:1' \
          'alpha_pattern:[16]' 'trainable_token_indices:[1,1]' 'task_type:"SEQ_CLS"' 'init_lora_weights:"loftq"' 'some_new_option:1'; do
    key=${kv%%:*}
    copy a lora; json_set "$TMP/a/adapter_config.json" "$key" "${kv#*:}"
    run_fails "adapter $key ${kv#*:}" 1 "adapter_config.json: .*\"?$key\"?" "$PEFT" generate --model "$TMP/gpt2" --adapter "$TMP/a" --prompt hi --max-tokens 4
done
copy a vera; json_set "$TMP/a/adapter_config.json" lora_alpha 8
run_fails "VeRA with lora_alpha" 1 'adapter_config.json: unknown key "lora_alpha"' "$PEFT" info --model "$TMP/gpt2" --adapter "$TMP/a"
copy a adalora; json_set "$TMP/a/adapter_config.json" use_rslora true
run_fails "AdaLoRA with use_rslora" 1 'adapter_config.json: "use_rslora"' "$PEFT" info --model "$TMP/gpt2" --adapter "$TMP/a"
copy a adalora; json_set "$TMP/a/adapter_config.json" use_dora true
run_fails "AdaLoRA with use_dora (PEFT refuses it too)" 1 'adapter_config.json: "use_dora".*AdaLoRA does not support DoRA' "$PEFT" info --model "$TMP/gpt2" --adapter "$TMP/a"
copy a lora; json_set "$TMP/a/adapter_config.json" use_dora true
run_fails "use_dora without the magnitudes" 1 'missing tensor .*lora_magnitude_vector' "$PEFT" info --model "$TMP/gpt2" --adapter "$TMP/a"

echo "# config.json: keys that change the math"
for kv in 'tie_word_embeddings:1' 'scale_attn_by_inverse_layer_idx:true' 'activation_function:"relu"' 'layer_norm_epsilon:1e39'; do
    copy m gpt2; json_set "$TMP/m/config.json" "${kv%%:*}" "${kv#*:}"
    run_fails "config ${kv%%:*} ${kv#*:}" 1 "config.json: .*${kv%%:*}" "$PEFT" info --model "$TMP/m"
done
for kv in 'sliding_window:16' 'rope_scaling:{"rope_type":"yarn","factor":4}' 'partial_rotary_factor:0.5' 'attention_bias:"yes"'; do
    copy m llama; json_set "$TMP/m/config.json" "${kv%%:*}" "${kv#*:}"
    run_fails "llama config ${kv%%:*} ${kv#*:}" 1 "config.json: .*${kv%%:*}" "$PEFT" info --model "$TMP/m"
done
copy m gpt2; json_set "$TMP/m/config.json" resid_pdrop 0.1
run_ok "base-model dropout: inference runs" "$PEFT" generate --model "$TMP/m" --prompt hi --max-tokens 4
run_fails "base-model dropout: training is refused" 1 "config.json: resid_pdrop 0.1: .*dropout is not implemented" \
    "$PEFT" train --model "$TMP/m" --data "$TMP/text.txt" --steps 1 --seq-len 32 --out "$TMP/x"
run_ok "base-model dropout: --no-base-dropout trains" "$PEFT" train --model "$TMP/m" --data "$TMP/text.txt" --steps 1 --seq-len 32 \
    --out "$TMP/x" --no-base-dropout
check "base-model dropout: --no-base-dropout says so" grep -q "without the base model's dropout.*resid_pdrop 0.1" "$TMP/err"

echo "# degenerate tokenizers"
copy m gpt2
perl -MJSON::PP -i -0pe 'my $j = JSON::PP->new->decode($_); $j->{model}{vocab} = {}; $j->{model}{merges} = []; $_ = JSON::PP->new->encode($j)' "$TMP/m/tokenizer.json"
run_fails "a tokenizer.json with an empty vocabulary" 1 "tokenizer.json: model.vocab is empty" "$PEFT" tokenize --model "$TMP/m" hello

# ---- peft init --tokenizer-from, peft info's tokenizer check ----
echo "# a GPT-2-layout tokenizer (vocab.json + merges.txt): 256 bytes, 3 merges, <|endoftext|> = 259"
mkdir -p "$TMP/tok"
perl -MJSON::PP -e 'my @bs = (33..126, 161..172, 174..255); my %c; $c{$_} = $_ for @bs; my $n = 0;
    for my $b (0..255) { $c{$b} = 256 + $n++ unless exists $c{$b} }     # GPT-2 spells byte b as chr($c{b})
    my %v; $v{chr $c{$_}} = $_ for 0..255;
    my @m = (["\x{120}", "t"], ["h", "e"], ["\x{120}t", "he"]); my $id = 256;
    $v{$_->[0] . $_->[1]} = $id++ for @m; $v{"<|endoftext|>"} = $id;
    open my $h, ">", "$ARGV[0]/vocab.json" or die; print $h JSON::PP->new->utf8->canonical->encode(\%v); close $h;
    open $h, ">:utf8", "$ARGV[0]/merges.txt" or die; print $h "#version: 0.2\n", map { "$_->[0] $_->[1]\n" } @m' "$TMP/tok"
run_ok "init --tokenizer-from a vocab.json + merges.txt folder" "$PEFT" init --layers 1 --hidden 32 --heads 2 --tokenizer-from "$TMP/tok" --out "$TMP/m260"
run_ok "info on it" "$PEFT" info --model "$TMP/m260"
check "its vocabulary is the tokenizer's 260 ids" grep -q "vocab 260," "$TMP/out"
check "info reports the tokenizer" grep -q "^tokenizer  *260 ids$" "$TMP/out"
check "its eos is the tokenizer's <|endoftext|>" grep -q '"eos_token_id":.259' "$TMP/m260/config.json"
run_ok "the copied tokenizer encodes" "$PEFT" tokenize --model "$TMP/m260" " the<|endoftext|>"
check "... \" the<|endoftext|>\" as [258, 259]" grep -qE '^\[?258,? 259\]?$' "$TMP/out"
run_fails "init --vocab below the tokenizer's ids" 2 "vocab 100 is smaller than the tokenizer's 260 ids" \
    "$PEFT" init --layers 1 --hidden 32 --heads 2 --tokenizer-from "$TMP/tok" --vocab 100 --out "$TMP/x"
FIX=${PEFT_FIXTURES:-../shared/fixtures/hf-peft}
if [ -f "$FIX/tokenizer-gpt2/vocab.bpe" ]; then
    run_ok "init --tokenizer-from GPT-2's encoder.json + vocab.bpe" "$PEFT" init --layers 1 --hidden 32 --heads 2 --tokenizer-from "$FIX/tokenizer-gpt2" --out "$TMP/m50k"
    check "its vocabulary is GPT-2's 50257" grep -q '"vocab_size":.50257' "$TMP/m50k/config.json"
else echo "*** SKIPPED: $FIX/tokenizer-gpt2 not found: GPT-2's own vocabulary not tried (the one made here was) ***"; fi
copy m gpt2; rm "$TMP/m/tokenizer.json" "$TMP/m/tokenizer_config.json"; cp "$TMP/tok/vocab.json" "$TMP/tok/merges.txt" "$TMP/m/"
run_fails "info: a tokenizer with more ids than the model's vocabulary" 1 "the tokenizer has 260 ids but the model's vocabulary .* is 257" \
    "$PEFT" info --model "$TMP/m"
check "... and says so on its tokenizer line" grep -q "^tokenizer .*MORE than the model's vocabulary" "$TMP/out"

# ---- peft train --out ----
echo "# --out: another run's outputs are replaced only with --overwrite"
TRAIN=("$PEFT" train --model "$TMP/gpt2" --data "$TMP/text.txt" --steps 2 --batch 2 --seq-len 32 --out "$TMP/lora")
cp "$TMP/lora/adapter_model.safetensors" "$TMP/lora.before"
run_fails "train into a folder with an adapter" 1 "lora holds another run's adapter_model.safetensors: pass --overwrite" "${TRAIN[@]}"
check "... which stays as it was" cmp -s "$TMP/lora/adapter_model.safetensors" "$TMP/lora.before"
run_ok "train --overwrite" "${TRAIN[@]}" --overwrite --lr 1e-2
check "... replaces the adapter" test -n "$(cmp "$TMP/lora/adapter_model.safetensors" "$TMP/lora.before")"

echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
