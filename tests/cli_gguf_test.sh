#!/usr/bin/env bash
# CLI test of `peft export --to gguf`, checked in llama.cpp itself. Tiny GPT-2 and Llama models
# (peft init, byte-level tokenizer) learn a few sentences with LoRA (peft train). llama.cpp (the
# prebuilt CPU binaries of npm's node-llama-cpp 3.21.1) loads the exported base model with the
# exported LoRA adapter, and its greedy tokens for a few prompts must equal
# `peft generate --adapter --no-merge` token for token (f32); so must the merged model's, and the
# base model's alone. rsLoRA, AdaLoRA and VeRA adapters (their scales folded into lora_b) likewise.
# A q8_0 export must give the same first tokens (the test prints how far the probabilities move).
# llama.cpp's tokenization equals ours on the prompts, for the byte-level vocabulary and for small
# Llama 3, Qwen2 and SentencePiece-style ones. @huggingface/gguf reads every file written and lists
# the metadata and tensors meant. First, the refusals, which need no llama.cpp.
# The npm packages are installed once into build/npm (PEFT_NPM_DIR); when that is impossible the
# llama.cpp part is SKIPPED, except under CI=true, where it FAILS.
# Usage: PEFT=build/peft bash tests/cli_gguf_test.sh
set -u
PEFT=${PEFT:-build/peft}
HERE=$(cd "$(dirname "$0")" && pwd)
NPM_DIR=${PEFT_NPM_DIR:-build/npm}
TMP=$(mktemp -d /tmp/peft-cli-gguf.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$HERE/cli_lib.sh"
export OMP_NUM_THREADS=2
skipped=0

# ---- models, data, adapters ----
for arch in gpt2 llama; do
    "$PEFT" init --arch $arch --layers 2 --hidden 64 --heads 4 --kv-heads 2 --context 64 --seed 5 --out "$TMP/$arch" >/dev/null
done
for i in $(seq 1 60); do printf 'the cat sat on the mat.\na dog ran in the park.\nthe bird sang a song.\n'; done >"$TMP/text.txt"
train() {  # train ARCH NAME METHOD-OPTIONS...
    local arch=$1 name=$2; shift 2
    "$PEFT" train --model "$TMP/$arch" --data "$TMP/text.txt" "$@" --steps 40 --batch 4 --seq-len 48 --seed 3 \
        --out "$TMP/$name" >/dev/null 2>"$TMP/err" || bad "train $name ($(tail -c 300 "$TMP/err"))"
}
train gpt2 gpt2-lora --method lora --r 8 --alpha 32 --targets c_attn,c_proj,c_fc --lr 1e-2
train llama llama-lora --method lora --r 8 --alpha 16 --targets all-linear --lr 1e-2
train llama llama-rslora --method lora --r 4 --alpha 8 --rslora --targets q_proj,k_proj,v_proj --lr 1e-2
train llama llama-adalora --method adalora --init-r 6 --target-r 3 --tinit 5 --tfinal 10 --targets q_proj,k_proj,down_proj --lr 2e-2
train llama llama-vera --method vera --r 16 --targets q_proj,k_proj,up_proj --lr 5e-2

# ---- refusals (no file is left behind) ----
export_fails() {  # export_fails NAME STATUS PATTERN EXPORT-OPTIONS...
    local name=$1 status=$2 pattern=$3; shift 3
    run_fails "$name" "$status" "$pattern" "$PEFT" export "$@" --out "$TMP/refused.gguf"
    check "$name: nothing written" test -z "$(ls "$TMP" | grep refused)"
}
export_fails "--to another format" 2 "--to safetensors is not a format" --model "$TMP/gpt2" --to safetensors
export_fails "--merge without --adapter" 2 "--merge needs --adapter" --model "$TMP/gpt2" --merge --to gguf
export_fails "unknown --type" 2 "unknown GGUF type \"q4_0\"" --model "$TMP/gpt2" --to gguf --type q4_0
cp -r "$TMP/gpt2" "$TMP/other-pre"
perl -MJSON::PP -i -0pe '$j = JSON::PP->new->decode($_); $j->{pre_tokenizer} = {type => "Sequence", pretokenizers => [
    {type => "Split", pattern => {Regex => "\\w+|\\s+"}, behavior => "Isolated", invert => JSON::PP::false},
    {type => "ByteLevel", add_prefix_space => JSON::PP::false, use_regex => JSON::PP::false}]}; $_ = JSON::PP->new->encode($j)' "$TMP/other-pre/tokenizer.json"
