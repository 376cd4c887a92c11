// helpers.h: what several test files share: tiny model configs, a seeded random stream, and
// tiny random models with weights large enough that every path carries signal.
#pragma once
#include "model.h"
#include <stdint.h>

extern const char *const TINY_GPT2_JSON;   // config.json text: 2 layers, hidden 16, vocab 40
extern const char *const TINY_LLAMA_JSON;  // the same size with GQA (4 heads, 2 kv heads)

// splitmix64 stream in [0,1): each test file keeps its own state so its draws stay reproducible.
double test_urand(uint64_t *state);
// A model from config JSON with random weights scaled from std 0.02 up to 0.2.
Model *test_model_from_json(const char *json, uint64_t seed);
// A folder with a tiny GPT-2 and a byte-level tokenizer (made once per run), for data and training tests.
const char *test_tiny_model(void);
