// quant_files.c: model folders quantized by bitsandbytes as transformers saves them: config.json's
// quantization_config, and each quantized linear's tensors (4-bit: weight [n/2, 1] uint8 with
// weight.absmax, weight.quant_map, weight.nested_absmax, weight.nested_quant_map and the JSON bytes of
// weight.quant_state.bitsandbytes__nf4|fp4; 8-bit: weight int8 [out, in], SCB, weight_format).
// Every key and tensor is implemented or refused by name.
#include "quant_files.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool json_is_int(const cJSON *v) { return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 1e15; }

int quant_config_read(const void *config_json, QuantType *type, bool *double_quant, const char *path) {
    *type = QUANT_NONE;
    *double_quant = false;
    const cJSON *qc = cJSON_GetObjectItem((const cJSON *)config_json, "quantization_config");
    if (!qc || cJSON_IsNull(qc)) return 0;
    if (!cJSON_IsObject(qc)) return peft_fail("%s: quantization_config must be an object", path);
    const cJSON *method = cJSON_GetObjectItem(qc, "quant_method");
    if (!cJSON_IsString(method) || strcmp(method->valuestring, "bitsandbytes"))
        return peft_fail("%s: quantization_config: quant_method %s is not supported (bitsandbytes is)", path,
                         cJSON_IsString(method) ? method->valuestring : "(missing)");
    bool four = false, eight = false;
    const char *qtype = "fp4";  // BitsAndBytesConfig's default bnb_4bit_quant_type
    const cJSON *k;
    cJSON_ArrayForEach(k, qc) {
        const char *n = k->string;
        if (!strcmp(n, "quant_method")) continue;
        if (!strcmp(n, "load_in_4bit") || !strcmp(n, "_load_in_4bit") || !strcmp(n, "load_in_8bit") || !strcmp(n, "_load_in_8bit") ||
            !strcmp(n, "bnb_4bit_use_double_quant") || !strcmp(n, "llm_int8_has_fp16_weight") || !strcmp(n, "llm_int8_enable_fp32_cpu_offload")) {
            if (!cJSON_IsBool(k)) return peft_fail("%s: quantization_config: %s must be true or false", path, n);
            bool on = cJSON_IsTrue(k);
            if (strstr(n, "4bit") && strstr(n, "load")) four |= on;
            else if (strstr(n, "8bit")) eight |= on;
            else if (!strcmp(n, "bnb_4bit_use_double_quant")) *double_quant = on;
            else if (!strcmp(n, "llm_int8_has_fp16_weight") && on)
                return peft_fail("%s: quantization_config: llm_int8_has_fp16_weight true (fp16 weights trained in place) is not supported", path);
            // llm_int8_enable_fp32_cpu_offload: where transformers places modules; the weights are what they are.
        } else if (!strcmp(n, "bnb_4bit_quant_type")) {
            if (!cJSON_IsString(k) || (strcmp(k->valuestring, "nf4") && strcmp(k->valuestring, "fp4")))
                return peft_fail("%s: quantization_config: bnb_4bit_quant_type must be nf4 or fp4", path);
            qtype = k->valuestring;
        } else if (!strcmp(n, "bnb_4bit_quant_storage")) {
            if (!cJSON_IsString(k) || strcmp(k->valuestring, "uint8"))
                return peft_fail("%s: quantization_config: bnb_4bit_quant_storage %s is not supported (uint8 is)", path,
                                 cJSON_IsString(k) ? k->valuestring : "?");
        } else if (!strcmp(n, "bnb_4bit_compute_dtype")) {
            // The dtype bitsandbytes' forward computes in; this program computes in fp32 on the CPU, bf16 on the GPU.
            if (!cJSON_IsNull(k) && !cJSON_IsString(k)) return peft_fail("%s: quantization_config: bnb_4bit_compute_dtype must be a string", path);
        } else if (!strcmp(n, "llm_int8_threshold")) {
            // LLM.int8()'s outlier threshold for its int8 matmul; this program dequantizes the weight and runs the fp32 GEMM.
            if (!cJSON_IsNumber(k)) return peft_fail("%s: quantization_config: llm_int8_threshold must be a number", path);
        } else if (!strcmp(n, "llm_int8_skip_modules")) {
            // Modules left unquantized: the file's tensors say which they are.
            if (!cJSON_IsNull(k) && !cJSON_IsArray(k)) return peft_fail("%s: quantization_config: llm_int8_skip_modules must be a list or null", path);
        } else return peft_fail("%s: quantization_config: key \"%s\" is not supported", path, n);
    }
    if (four == eight) return peft_fail("%s: quantization_config must load in exactly one of 4 bit and 8 bit", path);
    *type = eight ? QUANT_INT8 : !strcmp(qtype, "nf4") ? QUANT_NF4 : QUANT_FP4;
    if (eight) *double_quant = false;
    return 0;
}

