// jinja.h: a Jinja interpreter for Hugging Face chat templates. It follows @huggingface/jinja (the
// renderer transformers.js uses; tests/jinja_reference.mjs checks ours against it byte for byte),
// with transformers' environment: trim_blocks and lstrip_blocks on, one trailing newline of the
// template dropped, {% generation %} markers removed.
//
// Covered: {{ }} and {% %} with whitespace control ({%- -%}, {{- -}}), comments; statements if /
// elif / else, for (loop.index, index0, revindex, first, last, length, previtem, nextitem; for-else;
// "for x in xs if cond"; tuple targets), break, continue, set (a name, a tuple, a namespace
// attribute, or a {% set %}...{% endset %} block), macro, call blocks (caller()), filter blocks;
// expressions: literals (strings, ints, floats, lists, tuples, dicts), and / or / not, comparisons,
// in / not in, is [not] TEST, + - * / // % **, ~ concatenation, a if b else c, subscripts, slices
// (x[::-1]), attributes, calls with keyword arguments; values none, bool, int, float, string, list,
// dict, namespace, macro; the globals namespace(), range(), raise_exception(), strftime_now();
// string methods strip, lstrip, rstrip, startswith, endswith, split, upper, lower, title,
// capitalize, replace; dict methods get, items, keys, values; the filters and tests
// @huggingface/jinja has (trim, length, upper, lower, tojson, default, join, first, last, string,
// int, float, list, capitalize, title, replace, indent, items, selectattr, rejectattr, map, sort,
// unique, reverse, abs, safe...). Anything else is an error naming the template and line:column.
//
// Where @huggingface/jinja's JavaScript differs from Python's Jinja, we follow it: booleans print
// as "true"/"false", "+" joins a string with a number, strings compare only with == and !=.
// Strings are counted in Unicode code points (JavaScript counts UTF-16 units: the two differ only
// for characters outside the Basic Multilingual Plane, in length and indexing).
//
// Strings carry their lengths: text, names and values may hold NUL bytes. A render is bounded
// (JINJA_MAX_STEPS evaluation steps, JINJA_MAX_BYTES of values and output, JINJA_MAX_DEPTH nesting)
// so that no template can run away with the time or memory of a server.
#pragma once
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

enum { JINJA_MAX_DEPTH = 200 };
#define JINJA_MAX_STEPS 20000000L
#define JINJA_MAX_BYTES (64L << 20)

typedef struct JinjaTemplate JinjaTemplate;

// Parse a template. source names it in errors ("source:line:col: ..."). NULL + peft_last_error().
JinjaTemplate *jinja_parse(const char *text, size_t len, const char *source);
void jinja_free(JinjaTemplate *t);
const char *jinja_source(const JinjaTemplate *t);

// Render with the variables of n JSON objects (a later one's win) whose string items carry their
// lengths (from json_parse_bytes or json_bytes_string; see json_bytes.h). Integral numbers become
// ints, as in JavaScript. *out is malloc'd, NUL-terminated and *out_len bytes long (NUL bytes may be
// inside). Returns 0, or -1 + peft_last_error() ("source:line:col: ..."; raise_exception's message
// included).
int jinja_render(const JinjaTemplate *t, const cJSON *const *vars, int n, char **out, size_t *out_len);
