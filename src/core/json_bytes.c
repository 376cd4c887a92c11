// json_bytes.c: JSON strings with their lengths (json_bytes.h). A string's length is worked out
// from its literal in the text: cJSON's tree lists the literals (keys, then values) in the order
// the text has them, so one pass over both pairs them.
#include "json_bytes.h"
#include "util.h"
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// What a one-letter escape stands for; -1 for none of JSON's.
static int simple_escape(char c) {
    switch (c) {
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case '"': case '\\': case '/': return c;
    default: return -1;
    }
}

// The code unit of a "\uXXXX" at s, which must end before e; -1 when it is not one.
static long utf16_unit(const char *s, const char *e) {
    if (e - s < 6 || s[0] != '\\' || s[1] != 'u') return -1;
    long u = 0;
    for (int i = 2; i < 6; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        u = u * 16 + d;
    }
    return u;
}

// Decodes the string literal whose opening quote is the first at or after *p, in text that ends at
// end, into out (room for the literal's length); *p moves past its closing quote. The literal ends
// where cJSON's ends: at the first quote that no backslash escapes. Its escapes must be JSON's own
// (cJSON is laxer: it takes "\u" with no hex digits as U+0000): -1 when one is not, or the literal
// is cut off.
static long decode_literal(const char **p, const char *end, char *out) {
    const char *s = memchr(*p, '"', (size_t)(end - *p));
    if (!s) return -1;
    const char *e = ++s;
    while (e < end && *e != '"') e += *e == '\\' ? 2 : 1;
    if (e >= end) return -1;
    long n = 0;
    while (s < e) {  // (a backslash is never e's neighbour: it would have escaped that quote)
        if (*s != '\\') { out[n++] = *s++; continue; }
        if (s[1] != 'u') {
            int c = simple_escape(s[1]);
            if (c < 0) return -1;
            out[n++] = (char)c;
            s += 2;
            continue;
        }
        long hi = utf16_unit(s, e), lo = 0;
        if (hi < 0 || (hi >= 0xDC00 && hi <= 0xDFFF)) return -1;
        s += 6;
        if (hi >= 0xD800 && hi <= 0xDBFF) {  // a surrogate pair
            lo = utf16_unit(s, e);
            if (lo < 0xDC00 || lo > 0xDFFF) return -1;
            s += 6;
        }
        n += (long)utf8_put(lo ? 0x10000 + ((uint32_t)(hi - 0xD800) << 10) + (uint32_t)(lo - 0xDC00) : (uint32_t)hi, out + n);
    }
    *p = e + 1;
    return n;
}

typedef enum { RECORD_OK, RECORD_NUL_KEY, RECORD_BAD_STRING } RecordResult;

// The decoded length of the next literal, checked against what cJSON made of it (c: up to its first
// NUL byte, where cJSON's copy stops); -1 when they disagree or the literal is not strict JSON.
static long literal_len(const char **p, const char *end, const char *c, char *buf) {
    long n = decode_literal(p, end, buf);
    if (n < 0) return -1;
    const char *nul = memchr(buf, 0, (size_t)n);
    size_t m = nul ? (size_t)(nul - buf) : (size_t)n;
    return strlen(c) == m && !memcmp(buf, c, m) ? n : -1;
}

// Records the lengths of x's strings, reading the text at *p (its key's literal first when keyed).
static RecordResult record(cJSON *x, const char **p, const char *end, bool keyed, char *buf) {
    if (keyed) {
        long n = literal_len(p, end, x->string, buf);
        if (n < 0) return RECORD_BAD_STRING;
        if ((size_t)n != strlen(x->string)) return RECORD_NUL_KEY;  // cJSON cut it to another name
    }
    if (cJSON_IsString(x)) {
        long n = literal_len(p, end, x->valuestring, buf);
        if (n < 0) return RECORD_BAD_STRING;
        x->valuedouble = (double)n;
    } else if (cJSON_IsArray(x) || cJSON_IsObject(x))
        for (cJSON *c = x->child; c; c = c->next) {
            RecordResult r = record(c, p, end, cJSON_IsObject(x), buf);
            if (r != RECORD_OK) return r;
        }
    return RECORD_OK;
}

cJSON *json_parse_bytes(const char *text, size_t len) {
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (!j) { peft_fail("the body is not JSON"); return NULL; }
    const char *p = text;
    char *buf = xmalloc(len + 1);  // a decoded literal is never longer than the text
    RecordResult r = record(j, &p, text + len, false, buf);
    free(buf);
    if (r == RECORD_OK) return j;
    cJSON_Delete(j);
    if (r == RECORD_NUL_KEY) peft_fail("a key of the body holds a NUL byte (\\u0000)");
    else peft_fail("the body is not JSON (a string with an invalid escape)");
    return NULL;
}

const char *json_bytes(const cJSON *x, size_t *len) {
    *len = (size_t)x->valuedouble;
    return x->valuestring;
}

cJSON *json_bytes_item(const char *s, size_t n) {
    size_t len = 0, cap = n + 3;
    char *q = xmalloc(cap);
    q[len++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (len + 8 > cap) q = xrealloc(q, cap = 2 * cap + 8);
        unsigned char c = (unsigned char)s[i];
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        if (esc) len += (size_t)sprintf(q + len, "%s", esc);
        else if (c < 0x20) len += (size_t)sprintf(q + len, "\\u%04x", c);
        else q[len++] = (char)c;
    }
    if (len + 2 > cap) q = xrealloc(q, cap = len + 2);
    q[len++] = '"';
    q[len] = 0;
    cJSON *item = cJSON_CreateRaw(q);
    free(q);
    return item;
}

cJSON *json_bytes_string(const char *s, size_t n) {
    cJSON *item = cJSON_CreateString("");
    char *copy = xmalloc(n + 1);
    if (n) memcpy(copy, s, n);
    copy[n] = 0;
    cJSON_free(item->valuestring);
    item->valuestring = copy;
    item->valuedouble = (double)n;
    return item;
}
