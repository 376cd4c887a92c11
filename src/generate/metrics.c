// metrics.c: corpus BLEU-4 (e2e-metrics' pymteval) and ROUGE-L (pycocoevalcap); see metrics.h.
#include "metrics.h"
#include "data.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

// ---- strings ----

typedef struct { char *s; size_t n, cap; } Str;

static void sput(Str *b, const char *p, size_t k) {
    if (b->n + k + 1 > b->cap) {
        while (b->n + k + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 64;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, p, k);
    b->n += k;
    b->s[b->n] = 0;
}
static void sputc(Str *b, char c) { sput(b, &c, 1); }
static char *sfinish(Str *b) { if (!b->s) sput(b, "", 0); return b->s; }

// Every occurrence of `from` replaced by `to`, left to right (Python's str.replace / re.sub of a literal).
static char *replace_all(char *s, const char *from, const char *to) {
    size_t fl = strlen(from), tl = strlen(to);
    if (!strstr(s, from)) return s;
    Str b = {0};
    for (const char *p = s;;) {
        const char *q = strstr(p, from);
        if (!q) { sput(&b, p, strlen(p)); break; }
        sput(&b, p, (size_t)(q - p));
        sput(&b, to, tl);
        p = q + fl;
    }
    free(s);
    return sfinish(&b);
}

// Byte length of the Python-\s whitespace character at p, or 0.
static int ws_len(const unsigned char *p) {
    if (*p == ' ' || (*p >= '\t' && *p <= '\r') || (*p >= 0x1c && *p <= 0x1f)) return 1;
    if (p[0] == 0xC2 && (p[1] == 0x85 || p[1] == 0xA0)) return 2;
    if (p[0] == 0xE1 && p[1] == 0x9A && p[2] == 0x80) return 3;  // U+1680
    if (p[0] == 0xE2 && p[1] == 0x80 && ((p[2] >= 0x80 && p[2] <= 0x8A) || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF)) return 3;
    if (p[0] == 0xE2 && p[1] == 0x81 && p[2] == 0x9F) return 3;  // U+205F
    if (p[0] == 0xE3 && p[1] == 0x80 && p[2] == 0x80) return 3;  // U+3000
    return 0;
}

// Python's str.strip(), in place; returns s advanced past leading whitespace.
static char *strip(char *s) {
    unsigned char *p = (unsigned char *)s;
    for (int k; (k = ws_len(p)) > 0;) p += k;
    size_t len = strlen((char *)p);
    for (;;) {
        if (len >= 1 && ws_len(p + len - 1) == 1) len -= 1;
        else if (len >= 2 && ws_len(p + len - 2) == 2) len -= 2;
        else if (len >= 3 && ws_len(p + len - 3) == 3) len -= 3;
        else break;
        p[len] = 0;
    }
    return (char *)p;
}

static uint32_t lower_cp(uint32_t c) {
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 0x20;                 // Latin-1
    if (c >= 0x100 && c <= 0x137 && !(c & 1) && c != 0x130) return c + 1;    // Latin Extended-A
    if (c >= 0x139 && c <= 0x148 && (c & 1)) return c + 1;
    if (c >= 0x14A && c <= 0x177 && !(c & 1)) return c + 1;
    if (c == 0x178) return 0xFF;
    if (c >= 0x179 && c <= 0x17E && (c & 1)) return c + 1;
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 0x20;             // Greek
    if (c >= 0x410 && c <= 0x42F) return c + 0x20;                           // Cyrillic
    if (c >= 0x400 && c <= 0x40F) return c + 0x50;
    return c;
}

void metrics_lowercase(char *s) {
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        if (*p < 0x80) {
            if (*p >= 'A' && *p <= 'Z') *p += 32;
            p++;
        } else if ((p[0] & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
            uint32_t c = ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F), l = lower_cp(c);
            if (l != c) {  // every mapping above stays a 2-byte sequence
                p[0] = (unsigned char)(0xC0 | (l >> 6));
                p[1] = (unsigned char)(0x80 | (l & 0x3F));
            }
            p += 2;
        } else p++;
    }
}

