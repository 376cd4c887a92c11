// test_adalora.c: AdaLoRA. Gradients of A, E, B (and of the orthogonal regulariser) against central
// differences; PEFT's budget schedule; the rank allocator over real training steps; saving with a
// rank_pattern (tensors sliced, a rank-0 module) and reloading to identical logits; merge; the
// reference cases; errors for impossible schedules.
#include "test.h"
#include "helpers.h"
#include "adalora.h"
#include "adapter.h"
#include "check.h"
#include "config.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Helpers

#define GPT2_TINY TINY_GPT2_JSON
#define LLAMA_TINY TINY_LLAMA_JSON
static uint64_t rng_state = 0xADA10;
static double urand(void) { return test_urand(&rng_state); }
static float srand_f(float scale) { return (float)((2 * urand() - 1) * scale); }
static Model *tiny_model(const char *json, uint64_t seed) { return test_model_from_json(json, seed); }

static void ada_cfg(AdapterConfig *c, const char *targets, int init_r, int target_r) {
    adapter_config_defaults(c, METHOD_ADALORA);
    c->init_r = c->r = init_r;
    c->target_r = target_r;
    c->alpha = 8;
    adapter_config_set_targets(c, targets);
}

static Model *ada_model(const char *json, const char *targets, int init_r, int target_r, uint64_t seed) {
    Model *m = tiny_model(json, seed);
    AdapterConfig c;
    ada_cfg(&c, targets, init_r, target_r);
    int rc = adapters_attach(m, &c, 5);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); model_free(m); return NULL; }
    return m;
}

// Non-zero E (PEFT starts from E = 0, which would hide A's and B's gradients) and larger A, B.
static void randomize_adapter(Model *m, float ab_scale) {
    AdapterSet *set = m->adapters;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        for (long j = 0; j < a->A->numel; j++) a->A->w[j] = srand_f(ab_scale);
        for (long j = 0; j < a->B->numel; j++) a->B->w[j] = srand_f(ab_scale);
        for (long j = 0; j < a->E->numel; j++) {
            float v = srand_f(1.0f);
            a->E->w[j] = v + (v < 0 ? -0.2f : 0.2f);
        }
    }
}

static double reg_fn(Model *m, void *ctx) { (void)ctx; return adapters_regularizer(m, false); }

// ---------------------------------------------------------------------------------------------
// (1) Gradients against central differences.

// The whole loss (causal LM + orthogonal regulariser: a fresh adapter is CAUSAL_LM, so PEFT adds it).
static int model_gradcheck(const char *json, const char *targets, float dropout) {
    Model *m = ada_model(json, targets, 4, 2, 11);
    if (!m) return 0;
    m->adapters->cfg.dropout = dropout;
    m->adapters->cfg.orth_reg_weight = 0.3f;
    randomize_adapter(m, 0.5f);
    m->training = dropout > 0;
    m->dropout_seed = 3;
    enum { B = 2, T = 6 };
    int32_t ids[B * T], labels[B * T];
    test_random_batch(ids, labels, B * T, m->cfg.vocab_size, &rng_state);
    TestBatch b = {ids, labels, B, T};
    double loss = model_forward(m, ids, labels, B, T);
    int ok = m->adapters->last_regularizer > 0 && fabs(loss - m->act.lm_loss - m->adapters->last_regularizer) < 1e-9;
    if (!ok) fprintf(stderr, "  the loss does not include the regulariser (reg %g)\n", m->adapters->last_regularizer);
    model_zero_grad(m);
    model_backward(m);
    ok = ok && test_gradcheck(m, test_batch_loss, &b, 1e-3, 1e-2, 1e-4);
    model_free(m);
    return ok;
}

TEST(adalora_gradcheck_gpt2) { CHECK(model_gradcheck(GPT2_TINY, "c_attn,c_proj,c_fc", 0.0f)); }
TEST(adalora_gradcheck_llama_all_linear) { CHECK(model_gradcheck(LLAMA_TINY, "all-linear", 0.0f)); }
TEST(adalora_gradcheck_llama_dropout) { CHECK(model_gradcheck(LLAMA_TINY, "q_proj,down_proj,up_proj", 0.25f)); }

