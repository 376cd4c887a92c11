// test_quant_files.c: bitsandbytes-quantized model folders (src/quant/quant_files.c): what peft quantize
// writes loads back bit for bit (GPT-2 and Llama, nf4 / fp4 / int8, double quantization on and off);
// every quantization_config key and quantized tensor that is not understood is refused by name;
// test_quant_bnb_folder checks the reference's model-bnb folders (run by test_quant_model.c).
#include "test.h"
#include "helpers.h"
#include "model.h"
#include "quant_files.h"
#include "util.h"
#include <cjson/cJSON.h>
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
