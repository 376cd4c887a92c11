// test_generate.c: the KV-cache forward against the training forward, live vs merged adapters,
// sampling, beam search, stop strings and streaming, on tiny random models.
#include "test.h"
#include "adapter.h"
#include "generate.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

static ModelConfig tiny_gpt2(int vocab) {
    ModelConfig c = {0};
    c.arch = ARCH_GPT2;
    strcpy(c.model_type, "gpt2");
    c.vocab_size = vocab;
    c.n_layer = 2;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_kv_head = 4;
    c.head_dim = 8;
    c.n_inner = 128;
    c.n_positions = 64;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = true;
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.bos_token_id = c.eos_token_id = vocab - 1;
    return c;
}

static ModelConfig tiny_llama(int window) {
    ModelConfig c = {0};
    c.arch = ARCH_LLAMA;
    strcpy(c.model_type, window ? "mistral" : "llama");
    c.vocab_size = 64;
    c.n_layer = 2;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_kv_head = 2;  // GQA
    c.head_dim = 8;
    c.n_inner = 48;
    c.n_positions = 128;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_type = ROPE_DEFAULT;
    c.sliding_window = window;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    return c;
}

// Random weights with std 0.02 give near-uniform attention and logits; scale them up so that
// positions and tokens matter (and greedy paths are not decided by rounding).
static Model *tiny_model(const ModelConfig *c, uint64_t seed) {
    Model *m = model_create_random(c, seed);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 2)
            for (long j = 0; j < m->params[i].numel; j++) m->params[i].w[j] *= 8.0f;
    return m;
}

static void random_ids(int32_t *ids, int n, int V, uint64_t seed) {
    GenRng r;
    gen_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(gen_rng_uniform(&r) * V);
}

static double max_abs(const float *x, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

// Feeds two sequences into the cache in uneven chunks (prefill and decode mixed in one call,
// sometimes only the last logits) and returns the largest relative difference from the full
// forward's logits at the same positions.
static double cached_vs_full(Model *m, int T) {
    int V = m->cfg.vocab_size, B = 2;
    int32_t *ids = xmalloc(sizeof(int32_t) * B * T);
    random_ids(ids, B * T, V, 7);
    if (isnan(model_forward(m, ids, NULL, B, T))) { free(ids); return INFINITY; }
    float *full = xmalloc(sizeof(float) * (size_t)B * T * V);
    memcpy(full, m->act.logits, sizeof(float) * (size_t)B * T * V);
    double scale = max_abs(full, (long)B * T * V), worst = 0;
    static const int chunks[2][8] = {{5, 1, 1, 2, 1, 1, 1, 100}, {3, 1, 1, 1, 4, 1, 1, 100}};
    KVCache *kv = kv_cache_new(m, 3, T);  // slot 2 unused: rows need not be slots 0..n-1
    float *logits = xmalloc(sizeof(float) * (size_t)B * T * V);
    int done[2] = {0, 0};
    for (int step = 0; done[0] < T || done[1] < T; step++) {
        KVRow rows[2];
        int32_t call_ids[2 * 64];
        int nr = 0, ni = 0, start[2];
        for (int b = 1; b >= 0; b--) {  // slot order differs from row order
            int n = chunks[b][step < 8 ? step : 7];
            if (n > T - done[b]) n = T - done[b];
            if (n <= 0) continue;
            rows[nr] = (KVRow){b == 0 ? 2 : 0, n};
            start[nr++] = b;
            memcpy(call_ids + ni, ids + b * T + done[b], sizeof(int32_t) * n);
            ni += n;
        }
        bool all = step % 2 == 0;
        if (kv_forward(m, kv, rows, nr, call_ids, logits, all)) { worst = INFINITY; break; }
        for (int r = 0, off = 0; r < nr; r++) {
            int b = start[r], n = rows[r].n;
            for (int j = all ? 0 : n - 1; j < n; j++, off++) {
                const float *ref = full + ((long)b * T + done[b] + j) * V, *got = logits + (long)off * V;
                for (int v = 0; v < V; v++) {
                    double d = fabs((double)ref[v] - got[v]) / scale;
                    if (d > worst) worst = d;
                }
            }
            done[b] += n;
        }
    }
    kv_cache_free(kv);
    free(logits);
    free(full);
    free(ids);
    if (getenv("PEFT_TEST_VERBOSE")) fprintf(stderr, "  cached vs full: max relative difference %.3g\n", worst);
    return worst;
}

TEST(generate_cached_logits_gpt2) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 1);
    double err = cached_vs_full(m, 12);
    model_free(m);
    CHECK_MSG(err <= 1e-5, "max relative difference %g", err);
}

