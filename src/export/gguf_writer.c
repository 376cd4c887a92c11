// gguf_writer.c: the GGUF file format (see gguf_writer.h for the layout). Metadata is serialised as
// it is added; tensors are converted to their type while the file is written, one at a time.
#include "gguf_writer.h"
#include "util.h"
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    GgmlType type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    const float *data;
    bool owned;
    uint64_t offset, nbytes;
} GgufTensor;

struct GgufWriter {
    uint32_t alignment;
    uint8_t *kv;          // the serialised metadata
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;          // for the repeated-key check
    GgufTensor *t;
    int n_t, cap_t;
    char *error;          // the first misuse, reported by gguf_writer_save
};

static void set_error(GgufWriter *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(GgufWriter *w, const char *fmt, ...) {
    if (w->error) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    w->error = xstrdup(buf);
}

static void put_bytes(GgufWriter *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        while (w->kv_len + n > w->kv_cap) w->kv_cap = w->kv_cap ? 2 * w->kv_cap : 4096;
        w->kv = xrealloc(w->kv, w->kv_cap);
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);  // (an empty string's p may be NULL)
    w->kv_len += n;
}

// Integers and floats in the file are little-endian, as on every machine this builds for.
static void put_u32(GgufWriter *w, uint32_t v) { put_bytes(w, &v, 4); }
static void put_u64(GgufWriter *w, uint64_t v) { put_bytes(w, &v, 8); }
static void put_string(GgufWriter *w, const char *s, size_t len) {
    put_u64(w, len);
    put_bytes(w, s, len);
}

static size_t scalar_size(GgufType t) {
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;  // strings and arrays are not scalars
    }
}

// Starts an entry: checks the key and writes it and the value's type. False when refused.
static bool begin_kv(GgufWriter *w, const char *key, GgufType type) {
    size_t len = key ? strlen(key) : 0;
    bool ok = len > 0 && len <= 65535;
    for (size_t i = 0; ok && i < len; i++) {
        char c = key[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
    }
    if (!ok) { set_error(w, "invalid metadata key \"%.80s\"", key ? key : "(null)"); return false; }
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) { set_error(w, "metadata key \"%s\" is given twice", key); return false; }
    w->keys = xrealloc(w->keys, sizeof(char *) * (w->n_kv + 1));
    w->keys[w->n_kv++] = xstrdup(key);
    put_string(w, key, len);
    put_u32(w, type);
    return true;
}

GgufWriter *gguf_writer_new(uint32_t alignment) {
    GgufWriter *w = xcalloc(1, sizeof *w);
    w->alignment = alignment;
    if (alignment < 8 || alignment % 8 || (alignment & (alignment - 1))) {
        set_error(w, "alignment %u is not a power of two and a multiple of 8", alignment);
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    } else if (alignment != GGUF_DEFAULT_ALIGNMENT) gguf_put_u32(w, "general.alignment", alignment);
    return w;
}

void gguf_writer_free(GgufWriter *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (int i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        if (w->t[i].owned) free((void *)w->t[i].data);
    }
    free(w->keys);
    free(w->kv);
    free(w->t);
    free(w->error);
    free(w);
}

void gguf_put(GgufWriter *w, const char *key, GgufType type, const void *value) {
    size_t size = scalar_size(type);
    if (!size) { set_error(w, "metadata \"%s\": type %d is not a scalar type", key ? key : "(null)", (int)type); return; }
    if (!begin_kv(w, key, type)) return;
    if (type == GGUF_BOOL) {
        uint8_t b = *(const bool *)value ? 1 : 0;
        put_bytes(w, &b, 1);
    } else put_bytes(w, value, size);
}

void gguf_put_u32(GgufWriter *w, const char *key, uint32_t v) { gguf_put(w, key, GGUF_U32, &v); }
void gguf_put_f32(GgufWriter *w, const char *key, float v) { gguf_put(w, key, GGUF_F32, &v); }
void gguf_put_bool(GgufWriter *w, const char *key, bool v) { gguf_put(w, key, GGUF_BOOL, &v); }

void gguf_put_str(GgufWriter *w, const char *key, const char *s, size_t len) {
    if (begin_kv(w, key, GGUF_STRING)) put_string(w, s, len);
}

void gguf_put_cstr(GgufWriter *w, const char *key, const char *s) { gguf_put_str(w, key, s, strlen(s)); }

