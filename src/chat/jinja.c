// jinja.c: rendering a parsed template (jinja_parse.c) with @huggingface/jinja's semantics: its
// scopes (a for loop's body and a macro's body are scopes of their own, "if" is not), its operators,
// filters, tests and methods. Each render has its own arena, so one template renders on several
// threads at once.
#include "jinja_internal.h"
#include "util.h"
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

enum { OK = 0, ERR = -1, BREAK = 1, CONTINUE = 2 };

typedef struct Scope Scope;
struct Scope { Scope *parent; JDict vars; bool call_block; };

typedef enum { F_NAMESPACE, F_RAISE, F_RANGE, F_STRFTIME, F_MACRO, F_CALLER, F_METHOD } FKind;
typedef enum { M_UPPER, M_LOWER, M_STRIP, M_TITLE, M_CAPITALIZE, M_RSTRIP, M_LSTRIP, M_STARTSWITH, M_ENDSWITH, M_SPLIT,
               M_REPLACE, M_GET, M_ITEMS, M_KEYS, M_VALUES } Method;
struct JFunc { FKind kind; Method m; JVal self; const JNode *node; Scope *scope; };

static const char *const STRING_METHODS[] = {"upper", "lower", "strip", "title", "capitalize", "rstrip", "lstrip", "startswith",
                                             "endswith", "split", "replace", NULL};
static const char *const DICT_METHODS[] = {"get", "items", "keys", "values", NULL};

typedef struct {
    const JinjaTemplate *t;
    JArena ar;
    long steps;
    int depth;
    bool failed;
    char err[1536];
} In;

// Arguments of a call: the positional ones, and the keyword ones (NULL when none).
typedef struct { JVal *v; int n; JDict *kw; } Args;

static int fail(In *I, size_t pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(In *I, size_t pos, const char *fmt, ...) {
    if (I->failed) return ERR;
    va_list ap;
    va_start(ap, fmt);
    jinja_verror(I->t, pos, I->err, sizeof I->err, fmt, ap);
    va_end(ap);
    I->failed = true;
    return ERR;
}

static int step(In *I, size_t pos) {
    if (++I->steps > JINJA_MAX_STEPS) return fail(I, pos, "the template ran more than %ld steps", JINJA_MAX_STEPS);
    if (I->ar.used > (size_t)JINJA_MAX_BYTES) return fail(I, pos, "the template used more than %ld MiB", JINJA_MAX_BYTES >> 20);
    return OK;
}

static JStr str_copy(In *I, const char *p, size_t n) { return (JStr){ja_dup(&I->ar, p, n), n}; }
static JVal str_val(In *I, const char *p, size_t n) { return jv_str(str_copy(I, p, n)); }
static JVal buf_val(In *I, JBuf *b) { JVal v = str_val(I, b->p ? b->p : "", b->n); free(b->p); memset(b, 0, sizeof *b); return v; }

static Scope *scope_new(In *I, Scope *parent) {
    Scope *s = ja_alloc(&I->ar, sizeof *s);
    s->parent = parent;
    return s;
}
static void set_var(In *I, Scope *s, JStr name, JVal v) { jd_set(&I->ar, &s->vars, name, v); }
static JVal lookup(const Scope *s, JStr name) {
    JVal v;
    for (; s; s = s->parent)
        if (jd_get(&s->vars, name, &v)) return v;
    return jv_undef();
}

static JVal func(In *I, FKind kind, Method m, JVal self, const JNode *node, Scope *scope) {
    JFunc *f = ja_alloc(&I->ar, sizeof *f);
    *f = (JFunc){kind, m, self, node, scope};
    return (JVal){.t = JV_FUNC, .fn = f};
}

static bool is_number(JVal v) { return v.t == JV_INT || v.t == JV_FLOAT; }
static bool is_numeric_like(JVal v) { return is_number(v) || v.t == JV_BOOL; }
static double num(JVal v) { return v.t == JV_INT ? (double)v.i : v.t == JV_FLOAT ? v.f : v.t == JV_BOOL ? (double)v.b : NAN; }
static bool str_eq(JStr a, JStr b) { return a.n == b.n && !memcmp(a.p, b.p, a.n); }
static bool nullish(JVal v) { return v.t == JV_UNDEF || v.t == JV_NONE; }

// JavaScript's Number(string): whitespace around a decimal literal; "" is 0; anything else NaN.
static double js_to_number(JStr s) {
    s = js_trim(s, true, true);
    if (!s.n) return 0;
    char buf[128];
    if (s.n >= sizeof buf) return NAN;
    memcpy(buf, s.p, s.n);
    buf[s.n] = 0;
    if (!strcmp(buf, "Infinity") || !strcmp(buf, "+Infinity")) return INFINITY;
    if (!strcmp(buf, "-Infinity")) return -INFINITY;
    for (size_t i = 0; i < s.n; i++)
        if (!strchr("0123456789+-.eE", buf[i])) return NAN;
    char *end;
    double d = strtod(buf, &end);
    return *end ? NAN : d;
}

// JavaScript's == on the values (a list, dict or function equals only itself).
static bool loose_eq(JVal a, JVal b) {
    if (nullish(a) || nullish(b)) return nullish(a) && nullish(b);
    if (is_numeric_like(a) && is_numeric_like(b)) return num(a) == num(b);
    if (a.t == JV_STR && b.t == JV_STR) return str_eq(a.s, b.s);
    if (a.t == JV_STR && is_numeric_like(b)) return js_to_number(a.s) == num(b);
    if (b.t == JV_STR && is_numeric_like(a)) return js_to_number(b.s) == num(a);
    if (a.t != b.t) return false;
    return a.t == JV_LIST ? a.l == b.l : a.t == JV_FUNC ? a.fn == b.fn : a.d == b.d;
}

// JavaScript's === on the values.
static bool strict_eq(JVal a, JVal b) {
    if (nullish(a) || nullish(b)) return nullish(a) && nullish(b);
    if (is_number(a) && is_number(b)) return num(a) == num(b);
    if (a.t != b.t) return false;
    switch (a.t) {
    case JV_BOOL: return a.b == b.b;
    case JV_STR: return str_eq(a.s, b.s);
    case JV_LIST: return a.l == b.l;
    case JV_FUNC: return a.fn == b.fn;
    default: return a.d == b.d;
    }
}

// ---- Unicode case (JavaScript's toUpperCase / toLowerCase, one code point at a time) ----

static locale_t utf8_locale;
static pthread_once_t locale_once = PTHREAD_ONCE_INIT;
static void make_locale(void) { utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0); }

static void put_cp(JBuf *b, uint32_t cp) {
    char u[4];
    int n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 63)); n = 2; }
    else if (cp < 0x10000) { u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | (cp >> 6 & 63)); u[2] = (char)(0x80 | (cp & 63)); n = 3; }
    else { u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | (cp >> 12 & 63)); u[2] = (char)(0x80 | (cp >> 6 & 63)); u[3] = (char)(0x80 | (cp & 63)); n = 4; }
    jb_put(b, u, (size_t)n);
}

static uint32_t change_case(uint32_t cp, bool upper) {
    pthread_once(&locale_once, make_locale);
    if (cp < 0x80 || !utf8_locale) return cp < 0x80 ? (uint32_t)(upper ? (cp >= 'a' && cp <= 'z' ? cp - 32 : cp) : (cp >= 'A' && cp <= 'Z' ? cp + 32 : cp)) : cp;
    return (uint32_t)(upper ? towupper_l((wint_t)cp, utf8_locale) : towlower_l((wint_t)cp, utf8_locale));
}

// s with its code points from `from` on (up to `count`, -1: all) changed to upper or lower case.
static JVal case_str(In *I, JStr s, bool upper, size_t count) {
    JBuf b = {0};
    jb_put(&b, "", 0);
    size_t seen = 0;
    for (size_t i = 0; i < s.n; seen++) {
        int k;
        uint32_t cp = utf8_next(s.p + i, s.n - i, &k);
        bool valid = !(cp >= 0xDC80 && cp <= 0xDCFF && k == 1 && (unsigned char)s.p[i] >= 0x80);
        if (seen < count && valid) put_cp(&b, change_case(cp, upper));
        else jb_put(&b, s.p + i, (size_t)k);
        i += (size_t)k;
    }
    return buf_val(I, &b);
}

// /\b\w/g upper-cased: an ASCII letter after a character that is not [A-Za-z0-9_].
static JVal title_str(In *I, JStr s) {
    char *o = ja_dup(&I->ar, s.p, s.n);
    bool word = false;
    for (size_t i = 0; i < s.n; i++) {
        char c = o[i];
        bool w = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (w && !word && c >= 'a' && c <= 'z') o[i] = (char)(c - 32);
        word = w;
    }
    return jv_str((JStr){o, s.n});
}

// The code points of s as one string each.
static JVal chars(In *I, JStr s) {
    JVal l = jv_list(&I->ar, 0);
    for (size_t i = 0; i < s.n;) {
        int k;
        utf8_next(s.p + i, s.n - i, &k);
        jl_push(&I->ar, l.l, jv_str((JStr){s.p + i, (size_t)k}));
        i += (size_t)k;
    }
    return l;
}

