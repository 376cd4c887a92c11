// test_serve.c: serving many adapters on one base. The mixed-row linear (m->row_adapters)
// against each adapter's own forward; detached loading; the scheduler's continuous batching
// against generate_text alone (same greedy tokens and text, whatever shares the batch); its
// limits (queue, timeout, cancel, prompt length); the adapter pool's LRU eviction; the prefix cache
// (exact, per adapter set, LRU).
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "byte_tokenizer.h"
#include "config.h"
#include "generate.h"
#include "json_bytes.h"
#include "serve.h"
#include "util.h"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void randomize_set(AdapterSet *set, uint64_t seed, float scale) {
    uint64_t st = seed;
    for (int i = 0; i < set->n_params; i++)
        for (long j = 0; j < set->params[i]->numel; j++) set->params[i]->w[j] = (float)(test_urand(&st) - 0.5) * scale;
}

static AdapterSet *new_set(Model *m, MethodId type, int r, const char *targets, uint64_t key, uint64_t seed) {
    AdapterConfig c;
    adapter_config_defaults(&c, type);
    c.r = r;
    c.alpha = 2.0f * r;
    c.prng_key = key;
    c.init_r = r;
    c.target_r = r > 1 ? r - 1 : r;
    adapter_config_set_targets(&c, targets);
    AdapterSet *set = adapters_new_detached(m, &c, seed);
    adapter_config_free(&c);
    if (set) randomize_set(set, seed * 7 + 1, 0.6f);
    return set;
}

// AdaLoRA with a rank pattern: module 0's c_attn keeps ranks 0, 2, 4 of init_r 6.
static AdapterSet *new_adalora_pruned(Model *m, const char *module, uint64_t seed) {
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_ADALORA);
    c.r = c.init_r = 6;
    c.target_r = 3;
    c.alpha = 4;
    adapter_config_set_targets(&c, "all-linear");
    c.n_rank_pattern = 1;
    c.rank_pattern = xcalloc(1, sizeof(RankPatternEntry));
    snprintf(c.rank_pattern[0].module, sizeof c.rank_pattern[0].module, "%s", module);
    c.rank_pattern[0].rank = 3;
    c.rank_pattern[0].mask = xcalloc(6, sizeof(bool));
    for (int k = 0; k < 6; k += 2) c.rank_pattern[0].mask[k] = true;
    AdapterSet *set = adapters_new_detached(m, &c, seed);
    adapter_config_free(&c);
    if (set) randomize_set(set, seed * 5 + 3, 0.6f);
    return set;
}

// Each linear of m over rows assigned to the sets (and the base) in a mixed pattern, against
// the base product plus each row's own adapter forward over all rows.
static void mixed_rows_check(int *failed_, Model *m, AdapterSet **sets, int n_sets) {
    enum { N = 25 };
    // Runs (prefill-like), scattered rows (decode-like), single rows, and base rows: set 1 has 8
    // rows in two runs and set 2 four scattered ones (gathered GEMMs), set 6 two (one by one), set 7
    // (DoRA, through its forward) a run and a scattered row.
    int pattern[N] = {1, 1, 1, 1, 0, 2, 3, 3, 4, 5, 6, 2, 2, 0, 4, 3, 6, 7, 1, 1, 1, 1, 2, 7, 7};
    uint64_t st = 99;
    AdapterSet *row_sets[N];
    for (int n = 0; n < N; n++) row_sets[n] = pattern[n] && pattern[n] <= n_sets ? sets[pattern[n] - 1] : NULL;
    for (int li = 0; li < m->n_linears; li++) {
        Linear *lin = &m->linears[li];
        if (!lin->weight) continue;
        float *x = xmalloc(sizeof(float) * N * lin->in), *y = xmalloc(sizeof(float) * N * lin->out),
              *ref = xmalloc(sizeof(float) * N * lin->out);
        for (long i = 0; i < (long)N * lin->in; i++) x[i] = (float)(test_urand(&st) * 2 - 1);
        m->row_adapters = row_sets;
        linear_forward(m, lin, x, y, N);
        m->row_adapters = NULL;
        double worst = 0;
        bool any_adapted = false;
        for (int s = -1; s < n_sets; s++) {
            linear_forward(m, lin, x, ref, N);  // base
            Adapter *a = s >= 0 ? sets[s]->by_linear[li] : NULL;
            if (a && a->r > 0) { a->method->forward(a, x, ref, N, false); any_adapted = true; }
            for (int n = 0; n < N; n++) {
                if ((s < 0 && row_sets[n]) || (s >= 0 && row_sets[n] != sets[s])) continue;
                for (int o = 0; o < lin->out; o++) {
                    double d = fabs((double)y[(long)n * lin->out + o] - ref[(long)n * lin->out + o]);
                    double tol = 1e-5 * (1 + fabs(ref[(long)n * lin->out + o]));
                    if (d / tol > worst) worst = d / tol;
                }
            }
        }
        free(x);
        free(y);
        free(ref);
        CHECK_MSG(worst <= 1.0, "%s: mixed rows differ from the per-adapter forward by %g x the tolerance", lin->module, worst);
        (void)any_adapted;
    }
}

