// test_safetensors.c: writer/reader round trips, exact f16/bf16 conversion, the real fixtures,
// sharded model folders, and one test per kind of malformed file (each must fail cleanly with
// an error that names the file).
#include "test.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Helpers

// Write a raw safetensors file: header length `hlen_field`, then `header`, then `data_len`
// bytes of filler. Returns the malloc'd path.
static char *write_raw_len(const char *dir, const char *name, uint64_t hlen_field, const char *header,
                           size_t data_len) {
    size_t hlen = strlen(header), total = 8 + hlen + data_len;
    unsigned char *buf = xcalloc(total, 1);
    memcpy(buf, &hlen_field, 8);
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) buf[8 + hlen + i] = (unsigned char)i;
    char *path = path_join(dir, name);
    write_file_atomic(path, buf, total);
    free(buf);
    return path;
}

static char *write_raw(const char *dir, const char *name, const char *header, size_t data_len) {
    return write_raw_len(dir, name, strlen(header), header, data_len);
}

static char *write_bytes(const char *dir, const char *name, const void *bytes, size_t len) {
    char *path = path_join(dir, name);
    write_file_atomic(path, bytes, len);
    return path;
}

static void write_text(const char *dir, const char *name, const char *text) {
    free(write_bytes(dir, name, text, strlen(text)));
}

// st_open must fail, leave st zeroed, and say which file it was. Returns 1 when all holds.
static int open_fails_naming(const char *path, const char *must_mention) {
    SafeTensors st;
    peft_clear_error();
    if (st_open(&st, path) == 0) {
        fprintf(stderr, "  %s: opened but should have failed\n", path);
        st_close(&st);
        return 0;
    }
    const char *err = peft_last_error();
    if (!strstr(err, path) || (must_mention && !strstr(err, must_mention))) {
        fprintf(stderr, "  %s: error message lacks the file name or '%s': %s\n", path,
                must_mention ? must_mention : "", err);
        return 0;
    }
    return st.n == 0 && st.tensors == NULL && st.map == NULL;
}

static int model_open_fails_naming(const char *dir, const char *must_mention) {
    StModel m;
    peft_clear_error();
    if (st_model_open(&m, dir) == 0) {
        fprintf(stderr, "  %s: model opened but should have failed\n", dir);
        st_model_close(&m);
        return 0;
    }
    const char *err = peft_last_error();
    if (!strstr(err, dir) || (must_mention && !strstr(err, must_mention))) {
        fprintf(stderr, "  %s: error message lacks the folder or '%s': %s\n", dir, must_mention ? must_mention : "",
                err);
        return 0;
    }
    return m.n_files == 0 && m.files == NULL;
}

