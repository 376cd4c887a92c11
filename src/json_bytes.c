// json_bytes.c: JSON strings with their lengths (json_bytes.h). A string's length is worked out
// from its literal in the text: cJSON's tree lists the literals (keys, then values) in the order
// the text has them, so one pass over both pairs them.
#include "json_bytes.h"
#include "util.h"
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The decoded length of the string literal whose opening quote is the first at or after p, in
// text that ends at end; *p moves past its closing quote. The literal is one cJSON accepted: its
// escapes are whole, and a \u escape of a high surrogate is followed by its low one (the pair makes 4
// UTF-8 bytes). Raw bytes, NUL among them, count one each, as cJSON copies them.
static size_t literal_len(const char **p, const char *end) {
    const char *s = memchr(*p, '"', (size_t)(end - *p)) + 1;
    size_t n = 0;
    while (s < end && *s != '"') {
        if (*s != '\\') { s++; n++; continue; }
        if (s[1] != 'u') { s += 2; n++; continue; }
        char hex[5] = {s[2], s[3], s[4], s[5], 0};
        unsigned long cp = strtoul(hex, NULL, 16);
        s += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) { s += 6; n += 4; continue; }
        n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
    }
    *p = s + 1;
    return n;
}

// Records the lengths of x's strings, reading the text at *p (its key's literal first when keyed).
// False when a key holds a NUL byte: cJSON would have cut it to another name.
static bool record(cJSON *x, const char **p, const char *end, bool keyed) {
    if (keyed && literal_len(p, end) != strlen(x->string)) return false;
    if (cJSON_IsString(x)) x->valuedouble = (double)literal_len(p, end);
    else if (cJSON_IsArray(x) || cJSON_IsObject(x))
        for (cJSON *c = x->child; c; c = c->next)
            if (!record(c, p, end, cJSON_IsObject(x))) return false;
    return true;
}

cJSON *json_parse_bytes(const char *text, size_t len) {
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (!j) { peft_fail("the body is not JSON"); return NULL; }
    const char *p = text;
    if (record(j, &p, text + len, false)) return j;
    cJSON_Delete(j);
    peft_fail("a key of the body holds a NUL byte (\\u0000)");
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
