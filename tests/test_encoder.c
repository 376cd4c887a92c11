// Encoder tests (BERT, RoBERTa): config.json keys, finite-difference gradients of every problem
// type's loss with padding and token types, padding that changes nothing, and the head's names.
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "classify.h"
#include "estimate.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const TINY_ROBERTA_JSON =
    "{\"model_type\": \"roberta\", \"vocab_size\": 30, \"hidden_size\": 16, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"intermediate_size\": 24, \"max_position_embeddings\": 20, \"type_vocab_size\": 1, \"layer_norm_eps\": 1e-5,"
    " \"pad_token_id\": 1, \"hidden_act\": \"gelu\", \"hidden_dropout_prob\": 0.0, \"attention_probs_dropout_prob\": 0.0,"
    " \"architectures\": [\"RobertaForSequenceClassification\"], \"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}}";
static const char *const TINY_BERT_JSON =
    "{\"model_type\": \"bert\", \"vocab_size\": 30, \"hidden_size\": 16, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
    " \"intermediate_size\": 20, \"max_position_embeddings\": 16, \"type_vocab_size\": 2, \"layer_norm_eps\": 1e-12,"
    " \"pad_token_id\": 0, \"hidden_act\": \"gelu_new\", \"num_labels\": 3, \"position_embedding_type\": \"absolute\"}";

static Model *tiny_encoder(const char *json, int num_labels, const char *problem, uint64_t seed) {
    ModelConfig c;
    if (config_parse(&c, json, "config.json")) { fprintf(stderr, "%s\n", peft_last_error()); return NULL; }
    c.num_labels = num_labels;
    c.problem_type = !strcmp(problem, "single") ? PROBLEM_SINGLE_LABEL : !strcmp(problem, "multi") ? PROBLEM_MULTI_LABEL : PROBLEM_REGRESSION;
    Model *m = model_create_random(&c, seed);
    uint64_t s = seed;
    for (int i = 0; i < m->n_params; i++) {  // large enough values that every path carries signal
        Param *p = &m->params[i];
        bool gain = strstr(p->name, "LayerNorm.weight") != NULL;
        for (long j = 0; j < p->numel; j++) p->w[j] = gain ? 1.0f + 0.2f * (float)(test_urand(&s) - 0.5) : 0.5f * (float)(test_urand(&s) - 0.5);
    }
    return m;
}

typedef struct {
    ClassifyBatch b;
} EncBatch;

static double enc_loss(Model *m, void *ctx) { return model_classify(m, &((EncBatch *)ctx)->b); }

// Row 1 padded at the end (pad id, mask 0); BERT's second segment has token type 1.
static void make_batch(const Model *m, int B, int T, int32_t *ids, int32_t *mask, int32_t *types, float *targets, uint64_t *s) {
    const ModelConfig *c = &m->cfg;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            bool pad = b == 1 && t >= T - 2;
            ids[i] = pad ? c->pad_token_id : 2 + (int)(test_urand(s) * (c->vocab_size - 2));
            mask[i] = !pad;
            types[i] = c->type_vocab_size > 1 && t >= T / 2 && !pad;
        }
    ProblemType pt = model_problem_type(c, false);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < c->num_labels; j++) {
            float u = (float)test_urand(s);
            targets[b * c->num_labels + j] = pt == PROBLEM_SINGLE_LABEL ? (float)(b % c->num_labels) : pt == PROBLEM_MULTI_LABEL ? (u > 0.5f) : 2 * u - 1;
        }
}

static int gradcheck(Model *m, int B, int T, uint64_t seed) {
    int32_t ids[64], mask[64], types[64];
    float targets[64];
    uint64_t s = seed;
    make_batch(m, B, T, ids, mask, types, targets, &s);
    EncBatch eb = {{ids, mask, types, targets, false, B, T}};
    model_zero_grad(m);
    double loss = model_classify(m, &eb.b);
    if (!isfinite(loss)) { fprintf(stderr, "  loss %g: %s\n", loss, peft_last_error()); return 0; }
    model_backward(m);
    return test_gradcheck(m, enc_loss, &eb, 1e-3, 1e-2, 1e-4);
}