// The regulariser alone: its value against a direct double computation, its gradient against differences.
TEST(adalora_regularizer_value_and_grad) {
    Model *m = ada_model(GPT2_TINY, "c_attn,c_proj,c_fc", 4, 2, 3);
    CHECK(m);
    randomize_adapter(m, 0.4f);
    AdapterSet *set = m->adapters;
    double sum = 0;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        int r = a->r, in = a->lin->in, out = a->lin->out;
        for (int t = 0; t < 2; t++) {
            double ss = 0;
            for (int p = 0; p < r; p++)
                for (int q = 0; q < r; q++) {
                    double d = p == q ? -1.0 : 0.0;
                    if (t == 0) for (int k = 0; k < in; k++) d += (double)a->A->w[p * in + k] * a->A->w[q * in + k];
                    else for (int o = 0; o < out; o++) d += (double)a->B->w[o * r + p] * a->B->w[o * r + q];
                    ss += d * d;
                }
            sum += sqrt(ss);
        }
    }
    double want = set->cfg.orth_reg_weight * sum / (2 * set->n);
    double got = adapters_regularizer(m, false);
    CHECK_MSG(fabs(got - want) <= 1e-5 * fabs(want), "regulariser %.9g, direct %.9g", got, want);
    model_zero_grad(m);
    adapters_regularizer(m, true);
    for (int i = 0; i < set->n; i++) CHECK(set->adapters[i].E->grad[0] == 0.0f);  // E is not in it
    int ok = test_gradcheck(m, reg_fn, NULL, 1e-3, 1e-3, 1e-6);
    model_free(m);
    CHECK(ok);
}

// ---------------------------------------------------------------------------------------------
// (2) The budget schedule.

TEST(adalora_budget_schedule) {
    // gpt2-adalora-schedule: 8 modules, init_r 4 -> 32, target_r 2 -> 16, tinit 3, tfinal 3, deltaT 2, 16 steps.
    static const int want_budget[16] = {32, 32, 32, 32, 27, 24, 21, 19, 18, 17, 16, 16, 16, 16, 16, 16};
    static const bool want_mask[16] = {0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1};
    for (int s = 0; s < 16; s++) {
        bool mask;
        int b = adalora_budget_schedule(32, 16, 3, 3, 16, 2, s, &mask);
        CHECK_MSG(b == want_budget[s] && mask == want_mask[s], "step %d: %d/%d, want %d/%d", s, b, mask, want_budget[s], want_mask[s]);
    }
    // Cubic decay: int((init - target) * (1 - (t - tinit) / (total - tfinal - tinit))^3 + target).
    bool mask;
    CHECK(adalora_budget_schedule(120, 40, 10, 20, 110, 5, 10, &mask) == 120 && !mask);
    CHECK(adalora_budget_schedule(120, 40, 10, 20, 110, 5, 15, &mask) == (int)(80 * pow(1 - 5.0 / 80, 3) + 40) && mask);
    CHECK(adalora_budget_schedule(120, 40, 10, 20, 110, 5, 16, &mask) == (int)(80 * pow(1 - 6.0 / 80, 3) + 40) && !mask);
    CHECK(adalora_budget_schedule(120, 40, 10, 20, 110, 5, 90, &mask) == 40 && mask);  // total - tfinal: target
    CHECK(adalora_budget_schedule(120, 40, 10, 20, 110, 5, 91, &mask) == 40 && mask);
    CHECK(adalora_budget_schedule(120, 40, 10, 20, 110, 5, 500, &mask) == 40 && mask);
    CHECK(adalora_budget_schedule(120, 40, 0, 0, 10, 1, 0, &mask) == 120 && !mask);
    CHECK(adalora_budget_schedule(120, 40, 0, 0, 10, 1, 1, &mask) == (int)(80 * pow(0.9, 3) + 40) && mask);
}

