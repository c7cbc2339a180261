/* Screen layout as pure rectangle maths: where the status line, key bar, replay scrubber and the
 * six panels go for a terminal of W x H cells. No curses, no records: tested on its own
 * (tests/test_layout.c) over a sweep of sizes. */
#ifndef KVS_LAYOUT_H
#define KVS_LAYOUT_H

#include <stdbool.h>

#define KVS_LAYOUT_PANELS 6

struct kvs_rect {
    int x, y, w, h; /* cells; a rect with w <= 0 or h <= 0 is empty and never drawn */
};

struct kvs_layout_req {
    int w, h;                        /* terminal size in cells */
    bool scrubber;                   /* replay: one row for the scrubber */
    int focus;                       /* panel shown when only one fits (0..5) */
    int zoom;                        /* -1: grid; else this panel alone */
    int min_w[KVS_LAYOUT_PANELS];    /* smallest useful size of each panel in a grid (0: default) */
    int min_h[KVS_LAYOUT_PANELS];
};

struct kvs_layout {
    struct kvs_rect status;          /* top line (empty when h < 2) */
    struct kvs_rect keys;            /* bottom key/message line (empty on small screens) */
    struct kvs_rect scrub;           /* replay scrubber (empty unless requested) */
    struct kvs_rect panel[KVS_LAYOUT_PANELS];
    int cols, rows;                  /* grid shape; 1x1 when a single panel is shown */
    int n_visible;
};

/* Fills OUT for RQ. Every non-empty rect lies inside the screen, no two overlap, and at least one
 * panel is visible whenever the screen has 2 rows or more. */
void kvs_layout_compute(const struct kvs_layout_req *rq, struct kvs_layout *out);

static inline bool kvs_rect_empty(struct kvs_rect r) { return r.w <= 0 || r.h <= 0; }
static inline bool kvs_rect_contains(struct kvs_rect r, int x, int y)
{
    return !kvs_rect_empty(r) && x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h;
}
bool kvs_rect_overlap(struct kvs_rect a, struct kvs_rect b);
/* True when A lies entirely inside a W x H screen. */
bool kvs_rect_inside(struct kvs_rect a, int w, int h);
/* Shrinks R by N cells on every side (empty when too small). */
struct kvs_rect kvs_rect_inset(struct kvs_rect r, int n);

#endif