static void mixed_rows_case(int *failed_, const char *json, const char *qkv_module) {
    Model *m = test_model_from_json(json, 3);
    CHECK(m);
    AdapterSet *sets[7] = {
        new_set(m, METHOD_LORA, 4, "all-linear", 0, 1),
        new_set(m, METHOD_LORA, 2, qkv_module, 0, 2),          // another rank, one module only
        new_set(m, METHOD_VERA, 8, "all-linear", 7, 3),
        new_set(m, METHOD_VERA, 8, "all-linear", 7, 4),        // same projections, other lambdas
        new_set(m, METHOD_VERA, 8, "all-linear", 8, 5),        // other projections: its own products
        NULL,
        new_set(m, METHOD_DORA, 3, "all-linear", 0, 6),
    };
    char module[256];
    snprintf(module, sizeof module, "%s", m->linears[0].module);
    sets[5] = new_adalora_pruned(m, module, 6);
    for (int i = 0; i < 7; i++) CHECK_MSG(sets[i], "set %d: %s", i, peft_last_error());
    CHECK(m->adapters == NULL);
    for (int i = 0; i < m->n_linears; i++) CHECK(m->linears[i].adapter == NULL);  // detached: m untouched
    CHECK(adapters_same_vera_projection(sets[2], sets[3]));
    CHECK(!adapters_same_vera_projection(sets[2], sets[4]));
    CHECK(sets[5]->by_linear[0]->r == 3);
    mixed_rows_check(failed_, m, sets, 7);
    for (int i = 0; i < 7; i++) adapter_set_free(sets[i]);
    model_free(m);
}

TEST(serve_mixed_rows_equal_per_adapter_forward_gpt2) { mixed_rows_case(failed_, TINY_GPT2_JSON, "c_attn"); }
TEST(serve_mixed_rows_equal_per_adapter_forward_llama) { mixed_rows_case(failed_, TINY_LLAMA_JSON, "q_proj"); }

// Saved with adapters_save, loaded detached: the same values, nothing attached, the model's own
// adapter left alone; a second detached load next to an attached one works.
TEST(serve_load_detached) {
    Model *m = test_model_from_json(TINY_GPT2_JSON, 4);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_VERA);
    c.r = 4;
    adapter_config_set_targets(&c, "c_attn,c_fc");
    CHECK(adapters_attach(m, &c, 1) == 0);
    adapter_config_free(&c);
    randomize_set(m->adapters, 5, 0.5f);
    char *dir = path_join(test_tmpdir(), "vera");
    CHECK(adapters_save(m, dir) == 0);
    AdapterSet *attached = m->adapters;
    AdapterSet *d = adapters_load_detached(m, dir);
    CHECK_MSG(d, "%s", peft_last_error());
    CHECK(m->adapters == attached && m->linears[0].adapter == &attached->adapters[0]);
    CHECK(d->n == attached->n && d->n_params == attached->n_params);
    for (int i = 0; i < d->n_params; i++) CHECK(!memcmp(d->params[i]->w, attached->params[i]->w, sizeof(float) * d->params[i]->numel));
    CHECK(adapters_same_vera_projection(d, attached));
    adapter_set_free(d);
    CHECK(m->adapters == attached && m->linears[0].adapter == &attached->adapters[0]);
    CHECK(adapters_load_detached(m, "/nonexistent/adapter") == NULL);
    free(dir);
    model_free(m);
}

// ---- the scheduler ----

// A GPT-2 with the byte tokenizer (weights large enough that greedy paths are not decided by
// rounding), in a folder.
static const char *const BYTE_GPT2 = "{\"model_type\":\"gpt2\",\"vocab_size\":257,\"n_embd\":32,\"n_head\":4,\"n_layer\":2,"
                                     "\"n_positions\":64,\"layer_norm_epsilon\":1e-5,\"bos_token_id\":256,\"eos_token_id\":256}";
static const char *const BYTE_LLAMA =
    "{\"model_type\":\"llama\",\"vocab_size\":257,\"hidden_size\":32,\"intermediate_size\":48,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_hidden_layers\":2,\"max_position_embeddings\":64,\"rms_norm_eps\":1e-5,"
    "\"hidden_act\":\"silu\",\"tie_word_embeddings\":false,\"bos_token_id\":256,\"eos_token_id\":256}";

static Model *byte_model_json(const char *json, const char **dir_out, uint64_t seed) {
    const char *dir = test_tmpdir();
    ModelConfig cfg;
    if (config_parse(&cfg, json, "tiny")) return NULL;
    Model *m = model_create_random(&cfg, seed);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 2)
            for (long j = 0; j < m->params[i].numel; j++) m->params[i].w[j] *= 8.0f;
    if (model_save(m, dir) || byte_tokenizer_write(dir)) { model_free(m); return NULL; }
    *dir_out = dir;
    return m;
}

static Model *byte_model(const char **dir_out, uint64_t seed) { return byte_model_json(BYTE_GPT2, dir_out, seed); }