TEST(generate_cached_logits_llama_gqa) {
    ModelConfig c = tiny_llama(0);
    Model *m = tiny_model(&c, 2);
    double err = cached_vs_full(m, 12);
    model_free(m);
    CHECK_MSG(err <= 1e-5, "max relative difference %g", err);
}

TEST(generate_cached_logits_sliding_window) {
    ModelConfig c = tiny_llama(4);
    Model *m = tiny_model(&c, 3);
    double err = cached_vs_full(m, 16);
    CHECK_MSG(err <= 1e-5, "max relative difference %g", err);
    // The window really is in effect: without it, positions past the window change.
    int32_t ids[16];
    random_ids(ids, 16, c.vocab_size, 7);
    model_forward(m, ids, NULL, 1, 16);
    float *windowed = xmalloc(sizeof(float) * 16 * c.vocab_size);
    memcpy(windowed, m->act.logits, sizeof(float) * 16 * c.vocab_size);
    m->cfg.sliding_window = 0;
    model_forward(m, ids, NULL, 1, 16);
    double early = 0, late = 0;
    for (int t = 0; t < 16; t++)
        for (int v = 0; v < c.vocab_size; v++) {
            double d = fabs(windowed[t * c.vocab_size + v] - m->act.logits[t * c.vocab_size + v]);
            if (t < 4 && d > early) early = d;
            if (t >= 4 && d > late) late = d;
        }
    free(windowed);
    model_free(m);
    CHECK_MSG(early == 0 && late > 1e-4, "window: diff inside %g, beyond %g", early, late);
}

// kv_forward_greedy: each row's argmax of the logits kv_forward gives for the same calls (two caches
// fed alike: a prefill of three rows, then decode steps of the chosen tokens).
TEST(generate_kv_forward_greedy_is_argmax) {
    ModelConfig c = tiny_llama(0);
    Model *m = tiny_model(&c, 4);
    int V = c.vocab_size;
    KVCache *a = kv_cache_new(m, 3, 16), *b = kv_cache_new(m, 3, 16);
    float logits[3 * 64];
    int32_t ids[12], next[3];
    random_ids(ids, 12, V, 5);
    KVRow rows[3] = {{0, 4}, {1, 1}, {2, 7}};
    int same = 0, total = 0;
    for (int step = 0; step < 5; step++) {
        if (kv_forward(m, a, rows, 3, ids, logits, false) || kv_forward_greedy(m, b, rows, 3, ids, next)) break;
        for (int r = 0; r < 3; r++, total++) {
            same += next[r] == gen_argmax(logits + r * V, V);
            rows[r].n = 1;
            ids[r] = next[r];
        }
    }
    kv_cache_free(a);
    kv_cache_free(b);
    model_free(m);
    CHECK_MSG(total == 15 && same == total, "%d of %d rows equal", same, total);
}

TEST(generate_kv_forward_errors) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 1);
    CHECK(kv_cache_new(m, 1, 65) == NULL);  // beyond n_positions
    KVCache *kv = kv_cache_new(m, 2, 4);
    float logits[2 * 64];
    int32_t ids[6] = {1, 2, 3, 4, 5, 6};
    KVRow too_long = {0, 5}, dup[2] = {{1, 1}, {1, 1}}, bad_slot = {2, 1};
    int32_t bad_id = 64;
    KVRow one = {0, 1};
    bool ok = kv_forward(m, kv, &too_long, 1, ids, logits, false) != 0 && kv_forward(m, kv, dup, 2, ids, logits, false) != 0 &&
              kv_forward(m, kv, &bad_slot, 1, ids, logits, false) != 0 && kv_forward(m, kv, &one, 1, &bad_id, logits, false) != 0 &&
              kv_cache_len(kv, 0) == 0 && kv_cache_len(kv, 1) == 0;
    // Copy and truncate: a copied slot continues exactly like the original.
    KVRow pre = {0, 3};
    ok = ok && !kv_forward(m, kv, &pre, 1, ids, logits, false);
    kv_cache_copy(kv, 1, 0);
    KVRow both[2] = {{0, 1}, {1, 1}};
    int32_t next[2] = {9, 9};
    ok = ok && !kv_forward(m, kv, both, 2, next, logits, false) && !memcmp(logits, logits + 64, sizeof(float) * 64);
    kv_cache_truncate(kv, 1, 2);
    ok = ok && kv_cache_len(kv, 1) == 2;
    kv_cache_free(kv);
    model_free(m);
    CHECK(ok);
}

