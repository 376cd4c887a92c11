#include "cli.h"
#include <stdio.h>
int cmd_train(int argc, char **argv) { fprintf(stderr, "peft train: not implemented yet\n"); return 1; }
int cmd_generate(int argc, char **argv) { fprintf(stderr, "peft generate: not implemented yet\n"); return 1; }
int cmd_eval(int argc, char **argv) { fprintf(stderr, "peft eval: not implemented yet\n"); return 1; }