export_fails "a pre-tokenizer llama.cpp lacks" 1 "other-pre/tokenizer.json: this pre-tokenizer .* has no llama.cpp counterpart" --model "$TMP/other-pre" --to gguf
train llama llama-dora --method dora --r 4 --targets q_proj,v_proj --lr 1e-2
export_fails "a DoRA adapter (its magnitudes are no low-rank product)" 1 "DoRA adapter is not a low-rank product.*--merge" \
    --model "$TMP/llama" --adapter "$TMP/llama-dora" --to gguf
run_ok "a DoRA adapter merged into the model" "$PEFT" export --model "$TMP/llama" --adapter "$TMP/llama-dora" --merge --to gguf \
    --out "$TMP/llama-dora-merged.gguf"

# ---- the exports ----
ex() { local out=$1; shift; run_ok "export $(basename "$out")" "$PEFT" export "$@" --to gguf --out "$out"; }
# The chat template and the padding token of tokenizer_config.json go into the model's GGUF.
json_set "$TMP/llama/tokenizer_config.json" chat_template '"{% for m in messages %}{{ m.content }}\n{% endfor %}"'
json_set "$TMP/llama/tokenizer_config.json" pad_token '"<|endoftext|>"'
for arch in gpt2 llama; do
    ex "$TMP/$arch.gguf" --model "$TMP/$arch"
    ex "$TMP/$arch-lora.gguf" --model "$TMP/$arch" --adapter "$TMP/$arch-lora"
    ex "$TMP/$arch-merged.gguf" --model "$TMP/$arch" --adapter "$TMP/$arch-lora" --merge
    for type in q8_0 f16 bf16; do ex "$TMP/$arch-merged-$type.gguf" --model "$TMP/$arch" --adapter "$TMP/$arch-lora" --merge --type $type; done
done
for method in rslora adalora vera; do ex "$TMP/llama-$method.gguf" --model "$TMP/llama" --adapter "$TMP/llama-$method"; done

# ---- llama.cpp and @huggingface/gguf from npm ----
finish() {
    [ $skipped -eq 0 ] || echo "*** SKIPPED $skipped GGUF tests (the skip lines above) ***"
    echo "$passed passed, $failed failed, $skipped skipped"
    [ $failed -eq 0 ]
    exit
}
npm_ready() {
    grep -q '"version": "3.21.1"' "$NPM_DIR/node_modules/node-llama-cpp/package.json" 2>/dev/null &&
        [ -d "$NPM_DIR/node_modules/@node-llama-cpp/linux-x64/bins" ] && [ -f "$NPM_DIR/node_modules/@huggingface/gguf/package.json" ]
}
why=""
if [ "$(uname -sm)" != "Linux x86_64" ]; then why="node-llama-cpp's linux-x64 binaries do not run on $(uname -sm)"
elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then why="node and npm are needed"
elif ! npm_ready; then
    echo "# installing node-llama-cpp 3.21.1 (CPU binaries only) and @huggingface/gguf into $NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error \
        node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1 @huggingface/gguf@0.4.6 >"$TMP/npm.log" 2>&1
    npm_ready || why="npm install failed: $(tail -c 400 "$TMP/npm.log")"
fi
if [ -n "$why" ]; then
    if [ "${CI:-}" = true ]; then bad "llama.cpp checks: $why"; finish; fi
    echo "*** SKIPPED: the llama.cpp checks: $why ***"
    skipped=$((skipped + 1))
    finish
fi
export NODE_MODULES=$(cd "$NPM_DIR/node_modules" && pwd)
node_check() { node "$HERE/gguf_check.mjs" "$@"; }
echo "# $(node_check version) (node-llama-cpp 3.21.1), @huggingface/gguf $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$NODE_MODULES/@huggingface/gguf/package.json")"

