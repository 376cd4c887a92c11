#include "cli.h"
#include "peft.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(const char *command, const Option *opts, int n) {
    printf("usage: peft %s [options]\n", command);
    for (int i = 0; i < n; i++) {
        const char *arg = opts[i].kind == OPT_FLAG ? "" : opts[i].kind == OPT_STRING ? " S" : opts[i].kind == OPT_INT ? " N" : " X";
        printf("  --%s%-*s %s\n", opts[i].name, (int)(18 - strlen(opts[i].name)), arg, opts[i].help);
    }
}

int parse_options(const char *command, int argc, char **argv, const Option *opts, int n_opts,
                  char **positional, int max_positional, int *n_positional) {
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { print_help(command, opts, n_opts); return 1; }
        if (strncmp(a, "--", 2) || !a[2]) {
            if (npos >= max_positional) { fprintf(stderr, "peft %s: unexpected argument \"%s\"\n", command, a); return 2; }
            positional[npos++] = argv[i];
            continue;
        }
        const Option *o = NULL;
        for (int k = 0; k < n_opts; k++) if (!strcmp(opts[k].name, a + 2)) o = &opts[k];
        if (!o) { fprintf(stderr, "peft %s: unknown option %s (see peft %s --help)\n", command, a, command); return 2; }
        if (o->kind == OPT_FLAG) { *(bool *)o->dest = true; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "peft %s: option %s needs a value\n", command, a); return 2; }
        const char *v = argv[++i];
        char *end;
        errno = 0;
        if (o->kind == OPT_STRING) *(const char **)o->dest = v;
        else if (o->kind == OPT_INT) {
            long x = strtol(v, &end, 10);
            if (*end || end == v || errno || x < -2147483647L || x > 2147483647L) { fprintf(stderr, "peft %s: %s needs an integer, got \"%s\"\n", command, a, v); return 2; }
            *(int *)o->dest = (int)x;
        } else {
            float x = strtof(v, &end);
            if (*end || end == v || !isfinite(x)) { fprintf(stderr, "peft %s: %s needs a number, got \"%s\"\n", command, a, v); return 2; }
            *(float *)o->dest = x;
        }
    }
    if (n_positional) *n_positional = npos;
    return 0;
}

int fail_with_library_error(void) {
    fprintf(stderr, "peft: error: %s\n", peft_last_error());
    return 1;
}

int quant_options(Option *o, const char **quantize, bool *no_double_quant) {
    o[0] = (Option){"quantize", OPT_STRING, quantize, "quantize the frozen base's linears as bitsandbytes does: nf4, fp4 (blocks of 64) or int8 (LLM.int8() rows)"};
    o[1] = (Option){"no-double-quant", OPT_FLAG, no_double_quant, "with --quantize nf4|fp4: keep the fp32 block statistics (default: quantized again to 8 bits)"};
    return 2;
}

int quant_resolve(const char *command, const char *quantize, bool no_double_quant, int *type, bool *nested) {
    QuantType t = QUANT_NONE;
    if (quantize && quant_type_parse(quantize, &t)) { fprintf(stderr, "peft %s: --quantize: %s\n", command, peft_last_error()); return 2; }
    if (no_double_quant && (t == QUANT_NONE || t == QUANT_INT8)) {
        fprintf(stderr, "peft %s: --no-double-quant goes with --quantize nf4 or fp4 (int8 has no block statistics)\n", command);
        return 2;
    }
    *type = t;
    *nested = t != QUANT_NONE && t != QUANT_INT8 && !no_double_quant;
    return 0;
}
