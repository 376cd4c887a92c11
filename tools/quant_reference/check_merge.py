#!/usr/bin/env python3
"""check_merge.py: issue 19's merge into a quantized base, checked against HF transformers + PEFT 0.21.

    python3 tools/quant_reference/check_merge.py PEFT_BINARY [--work DIR] [--threads N]
    python3 tools/quant_reference/check_merge.py --help            # no torch needed

For a tiny Llama and GPT-2 (`peft init`), each base quantized by `peft quantize` (nf4 with double
quantization, fp4 without, int8) and a LoRA on every linear trained on it by `peft train` (QLoRA):
  ours:   `peft merge --model BASE-Q --adapter LORA --out MERGED` (bf16 by default for a quantized base),
          loaded by transformers as the folder says (dtype "auto": every weight must come back bf16);
  theirs: the same folder's linears dequantized as bitsandbytes does (bnb_torch.dequantize_saved: a torch
          re-implementation of its source; bitsandbytes is not installed), put in a transformers model
          loaded in bf16 (what model.dequantize() gives with dtype bfloat16), the adapter loaded by
          PeftModel.from_pretrained and merged by merge_and_unload(): PEFT's dequantize-then-merge in bf16.
Also an unquantized base merged with `--dtype bf16` (theirs: the base loaded in bf16, then PEFT's merge).
Prints per case the merged weights that differ bit for bit and by how many bf16 ulps at most, and max |logits
diff| / max |logits| of a fixed batch, the models run in bf16 (as loaded) and cast to fp32. A case passes when
no weight is more than 1 ulp apart (the fp32 delta B A is summed in another order than torch's, so a value
near a bf16 rounding boundary may round the other way: a handful in 10^5 on 2026-12-07), the fp32 run's
logits are within 1e-3 (issue 19's bar) and the bf16 run's within BF16_TOL: a bf16 forward rounds every
activation to 2^-8 relative, so one weight 1 ulp apart moves logits by about that much, and 1e-3 is below what a
bf16 forward can resolve (H100 machine, 2026-12-07: 2e-3 to 7e-3 with 1 to 6 weights apart per case, fp32
2e-7 to 9e-5). Exit 1 when any case fails. CPU only; a minute or so.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TOL = 1e-3
BF16_TOL = 2.0**-6  # a few bf16 ulps of the largest logit
QUANTS = [("nf4", []), ("fp4", ["--no-double-quant"]), ("int8", []), ("none", [])]


def run(*cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r.stdout


def load_folder(d):
    """Every tensor of a model folder (model.safetensors or its shards)."""
    from safetensors.torch import load_file
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_file(os.path.join(d, "model.safetensors"))
    out = {}
    for shard in sorted(set(json.load(open(index))["weight_map"].values())):
        out.update(load_file(os.path.join(d, shard)))
    return out


def dequantized_folder(src, dst, torch, bnb):
    """src (a bitsandbytes folder) with every quantized linear dequantized by bnb_torch, fp32 (or the
    quant_state's dtype), GPT-2's Conv1D weights transposed back; config.json without quantization_config."""
    from safetensors.torch import save_file
    tensors = load_folder(src)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.pop("quantization_config", None)
    conv1d = cfg["model_type"] == "gpt2"
    prefixes = {k[:-len(".SCB")] for k in tensors if k.endswith(".SCB")}
    prefixes |= {k.split(".weight.quant_state.")[0] for k in tensors if ".weight.quant_state." in k}
    state = {k: v for k, v in tensors.items() if not any(k == p + ".weight" or k.startswith(p + ".weight.") or k in (p + ".SCB", p + ".weight_format")
                                                      for p in prefixes)}
    for p in prefixes:
        w = bnb.dequantize_saved(tensors, p)
        state[p + ".weight"] = (w.t() if conv1d else w).contiguous()
    os.makedirs(dst, exist_ok=True)
    save_file(state, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    return len(prefixes)


def folder_dtypes(d):
    """The dtypes model.safetensors' header gives its tensors."""
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def compare(ours, theirs, ids, torch):
    """(weights differing bit for bit, the most bf16 ulps apart, weights compared, logits error in bf16, in fp32)."""
    so, st = ours.state_dict(), theirs.state_dict()
    differ = total = ulps = 0
    for k, v in st.items():
        if k in so:
            a, b = so[k].to(torch.bfloat16).view(torch.int16).int(), v.to(torch.bfloat16).view(torch.int16).int()
            a, b = torch.where(a < 0, -32768 - a, a), torch.where(b < 0, -32768 - b, b)  # sign-magnitude to one ordered scale
            differ += (a != b).sum().item()
            ulps = max(ulps, (a - b).abs().max().item() if v.numel() else 0)
            total += v.numel()
    errs = []
    for cast in (False, True):
        with torch.no_grad():
            a = (ours.float() if cast else ours)(input_ids=ids).logits.float()
            b = (theirs.float() if cast else theirs)(input_ids=ids).logits.float()
        errs.append(((a - b).abs().max() / b.abs().max()).item())
    return differ, ulps, total, errs[0], errs[1]


def one_case(args, torch, bnb, load, work, text, base, arch, q, qargs):
    """One base quantized so, a LoRA trained on it, merged by us and by PEFT: (problems, linears dequantized,
    weights differing, weights compared, logits error with the models in bf16, in fp32)."""
    from peft import PeftModel
    name = f"{arch}-{q}"
    qbase = base if q == "none" else os.path.join(work, f"base-{name}")
    if q != "none":
        run(args.peft, "quantize", "--model", base, "--to", q, *qargs, "--out", qbase)
    lora, merged = os.path.join(work, f"lora-{name}"), os.path.join(work, f"merged-{name}")
    run(args.peft, "train", "--model", qbase, "--data", text, "--method", "lora", "--targets", "all-linear", "--steps", 12,
        "--batch", 4, "--seq-len", 32, "--lr", "2e-2", "--threads", args.threads, "--overwrite", "--out", lora)
    said = run(args.peft, "merge", "--model", qbase, "--adapter", lora, "--out", merged, *(["--dtype", "bf16"] if q == "none" else []))
    problems = []
    if "(bf16)" not in said:
        problems.append(f"peft merge did not say bf16: {said.strip()!r}")
    cfg = json.load(open(os.path.join(merged, "config.json")))
    if "quantization_config" in cfg or cfg.get("dtype") != "bfloat16" or cfg.get("torch_dtype") != "bfloat16":
        problems.append(f"config.json: quantization_config {'quantization_config' in cfg}, dtype {cfg.get('dtype')}, "
                        f"torch_dtype {cfg.get('torch_dtype')}")
    if folder_dtypes(merged) != {"BF16"}:
        problems.append(f"model.safetensors dtypes {sorted(folder_dtypes(merged))}")
    ours = load(merged, "auto")
    if {p.dtype for p in ours.parameters()} != {torch.bfloat16}:
        problems.append(f"transformers loaded it as {sorted({str(p.dtype) for p in ours.parameters()})}")
    ours = ours.to(torch.bfloat16)
    if q == "none":
        theirs, n_q = load(base, torch.bfloat16), 0
    else:
        n_q = dequantized_folder(qbase, os.path.join(work, f"dequantized-{name}"), torch, bnb)
        theirs = load(os.path.join(work, f"dequantized-{name}"), torch.bfloat16)
    theirs = PeftModel.from_pretrained(theirs, lora).merge_and_unload().eval()
    vocab = theirs.config.vocab_size
    ids = torch.tensor([[(i * 37 + 11) % vocab for i in range(r * 32, (r + 1) * 32)] for r in range(2)])
    differ, ulps, total, err_bf16, err_fp32 = compare(ours, theirs, ids, torch)
    return problems, n_q, differ, ulps, total, err_bf16, err_fp32


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peft", help="the peft binary (e.g. .carry/gpu/peft)")
    ap.add_argument("--work", help="folder for the models (default: a new temporary one, kept)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    import bnb_torch as bnb
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    load = lambda d, dt: AutoModelForCausalLM.from_pretrained(d, **{dtype_kw: dt}).eval()

    work = args.work or tempfile.mkdtemp(prefix="peft-check-merge.")
    os.makedirs(work, exist_ok=True)
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        for i in range(60):
            f.write(f"The quick brown fox {i} jumps over the lazy dog; a stitch in time saves nine.\n")
    ok, worst = True, 0.0
    for arch in ("llama", "gpt2"):
        base = os.path.join(work, f"base-{arch}")
        run(args.peft, "init", "--arch", arch, "--layers", 2, "--hidden", 64, "--heads", 4, "--kv-heads", 2, "--context", 64,
            "--seed", 3, "--out", base)
        for q, qargs in QUANTS:
            name = f"{arch}-{q}"
            try:
                problems, n_q, differ, ulps, total, err_bf16, err_fp32 = one_case(args, torch, bnb, load, work, text, base, arch, q, qargs)
            except Exception as e:  # one case's failure is reported, the others still run
                problems, n_q, differ, ulps, total, err_bf16, err_fp32 = [f"{type(e).__name__}: {e}"], 0, -1, -1, 0, float("inf"), float("inf")
            passed = not problems and 0 <= ulps <= 1 and err_bf16 <= BF16_TOL and err_fp32 <= TOL
            ok &= passed
            worst = max(worst, err_fp32 if err_fp32 == err_fp32 else float("inf"))  # a NaN is the worst
            print(f"{'PASS' if passed else 'FAIL'} {name:11s} {n_q:2d} linears dequantized; merged weights differing from PEFT's: "
                  f"{differ} of {total} (at most {ulps} ulp); logits max|diff|/max|ref|: bf16 {err_bf16:.2e}, fp32 {err_fp32:.2e}"
                  + "".join(f"\n    {p}" for p in problems), flush=True)
    print(f"worst fp32 {worst:.2e} (bar {TOL:g}; bf16 bar {BF16_TOL:g}, weights 1 ulp); models in {work}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
