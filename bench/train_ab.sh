#!/bin/bash
# train_ab.sh: before/after CPU training speed in one run. Runs two train_bench binaries (built from
# two commits) alternately, one row at a time (PEFT_BENCH_ONLY), `pairs` times each with the order
# swapped every pair, and prints per row the median tok/s of each binary and the ratio after/before.
#   bench/train_ab.sh BEFORE_BIN AFTER_BIN pairs steps [rows...]   (rows: gpt2-124m/full ... llama-60m/lora)
set -euo pipefail
before=$1 after=$2 pairs=$3 steps=$4
shift 4
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(gpt2-124m/full gpt2-124m/lora llama-60m/full llama-60m/lora)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((i = 0; i < pairs; i++)); do
    for row in "${rows[@]}"; do
        order="before after"; [ $((i % 2)) = 1 ] && order="after before"
        for which in $order; do
            bin=$before; [ "$which" = after ] && bin=$after
            PEFT_BENCH_ONLY=$row "$bin" "$steps" | awk -v w="$which" -v r="$row" '$1 == substr(r, 1, index(r, "/") - 1) { print w "\t" r "\t" $5 }' >>"$out"
        done
    done
done
python3 - "$out" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(lambda: {"before": [], "after": []}); order = []
for line in open(sys.argv[1]):
    w, row, v = line.rstrip("\n").split("\t")
    if row not in rows: order.append(row)
    rows[row][w].append(float(v))
print(f"load average at the end: {sys.argv[2]}")
print("| row | before tok/s | after tok/s | after / before | before runs | after runs |")
print("| --- | ---: | ---: | ---: | --- | --- |")
for k in order:
    b, a = statistics.median(rows[k]["before"]), statistics.median(rows[k]["after"])
    runs = lambda xs: " ".join(f"{x:.0f}" for x in xs)
    print(f"| {k} | {b:.1f} | {a:.1f} | {a / b:.3f}x | {runs(rows[k]['before'])} | {runs(rows[k]['after'])} |")
PY
