"""bnb_torch.py: bitsandbytes' quantization re-implemented with torch tensor operations on the CPU,
from its published source (bitsandbytes/functional.py: quantize_4bit / dequantize_4bit,
quantize_blockwise with the dynamic map, QuantState.as_dict, int8_vectorwise_dequant; csrc/kernels.cu:
kQuantizeBlockwise, dQuantizeNF4, dQuantizeFP4, dQuantize<0>, kDequantizeBlockwise, dDequantizeFP4Tree).
bitsandbytes itself is not installed (no wheels on the GPU machine); this is the reference that
src/quant/quant.c is checked against. Every operation is one fp32 tensor operation, as each statement of the
kernels is one fp32 operation (no fused multiply-add anywhere here).

Where the source leaves the bits open, this file fixes them (and docs/quantization.md says so):
- the mean that double quantization takes out (absmax.mean(): a CUDA reduction of unspecified order)
  is the float64 mean rounded once to float32;
- the dynamic map's torch.linspace is evaluated by its element formula (ATen's vectorised CPU kernel
  can differ from it in the last bit, by CPU); `dynamic_map_torch` is the source's call, for comparison;
- LLM.int8()'s 127 / absmax is an IEEE division (the CUDA kernel's __fdividef is approximate), a NaN
  (a zero row) codes 0 and an infinite product (a subnormal absmax) saturates at +-127.
"""
import json

import torch

F32 = torch.float32
BLOCK, NESTED_BLOCK = 64, 256

# get_4bit_type("nf4"): the QLoRA paper's values, and the FP4 list before its division by 12.
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]
FP4_LISTED = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
# dDequantizeFP4Tree's constants by the code's low three bits (its float literals).
FP4_TREE = [0.0, 5.208333333e-03, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25]


def c32(v):
    return torch.tensor(v, dtype=F32)


def quant_map(qtype):
    """The 16-value quant_map get_4bit_type returns (divided in fp32 by the largest magnitude)."""
    if qtype == "nf4":
        return torch.tensor(NF4, dtype=F32)
    data = torch.tensor(FP4_LISTED + [-v for v in FP4_LISTED], dtype=F32)
    return data / data.abs().max()


def _tree(x, node):
    """A decision tree (threshold, above, below) over x, leaves ints: the kernels' nested ifs."""
    if isinstance(node, int):
        return torch.full(x.shape, node, dtype=torch.int64)
    t, above, below = node
    return torch.where(x > c32(t), _tree(x, above), _tree(x, below))


NF4_TREE = (0.03979014977812767,
            (0.3893125355243683,
             (0.6427869200706482, (0.8614784181118011, 15, 14), (0.5016634166240692, 13, 12)),
             (0.2035212516784668, (0.2920137718319893, 11, 10), (0.1202552504837513, 9, 8))),
            (-0.33967943489551544,
             (-0.13791173323988914, (-0.045525018125772476, 7, 6), (-0.23460740596055984, 5, 4)),
             (-0.6106329262256622, (-0.4599952697753906, 3, 2), (-0.8480964004993439, 1, 0))))
FP4_MAG_TREE = (0.29166667, (0.583333, (0.8333333, 3, 2), (0.4166667, 5, 4)),
                (0.0859375, (0.20833333, 7, 6), (0.00260417, 1, 0)))


def code_4bit(x, qtype):
    if qtype == "nf4":
        return _tree(x, NF4_TREE)
    sign = torch.where(x < 0, 8, 0)
    return _tree(x.abs(), FP4_MAG_TREE) + sign


def _blocks(x, block):
    """x (flat fp32) padded with zeros to whole blocks, as the kernels load a partial last block."""
    n = x.numel()
    nb = (n + block - 1) // block
    padded = torch.zeros(nb * block, dtype=F32)
    padded[:n] = x
    return padded.view(nb, block)


