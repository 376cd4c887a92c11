// jinja_value.c: the interpreter's values, and the JavaScript rules @huggingface/jinja inherits:
// how numbers print (Number#toString), what counts as whitespace (String#trim), how values become
// text and JSON (its toJSON: Python's json.dumps layout with ensure_ascii off).
#include "jinja_internal.h"
#include "json_bytes.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

JVal jv_undef(void) { return (JVal){.t = JV_UNDEF}; }
JVal jv_none(void) { return (JVal){.t = JV_NONE}; }
JVal jv_bool(bool b) { return (JVal){.t = JV_BOOL, .b = b}; }
JVal jv_int(int64_t i) { return (JVal){.t = JV_INT, .i = i}; }
JVal jv_float(double f) { return (JVal){.t = JV_FLOAT, .f = f}; }
JVal jv_str(JStr s) { return (JVal){.t = JV_STR, .s = s}; }

JVal jv_list(JArena *a, int cap) {
    JList *l = ja_alloc(a, sizeof *l);
    l->cap = cap;
    if (cap) l->v = ja_alloc(a, sizeof(JVal) * (size_t)cap);
    return (JVal){.t = JV_LIST, .l = l};
}

JVal jv_dict(JArena *a, JDictKind kind) {
    JDict *d = ja_alloc(a, sizeof *d);
    d->kind = kind;
    return (JVal){.t = JV_DICT, .d = d};
}

void jl_push(JArena *a, JList *l, JVal v) {
    if (l->n == l->cap) {
        int cap = 2 * l->cap + 4;
        JVal *nv = ja_alloc(a, sizeof(JVal) * (size_t)cap);
        if (l->n) memcpy(nv, l->v, sizeof(JVal) * (size_t)l->n);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

static int jd_find(const JDict *d, JStr key) {
    for (int i = 0; i < d->n; i++)
        if (d->k[i].n == key.n && !memcmp(d->k[i].p, key.p, key.n)) return i;
    return -1;
}

bool jd_get(const JDict *d, JStr key, JVal *out) {
    int i = jd_find(d, key);
    if (i < 0) return false;
    *out = d->v[i];
    return true;
}

void jd_set(JArena *a, JDict *d, JStr key, JVal v) {
    int i = jd_find(d, key);
    if (i >= 0) { d->v[i] = v; return; }
    if (d->n == d->cap) {
        int cap = 2 * d->cap + 4;
        JStr *nk = ja_alloc(a, sizeof(JStr) * (size_t)cap);
        JVal *nv = ja_alloc(a, sizeof(JVal) * (size_t)cap);
        if (d->n) { memcpy(nk, d->k, sizeof(JStr) * (size_t)d->n); memcpy(nv, d->v, sizeof(JVal) * (size_t)d->n); }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n++] = v;
}

bool jv_is_list(JVal v) { return v.t == JV_LIST; }
bool jv_is_mapping(JVal v) { return v.t == JV_DICT; }

bool jv_truthy(JVal v) {
    switch (v.t) {
    case JV_BOOL: return v.b;
    case JV_INT: return v.i != 0;
    case JV_FLOAT: return v.f != 0 && !isnan(v.f);
    case JV_STR: return v.s.n > 0;
    case JV_LIST: return v.l->n > 0;
    case JV_DICT: return v.d->n > 0;
    case JV_NS: case JV_FUNC: return true;
    default: return false;
    }
}

const char *jv_type_name(JVal v) {
    static const char *names[] = {"undefined", "none", "boolean", "integer", "float", "string", "list", "dict", "namespace", "function"};
    if (v.t == JV_LIST && v.l->tuple) return "tuple";
    return names[v.t];
}

void jb_put(JBuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) { b->cap = 2 * (b->n + n + 1) + 64; b->p = xrealloc(b->p, b->cap); }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
void jb_puts(JBuf *b, const char *s) { jb_put(b, s, strlen(s)); }

// ---- numbers ----

void js_number(double x, char buf[40]) {
    if (isnan(x)) { strcpy(buf, "NaN"); return; }
    if (isinf(x)) { strcpy(buf, x < 0 ? "-Infinity" : "Infinity"); return; }
    if (x == 0) { strcpy(buf, "0"); return; }
    // The shortest digits that read back as x.
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    // e is "-d.ddde+XX": collect the digits and the exponent.
    char digits[24];
    int k = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++) if (*q != '.') digits[k++] = *q;
    digits[k] = 0;
    int n = atoi(q + 1) + 1;  // x = 0.d1d2...dk * 10^n
    char *o = buf;
    if (neg) *o++ = '-';
    if (k <= n && n <= 21) {
        memcpy(o, digits, (size_t)k); o += k;
        for (int i = 0; i < n - k; i++) *o++ = '0';
    } else if (0 < n && n <= 21) {
        memcpy(o, digits, (size_t)n); o += n;
        *o++ = '.';
        memcpy(o, digits + n, (size_t)(k - n)); o += k - n;
    } else if (-6 < n && n <= 0) {
        *o++ = '0'; *o++ = '.';
        for (int i = 0; i < -n; i++) *o++ = '0';
        memcpy(o, digits, (size_t)k); o += k;
    } else {
        *o++ = digits[0];
        if (k > 1) { *o++ = '.'; memcpy(o, digits + 1, (size_t)(k - 1)); o += k - 1; }
        o += sprintf(o, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
    }
    *o = 0;
}

// FloatValue#toString: an integral float keeps ".0" (toFixed(1), which falls back to the exponent
// form from 1e21 on).
static void float_text(double f, char buf[40]) {
    if (f == 0 && signbit(f)) { strcpy(buf, "-0.0"); return; }
    js_number(f, buf);
    if (isfinite(f) && f == floor(f) && fabs(f) < 1e21) strcat(buf, ".0");
}

static void int_text(int64_t i, char buf[40]) { snprintf(buf, 40, "%lld", (long long)i); }

// ---- Unicode ----

uint32_t utf8_next(const char *s, size_t n, int *len) {
    const unsigned char *u = (const unsigned char *)s;
    *len = 1;
    if (n == 0) return 0;
    if (u[0] < 0x80) return u[0];
    int k = u[0] >= 0xF0 && u[0] < 0xF5 ? 4 : u[0] >= 0xE0 ? 3 : u[0] >= 0xC2 && u[0] < 0xE0 ? 2 : 0;
    if (k == 0 || (size_t)k > n) return 0xDC00 + u[0];  // an invalid byte stands for itself
    uint32_t cp = u[0] & (0xFF >> (k + 1));
    for (int i = 1; i < k; i++) {
        if ((u[i] & 0xC0) != 0x80) return 0xDC00 + u[0];
        cp = cp << 6 | (u[i] & 63);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000))) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0xDC00 + u[0];
    *len = k;
    return cp;
}

