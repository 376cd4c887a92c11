// lora_combine.h: HF PEFT 0.21's LoraModel.add_weighted_adapter (lora_combine.c): several LoRA adapters on one
// base combined into one, by PEFT's formulas (peft/utils/merge_utils.py, tuners/lora/model.py).
#pragma once
#include "adapter.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    COMBINE_LINEAR, COMBINE_CAT, COMBINE_SVD, COMBINE_TIES, COMBINE_DARE_LINEAR, COMBINE_DARE_TIES, COMBINE_MAGNITUDE_PRUNE,
    COMBINE_TIES_SVD, COMBINE_DARE_LINEAR_SVD, COMBINE_DARE_TIES_SVD, COMBINE_MAGNITUDE_PRUNE_SVD,
} CombineType;

typedef struct {
    CombineType type;
    double density;          // ties, dare_*, magnitude_prune (and their _svd): the fraction kept; NaN: not given
    bool sign_frequency;     // majority_sign_method "frequency" (default "total")
    int svd_rank;            // *svd: the new rank; 0: the largest input rank (PEFT's default)
    uint64_t seed;           // torch.manual_seed(seed) before: the new modules' draws, then DARE's masks
} CombineOptions;

// PEFT's combination_type names; an unknown one is an error listing them.
int combine_type_parse(const char *name, CombineType *out);
const char *combine_type_name(CombineType t);

// Combines n LoRA sets made for m's linears (detached) with these weights into a new set attached to m
// (m->adapters must be empty), as add_weighted_adapter(adapters, weights, ...) makes its new adapter:
// r = lora_alpha = the new rank (sum of ranks for cat, svd_rank or the largest for *svd, the common rank
// otherwise), target_modules the union, every other option the first adapter's. PEFT's refusals too.
int lora_combine(Model *m, AdapterSet *const *sets, const double *weights, int n, const CombineOptions *o);

// A lora-arithmetic reference case (case: its parsed case.json): our combination of adapter/ and adapter2/
// against PEFT's combined/ (config, tensors; products for the SVD types) and its logits. 0 when it matches.
int lora_combine_check_case(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap);
