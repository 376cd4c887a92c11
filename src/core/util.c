#include "util.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char error_message[2048];

int peft_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return -1;
}

int peft_fail_context(const char *fmt, ...) {
    char prefix[1024], old[sizeof error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    size_t n = strlen(prefix);
    if (n >= sizeof error_message) n = sizeof error_message - 1;
    memcpy(error_message, prefix, n);
    snprintf(error_message + n, sizeof error_message - n, "%.*s", (int)(sizeof error_message - n - 1), old);
    return -1;
}

const char *peft_last_error(void) { return error_message[0] ? error_message : "unknown error"; }
void peft_clear_error(void) { error_message[0] = 0; }

static void out_of_memory(size_t n) {
    fprintf(stderr, "peft: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) out_of_memory(count * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    return q;
}

void *try_calloc(size_t count, size_t size, const char *what) {
    size_t bytes;
    void *p = __builtin_mul_overflow(count, size, &bytes) ? NULL : calloc(count ? count : 1, size ? size : 1);
    if (!p) peft_fail("out of memory: %s needs %zu x %zu bytes", what, count, size);
    return p;
}

uint64_t physical_memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) out_of_memory(0);
    va_end(ap);
    return s;
}

char *read_file(const char *path, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) { peft_fail("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len - 1 == 0) buf = xrealloc(buf, cap *= 2);
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) { free(buf); peft_fail("%s: read error", path); return NULL; }
    buf[len] = 0;
    if (len_out) *len_out = len;
    return buf;
}

int atomic_open(AtomicFile *af, const char *path) {
    af->path = path;
    af->tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
    af->f = fopen(af->tmp, "wb");
    if (af->f) return 0;
    int e = errno;
    free(af->tmp);
    af->tmp = NULL;
    return peft_fail("%s: cannot write: %s", path, strerror(e));
}

int atomic_close(AtomicFile *af, bool keep) {
    int e = 0;
    bool failed = ferror(af->f);
    if (keep && !failed && (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0)) { e = errno; failed = true; }
    if (fclose(af->f) != 0 && keep && !failed) { e = errno; failed = true; }
    if (keep && !failed && rename(af->tmp, af->path) != 0) { e = errno; failed = true; }
    if (!keep || failed) unlink(af->tmp);
    free(af->tmp);
    af->f = NULL;
    af->tmp = NULL;
    if (!keep) return -1;  // the caller gave up: its error stands
    if (!failed) return 0;
    return e ? peft_fail("%s: write failed: %s", af->path, strerror(e)) : peft_fail("%s: write failed", af->path);
}

int write_file_atomic(const char *path, const void *data, size_t len) {
    AtomicFile af;
    if (atomic_open(&af, path)) return -1;
    fwrite(data, 1, len, af.f);  // a short write sets the stream's error flag, which atomic_close reports
    return atomic_close(&af, true);
}

bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int make_dir(const char *path) {
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) { int e = errno; free(p); return peft_fail("%s: cannot create directory: %s", path, strerror(e)); }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) rc = peft_fail("%s: cannot create directory: %s", path, strerror(errno));
    free(p);
    return rc;
}

char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    return xasprintf("%s%s%s", dir, (n && dir[n - 1] == '/') ? "" : "/", name);
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

size_t peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (size_t)ru.ru_maxrss * 1024;
}

int copy_file(const char *src, const char *dst) {
    size_t len;
    char *data = read_file(src, &len);
    int rc = data ? write_file_atomic(dst, data, len) : -1;
    free(data);
    return rc;
}

size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