// An adapter folder with random values (attached, saved, freed).
static char *save_random_adapter(Model *m, const char *root, const char *name, MethodId type, int r, const char *targets, uint64_t key, uint64_t seed) {
    AdapterConfig c;
    adapter_config_defaults(&c, type);
    c.r = c.init_r = r;
    c.target_r = r - 1;
    c.alpha = (float)r;
    c.prng_key = key;
    adapter_config_set_targets(&c, targets);
    int rc = adapters_attach(m, &c, seed);
    adapter_config_free(&c);
    if (rc) return NULL;
    randomize_set(m->adapters, seed, type == METHOD_VERA ? 2.0f : 0.8f);
    char *dir = path_join(root, name);
    rc = adapters_save(m, dir);
    adapters_free(m);
    if (rc) { free(dir); return NULL; }
    return dir;
}

typedef struct {
    const char *prompt;
    int adapter;      // index into the adapter folders, -1 = base
    int max_tokens;
    float temperature;
    const char *stop;
} Case;

static ServeRequest *submit_case(Scheduler *s, const Tokenizer *tok, const Case *c, AdapterSet **sets, int *status) {
    int32_t *ids = NULL;
    int k = 0;
    tokenizer_encode(tok, c->prompt, strlen(c->prompt), &ids, &k);
    int32_t *p = xmalloc(sizeof(int32_t) * (k + 1));
    int plen = 0;
    if (tokenizer_add_bos(tok) || k == 0) p[plen++] = tokenizer_bos(tok);
    memcpy(p + plen, ids, sizeof(int32_t) * k);
    plen += k;
    free(ids);
    GenParams gp;
    gen_params_default(&gp);
    gp.max_new_tokens = c->max_tokens;
    gp.temperature = c->temperature;
    gp.seed = 17;
    const char *stops[1] = {c->stop};
    if (c->stop) { gp.stop = stops; gp.n_stop = 1; }
    ServeRequest *r = serve_request_new(p, plen, &gp, c->adapter >= 0 ? sets[c->adapter] : NULL, NULL, NULL, 0);
    free(p);
    if (scheduler_submit(s, r, status)) { serve_request_unref(r); return NULL; }
    return r;
}

// Waits for the end; returns the whole text (malloc'd).
static char *wait_text(ServeRequest *r, ServeStatus *st) {
    char *all = xstrdup("");
    size_t n = 0;
    for (int i = 0; i < 2000; i++) {
        size_t len;
        char *t = serve_request_poll(r, 0.05, &len, st);
        all = xrealloc(all, n + len + 1);
        memcpy(all + n, t, len + 1);
        n += len;
        free(t);
        if (st->finish != SERVE_RUNNING) break;
    }
    return all;
}

