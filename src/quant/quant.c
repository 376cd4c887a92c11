// quant.c: bitsandbytes' blockwise 4-bit (NF4, FP4), its 8-bit double quantization of the
// statistics and LLM.int8()'s row-wise int8, with the arithmetic of its CUDA kernels (quant.h).
// Everything is plain fp32 with one rounding per operation (no contraction: -std=c11 keeps
// a * b + c two roundings, as the kernels' separate statements are).
#include "quant.h"
#include "gguf_writer.h"
#include "safetensors.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *quant_type_name(QuantType t) {
    static const char *const names[] = {"none", "nf4", "fp4", "int8"};
    return names[t];
}

int quant_type_parse(const char *s, QuantType *t) {
    for (int i = QUANT_NF4; i <= QUANT_INT8; i++)
        if (!strcmp(s, quant_type_name(i))) { *t = i; return 0; }
    return peft_fail("quantization \"%s\" is not supported (nf4, fp4, int8 are)", s);
}

// The NF4 values of the QLoRA paper, as the kernels' dDequantizeNF4 and get_4bit_type list them.
static const float nf4_values[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};
// FP4 (1 sign, 2 exponent, 1 mantissa bits, bias 3) magnitudes by the low three bits, as the
// kernel's dDequantizeFP4Tree constants write them (value / 12, the type's largest).
static const float fp4_magnitudes[8] = {0.0f, 5.208333333e-03f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f};

void quant_4bit_map(QuantType t, float map[16]) {
    // get_4bit_type: the listed values divided in fp32 by their largest magnitude (1 for NF4, 12 for FP4).
    static const float fp4_listed[8] = {0, 0.0625f, 8, 12, 4, 6, 2, 3};
    for (int i = 0; i < 16; i++)
        map[i] = t == QUANT_NF4 ? nf4_values[i] : (i < 8 ? fp4_listed[i] : -fp4_listed[i - 8]) / 12.0f;
}

// Element i of torch.linspace(start, end, steps) in fp32 (ATen's element formula).
static float linspace_at(float start, float end, int steps, int i) {
    float step = (end - start) / (float)(steps - 1);
    return i < steps / 2 ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void quant_dynamic_map(float map[256]) {
    // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i, 2^i + 1
    // boundaries in [0.1, 1], their midpoints times 10^(i-6), both signs; then 0 and 1, sorted.
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int steps = (1 << i) + 1;
        float scale = (float)pow(10.0, i - 6);  // Python's 10 ** (i - 6), taken as fp32 by the tensor product
        for (int k = 0; k + 1 < steps; k++) {
            float mid = (linspace_at(0.1f, 1.0f, steps, k) + linspace_at(0.1f, 1.0f, steps, k + 1)) / 2.0f;
            float v = i == 6 ? mid : scale * mid;
            map[n++] = v;
            map[n++] = -v;
        }
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    qsort(map, 256, sizeof(float), cmp_float);
}

// dQuantizeNF4: the kernel's decision tree (thresholds halfway between neighbouring values).
uint8_t quant_nf4_code(float x) {
    if (x > 0.03979014977812767f) {
        if (x > 0.3893125355243683f) {
            if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
            return x > 0.5016634166240692f ? 13 : 12;
        }
        if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
        return x > 0.1202552504837513f ? 9 : 8;
    }
    if (x > -0.33967943489551544f) {
        if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
        return x > -0.23460740596055984f ? 5 : 4;
    }
    if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
    return x > -0.8480964004993439f ? 1 : 0;
}

// dQuantizeFP4: sign bit 8 for x < 0, the magnitude by the kernel's thresholds. A NaN (0 * inf in
// an all-zero block) falls through every comparison to code 0, as on the GPU.
uint8_t quant_fp4_code(float x) {
    uint8_t sign = x < 0 ? 8 : 0;
    x = fabsf(x);
    if (x > 0.29166667f) {
        if (x > 0.583333f) return (x > 0.8333333f ? 3 : 2) + sign;
        return (x > 0.4166667f ? 5 : 4) + sign;
    }
    if (x > 0.0859375f) return (x > 0.20833333f ? 7 : 6) + sign;
    return (x > 0.00260417f ? 1 : 0) + sign;
}

// dQuantize<0>: a binary search over the sorted map, then the nearer neighbour by midpoints.
uint8_t quant_8bit_code(const float map[256], float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = map[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) { lower_pivot = pivot; lower = val; pivot += i; }
        else { upper_pivot = pivot; upper = val; pivot -= i; }
        val = map[pivot];
    }
    if (upper_pivot == 255) upper = map[upper_pivot];
    if (lower_pivot == 0) lower = map[lower_pivot];
    if (x > val) return x > (upper + val) * 0.5f ? upper_pivot : pivot;
    return x < (lower + val) * 0.5f ? lower_pivot : pivot;
}

float quant_nf4_value(uint8_t code, float absmax) { return nf4_values[code & 15] * absmax; }

float quant_fp4_value(uint8_t code, float absmax) {
    float sign = code & 8 ? -1.0f : 1.0f;
    return fp4_magnitudes[code & 7] * absmax * sign;
}