def quantize_4bit(x, qtype):
    """kQuantizeBlockwise for NF4 / FP4: (packed bytes [(n+1)//2], absmax [blocks])."""
    blocks = _blocks(x.reshape(-1), BLOCK)
    absmax = blocks.abs().amax(dim=1)
    inv = c32(1.0) / absmax                      # inf for an all-zero block: 0 * inf = NaN, coded by the tree
    codes = code_4bit(blocks * inv[:, None], qtype).reshape(-1)
    packed = (codes[0::2] << 4 | codes[1::2]).to(torch.uint8)  # the first value in the high nibble
    return packed[:(x.numel() + 1) // 2].clone(), absmax


def dequantize_4bit(packed, absmax, n, qtype, block=BLOCK):
    """kDequantizeBlockwise for NF4 / FP4 into fp32 [n]."""
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[:n].long()
    m = absmax.repeat_interleave(block)[:n]
    if qtype == "nf4":
        return torch.tensor(NF4, dtype=F32)[codes] * m
    sign = torch.where(codes >= 8, c32(-1.0), c32(1.0))
    return torch.tensor(FP4_TREE, dtype=F32)[codes & 7] * m * sign


def linspace_elements(start, end, steps):
    """torch.linspace(start, end, steps) in fp32 by ATen's element formula: start + step * i in the
    first half, end - step * (steps - 1 - i) in the second (0-dim fp32 tensors: one rounding each)."""
    start, end = c32(start), c32(end)
    step = (end - start) / c32(steps - 1)
    half = steps // 2
    return torch.stack([start + step * c32(i) if i < half else end - step * c32(steps - 1 - i) for i in range(steps)])


def _dynamic_map(linspace):
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) with the given linspace."""
    values = []
    for i in range(7):
        bounds = linspace(0.1, 1.0, 2 ** i + 1)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scaled = (10 ** (-6 + i)) * means       # a Python number times an fp32 tensor: fp32
        values += scaled.tolist() + (-scaled).tolist()
    values += [0.0, 1.0]
    assert len(values) == 256
    return torch.tensor(sorted(values), dtype=F32)


def dynamic_map():
    return _dynamic_map(linspace_elements)


def dynamic_map_torch():
    """The source's own call (torch.linspace on the CPU), to compare with dynamic_map()."""
    return _dynamic_map(lambda a, b, n: torch.linspace(a, b, n))


def code_8bit(x, code):
    """dQuantize<0>: the binary search over the sorted map, then the nearer neighbour by midpoints."""
    pivot = torch.full(x.shape, 127, dtype=torch.int64)
    upper_pivot = torch.full(x.shape, 255, dtype=torch.int64)
    lower_pivot = torch.zeros(x.shape, dtype=torch.int64)
    lower = torch.full(x.shape, -1.0, dtype=F32)
    upper = torch.full(x.shape, 1.0, dtype=F32)
    val = code[pivot]
    i = 64
    while i > 0:
        gt = x > val
        lower_pivot, lower = torch.where(gt, pivot, lower_pivot), torch.where(gt, val, lower)
        upper_pivot, upper = torch.where(gt, upper_pivot, pivot), torch.where(gt, upper, val)
        pivot = torch.where(gt, pivot + i, pivot - i)
        val = code[pivot]
        i >>= 1
    upper = torch.where(upper_pivot == 255, code[255], upper)
    lower = torch.where(lower_pivot == 0, code[0], lower)
    up = torch.where(x > (upper + val) * 0.5, upper_pivot, pivot)
    down = torch.where(x < (lower + val) * 0.5, lower_pivot, pivot)
    return torch.where(x > val, up, down)


def quantize_blockwise(x, code, block=NESTED_BLOCK):
    """kQuantizeBlockwise's General8bit path: (codes uint8 [n], absmax [blocks])."""
    blocks = _blocks(x.reshape(-1), block)
    absmax = blocks.abs().amax(dim=1)
    inv = c32(1.0) / absmax
    codes = code_8bit(blocks * inv[:, None], code).reshape(-1)[:x.numel()]
    return codes.to(torch.uint8), absmax


def dequantize_blockwise(q, absmax, code, block=NESTED_BLOCK):
    return code[q.long()] * absmax.repeat_interleave(block)[:q.numel()]


