/* CommonKV's latent pools (see ckv_pool.h): bookkeeping of a segment's rows, blocks, positions and
 * bytes over the backend's lat_* entries, which alone read and write the rows. Depends on
 * backend.h and libc. */
#include "ckv_pool.h"

#include <stdlib.h>
#include <string.h>

void kvs_ckv_seg_init(struct kvs_ckv_seg *s, const struct kvs_lat_fmt *f, uint32_t n_arr, uint32_t block)
{
    memset(s, 0, sizeof *s);
    s->f = *f;
    s->n_arr = n_arr;
    s->L.n_arr = (int)n_arr;
    s->width = (uint32_t)f->width;
    s->row_bytes = (uint32_t)f->row_bytes;
    s->block = block ? block : 1;
}

static void sync_counts(struct kvs_ckv_seg *s)
{
    s->n = (uint32_t)s->L.n;
    s->cap = (uint32_t)s->L.cap;
}

/* Resizes to exactly CAP rows (>= n): the backend's rows and the host positions. A failure leaves
 * both at the old capacity. */
static enum kvs_status seg_resize(struct kvs_ckv_seg *s, uint32_t cap)
{
    if (cap == s->cap) return KVS_OK;
    if (cap > (uint32_t)1 << 30) return KVS_ERR_LIMIT;
    if (cap > s->cap) {
        int32_t *np = realloc(s->pos, (size_t)cap * sizeof(int32_t));
        if (!np) return KVS_ERR_NOMEM;
        s->pos = np;
    }
    enum kvs_status st = kvs_backend_lat_grow(s->be, &s->L, &s->f, (int)cap);
    sync_counts(s);
    if (st == KVS_OK && cap == 0) {
        free(s->pos);
        s->pos = NULL;
    } else if (st == KVS_OK) {
        int32_t *np = realloc(s->pos, (size_t)cap * sizeof(int32_t)); /* smaller: may stay where it is */
        if (np) s->pos = np;
    }
    return st;
}

void kvs_ckv_seg_free(struct kvs_ckv_seg *s)
{
    s->L.n = 0;
    sync_counts(s);
    seg_resize(s, 0);
    s->be = NULL;
}

enum kvs_status kvs_ckv_seg_reserve(struct kvs_ckv_seg *s, struct kvs_backend *be, uint32_t need)
{
    if (need <= s->cap) return KVS_OK;
    if (!s->cap) s->be = be;
    uint64_t cap = ((uint64_t)need + s->block - 1) / s->block * s->block;
    return seg_resize(s, (uint32_t)KVS_MIN(cap, (uint64_t)UINT32_MAX));
}

void kvs_ckv_seg_shrink(struct kvs_ckv_seg *s)
{
    uint32_t cap = (s->n + s->block - 1) / s->block * s->block;
    if (cap < s->cap) seg_resize(s, cap);
}

/* X in host memory (BUF false) or in the backend's (BUF true) */
static enum kvs_status seg_store(struct kvs_ckv_seg *s, bool buf, uint32_t arr, uint32_t row0, int T, const float *x,
                                 const int32_t *pos)
{
    return buf ? kvs_backend_lat_store_buf(s->be, &s->L, &s->f, (int)arr, (int)row0, T, x, pos)
               : kvs_backend_lat_store(s->be, &s->L, &s->f, (int)arr, (int)row0, T, x, pos);
}

static enum kvs_status seg_append(struct kvs_ckv_seg *s, bool buf, int T, const int32_t *pos, const float *x)
{
    if (T < 0 || s->n + (uint32_t)T > s->cap) return KVS_ERR_ARG;
    if (!T) return KVS_OK;
    enum kvs_status st = seg_store(s, buf, 0, s->n, T, x, pos);
    if (st != KVS_OK) return st;
    memcpy(s->pos + s->n, pos, (size_t)T * sizeof(int32_t));
    s->L.n += T;
    sync_counts(s);
    return KVS_OK;
}

static enum kvs_status seg_fill(struct kvs_ckv_seg *s, bool buf, uint32_t arr, int T, const float *x)
{
    if (T < 0 || (uint32_t)T > s->n || arr >= s->n_arr) return KVS_ERR_ARG;
    if (!T) return KVS_OK;
    return seg_store(s, buf, arr, s->n - (uint32_t)T, T, x, NULL);
}

enum kvs_status kvs_ckv_seg_append(struct kvs_ckv_seg *s, int T, const int32_t *pos, const float *x)
{
    return seg_append(s, false, T, pos, x);
}

