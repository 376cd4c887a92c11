// test_vera.c: VeRA. The shared projections regenerate bit-identically to what PEFT stored; the
// lambda and input gradients agree with central differences; save_projection=false files hold
// only the lambdas and reload to identical logits; merge/unmerge; the reference cases; errors.
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "config.h"
#include "model.h"
#include "safetensors.h"
#include "torch_rng.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---------------------------------------------------------------------------------------------
// Helpers

#define GPT2_TINY TINY_GPT2_JSON
#define LLAMA_TINY TINY_LLAMA_JSON
static uint64_t rng_state = 0x1234567;
static double urand(void) { return test_urand(&rng_state); }
static float srand_f(float scale) { return (float)((2 * urand() - 1) * scale); }
static Model *tiny_model(const char *json, uint64_t seed) { return test_model_from_json(json, seed); }

static void vera_cfg(AdapterConfig *c, const char *targets, int r, float dropout) {
    adapter_config_defaults(c, METHOD_VERA);
    c->r = r;
    c->dropout = dropout;
    c->prng_key = 7;
    adapter_config_set_targets(c, targets);
}

// Random non-zero lambdas.
static void randomize_lambdas(Model *m) {
    AdapterSet *set = m->adapters;
    for (int i = 0; i < set->n_params; i++)
        for (long j = 0; j < set->params[i]->numel; j++) {
            float v = srand_f(1.0f);
            set->params[i]->w[j] = v + (v < 0 ? -0.1f : 0.1f);
        }
}

static long file_size(const char *path) {
    struct stat s;
    return stat(path, &s) ? -1 : (long)s.st_size;
}

// ---------------------------------------------------------------------------------------------
// (1) The regenerated projections are bit-identical to what PEFT stored.

static int projections_match_case(const char *case_name) {
    char *dir = path_join(fixtures_dir(), case_name);
    char *model_dir = path_join(dir, "model"), *adapter_dir = path_join(dir, "adapter");
    char *cfg_path = path_join(adapter_dir, "adapter_config.json"), *st_path = path_join(adapter_dir, "adapter_model.safetensors");
    int ok = 0;
    Model *m = model_load(model_dir);
    AdapterConfig cfg;
    SafeTensors st = {0};
    if (!m || adapter_config_load(&cfg, cfg_path)) { fprintf(stderr, "  %s\n", peft_last_error()); goto out; }
    cfg.save_projection = false;  // keep the generated projections
    int rc = adapters_attach(m, &cfg, 0);
    adapter_config_free(&cfg);
    if (rc || st_open(&st, st_path)) { fprintf(stderr, "  %s\n", peft_last_error()); goto out; }
    AdapterSet *set = m->adapters;
    const StTensor *A = st_find(&st, "base_model.vera_A"), *B = st_find(&st, "base_model.vera_B");
    if (!A || !B || A->dtype != DT_F32 || B->dtype != DT_F32) { fprintf(stderr, "  %s: no f32 projections\n", case_name); goto out; }
    if (A->ndim != 2 || A->shape[0] != set->cfg.r || A->shape[1] != set->vera_max_in || B->ndim != 2 ||
        B->shape[0] != set->vera_max_out || B->shape[1] != set->cfg.r) {
        fprintf(stderr, "  %s: projection shapes differ from r=%d max_in=%d max_out=%d\n", case_name, set->cfg.r,
                set->vera_max_in, set->vera_max_out);
        goto out;
    }
    if (memcmp(A->data, set->vera_A, A->nbytes) || memcmp(B->data, set->vera_B, B->nbytes)) {
        fprintf(stderr, "  %s: regenerated projections are not bit-identical to the stored ones\n", case_name);
        goto out;
    }
    // And the generator on its own, sized from the stored shapes.
    float *a2 = xmalloc(A->nbytes), *b2 = xmalloc(B->nbytes);
    vera_projections(0, (int)A->shape[0], (int)A->shape[1], (int)B->shape[0], a2, b2);
    ok = !memcmp(A->data, a2, A->nbytes) && !memcmp(B->data, b2, B->nbytes);
    if (!ok) fprintf(stderr, "  %s: vera_projections(key 0) differs from the file\n", case_name);
    free(a2);
    free(b2);
out:
    st_close(&st);
    model_free(m);
    free(dir); free(model_dir); free(adapter_dir); free(cfg_path); free(st_path);
    return ok;
}

