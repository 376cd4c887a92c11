#!/usr/bin/env bash
# bench/gpu/run.sh [BENCH_BIN] [OUTDIR]: our trainer, then HF PEFT (bench/gpu/hf_bench.py), on this
# GPU one after the other, then one table (OUTDIR/table.md). BENCH_ARGS / HF_ARGS pass options.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-./build/bench_gpu}
OUT=${2:-bench/gpu/out}
mkdir -p "$OUT"
"$BIN" --out "$OUT/ours.jsonl" ${BENCH_ARGS:-}
if [ -z "${SKIP_HF:-}" ]; then PYTHONUNBUFFERED=1 python3 bench/gpu/hf_bench.py "$OUT/hf.jsonl" ${HF_ARGS:-}; fi
python3 bench/gpu/table.py "$OUT/ours.jsonl" "$OUT/hf.jsonl" | tee "$OUT/table.md"
