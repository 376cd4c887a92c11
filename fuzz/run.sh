#!/usr/bin/env bash
# Build and run a fuzz target (docs/fuzzing.md lists them and what each checks).
#   TARGET=http fuzz/run.sh [SECONDS] [extra libFuzzer flags...]   (default: safetensors, 60 s)
#   TARGET=all fuzz/run.sh 20                                      (each target in turn: make fuzz-smoke)
#   JOBS=2 TARGET=adapter fuzz/run.sh 3600                         (parallel workers via -fork)
# Seeds are read from fuzz/corpus/NAME and fuzz/regressions/NAME; new interesting inputs go to
# build-fuzz/corpus/NAME (not committed). A crash or a broken property leaves
# build-fuzz/artifacts/NAME/crash-* (or leak-*, timeout-*, oom-*): fix the bug, then keep the input in
# fuzz/regressions/NAME/ (tests/test_fuzz.c replays it in make test).
set -euo pipefail
cd "$(dirname "$0")/.."

# name:longest input (bytes). fuzz/NAME.dict is the target's dictionary when present.
TARGETS="safetensors:4096 json:4096 http:4096 chat:4096 tokenizer:8192 adapter:16384 checkpoint:16384 jinja:4096 data:4096 model:65536"

SECONDS_TO_RUN=${1:-60}
shift || true
OUT=build-fuzz
# One thread: OpenBLAS and the library's OpenMP loops would only contend on a shared machine.
export OMP_NUM_THREADS=1

run_target() {
    local name=$1 max_len=$2
    shift 2
    # Under make (fuzz-smoke) the binaries are prerequisites; alone, build this one.
    [ -n "${MAKELEVEL:-}" ] || make -s -j2 "$OUT/fuzz_$name"
    mkdir -p "$OUT/corpus/$name" "$OUT/artifacts/$name"
    local args=("$OUT/corpus/$name" "fuzz/corpus/$name")
    [ -d "fuzz/regressions/$name" ] && args+=("fuzz/regressions/$name")
    [ -f "fuzz/$name.dict" ] && args+=("-dict=fuzz/$name.dict")
    [ -n "${JOBS:-}" ] && args+=("-fork=$JOBS")
    echo "== fuzz $name: $SECONDS_TO_RUN s"
    "./$OUT/fuzz_$name" "${args[@]}" -max_len="$max_len" -max_total_time="$SECONDS_TO_RUN" -timeout=10 \
        -artifact_prefix="$OUT/artifacts/$name/" -print_final_stats=1 "$@"
}

want=${TARGET:-safetensors}
found=0 names=""
for entry in $TARGETS; do
    name=${entry%%:*}
    names+=" $name"
    if [ "$want" = all ] || [ "$want" = "$name" ]; then
        run_target "$name" "${entry#*:}" "$@"
        found=1
    fi
done
if [ "$found" = 0 ]; then echo "unknown TARGET=$want (all, or one of:$names)" >&2; exit 2; fi
