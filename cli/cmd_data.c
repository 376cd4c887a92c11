// peft data: look at what training sees.
//   peft data --model DIR --data PATH --show N   example N as the model gets it, the tokens that
//                                                carry a loss between « and »
//   peft data --template FILE --render FILE      render a Jinja template with each JSON object of a
//                                                JSONL file as its variables: one {"text"} or
//                                                {"error"} line per object (tests compare it with
//                                                @huggingface/jinja); with --model, the text's
//                                                token ids too ({"text", "ids"})
#include "cli.h"
#include "peft.h"
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

// tok (may be NULL): each text's token ids too ({"text", "ids"}), as peft tokenize gives them.
static int render_contexts(const char *template_path, const char *contexts_path, const Tokenizer *tok) {
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
            else if (jinja_render(t, (const cJSON *const[]){vars}, 1, &out, &n)) print_result("error", cJSON_CreateString(peft_last_error()));
            else if (!tok) { print_result("text", json_bytes_item(out, n)); free(out); }
            else {
                int32_t *ids = NULL;
                int k = 0;
                rc = tokenizer_encode(tok, out, n, &ids, &k);
                cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "ids");
                cJSON_AddItemToObject(o, "text", json_bytes_item(out, n));
                for (int i = 0; i < k; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
                char *line = cJSON_PrintUnformatted(o);
                if (!rc) puts(line);
                free(line);
                cJSON_Delete(o);
                free(ids);
                free(out);
            }
            cJSON_Delete(vars);
        }
        pos = end + 1;
    }
    free(ctx);
    free(parse_error);
    jinja_free(t);
    return rc ? fail_with_library_error() : 0;
}

// Sequence n of ds as text, the tokens that carry a loss (those a position before predicts) between
// « and ».
static void show(const Dataset *ds, const Tokenizer *tok, int n) {
    long a = ds->offset[n], z = ds->offset[n + 1], loss = 0;
    for (long i = a + 1; i < z; i++) loss += ds->labels[i] != -100;
    printf("sequence %d of %d: %ld tokens, %ld with a loss (between \u00ab and \u00bb)\n", n, ds->n_seq, z - a, loss);
    bool in = false;
    int strip = tokenizer_leading_strip(tok);
    for (long i = a; i < z; i++) {
        bool trained = i > a && ds->labels[i] != -100;
        if (trained != in) fputs(trained ? "\u00ab" : "\u00bb", stdout);
        in = trained;
        size_t len;
        const char *bytes = tokenizer_token_bytes(tok, ds->ids[i], &strip, &len);
        fwrite(bytes, 1, len, stdout);
    }
    if (in) fputs("\u00bb", stdout);
    putchar('\n');
}

static int show_example(const char *model_dir, const char *data_path, DataOptions *opt, int n) {
    ModelConfig mc;
    char *config = path_join(model_dir, "config.json");
    if (!opt->seq_len) opt->seq_len = !config_load(&mc, config) && mc.n_positions > 0 && mc.n_positions < 512 ? mc.n_positions : 512;
    peft_clear_error();
    free(config);
    Tokenizer *tok = tokenizer_load(model_dir);
    if (!tok) return fail_with_library_error();
    Dataset ds;
    int rc = dataset_load(&ds, data_path, tok, model_dir, opt);
    if (!rc && (n < 0 || n >= ds.n_seq)) rc = peft_fail("%s: no sequence %d: there are %d (0 to %d)", data_path, n, ds.n_seq, ds.n_seq - 1);
    if (!rc) show(&ds, tok, n);
    if (!rc) dataset_free(&ds);
    tokenizer_free(tok);
    return rc ? fail_with_library_error() : 0;
}

int cmd_data(int argc, char **argv) {
    const char *template_path = NULL, *render = NULL, *model_dir = NULL, *data_path = NULL;
    int show_n = -1;
    DataOptions d = {0};
    DataFlags flags = {0};
    Option opts[32] = {
        {"model", OPT_STRING, &model_dir, "model folder (its tokenizer and chat template)"},
        {"data", OPT_STRING, &data_path, "data file or folder, read as peft train reads it"},
        {"show", OPT_INT, &show_n, "print sequence N, the tokens with a loss between \u00ab and \u00bb"},
        {"template", OPT_STRING, &template_path, "a Jinja template file (with --render)"},
        {"render", OPT_STRING, &render, "JSONL file: render --template with each object's variables"},
    };
    int n = 5;
    n += data_options(opts + n, &d, &flags);
    int rc = parse_options("data", argc, argv, opts, n, NULL, 0, NULL);
    if (rc) return rc == 1 ? 0 : 2;
    if (template_path && render) {
        Tokenizer *tok = model_dir ? tokenizer_load(model_dir) : NULL;
        if (model_dir && !tok) return fail_with_library_error();
        rc = render_contexts(template_path, render, tok);
        tokenizer_free(tok);
        return rc;
    }
    if (model_dir && data_path && show_n >= 0) {
        if (data_options_finish(&d, &flags)) return fail_with_library_error();
        d.no_cache = true;  // it only looks
        return show_example(model_dir, data_path, &d, show_n);
    }
    fprintf(stderr, "usage: peft data --model DIR --data PATH --show N [data options], or peft data --template FILE --render CONTEXTS.jsonl\n");
    return 2;
}
