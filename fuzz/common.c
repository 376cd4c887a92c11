// common.c: what the fuzz targets share (fuzz.h).
#include "fuzz.h"
#include "util.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: fuzz property broken: %s: ", file, line, cond);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

char *fuzz_split(const uint8_t *data, size_t size, const uint8_t **rest, size_t *rest_len) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t head = nul ? (size_t)(nul - data) : size;
    char *s = xmalloc(head + 1);
    memcpy(s, data, head);
    s[head] = 0;
    *rest = nul ? nul + 1 : NULL;
    *rest_len = nul ? size - head - 1 : 0;
    return s;
}
