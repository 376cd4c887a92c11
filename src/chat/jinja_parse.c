// jinja_parse.c: a template's text to its syntax tree. Three passes, as @huggingface/jinja makes
// them: the text is preprocessed (transformers' lstrip_blocks and trim_blocks, one trailing newline
// dropped, {% generation %} markers removed), cut into tokens (text between tags, and the tags'
// names, literals and operators), and parsed by recursive descent with its precedence:
//   a if b else c  <  or  <  and  <  not  <  == != < > <= >= in, not in  <  + - ~  <  * / // %
//   <  **  <  is TEST  <  | filter  <  unary - +  <  calls, attributes, subscripts  <  literals
// Every byte of the preprocessed text remembers its offset in the original, so that errors name
// the line and column the author wrote.
#include "jinja_internal.h"
#include "util.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool jstr_eq(JStr a, const char *lit) { size_t n = strlen(lit); return a.n == n && !memcmp(a.p, lit, n); }

// ---- arena ----

struct JChunk { JChunk *next; size_t used, cap; max_align_t data[]; };

void *ja_alloc(JArena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->used + n > a->head->cap) {
        size_t cap = n > 65536 ? n : 65536;
        JChunk *c = xmalloc(sizeof(JChunk) + cap);
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    a->used += n;
    memset(p, 0, n);
    return p;
}

char *ja_dup(JArena *a, const char *p, size_t n) {
    char *q = ja_alloc(a, n + 1);
    if (n) memcpy(q, p, n);
    return q;
}

void ja_free(JArena *a) {
    for (JChunk *c = a->head, *next; c; c = next) { next = c->next; free(c); }
    memset(a, 0, sizeof *a);
}

// ---- positions ----

void jinja_verror(const JinjaTemplate *t, size_t pos, char *buf, size_t cap, const char *fmt, va_list ap) {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < t->len;) {
        int k;
        uint32_t cp = utf8_next(t->text + i, t->len - i, &k);
        if (cp == '\n') { line++; col = 1; }
        else col++;
        i += (size_t)k;
    }
    int n = snprintf(buf, cap, "%s:%d:%d: ", t->source, line, col);
    if (n >= 0 && (size_t)n < cap) vsnprintf(buf + n, cap - (size_t)n, fmt, ap);
}

// ---- preprocessing: text with each byte's original offset ----

typedef struct { char *s; size_t *o; size_t n, cap; } Src;

static void src_put(Src *d, char c, size_t orig) {
    if (d->n == d->cap) {
        d->cap = 2 * d->cap + 256;
        d->s = xrealloc(d->s, d->cap + 1);
        d->o = xrealloc(d->o, sizeof(size_t) * (d->cap + 1));
    }
    d->s[d->n] = c;
    d->o[d->n++] = orig;
    d->s[d->n] = 0;
}

static void src_free(Src *s) { free(s->s); free(s->o); memset(s, 0, sizeof *s); }

// Where JavaScript's multiline ^ matches: the start, or after \n, \r, U+2028, U+2029.
static bool line_start(const Src *s, size_t i) {
    if (i == 0) return true;
    char c = s->s[i - 1];
    if (c == '\n' || c == '\r') return true;
    return i >= 3 && !memcmp(s->s + i - 3, "\xE2\x80", 2) && (s->s[i - 1] == '\xA8' || s->s[i - 1] == '\xA9');
}

// lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1"
static Src lstrip_blocks(const Src *in) {
    Src out = {0};
    for (size_t i = 0; i < in->n;) {
        if (line_start(in, i)) {
            size_t j = i;
            while (j < in->n && (in->s[j] == ' ' || in->s[j] == '\t')) j++;
            if (j > i && j + 1 < in->n && in->s[j] == '{' && strchr("#%-", in->s[j + 1]) && in->s[j + 1]) i = j;
        }
        src_put(&out, in->s[i], in->o[i]);
        i++;
    }
    return out;
}

// trim_blocks: /([#%-]})\n/g -> "$1"
static Src trim_blocks(const Src *in) {
    Src out = {0};
    for (size_t i = 0; i < in->n; i++) {
        src_put(&out, in->s[i], in->o[i]);
        if (i + 2 < in->n && in->s[i] && strchr("#%-", in->s[i]) && in->s[i + 1] == '}' && in->s[i + 2] == '\n') {
            src_put(&out, '}', in->o[i + 1]);
            i += 2;
        }
    }
    return out;
}

static size_t skip_space(const Src *s, size_t i) {
    while (i < s->n) {
        int k;
        if (!js_space(utf8_next(s->s + i, s->n - i, &k))) break;
        i += (size_t)k;
    }
    return i;
}

// A /{%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/ match at i: its end, whether it strips on either side.
static bool generation_tag(const Src *s, size_t i, size_t *end, bool *lstrip, bool *rstrip, size_t *after) {
    if (i + 1 >= s->n || s->s[i] != '{' || s->s[i + 1] != '%') return false;
    size_t j = i + 2;
    *lstrip = j < s->n && s->s[j] == '-';
    if (*lstrip) j++;
    j = skip_space(s, j);
    if (s->n - j >= 3 && !memcmp(s->s + j, "end", 3)) j += 3;
    if (s->n - j < 10 || memcmp(s->s + j, "generation", 10)) return false;
    j = skip_space(s, j + 10);
    *rstrip = j < s->n && s->s[j] == '-';
    if (*rstrip) j++;
    if (s->n - j < 2 || memcmp(s->s + j, "%}", 2)) return false;
    *after = j + 2;
    *end = skip_space(s, j + 2);
    return true;
}

