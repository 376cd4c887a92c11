// adapter.h: PEFT adapters on linear layers (LoRA, VeRA, AdaLoRA), in HF PEFT's file format.
// Each method is a Method descriptor (method.h: lora.c, vera.c, adalora.c); this layer does what they share:
// config files, PEFT's target-module matching, attaching, loading, saving, merging, and the
// adapted linear's forward and backward.
#pragma once
#include "method.h"
#include "model.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    char module[256];
    int rank;                // AdaLoRA rank_pattern: ranks kept for this module
    bool *mask;              // [init_r] which ranks are kept (NULL when none given)
} RankPatternEntry;

typedef struct {
    MethodId type;           // an adapter method (not METHOD_FULL)
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
    // modules_to_save: whole modules trained and saved beside the adapter (saved_modules.c). PEFT's
    // SEQ_CLS task adds "classifier" and "score", the classification heads.
    int n_modules_to_save;
    char **modules_to_save;
} AdapterConfig;

typedef struct AdapterSet AdapterSet;

// One adapted linear layer.
struct Adapter {
    const Method *method;
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
    struct SavedModules *saved;  // modules_to_save: the trained copies (saved_modules.c), NULL when none
};

// PEFT's defaults for the method's config class (the method's default r).
void adapter_config_defaults(AdapterConfig *c, MethodId type);
int adapter_config_load(AdapterConfig *c, const char *path);
int adapter_config_parse(AdapterConfig *c, const char *json_text, const char *path_for_errors);
// The adapter_config.json object PEFT expects (a cJSON *; the caller deletes it).
void *adapter_config_to_json_object(const AdapterConfig *c);
void adapter_config_free(AdapterConfig *c);
// Comma-separated list, or a regex when it starts with "re:" (PEFT's string form); "all-linear" too.
void adapter_config_set_targets(AdapterConfig *c, const char *spec);
// Appends a module name to modules_to_save.
void adapter_config_add_module_to_save(AdapterConfig *c, const char *name);
// PEFT's default targets for the architecture when none are given (gpt2: c_attn; llama: q_proj,v_proj;
// bert, roberta: query,value).
void adapter_config_default_targets(AdapterConfig *c, const ModelConfig *mc);

// PEFT's rule: a list entry matches a module named exactly so or ending in ".entry";
// a string is a regex that must match the whole name.
bool adapter_targets_module(const AdapterConfig *c, const char *module);

// Create adapters on every matching linear of m (fresh initial values from seed).
int adapters_attach(Model *m, const AdapterConfig *c, uint64_t seed);
// adapter_config.json + adapter_model.safetensors from a PEFT adapter folder.
int adapters_load(Model *m, const char *dir);
int adapters_save(Model *m, const char *dir);
void adapters_free(Model *m);
// W += delta for every adapter (then forward skips the adapter); unmerge subtracts it back. An adapter
// on a quantized linear stays unmerged (it applies live: the same numbers).
void adapters_merge(Model *m);
void adapters_unmerge(Model *m);
double adapters_regularizer(Model *m, bool want_grad);

// ---- modules_to_save (saved_modules.c) ----
// As PEFT's ModulesToSaveWrapper: every base tensor inside a module whose name ends with an entry of
// modules_to_save gets a trainable copy, appended to set->params under PEFT's file key
// "base_model.model.<tensor>"; the model computes with the copies while the set is attached.
// Implemented for linear layers' weights and biases (the classification heads); anything else is
// refused by name.
// Whether a model tensor lies in a module to save (PEFT's rule: a module's name ends with an entry).
bool saved_modules_covers(const AdapterConfig *c, const char *tensor);
// Whether PEFT keeps the adapter off this module: it lies inside a module to save.
bool saved_modules_excludes(const AdapterConfig *c, const char *module);
// The file holds every copy with its shape; marks them in used[] (per file tensor).
int saved_modules_check_file(const AdapterSet *set, const void *file /*SafeTensors*/, const char *path, bool *used);
// Create the copies (the base's values) and, for an attached set, compute with them.
int saved_modules_init(AdapterSet *set);
// Write the copies (for a method whose save writes only its own tensors).
void saved_modules_save(const AdapterSet *set, void *writer /*StWriter*/);
// merge: the base tensors take the copies' values (PEFT's merge_and_unload keeps the trained module);
// unmerge swaps them back.
void saved_modules_merge(AdapterSet *set, bool merge);
void saved_modules_free(AdapterSet *set);

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
