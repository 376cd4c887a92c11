"""Join bench_gpu's and hf_bench.py's JSON lines into one markdown table.

    python3 bench/gpu/table.py OURS.jsonl [HF.jsonl] [--ours NOTE] [--hf-reused NOTE]

The last two columns: `peft estimate`'s GPU training memory for the row (bench_gpu's est_GiB, from
estimate_compute) and its ratio to our measured peak.

Without HF.jsonl (or for rows it lacks), the HF PEFT anchors measured on one H100 (the issue's
numbers) fill the HF columns, marked with *. --hf-reused says HF.jsonl is an earlier run's (NOTE: its
date and commit): its cells are marked with a dagger. --ours names the binary that measured ours.
"""
import argparse
import json

ANCHORS = {  # tok/s, peak GiB (None: not given)
    ("gpt2-124m", "full"): (118e3, 12.5), ("gpt2-124m", "lora-qv"): (131e3, 10.4), ("gpt2-124m", "lora-all"): (116e3, None),
    ("gpt2-124m", "vera-all"): (83e3, None), ("gpt2-124m", "adalora-all"): (68e3, None),
    ("llama-1.1b", "lora-qv"): (53e3, 16.4), ("llama-1.1b", "lora-all"): (33e3, 21.3), ("llama-1.1b", "vera-all"): (28e3, None),
    ("llama-1.1b", "adalora-all"): (21e3, None), ("llama-1.1b", "full"): (40e3, 35.4),
}
ORDER = list(ANCHORS)


def load(path):
    rows = {}
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[(r["family"], r["method"])] = r
    except FileNotFoundError:
        pass
    return rows


ap = argparse.ArgumentParser()
ap.add_argument("ours")
ap.add_argument("hf", nargs="?")
ap.add_argument("--ours", dest="ours_note")
ap.add_argument("--hf-reused")
args = ap.parse_args()
ours = load(args.ours)
hf = load(args.hf) if args.hf else {}
print("| model | method | ours tok/s | HF PEFT tok/s | speed-up | ours peak GiB | HF peak GiB | memory ratio | ours MFU "
      "| peft estimate GiB | estimate / ours peak |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for key in ORDER:
    o, h = ours.get(key), hf.get(key)
    if o is None and h is None:
        continue
    star = ""
    if h and "tok_s" in h:
        h_tok, h_mem = h["tok_s"], h["peak_GiB"]
        star = "†" if args.hf_reused else ""
    else:
        h_tok, h_mem = ANCHORS[key]
        star = "*"
    o_tok = o.get("tok_s") if o else None
    o_mem = o.get("peak_GiB") if o else None
    cells = [key[0], key[1],
             f"{o_tok / 1e3:.1f}K" if o_tok else (o.get("error", "-") if o else "-"),
             f"{h_tok / 1e3:.1f}K{star}" if h_tok else "-",
             f"{o_tok / h_tok:.2f}x" if o_tok and h_tok else "-",
             f"{o_mem:.2f}" if o_mem is not None else "-",
             f"{h_mem:.2f}{star}" if h_mem is not None else "-",
             f"{o_mem / h_mem:.2f}" if o_mem is not None and h_mem else "-",
             f"{100 * o['mfu']:.1f}%" if o and "mfu" in o else "-",
             f"{o['est_GiB']:.2f}" if o and o.get("est_GiB", -1) >= 0 else "-",
             f"{o['est_GiB'] / o_mem:.3f}" if o and o.get("est_GiB", -1) >= 0 and o_mem else "-"]
    print("| " + " | ".join(cells) + " |")
if any(o.get("gemm_peak_tflops") for o in ours.values()):
    print(f"\nMFU denominator: bf16 GEMM rate measured on this GPU: {next(iter(ours.values())).get('gemm_peak_tflops')} TFLOP/s."
          " * = HF PEFT anchor from the issue (not measured in this run).")
if args.ours_note:
    print(f"\nOurs: {args.ours_note}.")
if args.hf_reused:
    print(f"\n† = HF PEFT row reused from an earlier run (SKIP_HF=1), not measured with ours: {args.hf_reused}.")
