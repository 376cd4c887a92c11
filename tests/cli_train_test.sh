#!/usr/bin/env bash
# CLI tests of `peft train` and `peft eval` on a tiny GPT-2 made by `peft init` (2 layers, hidden 32,
# 64 positions, byte-level tokenizer). LoRA on plain text
# and full fine-tuning on JSONL end to end, the output folders' files, evaluation of what was saved,
# Ctrl-C and --resume, a quantized base (--quantize), and data errors that name the file and line.
# Usage: PEFT=build/peft bash tests/cli_train_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-train.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"
has_files() { local d=$1; shift; for f in "$@"; do [ -s "$d/$f" ] || { echo "  missing $d/$f"; return 1; }; done; }
count() { grep -c -- "$2" "$1" 2>/dev/null || true; }

# ---- the model: a tiny GPT-2 (the reference cases' shape) with peft init's byte-level tokenizer ----
M=$TMP/model
"$PEFT" init --arch gpt2 --layers 2 --hidden 32 --heads 4 --context 64 --seed 5 --out "$M" >/dev/null

# ---- data ----
D=$TMP/data
mkdir -p "$D"
for i in $(seq 1 150); do echo "The Eagle $i is a coffee shop near the river; it serves cheap food."; done >"$D/train.txt"
for i in $(seq 151 180); do echo "The Eagle $i is a coffee shop near the river; it serves cheap food."; done >"$D/val.txt"
for i in $(seq 1 40); do echo "{\"prompt\": \"name[Eagle $i], food[cheap]\n\", \"completion\": \"Eagle $i serves cheap food.\"}"; done >"$D/pc.jsonl"
printf 'mr,ref\n"name[Eagle], food[Thai]","The Eagle serves ""Thai"" food, cheaply."\nname[Mill],The Mill is by the river.\n' >"$D/e2e.csv"

COMMON=(--model "$M" --seq-len 64 --batch 4 --threads 1)
last_eval() { grep '"eval_loss"' "$1" | tail -1 | sed 's/.*"eval_loss":\([^,}]*\).*/\1/'; }
near() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-3) }'; }

# ---- LoRA on plain text, with validation ----
echo "# peft train --method lora on a text file"
run_ok "train lora" "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --val "$D/val.txt" --method lora --steps 12 \
    --lr 1e-2 --eval-every 6 --out "$TMP/lora"
check "lora output: adapter_config.json, adapter_model.safetensors, train_log.jsonl, loss.svg" \
    has_files "$TMP/lora" adapter_config.json adapter_model.safetensors train_log.jsonl loss.svg
check "lora adapter_config.json is a PEFT LoRA config" grep -q '"peft_type":[[:space:]]*"LORA"' "$TMP/lora/adapter_config.json"
check "train_log.jsonl: 12 steps with loss, lr, grad_norm, tokens_per_s" \
    test "$(grep '"loss"' "$TMP/lora/train_log.jsonl" | grep '"lr"' | grep '"grad_norm"' | grep -c '"tokens_per_s"')" -eq 12
check "train_log.jsonl: evaluations at steps 0, 6 and 12" test "$(count "$TMP/lora/train_log.jsonl" '"eval_loss"')" -eq 3
check "loss.svg is an SVG with the two curves" test "$(count "$TMP/lora/loss.svg" '<polyline')" -eq 2
check "plain progress lines without a terminal" grep -q '^step 12/12 ' "$TMP/err"
check "validation loss reported" grep -qE 'validation loss [0-9.]+ -> [0-9.]+' "$TMP/err"
check "tokenized data cached next to the source" test -n "$(ls "$D"/train.txt.*.peft-cache 2>/dev/null)"

echo "# peft eval"
run_ok "eval with the adapter" "$PEFT" eval --model "$M" --adapter "$TMP/lora" --data "$D/val.txt" --seq-len 64 --threads 1
check "eval prints loss and perplexity" grep -qE '^loss [0-9.]+  perplexity [0-9.]+' "$TMP/out"
lora_eval=$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")
check "eval of the saved adapter = the last validation loss of training ($lora_eval)" near "$lora_eval" "$(last_eval "$TMP/lora/train_log.jsonl")"
run_ok "eval of the base model on CSV" "$PEFT" eval --model "$M" --data "$D/e2e.csv" --seq-len 64 --threads 1
check "eval output on CSV" grep -qE '^loss [0-9.]+  perplexity' "$TMP/out"

