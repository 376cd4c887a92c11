// safetensors.c: reader (mmap + full validation), converters, sharded model folders, and writer.
//
// File layout: u64 little-endian header length N, N bytes of JSON header, then the data area.
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets are
// relative to the data area), plus an optional "__metadata__" object of string -> string.
//
// Everything read from a file is untrusted: every number is range-checked before it is used
// as a size or an offset, so a hostile file produces an error message, never a bad read.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// The format is little-endian and we copy raw bytes into host integers and floats.
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.c assumes a little-endian host");

// A header larger than this is surely corrupt (real headers are KBs to a few MB).
#define ST_MAX_HEADER (100u * 1024 * 1024)
// JSON numbers are doubles: above 2^53 they are no longer exact integers.
#define ST_MAX_JSON_INT ((double)(1ULL << 53))

static const struct { const char *name; size_t size; } dtype_info[] = {
    [DT_F32] = {"F32", 4}, [DT_F16] = {"F16", 2}, [DT_BF16] = {"BF16", 2}, [DT_I64] = {"I64", 8},
    [DT_I32] = {"I32", 4}, [DT_U8] = {"U8", 1},   [DT_BOOL] = {"BOOL", 1}, [DT_I8] = {"I8", 1},
};
enum { N_DTYPES = sizeof dtype_info / sizeof dtype_info[0] };

static bool dtype_valid(DType dt) { return (unsigned)dt < N_DTYPES; }

size_t dtype_size(DType dt) { return dtype_valid(dt) ? dtype_info[dt].size : 0; }
const char *dtype_name(DType dt) { return dtype_valid(dt) ? dtype_info[dt].name : "?"; }

static bool dtype_from_name(const char *s, DType *out) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtype_info[i].name) == 0) { *out = (DType)i; return true; }
    return false;
}

// numel of a shape, or -1 when the product would not fit in a byte count of int64.
// Any zero dimension makes the product 0 even if the other dimensions are huge.
static int64_t shape_numel(int ndim, const int64_t *shape) {
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0;
    const int64_t limit = INT64_MAX / 8; // leaves room to multiply by any dtype size
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || n > limit / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

// ---------------------------------------------------------------------------------------------
// Reading

// A JSON value that must be an exact non-negative integer (cJSON hands us a double).
static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_JSON_INT) || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static void free_tensors(StTensor *t, int n) {
    for (int i = 0; i < n; i++) free(t[i].name);
    free(t);
}

static int parse_shape(const char *file, const char *tname, const cJSON *shape, StTensor *t) {
    if (!cJSON_IsArray(shape))
        return peft_fail("%s: tensor '%s': \"shape\" is missing or not an array", file, tname);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return peft_fail("%s: tensor '%s': %d dimensions (at most %d supported)", file, tname, ndim, ST_MAX_DIMS);
    t->ndim = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        uint64_t v;
        if (!json_uint(d, &v)) {
            if (cJSON_IsNumber(d))
                return peft_fail("%s: tensor '%s': shape dimension %d is %g, not a non-negative integer up to 2^53",
                                 file, tname, t->ndim, d->valuedouble);
            return peft_fail("%s: tensor '%s': shape dimension %d is not a number", file, tname, t->ndim);
        }
        t->shape[t->ndim++] = (int64_t)v;
    }
    t->numel = shape_numel(t->ndim, t->shape);
    if (t->numel < 0) return peft_fail("%s: tensor '%s': shape is too large (element count overflows)", file, tname);
    return 0;
}

static int parse_offsets(const char *file, const char *tname, const cJSON *offs, uint64_t *begin, uint64_t *end) {
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return peft_fail("%s: tensor '%s': \"data_offsets\" is missing or not an array of 2 integers", file, tname);
    if (!json_uint(cJSON_GetArrayItem(offs, 0), begin) || !json_uint(cJSON_GetArrayItem(offs, 1), end))
        return peft_fail("%s: tensor '%s': data_offsets must be non-negative integers", file, tname);
    if (*begin > *end)
        return peft_fail("%s: tensor '%s': data_offsets begin %llu > end %llu", file, tname,
                         (unsigned long long)*begin, (unsigned long long)*end);
    return 0;
}