TEST(vera_projections_bit_identical_to_fixtures) {
    if (!fixtures_dir()) SKIP_NO_FIXTURES();
    CHECK(projections_match_case("gpt2-vera"));
    CHECK(projections_match_case("llama-vera"));
}

// The reference cases end to end (logits, loss, grads, AdamW step, merge, save round trip).
TEST(vera_reference_cases) {
    if (!fixtures_dir()) SKIP_NO_FIXTURES();
    const char *cases[] = {"gpt2-vera", "llama-vera"};
    for (int i = 0; i < 2; i++) {
        char *dir = path_join(fixtures_dir(), cases[i]);
        CheckResult r;
        check_case(dir, &r);
        free(dir);
        printf("  %s %s (max rel err %.3g) %s\n", r.status == CHECK_PASS ? "PASS" : r.status == CHECK_FAIL ? "FAIL" : "SKIP",
               r.name, r.max_rel_err, r.detail);
        CHECK_MSG(r.status == CHECK_PASS, "%s: %s", cases[i], r.detail);
    }
}

// ---------------------------------------------------------------------------------------------
// (2) Gradients against central differences.


// Whole model: d loss / d lambda for every module, along random directions per tensor and at the largest entries.
static int model_gradcheck(const char *json, const char *targets, float dropout) {
    Model *m = tiny_model(json, 11);
    AdapterConfig c;
    vera_cfg(&c, targets, 4, dropout);
    int rc = adapters_attach(m, &c, 0);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); model_free(m); return 0; }
    randomize_lambdas(m);
    m->training = dropout > 0;
    m->dropout_seed = 3;
    enum { B = 2, T = 6 };
    int32_t ids[B * T], labels[B * T];
    test_random_batch(ids, labels, B * T, m->cfg.vocab_size, &rng_state);
    model_forward(m, ids, labels, B, T);
    model_zero_grad(m);
    model_backward(m);
    TestBatch b = {ids, labels, B, T};
    int ok = test_gradcheck(m, test_batch_loss, &b, 1e-3, 1e-2, 1e-4);
    model_free(m);
    return ok;
}

TEST(vera_gradcheck_gpt2) { CHECK(model_gradcheck(GPT2_TINY, "c_attn,c_proj,c_fc", 0.0f)); }
TEST(vera_gradcheck_llama_all_linear) { CHECK(model_gradcheck(LLAMA_TINY, "all-linear", 0.0f)); }
TEST(vera_gradcheck_llama_dropout) { CHECK(model_gradcheck(LLAMA_TINY, "q_proj,down_proj,up_proj", 0.25f)); }

static double dotf(const float *p, const float *q, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += (double)p[i] * q[i];
    return s;
}

