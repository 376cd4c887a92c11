// gpu_model.cuh: the GPU model's structures, shared by the training code (gpu_model.cu) and cached
// inference (gpu_infer.cu). See gpu_model.cu for how parameters and activations are laid out.
#pragma once
extern "C" {
#include "adapter.h"
#include "model.h"
}
#include "gpu.h"
#include "gpu_internal.cuh"
#include <string.h>
#include <utility>
#include <vector>

struct GpuInfer;  // gpu_infer.cu: KV-cache inference state (row adapters' device copies, scratch)

// How the kernels run a set's method (AD_NONE: they do not).
static inline GpuKind set_kind(const AdapterSet *set) {
    const Method *m = method_get(set->cfg.type);
    return m ? m->gpu : AD_NONE;
}

struct AdMember {
    GpuKind kind;  // the method's (its descriptor names the kernels that run it, method.h)
    int col_off, out, r, r_off;
    float scaling;
    void *B;    // LoRA: the working copy of B [out, r]
    float *Bg;  // LoRA, AdaLoRA: d B
    // AdaLoRA and VeRA run as LoRA with an effective B, rebuilt before each forward:
    //   AdaLoRA Beff = s B diag(E); VeRA Beff = diag(lambda_b) B_shared[:out] diag(lambda_d) (s = 1).
    void *Beff;
    const float *Bm;               // fp32 B: AdaLoRA's master, VeRA's shared projection (ld r)
    const float *rowv, *colv;      // VeRA: lambda_b, lambda_d; AdaLoRA: colv = E
    float *rowv_g, *colv_g;
    // DoRA (gpu_dora.cu): the magnitude's fp32 master and gradient, A's fp32 master (B's is Bm), and the
    // weight norm of this step's forward [out] (the backward reads its direction back from the kept output).
    const float *mag, *Am;
    float *mag_g, *norm;
};
// A quantized frozen weight on the device (gpu_quant.cu): its codes as the CPU stores them (4-bit: two a
// byte, int8: one) and one fp32 scale per block (4-bit: the absmax, the double quantization undone on
// the host) or per row (int8: SCB).
struct GpuQWeight {
    QuantType type;
    QuantOut out_dtype;
    int rows, cols, block;
    const uint8_t *codes;
    const float *scale;
};
struct Group {  // y[N, out] = x[N, in] W^T + b (+ LoRA members), one GEMM
    int in, out;
    bool fifo;  // W stored [in, out] (GPT-2 Conv1D)
    void *w, *b;
    int n_q;          // a quantized base: the members' weights, dequantized into w (the shared scratch,
    GpuQWeight q[3];  // [out, in]) right before each GEMM that reads it (gpu_quant_dequant)
    float *wg, *bg;
    int zero_bg_off, zero_bg_len;
    // Riders (bias / modules_to_save training some members of a fused group): the frozen members' weights
    // (biases) sit in the trainable arena beside the trained ones, so the group stays one GEMM; their
    // gradient columns [off, off + len) are zeroed after each backward, and AdamW leaves them unchanged.
    int n_w_ride, n_b_ride;
    struct { int off, len; } w_ride[3], b_ride[3];
    int n_ad, R, lda;
    AdMember ad[3];
    void *A;  // [R, in]: the members' A stacked (VeRA: the shared A [r, max_in], lda = max_in, one h for all members)
    float *Ag;
    bool shared_h;
    bool dora;      // a member is DoRA: the base GEMM runs first, without the residual (group_fwd)
    bool fused_dx;  // the weight has R spare rows after it (Aext) for the fused input gradient
    void *Aext;
    void *h;  // [N, R], per layer
};
struct Layer {
    void *n1w, *n1b, *n2w, *n2b;
    float *n1wg, *n1bg, *n2wg, *n2bg;
    Group qkv, o, up, down;
    void *res_mid, *qkv_out, *attn_y, *fc;
    void *act;  // the MLP activation, kept when the down projection's backward needs it (else NULL)
    void *r2;   // encoders: the sum before the block's second LayerNorm (down(act) + LN1's output) [N, C]
    float *mean1, *rstd1, *mean2, *rstd2, *lse;
};
struct Slot {
    Param *p;           // a base parameter the adapter trains (bias / modules_to_save): the set's Param (PEFT's name)
    size_t off;
    bool trainable;
    const Param *base;  // ...and the model's Param it stands for (the same values and gradient), else NULL
    bool rider;         // trainable on the device only, as a fused group's frozen member (Group's riders)
};

// ---- the token embedding's adapters (gpu_embed.cu; adapter_embed.c on the CPU) ----
// LoRA on the embedding: x += s B A[:, id] from the fp32 masters; trainable tokens: the trained rows are
// copied over the frozen weight's (the embedding's, a head's: PEFT replaces them) before each forward.
struct GpuEmbedRows {
    void *values;      // [n, C] working copy (the activation type)
    float *values_g;   // its gradient
    void *weight;      // the frozen weight whose rows it replaces (g->wte or g->head)
    int *indices;      // device [n]
    int *row_of;       // device [V]: j with indices[j] == token, or -1 (input rows)
    float *pending;    // [n, C]: the head's share of the gradient, from the last forward with labels (head rows)
    int n;
    bool input, head;
};
struct GpuEmbed {
    const float *A, *B;  // LoRA's fp32 masters, A [r, V], B [C, r]; NULL: none
    float *Ag, *Bg;
    int r;
    float scaling;
    float *hA, *dh;      // [cap, r] each: A's gathered columns (the forward's, for dB) and d h (for dA)
    int cap;
    int n_rows;
    GpuEmbedRows rows[2];
};

