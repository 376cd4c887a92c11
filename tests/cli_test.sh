#!/usr/bin/env bash
# CLI tests: every broken input gets a clear error naming the file and the problem, a non-zero
# exit, no crash, and nothing half written. Files are corrupted with shell tools only. Then the other
# CLI suites (tests/cli_*_test.sh); the file tests need the reference models, the rest runs without.
# Ends with "N passed, N failed, N skipped" (the other suites' skips included).
# Usage: PEFT=build/peft bash tests/cli_test.sh
set -u
PEFT=${PEFT:-build/peft}
FIX=${PEFT_FIXTURES:-tests/fixtures/hf-peft}
TMP=$(mktemp -d /tmp/peft-cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"
skipped=0
finish() {
    [ $skipped -eq 0 ] || echo "*** SKIPPED $skipped CLI tests (the skip lines above) ***"
    echo "$passed passed, $failed failed, $skipped skipped"
    [ $failed -eq 0 ]
    exit
}

# expect_error / expect_usage NAME PATTERN CMD...: exit 1 (bad input) / 2 (bad command line), stderr matches PATTERN.
expect_error() { local name=$1; shift; run_fails "$name" 1 "$@"; }
expect_usage() { local name=$1; shift; run_fails "$name" 2 "$@"; }

# ---- impossible options ----
expect_usage "unknown command" "unknown command" "$PEFT" frobnicate
expect_usage "missing option value" "needs a value" "$PEFT" info --model
expect_usage "unknown option" "unknown option --bogus" "$PEFT" info --bogus 1
if "$PEFT" --version | grep -qE '^peft ([0-9a-f]{7,}(-dirty)?|unknown)$'; then ok "--version names the commit it was built from"
else bad "--version names the commit it was built from (got: $("$PEFT" --version 2>&1 | head -c 200))"; fi

# ---- the other suites; their skips count here ----
for extra in tests/cli_*_test.sh; do
    [ -f "$extra" ] || continue
    PEFT="$PEFT" bash "$extra" | tee "$TMP/suite"
    if [ "${PIPESTATUS[0]}" -eq 0 ]; then ok "$extra"; else bad "$extra"; fi
    n=$(tail -1 "$TMP/suite" | sed -n 's/.*, \([0-9]*\) skipped$/\1/p')
    skipped=$((skipped + ${n:-0}))
done

if [ ! -d "$FIX" ]; then
    echo "*** SKIPPED: $FIX not found: the broken-file CLI tests need the reference models ***"
    skipped=$((skipped + 1)); echo "skip model and adapter file errors, merge, info (need $FIX)"
    finish
fi

fresh() { rm -rf "$TMP/$1"; cp -r "$FIX/$2" "$TMP/$1"; chmod -R u+w "$TMP/$1"; }
header_len() { od -An -tu8 -N8 "$1" | tr -d ' '; }
# patch FILE OFFSET BYTES(printf-escaped)
patch() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
offset_of() { grep -obUa -- "$2" "$1" | head -1 | cut -d: -f1; }

# ---- model folders ----
fresh m gpt2-lora/model; head -c 1000 "$TMP/m/model.safetensors" > "$TMP/t" && mv "$TMP/t" "$TMP/m/model.safetensors"
expect_error "truncated safetensors" "model.safetensors.*(past|outside|end)" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; : > "$TMP/m/model.safetensors"
expect_error "empty safetensors" "model.safetensors" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; patch "$TMP/m/model.safetensors" 0 '\xff\xff\xff\x00\x00\x00\x00\x00'
expect_error "header length past the end" "model.safetensors.*header" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; patch "$TMP/m/model.safetensors" 8 'X'
expect_error "header not JSON" "model.safetensors.*JSON" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; patch "$TMP/m/model.safetensors" "$(offset_of "$TMP/m/model.safetensors" '"F32"')" '"F99"'
expect_error "unknown dtype" "model.safetensors.*F99" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; off=$(offset_of "$TMP/m/model.safetensors" '"data_offsets":\[0,'); patch "$TMP/m/model.safetensors" $((off + 16)) '9'
expect_error "offsets disagree with shape" "model.safetensors" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; rm "$TMP/m/config.json"
expect_error "missing config.json" "config.json" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; echo '{"model_type": "gpt2",' > "$TMP/m/config.json"
expect_error "malformed config.json" "config.json.*JSON" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; sed -i 's/"n_head": 4/"n_head": 5/' "$TMP/m/config.json"
expect_error "n_embd not divisible by n_head" "config.json.*divisible" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; sed -i 's/"n_layer": 2/"n_layer": 3/' "$TMP/m/config.json"
expect_error "missing tensor" "no tensor transformer.h.2" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; sed -i 's/"vocab_size": 96/"vocab_size": 97/' "$TMP/m/config.json"
expect_error "tensor shape disagrees with config" "transformer.wte.weight has shape \[96, 32\]" "$PEFT" info --model "$TMP/m"
fresh m llama-lora/model; sed -i 's/"num_key_value_heads": 2/"num_key_value_heads": 3/' "$TMP/m/config.json"
expect_error "heads not divisible by kv heads" "num_key_value_heads" "$PEFT" info --model "$TMP/m"
fresh m llama-lora/model; sed -i 's/"model_type": "llama"/"model_type": "t5"/' "$TMP/m/config.json"
expect_error "unknown architecture" "model_type.*t5" "$PEFT" info --model "$TMP/m"
fresh m gpt2-lora/model; hl=$(header_len "$TMP/m/model.safetensors"); patch "$TMP/m/model.safetensors" $((8 + hl)) '\x00\x00\xc0\x7f'
expect_error "NaN weight" "non-finite" "$PEFT" info --model "$TMP/m"

# ---- adapter folders ----
fresh a gpt2-lora/adapter; sed -i 's/"peft_type": "LORA"/"peft_type": "FOO"/' "$TMP/a/adapter_config.json"
expect_error "unknown peft_type" "adapter_config.json.*peft_type.*FOO" "$PEFT" info --model "$FIX/gpt2-lora/model" --adapter "$TMP/a"
fresh a gpt2-lora/adapter; sed -i 's/"r": 4,/"r": 0,/' "$TMP/a/adapter_config.json"
expect_error "r = 0" "adapter_config.json.*r must be positive" "$PEFT" info --model "$FIX/gpt2-lora/model" --adapter "$TMP/a"
fresh a gpt2-lora/adapter; sed -i 's/"r": 4,/"r": 5,/' "$TMP/a/adapter_config.json"
expect_error "adapter shapes do not fit the base" "adapter_model.safetensors.*shape \[4, 32\].*\[5, 32\]" "$PEFT" info --model "$FIX/gpt2-lora/model" --adapter "$TMP/a"
fresh a gpt2-lora/adapter; sed -i 's/"peft_type": "LORA"/"peft_type": "ADALORA"/; s/"r": 4,/"r": 4, "init_r": 4, "target_r": 2,/' "$TMP/a/adapter_config.json"
expect_error "missing adapter keys" "adapter_model.safetensors: missing tensor" "$PEFT" info --model "$FIX/gpt2-lora/model" --adapter "$TMP/a"
expect_error "adapter for another architecture" "matched no module" "$PEFT" info --model "$FIX/llama-lora/model" --adapter "$FIX/gpt2-lora/adapter"
fresh a gpt2-lora/adapter; hl=$(header_len "$TMP/a/adapter_model.safetensors"); patch "$TMP/a/adapter_model.safetensors" $((8 + hl + 4)) '\x00\x00\x80\x7f'
expect_error "Inf in adapter" "non-finite" "$PEFT" info --model "$FIX/gpt2-lora/model" --adapter "$TMP/a"
# Nothing half written: a failed merge leaves no output folder behind.
expect_error "merge with a bad adapter" "non-finite" "$PEFT" merge --model "$FIX/gpt2-lora/model" --adapter "$TMP/a" --out "$TMP/merged"
if [ ! -e "$TMP/merged" ]; then ok "failed merge wrote nothing"; else bad "failed merge wrote nothing"; fi

# ---- good paths: merge gives a loadable folder, info describes it ----
if "$PEFT" merge --model "$FIX/gpt2-lora/model" --adapter "$FIX/gpt2-lora/adapter" --out "$TMP/merged" >/dev/null &&
   "$PEFT" info --model "$TMP/merged" | grep -q "GPT2LMHeadModel" && ! ls "$TMP/merged" | grep -q tmp; then ok "merge writes an HF folder"
else bad "merge writes an HF folder"; fi
if "$PEFT" info --model "$FIX/gpt2-vera/model" --adapter "$FIX/gpt2-vera/adapter" | grep -q "trainable"; then ok "info on a VeRA adapter"
else bad "info on a VeRA adapter"; fi
finish