TEST(encoder_config_keys) {
    ModelConfig c;
    CHECK(config_parse(&c, TINY_ROBERTA_JSON, "r.json") == 0);
    CHECK(c.arch == ARCH_BERT && c.num_labels == 3 && c.pad_token_id == 1 && c.gelu_exact && c.problem_type == PROBLEM_AUTO);
    CHECK(!strcmp(config_arch_name(&c), "RobertaForSequenceClassification"));
    CHECK(config_parse(&c, TINY_BERT_JSON, "b.json") == 0);
    CHECK(c.num_labels == 3 && !c.gelu_exact && c.type_vocab_size == 2);
    struct { const char *from, *to, *error; } bad[] = {
        {"\"hidden_act\": \"gelu_new\"", "\"hidden_act\": \"relu\"", "hidden_act \"relu\""},
        {"\"position_embedding_type\": \"absolute\"", "\"position_embedding_type\": \"relative_key\"", "position_embedding_type"},
        {"\"num_labels\": 3", "\"num_labels\": 3, \"is_decoder\": true", "is_decoder"},
        {"\"num_labels\": 3", "\"num_labels\": 3, \"rotary_dim\": 4", "key \"rotary_dim\""},
        {"\"num_labels\": 3", "\"num_labels\": 3, \"problem_type\": \"ranking\"", "problem_type"},
        {"\"num_labels\": 3", "\"num_labels\": 2, \"id2label\": {\"0\": \"x\"}", "id2label has 1"},
        {"\"model_type\": \"bert\"", "\"model_type\": \"deberta-v2\"", "DeBERTa is not"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *at = strstr(TINY_BERT_JSON, bad[i].from);
        CHECK(at);
        char *json = xasprintf("%.*s%s%s", (int)(at - TINY_BERT_JSON), TINY_BERT_JSON, bad[i].to, at + strlen(bad[i].from));
        int rc = config_parse(&c, json, "b.json");
        free(json);
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), bad[i].error), "case %zu: %s", i, peft_last_error());
    }
}

TEST(encoder_gradcheck_full_every_problem_type) {
    // (each problem type once, each architecture's head at least once: full fine-tuning's checks are slow)
    struct { const char *json, *name, *problem; } runs[] = {
        {TINY_ROBERTA_JSON, "roberta", "single"}, {TINY_BERT_JSON, "bert", "multi"}, {TINY_BERT_JSON, "bert", "regression"}};
    for (int i = 0; i < 3; i++) {
        Model *m = tiny_encoder(runs[i].json, i == 2 ? 1 : 3, runs[i].problem, 40 + i);
        CHECK(m);
        model_train_all(m);
        int ok = gradcheck(m, 3, 6, 7 + i);
        model_free(m);
        CHECK_MSG(ok, "%s %s", runs[i].name, runs[i].problem);
    }
}

// The frozen base (peft train --head-only): only classifier.* trains, and the backward ends at the head.
TEST(encoder_gradcheck_head_only) {
    const char *jsons[] = {TINY_ROBERTA_JSON, TINY_BERT_JSON};
    for (int a = 0; a < 2; a++) {
        Model *m = tiny_encoder(jsons[a], 3, "single", 50 + a);
        CHECK(m);
        int n = 0;
        for (int i = 0; i < m->n_params; i++) {
            Param *p = &m->params[i];
            if (strncmp(p->name, "classifier.", 11)) continue;
            p->trainable = true;
            p->grad = xcalloc(p->numel, sizeof(float));
            n++;
        }
        CHECK_MSG(n == (a ? 2 : 4), "%d head tensors", n);
        int ok = gradcheck(m, 3, 6, 9 + a);
        model_free(m);
        CHECK_MSG(ok, "%s", a ? "bert" : "roberta");
    }
}

// PEFT's SEQ_CLS: LoRA on query,value, the head trains as modules_to_save.
static void attach_seq_cls(Model *m, MethodId method, const char *targets, uint64_t seed) {
    AdapterConfig ac;
    adapter_config_defaults(&ac, method);
    ac.r = ac.init_r = 2;
    ac.target_r = 1;
    snprintf(ac.task_type, sizeof ac.task_type, "SEQ_CLS");
    adapter_config_add_module_to_save(&ac, "classifier");
    adapter_config_add_module_to_save(&ac, "score");
    adapter_config_set_targets(&ac, targets);
    int rc = adapters_attach(m, &ac, 1);
    adapter_config_free(&ac);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); return; }
    uint64_t s = seed;
    for (int i = 0; i < m->adapters->n_params; i++)  // every tensor non-zero (LoRA's B starts at 0)
        for (long j = 0; j < m->adapters->params[i]->numel; j++) m->adapters->params[i]->w[j] = 0.4f * (float)(test_urand(&s) - 0.5);
}