// A block's absmax (the kernel's max over |x|, the padding zeros included) and its reciprocal.
static float block_absmax(const float *x, long n) {
    float m = 0.0f;
    for (long i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

void quant_4bit(QuantType t, const float *x, long n, int block, uint8_t *out, float *absmax) {
    long n_blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (n_blocks > 64)
    for (long b = 0; b < n_blocks; b++) {
        long first = b * block, len = n - first < block ? n - first : block;
        float m = block_absmax(x + first, len);
        absmax[b] = m;
        float inv = 1.0f / m;  // inf for an all-zero block: 0 * inf is NaN, coded as the kernel codes it
        for (long i = 0; i < len; i += 2) {
            // A block's odd last value pairs with a padding zero (0 * inv), as the kernel loads it.
            float a = x[first + i] * inv, c = i + 1 < len ? x[first + i + 1] * inv : 0.0f * inv;
            uint8_t hi = t == QUANT_NF4 ? quant_nf4_code(a) : quant_fp4_code(a);
            uint8_t lo = t == QUANT_NF4 ? quant_nf4_code(c) : quant_fp4_code(c);
            out[(first + i) / 2] = (uint8_t)(hi << 4 | lo);
        }
    }
}

void quant_8bit(const float map[256], const float *x, long n, int block, uint8_t *out, float *absmax) {
    long n_blocks = (n + block - 1) / block;
    for (long b = 0; b < n_blocks; b++) {
        long first = b * block, len = n - first < block ? n - first : block;
        float m = block_absmax(x + first, len);
        absmax[b] = m;
        float inv = 1.0f / m;
        for (long i = 0; i < len; i++) out[first + i] = quant_8bit_code(map, x[first + i] * inv);
    }
}

// Elements [lo, hi) of one block (absmax m) into out[0, hi - lo).
static void decode_run(QuantType t, const uint8_t *q, float m, long lo, long hi, float *out) {
    for (long e = lo; e < hi; e++) {
        uint8_t byte = q[e / 2], code = e % 2 ? byte & 15 : byte >> 4;  // the first value in the high nibble
        out[e - lo] = t == QUANT_NF4 ? quant_nf4_value(code, m) : quant_fp4_value(code, m);
    }
}

// Blocks [b0, b0 + nb) overlapping [first, first + count); block b's absmax is absmax[b - b0].
static void decode_blocks(QuantType t, const uint8_t *q, const float *absmax, int block, long b0, long nb, long first, long count, float *out) {
#pragma omp parallel for schedule(static) if (nb > 64)
    for (long b = 0; b < nb; b++) {
        long lo = (b0 + b) * block, hi = lo + block;
        if (lo < first) lo = first;
        if (hi > first + count) hi = first + count;
        decode_run(t, q, absmax[b], lo, hi, out + (lo - first));
    }
}

void dequant_4bit(QuantType t, const uint8_t *q, const float *absmax, int block, long first, long count, float *out) {
    if (count <= 0) return;
    long b0 = first / block;
    decode_blocks(t, q, absmax + b0, block, b0, (first + count - 1) / block - b0 + 1, first, count, out);
}

void dequant_8bit(const float map[256], const uint8_t *q, const float *absmax, int block, long n, float *out) {
    for (long i = 0; i < n; i++) out[i] = map[q[i]] * absmax[i / block];
}

float quant_mean(const float *x, long n) {
    long double s = 0;  // 64 mantissa bits: exact for the statistics of any real model
    for (long i = 0; i < n; i++) s += x[i];
    return (float)((double)s / (double)n);
}

static int quantize_4bit(QWeight *q, bool nested, const float *map, const float *w) {
    long n = q->rows * q->cols;
    q->block = QUANT_BLOCK;
    q->n_blocks = (n + QUANT_BLOCK - 1) / QUANT_BLOCK;
    quant_4bit_map(q->type, q->map);
    q->data = xcalloc((size_t)(n + 1) / 2, 1);
    float *absmax = xmalloc(sizeof(float) * (size_t)q->n_blocks);
    quant_4bit(q->type, w, n, QUANT_BLOCK, q->data, absmax);
    if (!nested) { q->absmax = absmax; return 0; }
    // compress_statistics: absmax - mean(absmax), 8-bit blockwise in blocks of 256.
    q->nested = true;
    q->nested_block = QUANT_NESTED_BLOCK;
    q->n_nested = (q->n_blocks + QUANT_NESTED_BLOCK - 1) / QUANT_NESTED_BLOCK;
    if (map) memcpy(q->nested_map, map, sizeof q->nested_map);
    else quant_dynamic_map(q->nested_map);
    q->offset = quant_mean(absmax, q->n_blocks);
    for (long b = 0; b < q->n_blocks; b++) absmax[b] -= q->offset;
    q->qabsmax = xmalloc((size_t)q->n_blocks);
    q->nested_absmax = xmalloc(sizeof(float) * (size_t)q->n_nested);
    quant_8bit(q->nested_map, absmax, q->n_blocks, QUANT_NESTED_BLOCK, q->qabsmax, q->nested_absmax);
    free(absmax);
    return 0;
}

// LLM.int8(): SCB = the row's absmax; int8 = round-half-even(x * (127 / SCB)).
static void quantize_int8(QWeight *q, const float *w) {
    q->data = xmalloc((size_t)(q->rows * q->cols));
    q->scb = xmalloc(sizeof(float) * (size_t)q->rows);
    int8_t *d = (int8_t *)q->data;
#pragma omp parallel for schedule(static) if (q->rows > 64)
    for (int64_t r = 0; r < q->rows; r++) {
        const float *row = w + r * q->cols;
        float m = block_absmax(row, q->cols), scale = 127.0f / m;
        q->scb[r] = m;
        for (int64_t c = 0; c < q->cols; c++) {
            float v = rintf(row[c] * scale);  // a zero row: 0 * inf = NaN, coded 0; a subnormal absmax: inf, saturated
            d[r * q->cols + c] = isnan(v) ? 0 : v > 127 ? 127 : v < -127 ? -127 : (int8_t)v;
        }
    }
}

int qweight_quantize(QWeight *q, QuantType t, bool nested, const float *map, const float *w, int64_t rows, int64_t cols, const char *what) {
    memset(q, 0, sizeof *q);
    long n = rows * cols;
    for (long i = 0; i < n; i++)
        if (!isfinite(w[i])) return peft_fail("%s: value %ld is not finite (%g): it cannot be quantized", what, i, w[i]);
    q->type = t;
    q->rows = rows;
    q->cols = cols;
    if (t == QUANT_INT8) { quantize_int8(q, w); return 0; }
    return quantize_4bit(q, nested, map, w);
}

// absmax of 4-bit blocks [b0, b0 + nb): nested, dequantize_blockwise's fp32 product, then + offset.
static void absmax_range(const QWeight *q, long b0, long nb, float *out) {
    if (!q->nested) { memcpy(out, q->absmax + b0, sizeof(float) * (size_t)nb); return; }
    for (long b = 0; b < nb; b++) {
        long k = b0 + b;
        out[b] = q->nested_map[q->qabsmax[k]] * q->nested_absmax[k / q->nested_block];
        out[b] += q->offset;
    }
}

void qweight_absmax(const QWeight *q, float *absmax) { absmax_range(q, 0, q->n_blocks, absmax); }

void quant_round(QuantOut d, float *x, long n) {
    for (long i = 0; d != QUANT_OUT_F32 && i < n; i++) {
        if (d == QUANT_OUT_BF16) {
            uint32_t b = (uint32_t)gguf_f32_to_bf16(x[i]) << 16;
            memcpy(&x[i], &b, 4);
        } else x[i] = st_f16_to_f32(gguf_f32_to_f16(x[i]));
    }
}

void qweight_dequantize_rows(const QWeight *q, int64_t row0, int64_t nrows, float *out) {
    long first = row0 * q->cols, count = nrows * q->cols;
    if (q->type == QUANT_INT8) {
        const int8_t *d = (const int8_t *)q->data;
        const float inv127 = 7.874015718698502e-3f;  // int8_vectorwise_dequant: A * SCB * (1/127 in fp32)
#pragma omp parallel for schedule(static) if (nrows > 16)
        for (int64_t r = 0; r < nrows; r++)
            for (int64_t c = 0; c < q->cols; c++) {
                float v = (float)d[(row0 + r) * q->cols + c] * q->scb[row0 + r];
                out[r * q->cols + c] = v * inv127;
            }
        return;
    }
    if (count == 0) return;
    long b0 = first / q->block, nb = (first + count - 1) / q->block - b0 + 1;
    float *absmax = xmalloc(sizeof(float) * (size_t)nb);
    absmax_range(q, b0, nb, absmax);
    decode_blocks(q->type, q->data, absmax, q->block, b0, nb, first, count, out);
    free(absmax);
    quant_round(q->out_dtype, out, count);
}

void qweight_dequantize(const QWeight *q, float *out) { qweight_dequantize_rows(q, 0, q->rows, out); }

size_t quant_bytes(QuantType t, bool nested, int64_t rows, int64_t cols) {
    size_t n = (size_t)(rows * cols);
    if (t == QUANT_INT8) return n + sizeof(float) * (size_t)rows;
    size_t blocks = (n + QUANT_BLOCK - 1) / QUANT_BLOCK, bytes = (n + 1) / 2 + 16 * sizeof(float);
    if (!nested) return bytes + blocks * sizeof(float);
    size_t nested_blocks = (blocks + QUANT_NESTED_BLOCK - 1) / QUANT_NESTED_BLOCK;
    return bytes + blocks + nested_blocks * sizeof(float) + 256 * sizeof(float) + sizeof(float);
}

size_t qweight_bytes(const QWeight *q) { return quant_bytes(q->type, q->nested, q->rows, q->cols); }

void qweight_free(QWeight *q) {
    free(q->data);
    free(q->absmax);
    free(q->qabsmax);
    free(q->nested_absmax);
    free(q->scb);
    memset(q, 0, sizeof *q);
}