// ---- text of values ----

static int print_to(In *I, JBuf *b, JVal v, size_t pos) {
    if (jv_print(b, v)) return fail(I, pos, "a %s cannot be written as text", jv_type_name(v));
    return OK;
}

static int js_string_to(In *I, JBuf *b, JVal v, size_t pos) {
    if (jv_js_string(b, v)) return fail(I, pos, "a %s cannot be turned into a string", jv_type_name(v));
    return OK;
}

// ---- rendering ----

static int eval(In *I, const JNode *n, Scope *s, JVal *out);
static int render(In *I, const JNodes *body, Scope *s, JBuf *out);
static int call_value(In *I, JVal fn, Args *a, Scope *site, size_t pos, JVal *out);

static int eval_args(In *I, const JNodes *args, Scope *s, Args *a) {
    a->v = ja_alloc(&I->ar, sizeof(JVal) * (size_t)(args->n ? args->n : 1));
    a->n = 0;
    a->kw = NULL;
    for (int i = 0; i < args->n; i++) {
        const JNode *x = args->v[i];
        if (x->kind != JN_KWARG) { if (eval(I, x, s, &a->v[a->n++])) return ERR; continue; }
    }
    for (int i = 0; i < args->n; i++) {
        const JNode *x = args->v[i];
        if (x->kind != JN_KWARG) continue;
        if (!a->kw) a->kw = jv_dict(&I->ar, JD_KWARGS).d;
        JVal v, old;
        if (jd_get(a->kw, x->str, &old)) return fail(I, x->pos, "keyword argument '%.*s' given twice", (int)x->str.n, x->str.p);
        if (eval(I, x->a, s, &v)) return ERR;
        jd_set(&I->ar, a->kw, x->str, v);
    }
    return OK;
}

// Positional argument i, else keyword `name`, else undefined.
static JVal arg(const Args *a, int i, const char *name) {
    JVal v;
    if (i >= 0 && i < a->n) return a->v[i];
    if (name && a->kw && jd_get(a->kw, (JStr){name, strlen(name)}, &v)) return v;
    return jv_undef();
}

static int no_kwargs(In *I, const Args *a, size_t pos, const char *what) {
    if (a->kw && a->kw->n) return fail(I, pos, "%s takes no keyword argument '%.*s'", what, (int)a->kw->k[0].n, a->kw->k[0].p);
    return OK;
}

// Binds a macro's (or caller's) parameters in scope: positional arguments, then keyword ones, then
// the defaults (evaluated in the macro's scope, after every name is bound).
static int bind_params(In *I, const JNode *def, const JNodes *params, unsigned special, Args *a, Scope *scope, size_t pos) {
    JDict *kw = jv_dict(&I->ar, JD_PLAIN).d;  // the macro's `kwargs`: a plain dict
    for (int i = 0; a->kw && i < a->kw->n; i++) jd_set(&I->ar, kw, a->kw->k[i], a->kw->v[i]);
    const JNode **pending = ja_alloc(&I->ar, sizeof(JNode *) * (size_t)(params->n + 1));
    int n_pending = 0;
    for (int i = 0; i < params->n; i++) {
        const JNode *p = params->v[i];
        JVal v = jv_undef();
        bool have = i < a->n;
        if (have) v = a->v[i];
        else {
            int at = -1;
            for (int k = 0; k < kw->n; k++) if (str_eq(kw->k[k], p->str)) at = k;
            if (at >= 0) {
                v = kw->v[at];
                have = true;
                memmove(kw->k + at, kw->k + at + 1, sizeof(JStr) * (size_t)(kw->n - at - 1));
                memmove(kw->v + at, kw->v + at + 1, sizeof(JVal) * (size_t)(kw->n - at - 1));
                kw->n--;
            }
        }
        if (!have && p->kind == JN_KWARG) pending[n_pending++] = p;
        set_var(I, scope, p->str, v);
    }
    const char *name = def->kind == JN_MACRO ? "macro" : "caller";
    if (special & JS_KWARGS) set_var(I, scope, JSTR("kwargs"), (JVal){.t = JV_DICT, .d = kw});
    else if (kw->n) return fail(I, pos, "%s '%.*s' takes no keyword argument '%.*s'", name, (int)def->str.n, def->str.p, (int)kw->k[0].n, kw->k[0].p);
    if (special & JS_VARARGS) {
        JVal rest = jv_list(&I->ar, 0);
        for (int i = params->n; i < a->n; i++) jl_push(&I->ar, rest.l, a->v[i]);
        set_var(I, scope, JSTR("varargs"), rest);
    } else if (a->n > params->n)
        return fail(I, pos, "%s '%.*s' takes at most %d argument%s", name, (int)def->str.n, def->str.p, params->n, params->n == 1 ? "" : "s");
    for (int i = 0; i < n_pending; i++) {
        JVal v;
        if (eval(I, pending[i]->a, scope, &v)) return ERR;
        set_var(I, scope, pending[i]->str, v);
    }
    return OK;
}

static int render_body(In *I, const JNodes *body, Scope *s, size_t pos, JVal *out) {
    JBuf b = {0};
    int rc = render(I, body, s, &b);
    if (rc == BREAK || rc == CONTINUE) rc = fail(I, pos, "'%s' outside a loop", rc == BREAK ? "break" : "continue");
    if (rc) { free(b.p); return ERR; }
    *out = buf_val(I, &b);
    return OK;
}

static int call_macro(In *I, const JFunc *f, Args *a, Scope *site, size_t pos, JVal *out) {
    if (++I->depth > JINJA_MAX_DEPTH) return fail(I, pos, "macros call each other more than %d deep", JINJA_MAX_DEPTH);
    Scope *parent = f->scope;
    const JNode *def = f->node;
    if (f->kind == F_MACRO && (def->special & JS_CALLER)) {
        parent = scope_new(I, f->scope);
        JVal caller = jv_undef();
        if (site && site->call_block) jd_get(&site->vars, JSTR("caller"), &caller);
        set_var(I, parent, JSTR("caller"), caller);
    }
    Scope *scope = scope_new(I, parent);
    int rc = bind_params(I, def, &def->args, def->special, a, scope, pos);
    if (!rc) rc = render_body(I, &def->body, scope, pos, out);
    I->depth--;
    return rc;
}

// ---- built-in functions and methods ----

static int fn_namespace(In *I, Args *a, size_t pos, JVal *out) {
    JVal ns = jv_dict(&I->ar, JD_PLAIN);
    ns.t = JV_NS;
    if (a->n > 1) return fail(I, pos, "namespace() takes at most 1 positional argument, got %d", a->n);
    if (a->n == 1) {
        JVal src = a->v[0];
        if (src.t == JV_DICT)
            for (int i = 0; i < src.d->n; i++) jd_set(&I->ar, ns.d, src.d->k[i], src.d->v[i]);
        else if (src.t == JV_LIST)
            for (int i = 0; i < src.l->n; i++) {
                JVal pair = src.l->v[i];
                if (pair.t == JV_STR) pair = chars(I, pair.s);
                if (pair.t != JV_LIST || pair.l->n != 2) return fail(I, pos, "namespace() expects a dict or a list of [key, value] pairs");
                if (pair.l->v[0].t != JV_STR) return fail(I, pos, "namespace keys must be strings");
                jd_set(&I->ar, ns.d, pair.l->v[0].s, pair.l->v[1]);
            }
        else return fail(I, pos, "a %s is not iterable (namespace)", jv_type_name(src));
    }
    for (int i = 0; a->kw && i < a->kw->n; i++) jd_set(&I->ar, ns.d, a->kw->k[i], a->kw->v[i]);
    *out = ns;
    return OK;
}

static int fn_range(In *I, Args *a, size_t pos, JVal *out) {
    if (no_kwargs(I, a, pos, "range()")) return ERR;
    if (a->n < 1 || a->n > 3) return fail(I, pos, "range() takes 1 to 3 arguments");
    for (int i = 0; i < a->n; i++)
        if (a->v[i].t != JV_INT) return fail(I, pos, "range() arguments must be integers, not %s", jv_type_name(a->v[i]));
    int64_t start = a->n > 1 ? a->v[0].i : 0, stop = a->n > 1 ? a->v[1].i : a->v[0].i, stp = a->n > 2 ? a->v[2].i : 1;
    if (stp == 0) return fail(I, pos, "range() step must not be zero");
    double count = stp > 0 ? ((double)stop - (double)start) / (double)stp : ((double)start - (double)stop) / (double)-stp;
    if (count > 1e7) return fail(I, pos, "range() of more than 10000000 numbers");
    *out = jv_list(&I->ar, 0);
    for (int64_t i = start; stp > 0 ? i < stop : i > stop; i += stp) {
        jl_push(&I->ar, out->l, jv_int(i));
        if ((stp > 0 && i > INT64_MAX - stp) || (stp < 0 && i < INT64_MIN - stp)) break;
    }
    return OK;
}

