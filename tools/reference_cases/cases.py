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
}


@dataclass(frozen=True)
class Method:
    peft_config: str    # the PEFT config class; None: full fine-tuning, no adapter
    defaults: dict      # its arguments besides target_modules (every dropout 0)
    opts: tuple         # (case.json "opts" name, PEFT argument) pairs
    runner: str = "step"  # "step": one training step (io/grads/step/merged); "schedule": the AdaLoRA allocator run


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
    Case("roberta", "vera"),
    Case("roberta", "adalora"),
    Case("bert", "full"),
    Case("bert", "lora"),
    Case("bert", "vera"),
    Case("bert", "adalora"),
    Case("roberta", "lora", labels="regression", suffix="regression"),
    Case("bert", "lora", labels="multi", suffix="multilabel"),
]


def peft_arguments(case):
    """The PEFT config's arguments for a case (None for full fine-tuning)."""
    method = METHODS[case.method]
    if method.peft_config is None:
        if case.config:
            raise Fail(f"{case.name}: full fine-tuning takes no PEFT options ({sorted(case.config)})")
        return None
    fam = FAMILIES[case.family]
    args = dict(method.defaults, target_modules=list(fam.method_targets.get(case.method, fam.targets)), **case.config)
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