# ---- DoRA: LoRA with use_dora, trained, evaluated, shown, generated with live and merged ----
echo "# peft train --method dora"
run_ok "train dora" "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --val "$D/val.txt" --method dora --steps 6 \
    --lr 1e-2 --eval-every 3 --targets all-linear --out "$TMP/dora"
check "dora adapter_config.json: a LoRA config with use_dora" \
    grep -qE '"use_dora":[[:space:]]*true' "$TMP/dora/adapter_config.json"
run_ok "eval the dora adapter" "$PEFT" eval --model "$M" --adapter "$TMP/dora" --data "$D/val.txt" --seq-len 64 --threads 1
dora_eval=$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")
check "eval of the saved DoRA adapter = the last validation loss of training ($dora_eval)" near "$dora_eval" "$(last_eval "$TMP/dora/train_log.jsonl")"
run_ok "info on the dora adapter" "$PEFT" info --model "$M" --adapter "$TMP/dora"
check "info shows use_dora" grep -q 'adapter       LORA r=8 alpha=8 use_dora (DoRA) on 8 modules' "$TMP/out"
run_ok "generate with the dora adapter merged" "$PEFT" generate --model "$M" --adapter "$TMP/dora" --prompt "The Eagle" --max-tokens 8 --threads 1
cp "$TMP/out" "$TMP/dora_merged.txt"
run_ok "generate with the dora adapter live" "$PEFT" generate --model "$M" --adapter "$TMP/dora" --no-merge --prompt "The Eagle" --max-tokens 8 --threads 1
check "merged and live DoRA generate the same text" cmp -s "$TMP/out" "$TMP/dora_merged.txt"
run_fails "generate dora --no-merge --device cuda is refused by name" 1 'DoRA adapters do not run live on the GPU' \
    "$PEFT" generate --model "$M" --adapter "$TMP/dora" --no-merge --device cuda --prompt "The Eagle" --max-tokens 2

# ---- full fine-tuning on JSONL prompt/completion ----
echo "# peft train --method full on JSONL"
run_ok "train full" "$PEFT" train "${COMMON[@]}" --data "$D/pc.jsonl" --val-fraction 0.2 --method full --steps 4 \
    --out "$TMP/full"
check "full output: config.json, model.safetensors, tokenizer files, train_log.jsonl, loss.svg" \
    has_files "$TMP/full" config.json model.safetensors tokenizer.json train_log.jsonl loss.svg
run_ok "eval the fully fine-tuned model" "$PEFT" eval --model "$TMP/full" --data "$D/pc.jsonl" --seq-len 64 --threads 1

# ---- VeRA and AdaLoRA ----
run_ok "train vera" "$PEFT" train "${COMMON[@]}" --data "$D/pc.jsonl" --method vera --r 16 --steps 2 --out "$TMP/vera"
check "vera saved without its projections" grep -q '"save_projection":[[:space:]]*false' "$TMP/vera/adapter_config.json"
run_ok "train adalora" "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --method adalora --init-r 4 --target-r 2 \
    --tinit 1 --tfinal 1 --steps 6 --out "$TMP/ada"
check "adalora log has the budget and per-module ranks" test "$(grep '"budget"' "$TMP/ada/train_log.jsonl" | grep -c '"ranks"')" -eq 6