static int shape_is(const StTensor *t, int ndim, const int64_t *shape) {
    if (!t || t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

static uint32_t f32_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

// Reference half -> double written straight from the IEEE definition (independent of the
// bit-shuffling implementation under test).
static double half_reference(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v;
    if (exp == 0x1f) v = man ? NAN : INFINITY;
    else if (exp == 0) v = ldexp(man, -24);
    else v = ldexp(1024 + man, exp - 25);
    return sign ? -v : v;
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(st_roundtrip_all_dtypes) {
    const char *dir = test_tmpdir();
    char *path = path_join(dir, "all.safetensors");
    float f32[6] = {0.f, 1.5f, -2.25f, 1e-30f, 3e38f, -0.f};
    uint16_t f16[11] = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3555};
    uint16_t bf16[6] = {0x3F80, 0xC040, 0x7F80, 0x0001, 0x7FC0, 0x8000};
    int64_t i64[3] = {INT64_MIN, -1, INT64_MAX};
    int32_t i32[4] = {INT32_MIN, -7, 0, INT32_MAX};
    uint8_t u8[3] = {0, 128, 255};
    int8_t i8[3] = {-128, -1, 127};  // bitsandbytes' int8 weights
    uint8_t bools[4] = {0, 1, 0, 1};
    float scalar = 42.f;
    int64_t s23[2] = {2, 3}, s11[1] = {11}, s6[1] = {6}, s3[1] = {3}, s4[1] = {4}, s22[2] = {2, 2}, s03[2] = {0, 3};

    StWriter *w = st_writer_new();
    st_writer_add(w, "odd_f16", DT_F16, 1, (int64_t[]){1}, f16); // makes everything after it unaligned
    st_writer_add_f32(w, "f32", 2, s23, f32);
    st_writer_add(w, "f16", DT_F16, 1, s11, f16);
    st_writer_add(w, "bf16", DT_BF16, 1, s6, bf16);
    st_writer_add(w, "i64", DT_I64, 1, s3, i64);
    st_writer_add(w, "i32", DT_I32, 1, s4, i32);
    st_writer_add(w, "u8", DT_U8, 1, s3, u8);
    st_writer_add(w, "i8", DT_I8, 1, s3, i8);
    st_writer_add(w, "bool", DT_BOOL, 2, s22, bools);
    st_writer_add_f32(w, "scalar", 0, NULL, &scalar);
    st_writer_add_f32(w, "empty", 2, s03, NULL);
    st_writer_metadata(w, "peft_type", "LORA");
    CHECK_MSG(st_writer_save(w, path) == 0, "%s", peft_last_error());
    st_writer_free(w);

    SafeTensors st;
    CHECK_MSG(st_open(&st, path) == 0, "%s", peft_last_error());
    CHECK(st.n == 11);
    for (int i = 1; i < st.n; i++) CHECK(strcmp(st.tensors[i - 1].name, st.tensors[i].name) < 0);

    const StTensor *t = st_find(&st, "f32");
    CHECK(shape_is(t, 2, s23) && t->dtype == DT_F32 && t->numel == 6 && t->nbytes == 24);
    CHECK(((uintptr_t)t->data & 3) != 0); // really unaligned: the reader must cope
    float out[16];
    CHECK(st_to_f32(t, out) == 0);
    CHECK(memcmp(out, f32, sizeof f32) == 0);

    t = st_find(&st, "f16");
    CHECK(shape_is(t, 1, s11) && t->dtype == DT_F16);
    CHECK(st_to_f32(t, out) == 0);
    float want16[11] = {1.f, -2.f, 0x1p-24f, 1023 * 0x1p-24f, 0x1p-14f, 65504.f, INFINITY, -INFINITY, NAN, -0.f,
                        0.333251953125f};
    for (int i = 0; i < 11; i++) {
        if (isnan(want16[i])) CHECK(isnan(out[i]));
        else CHECK_MSG(f32_bits(out[i]) == f32_bits(want16[i]), "f16[%d]: %g vs %g", i, out[i], want16[i]);
    }

    t = st_find(&st, "bf16");
    CHECK(st_to_f32(t, out) == 0);
    CHECK(out[0] == 1.f && out[1] == -3.f && isinf(out[2]) && out[2] > 0);
    CHECK(f32_bits(out[3]) == 0x00010000u && isnan(out[4]) && f32_bits(out[5]) == 0x80000000u);

    int64_t iv[8];
    CHECK(st_to_i64(st_find(&st, "i64"), iv) == 0);
    CHECK(iv[0] == INT64_MIN && iv[1] == -1 && iv[2] == INT64_MAX);
    CHECK(st_to_i64(st_find(&st, "i32"), iv) == 0);
    CHECK(iv[0] == INT32_MIN && iv[1] == -7 && iv[2] == 0 && iv[3] == INT32_MAX);
    CHECK(st_to_i64(st_find(&st, "u8"), iv) == 0);
    CHECK(iv[0] == 0 && iv[1] == 128 && iv[2] == 255);
    CHECK(st_to_i64(st_find(&st, "i8"), iv) == 0 && st_find(&st, "i8")->dtype == DT_I8);
    CHECK(iv[0] == -128 && iv[1] == -1 && iv[2] == 127);
    t = st_find(&st, "bool");
    CHECK(t && t->dtype == DT_BOOL && shape_is(t, 2, s22));
    CHECK(st_to_i64(t, iv) == 0);
    CHECK(iv[0] == 0 && iv[1] == 1 && iv[2] == 0 && iv[3] == 1);

    t = st_find(&st, "scalar");
    CHECK(t && t->ndim == 0 && t->numel == 1 && st_to_f32(t, out) == 0 && out[0] == 42.f);
    t = st_find(&st, "empty");
    CHECK(shape_is(t, 2, s03) && t->numel == 0 && t->nbytes == 0 && st_to_f32(t, out) == 0);

    // Wrong-kind conversions are errors, not garbage.
    CHECK(st_to_f32(st_find(&st, "i64"), out) != 0);
    CHECK(st_to_i64(st_find(&st, "f32"), iv) != 0);
    CHECK(st_find(&st, "nope") == NULL && st_find(&st, "") == NULL);
    st_close(&st);
    free(path);
}

// The file layout: header padded to 8 bytes, metadata, tensors in the order added, contiguous.
TEST(st_writer_layout) {
    const char *dir = test_tmpdir();
    char *path = path_join(dir, "layout.safetensors");
    float a[3] = {1, 2, 3};
    uint16_t b[1] = {0x3C00};
    StWriter *w = st_writer_new();
    st_writer_add_f32(w, "zeta", 1, (int64_t[]){3}, a);
    st_writer_add(w, "alpha", DT_BF16, 1, (int64_t[]){1}, b);
    st_writer_metadata(w, "key \"quoted\"", "v\n1");
    CHECK(st_writer_save(w, path) == 0);
    st_writer_free(w);

    size_t len;
    char *raw = read_file(path, &len);
    CHECK(raw);
    uint64_t n;
    memcpy(&n, raw, 8);
    CHECK(n % 8 == 0 && 8 + n + 14 == len);
    cJSON *h = cJSON_ParseWithLength(raw + 8, n);
    CHECK(h && cJSON_IsObject(h));
    CHECK(strcmp(h->child->string, "__metadata__") == 0);
    CHECK(strcmp(h->child->next->string, "zeta") == 0 && strcmp(h->child->next->next->string, "alpha") == 0);
    cJSON *meta = cJSON_GetObjectItem(h, "__metadata__");
    CHECK(strcmp(cJSON_GetObjectItem(meta, "format")->valuestring, "pt") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(meta, "key \"quoted\"")->valuestring, "v\n1") == 0);
    cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "alpha"), "data_offsets");
    CHECK(cJSON_GetArrayItem(offs, 0)->valuedouble == 12 && cJSON_GetArrayItem(offs, 1)->valuedouble == 14);
    cJSON_Delete(h);
    CHECK(memcmp(raw + 8 + n, a, 12) == 0 && memcmp(raw + 8 + n + 12, b, 2) == 0);
    free(raw);
    free(path);
}

