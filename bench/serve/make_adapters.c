// make_adapters: K distinct adapters from one trained one, for the serving benchmark.
//   make_adapters --model DIR --adapter SRC --out DIR --count K --prefix NAME [--scale X] [--seed N]
// Writes OUT/NAME-000 ... OUT/NAME-(K-1), each SRC's adapter with every trainable value v
// replaced by v * (1 + scale * u) + scale * std * g (u uniform in [-1, 1], g in [-1, 1], std
// the tensor's own spread), so the adapters differ but keep SRC's size and scale. VeRA adapters
// keep SRC's projections (same key), as adapters trained for one base with one key would.
#include "adapter.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double urand(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

int main(int argc, char **argv) {
    const char *model = NULL, *src = NULL, *out = NULL, *prefix = "adapter";
    int count = 0;
    double scale = 0.2;
    uint64_t seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--adapter")) src = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--count")) count = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefix")) prefix = argv[i + 1];
        else if (!strcmp(argv[i], "--scale")) scale = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else { fprintf(stderr, "make_adapters: unknown option %s\n", argv[i]); return 2; }
    }
    if (!model || !src || !out || count <= 0) {
        fprintf(stderr, "usage: make_adapters --model DIR --adapter SRC --out DIR --count K [--prefix NAME] [--scale X] [--seed N]\n");
        return 2;
    }
    Model *m = model_load(model);
    if (!m || adapters_load(m, src)) { fprintf(stderr, "make_adapters: %s\n", peft_last_error()); return 1; }
    AdapterSet *set = m->adapters;
    float **orig = xcalloc(set->n_params, sizeof(float *));
    double *spread = xcalloc(set->n_params, sizeof(double));
    for (int p = 0; p < set->n_params; p++) {
        Param *t = set->params[p];
        orig[p] = xmalloc(sizeof(float) * t->numel);
        memcpy(orig[p], t->w, sizeof(float) * t->numel);
        double ss = 0;
        for (long j = 0; j < t->numel; j++) ss += (double)t->w[j] * t->w[j];
        spread[p] = sqrt(ss / (double)t->numel);
    }
    if (make_dir(out)) { fprintf(stderr, "make_adapters: %s\n", peft_last_error()); return 1; }
    uint64_t st = seed;
    for (int k = 0; k < count; k++) {
        for (int p = 0; p < set->n_params; p++) {
            Param *t = set->params[p];
            for (long j = 0; j < t->numel; j++)
                t->w[j] = (float)(orig[p][j] * (1 + scale * (2 * urand(&st) - 1)) + scale * spread[p] * (2 * urand(&st) - 1));
        }
        char name[256];
        snprintf(name, sizeof name, "%s-%03d", prefix, k);
        char *dir = path_join(out, name);
        if (adapters_save(m, dir)) { fprintf(stderr, "make_adapters: %s\n", peft_last_error()); return 1; }
        free(dir);
    }
    printf("wrote %d %s adapters to %s (%s-000 .. %s-%03d)\n", count, method_get(set->cfg.type)->peft_type, out, prefix, prefix, count - 1);
    for (int p = 0; p < set->n_params; p++) free(orig[p]);
    free(orig);
    free(spread);
    model_free(m);
    return 0;
}
