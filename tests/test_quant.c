// test_quant.c: bitsandbytes' 4-bit, double and int8 quantization (src/quant/quant.c) against the
// definitions: hand-worked blocks (codes, nibble order, a padded odd block, an all-zero block),
// every code value mapping to itself, the dynamic map's shape, the error bounds of a round trip,
// and the double-quantized statistics. tests/test_quant_cases.c compares with the torch reference.
#include "test.h"
#include "helpers.h"
#include "quant.h"
#include "util.h"
#include <float.h>
#include <stdlib.h>
#include <string.h>

TEST(quant_nf4_codes_and_thresholds) {
    float map[16];
    quant_4bit_map(QUANT_NF4, map);
    for (int i = 0; i < 16; i++) {
        CHECK(quant_nf4_code(map[i]) == i);
        CHECK(quant_nf4_value((uint8_t)i, 2.0f) == map[i] * 2.0f);
    }
    // A threshold itself goes to the lower code (the kernel's comparisons are strict).
    CHECK(quant_nf4_code(0.03979014977812767f) == 7);
    CHECK(quant_nf4_code(nextafterf(0.03979014977812767f, 1)) == 8);
    CHECK(quant_nf4_code(-0.8480964004993439f) == 0);
    CHECK(quant_nf4_code(0.0f) == 7 && quant_nf4_code(-0.0f) == 7);
    CHECK(quant_nf4_code(NAN) == 0);  // 0 * inf in an all-zero block
}

TEST(quant_fp4_codes_and_values) {
    float map[16];
    quant_4bit_map(QUANT_FP4, map);
    // get_4bit_type's fp4 list over 12: 0b010 = 8/12, 0b011 = 12/12, 0b110 = 2/12, ...
    CHECK(map[2] == 8.0f / 12.0f && map[3] == 1.0f && map[6] == 2.0f / 12.0f && map[9] == -0.0625f / 12.0f);
    for (int i = 0; i < 16; i++) {
        if (i == 8) continue;  // -0 codes as +0 (x < 0 is false)
        CHECK_MSG(quant_fp4_code(map[i]) == i, "code %d", i);
        CHECK_MSG(quant_fp4_value((uint8_t)i, 3.0f) == map[i] * 3.0f, "value %d: %g vs %g", i, quant_fp4_value((uint8_t)i, 3.0f), map[i] * 3.0f);
    }
    CHECK(quant_fp4_code(-0.0f) == 0);
    CHECK(quant_fp4_code(0.29166667f) == 7 && quant_fp4_code(-0.3f) == 12);
    CHECK(quant_fp4_code(NAN) == 0);
}

TEST(quant_4bit_block_by_hand) {
    // 5 values, one block: absmax 2, scaled [0.5, -1, 0.25, 0, 1] -> NF4 codes 12 (0.4407 > 0.3893,
    // not > 0.5017), 0, 10 (0.2035 < 0.25 <= 0.2920), 7, 15; the odd last value pairs with a
    // padding zero (code 7). First value in the high nibble.
    const float x[5] = {1.0f, -2.0f, 0.5f, 0.0f, 2.0f};
    uint8_t q[3];
    float absmax[1];
    quant_4bit(QUANT_NF4, x, 5, 64, q, absmax);
    CHECK(absmax[0] == 2.0f);
    CHECK_MSG(q[0] == 0xC0 && q[1] == 0xA7 && q[2] == 0xF7, "%02x %02x %02x", q[0], q[1], q[2]);
    float out[5];
    dequant_4bit(QUANT_NF4, q, absmax, 64, 0, 5, out);
    CHECK(out[0] == 0.44070982933044434f * 2.0f && out[1] == -2.0f && out[3] == 0.0f && out[4] == 2.0f);
    // The same in FP4: 0.5 -> 0b101 (0.4167 < 0.5 <= 0.5833), -1 -> 0b1011, 0.25 -> 0b111, 0 -> 0, 1 -> 0b011.
    quant_4bit(QUANT_FP4, x, 5, 64, q, absmax);
    CHECK_MSG(q[0] == 0x5B && q[1] == 0x70 && q[2] == 0x30, "%02x %02x %02x", q[0], q[1], q[2]);
    dequant_4bit(QUANT_FP4, q, absmax, 64, 1, 4, out);  // from an odd element
    CHECK(out[0] == -2.0f && out[1] == 0.25f * 2.0f && out[2] == 0.0f && out[3] == 2.0f);
}

