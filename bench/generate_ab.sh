#!/bin/bash
# generate_ab.sh: before/after decode speed in one run. Runs two generate_bench binaries (built from
# two commits) alternately, `pairs` times each, and prints per configuration the median over all their
# rounds' medians of each binary and the ratio after/before.
#   bench/generate_ab.sh BEFORE_BIN AFTER_BIN pairs [generate_bench args...]
set -euo pipefail
before=$1 after=$2 pairs=$3
shift 3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((i = 0; i < pairs; i++)); do
    for which in before after; do
        bin=$before; [ "$which" = after ] && bin=$after
        "$bin" "$@" | awk -v w="$which" -F'|' 'NF >= 5 && $4 ~ /^ *[0-9.]+ *$/ { gsub(/^ +| +$/, "", $2); gsub(/^ +| +$/, "", $3); print w "\t" $2 "\t" $3 "\t" $4 + 0 }' >>"$out"
    done
done
python3 - "$out" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(lambda: {"before": [], "after": []}); order = []
for line in open(sys.argv[1]):
    w, shape, cfg, v = line.rstrip("\n").split("\t")
    if (shape, cfg) not in rows: order.append((shape, cfg))
    rows[(shape, cfg)][w].append(float(v))
print("| shape | configuration | before tok/s | after tok/s | after / before |")
print("| --- | --- | ---: | ---: | ---: |")
for k in order:
    b, a = statistics.median(rows[k]["before"]), statistics.median(rows[k]["after"])
    print(f"| {k[0]} | {k[1]} | {b:.2f} | {a:.2f} | {a / b:.2f}x |")
PY