// ---- token lists ----

typedef struct { Str buf; size_t *off; int n, cap; } TokBuilder;

static void tb_push(TokBuilder *t, const char *p, size_t k) {
    if (t->n == t->cap) { t->cap = t->cap ? 2 * t->cap : 32; t->off = xrealloc(t->off, sizeof(size_t) * (size_t)t->cap); }
    t->off[t->n++] = t->buf.n;
    sput(&t->buf, p, k);
    sputc(&t->buf, 0);
}

// An empty list becomes one empty token, as Python's "".split(" ") == [""].
static void tb_finish(TokBuilder *t, TokenList *out) {
    if (t->n == 0) tb_push(t, "", 0);
    out->n = t->n;
    out->buf = t->buf.s;
    out->tok = xmalloc(sizeof(char *) * (size_t)t->n);
    for (int i = 0; i < t->n; i++) out->tok[i] = out->buf + t->off[i];
    free(t->off);
}

void tokens_free(TokenList *t) {
    free(t->tok);
    free(t->buf);
    memset(t, 0, sizeof *t);
}

// Whitespace-separated runs of s as tokens.
static void split_ws(const char *s, TokBuilder *t) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int k = ws_len(p);
        if (k) { p += k; continue; }
        const unsigned char *q = p;
        while (*q && !ws_len(q)) q++;
        tb_push(t, (const char *)p, (size_t)(q - p));
        p = q;
    }
}

// ---- mteval-v13a tokenisation ----

static bool mteval_punct(unsigned char c) {
    return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
           (c >= ':' && c <= '@') || c == '/';
}
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool not_digit(unsigned char c) { return !is_digit(c); }
static bool dot_comma(unsigned char c) { return c == '.' || c == ','; }
static bool dash(unsigned char c) { return c == '-'; }

// re.sub(r'(A)(B)', r'\1 \2 ' or r' \1 \2', s) for one-character classes A and B: a left-to-right
// scan of non-overlapping matches, exactly as the regex engine takes them.
static char *pair_pass(char *s, bool (*a)(unsigned char), bool (*b)(unsigned char), bool space_before) {
    Str o = {0};
    for (size_t i = 0; s[i];) {
        unsigned char c = (unsigned char)s[i], d = (unsigned char)s[i + 1];
        if (d && a(c) && b(d)) {
            char rep[4] = {(char)c, ' ', (char)d, ' '};
            if (space_before) { rep[0] = ' '; rep[1] = (char)c; rep[2] = ' '; rep[3] = (char)d; }
            sput(&o, rep, 4);
            i += 2;
        } else {
            sputc(&o, (char)c);
            i++;
        }
    }
    free(s);
    return sfinish(&o);
}

void metrics_tokenize_bleu(const char *text, TokenList *out) {
    char *s = xstrdup(text);
    s = replace_all(s, "<skipped>", "");
    s = replace_all(s, "-\n", "");
    s = replace_all(s, "\n", " ");
    s = replace_all(s, "&quot;", "\"");
    s = replace_all(s, "&amp;", "&");
    s = replace_all(s, "&lt;", "<");
    s = replace_all(s, "&gt;", ">");
    Str b = {0};
    sputc(&b, ' ');
    for (const char *p = s; *p; p++) {
        if (mteval_punct((unsigned char)*p)) { char rep[3] = {' ', *p, ' '}; sput(&b, rep, 3); }
        else sputc(&b, *p);
    }
    sputc(&b, ' ');
    free(s);
    s = sfinish(&b);
    s = pair_pass(s, not_digit, dot_comma, false);  // period and comma unless preceded by a digit
    s = pair_pass(s, dot_comma, not_digit, true);   // ... unless followed by a digit
    s = pair_pass(s, is_digit, dash, false);        // dash after a digit
    TokBuilder t = {0};
    split_ws(s, &t);
    free(s);
    tb_finish(&t, out);
    for (int i = 0; i < out->n; i++) metrics_lowercase(out->tok[i]);
}

