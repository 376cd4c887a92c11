// test_lora_combine.c: peft merge's adapter arithmetic (PEFT's add_weighted_adapter). PEFT's formulas written
// out on small adapters: linear's sqrt-weighted factors, cat's and svd's exact sums of weighted deltas, ties'
// elected signs, magnitude_prune's kept fraction, DARE's rescaled random masks; the new config (rank, alpha,
// target union); PEFT's refusals; save and reload.
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "lora_combine.h"
#include "lora_init.h"
#include "model.h"
#include "check.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// A detached LoRA set with both factors random (init false: nn.Linear's draws), rank r, lora_alpha alpha.
static AdapterSet *lora_set_rs(Model *m, const char *targets, int r, float alpha, uint64_t seed, bool rslora) {
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    c.r = r;
    c.alpha = alpha;
    c.use_rslora = rslora;
    c.init = LORA_INIT_FALSE;
    adapter_config_set_targets(&c, targets);
    AdapterSet *s = adapters_new_detached(m, &c, seed);
    adapter_config_free(&c);
    return s;
}
static AdapterSet *lora_set(Model *m, const char *targets, int r, float alpha, uint64_t seed) {
    return lora_set_rs(m, targets, r, alpha, seed, false);
}

// The model (and its combined set) and the two input sets.
static void free_case(Model *m, AdapterSet **sets) {
    adapter_set_free(sets[0]);
    adapter_set_free(sets[1]);
    model_free(m);
}

static CombineOptions opts(CombineType t, double density) {
    return (CombineOptions){.type = t, .density = density, .seed = 5};
}

// ||s B A (combined) - sum_k w_k s_k B_k A_k|| / ||...|| over every module.
static double delta_error(Model *m, AdapterSet **sets, const double *w, int n) {
    double num = 0, den = 0;
    AdapterSet *out = m->adapters;
    for (int i = 0; i < out->n; i++) {
        const Adapter *a = &out->adapters[i];
        long li = a->lin - m->linears, numel = (long)a->lin->in * a->lin->out;
        float *d = xmalloc(sizeof(float) * numel), *dk = xmalloc(sizeof(float) * numel);
        double *want = xcalloc(numel, sizeof(double));
        for (int k = 0; k < n; k++) {
            const Adapter *b = sets[k]->by_linear[li];
            if (!b) continue;
            b->method->delta(b, dk);
            for (long e = 0; e < numel; e++) want[e] += w[k] * dk[e];
        }
        a->method->delta(a, d);
        for (long e = 0; e < numel; e++) {
            num += pow(d[e] - want[e], 2);
            den += want[e] * want[e];
        }
        free(d);
        free(dk);
        free(want);
    }
    return sqrt(num / den);
}

// cat: the new adapter (r = lora_alpha = r1 + r2) applies exactly sum_k w_k s_k B_k A_k; the target union,
// a module only one adapter has included. svd with a rank that holds the whole sum: the same sum, exactly
// (PEFT 0.21 weighs the deltas s_k B_k A_k by w_k; before huggingface/peft#3111 by w_k s_k, s_k twice).
TEST(combine_cat_and_svd_are_exact_sums) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 1);
    AdapterSet *sets[2] = {lora_set(m, "q_proj,v_proj", 3, 6, 1), lora_set(m, "q_proj,down_proj", 2, 8, 2)};
    double w[2] = {0.7, -0.4};
    CombineOptions o = opts(COMBINE_CAT, NAN);
    CHECK_MSG(lora_combine(m, sets, w, 2, &o) == 0, "%s", peft_last_error());
    AdapterSet *c = m->adapters;
    CHECK(c->cfg.r == 5 && c->cfg.alpha == 5 && c->cfg.n_targets == 3 && c->n == 6);
    CHECK_MSG(delta_error(m, sets, w, 2) < 1e-6, "cat: %g", delta_error(m, sets, w, 2));
    adapters_free(m);
    o = opts(COMBINE_SVD, NAN);
    o.svd_rank = 5;
    CHECK_MSG(lora_combine(m, sets, w, 2, &o) == 0, "%s", peft_last_error());
    CHECK(m->adapters->cfg.r == 5);
    CHECK_MSG(delta_error(m, sets, w, 2) < 1e-5, "svd: %g", delta_error(m, sets, w, 2));
    adapters_free(m);
    // The default svd rank is the largest input rank.
    o.svd_rank = 0;
    CHECK(lora_combine(m, sets, w, 2, &o) == 0 && m->adapters->cfg.r == 3);
    free_case(m, sets);
}

