// tokenizer.c: building a Tokenizer (used by the loaders), encode / decode, accessors.
// See tokenizer_internal.h for how the work is split between files.
#include "tokenizer_internal.h"
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOK_MAX_ID = 1 << 24 }; // far above any real vocabulary; stops absurd allocations

// ---- building ----

Tokenizer *tok_new(const char *source) {
    Tokenizer *t = xcalloc(1, sizeof *t);
    t->source = xstrdup(source);
    tokmap_init(&t->vocab, 1024);
    tokmap_init(&t->merges, 1024);
    t->unk_id = t->bos = t->eos = -1;
    return t;
}

static void reserve_ids(Tokenizer *t, int32_t n) {
    if (n <= t->cap_ids) return;
    int32_t cap = t->cap_ids ? t->cap_ids : 1024;
    while (cap < n) cap *= 2;
    t->token_text = xrealloc(t->token_text, cap * sizeof *t->token_text);
    t->special = xrealloc(t->special, cap * sizeof *t->special);
    for (int32_t i = t->cap_ids; i < cap; i++) { t->token_text[i] = NULL; t->special[i] = false; }
    t->cap_ids = cap;
}

int tok_add_token(Tokenizer *t, const char *text, size_t len, int32_t id) {
    if (id < 0 || id >= TOK_MAX_ID) return peft_fail("token \"%.*s\" has an invalid id %d", (int)len, text, (int)id);
    reserve_ids(t, id + 1);
    if (t->n_ids <= id) t->n_ids = id + 1;
    if (t->token_text[id]) {
        if (strlen(t->token_text[id]) == len && memcmp(t->token_text[id], text, len) == 0) return 0;
        return peft_fail("id %d is given to both \"%s\" and \"%.*s\"", (int)id, t->token_text[id], (int)len, text);
    }
    char *copy = xmalloc(len + 1);
    memcpy(copy, text, len);
    copy[len] = 0;
    t->token_text[id] = copy;
    tokmap_insert(&t->vocab, text, len, id); // a text listed twice keeps its first id
    return 0;
}

int tok_add_added(Tokenizer *t, const char *text, int32_t id, bool special, bool lstrip, bool rstrip) {
    size_t len = strlen(text);
    if (len == 0) return peft_fail("added token %d is empty", (int)id);
    if (tok_add_token(t, text, len, id) < 0) return -1;
    t->special[id] = special;
    t->added = xrealloc(t->added, (t->n_added + 1) * sizeof *t->added);
    t->added[t->n_added++] = (AddedToken){xstrdup(text), len, id, lstrip, rstrip};
    return 0;
}

int tok_find(const Tokenizer *t, const char *text, size_t len) {
    int32_t id;
    return tokmap_get(&t->vocab, text, len, &id) ? id : -1;
}

// Merges refer to tokens by text; the merged token is the concatenation and must exist too.
int tok_add_merge(Tokenizer *t, const char *a, size_t alen, const char *b, size_t blen) {
    int32_t ids[2] = {tok_find(t, a, alen), tok_find(t, b, blen)};
    if (ids[0] < 0) return peft_fail("merge \"%.*s %.*s\": \"%.*s\" is not in the vocabulary", (int)alen, a, (int)blen, b, (int)alen, a);
    if (ids[1] < 0) return peft_fail("merge \"%.*s %.*s\": \"%.*s\" is not in the vocabulary", (int)alen, a, (int)blen, b, (int)blen, b);
    char *joined = xmalloc(alen + blen);
    memcpy(joined, a, alen);
    memcpy(joined + alen, b, blen);
    int32_t result = tok_find(t, joined, alen + blen);
    free(joined);
    if (result < 0) return peft_fail("merge \"%.*s %.*s\": the merged token \"%.*s%.*s\" is not in the vocabulary", (int)alen, a, (int)blen, b, (int)alen, a, (int)blen, b);
    if (!tokmap_insert(&t->merges, ids, sizeof ids, t->n_merges)) return 0; // a repeated merge keeps its first rank
    if (t->n_merges == t->cap_merges) {
        t->cap_merges = t->cap_merges ? 2 * t->cap_merges : 1024;
        t->merge_result = xrealloc(t->merge_result, t->cap_merges * sizeof *t->merge_result);
    }
    t->merge_result[t->n_merges++] = result;
    return 0;
}

