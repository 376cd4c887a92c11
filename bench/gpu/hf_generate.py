"""HF transformers generation on the same GPU: the reference for bench/gpu/generate.sh.

    python3 bench/gpu/hf_generate.py gpt2-124m|llama-1.1b BATCH NEW_TOKENS [greedy|sample]

Random-initialised model in bf16, SDPA attention, greedy decoding or sampling (do_sample with
temperature 0.8, top_k 50, top_p 0.9: bench/gpu/generate.sh's peft generate flags) with the KV cache
(model.generate, min_new_tokens = max_new_tokens so every row makes them all), a prompt of 8
tokens per row. Prints one JSON line: generated tokens/s (all rows, prefill included) of the
median of 3 timed calls after one warm-up.
"""
import json
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

family, batch, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
decoding = sys.argv[4] if len(sys.argv) > 4 else "greedy"
if decoding not in ("greedy", "sample"):
    sys.exit("decoding must be greedy or sample, not %r" % decoding)
sampling = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9) if decoding == "sample" else dict(do_sample=False)
if family == "gpt2-124m":
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    cls = GPT2LMHeadModel
else:
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
    cls = LlamaForCausalLM
cfg._attn_implementation = "sdpa"
with torch.device("cuda"):
    model = cls(cfg).to(torch.bfloat16).eval()
ids = torch.randint(0, 200, (batch, 8), device="cuda")
mask = torch.ones_like(ids)
times = []
with torch.no_grad():
    for i in range(4):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, pad_token_id=0, **sampling)
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
assert out.shape[1] == 8 + new
t = statistics.median(times)
print(json.dumps({"model": family, "batch": batch, "decoding": decoding, "new_tokens": new, "tok_s": batch * new / t,
                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30}))