// Requests for 5 adapters (2 LoRA, 2 VeRA with one key, AdaLoRA) and the base, 10 of them on 3
// slots, against generate_text with each adapter attached alone (the live single-adapter path).
static void scheduler_case(int *failed_, const char *json, const char *t1, const char *t2, const char *tv, const char *ta) {
    const char *dir;
    Model *m = byte_model_json(json, &dir, 21);
    CHECK(m);
    Tokenizer *tok = tokenizer_load(dir);
    CHECK_MSG(tok, "%s", peft_last_error());
    char *root = path_join(dir, "adapters");
    char *paths[5] = {
        save_random_adapter(m, root, "lora", METHOD_LORA, 4, t1, 0, 3),
        save_random_adapter(m, root, "lora2", METHOD_LORA, 8, t2, 0, 4),
        save_random_adapter(m, root, "vera1", METHOD_VERA, 16, tv, 11, 5),
        save_random_adapter(m, root, "vera2", METHOD_VERA, 16, tv, 11, 6),
        save_random_adapter(m, root, "adalora", METHOD_ADALORA, 6, ta, 0, 7),
    };
    AdapterSet *sets[5];
    for (int i = 0; i < 5; i++) {
        CHECK_MSG(paths[i], "%s", peft_last_error());
        sets[i] = adapters_load_detached(m, paths[i]);
        CHECK_MSG(sets[i], "%s", peft_last_error());
    }
    Case cases[] = {
        {"the cat", 0, 20, 0, NULL},  {"the cat", 1, 20, 0, NULL},     {"the cat", -1, 20, 0, NULL},
        {"the cat", 2, 20, 0, NULL},  {"hello world, ", 3, 30, 0, NULL}, {"", 4, 12, 0, NULL},
        {"abc", 0, 25, 0, NULL},       {"zz top", 2, 18, 0.9f, NULL},   {"q", -1, 16, 0, "x"},
        {"a longer prompt that takes a while to prefill", 1, 15, 0, NULL},
    };
    enum { NC = sizeof cases / sizeof *cases };
    // 3 slots for 10 requests: they queue, join as others leave; submitted in two waves so the
    // second joins a running batch.
    SchedulerOptions so = {.max_requests = 3, .max_len = 64, .max_queue = 16, .threads = 0};
    Scheduler *s = scheduler_new(m, tok, &so);
    CHECK_MSG(s, "%s", peft_last_error());
    ServeRequest *reqs[NC];
    int status;
    for (int i = 0; i < NC; i++) {
        if (i == 5) usleep(20000);
        reqs[i] = submit_case(s, tok, &cases[i], sets, &status);
        CHECK_MSG(reqs[i], "submit %d: %s", i, peft_last_error());
    }
    char *texts[NC];
    int32_t *ids[NC];
    int n_ids[NC];
    ServeFinish fin[NC];
    for (int i = 0; i < NC; i++) {
        ServeStatus st;
        texts[i] = wait_text(reqs[i], &st);
        fin[i] = st.finish;
        n_ids[i] = serve_request_tokens(reqs[i], &ids[i]);
        serve_request_unref(reqs[i]);
    }
    SchedulerStats ss;
    scheduler_stop(s);  // the thread has counted everything
    scheduler_stats(s, &ss);
    scheduler_free(s);
    // The same prompts alone, each adapter attached live (its own code path).
    int bad = -1;
    for (int i = 0; i < NC && bad < 0; i++) {
        const Case *c = &cases[i];
        if (c->adapter >= 0 && adapters_load(m, paths[c->adapter])) { bad = i; break; }
        GenParams gp;
        gen_params_default(&gp);
        gp.max_new_tokens = c->max_tokens;
        gp.temperature = c->temperature;
        gp.seed = 17;
        const char *stops[1] = {c->stop};
        if (c->stop) { gp.stop = stops; gp.n_stop = 1; }
        GenResult res;
        const char *pr = c->prompt;
        int rc = generate_text(m, tok, &pr, NULL, 1, &gp, NULL, NULL, &res);
        adapters_free(m);
        if (rc || fin[i] == SERVE_RUNNING || fin[i] >= SERVE_FINISH_TIMEOUT || res.n_ids != n_ids[i] ||
            memcmp(res.ids, ids[i], sizeof(int32_t) * res.n_ids) || strcmp(res.text, texts[i])) {
            fprintf(stderr, "  case %d (adapter %d): served %d tokens \"%s\", alone %d \"%s\"\n", i, c->adapter, n_ids[i], texts[i], res.n_ids,
                    res.text ? res.text : "");
            bad = i;
        }
        gen_result_free(&res);
    }
    for (int i = 0; i < NC; i++) { free(texts[i]); free(ids[i]); }
    for (int i = 0; i < 5; i++) { adapter_set_free(sets[i]); free(paths[i]); }
    free(root);
    tokenizer_free(tok);
    model_free(m);
    CHECK_MSG(bad < 0, "request %d differs from generate_text alone", bad);
    CHECK(ss.completed == NC);
    // Fewer forward calls than requests' tokens: rows of several requests shared calls.
    CHECK_MSG(ss.steps < 150, "%ld steps", ss.steps);
}

TEST(serve_scheduler_equals_generate_alone_gpt2) { scheduler_case(failed_, BYTE_GPT2, "c_attn,c_fc", "all-linear", "c_attn,c_proj", "c_attn,c_fc"); }
TEST(serve_scheduler_equals_generate_alone_llama) {
    scheduler_case(failed_, BYTE_LLAMA, "q_proj,v_proj", "all-linear", "q_proj,k_proj,v_proj,o_proj", "gate_proj,up_proj,down_proj");
}

TEST(serve_scheduler_limits) {
    const char *dir;
    Model *m = byte_model(&dir, 22);
    CHECK(m);
    Tokenizer *tok = tokenizer_load(dir);
    CHECK(tok);
    SchedulerOptions so = {.max_requests = 1, .max_len = 32, .max_queue = 1, .threads = 1};
    Scheduler *s = scheduler_new(m, tok, &so);
    CHECK(s);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++) prompt[i] = 'a' + i % 26;
    GenParams gp;
    gen_params_default(&gp);
    gp.eos_id = GEN_EOS_NONE;
    int status = 0;
    // A prompt that fills the context: 400.
    ServeRequest *r = serve_request_new(prompt, 32, &gp, NULL, NULL, NULL, 0);
    CHECK(scheduler_submit(s, r, &status) != 0 && status == 400);
    serve_request_unref(r);
    // Parameters generate() refuses: 400.
    GenParams badp = gp;
    badp.top_p = 0;
    r = serve_request_new(prompt, 4, &badp, NULL, NULL, NULL, 0);
    CHECK(scheduler_submit(s, r, &status) != 0 && status == 400);
    serve_request_unref(r);
    // A burst of 8 long requests for 1 slot and 1 queue place: some are refused (429), the
    // accepted ones complete; a cancelled one ends as cancelled.
    gp.max_new_tokens = 28;
    ServeRequest *burst[8];
    int accepted = 0, refused = 0;
    for (int i = 0; i < 8; i++) {
        burst[i] = serve_request_new(prompt, 4, &gp, NULL, NULL, NULL, 0);
        if (scheduler_submit(s, burst[i], &status) == 0) accepted++;
        else {
            CHECK(status == 429);
            refused++;
            serve_request_unref(burst[i]);
            burst[i] = NULL;
        }
    }
    CHECK(refused > 0 && accepted >= 1);
    ServeStatus st;
    ServeRequest *last = NULL;
    for (int i = 7; i >= 0 && !last; i--) last = burst[i];
    serve_request_cancel(last);
    for (int i = 0; i < 8; i++) {
        if (!burst[i]) continue;
        char *tb = wait_text(burst[i], &st);
        if (burst[i] == last) CHECK(st.finish == SERVE_FINISH_CANCELLED || st.finish == SERVE_FINISH_LENGTH);
        else CHECK(st.finish == SERVE_FINISH_LENGTH && st.n_gen == 28 && strlen(tb) > 0);
        free(tb);
        serve_request_unref(burst[i]);
    }
    // A deadline that has passed: 408; max_tokens 0: an empty text at once.
    ServeRequest *t = serve_request_new(prompt, 4, &gp, NULL, NULL, NULL, 1e-9);
    usleep(1000);
    CHECK(scheduler_submit(s, t, &status) == 0);
    free(wait_text(t, &st));
    CHECK(st.finish == SERVE_FINISH_TIMEOUT && st.status == 408);
    serve_request_unref(t);
    gp.max_new_tokens = 0;
    ServeRequest *z = serve_request_new(prompt, 4, &gp, NULL, NULL, NULL, 0);
    CHECK(scheduler_submit(s, z, &status) == 0);
    char *tz = wait_text(z, &st);
    CHECK(st.finish == SERVE_FINISH_LENGTH && st.n_gen == 0 && tz[0] == 0);
    free(tz);
    serve_request_unref(z);
    scheduler_free(s);
    tokenizer_free(tok);
    model_free(m);
}