// One header entry -> t (name, dtype, shape, data pointer), checked against the data area.
static int parse_entry(const char *file, const cJSON *e, const uint8_t *data, size_t data_len, StTensor *t) {
    const char *tname = e->string;
    if (!cJSON_IsObject(e)) return peft_fail("%s: tensor '%s': entry is not a JSON object", file, tname);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt)) return peft_fail("%s: tensor '%s': \"dtype\" is missing or not a string", file, tname);
    if (!dtype_from_name(dt->valuestring, &t->dtype))
        return peft_fail("%s: unknown dtype %s for tensor %s", file, dt->valuestring, tname);
    if (parse_shape(file, tname, cJSON_GetObjectItemCaseSensitive(e, "shape"), t)) return -1;
    uint64_t begin = 0, end = 0;
    if (parse_offsets(file, tname, cJSON_GetObjectItemCaseSensitive(e, "data_offsets"), &begin, &end)) return -1;
    if (end > data_len)
        return peft_fail("%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data area (%zu bytes)",
                         file, tname, (unsigned long long)begin, (unsigned long long)end, data_len);
    uint64_t want = (uint64_t)t->numel * dtype_size(t->dtype); // cannot overflow: numel <= INT64_MAX/8
    if (end - begin != want)
        return peft_fail("%s: tensor '%s': shape and dtype %s need %llu bytes but data_offsets span %llu", file,
                         tname, dtype_name(t->dtype), (unsigned long long)want, (unsigned long long)(end - begin));
    t->data = data + begin;
    t->nbytes = (size_t)want;
    return 0;
}

// "__metadata__" is optional, but when present it must be an object of strings.
static int check_metadata(const char *file, const cJSON *meta) {
    if (!cJSON_IsObject(meta)) return peft_fail("%s: \"__metadata__\" is not a JSON object", file);
    const cJSON *v;
    cJSON_ArrayForEach(v, meta)
        if (!cJSON_IsString(v)) return peft_fail("%s: __metadata__ value '%s' is not a string", file, v->string);
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

// Two tensors sharing bytes would alias each other's storage: a corrupt or hostile file.
// Empty tensors occupy no bytes and never overlap anything.
static int check_overlaps(const char *file, StTensor *t, int n) {
    StTensor **by_off = xmalloc(sizeof *by_off * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) by_off[i] = &t[i];
    qsort(by_off, (size_t)n, sizeof *by_off, cmp_by_offset);
    const StTensor *last = NULL; // the non-empty tensor reaching furthest so far
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const StTensor *cur = by_off[i];
        if (cur->nbytes == 0) continue;
        const uint8_t *last_end = last ? (const uint8_t *)last->data + last->nbytes : NULL;
        if (last && (const uint8_t *)cur->data < last_end)
            rc = peft_fail("%s: tensors '%s' and '%s' overlap in the data area", file, last->name, cur->name);
        if (!last || (const uint8_t *)cur->data + cur->nbytes > last_end) last = cur;
    }
    free(by_off);
    return rc;
}

// Sort by name for st_find, and reject duplicate names (cJSON keeps repeated keys).
static int sort_and_check_names(const char *file, StTensor *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_by_name);
    for (int i = 1; i < n; i++)
        if (strcmp(t[i - 1].name, t[i].name) == 0) return peft_fail("%s: tensor '%s' appears twice", file, t[i].name);
    return 0;
}

static bool is_json_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// Parse the header JSON. We parse a NUL-terminated private copy so that no JSON parser bug
// can read past the header, and require that only padding whitespace follows the object.
static cJSON *parse_header_json(const char *file, const uint8_t *hdr, size_t n) {
    // cJSON treats every byte <= 0x20 (NUL included) as whitespace; JSON allows only these four.
    for (size_t i = 0; i < n; i++)
        if (hdr[i] < 0x20 && !is_json_space(hdr[i])) {
            peft_fail("%s: header has control byte 0x%02x at byte %zu", file, hdr[i], i);
            return NULL;
        }
    char *copy = xmalloc(n + 1);
    memcpy(copy, hdr, n);
    copy[n] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, n, &end, 0);
    if (!root) {
        size_t at = end && end >= copy && end <= copy + n ? (size_t)(end - copy) : 0;
        free(copy);
        peft_fail("%s: header is not valid JSON (error near byte %zu of %zu)", file, at, n);
        return NULL;
    }
    size_t rest = (size_t)(end - copy);
    while (rest < n && is_json_space((uint8_t)copy[rest])) rest++;
    free(copy);
    if (rest != n) {
        cJSON_Delete(root);
        peft_fail("%s: header has trailing bytes after the JSON object (at byte %zu of %zu)", file, rest, n);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        peft_fail("%s: header is JSON but not an object", file);
        return NULL;
    }
    return root;
}

