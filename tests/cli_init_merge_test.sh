#!/usr/bin/env bash
# CLI tests of LoRA's init_lora_weights and of adapter arithmetic on a tiny Llama made by `peft init`:
# a PiSSA / OLoRA run saves a plain LoRA of rank 2r for the original base, whose evaluation there equals
# the run's last validation loss (on the residual base); peft merge --adapters combines adapters into an
# adapter folder (or, --into-model, a model that evaluates as base + combined adapter); refusals.
# Usage: PEFT=build/peft bash tests/cli_init_merge_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-init.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"

M=$TMP/model
"$PEFT" init --arch llama --layers 2 --hidden 32 --heads 4 --context 64 --seed 5 --out "$M" >/dev/null
D=$TMP/data
mkdir -p "$D"
awk -v d="$D" 'BEGIN { for (i = 1; i <= 100; i++) print "The Mill " i " is a pub by the river; it serves Indian food." > (d (i <= 80 ? "/train.txt" : "/val.txt")) }'
COMMON=(--model "$M" --data "$D/train.txt" --val "$D/val.txt" --seq-len 64 --batch 4 --threads 1 --steps 4 --lr 1e-2 --eval-every 4
        --targets q_proj,v_proj,down_proj --r 4)
last_eval() { grep '"eval_loss"' "$1/train_log.jsonl" | tail -1 | sed 's/.*"eval_loss":\([^,}]*\).*/\1/'; }
eval_loss() { "$PEFT" eval --model "$1" ${2:+--adapter "$2"} --data "$D/val.txt" --seq-len 64 --threads 1 2>/dev/null | sed -n 's/^loss \([0-9.]*\).*/\1/p'; }
near() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d < 1e-4) }'; }
cfg() { perl -MJSON::PP -e 'local $/; my $j = JSON::PP->new->decode(<STDIN>); print JSON::PP->new->allow_nonref->encode($j->{$ARGV[0]})' "$2" <"$1/adapter_config.json"; }

echo "# peft train --init-lora-weights: PiSSA / OLoRA saved as a rank-2r LoRA of the original base"
for init in pissa pissa_niter_2 olora; do
    run_ok "train $init" "$PEFT" train "${COMMON[@]}" --init-lora-weights $init --out "$TMP/$init"
    check "$init: saved converted (r 8, lora_alpha 16, init_lora_weights true)" \
        test "$(cfg "$TMP/$init" r) $(cfg "$TMP/$init" lora_alpha) $(cfg "$TMP/$init" init_lora_weights)" = "8 16 true"
    got=$(eval_loss "$M" "$TMP/$init") want=$(last_eval "$TMP/$init")
    check "$init: the saved adapter on the original base evaluates as the run did ($got vs $want)" near "$got" "$want"
done
run_ok "train pissa with checkpoints" "$PEFT" train "${COMMON[@]}" --init-lora-weights pissa --save-every 2 --out "$TMP/ckpt"
run_fails "resume with another init_lora_weights: refused" 1 'checkpoint has init_lora_weights "pissa" but this run has "olora"' \
    "$PEFT" train "${COMMON[@]}" --init-lora-weights olora --save-every 2 --resume --out "$TMP/ckpt"
# A file that says "pissa" (saved without the conversion) applies to the residual PEFT decomposes on load.
mkdir -p "$TMP/raw" && cp "$TMP/pissa"/adapter_* "$TMP/raw/" && json_set "$TMP/raw/adapter_config.json" init_lora_weights '"pissa"'
run_fails "export of an unconverted PiSSA adapter alone: refused" 1 'init_lora_weights pissa.*--merge' \
    "$PEFT" export --model "$M" --adapter "$TMP/raw" --to gguf --out "$TMP/raw.gguf"
run_ok "export of it merged" "$PEFT" export --model "$M" --adapter "$TMP/raw" --merge --to gguf --out "$TMP/raw-merged.gguf"
run_ok "train gaussian" "$PEFT" train "${COMMON[@]}" --init-lora-weights gaussian --out "$TMP/gaussian"
check "gaussian: adapter_config.json says so, rank 4" test "$(cfg "$TMP/gaussian" init_lora_weights) $(cfg "$TMP/gaussian" r)" = '"gaussian" 4'
run_ok "info shows init_lora_weights" "$PEFT" info --model "$M" --adapter "$TMP/gaussian"
check "info: init_lora_weights=gaussian" grep -q 'init_lora_weights=gaussian' "$TMP/out"
run_fails "train --init-lora-weights loftq: refused by name" 1 'loftq.*LoftQ' "$PEFT" train "${COMMON[@]}" --init-lora-weights loftq --out "$TMP/x"
run_fails "train --init-lora-weights with VeRA: a LoRA option" 2 'LoRA option' "$PEFT" train "${COMMON[@]}" --method vera --init-lora-weights pissa --out "$TMP/x"
run_fails "train --init-lora-weights olora with r above min(in, out)" 1 'min\(in, out\)' "$PEFT" train "${COMMON[@]}" --r 40 --init-lora-weights olora --out "$TMP/x"

echo "# peft merge --adapters: PEFT's add_weighted_adapter"
run_ok "merge cat (ranks 8 + 4)" "$PEFT" merge --model "$M" --adapters "$TMP/pissa:0.5,$TMP/gaussian:1.5" --combination cat --out "$TMP/cat"
check "cat: r = lora_alpha = 12" test "$(cfg "$TMP/cat" r) $(cfg "$TMP/cat" lora_alpha)" = "12 12"
run_ok "merge ties" "$PEFT" merge --model "$M" --adapters "$TMP/pissa,$TMP/olora:-0.5" --combination ties --density 0.5 --majority-sign frequency --out "$TMP/ties"
run_ok "merge dare_linear --into-model" "$PEFT" merge --model "$M" --adapters "$TMP/pissa:0.7,$TMP/olora:0.3" --combination dare_linear \
    --density 0.6 --seed 3 --into-model --out "$TMP/dare-model"
run_ok "merge dare_linear, the adapter" "$PEFT" merge --model "$M" --adapters "$TMP/pissa:0.7,$TMP/olora:0.3" --combination dare_linear \
    --density 0.6 --seed 3 --out "$TMP/dare"
got=$(eval_loss "$TMP/dare-model") want=$(eval_loss "$M" "$TMP/dare")
check "--into-model evaluates as base + the combined adapter ($got vs $want)" near "$got" "$want"
run_fails "linear with ranks 8 and 4: PEFT refuses" 1 'same r' "$PEFT" merge --model "$M" --adapters "$TMP/pissa,$TMP/gaussian" --combination linear --out "$TMP/y"
run_fails "ties without --density" 1 'needs a density' "$PEFT" merge --model "$M" --adapters "$TMP/pissa,$TMP/olora" --combination ties --out "$TMP/y"
run_fails "an unknown combination" 1 'unknown combination type "mean"' "$PEFT" merge --model "$M" --adapters "$TMP/pissa" --combination mean --out "$TMP/y"
run_fails "a weight that is not a number" 1 'is not a number' "$PEFT" merge --model "$M" --adapters "$TMP/pissa:x" --out "$TMP/y"
run_fails "--adapter and --adapters together" 2 'one of --adapter or --adapters' "$PEFT" merge --model "$M" --adapter "$TMP/pissa" --adapters "$TMP/pissa" --out "$TMP/y"
check "nothing written by the refused merges" test ! -e "$TMP/y"

echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
