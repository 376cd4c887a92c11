// entry.c: libFuzzer's entry point, for the target the build names with -DFUZZ_TARGET=fuzz_NAME
// (one binary per target: the Makefile's build-fuzz/fuzz_NAME).
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FUZZ_TARGET(data, size);
    return 0;
}
