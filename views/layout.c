/* Screen layout maths (see layout.h): grids of 3x2, 2x3 or 1x6 panels when they fit, otherwise the
 * focused panel alone. Pure integer arithmetic; depends on nothing but libc. */
#include "layout.h"

#include <string.h>

#define DEF_MIN_W 28
#define DEF_MIN_H 7

bool kvs_rect_overlap(struct kvs_rect a, struct kvs_rect b)
{
    if (kvs_rect_empty(a) || kvs_rect_empty(b)) return false;
    return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

bool kvs_rect_inside(struct kvs_rect a, int w, int h)
{
    if (kvs_rect_empty(a)) return true;
    return a.x >= 0 && a.y >= 0 && a.x + a.w <= w && a.y + a.h <= h;
}

struct kvs_rect kvs_rect_inset(struct kvs_rect r, int n)
{
    struct kvs_rect o = {r.x + n, r.y + n, r.w - 2 * n, r.h - 2 * n};
    if (o.w <= 0 || o.h <= 0) o.w = o.h = 0;
    return o;
}

/* Splits LEN cells into N parts differing by at most one; returns the start of part I. */
static int split_start(int len, int n, int i) { return (int)((long)len * i / n); }

void kvs_layout_compute(const struct kvs_layout_req *rq, struct kvs_layout *out)
{
    memset(out, 0, sizeof *out);
    int w = rq->w, h = rq->h;
    if (w <= 0 || h <= 0) return;
    int top = 0, bottom = h; /* body rows [top, bottom) */
    if (h >= 2) { out->status = (struct kvs_rect){0, 0, w, 1}; top = 1; }
    if (h >= 12) { out->keys = (struct kvs_rect){0, h - 1, w, 1}; bottom = h - 1; }
    if (rq->scrubber && bottom - top >= 3) {
        out->scrub = (struct kvs_rect){0, bottom - 1, w, 1};
        bottom--;
    }
    int bh = bottom - top;
    if (bh <= 0) {
        /* one row: the status line becomes the body */
        out->status = (struct kvs_rect){0, 0, 0, 0};
        bh = h; top = 0;
    }
    int focus = rq->focus >= 0 && rq->focus < KVS_LAYOUT_PANELS ? rq->focus : 0;
    int zoom = rq->zoom >= 0 && rq->zoom < KVS_LAYOUT_PANELS ? rq->zoom : -1;
    if (zoom < 0) {
        static const int shapes[][2] = {{3, 2}, {2, 3}, {1, 6}};
        for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int cols = shapes[s][0], rows = shapes[s][1];
            bool ok = true;
            for (int p = 0; p < KVS_LAYOUT_PANELS && ok; p++) {
                int mw = rq->min_w[p] > 0 ? rq->min_w[p] : DEF_MIN_W;
                int mh = rq->min_h[p] > 0 ? rq->min_h[p] : DEF_MIN_H;
                /* the smallest cell is floor(len / n) */
                if (w / cols < mw || bh / rows < mh) ok = false;
            }
            if (!ok) continue;
            for (int p = 0; p < KVS_LAYOUT_PANELS; p++) {
                int c = p % cols, r = p / cols;
                int x0 = split_start(w, cols, c), x1 = split_start(w, cols, c + 1);
                int y0 = split_start(bh, rows, r), y1 = split_start(bh, rows, r + 1);
                out->panel[p] = (struct kvs_rect){x0, top + y0, x1 - x0, y1 - y0};
            }
            out->cols = cols;
            out->rows = rows;
            out->n_visible = KVS_LAYOUT_PANELS;
            return;
        }
    }
    int only = zoom >= 0 ? zoom : focus;
    out->panel[only] = (struct kvs_rect){0, top, w, bh};
    out->cols = out->rows = 1;
    out->n_visible = 1;
}