// strftime_now: @huggingface/jinja's directives (%Y %m %d %b %B %H %M %%; others stay as written),
// English month names, local time.
static int fn_strftime(In *I, Args *a, size_t pos, JVal *out) {
    if (a->n < 1 || a->v[0].t != JV_STR) return fail(I, pos, "strftime_now() takes a format string");
    static const char *months[] = {"January", "February", "March", "April", "May", "June", "July", "August", "September",
                                   "October", "November", "December"};
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    JStr f = a->v[0].s;
    JBuf b = {0};
    jb_put(&b, "", 0);
    char tmp[32];
    for (size_t i = 0; i < f.n; i++) {
        if (f.p[i] != '%' || i + 1 == f.n || !strchr("YmdbBHM%", f.p[i + 1]) || !f.p[i + 1]) { jb_put(&b, f.p + i, 1); continue; }
        char d = f.p[++i];
        switch (d) {
        case 'Y': snprintf(tmp, sizeof tmp, "%d", tm.tm_year + 1900); break;
        case 'm': snprintf(tmp, sizeof tmp, "%02d", tm.tm_mon + 1); break;
        case 'd': snprintf(tmp, sizeof tmp, "%02d", tm.tm_mday); break;
        case 'b': snprintf(tmp, sizeof tmp, "%.3s", months[tm.tm_mon]); break;
        case 'B': snprintf(tmp, sizeof tmp, "%s", months[tm.tm_mon]); break;
        case 'H': snprintf(tmp, sizeof tmp, "%02d", tm.tm_hour); break;
        case 'M': snprintf(tmp, sizeof tmp, "%02d", tm.tm_min); break;
        default: strcpy(tmp, "%");
        }
        jb_puts(&b, tmp);
    }
    *out = buf_val(I, &b);
    return OK;
}

static bool starts_at(JStr s, size_t at, JStr w) { return at + w.n <= s.n && !memcmp(s.p + at, w.p, w.n); }

// str.replace(old, new[, count]): an empty `old` inserts `new` between code points (and at both ends).
static int str_replace(In *I, JStr s, Args *a, size_t pos, JVal *out) {
    if (a->n < 2) return fail(I, pos, "replace() takes at least two arguments");
    JVal from = a->v[0], to = a->v[1], count = arg(a, 2, "count");
    if (from.t != JV_STR || to.t != JV_STR) return fail(I, pos, "replace() arguments must be strings");
    if (count.t == JV_UNDEF) count = jv_none();
    if (count.t != JV_INT && count.t != JV_NONE) return fail(I, pos, "replace() count must be an integer or none");
    int64_t left = count.t == JV_INT && count.i >= 0 ? count.i : INT64_MAX;
    if (count.t == JV_INT && count.i == 0) { *out = jv_str(s); return OK; }
    JBuf b = {0};
    jb_put(&b, "", 0);
    for (size_t i = 0; i <= s.n;) {
        if (left > 0 && starts_at(s, i, from.s)) {
            jb_put(&b, to.s.p, to.s.n);
            left--;
            if (from.s.n) { i += from.s.n; continue; }
        }
        if (i == s.n) break;
        int k;
        utf8_next(s.p + i, s.n - i, &k);
        jb_put(&b, s.p + i, (size_t)k);
        i += (size_t)k;
    }
    *out = buf_val(I, &b);
    return OK;
}

static int str_split(In *I, JStr s, Args *a, size_t pos, JVal *out) {
    JVal sep = arg(a, 0, NULL), maxv = arg(a, 1, NULL);
    if (sep.t == JV_UNDEF) sep = jv_none();
    if (sep.t != JV_STR && sep.t != JV_NONE) return fail(I, pos, "split() separator must be a string or none");
    if (maxv.t == JV_UNDEF) maxv = jv_int(-1);
    if (maxv.t != JV_INT) return fail(I, pos, "split() maxsplit must be an integer");
    int64_t max = maxv.i;
    *out = jv_list(&I->ar, 0);
    if (sep.t == JV_NONE) {
        JStr t = js_trim(s, true, false);
        for (size_t i = 0; i < t.n;) {
            size_t start = i;
            for (;;) {  // a run of non-space
                if (i >= t.n) break;
                int k;
                if (js_space(utf8_next(t.p + i, t.n - i, &k))) break;
                i += (size_t)k;
            }
            if (max >= 0 && out->l->n >= max) { jl_push(&I->ar, out->l, jv_str((JStr){t.p + start, t.n - start})); break; }
            jl_push(&I->ar, out->l, jv_str((JStr){t.p + start, i - start}));
            while (i < t.n) {
                int k;
                if (!js_space(utf8_next(t.p + i, t.n - i, &k))) break;
                i += (size_t)k;
            }
        }
        return OK;
    }
    if (!sep.s.n) return fail(I, pos, "split(): empty separator");
    size_t start = 0;
    for (size_t i = 0; i + sep.s.n <= s.n;) {
        if (max >= 0 && out->l->n >= max) break;
        if (starts_at(s, i, sep.s)) { jl_push(&I->ar, out->l, jv_str((JStr){s.p + start, i - start})); i += sep.s.n; start = i; }
        else i++;
    }
    jl_push(&I->ar, out->l, jv_str((JStr){s.p + start, s.n - start}));
    return OK;
}

static int str_affix(In *I, JStr s, Args *a, bool prefix, size_t pos, JVal *out) {
    const char *name = prefix ? "startswith()" : "endswith()";
    if (a->n < 1) return fail(I, pos, "%s takes an argument", name);
    JVal w = a->v[0];
    int n = w.t == JV_LIST ? w.l->n : 1;
    if (w.t != JV_STR && w.t != JV_LIST) return fail(I, pos, "%s takes a string or a tuple of strings", name);
    for (int i = 0; i < n; i++) {
        JVal x = w.t == JV_LIST ? w.l->v[i] : w;
        if (x.t != JV_STR) return fail(I, pos, "%s tuple items must be strings", name);
        if (x.s.n <= s.n && !memcmp(prefix ? s.p : s.p + s.n - x.s.n, x.s.p, x.s.n)) { *out = jv_bool(true); return OK; }
    }
    *out = jv_bool(false);
    return OK;
}

static JVal dict_items(In *I, const JDict *d, int what) {  // 0 items, 1 keys, 2 values
    JVal l = jv_list(&I->ar, d->n);
    for (int i = 0; i < d->n; i++) {
        if (what == 1) { jl_push(&I->ar, l.l, jv_str(d->k[i])); continue; }
        if (what == 2) { jl_push(&I->ar, l.l, d->v[i]); continue; }
        JVal pair = jv_list(&I->ar, 2);
        jl_push(&I->ar, pair.l, jv_str(d->k[i]));
        jl_push(&I->ar, pair.l, d->v[i]);
        jl_push(&I->ar, l.l, pair);
    }
    return l;
}

static int call_method(In *I, const JFunc *f, Args *a, size_t pos, JVal *out) {
    JStr s = f->self.s;
    switch (f->m) {
    case M_UPPER: case M_LOWER: *out = case_str(I, s, f->m == M_UPPER, (size_t)-1); return OK;
    case M_STRIP: *out = jv_str(js_trim(s, true, true)); return OK;
    case M_LSTRIP: *out = jv_str(js_trim(s, true, false)); return OK;
    case M_RSTRIP: *out = jv_str(js_trim(s, false, true)); return OK;
    case M_TITLE: *out = title_str(I, s); return OK;
    case M_CAPITALIZE: *out = case_str(I, s, true, 1); return OK;
    case M_STARTSWITH: case M_ENDSWITH: return str_affix(I, s, a, f->m == M_STARTSWITH, pos, out);
    case M_SPLIT: return str_split(I, s, a, pos, out);
    case M_REPLACE: return str_replace(I, s, a, pos, out);
    case M_GET: {
        JVal key = arg(a, 0, NULL);
        if (key.t != JV_STR) return fail(I, pos, "dict.get(): the key must be a string, not %s", jv_type_name(key));
        if (!jd_get(f->self.d, key.s, out)) {
            *out = arg(a, 1, NULL);
            if (out->t == JV_UNDEF) *out = jv_none();
        }
        return OK;
    }
    case M_ITEMS: *out = dict_items(I, f->self.d, 0); return OK;
    case M_KEYS: *out = dict_items(I, f->self.d, 1); return OK;
    case M_VALUES: *out = dict_items(I, f->self.d, 2); return OK;
    }
    return fail(I, pos, "unknown method");
}

static int call_value(In *I, JVal fn, Args *a, Scope *site, size_t pos, JVal *out) {
    if (fn.t != JV_FUNC) return fail(I, pos, "a %s cannot be called", jv_type_name(fn));
    const JFunc *f = fn.fn;
    switch (f->kind) {
    case F_NAMESPACE: return fn_namespace(I, a, pos, out);
    case F_RANGE: return fn_range(I, a, pos, out);
    case F_STRFTIME: return fn_strftime(I, a, pos, out);
    case F_RAISE: {
        JBuf b = {0};
        if (a->n && a->v[0].t != JV_UNDEF && a->v[0].t != JV_NONE) jv_print(&b, a->v[0]);
        fail(I, pos, "raise_exception: %.*s", (int)b.n, b.p ? b.p : "");
        free(b.p);
        return ERR;
    }
    case F_MACRO: case F_CALLER: return call_macro(I, f, a, site, pos, out);
    case F_METHOD: return call_method(I, f, a, pos, out);
    }
    return ERR;
}

