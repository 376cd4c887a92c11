// lora.c: LoRA (Hu et al. 2021) as HF PEFT implements it.
//   y += scaling * (x A^T) B^T,  scaling = alpha / r, or alpha / sqrt(r) with rsLoRA;
//   A [r,in] and B [out,r] start as init_lora_weights says (lora_init.c; by default A
//   Kaiming-uniform with a = sqrt 5, B zeros).
#include "adapter.h"
#include "kernels.h"
#include "lora_init.h"
#include "util.h"
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static int lora_init(AdapterSet *set, Adapter *a, uint64_t *rng) {
    const AdapterConfig *c = &set->cfg;
    int r = a->r;
    float alpha = adapter_module_alpha(c, a->lin->module);  // alpha_pattern's, else lora_alpha
    a->scaling = c->use_rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
    return lora_init_module(set, a, *rng);
}

static void lora_forward(Adapter *a, const float *x, float *y, int N, bool train) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    adapter_ensure_capacity(a, N, 0);
    const float *xin = adapter_dropout_input(a, x, N, train);
    matmul(a->h, xin, a->A->w, N, r, in, false, true, 1.0f, 0.0f);          // h = x A^T      [N,r]
    matmul(y, a->h, a->B->w, N, out, r, false, true, a->scaling, 1.0f);     // y += s h B^T   [N,out]
}

static void lora_backward(Adapter *a, const float *x, const float *dy, float *dx, int N) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    float *dh = xmalloc(sizeof(float) * N * r);
    matmul(a->B->grad, dy, a->h, out, r, N, true, false, a->scaling, 1.0f); // dB += s dy^T h  [out,r]
    matmul(dh, dy, a->B->w, N, r, out, false, false, a->scaling, 0.0f);     // dh = s dy B     [N,r]
    matmul(a->A->grad, dh, x, r, in, N, true, false, 1.0f, 1.0f);           // dA += dh^T x    [r,in]
    if (dx) matmul(dx, dh, a->A->w, N, in, r, false, false, 1.0f, 1.0f);    // dx += dh A      [N,in]
    free(dh);
}

static void lora_delta(const Adapter *a, float *delta) {
    matmul(delta, a->B->w, a->A->w, a->lin->out, a->lin->in, a->r, false, false, a->scaling, 0.0f);  // s B A
}

static void lora_lowrank(const Adapter *a, float **A, float **B, int *r, float *scale) {
    *r = a->r;
    *scale = a->scaling;
    *A = xmalloc(sizeof(float) * (a->A->numel ? a->A->numel : 1));
    *B = xmalloc(sizeof(float) * (a->B->numel ? a->B->numel : 1));
    memcpy(*A, a->A->w, sizeof(float) * a->A->numel);
    memcpy(*B, a->B->w, sizeof(float) * a->B->numel);
}

// LoraConfig's keys (AdaLoRA's config extends it).
static const ConfigKey LORA_KEYS[] = {
    {"r", KEY_USED, NULL, NULL},
    {"lora_alpha", KEY_USED, NULL, NULL},
    {"lora_dropout", KEY_USED, NULL, NULL},
    {"use_rslora", KEY_USED, NULL, NULL},
    {"init_lora_weights", KEY_USED, NULL, NULL},  // lora_init.c: refuses the ones not implemented by name
    {"rank_pattern", KEY_USED, NULL, NULL},        // adapter_layout.c, as alpha_pattern, exclude_modules and bias
    {"bias", KEY_USED, "[\"none\", \"all\", \"lora_only\"]", NULL},
    {"modules_to_save", KEY_USED, NULL, NULL},     // adapter_base.c
    {"megatron_core", KEY_INERT, NULL, NULL},      // read only with megatron_config
    {"qalora_group_size", KEY_INERT, NULL, NULL},  // read only with use_qalora
    {"exclude_modules", KEY_USED, NULL, NULL},
    {"alpha_pattern", KEY_USED, NULL, NULL},
    {"use_dora", KEY_USED, NULL, NULL},  // true: the file is a DoRA adapter (dora.c)
    {"lora_bias", KEY_DEFAULT, NULL, "a bias on lora_B"},
    {"use_qalora", KEY_DEFAULT, NULL, "QALoRA's pooled inputs"},
    {"use_bdlora", KEY_DEFAULT, NULL, "block-diagonal LoRA"},
    {"layer_replication", KEY_DEFAULT, NULL, "repeated layers of the base model"},
    {"target_parameters", KEY_DEFAULT, NULL, "LoRA on parameters rather than modules"},
    {"trainable_token_indices", KEY_USED, NULL, NULL},  // adapter_embed.c
    {"ensure_weight_tying", KEY_DEFAULT, NULL, "tied copies of saved modules"},
    {"alora_invocation_tokens", KEY_DEFAULT, NULL, "activated LoRA (applied after these tokens only)"},
    {"megatron_config", KEY_DEFAULT, NULL, "Megatron's parallel layers"},
    {"loftq_config", KEY_DEFAULT, NULL, "LoftQ's quantised base"},
    {"eva_config", KEY_DEFAULT, NULL, "EVA initialisation"},
    {"corda_config", KEY_DEFAULT, NULL, "CorDA initialisation"},
    {"lora_ga_config", KEY_DEFAULT, NULL, "LoRA-GA initialisation"},
    {"kasa_config", KEY_DEFAULT, NULL, "KaSA"},
    {"velora_config", KEY_DEFAULT, NULL, "VeLoRA"},
    {"monteclora_config", KEY_DEFAULT, NULL, "MonteCLoRA"},
    {"arrow_config", KEY_DEFAULT, NULL, "Arrow routing between adapters"},
};

// Common starting point: 2e-4 (QLoRA, PEFT examples).
const Method lora_method = {
    .id = METHOD_LORA,
    .name = "lora",
    .title = "LoRA",
    .peft_type = "LORA",
    .default_r = 8,
    .default_lr = 2e-4f,
    .n_keys = sizeof LORA_KEYS / sizeof *LORA_KEYS,
    .keys = LORA_KEYS,
    .gpu = AD_LORA,
    .n_tensors = 2,
    .tensors = {{"lora_A.weight", DIM_RANK, DIM_IN, false, offsetof(Adapter, A)},
                {"lora_B.weight", DIM_OUT, DIM_RANK, false, offsetof(Adapter, B)}},
    .init = lora_init,
    .forward = lora_forward,
    .backward = lora_backward,
    .delta = lora_delta,
    .lowrank = lora_lowrank,
    .save = lora_init_save,
    .after_load = lora_init_after_load,
    .free_state = lora_init_free_state,
};
