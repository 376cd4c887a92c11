// tok_text.c: the text-encoding pieces of the tokenizer: UTF-8 scanning and repair, and GPT-2's
// byte <-> character mapping.
#include "tokenizer_internal.h"
#include <string.h>

static bool is_cont(uint8_t c) { return (c & 0xC0) == 0x80; }

// Unicode's "maximal subpart" rule (what Rust's from_utf8_lossy and Python follow): an invalid
// sequence is replaced by one U+FFFD per longest prefix that could have started a valid character.
int tok_utf8_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF; // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return -1;
    if (n < 2 || s[1] < lo || s[1] > hi) return -1;
    for (int i = 2; i <= need; i++)
        if ((size_t)i >= n || !is_cont(s[i])) return -i;
    return need + 1;
}

bool tok_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_len((const uint8_t *)s + i, n - i);
        if (k < 0) return false;
        i += k;
    }
    return true;
}

// Only call on a valid character of length len (from tok_utf8_len).
uint32_t tok_utf8_get(const uint8_t *s, int len) {
    static const uint8_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t cp = s[0] & lead_mask[len];
    for (int i = 1; i < len; i++) cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

void tok_buf_put(TokBuf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 256;
        b->data = xrealloc(b->data, b->cap);
    }
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
}

void tok_buf_put_lossy(TokBuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_len((const uint8_t *)s + i, n - i);
        if (k > 0) { tok_buf_put(b, s + i, k); i += k; }
        else { tok_buf_put(b, "\xEF\xBF\xBD", 3); i += -k; }
    }
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves; the other 68 bytes
// (controls, space, 127-160 and the soft hyphen 173) are moved, in byte order, to U+0100 onwards,
// so that every byte is a visible character in vocab files.
uint32_t tok_byte_to_char(uint8_t b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256 + b;
    if (b <= 160) return 256 + 33 + (b - 127);
    return 256 + 33 + 34; // 173
}

int tok_char_to_byte(uint32_t cp) {
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return (int)cp;
    if (cp >= 256 && cp < 256 + 33) return (int)cp - 256;
    if (cp >= 256 + 33 && cp < 256 + 33 + 34) return (int)cp - (256 + 33) + 127;
    if (cp == 256 + 33 + 34) return 173;
    return -1;
}