// Walk the header object and fill st->tensors; the caller frees them on failure.
static int parse_entries(SafeTensors *st, const char *file, const cJSON *root, const uint8_t *data, size_t data_len) {
    st->tensors = xcalloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *st->tensors);
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (check_metadata(file, e)) return -1;
            continue;
        }
        StTensor *t = &st->tensors[st->n];
        if (parse_entry(file, e, data, data_len, t)) return -1;
        t->name = xstrdup(e->string);
        st->n++;
    }
    if (check_overlaps(file, st->tensors, st->n)) return -1;
    return sort_and_check_names(file, st->tensors, st->n);
}

int st_parse(SafeTensors *st, const void *buf, size_t len, const char *name_for_errors) {
    const char *file = name_for_errors ? name_for_errors : "<buffer>";
    memset(st, 0, sizeof *st);
    if (len < 8)
        return peft_fail("%s: file is %zu bytes, too short for the 8-byte header length", file, len);
    uint64_t n;
    memcpy(&n, buf, 8);
    if (n > len - 8)
        return peft_fail("%s: header length %llu runs past the end of the file (%zu bytes)", file,
                         (unsigned long long)n, len);
    if (n > ST_MAX_HEADER)
        return peft_fail("%s: header length %llu is over the %u-byte limit", file, (unsigned long long)n,
                         ST_MAX_HEADER);
    const uint8_t *hdr = (const uint8_t *)buf + 8;
    cJSON *root = parse_header_json(file, hdr, (size_t)n);
    if (!root) return -1;
    int rc = parse_entries(st, file, root, hdr + n, len - 8 - (size_t)n);
    cJSON_Delete(root);
    if (rc) {
        free_tensors(st->tensors, st->n);
        memset(st, 0, sizeof *st);
        return -1;
    }
    st->path = xstrdup(file);
    return 0;
}

int st_open(SafeTensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return peft_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return peft_fail("%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return peft_fail("%s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    if (len < 8) { // checked before mmap, which cannot map an empty file
        close(fd);
        return peft_fail("%s: file is %zu bytes, too short for the 8-byte header length", path, len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); // the mapping stays valid after close
    if (map == MAP_FAILED) return peft_fail("%s: cannot mmap: %s", path, strerror(e));
    if (st_parse(st, map, len, path)) {
        munmap(map, len);
        return -1;
    }
    st->map = map;
    st->map_len = len;
    return 0;
}

void st_close(SafeTensors *st) {
    if (!st) return;
    free_tensors(st->tensors, st->n);
    if (st->map) munmap(st->map, st->map_len);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const StTensor *st_find(const SafeTensors *st, const char *name) {
    if (!st->n) return NULL;
    StTensor key = {.name = (char *)name};
    return bsearch(&key, st->tensors, (size_t)st->n, sizeof key, cmp_by_name);
}

// ---------------------------------------------------------------------------------------------
// Conversion

static float bits_to_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

// IEEE half -> float, exact for every input (normals, subnormals, zeros, inf, NaN payloads).
float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return bits_to_f32(sign | ((exp + 127 - 15) << 23) | (man << 13));
    // Subnormal (or zero): man * 2^-24 is exact in float, then apply the sign.
    float mag = (float)man * 0x1p-24f;
    return sign ? -mag : mag;
}

const char *st_shape_text(int ndim, const int64_t *shape, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    for (int d = 0; d < ndim && n + 1 < cap; d++) {
        int k = snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
        n += k > 0 ? (size_t)k : 0;
    }
    return buf;
}

int st_to_f32(const StTensor *t, float *out) {
    const uint8_t *p = t->data; // may be unaligned: read element by element through memcpy
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case DT_F32:
        if (n) memcpy(out, p, n * 4);
        return 0;
    case DT_F16:
    case DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = t->dtype == DT_F16 ? st_f16_to_f32(h) : bits_to_f32((uint32_t)h << 16);
        }
        return 0;
    default:
        return peft_fail("tensor '%s': dtype %s is not a float type", t->name ? t->name : "?", dtype_name(t->dtype));
    }
}

int st_to_f32_finite(const StTensor *t, float *out, const char *file) {
    if (st_to_f32(t, out)) return peft_fail_context("%s: ", file);
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(out[i])) return peft_fail("%s: tensor %s holds a non-finite value (%g at index %lld)", file, t->name, out[i], (long long)i);
    return 0;
}

int st_to_i64(const StTensor *t, int64_t *out) {
    const uint8_t *p = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case DT_I64:
        if (n) memcpy(out, p, n * 8);
        return 0;
    case DT_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            out[i] = v;
        }
        return 0;
    case DT_U8:
        for (size_t i = 0; i < n; i++) out[i] = p[i];
        return 0;
    case DT_I8:
        for (size_t i = 0; i < n; i++) out[i] = (int8_t)p[i];
        return 0;
    case DT_BOOL:
        for (size_t i = 0; i < n; i++) out[i] = p[i] != 0;
        return 0;
    default:
        return peft_fail("tensor '%s': dtype %s is not an integer type", t->name ? t->name : "?", dtype_name(t->dtype));
    }
}

