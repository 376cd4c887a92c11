#!/usr/bin/env bash
# make_cases.sh PEFT DUMP_LOGITS OUT_DIR: adapters trained and saved by peft.c (VeRA without its
# projections, LoRA, AdaLoRA with a pruned rank pattern, DoRA: LoRA with use_dora, LoRA with PEFT's
# options (patterns, layers, bias, modules_to_save), PiSSA saved converted, LoRA on the embedding, trainable
# tokens, two LoRAs combined by `peft merge --adapters` as cat / svd / ties) and a merged
# model, each with our logits, for tools/interop/check_peft.py to load with HF transformers + PEFT.
set -euo pipefail
PEFT=$1 DUMP=$2 OUT=$3
rm -rf "$OUT"; mkdir -p "$OUT"
text="$OUT/text.txt"
for i in $(seq 1 60); do echo "The quick brown fox $i jumps over the lazy dog; a stitch in time saves nine."; done > "$text"
case_dir() {  # NAME MODEL ADAPTER(or empty)
    mkdir -p "$OUT/$1"
    printf '{"model": "%s", "adapter": "%s"}\n' "$2" "$3" > "$OUT/$1/case.json"
}
for arch in gpt2 llama; do
    base="$OUT/base-$arch"
    "$PEFT" init --arch $arch --layers 2 --hidden 64 --heads 4 --kv-heads 2 --context 64 --seed 3 --out "$base" >/dev/null
    for method in lora vera adalora dora; do
        name=$arch-$method
        extra=()
        [ $method = adalora ] && extra=(--init-r 6 --target-r 2 --tinit 2 --tfinal 2 --delta-t 1)
        [ $method = vera ] && extra=(--r 16)
        "$PEFT" train --model "$base" --data "$text" --method $method --targets all-linear --steps 12 --batch 4 \
            --seq-len 32 --lr 1e-2 --threads 2 --overwrite --out "$OUT/train-$name" "${extra[@]}" >/dev/null
        case_dir $name ../base-$arch ../train-$name
        "$DUMP" "$base" "$OUT/train-$name" "$OUT/$name/logits.safetensors"
    done
    # PEFT's LoRA options (issue 18): per-module ranks and alphas, layers, trained biases, a module to save;
    # and PiSSA, saved converted to a rank-2r LoRA of the original base.
    opts="$OUT/options-$arch.json"
    if [ $arch = gpt2 ]; then
        targets=c_attn,c_proj,c_fc
        echo '{"bias": "all", "rank_pattern": {"c_fc": 2}, "alpha_pattern": {"attn.c_proj": 4}, "layers_to_transform": [1], "layers_pattern": "h"}' > "$opts"
    else
        targets=all-linear
        echo '{"exclude_modules": ["down_proj"], "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 4}, "modules_to_save": ["lm_head"]}' > "$opts"
    fi
    for variant in options pissa; do
        name=$arch-lora-$variant
        extra=(--lora-options "$opts")
        [ $variant = pissa ] && extra=(--init-lora-weights pissa)
        "$PEFT" train --model "$base" --data "$text" --method lora --targets $targets --steps 12 --batch 4 \
            --seq-len 32 --lr 1e-2 --threads 2 --overwrite --out "$OUT/train-$name" "${extra[@]}" >/dev/null
        case_dir $name ../base-$arch ../train-$name
        "$DUMP" "$base" "$OUT/train-$name" "$OUT/$name/logits.safetensors"
    done
    # LoRA on the input embedding beside the linears, and trainable_token_indices (rows of the embedding that train).
    emb=$([ $arch = gpt2 ] && echo wte,c_attn || echo embed_tokens,q_proj,v_proj)
    echo '{"trainable_token_indices": [5, 17, 40]}' > "$OUT/tokens-$arch.json"
    for variant in embedding tokens; do
        name=$arch-lora-$variant
        if [ $variant = embedding ]; then extra=(--targets "$emb"); else extra=(--targets "$targets" --lora-options "$OUT/tokens-$arch.json"); fi
        "$PEFT" train --model "$base" --data "$text" --method lora --steps 12 --batch 4 \
            --seq-len 32 --lr 1e-2 --threads 2 --overwrite --out "$OUT/train-$name" "${extra[@]}" >/dev/null
        case_dir $name ../base-$arch ../train-$name
        "$DUMP" "$base" "$OUT/train-$name" "$OUT/$name/logits.safetensors"
    done
    # Adapter arithmetic (PEFT's add_weighted_adapter): two LoRAs (another seed) combined into one PEFT adapter folder.
    "$PEFT" train --model "$base" --data "$text" --method lora --targets all-linear --steps 12 --batch 4 --seq-len 32 --lr 1e-2 \
        --threads 2 --seed 7 --overwrite --out "$OUT/train-$arch-lora-seed7" >/dev/null
    for combination in cat svd ties; do
        name=$arch-lora-$combination
        "$PEFT" merge --model "$base" --adapters "$OUT/train-$arch-lora:0.7,$OUT/train-$arch-lora-seed7:0.5" --combination $combination \
            --density 0.5 --out "$OUT/combined-$name" >/dev/null
        case_dir $name ../base-$arch ../combined-$name
        "$DUMP" "$base" "$OUT/combined-$name" "$OUT/$name/logits.safetensors"
    done
    "$PEFT" merge --model "$base" --adapter "$OUT/train-$arch-lora" --out "$OUT/merged-$arch" >/dev/null
    case_dir $arch-lora-merged ../merged-$arch ""
    "$DUMP" "$OUT/merged-$arch" - "$OUT/$arch-lora-merged/logits.safetensors"
done
ls "$OUT"
