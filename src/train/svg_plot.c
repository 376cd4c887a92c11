// svg_plot.c: the SVG line chart of svg_plot.h.
#include "svg_plot.h"
#include "util.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { W = 720, H = 420, LEFT = 70, RIGHT = 24, TOP = 44, BOTTOM = 56, MAX_POINTS = 4000 };

typedef struct { char *s; size_t n, cap; } Svg;

static void out(Svg *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(Svg *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (b->s && b->n + k < b->cap) { b->n += k; return; }
        b->cap = 2 * (b->cap + k + 256);
        b->s = xrealloc(b->s, b->cap);
    }
}

// Text with &, <, > escaped.
static void out_text(Svg *b, const char *s) {
    for (; s && *s; s++) {
        if (*s == '&') out(b, "&amp;");
        else if (*s == '<') out(b, "&lt;");
        else if (*s == '>') out(b, "&gt;");
        else out(b, "%c", *s);
    }
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `want` ticks over span.
static double nice_step(double span, int want) {
    double raw = span / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

typedef struct { double lo, hi; } Range;

static Range data_range(const PlotSeries *s, int n, bool want_x) {
    Range r = {INFINITY, -INFINITY};
    for (int i = 0; i < n; i++)
        for (int j = 0; j < s[i].n; j++) {
            double x = s[i].x[j], y = s[i].y[j], v = want_x ? x : y;
            if (!isfinite(x) || !isfinite(y)) continue;
            if (v < r.lo) r.lo = v;
            if (v > r.hi) r.hi = v;
        }
    if (!isfinite(r.lo)) r = (Range){0, 1};
    if (r.hi - r.lo < 1e-12) { r.lo -= 0.5; r.hi += 0.5; }
    return r;
}

static double px(Range r, double x) { return LEFT + (x - r.lo) / (r.hi - r.lo) * (W - LEFT - RIGHT); }
static double py(Range r, double y) { return H - BOTTOM - (y - r.lo) / (r.hi - r.lo) * (H - TOP - BOTTOM); }

static void axes(Svg *b, Range xr, Range yr, const char *xlabel, const char *ylabel) {
    out(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM);
    double ys = nice_step(yr.hi - yr.lo, 6), xs = nice_step(xr.hi - xr.lo, 8);
    for (double y = ceil(yr.lo / ys) * ys; y <= yr.hi + ys * 1e-9; y += ys) {
        out(b, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", LEFT, W - RIGHT, py(yr, y), py(yr, y));
        out(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", LEFT - 6, py(yr, y) + 4, fabs(y) < ys * 1e-9 ? 0.0 : y);
    }
    for (double x = ceil(xr.lo / xs) * xs; x <= xr.hi + xs * 1e-9; x += xs)
        out(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", px(xr, x), H - BOTTOM + 18, x);
    out(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (LEFT + W - RIGHT) / 2, H - 14);
    out_text(b, xlabel);
    out(b, "</text>\n<text transform=\"translate(18,%d) rotate(-90)\" text-anchor=\"middle\">", (TOP + H - BOTTOM) / 2);
    out_text(b, ylabel);
    out(b, "</text>\n");
}

static void series_path(Svg *b, const PlotSeries *s, Range xr, Range yr) {
    int stride = s->n > MAX_POINTS ? (s->n + MAX_POINTS - 1) / MAX_POINTS : 1;  // keep big logs small
    out(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", s->color);
    for (int j = 0; j < s->n; j += stride)
        if (isfinite(s->x[j]) && isfinite(s->y[j])) out(b, "%.1f,%.1f ", px(xr, s->x[j]), py(yr, s->y[j]));
    out(b, "\"/>\n");
    for (int j = 0; s->markers && j < s->n; j++)
        if (isfinite(s->x[j]) && isfinite(s->y[j]))
            out(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(xr, s->x[j]), py(yr, s->y[j]), s->color);
}

int svg_plot_write(const char *path, const char *title, const char *xlabel, const char *ylabel,
                   const PlotSeries *series, int n_series) {
    Svg b = {0};
    Range xr = data_range(series, n_series, true), yr = data_range(series, n_series, false);
    double pad = (yr.hi - yr.lo) * 0.05;
    yr.lo -= pad;
    yr.hi += pad;
    out(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H, W, H);
    out(&b, "<text x=\"%d\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">", W / 2);
    out_text(&b, title);
    out(&b, "</text>\n");
    axes(&b, xr, yr, xlabel, ylabel);
    size_t longest = 0;  // the legend sits in the top right corner, as wide as its longest label
    for (int i = 0; i < n_series; i++) if (series[i].label && strlen(series[i].label) > longest) longest = strlen(series[i].label);
    int lx = W - RIGHT - 40 - 7 * (int)longest;
    for (int i = 0; i < n_series; i++) {
        series_path(&b, &series[i], xr, yr);
        int ly = TOP + 16 + 18 * i;  // legend, top right inside the plot
        out(&b, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"/>\n", lx, lx + 20, ly - 4, ly - 4, series[i].color);
        out(&b, "<text x=\"%d\" y=\"%d\">", lx + 26, ly);
        out_text(&b, series[i].label);
        out(&b, "</text>\n");
    }
    out(&b, "</svg>\n");
    int rc = write_file_atomic(path, b.s, b.n);
    free(b.s);
    return rc;
}