// rsLoRA inputs: their scalings (lora_alpha / sqrt r) go into the factors as any other's, so the new adapter's
// must be 1: use_rslora false with r = lora_alpha (PEFT since huggingface/peft#3449; it used to inherit the first
// adapter's use_rslora, making the result sqrt(r) times too large). cat and svd: the exact weighted sum; linear
// of one adapter with weight 1: that adapter again.
TEST(combine_rslora_inputs_give_scaling_one) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 1);
    AdapterSet *sets[2] = {lora_set_rs(m, "q_proj,v_proj", 4, 6, 1, true), lora_set(m, "q_proj,v_proj", 4, 3, 2)};
    CHECK(sets[0]->adapters[0].scaling == 3.0f);  // 6 / sqrt 4
    double w[2] = {0.7, -0.4}, one = 1;
    const CombineType types[] = {COMBINE_CAT, COMBINE_SVD};  // exact sums (linear's cross terms are not)
    for (int t = 0; t < 2; t++) {
        CombineOptions o = opts(types[t], NAN);
        o.svd_rank = 8;
        CHECK_MSG(lora_combine(m, sets, w, 2, &o) == 0, "%s", peft_last_error());
        const AdapterConfig *c = &m->adapters->cfg;
        CHECK(!c->use_rslora && c->alpha == c->r && m->adapters->adapters[0].scaling == 1.0f);
        CHECK_MSG(delta_error(m, sets, w, 2) < 1e-5, "%s: %g", combine_type_name(types[t]), delta_error(m, sets, w, 2));
        adapters_free(m);
    }
    CombineOptions o = opts(COMBINE_LINEAR, NAN);
    CHECK(lora_combine(m, sets, &one, 1, &o) == 0 && !m->adapters->cfg.use_rslora);
    CHECK_MSG(delta_error(m, sets, &one, 1) < 1e-6, "one rsLoRA adapter, weight 1: %g", delta_error(m, sets, &one, 1));
    free_case(m, sets);
}

// linear: A = sum_k sign(w_k s_k) sqrt|w_k s_k| A_k, B = sum_k sqrt|w_k s_k| B_k (PEFT's split of the weight).
TEST(combine_linear_splits_the_weight_over_both_factors) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 1);
    AdapterSet *sets[2] = {lora_set(m, "q_proj", 2, 4, 1), lora_set(m, "q_proj", 2, 1, 2)};
    double w[2] = {0.5, -3};
    CombineOptions o = opts(COMBINE_LINEAR, NAN);
    CHECK(lora_combine(m, sets, w, 2, &o) == 0);
    for (int i = 0; i < m->adapters->n; i++) {
        const Adapter *a = &m->adapters->adapters[i], *p = &sets[0]->adapters[i], *q = &sets[1]->adapters[i];
        // w s: 0.5 * 2 = 1 and -3 * 0.5 = -1.5.
        for (long e = 0; e < a->A->numel; e++) CHECK_NEAR(a->A->w[e], p->A->w[e] - sqrt(1.5) * q->A->w[e], 1e-6);
        for (long e = 0; e < a->B->numel; e++) CHECK_NEAR(a->B->w[e], p->B->w[e] + sqrt(1.5) * q->B->w[e], 1e-6);
    }
    free_case(m, sets);
}