// ---- members and slices ----

static int64_t slice_index(int64_t v, int64_t len, bool forward, bool is_start) {
    if (forward) return v < 0 ? (len + v > 0 ? len + v : 0) : (v < len ? v : len);
    (void)is_start;
    return v < 0 ? (len + v > -1 ? len + v : -1) : (v < len - 1 ? v : len - 1);
}

static int slice(In *I, JVal obj, const JNode *sl, Scope *s, JVal *out) {
    if (obj.t != JV_LIST && obj.t != JV_STR) return fail(I, sl->pos, "only lists and strings can be sliced, not a %s", jv_type_name(obj));
    JVal part[3];
    const JNode *nodes[3] = {sl->a, sl->b, sl->c};
    for (int i = 0; i < 3; i++) {
        part[i] = jv_undef();
        if (nodes[i] && eval(I, nodes[i], s, &part[i])) return ERR;
        if (part[i].t != JV_INT && part[i].t != JV_UNDEF) return fail(I, sl->pos, "slice indices must be integers");
    }
    JVal items = obj.t == JV_LIST ? obj : chars(I, obj.s);
    int64_t len = items.l->n, stp = part[2].t == JV_INT ? part[2].i : 1;
    bool fwd = stp >= 0;
    int64_t start = part[0].t == JV_INT ? slice_index(part[0].i, len, fwd, true) : fwd ? 0 : len - 1;
    int64_t stop = part[1].t == JV_INT ? (fwd ? slice_index(part[1].i, len, true, false) : (part[1].i < -1 ? (len + part[1].i > -1 ? len + part[1].i : -1) : (part[1].i < len - 1 ? part[1].i : len - 1)))
                                       : fwd ? len : -1;
    JVal res = jv_list(&I->ar, 0);
    int dir = stp > 0 ? 1 : stp < 0 ? -1 : 0;
    for (int64_t i = start; dir * i < dir * stop; i += stp) jl_push(&I->ar, res.l, items.l->v[i]);
    if (obj.t == JV_LIST) { *out = res; return OK; }
    JBuf b = {0};
    jb_put(&b, "", 0);
    for (int i = 0; i < res.l->n; i++) jb_put(&b, res.l->v[i].s.p, res.l->v[i].s.n);
    *out = buf_val(I, &b);
    return OK;
}

static bool method_of(const char *const *names, JStr name, Method base, Method *m) {
    for (int i = 0; names[i]; i++) if (jstr_eq(name, names[i])) { *m = (Method)(base + i); return true; }
    return false;
}

static int member(In *I, const JNode *n, Scope *s, JVal *out) {
    JVal obj, prop;
    if (eval(I, n->a, s, &obj)) return ERR;
    if (n->flag && n->b->kind == JN_SLICE) return slice(I, obj, n->b, s, out);
    if (n->flag) { if (eval(I, n->b, s, &prop)) return ERR; }
    else prop = n->b->kind == JN_INT ? jv_int(n->b->i) : jv_str(n->b->str);
    *out = jv_undef();
    Method m;
    if (obj.t == JV_DICT || obj.t == JV_NS) {
        if (prop.t != JV_STR) return fail(I, n->pos, "a %s's attributes are named by strings, not by a %s", jv_type_name(obj), jv_type_name(prop));
        if (!jd_get(obj.d, prop.s, out) && obj.t == JV_DICT && method_of(DICT_METHODS, prop.s, M_GET, &m))
            *out = func(I, F_METHOD, m, obj, NULL, NULL);
        return OK;
    }
    if (obj.t == JV_LIST || obj.t == JV_STR) {
        if (prop.t == JV_INT) {
            if (obj.t == JV_LIST) {
                int64_t i = prop.i < 0 ? prop.i + obj.l->n : prop.i;
                if (i >= 0 && i < obj.l->n) *out = obj.l->v[i];
            } else {
                JVal c = chars(I, obj.s);
                int64_t i = prop.i < 0 ? prop.i + c.l->n : prop.i;
                if (i >= 0 && i < c.l->n) *out = c.l->v[i];
            }
            return OK;
        }
        if (prop.t != JV_STR) return fail(I, n->pos, "a %s is indexed by integers, not by a %s", jv_type_name(obj), jv_type_name(prop));
        if (jstr_eq(prop.s, "length")) *out = jv_int(obj.t == JV_LIST ? obj.l->n : (int64_t)utf8_count(obj.s));
        else if (obj.t == JV_STR && method_of(STRING_METHODS, prop.s, M_UPPER, &m)) *out = func(I, F_METHOD, m, obj, NULL, NULL);
        return OK;
    }
    if (prop.t != JV_STR) return fail(I, n->pos, "a %s's attributes are named by strings, not by a %s", jv_type_name(obj), jv_type_name(prop));
    return OK;
}

// ---- operators ----

static int arith_int(In *I, JOp op, int64_t a, int64_t b, size_t pos, JVal *out) {
    int64_t r;
    bool over = false;
    switch (op) {
    case JOP_ADD: over = __builtin_add_overflow(a, b, &r); break;
    case JOP_SUB: over = __builtin_sub_overflow(a, b, &r); break;
    case JOP_MUL: over = __builtin_mul_overflow(a, b, &r); break;
    case JOP_FLOORDIV: case JOP_MOD:
        if (b == 0) return fail(I, pos, "division by zero");
        if (a == INT64_MIN && b == -1) { over = true; r = 0; break; }
        if (op == JOP_MOD) r = a % b;  // JavaScript's remainder: the sign of the dividend
        else { r = a / b; if ((a % b != 0) && ((a < 0) != (b < 0))) r--; }
        break;
    default: return fail(I, pos, "bad operator");
    }
    if (over) return fail(I, pos, "integer overflow");
    *out = jv_int(r);
    return OK;
}

static int binary(In *I, const JNode *n, JVal l, JVal r, JVal *out) {
    JOp op = n->op;
    size_t pos = n->pos;
    if (op == JOP_EQ || op == JOP_NE) { *out = jv_bool(loose_eq(l, r) == (op == JOP_EQ)); return OK; }
    if (is_number(l) && is_number(r) && op != JOP_CONCAT && op != JOP_POW) {
        bool fl = l.t == JV_FLOAT || r.t == JV_FLOAT;
        double a = num(l), b = num(r);
        switch (op) {
        case JOP_ADD: case JOP_SUB: case JOP_MUL: case JOP_FLOORDIV: case JOP_MOD:
            if (!fl) return arith_int(I, op, l.i, r.i, pos, out);
            *out = jv_float(op == JOP_ADD ? a + b : op == JOP_SUB ? a - b : op == JOP_MUL ? a * b : op == JOP_FLOORDIV ? floor(a / b) : fmod(a, b));
            return OK;
        case JOP_DIV: *out = jv_float(a / b); return OK;
        case JOP_LT: *out = jv_bool(a < b); return OK;
        case JOP_GT: *out = jv_bool(a > b); return OK;
        case JOP_LE: *out = jv_bool(a <= b); return OK;
        case JOP_GE: *out = jv_bool(a >= b); return OK;
        default: break;
        }
    } else if (l.t == JV_UNDEF || r.t == JV_UNDEF) {
        if (r.t == JV_UNDEF && (op == JOP_IN || op == JOP_NOT_IN)) { *out = jv_bool(op == JOP_NOT_IN); return OK; }
        if (op == JOP_CONCAT && l.t != JV_NONE && r.t != JV_NONE) {
            JBuf b = {0};
            jb_put(&b, "", 0);
            if ((l.t != JV_UNDEF && js_string_to(I, &b, l, pos)) || (r.t != JV_UNDEF && js_string_to(I, &b, r, pos))) { free(b.p); return ERR; }
            *out = buf_val(I, &b);
            return OK;
        }
        return fail(I, pos, "an undefined value in an operation (a misspelled name, or a missing key?)");
    } else if (l.t == JV_NONE || r.t == JV_NONE) {
        return fail(I, pos, "none in an operation");
    } else if (op == JOP_CONCAT) {
        JBuf b = {0};
        jb_put(&b, "", 0);
        if (js_string_to(I, &b, l, pos) || js_string_to(I, &b, r, pos)) { free(b.p); return ERR; }
        *out = buf_val(I, &b);
        return OK;
    } else if (op == JOP_POW && is_numeric_like(l) && is_numeric_like(r)) {
        double a = num(l), b = num(r);
        if (a == 0 && b < 0) return fail(I, pos, "0.0 cannot be raised to a negative power");
        double res = pow(a, b);
        if (!isfinite(res)) return fail(I, pos, "the power is not a finite number");
        if (l.t == JV_FLOAT || r.t == JV_FLOAT || b < 0) { *out = jv_float(res); return OK; }
        if (fabs(res) >= 9.2e18) return fail(I, pos, "integer overflow");
        *out = jv_int((int64_t)res);
        return OK;
    } else if (l.t == JV_LIST && r.t == JV_LIST) {
        if (op == JOP_ADD) {
            JVal c = jv_list(&I->ar, l.l->n + r.l->n);
            for (int i = 0; i < l.l->n; i++) jl_push(&I->ar, c.l, l.l->v[i]);
            for (int i = 0; i < r.l->n; i++) jl_push(&I->ar, c.l, r.l->v[i]);
            *out = c;
            return OK;
        }
    } else if (r.t == JV_LIST && (op == JOP_IN || op == JOP_NOT_IN)) {
        bool found = false;
        for (int i = 0; i < r.l->n && !found; i++) found = strict_eq(r.l->v[i], l);
        *out = jv_bool(found == (op == JOP_IN));
        return OK;
    }
    if ((l.t == JV_STR || r.t == JV_STR) && op == JOP_ADD) {
        JBuf b = {0};
        jb_put(&b, "", 0);
        if (js_string_to(I, &b, l, pos) || js_string_to(I, &b, r, pos)) { free(b.p); return ERR; }
        *out = buf_val(I, &b);
        return OK;
    }
    if (l.t == JV_STR && r.t == JV_STR && (op == JOP_IN || op == JOP_NOT_IN)) {
        bool found = l.s.n == 0 || (l.s.n <= r.s.n && memmem(r.s.p, r.s.n, l.s.p, l.s.n));
        *out = jv_bool(found == (op == JOP_IN));
        return OK;
    }
    if (l.t == JV_STR && r.t == JV_DICT && (op == JOP_IN || op == JOP_NOT_IN)) {
        JVal v;
        *out = jv_bool(jd_get(r.d, l.s, &v) == (op == JOP_IN));
        return OK;
    }
    static const char *names[] = {"+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", ">", "<=", ">=", "in", "not in"};
    return fail(I, pos, "'%s' is not defined between a %s and a %s", names[op], jv_type_name(l), jv_type_name(r));
}

