"""generate.py: writes one reference case folder with torch + transformers 5.x + PEFT 0.21.

The base model and the adapter are built in float32 from fixed seeds and saved; everything the case
states is then computed in float64 from those saved files, loaded back the way a user loads them, so
the numbers belong to exactly the files that `peft check` reads. Any surprise stops the run with an
error that says what and where (Fail).
"""
import json
import os
import shutil

import peft
import torch
import torch.nn.functional as F
import transformers
from peft.tuners.lora.layer import Embedding as LoraEmbedding
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import save_file

from cases import (B, DIM_ATTRS, FAMILIES, LABELS, METHODS, TASKS, Fail, PADDING, PROMPT, SCHEDULE_ORDER, T, TOLERANCE,
                   case_opts, case_optimizer, peft_arguments)
from compare import read_header

# Scales of the random values: base matrices and embeddings, biases, norm gains around 1, adapter tensors.
BASE_STD, BIAS_STD, GAIN_STD, ADAPTER_STD = 0.08, 0.02, 0.1, 0.2
# GPT2Config's sequence-summary dropout is for GPT2DoubleHeadsModel's head; a causal LM has none.
UNUSED_DROPOUT_FIELDS = {"summary_first_dropout"}
MAX_CASE_BYTES = 512 * 1024
# torch.manual_seed before every PeftModel.from_pretrained: PEFT creates the modules (drawing nn.Linear's values,
# and pissa_niter_K's random test matrix) before it loads the tensors; peft.c's loader draws from seed 0 too.
LOAD_SEED = 0
# init_lora_weights that change the base weights, saved by PEFT converted to a plain LoRA (converted/).
MUTATING_INITS = ("pissa", "olora")


def require(ok, what):
    if not ok:
        raise Fail(what)


def setup():
    """Deterministic CPU float64 work; float32 stays the default dtype (PEFT draws the VeRA projections
    in the default dtype, and the stored ones are float32 draws that peft.c regenerates bit for bit)."""
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    require(torch.get_default_dtype() == torch.float32, f"torch's default dtype is {torch.get_default_dtype()}, not float32")


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def check_versions():
    v = versions()
    major = int(v["transformers"].split(".")[0])
    require(major >= 5 and v["peft"].startswith("0.21."),
            f"made for transformers 5.x and peft 0.21 (the reference's); found {v} (--any-version runs anyway)")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- building and saving (float32) --------------------------------------------------------------------

def check_no_dropout(model, config, where):
    for k, v in config.to_dict().items():
        if ("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and v != 0 and k not in UNUSED_DROPOUT_FIELDS:
            raise Fail(f"{where}: {k} = {v}: every dropout must be 0")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout) and m.p != 0:
            raise Fail(f"{where}: dropout module {name} has p = {m.p}")


def auto_class(case_or_task):
    """The transformers auto class of a case's task (AutoModelForCausalLM, AutoModelForSequenceClassification)."""
    task = case_or_task if isinstance(case_or_task, str) else case_or_task.task
    return getattr(transformers, TASKS[task].auto_class)


def model_config_args(case):
    """The family's config arguments, with a seq_cls case's num_labels (and problem_type when it sets one)."""
    args = dict(FAMILIES[case.family].config)
    if case.task == "seq_cls":
        labels = LABELS[case.labels]
        args["num_labels"] = labels["num_labels"]
        if labels["problem_type"]:
            args["problem_type"] = labels["problem_type"]
    return args


def build_base(case, gen):
    fam = FAMILIES[case.family]
    config = getattr(transformers, fam.config_class)(**model_config_args(case), attn_implementation="eager")
    torch.manual_seed(case.seed)  # transformers' own init; every value is then overwritten from gen
    model = auto_class(case).from_config(config)
    attn = model.config._attn_implementation
    require(attn == "eager", f"{case.name}: attention implementation {attn!r}, not 'eager'")
    # transformers keeps the constructor's attn_implementation out of config.json; the reference's config.json
    # records it (and a loader given that file picks eager), so it is also set as a plain field, which is saved.
    model.config.attn_implementation = "eager"
    check_no_dropout(model, model.config, f"{case.name} base model")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.ndim >= 2:
                value = BASE_STD * noise
            elif name.endswith(".weight"):  # a norm's gain
                value = 1 + GAIN_STD * noise
            else:
                value = BIAS_STD * noise
            p.copy_(value)
    return model


