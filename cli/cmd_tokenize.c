// peft tokenize --model DIR TEXT: the ids our tokenizer gives (to compare with other tools);
// --decode turns ids back into text.
#include "cli.h"
#include "tokenizer.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_tokenize(int argc, char **argv) {
    const char *model_dir = NULL;
    bool decode = false;
    Option opts[] = {
        {"model", OPT_STRING, &model_dir, "model folder with tokenizer.json or vocab.json + merges.txt"},
        {"decode", OPT_FLAG, &decode, "read ids (space separated) and print the text"},
    };
    char *pos[1];
    int npos = 0;
    if (parse_options("tokenize", argc, argv, opts, 2, pos, 1, &npos)) return 2;
    if (!model_dir || npos != 1) { fprintf(stderr, "usage: peft tokenize --model DIR [--decode] TEXT\n"); return 2; }
    Tokenizer *tok = tokenizer_load(model_dir);
    if (!tok) return fail_with_library_error();
    int rc = 0;
    if (decode) {
        int n = 0, cap = 16;
        int32_t *ids = xmalloc(sizeof(int32_t) * cap);
        for (char *s = pos[0], *end; *s; s = end) {
            long v = strtol(s, &end, 10);
            if (end == s) { if (*s == ' ' || *s == ',') { end = s + 1; continue; } fprintf(stderr, "peft tokenize: \"%s\" is not a list of ids\n", pos[0]); rc = 2; break; }
            if (n == cap) ids = xrealloc(ids, sizeof(int32_t) * (cap *= 2));
            ids[n++] = (int32_t)v;
        }
        if (!rc) {
            char *text = tokenizer_decode(tok, ids, n);
            printf("%s\n", text);
            free(text);
        }
        free(ids);
    } else {
        int32_t *ids = NULL;
        int n = 0;
        if (tokenizer_encode(tok, pos[0], strlen(pos[0]), &ids, &n)) rc = fail_with_library_error();
        for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        if (!rc) printf("\n");
        free(ids);
    }
    tokenizer_free(tok);
    return rc;
}