// ---- tests ----

static int test(In *I, const JNode *n, JVal v, bool *res) {
    JStr t = n->str;
    if (jstr_eq(t, "boolean")) *res = v.t == JV_BOOL;
    else if (jstr_eq(t, "callable")) *res = v.t == JV_FUNC;
    else if (jstr_eq(t, "odd") || jstr_eq(t, "even")) {
        if (v.t != JV_INT) return fail(I, n->pos, "cannot test '%.*s' on a %s", (int)t.n, t.p, jv_type_name(v));
        *res = (v.i % 2 != 0) == jstr_eq(t, "odd");
    } else if (jstr_eq(t, "false")) *res = v.t == JV_BOOL && !v.b;
    else if (jstr_eq(t, "true")) *res = v.t == JV_BOOL && v.b;
    else if (jstr_eq(t, "none")) *res = v.t == JV_NONE;
    else if (jstr_eq(t, "string")) *res = v.t == JV_STR;
    else if (jstr_eq(t, "number")) *res = is_number(v);
    else if (jstr_eq(t, "integer")) *res = v.t == JV_INT;
    else if (jstr_eq(t, "iterable")) *res = (v.t == JV_LIST && !v.l->tuple) || v.t == JV_STR;
    else if (jstr_eq(t, "mapping")) *res = v.t == JV_DICT;
    else if (jstr_eq(t, "sequence")) *res = v.t == JV_LIST || v.t == JV_DICT || v.t == JV_STR;
    else if (jstr_eq(t, "lower") || jstr_eq(t, "upper")) {
        if (v.t != JV_STR) *res = false;
        else {
            JVal c = case_str(I, v.s, jstr_eq(t, "upper"), (size_t)-1);
            *res = str_eq(c.s, v.s);
        }
    } else if (jstr_eq(t, "defined")) *res = v.t != JV_UNDEF;
    else if (jstr_eq(t, "undefined")) *res = v.t == JV_UNDEF;
    else if (jstr_eq(t, "equalto") || jstr_eq(t, "eq")) *res = v.t == JV_UNDEF;  // (no argument: equal to undefined)
    else return fail(I, n->pos, "unknown test '%.*s'", (int)t.n, t.p);
    if (n->flag) *res = !*res;
    return OK;
}

// ---- filters ----

static int compare(In *I, JVal a, JVal b, bool case_sensitive, size_t pos, int *res) {
    if (nullish(a) || nullish(b)) {
        if (a.t == b.t) { *res = 0; return OK; }
        return fail(I, pos, "cannot compare a %s with a %s", jv_type_name(a), jv_type_name(b));
    }
    if (is_numeric_like(a) && is_numeric_like(b)) { double x = num(a), y = num(b); *res = x < y ? -1 : x > y; return OK; }
    if (a.t != b.t) return fail(I, pos, "cannot compare a %s with a %s", jv_type_name(a), jv_type_name(b));
    if (a.t != JV_STR) return fail(I, pos, "cannot compare %ss", jv_type_name(a));
    JStr x = a.s, y = b.s;
    if (!case_sensitive) { x = case_str(I, x, false, (size_t)-1).s; y = case_str(I, y, false, (size_t)-1).s; }
    int c = memcmp(x.p, y.p, x.n < y.n ? x.n : y.n);
    *res = c ? (c < 0 ? -1 : 1) : (x.n > y.n) - (x.n < y.n);
    return OK;
}

// item's value at a dotted attribute path (map and sort's attribute=).
static JVal attribute(JVal item, JStr path) {
    size_t i = 0;
    while (i <= path.n) {
        const char *dot = memchr(path.p + i, '.', path.n - i);
        size_t end = dot ? (size_t)(dot - path.p) : path.n;
        JStr part = {path.p + i, end - i};
        if (item.t == JV_DICT || item.t == JV_NS) { if (!jd_get(item.d, part, &item)) return jv_undef(); }
        else if (item.t == JV_LIST) {
            char buf[24];
            if (!part.n || part.n >= sizeof buf) return jv_undef();
            memcpy(buf, part.p, part.n);
            buf[part.n] = 0;
            char *e;
            long k = strtol(buf, &e, 10);
            if (e == buf || k < 0 || k >= item.l->n) return jv_undef();
            item = item.l->v[k];
        } else return jv_undef();
        if (!dot) break;
        i = end + 1;
    }
    return item;
}

static int sort_list(In *I, JVal l, bool reverse, bool case_sensitive, JVal attr, size_t pos, JVal *out) {
    JVal r = jv_list(&I->ar, l.l->n);
    for (int i = 0; i < l.l->n; i++) jl_push(&I->ar, r.l, l.l->v[i]);
    for (int i = 1; i < r.l->n; i++)  // insertion sort: stable, as Array#sort
        for (int j = i; j > 0; j--) {
            JVal a = r.l->v[j - 1], b = r.l->v[j];
            if (attr.t == JV_STR) { a = attribute(a, attr.s); b = attribute(b, attr.s); }
            int c = 0;
            if (compare(I, a, b, case_sensitive, pos, &c)) return ERR;
            if (reverse) c = -c;
            if (c <= 0) break;
            JVal t = r.l->v[j];
            r.l->v[j] = r.l->v[j - 1];
            r.l->v[j - 1] = t;
        }
    *out = r;
    return OK;
}

// JavaScript's parseInt(s, 10) / parseFloat(s): a leading number, else NaN.
static bool js_parse_number(JStr s, bool integer, double *v) {
    s = js_trim(s, true, false);
    char buf[400];
    size_t n = s.n < sizeof buf - 1 ? s.n : sizeof buf - 1;
    memcpy(buf, s.p, n);
    buf[n] = 0;
    size_t i = 0;
    if (buf[i] == '+' || buf[i] == '-') i++;
    if (integer) {
        size_t d = i;
        while (buf[d] >= '0' && buf[d] <= '9') d++;
        if (d == i) return false;
        buf[d] = 0;
        *v = strtod(buf, NULL);
        return true;
    }
    if (!strncmp(buf + i, "Infinity", 8)) { *v = buf[0] == '-' ? -INFINITY : INFINITY; return true; }
    if (!((buf[i] >= '0' && buf[i] <= '9') || (buf[i] == '.' && buf[i + 1] >= '0' && buf[i + 1] <= '9'))) return false;
    for (size_t k = i; buf[k]; k++)  // strtod would also read hex, inf, nan
        if (!strchr("0123456789.eE+-", buf[k])) { buf[k] = 0; break; }
    *v = strtod(buf, NULL);
    return true;
}

static JVal int_or_float(double v, bool integer) {
    if (!integer) return jv_float(v);
    return fabs(v) < 9.2e18 ? jv_int((int64_t)v) : jv_float(v);
}

