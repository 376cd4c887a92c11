// jinja_internal.h: what the Jinja interpreter's files share (jinja.h is the interface):
//   jinja_parse.c  the template's preprocessing, tokens and syntax tree
//   jinja_value.c  values, their text and JSON forms, JavaScript's number and string rules
//   jinja.c        evaluation: statements, expressions, filters, tests, methods
#pragma once
#include "jinja.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// A string by its bytes (never NUL-terminated by contract).
typedef struct { const char *p; size_t n; } JStr;
#define JSTR(lit) ((JStr){lit, sizeof(lit) - 1})
bool jstr_eq(JStr a, const char *lit);

// Bump allocation, freed all at once. `used` counts the bytes handed out; allocations never fail
// (xmalloc) but a caller that set a limit checks `used` against it.
typedef struct JChunk JChunk;
typedef struct { JChunk *head; size_t used; } JArena;
void *ja_alloc(JArena *a, size_t n);  // zeroed
char *ja_dup(JArena *a, const char *p, size_t n);
void ja_free(JArena *a);

// ---- syntax tree ----

typedef enum {
    // statements
    JN_TEXT, JN_OUTPUT, JN_IF, JN_FOR, JN_SET, JN_MACRO, JN_CALL_BLOCK, JN_FILTER_BLOCK, JN_BREAK, JN_CONTINUE,
    // expressions
    JN_IDENT, JN_INT, JN_FLOAT, JN_STR, JN_LIST, JN_TUPLE, JN_DICT, JN_BINARY, JN_AND, JN_OR, JN_NOT, JN_NEG, JN_POS,
    JN_MEMBER, JN_SLICE, JN_CALL, JN_KWARG, JN_FILTER, JN_TEST, JN_TERNARY, JN_SELECT
} JNodeKind;

typedef enum { JOP_ADD, JOP_SUB, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW, JOP_CONCAT,
               JOP_EQ, JOP_NE, JOP_LT, JOP_GT, JOP_LE, JOP_GE, JOP_IN, JOP_NOT_IN } JOp;

// Which of the special names a macro's (or call block's) body reads.
enum { JS_CALLER = 1, JS_KWARGS = 2, JS_VARARGS = 4 };

typedef struct JNode JNode;
typedef struct { JNode **v; int n; } JNodes;
struct JNode {
    JNodeKind kind;
    JOp op;          // JN_BINARY
    bool flag;       // JN_MEMBER: computed (x[...]); JN_TEST: negated; JN_FILTER: called with (...)
    unsigned special;// JN_MACRO, JN_CALL_BLOCK: JS_* bits
    size_t pos;      // byte offset in the template's original text (for errors)
    JStr str;        // JN_TEXT, JN_STR, JN_IDENT: the text; JN_MACRO, JN_FILTER, JN_TEST, JN_KWARG: the name
    int64_t i;       // JN_INT
    double f;        // JN_FLOAT
    // JN_OUTPUT: a = the expression. JN_IF: a = test, body, alt. JN_FOR: a = target, b = iterable,
    // c = the "if" filter (or NULL), body, alt (the else block). JN_SET: a = target, b = value (NULL: body).
    // JN_MACRO: args (JN_IDENT or JN_KWARG with a default), body. JN_CALL_BLOCK: a = the call, args =
    // caller's parameters, body. JN_FILTER_BLOCK: a = the filter (a JN_FILTER without operand), body.
    // Unary: a. JN_BINARY / JN_AND / JN_OR: a, b. JN_MEMBER: a = object, b = property (JN_IDENT or
    // JN_INT unless computed). JN_SLICE: a, b, c = start, stop, step (each may be NULL).
    // JN_CALL: a = callee, args. JN_KWARG: a = value. JN_FILTER: a = operand, args. JN_TEST: a.
    // JN_TERNARY: a = condition, b = then, c = else. JN_SELECT: a = value, b = condition.
    // JN_LIST / JN_TUPLE: args = items. JN_DICT: args = key, value, key, value...
    JNode *a, *b, *c;
    JNodes body, alt, args;
};