# ---- Ctrl-C and --resume ----
echo "# Ctrl-C saves a checkpoint; --resume continues the same run"
LONG=("$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --method lora --steps 100000 --out "$TMP/long")
interrupt_after() {  # run LONG (+ args) until the log has more than $1 lines, then SIGINT it
    local lines=$1; shift
    "${LONG[@]}" "$@" >"$TMP/out" 2>"$TMP/err" &
    local pid=$! i=0
    while [ "$(wc -l 2>/dev/null <"$TMP/long/train_log.partial.jsonl" || echo 0)" -le "$lines" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    kill -INT $pid
    wait $pid
}
interrupt_after 3
rc=$?
check "SIGINT: exit 130 with a message" test $rc -eq 130 -a -n "$(grep 'continue with --resume' "$TMP/err")"
check "SIGINT: checkpoint written" has_files "$TMP/long/checkpoint" state.json state.safetensors
first=$(wc -l <"$TMP/long/train_log.partial.jsonl")
interrupt_after $((first + 3)) --resume
check "resumed from the checkpoint" grep -q "resuming from .* at step $first of" "$TMP/err"
steps_ok() { awk -F'"step":' '{ split($2, a, ","); if (a[1] != NR) exit 1 } END { exit NR < 2 }' "$1"; }
check "the log (still partial) counts each step once across the interruption" steps_ok "$TMP/long/train_log.partial.jsonl"
run_fails "resume with other settings is refused" 1 'checkpoint has batch 4 but this run has 2' "${LONG[@]}" --resume --batch 2

# ---- a quantized frozen base (--quantize) ----
echo "# peft train / eval / generate --quantize"
run_ok "train lora on an nf4 base" "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --val "$D/val.txt" --method lora --steps 8 \
    --lr 1e-2 --quantize nf4 --out "$TMP/qlora"
check "the run says the base is quantized" grep -q 'base quantized nf4 with double quantization' "$TMP/err"
first=$(grep '"eval_loss"' "$TMP/qlora/train_log.jsonl" | head -1 | sed 's/.*"eval_loss":\([^,}]*\).*/\1/')
check "training on the nf4 base lowers the validation loss" awk -v a="$first" -v b="$(last_eval "$TMP/qlora/train_log.jsonl")" 'BEGIN { exit !(b < a) }'
run_ok "eval the adapter on the nf4 base" "$PEFT" eval --model "$M" --adapter "$TMP/qlora" --data "$D/val.txt" --seq-len 64 --threads 1 --quantize nf4
check "eval on the nf4 base = the last validation loss of training" near "$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")" "$(last_eval "$TMP/qlora/train_log.jsonl")"
run_ok "eval on an fp4 base without double quantization" "$PEFT" eval --model "$M" --data "$D/val.txt" --seq-len 64 --threads 1 --quantize fp4 --no-double-quant
run_ok "generate on an int8 base with the adapter" "$PEFT" generate --model "$M" --adapter "$TMP/qlora" --prompt "The Eagle" --max-tokens 4 --quantize int8 --threads 1
check "generate says the adapter applies live" grep -q 'adapter applies live' "$TMP/err"
run_ok "estimate with an nf4 base" "$PEFT" estimate --model llama-2-7b --targets all-linear --r 64 --quantize nf4 --json
check "estimate counts the quantized linears" grep -q '"linear_bytes"' "$TMP/out"
run_fails "estimate refuses full fine-tuning of a quantized base" 2 'full fine-tuning is refused' "$PEFT" estimate --model gpt2 --method full --quantize int8
run_ok "peft quantize --to nf4 writes a bitsandbytes folder" "$PEFT" quantize --model "$M" --to nf4 --out "$TMP/m-nf4"
check "its config.json has bitsandbytes' quantization_config" grep -q '"bnb_4bit_quant_type":[[:space:]]*"nf4"' "$TMP/m-nf4/config.json"
run_ok "eval of the saved nf4 model" "$PEFT" eval --model "$TMP/m-nf4" --adapter "$TMP/qlora" --data "$D/val.txt" --seq-len 64 --threads 1
check "the saved nf4 model evaluates as --quantize nf4 does" near "$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")" "$(last_eval "$TMP/qlora/train_log.jsonl")"
# The header's dtypes of a safetensors file, sorted and unique, comma-separated.
st_dtypes() { head -c "$((8 + $(od -An -tu8 -N8 "$1")))" "$1" | tail -c +9 | grep -o '"dtype":"[A-Z0-9]*"' | cut -d'"' -f4 | sort -u | paste -sd, -; }
near_bf16() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 2e-2) }'; }
run_ok "merge into the nf4 model" "$PEFT" merge --model "$TMP/m-nf4" --adapter "$TMP/qlora" --out "$TMP/m-merged"
check "merge says it dequantized the base" grep -q 'dequantized the nf4 base' "$TMP/out"
check "merge says it saved bf16 (the default for a quantized base)" grep -qE 'merged [0-9]+ modules into .* \(bf16\)' "$TMP/out"
check "the bf16 merge: every tensor BF16" test "$(st_dtypes "$TMP/m-merged/model.safetensors")" = BF16
check "the bf16 merge's config.json: dtype and torch_dtype bfloat16" \
    test "$(grep -cE '"(torch_)?dtype":[[:space:]]*"bfloat16"' "$TMP/m-merged/config.json")" -eq 2