# ---- generation: llama.cpp's greedy tokens against peft generate's ----
printf 'the cat\na dog\nthe bird sang\non the\nxyz\n' >"$TMP/prompts.txt"
same() {  # same NAME OURS THEIRS
    if cmp -s "$2" "$3"; then ok "$1"; else bad "$1"; diff "$2" "$3" | head -6 | sed 's/^/    /'; fi
}
differ() { ! cmp -s "$1" "$2"; }
for arch in gpt2 llama; do
    M=$TMP/$arch
    while IFS= read -r p; do "$PEFT" tokenize --model "$M" "$p"; done <"$TMP/prompts.txt" >"$TMP/$arch.ids"
    gen_ours() { "$PEFT" generate --model "$M" "$@" --prompts "$TMP/prompts.txt" --max-tokens 20 --ids 2>/dev/null; }
    gen_ours >"$TMP/ours-base"
    node_check generate "$TMP/$arch.gguf" - 20 <"$TMP/$arch.ids" >"$TMP/cpp-base"
    same "$arch base: llama.cpp's greedy tokens equal peft generate's" "$TMP/ours-base" "$TMP/cpp-base"
    gen_ours --adapter "$TMP/$arch-lora" --no-merge >"$TMP/ours-lora"
    node_check generate "$TMP/$arch.gguf" "$TMP/$arch-lora.gguf" 20 <"$TMP/$arch.ids" >"$TMP/cpp-lora"
    same "$arch LoRA adapter GGUF on the base GGUF: llama.cpp's tokens equal peft generate --no-merge's" "$TMP/ours-lora" "$TMP/cpp-lora"
    check "$arch LoRA: the adapter changes the output" differ "$TMP/ours-base" "$TMP/ours-lora"
    node_check generate "$TMP/$arch-merged.gguf" - 20 <"$TMP/$arch.ids" >"$TMP/cpp-merged"
    same "$arch merged GGUF: llama.cpp's tokens equal peft generate --no-merge's" "$TMP/ours-lora" "$TMP/cpp-merged"
    echo "  $arch with LoRA, first prompt: $(head -1 "$TMP/ours-lora")"
    for type in q8_0 f16 bf16; do
        node_check probs "$TMP/$arch-merged.gguf" "$TMP/$arch-merged-$type.gguf" <"$TMP/$arch.ids" >"$TMP/probs"
        moved=$(awk '{ if ($3 > m) m = $3 } END { print m }' "$TMP/probs")
        echo "  $arch merged $type against f32: largest change of a next-token probability $moved"
        check "$arch merged $type: the same first token for every prompt" awk '$1 != $2 { exit 1 }' "$TMP/probs"
    done
done
for method in rslora adalora vera; do
    M=$TMP/llama
    "$PEFT" generate --model "$M" --adapter "$TMP/llama-$method" --no-merge --prompts "$TMP/prompts.txt" --max-tokens 20 --ids 2>/dev/null >"$TMP/ours"
    node_check generate "$TMP/llama.gguf" "$TMP/llama-$method.gguf" 20 <"$TMP/llama.ids" >"$TMP/cpp"
    same "llama $method adapter GGUF: llama.cpp's tokens equal peft generate --no-merge's" "$TMP/ours" "$TMP/cpp"
    check "llama $method: the adapter changes the output" differ "$TMP/ours-base" "$TMP/ours"
done
echo "  AdaLoRA: the ranks kept per module, of 6: $(node_check meta "$TMP/llama-adalora.gguf" | awk -F'\t' '/lora_b/ { split($4, s, ","); printf "%s ", s[1] }')"

# ---- tokenization: llama.cpp's against ours ----
cat >"$TMP/texts.txt" <<'EOF'
the cat sat on the mat
Hello, World! 12345 don't I'M
  two  spaces\tand a tab\nand lines\n\n
héllo wörld ñ 日本語 🙂
the<|endoftext|>cat
EOF
tokenization() {  # tokenization NAME MODEL-DIR GGUF TEXTS
    while IFS= read -r line; do printf '%b' "$line" | "$PEFT" tokenize --model "$2" -; done <"$4" >"$TMP/tok-ours"
    node_check tokenize "$3" <"$4" >"$TMP/tok-cpp"
    same "$1: llama.cpp tokenizes the texts as we do" "$TMP/tok-ours" "$TMP/tok-cpp"
}
tokenization "byte-level vocabulary (peft init)" "$TMP/gpt2" "$TMP/gpt2.gguf" "$TMP/texts.txt"
grep -v endoftext "$TMP/texts.txt" >"$TMP/texts-plain.txt"
printf 'the mat\n<s>the cat</s> sat\n' >>"$TMP/texts-plain.txt"
for kind in llama3 qwen2 spm metaspace; do
    mkdir -p "$TMP/tok-$kind"
    perl "$HERE/gguf_tokenizers.pl" $kind "$TMP/gpt2/tokenizer.json" "$TMP/tok-$kind/tokenizer.json"
    "$PEFT" init --arch llama --layers 1 --hidden 32 --heads 2 --context 32 --tokenizer-from "$TMP/tok-$kind" --out "$TMP/m-$kind" >/dev/null
    ex "$TMP/m-$kind.gguf" --model "$TMP/m-$kind"
    texts=$TMP/texts-plain.txt
    # Metaspace's prepend_scheme "first" puts "▁" only at the start of a text that does not begin
    # with a space; llama.cpp before every text and after every special token (docs/gguf.md).
    [ $kind = metaspace ] && { grep -v -e '<s>' -e '^ ' "$TMP/texts-plain.txt" >"$TMP/texts-first.txt"; texts=$TMP/texts-first.txt; }
    tokenization "$kind vocabulary" "$TMP/m-$kind" "$TMP/m-$kind.gguf" "$texts"