// Per-phase timing (PEFT_GPU_PROFILE=1 at creation): an event at every phase change of a training
// step; each interval is added to the phase that began it.
enum { P_EMBED, P_NORM, P_DEQUANT, P_GEMM_F, P_LORA_F, P_ROPE, P_ATTN_F, P_ACT, P_HEAD, P_GEMM_DX, P_GEMM_DW, P_LORA_DH, P_LORA_DB, P_LORA_DA, P_ATTN_B, P_NORM_B, P_ADAM, P_OTHER, P_N };
enum { PROF_MAX = 8192 };
struct Prof {
    bool on;
    int n, steps;
    cudaEvent_t *ev;
    int *cat;
    double ms[P_N];
};

struct GpuModel {
    Model *m;
    ModelConfig cfg;
    GpuOptions opt;
    bool is_bf16, gpt2;
    size_t es;
    cudaStream_t st;
    GemmCtx *gc;
    std::vector<Slot> slots;
    size_t n_frozen, n_train;
    void *frozen;
    float *master, *grad, *am, *av;
    bf16 *work;
    Layer *L;
    void *wte, *wpe, *nfw, *nfb, *head;
    float *wte_g, *wpe_g, *nfw_g, *nfb_g, *head_g;
    int C, NH, NKV, HD, QW, KVW, S, I, V, upw, actw, Rmax;
    bool fuse_dx;                     // bf16, Llama layout, adapters: the fused adapter input gradient
    int ld_dqkv, ld_dfc, ld_dres;     // row strides of the dy buffers (spare columns for dh when fused)
    // activations
    int B, T, N, capN, capT;
    bool acts_ok;
    std::vector<void *> act_allocs;
    void **res;
    void *nbuf, *act, *d_act, *d_fc, *d_n, *d_attn, *dqkv, *dres_t, *dh, *nf, *logits, *fc_scratch;
    float *dq_acc, *dkv_acc, *Dbuf, *dres, *meanf, *rstdf, *loss_rows, *cos_t, *sin_t, *head_pending, *logits_f32;
    int *ids_d, *tgt_d, *pos_d;
    int chunk, ldV;
    float *loss_host;  // pinned [capN]
    int *ids_host, *tgt_host, *pos_host;  // pinned [capN]
    bool packed;       // the last forward had Model.positions (packing): pos_d holds them for its backward
    float *partials;
    // VeRA's shared projections; fp32 scratch for adapter gradients
    void *vera_A;
    float *vera_B32, *G_scratch, *scores;
    // AdaLoRA's allocator: its triplets (as last uploaded), their scores and kept flags on the device
    std::vector<AdaTriplet> ada_host;
    AdaTriplet *ada_trip;
    double *ada_score;
    unsigned char *ada_kept;
    size_t ada_cap;
    size_t G_cap;
    std::vector<void *> beffs;        // per-member device buffers (effective Bs, DoRA's norms)
    float *dora_S;                    // DoRA's norm scratch, fp32: A A^T [r, r] (padded to 64) and X [out, r] of one module
    size_t dora_S_cap;
    void *dora_dy;                    // DoRA, fp32: dy g of the o / down groups (their dy is dres itself) [N, C]
    Prof prof;
    // Lazy gradient zeroing: gpu_zero_grad clears only zero_ranges (tensors not written by a weight
    // GEMM); the next backward's weight GEMMs overwrite (beta 0) instead of accumulating.
    std::vector<std::pair<size_t, size_t>> zero_ranges;
    bool fresh_grads;
    // state
    bool grad_ready, logits_ready;
    bool direct_head;  // inside gpu_train_step: the head's gradient goes straight into its grad (no pending copy)
    int count, adam_step;
    // Adapter dropout and AdaLoRA's orthogonal regulariser (gpu_model.cu).
    float drop_p;                      // the adapter's dropout probability (0: none)
    bool drop_on, drop_fwd;            // gpu_set_dropout's switch; whether the last forward dropped (its backward follows)
    uint64_t drop_seed, drop_fwd_seed;
    void *xdrop;                       // activation scratch [N, max in]: drop(x), then the adapter's input gradient
    struct OrthTerm *orth;             // the regulariser's terms (one per A and B of rank > 0); n_orth 0: off
    int n_orth;
    float *orth_D;                     // each term's (P - I) [r, r], then its gradient factor
    double *orth_ss, *orth_ss_host;    // ||P - I||_F^2 per term (device; pinned host copy)
    long *orth_off;                    // device: each term's offset in orth_D
    int *orth_r;                       // device: each term's rank
    double orth_w, orth_num;           // orth_reg_weight; the number of A and B tensors it averages over
    bool orth_ready;                   // the last forward (with labels) computed the terms
    double last_lm, last_reg;          // the parts of the last loss
    GpuEmbed *emb;  // gpu_embed.cu: LoRA on the token embedding, trainable tokens (NULL: neither)
    // A quantized base (gpu_quant.cu): every quantized linear's codes and scales, and the dequantization scratch.
    uint8_t *qcodes;
    float *qscales;
    size_t *qoff;  // host [2 * n_linears]: each quantized linear's offsets in qcodes (bytes) and qscales (floats)
    void *deq;
    // Encoders (BERT, RoBERTa: gpu_model.cu's encoder section). Their layers' groups are q|k|v, o, fc, fc_out;
    // the head is two groups on each sequence's first token (hd: dense, then tanh; ho: out), and the loss
    // is the host's (encoder_head_loss on the [B, num_labels] logits, as the CPU).
    bool enc;
    void *wtt, *embw, *embb;
    float *wtt_g, *embw_g, *embb_g;
    Group hd, ho;
    void *x0;                          // the embeddings' sum before their LayerNorm [N, C] (its stats: meanf, rstdf)
    void *hbuf;                        // the head's rows [B, C] x 6: input, dense, tanh, and their gradients
    void *logits_t, *dlogits_t;        // [B, num_labels]
    float *dl_stage;                   // fp32 [B, num_labels]: d loss / d logits from the host
    int *mask_d, *types_d;             // [N]; positions in pos_d
    int NL;
    double enc_loss;                   // the last forward's loss (without the regulariser)
};

