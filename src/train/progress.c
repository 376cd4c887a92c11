// progress.c: the status bar and plain progress lines of progress.h.
#include "progress.h"
#include "util.h"
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct Progress {
    FILE *out;
    bool bar, line_open;   // line_open: the bar is drawn and the cursor is at its end
    int first, total, every;
    double t0, last_draw;
};

Progress *progress_new(FILE *out, bool bar, int first, int total, int every) {
    Progress *p = xcalloc(1, sizeof *p);
    *p = (Progress){out, bar, false, first, total, every > 0 ? every : 1, now_seconds(), 0};
    return p;
}

void progress_free(Progress *p) {
    if (!p) return;
    progress_finish(p);
    free(p);
}

void format_duration(double s, char *buf, int cap) {
    if (!isfinite(s) || s < 0) { snprintf(buf, cap, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60) snprintf(buf, cap, "%ld:%02ld", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

static int terminal_width(FILE *f) {
    struct winsize ws;
    if (!ioctl(fileno(f), TIOCGWINSZ, &ws) && ws.ws_col >= 40) return ws.ws_col;
    return 80;
}

static void format_rate(double tps, char *buf, int cap) {
    if (tps >= 1e4) snprintf(buf, cap, "%.1fk", tps / 1e3);
    else snprintf(buf, cap, "%.0f", tps);
}

void progress_update(Progress *p, int step, double loss, double tokens_per_s, const char *extra) {
    double elapsed = now_seconds() - p->t0;
    int done = step - p->first;
    char eta[32], rate[32], stats[256];
    format_duration(done > 0 ? elapsed / done * (p->total - step) : NAN, eta, sizeof eta);
    format_rate(tokens_per_s, rate, sizeof rate);
    if (!p->bar) {
        if (step % p->every && step != p->total && step != p->first + 1) return;
        fprintf(p->out, "step %d/%d  loss %.4f  %s tok/s  ETA %s%s%s\n", step, p->total, loss, rate, eta, extra ? "  " : "", extra ? extra : "");
        fflush(p->out);
        return;
    }
    double now = now_seconds();
    if (now - p->last_draw < 0.1 && step != p->total) return;  // a terminal need not redraw faster than it is read
    p->last_draw = now;
    snprintf(stats, sizeof stats, " %d/%d loss %.4f %s tok/s ETA %s", step, p->total, loss, rate, eta);
    // A fixed width (room for the longest stats) keeps the bar from jittering as the numbers change.
    int width = terminal_width(p->out) - 64;
    if (width > 40) width = 40;
    if (width < 10) width = 10;
    fprintf(p->out, "\r[");
    int filled = p->total > 0 ? (int)((long)width * step / p->total) : 0;
    for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', p->out);
    fprintf(p->out, "]%s\033[K", stats);
    fflush(p->out);
    p->line_open = true;
}

void progress_print(Progress *p, const char *fmt, ...) {
    if (p && p->line_open) { fprintf(p->out, "\r\033[K"); p->line_open = false; }
    FILE *out = p ? p->out : stderr;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(out);
}

void progress_finish(Progress *p) {
    if (p && p->line_open) { fputc('\n', p->out); fflush(p->out); p->line_open = false; }
}
