// bpe.c: one pre-tokenized word -> token ids, following HF tokenizers' BPE model:
//   1. split the word into symbols: one per character (per byte for byte-level models); a character
//      missing from the vocabulary becomes its <0xXX> byte tokens (byte_fallback), else the unk
//      token, else it is dropped;
//   2. repeatedly merge the adjacent pair with the lowest merge rank (leftmost first on ties) until
//      no adjacent pair has a merge. A min-heap of candidate pairs keeps long words O(n log n).
// Results are cached per word: natural text repeats words, so most words skip step 1 and 2.
// Long words are first cut where no merge can join the two sides (see bpe_long_word).
#include "tokenizer_internal.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum {
    CACHE_MAX_WORD = 256,         // longer words are rare and not worth keeping (HF does the same)
    CACHE_MAX_BYTES = 64 << 20,   // start over when the cache grows past this
    LONG_WORD = 64,               // words longer than this are cut before BPE where that is safe
};

struct WordCache {
    pthread_mutex_t lock;
    TokMap words;  // word bytes -> offset in ids of [count, id, id, ...]
    int32_t *ids;
    size_t n_ids, cap_ids;
};

WordCache *tok_cache_new(void) {
    WordCache *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    tokmap_init(&c->words, 1 << 14);
    return c;
}

void tok_cache_free(WordCache *c) {
    if (!c) return;
    pthread_mutex_destroy(&c->lock);
    tokmap_free(&c->words);
    free(c->ids);
    free(c);
}

// Never blocks: encoding without the cache is slower but correct, waiting could be worse.
WordCache *tok_cache_acquire(WordCache *c) { return pthread_mutex_trylock(&c->lock) == 0 ? c : NULL; }
void tok_cache_release(WordCache *c) { pthread_mutex_unlock(&c->lock); }

static bool cache_lookup(Encoder *e, const WordCache *c, const char *w, size_t n) {
    int32_t off;
    if (!tokmap_get(&c->words, w, n, &off)) return false;
    for (int32_t i = 0; i < c->ids[off]; i++) tok_push_id(e, c->ids[off + 1 + i]);
    return true;
}

static void cache_store(WordCache *c, const char *w, size_t n, const int32_t *ids, size_t count) {
    if (tokmap_bytes(&c->words) + c->n_ids * sizeof *c->ids > CACHE_MAX_BYTES) {
        tokmap_clear(&c->words);
        c->n_ids = 0;
    }
    if (c->n_ids + count + 1 > c->cap_ids) {
        while (c->n_ids + count + 1 > c->cap_ids) c->cap_ids = c->cap_ids ? 2 * c->cap_ids : 1 << 16;
        c->ids = xrealloc(c->ids, c->cap_ids * sizeof *c->ids);
    }
    tokmap_insert(&c->words, w, n, (int32_t)c->n_ids);
    c->ids[c->n_ids++] = (int32_t)count;
    if (count) memcpy(c->ids + c->n_ids, ids, count * sizeof *ids);
    c->n_ids += count;
}

// ---- step 1: symbols ----

static void push_symbol(Encoder *e, size_t *n, int32_t id) {
    if (*n == e->cap_syms) {
        e->cap_syms = e->cap_syms ? 2 * e->cap_syms : 64;
        e->syms = xrealloc(e->syms, e->cap_syms * sizeof *e->syms);
    }
    e->syms[*n] = (BpeSymbol){id, (int32_t)*n - 1, (int32_t)*n + 1};
    (*n)++;
}

// A character (UTF-8 bytes c) that the vocabulary lacks. *after_unk says the previous symbol is an
// unk token this function pushed, which a following unknown character joins when fuse_unk is set.
static void push_unknown(Encoder *e, size_t *n, const uint8_t *c, int len, bool *after_unk) {
    const Tokenizer *t = e->tok;
    bool have_bytes = t->byte_fallback;
    for (int i = 0; i < len && have_bytes; i++) have_bytes = t->fallback_id[c[i]] >= 0;
    if (have_bytes) {
        for (int i = 0; i < len; i++) push_symbol(e, n, t->fallback_id[c[i]]);
        *after_unk = false;
    } else if (t->unk_id >= 0) {
        if (!(*after_unk && t->fuse_unk)) push_symbol(e, n, t->unk_id);
        *after_unk = true;
    }
}

static size_t byte_symbols(Encoder *e, const uint8_t *w, size_t n) {
    size_t count = 0;
    bool after_unk = false;
    for (size_t i = 0; i < n; i++) {
        int32_t id = e->tok->byte_id[w[i]];
        if (id >= 0) { push_symbol(e, &count, id); after_unk = false; continue; }
        char c[4];
        size_t len = utf8_put(tok_byte_to_char(w[i]), c);
        push_unknown(e, &count, (const uint8_t *)c, (int)len, &after_unk);
    }
    return count;
}