static int greedy(Model *m, const int32_t *prompt, int plen, int max_new, int32_t *out) {
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = max_new;
    p.eos_id = GEN_EOS_NONE;
    GenResult r;
    if (generate(m, NULL, &prompt, &plen, 1, &p, NULL, NULL, &r)) return -1;
    int n = r.n_ids;
    memcpy(out, r.ids, sizeof(int32_t) * n);
    gen_result_free(&r);
    return n;
}

static void randomize_adapter(Model *m, uint64_t seed) {
    AdapterSet *set = m->adapters;
    GenRng r;
    gen_rng_seed(&r, seed);
    for (int i = 0; i < set->n_params; i++)
        for (long j = 0; j < set->params[i]->numel; j++) set->params[i]->w[j] += (float)(gen_rng_uniform(&r) - 0.5) * 0.5f;
}

// Greedy output and prompt logits with the adapter live, then merged.
static void merged_vs_live(int *failed_, Model *m, MethodId type, const char *targets, bool fan_in_fan_out) {
    int32_t prompt[5] = {3, 14, 15, 9, 2}, base[24], live[24], merged[24];
    int V = m->cfg.vocab_size;
    float *lb = xmalloc(sizeof(float) * 5 * V), *ll = xmalloc(sizeof(float) * 5 * V), *lm = xmalloc(sizeof(float) * 5 * V);
    KVRow row = {0, 5};
    KVCache *kv = kv_cache_new(m, 1, 5);
    int nb = greedy(m, prompt, 5, 24, base);
    kv_forward(m, kv, &row, 1, prompt, lb, true);
    AdapterConfig cfg;
    adapter_config_defaults(&cfg, type);
    cfg.r = type == METHOD_VERA ? 8 : 4;
    adapter_config_set_targets(&cfg, targets);
    cfg.fan_in_fan_out = fan_in_fan_out;
    int rc = adapters_attach(m, &cfg, 5);
    adapter_config_free(&cfg);
    CHECK_MSG(rc == 0, "%s", peft_last_error());
    randomize_adapter(m, 11);
    int nl = greedy(m, prompt, 5, 24, live);
    kv_cache_reset(kv, 0);
    kv_forward(m, kv, &row, 1, prompt, ll, true);
    adapters_merge(m);
    int nm = greedy(m, prompt, 5, 24, merged);
    kv_cache_reset(kv, 0);
    kv_forward(m, kv, &row, 1, prompt, lm, true);
    double scale = max_abs(ll, 5L * V), d_live_merged = 0, d_base_live = 0;
    for (long i = 0; i < 5L * V; i++) {
        if (fabs(ll[i] - lm[i]) > d_live_merged) d_live_merged = fabs(ll[i] - lm[i]);
        if (fabs(ll[i] - lb[i]) > d_base_live) d_base_live = fabs(ll[i] - lb[i]);
    }
    kv_cache_free(kv);
    free(lb);
    free(ll);
    free(lm);
    CHECK(nb == 24 && nl == 24 && nm == 24);
    CHECK_MSG(d_base_live > 1e-2 * scale, "the adapter does not change the logits (%g)", d_base_live);
    CHECK_MSG(d_live_merged <= 1e-4 * scale, "live vs merged logits differ by %g (scale %g)", d_live_merged, scale);
    CHECK_MSG(!memcmp(live, merged, sizeof live), "greedy output differs between live and merged adapters");
}

