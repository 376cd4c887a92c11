"""RoBERTa sequence classification (PEFT's SEQ_CLS) both ways between peft.c and HF transformers + PEFT,
on a tiny random RobertaForSequenceClassification that `peft init --arch roberta` writes:
  base          transformers loads peft.c's model folder and gives our logits (no adapter);
  ours->PEFT    `peft train --task classify --method lora` (query, value; the head as modules_to_save):
                PeftModel.from_pretrained loads the adapter folder and gives our logits;
  PEFT->ours    get_peft_model(LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"])), every
                trainable tensor (lora_A, lora_B, the head's copy) moved off its initial value, save_pretrained:
                `peft predict --adapter` on that folder gives PEFT's logits.
Our logits and the token ids they were computed from come from `peft predict --logits`, so both sides run
on the same ids. Each comparison is a relative Frobenius error (float32 both sides; tolerance 1e-5); an
adapter must also move the logits away from the base's (else the check would not see the head).
Runs on the CPU where torch, transformers and peft are installed (the GPU machine's python3):
    python3 tools/interop/seq_cls.py PEFT_BINARY OUT_DIR      (OUT_DIR is created afresh)
e.g. python3 tools/interop/seq_cls.py .carry/gpu/peft /tmp/interop-seq-cls"""
import os
import shutil
import subprocess
import sys

import peft
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

TOL = 1e-5


def run(*args):
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def hf_model(base, adapter=None):
    model = AutoModelForSequenceClassification.from_pretrained(base, attn_implementation="eager").float()
    if adapter:
        model = peft.PeftModel.from_pretrained(model, adapter)
    return model.eval()


def hf_logits(model, dump):
    inputs = {k: dump[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in dump}
    with torch.no_grad():
        return model(**inputs).logits.float()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    peft_bin, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    base, data, test = (os.path.join(out, n) for n in ("base", "train.jsonl", "test.jsonl"))
    run(peft_bin, "init", "--arch", "roberta", "--layers", "2", "--hidden", "64", "--heads", "4", "--context", "64",
        "--labels", "3", "--seed", "3", "--out", base)
    words = ("awful", "great", "table")  # three classes told apart by one word
    with open(data, "w") as f:
        for i in range(90):
            f.write('{"text": "the %s thing %d", "label": %d}\n' % (words[i % 3], i, i % 3))
    with open(test, "w") as f:  # lengths differ, so rows are padded
        for i in range(12):
            f.write('{"text": "%s the %s thing %d", "label": %d}\n' % ("very " * (i % 4), words[i % 3], i, i % 3))

    def predict(adapter, name):
        path = os.path.join(out, name + ".safetensors")
        run(peft_bin, "predict", "--model", base, *(("--adapter", adapter) if adapter else ()), "--data", test,
            "--logits", path)
        return load_file(path)

    results = []

    def report(name, err, moved=None):
        ok = err <= TOL and (moved is None or moved > 1e-3)
        results.append(ok)
        extra = "" if moved is None else ", %.2e from the base's logits" % moved
        print("%s %-12s logits relative error %.2e%s" % ("PASS" if ok else "FAIL", name, err, extra), flush=True)

    base_dump = predict(None, "base")
    base_hf = hf_logits(hf_model(base), base_dump)
    report("base", rel(base_hf, base_dump["logits"]))

    ours = os.path.join(out, "ours")
    run(peft_bin, "train", "--task", "classify", "--model", base, "--data", data, "--method", "lora", "--r", "4",
        "--epochs", "3", "--lr", "1e-2", "--batch", "8", "--threads", "2", "--out", ours)
    ours_dump = predict(ours, "ours")
    ours_hf = hf_logits(hf_model(base, ours), ours_dump)
    report("ours->PEFT", rel(ours_hf, ours_dump["logits"]), rel(ours_dump["logits"], base_dump["logits"]))

    theirs = os.path.join(out, "theirs")
    torch.manual_seed(0)
    pm = peft.get_peft_model(hf_model(base), peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0,
                                                              target_modules=["query", "value"]))
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:  # lora_A, lora_B (zero at first) and the head's trained copy
                p.add_(0.05 * torch.randn_like(p))
    pm.save_pretrained(theirs)
    keys = sorted(load_file(os.path.join(theirs, "adapter_model.safetensors")))
    print("PEFT's adapter: %d tensors, head: %s" % (len(keys), [k for k in keys if "classifier" in k]), flush=True)
    theirs_hf = hf_logits(pm.eval(), base_dump)
    theirs_dump = predict(theirs, "theirs")
    same_ids = torch.equal(theirs_dump["input_ids"], base_dump["input_ids"])
    report("PEFT->ours", rel(theirs_dump["logits"], theirs_hf) if same_ids else float("inf"),
           rel(theirs_hf, base_hf))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
