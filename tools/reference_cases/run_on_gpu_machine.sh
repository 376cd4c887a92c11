#!/usr/bin/env bash
# run_on_gpu_machine.sh OUT_DIR [REFERENCE_DIR]: on a machine with torch, transformers 5.x and peft 0.21
# (the GPU machine's python3; the work runs on its CPU): the library versions, every case generated into
# OUT_DIR, generated a second time to show the files come out byte for byte the same, and, given a copy
# of ../shared/fixtures/hf-peft, the layout compared with it; with PEFT=path/to/peft, `peft check` on every
# generated case. Exits non-zero when any step fails.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_DIR [REFERENCE_DIR]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
out=$1 ref=${2:-}
export PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, peft, safetensors; print("torch", torch.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__, "| safetensors", safetensors.__version__)'

echo "== generate into $out"
python3 "$here/make_cases.py" --force "$out"

again=$(mktemp -d)
trap 'rm -rf "$again"' EXIT
echo "== generate again into $again: the files must be identical"
python3 "$here/make_cases.py" "$again" >/dev/null
for d in "$again"/*/; do
    name=$(basename "$d")
    if ! diff -r "$out/$name" "$d" >/dev/null; then
        diff -rq "$out/$name" "$d" || true
        echo "FAIL: a second run wrote other bytes for $name" >&2
        exit 1
    fi
done
repro="identical"

compared="not compared (no REFERENCE_DIR given)"
if [ -n "$ref" ]; then
    echo "== compare with $ref"
    python3 "$here/make_cases.py" --compare "$ref" "$out"
    compared="same layout as $ref"
fi

checked="peft check not run (no PEFT given)"
if [ -n "${PEFT:-}" ]; then
    echo "== $PEFT check"
    "$PEFT" check "$out"/*/
    checked="peft check passed"
fi

echo "== summary"
for d in "$out"/*/; do
    printf '  %-26s %6s\n' "$(basename "$d")" "$(du -sk "$d" | cut -f1)K"
done
echo "  second run: $repro; layout: $compared; $checked"
