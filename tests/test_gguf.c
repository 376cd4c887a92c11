// test_gguf.c: the GGUF writer against the format as ggml's docs/gguf.md defines it (the bytes of
// a tiny file written out by hand here, every metadata type, alignment, refusals), and the float16,
// bfloat16 and Q8_0 conversions against their definitions. The files `peft export` writes are read
// back by llama.cpp and @huggingface/gguf in tests/cli_gguf_test.sh.
#include "test.h"
#include "helpers.h"
#include "gguf_export.h"
#include "gguf_writer.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

// The expected file, built up little-endian value by value.
typedef struct {
    uint8_t b[4096];
    size_t n;
} Bytes;
static void put(Bytes *e, const void *p, size_t n) { memcpy(e->b + e->n, p, n); e->n += n; }
static void u8(Bytes *e, uint8_t v) { put(e, &v, 1); }
static void u16(Bytes *e, uint16_t v) { u8(e, v & 0xff); u8(e, v >> 8); }
static void u32(Bytes *e, uint32_t v) { u16(e, v & 0xffff); u16(e, v >> 16); }
static void u64(Bytes *e, uint64_t v) { u32(e, (uint32_t)v); u32(e, (uint32_t)(v >> 32)); }
static void str(Bytes *e, const char *s) { u64(e, strlen(s)); put(e, s, strlen(s)); }
static void key(Bytes *e, const char *k, uint32_t type) { str(e, k); u32(e, type); }
static void pad(Bytes *e, size_t align) { while (e->n % align) u8(e, 0); }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static uint64_t f64_bits(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }

static void header(Bytes *e, uint64_t n_tensors, uint64_t n_kv) {
    e->n = 0;
    put(e, "GGUF", 4);
    u32(e, 3);  // version
    u64(e, n_tensors);
    u64(e, n_kv);
}

// Saves w (and frees it); 1 when the file's bytes are exactly e's (else says where they differ).
static int file_is(GgufWriter *w, const Bytes *e) {
    char *path = path_join(test_tmpdir(), "t.gguf");
    int rc = gguf_writer_save(w, path);
    gguf_writer_free(w);
    size_t len = 0;
    uint8_t *got = rc ? NULL : (uint8_t *)read_file(path, &len);
    size_t at = 0;
    while (got && at < len && at < e->n && got[at] == e->b[at]) at++;
    int same = got && len == e->n && at == len;
    if (!same) fprintf(stderr, "  %s: %s; the file (%zu bytes) differs from the expected (%zu bytes) at byte %zu\n", path, rc ? peft_last_error() : "saved", len, e->n, at);
    free(got);
    free(path);
    return same;
}

TEST(gguf_file_bytes_every_metadata_type) {
    GgufWriter *w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    uint8_t v_u8 = 200; int8_t v_i8 = -5; uint16_t v_u16 = 60000; int16_t v_i16 = -300;
    int32_t v_i32 = -70000; uint64_t v_u64 = 1ull << 40; int64_t v_i64 = -(1ll << 40); double v_f64 = 0.1;
    gguf_put(w, "t.u8", GGUF_U8, &v_u8);
    gguf_put(w, "t.i8", GGUF_I8, &v_i8);
    gguf_put(w, "t.u16", GGUF_U16, &v_u16);
    gguf_put(w, "t.i16", GGUF_I16, &v_i16);
    gguf_put_u32(w, "t.u32", 4000000000u);
    gguf_put(w, "t.i32", GGUF_I32, &v_i32);
    gguf_put_f32(w, "t.f32", 1.5f);
    gguf_put_bool(w, "t.bool", true);
    gguf_put_cstr(w, "t.string", "hi");
    gguf_put(w, "t.u64", GGUF_U64, &v_u64);
    gguf_put(w, "t.i64", GGUF_I64, &v_i64);
    gguf_put(w, "t.f64", GGUF_F64, &v_f64);
    int32_t arr[3] = {1, -2, 3};
    bool flags[2] = {false, true};
    const char *words[2] = {"a", "bc"};
    gguf_put_array(w, "t.arr_i32", GGUF_I32, arr, 3);
    gguf_put_array(w, "t.arr_bool", GGUF_BOOL, flags, 2);
    gguf_put_str_array(w, "t.arr_str", words, NULL, 2);
    float a[3] = {1, 2, 3}, b[2] = {1, -2};
    int64_t ne_a[1] = {3}, ne_b[2] = {2, 1};
    gguf_add_tensor(w, "a", GGML_F32, 1, ne_a, a, false);
    gguf_add_tensor(w, "b.weight", GGML_F16, 2, ne_b, b, false);

    static Bytes e;
    header(&e, 2, 15);
    key(&e, "t.u8", 0); u8(&e, 200);
    key(&e, "t.i8", 1); u8(&e, 0xfb);
    key(&e, "t.u16", 2); u16(&e, 60000);
    key(&e, "t.i16", 3); u16(&e, (uint16_t)-300);
    key(&e, "t.u32", 4); u32(&e, 4000000000u);
    key(&e, "t.i32", 5); u32(&e, (uint32_t)-70000);
    key(&e, "t.f32", 6); u32(&e, 0x3fc00000);
    key(&e, "t.bool", 7); u8(&e, 1);
    key(&e, "t.string", 8); str(&e, "hi");
    key(&e, "t.u64", 10); u64(&e, 1ull << 40);
    key(&e, "t.i64", 11); u64(&e, (uint64_t)-(1ll << 40));
    key(&e, "t.f64", 12); u64(&e, f64_bits(0.1));
    key(&e, "t.arr_i32", 9); u32(&e, 5); u64(&e, 3); u32(&e, 1); u32(&e, (uint32_t)-2); u32(&e, 3);
    key(&e, "t.arr_bool", 9); u32(&e, 7); u64(&e, 2); u8(&e, 0); u8(&e, 1);
    key(&e, "t.arr_str", 9); u32(&e, 8); u64(&e, 2); str(&e, "a"); str(&e, "bc");
    str(&e, "a"); u32(&e, 1); u64(&e, 3); u32(&e, 0); u64(&e, 0);                 // F32 [3] at 0
    str(&e, "b.weight"); u32(&e, 2); u64(&e, 2); u64(&e, 1); u32(&e, 1); u64(&e, 32);  // F16 [2,1] after 12 bytes padded to 32
    pad(&e, 32);
    u32(&e, f32_bits(1)); u32(&e, f32_bits(2)); u32(&e, f32_bits(3));
    pad(&e, 32);
    u16(&e, 0x3c00); u16(&e, 0xc000);  // 1 and -2 in float16
    pad(&e, 32);
    CHECK(file_is(w, &e));
}

