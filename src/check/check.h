// check.h: run HF PEFT reference cases (../shared/fixtures/hf-peft layout, see its README).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "model.h"
#include "safetensors.h"
#include <stdbool.h>

typedef enum { CHECK_PASS, CHECK_FAIL, CHECK_SKIP } CheckStatus;

typedef struct {
    CheckStatus status;
    char name[128];
    double max_rel_err;    // worst relative error over everything compared
    char detail[1024];     // FAIL: what and how far; SKIP: why
} CheckResult;

// Runs the case in dir (a model case, the AdaLoRA schedule case, or a tokenizer case).
void check_case(const char *dir, CheckResult *res);
// Relative Frobenius error ||a - ref|| / ||ref|| (absolute when ref is all zeros).
double rel_error(const float *a, const float *ref, long n);
// ||after - ref_after|| / ||ref_after - before||: an optimizer step's update (after - before) against the
// reference's from the same weights (before NULL: zeros, i.e. rel_error; absolute when the reference
// does not move).
double update_rel_error(const float *before, const float *after, const float *ref_after, long n);
// update_rel_error (rel_error when before is NULL), but against at least the norm n elements of
// floor_rms each would have (an absolute error for a reference below that).
double floored_error(const float *before, const float *after, const float *ref_after, long n, double floor_rms);
// A gradient that vanishes in exact arithmetic (an encoder's attention key bias: softmax ignores a shift
// shared by a row's scores) is float32 rounding here and float64 rounding in PEFT: ~1e-9 against ~1e-17,
// a meaningless relative error; its AdamW update is then the weight decay alone, ~1e-3 of an Adam step,
// where the fp32 rounding of the stored weights is a visible fraction. peft check compares each gradient
// against at least CHECK_GRAD_FLOOR times the RMS of all the case's reference gradients (per element),
// and each update against at least CHECK_UPDATE_FLOOR times the RMS of all its reference updates: a
// tensor above the floor is compared relatively as before; one below it absolutely, at tolerance x floor.
#define CHECK_GRAD_FLOOR 1e-4
#define CHECK_UPDATE_FLOOR 1e-2
// The update's tolerance (case.json's tolerance.update_rel overrides it). From the same gradient our
// AdamW update is within fp32 rounding of HF's: <= 5e-6 on every case, bounded by 2^-24 |w| / lr per
// element (the stored weights' rounding). A weight decay of 0 or 0.08 instead of 0.01 moves some tensor's
// update in every case by >= 2e-3: 1e-4 sits 20x from both.
#define CHECK_UPDATE_TOL 1e-4
// Sets r's status and its detail (printf format).
void check_result_set(CheckResult *r, CheckStatus st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// The reference tensor `name` of st as n floats (xmalloc'd), or NULL with r set to FAIL (missing, another
// size, unreadable); `what` names it in the message.
float *check_load_reference(CheckResult *r, const char *what, const SafeTensors *st, const char *name, long n);
// The [B,T] integer tensor `name` of a case's io.safetensors as int32 (*out: xmalloc'd).
int check_read_ids(const SafeTensors *io, const char *name, int32_t **out, int *B, int *T);
// A seq_cls case's io beside its input_ids [B,T]: attention_mask [B,T], token_type_ids [B,T] when present (else
// *types stays NULL), and labels: int64 class indices [B], or floats [B] / [B, num_labels] (xmalloc'd).
int check_read_classify_io(const SafeTensors *io, const ModelConfig *cfg, int B, int T, int32_t **mask, int32_t **types, float **targets,
                           bool *int_targets);
// The comparison both peft check and the GPU's check (gpu_check.c) hold n tensors to: got[i] against ref[i]
// by floored_error (before: the update after - before against ref - before), floored at `floor` times the
// RMS of every reference element of the n tensors (CHECK_GRAD_FLOOR for gradients, CHECK_UPDATE_FLOOR for
// updates), each within tol. Records the worst in r->max_rel_err; FAIL naming `what` and the tensor.
int check_floored(CheckResult *r, const char *what, Param *const *params, int n, float *const *before, float *const *got, float *const *ref,
                  double floor, double tol);
// The RMS of every element of the n reference tensors (before: of ref - before), the scale check_floored floors at.
double check_rms(Param *const *params, int n, float *const *before, float *const *ref);
