#!/usr/bin/env bash
# pack_gpu.sh: bench/pack_train.sh on the GPU (--device cuda, bf16) at a size worth a GPU: a random
# Llama of 8 layers x 1024 (16 heads of 64, 4 kv heads), 4096 Alpaca examples, micro-batches of 8
# sequences of up to 1024 tokens; one table, with and without --pack.
#   bench/pack_gpu.sh PEFT      (e.g. .carry/gpu/peft from tests/gpu/portable.sh)
set -euo pipefail
EXAMPLES=${EXAMPLES:-4096} LAYERS=${LAYERS:-8} HIDDEN=${HIDDEN:-1024} HEADS=${HEADS:-16} KV_HEADS=${KV_HEADS:-4} BATCH=${BATCH:-8} \
    exec bash "$(dirname "$0")/pack_train.sh" "${1:?usage: bench/pack_gpu.sh PEFT}" cuda
