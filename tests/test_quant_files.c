// test_quant_files.c: bitsandbytes-quantized model folders (src/quant/quant_files.c): what peft quantize
// writes loads back bit for bit (GPT-2 and Llama, nf4 / fp4 / int8, double quantization on and off);
// every quantization_config key and quantized tensor that is not understood is refused by name; the
// bf16 merge into a quantized base (peft merge's default) saves and reloads as it should;
// test_quant_bnb_folder checks the reference's model-bnb folders (run by test_quant_model.c).
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "model.h"
#include "quant_files.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int same_dequantized(Model *a, Model *b) {
    for (int i = 0; i < a->n_linears; i++) {
        long n = (long)a->linears[i].in * a->linears[i].out;
        float *x = xmalloc(sizeof(float) * n), *y = xmalloc(sizeof(float) * n);
        qweight_dequantize(a->linears[i].q, x);
        qweight_dequantize(b->linears[i].q, y);
        int same = b->linears[i].q && !memcmp(x, y, sizeof(float) * n);
        free(x);
        free(y);
        if (!same) { fprintf(stderr, "  %s differs\n", a->linears[i].module); return 0; }
    }
    return 1;
}

static int save_and_reload(const char *json, QuantType t, bool nested) {
    Model *m = test_model_from_json(json, 4);
    for (int i = 0; i < m->n_linears; i++)
        if (model_quantize_linear(m, &m->linears[i], t, nested)) return 0;
    const char *dir = test_tmpdir();
    Model *back = NULL;
    int ok = model_save(m, dir) == 0 && (back = model_load(dir)) && back->quant == t && back->double_quant == (nested && t != QUANT_INT8) &&
             same_dequantized(m, back);
    if (!ok) fprintf(stderr, "  %s: %s\n", quant_type_name(t), peft_last_error());
    model_free(m);
    model_free(back);
    return ok;
}

TEST(quant_files_save_and_reload) {
    CHECK(save_and_reload(TINY_GPT2_JSON, QUANT_NF4, true));
    CHECK(save_and_reload(TINY_GPT2_JSON, QUANT_INT8, false));
    CHECK(save_and_reload(TINY_LLAMA_JSON, QUANT_FP4, false));
    CHECK(save_and_reload(TINY_LLAMA_JSON, QUANT_NF4, false));
}

static int config_refused(const char *qc_json, const char *want) {
    char *text = xasprintf("{\"quantization_config\": %s}", qc_json);
    cJSON *j = cJSON_Parse(text);
    QuantType t;
    bool dq;
    int refused = quant_config_read(j, &t, &dq, "config.json") != 0 && strstr(peft_last_error(), want);
    if (!refused) fprintf(stderr, "  %s: %s\n", qc_json, peft_last_error());
    cJSON_Delete(j);
    free(text);
    return refused;
}

TEST(quant_files_config_keys) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "quantization_config", quant_config_json(QUANT_FP4, true));
    QuantType t;
    bool dq;
    CHECK(quant_config_read(j, &t, &dq, "c") == 0 && t == QUANT_FP4 && dq);
    cJSON_Delete(j);
    CHECK(config_refused("{\"quant_method\": \"gptq\", \"bits\": 4}", "quant_method gptq"));
    CHECK(config_refused("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_storage\": \"float32\"}", "bnb_4bit_quant_storage float32"));
    CHECK(config_refused("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_foo\": 1}", "\"bnb_4bit_foo\""));
    CHECK(config_refused("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"load_in_8bit\": true}", "exactly one"));
    CHECK(config_refused("{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true, \"llm_int8_has_fp16_weight\": true}", "llm_int8_has_fp16_weight"));
}

// A saved nf4 model with one tensor added or changed: refused, naming it.
static int tensor_refused(void (*edit)(StWriter *w, const SafeTensors *st, const StTensor *t), const char *want) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 4);
    for (int i = 0; i < m->n_linears; i++) model_quantize_linear(m, &m->linears[i], QUANT_NF4, true);
    const char *dir = test_tmpdir();
    model_save(m, dir);
    model_free(m);
    char *path = path_join(dir, "model.safetensors");
    SafeTensors st;
    st_open(&st, path);
    StWriter *w = st_writer_new();
    for (int i = 0; i < st.n; i++) edit(w, &st, &st.tensors[i]);
    st_writer_save(w, path);
    st_writer_free(w);
    st_close(&st);
    free(path);
    Model *back = model_load(dir);
    int refused = !back && strstr(peft_last_error(), want);
    if (!refused) fprintf(stderr, "  loaded or another error: %s\n", peft_last_error());
    model_free(back);
    return refused;
}

