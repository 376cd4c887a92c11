"""compare.py: does a generated case folder have the layout of a reference one? Same files, the same
tensors (names, dtypes, shapes, header metadata) in every .safetensors, the same model / adapter
configs, and a case.json with the same fields (numbers that come out of a computation may differ, their
structure may not). Plain Python: needs neither torch nor numpy.
"""
import json
import os
import struct

# Fields a computation fills: compared by structure (types, lengths, keys), not by value.
COMPUTED_FIELDS = {"loss_per_step", "rank_pattern", "versions"}
# Config fields that name the library version that wrote them: a difference is reported, not counted.
VERSION_FIELDS = {"transformers_version", "peft_version"}
# Config fields whose order is a Python set's (PEFT keeps target_modules as a set).
SET_FIELDS = {"target_modules"}


def read_header(path):
    """(metadata or None, {name: (dtype, shape)}) of a .safetensors file; raises ValueError when it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} past the end of the file ({size} bytes)")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None)
    end = 0
    for name, t in header.items():
        begin, stop = t["data_offsets"]
        end = max(end, stop)
    if 8 + n + end != size:
        raise ValueError(f"{path}: header describes {8 + n + end} bytes, the file has {size}")
    return meta, {name: (t["dtype"], t["shape"]) for name, t in header.items()}


def case_files(case_dir):
    """Every file below case_dir, as paths relative to it."""
    out = set()
    for root, _, files in os.walk(case_dir):
        for f in files:
            out.add(os.path.relpath(os.path.join(root, f), case_dir))
    return out


def is_model_case(case_dir):
    return os.path.isfile(os.path.join(case_dir, "case.json"))


def same_structure(ref, got, where, diffs):
    """Types, list lengths and dict keys agree all the way down (numbers: int and float count alike)."""
    number = (int, float)
    if isinstance(ref, bool) or isinstance(got, bool):
        same_type = isinstance(ref, bool) and isinstance(got, bool)
    elif isinstance(ref, number) and isinstance(got, number):
        same_type = True
    else:
        same_type = type(ref) is type(got)
    if not same_type:
        diffs.append(f"{where}: {type(got).__name__} here, {type(ref).__name__} in the reference")
    elif isinstance(ref, dict):
        if set(ref) != set(got):
            diffs.append(f"{where}: keys differ (missing {sorted(set(ref) - set(got))}, extra {sorted(set(got) - set(ref))})")
        for k in sorted(set(ref) & set(got)):
            same_structure(ref[k], got[k], f"{where}.{k}", diffs)
    elif isinstance(ref, list):
        if len(ref) != len(got):
            diffs.append(f"{where}: {len(got)} items here, {len(ref)} in the reference")
        for i, (a, b) in enumerate(zip(ref, got)):
            same_structure(a, b, f"{where}[{i}]", diffs)


def compare_json(ref, got, where, diffs, notes, computed=frozenset()):
    if set(ref) != set(got):
        diffs.append(f"{where}: keys differ (missing {sorted(set(ref) - set(got))}, extra {sorted(set(got) - set(ref))})")
    for k in sorted(set(ref) & set(got)):
        a, b = ref[k], got[k]
        if k in computed:
            same_structure(a, b, f"{where}: {k}", diffs)
            if k == "versions" and a != b:
                notes.append(f"{where}: versions {b} here, {a} in the reference")
        elif k in SET_FIELDS and isinstance(a, list) and isinstance(b, list):
            if set(a) != set(b):
                diffs.append(f"{where}: {k} {sorted(b)} here, {sorted(a)} in the reference")
        elif a != b:
            (notes if k in VERSION_FIELDS else diffs).append(f"{where}: {k} = {json.dumps(b)} here, {json.dumps(a)} in the reference")


def compare_case(ref_dir, got_dir):
    """(differences, notes) between two case folders."""
    diffs, notes = [], []
    ref_files, got_files = case_files(ref_dir), case_files(got_dir)
    if ref_files != got_files:
        diffs.append(f"files differ: missing {sorted(ref_files - got_files)}, extra {sorted(got_files - ref_files)}")
    for rel in sorted(ref_files & got_files):
        a, b = os.path.join(ref_dir, rel), os.path.join(got_dir, rel)
        if rel.endswith(".safetensors"):
            (ma, ta), (mb, tb) = read_header(a), read_header(b)
            if ma != mb:
                diffs.append(f"{rel}: metadata {mb} here, {ma} in the reference")
            if set(ta) != set(tb):
                diffs.append(f"{rel}: tensors differ: missing {sorted(set(ta) - set(tb))}, extra {sorted(set(tb) - set(ta))}")
            for name in sorted(set(ta) & set(tb)):
                if ta[name] != tb[name]:
                    diffs.append(f"{rel}: {name} is {tb[name][0]} {tb[name][1]} here, {ta[name][0]} {ta[name][1]} in the reference")
        elif rel.endswith(".json"):
            with open(a) as fa, open(b) as fb:
                ja, jb = json.load(fa), json.load(fb)
            compare_json(ja, jb, rel, diffs, notes, COMPUTED_FIELDS if rel == "case.json" else frozenset())
        else:
            notes.append(f"{rel}: not compared (neither .json nor .safetensors)")
    return diffs, notes


def compare_roots(ref_root, got_root, out=print):
    """Compares every model case of ref_root with got_root's case of the same name; returns the number of
    differences (a reference case missing here counts as one)."""
    total = 0
    for name in sorted(os.listdir(ref_root)):
        ref_dir, got_dir = os.path.join(ref_root, name), os.path.join(got_root, name)
        if not os.path.isdir(ref_dir):
            continue
        if not is_model_case(ref_dir):
            out(f"skip  {name}: no case.json (not a model case; this generator does not make it)")
            continue
        if not os.path.isdir(got_dir):
            out(f"DIFF  {name}: in the reference, not generated")
            total += 1
            continue
        diffs, notes = compare_case(ref_dir, got_dir)
        out(f"{'ok   ' if not diffs else 'DIFF '} {name}" + (f": {len(diffs)} differences" if diffs else ""))
        for d in diffs:
            out(f"        {d}")
        for n in notes:
            out(f"        note: {n}")
        total += len(diffs)
    for name in sorted(os.listdir(got_root)):
        if os.path.isdir(os.path.join(got_root, name)) and not os.path.isdir(os.path.join(ref_root, name)):
            out(f"new   {name}: not in the reference, nothing to compare")
    return total