def randomize_trainable(model, gen):
    """Every trainable adapter tensor random and non-zero, so the adapter changes the output (PEFT starts
    LoRA's B, VeRA's lambda_b and AdaLoRA's E at zero). Per-tensor rules for later options go here."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                if "lora_magnitude_vector" in name:
                    # DoRA's magnitude starts as the weight's row norms (PEFT's init): kept near them (a
                    # magnitude around 0 would all but cancel the base layer), but not equal.
                    require(bool((p > 0).all()), f"{name}: PEFT's initial magnitude is not positive")
                    p.copy_(p.double() * (1 + ADAPTER_STD * noise))
                else:
                    p.copy_(ADAPTER_STD * noise)
                require(bool((p != 0).all()), f"{name}: a random value came out 0")


def write_initial(pm, case_dir):
    """init.safetensors: the trainable tensors as init_lora_weights made them (named as PEFT saves them) and the
    weight of every adapted module after it (PiSSA and OLoRA leave the residual there), named as in model.safetensors."""
    out = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in peft.get_peft_model_state_dict(pm).items()}
    for name, m in pm.named_modules():
        if isinstance(m, BaseTunerLayer):
            key = name[len("base_model.model."):] + ".weight"
            require(key not in out, f"{key} is also an adapter tensor's name")
            out[key] = m.get_base_layer().weight.detach().to(torch.float32).contiguous().clone()
    save_file(out, os.path.join(case_dir, "init.safetensors"))


def write_converted(pm, case_dir, initial_dir):
    """converted/: PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) of the adapter as it is now,
    against its initial values saved in initial_dir: a plain LoRA of rank 2r for the original base (model/)."""
    out = os.path.join(case_dir, "converted")
    pm.save_pretrained(out, path_initial_model_for_weight_conversion=initial_dir)
    shutil.rmtree(initial_dir)
    card = os.path.join(out, "README.md")
    if os.path.exists(card):
        os.remove(card)
    with open(os.path.join(out, "adapter_config.json")) as f:
        saved = json.load(f)
    require(saved.get("init_lora_weights") is True, f"{out}: init_lora_weights {saved.get('init_lora_weights')!r} after the conversion")


def save_adapter(pm, adapter_dir):
    pm.save_pretrained(adapter_dir)
    # PEFT also writes a model card; the reference folders hold the adapter files alone.
    card = os.path.join(adapter_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        require(os.path.isfile(os.path.join(adapter_dir, f)), f"{adapter_dir}: save_pretrained wrote no {f}")


# ---- loading back (float64) ---------------------------------------------------------------------------

def load(case_dir, method, trainable, task, adapter="adapter"):
    """The case's model (+ adapter, a folder of the case) as a user loads them, converted to float64."""
    model = auto_class(task).from_pretrained(os.path.join(case_dir, "model"), attn_implementation="eager")
    if method.peft_config is not None:
        torch.manual_seed(LOAD_SEED)
        model = peft.PeftModel.from_pretrained(model, os.path.join(case_dir, adapter), is_trainable=trainable)
    model = model.to(torch.float64)
    for name, p in model.named_parameters():
        require(p.dtype == torch.float64, f"{name} is {p.dtype} after the float64 conversion")
    for name, b in model.named_buffers():
        require(not b.is_floating_point() or b.dtype == torch.float64, f"buffer {name} is {b.dtype} after the float64 conversion")
    return model