static int join_list(In *I, JVal l, JStr sep, size_t pos, JVal *out) {
    JBuf b = {0};
    jb_put(&b, "", 0);
    for (int i = 0; i < l.l->n; i++) {
        if (i) jb_put(&b, sep.p, sep.n);
        JVal x = l.l->v[i];
        if (nullish(x)) continue;  // Array#join writes null and undefined as ""
        if (js_string_to(I, &b, x, pos)) { free(b.p); return ERR; }
    }
    *out = buf_val(I, &b);
    return OK;
}

static int indent(In *I, JStr s, JVal width, bool first, bool blank, size_t pos, JVal *out) {
    JBuf pad = {0}, b = {0};
    jb_put(&pad, "", 0);
    jb_put(&b, "", 0);
    if (width.t == JV_STR) jb_put(&pad, width.s.p, width.s.n);
    else if (width.t == JV_INT) for (int64_t i = 0; i < width.i && i < 4096; i++) jb_put(&pad, " ", 1);
    else { free(pad.p); free(b.p); return fail(I, pos, "indent(): width must be an integer or a string"); }
    size_t start = 0;
    for (int line = 0;; line++) {
        const char *nl = memchr(s.p + start, '\n', s.n - start);
        size_t end = nl ? (size_t)(nl - s.p) : s.n;
        if (line) jb_put(&b, "\n", 1);
        if (!((!first && line == 0) || (!blank && end == start))) jb_put(&b, pad.p, pad.n);
        jb_put(&b, s.p + start, end - start);
        if (!nl) break;
        start = end + 1;
    }
    free(pad.p);
    *out = buf_val(I, &b);
    return OK;
}

static int tojson(In *I, JVal v, const Args *a, size_t pos, JVal *out) {
    JsonStyle st = {.undefined_is_null = true};
    if (a) {
        JVal ind = arg(a, -1, "indent"), asc = arg(a, -1, "ensure_ascii"), sk = arg(a, -1, "sort_keys"), sep = arg(a, -1, "separators");
        if (ind.t != JV_INT && !nullish(ind)) return fail(I, pos, "tojson(): indent must be an integer");
        if ((asc.t != JV_BOOL && asc.t != JV_UNDEF) || (sk.t != JV_BOOL && sk.t != JV_UNDEF)) return fail(I, pos, "tojson(): ensure_ascii and sort_keys must be booleans");
        st.indent = ind.t == JV_INT ? (int)(ind.i > 64 ? 64 : ind.i) : 0;
        st.ensure_ascii = asc.t == JV_BOOL && asc.b;
        st.sort_keys = sk.t == JV_BOOL && sk.b;
        if (sep.t == JV_LIST) {
            if (sep.l->n != 2 || sep.l->v[0].t != JV_STR || sep.l->v[1].t != JV_STR) return fail(I, pos, "tojson(): separators must be two strings");
            st.item_sep = sep.l->v[0].s;
            st.key_sep = sep.l->v[1].s;
        } else if (!nullish(sep)) return fail(I, pos, "tojson(): separators must be two strings");
    }
    JBuf b = {0};
    jb_put(&b, "", 0);
    if (jv_json(&b, v, &st, 0)) { free(b.p); return fail(I, pos, "a %s cannot be written as JSON", jv_type_name(v)); }
    *out = buf_val(I, &b);
    return OK;
}

static int select_attr(In *I, const JNode *f, JVal l, Scope *s, bool select, JVal *out) {
    for (int i = 0; i < l.l->n; i++)
        if (l.l->v[i].t != JV_DICT && l.l->v[i].t != JV_NS) return fail(I, f->pos, "%.*s only applies to a list of dicts", (int)f->str.n, f->str.p);
    for (int i = 0; i < f->args.n; i++)
        if (f->args.v[i]->kind != JN_STR) return fail(I, f->pos, "the arguments of %.*s must be strings", (int)f->str.n, f->str.p);
    if (f->args.n < 1) return fail(I, f->pos, "%.*s needs an attribute name", (int)f->str.n, f->str.p);
    JStr attr = f->args.v[0]->str;
    JNode tn = {.kind = JN_TEST, .pos = f->pos};
    JVal cmp = f->args.n > 2 ? jv_str(f->args.v[2]->str) : jv_undef();
    *out = jv_list(&I->ar, 0);
    for (int i = 0; i < l.l->n; i++) {
        JVal a;
        bool r = false;
        if (jd_get(l.l->v[i].d, attr, &a)) {
            if (f->args.n < 2) r = jv_truthy(a);
            else {
                tn.str = f->args.v[1]->str;
                if (jstr_eq(tn.str, "equalto") || jstr_eq(tn.str, "eq")) r = strict_eq(a, cmp);
                else if (test(I, &tn, a, &r)) return ERR;
            }
        }
        if (r == select) jl_push(&I->ar, out->l, l.l->v[i]);
    }
    (void)s;
    return OK;
}

static int filter_plain(In *I, const JNode *f, JVal v, JVal *out) {
    JStr name = f->str;
    size_t pos = f->pos;
#define IS(x) jstr_eq(name, x)
    if (IS("safe")) { *out = v; return OK; }
    if (IS("tojson")) return tojson(I, v, NULL, pos, out);
    if (v.t == JV_LIST) {
        if (IS("list")) { *out = v; return OK; }
        if (IS("first") || IS("last")) {
            if (!v.l->n) return fail(I, pos, "%.*s of an empty list", (int)name.n, name.p);
            *out = v.l->v[IS("first") ? 0 : v.l->n - 1];
            return OK;
        }
        if (IS("length")) { *out = jv_int(v.l->n); return OK; }
        if (IS("reverse")) {
            *out = jv_list(&I->ar, v.l->n);
            for (int i = v.l->n - 1; i >= 0; i--) jl_push(&I->ar, out->l, v.l->v[i]);
            return OK;
        }
        if (IS("sort")) return sort_list(I, v, false, false, jv_undef(), pos, out);
        if (IS("join")) return join_list(I, v, JSTR(""), pos, out);
        if (IS("string")) { JsonStyle st = {0}; JBuf b = {0}; jb_put(&b, "", 0); if (jv_json(&b, v, &st, 0)) { free(b.p); return fail(I, pos, "a %s cannot be written as text", jv_type_name(v)); } *out = buf_val(I, &b); return OK; }
        if (IS("unique")) {
            *out = jv_list(&I->ar, 0);
            for (int i = 0; i < v.l->n; i++) {
                bool seen = false;
                for (int k = 0; k < out->l->n && !seen; k++) seen = strict_eq(out->l->v[k], v.l->v[i]);
                if (!seen) jl_push(&I->ar, out->l, v.l->v[i]);
            }
            return OK;
        }
    } else if (v.t == JV_STR) {
        if (IS("length")) { *out = jv_int((int64_t)utf8_count(v.s)); return OK; }
        if (IS("upper") || IS("lower")) { *out = case_str(I, v.s, IS("upper"), (size_t)-1); return OK; }
        if (IS("title")) { *out = title_str(I, v.s); return OK; }
        if (IS("capitalize")) { *out = case_str(I, v.s, true, 1); return OK; }
        if (IS("trim")) { *out = jv_str(js_trim(v.s, true, true)); return OK; }
        if (IS("indent")) return indent(I, v.s, jv_int(4), false, false, pos, out);
        if (IS("join") || IS("string")) { *out = v; return OK; }
        if (IS("int") || IS("float")) {
            double d;
            *out = js_parse_number(v.s, IS("int"), &d) ? int_or_float(d, IS("int")) : IS("int") ? jv_int(0) : jv_float(0);
            return OK;
        }
    } else if (is_number(v)) {
        if (IS("abs")) { *out = v.t == JV_INT ? (v.i == INT64_MIN ? jv_float(9.223372036854775808e18) : jv_int(v.i < 0 ? -v.i : v.i)) : jv_float(fabs(v.f)); return OK; }
        if (IS("int")) { *out = v.t == JV_INT ? v : int_or_float(trunc(v.f), true); return OK; }
        if (IS("float")) { *out = jv_float(num(v)); return OK; }
        if (IS("string")) { JBuf b = {0}; jb_put(&b, "", 0); jv_print(&b, v); *out = buf_val(I, &b); return OK; }
    } else if (v.t == JV_DICT) {
        if (IS("items")) { *out = dict_items(I, v.d, 0); return OK; }
        if (IS("length")) { *out = jv_int(v.d->n); return OK; }
        Method m;
        if (method_of(DICT_METHODS, name, M_GET, &m)) {
            JFunc fn = {F_METHOD, m, v, NULL, NULL};
            Args none = {NULL, 0, NULL};
            return call_method(I, &fn, &none, pos, out);
        }
    } else if (v.t == JV_BOOL) {
        if (IS("bool")) { *out = v; return OK; }
        if (IS("int")) { *out = jv_int(v.b); return OK; }
        if (IS("float")) { *out = jv_float(v.b); return OK; }
        if (IS("string")) { *out = jv_str(v.b ? JSTR("true") : JSTR("false")); return OK; }
    }
#undef IS
    return fail(I, pos, "filter '%.*s' does not apply to a %s", (int)name.n, name.p, jv_type_name(v));
}

