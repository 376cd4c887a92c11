#!/usr/bin/env bash
# bench/gpu/run.sh [BENCH_BIN] [OUTDIR]: our trainer, then HF PEFT (bench/gpu/hf_bench.py), on this
# GPU one after the other, then one table (OUTDIR/table.md). BENCH_ARGS / HF_ARGS pass options.
# Any failure stops it with no table. The table names the binary (its commit, `bench_gpu --version`,
# and sha256); with SKIP_HF=1 an earlier run's OUTDIR/hf.jsonl is reused, marked with that run's
# date and commit (OUTDIR/hf.meta), or the issue's anchors fill in (marked *).
set -euo pipefail
trap 'echo "bench/gpu/run.sh: FAILED at line $LINENO (exit $?); no table written" >&2' ERR
cd "$(dirname "$0")/../.."
BIN=${1:-./build/bench_gpu}
OUT=${2:-bench/gpu/out}
mkdir -p "$OUT"
rm -f "$OUT/ours.jsonl" "$OUT/table.md"
OURS="$("$BIN" --version), sha256 $(sha256sum "$BIN" | cut -c1-16)"
"$BIN" --out "$OUT/ours.jsonl" ${BENCH_ARGS:-}
[ -s "$OUT/ours.jsonl" ] || { echo "bench/gpu/run.sh: $BIN wrote no results (no GPU?); no table written" >&2; exit 1; }
HF_REUSED=()
if [ -z "${SKIP_HF:-}" ]; then
    rm -f "$OUT/hf.jsonl" "$OUT/hf.meta"
    PYTHONUNBUFFERED=1 python3 bench/gpu/hf_bench.py "$OUT/hf.jsonl" ${HF_ARGS:-}
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), peft.c $(git rev-parse --short=12 HEAD 2>/dev/null || echo '(no git)'), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo 'GPU unknown')" > "$OUT/hf.meta"
elif [ -s "$OUT/hf.jsonl" ]; then
    HF_REUSED=(--hf-reused "$(cat "$OUT/hf.meta" 2>/dev/null || date -u -r "$OUT/hf.jsonl" '+file of %Y-%m-%d %H:%M UTC, commit unknown')")
fi
python3 bench/gpu/table.py "$OUT/ours.jsonl" "$OUT/hf.jsonl" --ours "$OURS" "${HF_REUSED[@]}" > "$OUT/table.md.tmp"
mv "$OUT/table.md.tmp" "$OUT/table.md"
cat "$OUT/table.md"
