// gpu_stub.c: the CUDA backend's interface in a build without nvcc: every entry point fails
// with "built without CUDA", so callers (the CLI's --device cuda, tests/gpu) report it plainly.
#include "gpu.h"
#include "util.h"
#include <math.h>
#include <stdio.h>

#define NO_CUDA "built without the CUDA backend (no nvcc at build time, or CUDA=0 / SAN=1)"

bool gpu_available(char *why, size_t why_len) {
    if (why && why_len) snprintf(why, why_len, "%s", NO_CUDA);
    return false;
}
void gpu_describe(char *buf, size_t len) { gpu_available(buf, len); }
GpuModel *gpu_model_create(Model *m, const GpuOptions *opt) {
    (void)m; (void)opt;
    peft_fail("CUDA backend: %s", NO_CUDA);
    return NULL;
}
void gpu_model_free(GpuModel *g) { (void)g; }
int gpu_dequantized_weight(GpuModel *g, const Linear *lin, float *out) { (void)g; (void)lin; (void)out; return peft_fail("CUDA backend: %s", NO_CUDA); }
double gpu_forward(GpuModel *g, const int32_t *ids, const int32_t *labels, int B, int T) {
    (void)g; (void)ids; (void)labels; (void)B; (void)T;
    peft_fail("CUDA backend: %s", NO_CUDA);
    return NAN;
}
int gpu_get_logits(GpuModel *g, float *out) { (void)g; (void)out; return peft_fail("CUDA backend: %s", NO_CUDA); }
double gpu_classify(GpuModel *g, const ClassifyBatch *b, float *logits) {
    (void)g; (void)b; (void)logits;
    peft_fail("CUDA backend: %s", NO_CUDA);
    return NAN;
}
int gpu_backward(GpuModel *g) { (void)g; return peft_fail("CUDA backend: %s", NO_CUDA); }
void gpu_zero_grad(GpuModel *g) { (void)g; }
double gpu_clip_grad_norm(GpuModel *g, double max_norm) { (void)g; (void)max_norm; return NAN; }
int gpu_adamw_step(GpuModel *g, float lr, float beta1, float beta2, float eps, float weight_decay) {
    (void)g; (void)lr; (void)beta1; (void)beta2; (void)eps; (void)weight_decay;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
double gpu_train_step(GpuModel *g, const int32_t *ids, const int32_t *labels, int B, int T, float lr, float beta1, float beta2,
                      float eps, float weight_decay, double max_norm) {
    (void)g; (void)ids; (void)labels; (void)B; (void)T; (void)lr; (void)beta1; (void)beta2; (void)eps; (void)weight_decay; (void)max_norm;
    peft_fail("CUDA backend: %s", NO_CUDA);
    return NAN;
}
int gpu_download_trainables(GpuModel *g, bool grads) { (void)g; (void)grads; return peft_fail("CUDA backend: %s", NO_CUDA); }
int gpu_upload_trainables(GpuModel *g) { (void)g; return peft_fail("CUDA backend: %s", NO_CUDA); }
double gpu_lm_loss(GpuModel *g) { (void)g; return NAN; }
int gpu_scale_grads(GpuModel *g, float k) { (void)g; (void)k; return peft_fail("CUDA backend: %s", NO_CUDA); }
int gpu_download_optimizer(GpuModel *g, Param *const *params, int n, float *const *m, float *const *v, int *step) {
    (void)g; (void)params; (void)n; (void)m; (void)v; (void)step;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
int gpu_upload_optimizer(GpuModel *g, Param *const *params, int n, float *const *m, float *const *v, int step) {
    (void)g; (void)params; (void)n; (void)m; (void)v; (void)step;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
void gpu_set_dropout(GpuModel *g, bool on, uint64_t seed) { (void)g; (void)on; (void)seed; }
size_t gpu_peak_bytes(void) { return 0; }
int gpu_sync(GpuModel *g) { (void)g; return peft_fail("CUDA backend: %s", NO_CUDA); }
void gpu_reset_peak(void) {}
double gpu_bf16_gemm_tflops(int n) { (void)n; return 0; }
int gpu_profile_report(GpuModel *g, char *buf, size_t len) { (void)g; (void)buf; (void)len; return -1; }
int gpu_adalora_update_scores(GpuModel *g, float beta1, float beta2) { (void)g; (void)beta1; (void)beta2; return peft_fail("CUDA backend: %s", NO_CUDA); }
int gpu_adalora_triplet_scores(GpuModel *g, const GpuAdaModule *mods, int n, double *score) {
    (void)g; (void)mods; (void)n; (void)score;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
int gpu_adalora_zero_ranks(GpuModel *g, const GpuAdaModule *mods, int n, const bool *kept) {
    (void)g; (void)mods; (void)n; (void)kept;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
bool gpu_adalora_has_scores(const GpuModel *g) { (void)g; return false; }
void gpu_adalora_reset_scores(GpuModel *g) { (void)g; }
int gpu_adalora_copy_scores(GpuModel *g, const Param *p, double *ipt, double *unc, bool down) {
    (void)g; (void)p; (void)ipt; (void)unc; (void)down;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
GpuKV *gpu_kv_new(GpuModel *g, int n_slots, int max_len) {
    (void)g; (void)n_slots; (void)max_len;
    peft_fail("CUDA backend: %s", NO_CUDA);
    return NULL;
}
void gpu_kv_free(GpuKV *kv) { (void)kv; }
int gpu_kv_copy(GpuKV *kv, int dst, int src, int len) { (void)kv; (void)dst; (void)src; (void)len; return peft_fail("CUDA backend: %s", NO_CUDA); }
int gpu_kv_forward(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                   const int *out_rows, int n_out, float *logits) {
    (void)kv; (void)N; (void)ids; (void)slot; (void)pos; (void)row_sets; (void)out_rows; (void)n_out; (void)logits;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
int gpu_kv_forward_next(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                        const int *out_rows, int n_out, const GpuSampling *s, int32_t *next) {
    (void)kv; (void)N; (void)ids; (void)slot; (void)pos; (void)row_sets; (void)out_rows; (void)n_out; (void)s; (void)next;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
int gpu_sample_logits(const float *logits, int n_rows, int V, const int *pos, const GpuSampling *s, int32_t *next) {
    (void)logits; (void)n_rows; (void)V; (void)pos; (void)s; (void)next;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
int gpu_inference_attach(Model *m, GpuPrecision precision) { (void)m; (void)precision; return peft_fail("CUDA backend: %s", NO_CUDA); }
void gpu_inference_detach(Model *m) { (void)m; }
int gpu_attention_bidir(int B, int T, int NH, int NKV, int HD, const int32_t *mask, GpuPrecision prec, const float *qkv,
                        const float *dout, float *out, float *dqkv) {
    (void)B; (void)T; (void)NH; (void)NKV; (void)HD; (void)mask; (void)prec; (void)qkv; (void)dout; (void)out; (void)dqkv;
    return peft_fail("CUDA backend: %s", NO_CUDA);
}
