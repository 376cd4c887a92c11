"""cases.py: what the reference cases are, as data. A case is one line of CASES: a model family, a method
and the PEFT options it changes; everything a case computes is shared code (generate.py).

Adding a case: one Case(...) line. Adding a family (Mistral, Qwen2, ...): one FAMILIES entry (its task:
causal_lm, or seq_cls for the encoders, whose cases also say their kind of labels). Adding a
PEFT option (rank_pattern, use_dora, layers_to_transform, ...): a Case with `config={...}` and a `suffix`
that names it; the option lands in adapter_config.json through PEFT and in case.json's "opts".
Names of PEFT / transformers arguments are theirs, spelled as their constructors take them.
"""
from dataclasses import dataclass, field
import zlib


class Fail(Exception):
    """A case that cannot be made as declared, or a generated file that is not what it must be."""


@dataclass(frozen=True)
class Family:
    config_class: str   # the transformers config class; the task's auto class builds the model from it
    config: dict        # its arguments: the tiny dims and every dropout 0 (attention is "eager", added by generate.py)
    dims: tuple         # the case.json "dims" keys, read back from the built config (DIM_ATTRS)
    targets: tuple      # the linear modules every adapter targets (unless the method's entry below says otherwise)
    task: str = "causal_lm"        # the one task (TASKS) the family's cases run
    method_targets: dict = field(default_factory=dict)  # method -> its targets, where they differ


@dataclass(frozen=True)
class Task:
    auto_class: str     # the transformers auto class that builds and loads the model
    peft_task: str      # the PEFT config's task_type (None: null, as the shared cases)


# causal_lm: the shared cases' task (task_type null: PEFT's plain PeftModel). seq_cls: sequence
# classification through PEFT's SEQ_CLS, which trains the head ("classifier") as modules_to_save.
TASKS = {
    "causal_lm": Task("AutoModelForCausalLM", None),
    "seq_cls": Task("AutoModelForSequenceClassification", "SEQ_CLS"),
}

# seq_cls labels: case.labels -> the head's outputs and the config's problem_type (None: transformers
# picks it from num_labels and the labels' dtype, as for most users).
LABELS = {
    "single": dict(num_labels=3, problem_type=None),                        # int64 class indices [B]
    "multi": dict(num_labels=3, problem_type="multi_label_classification"),  # float 0/1 [B, 3]
    "regression": dict(num_labels=1, problem_type=None),                    # float [B]
}


# case.json "dims" key -> the config attribute it reports (GPT2Config maps these names to n_embd etc.).
DIM_ATTRS = {"vocab": "vocab_size", "d": "hidden_size", "ff": "intermediate_size", "L": "num_hidden_layers",
             "H": "num_attention_heads", "KV": "num_key_value_heads", "labels": "num_labels"}

# The encoders (seq_cls): post-LayerNorm blocks with learned positions; RoBERTa's positions start after
# its padding id 1, BERT's second segment has token type 1. LoRA and VeRA on query and value (the
# papers' GLUE setting); AdaLoRA on every linear of the encoder (its paper's), the head excluded:
# "output.dense" also matches attention.output.dense, and the head is modules_to_save.
ENCODER_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=64, layer_norm_eps=1e-5, hidden_act="gelu",
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
ENCODER_ALL_LINEAR = ("query", "key", "value", "intermediate.dense", "output.dense")

