// pretokenize.c: the text between two added tokens -> words, through tokenizer.json's normalizer
// and pre-tokenizer pipelines; every word then goes to bpe.c. Steps run depth-first: each piece a
// step produces is handed to the next step at once, so no list of pieces is ever built.
#include "tokenizer_internal.h"
#include <stdlib.h>
#include <string.h>

// ---- normalizer ----

static void replace_all(TokBuf *out, const char *s, size_t n, const char *from, const char *to) {
    size_t from_len = strlen(from), to_len = strlen(to), start = 0;
    for (size_t i = 0; from_len && i + from_len <= n;) {
        if (memcmp(s + i, from, from_len) != 0) { i++; continue; }
        tok_buf_put(out, s + start, i - start);
        tok_buf_put(out, to, to_len);
        i += from_len;
        start = i;
    }
    tok_buf_put(out, s + start, n - start);
}

// Returns the normalized text (malloc'd) or NULL when there is no normalizer (or an error: *failed).
static char *normalize(const Tokenizer *t, const char *s, size_t n, size_t *out_len, bool *failed) {
    if (t->n_norm == 0) return NULL;
    TokBuf cur = {0};
    tok_buf_put(&cur, s, n);
    for (int i = 0; i < t->n_norm; i++) {
        const NormStep *step = &t->norm[i];
        TokBuf next = {0};
        if (step->kind == NORM_BERT) {
            if (tok_bert_normalize(t, cur.data, cur.len, &next)) { free(next.data); free(cur.data); *failed = true; return NULL; }
        } else if (step->kind == NORM_PREPEND) {
            if (cur.len) tok_buf_put(&next, step->to, strlen(step->to)); // HF prepends to non-empty text only
            tok_buf_put(&next, cur.data, cur.len);
        } else {
            replace_all(&next, cur.data, cur.len, step->from, step->to);
        }
        tok_buf_put(&next, "", 0); // keep data non-NULL for empty text
        free(cur.data);
        cur = next;
    }
    *out_len = cur.len;
    return cur.data;
}

// ---- pre-tokenizer ----

static int run_step(Encoder *e, int step, const char *s, size_t n, bool at_start);

// Pass a piece to pre-tokenizer step `step`, or to BPE after the last step. Empty pieces vanish.
static int emit(Encoder *e, int step, const char *s, size_t n, bool at_start) {
    if (n == 0) return 0;
    if (step == e->tok->n_pre) { tok_bpe_word(e, s, n); return 0; }
    return run_step(e, step, s, n, at_start);
}

// HF's SplitDelimiterBehavior::Isolated: every regex match is a piece, and so is the text between
// matches. (With PCRE2_MATCH_INVALID_UTF, invalid UTF-8 never matches, so it ends up between.)
static int split_isolated(Encoder *e, int next_step, const pcre2_code *re, const char *s, size_t n, bool at_start) {
    size_t done = 0, from = 0;
    while (from < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, 0, e->match, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return peft_fail("%s: pre-tokenizer regex failed: %s", e->tok->source, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->match);
        size_t start = ov[0], end = ov[1];
        if (start < done || end < start) // only \K tricks could do this; refuse rather than misread
            return peft_fail("%s: pre-tokenizer regex gave a match out of order", e->tok->source);
        if (emit(e, next_step, s + done, start - done, at_start && done == 0) < 0) return -1;
        if (emit(e, next_step, s + start, end - start, at_start && start == 0) < 0) return -1;
        done = end; // (an empty match still cuts the text where it is)
        if (end == start) { // step over one character so the search moves on
            int k = tok_utf8_len((const uint8_t *)s + end, n - end);
            end += k < 0 ? 1 : (size_t)k;
        }
        from = end;
    }
    return emit(e, next_step, s + done, n - done, at_start && done == 0);
}

static int byte_level_step(Encoder *e, int step, const char *s, size_t n, bool at_start) {
    const PreStep *p = &e->tok->pre[step];
    char *spaced = NULL;
    if (p->add_prefix_space && s[0] != ' ') {
        spaced = xmalloc(n + 1);
        spaced[0] = ' ';
        memcpy(spaced + 1, s, n);
        s = spaced;
        n++;
    }
    int rc = p->re ? split_isolated(e, step + 1, p->re, s, n, at_start) : emit(e, step + 1, s, n, at_start);
    free(spaced);
    return rc;
}

// Metaspace: spaces become the stand-in ("▁"), one is put in front (depending on prepend_scheme),
// and with split the text is cut before every stand-in (HF's MergedWithNext).
static int metaspace_step(Encoder *e, int step, const char *s, size_t n, bool at_start) {
    const PreStep *p = &e->tok->pre[step];
    size_t rlen = strlen(p->replacement);
    TokBuf text = {0};
    bool prepend = p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && at_start);
    if (prepend && !(n >= 1 && s[0] == ' ') && !(n >= rlen && memcmp(s, p->replacement, rlen) == 0))
        tok_buf_put(&text, p->replacement, rlen);
    replace_all(&text, s, n, " ", p->replacement);
    int rc = 0;
    size_t start = 0;
    for (size_t i = 1; p->split && rc == 0 && i + rlen <= text.len; i++) {
        if (memcmp(text.data + i, p->replacement, rlen) != 0) continue;
        rc = emit(e, step + 1, text.data + start, i - start, at_start && start == 0);
        start = i;
    }
    if (rc == 0) rc = emit(e, step + 1, text.data + start, text.len - start, at_start && start == 0);
    free(text.data);
    return rc;
}

static int run_step(Encoder *e, int step, const char *s, size_t n, bool at_start) {
    const PreStep *p = &e->tok->pre[step];
    switch (p->kind) {
    case PRE_SPLIT: return split_isolated(e, step + 1, p->re, s, n, at_start);
    case PRE_BYTE_LEVEL: return byte_level_step(e, step, s, n, at_start);
    case PRE_METASPACE: return metaspace_step(e, step, s, n, at_start);
    case PRE_BERT: return tok_bert_pre_step(e, step + 1, s, n, at_start, emit);
    }
    return peft_fail("%s: internal error: bad pre-tokenizer step", e->tok->source);
}

int tok_encode_stretch(Encoder *e, const char *s, size_t n, bool at_text_start) {
    size_t len = n;
    bool failed = false;
    char *norm = normalize(e->tok, s, n, &len, &failed);
    if (failed) return -1;
    int rc = emit(e, 0, norm ? norm : s, len, at_text_start);
    free(norm);
    return rc;
}