TEST(quant_4bit_zero_block_and_blocks) {
    // An all-zero block: absmax 0, every value 0 * inf = NaN, which the kernels code as 0 (NF4's -1,
    // times absmax 0 = -0 back). The second block is independent of the first.
    float x[130] = {0};
    for (int i = 64; i < 130; i++) x[i] = (float)(i - 97) / 33.0f;
    uint8_t q[65];
    float absmax[3], out[130];
    quant_4bit(QUANT_NF4, x, 130, 64, q, absmax);
    CHECK(absmax[0] == 0 && absmax[1] == 1.0f && absmax[2] == x[129]);
    for (int i = 0; i < 32; i++) CHECK(q[i] == 0);
    dequant_4bit(QUANT_NF4, q, absmax, 64, 0, 130, out);
    for (int i = 0; i < 64; i++) CHECK(out[i] == 0.0f);
    CHECK(out[64] == -1.0f && out[97] == 0.0f && out[129] == absmax[2]);
}

TEST(quant_dynamic_map_shape) {
    float map[256];
    quant_dynamic_map(map);
    CHECK(map[127] == 0.0f && map[255] == 1.0f);
    for (int i = 0; i < 127; i++) CHECK(map[i] == -map[254 - i]);
    for (int i = 1; i < 256; i++) CHECK(map[i] > map[i - 1]);
    // Smallest magnitude: exponent 0, one interval [0.1, 1]: midpoint 0.55 * 1e-6; largest below 1:
    // exponent 6, 64 intervals, the last midpoint (0.9859375 + 1) / 2.
    CHECK_NEAR(map[128], 0.55e-6, 1e-12);
    CHECK_NEAR(map[254], 0.99296875, 1e-6);
    // Every map value codes to its own index (dQuantize's search then the nearer neighbour).
    for (int i = 0; i < 256; i++) CHECK_MSG(quant_8bit_code(map, map[i]) == i, "index %d", i);
    CHECK(quant_8bit_code(map, 1.0f) == 255 && quant_8bit_code(map, -1.0f) == 0);
    // Halfway between two neighbours goes up only above the fp32 midpoint.
    float mid = (map[200] + map[201]) * 0.5f;
    CHECK(quant_8bit_code(map, mid) == 200 && quant_8bit_code(map, nextafterf(mid, 2)) == 201);
}

static float *random_normal(long n, uint64_t seed, float scale) {
    float *w = xmalloc(sizeof(float) * n);
    uint64_t s = seed;
    for (long i = 0; i < n; i++) {
        double u1 = test_urand(&s) + 1e-12, u2 = test_urand(&s);
        w[i] = (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2)) * scale;
    }
    return w;
}

// A round trip stays within half the largest gap between neighbouring codes, times the block's absmax.
TEST(quant_round_trip_bounds) {
    int64_t rows = 37, cols = 53;  // 1961 values: not a multiple of 64, odd
    float *w = random_normal(rows * cols, 3, 0.05f), *back = xmalloc(sizeof(float) * rows * cols);
    QuantType types[] = {QUANT_NF4, QUANT_FP4, QUANT_INT8};
    for (int k = 0; k < 3; k++)
        for (int nested = 0; nested < 2; nested++) {
            if (types[k] == QUANT_INT8 && nested) continue;
            QWeight q;
            CHECK(qweight_quantize(&q, types[k], nested, NULL, w, rows, cols, "w") == 0);
            qweight_dequantize(&q, back);
            double worst = 0;
            for (int64_t i = 0; i < rows * cols; i++) {
                float scale = types[k] == QUANT_INT8 ? q.scb[i / cols] / 127.0f : 0;
                if (types[k] != QUANT_INT8) {
                    float m = 0;
                    for (int64_t j = i / 64 * 64; j < (i / 64 + 1) * 64 && j < rows * cols; j++) m = fmaxf(m, fabsf(w[j]));
                    scale = m * (types[k] == QUANT_NF4 ? 0.14f : 0.17f);  // the widest half-gaps: NF4 (1 - 0.696) / 2, FP4 (1 - 2/3) / 2
                }
                double err = fabs((double)back[i] - w[i]) - (scale * (types[k] == QUANT_INT8 ? 0.5 : 1.0) * 1.1 + 1e-7);
                if (err > worst) worst = err;
            }
            CHECK_MSG(worst <= 0, "%s nested %d: error over the bound by %g", quant_type_name(types[k]), nested, worst);
            // Rows dequantized on their own equal the whole matrix's rows.
            float part[3 * 53];
            qweight_dequantize_rows(&q, 11, 3, part);
            CHECK(!memcmp(part, back + 11 * cols, sizeof part));
            qweight_free(&q);
        }
    free(w);
    free(back);
}

