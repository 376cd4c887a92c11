#!/usr/bin/env python3
"""make_cases.py: reference cases for quantized frozen bases (issue 19), from bnb_torch.py (a torch
re-implementation of bitsandbytes' published source; bitsandbytes itself is not installed).

    python3 tools/quant_reference/make_cases.py OUT_DIR [--force]     # e.g. tests/fixtures/quant

Writes (README.md beside this file says what each holds):
  OUT_DIR/tensors/     tensors.safetensors + case.json: tensor cases (random, zeros, odd sizes, huge and
                       tiny values) quantized NF4 / FP4 (double quantization on and off) and int8: bytes,
                       statistics, dequantized values; the dynamic map (element formula and torch's own)
  OUT_DIR/<family>-lora-<q>/   model cases, the layout of tools/reference_cases (model/ in float32,
                       adapter/, io, grads, step safetensors, case.json) with the base's linear weights
                       quantized: dequant.safetensors (each quantized weight as the forward uses it,
                       [out, in]) and model-bnb/ (the base as transformers saves a bitsandbytes model)
Needs torch, transformers and peft (tools/reference_cases's versions); runs on the CPU.
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference_cases"))

QUANTS = [("nf4", True), ("nf4", False), ("fp4", True), ("fp4", False), ("int8", False)]


def quant_suffix(qtype, dq):
    return qtype if dq or qtype == "int8" else f"{qtype}-nodq"


def tensor_cases(torch):
    """name -> fp32 [rows, cols]: shapes not a multiple of 64, odd counts, zero rows and blocks, huge and tiny values."""
    g = torch.Generator().manual_seed(19)
    normal = lambda r, c, s: (torch.randn(r, c, generator=g, dtype=torch.float64) * s).float()
    zeros = normal(6, 64, 0.05)
    zeros[1] = 0          # a whole 4-bit block and an int8 row of zeros
    zeros[3, :31] = 0     # part of a block
    extremes = normal(8, 64, 1.0)  # a row is a 4-bit block
    extremes[0] *= 1e30   # huge (1 / absmax near the smallest normal)
    extremes[2] *= 1e-30  # tiny
    extremes[5] *= 1e-40  # subnormal: 1 / absmax overflows to inf, zeros become NaN codes
    extremes[5, 7] = 0
    exact = torch.tensor([[-1.0, 1.0, 0.5, -0.5, 0.25, 0.0, 0.7229568362236023, -0.6961928009986877]], dtype=torch.float32)
    return {
        "normal": normal(48, 80, 0.05),
        "odd": normal(7, 13, 0.3),
        "zeros": zeros,
        "extremes": extremes,
        "exact": exact,
        "many_blocks": normal(301, 64, 0.02) * torch.linspace(0.1, 3.0, 301)[:, None],  # 301 blocks: 2 nested, one partial
    }


def write_tensors(out_root, torch, bnb, save_file):
    d = os.path.join(out_root, "tensors")
    os.makedirs(d, exist_ok=True)
    store = {"dynamic_map": bnb.dynamic_map(), "dynamic_map_torch": bnb.dynamic_map_torch()}
    diff = (store["dynamic_map"] != store["dynamic_map_torch"]).sum().item()
    doc = {"dynamic_map_torch_differs_at": diff, "cases": {}}
    for name, x in tensor_cases(torch).items():
        store[f"{name}.x"] = x.contiguous()
        for qtype, dq in QUANTS:
            key = f"{name}.{quant_suffix(qtype, dq)}"
            q = bnb.quantize_weight(x, qtype, dq)
            for k, v in q.items():
                if torch.is_tensor(v):
                    store[f"{key}.{k}"] = v.contiguous()
            if dq and qtype != "int8":
                store[f"{key}.nested_offset"] = torch.tensor([q["nested_offset"]], dtype=torch.float32)
        doc["cases"][name] = list(x.shape)
    save_file(store, os.path.join(d, "tensors.safetensors"))
    doc["keys"] = ("<case>.x: the input [rows, cols]; <case>.<q>.weight: packed 4-bit bytes (first value in the high "
                   "nibble) or int8; .absmax: fp32 per 64 (without double quantization) or the uint8 codes of "
                   "absmax - nested_offset (with); .nested_absmax, .nested_quant_map, .nested_offset; .quant_map; "
                   ".SCB (int8); .dequant: fp32 [rows, cols]. <q>: nf4, nf4-nodq, fp4, fp4-nodq, int8")
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print(f"tensors: {len(store)} tensors; torch.linspace's map differs from the element formula at {diff} of 256 values")


def quantized_linears(model):
    """(module name, weight as [out, in]) of every linear transformers' bitsandbytes integration replaces:
    nn.Linear and GPT-2's Conv1D (transposed), except the output head (lm_head)."""
    import torch
    from transformers.pytorch_utils import Conv1D
    out = []
    for name, m in model.named_modules():
        if name.endswith("lm_head"):
            continue
        if isinstance(m, Conv1D):
            out.append((name, m.weight.detach().t()))
        elif isinstance(m, torch.nn.Linear):
            out.append((name, m.weight.detach()))
    return out


