// svg_plot.h: a small line chart written as SVG (the training loss curve), with axes, "nice"
// tick values and a legend. No dependencies: the file is plain text any browser shows.
#pragma once
#include <stdbool.h>

typedef struct {
    const char *label;     // legend text
    const char *color;     // any SVG colour, e.g. "#1f77b4"
    int n;
    const double *x, *y;   // non-finite points are skipped
    bool markers;          // dots at the points (for sparse series such as evaluations)
} PlotSeries;

// Write the chart to path (atomically). The axes span all series' finite points.
// Returns 0, or -1 + peft_last_error() when the file cannot be written.
int svg_plot_write(const char *path, const char *title, const char *xlabel, const char *ylabel,
                   const PlotSeries *series, int n_series);
