// test_embed.c: LoRA on the token embedding and trainable_token_indices (src/methods/adapter_embed.c): PEFT's
// forward written out in double, gradients against central differences (GPT-2's tied head, Llama's
// untied one), merge == the live adapter (and unmerge restores), save/reload under PEFT's names and
// config forms, PEFT's refusals and what is not implemented, and the reference cases when generated.
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "estimate.h"
#include "safetensors.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int parse(AdapterConfig *c, const char *targets, const char *extra) {
    char *text = xasprintf("{\"peft_type\":\"LORA\",\"r\":3,\"lora_alpha\":6,\"target_modules\":%s%s%s}", targets, *extra ? "," : "", extra);
    int rc = adapter_config_parse(c, text, "cfg.json");
    free(text);
    return rc;
}

static Model *with_adapter(const char *json, const char *targets, const char *extra) {
    AdapterConfig c;
    if (parse(&c, targets, extra)) { fprintf(stderr, "  parse: %s\n", peft_last_error()); return NULL; }
    Model *m = test_model_from_json(json, 5);
    int rc = adapters_attach(m, &c, 1);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); model_free(m); return NULL; }
    return m;
}

static Param *param(Model *m, const char *suffix) {
    AdapterSet *set = m->adapters;
    for (int i = 0; i < set->n_params; i++) {
        size_t n = strlen(set->params[i]->name), k = strlen(suffix);
        if (n >= k && !strcmp(set->params[i]->name + n - k, suffix)) return set->params[i];
    }
    return NULL;
}

// Every adapter tensor random (LoRA's B included, PEFT's A starting at 0).
static void randomize(Model *m, uint64_t seed) {
    uint64_t s = seed;
    AdapterSet *set = m->adapters;
    for (int i = 0; i < set->n_params - set->n_base; i++)
        for (long j = 0; j < set->params[i]->numel; j++) set->params[i]->w[j] = (float)(0.6 * (test_urand(&s) - 0.5));
}

// ids [2, 6] holding the tokens given (row 1's start), the rest random.
static void batch(Model *m, const int32_t *tokens, int n, int32_t *ids, int32_t *labels) {
    uint64_t s = 11;
    test_random_batch(ids, labels, 12, m->cfg.vocab_size, &s);
    for (int i = 0; i < n; i++) ids[6 + i] = labels[6 + i] = tokens[i];
}

static float *logits_of(Model *m, const int32_t *ids) {
    model_forward(m, ids, NULL, 2, 6);
    return test_copy_logits(m, 12L * m->cfg.vocab_size);
}

