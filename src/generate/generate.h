// generate.h: inference for GPT-2 and the Llama family: a forward pass over a KV cache
// (kv_cache.c), logit processing and sampling (sampling.c), and the generation loop with
// beam search, stop strings and streaming (generate.c).
//
// The cache holds n_slots independent sequences ("slots"). One kv_forward call appends tokens
// to any set of slots at once: a prompt of many tokens (prefill) and single tokens (decode)
// may share a call, and each row has its own length and positions. The linear layers run
// once over all the call's tokens through linear_forward, so an adapter attached to the
// model and not merged (LoRA, VeRA, AdaLoRA) applies live; a merged one costs nothing.
#pragma once
#include "model.h"
#include "tokenizer.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ---- the KV cache and the cached forward (kv_cache.c) ----

typedef struct KVCache KVCache;

// Keys and values of n_slots sequences of up to max_len tokens each, for m's shapes (fp32,
// 2 * n_layer * n_slots * max_len * n_kv_head * head_dim floats). NULL + error when too big
// or max_len exceeds a GPT-2 model's n_positions.
KVCache *kv_cache_new(const Model *m, int n_slots, int max_len);
void kv_cache_free(KVCache *kv);
int kv_cache_slots(const KVCache *kv);
int kv_cache_max_len(const KVCache *kv);
int kv_cache_len(const KVCache *kv, int slot);        // tokens cached in the slot
void kv_cache_reset(KVCache *kv, int slot);            // empty the slot (O(1))
void kv_cache_truncate(KVCache *kv, int slot, int len); // keep the first len tokens
void kv_cache_copy(KVCache *kv, int dst, int src);     // dst becomes a copy of src (beam search)
void kv_cache_copy_prefix(KVCache *kv, int dst, int src, int len);  // ... of src's first len tokens (a prefix cache)

// One row of a cached forward: n new tokens for `slot`, at positions len .. len+n-1.
typedef struct { int slot, n; } KVRow;

// Runs the model over the new tokens of n_rows rows (ids: the rows' tokens one after the other,
// sum of n in all) and appends their keys and values to the slots. Writes the logits of the last
// new token of each row to logits [n_rows, V], or, when all_logits, of every new token
// [sum n, V] (rows in order). A slot may appear once per call. Returns 0, or -1 + error
// (bad slot, token id, or a slot that would exceed max_len); on error no slot changes.
// Not thread-safe per cache; uses OpenMP and OpenBLAS threads inside.
int kv_forward(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, float *logits, bool all_logits);
// kv_forward for greedy decoding: writes each row's next token, the argmax (first maximum) of its
// last token's logits, to next [n_rows]; the logits stay in the cache's own buffer (on the GPU:
// on the device, where the argmax runs; only the tokens come back).
int kv_forward_greedy(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, int32_t *next);

// ---- sampling (sampling.c) ----

typedef struct {
    int max_new_tokens;        // 64
    float temperature;         // 0 = greedy (argmax); > 0 samples
    int top_k;                 // 0 = off
    float top_p;               // 1 = off
    float repetition_penalty;  // 1 = off (HF: positive logits / penalty, negative * penalty, over prompt + output)
    uint64_t seed;             // sampling is a pure function of (seed, logits): each prompt gets its own stream
    int num_beams;             // 1 = no beam search; > 1: beam search (temperature, top-k, top-p ignored, as HF)
    bool beam_search;          // run the beam-search loop even with num_beams == 1 (it then equals greedy)
    float length_penalty;      // 1.0: a finished beam scores sum_logprobs / generated_len ^ length_penalty
    bool early_stopping;       // true: a prompt's beam search ends once num_beams hypotheses finished;
                               // false: it runs until no running beam can beat the finished ones (HF's heuristic)
    int eos_id;                // stop token, not part of the output text; GEN_EOS_NONE (-1) = none;
                               //   GEN_EOS_DEFAULT (-2): the tokenizer's eos, else the model's eos_token_id
    int n_extra_eos;           // more stop tokens, each ending generation like eos_id (e.g. Llama 3's
    int32_t extra_eos[8];      //   <|eot_id|>; generation_config.json may list several eos_token_id)
    const char *const *stop;   // stop strings: generation ends when the text contains one; the text
    int n_stop;                //   is cut before it (needs a tokenizer)
    bool template_bos;         // generate_text: the prompts are chat-template renderings, which write
                               //   their own bos (none is added)
} GenParams;