TEST(encoder_gradcheck_seq_cls_lora_and_head) {
    Model *m = tiny_encoder(TINY_ROBERTA_JSON, 3, "single", 3);
    attach_seq_cls(m, METHOD_LORA, "query,value", 9);
    CHECK(m->adapters && m->adapters->n == 4);
    // A and B of 4 modules, then the head's tensors under PEFT's keys (adapter_base.c: the model's own, trained in place)
    CHECK(m->adapters->n_params == 8 + 4 && m->adapters->n_base == 4);
    CHECK(!strcmp(m->adapters->params[8]->name, "base_model.model.classifier.dense.weight"));
    CHECK(!strcmp(m->adapters->params[11]->name, "base_model.model.classifier.out_proj.bias"));
    CHECK(m->head_dense->weight->w == m->adapters->params[8]->w && m->head_dense->weight->grad == m->adapters->params[8]->grad);
    int ok = gradcheck(m, 2, 6, 5);
    model_free(m);
    CHECK(ok);
    m = tiny_encoder(TINY_BERT_JSON, 3, "multi", 4);  // BERT: the pooler is the base's, frozen
    attach_seq_cls(m, METHOD_ADALORA, "query,key,value,intermediate.dense,output.dense", 10);
    CHECK(m->adapters && m->adapters->n == 12 && m->adapters->n_params == 36 + 2);
    CHECK(!strcmp(m->adapters->params[36]->name, "base_model.model.classifier.weight"));
    ok = gradcheck(m, 2, 6, 6);
    model_free(m);
    CHECK(ok);
}

static float *logits_of(Model *m, const ClassifyBatch *b) {
    if (model_classify(m, b) != 0) return NULL;
    float *out = xmalloc(sizeof(float) * b->B * m->cfg.num_labels);
    memcpy(out, m->act.logits, sizeof(float) * b->B * m->cfg.num_labels);
    return out;
}