enum kvs_status kvs_ckv_seg_fill(struct kvs_ckv_seg *s, uint32_t arr, int T, const float *x)
{
    return seg_fill(s, false, arr, T, x);
}

enum kvs_status kvs_ckv_seg_append_buf(struct kvs_ckv_seg *s, int T, const int32_t *pos, const float *x)
{
    return seg_append(s, true, T, pos, x);
}

enum kvs_status kvs_ckv_seg_fill_buf(struct kvs_ckv_seg *s, uint32_t arr, int T, const float *x)
{
    return seg_fill(s, true, arr, T, x);
}

enum kvs_status kvs_ckv_seg_move_rows(const struct kvs_ckv_seg *src, uint32_t row0, uint32_t n, struct kvs_ckv_seg *dst)
{
    if (row0 > src->n || n > src->n - row0 || dst->n + n > dst->cap || src->n_arr != dst->n_arr ||
        src->width != dst->width || src->be != dst->be)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    for (uint32_t a = 0; a < src->n_arr; a++) {
        enum kvs_status st = kvs_backend_lat_copy(src->be, &src->L, &src->f, (int)a, (int)row0, (int)n, &dst->L, &dst->f,
                                                  (int)a, (int)dst->n, a == 0 ? src->pos + row0 : NULL);
        if (st != KVS_OK) return st;
    }
    memcpy(dst->pos + dst->n, src->pos + row0, (size_t)n * sizeof(int32_t));
    dst->L.n += (int)n;
    sync_counts(dst);
    return KVS_OK;
}

enum kvs_status kvs_ckv_seg_read(const struct kvs_ckv_seg *s, uint32_t arr, uint32_t row0, uint32_t n, float *x)
{
    return kvs_backend_lat_read(s->be, &s->L, &s->f, (int)arr, (int)row0, (int)n, x, NULL);
}

enum kvs_status kvs_ckv_seg_compact(struct kvs_ckv_seg *s, const uint8_t *drop, uint32_t *removed)
{
    if (removed) *removed = 0;
    uint32_t n0 = s->n, w = 0;
    bool any = false;
    for (uint32_t i = 0; i < n0; i++) any |= drop[i] != 0;
    if (!any) {
        kvs_ckv_seg_shrink(s);
        return KVS_OK;
    }
    uint8_t *keep = malloc(n0);
    if (!keep) return KVS_ERR_NOMEM;
    for (uint32_t i = 0; i < n0; i++) keep[i] = !drop[i];
    enum kvs_status st = kvs_backend_lat_compact(s->be, &s->L, &s->f, keep);
    if (st == KVS_OK) {
        for (uint32_t i = 0; i < n0; i++)
            if (keep[i]) s->pos[w++] = s->pos[i];
        sync_counts(s);
        if (removed) *removed = n0 - s->n;
    }
    free(keep);
    kvs_ckv_seg_shrink(s);
    return st;
}

enum kvs_status kvs_ckv_seg_merge(const struct kvs_ckv_seg *src, struct kvs_ckv_seg *dst, const int32_t *idx,
                                  uint32_t m, const float *w)
{
    if (dst->n + m > dst->cap || dst->n_arr != 1 || src->be != dst->be || src->row_bytes != dst->row_bytes)
        return KVS_ERR_ARG;
    uint32_t n0 = dst->n;
    enum kvs_status st = kvs_backend_lat_merge(src->be, &src->L, &dst->L, &src->f, idx, (int)m, w);
    if (st != KVS_OK) return st;
    for (uint32_t i = 0; i < m; i++) dst->pos[n0 + i] = src->pos[idx[i]];
    sync_counts(dst);
    return KVS_OK;
}

void kvs_ckv_seg_clear(struct kvs_ckv_seg *s)
{
    s->L.n = 0;
    sync_counts(s);
}

uint64_t kvs_ckv_seg_bytes_held(const struct kvs_ckv_seg *s)
{
    return (uint64_t)s->n * ((uint64_t)s->n_arr * s->row_bytes + 4);
}

uint64_t kvs_ckv_seg_bytes_alloc(const struct kvs_ckv_seg *s)
{
    return (uint64_t)s->cap * ((uint64_t)s->n_arr * s->row_bytes + 4);
}

uint64_t kvs_ckv_seg_bytes_held16(const struct kvs_ckv_seg *s)
{
    return (uint64_t)s->n * ((uint64_t)s->n_arr * s->width * 2 + 4);
}

bool kvs_ckv_seg_native(const struct kvs_ckv_seg *s) { return kvs_backend_lat_native(s->be, &s->f); }