TEST(generate_lora_merged_equals_live_gpt2) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 4);
    merged_vs_live(failed_, m, METHOD_LORA, "c_attn,c_proj,c_fc", true);
    model_free(m);
}

TEST(generate_lora_merged_equals_live_llama) {
    ModelConfig c = tiny_llama(0);
    Model *m = tiny_model(&c, 5);
    merged_vs_live(failed_, m, METHOD_LORA, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", false);
    model_free(m);
}

TEST(generate_vera_merged_equals_live_gpt2) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 6);
    merged_vs_live(failed_, m, METHOD_VERA, "c_attn", true);
    model_free(m);
}

// Live VeRA keeps each module's diag(lambda_b) B between calls (vera.c): after its vectors change in
// place (as an optimizer step changes them), the live logits still equal the merged adapter's.
TEST(generate_vera_live_follows_changed_lambdas) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 6);
    AdapterConfig cfg;
    adapter_config_defaults(&cfg, METHOD_VERA);
    cfg.r = 8;
    adapter_config_set_targets(&cfg, "c_attn,c_fc");
    cfg.fan_in_fan_out = true;
    int rc = adapters_attach(m, &cfg, 5);
    adapter_config_free(&cfg);
    CHECK_MSG(rc == 0, "%s", peft_last_error());
    int32_t prompt[5] = {3, 14, 15, 9, 2};
    int V = c.vocab_size;
    float *before = xmalloc(sizeof(float) * 5 * V), *live = xmalloc(sizeof(float) * 5 * V), *merged = xmalloc(sizeof(float) * 5 * V);
    KVRow row = {0, 5};
    KVCache *kv = kv_cache_new(m, 1, 5);
    randomize_adapter(m, 11);
    kv_forward(m, kv, &row, 1, prompt, before, true);
    randomize_adapter(m, 12);
    kv_cache_reset(kv, 0);
    kv_forward(m, kv, &row, 1, prompt, live, true);
    adapters_merge(m);
    kv_cache_reset(kv, 0);
    kv_forward(m, kv, &row, 1, prompt, merged, true);
    double scale = max_abs(merged, 5L * V), d_live = 0, d_before = 0;
    for (long i = 0; i < 5L * V; i++) {
        d_live = fmax(d_live, fabs(live[i] - merged[i]));
        d_before = fmax(d_before, fabs(before[i] - merged[i]));
    }
    kv_cache_free(kv);
    free(before);
    free(live);
    free(merged);
    model_free(m);
    CHECK_MSG(d_before > 1e-2 * scale, "the change does not change the logits (%g)", d_before);
    CHECK_MSG(d_live <= 1e-4 * scale, "live logits after the change differ from merged by %g (scale %g)", d_live, scale);
}

// A batch of prompts of different lengths gives each prompt what it gets alone.
TEST(generate_batch_equals_single) {
    ModelConfig c = tiny_llama(0);
    Model *m = tiny_model(&c, 7);
    int32_t a[3] = {5, 6, 7}, b[7] = {9, 8, 7, 6, 5, 4, 3}, cc[1] = {1};
    const int32_t *prompts[3] = {a, b, cc};
    int lens[3] = {3, 7, 1};
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = 16;
    p.eos_id = GEN_EOS_NONE;
    GenResult batch[3];
    CHECK(generate(m, NULL, prompts, lens, 3, &p, NULL, NULL, batch) == 0);
    bool same = true;
    for (int i = 0; i < 3; i++) {
        int32_t alone[16];
        int n = greedy(m, prompts[i], lens[i], 16, alone);
        same = same && n == batch[i].n_ids && !memcmp(alone, batch[i].ids, sizeof(int32_t) * n);
        gen_result_free(&batch[i]);
    }
    model_free(m);
    CHECK(same);
}

static int sample_run(Model *m, uint64_t seed, int32_t *out) {
    int32_t prompt[4] = {10, 20, 30, 40};
    const int32_t *pp = prompt;
    int plen = 4;
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = 32;
    p.eos_id = GEN_EOS_NONE;
    p.temperature = 1.5f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.repetition_penalty = 1.3f;
    p.seed = seed;
    GenResult r;
    if (generate(m, NULL, &pp, &plen, 1, &p, NULL, NULL, &r)) return -1;
    int n = r.n_ids;
    memcpy(out, r.ids, sizeof(int32_t) * n);
    gen_result_free(&r);
    return n;
}