done

# GPT-2's real vocabulary (50257 tokens, 50000 merges; only in the shared fixtures): llama.cpp's
# tokenization of the reference cases equals HF's ids, which ours equals (peft check).
GPT2_TOK=${PEFT_SHARED_FIXTURES:-../shared/fixtures/hf-peft}/tokenizer-gpt2
if [ -f "$GPT2_TOK/cases.jsonl" ]; then
    "$PEFT" init --arch gpt2 --layers 1 --hidden 32 --heads 2 --context 32 --tokenizer-from "$GPT2_TOK" --out "$TMP/m-gpt2real" >/dev/null
    ex "$TMP/m-gpt2real.gguf" --model "$TMP/m-gpt2real"
    each_case() { perl -MJSON::PP -CO -ne "my \$j = decode_json(\$_); next if \$j->{text} eq ''; $1" "$GPT2_TOK/cases.jsonl"; }
    each_case 'my $t = $j->{text}; $t =~ s/\\/\\\\/g; $t =~ s/\n/\\n/g; $t =~ s/\t/\\t/g; $t =~ s/\r/\\r/g; print "$t\n"' >"$TMP/cases.txt"
    each_case 'print join(" ", @{$j->{ids}}), "\n"' >"$TMP/cases.ids"
    node_check tokenize "$TMP/m-gpt2real.gguf" <"$TMP/cases.txt" >"$TMP/cases.cpp"
    same "GPT-2's vocabulary: llama.cpp tokenizes the $(wc -l <"$TMP/cases.txt") reference texts to HF's ids" "$TMP/cases.ids" "$TMP/cases.cpp"
else
    echo "*** SKIPPED: $GPT2_TOK not found: GPT-2's real vocabulary in llama.cpp is not tested ***"
    skipped=$((skipped + 1))
fi

