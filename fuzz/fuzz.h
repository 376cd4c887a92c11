// fuzz.h: the fuzz targets and what they share. A target is a function over one input that
// returns 1 when the code under test accepted it, 0 when it refused it with an error; a broken
// property aborts (FUZZ_CHECK) and ASan / UBSan catch memory and undefined-behaviour errors.
// entry.c makes each one a libFuzzer binary (build-fuzz/fuzz_NAME, run by fuzz/run.sh);
// tests/test_fuzz.c replays fuzz/corpus/NAME and fuzz/regressions/NAME through the same functions.
// Inputs made of two files are the first, a NUL byte, then the second (fuzz_split).
#pragma once
#include "data.h"
#include <stddef.h>
#include <stdint.h>

int fuzz_safetensors(const uint8_t *data, size_t size);  // a safetensors file
int fuzz_json(const uint8_t *data, size_t size);         // a config.json or adapter_config.json
int fuzz_http(const uint8_t *data, size_t size);         // "METHOD /route\n" and the request body
int fuzz_chat(const uint8_t *data, size_t size);         // a chat template, NUL, JSONL chat data
int fuzz_tokenizer(const uint8_t *data, size_t size);    // a tokenizer.json, NUL, text to encode
int fuzz_adapter(const uint8_t *data, size_t size);      // adapter_config.json, NUL, adapter_model.safetensors
int fuzz_checkpoint(const uint8_t *data, size_t size);   // checkpoint state.json, NUL, state.safetensors
int fuzz_jinja(const uint8_t *data, size_t size);        // a Jinja template, NUL, a JSON object of variables
int fuzz_data(const uint8_t *data, size_t size);         // a byte picking the reader, then a data file
int fuzz_model(const uint8_t *data, size_t size);        // a byte picking config.json, then model.safetensors

// A broken property: says which and where on stderr, then aborts.
#define FUZZ_CHECK(cond, ...) \
    do { if (!(cond)) fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__); } while (0)
void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

// The input cut at its first NUL: the part before it (a malloc'd, NUL-terminated copy) and the
// rest after it (*rest points into data; NULL and 0 when the input has no NUL).
char *fuzz_split(const uint8_t *data, size_t size, const uint8_t **rest, size_t *rest_len);

// This process's scratch folder (made on first use, removed at exit).
const char *fuzz_dir(void);
// Writes data to fuzz_dir()/sub/name (making sub); returns the path (malloc'd). Aborts on failure.
char *fuzz_write(const char *sub, const char *name, const void *data, size_t len);
// Removes fuzz_dir()/sub and everything in it; returns its path (malloc'd).
char *fuzz_clear(const char *sub);

// Tiny models (2 layers, hidden 16, the byte-level tokenizer's 257 ids).
extern const char *const FUZZ_GPT2_CONFIG, *const FUZZ_LLAMA_CONFIG;
// A tiny RoBERTa classifier over the same ids (<s> and </s> are 256; classes neg, neu, pos).
extern const char *const FUZZ_ROBERTA_CONFIG;
// fuzz_model's config.json of each kind 0..FUZZ_MODEL_CONFIGS-1: GPT-2, Llama, Qwen2, RoBERTa, and
// saved by bitsandbytes: Llama NF4 with double quantization, GPT-2 FP4, Llama int8.
enum { FUZZ_MODEL_CONFIGS = 7 };
const char *fuzz_model_config(int kind);
// A model folder fuzz_dir()/name: config.json, random weights (seed 1), the byte-level tokenizer
// and a ChatML chat template. Returns its path (malloc'd); aborts when it cannot be made.
char *fuzz_model_dir(const char *name, const char *config_json);

// A tokenized dataset's invariants: sequences of 1..seq_len vocabulary ids, each label -100 or its
// own token, n_loss_tokens their count (the first position of a sequence predicts nothing).
void fuzz_check_dataset(const Dataset *ds, const Tokenizer *tok, int seq_len);

// Seeds (fuzz/seeds.c): two files as one input (the first, NUL, the second), *data malloc'd;
// a checkpoint of fuzz_checkpoint's run for method (lora, vera or adalora). 0, or -1 with
// peft_last_error().
int fuzz_join_files(const char *first, const char *second, uint8_t **data, size_t *size);
int fuzz_checkpoint_seed(const char *method, uint8_t **data, size_t *size);