// ---- PTB-like tokenisation for ROUGE-L ----

// Length of a currency sign at p ($ # £ € ¥), else 0.
static int currency_len(const unsigned char *p) {
    if (*p == '$' || *p == '#') return 1;
    if (p[0] == 0xC2 && (p[1] == 0xA3 || p[1] == 0xA5)) return 2;
    if (p[0] == 0xE2 && p[1] == 0x82 && p[2] == 0xAC) return 3;
    return 0;
}

static bool ptb_split_inside(unsigned char c) { return c && strchr(",;:!?\"()[]{}<>%", c) != NULL; }
static bool ptb_leading(unsigned char c) { return c && strchr("([{<\"'`", c) != NULL; }
static bool ptb_trailing(unsigned char c) { return c && strchr(".,;:!?)]}>\"'%", c) != NULL; }

static bool ends_with(const char *s, size_t n, const char *suf) {
    size_t k = strlen(suf);
    return n >= k && !memcmp(s + n - k, suf, k);
}

static const char *const clitics[] = {"'s", "'re", "'ve", "'ll", "'d", "'m", NULL};

// A piece of m bytes, with a trailing n't or clitic ('s, 're, ...) as a token of its own.
static void push_split_clitic(TokBuilder *t, const char *piece, size_t m) {
    size_t cut = m;
    if (m > 3 && ends_with(piece, m, "n't")) cut = m - 3;
    else
        for (int c = 0; clitics[c]; c++)
            if (m > strlen(clitics[c]) && ends_with(piece, m, clitics[c])) { cut = m - strlen(clitics[c]); break; }
    tb_push(t, piece, cut);
    if (cut < m) tb_push(t, piece + cut, m - cut);
}

// One whitespace-free chunk -> tokens.
static void ptb_word(const char *w, size_t n, TokBuilder *t) {
    const unsigned char *p = (const unsigned char *)w;
    // a lone clitic chunk ("'s") is a token
    for (int i = 0; clitics[i]; i++)
        if (n == strlen(clitics[i]) && !memcmp(w, clitics[i], n)) { tb_push(t, w, n); return; }
    size_t a = 0, b = n;
    for (;;) {  // leading quotes, brackets, currency
        int k = a < b ? currency_len(p + a) : 0;
        if (k && a + k <= b) { tb_push(t, w + a, (size_t)k); a += k; continue; }
        if (a < b && ptb_leading(p[a])) { tb_push(t, w + a, 1); a++; continue; }
        break;
    }
    // trailing punctuation, collected right to left
    size_t tail_start[64];
    int n_tail = 0;
    size_t tail_len[64];
    while (b > a && ptb_trailing(p[b - 1]) && n_tail < 64) {
        size_t e = b;
        if (p[b - 1] == '.') { while (b > a && p[b - 1] == '.') b--; }  // a run of dots is one token
        else b--;
        tail_start[n_tail] = b;
        tail_len[n_tail++] = e - b;
    }
    // the core: split inside at , ; : ! ? " ( ) [ ] { } < > % and currency (not , . : between digits)
    size_t s = a;
    for (size_t i = a; i < b;) {
        int k = currency_len(p + i);
        bool inner_num = (p[i] == ',' || p[i] == ':' || p[i] == '.') && i > a && i + 1 < b && is_digit(p[i - 1]) && is_digit(p[i + 1]);
        if ((k && i + k <= b) || (ptb_split_inside(p[i]) && !inner_num)) {
            size_t len = k ? (size_t)k : 1;
            if (i > s) push_split_clitic(t, w + s, i - s);  // the piece before
            tb_push(t, w + i, len);
            i += len;
            s = i;
        } else i++;
    }
    if (b > s) push_split_clitic(t, w + s, b - s);
    for (int i = n_tail - 1; i >= 0; i--) tb_push(t, w + tail_start[i], tail_len[i]);
}