// The token of one character (len bytes at c), or -1.
static int32_t char_id(const Tokenizer *t, const uint8_t *c, int len) {
    int32_t id;
    if (len == 1 && c[0] < 128) return t->ascii_id[c[0]];
    return tokmap_get(&t->vocab, c, len, &id) ? id : -1;
}

// Invalid UTF-8 cannot come from HF (Rust strings are valid); each invalid byte is taken as a
// character of its own, which then falls back to its byte token.
static size_t char_symbols(Encoder *e, const uint8_t *w, size_t n) {
    size_t count = 0;
    bool after_unk = false;
    for (size_t i = 0; i < n;) {
        int len = tok_utf8_len(w + i, n - i);
        if (len < 0) len = 1;
        int32_t id = char_id(e->tok, w + i, len);
        if (id >= 0) { push_symbol(e, &count, id); after_unk = false; }
        else push_unknown(e, &count, w + i, len, &after_unk);
        i += len;
    }
    return count;
}

// ---- step 2: merges ----

static bool candidate_less(BpeCandidate a, BpeCandidate b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(Encoder *e, BpeCandidate c) {
    if (e->n_heap == e->cap_heap) {
        e->cap_heap = e->cap_heap ? 2 * e->cap_heap : 64;
        e->heap = xrealloc(e->heap, e->cap_heap * sizeof *e->heap);
    }
    size_t i = e->n_heap++;
    for (; i > 0 && candidate_less(c, e->heap[(i - 1) / 2]); i = (i - 1) / 2) e->heap[i] = e->heap[(i - 1) / 2];
    e->heap[i] = c;
}

static BpeCandidate heap_pop(Encoder *e) {
    BpeCandidate top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= e->n_heap) break;
        if (child + 1 < e->n_heap && candidate_less(e->heap[child + 1], e->heap[child])) child++;
        if (!candidate_less(e->heap[child], last)) break;
        e->heap[i] = e->heap[child];
        i = child;
    }
    if (e->n_heap) e->heap[i] = last;
    return top;
}

static bool pair_rank(const Tokenizer *t, int32_t left, int32_t right, int32_t *rank) {
    int32_t key[2] = {left, right};
    return tokmap_get(&t->merges, key, sizeof key, rank);
}

// Queue the pair that starts at symbol pos, if it has a merge.
static void consider_pair(Encoder *e, int32_t pos) {
    const BpeSymbol *s = e->syms;
    int32_t rank;
    if (s[pos].next >= 0 && pair_rank(e->tok, s[pos].id, s[s[pos].next].id, &rank))
        heap_push(e, (BpeCandidate){rank, pos, e->tok->merge_result[rank]});
}

static void merge_all(Encoder *e, size_t n) {
    BpeSymbol *s = e->syms;
    s[n - 1].next = -1;
    e->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++) consider_pair(e, (int32_t)i);
    while (e->n_heap) {
        BpeCandidate c = heap_pop(e);
        int32_t right = s[c.pos].next, rank;
        // Earlier merges may have changed either side since this pair was queued.
        if (s[c.pos].id < 0 || right < 0) continue;
        if (!pair_rank(e->tok, s[c.pos].id, s[right].id, &rank) || e->tok->merge_result[rank] != c.new_id) continue;
        s[c.pos].id = c.new_id;
        s[c.pos].next = s[right].next;
        if (s[right].next >= 0) s[s[right].next].prev = c.pos;
        s[right].id = -1;
        if (s[c.pos].prev >= 0) consider_pair(e, s[c.pos].prev);
        consider_pair(e, c.pos);
    }
}

// ignore_merges: a word that is itself a token is taken whole. Vocabularies of byte-level models
// spell bytes through the byte -> char mapping, so the word is spelled that way for the lookup.
static bool whole_word_id(Encoder *e, const uint8_t *w, size_t n, int32_t *id) {
    const Tokenizer *t = e->tok;
    if (!t->byte_level) return tokmap_get(&t->vocab, w, n, id);
    e->spelled.len = 0;
    for (size_t i = 0; i < n; i++) {
        char c[4];
        tok_buf_put(&e->spelled, c, utf8_put(tok_byte_to_char(w[i]), c));
    }
    return tokmap_get(&t->vocab, e->spelled.data, e->spelled.len, id);
}

static void encode_word(Encoder *e, const uint8_t *w, size_t n) {
    int32_t id;
    if (e->tok->ignore_merges && whole_word_id(e, w, n, &id)) { tok_push_id(e, id); return; }
    size_t count = e->tok->byte_level ? byte_symbols(e, w, n) : char_symbols(e, w, n);
    if (count == 0) return;
    merge_all(e, count);
    for (int32_t i = 0; i >= 0; i = e->syms[i].next) tok_push_id(e, e->syms[i].id);
}

