// peft data: look at what training sees.
//   peft data --model DIR --data PATH --show N   example N as the model gets it, the tokens that
//                                                carry a loss between « and »
//   peft data --template FILE --render FILE      render a Jinja template with each JSON object of a
//                                                JSONL file as its variables: one {"text"} or
//                                                {"error"} line per object (tests compare it with
//                                                @huggingface/jinja)
#include "cli.h"
#include "jinja.h"
#include "json_bytes.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_result(const char *key, cJSON *value) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, key, value);
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
}

static int render_contexts(const char *template_path, const char *contexts_path) {
    size_t tlen, clen;
    char *text = read_file(template_path, &tlen);
    if (!text) return fail_with_library_error();
    JinjaTemplate *t = jinja_parse(text, tlen, template_path);
    free(text);
    char *parse_error = t ? NULL : xstrdup(peft_last_error());
    char *ctx = read_file(contexts_path, &clen);
    if (!ctx) { jinja_free(t); free(parse_error); return fail_with_library_error(); }
    int line = 0, rc = 0;
    for (size_t pos = 0; pos < clen && !rc;) {
        const char *nl = memchr(ctx + pos, '\n', clen - pos);
        size_t end = nl ? (size_t)(nl - ctx) : clen;
        line++;
        if (end > pos) {
            cJSON *vars = json_parse_bytes(ctx + pos, end - pos);
            char *out;
            size_t n;
            if (!vars || !cJSON_IsObject(vars)) rc = peft_fail("%s:%d: not a JSON object", contexts_path, line);
            else if (parse_error) print_result("error", cJSON_CreateString(parse_error));
            else if (jinja_render(t, vars, &out, &n)) print_result("error", cJSON_CreateString(peft_last_error()));
            else { print_result("text", json_bytes_item(out, n)); free(out); }
            cJSON_Delete(vars);
        }
        pos = end + 1;
    }
    free(ctx);
    free(parse_error);
    jinja_free(t);
    return rc ? fail_with_library_error() : 0;
}

int cmd_data(int argc, char **argv) {
    const char *template_path = NULL, *render = NULL;
    Option opts[] = {
        {"template", OPT_STRING, &template_path, "a Jinja template file (with --render)"},
        {"render", OPT_STRING, &render, "JSONL file: render --template with each object's variables"},
    };
    if (parse_options("data", argc, argv, opts, (int)(sizeof opts / sizeof *opts), NULL, 0, NULL)) return 2;
    if (template_path && render) return render_contexts(template_path, render);
    fprintf(stderr, "usage: peft data --template FILE --render CONTEXTS.jsonl\n");
    return 2;
}
