// peft: the command-line interface. Each subcommand is a thin layer over the library.
#include "cli.h"
#include "method.h"
#include "version.h"
#include <stdio.h>
#include <string.h>

static const struct { const char *name; int (*run)(int, char **); const char *help; } commands[] = {
    {"check", cmd_check, "run HF PEFT reference cases: peft check DIR..."},
    {"info", cmd_info, "describe a model and adapter: peft info --model DIR [--adapter DIR]"},
    {"merge", cmd_merge, "merge an adapter into its base: peft merge --model DIR --adapter DIR --out DIR"},
    {"quantize", cmd_quantize, "quantize a model as bitsandbytes does: peft quantize --model DIR --to nf4|fp4|int8 --out DIR"},
    {"export", cmd_export, "to llama.cpp / Ollama: peft export --model DIR [--adapter DIR] [--merge] --to gguf --out FILE"},
    {"train", cmd_train, "fine-tune: peft train --model DIR --data PATH --method %s --out DIR"},
    {"generate", cmd_generate, "generate text: peft generate --model DIR [--adapter DIR] --prompt TEXT"},
    {"eval", cmd_eval, "loss and perplexity: peft eval --model DIR [--adapter DIR] --data PATH (--task classify: accuracy, F1, MCC)"},
    {"predict", cmd_predict, "an encoder's labels for a CSV / JSONL file: peft predict --model DIR [--adapter DIR] --data PATH"},
    {"init", cmd_init, "new random model folder: peft init --arch gpt2 --layers 4 --hidden 128 --out DIR"},
    {"estimate", cmd_estimate, "parameters, file size and training memory of a method: peft estimate --model NAME --method vera --r 256"},
    {"score", cmd_score, "corpus BLEU-4 and ROUGE-L: peft score --hyp FILE --refs FILE"},
    {"tokenize", cmd_tokenize, "print token ids: peft tokenize --model DIR TEXT"},
    {"data", cmd_data, "what training sees: peft data --model DIR --data PATH --show N"},
    {"serve", cmd_serve, "OpenAI-style HTTP server, many adapters batched together: peft serve --model DIR --adapters DIR"},
};

static void usage(FILE *f) {
    char titles[128], names[128];
    fprintf(f, "peft: parameter-efficient fine-tuning (%s) of GPT-2 and Llama-family models, and of BERT and RoBERTa classifiers\n\n"
               "usage: peft COMMAND [options]\n\n",
            method_names(titles, sizeof titles, ", ", ", ", LIST_TITLES));
    method_names(names, sizeof names, "|", "|", LIST_NAMES);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        fprintf(f, "  %-9s ", commands[i].name);
        fprintf(f, commands[i].help, names);  // a help's %s: the methods
        fputc('\n', f);
    }
    fprintf(f, "\n`peft COMMAND --help` lists a command's options; `peft --version` the commit it was built from.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("peft %s\n", peft_version);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "peft: unknown command \"%s\"\n\n", argv[1]);
    usage(stderr);
    return 2;
}
