// peft eval: the loss and perplexity of a model (with an adapter, if given) on a dataset; with
// --task classify, an encoder's GLUE metrics (accuracy, F1, Matthews correlation; Pearson and
// Spearman for regression).
#include "cli.h"
#include "classify.h"
#include "train.h"
#include "util.h"
#include <stdio.h>


static void print_message(void *user, const char *text) { fprintf(stderr, "%s\n", text); }

int cmd_eval(int argc, char **argv) {
    EvalConfig c = {0};
    DataFlags data_flags = {0};
    bool no_double_quant = false;
    const char *quantize = NULL, *task = NULL;
    ClassifyColumns cols = {0};
    Option opts[32] = {
        {"model", OPT_STRING, &c.model_dir, "base model folder"},
        {"adapter", OPT_STRING, &c.adapter_dir, "PEFT adapter folder to apply"},
        {"data", OPT_STRING, &c.data_path, "data: text, .jsonl or .csv file, or a folder of them"},
        {"batch", OPT_INT, &c.batch, "sequences per batch (default 8)"},
        {"threads", OPT_INT, &c.threads, "CPU threads (default: all)"},
    };
    int n = 5;
    n += data_options(opts + n, &c.data, &data_flags);
    n += quant_options(opts + n, &quantize, &no_double_quant);
    n += classify_options(opts + n, &task, &cols);
    char *pos[1];
    int rc = parse_options("eval", argc, argv, opts, n, pos, 0, NULL);
    if (rc) return rc == 1 ? 0 : 2;
    int qt;
    if (quant_resolve("eval", quantize, no_double_quant, &qt, &c.double_quant)) return 2;
    c.quantize = qt;
    if (!c.model_dir || !c.data_path) {
        fprintf(stderr, "usage: peft eval --model DIR [--adapter DIR] --data PATH (see --help)\n");
        return 2;
    }
    if (data_options_finish(&c.data, &data_flags)) return fail_with_library_error();
    int classify = task_is_classify("eval", task);
    if (classify < 0) return 2;
    if (classify) {
        if (c.quantize) { fprintf(stderr, "peft eval: --task classify: --quantize is not implemented\n"); return 2; }
        cols.text = c.data.text_column;
        ClassifyMetrics s;
        int n_ex = 0;
        if (classify_run(c.model_dir, c.adapter_dir, c.data_path, &cols, c.data.seq_len, c.batch, true, &s, NULL, &n_ex, NULL, NULL))
            return fail_with_library_error();
        if (s.regression) printf("pearson %.4f  spearman %.4f  mse %.6g  (%d examples)\n", s.pearson, s.spearman, s.mse, s.n);
        else printf("accuracy %.4f  f1 %.4f  mcc %.4f  (%d examples)\n", s.accuracy, s.f1, s.mcc, s.n);
        return 0;
    }
    EvalInfo e;
    if (eval_run(&c, &e, print_message, NULL)) return fail_with_library_error();
    printf("loss %.4f  perplexity %.3f  (%ld tokens)\n", e.loss, e.ppl, e.n_tokens);
    return 0;
}
