// adapter.h: PEFT adapters on linear layers (LoRA, VeRA, AdaLoRA), in HF PEFT's file format.
// Each method is a Method descriptor (method.h: lora.c, vera.c, adalora.c, dora.c); this layer does what they share:
// config files, PEFT's target-module matching, attaching, loading, saving, merging, and the
// adapted linear's forward and backward.
#pragma once
#include "method.h"
#include "model.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char module[256];
    int rank;                // AdaLoRA rank_pattern: ranks kept for this module
    bool *mask;              // [init_r] which ranks are kept (NULL when none given)
} RankPatternEntry;

// LoRA's rank_pattern / alpha_pattern entry: a key matched against module names as PEFT's
// get_pattern_key does (the module is the key, or ends in "." + the key; the key is a regex).
typedef struct {
    char *key;
    double value;
} PatternEntry;

// PEFT's bias option: which base biases train beside the adapter (and are saved with it).
typedef enum { BIAS_NONE, BIAS_ALL, BIAS_LORA_ONLY } BiasMode;

// LoRA's init_lora_weights (lora_init.c): true (Kaiming-uniform A, zero B), false (both as nn.Linear
// draws them), "gaussian", "pissa", "pissa_niter_K" and "olora" (which also change the base weights).
typedef enum { LORA_INIT_TRUE, LORA_INIT_FALSE, LORA_INIT_GAUSSIAN, LORA_INIT_PISSA, LORA_INIT_PISSA_NITER, LORA_INIT_OLORA } LoraInit;

// trainable_token_indices (adapter_embed.c): the rows of one module's weight that train.
typedef struct {
    char *module;            // the dict form's key (PEFT: every module whose name ends with it); NULL: the list form (the input embedding)
    int n;
    int32_t *indices;
} TokenTarget;

typedef struct {
    MethodId type;           // an adapter method (not METHOD_FULL)
    int r;                   // LoRA/VeRA rank; AdaLoRA uses init_r
    float alpha;             // lora_alpha (LoRA, AdaLoRA)
    bool use_rslora;
    LoraInit init;           // LoRA's init_lora_weights
    int init_niter;          // its K for "pissa_niter_K"
    float dropout;           // lora_dropout / vera_dropout
    int n_targets;
    char **targets;          // target_modules as a list ...
    char *target_regex;      // ... or as one regex (PEFT: a string is matched with re.fullmatch)
    bool all_linear;         // target_modules "all-linear" as a string (PEFT: every linear but the output head)
    // exclude_modules: a list (names or suffixes, as target_modules) or one regex
    int n_exclude;
    char **exclude;
    char *exclude_regex;
    // layers_to_transform (NULL: every layer) and layers_pattern (regexes naming the layer list)
    int n_layers;
    int *layers;
    int n_layers_pattern;
    char **layers_pattern;
    // LoRA: per-module ranks and alphas, in the file's order (the first matching key wins)
    int n_lora_rank_pattern, n_alpha_pattern;
    PatternEntry *lora_rank_pattern, *alpha_pattern;
    BiasMode bias;
    int n_modules_to_save;   // modules trained in full beside the adapter (module names or their ends;
                             // PEFT's SEQ_CLS task adds "classifier" and "score", the classification heads)
    char **modules_to_save;
    int n_token_targets;     // trainable_token_indices: one target for a list, one per key for a dict
    TokenTarget *token_targets;
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
    Param *magnitude;            // DoRA: [out] (PEFT's lora_magnitude_vector)
    void *state;                 // method-specific per-module state (DoRA: the weight norm), freed by free_state
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
    // bias "all" / "lora_only" and modules_to_save (adapter_base.c): the last n_base of params are the
    // model's parameters the adapter trains, under their PEFT names, base_of[i] the model's Param of each
    int n_base;
    Param **base_of;
    struct EmbedAdapters *embed; // adapter_embed.c: LoRA on the token embedding, trainable tokens (NULL: neither)
};