// Spare rows/columns of the fused adapter input gradient are rounded up to 8, so the fused GEMM's K
// stays a multiple of 8 (an odd K takes cuBLASLt's slow kernels); the rows and columns past R stay 0.
static inline int round8(int x) { return (x + 7) / 8 * 8; }

// ---- a quantized frozen base (gpu_quant.cu) ----
// Whether lin's weight lives quantized on the device: quantized on the host (--quantize), or drawn
// quantized on the device (benchmarks: random_init_seed with random_quant).
static inline bool gpu_quant_linear(const GpuModel *g, const Linear *lin) {
    return lin->q || (g->opt.random_init_seed && g->opt.random_quant != QUANT_NONE);
}
// Before placement: refuses a quantized weight that is trainable.
int gpu_quant_check(GpuModel *g);
// The codes and scales of every quantized linear on the device (copied, or drawn for benchmarks).
int gpu_quant_upload(GpuModel *g);
// G's members' quantized weights into G->q (all of a group's members or none are quantized); returns
// how many, or -1 with an error.
int gpu_quant_bind(GpuModel *g, Group *G, Linear **lins, int n);
// After binding: one scratch of the activation type for the largest quantized group (with the fused
// input gradient's spare rows), which becomes every quantized group's w.
int gpu_quant_scratch(GpuModel *g);
// G's weights dequantized into G->w (nothing for an unquantized group), on the model's stream.
template <typename T> void gpu_quant_dequant(GpuModel *g, const Group *G);
void gpu_quant_free(GpuModel *g);

// ---- the token embedding's adapters (gpu_embed.cu) ----
// g->emb's device index arrays from the set's view (its tensors' pointers were bound by gpu_model.cu).
int gpu_embed_upload(GpuModel *g, const EmbedView *v);
void gpu_embed_free(GpuModel *g);
// Before a forward: the trained rows over their weights' rows.
template <typename T> void gpu_embed_rows(GpuModel *g);
// After the embedding lookup x [N, C] of ids_d: LoRA's share (and A's gathered columns for the backward).
template <typename T> void gpu_embed_fwd(GpuModel *g, T *x, int N);
// A classifier chunk (first: the forward's first): the head's trained rows' gradient from d logits [rows, ld] and the
// final norm's output nf [rows, C], kept pending for the backward (as the head's own: a forward need not be followed by one).
template <typename T> void gpu_embed_head_bwd(GpuModel *g, const T *dlogits, int ld, const T *nf, int rows, bool first);
// After the blocks' backward: the head's pending share into the rows' gradient, and the embedding's gradient dres [N, C]
// (fp32) into LoRA's A, B and the input rows.
int gpu_embed_bwd(GpuModel *g, int N);

// A block's linears in the GPU model's four groups (those sharing an input, one GEMM each): qkv,
// attention output, MLP up (Llama: gate and up), MLP down; unused places are NULL.
static inline void block_groups(const GpuModel *g, const Block *b, Linear *groups[4][3]) {
    Linear *gpt2[4][3] = {{b->qkv}, {b->attn_out}, {b->fc}, {b->fc_out}};
    Linear *llama[4][3] = {{b->q, b->k, b->v}, {b->o}, {b->gate, b->up}, {b->down}};
    Linear *enc[4][3] = {{b->q, b->k, b->v}, {b->o}, {b->fc}, {b->fc_out}};
    memcpy(groups, g->enc ? enc : g->gpt2 ? gpt2 : llama, sizeof gpt2);
}