# Mistral's and Qwen2's tiny models: Llama's dims (head_dim from hidden_size / heads).
LLAMA_LIKE = dict(vocab_size=96, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, attention_dropout=0.0,
                  tie_word_embeddings=False)
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES = {
    "gpt2": Family("GPT2Config",
                   dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
                   dims=("vocab", "d", "L", "H"), targets=("c_attn", "c_proj", "c_fc")),
    # Grouped-query attention (4 query heads, 2 key/value heads), an untied head, RMSNorm eps 1e-5.
    "llama": Family("LlamaConfig",
                    dict(vocab_size=96, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         rms_norm_eps=1e-5, attention_dropout=0.0, tie_word_embeddings=False),
                    dims=("vocab", "d", "ff", "L", "H", "KV"),
                    targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "roberta": Family("RobertaConfig", dict(ENCODER_DIMS, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                      dims=("vocab", "d", "ff", "L", "H", "labels"), targets=("query", "value"), task="seq_cls",
                      method_targets={"adalora": ENCODER_ALL_LINEAR}),
    "bert": Family("BertConfig", dict(ENCODER_DIMS, type_vocab_size=2, pad_token_id=0),
                   dims=("vocab", "d", "ff", "L", "H", "labels"), targets=("query", "value"), task="seq_cls",
                   method_targets={"adalora": ENCODER_ALL_LINEAR}),
    # Llama's dims; Mistral's sliding window (4096) covers every sequence here; Qwen2 adds q/k/v biases.
    "mistral": Family("MistralConfig", LLAMA_LIKE, dims=("vocab", "d", "ff", "L", "H", "KV"), targets=LLAMA_TARGETS),
    "qwen2": Family("Qwen2Config", LLAMA_LIKE, dims=("vocab", "d", "ff", "L", "H", "KV"), targets=LLAMA_TARGETS),
}


@dataclass(frozen=True)
class Method:
    peft_config: str    # the PEFT config class; None: full fine-tuning, no adapter
    defaults: dict      # its arguments besides target_modules (every dropout 0)
    opts: tuple         # (case.json "opts" name, PEFT argument) pairs
    runner: str = "step"  # "step": one training step (io/grads/step/merged); "schedule": the AdaLoRA allocator run;
                          # "arithmetic": two adapters combined by add_weighted_adapter (combined/, io)


ADALORA = dict(init_r=4, lora_alpha=8, target_r=2, tinit=2, tfinal=2, deltaT=1, total_step=10, lora_dropout=0.0)
ADALORA_OPTS = (("r", "init_r"), ("alpha", "lora_alpha"))

METHODS = {
    "full": Method(None, {}, ()),
    "lora": Method("LoraConfig", dict(r=4, lora_alpha=8, lora_dropout=0.0), (("r", "r"), ("alpha", "lora_alpha"))),
    # save_projection: vera_A / vera_B go into the adapter file (drawn from projection_prng_key by torch's CPU generator).
    "vera": Method("VeraConfig", dict(r=16, d_initial=0.1, projection_prng_key=0, save_projection=True, vera_dropout=0.0),
                   (("r", "r"), ("d_initial", "d_initial"))),
    "adalora": Method("AdaLoraConfig", ADALORA, ADALORA_OPTS),
    # check.c runs a case whose method is "adalora-schedule" through the allocator (rank_allocator.c).
    "adalora-schedule": Method("AdaLoraConfig", ADALORA,
                               ADALORA_OPTS + tuple((k, k) for k in ("target_r", "tinit", "tfinal", "deltaT", "total_step")),
                               runner="schedule"),
    # check.c runs a case whose method is "lora-arithmetic" through peft merge's adapter arithmetic (lora_combine.c).
    "lora-arithmetic": Method("LoraConfig", dict(r=4, lora_alpha=8, lora_dropout=0.0), (("r", "r"), ("alpha", "lora_alpha")),
                              runner="arithmetic"),
}

OPTIMIZER = dict(name="AdamW", lr=0.01, betas=[0.9, 0.999], eps=1e-08, weight_decay=0.01)
TOLERANCE = dict(logits_rel=0.0001, grads_rel=0.001, step_rel=0.001)
B, T = 2, 10            # io batch
PROMPT, PADDING = 3, 2  # labels: row 0's first PROMPT tokens and row 1's last PADDING tokens are -100
SCHEDULE_ORDER = "per step: forward(labels=batch) -> backward -> optimizer.step -> update_and_allocate(step) -> zero_grad"


@dataclass(frozen=True)
class Case:
    family: str
    method: str
    config: dict = field(default_factory=dict)     # PEFT arguments over the method's defaults
    optimizer: dict = field(default_factory=dict)  # over OPTIMIZER
    suffix: str = ""                               # names a case that sets options: <family>-<method>-<suffix>
    labels: str = "single"                         # seq_cls families: the kind of labels (LABELS)

    @property
    def task(self):
        return FAMILIES[self.family].task
    # lora-arithmetic: add_weighted_adapter's arguments (weights, combination_type, density, ...) and "second",
    # the second adapter's LoRA options over the first's.
    combine: dict = field(default_factory=dict)

    @property
    def name(self):
        return "-".join(p for p in (self.family, self.method, self.suffix) if p)

    @property
    def seed(self):
        # From the name alone: adding or reordering cases leaves every other case's numbers as they were.
        return zlib.crc32(self.name.encode())


CASES = [
    Case("gpt2", "full"),
    Case("gpt2", "lora"),
    Case("gpt2", "vera"),
    Case("gpt2", "adalora"),
    Case("llama", "full"),
    Case("llama", "lora"),
    Case("llama", "vera"),
    Case("llama", "adalora"),
    # 16 real steps: warm-up to step 3, the cubic budget to step 13, the final mask after.
    Case("gpt2", "adalora-schedule", config=dict(tinit=3, tfinal=3, deltaT=2, total_step=16),
         optimizer=dict(weight_decay=0.0)),
    # Sequence classification (PEFT's SEQ_CLS): three classes, row 1 padded; the other label kinds on LoRA.
    Case("roberta", "full"),
    Case("roberta", "lora"),
    # (No roberta-vera: PEFT 0.21's merge_and_unload of VeRA fails on RoBERTa's classification head, a module to
    # save that is not a Linear: AttributeError 'RobertaClassificationHead' object has no attribute 'weight'.)
    Case("roberta", "adalora"),
    Case("bert", "full"),
    Case("bert", "lora"),
    Case("bert", "vera"),
    Case("bert", "adalora"),
    Case("roberta", "lora", labels="regression", suffix="regression"),
    Case("bert", "lora", labels="multi", suffix="multilabel"),
    # init_lora_weights: init.safetensors holds PEFT's initial tensors (torch.manual_seed(seed) before get_peft_model)
    # and the adapted base weights after them; PiSSA / OLoRA cases also hold converted/, PEFT's rank-2r conversion.
    Case("llama", "lora", config=dict(init_lora_weights=True), suffix="init-true"),
    Case("llama", "lora", config=dict(init_lora_weights=False), suffix="init-false"),
    Case("llama", "lora", config=dict(init_lora_weights="gaussian"), suffix="init-gaussian"),
    Case("gpt2", "lora", config=dict(init_lora_weights="gaussian"), suffix="init-gaussian"),
    Case("llama", "lora", config=dict(init_lora_weights="pissa"), suffix="pissa"),
    Case("gpt2", "lora", config=dict(init_lora_weights="pissa"), suffix="pissa"),
    Case("llama", "lora", config=dict(init_lora_weights="pissa", use_rslora=True), suffix="pissa-rslora"),
    Case("llama", "lora", config=dict(init_lora_weights="pissa_niter_2"), suffix="pissa-niter"),
    Case("llama", "lora", config=dict(init_lora_weights="olora"), suffix="olora"),
    # Adapter arithmetic: two adapters (the second with its own rank or targets where the type allows it).
    Case("llama", "lora-arithmetic", suffix="linear",
         combine=dict(combination_type="linear", weights=[0.7, -0.4],
                      second=dict(target_modules=["q_proj", "v_proj", "down_proj"]))),
    Case("llama", "lora-arithmetic", suffix="cat", combine=dict(combination_type="cat", weights=[0.7, 0.5],
                                                                 second=dict(r=2, lora_alpha=4))),
    Case("llama", "lora-arithmetic", suffix="svd", combine=dict(combination_type="svd", weights=[0.6, 0.8], svd_rank=3,
                                                                 second=dict(r=2, lora_alpha=4))),
    Case("gpt2", "lora-arithmetic", suffix="svd", combine=dict(combination_type="svd", weights=[1.0, -0.5])),
    Case("llama", "lora-arithmetic", suffix="ties", combine=dict(combination_type="ties", weights=[0.7, 0.5], density=0.5)),
    Case("llama", "lora-arithmetic", suffix="ties-frequency",
         combine=dict(combination_type="ties", weights=[0.7, -0.3], density=0.6, majority_sign_method="frequency")),
    Case("gpt2", "lora-arithmetic", suffix="ties", combine=dict(combination_type="ties", weights=[0.5, 0.5], density=0.3)),
    Case("llama", "lora-arithmetic", suffix="magnitude-prune",
         combine=dict(combination_type="magnitude_prune", weights=[0.7, 0.5], density=0.4)),
    # rsLoRA inputs (the first one's use_rslora, which the combined config used to inherit): cat with a plain second
    # adapter of another rank, linear with both rsLoRA (huggingface/peft#3449: the combined adapter's scaling is 1).
    Case("llama", "lora-arithmetic", config=dict(use_rslora=True), suffix="cat-rslora",
         combine=dict(combination_type="cat", weights=[0.7, 0.5], second=dict(use_rslora=False, r=2, lora_alpha=4))),
    Case("llama", "lora-arithmetic", config=dict(use_rslora=True), suffix="linear-rslora",
         combine=dict(combination_type="linear", weights=[0.7, -0.4])),
    # DARE's masks are torch.bernoulli draws on the global generator (torch.manual_seed(seed) first).
    Case("llama", "lora-arithmetic", suffix="dare-linear", combine=dict(combination_type="dare_linear", weights=[0.7, 0.5], density=0.6)),
    Case("llama", "lora-arithmetic", suffix="dare-ties", combine=dict(combination_type="dare_ties", weights=[0.7, 0.5], density=0.6)),
    # DoRA: GPT-2's Conv1D (fan_in_fan_out) and Llama's Linear, every linear; Llama on q,v with rsLoRA.
    Case("gpt2", "lora", config=dict(use_dora=True), suffix="dora"),
    Case("llama", "lora", config=dict(use_dora=True), suffix="dora"),
    Case("llama", "lora", config=dict(use_dora=True, use_rslora=True, target_modules=["q_proj", "v_proj"]),
         suffix="dora-qv-rslora"),
    # LoRA's targeting and layout options (PEFT's own keys, issue 18): which modules, which ranks and alphas.
    Case("mistral", "lora"),
    Case("qwen2", "lora"),
    Case("gpt2", "lora", config=dict(target_modules="all-linear"), suffix="all-linear"),
    Case("llama", "lora", config=dict(target_modules="all-linear", exclude_modules=["down_proj", "layers.0.self_attn.k_proj"]),
         suffix="all-linear-exclude"),
    Case("llama", "lora", config=dict(target_modules=r".*\.(q|v|down)_proj"), suffix="regex"),
    Case("qwen2", "lora", config=dict(exclude_modules=r".*\.1\.mlp\..*"), suffix="exclude-regex"),
    Case("mistral", "lora", config=dict(exclude_modules=["o_proj", "gate_proj"]), suffix="exclude"),
    Case("gpt2", "lora", config=dict(layers_to_transform=[1], layers_pattern="h"), suffix="layers"),
    Case("llama", "lora", config=dict(layers_to_transform=0), suffix="layers-int"),
    Case("llama", "lora", config=dict(rank_pattern={"v_proj": 2, "model.layers.1.mlp.down_proj": 6},
                                      alpha_pattern={"q_proj": 16, r"layers\.1\..*gate_proj": 3}), suffix="patterns"),
    Case("gpt2", "lora", config=dict(rank_pattern={"c_fc": 2}, alpha_pattern={"attn.c_proj": 2}, use_rslora=True),
         suffix="patterns-rslora"),
    Case("qwen2", "lora", config=dict(rank_pattern={"k_proj": 1}, layers_to_transform=[1]), suffix="patterns-layers"),
    # bias: which base biases train beside the adapter and are saved with it.
    Case("gpt2", "lora", config=dict(bias="all"), suffix="bias-all"),
    Case("llama", "lora", config=dict(bias="all"), suffix="bias-all"),      # Llama has no bias: nothing more trains
    Case("qwen2", "lora", config=dict(bias="all", layers_to_transform=[0]), suffix="bias-all-layers"),
    # modules_to_save: full trainable copies (an untied head and embedding; a linear, never adapted then).
    Case("llama", "lora", config=dict(modules_to_save=["lm_head", "embed_tokens"]), suffix="modules-to-save"),
    Case("qwen2", "lora", config=dict(modules_to_save=["layers.1.self_attn.q_proj"]), suffix="modules-to-save-linear"),
    # Last: PEFT before its fix of issue 3306 dropped lora_only's biases when saving (the run stops on it here).
    Case("gpt2", "lora", config=dict(bias="lora_only", target_modules=["c_attn", "c_fc"]), suffix="bias-lora-only"),
    Case("qwen2", "lora", config=dict(bias="lora_only", target_modules=["q_proj", "v_proj"]), suffix="bias-lora-only"),
    # LoRA on the token embedding (PEFT's lora.Embedding: lora_embedding_A [r, vocab], B [d, r]). GPT-2's wte is tied
    # to the head, which keeps the base weight (PEFT does not tie the adapter; merging changes both uses).
    Case("gpt2", "lora", config=dict(target_modules=["wte", "c_attn"]), suffix="embedding"),
    Case("llama", "lora", config=dict(target_modules=["embed_tokens", "q_proj", "v_proj"], lora_alpha=6), suffix="embedding"),
    # trainable_token_indices: these rows of the embedding trained (their values saved); the io batch holds every
    # index. A list is the input embedding's (tied to GPT-2's head, which PEFT ties too); a dict names the modules.
    Case("gpt2", "lora", config=dict(trainable_token_indices=[3, 17, 42]), suffix="trainable-tokens"),
    Case("llama", "lora", config=dict(trainable_token_indices=[3, 17, 42]), suffix="trainable-tokens"),
    Case("llama", "lora", config=dict(target_modules=["q_proj", "v_proj"],
                                      trainable_token_indices={"embed_tokens": [5, 9], "lm_head": [9, 60, 2]}),
         suffix="trainable-tokens-dict"),
]


def peft_arguments(case):
    """The PEFT config's arguments for a case (None for full fine-tuning)."""
    method = METHODS[case.method]
    if method.peft_config is None:
        if case.config:
            raise Fail(f"{case.name}: full fine-tuning takes no PEFT options ({sorted(case.config)})")
        return None
    fam = FAMILIES[case.family]
    # A case's own target_modules (a list, a regex string or "all-linear") replaces the family's.
    args = {**method.defaults, "target_modules": list(fam.method_targets.get(case.method, fam.targets)), **case.config}
    task = TASKS[case.task].peft_task
    if task:
        args["task_type"] = task
    return args


def case_opts(case):
    """case.json "opts": the method's named options, then every other option the case sets, by its PEFT name."""
    args = peft_arguments(case) or {}
    args.pop("task_type", None)  # case.json says the task itself
    named = METHODS[case.method].opts
    opts = {name: args[arg] for name, arg in named}
    opts.update((k, v) for k, v in case.config.items() if k not in {arg for _, arg in named})
    return opts


def case_optimizer(case):
    unknown = set(case.optimizer) - set(OPTIMIZER)
    if unknown:
        raise Fail(f"{case.name}: unknown optimizer settings {sorted(unknown)}")
    return dict(OPTIMIZER, **case.optimizer)


def validate():
    """Every case names a known family and method, and no two cases share a name."""
    names = [c.name for c in CASES]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise Fail(f"cases with the same name: {sorted(dup)}")
    for c in CASES:
        if c.family not in FAMILIES:
            raise Fail(f"{c.name}: unknown family {c.family!r} (known: {sorted(FAMILIES)})")
        if c.method not in METHODS:
            raise Fail(f"{c.name}: unknown method {c.method!r} (known: {sorted(METHODS)})")
        if c.labels not in LABELS:
            raise Fail(f"{c.name}: unknown labels {c.labels!r} (known: {sorted(LABELS)})")
        if c.task != "seq_cls" and c.labels != "single":
            raise Fail(f"{c.name}: labels are for sequence classification, the {c.family} family is {c.task}")
        if c.task != "causal_lm" and METHODS[c.method].runner != "step":
            raise Fail(f"{c.name}: the {c.method} runner is for causal_lm cases")
        peft_arguments(c)
        case_optimizer(c)
        arithmetic = METHODS[c.method].runner == "arithmetic"
        if arithmetic != bool(c.combine):
            raise Fail(f"{c.name}: combine= is for lora-arithmetic cases, and they need it")
        if arithmetic and (len(c.combine.get("weights", ())) != 2 or "combination_type" not in c.combine):
            raise Fail(f"{c.name}: combine needs combination_type and two weights")
