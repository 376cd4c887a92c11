"""cases.py: what the reference cases are, as data. A case is one line of CASES: a model family, a method
and the PEFT options it changes; everything a case computes is shared code (generate.py).

Adding a case: one Case(...) line. Adding a family (Mistral, Qwen2, ...): one FAMILIES entry. Adding a
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
    config_class: str   # the transformers config class; AutoModelForCausalLM builds the model from it
    config: dict        # its arguments: the tiny dims and every dropout 0 (attention is "eager", added by generate.py)
    dims: tuple         # the case.json "dims" keys, read back from the built config (DIM_ATTRS)
    targets: tuple      # the linear modules every adapter targets


# case.json "dims" key -> the config attribute it reports (GPT2Config maps these names to n_embd etc.).
DIM_ATTRS = {"vocab": "vocab_size", "d": "hidden_size", "ff": "intermediate_size", "L": "num_hidden_layers",
             "H": "num_attention_heads", "KV": "num_key_value_heads"}

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
    # DARE's masks are torch.bernoulli draws on the global generator (torch.manual_seed(seed) first).
    Case("llama", "lora-arithmetic", suffix="dare-linear", combine=dict(combination_type="dare_linear", weights=[0.7, 0.5], density=0.6)),
    Case("llama", "lora-arithmetic", suffix="dare-ties", combine=dict(combination_type="dare_ties", weights=[0.7, 0.5], density=0.6)),
]


def peft_arguments(case):
    """The PEFT config's arguments for a case (None for full fine-tuning)."""
    method = METHODS[case.method]
    if method.peft_config is None:
        if case.config:
            raise Fail(f"{case.name}: full fine-tuning takes no PEFT options ({sorted(case.config)})")
        return None
    return dict(method.defaults, target_modules=list(FAMILIES[case.family].targets), **case.config)


def case_opts(case):
    """case.json "opts": the method's named options, then every other option the case sets, by its PEFT name."""
    args = peft_arguments(case) or {}
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
        peft_arguments(c)
        case_optimizer(c)
        arithmetic = METHODS[c.method].runner == "arithmetic"
        if arithmetic != bool(c.combine):
            raise Fail(f"{c.name}: combine= is for lora-arithmetic cases, and they need it")
        if arithmetic and (len(c.combine.get("weights", ())) != 2 or "combination_type" not in c.combine):
            raise Fail(f"{c.name}: combine needs combination_type and two weights")