static int filter_call(In *I, const JNode *f, JVal v, Scope *s, JVal *out) {
    JStr name = f->str;
    size_t pos = f->pos;
    Args a;
#define IS(x) jstr_eq(name, x)
    if (IS("selectattr") || IS("rejectattr")) {
        if (v.t != JV_LIST) return fail(I, pos, "filter '%.*s' does not apply to a %s", (int)name.n, name.p, jv_type_name(v));
        return select_attr(I, f, v, s, IS("selectattr"), out);
    }
    if (eval_args(I, &f->args, s, &a)) return ERR;
    if (IS("tojson")) return tojson(I, v, &a, pos, out);
    if (IS("join")) {
        if (v.t != JV_STR && v.t != JV_LIST) return fail(I, pos, "filter 'join' does not apply to a %s", jv_type_name(v));
        JVal sep = arg(&a, 0, "separator");
        if (sep.t == JV_UNDEF) sep = jv_str(JSTR(""));
        if (sep.t != JV_STR) return fail(I, pos, "join(): the separator must be a string");
        return join_list(I, v.t == JV_STR ? chars(I, v.s) : v, sep.s, pos, out);
    }
    if (IS("int") || IS("float")) {
        bool integer = IS("int");
        JVal dflt = arg(&a, 0, "default");
        if (dflt.t == JV_UNDEF) dflt = integer ? jv_int(0) : jv_float(0);
        double d;
        if (v.t == JV_STR) *out = js_parse_number(v.s, integer, &d) ? int_or_float(d, integer) : dflt;
        else if (is_number(v)) *out = integer ? (v.t == JV_INT ? v : int_or_float(trunc(v.f), true)) : jv_float(num(v));
        else if (v.t == JV_BOOL) *out = integer ? jv_int(v.b) : jv_float(v.b);
        else return fail(I, pos, "filter '%.*s' does not apply to a %s", (int)name.n, name.p, jv_type_name(v));
        return OK;
    }
    if (IS("default") || IS("d")) {
        JVal dflt = arg(&a, 0, NULL), boolean = arg(&a, 1, "boolean");
        if (dflt.t == JV_UNDEF) dflt = jv_str(JSTR(""));
        if (boolean.t == JV_UNDEF) boolean = jv_bool(false);
        if (boolean.t != JV_BOOL) return fail(I, pos, "default(): the boolean flag must be a boolean");
        *out = v.t == JV_UNDEF || (boolean.b && !jv_truthy(v)) ? dflt : v;
        return OK;
    }
    if (v.t == JV_LIST) {
        if (IS("sort")) {
            JVal rev = arg(&a, 0, "reverse"), cs = arg(&a, 1, "case_sensitive"), attr = arg(&a, 2, "attribute");
            if ((rev.t != JV_BOOL && rev.t != JV_UNDEF) || (cs.t != JV_BOOL && cs.t != JV_UNDEF)) return fail(I, pos, "sort(): reverse and case_sensitive must be booleans");
            if (attr.t == JV_INT) { char nb[40]; snprintf(nb, sizeof nb, "%lld", (long long)attr.i); attr = str_val(I, nb, strlen(nb)); }
            if (attr.t != JV_STR && !nullish(attr)) return fail(I, pos, "sort(): attribute must be a string or an integer");
            return sort_list(I, v, rev.t == JV_BOOL && rev.b, cs.t == JV_BOOL && cs.b, attr, pos, out);
        }
        if (IS("map")) {
            JVal attr = arg(&a, -1, "attribute"), dflt = arg(&a, -1, "default");
            if (attr.t == JV_UNDEF) return fail(I, pos, "map() is supported with attribute= only");
            if (attr.t != JV_STR) return fail(I, pos, "map(): attribute must be a string");
            *out = jv_list(&I->ar, v.l->n);
            for (int i = 0; i < v.l->n; i++) {
                if (v.l->v[i].t != JV_DICT && v.l->v[i].t != JV_NS) return fail(I, pos, "map(): the items must be dicts");
                JVal x = attribute(v.l->v[i], attr.s);
                jl_push(&I->ar, out->l, x.t == JV_UNDEF ? dflt : x);
            }
            return OK;
        }
    } else if (v.t == JV_STR) {
        if (IS("indent")) {
            JVal w = arg(&a, 0, "width"), first = arg(&a, 1, "first"), blank = arg(&a, 2, "blank");
            if (w.t == JV_UNDEF) w = jv_int(4);
            return indent(I, v.s, w, jv_truthy(first), jv_truthy(blank), pos, out);
        }
        if (IS("replace")) return str_replace(I, v.s, &a, pos, out);
    } else if (v.t == JV_DICT) {
        Method m;
        if (method_of(DICT_METHODS, name, M_GET, &m)) {
            JFunc fn = {F_METHOD, m, v, NULL, NULL};
            return call_method(I, &fn, &a, pos, out);
        }
    }
#undef IS
    return fail(I, pos, "filter '%.*s' does not apply to a %s", (int)name.n, name.p, jv_type_name(v));
}

static int apply_filter(In *I, const JNode *f, JVal v, Scope *s, JVal *out) {
    return f->flag ? filter_call(I, f, v, s, out) : filter_plain(I, f, v, out);
}

// ---- expressions ----

static int eval(In *I, const JNode *n, Scope *s, JVal *out) {
    if (step(I, n->pos)) return ERR;
    if (++I->depth > 4 * JINJA_MAX_DEPTH) return fail(I, n->pos, "expressions nest too deeply");
    int rc = OK;
    JVal l, r;
    switch (n->kind) {
    case JN_IDENT: *out = lookup(s, n->str); break;
    case JN_INT: *out = jv_int(n->i); break;
    case JN_FLOAT: *out = jv_float(n->f); break;
    case JN_STR: *out = jv_str(n->str); break;
    case JN_LIST: case JN_TUPLE:
        *out = jv_list(&I->ar, n->args.n);
        out->l->tuple = n->kind == JN_TUPLE;
        for (int i = 0; !rc && i < n->args.n; i++)
            if (!(rc = eval(I, n->args.v[i], s, &l))) jl_push(&I->ar, out->l, l);
        break;
    case JN_DICT:
        *out = jv_dict(&I->ar, JD_PLAIN);
        for (int i = 0; !rc && i + 1 < n->args.n; i += 2) {
            if ((rc = eval(I, n->args.v[i], s, &l))) break;
            if (l.t != JV_STR) { rc = fail(I, n->args.v[i]->pos, "dict keys must be strings, not %s", jv_type_name(l)); break; }
            if (!(rc = eval(I, n->args.v[i + 1], s, &r))) jd_set(&I->ar, out->d, l.s, r);
        }
        break;
    case JN_BINARY:
        if (!(rc = eval(I, n->a, s, &l)) && !(rc = eval(I, n->b, s, &r))) rc = binary(I, n, l, r, out);
        break;
    case JN_AND: case JN_OR:
        if ((rc = eval(I, n->a, s, &l))) break;
        if (jv_truthy(l) == (n->kind == JN_OR)) *out = l;
        else rc = eval(I, n->b, s, out);
        break;
    case JN_NOT:
        if (!(rc = eval(I, n->a, s, &l))) *out = jv_bool(!jv_truthy(l));
        break;
    case JN_NEG: case JN_POS:
        if ((rc = eval(I, n->a, s, &l))) break;
        if (!is_numeric_like(l)) { rc = fail(I, n->pos, "unary %c does not apply to a %s", n->kind == JN_NEG ? '-' : '+', jv_type_name(l)); break; }
        if (l.t == JV_FLOAT) *out = jv_float(n->kind == JN_NEG ? -l.f : l.f);
        else {
            int64_t v = l.t == JV_BOOL ? l.b : l.i;
            if (n->kind == JN_NEG && v == INT64_MIN) { rc = fail(I, n->pos, "integer overflow"); break; }
            *out = jv_int(n->kind == JN_NEG ? -v : v);
        }
        break;
    case JN_MEMBER: rc = member(I, n, s, out); break;
    case JN_CALL: {
        Args a;
        if ((rc = eval_args(I, &n->args, s, &a)) || (rc = eval(I, n->a, s, &l))) break;
        rc = call_value(I, l, &a, s, n->pos, out);
        break;
    }
    case JN_FILTER:
        if (!(rc = eval(I, n->a, s, &l))) rc = apply_filter(I, n, l, s, out);
        break;
    case JN_TEST: {
        bool b;
        if (!(rc = eval(I, n->a, s, &l)) && !(rc = test(I, n, l, &b))) *out = jv_bool(b);
        break;
    }
    case JN_TERNARY:
        if (!(rc = eval(I, n->a, s, &l))) rc = eval(I, jv_truthy(l) ? n->b : n->c, s, out);
        break;
    case JN_SELECT:
        if ((rc = eval(I, n->b, s, &l))) break;
        if (jv_truthy(l)) rc = eval(I, n->a, s, out);
        else *out = jv_undef();
        break;
    default: rc = fail(I, n->pos, "this cannot be evaluated as an expression");
    }
    I->depth--;
    return rc;
}

