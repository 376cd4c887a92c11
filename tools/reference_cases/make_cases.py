#!/usr/bin/env python3
"""make_cases.py: the project's own HF PEFT reference cases, in the layout that `peft check` reads
(the one of ../shared/fixtures/hf-peft; README.md beside this file says what each file holds).

    make_cases.py OUT_DIR [--only NAME ...] [--force] [--any-version]
        writes OUT_DIR/<case>/ for every case of cases.py (needs torch, transformers 5.x, peft 0.21; CPU)
    make_cases.py --list
        the cases, their options and seeds (no torch needed)
    make_cases.py --compare REF_DIR OUT_DIR
        OUT_DIR's cases have REF_DIR's files, tensor names, dtypes, shapes and case.json fields
        (no torch needed); exits 1 on any difference
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cases  # noqa: E402
from compare import case_files, compare_roots, read_header  # noqa: E402


def list_cases():
    for c in cases.CASES:
        print(f"{c.name:28s} seed {c.seed:10d}  opts {cases.case_opts(c)}  optimizer {cases.case_optimizer(c)}")


def describe(case_dir):
    """What a case folder holds: each file, its size and, for tensors, how many; returns the total bytes."""
    total = 0
    for rel in sorted(case_files(case_dir)):
        path = os.path.join(case_dir, rel)
        size = os.path.getsize(path)
        total += size
        extra = f", {len(read_header(path)[1])} tensors" if rel.endswith(".safetensors") else ""
        print(f"    {rel:36s} {size:8d} bytes{extra}")
    return total


def generate(out_root, names, force, any_version):
    unknown = set(names or ()) - {c.name for c in cases.CASES}
    if unknown:
        raise cases.Fail(f"no case named {sorted(unknown)} (--list shows them)")
    # The order of a Python set reaches adapter_config.json (PEFT keeps target_modules as a set):
    # a fixed hash seed makes the files byte-for-byte reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local: never ask the hub
    import generate as g  # torch, transformers and peft from here on

    g.setup()
    print(f"versions: {g.versions()}")
    if not any_version:
        g.check_versions()
    todo = [c for c in cases.CASES if not names or c.name in names]
    os.makedirs(out_root, exist_ok=True)
    for c in todo:
        print(f"{c.name}: seed {c.seed}")
        case_dir = g.write_case(c, out_root, force)
        total = describe(case_dir)
        print(f"  wrote {case_dir}: {total} bytes")
        if total > g.MAX_CASE_BYTES:
            raise cases.Fail(f"{case_dir}: {total} bytes, more than {g.MAX_CASE_BYTES} (keep the models tiny)")
    print(f"done: {len(todo)} cases in {out_root}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="folder to write the cases into (with --compare: the generated cases)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these cases")
    ap.add_argument("--force", action="store_true", help="replace case folders that exist")
    ap.add_argument("--any-version", action="store_true", help="run with other transformers / peft versions too")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--compare", metavar="REF_DIR", help="compare OUT's cases with REF_DIR's and exit")
    a = ap.parse_args()
    try:
        cases.validate()
    except cases.Fail as e:
        ap.error(str(e))
    if a.list:
        list_cases()
        return 0
    if not a.out:
        ap.error("OUT_DIR is missing")
    if a.compare:
        for d in (a.compare, a.out):
            if not os.path.isdir(d):
                ap.error(f"{d}: not a folder")
        n = compare_roots(a.compare, a.out)
        print(f"compare {a.out} against {a.compare}: {n} differences")
        return 1 if n else 0
    try:
        generate(a.out, a.only, a.force, a.any_version)
    except cases.Fail as e:
        print(f"make_cases.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