// The {% generation %} markers (transformers' assistant masks) render nothing.
static Src drop_generation(const Src *in) {
    Src out = {0};
    size_t last = 0;
    for (size_t i = 0; i < in->n; i++) {
        size_t end, after;
        bool l, r;
        if (!generation_tag(in, i, &end, &l, &r, &after)) continue;
        size_t stop = i;
        while (l && stop > last) {
            // the whitespace before the tag, back to the previous match (ASCII and U+00A0.. alike)
            size_t p = stop - 1;
            while (p > last && ((unsigned char)in->s[p] & 0xC0) == 0x80) p--;
            int k;
            if (!js_space(utf8_next(in->s + p, in->n - p, &k))) break;
            stop = p;
        }
        for (size_t k = last; k < stop; k++) src_put(&out, in->s[k], in->o[k]);
        if (!r) for (size_t k = after; k < end; k++) src_put(&out, in->s[k], in->o[k]);
        last = end;
        i = end - 1;
    }
    for (size_t k = last; k < in->n; k++) src_put(&out, in->s[k], in->o[k]);
    return out;
}

static Src preprocess(const char *text, size_t len) {
    Src a = {0};
    if (len && text[len - 1] == '\n') len--;
    for (size_t i = 0; i < len; i++) src_put(&a, text[i], i);
    Src b = lstrip_blocks(&a);
    src_free(&a);
    Src c = trim_blocks(&b);
    src_free(&b);
    Src d = drop_generation(&c);
    src_free(&c);
    if (!d.s) src_put(&d, 0, 0), d.n = 0;  // an empty template still has a (NUL) terminator
    return d;
}

// ---- tokens ----

typedef enum { T_TEXT, T_NUM, T_STR, T_IDENT, T_EQUALS, T_LPAREN, T_RPAREN, T_OPEN_STMT, T_CLOSE_STMT, T_OPEN_EXPR,
               T_CLOSE_EXPR, T_LBRACKET, T_RBRACKET, T_LBRACE, T_RBRACE, T_COMMA, T_DOT, T_COLON, T_PIPE, T_ADD,
               T_MUL, T_POW, T_CMP, T_UNARY, T_COMMENT } TokType;

typedef struct { TokType type; JStr v; size_t pos; } Tok;

typedef struct {
    JinjaTemplate *t;
    Src src;
    Tok *tok;
    int n, cap;
    int cur, depth;
    char err[1024];
    bool failed;
} Parser;

