// model.h: a decoder-only transformer loaded from a Hugging Face folder (GPT-2 or the
// Llama family), its parameters, activations, forward and backward on the CPU.
#pragma once
#include "config.h"
#include "quant.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// One named tensor. `name` is the key it has in the file it comes from (HF model keys for base
// weights, PEFT keys such as "base_model.model.<module>.lora_A.weight" for adapter weights).
typedef struct {
    char *name;
    int ndim;
    int64_t shape[2];
    long numel;
    float *w;         // NULL for a quantized linear's weight (Linear.q) or when only w16 is kept
    uint16_t *w16;    // inference on the CPU: w's values in bf16 when every one is exactly bf16 (model_keep_bf16)
    bool w16_t;       // w16 is w transposed: a Conv1D weight's, kept [out, in] as every linear's (rows: its outputs)
    float *grad;      // allocated only when trainable
    bool trainable;
    bool decay;       // AdamW weight decay applies (all trainables, as torch's default group)
} Param;

typedef struct Adapter Adapter;

// A linear layer y = x W^T + b. HF GPT-2 stores Conv1D weights as [in, out] (fan_in_fan_out);
// nn.Linear stores [out, in].
typedef struct {
    char *module;        // HF module name, e.g. "transformer.h.0.attn.c_attn"
    int in, out;
    bool fan_in_fan_out;
    Param *weight, *bias;
    Adapter *adapter;    // NULL when the module is not adapted
    QWeight *q;          // a quantized frozen base (--quantize): weight->w is then NULL (see model_linear_weight)
} Linear;

typedef struct {
    Param *norm1_w, *norm1_b;    // GPT-2 ln_1 / Llama input_layernorm (no bias) / BERT attention.output.LayerNorm (after attention)
    Param *norm2_w, *norm2_b;    // GPT-2 ln_2 / Llama post_attention_layernorm / BERT output.LayerNorm (after the MLP)
    Linear *qkv, *attn_out, *fc, *fc_out;                // GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj; BERT: fc, fc_out
                                                         // (intermediate.dense, output.dense), q, k, v, o (query, key, value,
                                                         // attention.output.dense)
    Linear *q, *k, *v, *o, *gate, *up, *down;            // Llama family
} Block;

// What backward needs from forward, sized for B*T tokens.
typedef struct {
    int B, T;
    float *x0;                  // embeddings [N,C]
    float **res_mid;            // per layer: residual stream after attention [N,C]
    float **res_out;            // per layer: residual stream leaving the block [N,C]
    float **norm1, **norm2;     // normalised inputs [N,C]
    float **norm1_mean, **norm1_rstd, **norm2_mean, **norm2_rstd;  // [N]
    float **q, **k, **v;        // GPT-2: q holds packed qkv [N,3C]; Llama: q [N,NH*HD], k,v [N,NKV*HD] (after rope)
    float **att;                // [B,NH,T,T]
    float **attn_y;             // attention output before the projection [N,NH*HD]
    float **fc, **fc_act;       // GPT-2: fc pre-activation [N,4C] and gelu; Llama: gate and silu(gate)*up
    float **up;                 // Llama: up projection [N,I]
    float *final_norm, *final_mean, *final_rstd;
    float *logits;              // [N,V]; replaced by dlogits after a backward-ready forward
    int32_t *labels;            // copy of the labels of the last forward
    int32_t *ids;               // copy of the token ids of the last forward
    float *rope_cos, *rope_sin; // [T, HD/2]
    int32_t *pos;               // packed sequences: each token's position in its example [N]
    bool packed;                // the last forward was of packed rows (pos holds their positions)
    float *scratch[5];          // backward work buffers, [N, widest layer] each
    // Encoders (encoder.c): x0 holds the embeddings' sum and final_norm (with final_mean/rstd) their
    // LayerNorm, res_mid / res_out the residual sums before each block's two LayerNorms, norm1 / norm2
    // their outputs; logits are [B, num_labels].
    int32_t *mask, *types, *enc_pos;   // attention mask (1: attend), token types, positions [N]
    float *head_in, *head_pre, *head_act;  // the head's input (each row's first token) [B,C], dense, tanh [B,C]
    float *targets;             // the last forward's labels, [B] (single label) or [B, num_labels]
    int problem;                // its ProblemType
    double lm_loss;             // causal-LM part of the last loss
    int cap_N, cap_T;           // what the buffers are sized for
} Activations;

