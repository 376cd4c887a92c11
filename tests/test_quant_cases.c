// test_quant_cases.c: src/quant/quant.c against the torch re-implementation of bitsandbytes' source
// (tools/quant_reference, cases in tests/fixtures/quant or PEFT_QUANT_FIXTURES): for every tensor case
// and every quantization, the packed bytes, the statistics (absmax, nested codes, nested absmax, offset,
// the maps, SCB) and the dequantized values must be bit-identical. Skipped, loudly, without the cases.
#include "test.h"
#include "quant.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

// 1 when the reference tensor `name` holds exactly n values of `size` bytes equal to got's bytes;
// else prints the first difference.
static int same_bytes(const SafeTensors *st, const char *name, const void *got, long n, size_t size) {
    const StTensor *t = st_find(st, name);
    if (!t) { fprintf(stderr, "  %s: no tensor %s\n", st->path, name); return 0; }
    if (t->numel != n || dtype_size(t->dtype) != size) {
        fprintf(stderr, "  %s: %lld values of %zu bytes, expected %ld of %zu\n", name, (long long)t->numel, dtype_size(t->dtype), n, size);
        return 0;
    }
    const uint8_t *a = got, *b = t->data;
    for (long i = 0; i < n; i++)
        if (memcmp(a + i * size, b + i * size, size)) {
            if (size == 4) {
                float x, y;
                memcpy(&x, a + i * size, 4);
                memcpy(&y, b + i * size, 4);
                fprintf(stderr, "  %s[%ld]: ours %.9g, reference %.9g (and maybe more)\n", name, i, x, y);
            } else fprintf(stderr, "  %s[%ld]: ours 0x%02x, reference 0x%02x (and maybe more)\n", name, i, a[i * size], b[i * size]);
            return 0;
        }
    return 1;
}

// One quantization of one input: every stored tensor of it equal to ours.
static int check_one(const SafeTensors *st, const char *key, QuantType t, bool nested, const float *x, int64_t rows, int64_t cols) {
    QWeight q;
    if (qweight_quantize(&q, t, nested, NULL, x, rows, cols, key)) { fprintf(stderr, "  %s: %s\n", key, peft_last_error()); return 0; }
    long n = rows * cols;
    char name[256];
#define SAME(suffix, ptr, count, size) (snprintf(name, sizeof name, "%s.%s", key, suffix), same_bytes(st, name, ptr, count, size))
    float *deq = xmalloc(sizeof(float) * (size_t)n);
    qweight_dequantize(&q, deq);
    int ok = SAME("dequant", deq, n, 4);
    if (t == QUANT_INT8) ok = ok && SAME("weight", q.data, n, 1) && SAME("SCB", q.scb, rows, 4);
    else {
        ok = ok && SAME("weight", q.data, (n + 1) / 2, 1) && SAME("quant_map", q.map, 16, 4);
        if (!nested) ok = ok && SAME("absmax", q.absmax, q.n_blocks, 4);
        else ok = ok && SAME("absmax", q.qabsmax, q.n_blocks, 1) && SAME("nested_absmax", q.nested_absmax, q.n_nested, 4) &&
                  SAME("nested_quant_map", q.nested_map, 256, 4) && SAME("nested_offset", &q.offset, 1, 4);
    }
#undef SAME
    free(deq);
    qweight_free(&q);
    return ok;
}

TEST(quant_matches_torch_reference) {
    const char *dir = quant_fixtures_dir();
    if (!dir) SKIP(NO_QUANT_FIXTURES);
    char *json_path = xasprintf("%s/tensors/case.json", dir), *st_path = xasprintf("%s/tensors/tensors.safetensors", dir);
    char *text = read_file(json_path, NULL);
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    free(text);
    SafeTensors st = {0};
    int opened = st_open(&st, st_path);
    free(json_path);
    free(st_path);
    const cJSON *cases = cJSON_GetObjectItem(doc, "cases");
    CHECK_MSG(doc && !opened && cJSON_GetArraySize(cases) > 0, "%s: the tensor cases are unreadable", dir);
    // The dynamic map: the element formula's bits; torch.linspace's own are reported.
    float map[256];
    quant_dynamic_map(map);
    int map_ok = same_bytes(&st, "dynamic_map", map, 256, 4);
    const cJSON *torch_diff = cJSON_GetObjectItem(doc, "dynamic_map_torch_differs_at");
    fprintf(stderr, "  torch.linspace's dynamic map differs from the element formula at %d of 256 values on the reference's CPU\n",
            cJSON_IsNumber(torch_diff) ? torch_diff->valueint : -1);
    static const struct { const char *suffix; QuantType t; bool nested; } quants[] = {
        {"nf4", QUANT_NF4, true}, {"nf4-nodq", QUANT_NF4, false}, {"fp4", QUANT_FP4, true}, {"fp4-nodq", QUANT_FP4, false}, {"int8", QUANT_INT8, false}};
    int failures = 0, checked = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        char xname[160];
        snprintf(xname, sizeof xname, "%s.x", c->string);
        const StTensor *xt = st_find(&st, xname);
        if (!xt || xt->ndim != 2 || xt->dtype != DT_F32) { fprintf(stderr, "  no [rows, cols] F32 %s\n", xname); failures++; continue; }
        float *x = xmalloc(sizeof(float) * (size_t)xt->numel);
        st_to_f32(xt, x);
        for (size_t k = 0; k < sizeof quants / sizeof *quants; k++) {
            char key[200];
            snprintf(key, sizeof key, "%s.%s", c->string, quants[k].suffix);
            failures += !check_one(&st, key, quants[k].t, quants[k].nested, x, xt->shape[0], xt->shape[1]);
            checked++;
        }
        free(x);
    }
    st_close(&st);
    cJSON_Delete(doc);
    CHECK_MSG(map_ok, "the dynamic map differs from the reference's");
    CHECK_MSG(failures == 0, "%d of %d quantizations differ from the reference", failures, checked);
}
