// peft predict: an encoder classifier's label for every record of a CSV / JSONL file, one a line
// (config.json's id2label name, else the class index; regression: the value), to --out or stdout.
#include "cli.h"
#include "peft.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_predict(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *data = NULL, *out = NULL, *logits = NULL;
    ClassifyColumns cols = {0};
    int batch = 8, seq_len = 0;
    Option opts[] = {
        {"model", OPT_STRING, &model_dir, "base model folder (BERT or RoBERTa with its classification head)"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder (task_type SEQ_CLS) to apply"},
        {"data", OPT_STRING, &data, ".csv or .jsonl file; a label column, if any, is not read"},
        {"out", OPT_STRING, &out, "write the labels here (default: standard output)"},
        {"logits", OPT_STRING, &logits, "also write the token ids (padded to one batch) and the logits to this .safetensors file"},
        {"text-column", OPT_STRING, &cols.text, "the text's column (default text, else sentence)"},
        {"text-pair-column", OPT_STRING, &cols.text_pair, "the second text's column, for text pairs (default: none)"},
        {"batch", OPT_INT, &batch, "sequences per batch (default 8)"},
        {"seq-len", OPT_INT, &seq_len, "longest sequence in tokens; longer texts are cut (default: min(512, model positions))"},
    };
    int rc = parse_options("predict", argc, argv, opts, sizeof opts / sizeof *opts, NULL, 0, NULL);
    if (rc) return rc == 1 ? 0 : 2;
    if (!model_dir || !data || batch <= 0) {
        fprintf(stderr, "usage: peft predict --model DIR [--adapter DIR] --data PATH [--out FILE] (see --help)\n");
        return 2;
    }
    float *pred = NULL;
    char **names = NULL;
    int n = 0;
    if (classify_run(model_dir, adapter_dir, data, &cols, seq_len, batch, false, NULL, &pred, &n, &names, logits)) return fail_with_library_error();
    char *text = xstrdup("");
    size_t len = 0;
    for (int i = 0; i < n; i++) {  // one label a line
        char *line = names ? xasprintf("%s\n", names[(int)pred[i]]) : xasprintf("%.9g\n", pred[i]);
        size_t k = strlen(line);
        text = xrealloc(text, len + k + 1);
        memcpy(text + len, line, k + 1);
        len += k;
        free(line);
    }
    rc = 0;
    if (out) rc = write_file_atomic(out, text, len) ? fail_with_library_error() : 0;
    else fwrite(text, 1, len, stdout);
    free(text);
    free(pred);
    classify_names_free(names);
    return rc;
}