// ---- statements ----

static int assign(In *I, const JNode *target, JVal v, Scope *s) {
    if (target->kind == JN_IDENT) { set_var(I, s, target->str, v); return OK; }
    if (target->kind == JN_TUPLE) {
        if (v.t != JV_LIST) return fail(I, target->pos, "cannot unpack a %s", jv_type_name(v));
        if (v.l->n != target->args.n)
            return fail(I, target->pos, "too %s items to unpack (%d into %d names)", v.l->n < target->args.n ? "few" : "many", v.l->n, target->args.n);
        for (int i = 0; i < target->args.n; i++) {
            if (target->args.v[i]->kind != JN_IDENT) return fail(I, target->args.v[i]->pos, "only names can be unpacked into");
            set_var(I, s, target->args.v[i]->str, v.l->v[i]);
        }
        return OK;
    }
    if (target->kind == JN_MEMBER && !target->flag) {
        JVal obj;
        if (eval(I, target->a, s, &obj)) return ERR;
        if (obj.t != JV_NS) return fail(I, target->pos, "attributes can be set only on a namespace, not on a %s", jv_type_name(obj));
        if (target->b->kind != JN_IDENT) return fail(I, target->pos, "a namespace attribute must be a name");
        jd_set(&I->ar, obj.d, target->b->str, v);
        return OK;
    }
    return fail(I, target->pos, "cannot assign to this");
}

static JVal loop_value(In *I, JVal items, int i) {
    JVal d = jv_dict(&I->ar, JD_LOOP);
    d.d->cap = 9;  // its nine entries in one allocation
    d.d->k = ja_alloc(&I->ar, sizeof(JStr) * 9);
    d.d->v = ja_alloc(&I->ar, sizeof(JVal) * 9);
    int n = items.l->n;
    jd_set(&I->ar, d.d, JSTR("index"), jv_int(i + 1));
    jd_set(&I->ar, d.d, JSTR("index0"), jv_int(i));
    jd_set(&I->ar, d.d, JSTR("revindex"), jv_int(n - i));
    jd_set(&I->ar, d.d, JSTR("revindex0"), jv_int(n - i - 1));
    jd_set(&I->ar, d.d, JSTR("first"), jv_bool(i == 0));
    jd_set(&I->ar, d.d, JSTR("last"), jv_bool(i == n - 1));
    jd_set(&I->ar, d.d, JSTR("length"), jv_int(n));
    jd_set(&I->ar, d.d, JSTR("previtem"), i > 0 ? items.l->v[i - 1] : jv_undef());
    jd_set(&I->ar, d.d, JSTR("nextitem"), i < n - 1 ? items.l->v[i + 1] : jv_undef());
    return d;
}

static int render_for(In *I, const JNode *n, Scope *s, JBuf *out) {
    Scope *scope = scope_new(I, s);
    JVal it;
    if (eval(I, n->b, scope, &it)) return ERR;
    if (it.t == JV_DICT) it = dict_items(I, it.d, 1);
    if (it.t != JV_LIST) return fail(I, n->b->pos, "a for loop needs a list or a dict, not a %s", jv_type_name(it));
    JVal items = it;
    if (n->a->kind == JN_TUPLE || n->c) {
        items = jv_list(&I->ar, 0);
        for (int i = 0; i < it.l->n; i++) {
            JVal x = it.l->v[i];
            if (n->a->kind == JN_TUPLE) {
                if (x.t != JV_LIST) return fail(I, n->a->pos, "cannot unpack a %s", jv_type_name(x));
                if (x.l->n != n->a->args.n) return fail(I, n->a->pos, "too %s items to unpack", x.l->n < n->a->args.n ? "few" : "many");
            }
            if (n->c) {
                Scope *ts = scope_new(I, scope);
                JVal ok;
                if (assign(I, n->a, x, ts) || eval(I, n->c, ts, &ok)) return ERR;
                if (!jv_truthy(ok)) continue;
            }
            jl_push(&I->ar, items.l, x);
        }
    }
    bool none = true;
    for (int i = 0; i < items.l->n; i++) {
        if (step(I, n->pos)) return ERR;
        set_var(I, scope, JSTR("loop"), loop_value(I, items, i));
        if (assign(I, n->a, items.l->v[i], scope)) return ERR;
        int rc = render(I, &n->body, scope, out);
        if (rc == CONTINUE) continue;
        if (rc == BREAK) break;
        if (rc) return ERR;
        none = false;
    }
    return none ? render(I, &n->alt, scope, out) : OK;
}

static int render_stmt(In *I, const JNode *n, Scope *s, JBuf *out) {
    JVal v;
    switch (n->kind) {
    case JN_TEXT: jb_put(out, n->str.p, n->str.n); return OK;
    case JN_OUTPUT:
        if (eval(I, n->a, s, &v)) return ERR;
        if (nullish(v)) return OK;
        return print_to(I, out, v, n->a->pos);
    case JN_IF:
        if (eval(I, n->a, s, &v)) return ERR;
        return render(I, jv_truthy(v) ? &n->body : &n->alt, s, out);
    case JN_FOR: return render_for(I, n, s, out);
    case JN_SET:
        if (n->b) { if (eval(I, n->b, s, &v)) return ERR; }
        else if (render_body(I, &n->body, s, n->pos, &v)) return ERR;
        return assign(I, n->a, v, s);
    case JN_MACRO:
        set_var(I, s, n->str, func(I, F_MACRO, 0, jv_undef(), n, s));
        return OK;
    case JN_CALL_BLOCK: {
        JVal caller = func(I, F_CALLER, 0, jv_undef(), n, s), fn;
        Args a;
        if (eval_args(I, &n->a->args, s, &a) || eval(I, n->a->a, s, &fn)) return ERR;
        Scope *site = scope_new(I, s);
        site->call_block = true;
        set_var(I, site, JSTR("caller"), caller);
        if (call_value(I, fn, &a, site, n->pos, &v)) return ERR;
        return nullish(v) ? OK : print_to(I, out, v, n->pos);
    }
    case JN_FILTER_BLOCK:
        if (render_body(I, &n->body, s, n->pos, &v) || apply_filter(I, n->a, v, s, &v)) return ERR;
        return nullish(v) ? OK : print_to(I, out, v, n->pos);
    case JN_BREAK: return BREAK;
    case JN_CONTINUE: return CONTINUE;
    default: return fail(I, n->pos, "not a statement");
    }
}

static int render(In *I, const JNodes *body, Scope *s, JBuf *out) {
    for (int i = 0; i < body->n; i++) {
        if (step(I, body->v[i]->pos)) return ERR;
        int rc = render_stmt(I, body->v[i], s, out);
        if (rc) return rc;
        if (out->n > (size_t)JINJA_MAX_BYTES) return fail(I, body->v[i]->pos, "the output is longer than %ld MiB", JINJA_MAX_BYTES >> 20);
    }
    return OK;
}

int jinja_render(const JinjaTemplate *t, const cJSON *const *vars, int n_vars, char **out, size_t *out_len) {
    for (int k = 0; k < n_vars; k++)  // an array's items have no names to bind
        if (vars[k] && !cJSON_IsObject(vars[k])) return peft_fail("%s: the variables must be a JSON object", jinja_source(t));
    In I = {.t = t};
    Scope *global = scope_new(&I, NULL);
    static const struct { const char *name; int kind; } builtins[] = {
        {"namespace", F_NAMESPACE}, {"raise_exception", F_RAISE}, {"range", F_RANGE}, {"strftime_now", F_STRFTIME}};
    for (size_t i = 0; i < sizeof builtins / sizeof *builtins; i++)
        set_var(&I, global, (JStr){builtins[i].name, strlen(builtins[i].name)}, func(&I, (FKind)builtins[i].kind, 0, jv_undef(), NULL, NULL));
    const char *bools[] = {"true", "false", "True", "False"};
    for (int i = 0; i < 4; i++) set_var(&I, global, (JStr){bools[i], strlen(bools[i])}, jv_bool(i % 2 == 0));
    set_var(&I, global, JSTR("none"), jv_none());
    set_var(&I, global, JSTR("None"), jv_none());
    for (int k = 0; k < n_vars; k++)
        for (const cJSON *c = vars[k] ? vars[k]->child : NULL; c; c = c->next) {
            size_t n = strlen(c->string);
            set_var(&I, global, (JStr){ja_dup(&I.ar, c->string, n), n}, jv_from_json(&I.ar, c));
        }
    // The template's own scope: what it sets does not change the variables given.
    Scope *top = scope_new(&I, global);
    JBuf b = {0};
    jb_put(&b, "", 0);
    int rc = render(&I, &t->body, top, &b);
    if (rc == BREAK || rc == CONTINUE) rc = fail(&I, t->len, "'%s' outside a loop", rc == BREAK ? "break" : "continue");
    ja_free(&I.ar);
    if (rc) {
        free(b.p);
        return peft_fail("%s", I.err);
    }
    *out = b.p;
    *out_len = b.n;
    return 0;
}
