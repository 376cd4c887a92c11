// adalora.h: AdaLoRA's rank allocator (PEFT's RankAllocator) and its reference-case check.
#pragma once
#include "model.h"
#include <stddef.h>

// After optimizer.step at global step `step` (0-based, as PEFT's update_and_allocate(step)):
// update sensitivity scores, compute the budget, and mask lora_E when due.
// Returns the budget for this step; *mask_applied tells whether a mask was applied.
int adalora_update_and_allocate(Model *m, int step, int *mask_applied);

// The gpt2-adalora-schedule case: several real steps with the allocator (case is the parsed case.json).
// Returns 0 when budgets, rank pattern and final tensors match; else fills msg.
int adalora_check_schedule(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap);