size_t utf8_count(JStr s) {
    size_t n = 0;
    for (size_t i = 0; i < s.n; n++) {
        int k;
        utf8_next(s.p + i, s.n - i, &k);
        i += (size_t)k;
    }
    return n;
}

bool js_space(uint32_t c) {
    return c == ' ' || (c >= 9 && c <= 13) || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

JStr js_trim(JStr s, bool left, bool right) {
    size_t a = 0, b = s.n;
    while (left && a < b) {
        int k;
        if (!js_space(utf8_next(s.p + a, b - a, &k))) break;
        a += (size_t)k;
    }
    while (right && b > a) {
        size_t p = b - 1;
        while (p > a && ((unsigned char)s.p[p] & 0xC0) == 0x80 && b - p < 4) p--;
        int k;
        uint32_t cp = utf8_next(s.p + p, b - p, &k);
        if ((size_t)k != b - p) { p = b - 1; cp = utf8_next(s.p + p, 1, &k); }
        if (!js_space(cp)) break;
        b = p;
    }
    return (JStr){s.p + a, b - a};
}

// ---- text forms ----

// The text of a scalar (printed, or as JavaScript's String(): floats lose ".0" there); -1 otherwise.
static int scalar_text(JBuf *b, JVal v, bool js) {
    char num[40];
    switch (v.t) {
    case JV_STR: jb_put(b, v.s.p, v.s.n); return 0;
    case JV_INT: int_text(v.i, num); break;
    case JV_FLOAT: if (js) js_number(v.f, num); else float_text(v.f, num); break;
    case JV_BOOL: strcpy(num, v.b ? "true" : "false"); break;
    default: return -1;
    }
    jb_puts(b, num);
    return 0;
}

int jv_print(JBuf *b, JVal v) {
    if (v.t == JV_LIST || v.t == JV_DICT || v.t == JV_NS) {
        JsonStyle st = {0};
        return jv_json(b, v, &st, 0);
    }
    return scalar_text(b, v, false);
}

int jv_js_string(JBuf *b, JVal v) {
    if (v.t == JV_LIST) {
        // Array#toString joins its items' own toString (RuntimeValue's: the printed form)
        for (int i = 0; i < v.l->n; i++) {
            if (i) jb_put(b, ",", 1);
            if (v.l->v[i].t == JV_UNDEF || v.l->v[i].t == JV_NONE) { jb_puts(b, v.l->v[i].t == JV_NONE ? "null" : "undefined"); continue; }
            if (jv_print(b, v.l->v[i])) return -1;
        }
        return 0;
    }
    if (v.t == JV_DICT || v.t == JV_NS) { jb_puts(b, "[object Map]"); return 0; }
    return scalar_text(b, v, true);
}

// JSON.stringify of a string (escapes as JavaScript writes them), with ensure_ascii's \uXXXX for
// U+007F and above (astral characters as their UTF-16 surrogates).
static void json_string(JBuf *b, JStr s, bool ascii) {
    jb_put(b, "\"", 1);
    for (size_t i = 0; i < s.n;) {
        int k;
        uint32_t cp = utf8_next(s.p + i, s.n - i, &k);
        unsigned char c = (unsigned char)s.p[i];
        char esc[16];
        if (c == '"') jb_puts(b, "\\\"");
        else if (c == '\\') jb_puts(b, "\\\\");
        else if (c == '\b') jb_puts(b, "\\b");
        else if (c == '\f') jb_puts(b, "\\f");
        else if (c == '\n') jb_puts(b, "\\n");
        else if (c == '\r') jb_puts(b, "\\r");
        else if (c == '\t') jb_puts(b, "\\t");
        else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); jb_puts(b, esc); }
        else if (ascii && cp >= 0x7F && cp < 0x10000) { snprintf(esc, sizeof esc, "\\u%04x", cp); jb_puts(b, esc); }
        else if (ascii && cp >= 0x10000) {
            snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF));
            jb_puts(b, esc);
        } else jb_put(b, s.p + i, (size_t)k);
        i += (size_t)k;
    }
    jb_put(b, "\"", 1);
}