static pcre2_code *compile_regex(const char *source, const char *pattern, bool literal) {
    int err;
    PCRE2_SIZE at;
    // MATCH_INVALID_UTF: invalid UTF-8 in the input is never matched instead of being an error.
    uint32_t flags = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, flags, &err, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        peft_fail("%s: cannot compile the pre-tokenizer regex \"%s\": %s at offset %zu", source, pattern, (const char *)msg, (size_t)at);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // optional speed-up: the interpreter is used if JIT is unavailable
    return re;
}

int tok_pre_regex(PreStep *p, const char *source, const char *pattern, bool literal) {
    if (!(p->re = compile_regex(source, pattern, literal))) return -1;
    p->pattern = xstrdup(pattern);
    p->literal = literal;
    return 0;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// "<0xAB>" -> 0xAB: SentencePiece's byte tokens, as HF's ByteFallback decoder recognises them.
static int byte_token_value(const char *text) {
    if (strlen(text) != 6 || strncmp(text, "<0x", 3) != 0 || text[5] != '>') return -1;
    int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static void build_byte_tables(Tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char c[4], name[16];
        t->byte_id[b] = tok_find(t, c, utf8_put(tok_byte_to_char((uint8_t)b), c));
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->fallback_id[b] = tok_find(t, name, 6);
        char ascii = (char)b;
        if (b < 128) t->ascii_id[b] = tok_find(t, &ascii, 1);
    }
}

// GPT-2's byte-level spelling back to bytes; false (out unchanged) if a character is not in the mapping.
static bool unmap_bytes(const char *s, size_t n, TokBuf *out) {
    size_t start = out->len;
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_len((const uint8_t *)s + i, n - i);
        int byte = k > 0 ? tok_char_to_byte(tok_utf8_get((const uint8_t *)s + i, k)) : -1;
        if (byte < 0) { out->len = start; return false; }
        uint8_t c = (uint8_t)byte;
        tok_buf_put(out, &c, 1);
        i += k;
    }
    return true;
}

// The bytes a token stands for, by the decoder: a byte-fallback token is its byte; otherwise the
// decoder's Replace steps (e.g. "▁" -> " ") and its ByteLevel mapping apply. As in HF, a token with
// a character outside the byte mapping (an added token like "<｜end｜>") is taken verbatim.
static void decode_piece(const Tokenizer *t, const char *text, TokBuf *out, bool *is_byte) {
    if (t->dec_wordpiece) {  // WordPiece: "##x" continues the word before, any other token starts one
        size_t plen = strlen(t->wp_prefix);
        bool cont = !strncmp(text, t->wp_prefix, plen);
        *is_byte = false;
        if (!cont) tok_buf_put(out, " ", 1);
        tok_buf_put(out, text + (cont ? plen : 0), strlen(text) - (cont ? plen : 0));
        return;
    }
    int b = t->dec_byte_fallback ? byte_token_value(text) : -1;
    *is_byte = b >= 0;
    if (b >= 0) { uint8_t c = (uint8_t)b; tok_buf_put(out, &c, 1); return; }
    TokBuf cur = {0};
    tok_buf_put(&cur, text, strlen(text));
    for (int i = 0; i < t->n_dec_replace; i++) {
        TokBuf next = {0};
        const char *s = cur.data, *from = t->dec_replace[i].from;
        for (const char *hit; (hit = strstr(s, from)) != NULL; s = hit + strlen(from)) {
            tok_buf_put(&next, s, hit - s);
            tok_buf_put(&next, t->dec_replace[i].to, strlen(t->dec_replace[i].to));
        }
        tok_buf_put(&next, s, strlen(s));
        free(cur.data);
        cur = next;
    }
    if (!(t->dec_byte_level && unmap_bytes(cur.data, cur.len, out))) tok_buf_put(out, cur.data, cur.len);
    free(cur.data);
}

static void build_pieces(Tokenizer *t) {
    TokBuf all = {0};
    t->piece_off = xcalloc(t->n_ids, sizeof *t->piece_off);
    t->piece_len = xcalloc(t->n_ids, sizeof *t->piece_len);
    t->piece_is_byte = xcalloc(t->n_ids, sizeof *t->piece_is_byte);
    tok_buf_put(&all, "", 0);
    for (int32_t id = 0; id < t->n_ids; id++) {
        if (!t->token_text[id]) continue;
        size_t before = all.len;
        decode_piece(t, t->token_text[id], &all, &t->piece_is_byte[id]);
        t->piece_off[id] = before;
        t->piece_len[id] = (uint32_t)(all.len - before);
    }
    t->piece_data = all.data;
}