static double max_abs_diff(const float *a, const float *b, long n) {
    double d = 0;
    for (long i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

// PEFT's lora.Embedding: token t's embedding gains s B A[:, t] (A [r, vocab], B [d, r]); the untied head
// keeps its weight, so the model equals the base with W += s (B A)^T in the embedding lookup alone.
TEST(embed_lora_forward_is_peft_formula) {
    Model *m = with_adapter(TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "");
    CHECK(m != NULL);
    if (!m) return;
    Param *A = param(m, "model.embed_tokens.lora_embedding_A"), *B = param(m, "model.embed_tokens.lora_embedding_B");
    CHECK(A && B && A->shape[0] == 3 && A->shape[1] == 40 && B->shape[0] == 16 && B->shape[1] == 3);
    for (long j = 0; A && j < A->numel; j++) CHECK(A->w[j] == 0.0f);  // PEFT: A zeros, B normal
    randomize(m, 3);
    int32_t ids[12], labels[12];
    batch(m, NULL, 0, ids, labels);
    float *live = logits_of(m, ids);
    Model *ref = test_model_from_json(TINY_LLAMA_JSON, 5);  // the same base, the embedding changed by hand,
    for (int v = 0; v < 40; v++)                             // q_proj's LoRA merged into its weight
        for (int c = 0; c < 16; c++) {
            double s = 0;
            for (int q = 0; q < 3; q++) s += (double)B->w[c * 3 + q] * A->w[q * 40 + v];
            ref->wte->w[v * 16 + c] += (float)(2.0 * s);
        }
    for (int i = 0; i < m->adapters->n; i++) {
        Adapter *a = &m->adapters->adapters[i];
        Linear *lin = model_find_linear(ref, a->lin->module);
        for (int o = 0; o < lin->out; o++)
            for (int k = 0; k < lin->in; k++) {
                double s = 0;
                for (int q = 0; q < a->r; q++) s += (double)a->B->w[o * a->r + q] * a->A->w[q * lin->in + k];
                lin->weight->w[(long)o * lin->in + k] += (float)(a->scaling * s);
            }
    }
    float *want = logits_of(ref, ids);
    CHECK_MSG(max_abs_diff(live, want, 12L * 40) < 1e-5, "max diff %g", max_abs_diff(live, want, 12L * 40));
    free(live);
    free(want);
    model_free(ref);
    model_free(m);
}

// The gradients of LoRA's embedding tensors and of trained rows, on a tied head (GPT-2: a list's rows are
// the head's too) and an untied one (Llama: a dict naming lm_head separately).
TEST(embed_gradients_match_differences) {
    const struct { const char *json, *targets, *extra; int32_t tokens[4]; int n; } cases[] = {
        {TINY_GPT2_JSON, "[\"wte\",\"c_attn\"]", "\"fan_in_fan_out\":true", {0}, 0},
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"v_proj\"]", "\"use_rslora\":true", {0}, 0},
        {TINY_GPT2_JSON, "[\"c_attn\"]", "\"fan_in_fan_out\":true,\"trainable_token_indices\":[3,17,30]", {3, 17, 30}, 3},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[3,17]", {3, 17}, 2},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"embed_tokens\":[5,9],\"lm_head\":[9,33,2]}", {5, 9}, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        Model *m = with_adapter(cases[k].json, cases[k].targets, cases[k].extra);
        CHECK(m != NULL);
        if (!m) continue;
        randomize(m, 7 + k);
        int32_t ids[12], labels[12];
        batch(m, cases[k].tokens, cases[k].n, ids, labels);
        TestBatch b = {ids, labels, 2, 6};  // backward's gradients, then test_gradcheck's differences of the same loss
        model_zero_grad(m);
        model_forward(m, ids, labels, 2, 6);
        model_backward(m);
        CHECK_MSG(test_gradcheck(m, test_batch_loss, &b, 1e-3, 1e-2, 1e-4), "case %zu: %s %s", k, cases[k].targets, cases[k].extra);
        model_free(m);
    }
}

// Trained rows replace the base rows (PEFT saves the values, not a difference): a merged copy of the
// weights gives the live logits; GPT-2's tied head uses them too; unmerge restores the base.
TEST(embed_tokens_merge_equals_live_and_unmerge_restores) {
    const struct { const char *json, *targets, *extra; } cases[] = {
        {TINY_GPT2_JSON, "[\"c_attn\"]", "\"fan_in_fan_out\":true,\"trainable_token_indices\":[3,17,30]"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"embed_tokens\":[5,9],\"lm_head\":[9,33,2]}"},
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", ""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        Model *m = with_adapter(cases[k].json, cases[k].targets, cases[k].extra);
        CHECK(m != NULL);
        if (!m) continue;
        randomize(m, 3);
        int32_t tokens[] = {3, 17, 30, 5, 9, 2}, ids[12], labels[12];
        batch(m, tokens, 6, ids, labels);
        long n = 12L * m->cfg.vocab_size, nw = m->wte->numel;
        float *live = logits_of(m, ids), *base = xmalloc(sizeof(float) * nw);
        memcpy(base, m->wte->w, sizeof(float) * nw);
        adapters_merge(m);
        Param *weights[2];
        CHECK(adapter_embed_weights(m->adapters, weights) >= 1 && weights[0] == m->wte);
        float *merged = logits_of(m, ids);
        CHECK_MSG(max_abs_diff(live, merged, n) < 1e-5, "case %zu: merged differs by %g", k, max_abs_diff(live, merged, n));
        adapters_unmerge(m);
        CHECK(max_abs_diff(base, m->wte->w, nw) < 1e-6);
        free(merged);
        merged = logits_of(m, ids);
        CHECK(max_abs_diff(live, merged, n) < 1e-6);
        free(live);
        free(merged);
        free(base);
        model_free(m);
    }
}

// Saved (into the test's temporary folder, removed at exit) under PEFT's names (the embedding's base weight beside LoRA's when a target is "embed_tokens"),
// the config's list and dict forms written back, and reloaded to the same logits.
TEST(embed_save_and_reload_as_peft_names_them) {
    const struct { const char *json, *targets, *extra, *keys[3], *config; } cases[] = {
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "",
         {"base_model.model.model.embed_tokens.lora_embedding_A", "base_model.model.model.embed_tokens.lora_embedding_B",
          "base_model.model.model.embed_tokens.base_layer.weight"}, NULL},
        {TINY_GPT2_JSON, "[\"transformer.wte\",\"c_attn\"]", "\"fan_in_fan_out\":true",
         {"base_model.model.transformer.wte.lora_embedding_A", "base_model.model.transformer.wte.lora_embedding_B", NULL}, NULL},
        {TINY_GPT2_JSON, "[\"c_attn\"]", "\"fan_in_fan_out\":true,\"trainable_token_indices\":[3,17]",
         {"base_model.model.transformer.wte.token_adapter.trainable_tokens_delta", NULL, NULL}, "[3,17]"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"embed_tokens\":[5],\"lm_head\":[9,2]}",
         {"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
          "base_model.model.lm_head.token_adapter.trainable_tokens_delta", NULL}, "{\"embed_tokens\":[5],\"lm_head\":[9,2]}"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        Model *m = with_adapter(cases[k].json, cases[k].targets, cases[k].extra);
        CHECK(m != NULL);
        if (!m) continue;
        randomize(m, 9);
        int32_t tokens[] = {3, 17, 5, 9}, ids[12], labels[12];
        batch(m, tokens, 4, ids, labels);
        float *live = logits_of(m, ids);
        char *dir = xasprintf("%s/embed-save-%zu", test_tmpdir(), k), *st_path = path_join(dir, "adapter_model.safetensors");
        CHECK(adapters_save(m, dir) == 0);
        SafeTensors st = {0};
        CHECK(st_open(&st, st_path) == 0);
        int want = 0;
        for (int i = 0; i < 3 && cases[k].keys[i]; i++, want++) CHECK_MSG(st_find(&st, cases[k].keys[i]), "%s", cases[k].keys[i]);
        CHECK(st.n == want + 2 * m->adapters->n);  // and LoRA's A, B per linear
        st_close(&st);
        if (cases[k].config) {
            char *cfg_path = path_join(dir, "adapter_config.json"), *text = read_file(cfg_path, NULL), compact[256] = "";
            const char *at = text ? strstr(text, "\"trainable_token_indices\"") : NULL;
            for (size_t i = 0, o = 0; at && at[i] && at[i] != '\n' && o + 1 < sizeof compact; i++)  // the value, without spaces
                if (at[i] != ' ' && at[i] != '\t') compact[o++] = at[i];
            CHECK_MSG(strstr(compact, cases[k].config) || (text && strstr(text, "\"lm_head\"")), "%s", text ? text : "no config");
            free(text);
            free(cfg_path);
        }
        Model *m2 = test_model_from_json(cases[k].json, 5);
        CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
        float *back = logits_of(m2, ids);
        CHECK(max_abs_diff(live, back, 12L * m->cfg.vocab_size) == 0);
        free(back);
        free(live);
        free(st_path);
        free(dir);
        model_free(m2);
        model_free(m);
    }
}

// peft estimate counts the embedding's tensors exactly: the trainable parameters and the adapter file's bytes
// of the built model (rank_pattern on the embedding, PEFT's saved base weight, a tied and an untied head).
TEST(embed_estimate_matches_built_model) {
    const struct { const char *json, *targets, *extra; } cases[] = {
        {TINY_GPT2_JSON, "[\"wte\",\"c_attn\"]", "\"fan_in_fan_out\":true"},
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "\"rank_pattern\":{\"embed_tokens\":5}"},
        {TINY_LLAMA_JSON, "\".*(embed_tokens|v_proj)\"", ""},
        {TINY_GPT2_JSON, "[\"c_attn\"]", "\"fan_in_fan_out\":true,\"trainable_token_indices\":[3,17,30]"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"embed_tokens\":[5,9],\"lm_head\":[9,33,2]},\"bias\":\"all\""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        AdapterConfig c;
        CHECK(parse(&c, cases[k].targets, cases[k].extra) == 0);
        Model *m = test_model_from_json(cases[k].json, 5);
        CHECK_MSG(adapters_attach(m, &c, 1) == 0, "%s", peft_last_error());
        EstModel em;
        CHECK(est_model_from_config(&em, &m->cfg, "tiny") == 0);
        Estimate e;
        CHECK_MSG(estimate_compute(&e, &em, METHOD_LORA, &c, 2, 8) == 0, "%s", peft_last_error());
        CHECK_MSG(e.trainable == model_count_params(m, true), "case %zu: estimate %lld, model %ld", k, (long long)e.trainable, model_count_params(m, true));
        char *dir = xasprintf("%s/embed-estimate-%zu", test_tmpdir(), k), *path = path_join(dir, "adapter_model.safetensors");
        CHECK(adapters_save(m, dir) == 0);
        struct stat sb;
        CHECK(stat(path, &sb) == 0);
        CHECK_MSG(sb.st_size == e.file_bytes, "case %zu: file %lld bytes, estimate %lld", k, (long long)sb.st_size, (long long)e.file_bytes);
        free(path);
        free(dir);
        est_model_free(&em);
        adapter_config_free(&c);
        model_free(m);
    }
}

// What PEFT refuses, and what is not implemented here, each refused by name.
TEST(embed_refusals_name_the_problem) {
    const struct { const char *json, *targets, *extra, *type, *want; } cases[] = {
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[3,3]", NULL, "twice"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[40]", NULL, "outside"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[]", NULL, "non-empty"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[1.5]", NULL, "non-negative integers"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":\"3\"", NULL, "trainable_token_indices must be"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"v_proj\":[1]}", NULL, "model.layers.0.self_attn.v_proj"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"nothing\":[1]}", NULL, "names no module"},
        {TINY_GPT2_JSON, "[\"c_attn\"]", "\"trainable_token_indices\":{\"lm_head\":[1]}", NULL, "ties lm_head"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":{\"embed_tokens\":[1]},\"modules_to_save\":[\"embed_tokens\"]", NULL, "modules_to_save"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[1],\"modules_to_save\":[\"embed_tokens\"]", NULL, "modules_to_save"},
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "\"trainable_token_indices\":[1]", NULL, "same embedding"},
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "\"use_dora\":true", NULL, "DoRA"},
        {TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "\"init_lora_weights\":\"pissa\"", NULL, "pissa"},
        {TINY_GPT2_JSON, "[\"c_attn\",\"wpe\"]", "", NULL, "transformer.wpe"},
        {TINY_LLAMA_JSON, "[\"q_proj\"]", "\"trainable_token_indices\":[1]", "ADALORA", "LoRA only"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        AdapterConfig c;
        char *text = xasprintf("{\"peft_type\":\"%s\",\"r\":3,\"lora_alpha\":6,\"target_modules\":%s%s%s}", cases[k].type ? cases[k].type : "LORA",
                               cases[k].targets, *cases[k].extra ? "," : "", cases[k].extra);
        int rc = adapter_config_parse(&c, text, "cfg.json");
        free(text);
        if (!rc) {
            Model *m = test_model_from_json(cases[k].json, 5);
            rc = adapters_attach(m, &c, 1);
            adapter_config_free(&c);
            model_free(m);
        }
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), cases[k].want), "case %zu (%s): %s", k, cases[k].extra, rc ? peft_last_error() : "accepted");
    }
}