// The adapter with its head saves under PEFT's keys and loads back bit for bit; merging gives the
// live adapter's logits and unmerging restores the base exactly.
TEST(encoder_seq_cls_save_load_merge) {
    MethodId methods[] = {METHOD_LORA, METHOD_VERA, METHOD_ADALORA};
    for (int k = 0; k < 3; k++) {
        Model *m = tiny_encoder(TINY_ROBERTA_JSON, 3, "single", 20 + k);
        char *dir = xasprintf("/tmp/peft-test-enc-%d-%d", (int)getpid(), k), *model_dir = path_join(dir, "model"), *ad_dir = path_join(dir, "adapter");
        CHECK(model_save(m, model_dir) == 0);
        attach_seq_cls(m, methods[k], "query,value", 30 + k);
        CHECK(m->adapters);
        int32_t ids[10] = {0, 5, 9, 13, 2, 0, 7, 8, 1, 1}, mask[10] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
        ClassifyBatch b = {ids, mask, NULL, NULL, false, 2, 5};
        float *live = logits_of(m, &b);
        CHECK(live && adapters_save(m, ad_dir) == 0);
        Model *m2 = model_load(model_dir);
        CHECK_MSG(m2 && adapters_load(m2, ad_dir) == 0, "%s", peft_last_error());
        float *again = logits_of(m2, &b);
        CHECK(again && !memcmp(again, live, sizeof(float) * 6));
        char *cfg_path = path_join(ad_dir, "adapter_config.json"), *text = read_file(cfg_path, NULL);
        CHECK(text && strstr(text, "\"SEQ_CLS\"") && strstr(text, "\"classifier\""));
        // The head trains in place (adapter_base.c): loading writes the trained head over the base's, and
        // it stays through merge, unmerge and unload (PEFT's merge_and_unload and unload keep the trained copy).
        Param *orig = model_find_param(m2, "classifier.out_proj.weight"), *trained = model_find_param(m, "classifier.out_proj.weight");
        Model *base = model_load(model_dir);
        Param *base_head = model_find_param(base, "classifier.out_proj.weight");
        CHECK(m2->head_out->weight == orig && !memcmp(orig->w, trained->w, sizeof(float) * orig->numel));
        CHECK(memcmp(orig->w, base_head->w, sizeof(float) * orig->numel));
        adapters_merge(m2);
        float *merged = logits_of(m2, &b);
        for (int j = 0; j < 6; j++) CHECK_MSG(fabsf(merged[j] - live[j]) < 1e-5f, "method %d logit %d: %g vs %g", k, j, merged[j], live[j]);
        CHECK(!memcmp(orig->w, trained->w, sizeof(float) * orig->numel));
        adapters_unmerge(m2);
        CHECK(!memcmp(orig->w, trained->w, sizeof(float) * orig->numel));
        adapters_free(m2);
        CHECK(m2->head_out->weight == orig && !memcmp(orig->w, trained->w, sizeof(float) * orig->numel) && !orig->grad);
        model_free(base);
        free(live); free(again); free(merged); free(text); free(cfg_path);
        model_free(m);
        model_free(m2);
        char *cmd = xasprintf("rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
        free(cmd); free(dir); free(model_dir); free(ad_dir);
    }
}

TEST(encoder_task_type_refusals) {
    ModelConfig c;
    CHECK(config_parse(&c, TINY_GPT2_JSON, "g.json") == 0);
    Model *m = model_create_random(&c, 1);
    AdapterConfig ac;
    adapter_config_defaults(&ac, METHOD_LORA);
    adapter_config_set_targets(&ac, "c_attn");
    snprintf(ac.task_type, sizeof ac.task_type, "SEQ_CLS");
    CHECK(adapters_attach(m, &ac, 1) != 0 && strstr(peft_last_error(), "SEQ_CLS"));
    snprintf(ac.task_type, sizeof ac.task_type, "CAUSAL_LM");
    adapter_config_add_module_to_save(&ac, "lm_head");  // tied to wte: PEFT would train a copy for one use only
    CHECK(adapters_attach(m, &ac, 1) != 0 && strstr(peft_last_error(), "ties its embedding"));
    adapter_config_free(&ac);
    model_free(m);
    m = tiny_encoder(TINY_ROBERTA_JSON, 3, "single", 1);
    adapter_config_defaults(&ac, METHOD_LORA);  // CAUSAL_LM on an encoder
    adapter_config_set_targets(&ac, "query");
    CHECK(adapters_attach(m, &ac, 1) != 0 && strstr(peft_last_error(), "CAUSAL_LM"));
    snprintf(ac.task_type, sizeof ac.task_type, "SEQ_CLS");
    adapter_config_add_module_to_save(&ac, "classifier");
    adapter_config_set_targets(&ac, "dense");  // classifier.dense is the head's: PEFT leaves it out
    CHECK(adapters_attach(m, &ac, 1) == 0 && m->adapters->n == 2 * 3 && !m->head_dense->adapter);
    adapter_config_free(&ac);
    model_free(m);
}

// Padding a sequence (pad ids, mask 0) leaves its logits as they were: RoBERTa's positions skip the
// padding, and no token attends to it.
TEST(encoder_padding_changes_nothing) {
    const char *jsons[] = {TINY_ROBERTA_JSON, TINY_BERT_JSON};
    for (int a = 0; a < 2; a++) {
        Model *m = tiny_encoder(jsons[a], 3, "single", 11 + a);
        int pad = m->cfg.pad_token_id;
        int32_t ids[8] = {3, 7, 9, 4, 12, pad, pad, pad}, mask[8] = {1, 1, 1, 1, 1, 0, 0, 0};
        ClassifyBatch full = {ids, mask, NULL, NULL, false, 1, 8}, cut = {ids, NULL, NULL, NULL, false, 1, 5};
        CHECK(model_classify(m, &cut) == 0);
        float ref[3];
        memcpy(ref, m->act.logits, sizeof ref);
        CHECK(model_classify(m, &full) == 0);
        for (int j = 0; j < 3; j++) CHECK_MSG(fabsf(m->act.logits[j] - ref[j]) < 1e-5f, "%s logit %d: %g vs %g", a ? "bert" : "roberta", j, m->act.logits[j], ref[j]);
        model_free(m);
    }
}

TEST(encoder_head_names_and_refusals) {
    Model *m = tiny_encoder(TINY_ROBERTA_JSON, 3, "single", 1);
    CHECK(!strcmp(m->head_dense->module, "classifier.dense") && !strcmp(m->head_out->module, "classifier.out_proj"));
    CHECK(model_find_param(m, "roberta.encoder.layer.1.attention.self.query.weight"));
    int32_t ids[4] = {3, 4, 40, 5}, labels[4] = {0};
    ClassifyBatch b = {ids, NULL, NULL, NULL, false, 1, 4};
    CHECK(isnan(model_classify(m, &b)) && strstr(peft_last_error(), "outside the vocabulary"));
    CHECK(isnan(model_forward(m, ids, labels, 1, 4)) && strstr(peft_last_error(), "encoder"));
    ids[2] = 6;
    float y = 3;
    b.targets = &y;
    b.int_targets = true;
    CHECK(isnan(model_classify(m, &b)) && strstr(peft_last_error(), "class index"));
    model_free(m);
    m = tiny_encoder(TINY_BERT_JSON, 2, "single", 1);
    CHECK(!strcmp(m->head_dense->module, "bert.pooler.dense") && !strcmp(m->head_out->module, "classifier"));
    model_free(m);
}

// ---- peft check on seq_cls cases ----

static void put_ids(StWriter *w, const char *name, const int32_t *v, int ndim, int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1}, n = ndim == 2 ? d0 * d1 : d0, *tmp = xmalloc(sizeof(int64_t) * n);
    for (long i = 0; i < n; i++) tmp[i] = v[i];
    st_writer_add(w, name, DT_I64, ndim, shape, tmp);
    free(tmp);
}