// pycocoevalcap's PTBTokenizer.PUNCTUATIONS, with the raw characters PTB escapes to them.
static bool ptb_dropped(const char *tok) {
    static const char *const drop[] = {"''", "'", "``", "`", "\"", "(", ")", "[", "]", "{", "}", "-lrb-", "-rrb-",
                                       "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";", NULL};
    for (int i = 0; drop[i]; i++)
        if (!strcmp(tok, drop[i])) return true;
    // any other run of dots is PTB's "..."
    if (tok[0] == '.' && tok[strspn(tok, ".")] == 0) return true;
    return false;
}

void metrics_tokenize_rouge(const char *text, TokenList *out) {
    char *s = xstrdup(text);
    s = replace_all(s, "\xE2\x80\x98", "'");  // curly quotes -> straight
    s = replace_all(s, "\xE2\x80\x99", "'");
    s = replace_all(s, "\xE2\x80\x9C", "\"");
    s = replace_all(s, "\xE2\x80\x9D", "\"");
    metrics_lowercase(s);
    TokBuilder words = {0};
    split_ws(s, &words);
    free(s);
    TokBuilder t = {0};
    for (int i = 0; i < words.n; i++) {
        const char *w = words.buf.s + words.off[i];
        TokBuilder one = {0};
        ptb_word(w, strlen(w), &one);
        for (int k = 0; k < one.n; k++) {
            const char *tok = one.buf.s + one.off[k];
            if (*tok && !ptb_dropped(tok)) tb_push(&t, tok, strlen(tok));
        }
        free(one.buf.s);
        free(one.off);
    }
    free(words.buf.s);
    free(words.off);
    tb_finish(&t, out);
}

// ---- BLEU ----

typedef struct { const char *s; int idx; } Interned;

static int cmp_interned(const void *a, const void *b) { return strcmp(((const Interned *)a)->s, ((const Interned *)b)->s); }

// Every token of a segment (the hypothesis, then each reference) as an integer id, equal ids for
// equal strings: ids[0..hyp->n) then each reference's in turn.
static int *intern_segment(const TokenList *hyp, const TokenList *refs, int n_refs) {
    int total = hyp->n;
    for (int r = 0; r < n_refs; r++) total += refs[r].n;
    Interned *all = xmalloc(sizeof(Interned) * (size_t)(total ? total : 1));
    int *ids = xmalloc(sizeof(int) * (size_t)(total ? total : 1)), k = 0;
    for (int i = 0; i < hyp->n; i++) all[k] = (Interned){hyp->tok[i], k}, k++;
    for (int r = 0; r < n_refs; r++)
        for (int i = 0; i < refs[r].n; i++) all[k] = (Interned){refs[r].tok[i], k}, k++;
    qsort(all, (size_t)total, sizeof *all, cmp_interned);
    for (int i = 0, id = -1; i < total; i++) {
        if (i == 0 || strcmp(all[i].s, all[i - 1].s)) id++;
        ids[all[i].idx] = id;
    }
    free(all);
    return ids;
}

static int cmp_ngram(const int *a, const int *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

// Sort positions idx[0..m) of ids by the n-gram starting there (merge sort; m is small).
static void sort_ngrams(int *idx, int *tmp, int m, const int *ids, int n) {
    if (m < 2) return;
    int h = m / 2;
    sort_ngrams(idx, tmp, h, ids, n);
    sort_ngrams(idx + h, tmp, m - h, ids, n);
    int i = 0, j = h, k = 0;
    while (i < h && j < m) tmp[k++] = cmp_ngram(ids + idx[j], ids + idx[i], n) < 0 ? idx[j++] : idx[i++];
    while (i < h) tmp[k++] = idx[i++];
    while (j < m) tmp[k++] = idx[j++];
    memcpy(idx, tmp, sizeof(int) * (size_t)m);
}

void bleu_add_tokens(BleuStats *s, const TokenList *hyp, const TokenList *refs, int n_refs) {
    int *ids = intern_segment(hyp, refs, n_refs);
    const int *hid = ids;
    int *uniq = xmalloc(sizeof(int) * (size_t)(hyp->n + 1)), *tmp = xmalloc(sizeof(int) * (size_t)(hyp->n + 1));
    int *hcount = xmalloc(sizeof(int) * (size_t)(hyp->n + 1)), *merged = xmalloc(sizeof(int) * (size_t)(hyp->n + 1));
    int *cnt = xmalloc(sizeof(int) * (size_t)(hyp->n + 1));
    for (int n = 1; n <= 4; n++) {
        s->cand_len[n - 1] += hyp->n - (n - 1);  // pymteval: len(pred) - i, even when negative
        int m = hyp->n - n + 1;
        if (m <= 0) continue;
        for (int i = 0; i < m; i++) uniq[i] = i;
        sort_ngrams(uniq, tmp, m, hid, n);
        int u = 0;
        for (int i = 0; i < m; i++) {
            if (u > 0 && !cmp_ngram(hid + uniq[u - 1], hid + uniq[i], n)) { hcount[u - 1]++; continue; }
            uniq[u] = uniq[i];
            hcount[u++] = 1;
        }
        memset(merged, 0, sizeof(int) * (size_t)u);
        int off = hyp->n;
        for (int r = 0; r < n_refs; r++) {
            const int *rid = ids + off;
            off += refs[r].n;
            memset(cnt, 0, sizeof(int) * (size_t)u);
            for (int j = 0; j + n <= refs[r].n; j++) {
                int lo = 0, hi = u - 1;
                while (lo <= hi) {
                    int mid = (lo + hi) / 2, c = cmp_ngram(rid + j, hid + uniq[mid], n);
                    if (c == 0) { cnt[mid]++; break; }
                    if (c < 0) hi = mid - 1;
                    else lo = mid + 1;
                }
            }
            for (int i = 0; i < u; i++) if (cnt[i] > merged[i]) merged[i] = cnt[i];
        }
        for (int i = 0; i < u; i++) s->hits[n - 1] += hcount[i] < merged[i] ? hcount[i] : merged[i];
    }
    // The reference closest in length (ties: the shorter one).
    int best = refs[0].n;
    for (int r = 1; r < n_refs; r++) {
        int d = abs(refs[r].n - hyp->n), bd = abs(best - hyp->n);
        if (d < bd || (d == bd && refs[r].n < best)) best = refs[r].n;
    }
    s->ref_len += best;
    s->segments++;
    free(ids);
    free(uniq);
    free(tmp);
    free(hcount);
    free(merged);
    free(cnt);
}

void bleu_add(BleuStats *s, const char *hyp, const char *const *refs, int n_refs) {
    TokenList h, *r = xcalloc(n_refs ? n_refs : 1, sizeof(TokenList));
    metrics_tokenize_bleu(hyp, &h);
    for (int i = 0; i < n_refs; i++) metrics_tokenize_bleu(refs[i], &r[i]);
    if (n_refs > 0) bleu_add_tokens(s, &h, r, n_refs);
    tokens_free(&h);
    for (int i = 0; i < n_refs; i++) tokens_free(&r[i]);
    free(r);
}

double bleu_score(const BleuStats *s, double precision[4], double *bp_out) {
    double bp = 1.0;
    if (s->cand_len[0] <= s->ref_len)
        bp = exp(1.0 - (double)s->ref_len / (s->cand_len[0] ? (double)s->cand_len[0] : 1e-5));
    double log_sum = 0;
    for (int n = 0; n < 4; n++) {
        double hits = fmax((double)s->hits[n], 1e-15), len = fmax((double)s->cand_len[n], 1e-9);
        if (precision) precision[n] = (double)s->hits[n] / len;
        log_sum += log(hits / len);
    }
    if (bp_out) *bp_out = bp;
    return bp * exp(log_sum / 4);
}

// ---- ROUGE-L ----

// Length of the longest common subsequence of a[0..na) and b[0..nb).
static int lcs(const int *a, int na, const int *b, int nb, int *row) {
    memset(row, 0, sizeof(int) * (size_t)(nb + 1));
    for (int i = 1; i <= na; i++) {
        int diag = 0;  // row[j-1] of the previous i
        for (int j = 1; j <= nb; j++) {
            int up = row[j];
            row[j] = a[i - 1] == b[j - 1] ? diag + 1 : (up > row[j - 1] ? up : row[j - 1]);
            diag = up;
        }
    }
    return row[nb];
}

double rouge_l_tokens(const TokenList *hyp, const TokenList *refs, int n_refs) {
    const double beta = 1.2;
    int *ids = intern_segment(hyp, refs, n_refs), *row = xmalloc(sizeof(int) * (size_t)(hyp->n + 1));
    double pmax = 0, rmax = 0;
    for (int r = 0, off = hyp->n; r < n_refs; off += refs[r].n, r++) {
        int l = lcs(ids + off, refs[r].n, ids, hyp->n, row);
        double p = (double)l / hyp->n, rc = (double)l / refs[r].n;
        if (p > pmax) pmax = p;
        if (rc > rmax) rmax = rc;
    }
    free(ids);
    free(row);
    if (pmax == 0 || rmax == 0) return 0;
    return (1 + beta * beta) * pmax * rmax / (rmax + beta * beta * pmax);
}

double rouge_l(const char *hyp, const char *const *refs, int n_refs) {
    TokenList h, *r = xcalloc(n_refs ? n_refs : 1, sizeof(TokenList));
    metrics_tokenize_rouge(hyp, &h);
    for (int i = 0; i < n_refs; i++) metrics_tokenize_rouge(refs[i], &r[i]);
    double f = rouge_l_tokens(&h, r, n_refs);
    tokens_free(&h);
    for (int i = 0; i < n_refs; i++) tokens_free(&r[i]);
    free(r);
    return f;
}

void metrics_score(MetricScores *out, char *const *hyps, int n, char **const *refs, const int *n_refs) {
    memset(out, 0, sizeof *out);
    BleuStats bs = {0};
    double rouge_sum = 0;
    for (int i = 0; i < n; i++) {
        bleu_add(&bs, hyps[i], (const char *const *)refs[i], n_refs[i]);
        rouge_sum += rouge_l(hyps[i], (const char *const *)refs[i], n_refs[i]);
    }
    out->n = n;
    out->bleu = bleu_score(&bs, out->precision, &out->bp);
    out->hyp_len = bs.cand_len[0];
    out->ref_len = bs.ref_len;
    out->rouge_l = n ? rouge_sum / n : 0;
}

// ---- files ----

static char *read_text(const char *path) {
    char *text = read_file(path, NULL);
    if (!text) return NULL;
    if (!strncmp(text, "\xEF\xBB\xBF", 3)) memmove(text, text + 3, strlen(text + 3) + 1);  // byte-order mark
    return text;
}

// Lines of text split at '\n' (a final empty piece after the last newline is not a line), stripped.
static int split_lines(char *text, char ***out) {
    int n = 0, cap = 0;
    char **lines = NULL;
    for (char *p = text; *p;) {
        char *e = strchr(p, '\n');
        if (e) *e = 0;
        if (n == cap) { cap = cap ? 2 * cap : 256; lines = xrealloc(lines, sizeof(char *) * (size_t)cap); }
        lines[n++] = xstrdup(strip(p));
        if (!e) break;
        p = e + 1;
    }
    *out = lines;
    return n;
}

int metrics_read_lines(const char *path, char ***lines) {
    char *text = read_text(path);
    if (!text) return -1;
    int n = split_lines(text, lines);
    free(text);
    return n;
}

void metrics_free_lines(char **lines, int n) {
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
}

void ref_groups_free(RefGroups *g) {
    for (int i = 0; i < g->n; i++) metrics_free_lines(g->refs[i], g->n_refs[i]);
    free(g->refs);
    free(g->n_refs);
    memset(g, 0, sizeof *g);
}

static void group_new(RefGroups *g, int *cap) {
    if (g->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        g->refs = xrealloc(g->refs, sizeof(char **) * (size_t)*cap);
        g->n_refs = xrealloc(g->n_refs, sizeof(int) * (size_t)*cap);
    }
    g->refs[g->n] = NULL;
    g->n_refs[g->n++] = 0;
}

static void group_add(RefGroups *g, const char *ref) {
    int i = g->n - 1, k = g->n_refs[i];
    g->refs[i] = xrealloc(g->refs[i], sizeof(char *) * (size_t)(k + 1));
    g->refs[i][k] = xstrdup(ref);
    g->n_refs[i]++;
}

// e2e-metrics' read_lines(multi_ref=True): blank-line-separated groups.
static int read_ref_groups_text(const char *path, int n_hyps, RefGroups *g) {
    char **lines;
    int n = metrics_read_lines(path, &lines), cap = 0;
    if (n < 0) return -1;
    bool open = false;
    for (int i = 0; i < n; i++) {
        if (!*lines[i]) { open = false; continue; }
        if (!open) { group_new(g, &cap); open = true; }
        group_add(g, lines[i]);
    }
    // No blank line at all: one reference per line (e2e-metrics' single-reference file).
    if (g->n == 1 && n_hyps != 1) {
        RefGroups single = {0};
        int scap = 0;
        for (int i = 0; i < g->n_refs[0]; i++) { group_new(&single, &scap); group_add(&single, g->refs[0][i]); }
        ref_groups_free(g);
        *g = single;
    }
    metrics_free_lines(lines, n);
    return 0;
}

static bool header_match(const char *pattern, const char *field) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_CASELESS, &err, &off, NULL);
    if (!re) return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool ok = pcre2_match(re, (PCRE2_SPTR)field, strlen(field), 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return ok;
}

// measure_scores.py's column patterns (re.match: anchored at the start only).
static const char *const HEADER_SRC = "(mr|src|source|meaning(?:[_ .-]rep(?:resentation)?)?|da|dial(?:ogue)?[_ .-]act)s?";
static const char *const HEADER_REF = "(trg|tgt|target|ref(?:erence)?|human(?:[_ .-](?:ref(?:erence)?))?)s?";

typedef struct { int n; CsvRecord *rows; } Rows;

static void rows_free(Rows *r) {
    for (int i = 0; i < r->n; i++) csv_record_free(&r->rows[i]);
    free(r->rows);
}

static void rows_push(Rows *r, CsvRecord *rec) {
    r->rows = xrealloc(r->rows, sizeof(CsvRecord) * (size_t)(r->n + 1));
    r->rows[r->n++] = *rec;
}

// e2e-metrics' read_tsv + read_and_group_tsv (no system sources: group consecutive equal sources).
static int read_ref_groups_csv(const char *path, RefGroups *g) {
    char *text = read_text(path);
    if (!text) return -1;
    // measure_scores.py's fixes of mis-encoded characters
    text = replace_all(text, "\xC5\x81", "\xC2\xA3");          // Ł -> £
    text = replace_all(text, "\xC3\x82\xC2\xA3", "\xC2\xA3");  // Â£ -> £
    text = replace_all(text, "\xC3\x83\xC2\xA9", "\xC3\xA9");  // Ã© -> é
    text = replace_all(text, "\xC3\xA3\xC2\xA9", "\xC3\xA9");  // ã© -> é
    const char *nl = strchr(text, '\n');
    size_t first_len = nl ? (size_t)(nl - text) : strlen(text);
    bool tsv = memchr(text, '\t', first_len) != NULL;
    Rows rows = {0};
    int rc = 0;
    if (tsv) {
        char **lines;
        int n = split_lines(text, &lines);
        for (int i = 0; i < n; i++) {
            if (!*lines[i]) continue;
            CsvRecord rec = {0};
            rec.line = i + 1;
            for (char *p = lines[i];;) {
                char *e = strchr(p, '\t');
                if (e) *e = 0;
                rec.fields = xrealloc(rec.fields, sizeof(char *) * (size_t)(rec.n + 1));
                rec.fields[rec.n++] = xstrdup(p);
                if (!e) break;
                p = e + 1;
            }
            rows_push(&rows, &rec);
        }
        metrics_free_lines(lines, n);
    } else {
        CsvReader r;
        csv_reader_init(&r, path, text, strlen(text));
        CsvRecord rec;
        int got;
        while ((got = csv_next(&r, &rec)) == 1) rows_push(&rows, &rec);
        if (got < 0) rc = -1;
    }
    free(text);
    if (rc) { rows_free(&rows); return -1; }
    if (rows.n == 0) { rows_free(&rows); return peft_fail("%s: no rows", path); }
    int src_col = -1, ref_col = -1, n_src = 0, n_ref = 0, ncols = rows.rows[0].n, start = 1;
    for (int i = 0; i < ncols; i++) {
        if (header_match(HEADER_SRC, rows.rows[0].fields[i])) { if (!n_src++) src_col = i; }
        if (header_match(HEADER_REF, rows.rows[0].fields[i])) { if (!n_ref++) ref_col = i; }
    }
    if (n_src == 0 && n_ref == 0) {
        if (ncols != 2) { rows_free(&rows); return peft_fail("%s: no header naming the mr and ref columns, and %d columns (2 needed without one)", path, ncols); }
        src_col = 0;
        ref_col = 1;
        start = 0;
    } else if (n_src != 1 || n_ref != 1) {
        rows_free(&rows);
        return peft_fail("%s: strange column arrangement: %d columns look like sources (mr, src, ...) and %d like references "
                         "(ref, target, ...); exactly one of each is needed", path, n_src, n_ref);
    }
    int cap = 0;
    const char *cur = NULL;
    for (int i = start; i < rows.n; i++) {
        const CsvRecord *row = &rows.rows[i];
        if (row->n != ncols) {
            int line = row->line, got = row->n;
            rows_free(&rows);
            ref_groups_free(g);
            return peft_fail("%s:%d: %d columns, but the header has %d", path, line, got, ncols);
        }
        if (!cur || strcmp(cur, row->fields[src_col])) { group_new(g, &cap); cur = row->fields[src_col]; }
        group_add(g, row->fields[ref_col]);
    }
    rows_free(&rows);
    return 0;
}

static bool has_suffix_ci(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcasecmp(s + n - k, suf);
}

int metrics_read_refs(const char *path, int n_hyps, RefGroups *out) {
    memset(out, 0, sizeof *out);
    int rc = (has_suffix_ci(path, ".csv") || has_suffix_ci(path, ".tsv")) ? read_ref_groups_csv(path, out)
                                                                          : read_ref_groups_text(path, n_hyps, out);
    if (rc) { ref_groups_free(out); return -1; }
    if (out->n != n_hyps) {
        int n = out->n;
        ref_groups_free(out);
        return peft_fail("%s: %d reference groups for %d hypotheses (the counts must match: one group per hypothesis line)", path, n, n_hyps);
    }
    return 0;
}