static int compare_added(const void *a, const void *b) {
    const AddedToken *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1; // longest first: "<|a|>x" beats "<|a|>"
    return x->id < y->id ? -1 : x->id > y->id;
}

static int32_t first_special(const Tokenizer *t, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        int id = tok_find(t, names[i], strlen(names[i]));
        if (id >= 0 && t->special[id]) return id;
    }
    return -1;
}

// BPE starts from single characters (or, with byte fallback, from byte tokens): a vocabulary with
// neither cannot encode any text.
static bool can_start(const Tokenizer *t) {
    for (int b = 0; b < 256; b++)
        if (t->byte_fallback && t->fallback_id[b] >= 0) return true;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const char *s = t->token_text[id];
        size_t n = s ? strlen(s) : 0;
        if (n && !t->special[id] && tok_utf8_len((const uint8_t *)s, n) == (int)n) return true;
    }
    return false;
}

int tok_finish(Tokenizer *t) {
    if (t->n_ids == 0) return peft_fail("%s: the vocabulary is empty", t->source);
    build_byte_tables(t);
    if (!can_start(t))
        return peft_fail("%s: no token of the vocabulary is a single character: BPE starts from characters, so every text would "
                         "encode to nothing", t->source);
    build_pieces(t);
    tok_build_joined(t);
    if (t->n_added) qsort(t->added, t->n_added, sizeof *t->added, compare_added);
    for (int i = 0; i < t->n_added; i++) t->added_first_byte[(uint8_t)t->added[i].text[0]] = true;
    // Fallbacks when neither tokenizer.json's template nor a config file named them.
    static const char *const bos_names[] = {"<s>", "<|endoftext|>", NULL};
    static const char *const eos_names[] = {"</s>", "<|endoftext|>", NULL};
    if (t->bos < 0) t->bos = first_special(t, bos_names);
    if (t->eos < 0) t->eos = first_special(t, eos_names);
    t->cache = tok_cache_new();
    return 0;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (int32_t i = 0; i < t->n_ids; i++) free(t->token_text[i]);
    free(t->token_text);
    free(t->special);
    tokmap_free(&t->vocab);
    tokmap_free(&t->merges);
    tokmap_free(&t->joined);
    free(t->merge_result);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].text);
    free(t->added);
    for (int i = 0; i < t->n_norm; i++) { free(t->norm[i].from); free(t->norm[i].to); }
    for (int i = 0; i < t->n_pre; i++) { pcre2_code_free(t->pre[i].re); free(t->pre[i].pattern); }
    for (int i = 0; i < BERT_CLASSES; i++) pcre2_code_free(t->bert_re[i]);
    for (int i = 0; i < t->n_dec_replace; i++) { free(t->dec_replace[i].from); free(t->dec_replace[i].to); }
    free(t->piece_data);
    free(t->piece_off);
    free(t->piece_len);
    free(t->piece_is_byte);
    tok_cache_free(t->cache);
    free(t->source);
    free(t);
}

// ---- encode ----

void tok_push_id(Encoder *e, int32_t id) {
    if (e->n_ids == e->cap_ids) {
        e->cap_ids = e->cap_ids ? 2 * e->cap_ids : 256;
        e->ids = xrealloc(e->ids, e->cap_ids * sizeof *e->ids);
    }
    e->ids[e->n_ids++] = id;
}

// Leftmost added token at or after `from`, the longest one where several start at the same place.
static const AddedToken *find_added(const Tokenizer *t, const char *text, size_t len, size_t from, size_t *at) {
    if (t->n_added == 0) return NULL;
    for (size_t i = from; i < len; i++) {
        if (!t->added_first_byte[(uint8_t)text[i]]) continue;
        for (int k = 0; k < t->n_added; k++) {
            const AddedToken *a = &t->added[k];
            if (a->len <= len - i && memcmp(text + i, a->text, a->len) == 0) { *at = i; return a; }
        }
    }
    return NULL;
}