// ---------------------------------------------------------------------------------------------
// (3) The allocator over real steps: budgets, masks, the final pattern re-applied, then save/load.

static int count_zero_E(AdapterSet *set) {
    int z = 0;
    for (int i = 0; i < set->n; i++)
        for (int j = 0; j < set->adapters[i].r; j++) z += set->adapters[i].E->w[j] == 0.0f;
    return z;
}

TEST(adalora_allocator_training) {
    Model *m = ada_model(GPT2_TINY, "c_attn,c_proj,c_fc", 3, 1, 21);
    CHECK(m);
    AdapterSet *set = m->adapters;
    CHECK(set->n == 8);
    set->cfg.tinit = 1;
    set->cfg.tfinal = 2;
    set->cfg.total_step = 9;
    set->cfg.deltaT = 1;
    randomize_adapter(m, 0.3f);
    Param **params;
    int np = model_trainable(m, &params);
    AdamW opt;
    adamw_init(&opt, params, np, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f);
    m->training = true;
    enum { B = 2, T = 8 };
    int32_t ids[B * T];
    int ok = 1;
    for (int s = 0; s < 9 && ok; s++) {
        test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
        double loss = model_forward(m, ids, ids, B, T);
        model_backward(m);
        adamw_step(&opt, params, np, 1e-2f);
        int mask;
        bool want_mask;
        int want = adalora_budget_schedule(24, 8, 1, 2, 9, 1, s, &want_mask);
        int budget = adalora_update_and_allocate(m, s, &mask);
        model_zero_grad(m);
        if (!isfinite(loss) || budget != want || mask != want_mask) {
            fprintf(stderr, "  step %d: loss %g budget %d mask %d, want %d %d (%s)\n", s, loss, budget, mask, want, want_mask, peft_last_error());
            ok = 0;
        }
        // A mask step zeroes at least init_bgt - budget triplets (more only on exact ties).
        if (s <= 1 && count_zero_E(set) != 0) { fprintf(stderr, "  step %d: masked during warm-up\n", s); ok = 0; }
        if (s > 1 && mask && count_zero_E(set) < 24 - budget) { fprintf(stderr, "  step %d: %d zeros < %d\n", s, count_zero_E(set), 24 - budget); ok = 0; }
        if (s > 1 && set->cfg.n_rank_pattern != 8) { fprintf(stderr, "  step %d: rank pattern has %d modules\n", s, set->cfg.n_rank_pattern); ok = 0; }
    }
    adamw_free(&opt);
    CHECK(ok);
    // The final pattern keeps target_bgt = 8 triplets and E is zero exactly off the pattern.
    int kept = 0;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        const RankPatternEntry *e = NULL;
        for (int k = 0; k < set->cfg.n_rank_pattern; k++)
            if (!strcmp(set->cfg.rank_pattern[k].module, a->lin->module)) e = &set->cfg.rank_pattern[k];
        CHECK(e);
        int rank = 0;
        for (int j = 0; j < 3; j++) {
            rank += e->mask[j];
            if (!e->mask[j]) CHECK(a->E->w[j] == 0.0f);
            else CHECK(a->E->w[j] != 0.0f);
        }
        CHECK(rank == e->rank);
        kept += rank;
    }
    CHECK_MSG(kept == 8, "final pattern keeps %d triplets", kept);

    // Save: sliced tensors, the pattern in the config; reload: identical logits.
    const char *dir = test_tmpdir();
    CHECK(adapters_save(m, dir) == 0);
    m->training = false;
    test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
    model_forward(m, ids, NULL, B, T);
    long nl = (long)B * T * m->cfg.vocab_size;
    float *ref = test_copy_logits(m, nl);
    Model *m2 = tiny_model(GPT2_TINY, 21);
    CHECK(adapters_load(m2, dir) == 0);
    int total_r = 0;
    for (int i = 0; i < m2->adapters->n; i++) {
        Adapter *a = &m2->adapters->adapters[i];
        total_r += a->r;
        CHECK(a->A->shape[0] == a->r && a->B->shape[1] == a->r && a->E->shape[0] == a->r);
    }
    CHECK(total_r == 8);
    model_forward(m2, ids, NULL, B, T);
    double err = rel_error(m2->act.logits, ref, nl);
    CHECK_MSG(err <= 1e-6, "reloaded logits differ: %g", err);
    free(ref);
    model_free(m2);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// (4) Save -> load with a rank_pattern that prunes a module to rank 0.

