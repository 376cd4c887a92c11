// fuzz_tokenizer.c: tokenizer.json loading, then encoding and decoding. The input is a
// tokenizer.json, a NUL byte, then a text. A loaded tokenizer must encode the text to ids of its
// vocabulary, the same ids twice (the second time from its word cache), and decode them to valid
// UTF-8 that equals the streamed pieces (tokenizer_token_bytes) joined. For a plain byte-level
// pipeline decode(encode(text)) is the text itself. Ids read from the text's bytes decode too.
#include "fuzz.h"
#include "tokenizer_internal.h"
#include <stdlib.h>
#include <string.h>

// decode(encode(x)) == x holds for a byte-level tokenizer (GPT-2's or Qwen2's pipeline) without
// normalizers, a prefix space or decoder rewrites, on valid UTF-8 text whose every byte has a
// token and in which no added token occurs (NUL-free: decode gives a C string).
static bool round_trips(const Tokenizer *t, const char *x, size_t n) {
    if (!t->byte_level || !t->dec_byte_level || t->dec_byte_fallback || t->n_norm || t->n_dec_replace || t->dec_strip_start) return false;
    for (int i = 0; i < t->n_pre; i++)
        if (t->pre[i].kind == PRE_METASPACE || (t->pre[i].kind == PRE_BYTE_LEVEL && t->pre[i].add_prefix_space)) return false;
    if (!tok_utf8_valid(x, n)) return false;
    for (size_t i = 0; i < n; i++)
        if (t->byte_id[(uint8_t)x[i]] < 0) return false;
    for (int k = 0; k < t->n_added; k++)
        if (memmem(x, n, t->added[k].text, t->added[k].len)) return false;
    return true;
}

// The decoded text and the streamed pieces: equal whenever the pieces join into valid UTF-8 (after
// the WordPiece decoder's cleanup, which decode applies to the whole text).
static void check_decode(const Tokenizer *t, const int32_t *ids, int n) {
    size_t text_len;
    char *text = tokenizer_decode(t, ids, n, &text_len);
    FUZZ_CHECK(text && tok_utf8_valid(text, text_len), "decode gave invalid UTF-8");
    TokBuf joined = {0};
    tok_buf_put(&joined, "", 0);
    int strip = tokenizer_leading_strip(t);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *piece = tokenizer_token_bytes(t, ids[i], &strip, &len);
        tok_buf_put(&joined, piece, len);
    }
    if (t->dec_cleanup) tok_wordpiece_cleanup(&joined);
    if (tok_utf8_valid(joined.data, joined.len))
        FUZZ_CHECK(text_len == joined.len && !memcmp(text, joined.data, text_len), "decode \"%.*s\" but the streamed pieces \"%.*s\"",
                   (int)text_len, text, (int)joined.len, joined.data);
    free(joined.data);
    free(text);
}

int fuzz_tokenizer(const uint8_t *data, size_t size) {
    const uint8_t *rest;
    size_t n;
    char *json = fuzz_split(data, size, &rest, &n);
    char *path = fuzz_write("tokenizer", "tokenizer.json", json, strlen(json));
    free(json);
    Tokenizer *t = tokenizer_load_json(path);
    free(path);
    if (!t) return 0;
    // An exact-size copy of the text: ASan sees a read past its end.
    char *x = xmalloc(n ? n : 1);
    if (n) memcpy(x, rest, n);
    int32_t *ids, *again;
    int n_ids, n_again;
    if (tokenizer_encode(t, x, n, &ids, &n_ids) == 0) {
        for (int i = 0; i < n_ids; i++) FUZZ_CHECK(tokenizer_token_text(t, ids[i]), "encode gave id %d, not in the vocabulary", ids[i]);
        FUZZ_CHECK(tokenizer_encode(t, x, n, &again, &n_again) == 0, "a second encode failed: %s", peft_last_error());
        FUZZ_CHECK(n_again == n_ids && !memcmp(ids, again, sizeof(int32_t) * n_ids), "a second encode gave other ids");
        check_decode(t, ids, n_ids);
        if (round_trips(t, x, n)) {
            size_t back_len;
            char *back = tokenizer_decode(t, ids, n_ids, &back_len);
            FUZZ_CHECK(back_len == n && !memcmp(back, x, n), "decode(encode(\"%.*s\")) = \"%.*s\"", (int)n, x, (int)back_len, back);
            free(back);
        }
        free(ids);
        free(again);
    }
    int32_t *raw_ids = xmalloc(n + sizeof(int32_t));  // the text's bytes as ids, aligned
    if (n) memcpy(raw_ids, x, n);
    check_decode(t, raw_ids, (int)(n / sizeof(int32_t)));
    free(raw_ids);
    free(x);
    tokenizer_free(t);
    return 1;
}
