// gpu.h: the CUDA backend of peft.c (one GPU). A GpuModel is built from a loaded CPU Model:
// its base weights are uploaded (bf16 in the bf16 mode, fp32 in the fp32 parity mode), and the
// trainable tensors (the adapter's, or every base weight after model_train_all) get fp32 master
// copies, fp32 gradients and AdamW moments on the device. Frozen weights never get gradients.
//
// Build: src/cuda/*.cu are compiled when nvcc is found (see the Makefile); otherwise
// gpu_stub.c provides these functions, and gpu_available() says why there is no GPU.
// Every function that can fail returns non-zero / NULL / NAN with peft_last_error() set.
#pragma once
#include "check.h"
#include "method.h"
#include "model.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GPU_FP32 = 0, GPU_BF16 = 1 } GpuPrecision;
// What the backward recomputes instead of keeping it from the forward (GpuOptions.recompute, peft train
// --recompute mlp|layer). Either gives the loss and gradients of GPU_RECOMPUTE_NONE: the same kernels on
// the same inputs (dropout masks are regenerated from the forward's seed), except that the attention
// backward's fp32 atomics may sum in another order, as between any two backwards.
typedef enum {
    GPU_RECOMPUTE_NONE = 0,
    GPU_RECOMPUTE_MLP = 1,    // the MLP's up-projection(s) and activation: one scratch instead of every layer's
    GPU_RECOMPUTE_LAYER = 2,  // every block: the forward keeps only each block's input; the backward re-runs the
                              // block's forward (all but the down projection's output) into one set of buffers
} GpuRecompute;

typedef struct {
    GpuPrecision precision;  // GPU_BF16: bf16 compute, fp32 masters; GPU_FP32: parity mode
    int recompute;           // GpuRecompute (a bool's true is GPU_RECOMPUTE_MLP)
    int logits_chunk;        // rows of logits per classifier chunk (0 = automatic)
    bool base_only;          // inference: upload the base weights only (attached adapters are applied per
                             // token row by gpu_kv_forward, never trained)
    uint64_t random_init_seed;  // benchmarks: when non-zero, the base weights are drawn on the device
                                // (std 0.02, norm weights 1, biases 0) and the host values are not read
    QuantType random_quant;     // with random_init_seed: the blocks' linears quantized so, random codes and
                                // scales drawn on the device (speed and memory only; the model needs no QWeights)
} GpuOptions;

typedef struct GpuModel GpuModel;

// True when this build has the CUDA backend and a usable GPU is present; otherwise false with a
// reason in why (e.g. "built without CUDA (nvcc not found at build time)", "no CUDA device").
bool gpu_available(char *why, size_t why_len);
// One line describing the device ("NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB"), or the reason there is none.
void gpu_describe(char *buf, size_t len);

// Upload m (with its adapter set, if any) to the GPU. Supported adapters: LoRA, VeRA, AdaLoRA (with
// its orthogonal regulariser, and dropout: see gpu_set_dropout), full fine-tuning (model_train_all),
// or none (inference); with LoRA, also LoRA on the token embedding and trainable_token_indices
// (gpu_embed.cu). A quantized base (Linear.q, --quantize) stays quantized on the device: its codes
// and fp32 block scales (the host's qweight_absmax: double quantization undone), each layer dequantized
// into one reused scratch right before its GEMMs with quant.c's arithmetic (fp32 mode: bit for bit).
// An encoder (BERT, RoBERTa) goes up with its classification head (forward: gpu_classify); what it does not
// run there is refused by name (recompute, a quantized base, DoRA, an adapter on the head, inference).
GpuModel *gpu_model_create(Model *m, const GpuOptions *opt);
void gpu_model_free(GpuModel *g);
// A quantized linear's weight as the device dequantizes it for its GEMMs ([out, in], the activation
// type widened to fp32), into out: the test of the dequantization itself.
int gpu_dequantized_weight(GpuModel *g, const Linear *lin, float *out);