static void set_pattern(AdapterSet *set, const char *module, const bool *mask, int init_r) {
    AdapterConfig *c = &set->cfg;
    c->rank_pattern = xrealloc(c->rank_pattern, sizeof(RankPatternEntry) * (c->n_rank_pattern + 1));
    RankPatternEntry *e = &c->rank_pattern[c->n_rank_pattern++];
    memset(e, 0, sizeof *e);
    snprintf(e->module, sizeof e->module, "%s", module);
    e->mask = xcalloc(init_r, sizeof(bool));
    for (int k = 0; k < init_r; k++) e->rank += (e->mask[k] = mask[k]);
    // As the allocator does: masked triplets have E = 0.
    for (int i = 0; i < set->n; i++)
        if (!strcmp(set->adapters[i].lin->module, module))
            for (int k = 0; k < init_r; k++)
                if (!mask[k]) set->adapters[i].E->w[k] = 0.0f;
}

TEST(adalora_save_load_rank_pattern_with_rank0) {
    Model *m = ada_model(LLAMA_TINY, "q_proj,v_proj,down_proj", 4, 2, 7);
    CHECK(m);
    randomize_adapter(m, 0.3f);
    AdapterSet *set = m->adapters;
    CHECK(set->n == 6);
    static const bool none[4] = {0, 0, 0, 0}, some[4] = {0, 1, 0, 1}, one[4] = {0, 0, 1, 0}, all[4] = {1, 1, 1, 1};
    set_pattern(set, "model.layers.0.self_attn.q_proj", none, 4);
    set_pattern(set, "model.layers.0.self_attn.v_proj", some, 4);
    set_pattern(set, "model.layers.1.mlp.down_proj", one, 4);
    set_pattern(set, "model.layers.1.self_attn.q_proj", all, 4);
    enum { B = 2, T = 7 };
    int32_t ids[B * T];
    test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
    model_forward(m, ids, NULL, B, T);
    long nl = (long)B * T * m->cfg.vocab_size;
    float *ref = test_copy_logits(m, nl);

    const char *dir = test_tmpdir();
    CHECK(adapters_save(m, dir) == 0);
    // The config: rank_pattern keyed "<module>.lora_E" (PEFT strips the adapter name), init_r bools each.
    char *cfg_path = path_join(dir, "adapter_config.json");
    char *text = read_file(cfg_path, NULL);
    free(cfg_path);
    CHECK(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *rp = cJSON_GetObjectItem(j, "rank_pattern");
    CHECK(cJSON_IsObject(rp) && cJSON_GetArraySize(rp) == 4);
    const cJSON *v = cJSON_GetObjectItem(rp, "model.layers.0.self_attn.v_proj.lora_E");
    CHECK(cJSON_GetArraySize(v) == 4 && cJSON_IsFalse(cJSON_GetArrayItem(v, 0)) && cJSON_IsTrue(cJSON_GetArrayItem(v, 1)));
    CHECK(cJSON_IsString(cJSON_GetObjectItem(j, "peft_type")) && !strcmp(cJSON_GetObjectItem(j, "peft_type")->valuestring, "ADALORA"));
    cJSON_Delete(j);
    // The tensors: sliced to the kept ranks; the rank-0 module's are empty.
    char *st_path = path_join(dir, "adapter_model.safetensors");
    SafeTensors st;
    CHECK(st_open(&st, st_path) == 0);
    free(st_path);
    const StTensor *a0 = st_find(&st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A");
    const StTensor *b0 = st_find(&st, "base_model.model.model.layers.0.self_attn.q_proj.lora_B");
    const StTensor *bv = st_find(&st, "base_model.model.model.layers.0.self_attn.v_proj.lora_B");
    const StTensor *ev = st_find(&st, "base_model.model.model.layers.0.self_attn.v_proj.lora_E");
    const StTensor *au = st_find(&st, "base_model.model.model.layers.0.mlp.down_proj.lora_A");
    CHECK(a0 && a0->ndim == 2 && a0->shape[0] == 0 && a0->shape[1] == 16);
    CHECK(b0 && b0->shape[1] == 0);
    CHECK(bv && bv->shape[1] == 2 && ev && ev->shape[0] == 2 && ev->shape[1] == 1);
    CHECK(au && au->shape[0] == 4);  // no pattern entry: full rank
    float evals[2];
    CHECK(st_to_f32(ev, evals) == 0);
    Adapter *vsrc = NULL;
    for (int i = 0; i < set->n; i++)
        if (!strcmp(set->adapters[i].lin->module, "model.layers.0.self_attn.v_proj")) vsrc = &set->adapters[i];
    CHECK(vsrc && evals[0] == vsrc->E->w[1] && evals[1] == vsrc->E->w[3]);
    st_close(&st);

    // Reload: ranks from the pattern (0 included), identical logits.
    Model *m2 = tiny_model(LLAMA_TINY, 7);
    CHECK(adapters_load(m2, dir) == 0);
    int ranks[6], n = m2->adapters->n;
    for (int i = 0; i < n; i++) ranks[i] = m2->adapters->adapters[i].r;
    static const char *mods[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"};
    static const int want_r[] = {0, 2, 1, 4};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < n; i++)
            if (!strcmp(m2->adapters->adapters[i].lin->module, mods[k])) CHECK_MSG(ranks[i] == want_r[k], "%s: rank %d", mods[k], ranks[i]);
    model_forward(m2, ids, NULL, B, T);
    double err = rel_error(m2->act.logits, ref, nl);
    CHECK_MSG(err <= 1e-6, "reloaded logits differ: %g", err);
    // The loss works with the rank-0 module in place (its empty A, B count in PEFT's mean, with norm 0).
    int32_t labels[B * T];
    memcpy(labels, ids, sizeof labels);
    double loss = model_forward(m2, ids, labels, B, T);
    CHECK(isfinite(loss));
    model_zero_grad(m2);
    model_backward(m2);
    // Saving the pruned adapter again writes it as it is; it reloads to the same logits.
    const char *dir2 = test_tmpdir();
    CHECK(adapters_save(m2, dir2) == 0);
    Model *m3 = tiny_model(LLAMA_TINY, 7);
    CHECK(adapters_load(m3, dir2) == 0);
    model_forward(m3, ids, NULL, B, T);
    err = rel_error(m3->act.logits, ref, nl);
    CHECK_MSG(err <= 1e-6, "second reload differs: %g", err);
    // Merging the pruned adapter gives the same logits too.
    adapters_merge(m3);
    model_forward(m3, ids, NULL, B, T);
    err = rel_error(m3->act.logits, ref, nl);
    CHECK_MSG(err <= 1e-5, "merged logits differ: %g", err);
    free(ref);
    model_free(m3);
    model_free(m2);
    model_free(m);
}

TEST(adalora_merge_unmerge) {
    Model *m = ada_model(GPT2_TINY, "c_attn,c_proj,c_fc", 4, 2, 9);
    CHECK(m);
    randomize_adapter(m, 0.3f);
    enum { B = 2, T = 6 };
    int32_t ids[B * T];
    test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
    model_forward(m, ids, NULL, B, T);
    long nl = (long)B * T * m->cfg.vocab_size;
    float *ref = test_copy_logits(m, nl);
    Param *w = m->adapters->adapters[0].lin->weight;
    float *w0 = xmalloc(sizeof(float) * w->numel);
    memcpy(w0, w->w, sizeof(float) * w->numel);
    adapters_merge(m);
    CHECK(rel_error(w->w, w0, w->numel) > 1e-3);  // the merge changed the base
    model_forward(m, ids, NULL, B, T);
    double err = rel_error(m->act.logits, ref, nl);
    CHECK_MSG(err <= 1e-5, "merged logits differ: %g", err);
    adapters_unmerge(m);
    CHECK(rel_error(w->w, w0, w->numel) <= 1e-6);
    free(w0);
    free(ref);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// (5) The reference cases, and what loading them implies.

TEST(adalora_reference_cases) {
    if (!fixtures_dir()) SKIP_NO_FIXTURES();
    static const char *cases[] = {"gpt2-adalora", "llama-adalora", "gpt2-adalora-schedule"};
    for (int i = 0; i < 3; i++) {
        char *dir = path_join(fixtures_dir(), cases[i]);
        CheckResult r;
        check_case(dir, &r);
        free(dir);
        CHECK_MSG(r.status == CHECK_PASS, "%s: %s", cases[i], r.detail);
    }
}

// The fixtures' adapters have "task_type": null: PEFT's plain PeftModel skips AdaLoraModel.forward,
// so no regulariser (their loss == lm_loss); saving keeps task_type null.
TEST(adalora_task_type_null_has_no_regularizer) {
    if (!fixtures_dir()) SKIP_NO_FIXTURES();
    char *dir = path_join(fixtures_dir(), "gpt2-adalora");
    char *model_dir = path_join(dir, "model"), *adapter_dir = path_join(dir, "adapter");
    Model *m = model_load(model_dir);
    free(model_dir);
    free(dir);
    CHECK(m && adapters_load(m, adapter_dir) == 0);
    free(adapter_dir);
    CHECK(adapters_regularizer(m, false) == 0.0);
    const char *out = test_tmpdir();
    CHECK(adapters_save(m, out) == 0);
    char *cfg_path = path_join(out, "adapter_config.json");
    char *text = read_file(cfg_path, NULL);
    free(cfg_path);
    cJSON *j = cJSON_Parse(text);
    free(text);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "task_type")));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "rank_pattern")));
    CHECK(cJSON_GetObjectItem(j, "init_r")->valueint == 4);
    cJSON_Delete(j);
    model_free(m);
}