void *quant_config_json(QuantType t, bool nested) {
    bool four = t != QUANT_INT8;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "quant_method", "bitsandbytes");
    cJSON_AddBoolToObject(j, "_load_in_4bit", four);
    cJSON_AddBoolToObject(j, "_load_in_8bit", !four);
    cJSON_AddStringToObject(j, "bnb_4bit_compute_dtype", "float32");
    cJSON_AddStringToObject(j, "bnb_4bit_quant_storage", "uint8");
    cJSON_AddStringToObject(j, "bnb_4bit_quant_type", four ? quant_type_name(t) : "fp4");
    cJSON_AddBoolToObject(j, "bnb_4bit_use_double_quant", four && nested);
    cJSON_AddBoolToObject(j, "llm_int8_enable_fp32_cpu_offload", false);
    cJSON_AddBoolToObject(j, "llm_int8_has_fp16_weight", false);
    cJSON_AddNullToObject(j, "llm_int8_skip_modules");
    cJSON_AddNumberToObject(j, "llm_int8_threshold", 6.0);
    cJSON_AddBoolToObject(j, "load_in_4bit", four);
    cJSON_AddBoolToObject(j, "load_in_8bit", !four);
    return j;
}

// The tensor `name` of st (GPT-2's original checkpoints: without "transformer."), or NULL.
static const StTensor *find(const StModel *st, const char *name, const char **file) {
    const StTensor *t = st_model_find(st, name, file);
    if (!t && !strncmp(name, "transformer.", 12)) t = st_model_find(st, name + 12, file);
    return t;
}

// find(), checked for dtype and element count (numel < 0: any). NULL + error when missing or otherwise.
static const StTensor *get(const StModel *st, const char *name, DType dt, int64_t numel, const char *dir) {
    const char *file = dir;
    const StTensor *t = find(st, name, &file);
    if (!t) { peft_fail("%s: the quantized weights have no tensor %s", dir, name); return NULL; }
    if (t->dtype != dt || (numel >= 0 && t->numel != numel)) {
        peft_fail("%s: tensor %s is %s with %lld values; %s with %lld expected", file, name, dtype_name(t->dtype), (long long)t->numel,
                  dtype_name(dt), (long long)numel);
        return NULL;
    }
    return t;
}

static int read_f32(const StTensor *t, float *out, const char *dir) { return st_to_f32_finite(t, out, dir); }

// quant_state.bitsandbytes__<type>'s JSON: every key checked.
// name: "FILE: tensor NAME", what every error of it starts with.
static int read_quant_state(QWeight *q, const StTensor *t, const char *name, bool nested, int64_t rows, int64_t cols) {
    cJSON *j = cJSON_ParseWithLength((const char *)t->data, t->nbytes);
    if (!cJSON_IsObject(j)) { cJSON_Delete(j); return peft_fail("%s: not a JSON object", name); }
    int rc = 0;
    bool seen_shape = false, seen_block = false, seen_nb = !nested, seen_off = !nested;
    const cJSON *k;
    cJSON_ArrayForEach(k, j) {
        const char *n = k->string;
        if (!strcmp(n, "quant_type")) {
            if (!cJSON_IsString(k) || strcmp(k->valuestring, quant_type_name(q->type))) rc = peft_fail("%s: quant_type is not %s", name, quant_type_name(q->type));
        } else if (!strcmp(n, "blocksize")) {
            int b = json_is_int(k) ? (int)k->valuedouble : 0;
            if (b < 64 || b > 4096 || (b & (b - 1))) rc = peft_fail("%s: blocksize must be a power of two in 64..4096", name);
            q->block = b;
            seen_block = true;
        } else if (!strcmp(n, "dtype")) {
            const char *d = cJSON_IsString(k) ? k->valuestring : "";
            if (!strcmp(d, "float32")) q->out_dtype = QUANT_OUT_F32;
            else if (!strcmp(d, "bfloat16")) q->out_dtype = QUANT_OUT_BF16;
            else if (!strcmp(d, "float16")) q->out_dtype = QUANT_OUT_F16;
            else rc = peft_fail("%s: dtype \"%s\" is not supported (float32, bfloat16, float16 are)", name, d);
        } else if (!strcmp(n, "shape")) {
            seen_shape = true;
            if (cJSON_GetArraySize(k) != 2 || !json_is_int(cJSON_GetArrayItem(k, 0)) || !json_is_int(cJSON_GetArrayItem(k, 1)) ||
                cJSON_GetArrayItem(k, 0)->valuedouble != rows || cJSON_GetArrayItem(k, 1)->valuedouble != cols)
                rc = peft_fail("%s: shape is not [%lld, %lld] (the module's [out, in])", name, (long long)rows, (long long)cols);
        } else if (nested && !strcmp(n, "nested_blocksize")) {
            q->nested_block = json_is_int(k) ? (int)k->valuedouble : 0;
            if (q->nested_block < 1 || q->nested_block > 1 << 20) rc = peft_fail("%s: nested_blocksize must be a positive integer", name);
            seen_nb = true;
        } else if (nested && !strcmp(n, "nested_dtype")) {
            if (!cJSON_IsString(k) || strcmp(k->valuestring, "float32")) rc = peft_fail("%s: nested_dtype must be float32", name);
        } else if (nested && !strcmp(n, "nested_offset")) {
            q->offset = cJSON_IsNumber(k) ? (float)k->valuedouble : NAN;
            if (!isfinite(q->offset)) rc = peft_fail("%s: nested_offset must be a finite number", name);
            seen_off = true;
        } else rc = peft_fail("%s: key \"%s\" is not supported%s", name, n, nested ? "" : " (no nested_absmax tensor)");
        if (rc) break;
    }
    if (!rc && (!seen_shape || !seen_block || !seen_nb || !seen_off)) rc = peft_fail("%s: shape, blocksize%s are required", name, nested ? ", nested_blocksize, nested_offset" : "");
    cJSON_Delete(j);
    return rc;
}

