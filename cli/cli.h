// cli.h: the subcommands and the small option parser they share.
#pragma once
#include <stdbool.h>

int cmd_check(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_estimate(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_predict(int argc, char **argv);


// Options are "--name value" or "--flag". A command declares what it accepts; anything else is an error.
typedef enum { OPT_STRING, OPT_INT, OPT_FLOAT, OPT_FLAG } OptKind;
typedef struct {
    const char *name;     // without the leading "--"
    OptKind kind;
    void *dest;           // const char **, int *, float *, bool *
    const char *help;
} Option;

// Parses argv[1..]; positional arguments are collected into positional (up to max_positional).
// Prints an error (or the help, for --help) and returns non-zero when the command should exit.
int parse_options(const char *command, int argc, char **argv, const Option *opts, int n_opts,
                  char **positional, int max_positional, int *n_positional);
// Prints "peft: error: <last library error>" and returns 1.
int fail_with_library_error(void);

// The data options train, eval and data share (--seq-len, --format, --prompt-column, ...): fills o[],
// returns how many. data_options_finish applies the flags to d after parsing (0, or -1 + error).
struct DataOptions;
typedef struct { bool no_cache; const char *format; } DataFlags;
int data_options(Option *o, struct DataOptions *d, DataFlags *f);
int data_options_finish(struct DataOptions *d, const DataFlags *f);
// --quantize nf4|fp4|int8 and --no-double-quant (train, generate, eval, estimate): fills o[], returns how many.
int quant_options(Option *o, const char **quantize, bool *no_double_quant);
// Their meaning: *type (QUANT_NONE without --quantize, as int: a QuantType) and *nested (double
// quantization, 4-bit only). Prints the error and returns 2 when they are invalid.
int quant_resolve(const char *command, const char *quantize, bool no_double_quant, int *type, bool *nested);

// --task, --label-column and --text-pair-column (train, eval): fills o[], returns how many. *task is
// "lm" (default) or "classify" (classify.h); task_is_classify checks it (prints the error: -1).
struct ClassifyColumns;
int classify_options(Option *o, const char **task, struct ClassifyColumns *cols);
int task_is_classify(const char *command, const char *task);
