// progress.h: showing a long job's progress. On a terminal, one status line redrawn in place
// (a bar, the step, the loss, tokens/s and the time left); elsewhere (a log file, CI), plain
// lines every few steps, so logs stay readable.
#pragma once
#include <stdbool.h>
#include <stdio.h>

typedef struct Progress Progress;

// total: the last step; first: the step counting starts from (a resumed run's); bar: draw the
// in-place bar (pass isatty(fileno(out))); every: plain mode prints every N steps (and the
// first and last).
Progress *progress_new(FILE *out, bool bar, int first, int total, int every);
void progress_free(Progress *p);
// After step `step` (1-based). extra is appended to the line (e.g. "lr 2.0e-04"), may be NULL.
void progress_update(Progress *p, int step, double loss, double tokens_per_s, const char *extra);
// A line of its own (an evaluation, a message) that the bar must not overwrite.
void progress_print(Progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Ends the bar's line.
void progress_finish(Progress *p);
// "1:02:03", "4:05" or "7s".
void format_duration(double seconds, char *buf, int cap);