static void copy(StWriter *w, const StTensor *t) { st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data); }
static void add_unknown(StWriter *w, const SafeTensors *st, const StTensor *t) {
    copy(w, t);
    if (!strcmp(t->name, "model.layers.0.self_attn.q_proj.weight")) st_writer_add(w, "model.layers.0.self_attn.q_proj.weight.zeros", DT_F32, 1, (int64_t[]){1}, (float[]){0});
}
static void bad_state(StWriter *w, const SafeTensors *st, const StTensor *t) {
    if (!strcmp(t->name, "model.layers.1.mlp.up_proj.weight.quant_state.bitsandbytes__nf4")) {
        const char *s = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [24, 16], \"nested_blocksize\": 256, "
                        "\"nested_dtype\": \"float32\", \"nested_offset\": 0.1, \"zero_point\": 3}";
        st_writer_add(w, t->name, DT_U8, 1, (int64_t[]){(int64_t)strlen(s)}, s);
    } else copy(w, t);
}
static void short_absmax(StWriter *w, const SafeTensors *st, const StTensor *t) {
    if (!strcmp(t->name, "model.layers.0.mlp.down_proj.weight.absmax")) st_writer_add(w, t->name, DT_U8, 1, (int64_t[]){t->numel - 1}, t->data);
    else copy(w, t);
}

TEST(quant_files_refuse_unknown_tensors) {
    CHECK(tensor_refused(add_unknown, "q_proj.weight.zeros is not a bitsandbytes tensor"));
    CHECK(tensor_refused(bad_state, "key \"zero_point\" is not supported"));
    CHECK(tensor_refused(short_absmax, "down_proj.weight.absmax is U8 with"));
}

// One reference case's model-bnb folder (tools/quant_reference: the tensors transformers saves):
// loaded, its dequantized weights are dequant.safetensors' bits; saved again by us, every tensor has
// the same name, dtype, shape and bytes (quant_state: the same JSON). Returns 1 when so (else says why).
int test_quant_bnb_folder(const char *case_dir) {
    char *bnb = path_join(case_dir, "model-bnb"), *deq = path_join(case_dir, "dequant.safetensors"), *out = path_join(test_tmpdir(), "bnb");
    Model *m = model_load(bnb);
    SafeTensors ref = {0}, ours = {0}, theirs = {0};
    int ok = m && st_open(&ref, deq) == 0;
    if (!m) fprintf(stderr, "  %s: %s\n", bnb, peft_last_error());
    for (int i = 0; ok && i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        const StTensor *t = st_find(&ref, lin->weight->name);
        bool fan;
        const float *w = model_linear_weight(m, lin, &fan);
        ok = t && t->numel == (long)lin->in * lin->out && !memcmp(w, t->data, t->nbytes);
        if (!ok) fprintf(stderr, "  %s: %s dequantizes otherwise\n", bnb, lin->weight->name);
    }
    char *ours_path = path_join(out, "model.safetensors"), *theirs_path = path_join(bnb, "model.safetensors");
    ok = ok && model_save(m, out) == 0 && st_open(&ours, ours_path) == 0 && st_open(&theirs, theirs_path) == 0 && ours.n == theirs.n;
    for (int i = 0; ok && i < theirs.n; i++) {
        const StTensor *a = &theirs.tensors[i], *b = st_find(&ours, a->name);
        ok = b && a->dtype == b->dtype && a->ndim == b->ndim && a->numel == b->numel;
        if (ok && strstr(a->name, "quant_state")) {
            cJSON *x = cJSON_ParseWithLength(a->data, a->nbytes), *y = cJSON_ParseWithLength(b->data, b->nbytes);
            ok = x && y && cJSON_Compare(x, y, true);
            cJSON_Delete(x);
            cJSON_Delete(y);
        } else if (ok) ok = !memcmp(a->data, b->data, a->nbytes);
        if (!ok) fprintf(stderr, "  %s: our %s differs from the reference's\n", bnb, a->name);
    }
    st_close(&ref);
    st_close(&ours);
    st_close(&theirs);
    model_free(m);
    free(ours_path);
    free(theirs_path);
    free(bnb);
    free(deq);
    free(out);
    return ok;
}