static void put_scalar(StWriter *w, const char *name, double v) {
    float f = (float)v;
    st_writer_add_f32(w, name, 0, NULL, &f);
}

// A seq_cls case folder in tools/reference_cases' layout made from our own numbers: peft check's
// seq_cls path (its io, its loss names, the head's keys, the merge of modules_to_save) must PASS it.
static int self_case(const char *root, const char *json, MethodId method) {
    Model *m = tiny_encoder(json, 3, "single", 77);
    m->cfg.problem_type = PROBLEM_AUTO;
    char *dir = xasprintf("%s/case-%d", root, (int)method), *model_dir = path_join(dir, "model"), *ad_dir = path_join(dir, "adapter");
    model_save(m, model_dir);
    if (method == METHOD_FULL) model_train_all(m);
    else attach_seq_cls(m, method, "query,value", 5);
    if (method != METHOD_FULL) adapters_save(m, ad_dir);
    int B = 2, T = 6;
    int32_t ids[12], mask[12], types[12], y[2] = {2, 0};
    float targets[6];
    uint64_t s = 3;
    make_batch(m, B, T, ids, mask, types, targets, &s);
    targets[0] = 2;  // single-label: the class indices of y
    targets[1] = 0;
    bool bert = m->cfg.type_vocab_size > 1;
    ClassifyBatch b = {ids, mask, bert ? types : NULL, targets, true, B, T};
    model_zero_grad(m);
    double loss = model_classify(m, &b);
    float logits[6];
    memcpy(logits, m->act.logits, sizeof logits);
    double cls_loss = m->act.lm_loss;
    model_backward(m);
    StWriter *io = st_writer_new(), *grads = st_writer_new(), *step = st_writer_new(), *merged = st_writer_new();
    put_ids(io, "input_ids", ids, 2, B, T);
    put_ids(io, "attention_mask", mask, 2, B, T);
    if (bert) put_ids(io, "token_type_ids", types, 2, B, T);
    put_ids(io, "labels", y, 1, B, 0);
    int64_t ls[2] = {B, 3};
    st_writer_add_f32(io, "logits", 2, ls, logits);
    put_scalar(io, "loss", loss);
    put_scalar(io, "cls_loss", cls_loss);
    Param **params;
    int n = model_trainable(m, &params);
    for (int i = 0; i < n; i++) st_writer_add_f32(grads, params[i]->name, params[i]->ndim, params[i]->shape, params[i]->grad);
    AdamW opt;
    adamw_init(&opt, params, n, 0.01f, 0.9f, 0.999f, 1e-8f, 0.01f);
    adamw_step(&opt, params, n, 0.01f);
    adamw_free(&opt);
    for (int i = 0; i < n; i++) st_writer_add_f32(step, params[i]->name, params[i]->ndim, params[i]->shape, params[i]->w);
    int rc = 0;
    if (method != METHOD_FULL) {  // merged: from the adapter as saved
        Model *m2 = model_load(model_dir);
        rc = !m2 || adapters_load(m2, ad_dir);
        if (!rc) {
            adapters_merge(m2);
            for (int i = 0; i < m2->n_params; i++)
                if (strstr(m2->params[i].name, "query.weight") || strstr(m2->params[i].name, "value.weight") || strstr(m2->params[i].name, "classifier"))
                    st_writer_add_f32(merged, m2->params[i].name, m2->params[i].ndim, m2->params[i].shape, m2->params[i].w);
        }
        model_free(m2);
    }
    const char *names[] = {"io", "grads", "step", "merged"};
    StWriter *ws[] = {io, grads, step, merged};
    for (int i = 0; i < 4; i++) {
        char *file = xasprintf("%s/%s.safetensors", dir, names[i]);
        if (i < 3 || method != METHOD_FULL) rc |= st_writer_save(ws[i], file);
        st_writer_free(ws[i]);
        free(file);
    }
    char *case_json = path_join(dir, "case.json"), *text = xasprintf(
        "{\"name\": \"self\", \"family\": \"%s\", \"method\": \"%s\", \"task\": \"seq_cls\", \"labels\": \"single\", \"B\": 2, \"T\": 6,"
        " \"optimizer\": {\"name\": \"AdamW\", \"lr\": 0.01, \"betas\": [0.9, 0.999], \"eps\": 1e-08, \"weight_decay\": 0.01}}",
        bert ? "bert" : "roberta", method_name(method));
    rc |= write_file_atomic(case_json, text, strlen(text));
    free(case_json);
    free(text);
    model_free(m);
    CheckResult r;
    if (!rc) check_case(dir, &r);
    if (!rc && r.status != CHECK_PASS) fprintf(stderr, "  %s %s: %s\n", method_name(method), bert ? "bert" : "roberta", r.detail);
    free(dir);
    free(model_dir);
    free(ad_dir);
    return !rc && r.status == CHECK_PASS;
}