// PEFT's defaults for the method's config class (the method's default r).
void adapter_config_defaults(AdapterConfig *c, MethodId type);
int adapter_config_load(AdapterConfig *c, const char *path);
int adapter_config_parse(AdapterConfig *c, const char *json_text, const char *path_for_errors);
// The adapter_config.json object PEFT expects (a cJSON *; the caller deletes it).
void *adapter_config_to_json_object(const AdapterConfig *c);
void adapter_config_free(AdapterConfig *c);
// What this program does with a key of the method's adapter_config.json (NULL: not a key of its config
// class), and every such key's name (at most cap; returns how many): docs/lora-config.md's table is checked against them.
const ConfigKey *adapter_config_key(MethodId type, const char *name);
int adapter_config_key_names(MethodId type, const char **names, int cap);
// Comma-separated list, or a regex when it starts with "re:" (PEFT's string form); "all-linear" too.
void adapter_config_set_targets(AdapterConfig *c, const char *spec);
// Appends a module name to modules_to_save.
void adapter_config_add_module_to_save(AdapterConfig *c, const char *name);
// PEFT's default targets for the architecture when none are given (gpt2: c_attn; llama: q_proj,v_proj;
// bert, roberta: query,value).
void adapter_config_default_targets(AdapterConfig *c, const ModelConfig *mc);

// PEFT's rule (check_target_module_exists): exclude_modules first; a string is a regex that must
// match the whole name ("all-linear": every linear, the output head not being one here); a list
// entry matches a module named exactly so, or one ending in ".entry" that is also in
// layers_to_transform's layers.
bool adapter_targets_module(const AdapterConfig *c, const char *module);

// adapter_layout.c: exclude_modules, layers_to_transform + layers_pattern, LoRA's rank_pattern and
// alpha_pattern, bias. Parse reads them from an adapter_config.json object (a cJSON *) into c (of
// c->type, its targets already read) and applies check; check: PEFT's refusals of combinations.
int adapter_layout_parse(AdapterConfig *c, const void *json, const char *path);
int adapter_layout_check(const AdapterConfig *c, const char *path);
// A JSON file of these keys alone (the CLI's --lora-options), read into c (its type and targets set).
int adapter_layout_read_file(AdapterConfig *c, const char *path);
// The options in force, one line each ("" when none): peft info.
void adapter_layout_describe(const AdapterConfig *c, char *buf, size_t cap);
void adapter_layout_free(AdapterConfig *c);
void adapter_layout_copy(AdapterConfig *dst, const AdapterConfig *src);  // dst: a shallow copy of src
void adapter_layout_to_json(const AdapterConfig *c, void *json);
bool adapter_module_excluded(const AdapterConfig *c, const char *module);
// Refuses targets that match a module PEFT's LoRA would wrap but that is no Linear here (embeddings, lm_head).
int adapter_layout_check_model(const AdapterConfig *c, const Model *m);
// Whether the module's layer is one of layers_to_transform (true when that is not given).
bool adapter_module_in_layers(const AdapterConfig *c, const char *module);
// LoRA's rank and lora_alpha for a module: rank_pattern's and alpha_pattern's first matching key, else r, lora_alpha.
int adapter_module_rank(const AdapterConfig *c, const char *module);
float adapter_module_alpha(const AdapterConfig *c, const char *module);
const char *adapter_bias_name(BiasMode b);
// Python's re.fullmatch(pattern, s) (PCRE2); false for a pattern that does not compile.
bool regex_full_match(const char *pattern, const char *s);

// adapter_base.c: the base parameters bias and modules_to_save train, appended to set->params (attached sets only).
// Whether a model parameter lies in a module to save (PEFT: some module above it ends with an entry).
bool adapter_base_to_save(const AdapterConfig *c, const char *param);
// A model that ties its embedding (parameter wte_name) and head: an entry naming either is refused (PEFT would
// train a copy for one of the two uses only, unless ensure_weight_tying, which is refused).
int adapter_base_refuse_tied(const AdapterConfig *c, const char *wte_name);
int adapter_base_attach(AdapterSet *set);
// A file's tensors of those: each one the set trains there with the base's size (used[i]: file tensor i is one).
int adapter_base_check_file(const AdapterSet *set, const void *file /*SafeTensors*/, const char *path, bool *used);
void adapter_base_release(AdapterSet *set);                       // before set->params are freed
// Writes them (adapters_save, after a method's save, which writes the method's own tensors).
void adapter_base_save(const AdapterSet *set, void *writer /*StWriter*/);