// ---------------------------------------------------------------------------------------------
// Model folders: model.safetensors or model.safetensors.index.json + shards

// Index of shard `name` in names[0..n), or -1.
static int find_name(char **names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

// The "weight_map" object of an index file, checked to map names to plain shard file names.
static const cJSON *index_weight_map(const char *index_path, const cJSON *root) {
    const cJSON *wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        peft_fail("%s: no \"weight_map\" object", index_path);
        return NULL;
    }
    if (!wm->child) {
        peft_fail("%s: \"weight_map\" is empty", index_path);
        return NULL;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        // Shards live next to the index: a '/' would let the index point anywhere on disk.
        if (!cJSON_IsString(e) || !e->valuestring[0] || strchr(e->valuestring, '/')) {
            peft_fail("%s: weight_map entry '%s' is not a shard file name", index_path, e->string);
            return NULL;
        }
    }
    return wm;
}

// Open each distinct shard named in weight_map once, then check every tensor is where it says.
static int open_shards(StModel *m, const char *dir, const char *index_path, const cJSON *wm) {
    int n_entries = cJSON_GetArraySize(wm);
    char **names = xcalloc((size_t)n_entries, sizeof *names);
    m->files = xcalloc((size_t)n_entries, sizeof *m->files);
    const cJSON *e;
    int rc = 0;
    cJSON_ArrayForEach(e, wm) {
        if (find_name(names, m->n_files, e->valuestring) >= 0) continue;
        char *path = path_join(dir, e->valuestring);
        rc = st_open(&m->files[m->n_files], path);
        free(path);
        if (rc) {
            peft_fail_context("%s: ", index_path);
            break;
        }
        names[m->n_files++] = e->valuestring;
    }
    if (rc == 0) {
        cJSON_ArrayForEach(e, wm) {
            int i = find_name(names, m->n_files, e->valuestring);
            if (!st_find(&m->files[i], e->string)) {
                rc = peft_fail("%s: tensor '%s' is listed in shard %s but that shard does not contain it",
                               index_path, e->string, e->valuestring);
                break;
            }
        }
    }
    free(names);
    return rc;
}

static int open_index(StModel *m, const char *dir, const char *index_path) {
    size_t len;
    char *text = read_file(index_path, &len);
    if (!text) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return peft_fail("%s: not valid JSON", index_path);
    const cJSON *wm = index_weight_map(index_path, root);
    int rc = wm ? open_shards(m, dir, index_path, wm) : -1;
    cJSON_Delete(root);
    return rc;
}

