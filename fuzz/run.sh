#!/usr/bin/env bash
# Build and run a fuzzer: safetensors (the default) or json (config.json / adapter_config.json).
#   fuzz/run.sh [SECONDS] [extra libFuzzer flags...]     (default 60 seconds)
#   TARGET=json fuzz/run.sh 120
#   JOBS=2 fuzz/run.sh 300                               (parallel workers via -fork)
# New interesting inputs go to build-fuzz/corpus/safetensors (not committed); the seeds in
# fuzz/corpus/safetensors are only read. A crash leaves build-fuzz/artifacts/crash-*: fix the
# bug, then keep the input in fuzz/regressions/safetensors/ (tests/test_safetensors.c replays it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-60}
shift || true
CC=${CC:-clang}
OUT=build-fuzz
TARGET=${TARGET:-safetensors}
mkdir -p "$OUT/corpus/$TARGET" "$OUT/artifacts"
FLAGS=(-std=c11 -g -O1 -D_GNU_SOURCE -Isrc -Iinclude -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
case "$TARGET" in
    safetensors) $CC "${FLAGS[@]}" fuzz/fuzz_safetensors.c src/safetensors.c src/util.c -lcjson -lm -o "$OUT/fuzz_safetensors" ;;
    json) $CC "${FLAGS[@]}" fuzz/fuzz_json.c src/config.c src/adapter_config.c src/util.c -lcjson -lpcre2-8 -lm -o "$OUT/fuzz_json"
          exec "./$OUT/fuzz_json" "$OUT/corpus/json" fuzz/corpus/json -max_len=4096 -max_total_time="$SECONDS_TO_RUN" \
               -artifact_prefix="$OUT/artifacts/" -print_final_stats=1 "$@" ;;
    *) echo "unknown TARGET=$TARGET (safetensors, json)"; exit 2 ;;
esac

fork=()
if [ -n "${JOBS:-}" ]; then fork=(-fork="$JOBS"); fi
seeds=(fuzz/corpus/safetensors)
if [ -d fuzz/regressions/safetensors ]; then seeds+=(fuzz/regressions/safetensors); fi

exec "./$OUT/fuzz_safetensors" "$OUT/corpus/safetensors" "${seeds[@]}" \
    -dict=fuzz/safetensors.dict -max_len=4096 -max_total_time="$SECONDS_TO_RUN" \
    -artifact_prefix="$OUT/artifacts/" -print_final_stats=1 "${fork[@]}" "$@"