TEST(generate_sampling_is_deterministic) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 8);
    int32_t a[32], b[32], d[32];
    int na = sample_run(m, 42, a), nb = sample_run(m, 42, b), nd = sample_run(m, 43, d);
    model_free(m);
    CHECK(na == 32 && nb == 32 && nd == 32);
    CHECK_MSG(!memcmp(a, b, sizeof a), "same seed, different samples");
    CHECK_MSG(memcmp(a, d, sizeof a), "different seeds, same samples");
}

TEST(generate_sampler_semantics) {
    float x[3] = {2, -2, 1};
    int32_t hist[3] = {0, 1, 0};
    uint8_t seen[3] = {0};
    gen_repetition_penalty(x, 3, 2.0f, hist, 3, NULL, 0, seen);
    CHECK(x[0] == 1 && x[1] == -4 && x[2] == 1 && !seen[0] && !seen[1]);
    // a history in two parts (beam search: prompt, beam tokens): a token in both is penalised once
    float y[3] = {2, -2, 1};
    int32_t prompt[1] = {0}, beam[2] = {0, 1};
    gen_repetition_penalty(y, 3, 2.0f, prompt, 1, beam, 2, seen);
    CHECK(y[0] == 1 && y[1] == -4 && y[2] == 1 && !seen[0] && !seen[1]);
    // top-k 1 and a tiny top-p are greedy; top-k 2 never draws the third token.
    enum { V = 5 };
    float logits[V] = {0.1f, 3.0f, 2.9f, -1.0f, 0.5f}, l[V];
    GenParams p;
    gen_params_default(&p);
    p.temperature = 1.0f;
    void *work = xmalloc(gen_sample_work_size(V));
    uint8_t s[V] = {0};
    GenRng r;
    gen_rng_seed(&r, 1);
    bool ok = true;
    int counts[V] = {0};
    for (int i = 0; i < 2000; i++) {
        memcpy(l, logits, sizeof l);
        p.top_k = 1; p.top_p = 1;
        ok = ok && gen_sample(l, V, &p, NULL, 0, &r, work, s) == 1;
        memcpy(l, logits, sizeof l);
        p.top_k = 0; p.top_p = 0.01f;
        ok = ok && gen_sample(l, V, &p, NULL, 0, &r, work, s) == 1;
        memcpy(l, logits, sizeof l);
        p.top_k = 2; p.top_p = 1;
        counts[gen_sample(l, V, &p, NULL, 0, &r, work, s)]++;
    }
    free(work);
    CHECK(ok);
    // Two tokens of logits 3.0 and 2.9: about 52.5% / 47.5%.
    CHECK_MSG(counts[1] + counts[2] == 2000 && counts[1] > 950 && counts[1] < 1150, "top-k counts %d %d", counts[1], counts[2]);
}

TEST(generate_beam1_equals_greedy) {
    ModelConfig c = tiny_llama(0);
    Model *m = tiny_model(&c, 9);
    int32_t prompt[3] = {1, 17, 33}, g[20];
    const int32_t *pp = prompt;
    int plen = 3;
    int ng = greedy(m, prompt, 3, 20, g);
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = 20;
    p.eos_id = GEN_EOS_NONE;
    p.beam_search = true;
    GenResult r;
    CHECK(generate(m, NULL, &pp, &plen, 1, &p, NULL, NULL, &r) == 0);
    bool same = ng == r.n_ids && !memcmp(g, r.ids, sizeof(int32_t) * ng);
    gen_result_free(&r);
    // With an EOS that greedy produces, both stop there.
    int eos = g[5];
    p.eos_id = eos;
    p.beam_search = false;
    GenResult a, b;
    CHECK(generate(m, NULL, &pp, &plen, 1, &p, NULL, NULL, &a) == 0);
    p.beam_search = true;
    CHECK(generate(m, NULL, &pp, &plen, 1, &p, NULL, NULL, &b) == 0);
    bool same_eos = a.n_ids == b.n_ids && !memcmp(a.ids, b.ids, sizeof(int32_t) * a.n_ids) && a.finish == GEN_FINISH_EOS &&
                    b.finish == GEN_FINISH_EOS;
    gen_result_free(&a);
    gen_result_free(&b);
    model_free(m);
    CHECK(same);
    CHECK(same_eos);
}

