// fuzz_jinja.c: the Jinja interpreter alone. The input is a template, a NUL byte, then a JSON object
// of variables (none without the NUL). A template that parses renders (or fails with a message
// naming the template's position); rendering it again gives the same bytes (a render has no state
// but its arena), and the output is bounded by JINJA_MAX_BYTES.
#include "fuzz.h"
#include "jinja.h"
#include "json_bytes.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

int fuzz_jinja(const uint8_t *data, size_t size) {
    const uint8_t *rest;
    size_t n;
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *ignored = fuzz_split(data, size, &rest, &n);
    free(ignored);
    JinjaTemplate *t = jinja_parse((const char *)data, tlen, "fuzz.jinja");
    if (!t) {
        FUZZ_CHECK(!strncmp(peft_last_error(), "fuzz.jinja:", 11), "a parse error without the position: %s", peft_last_error());
        return 0;
    }
    cJSON *vars = rest ? json_parse_bytes((const char *)rest, n) : NULL;
    const cJSON *const v[] = {vars};
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    int ra = jinja_render(t, v, vars ? 1 : 0, &a, &na);
    if (ra) FUZZ_CHECK(!strncmp(peft_last_error(), "fuzz.jinja:", 11), "a render error without the position: %s", peft_last_error());
    else {
        FUZZ_CHECK(na <= (size_t)JINJA_MAX_BYTES, "%zu bytes of output", na);
        FUZZ_CHECK(a[na] == 0, "the output is not NUL-terminated");
        // (strftime_now reads the clock: a template that uses it may differ across a minute)
        if (!memmem(data, tlen, "strftime", 8)) {
            int rb = jinja_render(t, v, vars ? 1 : 0, &b, &nb);
            FUZZ_CHECK(!rb && nb == na && !memcmp(a, b, na), "a second render differs");
        }
    }
    free(a);
    free(b);
    cJSON_Delete(vars);
    jinja_free(t);
    return ra == 0;
}
