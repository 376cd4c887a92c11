// check.h: run HF PEFT reference cases (../shared/fixtures/hf-peft layout, see its README).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "safetensors.h"

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
// Sets r's status and its detail (printf format).
void check_result_set(CheckResult *r, CheckStatus st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// The reference tensor `name` of st as n floats (xmalloc'd), or NULL with r set to FAIL (missing, another
// size, unreadable); `what` names it in the message.
float *check_load_reference(CheckResult *r, const char *what, const SafeTensors *st, const char *name, long n);
// The [B,T] integer tensor `name` of a case's io.safetensors as int32 (*out: xmalloc'd).
int check_read_ids(const SafeTensors *io, const char *name, int32_t **out, int *B, int *T);