typedef struct AdapterSet AdapterSet;

typedef struct Model {
    ModelConfig cfg;
    char *dir;
    int n_params;
    Param *params;               // base weights, in file order of our naming
    Param *wte, *wpe, *norm_f_w, *norm_f_b, *lm_head;  // lm_head == wte when tied; encoders have no lm_head
    Param *wtt, *emb_norm_w, *emb_norm_b;              // encoders: token type embeddings, the embeddings' LayerNorm
    Linear *head_dense, *head_out;                     // encoders' sequence classification head: tanh(dense(first token)),
                                                       // then out (RoBERTa: classifier.dense, classifier.out_proj;
                                                       // BERT: bert.pooler.dense, classifier)
    Block *blocks;
    int n_linears;
    Linear *linears;             // every linear module, in model order
    float *inv_freq;             // rope [HD/2]
    Activations act;
    AdapterSet *adapters;        // NULL when training all weights or none
    AdapterSet **row_adapters;   // inference: when set, token row n of the next forward gets adapter set row_adapters[n] (NULL = base), see linear_forward
    struct GpuModel *gpu;        // inference: a GPU copy of the base (cuda/gpu.h, base_only); kv caches and kv_forward run there
    bool training;               // dropout on
    uint64_t dropout_seed;
    QuantType quant;             // the linears' quantization (QUANT_NONE: fp32 weights)
    bool double_quant;
    float *deq_buf;              // one linear's dequantized weight [out, in], reused layer after layer
    size_t deq_cap;
    const int32_t *positions;    // training with packing: each token's position in its example for the next
                                 // forwards [B*T] (dataset_pack), attention kept inside each example; NULL: 0..T-1
} Model;

// Load config.json and the weights (model.safetensors or sharded); checks every tensor's shape
// against the config and that every value is finite. Errors name the file and tensor. A folder that
// transformers saved quantized by bitsandbytes (config.json's quantization_config) loads quantized.
Model *model_load(const char *dir);
// A model with random weights (std 0.02, biases 0, norms 1) for a config: tests and benchmarks.
Model *model_create_random(const ModelConfig *cfg, uint64_t seed);
// The same with every weight zero, in calloc'd pages never touched (no memory until written):
// benchmarks whose GPU draws the weights itself (GpuOptions.random_init_seed).
Model *model_create_zeros(const ModelConfig *cfg);
void model_free(Model *m);
// model_load with every linear of the blocks (not embeddings, norms or the output head, as
// transformers' bitsandbytes integration) quantized as it is read: the fp32 copy of one weight at a
// time. nested: double quantization (4-bit). QUANT_NONE: model_load.
Model *model_load_quantized(const char *dir, QuantType t, bool nested);
// Quantize one linear's weight (bitsandbytes' [out, in] layout: GPT-2's Conv1D transposed first, as
// transformers does) and free its fp32 copy.
int model_quantize_linear(Model *m, Linear *lin, QuantType t, bool nested);
// Every quantized linear back to an fp32 weight (its dequantized values, exactly), the quantized copy freed.
void model_dequantize(Model *m);
// The weight the linear's GEMMs use: weight->w as stored (*fan_in_fan_out as the module's), or a
// quantized or a bf16-only weight (model_keep_bf16) dequantized / widened into m->deq_buf as [out, in]
// (*fan_in_fan_out false), valid until the next call. The CPU's reference path: one layer dequantized
// at a time, then the fp32 GEMM.
const float *model_linear_weight(Model *m, Linear *lin, bool *fan_in_fan_out);
// Rows [o0, o0 + n) of lin's weight as [n, in] fp32 (transposed from a Conv1D, dequantized, widened from
// bf16): for readers that may run beside the model's forward (no m->deq_buf).
void linear_weight_rows(const Linear *lin, int o0, int n, float *out);