// One adapted linear, L = sum(y * R): checks dx (and the lambdas) directly, in and out of dropout.
// L is linear in x, so central differences are exact up to rounding.
static int linear_gradcheck(const char *json, const char *module, float dropout) {
    Model *m = tiny_model(json, 5);
    AdapterConfig c;
    vera_cfg(&c, "all-linear", 6, dropout);
    int rc = adapters_attach(m, &c, 0);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); model_free(m); return 0; }
    randomize_lambdas(m);
    m->training = dropout > 0;
    m->dropout_seed = 9;
    Linear *lin = model_find_linear(m, module);
    Adapter *a = lin->adapter;
    enum { N = 5 };
    int in = lin->in, out = lin->out;
    float *x = xmalloc(sizeof(float) * N * in), *y = xmalloc(sizeof(float) * N * out), *R = xmalloc(sizeof(float) * N * out);
    float *dx = xcalloc((size_t)N * in, sizeof(float));
    for (int i = 0; i < N * in; i++) x[i] = srand_f(1.0f);
    for (int i = 0; i < N * out; i++) R[i] = srand_f(1.0f);
    memset(a->lambda_b->grad, 0, sizeof(float) * a->lambda_b->numel);
    memset(a->lambda_d->grad, 0, sizeof(float) * a->lambda_d->numel);
    linear_forward(m, lin, x, y, N);
    linear_backward(m, lin, x, R, dx, N);
    const double eps = 1e-2;
    int ok = 1;
    struct { float *w, *g; long n; const char *what; } checks[3] = {
        {x, dx, (long)N * in, "dx"}, {a->lambda_b->w, a->lambda_b->grad, out, "lambda_b"}, {a->lambda_d->w, a->lambda_d->grad, a->r, "lambda_d"}};
    for (int c2 = 0; c2 < 3 && ok; c2++) {
        double err = 0, ref = 0;
        for (long j = 0; j < checks[c2].n; j++) {
            float w0 = checks[c2].w[j];
            checks[c2].w[j] = w0 + (float)eps;
            linear_forward(m, lin, x, y, N);
            double lp = dotf(y, R, (long)N * out);
            checks[c2].w[j] = w0 - (float)eps;
            linear_forward(m, lin, x, y, N);
            double lm = dotf(y, R, (long)N * out);
            checks[c2].w[j] = w0;
            double fd = (lp - lm) / (2 * eps);
            err += (fd - checks[c2].g[j]) * (fd - checks[c2].g[j]);
            ref += fd * fd;
        }
        double rel = sqrt(err / (ref > 0 ? ref : 1));
        if (!(rel < 1e-3) || ref == 0) {
            fprintf(stderr, "  %s %s: relative error %.3g (|fd| %.3g)\n", module, checks[c2].what, rel, sqrt(ref));
            ok = 0;
        }
    }
    free(x); free(y); free(R); free(dx);
    model_free(m);
    return ok;
}

TEST(vera_linear_gradcheck_dx) {
    // GPT-2 Conv1D modules of every shape (c_fc: in < out, mlp.c_proj: in = max_in) and Llama's.
    CHECK(linear_gradcheck(GPT2_TINY, "transformer.h.0.attn.c_attn", 0.0f));
    CHECK(linear_gradcheck(GPT2_TINY, "transformer.h.1.mlp.c_proj", 0.0f));
    CHECK(linear_gradcheck(GPT2_TINY, "transformer.h.0.mlp.c_fc", 0.3f));
    CHECK(linear_gradcheck(LLAMA_TINY, "model.layers.0.self_attn.k_proj", 0.0f));
    CHECK(linear_gradcheck(LLAMA_TINY, "model.layers.1.mlp.down_proj", 0.3f));
}

// ---------------------------------------------------------------------------------------------
// (3) Saving without the projections.