static void newline_indent(JBuf *b, int indent, int depth) {
    jb_put(b, "\n", 1);
    for (int i = 0; i < indent * depth; i++) jb_put(b, " ", 1);
}

static int cmp_keys(const void *x, const void *y) {
    const JStr *a = x, *b = y;
    int c = memcmp(a->p, b->p, a->n < b->n ? a->n : b->n);
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

int jv_json(JBuf *b, JVal v, const JsonStyle *st, int depth) {
    char num[40];
    if (depth > JINJA_MAX_DEPTH) return -1;
    JStr item = st->item_sep.p ? st->item_sep : st->indent > 0 ? JSTR(",") : JSTR(", ");
    JStr key = st->key_sep.p ? st->key_sep : JSTR(": ");
    switch (v.t) {
    case JV_NONE: jb_puts(b, "null"); return 0;
    case JV_UNDEF: jb_puts(b, st->undefined_is_null ? "null" : "undefined"); return 0;
    case JV_BOOL: jb_puts(b, v.b ? "true" : "false"); return 0;
    case JV_INT: int_text(v.i, num); jb_puts(b, num); return 0;
    case JV_FLOAT: if (isfinite(v.f)) js_number(v.f, num); else strcpy(num, "null"); jb_puts(b, num); return 0;
    case JV_STR: json_string(b, v.s, st->ensure_ascii); return 0;
    case JV_LIST:
        if (v.l->tuple) return -1;  // (toJSON knows no TupleValue)
        jb_put(b, "[", 1);
        for (int i = 0; i < v.l->n; i++) {
            if (i) jb_put(b, item.p, item.n);
            if (st->indent > 0) newline_indent(b, st->indent, depth + 1);
            if (jv_json(b, v.l->v[i], st, depth + 1)) return -1;
        }
        if (st->indent > 0 && v.l->n) newline_indent(b, st->indent, depth);
        jb_put(b, "]", 1);
        return 0;
    case JV_DICT: case JV_NS: {
        if (v.t == JV_DICT && v.d->kind == JD_KWARGS) return -1;
        int n = v.d->n, *order = xmalloc(sizeof(int) * (size_t)(n ? n : 1));
        for (int i = 0; i < n; i++) order[i] = i;
        if (st->sort_keys)  // a stable insertion sort by key bytes
            for (int i = 1; i < n; i++)
                for (int j = i; j > 0 && cmp_keys(&v.d->k[order[j - 1]], &v.d->k[order[j]]) > 0; j--) { int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t; }
        jb_put(b, "{", 1);
        int rc = 0;
        for (int i = 0; i < n && !rc; i++) {
            if (i) jb_put(b, item.p, item.n);
            if (st->indent > 0) newline_indent(b, st->indent, depth + 1);
            json_string(b, v.d->k[order[i]], st->ensure_ascii);
            jb_put(b, key.p, key.n);
            rc = jv_json(b, v.d->v[order[i]], st, depth + 1);
        }
        free(order);
        if (rc) return -1;
        if (st->indent > 0 && n) newline_indent(b, st->indent, depth);
        jb_put(b, "}", 1);
        return 0;
    }
    default: return -1;
    }
}

// JavaScript's Object.entries order: keys that are array indices first, ascending, then the rest
// in the order written.
static bool index_key(const char *k, unsigned long long *v) {
    size_t n = strlen(k);
    if (n == 0 || n > 10 || (n > 1 && k[0] == '0')) return false;
    for (size_t i = 0; i < n; i++) if (k[i] < '0' || k[i] > '9') return false;
    *v = strtoull(k, NULL, 10);
    return *v < 4294967295ull;
}

JVal jv_from_json(JArena *a, const cJSON *x) {
    if (cJSON_IsNull(x) || !x) return jv_none();
    if (cJSON_IsBool(x)) return jv_bool(cJSON_IsTrue(x));
    if (cJSON_IsNumber(x)) {
        double d = x->valuedouble;
        return d == floor(d) && fabs(d) < 9.2e18 ? jv_int((int64_t)d) : jv_float(d);
    }
    if (cJSON_IsString(x)) {
        size_t n;
        const char *s = json_bytes(x, &n);
        return jv_str((JStr){ja_dup(a, s, n), n});
    }
    if (cJSON_IsArray(x)) {
        JVal l = jv_list(a, cJSON_GetArraySize(x));
        for (const cJSON *c = x->child; c; c = c->next) jl_push(a, l.l, jv_from_json(a, c));
        return l;
    }
    JVal d = jv_dict(a, JD_PLAIN);
    int n = cJSON_GetArraySize(x), k = 0;
    struct { unsigned long long v; const cJSON *c; } *idx = xmalloc(sizeof *idx * (size_t)(n ? n : 1));
    for (const cJSON *c = x->child; c; c = c->next)
        if (index_key(c->string, &idx[k].v)) idx[k++].c = c;
    for (int i = 1; i < k; i++)  // stable: a duplicate key keeps its place, its last value wins
        for (int j = i; j > 0 && idx[j - 1].v > idx[j].v; j--) { __typeof__(*idx) t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t; }
    for (int i = 0; i < k; i++) {
        size_t len = strlen(idx[i].c->string);
        jd_set(a, d.d, (JStr){ja_dup(a, idx[i].c->string, len), len}, jv_from_json(a, idx[i].c));
    }
    free(idx);
    for (const cJSON *c = x->child; c; c = c->next) {
        unsigned long long v;
        if (index_key(c->string, &v)) continue;
        size_t len = strlen(c->string);
        jd_set(a, d.d, (JStr){ja_dup(a, c->string, len), len}, jv_from_json(a, c));
    }
    return d;
}