TEST(encoder_check_reads_seq_cls_cases) {
    char *root = xasprintf("/tmp/peft-test-enc-check-%d", (int)getpid());
    CHECK(self_case(root, TINY_ROBERTA_JSON, METHOD_LORA));
    CHECK(self_case(root, TINY_BERT_JSON, METHOD_ADALORA));
    CHECK(self_case(root, TINY_BERT_JSON, METHOD_FULL));
    char *cmd = xasprintf("rm -rf '%s'", root);
    CHECK(system(cmd) == 0);
    free(cmd);
    free(root);
}

// peft check's floor (check.h): a vanishing reference is compared absolutely at the floor, anything
// above it relatively as before, and a wrong value below the floor still fails the tolerance.
TEST(check_floor_only_for_vanishing_references) {
    float got[2] = {1e-9f, -1e-9f}, ref[2] = {1e-17f, 0};
    CHECK(rel_error(got, ref, 2) > 1e7);                              // the key bias's 4e+08 before the floor
    CHECK(fabs(floored_error(NULL, got, ref, 2, 1e-6) - 1e-3) < 1e-6);  // 1e-9 against the floor 1e-6
    float big[2] = {1.01f, 2.0f}, big_ref[2] = {1.0f, 2.0f};
    CHECK(floored_error(NULL, big, big_ref, 2, 1e-4) == rel_error(big, big_ref, 2));
    float small[2] = {2e-5f, 0}, small_ref[2] = {1e-5f, 0};          // below the floor, but twice the reference
    CHECK(floored_error(NULL, small, small_ref, 2, 1e-4) > 1e-3 * 50);
    float before[2] = {1, 1}, after[2] = {1.001f, 1}, ref_after[2] = {1.001f, 1};
    CHECK(floored_error(before, after, ref_after, 2, 1e-2) == update_rel_error(before, after, ref_after, 2));
}