TEST(vera_save_without_projection) {
    Model *m = tiny_model(LLAMA_TINY, 21);
    AdapterConfig c;
    vera_cfg(&c, "all-linear", 8, 0.0f);
    c.prng_key = 12345;
    CHECK(adapters_attach(m, &c, 0) == 0);
    adapter_config_free(&c);
    randomize_lambdas(m);
    AdapterSet *set = m->adapters;
    char *with = path_join(test_tmpdir(), "with"), *without = path_join(test_tmpdir(), "without");
    set->cfg.save_projection = true;
    CHECK(adapters_save(m, with) == 0);
    set->cfg.save_projection = false;
    CHECK(adapters_save(m, without) == 0);

    char *f_with = path_join(with, "adapter_model.safetensors"), *f_without = path_join(without, "adapter_model.safetensors");
    SafeTensors st = {0};
    CHECK(st_open(&st, f_without) == 0);
    int n = st.n, foreign = 0;
    for (int i = 0; i < st.n; i++)
        if (!strstr(st.tensors[i].name, ".vera_lambda_b") && !strstr(st.tensors[i].name, ".vera_lambda_d")) foreign++;
    st_close(&st);
    CHECK_MSG(n == set->n_params && foreign == 0, "%d tensors (%d not lambdas), want %d lambdas", n, foreign, set->n_params);
    long proj_bytes = 4L * set->cfg.r * (set->vera_max_in + set->vera_max_out);
    long diff = file_size(f_with) - file_size(f_without);
    CHECK_MSG(diff >= proj_bytes && diff <= proj_bytes + 256, "files differ by %ld bytes, the projections are %ld", diff, proj_bytes);

    char *cfg_without = path_join(without, "adapter_config.json");
    AdapterConfig back;
    CHECK(adapter_config_load(&back, cfg_without) == 0);
    CHECK(!back.save_projection && back.prng_key == 12345 && back.r == 8);
    adapter_config_free(&back);

    // Reload both into the same base: logits identical to the live adapter, bit for bit.
    enum { B = 2, T = 7 };
    int32_t ids[B * T], labels[B * T];
    test_random_batch(ids, labels, B * T, m->cfg.vocab_size, &rng_state);
    long nl = (long)B * T * m->cfg.vocab_size;
    model_forward(m, ids, NULL, B, T);
    float *live = test_copy_logits(m, nl);
    const char *dirs[2] = {with, without};
    for (int k = 0; k < 2; k++) {
        Model *m2 = tiny_model(LLAMA_TINY, 21);
        CHECK_MSG(adapters_load(m2, dirs[k]) == 0, "%s", peft_last_error());
        CHECK(!memcmp(m2->adapters->vera_A, set->vera_A, sizeof(float) * set->cfg.r * set->vera_max_in));
        CHECK(!memcmp(m2->adapters->vera_B, set->vera_B, sizeof(float) * set->cfg.r * set->vera_max_out));
        CHECK(m2->adapters->cfg.save_projection == (k == 0));  // a loaded adapter keeps what its file said
        model_forward(m2, ids, NULL, B, T);
        int same = !memcmp(m2->act.logits, live, sizeof(float) * nl);
        model_free(m2);
        CHECK_MSG(same, "logits after reloading %s differ", dirs[k]);
    }
    free(live);
    free(f_with); free(f_without); free(cfg_without); free(with); free(without);
    model_free(m);
}

// With save_projection the stored projections win over the generated ones (PEFT: persistent buffers).
TEST(vera_load_uses_stored_projection) {
    Model *m = tiny_model(GPT2_TINY, 4);
    AdapterConfig c;
    vera_cfg(&c, "c_attn,c_fc", 4, 0.0f);
    CHECK(adapters_attach(m, &c, 0) == 0);
    adapter_config_free(&c);
    randomize_lambdas(m);
    AdapterSet *set = m->adapters;
    long na = (long)set->cfg.r * set->vera_max_in;
    for (long i = 0; i < na; i++) set->vera_A[i] *= 0.5f;  // no longer what the key gives
    set->cfg.save_projection = true;
    char *dir = path_join(test_tmpdir(), "a");
    CHECK(adapters_save(m, dir) == 0);
    Model *m2 = tiny_model(GPT2_TINY, 4);
    CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
    int same = !memcmp(m2->adapters->vera_A, set->vera_A, sizeof(float) * na);
    model_free(m2);
    CHECK(same);
    free(dir);
    model_free(m);
}