// peft merge's default for a quantized base: dequantized, rounded to bf16 (the base as transformers holds
// it loaded in bf16), the delta added in fp32 (PEFT's bf16 weight += fp32 delta), saved in bf16. The folder
// has only BF16 tensors and a config.json with dtype bfloat16 and no quantization_config; it loads back as
// the merged weights rounded to bf16, bit for bit, and its logits are the adapter's live on the quantized
// base within bf16's rounding.
static int merge_bf16(const char *json, QuantType t, MethodId method) {
    Model *m = test_model_from_json(json, 4), *back = NULL;
    for (int i = 0; i < m->n_linears; i++) model_quantize_linear(m, &m->linears[i], t, true);
    AdapterConfig c;
    adapter_config_defaults(&c, method);
    c.r = c.init_r = 4;
    c.target_r = 2;
    adapter_config_set_targets(&c, "all-linear");
    int ok = adapters_attach(m, &c, 5) == 0;
    adapter_config_free(&c);
    uint64_t s = 11;
    for (int i = 0; ok && i < m->adapters->n_params; i++)  // a delta the size of the weights
        for (long k = 0; k < m->adapters->params[i]->numel; k++) m->adapters->params[i]->w[k] = (float)(test_urand(&s) - 0.5) * 0.6f;
    enum { B = 2, T = 6 };
    int32_t ids[B * T];
    test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &s);
    long n = (long)B * T * m->cfg.vocab_size;
    float *live = NULL;
    if (ok && !isnan(model_forward(m, ids, NULL, B, T))) live = test_copy_logits(m, n);
    model_dequantize(m);
    model_round_bf16(m);
    adapters_merge(m);
    const char *dir = test_tmpdir();
    ok = ok && live && model_save_bf16(m, dir) == 0 && (back = model_load(dir)) && !back->quant;
    if (!ok) fprintf(stderr, "  %s: %s\n", quant_type_name(t), peft_last_error());
    for (int i = 0; ok && i < m->n_params; i++) {
        Param *p = &m->params[i];
        float *want = xmalloc(sizeof(float) * p->numel);
        memcpy(want, p->w, sizeof(float) * p->numel);
        quant_round(QUANT_OUT_BF16, want, p->numel);
        ok = !memcmp(want, back->params[i].w, sizeof(float) * p->numel);
        if (!ok) fprintf(stderr, "  %s: %s is not the merged weight in bf16\n", quant_type_name(t), p->name);
        free(want);
    }
    SafeTensors st = {0};
    char *path = path_join(dir, "model.safetensors"), *cfg_path = path_join(dir, "config.json"), *text = read_file(cfg_path, NULL);
    ok = ok && st_open(&st, path) == 0;
    for (int i = 0; ok && i < st.n; i++)
        if (st.tensors[i].dtype != DT_BF16) { fprintf(stderr, "  %s is not BF16\n", st.tensors[i].name); ok = 0; }
    cJSON *j = text ? cJSON_Parse(text) : NULL, *d = cJSON_GetObjectItem(j, "dtype"), *td = cJSON_GetObjectItem(j, "torch_dtype");
    ok = ok && j && !cJSON_GetObjectItem(j, "quantization_config") && cJSON_IsString(d) && !strcmp(d->valuestring, "bfloat16") &&
         cJSON_IsString(td) && !strcmp(td->valuestring, "bfloat16");
    if (ok && !isnan(model_forward(back, ids, NULL, B, T))) {
        double e = rel_error(back->act.logits, live, n);
        if (!(e > 0 && e < 1e-2)) { fprintf(stderr, "  %s: the bf16 merge's logits are %g from the adapter live\n", quant_type_name(t), e); ok = 0; }
    } else ok = 0;
    cJSON_Delete(j);
    st_close(&st);
    free(text);
    free(cfg_path);
    free(path);
    free(live);
    model_free(m);
    model_free(back);
    return ok;
}

TEST(quant_files_merge_bf16) {
    CHECK(merge_bf16(TINY_LLAMA_JSON, QUANT_NF4, METHOD_LORA));
    CHECK(merge_bf16(TINY_GPT2_JSON, QUANT_INT8, METHOD_VERA));
    CHECK(merge_bf16(TINY_GPT2_JSON, QUANT_FP4, METHOD_ADALORA));
}

TEST(quant_files_bf16_refusals) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 4);
    m->lm_head->w[3] = 3.4e38f;  // finite in fp32, beyond bf16's largest (about 3.39e38)
    CHECK(model_save_bf16(m, test_tmpdir()) != 0 && strstr(peft_last_error(), "lm_head.weight: value") &&
          strstr(peft_last_error(), "beyond bf16's range"));
    m->lm_head->w[3] = 0;
    model_quantize_linear(m, &m->linears[0], QUANT_NF4, true);
    CHECK(model_save_bf16(m, test_tmpdir()) != 0 && strstr(peft_last_error(), "quantized linears is not saved in bf16"));
    model_free(m);
}