// The generator's cases (tools/reference_cases, task seq_cls): each is checked when its folder exists,
// and skipped by name until the cases are generated.
TEST(encoder_reference_cases) {
    const char *cases[] = {"roberta-full", "roberta-lora", "roberta-vera", "roberta-adalora", "bert-full", "bert-lora",
                           "bert-vera", "bert-adalora", "roberta-lora-regression", "bert-lora-multilabel"};
    int found = 0;
    for (size_t i = 0; fixtures_dir() && i < sizeof cases / sizeof *cases; i++) {
        char *dir = path_join(fixtures_dir(), cases[i]);
        if (!dir_exists(dir)) { free(dir); continue; }
        found++;
        CheckResult r;
        check_case(dir, &r);
        free(dir);
        printf("  %s %s (max rel err %.3g) %s\n", r.status == CHECK_PASS ? "PASS" : "FAIL", r.name, r.max_rel_err, r.detail);
        CHECK_MSG(r.status == CHECK_PASS, "%s: %s", cases[i], r.detail);
    }
    if (!found) SKIP("no seq_cls reference case (roberta-lora, bert-lora, ...) in the fixtures yet: tools/reference_cases makes them");
}

// GLUE's metrics on small cases worked out by hand (sklearn's and scipy's definitions).
TEST(classify_metrics_by_hand) {
    ClassifyMetrics s;
    float p3[] = {0, 1, 1, 0, 2}, g3[] = {0, 1, 0, 0, 2};
    classify_metrics(p3, g3, 5, 3, &s);
    CHECK_NEAR(s.accuracy, 0.8, 1e-12);
    CHECK_NEAR(s.f1, (0.8 + 2.0 / 3 + 1) / 3, 1e-12);       // macro F1
    CHECK_NEAR(s.mcc, 11 / sqrt(224.0), 1e-12);              // (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))
    float p2[] = {1, 1, 0, 0}, g2[] = {1, 0, 0, 1};
    classify_metrics(p2, g2, 4, 2, &s);
    CHECK(s.accuracy == 0.5 && s.f1 == 0.5 && s.mcc == 0);   // binary F1: class 1's
    float pr[] = {1, 1, 2}, gr[] = {1, 2, 3};
    classify_metrics(pr, gr, 3, 1, &s);
    CHECK(s.regression);
    CHECK_NEAR(s.spearman, 1.5 / sqrt(3.0), 1e-12);          // tied ranks share 1.5
    CHECK_NEAR(s.pearson, 1.5 / sqrt(3.0), 1e-12);
    CHECK_NEAR(s.mse, 2.0 / 3, 1e-12);
}

// ---- BERT's WordPiece tokenizer (wordpiece.c), on a vocabulary small enough to follow by hand ----

static Tokenizer *tiny_wordpiece(const char *normalizer) {
    static const char *const vocab[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s", "un", "##aff", "##able", ",", "!",
                                        "cafe", "\xE4\xB8\xAD", "a", "##b", "'", "t", "don", "."};
    char *v = xstrdup("");
    for (size_t i = 0; i < sizeof vocab / sizeof *vocab; i++) {
        char *next = xasprintf("%s%s\"%s\": %zu", v, i ? ", " : "", vocab[i], i);
        free(v);
        v = next;
    }
    char *json = xasprintf("{\"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"continuing_subword_prefix\": \"##\", "
                           "\"max_input_chars_per_word\": 12, \"vocab\": {%s}}, \"normalizer\": %s, "
                           "\"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}, \"decoder\": {\"type\": \"WordPiece\", \"prefix\": \"##\", \"cleanup\": true}, "
                           "\"added_tokens\": [{\"id\": 2, \"content\": \"[CLS]\", \"special\": true}, {\"id\": 3, \"content\": \"[SEP]\", \"special\": true}]}",
                           v, normalizer);
    char *path = xasprintf("/tmp/peft-test-wp-%d.json", (int)getpid());
    write_file_atomic(path, json, strlen(json));
    Tokenizer *t = tokenizer_load_json(path);
    if (!t) fprintf(stderr, "  %s\n", peft_last_error());
    remove(path);
    free(path);
    free(json);
    free(v);
    return t;
}