TEST(vera_load_errors) {
    Model *m = tiny_model(GPT2_TINY, 4);
    AdapterConfig c;
    vera_cfg(&c, "c_attn", 4, 0.0f);
    CHECK(adapters_attach(m, &c, 0) == 0);
    adapter_config_free(&c);
    char *dir = path_join(test_tmpdir(), "noproj");
    m->adapters->cfg.save_projection = false;
    CHECK(adapters_save(m, dir) == 0);
    // save_projection true but no projections in the file: PEFT refuses it, so do we.
    test_set_adapter_key(dir, "save_projection", "true");
    Model *m2 = tiny_model(GPT2_TINY, 4);
    peft_clear_error();
    CHECK(adapters_load(m2, dir) != 0);
    CHECK_MSG(strstr(peft_last_error(), "base_model.vera_A") && strstr(peft_last_error(), "adapter_model.safetensors"), "%s", peft_last_error());
    CHECK(m2->adapters == NULL);
    // Projections of the wrong shape: those of an adapter on c_attn + c_fc ([4, 16] + [64, 4]) with
    // the lambdas of one on c_attn alone (which needs [4, 16] + [48, 4]).
    model_free(m2);
    adapters_free(m);
    vera_cfg(&c, "c_attn,c_fc", 4, 0.0f);
    CHECK(adapters_attach(m, &c, 0) == 0);
    adapter_config_free(&c);
    char *dir2 = path_join(test_tmpdir(), "wide");
    CHECK(adapters_save(m, dir2) == 0);  // save_projection true (PEFT's default)
    char *wide_path = path_join(dir2, "adapter_model.safetensors"), *narrow_path = path_join(dir, "adapter_model.safetensors");
    SafeTensors wide, narrow;
    CHECK(st_open(&wide, wide_path) == 0 && st_open(&narrow, narrow_path) == 0);
    StWriter *w = st_writer_new();
    for (int i = 0; i < narrow.n; i++) st_writer_add(w, narrow.tensors[i].name, narrow.tensors[i].dtype, narrow.tensors[i].ndim, narrow.tensors[i].shape, narrow.tensors[i].data);
    for (int i = 0; i < wide.n; i++)
        if (!strncmp(wide.tensors[i].name, "base_model.vera_", 16)) st_writer_add(w, wide.tensors[i].name, wide.tensors[i].dtype, wide.tensors[i].ndim, wide.tensors[i].shape, wide.tensors[i].data);
    st_close(&narrow);
    CHECK(st_writer_save(w, narrow_path) == 0);
    st_writer_free(w);
    st_close(&wide);
    m2 = tiny_model(GPT2_TINY, 4);
    peft_clear_error();
    CHECK(adapters_load(m2, dir) != 0);
    CHECK_MSG(strstr(peft_last_error(), "base_model.vera_B") && strstr(peft_last_error(), "shape"), "%s", peft_last_error());
    model_free(m2);
    // The c_fc lambdas in a file whose config targets c_attn alone: tensors nothing uses are refused by name.
    char *cfg_path = path_join(dir2, "adapter_config.json");
    char *text = read_file(cfg_path, NULL);
    cJSON *j = cJSON_Parse(text);
    cJSON_ReplaceItemInObject(j, "target_modules", cJSON_CreateString(".*c_attn"));
    char *out = cJSON_Print(j);
    write_file_atomic(cfg_path, out, strlen(out));
    free(out); cJSON_Delete(j); free(text); free(cfg_path);
    m2 = tiny_model(GPT2_TINY, 4);
    peft_clear_error();
    CHECK(adapters_load(m2, dir2) != 0);
    CHECK_MSG(strstr(peft_last_error(), "c_fc.vera_lambda_b") && strstr(peft_last_error(), "not used"), "%s", peft_last_error());
    model_free(m2);
    free(wide_path);
    free(narrow_path);
    free(dir);
    free(dir2);
    model_free(m);
}