static int fail_at(Parser *p, size_t pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_at(Parser *p, size_t pos, const char *fmt, ...) {
    if (p->failed) return -1;
    va_list ap;
    va_start(ap, fmt);
    jinja_verror(p->t, pos, p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->failed = true;
    return -1;
}

static size_t orig(const Parser *p, size_t i) { return i < p->src.n ? p->src.o[i] : p->t->len; }

static void push_tok(Parser *p, TokType type, const char *s, size_t n, size_t at) {
    if (p->n == p->cap) { p->cap = 2 * p->cap + 64; p->tok = xrealloc(p->tok, sizeof(Tok) * p->cap); }
    p->tok[p->n++] = (Tok){type, {ja_dup(&p->t->arena, s, n), n}, orig(p, at)};
}

static bool is_word(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static size_t space_len(const Parser *p, size_t i) {
    int k;
    return i < p->src.n && js_space(utf8_next(p->src.s + i, p->src.n - i, &k)) ? (size_t)k : 0;
}

// {%- and {{- strip the text token before them (JavaScript's trimEnd).
static void strip_last_text(Parser *p) {
    if (!p->n || p->tok[p->n - 1].type != T_TEXT) return;
    Tok *t = &p->tok[p->n - 1];
    t->v = js_trim(t->v, false, true);
    if (!t->v.n) p->n--;
}

static void encode_utf8(char *buf, int *n, uint32_t cp) {
    if (cp < 0x80) { buf[0] = (char)cp; *n = 1; }
    else if (cp < 0x800) { buf[0] = (char)(0xC0 | cp >> 6); buf[1] = (char)(0x80 | (cp & 63)); *n = 2; }
    else if (cp < 0x10000) { buf[0] = (char)(0xE0 | cp >> 12); buf[1] = (char)(0x80 | (cp >> 6 & 63)); buf[2] = (char)(0x80 | (cp & 63)); *n = 3; }
    else { buf[0] = (char)(0xF0 | cp >> 18); buf[1] = (char)(0x80 | (cp >> 12 & 63)); buf[2] = (char)(0x80 | (cp >> 6 & 63)); buf[3] = (char)(0x80 | (cp & 63)); *n = 4; }
}

static int hex_value(const char *s, int n, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < n; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

// A string literal from just after its opening quote; *i ends on the closing quote.
static int lex_string(Parser *p, size_t *i, char quote) {
    const Src *s = &p->src;
    size_t start = *i - 1;
    JBuf b = {0};
    for (;;) {
        if (*i >= s->n) { free(b.p); return fail_at(p, orig(p, start), "unterminated string literal"); }
        char c = s->s[*i];
        if (c == quote) break;
        (*i)++;
        if (c != '\\') { jb_put(&b, &c, 1); continue; }
        if (*i >= s->n) { free(b.p); return fail_at(p, orig(p, start), "unterminated string literal"); }
        char e = s->s[(*i)++];
        const char *plain = "n\nt\tr\rb\bf\fv\v''\"\"\\\\";
        const char *hit = NULL;
        for (const char *q = plain; *q; q += 2) if (*q == e) { hit = q + 1; break; }
        if (hit) { jb_put(&b, hit, 1); continue; }
        if (e != 'x' && e != 'u') { free(b.p); return fail_at(p, orig(p, *i - 2), "unknown escape \\%c in a string literal", e); }
        int w = e == 'x' ? 2 : 4;
        uint32_t cp;
        if (s->n - *i < (size_t)w || hex_value(s->s + *i, w, &cp)) { free(b.p); return fail_at(p, orig(p, *i - 2), "bad \\%c escape", e); }
        *i += (size_t)w;
        uint32_t lo;
        // a UTF-16 surrogate pair written as two \u escapes is one character
        if (cp >= 0xD800 && cp < 0xDC00 && s->n - *i >= 6 && s->s[*i] == '\\' && s->s[*i + 1] == 'u' && !hex_value(s->s + *i + 2, 4, &lo) &&
            lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            *i += 6;
        }
        char u[4];
        int k;
        encode_utf8(u, &k, cp);
        jb_put(&b, u, (size_t)k);
    }
    if (p->n == p->cap) { p->cap = 2 * p->cap + 64; p->tok = xrealloc(p->tok, sizeof(Tok) * p->cap); }
    p->tok[p->n++] = (Tok){T_STR, {ja_dup(&p->t->arena, b.p ? b.p : "", b.n), b.n}, orig(p, start)};
    free(b.p);
    return 0;
}

static const struct { const char *s; TokType t; } RULES[] = {
    {"{%", T_OPEN_STMT}, {"%}", T_CLOSE_STMT}, {"{{", T_OPEN_EXPR}, {"}}", T_CLOSE_EXPR}, {"(", T_LPAREN}, {")", T_RPAREN},
    {"{", T_LBRACE}, {"}", T_RBRACE}, {"[", T_LBRACKET}, {"]", T_RBRACKET}, {",", T_COMMA}, {".", T_DOT}, {":", T_COLON},
    {"|", T_PIPE}, {"<=", T_CMP}, {">=", T_CMP}, {"==", T_CMP}, {"!=", T_CMP}, {"<", T_CMP}, {">", T_CMP}, {"+", T_ADD},
    {"-", T_ADD}, {"~", T_ADD}, {"**", T_POW}, {"*", T_MUL}, {"//", T_MUL}, {"/", T_MUL}, {"%", T_MUL}, {"=", T_EQUALS},
};

static int lex(Parser *p) {
    const Src *s = &p->src;
    size_t i = 0;
    int curly = 0;
    while (i < s->n) {
        int last = p->n ? (int)p->tok[p->n - 1].type : -1;
        if (last == -1 || last == T_CLOSE_STMT || last == T_CLOSE_EXPR || last == T_COMMENT) {
            size_t end = i;
            for (;;) {
                const char *b = memchr(s->s + end, '{', s->n - end);
                if (!b) { end = s->n; break; }
                end = (size_t)(b - s->s);
                if (end + 1 < s->n && (s->s[end + 1] == '%' || s->s[end + 1] == '{' || s->s[end + 1] == '#')) break;
                end++;
            }
            if (end > i) { push_tok(p, T_TEXT, s->s + i, end - i, i); i = end; continue; }
        }
        if (s->s[i] == '{' && i + 1 < s->n) {
            char next = s->s[i + 1];
            if (next == '#') {
                size_t start = i;
                i += 2;
                bool strip_before = i < s->n && s->s[i] == '-';
                if (strip_before) i++;
                const char *e = memmem(s->s + i, s->n - i, "#}", 2);
                if (!e) return fail_at(p, orig(p, start), "a comment {# is never closed with #}");
                size_t end = (size_t)(e - s->s);
                bool strip_after = end > i && s->s[end - 1] == '-';
                if (strip_before) strip_last_text(p);
                push_tok(p, T_COMMENT, "", 0, start);
                i = end + 2;
                if (strip_after) while (space_len(p, i)) i += space_len(p, i);
                continue;
            }
            if (i + 2 < s->n && s->s[i + 2] == '-' && (next == '%' || next == '{')) {
                strip_last_text(p);
                push_tok(p, next == '%' ? T_OPEN_STMT : T_OPEN_EXPR, s->s + i, 2, i);
                if (next == '{') curly = 0;
                i += 3;
                continue;
            }
        }
        while (space_len(p, i)) i += space_len(p, i);
        if (i >= s->n) return fail_at(p, orig(p, i), "unexpected end of the template inside a tag");
        char c = s->s[i];
        if (c == '-' && i + 2 < s->n && s->s[i + 2] == '}' && (s->s[i + 1] == '%' || s->s[i + 1] == '}')) {
            push_tok(p, s->s[i + 1] == '%' ? T_CLOSE_STMT : T_CLOSE_EXPR, s->s + i + 1, 2, i);
            i += 3;
            while (space_len(p, i)) i += space_len(p, i);
            continue;
        }
        if (c == '-' || c == '+') {
            if (last == T_TEXT || last == -1) return fail_at(p, orig(p, i), "unexpected character '%c'", c);
            if (!(last == T_IDENT || last == T_NUM || last == T_STR || last == T_RPAREN || last == T_RBRACKET)) {
                size_t start = i++;
                while (i < s->n && is_digit(s->s[i])) i++;
                bool num = i > start + 1;
                if (num && i + 1 < s->n && s->s[i] == '.' && is_digit(s->s[i + 1])) {
                    i++;
                    while (i < s->n && is_digit(s->s[i])) i++;
                }
                if (i >= s->n) return fail_at(p, orig(p, start), "unexpected end of the template inside a tag");
                push_tok(p, num ? T_NUM : T_UNARY, s->s + start, i - start, start);
                continue;
            }
        }
        bool matched = false;
        for (size_t r = 0; r < sizeof RULES / sizeof *RULES && !matched; r++) {
            size_t k = strlen(RULES[r].s);
            if (RULES[r].t == T_CLOSE_EXPR && curly > 0) continue;
            if (s->n - i < k || memcmp(s->s + i, RULES[r].s, k)) continue;
            push_tok(p, RULES[r].t, s->s + i, k, i);
            if (RULES[r].t == T_OPEN_EXPR) curly = 0;
            else if (RULES[r].t == T_LBRACE) curly++;
            else if (RULES[r].t == T_RBRACE) curly--;
            i += k;
            matched = true;
        }
        if (matched) continue;
        if (c == '\'' || c == '"') {
            i++;
            if (lex_string(p, &i, c)) return -1;
            i++;
            continue;
        }
        if (is_digit(c)) {
            size_t start = i;
            while (i < s->n && is_digit(s->s[i])) i++;
            if (last != T_DOT && i + 1 < s->n && s->s[i] == '.' && is_digit(s->s[i + 1])) {
                i++;
                while (i < s->n && is_digit(s->s[i])) i++;
            }
            if (i >= s->n) return fail_at(p, orig(p, start), "unexpected end of the template inside a tag");
            push_tok(p, T_NUM, s->s + start, i - start, start);
            continue;
        }
        if (is_word(c)) {
            size_t start = i;
            while (i < s->n && is_word(s->s[i])) i++;
            if (i >= s->n) return fail_at(p, orig(p, start), "unexpected end of the template inside a tag");
            push_tok(p, T_IDENT, s->s + start, i - start, start);
            continue;
        }
        int k;
        uint32_t cp = utf8_next(s->s + i, s->n - i, &k);
        return cp < 0x80 && cp >= 0x20 ? fail_at(p, orig(p, i), "unexpected character '%c'", (char)cp)
                                       : fail_at(p, orig(p, i), "unexpected character U+%04X", cp);
    }
    return 0;
}

// ---- parser ----

static JNode *node(Parser *p, JNodeKind kind, size_t pos) {
    JNode *n = ja_alloc(&p->t->arena, sizeof *n);
    n->kind = kind;
    n->pos = pos;
    return n;
}

static void add(Parser *p, JNodes *l, JNode *n) {
    // lists grow by copying into the arena (templates are small)
    if ((l->n & (l->n - 1)) == 0) {
        JNode **v = ja_alloc(&p->t->arena, sizeof(JNode *) * (l->n ? 2 * l->n : 1));
        if (l->n) memcpy(v, l->v, sizeof(JNode *) * l->n);
        l->v = v;
    }
    l->v[l->n++] = n;
}

static const Tok *peek(const Parser *p, int k) { return p->cur + k < p->n ? &p->tok[p->cur + k] : NULL; }
static bool is(const Parser *p, TokType t) { const Tok *k = peek(p, 0); return k && k->type == t; }
static bool is_name(const Parser *p, int k, const char *name) { const Tok *t = peek(p, k); return t && t->type == T_IDENT && jstr_eq(t->v, name); }
static size_t here(const Parser *p) { return p->cur < p->n ? p->tok[p->cur].pos : p->t->len; }

static const char *TOK_NAMES[] = {"text", "a number", "a string", "a name", "'='", "'('", "')'", "'{%'", "'%}'", "'{{'", "'}}'", "'['",
                                  "']'", "'{'", "'}'", "','", "'.'", "':'", "'|'", "an operator", "an operator", "'**'",
                                  "a comparison", "a sign", "a comment"};

static int expect(Parser *p, TokType t, const char *what) {
    const Tok *k = peek(p, 0);
    if (!k) return fail_at(p, p->t->len, "unexpected end of the template: %s expected", what);
    if (k->type != t) return fail_at(p, k->pos, "%s expected, found %s", what, TOK_NAMES[k->type]);
    p->cur++;
    return 0;
}

static int expect_name(Parser *p, const char *name) {
    if (is_name(p, 0, name)) { p->cur++; return 0; }
    return fail_at(p, here(p), "'%s' expected", name);
}

// "{% name" at the cursor, for one of names (NULL-terminated).
static bool at_statement(const Parser *p, const char *const *names) {
    if (!is(p, T_OPEN_STMT)) return false;
    for (int i = 0; names[i]; i++) if (is_name(p, 1, names[i])) return true;
    return false;
}

static JNode *parse_expression(Parser *p);
static JNode *parse_primary(Parser *p);
static int parse_any(Parser *p, JNodes *into);

static bool enter(Parser *p) {
    if (++p->depth > JINJA_MAX_DEPTH) { fail_at(p, here(p), "the template nests more than %d levels deep", JINJA_MAX_DEPTH); return false; }
    return true;
}

// Statements up to one of the `until` statements (not consumed).
static int parse_block(Parser *p, JNodes *into, const char *const *until, size_t opened_at, const char *closer) {
    while (!at_statement(p, until)) {
        if (p->cur >= p->n) return fail_at(p, opened_at, "this block is never closed: {%% %s %%} expected", closer);
        if (parse_any(p, into)) return -1;
    }
    return 0;
}

static JNode *sequence(Parser *p, bool primary) {
    size_t pos = here(p);
    JNode *first = primary ? parse_primary(p) : parse_expression(p);
    if (!first || !is(p, T_COMMA)) return first;
    JNode *t = node(p, JN_TUPLE, pos);
    add(p, &t->args, first);
    while (is(p, T_COMMA)) {
        p->cur++;
        JNode *e = primary ? parse_primary(p) : parse_expression(p);
        if (!e) return NULL;
        add(p, &t->args, e);
    }
    return t;
}

// Call arguments or macro parameters: "(" ... ")".
static int parse_args(Parser *p, JNodes *args, bool parameters) {
    if (expect(p, T_LPAREN, "'('")) return -1;
    bool keyword = false;
    while (!is(p, T_RPAREN)) {
        if (p->cur >= p->n) return expect(p, T_RPAREN, "')'");
        if (is(p, T_POW) || (is(p, T_MUL) && peek(p, 0)->v.p[0] == '*'))
            return fail_at(p, here(p), "argument unpacking (*args, **kwargs) is not supported");
        size_t pos = here(p);
        JNode *arg = parse_expression(p);
        if (!arg) return -1;
        if (is(p, T_EQUALS)) {
            p->cur++;
            if (arg->kind != JN_IDENT) return fail_at(p, pos, parameters ? "a parameter must be a name" : "a keyword argument needs a name");
            JNode *kw = node(p, JN_KWARG, pos);
            kw->str = arg->str;
            if (!(kw->a = parse_expression(p))) return -1;
            arg = kw;
            keyword = true;
        } else if (keyword) return fail_at(p, pos, parameters ? "a parameter without a default follows one with a default"
                                                              : "a positional argument follows a keyword argument");
        if (parameters) {
            if (arg->kind != JN_IDENT && arg->kind != JN_KWARG) return fail_at(p, pos, "a parameter must be a name");
            for (int i = 0; i < args->n; i++)
                if (args->v[i]->str.n == arg->str.n && !memcmp(args->v[i]->str.p, arg->str.p, arg->str.n))
                    return fail_at(p, pos, "parameter '%.*s' is declared twice", (int)arg->str.n, arg->str.p);
        }
        add(p, args, arg);
        if (is(p, T_COMMA)) p->cur++;
    }
    p->cur++;
    return 0;
}

// x[...]: an index, or a slice of up to three parts.
static JNode *subscript(Parser *p, size_t pos) {
    JNode *parts[3] = {NULL, NULL, NULL};
    int n = 0;
    bool slice = false;
    while (!is(p, T_RBRACKET)) {
        if (p->cur >= p->n) { expect(p, T_RBRACKET, "']'"); return NULL; }
        if (n == 3) { fail_at(p, pos, "a slice has at most three parts"); return NULL; }
        if (is(p, T_COLON)) { n++; p->cur++; slice = true; continue; }
        if (!(parts[n] = parse_expression(p))) return NULL;
        n++;
        if (is(p, T_COLON)) { p->cur++; slice = true; }
    }
    if (n == 0) { fail_at(p, pos, "empty subscript []"); return NULL; }
    if (!slice) return parts[0];
    JNode *s = node(p, JN_SLICE, pos);
    s->a = parts[0];
    s->b = parts[1];
    s->c = parts[2];
    return s;
}

static JNode *member(Parser *p, JNode *obj) {
    while (obj && (is(p, T_DOT) || is(p, T_LBRACKET))) {
        bool computed = is(p, T_LBRACKET);
        size_t pos = here(p);
        p->cur++;
        JNode *m = node(p, JN_MEMBER, pos);
        m->a = obj;
        m->flag = computed;
        if (computed) {
            if (!(m->b = subscript(p, pos)) || expect(p, T_RBRACKET, "']'")) return NULL;
        } else {
            if (!(m->b = parse_primary(p))) return NULL;
            if (m->b->kind != JN_IDENT && m->b->kind != JN_INT) { fail_at(p, m->b->pos, "a name or an integer must follow '.'"); return NULL; }
        }
        obj = m;
    }
    return obj;
}

static JNode *call_member(Parser *p) {
    JNode *e = member(p, parse_primary(p));
    while (e && is(p, T_LPAREN)) {
        JNode *c = node(p, JN_CALL, e->pos);
        c->a = e;
        if (parse_args(p, &c->args, false)) return NULL;
        e = member(p, c);
    }
    return e;
}

static JNode *unary_sign(Parser *p) {
    const Tok *t = peek(p, 0);
    if (t && (t->type == T_UNARY || t->type == T_ADD) && t->v.n == 1 && (t->v.p[0] == '-' || t->v.p[0] == '+')) {
        if (!enter(p)) return NULL;
        p->cur++;
        JNode *n = node(p, t->v.p[0] == '-' ? JN_NEG : JN_POS, t->pos);
        n->a = unary_sign(p);
        p->depth--;
        return n->a ? n : NULL;
    }
    return call_member(p);
}

// "| name" or "| name(args)"; the operand is filled in by the caller (NULL in a filter block).
static JNode *filter_call(Parser *p) {
    size_t pos = here(p);
    JNode *name = parse_primary(p);
    if (!name) return NULL;
    if (name->kind != JN_IDENT) { fail_at(p, pos, "a filter name expected"); return NULL; }
    JNode *f = node(p, JN_FILTER, pos);
    f->str = name->str;
    if (is(p, T_LPAREN)) {
        f->flag = true;
        if (parse_args(p, &f->args, false)) return NULL;
    }
    if (is(p, T_DOT) || is(p, T_LBRACKET) || is(p, T_LPAREN)) { fail_at(p, here(p), "a filter's result cannot be called or subscripted here: use parentheses"); return NULL; }
    return f;
}

static JNode *filter_expr(Parser *p) {
    JNode *e = unary_sign(p);
    while (e && is(p, T_PIPE)) {
        p->cur++;
        JNode *f = filter_call(p);
        if (!f) return NULL;
        f->a = e;
        e = f;
    }
    return e;
}

static JNode *test_expr(Parser *p) {
    JNode *e = filter_expr(p);
    while (e && is_name(p, 0, "is")) {
        size_t pos = here(p);
        p->cur++;
        bool negate = is_name(p, 0, "not");
        if (negate) p->cur++;
        JNode *name = parse_primary(p);
        if (!name) return NULL;
        if (name->kind != JN_IDENT) { fail_at(p, name->pos, "a test name expected after 'is'"); return NULL; }
        JNode *t = node(p, JN_TEST, pos);
        t->a = e;
        t->flag = negate;
        t->str = name->str;
        e = t;
    }
    return e;
}

static JNode *binary(Parser *p, JNode *l, JOp op, size_t pos, JNode *(*next)(Parser *)) {
    JNode *r = next(p);
    if (!l || !r) return NULL;
    JNode *b = node(p, JN_BINARY, pos);
    b->op = op;
    b->a = l;
    b->b = r;
    return b;
}

static JNode *power(Parser *p) {
    JNode *e = test_expr(p);
    while (e && is(p, T_POW)) { size_t pos = here(p); p->cur++; e = binary(p, e, JOP_POW, pos, test_expr); }
    return e;
}

static JNode *multiplicative(Parser *p) {
    JNode *e = power(p);
    while (e && is(p, T_MUL)) {
        const Tok *t = peek(p, 0);
        JOp op = jstr_eq(t->v, "*") ? JOP_MUL : jstr_eq(t->v, "/") ? JOP_DIV : jstr_eq(t->v, "//") ? JOP_FLOORDIV : JOP_MOD;
        p->cur++;
        e = binary(p, e, op, t->pos, power);
    }
    return e;
}

static JNode *additive(Parser *p) {
    JNode *e = multiplicative(p);
    while (e && is(p, T_ADD)) {
        const Tok *t = peek(p, 0);
        JOp op = t->v.p[0] == '+' ? JOP_ADD : t->v.p[0] == '-' ? JOP_SUB : JOP_CONCAT;
        p->cur++;
        e = binary(p, e, op, t->pos, multiplicative);
    }
    return e;
}

static JNode *comparison(Parser *p) {
    JNode *e = additive(p);
    while (e) {
        size_t pos = here(p);
        JOp op;
        if (is_name(p, 0, "not") && is_name(p, 1, "in")) { op = JOP_NOT_IN; p->cur += 2; }
        else if (is_name(p, 0, "in")) { op = JOP_IN; p->cur++; }
        else if (is(p, T_CMP)) {
            JStr v = peek(p, 0)->v;
            op = jstr_eq(v, "==") ? JOP_EQ : jstr_eq(v, "!=") ? JOP_NE : jstr_eq(v, "<") ? JOP_LT : jstr_eq(v, ">") ? JOP_GT
               : jstr_eq(v, "<=") ? JOP_LE : JOP_GE;
            p->cur++;
        } else break;
        e = binary(p, e, op, pos, additive);
    }
    return e;
}

static JNode *negation(Parser *p) {
    JNode *e = NULL;
    while (is_name(p, 0, "not")) {
        if (!enter(p)) return NULL;
        JNode *n = node(p, JN_NOT, here(p));
        p->cur++;
        n->a = negation(p);
        p->depth--;
        if (!n->a) return NULL;
        e = n;
    }
    return e ? e : comparison(p);
}

static JNode *logical(Parser *p, const char *word, JNodeKind kind, JNode *(*next)(Parser *)) {
    JNode *e = next(p);
    while (e && is_name(p, 0, word)) {
        JNode *n = node(p, kind, here(p));
        p->cur++;
        n->a = e;
        if (!(n->b = next(p))) return NULL;
        e = n;
    }
    return e;
}
static JNode *and_expr(Parser *p) { return logical(p, "and", JN_AND, negation); }
static JNode *or_expr(Parser *p) { return logical(p, "or", JN_OR, and_expr); }

static JNode *if_expr(Parser *p) {
    JNode *a = or_expr(p);
    if (!a || !is_name(p, 0, "if")) return a;
    size_t pos = here(p);
    p->cur++;
    JNode *test = or_expr(p);
    if (!test) return NULL;
    if (!is_name(p, 0, "else")) {
        JNode *s = node(p, JN_SELECT, pos);
        s->a = a;
        s->b = test;
        return s;
    }
    p->cur++;
    JNode *t = node(p, JN_TERNARY, pos);
    t->a = test;
    t->b = a;
    if (!(t->c = if_expr(p))) return NULL;
    return t;
}

static JNode *parse_expression(Parser *p) {
    if (!enter(p)) return NULL;
    JNode *e = if_expr(p);
    p->depth--;
    return e;
}

static JNode *parse_primary(Parser *p) {
    const Tok *t = peek(p, 0);
    if (!t) { fail_at(p, p->t->len, "unexpected end of the template: an expression expected"); return NULL; }
    p->cur++;
    switch (t->type) {
    case T_NUM: {
        char buf[64];
        if (t->v.n >= sizeof buf) { fail_at(p, t->pos, "number literal too long"); return NULL; }
        memcpy(buf, t->v.p, t->v.n);
        buf[t->v.n] = 0;
        if (memchr(buf, '.', t->v.n)) {
            JNode *n = node(p, JN_FLOAT, t->pos);
            n->f = strtod(buf, NULL);
            return n;
        }
        char *end;
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        if (errno) { fail_at(p, t->pos, "integer literal %s is out of range", buf); return NULL; }
        JNode *n = node(p, JN_INT, t->pos);
        n->i = v;
        return n;
    }
    case T_STR: {
        JNode *n = node(p, JN_STR, t->pos);
        n->str = t->v;
        if (is(p, T_STR)) {  // adjacent literals join
            JBuf b = {0};
            jb_put(&b, t->v.p, t->v.n);
            while (is(p, T_STR)) { jb_put(&b, peek(p, 0)->v.p, peek(p, 0)->v.n); p->cur++; }
            n->str = (JStr){ja_dup(&p->t->arena, b.p, b.n), b.n};
            free(b.p);
        }
        return n;
    }
    case T_IDENT: {
        JNode *n = node(p, JN_IDENT, t->pos);
        n->str = t->v;
        return n;
    }
    case T_LPAREN: {
        JNode *e = sequence(p, false);
        if (!e || expect(p, T_RPAREN, "')'")) return NULL;
        return e;
    }
    case T_LBRACKET:
    case T_LBRACE: {
        bool list = t->type == T_LBRACKET;
        JNode *n = node(p, list ? JN_LIST : JN_DICT, t->pos);
        if (!enter(p)) return NULL;
        while (!is(p, list ? T_RBRACKET : T_RBRACE)) {
            if (p->cur >= p->n) { expect(p, list ? T_RBRACKET : T_RBRACE, list ? "']'" : "'}'"); return NULL; }
            JNode *e = parse_expression(p);
            if (!e) return NULL;
            add(p, &n->args, e);
            if (!list) {
                if (expect(p, T_COLON, "':' between a key and its value") || !(e = parse_expression(p))) return NULL;
                add(p, &n->args, e);
            }
            if (is(p, T_COMMA)) p->cur++;
        }
        p->depth--;
        p->cur++;
        return n;
    }
    default:
        fail_at(p, t->pos, "unexpected %s", TOK_NAMES[t->type]);
        return NULL;
    }
}

// ---- statements ----

static const char *const END_IF[] = {"elif", "else", "endif", NULL}, *const ENDIF[] = {"endif", NULL};
static const char *const END_FOR[] = {"endfor", "else", NULL}, *const ENDFOR[] = {"endfor", NULL};
static const char *const ENDSET[] = {"endset", NULL}, *const ENDMACRO[] = {"endmacro", NULL};
static const char *const ENDCALL[] = {"endcall", NULL}, *const ENDFILTER[] = {"endfilter", NULL};

// "{% end... %}"
static int close_tag(Parser *p, const char *name) {
    if (expect(p, T_OPEN_STMT, "'{%'") || expect_name(p, name) || expect(p, T_CLOSE_STMT, "'%}'")) return -1;
    return 0;
}

// After "{% if": test %} body [elif ... | else ...]; the "{% endif %}" is left for the caller.
static JNode *parse_if(Parser *p, size_t pos) {
    JNode *n = node(p, JN_IF, pos);
    if (!(n->a = parse_expression(p)) || expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->body, END_IF, pos, "endif")) return NULL;
    if (is_name(p, 1, "elif")) {
        size_t at = here(p);
        p->cur += 2;
        if (!enter(p)) return NULL;
        JNode *e = parse_if(p, at);
        p->depth--;
        if (!e) return NULL;
        add(p, &n->alt, e);
    } else if (is_name(p, 1, "else")) {
        p->cur += 2;
        if (expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->alt, ENDIF, pos, "endif")) return NULL;
    }
    return n;
}

static void find_special(const JNode *n, unsigned *bits) {
    if (!n) return;
    if (n->kind == JN_IDENT) {
        if (jstr_eq(n->str, "caller")) *bits |= JS_CALLER;
        else if (jstr_eq(n->str, "kwargs")) *bits |= JS_KWARGS;
        else if (jstr_eq(n->str, "varargs")) *bits |= JS_VARARGS;
    }
    find_special(n->a, bits);
    find_special(n->b, bits);
    find_special(n->c, bits);
    const JNodes *lists[] = {&n->body, &n->alt, &n->args};
    for (int l = 0; l < 3; l++)
        for (int i = 0; i < lists[l]->n; i++) find_special(lists[l]->v[i], bits);
}

// The special names (caller, kwargs, varargs) a body reads that its parameters do not declare.
static unsigned special_names(const JNodes *params, const JNodes *body) {
    unsigned bits = 0;
    for (int i = 0; i < body->n; i++) find_special(body->v[i], &bits);
    for (int i = 0; i < params->n; i++) {
        unsigned own = 0;
        JNode id = {.kind = JN_IDENT, .str = params->v[i]->str};
        find_special(&id, &own);
        bits &= ~own;
        if (params->v[i]->kind == JN_KWARG) find_special(params->v[i]->a, &bits);
    }
    return bits;
}

static JNode *statement(Parser *p) {
    size_t pos = here(p);
    p->cur++;  // {%
    const Tok *t = peek(p, 0);
    if (!t || t->type != T_IDENT) { fail_at(p, t ? t->pos : p->t->len, "a statement name expected after '{%%'"); return NULL; }
    p->cur++;
    JStr name = t->v;
    JNode *n = NULL;
    if (jstr_eq(name, "set")) {
        n = node(p, JN_SET, pos);
        if (!(n->a = sequence(p, false))) return NULL;
        if (is(p, T_EQUALS)) {
            p->cur++;
            if (!(n->b = sequence(p, false))) return NULL;
        } else if (expect(p, T_CLOSE_STMT, "'=' or '%}'") || parse_block(p, &n->body, ENDSET, pos, "endset") ||
                   expect(p, T_OPEN_STMT, "'{%'") || expect_name(p, "endset"))
            return NULL;
        if (expect(p, T_CLOSE_STMT, "'%}'")) return NULL;
    } else if (jstr_eq(name, "if")) {
        if (!(n = parse_if(p, pos)) || close_tag(p, "endif")) return NULL;
    } else if (jstr_eq(name, "for")) {
        n = node(p, JN_FOR, pos);
        if (!(n->a = sequence(p, true))) return NULL;
        if (n->a->kind != JN_IDENT && n->a->kind != JN_TUPLE) { fail_at(p, n->a->pos, "a name or names expected after 'for'"); return NULL; }
        if (expect_name(p, "in") || !(n->b = parse_expression(p))) return NULL;
        if (n->b->kind == JN_SELECT) { n->c = n->b->b; n->b = n->b->a; }
        if (expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->body, END_FOR, pos, "endfor")) return NULL;
        if (is_name(p, 1, "else")) {
            p->cur += 2;
            if (expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->alt, ENDFOR, pos, "endfor")) return NULL;
        }
        if (close_tag(p, "endfor")) return NULL;
    } else if (jstr_eq(name, "macro")) {
        n = node(p, JN_MACRO, pos);
        JNode *id = parse_primary(p);
        if (!id) return NULL;
        if (id->kind != JN_IDENT) { fail_at(p, id->pos, "a macro name expected"); return NULL; }
        n->str = id->str;
        if (parse_args(p, &n->args, true) || expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->body, ENDMACRO, pos, "endmacro") ||
            close_tag(p, "endmacro"))
            return NULL;
        n->special = special_names(&n->args, &n->body);
    } else if (jstr_eq(name, "call")) {
        n = node(p, JN_CALL_BLOCK, pos);
        if (is(p, T_LPAREN) && parse_args(p, &n->args, true)) return NULL;
        size_t at = here(p);
        JNode *callee = parse_primary(p);
        if (!callee) return NULL;
        if (callee->kind != JN_IDENT) { fail_at(p, at, "a macro name expected after 'call'"); return NULL; }
        n->a = node(p, JN_CALL, at);
        n->a->a = callee;
        if (parse_args(p, &n->a->args, false) || expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->body, ENDCALL, pos, "endcall") ||
            close_tag(p, "endcall"))
            return NULL;
        n->special = special_names(&n->args, &n->body);
    } else if (jstr_eq(name, "filter")) {
        n = node(p, JN_FILTER_BLOCK, pos);
        if (!(n->a = filter_call(p)) || expect(p, T_CLOSE_STMT, "'%}'") || parse_block(p, &n->body, ENDFILTER, pos, "endfilter") ||
            close_tag(p, "endfilter"))
            return NULL;
    } else if (jstr_eq(name, "break") || jstr_eq(name, "continue")) {
        n = node(p, jstr_eq(name, "break") ? JN_BREAK : JN_CONTINUE, pos);
        if (expect(p, T_CLOSE_STMT, "'%}'")) return NULL;
    } else {
        fail_at(p, t->pos, "unknown or unsupported statement '%.*s'", (int)name.n, name.p);
        return NULL;
    }
    return n;
}