// ---------------------------------------------------------------------------------------------
// (6) Errors.

static int attach_with(Model *m, int init_r, int target_r, int tinit, int tfinal, int total_step) {
    AdapterConfig c;
    ada_cfg(&c, "c_attn", init_r, target_r);
    c.tinit = tinit;
    c.tfinal = tfinal;
    c.total_step = total_step;
    int rc = adapters_attach(m, &c, 0);
    adapter_config_free(&c);
    return rc;
}

TEST(adalora_schedule_errors) {
    Model *m = tiny_model(GPT2_TINY, 1);
    CHECK(m);
    // No budgeting phase: tinit >= total_step - tfinal.
    CHECK(attach_with(m, 4, 2, 5, 5, 10) != 0);
    CHECK_MSG(strstr(peft_last_error(), "budgeting phase"), "%s", peft_last_error());
    CHECK(!m->adapters);
    CHECK(attach_with(m, 4, 2, 20, 0, 10) != 0);
    CHECK(attach_with(m, 4, 2, 0, 10, 10) != 0);
    // target_r above init_r.
    CHECK(attach_with(m, 4, 5, 1, 1, 10) != 0);
    CHECK_MSG(strstr(peft_last_error(), "target_r"), "%s", peft_last_error());
    CHECK(!m->adapters);
    // Negative values.
    CHECK(attach_with(m, 4, 2, -1, 1, 10) != 0);
    // No total_step: attaching (and inference) is fine, the allocator refuses.
    CHECK(attach_with(m, 4, 2, 0, 0, 0) == 0);
    int mask = 7;
    CHECK(adalora_update_and_allocate(m, 0, &mask) == -1);
    CHECK_MSG(strstr(peft_last_error(), "total_step"), "%s", peft_last_error());
    CHECK(mask == 0);
    // deltaT 0 and betas outside (0, 1) are refused by the allocator.
    m->adapters->cfg.total_step = 10;
    m->adapters->cfg.deltaT = 0;
    CHECK(adalora_update_and_allocate(m, 0, &mask) == -1);
    CHECK_MSG(strstr(peft_last_error(), "deltaT"), "%s", peft_last_error());
    m->adapters->cfg.deltaT = 1;
    m->adapters->cfg.beta1 = 1.0f;
    CHECK(adalora_update_and_allocate(m, 0, &mask) == -1);
    m->adapters->cfg.beta1 = 0.85f;
    // The final allocation without any scores (the allocator did not run from the start).
    CHECK(adalora_update_and_allocate(m, 10, &mask) == -1);
    CHECK_MSG(strstr(peft_last_error(), "sensitivity scores"), "%s", peft_last_error());
    // Past total_step - tfinal with no final allocation: no pattern to apply.
    CHECK(adalora_update_and_allocate(m, 11, &mask) == -1);
    CHECK_MSG(strstr(peft_last_error(), "rank pattern"), "%s", peft_last_error());
    adapters_free(m);
    // The allocator on a model without AdaLoRA.
    CHECK(adalora_update_and_allocate(m, 0, &mask) == -1);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    adapter_config_set_targets(&c, "c_attn");
    CHECK(adapters_attach(m, &c, 0) == 0);
    adapter_config_free(&c);
    CHECK(adalora_update_and_allocate(m, 0, &mask) == -1);
    model_free(m);
}