TEST(st_writer_rejects_bad_input) {
    const char *dir = test_tmpdir();
    char *path = path_join(dir, "bad.safetensors");
    float x = 1;
    StWriter *w = st_writer_new();
    st_writer_add_f32(w, "x", 1, (int64_t[]){1}, &x);
    st_writer_add_f32(w, "x", 1, (int64_t[]){1}, &x);
    CHECK(st_writer_save(w, path) != 0 && strstr(peft_last_error(), "twice") && strstr(peft_last_error(), path));
    st_writer_free(w);
    w = st_writer_new();
    st_writer_add_f32(w, "neg", 1, (int64_t[]){-1}, &x);
    CHECK(st_writer_save(w, path) != 0 && strstr(peft_last_error(), "neg"));
    st_writer_free(w);
    w = st_writer_new();
    st_writer_add_f32(w, "__metadata__", 1, (int64_t[]){1}, &x);
    CHECK(st_writer_save(w, path) != 0);
    st_writer_free(w);
    CHECK(!file_exists(path));
    free(path);
}

// Every one of the 65536 halves converts exactly (NaNs stay NaN).
TEST(st_f16_exhaustive) {
    uint16_t *h = xmalloc(65536 * 2);
    float *out = xmalloc(65536 * 4);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    StTensor t = {.name = "h", .dtype = DT_F16, .ndim = 1, .shape = {65536}, .numel = 65536, .data = h,
                  .nbytes = 65536 * 2};
    int rc = st_to_f32(&t, out), wrong = 0;
    for (int i = 0; i < 65536 && !rc; i++) {
        double want = half_reference((uint16_t)i);
        int same = isnan(want) ? isnan(out[i]) : (double)out[i] == want && !signbit(out[i]) == !signbit(want);
        if (!same && wrong++ < 5) fprintf(stderr, "  half 0x%04x: %g, want %g\n", i, out[i], want);
    }
    t.dtype = DT_BF16;
    rc |= st_to_f32(&t, out);
    for (int i = 0; i < 65536 && !rc; i++) wrong += f32_bits(out[i]) != (uint32_t)i << 16;
    free(h);
    free(out);
    CHECK(rc == 0 && wrong == 0);
}

// ---------------------------------------------------------------------------------------------
// Real files

