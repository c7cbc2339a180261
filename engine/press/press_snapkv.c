/* SnapKV scoring (DESIGN.md §5 `snapkv`): attention mass that the queries of an observation
 * window put on each cached token, max-pooled over neighbouring positions so that kept tokens come
 * in small runs, and top-k selection. Used by the K/V press (press_kv.c) and by the (group, token)
 * eviction of commonkv+snapkv. Depends on libc only. */
#include "commonkv_priv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kvs_snap_pool(const float *score, int n, int kernel, float *out)
{
    int h = kernel > 1 ? kernel / 2 : 0;
    for (int i = 0; i < n; i++) {
        float m = -INFINITY;
        int lo = i - h < 0 ? 0 : i - h, hi = i + h >= n ? n - 1 : i + h;
        for (int j = lo; j <= hi; j++) m = score[j] > m ? score[j] : m;
        out[i] = m;
    }
}

struct sidx { float s; int i; };

static int sidx_cmp(const void *a, const void *b)
{
    const struct sidx *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? 1 : -1;
    return x->i < y->i ? 1 : x->i > y->i ? -1 : 0; /* ties: later positions first */
}

void kvs_snap_select(const float *pooled, int n, int keep, uint8_t *keep_mask)
{
    memset(keep_mask, 0, (size_t)n);
    if (keep >= n) {
        memset(keep_mask, 1, (size_t)n);
        return;
    }
    if (keep <= 0) return;
    struct sidx *v = malloc((size_t)n * sizeof *v);
    if (!v) {
        /* without scratch keep the most recent, which is what a window would keep */
        for (int i = n - keep; i < n; i++) keep_mask[i] = 1;
        return;
    }
    for (int i = 0; i < n; i++) v[i] = (struct sidx){pooled[i], i};
    qsort(v, (size_t)n, sizeof *v, sidx_cmp);
    for (int i = 0; i < keep; i++) keep_mask[v[i].i] = 1;
    free(v);
}