// A rank_pattern list whose length is not init_r, and one naming a module that is not adapted.
TEST(adalora_load_bad_rank_pattern) {
    Model *m = ada_model(GPT2_TINY, "c_attn", 2, 1, 4);
    CHECK(m);
    const char *dir = test_tmpdir();
    CHECK(adapters_save(m, dir) == 0);
    model_free(m);
    char *cfg_path = path_join(dir, "adapter_config.json");
    char *text = read_file(cfg_path, NULL);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cJSON_DeleteItemFromObject(j, "rank_pattern");
    cJSON *rp = cJSON_AddObjectToObject(j, "rank_pattern");
    cJSON *l = cJSON_AddArrayToObject(rp, "transformer.h.0.attn.c_attn.lora_E");
    for (int k = 0; k < 3; k++) cJSON_AddItemToArray(l, cJSON_CreateTrue());
    char *out = cJSON_Print(j);
    CHECK(write_file_atomic(cfg_path, out, strlen(out)) == 0);
    free(out);
    Model *m2 = tiny_model(GPT2_TINY, 4);
    CHECK(adapters_load(m2, dir) != 0);
    CHECK_MSG(strstr(peft_last_error(), "init_r"), "%s", peft_last_error());
    // Right length, unknown module.
    cJSON_DeleteItemFromObject(j, "rank_pattern");
    rp = cJSON_AddObjectToObject(j, "rank_pattern");
    l = cJSON_AddArrayToObject(rp, "transformer.h.7.attn.c_attn.lora_E");
    for (int k = 0; k < 2; k++) cJSON_AddItemToArray(l, cJSON_CreateTrue());
    out = cJSON_Print(j);
    CHECK(write_file_atomic(cfg_path, out, strlen(out)) == 0);
    free(out);
    CHECK(adapters_load(m2, dir) != 0);
    CHECK_MSG(strstr(peft_last_error(), "transformer.h.7.attn.c_attn"), "%s", peft_last_error());
    CHECK(!m2->adapters);
    cJSON_Delete(j);
    free(cfg_path);
    model_free(m2);
}