TEST(st_fixture_gpt2) {
    const char *fx = fixtures_dir();
    if (!fx) SKIP_NO_FIXTURES();
    char *path = xasprintf("%s/gpt2-lora/model/model.safetensors", fx);
    SafeTensors st;
    CHECK_MSG(st_open(&st, path) == 0, "%s", peft_last_error());
    const StTensor *t = st_find(&st, "transformer.wte.weight");
    CHECK(shape_is(t, 2, (int64_t[]){96, 32}) && t->dtype == DT_F32 && t->nbytes == 96 * 32 * 4);
    float *w = xmalloc(96 * 32 * sizeof *w);
    CHECK(st_to_f32(t, w) == 0);
    int finite = 1;
    for (int i = 0; i < 96 * 32; i++) finite &= isfinite(w[i]) != 0;
    free(w);
    CHECK(finite);
    st_close(&st);
    free(path);

    char *dir = xasprintf("%s/gpt2-lora/model", fx);
    StModel m;
    CHECK_MSG(st_model_open(&m, dir) == 0, "%s", peft_last_error());
    const char *file = NULL;
    CHECK(st_model_find(&m, "transformer.wte.weight", &file) && strstr(file, "model.safetensors"));
    st_model_close(&m);
    free(dir);
}

// Every .safetensors file in the reference cases opens.
TEST(st_fixture_all_files_open) {
    const char *fx = fixtures_dir();
    if (!fx) SKIP_NO_FIXTURES();
    char *cmd = xasprintf("find '%s' -name '*.safetensors'", fx);
    FILE *p = popen(cmd, "r");
    free(cmd);
    CHECK(p);
    char line[4096];
    int count = 0, bad = 0;
    while (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        SafeTensors st;
        if (st_open(&st, line) != 0) {
            fprintf(stderr, "  %s\n", peft_last_error());
            bad++;
        } else {
            count++;
            st_close(&st);
        }
    }
    pclose(p);
    CHECK(bad == 0 && count > 0);
}

// ---------------------------------------------------------------------------------------------
// Sharded models

static void write_shard(const char *dir, const char *name, const char *t1, const char *t2) {
    float v[4] = {1, 2, 3, 4};
    char *path = path_join(dir, name);
    StWriter *w = st_writer_new();
    st_writer_add_f32(w, t1, 1, (int64_t[]){4}, v);
    if (t2) st_writer_add_f32(w, t2, 2, (int64_t[]){2, 2}, v);
    st_writer_save(w, path);
    st_writer_free(w);
    free(path);
}

static const char *S1 = "model-00001-of-00002.safetensors", *S2 = "model-00002-of-00002.safetensors";

TEST(st_model_sharded) {
    const char *dir = test_tmpdir();
    write_shard(dir, S1, "a.weight", "b.weight");
    write_shard(dir, S2, "c.weight", NULL);
    char *index = xasprintf("{\"metadata\": {\"total_size\": 64}, \"weight_map\": {\"a.weight\": \"%s\", "
                            "\"c.weight\": \"%s\", \"b.weight\": \"%s\"}}", S1, S2, S1);
    write_text(dir, "model.safetensors.index.json", index);
    free(index);

    StModel m;
    CHECK_MSG(st_model_open(&m, dir) == 0, "%s", peft_last_error());
    CHECK(m.n_files == 2);
    const char *file = NULL;
    const StTensor *t = st_model_find(&m, "a.weight", &file);
    CHECK(t && t->numel == 4 && strstr(file, S1));
    t = st_model_find(&m, "b.weight", &file);
    CHECK(shape_is(t, 2, (int64_t[]){2, 2}) && strstr(file, S1));
    t = st_model_find(&m, "c.weight", &file);
    CHECK(t && strstr(file, S2));
    float out[4];
    CHECK(st_to_f32(t, out) == 0 && out[3] == 4);
    CHECK(st_model_find(&m, "d.weight", NULL) == NULL);
    st_model_close(&m);
    CHECK(m.n_files == 0);
}