// The prefix cache is exact as batching is: a slot that starts from a copy of another slot's first k
// keys and values, then computes the rest of the prompt, gives the logits of the whole prompt
// computed at once up to the last bits that OpenBLAS's sgemm gives a row by its place in the batch
// (which other requests in a step shift anyway).
static void prefix_copy_case(int *failed_, const char *json) {
    const char *dir;
    Model *m = byte_model_json(json, &dir, 24);
    CHECK(m);
    int32_t p[40];
    for (int i = 0; i < 40; i++) p[i] = 'a' + (i * 7) % 26;
    int V = m->cfg.vocab_size, k = 29;
    KVCache *kv = kv_cache_new(m, 3, 48);
    CHECK(kv);
    float *whole = xmalloc(sizeof(float) * V), *part = xmalloc(sizeof(float) * V), *scratch = xmalloc(sizeof(float) * V);
    KVRow a = {0, 40}, b = {1, k}, c = {2, 40 - k};
    CHECK(kv_forward(m, kv, &a, 1, p, whole, false) == 0);
    CHECK(kv_forward(m, kv, &b, 1, p, scratch, false) == 0);
    kv_cache_copy_prefix(kv, 2, 1, k);
    CHECK(kv_cache_len(kv, 2) == k);
    CHECK(kv_forward(m, kv, &c, 1, p + k, part, false) == 0);
    float worst = 0, top = 0;
    for (int i = 0; i < V; i++) {
        worst = fmaxf(worst, fabsf(whole[i] - part[i]));
        top = fmaxf(top, fabsf(whole[i]));
    }
    CHECK_MSG(worst <= 1e-5f * top, "logits differ by %g (largest %g)", worst, top);
    free(whole);
    free(part);
    free(scratch);
    kv_cache_free(kv);
    model_free(m);
}

TEST(serve_prefix_copy_exact_gpt2) { prefix_copy_case(failed_, BYTE_GPT2); }
TEST(serve_prefix_copy_exact_llama) { prefix_copy_case(failed_, BYTE_LLAMA); }

// Requests sharing a system prompt, one after another, for the base and two adapters served from a
// pool that holds one adapter at a time (so each switch frees a set and loads another): with 2
// cached prompts, their tokens (greedy and sampled) equal those without the cache, a request hits
// only a prompt of the same load of its own adapter set, and the least recently used prompt goes.
static void run_prefix_sequence(int *failed_, Model *m, const Tokenizer *tok, const char *root, int prefix_slots, int32_t **ids, int *n_ids,
                                long *hits) {
    AdapterPool *pool = adapter_pool_new(m, 1);
    char *warn = NULL;
    CHECK(adapter_pool_scan(pool, root, &warn) == 0);
    free(warn);
    SchedulerOptions so = {.max_requests = 2, .max_len = 64, .max_queue = 4, .threads = 1, .prefix_slots = prefix_slots};
    Scheduler *s = scheduler_new(m, tok, &so);
    CHECK_MSG(s, "%s", peft_last_error());
    static const char *sys = "Be brief and kind.\n";
    static const struct { const char *model, *user; float temperature; } reqs[] = {
        {NULL, "What is a cat?", 0},  {NULL, "Who won?", 0},       {"a", "What is a cat?", 0}, {"a", "Name three dogs.", 0.9f},
        {"b", "What is a cat?", 0}, {"a", "Who won?", 0}, {NULL, "Name three dogs.", 0}, {NULL, "Why?", 0.9f},
    };
    for (int i = 0; i < 8; i++) {
        char text[128];
        snprintf(text, sizeof text, "%s%s", sys, reqs[i].user);
        int32_t *p = NULL;
        int plen = 0;
        tokenizer_encode(tok, text, strlen(text), &p, &plen);
        GenParams gp;
        gen_params_default(&gp);
        gp.max_new_tokens = 12;
        gp.temperature = reqs[i].temperature;
        gp.seed = 5 + i;
        gp.eos_id = GEN_EOS_NONE;
        AdapterSet *set = NULL;
        PoolEntry *e = NULL;
        int status = 0;
        if (reqs[i].model) CHECK_MSG((e = adapter_pool_acquire(pool, reqs[i].model, &set, &status, 5.0)), "%s", peft_last_error());
        ServeRequest *r = serve_request_new(p, plen, &gp, set, pool, e, 0);
        free(p);
        CHECK(scheduler_submit(s, r, &status) == 0);
        ServeStatus st;
        free(wait_text(r, &st));
        CHECK(st.finish == SERVE_FINISH_LENGTH);
        n_ids[i] = serve_request_tokens(r, &ids[i]);
        serve_request_unref(r);
        // The scheduler lets go of the request (and its adapter) just after its end.
        for (int t = 0; t < 200; t++) {
            SchedulerStats ss;
            scheduler_stats(s, &ss);
            hits[i] = ss.prefix_hits;
            if (ss.active == 0) break;
            usleep(5000);
        }
    }
    scheduler_free(s);
    adapter_pool_free(pool);
}

