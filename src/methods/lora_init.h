// lora_init.h: LoRA's init_lora_weights as HF PEFT 0.21 runs it (lora_init.c), and the PiSSA / OLoRA
// conversion PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) documents.
#pragma once
#include "adapter.h"
#include "torch_rng.h"
#include <stdbool.h>
#include <stddef.h>

// adapter_config.json's value or --init-lora-weights' text: true, false, "gaussian", "pissa",
// "pissa_niter_K" (K >= 0), "olora". LoftQ, EVA, CorDA and PEFT's "orthogonal" are refused by name.
// text: "true" / "false" for the JSON booleans. Sets c->init and c->init_niter.
int lora_init_parse(AdapterConfig *c, const char *text, const char *where);
// Its JSON value (a cJSON *: true, false or the string), as PEFT writes it.
void *lora_init_json(const AdapterConfig *c);
// Its text ("true", "pissa_niter_4", ...) in buf.
const char *lora_init_text(const AdapterConfig *c, char *buf, size_t cap);
// PiSSA and OLoRA: the base weights become W - scaling * B A (the residual).
bool lora_init_changes_base(const AdapterConfig *c);

// One module's initial A and B (and, for PiSSA / OLoRA, its residual base weight), drawing from the
// set's torch generator in PEFT's order: for every adapted module in the model's order, nn.Linear's
// own Kaiming draws for lora_A [r, in] and lora_B [out, r], then init_lora_weights' (so --seed S
// gives what torch.manual_seed(S) before get_peft_model gives). seed: the set's seed (used once).
int lora_init_module(AdapterSet *set, Adapter *a, uint64_t seed);
// After loading a file's tensors: the set is no longer at its initial values (save writes it as is).
int lora_init_after_load(AdapterSet *set, const void *file, const char *path);
void lora_init_free_state(AdapterSet *set);
// The set's torch generator after its initial draws (NULL before any): add_weighted_adapter's DARE masks
// come next from the same global generator in PEFT.
TorchGen *lora_init_generator(AdapterSet *set);
// LoRA's Method.save: the tensors as they are, or, for a PiSSA / OLoRA set trained from its
// initialisation, PEFT's conversion to a plain LoRA of rank 2r on the original base:
// A' = [A; A0], B' = [B, -B0], r' = 2r, lora_alpha' = 2 alpha (sqrt(2) alpha with rsLoRA),
// init_lora_weights true (s' B' A' = s (B A - B0 A0) = W_res + s B A - W).
int lora_init_save(AdapterSet *set, void *writer /*StWriter*/, void *config_json /*cJSON*/);

// A reference case with init.safetensors (tools/reference_cases: init_lora_weights set; case: its parsed
// case.json): our initialisation of model/ with adapter/'s config and case.json's init_seed against PEFT's
// (tensors; PiSSA / OLoRA factors up to a sign per rank, and the residual base weights); with converted/,
// the conversion: adapter/ loaded on model/ (decomposed again from the generator at load_seed, which must be
// peft.c's loader's 0) gives io.safetensors' logits, and ours saved converted and PEFT's converted/, each on
// the original base, give the adapter's tensors on the init_seed residual. 0 when all match; else msg says what.
int lora_init_check_case(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap);