TEST(vera_attach_errors) {
    Model *m = tiny_model(GPT2_TINY, 4);
    AdapterConfig c;
    vera_cfg(&c, "c_attn", 4, 0.0f);
    c.d_initial = NAN;
    peft_clear_error();
    CHECK(adapters_attach(m, &c, 0) != 0);
    CHECK_MSG(strstr(peft_last_error(), "d_initial"), "%s", peft_last_error());
    CHECK(m->adapters == NULL);
    c.d_initial = 0.1f;
    c.r = 0;
    CHECK(adapters_attach(m, &c, 0) != 0);
    CHECK(m->adapters == NULL);
    c.r = 4;
    CHECK(adapters_attach(m, &c, 0) == 0);
    // Fresh adapter: lambda_b = 0, lambda_d = d_initial, so the output is the base model's.
    Adapter *a = &m->adapters->adapters[0];
    CHECK(a->lambda_b->numel == 48 && a->lambda_d->numel == 4 && a->lambda_d->w[3] == 0.1f && a->lambda_b->w[0] == 0.0f);
    CHECK(!strcmp(a->lambda_b->name, "base_model.model.transformer.h.0.attn.c_attn.vera_lambda_b"));
    CHECK(!strcmp(a->lambda_d->name, "base_model.model.transformer.h.0.attn.c_attn.vera_lambda_d"));
    CHECK(m->adapters->vera_max_in == 16 && m->adapters->vera_max_out == 48);
    adapter_config_free(&c);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// (4) Merge and unmerge.

static int merge_roundtrip(const char *json, const char *targets) {
    Model *m = tiny_model(json, 8);
    AdapterConfig c;
    vera_cfg(&c, targets, 5, 0.0f);
    int rc = adapters_attach(m, &c, 0);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  %s\n", peft_last_error()); model_free(m); return 0; }
    randomize_lambdas(m);
    AdapterSet *set = m->adapters;
    enum { B = 2, T = 5 };
    int32_t ids[B * T], labels[B * T];
    test_random_batch(ids, labels, B * T, m->cfg.vocab_size, &rng_state);
    long nl = (long)B * T * m->cfg.vocab_size;
    model_forward(m, ids, NULL, B, T);
    float *live = test_copy_logits(m, nl);
    float **before = xcalloc(set->n, sizeof(float *));
    for (int i = 0; i < set->n; i++) {
        Param *w = set->adapters[i].lin->weight;
        before[i] = xmalloc(sizeof(float) * w->numel);
        memcpy(before[i], w->w, sizeof(float) * w->numel);
    }
    int ok = 1;
    adapters_merge(m);
    double changed = 0;
    for (int i = 0; i < set->n; i++) changed += rel_error(set->adapters[i].lin->weight->w, before[i], set->adapters[i].lin->weight->numel);
    if (!(changed > 1e-3)) { fprintf(stderr, "  merge did not change the weights\n"); ok = 0; }
    model_forward(m, ids, NULL, B, T);
    double e = rel_error(m->act.logits, live, nl);
    if (!(e < 1e-5)) { fprintf(stderr, "  merged logits differ from live ones: %.3g\n", e); ok = 0; }
    adapters_unmerge(m);
    for (int i = 0; i < set->n; i++) {
        Param *w = set->adapters[i].lin->weight;
        double ew = rel_error(w->w, before[i], w->numel);
        if (!(ew < 1e-6)) { fprintf(stderr, "  %s not restored: %.3g\n", w->name, ew); ok = 0; }
    }
    model_forward(m, ids, NULL, B, T);
    e = rel_error(m->act.logits, live, nl);
    if (!(e < 1e-5)) { fprintf(stderr, "  unmerged logits differ from live ones: %.3g\n", e); ok = 0; }
    for (int i = 0; i < set->n; i++) free(before[i]);
    free(before);
    free(live);
    model_free(m);
    return ok;
}

TEST(vera_merge_unmerge) {
    CHECK(merge_roundtrip(GPT2_TINY, "c_attn,c_proj,c_fc"));
    CHECK(merge_roundtrip(LLAMA_TINY, "all-linear"));
}