static void prefix_cache_case(int *failed_, const char *json, const char *targets) {
    const char *dir;
    Model *m = byte_model_json(json, &dir, 25);
    CHECK(m);
    Tokenizer *tok = tokenizer_load(dir);
    CHECK_MSG(tok, "%s", peft_last_error());
    char *root = path_join(dir, "prefix-adapters");
    char *pa = save_random_adapter(m, root, "a", METHOD_LORA, 4, targets, 0, 31), *pb = save_random_adapter(m, root, "b", METHOD_LORA, 4, targets, 0, 32);
    CHECK_MSG(pa && pb, "%s", peft_last_error());
    int32_t *on[8], *off[8];
    int n_on[8], n_off[8];
    long hits_on[8], hits_off[8];
    run_prefix_sequence(failed_, m, tok, root, 2, on, n_on, hits_on);
    run_prefix_sequence(failed_, m, tok, root, 0, off, n_off, hits_off);
    // Hits: base after base; a after a (same load); b, and a reloaded after b, miss; the base's
    // first prompt was evicted by b's.
    static const long expect[8] = {0, 1, 1, 2, 2, 2, 2, 3};
    for (int i = 0; i < 8; i++) {
        CHECK_MSG(hits_on[i] == expect[i], "request %d: %ld prefix hits, expected %ld", i, hits_on[i], expect[i]);
        CHECK(hits_off[i] == 0);
        CHECK_MSG(n_on[i] == 12 && n_off[i] == 12 && !memcmp(on[i], off[i], sizeof(int32_t) * 12), "request %d: other tokens with the cache", i);
        free(on[i]);
        free(off[i]);
    }
    free(pa);
    free(pb);
    free(root);
    tokenizer_free(tok);
    model_free(m);
}

TEST(serve_prefix_cache_gpt2) { prefix_cache_case(failed_, BYTE_GPT2, "c_attn,c_fc"); }
TEST(serve_prefix_cache_llama) { prefix_cache_case(failed_, BYTE_LLAMA, "q_proj,v_proj"); }

typedef struct { AdapterPool *pool; PoolEntry *e; } ReleaseLater;
static void *release_later(void *arg) {
    ReleaseLater *r = arg;
    usleep(50000);
    adapter_pool_release(r->pool, r->e);
    return NULL;
}

