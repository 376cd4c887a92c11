// seeds.c: the fuzz seeds our own code makes (`make fuzz-seeds` writes them into fuzz/corpus):
// the byte-level tokenizer with a text (tokenizer/valid_byte_level.bin).
// tests/test_fuzz.c checks that the targets still accept every valid_* seed.
#include "fuzz.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_seed(const char *corpus, const char *target, const char *name, uint8_t *data, size_t size) {
    char *dir = path_join(corpus, target), *file = xasprintf("valid_%s.bin", name), *path = path_join(dir, file);
    int rc = make_dir(dir) || write_file_atomic(path, data, size);
    if (!rc) printf("%s: %zu bytes\n", path, size);
    free(data);
    free(dir);
    free(file);
    free(path);
    return rc;
}

int main(int argc, char **argv) {
    const char *corpus = argc > 1 ? argv[1] : "fuzz/corpus";
    uint8_t *data;
    size_t size;
    static const char sample[] = "Hello world! It's 2024: caf\xC3\xA9 \xE2\x96\x81 <|endoftext|>";
    char *model = fuzz_model_dir("seed-tokenizer", FUZZ_GPT2_CONFIG), *tok = path_join(model, "tokenizer.json");
    char *text = fuzz_write("seed-tokenizer", "text.txt", sample, strlen(sample));
    int rc = fuzz_join_files(tok, text, &data, &size) || write_seed(corpus, "tokenizer", "byte_level", data, size);
    free(model);
    free(tok);
    free(text);
    if (rc) fprintf(stderr, "fuzz seeds: %s\n", peft_last_error());
    return rc ? 1 : 0;
}