int st_model_open(StModel *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    int rc;
    if (file_exists(single)) {
        m->files = xcalloc(1, sizeof *m->files);
        rc = st_open(&m->files[0], single);
        if (rc == 0) m->n_files = 1;
    } else if (file_exists(index)) {
        rc = open_index(m, dir, index);
    } else {
        rc = peft_fail("%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    free(single);
    free(index);
    if (rc) st_model_close(m);
    return rc;
}

void st_model_close(StModel *m) {
    if (!m) return;
    for (int i = 0; i < m->n_files; i++) st_close(&m->files[i]);
    free(m->files);
    memset(m, 0, sizeof *m);
}

const StTensor *st_model_find(const StModel *m, const char *name, const char **file_out) {
    for (int i = 0; i < m->n_files; i++) {
        const StTensor *t = st_find(&m->files[i], name);
        if (t) {
            if (file_out) *file_out = m->files[i].path;
            return t;
        }
    }
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Writer

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    void *data;
    size_t nbytes;
} WEntry;

struct StWriter {
    int n, cap;
    WEntry *e;
    int n_meta, cap_meta;
    char **meta_key, **meta_val;
    // st_writer_add cannot return an error, so the first bad call is remembered and
    // reported by st_writer_save (which then writes nothing).
    char *error;
};

StWriter *st_writer_new(void) { return xcalloc(1, sizeof(StWriter)); }

static void writer_error(StWriter *w, char *msg) {
    if (w->error) free(msg);
    else w->error = msg;
}

// Why a tensor cannot be added (malloc'd message), or NULL when it can.
static char *writer_add_problem(const char *name, DType dtype, int ndim, const int64_t *shape, const void *data) {
    if (!name || !strcmp(name, "__metadata__")) return xasprintf("invalid tensor name '%s'", name ? name : "(null)");
    if (!dtype_valid(dtype)) return xasprintf("tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return xasprintf("tensor '%s': %d dimensions (at most %d supported)", name, ndim, ST_MAX_DIMS);
    if (ndim && !shape) return xasprintf("tensor '%s': no shape", name);
    int64_t numel = shape_numel(ndim, shape);
    if (numel < 0) return xasprintf("tensor '%s': invalid shape", name);
    if (numel && !data) return xasprintf("tensor '%s': no data", name);
    return NULL;
}

void st_writer_add(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, const void *data) {
    char *problem = writer_add_problem(name, dtype, ndim, shape, data);
    if (problem) {
        writer_error(w, problem);
        return;
    }
    size_t nbytes = (size_t)shape_numel(ndim, shape) * dtype_size(dtype);
    if (w->n == w->cap) w->e = xrealloc(w->e, sizeof *w->e * (size_t)(w->cap = w->cap ? 2 * w->cap : 16));
    WEntry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    if (ndim) memcpy(e->shape, shape, sizeof *shape * (size_t)ndim);
    e->data = xmalloc(nbytes);
    if (nbytes) memcpy(e->data, data, nbytes);
    e->nbytes = nbytes;
}

void st_writer_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape, const float *data) {
    st_writer_add(w, name, DT_F32, ndim, shape, data);
}

void st_writer_metadata(StWriter *w, const char *key, const char *value) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_key[i], key) == 0) {
            free(w->meta_val[i]);
            w->meta_val[i] = xstrdup(value);
            return;
        }
    if (w->n_meta == w->cap_meta) {
        w->cap_meta = w->cap_meta ? 2 * w->cap_meta : 8;
        w->meta_key = xrealloc(w->meta_key, sizeof *w->meta_key * (size_t)w->cap_meta);
        w->meta_val = xrealloc(w->meta_val, sizeof *w->meta_val * (size_t)w->cap_meta);
    }
    w->meta_key[w->n_meta] = xstrdup(key);
    w->meta_val[w->n_meta++] = xstrdup(value);
}

// Integers are emitted as raw JSON text: cJSON would print large doubles in exponent form.
static cJSON *json_int(int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)v);
    return cJSON_CreateRaw(buf);
}

static cJSON *writer_header(const StWriter *w) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    if (find_name(w->meta_key, w->n_meta, "format") < 0) cJSON_AddStringToObject(meta, "format", "pt");
    for (int i = 0; i < w->n_meta; i++) cJSON_AddStringToObject(meta, w->meta_key[i], w->meta_val[i]);
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const WEntry *e = &w->e[i];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(t, "dtype", dtype_name(e->dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, json_int(e->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, json_int((int64_t)off));
        cJSON_AddItemToArray(offs, json_int((int64_t)(off + e->nbytes)));
        off += e->nbytes;
    }
    return root;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int writer_check_names(const StWriter *w, const char *path) {
    char **names = xmalloc(sizeof *names * (size_t)(w->n ? w->n : 1));
    for (int i = 0; i < w->n; i++) names[i] = w->e[i].name;
    qsort(names, (size_t)w->n, sizeof *names, cmp_str_ptr);
    int rc = 0;
    for (int i = 1; i < w->n && rc == 0; i++)
        if (strcmp(names[i - 1], names[i]) == 0) rc = peft_fail("%s: tensor '%s' added twice", path, names[i]);
    free(names);
    return rc;
}

int st_writer_save(StWriter *w, const char *path) {
    if (w->error) return peft_fail("%s: %s", path, w->error);
    if (writer_check_names(w, path)) return -1;
    cJSON *root = writer_header(w);
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return peft_fail("%s: could not build the header", path);
    // Pad the header with spaces so the data area starts 8-byte aligned.
    size_t hlen = strlen(json), padded = (hlen + 7) & ~(size_t)7, data_len = 0;
    for (int i = 0; i < w->n; i++) data_len += w->e[i].nbytes;
    size_t total = 8 + padded + data_len;
    uint8_t *buf = xmalloc(total);
    uint64_t n64 = padded;
    memcpy(buf, &n64, 8);
    memcpy(buf + 8, json, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    free(json);
    uint8_t *p = buf + 8 + padded;
    for (int i = 0; i < w->n; i++) {
        if (w->e[i].nbytes) memcpy(p, w->e[i].data, w->e[i].nbytes);
        p += w->e[i].nbytes;
    }
    int rc = write_file_atomic(path, buf, total);
    free(buf);
    return rc;
}

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].data);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_key[i]);
        free(w->meta_val[i]);
    }
    free(w->e);
    free(w->meta_key);
    free(w->meta_val);
    free(w->error);
    free(w);
}