// adapter_embed.c: LoRA on the token embedding (lora_embedding_A / lora_embedding_B) and
// trainable_token_indices (token_adapter.trainable_tokens_delta), as PEFT 0.21 computes and saves them.
// The config key: parsed from an adapter_config.json object, checked (PEFT's refusals), written, described.
int adapter_embed_parse(AdapterConfig *c, const void *json, const char *path);
int adapter_embed_check(const AdapterConfig *c, const char *path);
void adapter_embed_to_json(const AdapterConfig *c, void *json);
void adapter_embed_describe(const AdapterConfig *c, char *buf, size_t cap);  // appends one line when set
void adapter_embed_config_free(AdapterConfig *c);
void adapter_embed_config_copy(AdapterConfig *dst, const AdapterConfig *src);
// The module name of the input embedding ("model.embed_tokens"; malloc'd), and whether LoRA's targets
// adapt it (LoRA and no variant: DoRA's embedding is not implemented).
char *adapter_embed_module(const Model *m);
bool adapter_embed_targeted(const AdapterConfig *c, const Model *m);
// Creates the set's embedding tensors (appended to set->params, before adapter_base_attach's) with their
// initial values (LoRA: A 0, B N(0, 1) from seed; tokens: the base rows); 0 when the config has none.
int adapter_embed_attach(AdapterSet *set, uint64_t seed);
// A file's embedding tensors: each the set has, with its shape (used[i]: file tensor i is one); the
// embedding's base weight PEFT saves beside them ("<module>.base_layer.weight") is written over the base by after_load.
int adapter_embed_check_file(const AdapterSet *set, const void *file /*SafeTensors*/, const char *path, bool *used);
int adapter_embed_after_load(AdapterSet *set, const void *file /*SafeTensors*/, const char *path);
int adapter_embed_save(const AdapterSet *set, void *writer /*StWriter*/);
void adapter_embed_free(AdapterSet *set);
// The forward and backward shares (m->adapters' embedding adapters; nothing when merged or per-row sets):
// x[N, C] embeddings of ids += the adapter's change; logits[N, V] of the final norm xn: trained rows of the
// head; backward: the head's share of d_norm and the trained rows' gradients, then the embedding's.
void adapter_embed_inputs(const Model *m, const int32_t *ids, int N, float *x);
void adapter_embed_logits(const Model *m, const float *xn, int N, float *logits);
void adapter_embed_backward_head(Model *m, const float *dlogits, const float *xn, int N, float *d_norm);
void adapter_embed_backward_inputs(Model *m, const int32_t *ids, const float *dres, int N);
// Merge (true) writes the change into the weights, unmerge takes it back out; the weights it changes
// (at most 2: the embedding, an untied head) into out, returning how many.
void adapter_embed_merge(AdapterSet *set, bool merge);
int adapter_embed_weights(const AdapterSet *set, Param **out);
// The embedding tensors a config gives a model whose input embedding is module emb (tied: to the head), in
// adapters_save's order: LoRA's A and B, each trained weight's rows, then the embedding's base weight PEFT
// saves beside them (trained false; optional on load). Names malloc'd; -1 (an error) for a dict key naming
// neither the embedding nor an untied lm_head. peft estimate counts them; loading checks a file against them.
enum { EMBED_TENSORS_MAX = 5 };
typedef struct {
    char *name;
    int64_t rows, cols;
    bool trained;
} EmbedTensor;
int adapter_embed_plan(const AdapterConfig *c, const char *emb, bool tied, int64_t vocab, int64_t dim, EmbedTensor *out);
// peft info's line for LoRA on the embedding ("" when none; trainable tokens are adapter_embed_describe's).
void adapter_embed_describe_set(const AdapterSet *set, char *buf, size_t cap);
// Whether merging changes the output head too (LoRA on an embedding the head is tied to: PEFT's merge
// adds the delta to the shared weight while the live adapter leaves the head alone).
bool adapter_embed_merge_changes_head(const AdapterSet *set);
// What the set's embedding adapters are, for messages (NULL: none): backends and formats without them refuse by it.
const char *adapter_embed_what(const AdapterSet *set);
// The set's embedding adapters as tensors, for the CUDA backend (src/cuda/gpu_embed.cu), which computes what
// adapter_embed_inputs / _logits / _backward_* compute from them. False when the set has none.
typedef struct {
    Param *A, *B;  // LoRA: lora_embedding_A [r, vocab], lora_embedding_B [dim, r]; NULL: no LoRA on the embedding
    int r;
    float scaling;
    bool merged;
    int n_rows;
    struct {
        Param *weight, *values;   // the module's weight; trainable_tokens_delta [n, dim] (the rows' values)
        const int32_t *indices;   // [n]
        int n;
        bool input, head;         // the rows replace embedding rows / the head's weights (a tied embedding: both)
    } rows[2];
} EmbedView;
bool adapter_embed_view(const AdapterSet *set, EmbedView *v);

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