// Forward over ids [B,T]. With labels: returns the mean causal-LM loss (plus AdaLoRA's orthogonal
// regulariser when it is on: orth_reg_weight > 0 and a task_type, as on the CPU) and prepares backward
// (the classifier's backward runs chunk by chunk inside this call: no [N,V] fp32 logits).
// Without labels: returns 0 and keeps fp32 logits [B*T, V] for gpu_get_logits. NAN on error.
// Packing: when the CPU Model's positions (Model.positions, [B*T]) are set at the call, the rows are
// packed examples (positions restart at 0 with each; checked) and attention stays inside each example,
// as model_forward does; the backward after it uses the same positions.
double gpu_forward(GpuModel *g, const int32_t *ids, const int32_t *labels, int B, int T);
int gpu_get_logits(GpuModel *g, float *out);
// Encoders (BERT, RoBERTa; gpu_model_create uploads them with their head): model_classify on the device. The
// batch is checked as model_classify checks it; logits (when not NULL) get [B, num_labels] in fp32. With
// targets: returns the loss (transformers' loss for the problem type, computed on the host from the logits as
// encoder.c computes it, plus AdaLoRA's regulariser when on) and prepares gpu_backward; without: 0. NAN on
// error. gpu_forward and gpu_train_step refuse an encoder (the trainer's step runs it through this call).
double gpu_classify(GpuModel *g, const ClassifyBatch *b, float *logits);
// Accumulate d loss / d p into the trainable tensors' device gradients (after a forward with labels).
int gpu_backward(GpuModel *g);
void gpu_zero_grad(GpuModel *g);
// torch.nn.utils.clip_grad_norm_ over all trainable gradients; returns the norm before clipping.
double gpu_clip_grad_norm(GpuModel *g, double max_norm);
// One fused AdamW step (torch.optim.AdamW semantics) over every trainable tensor.
int gpu_adamw_step(GpuModel *g, float lr, float beta1, float beta2, float eps, float weight_decay);
// zero_grad + forward + backward (+ clip when max_norm > 0) + AdamW: one training step; returns the loss.
double gpu_train_step(GpuModel *g, const int32_t *ids, const int32_t *labels, int B, int T,
                      float lr, float beta1, float beta2, float eps, float weight_decay, double max_norm);

// AdaLoRA's rank allocator on the device (rank_allocator.c runs the schedule and picks the ranks).
// Its sensitivity scores (PEFT RankAllocator.update_ipt), kept in fp32 for every trainable element:
// ipt = |p * grad|, avg_ipt = b1 avg_ipt + (1-b1) ipt, avg_unc = b2 avg_unc + (1-b2) |ipt - avg_ipt|.
// Call after a step, before the next zero_grad.
int gpu_adalora_update_scores(GpuModel *g, float beta1, float beta2);
// One AdaLoRA module's tensors: A [r, in], E [r], B [out, r].
typedef struct {
    const Param *A, *E, *B;
    int r, in, out;
} GpuAdaModule;
// score[t] for every triplet (the modules in order, their ranks in order): s(E_j) + mean_k s(A_jk) +
// mean_o s(B_oj) with s = avg_ipt * avg_unc. Only these values come to the host.
int gpu_adalora_triplet_scores(GpuModel *g, const GpuAdaModule *mods, int n, double *score);
// E_j = 0 on the device (masters and bf16 copies) for every triplet t with kept[t] false.
int gpu_adalora_zero_ranks(GpuModel *g, const GpuAdaModule *mods, int n, const bool *kept);
bool gpu_adalora_has_scores(const GpuModel *g);
// PEFT's reset_ipt: the scores are dropped (the next update starts from zero).
void gpu_adalora_reset_scores(GpuModel *g);
// One tensor's scores (numel values each) to the host (down) or from it (checkpoints; converted
// between the device's fp32 and the host's double).
int gpu_adalora_copy_scores(GpuModel *g, const Param *p, double *ipt, double *unc, bool down);
// Copy the trainable tensors (and their gradients when grads) back into the CPU Model's Params,
// e.g. before adapters_save / model_save. gpu_upload_trainables copies them the other way.
int gpu_download_trainables(GpuModel *g, bool grads);
int gpu_upload_trainables(GpuModel *g);