TEST(st_model_errors) {
    const char *dir = test_tmpdir();
    CHECK(model_open_fails_naming(dir, "no model.safetensors or model.safetensors.index.json"));

    // index.json naming a shard that does not exist
    char *d1 = path_join(dir, "missing");
    make_dir(d1);
    write_shard(d1, S1, "a", NULL);
    char *idx = xasprintf("{\"weight_map\": {\"a\": \"%s\", \"b\": \"%s\"}}", S1, S2);
    write_text(d1, "model.safetensors.index.json", idx);
    CHECK(model_open_fails_naming(d1, S2));

    // index.json whose shard lacks the tensor: the error names tensor and shard
    char *d2 = path_join(dir, "lacks");
    make_dir(d2);
    write_shard(d2, S1, "a", NULL);
    write_shard(d2, S2, "c", NULL);
    write_text(d2, "model.safetensors.index.json", idx);
    CHECK(model_open_fails_naming(d2, "'b'"));
    CHECK(strstr(peft_last_error(), S2));

    // malformed index.json variants
    const char *bad_indexes[] = {
        "{\"weight_map\": {\"a\": ",                  // truncated
        "[1, 2]",                                     // not an object
        "{\"metadata\": {}}",                         // no weight_map
        "{\"weight_map\": {}}",                       // empty
        "{\"weight_map\": {\"a\": 7}}",               // shard not a string
        "{\"weight_map\": {\"a\": \"\"}}",            // empty shard name
        "{\"weight_map\": {\"a\": \"../x.safetensors\"}}", // escapes the folder
        "",                                           // empty file
    };
    for (size_t i = 0; i < sizeof bad_indexes / sizeof *bad_indexes; i++) {
        char *sub = xasprintf("%s/malformed%zu", dir, i);
        make_dir(sub);
        write_shard(sub, S1, "a", NULL);
        write_text(sub, "model.safetensors.index.json", bad_indexes[i]);
        CHECK_MSG(model_open_fails_naming(sub, "model.safetensors.index.json"), "index %zu", i);
        free(sub);
    }

    // A single model.safetensors that is corrupt
    char *d3 = path_join(dir, "corrupt");
    make_dir(d3);
    free(write_raw(d3, "model.safetensors", "{", 0));
    CHECK(model_open_fails_naming(d3, "model.safetensors"));
    free(idx);
    free(d1);
    free(d2);
    free(d3);
}

// ---------------------------------------------------------------------------------------------
// Malformed files: every one fails with a message naming the file, never crashes.

TEST(st_bad_short_files) {
    const char *dir = test_tmpdir();
    char *p = write_bytes(dir, "empty.safetensors", "", 0);
    CHECK(open_fails_naming(p, "too short"));
    free(p);
    p = write_bytes(dir, "four.safetensors", "\x02\0\0\0", 4);
    CHECK(open_fails_naming(p, "too short"));
    free(p);
    p = path_join(dir, "does-not-exist.safetensors");
    CHECK(open_fails_naming(p, NULL));
    free(p);
    CHECK(open_fails_naming(dir, "not a regular file"));
}

TEST(st_bad_header_length) {
    const char *dir = test_tmpdir();
    char *p = write_raw_len(dir, "past.safetensors", 123456, "{}", 490);
    CHECK(open_fails_naming(p, "header length 123456 runs past the end of the file (500 bytes)"));
    free(p);
    p = write_raw_len(dir, "huge.safetensors", 1ULL << 63, "{}", 0);
    CHECK(open_fails_naming(p, "header length 9223372036854775808"));
    free(p);
    p = write_raw_len(dir, "max.safetensors", UINT64_MAX, "{}", 0);
    CHECK(open_fails_naming(p, "runs past"));
    free(p);
    // NUL padding is not JSON whitespace (the format pads with spaces).
    p = write_bytes(dir, "nul-pad.safetensors", "\x08\0\0\0\0\0\0\0{}\0\0\0\0\0\0", 16);
    CHECK(open_fails_naming(p, "control byte"));
    free(p);
    // cJSON alone would take a NUL inside the JSON text for whitespace.
    p = write_bytes(dir, "nul-in.safetensors", "\x08\0\0\0\0\0\0\0{\0}     ", 16);
    CHECK(open_fails_naming(p, "control byte 0x00"));
    free(p);
}