TEST(serve_adapter_pool_lru) {
    const char *dir;
    Model *m = byte_model(&dir, 23);
    CHECK(m);
    char *root = path_join(dir, "adapters");
    const char *names[4] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        char *p = save_random_adapter(m, root, names[i], i % 2 ? METHOD_VERA : METHOD_LORA, 4, "c_attn", 1, 10 + i);
        CHECK_MSG(p, "%s", peft_last_error());
        free(p);
    }
    AdapterPool *pool = adapter_pool_new(m, 2);
    char *warn = NULL;
    CHECK(adapter_pool_scan(pool, root, &warn) == 0);
    CHECK_MSG(!warn, "%s", warn);
    PoolStats ps;
    adapter_pool_stats(pool, &ps);
    CHECK(ps.registered == 4 && ps.loaded == 2);
    int status;
    AdapterSet *sa, *sb, *sc;
    PoolEntry *ea = adapter_pool_acquire(pool, "a", &sa, &status, 0), *eb = adapter_pool_acquire(pool, "b", &sb, &status, 0);
    CHECK(ea && eb && sa && sb);
    // Both slots held: a third adapter cannot load (429) until one is released.
    CHECK(adapter_pool_acquire(pool, "c", &sc, &status, 0) == NULL && status == 429);
    CHECK(adapter_pool_acquire(pool, "nope", &sc, &status, 0) == NULL && status == 404);
    // ... or waits for one: a holder releases "a" 50 ms later.
    ReleaseLater rl = {pool, ea};
    pthread_t th;
    pthread_create(&th, NULL, release_later, &rl);
    double t0 = now_seconds();
    PoolEntry *ec = adapter_pool_acquire(pool, "c", &sc, &status, 10.0);
    pthread_join(th, NULL);
    CHECK_MSG(ec && sc, "%s", peft_last_error());
    CHECK(now_seconds() - t0 < 5);
    adapter_pool_stats(pool, &ps);
    CHECK(ps.loaded == 2 && ps.evictions >= 1);
    // Removing an adapter in use keeps it alive for its holder; a new name can be added.
    CHECK(adapter_pool_remove(pool, "c", &status) == 0);
    CHECK(!adapter_pool_has(pool, "c"));
    CHECK(sc->n > 0);  // still valid
    adapter_pool_release(pool, ec);
    adapter_pool_release(pool, eb);
    char *dpath = path_join(root, "d");
    CHECK(adapter_pool_add(pool, "d", dpath, &status) != 0 && status == 409);
    CHECK(adapter_pool_add(pool, "d2", dpath, &status) == 0);
    CHECK(adapter_pool_add(pool, "bad/name", dpath, &status) != 0 && status == 400);
    CHECK(adapter_pool_add(pool, "e", "/nonexistent", &status) != 0 && status == 400);
    free(dpath);
    adapter_pool_stats(pool, &ps);
    CHECK(ps.registered == 4 && ps.loaded <= 2);
    // Two VeRA adapters with the same key share one copy of the projections.
    AdapterSet *sv1, *sv2;
    PoolEntry *v1 = adapter_pool_acquire(pool, "b", &sv1, &status, 0), *v2 = adapter_pool_acquire(pool, "d2", &sv2, &status, 0);
    CHECK(v1 && v2 && sv1->cfg.type == METHOD_VERA && sv2->cfg.type == METHOD_VERA);
    CHECK(sv1 != sv2 && sv1->vera_A == sv2->vera_A && sv1->vera_B == sv2->vera_B);
    adapter_pool_release(pool, v1);
    CHECK(adapter_pool_acquire(pool, "a", &sa, &status, 0) != NULL);  // evicts b; d2 keeps the projections
    CHECK(sv2->vera_A && adapters_same_vera_projection(sv2, sv2));
    adapter_pool_release(pool, v2);
    adapter_pool_free(pool);
    free(root);
    model_free(m);
}

typedef struct { AdapterPool *pool; const char *name, *path; int rc, status; } AddLater;
static void *add_in_thread(void *arg) {
    AddLater *a = arg;
    a->rc = adapter_pool_add(a->pool, a->name, a->path, &a->status);
    return NULL;
}

// An adapter DELETEd while its POST still loads it (the interleaving made certain by a FIFO for its
// adapter_config.json: the load blocks on it until the test writes the file): the entry is freed,
// the POST fails with 409, and the slot is free again (it used to stay held: 429 forever after).
TEST(serve_adapter_pool_remove_while_loading) {
    const char *dir;
    Model *m = byte_model(&dir, 24);
    CHECK(m);
    char *root = path_join(dir, "adapters");
    char *a = save_random_adapter(m, root, "a", METHOD_LORA, 4, "c_attn", 0, 30);
    char *slow = save_random_adapter(m, root, "slow", METHOD_LORA, 4, "c_attn", 0, 31);
    CHECK_MSG(a && slow, "%s", peft_last_error());
    char *cfg = path_join(slow, "adapter_config.json");
    size_t cfg_len;
    char *cfg_text = read_file(cfg, &cfg_len);
    CHECK(cfg_text && unlink(cfg) == 0 && mkfifo(cfg, 0600) == 0);
    AdapterPool *pool = adapter_pool_new(m, 1);
    AddLater add = {pool, "slow", slow, 0, 0};
    pthread_t th;
    pthread_create(&th, NULL, add_in_thread, &add);
    for (int i = 0; i < 2000 && !adapter_pool_has(pool, "slow"); i++) usleep(1000);  // registered: its load has begun
    int status = 0;
    CHECK(adapter_pool_remove(pool, "slow", &status) == 0);
    FILE *f = fopen(cfg, "wb");  // lets the load go on
    CHECK(f && fwrite(cfg_text, 1, cfg_len, f) == cfg_len && fclose(f) == 0);
    pthread_join(th, NULL);
    CHECK_MSG(add.rc != 0 && add.status == 409, "rc %d status %d", add.rc, add.status);
    PoolStats ps;
    adapter_pool_stats(pool, &ps);
    CHECK_MSG(ps.registered == 0 && ps.loaded == 0, "registered %d loaded %d", ps.registered, ps.loaded);
    // The one slot serves another adapter.
    CHECK(adapter_pool_add(pool, "a", a, &status) == 0);
    AdapterSet *set;
    PoolEntry *e = adapter_pool_acquire(pool, "a", &set, &status, 0);
    CHECK_MSG(e, "status %d: %s", status, peft_last_error());
    adapter_pool_release(pool, e);
    adapter_pool_free(pool);
    free(cfg_text);
    free(cfg);
    free(a);
    free(slow);
    free(root);
    model_free(m);
}