static int read_4bit(QWeight *q, const StModel *st, const char *w, const char *dir) {
    char name[512];
    bool nested = false;
    int64_t n = q->rows * q->cols;
    const char *tname = quant_type_name(q->type);
    snprintf(name, sizeof name, "%s.nested_absmax", w);
    nested = find(st, name, NULL) != NULL;
    snprintf(name, sizeof name, "%s.quant_state.bitsandbytes__%s", w, tname);
    const StTensor *qs = get(st, name, DT_U8, -1, dir);
    if (!qs) return -1;
    const char *file = dir;
    find(st, name, &file);
    char *where = xasprintf("%s: tensor %s", file, name);
    int rc = read_quant_state(q, qs, where, nested, q->rows, q->cols);
    free(where);
    if (rc) return -1;
    q->n_blocks = (n + q->block - 1) / q->block;
    quant_4bit_map(q->type, q->map);
    const StTensor *t;
    snprintf(name, sizeof name, "%s", w);
    if (!(t = get(st, name, DT_U8, (n + 1) / 2, dir))) return -1;
    q->data = xmalloc((size_t)(n + 1) / 2);
    memcpy(q->data, t->data, (size_t)(n + 1) / 2);
    snprintf(name, sizeof name, "%s.quant_map", w);
    float map[16];
    if (!(t = get(st, name, DT_F32, 16, dir)) || read_f32(t, map, dir)) return -1;
    for (int i = 0; i < 16; i++)
        if (fabsf(map[i] - q->map[i]) > 1e-6f) return peft_fail("%s: %s[%d] = %g is not %s's code value %g", dir, name, i, map[i], tname, q->map[i]);
    snprintf(name, sizeof name, "%s.absmax", w);
    if (!nested) {
        q->absmax = xmalloc(sizeof(float) * (size_t)q->n_blocks);
        return (t = get(st, name, DT_F32, q->n_blocks, dir)) ? read_f32(t, q->absmax, dir) : -1;
    }
    q->nested = true;
    q->n_nested = (q->n_blocks + q->nested_block - 1) / q->nested_block;
    if (!(t = get(st, name, DT_U8, q->n_blocks, dir))) return -1;
    q->qabsmax = xmalloc((size_t)q->n_blocks);
    memcpy(q->qabsmax, t->data, (size_t)q->n_blocks);
    q->nested_absmax = xmalloc(sizeof(float) * (size_t)q->n_nested);
    snprintf(name, sizeof name, "%s.nested_absmax", w);
    if (!(t = get(st, name, DT_F32, q->n_nested, dir)) || read_f32(t, q->nested_absmax, dir)) return -1;
    snprintf(name, sizeof name, "%s.nested_quant_map", w);
    return (t = get(st, name, DT_F32, 256, dir)) ? read_f32(t, q->nested_map, dir) : -1;
}