void gguf_put_array(GgufWriter *w, const char *key, GgufType type, const void *values, uint64_t n) {
    size_t size = scalar_size(type);
    if (!size) { set_error(w, "metadata \"%s\": arrays of type %d are not supported", key ? key : "(null)", (int)type); return; }
    if (!begin_kv(w, key, GGUF_ARRAY)) return;
    put_u32(w, type);
    put_u64(w, n);
    if (type != GGUF_BOOL) { put_bytes(w, values, size * n); return; }
    for (uint64_t i = 0; i < n; i++) {
        uint8_t b = ((const bool *)values)[i] ? 1 : 0;
        put_bytes(w, &b, 1);
    }
}

void gguf_put_str_array(GgufWriter *w, const char *key, const char *const *s, const size_t *lens, uint64_t n) {
    if (!begin_kv(w, key, GGUF_ARRAY)) return;
    put_u32(w, GGUF_STRING);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++) put_string(w, s[i], lens ? lens[i] : strlen(s[i]));
}

// ---- tensors ----

uint64_t ggml_type_bytes(GgmlType type, int64_t n) {
    switch (type) {
    case GGML_F32: return 4 * (uint64_t)n;
    case GGML_F16: case GGML_BF16: return 2 * (uint64_t)n;
    case GGML_Q8_0: return (uint64_t)n / GGUF_Q8_0_BLOCK * (2 + GGUF_Q8_0_BLOCK);
    }
    return 0;
}

const char *ggml_type_name(GgmlType type) {
    switch (type) {
    case GGML_F32: return "F32";
    case GGML_F16: return "F16";
    case GGML_BF16: return "BF16";
    case GGML_Q8_0: return "Q8_0";
    }
    return "?";
}

void gguf_add_tensor(GgufWriter *w, const char *name, GgmlType type, int n_dims, const int64_t *ne, const float *data, bool owned) {
    GgufTensor t = {.type = type, .n_dims = n_dims, .data = data, .owned = owned};
    if (w->n_t == w->cap_t) w->t = xrealloc(w->t, sizeof *w->t * (size_t)(w->cap_t = w->cap_t ? 2 * w->cap_t : 64));
    w->t[w->n_t++] = t;  // kept (and, when owned, freed) even when refused below
    GgufTensor *p = &w->t[w->n_t - 1];
    p->name = xstrdup(name ? name : "");
    if (!name || !*name || strlen(name) > GGUF_MAX_NAME) { set_error(w, "tensor name \"%.80s\" is empty or longer than %d bytes", p->name, GGUF_MAX_NAME); return; }
    for (int i = 0; i + 1 < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) { set_error(w, "tensor %s is added twice", name); return; }
    if (type != GGML_F32 && type != GGML_F16 && type != GGML_BF16 && type != GGML_Q8_0) { set_error(w, "tensor %s: unsupported type %d", name, (int)type); return; }
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) { set_error(w, "tensor %s: %d dimensions (1 to %d)", name, n_dims, GGUF_MAX_DIMS); return; }
    int64_t n = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || ne[d] > INT64_MAX / 64 / n) { set_error(w, "tensor %s: dimension %d has size %lld", name, d, (long long)ne[d]); return; }
        p->ne[d] = ne[d];
        n *= ne[d];
    }
    if (type == GGML_Q8_0 && ne[0] % GGUF_Q8_0_BLOCK) { set_error(w, "tensor %s: Q8_0 needs rows of a multiple of 32 values (ne[0] is %lld)", name, (long long)ne[0]); return; }
    if (!data) { set_error(w, "tensor %s has no data", name); return; }
    p->nbytes = ggml_type_bytes(type, n);
}

int gguf_writer_n_tensors(const GgufWriter *w) { return w->n_t; }

// ---- conversions ----

uint16_t gguf_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return (uint16_t)(sign | 0x7e00);            // NaN (quiet)
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00);           // |x| >= 65520 rounds to infinity
    if (ax < 0x38800000) {                                           // below 2^-14: a subnormal half (or 0)
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f)); // units of 2^-24, exact product, rounded to even
    }
    uint32_t r = ax - ((uint32_t)(127 - 15) << 23);                  // rebias the exponent
    return (uint16_t)(sign | ((r + 0xfff + ((r >> 13) & 1)) >> 13));  // drop 13 mantissa bits, ties to even
}