// Serving several adapters and adapter arithmetic load sets beside the model's: an embedding adapter is refused there.
TEST(embed_adapter_refused_beside_others) {
    Model *m = with_adapter(TINY_LLAMA_JSON, "[\"embed_tokens\",\"q_proj\"]", "");
    CHECK(m != NULL);
    if (!m) return;
    char *dir = xasprintf("%s/embed-detached", test_tmpdir());
    CHECK(adapters_save(m, dir) == 0);
    Model *base = test_model_from_json(TINY_LLAMA_JSON, 5);
    AdapterSet *set = adapters_load_detached(base, dir);
    CHECK_MSG(!set && strstr(peft_last_error(), "token embedding"), "%s", set ? "loaded" : peft_last_error());
    adapter_set_free(set);
    free(dir);
    model_free(base);
    model_free(m);
}

// The reference cases (tools/reference_cases/cases.py, made on the GPU machine) when generated; skipped by name until then.
TEST(embed_reference_cases) {
    static const char *const cases[] = {"gpt2-lora-embedding", "llama-lora-embedding", "gpt2-lora-trainable-tokens",
                                        "llama-lora-trainable-tokens", "llama-lora-trainable-tokens-dict"};
    if (!fixtures_dir()) SKIP_NO_FIXTURES();
    char missing[512];
    test_reference_cases(failed_, cases, (int)(sizeof cases / sizeof *cases), missing, sizeof missing);
    if (*failed_) return;
    if (missing[0]) SKIP("reference cases not generated yet (tools/reference_cases):%s", missing);
}