// The winning beam's score is its log-probability under the full forward / length^penalty.
TEST(generate_beam_search_score) {
    ModelConfig c = tiny_gpt2(64);
    Model *m = tiny_model(&c, 10);
    int32_t prompt[3] = {4, 8, 15};
    const int32_t *pp = prompt;
    int plen = 3, V = c.vocab_size;
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = 8;
    p.eos_id = GEN_EOS_NONE;
    p.num_beams = 4;
    p.length_penalty = 0.8f;
    GenResult r;
    CHECK(generate(m, NULL, &pp, &plen, 1, &p, NULL, NULL, &r) == 0);
    int T = plen + r.n_ids;
    int32_t seq[16];
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + plen, r.ids, sizeof(int32_t) * r.n_ids);
    model_forward(m, seq, NULL, 1, T);
    double sum = 0;
    for (int t = plen - 1; t < T - 1; t++) {
        float row[64];
        memcpy(row, m->act.logits + (long)t * V, sizeof row);
        gen_log_softmax(row, V);
        sum += row[seq[t + 1]];
    }
    double want = sum / pow(r.n_ids, 0.8);
    // Greedy's sequence scores no better than the beam's.
    int32_t g[8];
    greedy(m, prompt, 3, 8, g);
    memcpy(seq + plen, g, sizeof g);
    model_forward(m, seq, NULL, 1, T);
    double gsum = 0;
    for (int t = plen - 1; t < T - 1; t++) {
        float row[64];
        memcpy(row, m->act.logits + (long)t * V, sizeof row);
        gen_log_softmax(row, V);
        gsum += row[seq[t + 1]];
    }
    double score = r.score;
    int n = r.n_ids;
    gen_result_free(&r);
    model_free(m);
    CHECK(n == 8);
    CHECK_MSG(fabs(score - want) <= 1e-4 * fabs(want), "beam score %g, recomputed %g", score, want);
    CHECK_MSG(gsum / pow(8, 0.8) <= score + 1e-5, "greedy %g beats beam %g", gsum / pow(8, 0.8), score);
}

typedef struct { char text[4096]; size_t len; int ends; } Stream;

static void collect(void *user, int index, const char *piece, size_t len) {
    Stream *s = (Stream *)user + index;
    if (!piece) { s->ends++; return; }
    if (s->len + len < sizeof s->text) { memcpy(s->text + s->len, piece, len); s->len += len; }
}