check "the merge's config.json has no quantization_config" test "$(count "$TMP/m-merged/config.json" quantization_config)" -eq 0
run_ok "eval of the bf16 merge" "$PEFT" eval --model "$TMP/m-merged" --data "$D/val.txt" --seq-len 64 --threads 1
check "the bf16 merge = the adapter live on the nf4 base, within bf16's rounding" near_bf16 "$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")" "$(last_eval "$TMP/qlora/train_log.jsonl")"
run_ok "generate with the bf16 merge" "$PEFT" generate --model "$TMP/m-merged" --prompt "The Eagle" --max-tokens 4 --threads 1
run_ok "merge into the nf4 model --dtype fp32" "$PEFT" merge --model "$TMP/m-nf4" --adapter "$TMP/qlora" --out "$TMP/m-merged32" --dtype fp32
check "the fp32 merge: every tensor F32" test "$(st_dtypes "$TMP/m-merged32/model.safetensors")" = F32
run_ok "eval of the fp32 merge" "$PEFT" eval --model "$TMP/m-merged32" --data "$D/val.txt" --seq-len 64 --threads 1
check "the fp32 merge (no quantization_config) = the adapter live on the nf4 base" near "$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")" "$(last_eval "$TMP/qlora/train_log.jsonl")"
check "the fp32 merge's config.json has no quantization_config" test "$(count "$TMP/m-merged32/config.json" quantization_config)" -eq 0
run_ok "merge into an unquantized base keeps fp32" "$PEFT" merge --model "$M" --adapter "$TMP/lora" --out "$TMP/m-plain"
check "the unquantized merge: every tensor F32, said so" test "$(st_dtypes "$TMP/m-plain/model.safetensors")" = F32 -a -n "$(grep '(fp32)' "$TMP/out")"
run_ok "merge into an unquantized base --dtype bf16" "$PEFT" merge --model "$M" --adapter "$TMP/lora" --out "$TMP/m-plain16" --dtype bf16
check "its tensors are BF16" test "$(st_dtypes "$TMP/m-plain16/model.safetensors")" = BF16
for method in vera adalora; do
    extra=(); [ $method = adalora ] && extra=(--init-r 6 --target-r 2 --tinit 1 --tfinal 1 --delta-t 1)
    run_ok "train $method on the nf4 folder" "$PEFT" train --model "$TMP/m-nf4" --data "$D/train.txt" --method $method --steps 3 --seq-len 64 \
        --batch 4 --threads 1 --lr 1e-2 --out "$TMP/q$method" "${extra[@]}"
    run_ok "eval $method live on the nf4 folder" "$PEFT" eval --model "$TMP/m-nf4" --adapter "$TMP/q$method" --data "$D/val.txt" --seq-len 64 --threads 1
    live=$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")
    run_ok "merge $method into the nf4 folder (bf16)" "$PEFT" merge --model "$TMP/m-nf4" --adapter "$TMP/q$method" --out "$TMP/m-q$method"
    run_ok "eval of the $method merge" "$PEFT" eval --model "$TMP/m-q$method" --data "$D/val.txt" --seq-len 64 --threads 1
    check "the $method bf16 merge = $method live on the nf4 base, within bf16's rounding" near_bf16 "$(sed 's/^loss \([0-9.]*\).*/\1/' "$TMP/out")" "$live"