def trainable_tensors(model, method, case_dir):
    """[(name as stored, parameter)] for every trainable tensor: named as in adapter_model.safetensors
    (model.safetensors for full fine-tuning). A PEFT runtime name is matched to its stored name through
    PEFT's own saved state dict (same storage), so renamed tensors (DoRA's magnitude, modules_to_save)
    need no rules here."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    require(params, f"{case_dir}: no trainable tensor")
    if method.peft_config is None:
        stored_file = os.path.join(case_dir, "model", "model.safetensors")
        named = params
    else:
        stored_file = os.path.join(case_dir, "adapter", "adapter_model.safetensors")
        by_storage = {}
        for k, v in peft.get_peft_model_state_dict(model).items():
            by_storage.setdefault((v.data_ptr(), tuple(v.shape)), []).append(k)
        named = []
        for n, p in params:
            keys = by_storage.get((p.data_ptr(), tuple(p.shape)), [])
            require(len(keys) == 1, f"trainable {n}: {len(keys)} tensors of PEFT's saved state dict share its storage ({keys})")
            named.append((keys[0], p))
    _, stored = read_header(stored_file)
    for k, p in named:
        require(k in stored, f"trainable tensor {k} is not in {stored_file}")
        require(stored[k][1] == list(p.shape), f"{k}: shape {list(p.shape)}, {stored[k][1]} in {stored_file}")
    names = [k for k, _ in named]
    require(len(set(names)) == len(names), f"two trainable tensors share a stored name: {names}")
    return named


def adapted_weights(pm):
    """model.safetensors names of the weights that carry an adapter (trainable tokens: the wrapped module's, whose
    TrainableTokensLayer is its "token_adapter")."""
    out = []
    for name, m in pm.named_modules():
        if isinstance(m, BaseTunerLayer):
            require(name.startswith("base_model.model."), f"adapted module {name} outside base_model.model")
            name = name.removesuffix(".token_adapter")
            out.append(name[len("base_model.model."):] + ".weight")
    require(out, "the adapter wraps no module")
    return out


def token_indices(case):
    """Every index of the case's trainable_token_indices (a list, or a dict of lists), in order, once."""
    tti = case.config.get("trainable_token_indices")
    lists = tti.values() if isinstance(tti, dict) else [tti] if tti else []
    return list(dict.fromkeys(i for indices in lists for i in indices))


def tied_lora_embedding(pm):
    """Whether a LoRA embedding (lora.Embedding) wraps a weight the output head shares (GPT-2's tied wte): PEFT 0.21
    does not tie the adapter (ensure_weight_tying false), so the head keeps the base weight, and merging, which adds
    the delta to that shared weight, changes the head too: the merged model's logits differ from the adapter's."""
    head = pm.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    return any(isinstance(m, LoraEmbedding) and head_weight is not None and
               m.get_base_layer().weight.data_ptr() == head_weight.data_ptr() for m in pm.modules())


def saved_module_tensors(pm):
    """model.safetensors names of every tensor of the modules_to_save (SEQ_CLS: the head)."""
    out = []
    for name, m in pm.named_modules():
        if isinstance(m, ModulesToSaveWrapper):
            require(name.startswith("base_model.model."), f"module to save {name} outside base_model.model")
            out += [f"{name[len('base_model.model.'):]}.{k}" for k in m.original_module.state_dict()]
    return out


def stored_name(runtime_name):
    """A PEFT runtime parameter name as adapter_model.safetensors keys it: without the adapter name, a module
    to save's copy under the module's own name, and DoRA's magnitude without its module's ".weight"
    (get_peft_model_state_dict keeps the key of the days it was a plain parameter)."""
    name = runtime_name.replace(".modules_to_save.default.", ".").replace(".default", "")
    suffix = ".lora_magnitude_vector.weight"
    return name[:-len(".weight")] if name.endswith(suffix) else name