static int read_int8(QWeight *q, const StModel *st, const char *module, const char *w, const char *dir) {
    char name[512];
    const StTensor *t = get(st, w, DT_I8, q->rows * q->cols, dir);
    if (!t) return -1;
    q->data = xmalloc((size_t)(q->rows * q->cols));
    memcpy(q->data, t->data, (size_t)(q->rows * q->cols));
    snprintf(name, sizeof name, "%s.SCB", module);
    q->scb = xmalloc(sizeof(float) * (size_t)q->rows);
    if (!(t = get(st, name, DT_F32, q->rows, dir)) || read_f32(t, q->scb, dir)) return -1;
    snprintf(name, sizeof name, "%s.weight_format", module);
    if ((t = find(st, name, NULL)) && (t->dtype != DT_U8 || t->numel != 1 || ((const uint8_t *)t->data)[0] != 0))
        return peft_fail("%s: %s must be one U8 0 (row-major; bitsandbytes' other layouts are not supported)", dir, name);
    return 0;
}

// Every tensor named "<module>.weight.<x>" must be one this reader knows.
static int check_known(const StModel *st, const char *w, const char *dir) {
    static const char *const known[] = {"absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4",
                                        "quant_state.bitsandbytes__fp4", NULL};
    size_t len = strlen(w);
    for (int f = 0; f < st->n_files; f++)
        for (int i = 0; i < st->files[f].n; i++) {
            const char *n = st->files[f].tensors[i].name;
            const char *rest = !strncmp(n, w, len) && n[len] == '.' ? n + len + 1 : NULL;
            if (!rest && !strncmp(w, "transformer.", 12) && !strncmp(n, w + 12, len - 12) && n[len - 12] == '.') rest = n + len - 11;
            if (!rest) continue;
            int k = 0;
            while (known[k] && strcmp(rest, known[k])) k++;
            if (!known[k]) return peft_fail("%s: tensor %s is not a bitsandbytes tensor this program knows", st->files[f].path, n);
        }
    return 0;
}

int quant_read_linear(QWeight *q, const StModel *st, const char *module, QuantType t, int64_t rows, int64_t cols, const char *dir) {
    memset(q, 0, sizeof *q);
    q->type = t;
    q->rows = rows;
    q->cols = cols;
    char *w = xasprintf("%s.weight", module);
    int rc = check_known(st, w, dir);
    if (!rc) rc = t == QUANT_INT8 ? read_int8(q, st, module, w, dir) : read_4bit(q, st, w, dir);
    free(w);
    if (rc) qweight_free(q);
    return rc;
}

// Python's repr of a float: the shortest %g that reads back as the same double.
static void shortest(char *buf, size_t cap, double v) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void quant_write_linear(StWriter *wr, const char *module, const QWeight *q) {
    char name[512];
    int64_t n = q->rows * q->cols;
    if (q->type == QUANT_INT8) {
        snprintf(name, sizeof name, "%s.weight", module);
        st_writer_add(wr, name, DT_I8, 2, (int64_t[]){q->rows, q->cols}, q->data);
        snprintf(name, sizeof name, "%s.SCB", module);
        st_writer_add(wr, name, DT_F32, 1, (int64_t[]){q->rows}, q->scb);
        snprintf(name, sizeof name, "%s.weight_format", module);
        st_writer_add(wr, name, DT_U8, 0, NULL, (uint8_t[]){0});
        return;
    }
    snprintf(name, sizeof name, "%s.weight", module);
    st_writer_add(wr, name, DT_U8, 2, (int64_t[]){(n + 1) / 2, 1}, q->data);
    snprintf(name, sizeof name, "%s.weight.absmax", module);
    if (q->nested) st_writer_add(wr, name, DT_U8, 1, (int64_t[]){q->n_blocks}, q->qabsmax);
    else st_writer_add(wr, name, DT_F32, 1, (int64_t[]){q->n_blocks}, q->absmax);
    snprintf(name, sizeof name, "%s.weight.quant_map", module);
    st_writer_add(wr, name, DT_F32, 1, (int64_t[]){16}, q->map);
    char state[512], off[40] = "";
    int k = snprintf(state, sizeof state, "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"float32\", \"shape\": [%lld, %lld]",
                     quant_type_name(q->type), q->block, (long long)q->rows, (long long)q->cols);
    if (q->nested) {
        snprintf(name, sizeof name, "%s.weight.nested_absmax", module);
        st_writer_add(wr, name, DT_F32, 1, (int64_t[]){q->n_nested}, q->nested_absmax);
        snprintf(name, sizeof name, "%s.weight.nested_quant_map", module);
        st_writer_add(wr, name, DT_F32, 1, (int64_t[]){256}, q->nested_map);
        shortest(off, sizeof off, q->offset);
        k += snprintf(state + k, sizeof state - k, ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %s", q->nested_block, off);
    }
    snprintf(state + k, sizeof state - k, "}");
    snprintf(name, sizeof name, "%s.weight.quant_state.bitsandbytes__%s", module, quant_type_name(q->type));
    st_writer_add(wr, name, DT_U8, 1, (int64_t[]){(int64_t)strlen(state)}, state);
}