struct JinjaTemplate {
    char *source;
    char *text;      // the original text (for line:column)
    size_t len;
    JArena arena;    // the nodes
    JNodes body;
};

// "source:line:col: message" for a byte offset of the template's original text, into buf.
void jinja_verror(const JinjaTemplate *t, size_t pos, char *buf, size_t cap, const char *fmt, va_list ap);

// ---- values (jinja_value.c) ----

typedef enum { JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_NS, JV_FUNC } JType;
// Dicts: a plain mapping, a for loop's `loop`, or the keyword arguments of a call.
typedef enum { JD_PLAIN, JD_LOOP, JD_KWARGS } JDictKind;

typedef struct JList JList;
typedef struct JDict JDict;
typedef struct JFunc JFunc;
typedef struct {
    JType t;
    union { bool b; int64_t i; double f; JStr s; JList *l; JDict *d; JFunc *fn; };
} JVal;
struct JList { int n, cap; JVal *v; bool tuple; };
struct JDict { int n, cap; JStr *k; JVal *v; JDictKind kind; };

// Values are made in the render's arena; lists and dicts are shared by reference (as in Jinja).
JVal jv_undef(void);
JVal jv_none(void);
JVal jv_bool(bool b);
JVal jv_int(int64_t i);
JVal jv_float(double f);
JVal jv_str(JStr s);
JVal jv_list(JArena *a, int cap);
JVal jv_dict(JArena *a, JDictKind kind);
void jl_push(JArena *a, JList *l, JVal v);
void jd_set(JArena *a, JDict *d, JStr key, JVal v);  // replaces an existing key's value in place
bool jd_get(const JDict *d, JStr key, JVal *out);
bool jv_is_list(JVal v);
bool jv_is_mapping(JVal v);       // JV_DICT (any kind): @huggingface/jinja's ObjectValue
bool jv_truthy(JVal v);
const char *jv_type_name(JVal v); // for messages: "string", "list", ...

// A growable byte buffer (malloc'd).
typedef struct { char *p; size_t n, cap; } JBuf;
void jb_put(JBuf *b, const char *s, size_t n);
void jb_puts(JBuf *b, const char *s);

// JavaScript's Number#toString (shortest round trip; exponent past 1e21 and below 1e-6).
void js_number(double x, char buf[40]);
// A value as the template prints it ({{ x }}): floats keep ".0", booleans "true"/"false", lists and
// dicts as JSON. -1 for values that have no text (functions, undefined inside a list...).
int jv_print(JBuf *b, JVal v);
// A value as JavaScript's String() gives it, for "~" and "+" with a string: 1.0 is "1", a list
// is its items' printed forms joined by ",", a dict "[object Map]". Not for none / undefined.
int jv_js_string(JBuf *b, JVal v);

typedef struct {
    int indent;              // <= 0: none
    bool ensure_ascii, sort_keys, undefined_is_null;
    JStr item_sep, key_sep;  // .p NULL: the defaults (", " and ": "; "," with an indent)
} JsonStyle;
// JSON text of v as @huggingface/jinja's toJSON writes it. -1 for values JSON cannot hold.
int jv_json(JBuf *b, JVal v, const JsonStyle *style, int depth);
// A JSON item (strings read with json_bytes) as a value.
JVal jv_from_json(JArena *a, const cJSON *x);

// ---- Unicode and JavaScript string rules ----

// The code point at s[0..n) and its length in bytes; an invalid byte is one unit (as itself).
uint32_t utf8_next(const char *s, size_t n, int *len);
size_t utf8_count(JStr s);                       // code points
bool js_space(uint32_t cp);                      // JavaScript's \s (trim's whitespace)
JStr js_trim(JStr s, bool left, bool right);