# ---- @huggingface/gguf reads every file and lists the metadata and tensors meant ----
for f in "$TMP"/*.gguf; do
    if node_check meta "$f" >"$f.meta" 2>"$TMP/err"; then ok "@huggingface/gguf reads $(basename "$f")"
    else bad "@huggingface/gguf reads $(basename "$f") ($(tail -c 300 "$TMP/err"))"; fi
done
meta_is() {  # meta_is FILE: the metadata lines (stdin) are exactly FILE's
    sort >"$TMP/want"; grep -v '^tensor' "$1.meta" | sort >"$TMP/got"
    same "$(basename "$1"): exactly the metadata meant" "$TMP/want" "$TMP/got"
}
has_tensors() {  # has_tensors FILE COUNT LINE...: that many tensors, these among them
    local f=$1 n=$2; shift 2
    check "$(basename "$f"): $n tensors" test "$(grep -c '^tensor' "$f.meta")" -eq "$n"
    for line in "$@"; do check "$(basename "$f"): $line" grep -qFx "$(printf '%b' "$line")" "$f.meta"; done
}
T=$(printf '\t')
meta_is "$TMP/gpt2.gguf" <<EOF
general.architecture${T}gpt2
general.type${T}model
general.name${T}gpt2
general.quantization_version${T}2
general.file_type${T}0
gpt2.context_length${T}64
gpt2.embedding_length${T}64
gpt2.feed_forward_length${T}256
gpt2.block_count${T}2
gpt2.attention.head_count${T}4
gpt2.attention.layer_norm_epsilon${T}0.00001
tokenizer.ggml.model${T}gpt2
tokenizer.ggml.pre${T}gpt-2
tokenizer.ggml.tokens${T}[257]
tokenizer.ggml.token_type${T}[257]
tokenizer.ggml.merges${T}[0]
tokenizer.ggml.bos_token_id${T}256
tokenizer.ggml.eos_token_id${T}256
tokenizer.ggml.add_bos_token${T}false
tokenizer.ggml.add_eos_token${T}false
EOF
has_tensors "$TMP/gpt2.gguf" 28 'tensor\ttoken_embd.weight\tF32\t64,257' 'tensor\tposition_embd.weight\tF32\t64,64' \
    'tensor\tblk.1.attn_qkv.weight\tF32\t64,192' 'tensor\tblk.1.attn_qkv.bias\tF32\t192' 'tensor\tblk.0.ffn_down.weight\tF32\t256,64' \
    'tensor\toutput_norm.bias\tF32\t64'
meta_is "$TMP/llama-lora.gguf" <<EOF
general.architecture${T}llama
general.type${T}adapter
general.name${T}llama-lora
general.quantization_version${T}2
general.file_type${T}0
adapter.type${T}lora
adapter.lora.alpha${T}16
EOF
has_tensors "$TMP/llama-lora.gguf" 28 'tensor\tblk.0.attn_k.weight.lora_a\tF32\t64,8' 'tensor\tblk.0.attn_k.weight.lora_b\tF32\t8,32' \
    'tensor\tblk.1.ffn_down.weight.lora_a\tF32\t176,8' 'tensor\tblk.1.ffn_gate.weight.lora_b\tF32\t8,176'
has_tensors "$TMP/gpt2-lora.gguf" 16 'tensor\tblk.0.attn_qkv.weight.lora_a\tF32\t64,8' 'tensor\tblk.0.attn_qkv.weight.lora_b\tF32\t8,192'
check "llama-vera.gguf: VeRA as a LoRA of rank 16 whose scale llama.cpp takes as 16/16" grep -qFx "adapter.lora.alpha${T}16" "$TMP/llama-vera.gguf.meta"
# q8_0: rows of 64 values are Q8_0; ffn_down's rows of 176 (not a multiple of 32) fall back to F16,
# norms stay F32, as llama.cpp's converter does.
check "llama-merged-q8_0.gguf: file type 7 (mostly Q8_0)" grep -qFx "general.file_type${T}7" "$TMP/llama-merged-q8_0.gguf.meta"
has_tensors "$TMP/llama-merged-q8_0.gguf" 21 'tensor\ttoken_embd.weight\tQ8_0\t64,257' 'tensor\tblk.0.attn_q.weight\tQ8_0\t64,64' \
    'tensor\tblk.0.ffn_down.weight\tF16\t176,64' 'tensor\tblk.0.attn_norm.weight\tF32\t64' 'tensor\toutput.weight\tQ8_0\t64,257'
check "llama-merged-bf16.gguf: file type 32 (mostly BF16)" grep -qFx "general.file_type${T}32" "$TMP/llama-merged-bf16.gguf.meta"
has_tensors "$TMP/llama.gguf" 21 'tensor\tblk.1.attn_v.weight\tF32\t64,32'
for key in 'tokenizer.chat_template\t{% for m in messages %}{{ m.content }}\\n{% endfor %}' 'tokenizer.ggml.padding_token_id\t256' \
    'llama.context_length\t64' 'llama.attention.head_count_kv\t2' 'llama.rope.freq_base\t10000' 'llama.vocab_size\t257' \
    'llama.attention.key_length\t16' 'llama.rope.dimension_count\t16' 'llama.feed_forward_length\t176'; do
    check "llama.gguf: $key" grep -qFx "$(printf '%b' "$key")" "$TMP/llama.gguf.meta"
done
for kind in llama3 qwen2 spm metaspace; do
    pre=$(sed -n 's/^tokenizer.ggml.pre\t//p' "$TMP/m-$kind.gguf.meta") model=$(sed -n 's/^tokenizer.ggml.model\t//p' "$TMP/m-$kind.gguf.meta")
    echo "  $kind vocabulary: tokenizer.ggml.model $model, pre $pre"
done
check "spm vocabulary: scores and a space prefix" grep -qFx "tokenizer.ggml.add_space_prefix${T}true" "$TMP/m-spm.gguf.meta"
finish
