/* Layout maths over a sweep of terminal sizes (20x6 ... 300x100): every rectangle inside the
 * screen, none overlapping, the screen tiled exactly, at least one panel visible, no empty panel
 * counted as visible, grid cells at least their panels' minimum size. */
#include "harness.h"
#include "layout.h"

#include <string.h>

static int bad_inside, bad_overlap, bad_tiling, bad_visible, bad_min, cases;

static void check_one(const struct kvs_layout_req *rq)
{
    struct kvs_layout l;
    kvs_layout_compute(rq, &l);
    cases++;
    struct kvs_rect all[3 + KVS_LAYOUT_PANELS] = {l.status, l.keys, l.scrub};
    for (int p = 0; p < KVS_LAYOUT_PANELS; p++) all[3 + p] = l.panel[p];
    long area = 0;
    for (int i = 0; i < 3 + KVS_LAYOUT_PANELS; i++) {
        if (!kvs_rect_inside(all[i], rq->w, rq->h)) {
            if (bad_inside++ < 5) fprintf(stderr, "  %dx%d: rect %d (%d,%d %dx%d) outside\n", rq->w, rq->h, i, all[i].x, all[i].y, all[i].w, all[i].h);
        }
        if (!kvs_rect_empty(all[i])) area += (long)all[i].w * all[i].h;
        for (int j = i + 1; j < 3 + KVS_LAYOUT_PANELS; j++)
            if (kvs_rect_overlap(all[i], all[j]) && bad_overlap++ < 5)
                fprintf(stderr, "  %dx%d: rects %d and %d overlap\n", rq->w, rq->h, i, j);
    }
    if (area != (long)rq->w * rq->h && bad_tiling++ < 5) fprintf(stderr, "  %dx%d: area %ld not tiled\n", rq->w, rq->h, area);
    int vis = 0;
    for (int p = 0; p < KVS_LAYOUT_PANELS; p++) {
        if (kvs_rect_empty(l.panel[p])) continue;
        vis++;
        if (l.n_visible > 1) {
            int mw = rq->min_w[p] ? rq->min_w[p] : 28, mh = rq->min_h[p] ? rq->min_h[p] : 7;
            if ((l.panel[p].w < mw || l.panel[p].h < mh) && bad_min++ < 5)
                fprintf(stderr, "  %dx%d: panel %d is %dx%d in a grid\n", rq->w, rq->h, p, l.panel[p].w, l.panel[p].h);
        }
    }
    if ((vis != l.n_visible || vis < 1) && bad_visible++ < 5)
        fprintf(stderr, "  %dx%d: %d visible, n_visible %d\n", rq->w, rq->h, vis, l.n_visible);
    if (rq->zoom >= 0 && kvs_rect_empty(l.panel[rq->zoom]) && bad_visible++ < 5)
        fprintf(stderr, "  %dx%d: zoomed panel %d not shown\n", rq->w, rq->h, rq->zoom);
}

static void test_sweep(void)
{
    struct kvs_layout_req rq;
    for (int w = 20; w <= 300; w += (w < 60 ? 1 : 7))
        for (int h = 6; h <= 100; h += (h < 30 ? 1 : 5))
            for (int mode = 0; mode < 4; mode++) {
                memset(&rq, 0, sizeof rq);
                rq.w = w;
                rq.h = h;
                rq.scrubber = mode & 1;
                rq.zoom = mode & 2 ? (w + h) % KVS_LAYOUT_PANELS : -1;
                rq.focus = (w * 7 + h) % KVS_LAYOUT_PANELS;
                if (w % 3 == 0)
                    for (int p = 0; p < KVS_LAYOUT_PANELS; p++) { rq.min_w[p] = 30 + p; rq.min_h[p] = 6 + p % 3; }
                check_one(&rq);
            }
    fprintf(stderr, "   %d layouts checked\n", cases);
    CHECK(bad_inside == 0);
    CHECK(bad_overlap == 0);
    CHECK(bad_tiling == 0);
    CHECK(bad_visible == 0);
    CHECK(bad_min == 0);
}

static void test_shapes(void)
{
    struct kvs_layout_req rq;
    struct kvs_layout l;
    memset(&rq, 0, sizeof rq);
    rq.zoom = -1;
    rq.w = 200; rq.h = 60;
    kvs_layout_compute(&rq, &l);
    CHECK(l.cols == 3 && l.rows == 2 && l.n_visible == 6);
    CHECK(l.status.h == 1 && l.keys.h == 1 && kvs_rect_empty(l.scrub));
    rq.w = 80; rq.h = 24;
    kvs_layout_compute(&rq, &l);
    CHECK(l.cols == 2 && l.rows == 3);
    /* the smallest supported screen: status line plus one panel of 5 rows */
    rq.w = 20; rq.h = 6; rq.focus = 3;
    kvs_layout_compute(&rq, &l);
    CHECK(l.n_visible == 1 && l.panel[3].w == 20 && l.panel[3].h == 5 && l.status.h == 1);
    rq.scrubber = true;
    kvs_layout_compute(&rq, &l);
    CHECK(l.scrub.h == 1 && l.panel[3].h == 4);
    /* zoom shows one panel even on a big screen */
    rq.w = 200; rq.h = 60; rq.zoom = 2; rq.scrubber = false;
    kvs_layout_compute(&rq, &l);
    CHECK(l.n_visible == 1 && l.panel[2].w == 200 && l.panel[2].h == 58);
    /* degenerate sizes never produce rectangles outside the screen */
    for (int w = 0; w < 20; w++)
        for (int h = 0; h < 6; h++) {
            rq.w = w; rq.h = h; rq.zoom = -1;
            kvs_layout_compute(&rq, &l);
            bool ok = true;
            for (int p = 0; p < KVS_LAYOUT_PANELS; p++) ok = ok && kvs_rect_inside(l.panel[p], w, h);
            CHECKF(ok, "%dx%d", w, h);
            if (w > 0 && h > 0) CHECKF(l.n_visible == 1, "%dx%d: %d visible", w, h, l.n_visible);
        }
}

static void test_rects(void)
{
    struct kvs_rect a = {0, 0, 10, 5}, b = {9, 4, 3, 3}, c = {10, 0, 5, 5}, e = {3, 3, 0, 7};
    CHECK(kvs_rect_overlap(a, b));
    CHECK(!kvs_rect_overlap(a, c));
    CHECK(!kvs_rect_overlap(a, e));
    CHECK(kvs_rect_inside(a, 10, 5) && !kvs_rect_inside(b, 11, 7));
    struct kvs_rect in = kvs_rect_inset(a, 1);
    CHECK(in.x == 1 && in.y == 1 && in.w == 8 && in.h == 3);
    CHECK(kvs_rect_empty(kvs_rect_inset((struct kvs_rect){0, 0, 2, 2}, 1)));
    CHECK(kvs_rect_contains(a, 9, 4) && !kvs_rect_contains(a, 10, 4));
}

int main(void)
{
    RUN(test_rects);
    RUN(test_shapes);
    RUN(test_sweep);
    return kvs_test_summary();
}