// Text, stop strings and streaming with GPT-2's real tokenizer (skipped without the shared fixtures).
TEST(generate_stop_strings_and_streaming) {
    const char *fx = shared_fixtures_dir();
    if (!fx) SKIP(NO_SHARED_FIXTURES);
    char *vocab = xasprintf("%s/tokenizer-gpt2/encoder.json", fx), *merges = xasprintf("%s/tokenizer-gpt2/vocab.bpe", fx);
    Tokenizer *tok = tokenizer_load_gpt2_files(vocab, merges);
    free(vocab);
    free(merges);
    CHECK_MSG(tok != NULL, "%s", peft_last_error());
    ModelConfig c = tiny_gpt2(50257);
    c.n_embd = 16;
    c.n_head = c.n_kv_head = 2;
    c.n_inner = 32;
    Model *m = model_create_random(&c, 12);
    const char *prompts[2] = {"Hello, world", "The"};
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = 24;
    p.eos_id = GEN_EOS_NONE;
    GenResult full[2];
    Stream st[2] = {0};
    CHECK(generate_text(m, tok, prompts, NULL, 2, &p, collect, st, full) == 0);
    bool stream_ok = st[0].ends == 1 && st[1].ends == 1 && st[0].len == strlen(full[0].text) && !memcmp(st[0].text, full[0].text, st[0].len) &&
                     st[1].len == strlen(full[1].text) && !memcmp(st[1].text, full[1].text, st[1].len);
    // A stop string from the middle of the second output, at its first occurrence: the text
    // ends right before it; the first prompt's text holds no stop string.
    const char *t1 = full[1].text;
    size_t L = strlen(t1), at = 0;
    char stop[4] = {0};
    for (size_t i = L / 3; !at && i + 3 <= L; i++) {
        memcpy(stop, t1 + i, 3);
        if ((unsigned char)stop[0] < 0x80 && (unsigned char)stop[1] < 0x80 && (unsigned char)stop[2] < 0x80 && strstr(t1, stop) == t1 + i) at = i;
    }
    bool have_stop = at > 0;
    const char *stops[2] = {"never appears \x01", stop};
    p.stop = stops;
    p.n_stop = 2;
    GenResult cut[2];
    Stream st2[2] = {0};
    int rc = have_stop ? generate_text(m, tok, prompts, NULL, 2, &p, collect, st2, cut) : -1;
    bool cut_ok = rc == 0 && cut[1].finish == GEN_FINISH_STOP && strlen(cut[1].text) == at && !strncmp(cut[1].text, t1, at) &&
                  st2[1].len == at && !memcmp(st2[1].text, t1, at) && st2[1].ends == 1 &&
                  (strstr(full[0].text, stop) || (cut[0].finish == GEN_FINISH_LENGTH && !strcmp(cut[0].text, full[0].text)));
    // Beam search honours stop strings too.
    p.num_beams = 3;
    GenResult beam[2];
    Stream st3[2] = {0};
    int rc2 = have_stop ? generate_text(m, tok, prompts, NULL, 2, &p, collect, st3, beam) : -1;
    bool beam_ok = rc2 == 0 && !strstr(beam[0].text, stop) && !strstr(beam[1].text, stop) && st3[0].ends == 1 &&
                   st3[0].len == strlen(beam[0].text);
    for (int i = 0; i < 2; i++) {
        gen_result_free(&full[i]);
        if (rc == 0) gen_result_free(&cut[i]);
        if (rc2 == 0) gen_result_free(&beam[i]);
    }
    model_free(m);
    tokenizer_free(tok);
    CHECK(stream_ok);
    CHECK_MSG(have_stop, "output too short");
    CHECK(cut_ok);
    CHECK(beam_ok);
}

// ---- bf16 weights (model_keep_bf16) ----

// A tiny model whose weights are exactly bf16 (as loaded from bf16 safetensors), kept in bf16 with the
// fp32 copies dropped when keep.
static Model *bf16_model(const ModelConfig *c, uint64_t seed, bool keep) {
    Model *m = tiny_model(c, seed);
    model_round_bf16(m);
    if (keep) model_keep_bf16(m, true);
    return m;
}

// Every linear and the head in bf16, their fp32 copies gone but the tied embedding's; nothing of a
// model not exactly bf16; a weight that is not exact stays fp32; PEFT_BF16_WEIGHTS=0 turns it off.
TEST(generate_bf16_weights_only_when_exact) {
    ModelConfig g = tiny_gpt2(64), l = tiny_llama(0);
    Model *m = tiny_model(&g, 1);
    CHECK(model_keep_bf16(m, true) == 0 && m->linears[0].weight->w);
    model_free(m);
    m = bf16_model(&g, 1, false);
    m->linears[1].weight->w[5] += 1e-6f;
    CHECK(model_keep_bf16(m, true) == m->n_linears);  // the other linears and the head
    CHECK(m->linears[1].weight->w && !m->linears[1].weight->w16 && !m->linears[0].weight->w && m->linears[0].weight->w16);
    CHECK(m->lm_head == m->wte && m->wte->w && m->wte->w16);
    model_free(m);
    m = bf16_model(&l, 1, true);
    CHECK(!m->lm_head->w && m->lm_head->w16 && m->wte->w && !m->wte->w16);
    model_free(m);
    setenv("PEFT_BF16_WEIGHTS", "0", 1);
    m = bf16_model(&l, 1, false);
    CHECK(model_keep_bf16(m, true) == 0);
    unsetenv("PEFT_BF16_WEIGHTS");
    model_free(m);
}