uint16_t gguf_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);  // NaN stays NaN (quiet)
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

void gguf_quantize_q8_0(const float *x, uint8_t *out, int64_t n) {
    for (int64_t b = 0; b < n / GGUF_Q8_0_BLOCK; b++, x += GGUF_Q8_0_BLOCK, out += 2 + GGUF_Q8_0_BLOCK) {
        float amax = 0;
        for (int j = 0; j < GGUF_Q8_0_BLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        uint16_t h = gguf_f32_to_f16(d);
        memcpy(out, &h, 2);
        for (int j = 0; j < GGUF_Q8_0_BLOCK; j++) out[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

// The tensor's bytes in its type (malloc'd), or NULL with an error when a value does not fit.
static uint8_t *convert(const GgufTensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->ne[d];
    uint8_t *out = try_calloc(t->nbytes ? t->nbytes : 1, 1, t->name);
    if (!out) return NULL;
    if (t->type == GGML_F32) { memcpy(out, t->data, t->nbytes); return out; }
    if (t->type == GGML_Q8_0) {
        gguf_quantize_q8_0(t->data, out, n);
        for (int64_t b = 0; b < n / GGUF_Q8_0_BLOCK; b++) {
            uint16_t h;
            memcpy(&h, out + b * (2 + GGUF_Q8_0_BLOCK), 2);
            if ((h & 0x7c00) == 0x7c00) {
                peft_fail("tensor %s: block %lld's scale is beyond float16's range (values up to %g): Q8_0 cannot hold it", t->name, (long long)b,
                          65504.0 * 127);
                free(out);
                return NULL;
            }
        }
        return out;
    }
    uint16_t *h = (uint16_t *)out;
    for (int64_t i = 0; i < n; i++) {
        h[i] = t->type == GGML_F16 ? gguf_f32_to_f16(t->data[i]) : gguf_f32_to_bf16(t->data[i]);
        uint16_t exp_mask = t->type == GGML_F16 ? 0x7c00 : 0x7f80;
        if ((h[i] & exp_mask) == exp_mask && isfinite(t->data[i])) {
            peft_fail("tensor %s: value %g (element %lld) is beyond %s's range", t->name, t->data[i], (long long)i, ggml_type_name(t->type));
            free(out);
            return NULL;
        }
    }
    return out;
}

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static void write_zeros(FILE *f, uint64_t n) {
    static const uint8_t zeros[64];
    for (size_t k; n > 0; n -= k) fwrite(zeros, 1, k = n < sizeof zeros ? (size_t)n : sizeof zeros, f);
}

int gguf_writer_save(GgufWriter *w, const char *path) {
    if (w->error) return peft_fail("%s: %s", path, w->error);
    // Header and tensor infos go through the metadata buffer's writer, after the metadata.
    GgufWriter head = {0};
    put_bytes(&head, "GGUF", 4);
    put_u32(&head, 3);
    put_u64(&head, (uint64_t)w->n_t);
    put_u64(&head, w->n_kv);
    put_bytes(&head, w->kv, w->kv_len);
    uint64_t offset = 0;
    for (int i = 0; i < w->n_t; i++) {
        GgufTensor *t = &w->t[i];
        t->offset = offset;
        offset += align_up(t->nbytes, w->alignment);
        put_string(&head, t->name, strlen(t->name));
        put_u32(&head, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&head, (uint64_t)t->ne[d]);
        put_u32(&head, t->type);
        put_u64(&head, t->offset);
    }
    AtomicFile af;
    if (atomic_open(&af, path)) { free(head.kv); return -1; }
    // A failed write sets the stream's error flag, which atomic_close reports.
    fwrite(head.kv, 1, head.kv_len, af.f);
    write_zeros(af.f, align_up(head.kv_len, w->alignment) - head.kv_len);
    free(head.kv);
    for (int i = 0; i < w->n_t; i++) {
        uint8_t *bytes = convert(&w->t[i]);
        if (!bytes) {
            atomic_close(&af, false);
            return peft_fail_context("%s: ", path);
        }
        fwrite(bytes, 1, w->t[i].nbytes, af.f);
        write_zeros(af.f, align_up(w->t[i].nbytes, w->alignment) - w->t[i].nbytes);
        free(bytes);
    }
    return atomic_close(&af, true);
}