static int encodes_to(const Tokenizer *t, const char *text, const int32_t *want, int n_want) {
    int32_t *ids;
    int n;
    if (tokenizer_encode(t, text, strlen(text), &ids, &n)) { fprintf(stderr, "  %s: %s\n", text, peft_last_error()); return 0; }
    int ok = n == n_want && !memcmp(ids, want, sizeof(int32_t) * n);
    if (!ok) {
        fprintf(stderr, "  \"%s\" ->", text);
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
    return ok;
}

TEST(wordpiece_bert_uncased) {
    Tokenizer *t = tiny_wordpiece("{\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true, \"strip_accents\": null, \"lowercase\": true}");
    CHECK(t);
    // lowercase, punctuation split off, the longest pieces first ("worlds" = world ##s)
    CHECK(encodes_to(t, "Hello, WORLDS!", (int32_t[]){4, 10, 5, 6, 11}, 5));
    CHECK(encodes_to(t, "unaffable", (int32_t[]){7, 8, 9}, 3));
    // accents stripped (NFD, marks dropped), a CJK ideograph its own word, control characters dropped, tab as space
    CHECK(encodes_to(t, "Caf\xC3\xA9\xE4\xB8\xAD\x01\thello", (int32_t[]){12, 13, 4}, 3));
    CHECK(encodes_to(t, "cafe\xCC\x81", (int32_t[]){12}, 1));  // a decomposed accent: the combining mark dropped
    // a word with a piece missing from the vocabulary, or longer than max_input_chars_per_word, is [UNK]
    CHECK(encodes_to(t, "abx ab worldsworldsworlds", (int32_t[]){1, 14, 15, 1}, 4));
    CHECK(encodes_to(t, "[CLS] hello [SEP]", (int32_t[]){2, 4, 3}, 3));  // added tokens matched as they are
    int32_t ids[] = {2, 18, 16, 17, 4, 10, 5, 6, 11, 19, 3};
    size_t len;
    char *text = tokenizer_decode(t, ids, 11, &len);  // "##" glued, cleanup: no space before , ! . and n't-style clitics
    CHECK_MSG(!strcmp(text, "[CLS] don't hello, worlds!. [SEP]"), "%s", text);
    free(text);
    char greek[] = "\xCE\xB1";  // strip_accents on Greek: NFD not implemented, refused by name
    int32_t *out;
    int n;
    CHECK(tokenizer_encode(t, greek, strlen(greek), &out, &n) != 0 && strstr(peft_last_error(), "U+03B1"));
    tokenizer_free(t);
    t = tiny_wordpiece("{\"type\": \"BertNormalizer\", \"lowercase\": false}");  // cased: no accent stripping
    CHECK(t && encodes_to(t, "Hello cafe\xC3\xA9", (int32_t[]){1, 1}, 2));
    tokenizer_free(t);
}

// peft estimate on an encoder folder: the base's parameters, the trainable ones (the method's and the
// head's copies) and the adapter file's bytes, each exactly what the built model and adapters_save give.
TEST(encoder_estimate_is_exact) {
    MethodId methods[] = {METHOD_LORA, METHOD_VERA, METHOD_ADALORA};
    const char *jsons[] = {TINY_ROBERTA_JSON, TINY_BERT_JSON};
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 3; k++) {
            Model *m = tiny_encoder(jsons[a], 3, "single", 5);
            EstModel em;
            CHECK(est_model_from_config(&em, &m->cfg, "tiny") == 0);
            CHECK_MSG(em.n_params == model_count_params(m, false), "%lld vs %ld", (long long)em.n_params, model_count_params(m, false));
            const char *targets = k == 2 ? "query,key,value,intermediate.dense,output.dense" : "query,value";
            attach_seq_cls(m, methods[k], targets, 1);
            AdapterConfig ac = m->adapters->cfg;
            if (methods[k] == METHOD_VERA) ac.save_projection = true;
            Estimate e;
            CHECK(estimate_compute(&e, &em, methods[k], &ac, 2, 8) == 0);
            CHECK_MSG(e.trainable == model_count_params(m, false) - em.n_params, "%s: %lld vs %ld (r %d, %d modules)", method_name(methods[k]),
                      (long long)e.trainable, model_count_params(m, false) - em.n_params, e.r, e.n_adapted);
            char *dir = xasprintf("/tmp/peft-test-enc-est-%d", (int)getpid()), *file = path_join(dir, "adapter_model.safetensors");
            CHECK(adapters_save(m, dir) == 0);
            size_t len;
            char *bytes = read_file(file, &len);
            CHECK_MSG(bytes && (int64_t)len == e.file_bytes, "%s %d: file %zu, estimate %lld", method_name(methods[k]), a, len, (long long)e.file_bytes);
            free(bytes);
            char *cmd = xasprintf("rm -rf '%s'", dir);
            CHECK(system(cmd) == 0);
            free(cmd); free(file); free(dir);
            est_model_free(&em);
            model_free(m);
        }
}