TEST(gguf_alignment) {
    GgufWriter *w = gguf_writer_new(64);
    float x[5] = {1, 2, 3, 4, 5};
    int64_t ne[1] = {5};
    gguf_add_tensor(w, "x", GGML_F32, 1, ne, x, false);
    gguf_add_tensor(w, "y", GGML_F32, 1, ne, x, false);
    static Bytes e;
    header(&e, 2, 1);
    key(&e, "general.alignment", 4); u32(&e, 64);  // written first, by the writer itself
    str(&e, "x"); u32(&e, 1); u64(&e, 5); u32(&e, 0); u64(&e, 0);
    str(&e, "y"); u32(&e, 1); u64(&e, 5); u32(&e, 0); u64(&e, 64);
    pad(&e, 64);
    for (int t = 0; t < 2; t++) {
        for (int i = 0; i < 5; i++) u32(&e, f32_bits(x[i]));
        pad(&e, 64);
    }
    CHECK(file_is(w, &e));
}

// The misuse is reported by save, naming it, and no file (or temporary file) is left.
static int save_fails(GgufWriter *w, const char *must_mention) {
    const char *dir = test_tmpdir();
    char *path = path_join(dir, "bad.gguf"), *cmd = xasprintf("ls -A '%s' | grep -q .", dir);
    int rc = gguf_writer_save(w, path), left = system(cmd) == 0;
    int ok = rc != 0 && !left && strstr(peft_last_error(), path) && strstr(peft_last_error(), must_mention);
    if (!ok) fprintf(stderr, "  rc %d, files left %d, error: %s (wanted \"%s\")\n", rc, left, peft_last_error(), must_mention);
    gguf_writer_free(w);
    free(cmd);
    free(path);
    return ok;
}

TEST(gguf_writer_refusals) {
    float x[64] = {0};
    int64_t ne[2] = {33, 1}, ne_ok[1] = {4};
    GgufWriter *w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_put_u32(w, "a.b", 1);
    gguf_put_u32(w, "a.b", 2);
    CHECK(save_fails(w, "\"a.b\" is given twice"));
    w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_put_u32(w, "a b", 1);
    CHECK(save_fails(w, "invalid metadata key"));
    w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_add_tensor(w, "blk.0.a_name_that_is_far_too_long_for_ggml_whose_names_end_at_63_bytes", GGML_F32, 1, ne_ok, x, false);
    CHECK(save_fails(w, "longer than 63 bytes"));
    w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_add_tensor(w, "t", GGML_F32, 1, ne_ok, x, false);
    gguf_add_tensor(w, "t", GGML_F32, 1, ne_ok, x, false);
    CHECK(save_fails(w, "tensor t is added twice"));
    w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_add_tensor(w, "q", GGML_Q8_0, 2, ne, x, false);
    CHECK(save_fails(w, "multiple of 32"));
    w = gguf_writer_new(24);
    CHECK(save_fails(w, "alignment 24"));
    // A value float16 cannot hold is an error at save time, naming the tensor.
    float big[4] = {1, 70000, 0, 0};
    w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_add_tensor(w, "big", GGML_F16, 1, ne_ok, big, false);
    CHECK(save_fails(w, "tensor big: value 70000"));
}