done
run_fails "merge --dtype fp16 is refused" 2 'dtype must be fp32 or bf16, not "fp16"' "$PEFT" merge --model "$TMP/m-nf4" --adapter "$TMP/qlora" --out "$TMP/x" --dtype fp16
run_fails "merge --dtype with --quantize is refused" 2 'with --quantize its linears are quantized' \
    "$PEFT" merge --model "$TMP/m-nf4" --adapter "$TMP/qlora" --out "$TMP/x" --dtype bf16 --quantize nf4
run_fails "merge --dtype with --adapters and no --into-model is refused" 2 'dtype is a merged model.s dtype: it needs --into-model' \
    "$PEFT" merge --model "$M" --adapters "$TMP/lora:0.5" --combination linear --out "$TMP/x" --dtype bf16
run_ok "merge into the nf4 model, quantized again to int8" "$PEFT" merge --model "$TMP/m-nf4" --adapter "$TMP/qlora" --out "$TMP/m-merged8" --quantize int8
check "merge --quantize says how far the logits move" grep -qE 're-quantized to int8: the logits of a 64-token probe move by [0-9.e-]+ \(relative\)' "$TMP/out"
run_fails "--quantize on a folder saved quantized otherwise is refused" 1 'saved quantized as nf4; --quantize int8' "$PEFT" eval --model "$TMP/m-nf4" --data "$D/val.txt" --quantize int8
run_fails "full fine-tuning of a quantized base is refused" 1 'full fine-tuning trains every weight' "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --method full --quantize nf4 --out "$TMP/x"
run_fails "full fine-tuning of a folder saved quantized is refused" 1 'nf4-quantized base: full fine-tuning' "$PEFT" train --model "$TMP/m-nf4" --data "$D/train.txt" --method full --seq-len 64 --out "$TMP/x"
run_ok "export of the nf4 folder to GGUF (dequantized)" "$PEFT" export --model "$TMP/m-nf4" --to gguf --out "$TMP/m-nf4.gguf"
run_fails "an unknown quantization is refused" 2 'quantization "int4" is not supported' "$PEFT" eval --model "$M" --data "$D/val.txt" --quantize int4
run_fails "--no-double-quant with int8 is refused" 2 'no-double-quant goes with --quantize nf4 or fp4' "$PEFT" eval --model "$M" --data "$D/val.txt" --quantize int8 --no-double-quant
run_fails "--recompute on the CPU is refused" 1 'recompute is for --device cuda' "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --recompute layer --out "$TMP/x"
run_fails "an unknown --recompute is refused" 2 'recompute must be mlp or layer' "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --recompute blocks --out "$TMP/x"
run_ok "estimate --recompute layer" "$PEFT" estimate --model llama-2-7b --targets all-linear --r 64 --quantize nf4 --batch 1 --context 2048 --recompute layer --json
check "estimate names the recompute mode" grep -q '"recompute":[[:space:]]*"layer"' "$TMP/out"
run_fails "estimate refuses an unknown --recompute" 2 'recompute must be none, mlp or layer' "$PEFT" estimate --model gpt2 --recompute all

# ---- errors ----
echo "# data errors"
printf '{"text": "ok"}\n{"text": oops}\n' >"$D/bad.jsonl"
run_fails "malformed JSONL names file and line" 1 'bad\.jsonl:2: invalid JSON' "$PEFT" train "${COMMON[@]}" --data "$D/bad.jsonl" --out "$TMP/x"
printf 'mr,ref\na,b\n"c,d\n' >"$D/bad.csv"
run_fails "malformed CSV names file and line" 1 'bad\.csv:3: unterminated quoted field' "$PEFT" eval --model "$M" --data "$D/bad.csv" --seq-len 64
: >"$D/empty.txt"
run_fails "an empty dataset is an error" 1 'empty\.txt: the dataset is empty' "$PEFT" train "${COMMON[@]}" --data "$D/empty.txt" --out "$TMP/x"
run_fails "unknown method" 1 'unknown method "lorax"' "$PEFT" train "${COMMON[@]}" --data "$D/train.txt" --method lorax --out "$TMP/x"
run_fails "missing --out is a usage error" 2 'usage: peft train' "$PEFT" train --model "$M" --data "$D/train.txt"

echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
