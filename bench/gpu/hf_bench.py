"""HF PEFT on the same GPU: the reference row for each bench/gpu configuration.

    python3 bench/gpu/hf_bench.py OUT.jsonl [--only SUBSTR] [--large]

Written for this repository (the measurement of the project's anchor script, with the same shapes
and settings): random-initialised GPT-2 124M (8x1024) and a TinyLlama-1.1B-shaped Llama (4x2048);
adapter rows keep the base model in bf16 and the adapter tensors in fp32; full fine-tuning keeps
fp32 weights; bf16 autocast, SDPA attention, fused torch AdamW (lr 1e-4) over the trainable
tensors; labels = inputs; AdaLoRA calls update_and_allocate every step. tok/s = B*T / median of 12
timed steps (after 3 warm-up steps, each step synchronised); peak = torch.cuda.max_memory_allocated.
--large: instead, issue 19's HF side: LoRA r 64 (alpha 16) on every linear of a Llama-2-7B-shaped model at
1x2048, the base in bf16, with gradient checkpointing (what a user runs without bitsandbytes), to set
beside bench/gpu/qlora_7b.sh's `peft train` runs.
"""
import json
import statistics
import sys
import time

import torch
from peft import AdaLoraConfig, LoraConfig, VeraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

GPT2_ALL = ["c_attn", "c_proj", "c_fc"]
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROWS = [("gpt2-124m", m, 8, 1024) for m in ("full", "lora-qv", "lora-all", "vera-all", "adalora-all")]
ROWS += [("llama-1.1b", m, 4, 2048) for m in ("lora-qv", "lora-all", "vera-all", "adalora-all", "full")]
LARGE_ROWS = [("llama-7b", "lora-all-r64-gc", 1, 2048)]


def base_model(family):
    if family == "gpt2-124m":
        cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        cls, qv, every = GPT2LMHeadModel, ["c_attn"], GPT2_ALL
    elif family == "llama-7b":
        cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
        cls, qv, every = LlamaForCausalLM, ["q_proj", "v_proj"], LLAMA_ALL
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                          num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
        cls, qv, every = LlamaForCausalLM, ["q_proj", "v_proj"], LLAMA_ALL
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):  # initialise on the GPU: same distributions, seconds instead of a minute
        model = cls(cfg) if family != "llama-7b" else cls(cfg).to(torch.bfloat16)  # the 7B's fp32 init: 27 GB
    return model, qv, every


def adapter_config(method, qv, every, fan):
    if method == "lora-qv":
        return LoraConfig(r=8, lora_alpha=16, target_modules=qv, lora_dropout=0.0, fan_in_fan_out=fan)
    if method == "lora-all-r64-gc":
        return LoraConfig(r=64, lora_alpha=16, target_modules=every, lora_dropout=0.0, fan_in_fan_out=fan)
    if method == "lora-all":
        return LoraConfig(r=16, lora_alpha=32, target_modules=every, lora_dropout=0.0, fan_in_fan_out=fan)
    if method == "vera-all":
        return VeraConfig(r=256, target_modules=every, vera_dropout=0.0, fan_in_fan_out=fan)
    return AdaLoraConfig(init_r=12, target_r=8, target_modules=every, lora_dropout=0.0, total_step=10000,
                         tinit=0, tfinal=0, deltaT=10, fan_in_fan_out=fan)


def run(family, method, B, T, steps=12, warm=3):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, qv, every = base_model(family)
    if method == "full":
        trainable = list(model.parameters())
    else:
        model = get_peft_model(model.to(torch.bfloat16), adapter_config(method, qv, every, family.startswith("gpt2")))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        trainable = [p for p in model.parameters() if p.requires_grad]
    if method.endswith("-gc"):  # gradient checkpointing, as PEFT's docs set it up
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    model.train()
    times = []
    for step in range(warm + steps):
        ids = torch.randint(0, model.config.vocab_size, (B, T), device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        if method == "adalora-all":
            model.base_model.update_and_allocate(step)
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= warm:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    row = {"family": family, "method": method, "B": B, "T": T, "trainable": sum(p.numel() for p in trainable),
           "step_ms": round(med * 1e3, 2), "tok_s": round(B * T / med),
           "peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2), "loss": float(loss),
           "torch": torch.__version__}
    del model, opt, trainable
    return row


def main():
    out = sys.argv[1]
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    with open(out, "w") as f:
        for family, method, B, T in LARGE_ROWS if "--large" in sys.argv else ROWS:
            if only and only not in f"{family} {method}":
                continue
            try:
                row = run(family, method, B, T)
            except torch.cuda.OutOfMemoryError:
                row = {"family": family, "method": method, "B": B, "T": T, "error": "OOM"}
            torch.cuda.empty_cache()
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