static int parse_any(Parser *p, JNodes *into) {
    const Tok *t = peek(p, 0);
    if (!enter(p)) return -1;
    JNode *n = NULL;
    switch (t->type) {
    case T_COMMENT: p->cur++; p->depth--; return 0;
    case T_TEXT:
        n = node(p, JN_TEXT, t->pos);
        n->str = t->v;
        p->cur++;
        break;
    case T_OPEN_STMT: n = statement(p); break;
    case T_OPEN_EXPR:
        p->cur++;
        n = node(p, JN_OUTPUT, t->pos);
        if (!(n->a = parse_expression(p)) || expect(p, T_CLOSE_EXPR, "'}}'")) n = NULL;
        break;
    default: fail_at(p, t->pos, "unexpected %s", TOK_NAMES[t->type]);
    }
    p->depth--;
    if (!n) return -1;
    add(p, into, n);
    return 0;
}

JinjaTemplate *jinja_parse(const char *text, size_t len, const char *source) {
    JinjaTemplate *t = xcalloc(1, sizeof *t);
    t->source = xstrdup(source);
    t->text = xmalloc(len + 1);
    if (len) memcpy(t->text, text, len);
    t->text[len] = 0;
    t->len = len;
    Parser p = {.t = t, .src = preprocess(text, len)};
    int rc = lex(&p);
    while (!rc && p.cur < p.n) rc = parse_any(&p, &t->body);
    src_free(&p.src);
    free(p.tok);
    if (rc || p.failed) {
        peft_fail("%s", p.err);
        jinja_free(t);
        return NULL;
    }
    return t;
}

void jinja_free(JinjaTemplate *t) {
    if (!t) return;
    ja_free(&t->arena);
    free(t->source);
    free(t->text);
    free(t);
}

const char *jinja_source(const JinjaTemplate *t) { return t->source; }