// The cached decode (a few rows: bf16 matrix-vector products) against the full forward (many rows:
// blocks widened for sgemm), both on the bf16 weights.
TEST(generate_bf16_weights_cached_logits) {
    ModelConfig g = tiny_gpt2(64), l = tiny_llama(0);
    Model *m = bf16_model(&g, 1, true);
    double err = cached_vs_full(m, 12);
    CHECK_MSG(err < 1e-5, "GPT-2: cached vs full relative difference %g", err);
    model_free(m);
    m = bf16_model(&l, 2, true);
    err = cached_vs_full(m, 12);
    CHECK_MSG(err < 1e-5, "Llama: cached vs full relative difference %g", err);
    model_free(m);
}

// The same model in fp32 and with its weights in bf16: prompt logits equal to fp32 rounding, and the
// same greedy tokens; with a LoRA live (on the bf16 base) and a DoRA live (its weight norm read from
// the bf16 weights, a Conv1D's transposed) too.
static void bf16_vs_fp32(int *failed_, const ModelConfig *c, MethodId type, const char *targets) {
    Model *a = bf16_model(c, 3, false), *b = bf16_model(c, 3, false);
    for (int k = 0; targets && k < 2; k++) {
        AdapterConfig cfg;
        adapter_config_defaults(&cfg, type);
        cfg.r = 4;
        adapter_config_set_targets(&cfg, targets);
        cfg.fan_in_fan_out = c->arch == ARCH_GPT2;
        CHECK_MSG(adapters_attach(k ? b : a, &cfg, 5) == 0, "%s", peft_last_error());
        adapter_config_free(&cfg);
        randomize_adapter(k ? b : a, 11);
    }
    CHECK(model_keep_bf16(b, true) > 0);
    int32_t prompt[5] = {3, 14, 15, 9, 2}, ta[24], tb[24];
    int V = c->vocab_size;
    float *la = xmalloc(sizeof(float) * 5 * V), *lb = xmalloc(sizeof(float) * 5 * V);
    KVRow row = {0, 5};
    KVCache *ka = kv_cache_new(a, 1, 5), *kb = kv_cache_new(b, 1, 5);
    CHECK(!kv_forward(a, ka, &row, 1, prompt, la, true) && !kv_forward(b, kb, &row, 1, prompt, lb, true));
    double scale = max_abs(la, 5L * V), d = 0;
    for (long i = 0; i < 5L * V; i++) if (fabs(la[i] - lb[i]) > d) d = fabs(la[i] - lb[i]);
    CHECK_MSG(d <= 1e-5 * scale, "fp32 vs bf16 weights: logits differ by %g (scale %g)", d, scale);
    CHECK(greedy(a, prompt, 5, 24, ta) == 24 && greedy(b, prompt, 5, 24, tb) == 24);
    CHECK_MSG(!memcmp(ta, tb, sizeof ta), "greedy output differs between fp32 and bf16 weights");
    kv_cache_free(ka);
    kv_cache_free(kb);
    free(la);
    free(lb);
    model_free(a);
    model_free(b);
}

TEST(generate_bf16_weights_same_greedy_tokens) {
    ModelConfig g = tiny_gpt2(64), l = tiny_llama(0);
    bf16_vs_fp32(failed_, &g, METHOD_LORA, NULL);
    bf16_vs_fp32(failed_, &l, METHOD_LORA, NULL);
    bf16_vs_fp32(failed_, &g, METHOD_LORA, "c_attn,c_proj,c_fc");
    bf16_vs_fp32(failed_, &l, METHOD_LORA, "all-linear");
    bf16_vs_fp32(failed_, &g, METHOD_DORA, "c_attn,c_fc");
    bf16_vs_fp32(failed_, &l, METHOD_DORA, "q_proj,down_proj");
}

// Merging into bf16 weights (after model_keep_bf16) widens them back first: live and merged agree.
TEST(generate_bf16_weights_merge_after_keep) {
    ModelConfig g = tiny_gpt2(64), l = tiny_llama(0);
    Model *m = bf16_model(&g, 4, true);
    merged_vs_live(failed_, m, METHOD_LORA, "c_attn,c_proj,c_fc", true);
    CHECK(m->linears[0].weight->w && !m->linears[0].weight->w16);
    model_free(m);
    m = bf16_model(&l, 5, true);
    merged_vs_live(failed_, m, METHOD_LORA, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", false);
    model_free(m);
}
