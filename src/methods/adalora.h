// adalora.h: AdaLoRA (Zhang et al. 2023) as HF PEFT 0.21 implements it: the adapter method
// (adalora.c) and its rank allocator (rank_allocator.c, PEFT's RankAllocator and
// AdaLoraModel.update_and_allocate), plus the schedule reference-case check.
#pragma once
#include "adapter.h"
#include "model.h"
#include <stdbool.h>
#include <stddef.h>

// After optimizer.step at global step `step` (0-based, as PEFT's update_and_allocate(step)),
// before zero_grad (the gradients are read): update the sensitivity scores, compute the budget,
// and mask lora_E when due, exactly as PEFT:
//   step <  total_step - tfinal: update the scores; mask to the budget when the schedule says so;
//   step == total_step - tfinal: no score update; the final mask (always applied), kept as the
//                                 rank pattern; the scores are reset;
//   step >  total_step - tfinal: re-apply the final rank pattern.
// Every mask is also stored in the adapter's rank_pattern (saved with the adapter).
// Returns the budget of PEFT's budget_schedule(step) and sets *mask_applied to its mask flag (what
// the schedule reference case records; at step == total_step - tfinal the final mask is applied
// even when the flag is false). Returns -1 (peft_last_error) on bad options or a model without AdaLoRA.
int adalora_update_and_allocate(Model *m, int step, int *mask_applied);
// The same with the scores on the CUDA backend's device (gpu_adalora_*): only the triplet scores come
// to the host when a mask is due, and E is masked there (the CUDA trainer's Method.after_step_gpu).
int adalora_update_and_allocate_gpu(Model *m, struct GpuModel *g, int step, int *mask_applied);
// The device's scores into the allocator's host arrays (down, before a checkpoint is written) or back
// (after one is loaded): Method.sync_state_gpu.
int adalora_copy_scores_gpu(AdapterSet *set, struct GpuModel *g, bool down);

// The gpt2-adalora-schedule case: several real steps with the allocator (case is the parsed case.json).
// Returns 0 when budgets, losses, rank pattern and final tensors match; else fills msg.
int adalora_check_schedule(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap);

// PEFT's RankAllocator.budget_schedule(step): the budget (total kept ranks) and whether to mask.
int adalora_budget_schedule(int init_bgt, int target_bgt, int tinit, int tfinal, int total_step, int deltaT, int step,
                            bool *mask_ind);
// PEFT's _set_budget_scheduler: the budget starts at the sum of the modules' ranks and ends at
// target_r per module (what a checkpoint's budget must be).
void adalora_budget_bounds(const AdapterSet *set, int *init_bgt, int *target_bgt);

// Checks the options the allocator needs (PEFT's AdaLoraConfig and RankAllocator checks):
// total_step > 0, tinit < total_step - tfinal, 0 <= target_r <= init_r, deltaT >= 1, 0 < beta1, beta2 < 1.
// With need_total_step false, a missing (0) total_step is accepted and the schedule checked only when given.
int adalora_check_options(const AdapterConfig *c, bool need_total_step);

// The allocator's state in a training checkpoint (Method.save_state / load_state): the scores,
// the rank pattern and the budget; loading checks the budget is this run's.
void adalora_save_state(AdapterSet *set, void *writer /*StWriter*/);
int adalora_load_state(AdapterSet *set, const void *file /*SafeTensors*/, const char *path);

// ---- shared by adalora.c and rank_allocator.c ----

// Per adapted module: which of the original init_r ranks its current ranks are (an adapter loaded
// with a rank_pattern has only the kept ones), and the allocator's running scores.
typedef struct {
    int *orig_idx;             // [a->r]: index in 0..init_r-1 of each current rank
    double *avg_ipt[3];        // exp_avg_ipt for A, E, B (NULL until the first update)
    double *avg_unc[3];        // exp_avg_unc for A, E, B
} AdaLoraModuleState;

typedef struct {
    int n;                     // = set->n
    AdaLoraModuleState *mod;
    int init_bgt, target_bgt;  // fixed when the allocator first runs (PEFT: at model creation)
    bool allocator_ready;
} AdaLoraState;

// The rank_pattern entry of a module in set->cfg (NULL when none).
RankPatternEntry *adalora_pattern_entry(AdapterSet *set, const char *module);
// kept[j] for each current rank j of adapter i under set->cfg's rank pattern (all true without one).
void adalora_kept_ranks(AdapterSet *set, int i, bool *kept);
void adalora_free_scores(AdaLoraState *st);