static void bpe_cached(Encoder *e, const uint8_t *w, size_t n) {
    WordCache *c = n <= CACHE_MAX_WORD ? e->cache : NULL;
    if (c && cache_lookup(e, c, (const char *)w, n)) return;
    size_t first = e->n_ids;
    encode_word(e, w, n);
    // A word may give no ids (characters missing from a vocabulary without unk or byte fallback),
    // and e->ids is NULL until the first one.
    if (c) cache_store(c, (const char *)w, n, e->n_ids > first ? e->ids + first : NULL, e->n_ids - first);
}

// ---- cutting long words ----

static void mark_joined(Tokenizer *t, uint32_t x, uint32_t y) {
    if (x < 128 && y < 128) { t->ascii_joined[x][y / 8] |= (uint8_t)(1u << (y % 8)); return; }
    uint32_t key[2] = {x, y};
    tokmap_insert(&t->joined, key, sizeof key, 1);
}

static bool is_joined(const Tokenizer *t, uint32_t x, uint32_t y) {
    if (x < 128 && y < 128) return t->ascii_joined[x][y / 8] >> (y % 8) & 1;
    uint32_t key[2] = {x, y};
    int32_t unused;
    return tokmap_get(&t->joined, key, sizeof key, &unused);
}

void tok_build_joined(Tokenizer *t) {
    tokmap_init(&t->joined, 1 << 12);
    for (int32_t id = 0; id < t->n_ids; id++) {
        const uint8_t *s = (const uint8_t *)t->token_text[id];
        if (!s) continue;
        size_t n = strlen((const char *)s);
        uint32_t prev = 0;
        for (size_t i = 0; i < n;) {
            int k = tok_utf8_len(s + i, n - i);
            if (k < 0) break; // not in JSON-read text
            uint32_t cp = tok_utf8_get(s + i, k);
            if (i > 0) mark_joined(t, prev, cp);
            prev = cp;
            i += k;
        }
    }
}

// The first and last character of the symbols a character of the word starts as: itself (or its
// byte-level spelling) when it is a token, '<' and '>' when it falls back to <0xXX> tokens. False
// where we do not cut: unknown characters that become unk (fuse_unk may join them) or vanish.
static bool symbol_ends(Encoder *e, const uint8_t *c, int len, uint32_t *first, uint32_t *last) {
    const Tokenizer *t = e->tok;
    if (t->byte_level) {
        *first = *last = tok_byte_to_char(c[0]);
        return t->byte_id[c[0]] >= 0;
    }
    if (tok_utf8_len(c, len) == len && char_id(t, c, len) >= 0) {
        *first = *last = tok_utf8_get(c, len);
        return true;
    }
    bool have_bytes = t->byte_fallback;
    for (int i = 0; i < len && have_bytes; i++) have_bytes = t->fallback_id[c[i]] >= 0;
    *first = '<';
    *last = '>';
    return have_bytes;
}

// A merge joins two symbols a b into the token a+b, whose text has a's last character next to b's
// first. So where the characters x y on either side of a cut never stand next to each other in any
// token, no merge crosses the cut, and the two sides can be encoded on their own with the same
// result. (Not with ignore_merges: there a part could be taken whole where the word is not.)
// Tokenizers without a pre-tokenizer (Llama-2) make a whole text one word; this cuts it back into
// short pieces, which the cache then serves.
static void bpe_long_word(Encoder *e, const uint8_t *w, size_t n) {
    size_t start = 0;
    uint32_t prev_last = 0;
    bool prev_ok = false;
    for (size_t i = 0; i < n;) {
        int len = 1;
        if (!e->tok->byte_level && (len = tok_utf8_len(w + i, n - i)) < 0) len = 1;
        uint32_t first, last;
        bool ok = symbol_ends(e, w + i, len, &first, &last);
        if (ok && prev_ok && !is_joined(e->tok, prev_last, first)) {
            bpe_cached(e, w + start, i - start);
            start = i;
        }
        prev_ok = ok;
        prev_last = last;
        i += len;
    }
    bpe_cached(e, w + start, n - start);
}

void tok_bpe_word(Encoder *e, const char *w, size_t n) {
    if (n == 0) return;
    if (e->tok->wordpiece) { tok_wordpiece_word(e, w, n); return; }
    if (n > LONG_WORD && !e->tok->ignore_merges) bpe_long_word(e, (const uint8_t *)w, n);
    else bpe_cached(e, (const uint8_t *)w, n);
}

void tok_encoder_free_bpe(Encoder *e) {
    free(e->syms);
    free(e->heap);
    free(e->spelled.data);
}