// The causal-LM part of the loss the last gpu_forward / gpu_train_step returned: without AdaLoRA's
// orthogonal regulariser (whose gradient gpu_backward adds into the A and B gradients, after the model's).
double gpu_lm_loss(GpuModel *g);
// Gradient accumulation: multiply every trainable gradient by k (1/N after the backwards of N
// micro-batches, between one gpu_zero_grad and the clipping, as the CPU trainer does).
int gpu_scale_grads(GpuModel *g, float k);
// Checkpoints: the AdamW moments of params[0..n) (trainable tensors of the model, e.g. as model_trainable
// lists them) into / from the host arrays m[i] and v[i] (params[i]->numel floats each), and the number of
// AdamW steps taken. With gpu_download_trainables / gpu_upload_trainables (the fp32 master weights) that
// is the whole optimizer state: a run resumed from it continues as the uninterrupted one.
int gpu_download_optimizer(GpuModel *g, Param *const *params, int n, float *const *m, float *const *v, int *step);
int gpu_upload_optimizer(GpuModel *g, Param *const *params, int n, float *const *m, float *const *v, int step);
// Adapter dropout (the adapter's lora_dropout / vera_dropout; nothing when it is 0): applied to the
// adapters' input, h = drop(x) A^T (inverted: kept elements scaled by 1/(1-p)), in the forwards
// (gpu_forward, gpu_train_step) after gpu_set_dropout(g, true, seed); off by default and after
// gpu_set_dropout(g, false, 0), e.g. for evaluation. The masks are a counter-based hash of (seed, the
// group's layer and place, element) computed on the device, not the CPU's random stream: the same seed
// gives the same masks on the GPU, different ones from the CPU's. The adapters of one fused group
// (Llama's q/k/v, gate/up) share one mask, where PEFT draws one per module. Backward regenerates the
// masks of the forward before it (nothing is stored); it masks the adapter's share of the input gradient.
void gpu_set_dropout(GpuModel *g, bool on, uint64_t seed);

// Peak device memory allocated by this process (cudaMalloc'd bytes, high-water mark since the
// start or the last gpu_reset_peak, which sets it to what is allocated now).
size_t gpu_peak_bytes(void);
void gpu_reset_peak(void);
// Measured bf16 GEMM rate (TFLOP/s) of an n x n x n product through cuBLASLt, median of 10 after warm-up.
double gpu_bf16_gemm_tflops(int n);
// With PEFT_GPU_PROFILE=1 in the environment at gpu_model_create: the time per phase of the
// training steps since the last report (ms per step), written to buf; -1 when not profiling.
int gpu_profile_report(GpuModel *g, char *buf, size_t len);
// Wait for the device at the end of a training step (it closes the step's profile, PEFT_GPU_PROFILE);
// returns non-zero with the error of any failed launch.
int gpu_sync(GpuModel *g);