TEST(quant_double_quant_statistics) {
    // 300 blocks (two nested blocks): the nested statistics give back every absmax within the 8-bit
    // map's resolution, and the offset is the mean.
    int64_t rows = 300, cols = 64;
    float *w = random_normal(rows * cols, 5, 0.02f), absmax[300], nested[300];
    for (int64_t r = 0; r < rows; r++) w[r * cols] = 0.01f + 0.0005f * (float)r;  // spread the absmax
    QWeight a, b;
    CHECK(qweight_quantize(&a, QUANT_NF4, false, NULL, w, rows, cols, "w") == 0);
    CHECK(qweight_quantize(&b, QUANT_NF4, true, NULL, w, rows, cols, "w") == 0);
    CHECK(b.n_blocks == 300 && b.n_nested == 2 && !memcmp(a.data, b.data, a.rows * a.cols / 2));
    qweight_absmax(&a, absmax);
    qweight_absmax(&b, nested);
    double mean = 0;
    for (int i = 0; i < 300; i++) mean += absmax[i];
    CHECK_NEAR(b.offset, mean / 300, 1e-7);
    for (int i = 0; i < 300; i++) CHECK_NEAR(nested[i], absmax[i], 0.02 * b.nested_absmax[i / 256] + 1e-7);
    // Dequantizing uses the recovered statistics: the same as dequant_4bit with them.
    float *x1 = xmalloc(sizeof(float) * rows * cols), *x2 = xmalloc(sizeof(float) * rows * cols);
    qweight_dequantize(&b, x1);
    dequant_4bit(QUANT_NF4, b.data, nested, 64, 0, rows * cols, x2);
    CHECK(!memcmp(x1, x2, sizeof(float) * rows * cols));
    CHECK(qweight_bytes(&b) == (size_t)(rows * cols / 2 + 300 + 2 * 4 + 256 * 4 + 16 * 4 + 4));
    CHECK(qweight_bytes(&a) == (size_t)(rows * cols / 2 + 300 * 4 + 16 * 4));
    qweight_free(&a);
    qweight_free(&b);
    free(w);
    free(x1);
    free(x2);
}

TEST(quant_int8_by_hand) {
    // SCB = row absmax; x * (127 / SCB) rounded half to even: -0.5 * 127 = -63.5 -> -64, 0.25 * 127 = 31.75 -> 32.
    const float w[8] = {1.0f, -0.5f, 0.25f, 0.0f, 0, 0, 0, 0};
    QWeight q;
    CHECK(qweight_quantize(&q, QUANT_INT8, false, NULL, w, 2, 4, "w") == 0);
    const int8_t *d = (const int8_t *)q.data;
    CHECK(q.scb[0] == 1.0f && q.scb[1] == 0.0f);
    CHECK(d[0] == 127 && d[1] == -64 && d[2] == 32 && d[3] == 0 && d[4] == 0);
    float back[8];
    qweight_dequantize(&q, back);
    CHECK(back[0] == 127.0f * 7.874015718698502e-3f && back[1] == -64.0f * 7.874015718698502e-3f && back[4] == 0.0f);
    CHECK(qweight_bytes(&q) == 8 + 2 * 4);
    qweight_free(&q);
}

TEST(quant_refuses_non_finite) {
    float w[4] = {1, 2, INFINITY, 3};
    QWeight q;
    CHECK(qweight_quantize(&q, QUANT_NF4, true, NULL, w, 2, 2, "layer.weight") != 0);
    CHECK(strstr(peft_last_error(), "layer.weight") && strstr(peft_last_error(), "not finite"));
    QuantType t;
    CHECK(quant_type_parse("nf4", &t) == 0 && t == QUANT_NF4);
    CHECK(quant_type_parse("int4", &t) != 0 && strstr(peft_last_error(), "int4"));
}
