// util.h: errors, allocation, files. Every library function that can fail returns
// non-zero (or NULL) and leaves a message for peft_last_error(); the CLI prints it.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

// Record an error message (printf-style). Returns -1 so callers can `return peft_fail(...)`.
int peft_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Prefix the current message with context, e.g. the file name: "model/config.json: " + message.
int peft_fail_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *peft_last_error(void);
void peft_clear_error(void);

// Allocation that aborts on out-of-memory: the only failure we do not try to recover from.
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// calloc for sizes that a file or a request decides: NULL + an error naming `what` when the memory
// is not there (a server request must fail, not the process).
void *try_calloc(size_t count, size_t size, const char *what);
// This machine's physical memory in bytes (0 when unknown): a bound no allocation can exceed.
uint64_t physical_memory_bytes(void);

// Whole-file read into a NUL-terminated buffer. NULL + error on failure.
char *read_file(const char *path, size_t *len_out);
// Write via "<path>.tmp.<pid>" then rename(), so readers never see a half-written file.
int write_file_atomic(const char *path, const void *data, size_t len);
// The same for a file written in parts: atomic_open opens "<path>.tmp.<pid>" as af->f; atomic_close
// renames it over path when keep is true and every write succeeded (else an error naming path), and
// removes it when keep is false (the caller gave up; its error stands) or a write failed.
typedef struct {
    FILE *f;
    char *tmp;
    const char *path;
} AtomicFile;
int atomic_open(AtomicFile *af, const char *path);
int atomic_close(AtomicFile *af, bool keep);
// Whole-file copy, written atomically.
int copy_file(const char *src, const char *dst);
bool file_exists(const char *path);
bool dir_exists(const char *path);
int make_dir(const char *path); // mkdir -p
char *path_join(const char *dir, const char *name); // malloc'd

double now_seconds(void);
size_t peak_rss_bytes(void);
// The UTF-8 bytes of code point cp (1-4) into out; their number.
size_t utf8_put(uint32_t cp, char *out);
