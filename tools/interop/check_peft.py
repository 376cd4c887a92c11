"""Do HF transformers + PEFT read what peft.c writes? For each case folder made by make_cases.sh:
load base (+ adapter, or the merged folder) with transformers/PEFT, compute logits for the same
input ids, and compare with peft.c's logits (relative Frobenius error).
    python3 check_peft.py CASES_DIR      (where torch, transformers and peft are installed)"""
import json, os, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel

root = sys.argv[1]
worst = 0.0
ok = True
for name in sorted(os.listdir(root)):
    case = os.path.join(root, name)
    if not os.path.isfile(os.path.join(case, "case.json")):
        continue
    spec = json.load(open(os.path.join(case, "case.json")))
    ours = load_file(os.path.join(case, "logits.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(case, spec["model"]), torch_dtype=torch.float32)
    if spec.get("adapter"):
        model = PeftModel.from_pretrained(model, os.path.join(case, spec["adapter"]))
    model.eval()
    with torch.no_grad():
        theirs = model(input_ids=ours["input_ids"]).logits.float()
    err = ((theirs - ours["logits"]).norm() / ours["logits"].norm()).item()
    extra = ""
    cfg_path = os.path.join(case, spec.get("adapter") or "", "adapter_config.json")
    if spec.get("adapter"):
        cfg = json.load(open(cfg_path))
        keys = list(load_file(os.path.join(case, spec["adapter"], "adapter_model.safetensors")).keys())
        extra = " %s, %d tensors in the file%s" % (cfg["peft_type"], len(keys),
                 ", save_projection=%s, projections stored: %s" % (cfg.get("save_projection"), any("vera_A" in k for k in keys)) if cfg["peft_type"] == "VERA" else "")
    passed = err <= spec.get("tol", 1e-5)
    ok &= passed
    worst = max(worst, err)
    print("%s %-22s logits relative error %.2e%s" % ("PASS" if passed else "FAIL", name, err, extra), flush=True)
print("worst %.2e" % worst)
sys.exit(0 if ok else 1)
