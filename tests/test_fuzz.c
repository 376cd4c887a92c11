// test_fuzz.c: every fuzz target (fuzz/fuzz.h) replays its seeds (fuzz/corpus/NAME) and every
// input a fuzzer ever failed on (fuzz/regressions/NAME): none may crash or break a property, and
// the seeds named valid_* must still be accepted (else they no longer lead the fuzzer anywhere:
// `make fuzz-seeds` remakes those our own code makes).
#include "test.h"
#include "../fuzz/fuzz.h"
#include "util.h"
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

typedef int (*FuzzTarget)(const uint8_t *data, size_t size);

// Each file of dir through target, from an exact-size heap copy (ASan sees a read past its end).
// *count counts the files; a missing dir counts none.
static void replay_dir(int *failed_, const char *dir, FuzzTarget target, int *count) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *path = path_join(dir, e->d_name);
        size_t len;
        char *buf = read_file(path, &len);
        CHECK_MSG(buf, "%s", peft_last_error());
        uint8_t *exact = xmalloc(len ? len : 1);
        memcpy(exact, buf, len);
        int accepted = target(exact, len);
        free(exact);
        free(buf);
        CHECK_MSG(accepted || strncmp(e->d_name, "valid_", 6), "%s is no longer accepted: %s", path, peft_last_error());
        free(path);
        (*count)++;
    }
    closedir(d);
}

static void replay(int *failed_, const char *name, FuzzTarget target) {
    char *corpus = path_join("fuzz/corpus", name), *regressions = path_join("fuzz/regressions", name);
    int count = 0;
    replay_dir(failed_, corpus, target, &count);
    CHECK_MSG(count > 0, "no seeds in %s (run the tests from the repository root)", corpus);
    replay_dir(failed_, regressions, target, &count);
    free(corpus);
    free(regressions);
}

TEST(fuzz_replay_safetensors) { replay(failed_, "safetensors", fuzz_safetensors); }
TEST(fuzz_replay_json) { replay(failed_, "json", fuzz_json); }
TEST(fuzz_replay_http) { replay(failed_, "http", fuzz_http); }
TEST(fuzz_replay_chat) { replay(failed_, "chat", fuzz_chat); }
TEST(fuzz_replay_tokenizer) { replay(failed_, "tokenizer", fuzz_tokenizer); }
TEST(fuzz_replay_adapter) { replay(failed_, "adapter", fuzz_adapter); }
TEST(fuzz_replay_checkpoint) { replay(failed_, "checkpoint", fuzz_checkpoint); }
TEST(fuzz_replay_jinja) { replay(failed_, "jinja", fuzz_jinja); }
TEST(fuzz_replay_data) { replay(failed_, "data", fuzz_data); }
TEST(fuzz_replay_model) { replay(failed_, "model", fuzz_model); }