// Each case: a header (data area of 64 bytes) and a word the error must contain.
static const struct { const char *label, *header, *mention; } bad_headers[] = {
    {"non-json", "{not json at all", "not valid JSON"},
    {"array", "[1, 2, 3]", "not an object"},
    {"string", "\"hello\"", "not an object"},
    {"trailing", "{} {}", "trailing"},
    {"unknown-dtype", "{\"w\": {\"dtype\": \"Q7\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
     "unknown dtype Q7 for tensor w"},
    {"dtype-number", "{\"w\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 4]}}", "dtype"},
    {"size-mismatch", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", "16 bytes"},
    {"outside", "{\"w\": {\"dtype\": \"F32\", \"shape\": [20], \"data_offsets\": [0, 80]}}", "past the end"},
    {"outside-far", "{\"w\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [9007199254740988, "
                    "9007199254740992]}}", "past the end"},
    {"begin-gt-end", "{\"w\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [8, 4]}}", "begin 8 > end 4"},
    {"overlap", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", "overlap"},
    {"overlap-nested", "{\"a\": {\"dtype\": \"U8\", \"shape\": [32], \"data_offsets\": [0, 32]},"
                       " \"b\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [8, 9]},"
                       " \"c\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [20, 21]}}", "overlap"},
    {"same-range", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                   " \"b\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "overlap"},
    {"negative-shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", "shape"},
    {"float-shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 10]}}", "shape"},
    {"string-shape", "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", "shape"},
    {"shape-not-array", "{\"w\": {\"dtype\": \"F32\", \"shape\": 2, \"data_offsets\": [0, 8]}}", "shape"},
    {"too-many-dims", "{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
     "dimensions"},
    {"shape-overflow", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
                       "\"data_offsets\": [0, 4]}}", "overflow"},
    {"shape-over-2^53", "{\"w\": {\"dtype\": \"U8\", \"shape\": [1e300], \"data_offsets\": [0, 1]}}", "shape"},
    {"missing-offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", "data_offsets"},
    {"three-offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", "data_offsets"},
    {"float-offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0.5, 4.5]}}", "data_offsets"},
    {"negative-offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", "data_offsets"},
    {"entry-not-object", "{\"w\": [1, 2]}", "not a JSON object"},
    {"duplicate-name", "{\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
                       " \"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}", "twice"},
    {"metadata-not-object", "{\"__metadata__\": [1]}", "__metadata__"},
    {"metadata-not-string", "{\"__metadata__\": {\"format\": 1}}", "__metadata__"},
};

TEST(st_bad_headers) {
    const char *dir = test_tmpdir();
    for (size_t i = 0; i < sizeof bad_headers / sizeof *bad_headers; i++) {
        char *name = xasprintf("%s.safetensors", bad_headers[i].label);
        char *p = write_raw(dir, name, bad_headers[i].header, 64);
        CHECK_MSG(open_fails_naming(p, bad_headers[i].mention), "case %s", bad_headers[i].label);
        free(name);
        free(p);
    }
}

// Valid edge cases that must be accepted.
TEST(st_edge_cases_accepted) {
    const char *dir = test_tmpdir();
    const char *ok[] = {
        "{}",
        "{\"__metadata__\": {\"format\": \"pt\"}}",
        "  {\"w\": {\"dtype\": \"BOOL\", \"shape\": [], \"data_offsets\": [3, 4]}}   \n",
        "{\"e\": {\"dtype\": \"F32\", \"shape\": [0, 9007199254740992], \"data_offsets\": [8, 8]},"
        " \"a\": {\"dtype\": \"U8\", \"shape\": [16], \"data_offsets\": [0, 16]}}", // empty tensor inside another
        "{\"w\": {\"dtype\": \"I64\", \"shape\": [1e0], \"data_offsets\": [0, 8]}}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char *name = xasprintf("ok%zu.safetensors", i);
        char *p = write_raw(dir, name, ok[i], 16);
        SafeTensors st;
        CHECK_MSG(st_open(&st, p) == 0, "case %zu: %s", i, peft_last_error());
        st_close(&st);
        free(name);
        free(p);
    }
    // st_parse over a buffer, without a name, still gives a usable message.
    SafeTensors st;
    CHECK(st_parse(&st, "\x01\0\0\0\0\0\0\0[", 9, NULL) != 0 && strstr(peft_last_error(), "<buffer>"));
}

// Shapes in messages: a file may claim 8 dimensions of 19 digits; the text is cut, never overflows.
TEST(safetensors_shape_text_is_bounded) {
    int64_t shape[ST_MAX_DIMS];
    for (int d = 0; d < ST_MAX_DIMS; d++) shape[d] = INT64_MAX;
    char buf[64];
    CHECK(strlen(st_shape_text(ST_MAX_DIMS, shape, buf, sizeof buf)) == sizeof buf - 1);
    int64_t two[2] = {4, 32};
    CHECK(!strcmp(st_shape_text(2, two, buf, sizeof buf), "4, 32"));
}