// JSON strings with their lengths: "\u0000" counted (cJSON's strlen would stop there), escapes and
// surrogate pairs worked out from the literal, raw bytes counted one each; a key with a NUL refused;
// bytes written back as cJSON writes strings, NUL as \u0000.
TEST(serve_json_bytes) {
    const char text[] = "{\"prompt\": \"ab\\u0000cd\", \"k\\u00e9y\": [\"x\", \"\\ud83d\\ude00\", \"\\\"\\\\\\/\\b\\u00e9\\u20ac\", 7, {\"in\": \"\\u0000\"}], "
                        "\"raw\": \"a\0b\"}";
    cJSON *j = json_parse_bytes(text, sizeof text - 1);
    CHECK_MSG(j, "%s", peft_last_error());
    size_t n;
    const char *s = json_bytes(cJSON_GetObjectItem(j, "prompt"), &n);
    CHECK(n == 5 && !memcmp(s, "ab\0cd", 5));
    const cJSON *list = cJSON_GetObjectItem(j, "k\xC3\xA9y");
    CHECK(list);
    size_t want[] = {1, 4, 4 + 2 + 3};
    for (int i = 0; i < 3; i++) CHECK_MSG((json_bytes(cJSON_GetArrayItem(list, i), &n), n == want[i]), "item %d: %zu", i, n);
    CHECK((json_bytes(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 4), "in"), &n), n == 1));
    CHECK((json_bytes(cJSON_GetObjectItem(j, "raw"), &n), n == 3));
    cJSON_Delete(j);
    CHECK(json_parse_bytes("{\"a\\u0000b\": 1}", 15) == NULL);
    CHECK(json_parse_bytes("{\"a\": ", 6) == NULL);
    // Escapes cJSON lets through but JSON has not (it reads "\u\:ab" as U+0000): refused, and the
    // scan never reads past the text (the fuzzer's crash in fuzz/regressions/http).
    CHECK(json_parse_bytes("\"\\u\\:ab\"", 8) == NULL && strstr(peft_last_error(), "invalid escape"));
    CHECK(json_parse_bytes("[\"\\udc00\"]", 10) == NULL);
    // Written back: NUL as \u0000; without one, exactly as cJSON writes the string.
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "t", json_bytes_item("a\0b", 3));
    char *out = cJSON_PrintUnformatted(o);
    CHECK_MSG(!strcmp(out, "{\"t\":\"a\\u0000b\"}"), "%s", out);
    free(out);
    cJSON_Delete(o);
    const char *plain = "q\"\\/\b\f\n\r\t\x01\x1f\x7f \xC3\xA9";
    cJSON *a = cJSON_CreateString(plain), *b = json_bytes_item(plain, strlen(plain));
    char *pa = cJSON_PrintUnformatted(a), *pb = cJSON_PrintUnformatted(b);
    CHECK_MSG(!strcmp(pa, pb), "%s vs %s", pa, pb);
    free(pa);
    free(pb);
    cJSON_Delete(a);
    cJSON_Delete(b);
}

// A model that always says token 0, the NUL byte (its final norm outputs e_0, and token 0's
// embedding is 100 there): generate and the scheduler give every NUL byte of the text.
TEST(serve_generated_nul_bytes) {
    const char *dir;
    Model *m = byte_model(&dir, 25);
    CHECK(m);
    for (int i = 0; i < m->cfg.n_embd; i++) m->norm_f_w->w[i] = 0, m->norm_f_b->w[i] = i == 0;
    m->wte->w[0] = 100;
    Tokenizer *tok = tokenizer_load(dir);
    CHECK(tok);
    GenParams gp;
    gen_params_default(&gp);
    gp.max_new_tokens = 6;
    const char *prompt = "a";
    GenResult res;
    CHECK(generate_text(m, tok, &prompt, NULL, 1, &gp, NULL, NULL, &res) == 0);
    CHECK_MSG(res.n_ids == 6 && res.text_len == 6 && !memcmp(res.text, "\0\0\0\0\0\0", 6), "%d ids, %zu bytes", res.n_ids, res.text_len);
    gen_result_free(&res);
    SchedulerOptions so = {.max_requests = 1, .max_len = 32, .max_queue = 1, .threads = 1};
    Scheduler *s = scheduler_new(m, tok, &so);
    int32_t ids[1] = {'a'};
    ServeRequest *r = serve_request_new(ids, 1, &gp, NULL, NULL, NULL, 0);
    int status;
    CHECK(scheduler_submit(s, r, &status) == 0);
    size_t total = 0, len;
    ServeStatus st;
    for (int i = 0; i < 2000; i++) {
        char *t = serve_request_poll(r, 0.05, &len, &st);
        for (size_t k = 0; k < len; k++) CHECK(t[k] == 0);
        total += len;
        free(t);
        if (st.finish != SERVE_RUNNING) break;
    }
    CHECK_MSG(st.finish == SERVE_FINISH_LENGTH && st.n_gen == 6 && total == 6, "finish %d, %d tokens, %zu bytes", st.finish, st.n_gen, total);
    serve_request_unref(r);
    scheduler_free(s);
    tokenizer_free(tok);
    model_free(m);
}