// ---- cached inference (gpu_infer.cu): kv_forward's twin, see generate.h ----
// A model for inference is made with base_only; setting Model.gpu to it makes kv_cache_new and
// kv_forward (and so generate() and the server) run on the GPU.
typedef struct GpuKV GpuKV;
typedef struct AdapterSet AdapterSet;
// Give m a GPU copy of its base weights (Model.gpu) for inference: an adapter merged into m goes
// with the weights; a live one (m->adapters, or sets per row) is applied per row on the GPU.
int gpu_inference_attach(Model *m, GpuPrecision precision);
void gpu_inference_detach(Model *m);  // frees Model.gpu (no-op without one)
// Whether cached inference applies a method of this kind per row (LoRA, AdaLoRA, VeRA; not DoRA,
// whose rescale needs each row's base result alone: merged, it runs as plain weights).
static inline bool gpu_infer_supports(GpuKind kind) { return kind == AD_LORA || kind == AD_ADALORA || kind == AD_VERA; }
// Keys and values of n_slots sequences of up to max_len tokens (activation type). NULL + error.
GpuKV *gpu_kv_new(GpuModel *g, int n_slots, int max_len);
void gpu_kv_free(GpuKV *kv);
// The first len cached tokens of slot src into slot dst (beam search).
int gpu_kv_copy(GpuKV *kv, int dst, int src, int len);
// N new tokens: ids, their slots and positions (validated by the caller), and row_sets[n] the
// adapter set of token n (NULL, or row_sets NULL: the base). Appends their keys and values and
// writes fp32 logits [n_out, V] of the tokens listed in out_rows (NULL: all, n_out == N).
int gpu_kv_forward(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                   const int *out_rows, int n_out, float *logits);
// How gpu_kv_forward_next chooses each row's next token on the device. Greedy (temperature <= 0 or
// top_k == 1): the argmax, first maximum (gen_argmax). Otherwise HF's warpers as gen_sample applies them
// (no repetition penalty: that needs the history, and stays on the host): logits / temperature, top-k
// (every token at least the k-th largest score, ties kept), top-p (the most likely tokens while the mass
// before them is below top_p), then one draw. The draw's uniform number is a counter-based hash of
// (seed, the position of the token whose logits are sampled), not the host's xoshiro stream: a run is
// reproducible for a seed, and rows at the same position with the same seed draw the same number, as
// generate()'s groups (each seeded alike) do on the host.
typedef struct GpuSampling {
    float temperature;  // <= 0: greedy
    int top_k;          // 0: off
    float top_p;        // 1: off
    uint64_t seed;
} GpuSampling;
// gpu_kv_forward, but the logits stay on the device: next[n_out] gets each output row's token, chosen
// there (only the ids come back). Repeated calls of the same shape without adapters replay a CUDA graph
// of the whole step (captured on the second call of a shape; a capture that fails turns graphs off for
// this cache and the step runs as launched kernels). PEFT_GPU_GRAPHS=0 in the environment at
// gpu_kv_new turns graphs off (tests compare both).
int gpu_kv_forward_next(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                        const int *out_rows, int n_out, const GpuSampling *s, int32_t *next);
// Test hook of the device sampler: rows [n_rows, V] of fp32 logits (host), pos[n_rows] the positions
// the draws hash; the chosen tokens into next. 0 or -1 with the error.
int gpu_sample_logits(const float *logits, int n_rows, int V, const int *pos, const GpuSampling *s, int32_t *next);

// Test hook of the encoders' attention (test_gpu): bidirectional attention with a key mask over qkv [B*T, (NH + 2 NKV) HD]
// (rows q | k | v, no rope), mask [B*T] (non-zero: a real token; NULL: all; every row needs one), the forward into
// out [B*T, NH HD] and, with dout [B*T, NH HD], the backward into dqkv [B*T, (NH + 2 NKV) HD], in prec's activation
// type (bf16: the flash kernels at head_dim 64 and 128, the generic ones otherwise). Host arrays; 0 or -1 with the error.
int gpu_attention_bidir(int B, int T, int NH, int NKV, int HD, const int32_t *mask, GpuPrecision prec, const float *qkv,
                        const float *dout, float *out, float *dqkv);

// Run one HF PEFT reference case directory on the GPU (check.c's layout: logits, loss,
// gradients, one AdamW step). fp32: the case's own tolerances. bf16: both losses within 1e-2 relative,
// every gradient's cosine similarity >= 0.999. Both: the AdamW update within CHECK_UPDATE_TOL of the
// CPU's AdamW from the same gradient. Status PASS / FAIL / SKIP (no GPU, unsupported method).
void gpu_check_case(const char *dir, GpuPrecision precision, CheckResult *res);

#ifdef __cplusplus
}
#endif