// Added tokens are cut out first; the stretches between them go through the normal pipeline.
static int encode_text(Encoder *e, const char *text, size_t len) {
    size_t stretch = 0, at;
    const AddedToken *a;
    while ((a = find_added(e->tok, text, len, stretch, &at)) != NULL) {
        size_t before = at, after = at + a->len;
        while (a->lstrip && before > stretch && isspace((unsigned char)text[before - 1])) before--;
        while (a->rstrip && after < len && isspace((unsigned char)text[after])) after++;
        if (tok_encode_stretch(e, text + stretch, before - stretch, stretch == 0) < 0) return -1;
        tok_push_id(e, a->id);
        stretch = after;
    }
    return tok_encode_stretch(e, text + stretch, len - stretch, stretch == 0);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int32_t **ids, int *n_ids) {
    Encoder e = {.tok = t};
    e.match = pcre2_match_data_create(1, NULL);
    e.cache = tok_cache_acquire(t->cache);
    int rc = encode_text(&e, text, len);
    if (e.cache) tok_cache_release(e.cache);
    pcre2_match_data_free(e.match);
    tok_encoder_free_bpe(&e);
    if (rc == 0 && e.n_ids > INT_MAX) rc = peft_fail("%s: text of %zu bytes gives too many tokens", t->source, len);
    if (rc < 0) {
        free(e.ids);
        *ids = NULL;
        *n_ids = 0;
        return -1;
    }
    *ids = e.ids ? e.ids : xmalloc(sizeof **ids);
    *n_ids = (int)e.n_ids;
    return 0;
}

// ---- decode ----

static bool valid_id(const Tokenizer *t, int id) { return id >= 0 && id < t->n_ids && t->token_text[id]; }

// A run of byte-fallback tokens is one UTF-8 string; if it is not valid, HF's ByteFallback decoder
// gives one U+FFFD per byte. Returns the index after the run.
static int put_byte_run(const Tokenizer *t, const int32_t *ids, int n, int i, TokBuf *out) {
    TokBuf run = {0};
    int count = 0;
    for (; i < n && valid_id(t, ids[i]) && t->piece_is_byte[ids[i]]; i++, count++)
        tok_buf_put(&run, t->piece_data + t->piece_off[ids[i]], 1);
    if (tok_utf8_valid(run.data, run.len)) tok_buf_put(out, run.data, run.len);
    else for (int k = 0; k < count; k++) tok_buf_put(out, "\xEF\xBF\xBD", 3);
    free(run.data);
    return i;
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int n, size_t *len) {
    TokBuf raw = {0}, out = {0};
    tok_buf_put(&raw, "", 0);
    for (int i = 0; i < n;) {
        int32_t id = ids[i];
        if (!valid_id(t, id)) { i++; continue; }
        if (t->piece_is_byte[id]) { i = put_byte_run(t, ids, n, i, &raw); continue; }
        tok_buf_put(&raw, t->piece_data + t->piece_off[id], t->piece_len[id]);
        i++;
    }
    size_t skip = 0;
    while ((int)skip < t->dec_strip_start && skip < raw.len && raw.data[skip] == ' ') skip++;
    tok_buf_put(&out, "", 0);
    tok_buf_put_lossy(&out, raw.data + skip, raw.len - skip);
    if (t->dec_cleanup) tok_wordpiece_cleanup(&out);
    free(raw.data);
    *len = out.len;
    return out.data;
}

const char *tokenizer_token_bytes(const Tokenizer *t, int id, int *strip, size_t *len) {
    if (!valid_id(t, id)) { *len = 0; return ""; }  // (decode skips it too)
    const char *p = t->piece_data + t->piece_off[id];
    size_t n = t->piece_len[id];
    for (; *strip > 0 && n && *p == ' '; (*strip)--) { p++; n--; }
    if (n) *strip = 0;  // (Strip stops at the first byte that is not a space)
    *len = n;
    return p;
}

int tokenizer_leading_strip(const Tokenizer *t) { return t->dec_strip_start; }

// ---- accessors ----

int tokenizer_vocab_size(const Tokenizer *t) { return t->n_ids; }
int tokenizer_bos(const Tokenizer *t) { return t->bos; }
int tokenizer_eos(const Tokenizer *t) { return t->eos; }
bool tokenizer_add_bos(const Tokenizer *t) { return t->add_bos && t->bos >= 0; }
bool tokenizer_is_special(const Tokenizer *t, int id) { return valid_id(t, id) && t->special[id]; }
const char *tokenizer_token_text(const Tokenizer *t, int id) { return valid_id(t, id) ? t->token_text[id] : NULL; }
int tokenizer_token_id(const Tokenizer *t, const char *text) { return tok_find(t, text, strlen(text)); }
