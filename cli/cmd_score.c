// peft score --hyp FILE --refs FILE [--json]: corpus BLEU-4 and ROUGE-L as e2e-metrics reports them.
//   --hyp   one hypothesis per line
//   --refs  blank-line-separated groups of references, one group per hypothesis line (a file without
//           blank lines: one reference per line), or a CSV/TSV with mr and ref columns, grouped by
//           consecutive equal mr (e2e's testset_w_refs.csv)
#include "cli.h"
#include "peft.h"
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

int cmd_score(int argc, char **argv) {
    const char *hyp_path = NULL, *refs_path = NULL;
    bool json = false;
    Option opts[] = {
        {"hyp", OPT_STRING, &hyp_path, "hypotheses, one per line"},
        {"refs", OPT_STRING, &refs_path, "references: blank-line-separated groups (one per hypothesis), or a CSV/TSV with mr,ref columns"},
        {"json", OPT_FLAG, &json, "print JSON"},
    };
    if (parse_options("score", argc, argv, opts, 3, NULL, 0, NULL)) return 2;
    if (!hyp_path || !refs_path) { fprintf(stderr, "peft score: --hyp FILE and --refs FILE are required\n"); return 2; }
    char **hyps;
    int n = metrics_read_lines(hyp_path, &hyps);
    if (n < 0) return fail_with_library_error();
    if (n == 0) { metrics_free_lines(hyps, 0); fprintf(stderr, "peft score: %s holds no hypotheses\n", hyp_path); return 1; }
    RefGroups g;
    if (metrics_read_refs(refs_path, n, &g)) { metrics_free_lines(hyps, n); return fail_with_library_error(); }
    MetricScores s;
    metrics_score(&s, hyps, n, g.refs, g.n_refs);
    int min_refs = g.n_refs[0], max_refs = g.n_refs[0];
    long total_refs = 0;
    for (int i = 0; i < g.n; i++) {
        if (g.n_refs[i] < min_refs) min_refs = g.n_refs[i];
        if (g.n_refs[i] > max_refs) max_refs = g.n_refs[i];
        total_refs += g.n_refs[i];
    }
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "segments", s.n);
        cJSON_AddNumberToObject(j, "references", (double)total_refs);
        cJSON_AddNumberToObject(j, "bleu", s.bleu);
        cJSON_AddItemToObject(j, "precisions", cJSON_CreateDoubleArray(s.precision, 4));
        cJSON_AddNumberToObject(j, "brevity_penalty", s.bp);
        cJSON_AddNumberToObject(j, "hyp_length", (double)s.hyp_len);
        cJSON_AddNumberToObject(j, "ref_length", (double)s.ref_len);
        cJSON_AddNumberToObject(j, "rouge_l", s.rouge_l);
        char *text = cJSON_Print(j);
        printf("%s\n", text);
        free(text);
        cJSON_Delete(j);
    } else {
        printf("segments  %d, %ld references (%d to %d each)\n", s.n, total_refs, min_refs, max_refs);
        printf("BLEU      %.2f  (precisions %.1f/%.1f/%.1f/%.1f, brevity penalty %.4f, hyp length %lld, ref length %lld)\n",
               100 * s.bleu, 100 * s.precision[0], 100 * s.precision[1], 100 * s.precision[2], 100 * s.precision[3], s.bp,
               (long long)s.hyp_len, (long long)s.ref_len);
        printf("ROUGE-L   %.2f\n", 100 * s.rouge_l);
    }
    ref_groups_free(&g);
    metrics_free_lines(hyps, n);
    return 0;
}