TEST(gguf_float16_and_bfloat16_round_to_nearest_even) {
    static const struct { float x; uint16_t h; } f16[] = {
        {1.0f, 0x3c00}, {-2.0f, 0xc000}, {0.0f, 0x0000}, {-0.0f, 0x8000}, {65504.0f, 0x7bff},
        {65519.0f, 0x7bff}, {65520.0f, 0x7c00},                    // the halfway point to 65536 rounds to infinity (even)
        {0x1p-14f, 0x0400}, {0x1p-24f, 0x0001}, {0x1p-25f, 0x0000},  // smallest normal, smallest subnormal, half of it (to even 0)
        {0x3p-25f, 0x0002}, {0x1.8p-24f, 0x0002},                  // 1.5 units rounds to 2 (even)
        {1.0f + 0x1p-11f, 0x3c00}, {1.0f + 0x3p-11f, 0x3c02},      // halfway between mantissas: to the even one
        {0.1f, 0x2e66}, {-65504.0f, 0xfbff},
    };
    for (size_t i = 0; i < sizeof f16 / sizeof *f16; i++)
        CHECK_MSG(gguf_f32_to_f16(f16[i].x) == f16[i].h, "f16(%a) = 0x%04x, want 0x%04x", f16[i].x, gguf_f32_to_f16(f16[i].x), f16[i].h);
    CHECK((gguf_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (gguf_f32_to_f16(NAN) & 0x3ff));
    static const struct { float x; uint16_t h; } bf16[] = {
        {1.0f, 0x3f80}, {-2.0f, 0xc000}, {1.0f + 0x1p-8f, 0x3f80}, {1.0f + 0x3p-8f, 0x3f82}, {0.1f, 0x3dcd},
    };
    for (size_t i = 0; i < sizeof bf16 / sizeof *bf16; i++)
        CHECK_MSG(gguf_f32_to_bf16(bf16[i].x) == bf16[i].h, "bf16(%a) = 0x%04x, want 0x%04x", bf16[i].x, gguf_f32_to_bf16(bf16[i].x), bf16[i].h);
}

static float f16_value(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v = e ? ldexpf((float)(1024 + m), e - 25) : ldexpf((float)m, -24);
    return h & 0x8000 ? -v : v;
}

TEST(gguf_q8_0_blocks) {
    // Block 1: max |x| = 127, so d = 1 exactly and each value is roundf(x): ties away from zero.
    // Block 2: all zero: d = 0 and every value 0. Block 3: a general block, checked by the definition.
    float x[96] = {127, -127, 2.5f, -2.5f, 0.49f, -0.5f, 1.5f, 0};
    uint64_t s = 7;
    for (int j = 0; j < 32; j++) x[64 + j] = (float)(test_urand(&s) * 6 - 3);
    uint8_t q[3 * 34];
    CHECK(ggml_type_bytes(GGML_Q8_0, 96) == sizeof q);
    gguf_quantize_q8_0(x, q, 96);
    static const int8_t want[8] = {127, -127, 3, -3, 0, -1, 2, 0};
    CHECK(q[0] == 0x00 && q[1] == 0x3c);  // d = 1.0 as float16, little-endian
    for (int j = 0; j < 8; j++) CHECK_MSG((int8_t)q[2 + j] == want[j], "value %d: %d, want %d", j, (int8_t)q[2 + j], want[j]);
    for (int j = 0; j < 34; j++) CHECK(q[34 + j] == 0);
    float amax = 0;
    for (int j = 64; j < 96; j++) amax = fmaxf(amax, fabsf(x[j]));
    uint16_t h;
    memcpy(&h, q + 68, 2);
    float d = amax / 127;
    CHECK(h == gguf_f32_to_f16(d));
    for (int j = 0; j < 32; j++) {
        int8_t v = (int8_t)q[70 + j];
        CHECK_MSG(v == (int8_t)roundf(x[64 + j] / d) || v == (int8_t)roundf(x[64 + j] * (1.0f / d)), "value %d: %d for %g", j, v, x[64 + j]);
        CHECK_NEAR(v * f16_value(h), x[64 + j], 0.51 * d + 1e-3 * amax);  // dequantised within half a step (+ d's float16 rounding)
    }
}

TEST(gguf_export_type_names) {
    GgufOutType t;
    CHECK(gguf_out_type_parse("q8_0", &t) == 0 && t == GGUF_OUT_Q8_0);
    CHECK(gguf_out_type_parse("bf16", &t) == 0 && t == GGUF_OUT_BF16);
    CHECK(gguf_out_type_parse("q4_0", &t) != 0 && strstr(peft_last_error(), "q4_0"));
    ModelConfig c = {.n_embd = 64, .n_head = 4, .head_dim = 8, .n_positions = 128};
    strcpy(c.model_type, "qwen2");
    CHECK(gguf_arch(&c) == NULL && strstr(peft_last_error(), "head_dim 8 x 4 heads"));
    strcpy(c.model_type, "mistral");
    CHECK(!strcmp(gguf_arch(&c), "llama"));
    c.sliding_window = 32;
    CHECK(gguf_context_length(&c) == 32);
}