// ties, magnitude_prune and DARE on factors whose signs and sizes are set: density 1 prunes nothing; ties
// keeps per entry the adapters whose sign wins the (total or frequency) election and averages them;
// magnitude_prune keeps the int(density n) largest; DARE keeps entries by its generator and rescales them.
TEST(combine_ties_prune_and_dare_follow_peft) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 1);
    AdapterSet *sets[2] = {lora_set(m, "k_proj", 2, 2, 1), lora_set(m, "k_proj", 2, 2, 2)};  // s = 1
    const Adapter *p = &sets[0]->adapters[0], *q = &sets[1]->adapters[0];
    for (long e = 0; e < p->A->numel; e++) {
        p->A->w[e] = 1.0f + (float)(e % 5);       // positive
        q->A->w[e] = -0.25f * p->A->w[e];         // negative, smaller: "total" elects +, "frequency" ties (0 >= 0: +)
    }
    double w[2] = {4, 1};  // sqrt weights 2 and 1
    CombineOptions o = opts(COMBINE_TIES, 1.0);
    CHECK(lora_combine(m, sets, w, 2, &o) == 0);
    const Adapter *a = &m->adapters->adapters[0];
    for (long e = 0; e < a->A->numel; e++) CHECK_NEAR(a->A->w[e], 2 * p->A->w[e], 1e-6);  // only the positive one, count 1
    adapters_free(m);
    for (long e = 0; e < p->A->numel; e++) q->A->w[e] = -4 * p->A->w[e];  // now the negative one wins "total"
    CHECK(lora_combine(m, sets, w, 2, &o) == 0);
    a = &m->adapters->adapters[0];
    for (long e = 0; e < a->A->numel; e++) CHECK_NEAR(a->A->w[e], q->A->w[e], 1e-6);
    adapters_free(m);
    o.sign_frequency = true;  // one vote each: 0 >= 0 elects +
    CHECK(lora_combine(m, sets, w, 2, &o) == 0);
    a = &m->adapters->adapters[0];
    for (long e = 0; e < a->A->numel; e++) CHECK_NEAR(a->A->w[e], 2 * p->A->w[e], 1e-6);
    adapters_free(m);
    // magnitude_prune 0.3: int(0.3 n) entries of each factor survive (distinct magnitudes).
    for (long e = 0; e < p->A->numel; e++) p->A->w[e] = (float)(e + 1) * (e % 2 ? -1 : 1);
    double w1[2] = {1, 0};
    o = opts(COMBINE_MAGNITUDE_PRUNE, 0.3);
    CHECK(lora_combine(m, sets, w1, 2, &o) == 0);
    a = &m->adapters->adapters[0];
    long kept = 0, k = (long)(0.3 * (double)a->A->numel);
    for (long e = 0; e < a->A->numel; e++) {
        kept += a->A->w[e] != 0;
        if (a->A->w[e] != 0) CHECK(e >= a->A->numel - k && a->A->w[e] == p->A->w[e]);
    }
    CHECK(kept == k);
    adapters_free(m);
    // DARE: every entry 0 or the input over the density; the same seed, the same masks; density 1 is linear.
    o = opts(COMBINE_DARE_LINEAR, 0.5);
    CHECK(lora_combine(m, sets, w1, 2, &o) == 0);
    float *first = xmalloc(sizeof(float) * p->A->numel);
    a = &m->adapters->adapters[0];
    memcpy(first, a->A->w, sizeof(float) * a->A->numel);
    kept = 0;
    for (long e = 0; e < a->A->numel; e++) {
        CHECK(a->A->w[e] == 0 || a->A->w[e] == p->A->w[e] / 0.5f);
        kept += a->A->w[e] != 0;
    }
    CHECK(kept > 0 && kept < a->A->numel);
    adapters_free(m);
    CHECK(lora_combine(m, sets, w1, 2, &o) == 0 && !memcmp(first, m->adapters->adapters[0].A->w, sizeof(float) * p->A->numel));
    adapters_free(m);
    o.seed = 6;
    CHECK(lora_combine(m, sets, w1, 2, &o) == 0 && memcmp(first, m->adapters->adapters[0].A->w, sizeof(float) * p->A->numel));
    adapters_free(m);
    free(first);
    free_case(m, sets);
}

// PEFT's refusals: ranks that differ (linear, ties, ...), a density missing or negative, an svd rank above
// min(in, out), lists mixed with regexes, a PiSSA adapter not converted.
TEST(combine_refusals) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 1);
    AdapterSet *sets[2] = {lora_set(m, "q_proj", 2, 4, 1), lora_set(m, "q_proj", 3, 4, 2)};
    double w[2] = {1, 1};
    CombineOptions o = opts(COMBINE_LINEAR, NAN);
    CHECK(lora_combine(m, sets, w, 2, &o) != 0 && strstr(peft_last_error(), "same r"));
    o = opts(COMBINE_TIES, NAN);
    adapter_set_free(sets[1]);
    sets[1] = lora_set(m, "q_proj", 2, 4, 2);
    CHECK(lora_combine(m, sets, w, 2, &o) != 0 && strstr(peft_last_error(), "density"));
    o.density = -0.5;
    CHECK(lora_combine(m, sets, w, 2, &o) != 0 && strstr(peft_last_error(), ">= 0"));
    o = opts(COMBINE_SVD, NAN);
    o.svd_rank = 17;
    CHECK(lora_combine(m, sets, w, 2, &o) != 0 && strstr(peft_last_error(), "min(in, out)") && !m->adapters);
    adapter_set_free(sets[1]);
    sets[1] = lora_set(m, "re:.*q_proj", 2, 4, 2);
    o = opts(COMBINE_LINEAR, NAN);
    CHECK(lora_combine(m, sets, w, 2, &o) != 0 && strstr(peft_last_error(), "mix"));
    CombineType t;
    CHECK(combine_type_parse("average", &t) != 0 && strstr(peft_last_error(), "dare_ties"));
    free_case(m, sets);
}

