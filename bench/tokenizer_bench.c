// tokenizer_bench.c: encoding speed of the tokenizer on one core.
//   tokenizer_bench TOKENIZER_DIR [TEXT_FILE...]
// TOKENIZER_DIR is loaded as tokenizer_load() does (e.g. ../shared/fixtures/hf-peft/tokenizer-gpt2);
// the text files (default: ../shared/data/e2e/*.csv) are concatenated and repeated to ~20 MB.
// Prints MB/s for: the first copy of the text on a fresh tokenizer (cold word cache), the whole
// 20 MB in one call, and the 20 MB line by line (as a data loader would call it).
#include "tokenizer.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TARGET_BYTES = 20 << 20 };

static char *read_texts(int n, char **paths, size_t *len) {
    size_t total = 0;
    char *all = xmalloc(1);
    for (int i = 0; i < n; i++) {
        size_t k;
        char *t = read_file(paths[i], &k);
        if (!t) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
        all = xrealloc(all, total + k + 1);
        memcpy(all + total, t, k);
        total += k;
        free(t);
    }
    *len = total;
    return all;
}

static char *repeat_to(const char *text, size_t len, size_t target, size_t *out_len) {
    size_t copies = (target + len - 1) / len, n = copies * len;
    char *big = xmalloc(n + 1);
    for (size_t i = 0; i < copies; i++) memcpy(big + i * len, text, len);
    big[n] = 0;
    *out_len = n;
    return big;
}

static double encode_once(const Tokenizer *tok, const char *text, size_t len, long *n_tokens) {
    int32_t *ids;
    int n;
    double t0 = now_seconds();
    if (tokenizer_encode(tok, text, len, &ids, &n) != 0) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    double dt = now_seconds() - t0;
    free(ids);
    *n_tokens = n;
    return dt;
}

static double encode_lines(const Tokenizer *tok, const char *text, size_t len, long *n_tokens) {
    double t0 = now_seconds();
    *n_tokens = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *nl = memchr(p, '\n', end - p);
        size_t k = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        int32_t *ids;
        int n;
        if (tokenizer_encode(tok, p, k, &ids, &n) != 0) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
        free(ids);
        *n_tokens += n;
        p += k;
    }
    return now_seconds() - t0;
}

static void report(const char *what, size_t bytes, long tokens, double seconds) {
    printf("%-34s %7.1f MB in %6.3f s = %6.1f MB/s  (%ld tokens, %.2f bytes/token)\n", what, bytes / 1e6, seconds,
           bytes / 1e6 / seconds, tokens, (double)bytes / (tokens ? tokens : 1));
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s TOKENIZER_DIR [TEXT_FILE...]\n", argv[0]); return 2; }
    char *defaults[] = {"../shared/data/e2e/devset.csv", "../shared/data/e2e/testset_w_refs.csv"};
    size_t len, big_len;
    char *text = argc > 2 ? read_texts(argc - 2, argv + 2, &len) : read_texts(2, defaults, &len);
    char *big = repeat_to(text, len, TARGET_BYTES, &big_len);
    double t0 = now_seconds();
    Tokenizer *tok = tokenizer_load(argv[1]);
    if (!tok) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    printf("loaded %s (%d tokens) in %.3f s\n", argv[1], tokenizer_vocab_size(tok), now_seconds() - t0);
    long n;
    double dt = encode_once(tok, text, len, &n);
    report("first copy, cold word cache:", len, n, dt);
    dt = encode_once(tok, big, big_len, &n);
    report("20 MB in one call:", big_len, n, dt);
    dt = encode_lines(tok, big, big_len, &n);
    report("20 MB line by line:", big_len, n, dt);
    tokenizer_free(tok);
    free(big);
    free(text);
    return 0;
}