// bf16 weights for inference on the CPU (bf16_weights.c): a decode step at batch 1 reads every weight
// once per token, so bf16 halves its bytes. Each frozen linear weight and the output head whose values
// are all exactly bf16 (a model loaded from bf16 safetensors, as HF checkpoints are) gets a bf16 copy
// (Param.w16) that the forward's products read (matmul_bf16): the same products, summed in fp32, in
// another order. drop_fp32 (inference-only runs): their fp32 copies are freed, except the output head's
// when the embedding is tied to it (the embedding lookup reads it). Weights not exact (a merged adapter's)
// or quantized stay as they are. Not for a model with a GPU copy or that trains. The environment's
// PEFT_BF16_WEIGHTS=0 turns it off (A/B runs). Returns how many weights it keeps in bf16.
int model_keep_bf16(Model *m, bool drop_fp32);
// p's fp32 values back (widened from w16 when dropped) and w16 freed: before p's values change (a merge).
void param_release_bf16(Param *p);
// Rows [row0, row0 + n) of p (not transposed in w16: an embedding, the head) in fp32, from w or widened
// from w16; p unchanged.
void param_rows(const Param *p, long row0, long n, float *out);
// The output head's logits [M, V] of x [M, C] (its bf16 copy when it has one).
void model_head_forward(Model *m, const float *x, float *logits, int M);
Param *model_find_param(Model *m, const char *name);
Linear *model_find_linear(Model *m, const char *module);

// Mark all base weights trainable (full fine-tuning) and allocate their gradients.
void model_train_all(Model *m);
long model_count_params(const Model *m, bool trainable_only);

// Forward over ids [B,T]. With labels, returns the loss (causal-LM loss plus any adapter
// regulariser) and prepares backward; logits are in m->act.logits only when labels is NULL.
// Returns NAN on error.
double model_forward(Model *m, const int32_t *ids, const int32_t *labels, int B, int T);
// Encoders (ARCH_BERT): one batch of B sequences of T tokens for sequence classification.
typedef struct {
    const int32_t *ids;          // [B,T]
    const int32_t *mask;         // [B,T] attention mask (1 attend, 0 padding); NULL: every token
    const int32_t *types;        // [B,T] token type ids; NULL: all 0
    const float *targets;        // NULL: logits only; else [B] class indices (single label, < 0: ignored)
                                 // or [B, num_labels] values (regression, multi-label 0/1)
    bool int_targets;            // the labels are integers (transformers' problem_type choice reads their dtype)
    int B, T;
} ClassifyBatch;
// Logits [B, num_labels] in m->act.logits; with targets, returns the loss (transformers' loss for the
// problem type, plus any adapter regulariser) and prepares model_backward. NAN on error.
double model_classify(Model *m, const ClassifyBatch *b);
// encoder.c, for the GPU's forward (cuda/gpu_model.cu): checks a batch as model_classify does (ids, token types,
// mask, and the targets for the problem type when given) and writes each token's position [B*T] (RoBERTa's
// padding offset, BERT's 0..T-1). 0 or -1 with the error.
int encoder_check_batch(const Model *m, const ClassifyBatch *bt, int32_t *pos);
// transformers' loss of logits [B, NL] for the problem type, as model_classify computes it (in double); dlogits
// (when not NULL) gets d loss / d logits.
double encoder_head_loss(const float *logits, float *dlogits, const float *targets, ProblemType pt, int B, int NL);
// 0 for a decoder; for an encoder an error naming `what` (generation, causal-LM training, ...) and
// what an encoder does instead.
int model_require_decoder(const ModelConfig *c, const char *what);
// The loss transformers uses for this config and these labels (config.problem_type, else: one label
// regression, integer labels single-label, other labels multi-label).
ProblemType model_problem_type(const ModelConfig *c, bool int_targets);

// Accumulate d loss / d p into every trainable Param's grad.
void model_backward(Model *m);
void model_zero_grad(Model *m);

void activations_free(Activations *a, int n_layer);
// transformer.c: size m->act for B sequences of T tokens (reused when the shape is the same).
void ensure_activations(Model *m, int B, int T);
// encoder.c: model_backward of an encoder.
void encoder_backward(Model *m);

// Write the base weights (HF names; tied lm_head omitted) and config.json to an HF folder; quantized
// linears as transformers saves bitsandbytes ones, with config.json's quantization_config.
int model_save(Model *m, const char *dir);
// model_save with every base weight in bf16 (rounded to nearest, ties to even; a finite value beyond bf16's
// range is refused by name) and config.json's dtype "bfloat16", no quantization_config: what transformers
// saves of a bf16 model. A model with quantized linears is refused (model_dequantize first).
int model_save_bf16(Model *m, const char *dir);
// Every base weight rounded to bf16 and kept in fp32: the base as transformers holds it loaded with
// dtype bfloat16 (a bitsandbytes base: its dequantized weights .to(bfloat16), as model.dequantize() does).
void model_round_bf16(Model *m);

// Every trainable parameter, in a stable order (adapter tensors, or all base weights).
int model_trainable(Model *m, Param ***out);
