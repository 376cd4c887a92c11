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
double gpu_forward(GpuModel *g, const int32_t *ids, const int32_t *labels, int B, int T) {
    (void)g; (void)ids; (void)labels; (void)B; (void)T;
    peft_fail("CUDA backend: %s", NO_CUDA);
    return NAN;
}
int gpu_get_logits(GpuModel *g, float *out) { (void)g; (void)out; return peft_fail("CUDA backend: %s", NO_CUDA); }
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
size_t gpu_peak_bytes(void) { return 0; }
int gpu_sync(GpuModel *g) { (void)g; return peft_fail("CUDA backend: %s", NO_CUDA); }
void gpu_reset_peak(void) {}
double gpu_bf16_gemm_tflops(int n) { (void)n; return 0; }
int gpu_profile_report(GpuModel *g, char *buf, size_t len) { (void)g; (void)buf; (void)len; return -1; }
int gpu_adalora_update_scores(GpuModel *g, float beta1, float beta2) { (void)g; (void)beta1; (void)beta2; return peft_fail("CUDA backend: %s", NO_CUDA); }