// The combined adapter saves as a PEFT folder (r, lora_alpha, union of targets) and reloads to the same logits.
TEST(combine_saves_and_reloads) {
    Model *m = test_model_from_json(TINY_GPT2_JSON, 1), *m2 = test_model_from_json(TINY_GPT2_JSON, 1);
    AdapterSet *sets[2] = {lora_set(m, "c_attn", 2, 4, 1), lora_set(m, "c_fc", 2, 4, 2)};
    double w[2] = {1, 0.5};
    CombineOptions o = opts(COMBINE_TIES, 0.5);
    CHECK(lora_combine(m, sets, w, 2, &o) == 0);
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/peft-combine-%d", (int)getpid());
    CHECK(adapters_save(m, dir) == 0);
    CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
    CHECK(m2->adapters->cfg.r == 2 && m2->adapters->cfg.alpha == 2 && m2->adapters->n == 4);
    int32_t ids[5] = {3, 1, 4, 1, 5};
    model_forward(m, ids, NULL, 1, 5);
    float *a = test_copy_logits(m, 5L * m->cfg.vocab_size);
    model_forward(m2, ids, NULL, 1, 5);
    CHECK(!memcmp(a, m2->act.logits, sizeof(float) * 5 * m->cfg.vocab_size));
    char *cmd = xasprintf("rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    free(cmd);
    free(a);
    free_case(m, sets);
    model_free(m2);
}

// ---- peft check on lora-arithmetic and init cases laid out as the generator writes them, from our own
// numbers: the checks pass on them and fail once PEFT's side is changed (the real cases come from
// tools/reference_cases on the GPU machine) ----

static void write_io(const char *dir, Model *m, const int32_t *ids, int T) {
    int64_t ids64[16], shape[2] = {1, T}, lshape[3] = {1, T, m->cfg.vocab_size};
    for (int t = 0; t < T; t++) ids64[t] = ids[t];
    model_forward(m, ids, NULL, 1, T);
    StWriter *w = st_writer_new();
    st_writer_add(w, "input_ids", DT_I64, 2, shape, ids64);
    st_writer_add_f32(w, "logits", 3, lshape, m->act.logits);
    char *path = path_join(dir, "io.safetensors");
    st_writer_save(w, path);
    st_writer_free(w);
    free(path);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char *path = path_join(dir, name);
    write_file_atomic(path, text, strlen(text));
    free(path);
}

TEST(combine_check_runs_generator_layout) {
    char dir[64], sub[128];
    snprintf(dir, sizeof dir, "/tmp/peft-combine-case-%d", (int)getpid());
    Model *base = test_model_from_json(TINY_LLAMA_JSON, 3), *m = test_model_from_json(TINY_LLAMA_JSON, 3);
    snprintf(sub, sizeof sub, "%s/model", dir);
    CHECK(model_save(base, sub) == 0);
    AdapterSet *sets[2] = {lora_set(m, "q_proj,v_proj", 2, 4, 1), lora_set(m, "q_proj", 2, 8, 2)};
    for (int k = 0; k < 2; k++) {
        Model *tmp = test_model_from_json(TINY_LLAMA_JSON, 3);
        tmp->adapters = sets[k];  // saved through the model, then detached again
        snprintf(sub, sizeof sub, "%s/adapter%s", dir, k ? "2" : "");
        CHECK(adapters_save(tmp, sub) == 0);
        tmp->adapters = NULL;
        model_free(tmp);
    }
    double w[2] = {0.6, -0.9};
    CombineOptions o = opts(COMBINE_DARE_TIES, 0.7);
    CHECK(lora_combine(m, sets, w, 2, &o) == 0);
    snprintf(sub, sizeof sub, "%s/combined", dir);
    CHECK(adapters_save(m, sub) == 0);
    int32_t ids[6] = {1, 2, 3, 5, 8, 13};
    write_io(dir, m, ids, 6);
    write_text(dir, "case.json", "{\"method\": \"lora-arithmetic\", \"combine\": {\"combination_type\": \"dare_ties\", "
                                 "\"weights\": [0.6, -0.9], \"density\": 0.7, \"seed\": 5}}");
    CheckResult r;
    check_case(dir, &r);
    CHECK_MSG(r.status == CHECK_PASS, "%s", r.detail);
    // Another seed draws other masks: the combined tensors differ from "PEFT's".
    write_text(dir, "case.json", "{\"method\": \"lora-arithmetic\", \"combine\": {\"combination_type\": \"dare_ties\", "
                                 "\"weights\": [0.6, -0.9], \"density\": 0.7, \"seed\": 6}}");
    check_case(dir, &r);
    CHECK_MSG(r.status == CHECK_FAIL && strstr(r.detail, "combined"), "%s", r.detail);
    char *cmd = xasprintf("rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    free(cmd);
    model_free(base);
    free_case(m, sets);
}

// init.safetensors: the set's A and B and, from `weights`, the base weight of each of its modules.
static int write_init(const char *dir, const AdapterSet *set, Model *weights) {
    StWriter *w = st_writer_new();
    for (int i = 0; i < set->n; i++) {
        const Adapter *a = &set->adapters[i];
        const Param *wt = model_find_linear(weights, a->lin->module)->weight;
        st_writer_add_f32(w, a->A->name, 2, a->A->shape, a->A->w);
        st_writer_add_f32(w, a->B->name, 2, a->B->shape, a->B->w);
        st_writer_add_f32(w, wt->name, 2, wt->shape, wt->w);
    }
    char *path = path_join(dir, "init.safetensors");
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    free(path);
    return rc;
}

// An init case as tools/reference_cases writes it: init.safetensors (the initial tensors and residual from
// init_seed 77), adapter/ as PEFT saves it unconverted, converted/, and io from adapter/ loaded on model/ (as
// PEFT's reference run loads it, after torch.manual_seed(load_seed 0)). pissa_niter_K decomposes with the
// generator's draws, so the residual at load is not the init_seed one: the check compares each with its own.
// It passes, and fails when the stored residual is not the decomposition's.
static void init_case(int *failed_, const char *init) {
    char dir[64], sub[160];
    snprintf(dir, sizeof dir, "/tmp/peft-init-case-%d", (int)getpid());
    Model *base = test_model_from_json(TINY_LLAMA_JSON, 3), *m = test_model_from_json(TINY_LLAMA_JSON, 3);
    Model *loaded = test_model_from_json(TINY_LLAMA_JSON, 3);
    snprintf(sub, sizeof sub, "%s/model", dir);
    CHECK(model_save(base, sub) == 0);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    c.r = 2;
    adapter_config_set_targets(&c, "q_proj,o_proj");
    CHECK(lora_init_parse(&c, init, "test") == 0);
    CHECK(adapters_attach(m, &c, 77) == 0);
    AdapterSet *set = m->adapters;
    CHECK(write_init(dir, set, m) == 0);
    for (int i = 0; i < set->n_params; i++)
        for (long e = 0; e < set->params[i]->numel; e++) set->params[i]->w[e] *= 1.5f;  // "trained"
    snprintf(sub, sizeof sub, "%s/converted", dir);
    CHECK(adapters_save(m, sub) == 0);
    lora_init_after_load(set, NULL, NULL);  // now saved as it is: init_lora_weights as given, rank 2
    snprintf(sub, sizeof sub, "%s/adapter", dir);
    CHECK(adapters_save(m, sub) == 0);
    CHECK_MSG(adapters_load(loaded, sub) == 0, "%s", peft_last_error());
    int32_t ids[6] = {2, 7, 1, 8, 2, 8};
    write_io(dir, loaded, ids, 6);
    write_text(dir, "case.json", "{\"method\": \"lora\", \"init_seed\": 77, \"load_seed\": 0}");
    cJSON *j = cJSON_Parse("{\"init_seed\": 77, \"load_seed\": 0}");
    char msg[1024];
    double err = 0;
    CHECK_MSG(lora_init_check_case(dir, j, &err, msg, sizeof msg) == 0, "%s: %s", init, msg);
    // A load_seed other than the loader's 0: refused by name.
    cJSON_ReplaceItemInObject(j, "load_seed", cJSON_CreateNumber(1));
    CHECK(lora_init_check_case(dir, j, &err, msg, sizeof msg) != 0 && strstr(msg, "load_seed"));
    cJSON_ReplaceItemInObject(j, "load_seed", cJSON_CreateNumber(0));
    // A residual that is not ours: refused.
    model_find_linear(base, "model.layers.1.self_attn.o_proj")->weight->w[3] += 0.01f;
    CHECK(write_init(dir, set, base) == 0);
    CHECK(lora_init_check_case(dir, j, &err, msg, sizeof msg) != 0 && strstr(msg, "initial"));
    cJSON_Delete(j);
    char *cmd = xasprintf("rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    free(cmd);
    adapter_config_free(&c);
    model_free(base);
    model_free(m);
    model_free(loaded);
}

TEST(init_check_runs_generator_layout) {
    init_case(failed_, "pissa");
    if (*failed_ == TEST_PASSED) init_case(failed_, "pissa_niter_1");
}