def batch(case, gen):
    """The io batch: (model inputs, labels). causal_lm: random ids, labels = ids with row 0's prompt and row 1's
    padding ignored. seq_cls: row 1 ends in PADDING pad tokens (attention_mask 0), BERT's second half is
    token type 1 (its padding 0), labels per row as the case's kind (LABELS); float labels are float32 values."""
    fam = FAMILIES[case.family]
    vocab = fam.config["vocab_size"]
    if case.task == "causal_lm":
        ids = torch.randint(0, vocab, (B, T), generator=gen, dtype=torch.int64)
        # trainable tokens: each trained row is an input of row 1 (an embedding row gets a gradient only when used)
        indices = token_indices(case)
        if indices:
            require(len(indices) <= T - PADDING, f"{case.name}: more trainable token indices than row 1 has tokens")
            ids[1, :len(indices)] = torch.tensor(indices, dtype=torch.int64)
        labels = ids.clone()
        labels[0, :PROMPT] = -100
        labels[1, T - PADDING:] = -100
        return {"input_ids": ids}, labels
    pad = fam.config["pad_token_id"]
    ids = torch.randint(3, vocab, (B, T), generator=gen, dtype=torch.int64)  # 0..2: pad and special ids
    mask = torch.ones(B, T, dtype=torch.int64)
    ids[1, T - PADDING:] = pad
    mask[1, T - PADDING:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if fam.config["type_vocab_size"] > 1:
        types = torch.zeros(B, T, dtype=torch.int64)
        types[:, T // 2:] = 1
        types[mask == 0] = 0
        inputs["token_type_ids"] = types
    n = LABELS[case.labels]["num_labels"]
    if case.labels == "single":
        labels = torch.randint(0, n, (B,), generator=gen, dtype=torch.int64)
    elif case.labels == "multi":
        labels = torch.randint(0, 2, (B, n), generator=gen, dtype=torch.int64).to(torch.float64)
    else:
        labels = torch.randn(B, generator=gen, dtype=torch.float64).to(torch.float32).to(torch.float64)
    return inputs, labels


def classification_loss(logits, labels, case):
    """transformers' sequence classification loss for the case's labels, in float64."""
    if case.labels == "single":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    if case.labels == "multi":
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.mse_loss(logits.squeeze(), labels.squeeze())


def causal_lm_loss(logits, labels):
    """Mean cross-entropy of token t+1 given tokens <= t over the labels that are not -100, in float64."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100)


def adamw(params, opt):
    return torch.optim.AdamW(params, lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
                             weight_decay=opt["weight_decay"], foreach=False)


def as_stored(named, what):
    """{name: float32 tensor} of (name, tensor) pairs; what() says which values (p -> tensor)."""
    return {k: what(p).detach().to(torch.float32).contiguous() for k, p in named}


# ---- the two runners -----------------------------------------------------------------------------------

def run_step(case, case_dir, gen):
    """io, grads, step and (with an adapter) merged: one forward, backward and AdamW step, then the merge."""
    method = METHODS[case.method]
    model = load(case_dir, method, trainable=True, task=case.task)
    model.train()
    named = trainable_tensors(model, method, case_dir)
    inputs, labels = batch(case, gen)

    out = model(**inputs, labels=labels)
    require(out.logits.dtype == torch.float64, f"logits are {out.logits.dtype}, not float64")
    logits = out.logits.detach()
    # causal_lm: lm_loss; seq_cls: cls_loss (the loss without any regulariser, as transformers computes it)
    task_loss_name = "lm_loss" if case.task == "causal_lm" else "cls_loss"
    task_loss = causal_lm_loss(logits, labels) if case.task == "causal_lm" else classification_loss(logits, labels, case)
    loss = out.loss
    print(f"    loss {loss.item():.9g}, {task_loss_name} {task_loss.item():.9g}")
    loss.backward()
    for k, p in named:
        require(p.grad is not None, f"{k}: no gradient")
        require(bool(torch.isfinite(p.grad).all()), f"{k}: non-finite gradient")
        require(bool((p.grad != 0).any()), f"{k}: gradient all zero")
    grads = as_stored(named, lambda p: p.grad)
    before = {k: p.detach().clone() for k, p in named}
    opt = adamw([p for _, p in named], case_optimizer(case))
    opt.step()
    for k, p in named:
        require(not torch.equal(before[k], p.detach()), f"{k}: unchanged by the AdamW step")
    io = dict(inputs)
    io.update({"labels": labels if not labels.is_floating_point() else labels.to(torch.float32),
               "logits": logits.to(torch.float32).contiguous(), task_loss_name: task_loss.to(torch.float32),
               "loss": loss.detach().to(torch.float32)})
    save_file(io, os.path.join(case_dir, "io.safetensors"))
    save_file(grads, os.path.join(case_dir, "grads.safetensors"))
    save_file(as_stored(named, lambda p: p), os.path.join(case_dir, "step.safetensors"))
    if method.peft_config is not None:
        write_merged(case_dir, method, case.task, inputs, logits)
    return {"bf16_reference": bf16_reference(case_dir, method, case.task, inputs, labels, grads)}


def bf16_reference(case_dir, method, task, inputs, labels, grads):
    """PyTorch's own bf16 gradient against the float64 one (cosines, all tensors as one vector and the
    worst tensor): how close bf16 can come on this case. The model is loaded in bfloat16 as users train
    it (PEFT keeps the adapter in float32); the GPU check's bf16 bounds scale with these."""
    model = auto_class(task).from_pretrained(os.path.join(case_dir, "model"), attn_implementation="eager", dtype=torch.bfloat16)
    if method.peft_config is not None:
        torch.manual_seed(LOAD_SEED)
        model = peft.PeftModel.from_pretrained(model, os.path.join(case_dir, "adapter"), is_trainable=True)
    model.train()
    # PEFT's float32 cast of the adapter leaves AdaLoRA's ranknum (a count, never saved) trainable: the
    # float64 gradients' names pick the tensors.
    named = [(stored_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
    for k, _ in named:
        require(k in grads or "ranknum" in k, f"bf16: trainable {k} has no float64 gradient")
    named = [(k, p) for k, p in named if k in grads]
    require(sorted(k for k, _ in named) == sorted(grads), "bf16: not the float64 run's trainable tensors")
    model(**inputs, labels=labels.to(torch.bfloat16) if labels.is_floating_point() else labels).loss.backward()
    ab = aa = bb = 0.0
    worst = 1.0
    for k, p in named:
        require(p.grad is not None, f"bf16 {k}: no gradient")
        g, r = p.grad.double().flatten(), grads[k].double().flatten()
        worst = min(worst, float(g @ r / (g.norm() * r.norm())))
        ab, aa, bb = ab + float(g @ r), aa + float(g @ g), bb + float(r @ r)
    cos = ab / (aa * bb) ** 0.5
    print(f"    bf16: gradient cosine {cos:.6f}, worst tensor {worst:.6f}")
    return {"grad_cosine": round(cos, 6), "worst_tensor_cosine": round(worst, 6), "dtype": "bfloat16", "device": "cpu"}


def write_merged(case_dir, method, task, inputs, logits):
    """merge_and_unload() of the adapter as saved; checks on the way that the saved adapter gives the same
    logits as the training step saw, that it changes them, and that merging keeps them. The merged file
    holds every adapted weight and every tensor of the modules to save (the trained copies)."""
    pm = load(case_dir, method, trainable=False, task=task)
    pm.eval()
    with torch.no_grad():
        reloaded = pm(**inputs).logits
        with pm.disable_adapter():
            base = pm(**inputs).logits
    require(rel(reloaded, logits) < 1e-10, f"the saved adapter gives other logits (relative difference {rel(reloaded, logits):.3g})")
    require(rel(base, logits) > 1e-3, f"the adapter barely changes the logits (relative difference {rel(base, logits):.3g})")
    keys = adapted_weights(pm) + saved_module_tensors(pm)
    tied = tied_lora_embedding(pm)
    merged = pm.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
    if tied:
        print(f"    LoRA on a tied embedding: the merged model's logits differ by {rel(merged_logits, logits):.3g} (PEFT's merge)")
    else:
        require(rel(merged_logits, logits) < 1e-9, f"merged logits differ (relative {rel(merged_logits, logits):.3g})")
    state = merged.state_dict()
    _, stored = read_header(os.path.join(case_dir, "model", "model.safetensors"))
    stored_ptrs = {state[k].data_ptr() for k in stored if k in state}
    out = {}
    for k in keys:
        # A tied head's token adapter (GPT-2's lm_head, tied to wte) writes the weight model.safetensors keeps once.
        if k not in stored and (k not in state or state[k].data_ptr() in stored_ptrs):
            continue
        require(k in state and k in stored, f"merged weight {k} is not a weight of the base model")
        out[k] = state[k].detach().to(torch.float32).contiguous()
    save_file(out, os.path.join(case_dir, "merged.safetensors"))


def run_schedule(case, case_dir, gen):
    """Real AdaLoRA training steps with the rank allocator; returns case.json's schedule fields."""
    method = METHODS[case.method]
    args = peft_arguments(case)
    steps = args["total_step"]
    vocab = FAMILIES[case.family].config["vocab_size"]
    pm = load(case_dir, method, trainable=True, task=case.task)
    pm.train()
    named = trainable_tensors(pm, method, case_dir)
    tuner = pm.base_model
    alloc = getattr(tuner, "rankallocator", None)
    require(alloc is not None and hasattr(alloc, "budget_schedule"), f"{type(tuner).__name__} has no rankallocator.budget_schedule")
    batches = torch.randint(0, vocab, (steps, B, T), generator=gen, dtype=torch.int64)
    opt = adamw([p for _, p in named], case_optimizer(case))
    budgets, losses = [], []
    for s in range(steps):
        out = pm(input_ids=batches[s], labels=batches[s])
        require(bool(torch.isfinite(out.loss)), f"step {s}: loss {out.loss.item()}")
        out.loss.backward()
        opt.step()
        tuner.update_and_allocate(s)
        budget, mask = alloc.budget_schedule(s)
        budgets.append([int(budget), bool(mask)])
        losses.append(out.loss.item())
        opt.zero_grad()
    require(any(m for _, m in budgets), "the schedule never applied a mask: tinit/tfinal/deltaT/total_step leave no budgeting phase")
    configs = list(pm.peft_config.values())
    require(len(configs) == 1, f"{len(configs)} adapters")
    pattern = configs[0].rank_pattern
    require(pattern, "no rank_pattern after the last step")
    rank_pattern = {k: [bool(x) for x in (v.view(-1).tolist() if torch.is_tensor(v) else v)] for k, v in pattern.items()}
    n_modules = len(adapted_weights(pm))
    require(len(rank_pattern) == n_modules, f"rank_pattern has {len(rank_pattern)} modules, the adapter {n_modules}")
    save_file({"batches": batches}, os.path.join(case_dir, "batches.safetensors"))
    save_file(as_stored(named, lambda p: p), os.path.join(case_dir, "final.safetensors"))
    print(f"    losses {losses[0]:.6g} .. {losses[-1]:.6g}, budgets {budgets[0][0]} -> {budgets[-1][0]}")
    return {"steps": steps, "order": SCHEDULE_ORDER, "budget_per_step": budgets, "loss_per_step": losses,
            "rank_pattern": rank_pattern, "init_bgt": int(alloc.init_bgt), "target_bgt": int(alloc.target_bgt)}


def run_arithmetic(case, case_dir, gen):
    """Two LoRA adapters in (adapter/, made by write_case, and adapter2/), PEFT's add_weighted_adapter of them
    out (combined/, as save_pretrained writes it), and the combined adapter's logits on the base (io.safetensors,
    float64, from combined/ loaded back as a user loads it)."""
    method = METHODS[case.method]
    combine = dict(case.combine)
    second = combine.pop("second", {})
    weights = combine.pop("weights")
    base = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(case_dir, "model"), attn_implementation="eager")
    pm2 = peft.get_peft_model(base, peft.LoraConfig(**dict(peft_arguments(case), **second)))
    randomize_trainable(pm2, gen)
    save_adapter(pm2, os.path.join(case_dir, "adapter2"))
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(case_dir, "model"), attn_implementation="eager")
    torch.manual_seed(LOAD_SEED)
    pm = peft.PeftModel.from_pretrained(model, os.path.join(case_dir, "adapter"), adapter_name="a")
    pm.load_adapter(os.path.join(case_dir, "adapter2"), adapter_name="b")
    # The new adapter's modules draw nn.Linear's values, then DARE's masks are torch.bernoulli draws: both from
    # torch's global generator (peft merge --seed).
    torch.manual_seed(case.seed)
    pm.add_weighted_adapter(["a", "b"], weights, "combined", **combine)
    out = os.path.join(case_dir, "saved")
    pm.save_pretrained(out, selected_adapters=["combined"])
    shutil.move(os.path.join(out, "combined"), os.path.join(case_dir, "combined"))
    shutil.rmtree(out)
    card = os.path.join(case_dir, "combined", "README.md")
    if os.path.exists(card):
        os.remove(card)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        require(os.path.isfile(os.path.join(case_dir, "combined", f)), f"save_pretrained wrote no combined/{f}")
    # Loaded from the case's (temporary) folder, the base names that path: written as the first adapter's
    # (the base built from its config has no name), so two runs write the same bytes.
    with open(os.path.join(case_dir, "adapter", "adapter_config.json")) as f:
        base_name = json.load(f).get("base_model_name_or_path")
    for d in ("adapter2", "combined"):
        path = os.path.join(case_dir, d, "adapter_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["base_model_name_or_path"] = base_name
        with open(path, "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True))  # as PEFT writes it
    vocab = FAMILIES[case.family].config["vocab_size"]
    ids = torch.randint(0, vocab, (B, T), generator=gen, dtype=torch.int64)
    pm = load(case_dir, method, trainable=False, task=case.task, adapter="combined")
    pm.eval()
    with torch.no_grad():
        logits = pm(input_ids=ids).logits
        with pm.disable_adapter():
            plain = pm(input_ids=ids).logits
    require(rel(plain, logits) > 1e-3, f"the combined adapter barely changes the logits (relative difference {rel(plain, logits):.3g})")
    save_file({"input_ids": ids, "logits": logits.to(torch.float32).contiguous()}, os.path.join(case_dir, "io.safetensors"))
    return {"combine": dict(combine, weights=weights, second=second, adapters=["adapter", "adapter2"], seed=case.seed)}


RUNNERS = {"step": run_step, "schedule": run_schedule, "arithmetic": run_arithmetic}


# ---- one case -------------------------------------------------------------------------------------------

def case_json(case, model_config, extra):
    dims = {k: getattr(model_config, DIM_ATTRS[k]) for k in FAMILIES[case.family].dims}
    doc = {"name": case.name, "family": case.family, "method": case.method, "dims": dims, "opts": case_opts(case),
           "B": B, "T": T}
    if case.task != "causal_lm":  # (the causal_lm cases' case.json stays the shared cases')
        doc["task"] = case.task
        doc["labels"] = case.labels
    if "steps" in extra:
        doc["steps"] = extra.pop("steps")
    if "combine" in extra:
        doc["combine"] = extra.pop("combine")
    doc["optimizer"] = case_optimizer(case)
    doc.update(extra)
    doc["versions"] = versions()
    if METHODS[case.method].runner != "schedule":
        doc["tolerance"] = dict(TOLERANCE)
    return doc


def write_case(case, out_root, force):
    """Builds the case in a temporary folder beside its place, then moves it there (replacing an old one
    only with force). Returns the case folder."""
    final = os.path.join(out_root, case.name)
    if os.path.exists(final) and not force:
        raise Fail(f"{final} exists (--force replaces it)")
    tmp = os.path.join(out_root, f".{case.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        method = METHODS[case.method]
        gen = torch.Generator().manual_seed(case.seed)
        base = build_base(case, gen)
        base.save_pretrained(os.path.join(tmp, "model"))
        with open(os.path.join(tmp, "model", "config.json")) as f:
            saved = json.load(f).get("attn_implementation")
        require(saved == "eager", f"{case.name}: model/config.json has attn_implementation {saved!r}, not 'eager'")
        args = peft_arguments(case)
        init = "init_lora_weights" in case.config
        extra = {}
        if args is not None:
            if init:  # PEFT's initial values come from torch's global generator
                torch.manual_seed(case.seed)
                extra["init_seed"], extra["load_seed"] = case.seed, LOAD_SEED
            pm = peft.get_peft_model(base, getattr(peft, method.peft_config)(**args))
            check_no_dropout(pm, pm.peft_config[next(iter(pm.peft_config))], f"{case.name} adapter")
            converts = init and str(args["init_lora_weights"]).lower().startswith(MUTATING_INITS)
            if init:
                write_initial(pm, tmp)
            if converts:  # the initial adapter, as PEFT's PiSSA / OLoRA examples save it before training
                pm.save_pretrained(os.path.join(tmp, "initial"))
            randomize_trainable(pm, gen)  # stands for training
            save_adapter(pm, os.path.join(tmp, "adapter"))
            if converts:
                write_converted(pm, tmp, os.path.join(tmp, "initial"))
        extra.update(RUNNERS[method.runner](case, tmp, gen))
        with open(os.path.join(tmp, "case.json"), "w") as f:
            json.dump(case_json(case, base.config, extra), f, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
