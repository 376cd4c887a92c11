// peft tokenize --model DIR TEXT: the ids our tokenizer gives (to compare with other tools); TEXT "-"
// reads the text from stdin (any bytes, NUL included). --decode turns ids back into text, written
// byte for byte (NUL included).
#include "cli.h"
#include "peft.h"
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
    if (!model_dir || npos != 1) { fprintf(stderr, "usage: peft tokenize --model DIR [--decode] TEXT (- reads it from stdin)\n"); return 2; }
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
            size_t len;
            char *text = tokenizer_decode(tok, ids, n, &len);
            fwrite(text, 1, len, stdout);
            putchar('\n');
            free(text);
        }
        free(ids);
    } else {
        int32_t *ids = NULL;
        int n = 0;
        size_t len = strlen(pos[0]);
        char *text = strcmp(pos[0], "-") ? xstrdup(pos[0]) : read_file("/dev/stdin", &len);
        if (!text || tokenizer_encode(tok, text, len, &ids, &n)) rc = fail_with_library_error();
        free(text);
        for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        if (!rc) printf("\n");
        free(ids);
    }
    tokenizer_free(tok);
    return rc;
}