def quantize_weight(w, qtype, double_quant, code=None):
    """A [out, in] fp32 weight quantized as Params4bit / Int8Params do: a dict of tensors and numbers
    with QuantState.as_dict's names, plus "dequant" (fp32 [out, in], what the forward uses)."""
    w = w.to(F32).contiguous()
    if qtype == "int8":
        scb = w.abs().amax(dim=1)
        # A zero row (0 * inf = NaN) stays 0; a subnormal absmax (127 / absmax = inf) saturates at +-127.
        q = torch.nan_to_num(torch.round(w * (c32(127.0) / scb)[:, None]), nan=0.0).clamp(-127, 127).to(torch.int8)
        dequant = q.to(F32) * scb[:, None] * c32(7.874015718698502e-3)     # int8_vectorwise_dequant
        return {"weight": q, "SCB": scb, "dequant": dequant}
    packed, absmax = quantize_4bit(w, qtype)
    out = {"weight": packed, "quant_map": quant_map(qtype), "quant_type": qtype, "blocksize": BLOCK,
           "dtype": "float32", "shape": list(w.shape)}
    if double_quant:
        code = dynamic_map() if code is None else code
        offset = absmax.double().mean().float()
        qabsmax, absmax2 = quantize_blockwise(absmax - offset, code)
        out.update(absmax=qabsmax, nested_absmax=absmax2, nested_quant_map=code.clone(), nested_blocksize=NESTED_BLOCK,
                   nested_dtype="float32", nested_offset=offset.item())
        absmax = dequantize_blockwise(qabsmax, absmax2, code) + offset
    else:
        out["absmax"] = absmax
    out["dequant"] = dequantize_4bit(packed, absmax, w.numel(), qtype).view(w.shape)
    return out


def serialized(prefix, q):
    """The tensors transformers saves for one quantized linear (bitsandbytes' _save_to_state_dict and
    QuantState.as_dict(packed=True)): prefix.weight, prefix.weight.absmax, ..., the non-tensor entries
    packed as JSON bytes in prefix.weight.quant_state.bitsandbytes__<type>; for int8 weight, SCB and
    weight_format (0: row-major)."""
    if "SCB" in q:
        return {f"{prefix}.weight": q["weight"], f"{prefix}.SCB": q["SCB"],
                f"{prefix}.weight_format": torch.tensor(0, dtype=torch.uint8)}
    out = {f"{prefix}.weight": q["weight"].view(-1, 1)}
    extra = {}
    for k, v in q.items():
        if k in ("weight", "dequant"):
            continue
        if torch.is_tensor(v):
            out[f"{prefix}.weight.{k}"] = v
        else:
            extra[k] = v
    blob = json.dumps(extra).encode()
    out[f"{prefix}.weight.quant_state.bitsandbytes__{q['quant_type']}"] = torch.tensor(list(blob), dtype=torch.uint8)
    return out


def dequantize_saved(tensors, prefix):
    """One linear `prefix` of a saved bitsandbytes model (the tensors serialized() names) dequantized as
    transformers' dequantize_bnb_weight does before its .to(dtype): 4-bit QuantState.from_dict (the stored
    nested_quant_map and nested_offset, a 0-dim fp32 tensor), then dequantize_4bit (the nested absmax
    dequantized blockwise, the offset added, then kDequantizeBlockwise, rounded to the quant_state's dtype);
    8-bit int8_vectorwise_dequant (int8 * SCB * (1/127) in fp32). Returns [out, in]."""
    w = tensors[f"{prefix}.weight"]
    if f"{prefix}.SCB" in tensors:
        return w.to(F32) * tensors[f"{prefix}.SCB"].view(-1, 1) * c32(7.874015718698502e-3)
    qtype = next(k.rsplit("__", 1)[1] for k in tensors if k.startswith(f"{prefix}.weight.quant_state.bitsandbytes__"))
    qs = json.loads(bytes(tensors[f"{prefix}.weight.quant_state.bitsandbytes__{qtype}"].tolist()).decode())
    assert qs["quant_type"] == qtype, (prefix, qs)
    absmax = tensors[f"{prefix}.weight.absmax"]
    if "nested_offset" in qs:
        absmax = dequantize_blockwise(absmax, tensors[f"{prefix}.weight.nested_absmax"], tensors[f"{prefix}.weight.nested_quant_map"],
                                      qs["nested_blocksize"])
        absmax = absmax + torch.tensor(float(qs["nested_offset"]), dtype=F32)
    n = qs["shape"][0] * qs["shape"][1]
    out = dequantize_4bit(w.reshape(-1), absmax.to(F32), n, qtype, qs["blocksize"])
    return out.to(getattr(torch, qs["dtype"])).view(qs["shape"])


def quantization_config(qtype, double_quant):
    """config.json's quantization_config as BitsAndBytesConfig.to_dict() writes it."""
    four = qtype != "int8"
    return {"quant_method": "bitsandbytes", "_load_in_4bit": four, "_load_in_8bit": not four,
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": qtype if four else "fp4", "bnb_4bit_use_double_quant": bool(four and double_quant),
            "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
            "llm_int8_threshold": 6.0, "load_in_4bit": four, "load_in_8bit": not four}
