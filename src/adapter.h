// adapter.h: PEFT adapters on linear layers (LoRA, VeRA, AdaLoRA), in HF PEFT's file format.
// Each method is an AdapterMethod (lora.c, vera.c, adalora.c); this layer does what they share:
// config files, PEFT's target-module matching, attaching, loading, saving, merging, and the
// adapted linear's forward and backward.
#pragma once
#include "model.h"
#include <stdbool.h>
#include <stdint.h>

typedef enum { PEFT_LORA, PEFT_VERA, PEFT_ADALORA } PeftType;

typedef struct {
    char module[256];
    int rank;                // AdaLoRA rank_pattern: ranks kept for this module
    bool *mask;              // [init_r] which ranks are kept (NULL when none given)
} RankPatternEntry;

typedef struct {
    PeftType type;
    int r;                   // LoRA/VeRA rank; AdaLoRA uses init_r
    float alpha;             // lora_alpha (LoRA, AdaLoRA)
    bool use_rslora;
    float dropout;           // lora_dropout / vera_dropout
    int n_targets;
    char **targets;          // target_modules as a list ...
    char *target_regex;      // ... or as one regex (PEFT: a string is matched with re.fullmatch)
    bool fan_in_fan_out;
    char *base_model;        // base_model_name_or_path (may be NULL)
    // PEFT's task_type: "CAUSAL_LM" for what we create; "" when a file says null. It matters:
    // with null, PEFT runs the plain PeftModel forward, which skips AdaLoRA's regulariser.
    char task_type[32];
    // VeRA
    float d_initial;
    uint64_t prng_key;
    bool save_projection;
    // AdaLoRA
    int init_r, target_r, tinit, tfinal, deltaT, total_step;
    float beta1, beta2, orth_reg_weight;
    int n_rank_pattern;
    RankPatternEntry *rank_pattern;
} AdapterConfig;

typedef struct AdapterMethod AdapterMethod;
typedef struct AdapterSet AdapterSet;

// A tensor a method gives every adapted module, as PEFT names and shapes it: its file key is
// "base_model.model.<module>.<suffix>", its shape [rows, cols] in terms of the module's rank and
// features (vector: a 1-D tensor [rows]).
typedef enum { DIM_ONE, DIM_RANK, DIM_IN, DIM_OUT } AdapterDim;
typedef struct {
    const char *suffix;
    AdapterDim rows, cols;
    bool vector;
    size_t field;            // offsetof(Adapter, the Param * it fills)
} AdapterTensor;

// One adapted linear layer.
struct Adapter {
    const AdapterMethod *method;
    AdapterSet *set;
    Linear *lin;
    int r;                       // this module's rank (AdaLoRA: may differ per module after pruning)
    float scaling;
    Param *A, *B, *E;            // LoRA: A [r,in], B [out,r]; AdaLoRA adds E [r,1]
    Param *lambda_d, *lambda_b;  // VeRA: [r], [out]
    // Saved by forward for backward, sized for cap_N rows.
    int cap_N;
    float *h;                    // x_in A^T (before any scaling) [N, r]
    float *extra;                // method-specific (VeRA: the un-scaled output [N, out])
    float *x_drop;               // dropout(x) [N, in] when dropout > 0 in training
    bool merged;
};

struct AdapterSet {
    AdapterConfig cfg;
    Model *model;
    int n;
    Adapter *adapters;
    int n_params;
    Param **params;              // trainable tensors, in module order (A, B, ... per module)
    // VeRA: the shared frozen projections.
    float *vera_A, *vera_B;      // [r, max_in], [max_out, r]
    int vera_max_in, vera_max_out;
    void *method_state;          // e.g. AdaLoRA's rank allocator
    double last_regularizer;     // the regulariser's share of the last loss
    Adapter **by_linear;         // [model->n_linears]: this set's adapter on each linear (NULL: none)
    uint64_t vera_fingerprint;   // VeRA: hash of the projections' bytes (sets with equal ones share products)
    uint64_t uid;                // unique in this process (device copies are cached by it)
};

