// fuzz_safetensors.c: the safetensors reader. The input bytes are a whole file: st_parse must
// either reject them with an error or return tensors whose every byte lies inside the input (ASan
// sees the input as an exact-size buffer) and that convert cleanly.
#include "fuzz.h"
#include "safetensors.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

enum { CONVERT_MAX = 4096 }; // convert tensors up to this many elements

static void touch_tensor(const StTensor *t) {
    // Read every byte: an offset that escaped validation shows up here as an ASan report.
    volatile uint8_t sink = 0;
    const uint8_t *p = t->data;
    for (size_t i = 0; i < t->nbytes; i++) sink ^= p[i];
    (void)sink;
    FUZZ_CHECK(t->nbytes == (size_t)t->numel * dtype_size(t->dtype), "%s: %zu bytes for %ld elements", t->name, t->nbytes, t->numel);
    if (t->numel > CONVERT_MAX) return;
    int rc;
    if (t->dtype == DT_F32 || t->dtype == DT_F16 || t->dtype == DT_BF16) {
        float *out = xmalloc((size_t)t->numel * sizeof *out);
        rc = st_to_f32(t, out);
        free(out);
    } else {
        int64_t *out = xmalloc((size_t)t->numel * sizeof *out);
        rc = st_to_i64(t, out);
        free(out);
    }
    FUZZ_CHECK(rc == 0, "%s: %s", t->name, peft_last_error());
}

int fuzz_safetensors(const uint8_t *data, size_t size) {
    SafeTensors st;
    if (st_parse(&st, data, size, "fuzz-input") != 0) {
        FUZZ_CHECK(strstr(peft_last_error(), "fuzz-input"), "the message does not name the input: %s", peft_last_error());
        return 0;
    }
    for (int i = 0; i < st.n; i++) {
        touch_tensor(&st.tensors[i]);
        FUZZ_CHECK(st_find(&st, st.tensors[i].name) == &st.tensors[i], "names not sorted and unique at %s", st.tensors[i].name);
    }
    st_close(&st);
    return 1;
}