enum { GEN_EOS_NONE = -1, GEN_EOS_DEFAULT = -2 };
// The defaults above; eos_id = GEN_EOS_DEFAULT.
void gen_params_default(GenParams *p);
// eos_token_id of the model folder's generation_config.json (a number, or a list: the first is eos_id,
// the rest extra_eos), when the folder has one.
void gen_params_read_eos(const char *model_dir, GenParams *p);

typedef struct { uint64_t s[4]; } GenRng;  // xoshiro256**
void gen_rng_seed(GenRng *r, uint64_t seed);
double gen_rng_uniform(GenRng *r);        // [0, 1)

// Chooses the next token from logits [V] (modified in place): repetition penalty over the
// `history` tokens, then greedy argmax when temperature is 0, else temperature, top-k, top-p
// (in HF's order) and a draw from rng. `work` is scratch of at least 2*V floats + V ints
// (gen_sample_work_size bytes); `seen` is V bytes of zeros, returned as zeros.
size_t gen_sample_work_size(int V);
// Greedy: the index of the first maximum of x [V].
int gen_argmax(const float *x, int V);
// Whether gen_sample is a plain argmax for p (no sampling, no repetition penalty): then
// kv_forward_greedy can choose the tokens.
bool gen_is_plain_greedy(const GenParams *p);
int gen_sample(float *logits, int V, const GenParams *p, const int32_t *history, int n_history, GenRng *rng,
               void *work, uint8_t *seen);
// HF's repetition penalty on logits [V] for the distinct tokens of a history given in two parts
// (history, then more: beam search keeps the prompt and a beam's tokens apart; either may be empty;
// seen as above).
void gen_repetition_penalty(float *logits, int V, float penalty, const int32_t *history, int n_history, const int32_t *more, int n_more,
                            uint8_t *seen);
// Whether kv_forward_sample can draw p's tokens on the cache's device: a GPU cache, no repetition
// penalty (the device does not keep the history). The draw is gpu.h's GpuSampling: HF's warpers, a
// counter-based random number of (seed, position) instead of the host's xoshiro stream.
bool kv_samples_on_device(const KVCache *kv, const GenParams *p);
// kv_forward choosing each row's next token on the device by p (greedy or sampled), into next [n_rows].
int kv_forward_sample(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, const GenParams *p, int32_t *next);
// In-place log-softmax of x [V] (beam search scores).
void gen_log_softmax(float *x, int V);

// ---- generation (generate.c) ----

typedef enum { GEN_FINISH_LENGTH, GEN_FINISH_EOS, GEN_FINISH_STOP } GenFinish;

typedef struct {
    int32_t *ids;              // generated tokens (not the prompt, not the EOS)
    int n_ids;
    char *text;                // their text, cut before a stop string (NULL without a tokenizer),
    size_t text_len;           //   NUL-terminated; it may hold NUL bytes: read text_len bytes
    GenFinish finish;
    double score;              // beam search: the winning hypothesis' length-normalised log-prob
} GenResult;
void gen_result_free(GenResult *r);

// Streaming: called with each new piece of a prompt's text (valid UTF-8, never part of a stop
// string), in order; then once with piece NULL when that prompt is done. Pieces of different
// prompts interleave. Beam search reports the whole text once at the end.
typedef void (*GenStreamFn)(void *user, int index, const char *piece, size_t len);

// Generates a continuation of each of n prompts (token ids), all as one batch (n * num_beams
// cache slots). tok may be NULL: then no text, no stop strings, no streaming. results[n] are
// filled (gen_result_free each). The model runs in inference mode (no dropout); an attached
// adapter applies as it is (live, or merged by adapters_merge beforehand).
int generate(Model *m, const Tokenizer *tok, const int32_t *const *prompts, const int *prompt_lens, int n,
             const GenParams *p, GenStreamFn stream, void *user, GenResult *results);

// The same from text: encodes each prompt, lens[i] bytes (lens NULL: C strings), with bos when the
// tokenizer adds one (and p->template_bos is off); an empty prompt becomes bos, or the model's bos_token_id.
int generate_text(Model *m, const Tokenizer *tok, const char *const *prompts, const size_t *lens, int n, const GenParams *p,
                  GenStreamFn stream, void *user, GenResult *results);
