// helpers.h: what several test files share: tiny model configs, a seeded random stream, and
// tiny random models with weights large enough that every path carries signal.
#pragma once
#include "model.h"
#include <stdbool.h>
#include <stdint.h>

extern const char *const TINY_GPT2_JSON;   // config.json text: 2 layers, hidden 16, vocab 40
extern const char *const TINY_LLAMA_JSON;  // the same size with GQA (4 heads, 2 kv heads)

// splitmix64 stream in [0,1): each test file keeps its own state so its draws stay reproducible.
double test_urand(uint64_t *state);
// A model from config JSON with random weights scaled from std 0.02 up to 0.2.
Model *test_model_from_json(const char *json, uint64_t seed);
// A folder with a tiny GPT-2 and a byte-level tokenizer (made once per run), for data and training tests.
const char *test_tiny_model(void);
// Sets key of dir/adapter_config.json to a JSON value (e.g. "1000000000", "null", "[\"x\"]").
void test_set_adapter_key(const char *dir, const char *key, const char *json_value);
// ids [n] uniform in [0, V) from the stream; labels (may be NULL) = ids with the first ignored (-100).
void test_random_batch(int32_t *ids, int32_t *labels, int n, int V, uint64_t *state);
// A copy of the model's first n logits.
float *test_copy_logits(Model *m, long n);
typedef struct { const int32_t *ids, *labels; int B, T; } TestBatch;
double test_batch_loss(Model *m, void *batch);  // a TestLossFn: model_forward's loss on a TestBatch
typedef double (*TestLossFn)(Model *m, void *ctx);
// The trainable tensors' gradients (model_trainable; already computed) against central differences
// of f, per tensor along TEST_GRAD_DIRS random directions d (entries uniform in [-1, 1], step eps) and
// at its largest entry (step 10 eps). The analytic derivatives a = g.d and the differences c must meet
// ||a - c|| <= rtol ||c|| + atol sqrt(TEST_GRAD_DIRS) over the directions, and |a - c| <= rtol |c| + atol
// at the entry: an all-zero or wrong gradient fails wherever f moves by more than ~atol (no floor on
// ||c||), several directions keep one near-orthogonal to g from hiding it, and a tensor f does not
// depend on passes with a zero gradient. atol covers the differences' noise (the fp32 loss's rounding
// over 2 eps: ~5e-5 at eps 1e-3). Returns 1 when every tensor passes (failures printed).
enum { TEST_GRAD_DIRS = 4 };
int test_gradcheck(Model *m, TestLossFn f, void *ctx, double eps, double rtol, double atol);
// A quantization reference case's model-bnb folder against its dequant.safetensors and against what we
// save for it (test_quant_files.c). 1 when it matches.
int test_quant_bnb_folder(const char *case_dir);
// peft check on each named reference case that is generated (fixtures_dir()): each line printed, any
// that does not PASS marks the test failed (*failed); the names not generated yet go into missing
// (space-separated). Returns how many ran.
int test_reference_cases(int *failed, const char *const *cases, int n, char *missing, size_t cap);
