// wordpiece.c: BERT's tokenizer as HF tokenizers runs it from tokenizer.json: the BertNormalizer,
// the BertPreTokenizer and the WordPiece model (and its decoder's text).
//   BertNormalizer: clean_text (drop NUL, U+FFFD and control characters, whitespace -> " "),
//     handle_chinese_chars (spaces around CJK ideographs), strip_accents (NFD, then drop the
//     non-spacing marks; null: as lowercase), lowercase. NFD and lowercasing are implemented for
//     ASCII, Latin-1 and Latin Extended-A (and combining marks), lowercasing also for Greek and
//     Cyrillic; a text with another character those steps would change is refused, naming it.
//   BertPreTokenizer: split at whitespace (dropped) and around each punctuation character.
//   WordPiece: per word, the longest vocabulary prefix, then the longest "##"-prefixed piece, ...;
//     a word with a piece not in the vocabulary (or longer than max_input_chars_per_word
//     characters) is the unk token.
#include "metrics.h"
#include "tokenizer_internal.h"
#include <stdlib.h>
#include <string.h>

// ---- character classes ----

static bool is_whitespace(uint32_t c) {  // Rust's char::is_whitespace (the White_Space property)
    return c == ' ' || (c >= 9 && c <= 13) || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool is_chinese(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Whether the character s[0..len) is in class k (tokenizer_internal.h's BERT_*), by PCRE2's tables.
static bool in_class(const Tokenizer *t, int k, const char *s, size_t len) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    bool hit = pcre2_match(t->bert_re[k], (PCRE2_SPTR)s, len, 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    return hit;
}

int tok_bert_classes(Tokenizer *t) {
    static const char *const classes[BERT_CLASSES] = {"^[\\p{Cc}\\p{Cf}\\p{Cn}\\p{Co}]$", "^\\p{P}$", "^\\p{Mn}$"};
    for (int k = 0; k < BERT_CLASSES; k++) {
        if (t->bert_re[k]) continue;
        int err;
        PCRE2_SIZE off;
        t->bert_re[k] = pcre2_compile((PCRE2_SPTR)classes[k], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
        if (!t->bert_re[k]) return peft_fail("%s: internal error: PCRE2 refused a character class", t->source);
    }
    return 0;
}

// Canonical decompositions' base letters for U+00C0..U+017F (0: none, the character stays).
static const char LATIN_BASE[] =
    "AAAAAA\0CEEEEIIII\0NOOOOO\0\0UUUUY\0\0"  // U+00C0..U+00DF
    "aaaaaa\0ceeeeiiii\0nooooo\0\0uuuuy\0y"  // U+00E0..U+00FF
    "AaAaAaCcCcCcCcDd\0\0EeEeEeEeEeGgGg"  // U+0100..U+011F
    "GgGgHh\0\0IiIiIiIiI\0\0\0JjKk\0LlLlLl\0"  // U+0120..U+013F
    "\0\0\0NnNnNn\0\0\0OoOoOo\0\0RrRrRrSsSsSs"  // U+0140..U+015F
    "SsTtTt\0\0UuUuUuUuUuUuWwYyYZzZzZz\0";  // U+0160..U+017F

// Characters that neither NFD nor lowercasing change, beyond ASCII: CJK ideographs (not the
// compatibility ones), general punctuation, currency signs, CJK punctuation.
static bool unchanged(uint32_t c) {
    return (is_chinese(c) && !(c >= 0xF900 && c <= 0xFAFF) && !(c >= 0x2F800 && c <= 0x2FA1F)) || (c >= 0x2010 && c <= 0x205E) ||
           (c >= 0x20A0 && c <= 0x20BF) || (c >= 0x3000 && c <= 0x303F);
}

int tok_bert_normalize(const Tokenizer *t, const char *s, size_t n, TokBuf *out) {
    bool strip = t->bert_strip_accents;
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_len((const uint8_t *)s + i, n - i);
        if (k < 0) { tok_buf_put(out, s + i, 1); i++; continue; }  // invalid bytes pass through (the model's unk)
        uint32_t c = tok_utf8_get((const uint8_t *)s + i, k);
        const char *ch = s + i;
        i += k;
        if (t->bert_clean_text) {
            if (c == 0 || c == 0xFFFD || (c != '\t' && c != '\n' && c != '\r' && in_class(t, BERT_CONTROL, ch, k))) continue;
            if (is_whitespace(c)) { tok_buf_put(out, " ", 1); continue; }
        }
        if (t->bert_chinese && is_chinese(c)) {
            tok_buf_put(out, " ", 1);
            tok_buf_put(out, ch, k);
            tok_buf_put(out, " ", 1);
            continue;
        }
        if (c < 0x80 || unchanged(c)) { tok_buf_put(out, ch, k); continue; }
        if (strip && c >= 0xC0 && c < 0x180 && LATIN_BASE[c - 0xC0]) { tok_buf_put(out, &LATIN_BASE[c - 0xC0], 1); continue; }
        if (strip && in_class(t, BERT_MARK, ch, k)) continue;
        if (strip && c >= 0x180)
            return peft_fail("%s: BertNormalizer strip_accents: character U+%04X: Unicode NFD is implemented for Latin-1 and Latin "
                             "Extended-A only", t->source, c);
        if (t->bert_lowercase && !(c < 0x180 || (c >= 0x370 && c < 0x530)) && !in_class(t, BERT_MARK, ch, k))
            return peft_fail("%s: BertNormalizer lowercase: character U+%04X: lowercasing is implemented for Latin-1, Latin "
                             "Extended-A, Greek and Cyrillic only", t->source, c);
        tok_buf_put(out, ch, k);
    }
    tok_buf_put(out, "", 0);
    if (t->bert_lowercase) metrics_lowercase(out->data);  // (a NUL byte ends it early: clean_text drops them)
    return 0;
}

// ---- pre-tokenizer ----

int tok_bert_pre_step(Encoder *e, int next_step, const char *s, size_t n, bool at_start,
                      int (*emit)(Encoder *, int, const char *, size_t, bool)) {
    size_t word = 0;
    for (size_t i = 0; i < n;) {
        int k = tok_utf8_len((const uint8_t *)s + i, n - i);
        size_t len = k < 0 ? 1 : (size_t)k;
        uint32_t c = k < 0 ? 0xFFFD : tok_utf8_get((const uint8_t *)s + i, k);
        bool space = is_whitespace(c), punct = !space && ((c < 0x80 && c > 32 && c != 127 && !((c | 32) >= 'a' && (c | 32) <= 'z') &&
                                                            !(c >= '0' && c <= '9')) || (c >= 0x80 && k > 0 && in_class(e->tok, BERT_PUNCT, s + i, len)));
        if (space || punct) {
            if (emit(e, next_step, s + word, i - word, at_start && word == 0) < 0) return -1;
            if (punct && emit(e, next_step, s + i, len, at_start && i == 0) < 0) return -1;
            word = i + len;
        }
        i += len;
    }
    return emit(e, next_step, s + word, n - word, at_start && word == 0);
}

// ---- the model ----

void tok_wordpiece_word(Encoder *e, const char *w, size_t n) {
    const Tokenizer *t = e->tok;
    size_t chars = 0;
    for (size_t i = 0; i < n; chars++) { int k = tok_utf8_len((const uint8_t *)w + i, n - i); i += k < 0 ? 1 : (size_t)k; }
    size_t mark = e->n_ids, plen = strlen(t->wp_prefix);
    if (chars > (size_t)t->wp_max_chars) goto unknown;
    char *piece = xmalloc(plen + n + 1);
    for (size_t start = 0; start < n;) {
        size_t end = n;
        int id = -1;
        while (end > start) {
            size_t off = start ? plen : 0;
            memcpy(piece, t->wp_prefix, off);
            memcpy(piece + off, w + start, end - start);
            if ((id = tok_find(t, piece, off + end - start)) >= 0) break;
            do end--;  // back one character
            while (end > start && ((uint8_t)w[end] & 0xC0) == 0x80);
        }
        if (id < 0) { free(piece); e->n_ids = mark; goto unknown; }
        tok_push_id(e, id);
        start = end;
    }
    free(piece);
    return;
unknown:
    tok_push_id(e, t->unk_id);
}

// The decoder's cleanup (tokenizers' WordPiece decoder, cleanup true), its replacements in its order:
// no space before . ? ! , and the English clitics.
void tok_wordpiece_cleanup(TokBuf *text) {
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " do not", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", " don't", "'s", "'ve", "'re"};
    for (size_t r = 0; r < sizeof from / sizeof *from; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), o = 0;
        for (size_t i = 0; i < text->len;) {
            if (i + fl <= text->len && !memcmp(text->data + i, from[r], fl)) {
                memmove(text->data + o, to[r], tl);
                o += tl;
                i += fl;
            } else text->data[o++] = text->data[i++];
        }
        text->len = o;
        text->data[o] = 0;
    }
}