def write_model_case(case, qtype, dq, out_root, force, torch, bnb, g, save_file):
    import peft
    from cases import B, METHODS, PADDING, PROMPT, T, TOLERANCE, case_optimizer, peft_arguments
    final = os.path.join(out_root, case.name)
    if os.path.exists(final) and not force:
        raise g.Fail(f"{final} exists (--force replaces it)")
    tmp = os.path.join(out_root, f".{case.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        method = METHODS["lora"]
        gen = torch.Generator().manual_seed(case.seed)
        base = g.build_base(case, gen)
        base.save_pretrained(os.path.join(tmp, "model"))
        # The quantized base: each linear's fp32 weight quantized as bitsandbytes does ([out, in]).
        quant, bnb_state, dequant = {}, {}, {}
        for name, w in quantized_linears(base):
            q = bnb.quantize_weight(w, qtype, dq)
            quant[name] = q
            dequant[f"{name}.weight"] = q["dequant"].contiguous()
            bnb_state.update(bnb.serialized(name, q))
        # Every other tensor as the float32 base saved it (the output head and embeddings, norms, biases).
        from safetensors.torch import load_file
        for k, v in load_file(os.path.join(tmp, "model", "model.safetensors")).items():
            module, leaf = k.rsplit(".", 1)
            if not (module in quant and leaf == "weight"):
                bnb_state[k] = v
        g.require(len(quant) > 0, f"{case.name}: no linear to quantize")
        bnb_dir = os.path.join(tmp, "model-bnb")
        os.makedirs(bnb_dir)
        save_file(bnb_state, os.path.join(bnb_dir, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "model", "config.json")) as f:
            cfg = json.load(f)
        cfg["quantization_config"] = bnb.quantization_config(qtype, dq)
        with open(os.path.join(bnb_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        save_file(dequant, os.path.join(tmp, "dequant.safetensors"))

        pm = peft.get_peft_model(base, peft.LoraConfig(**peft_arguments(case)))
        g.randomize_trainable(pm, gen)
        g.save_adapter(pm, os.path.join(tmp, "adapter"))

        # The forward and backward of bitsandbytes' Linear4bit / Linear8bitLt as this project computes
        # them: the dequantized weight in a plain GEMM (float64 here), the LoRA on top by PEFT.
        model = g.load(tmp, method, trainable=True)
        from transformers.pytorch_utils import Conv1D
        with torch.no_grad():
            for name, m in model.base_model.model.named_modules():
                if name in quant:
                    layer = m.base_layer if hasattr(m, "base_layer") else m
                    w = quant[name]["dequant"].double()
                    layer.weight.copy_(w.t() if isinstance(layer, Conv1D) else w)
        model.train()
        named = g.trainable_tensors(model, method, tmp)
        vocab = g.FAMILIES[case.family].config["vocab_size"]
        ids = torch.randint(0, vocab, (B, T), generator=gen, dtype=torch.int64)
        labels = ids.clone()
        labels[0, :PROMPT] = -100
        labels[1, T - PADDING:] = -100
        out = model(input_ids=ids, labels=labels)
        logits = out.logits.detach()
        lm_loss = g.causal_lm_loss(logits, labels)
        out.loss.backward()
        for k, p in named:
            g.require(p.grad is not None and bool((p.grad != 0).any()), f"{k}: no gradient")
        grads = g.as_stored(named, lambda p: p.grad)
        opt = g.adamw([p for _, p in named], case_optimizer(case))
        opt.step()
        save_file({"input_ids": ids, "labels": labels, "logits": logits.to(torch.float32).contiguous(),
                   "lm_loss": lm_loss.to(torch.float32), "loss": out.loss.detach().to(torch.float32)},
                  os.path.join(tmp, "io.safetensors"))
        save_file(grads, os.path.join(tmp, "grads.safetensors"))
        save_file(g.as_stored(named, lambda p: p), os.path.join(tmp, "step.safetensors"))
        # How far quantization moves the logits (the unquantized base + the same adapter), for the record.
        full = g.load(tmp, method, trainable=False)
        with torch.no_grad():
            unq = full(input_ids=ids).logits
        doc = g.case_json(case, base.config, {})
        doc["quantization"] = {"type": qtype, "double_quant": dq, "blocksize": 64, "nested_blocksize": 256,
                               "modules": sorted(quant), "logits_rel_change": round(g.rel(logits, unq), 6)}
        doc["tolerance"] = dict(TOLERANCE)
        with open(os.path.join(tmp, "case.json"), "w") as f:
            json.dump(doc, f, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        print(f"{case.name}: loss {out.loss.item():.6g}; quantization moves the logits by {doc['quantization']['logits_rel_change']}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder to write the cases into (e.g. tests/fixtures/quant)")
    ap.add_argument("--force", action="store_true", help="replace case folders that exist")
    a = ap.parse_args()
    if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT's target_modules set order reaches adapter_config.json
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from safetensors.torch import save_file
    import bnb_torch as bnb
    import generate as g
    from cases import Case
    g.setup()
    print(f"versions: {g.versions()}")
    os.makedirs(a.out, exist_ok=True)
    write_tensors(a.out, torch, bnb, save_file)
    for family in ("gpt2", "llama"):
        for qtype, dq in QUANTS:
            case = Case(family, "lora", suffix=quant_suffix(qtype, dq))
            write_model_case(case, qtype, dq, a.out, a.force, torch, bnb, g, save_file)
    print(f"done: {a.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # a Fail or a library error: say what, exit non-zero
        if type(e).__name__ != "Fail":
            raise
        print(f"make_cases.py: error: {e}", file=sys.stderr)
        sys.exit(1)