struct AdapterMethod {
    const char *peft_type;       // "LORA", "VERA", "ADALORA"
    int n_tensors;
    AdapterTensor tensors[3];    // every adapted module's tensors, in the order they are created and saved
    // Called once before the per-module init (e.g. VeRA draws its shared projections).
    int (*prepare)(AdapterSet *set);
    // Set this module's initial values (its tensors exist already) and scaling.
    int (*init)(AdapterSet *set, Adapter *a, uint64_t *rng);
    // y[N,out] += adapter(x[N,in]). train: apply dropout and keep what backward needs.
    void (*forward)(Adapter *a, const float *x, float *y, int N, bool train);
    // dx[N,in] += d/dx; accumulate the adapter tensors' gradients.
    void (*backward)(Adapter *a, const float *x, const float *dy, float *dx, int N);
    // delta[out,in] = the weight change the adapter adds (for merge).
    void (*delta)(const Adapter *a, float *delta);
    // The same delta as a plain low-rank product, delta = scale * B'[out,r'] A'[r',in], every other
    // factor folded into A' and B' (malloc'd; NULL when r' is 0): for formats that only know LoRA.
    void (*lowrank)(const Adapter *a, float **A, float **B, int *r, float *scale);
    // Optional: a loss term over all modules (AdaLoRA's orthogonality); adds its gradient when want_grad.
    double (*regularizer)(AdapterSet *set, bool want_grad);
    // Optional: write method-specific config keys and tensors when saving (AdaLoRA slicing, VeRA projections).
    int (*save)(AdapterSet *set, void *writer /*StWriter*/, void *config_json /*cJSON*/);
    // Optional: after loading tensors from a file (VeRA checks stored projections).
    int (*after_load)(AdapterSet *set, const void *file /*SafeTensors*/, const char *path);
    // Optional: whether a file tensor that is no module's is this method's (VeRA's stored projections);
    // any other such tensor is refused.
    bool (*owns_tensor)(const AdapterSet *set, const char *name);
    void (*free_state)(AdapterSet *set);
};

extern const AdapterMethod lora_method, vera_method, adalora_method;

void adapter_config_defaults(AdapterConfig *c, PeftType type);
int adapter_config_load(AdapterConfig *c, const char *path);
int adapter_config_parse(AdapterConfig *c, const char *json_text, const char *path_for_errors);
// The adapter_config.json object PEFT expects (a cJSON *; the caller deletes it).
void *adapter_config_to_json_object(const AdapterConfig *c);
void adapter_config_free(AdapterConfig *c);
// Comma-separated list, or a regex when it starts with "re:" (PEFT's string form); "all-linear" too.
void adapter_config_set_targets(AdapterConfig *c, const char *spec);
// PEFT's default targets for the architecture when none are given (gpt2: c_attn; llama: q_proj,v_proj).
void adapter_config_default_targets(AdapterConfig *c, const ModelConfig *mc);
const char *peft_type_name(PeftType t);
int peft_type_parse(const char *s, PeftType *out);

// PEFT's rule: a list entry matches a module named exactly so or ending in ".entry";
// a string is a regex that must match the whole name.
bool adapter_targets_module(const AdapterConfig *c, const char *module);

// Create adapters on every matching linear of m (fresh initial values from seed).
int adapters_attach(Model *m, const AdapterConfig *c, uint64_t seed);
// adapter_config.json + adapter_model.safetensors from a PEFT adapter folder.
int adapters_load(Model *m, const char *dir);
int adapters_save(Model *m, const char *dir);
void adapters_free(Model *m);
// W += delta for every adapter (then forward skips the adapter); unmerge subtracts it back.
void adapters_merge(Model *m);
void adapters_unmerge(Model *m);
double adapters_regularizer(Model *m, bool want_grad);

// Used by the methods.
void adapter_ensure_capacity(Adapter *a, int N, long extra_per_row);
// dropout(x) when training with dropout, else x itself.
const float *adapter_dropout_input(Adapter *a, const float *x, int N, bool train);

// ---- detached adapter sets (serving many adapters on one base) ----
// An adapter set made for m's linears but not attached: m->adapters and every lin->adapter stay
// as they are, so any number may exist at once (and be loaded while another thread runs the
// model: nothing of m is written). Apply them per token row through m->row_adapters.
AdapterSet *adapters_load_detached(Model *m, const char *dir);
AdapterSet *adapters_new_detached(Model *m, const AdapterConfig *c, uint64_t seed);
void adapter_set_free(AdapterSet *set);
// Whether two VeRA sets have the same shared projections (same r, shapes and values).
bool adapters_same_vera_projection(const AdapterSet *a, const AdapterSet *b);

// y[N,out] = x W^T + b (+ adapter); backward accumulates dx and the trainable grads.
// When m->row_adapters is set (inference only), row n's adapter is row_adapters[n]'s module for
// this linear instead of lin->adapter (NULL = the base alone): the base GEMM runs once for all
// rows, then LoRA and AdaLoRA rows add their own low-rank product (rows of one set batched
// together, single rows as matrix-vector products), and VeRA rows whose sets share the
// projections share one x A^T and one (.) B^T product, only the lambda scalings being per row.
void linear_forward(Model *m, Linear *lin, const float *x, float *y, int N);
void linear_backward(Model *m, Linear *lin, const float *x, const float *dy, float *dx, int N);
