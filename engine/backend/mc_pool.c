/* MiniCache's cache pool (see mc_pool.h): bookkeeping of unmerged rows (a K/V cache pool), merged
 * pairs, blocks and bytes over the backend's kv_* and mc_* entries, which alone read and write the
 * storage. Depends on mc_pool.h, cache_pool.h, backend.h and libc. */
#include "mc_pool.h"

#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_mc_pool_new(struct kvs_mc_pool **out, struct kvs_backend *be, int n_layer, int nkv, int d,
                                int block, int n_pairs, const int *la, char *err, size_t errlen)
{
    *out = NULL;
    if (n_layer <= 0 || nkv <= 0 || d <= 0 || block <= 0 || n_pairs < 0 || n_pairs > n_layer / 2) {
        kvs_seterr(err, errlen, "minicache pool: bad shape (%d layers, %d x %d wide, blocks of %d, %d pairs)", n_layer,
                   nkv, d, block, n_pairs);
        return KVS_ERR_ARG;
    }
    for (int i = 0; i < n_pairs; i++)
        if (la[i] < 0 || la[i] + 1 >= n_layer) {
            kvs_seterr(err, errlen, "minicache pool: pair %d starts at layer %d of %d", i, la[i], n_layer);
            return KVS_ERR_ARG;
        }
    struct kvs_mc_pool *p = calloc(1, sizeof *p);
    if (p) {
        p->pairs = calloc((size_t)(n_pairs ? n_pairs : 1), sizeof *p->pairs);
        p->pair_la = calloc((size_t)(n_pairs ? n_pairs : 1), sizeof *p->pair_la);
    }
    if (!p || !p->pairs || !p->pair_la) {
        if (p) free(p->pairs), free(p->pair_la);
        free(p);
        kvs_seterr(err, errlen, "minicache pool: out of memory");
        return KVS_ERR_NOMEM;
    }
    enum kvs_status st = kvs_cache_pool_new(&p->rows, be, n_layer, nkv * d, block, err, errlen);
    if (st != KVS_OK) {
        free(p->pairs), free(p->pair_la), free(p);
        return st;
    }
    p->be = be;
    p->n_layer = n_layer;
    p->nkv = nkv;
    p->d = d;
    p->dkv = nkv * d;
    p->block = block;
    p->n_pairs = n_pairs;
    if (n_pairs) memcpy(p->pair_la, la, (size_t)n_pairs * sizeof *la);
    *out = p;
    return KVS_OK;
}

void kvs_mc_pool_delete(struct kvs_mc_pool *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_pairs; i++) {
        p->pairs[i].n = 0;
        if (p->pairs[i].cap) kvs_backend_mc_grow(p->be, &p->pairs[i], p->nkv, p->d, 0);
    }
    kvs_cache_pool_delete(p->rows);
    free(p->pairs);
    free(p->pair_la);
    free(p);
}

static enum kvs_status fail(struct kvs_mc_pool *p, enum kvs_status st, const char *what, int pair)
{
    const char *why = p->be && p->be->err[0] ? kvs_backend_error(p->be) : kvs_status_str(st);
    kvs_seterr(p->err, sizeof p->err, "minicache pool (%s): %s, pair %d: %s", kvs_backend_name(p->be), what, pair, why);
    return st;
}

static bool pair_ok(struct kvs_mc_pool *p, int pair)
{
    if (pair >= 0 && pair < p->n_pairs) return true;
    kvs_seterr(p->err, sizeof p->err, "minicache pool: pair %d out of range (%d pairs)", pair, p->n_pairs);
    return false;
}

enum kvs_status kvs_mc_pool_store_buf(struct kvs_mc_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                      const float *v)
{
    enum kvs_status st = kvs_cache_pool_store_buf(p->rows, layer, T, pos, k, v);
    if (st != KVS_OK) snprintf(p->err, sizeof p->err, "%s", p->rows->err);
    return st;
}

enum kvs_status kvs_mc_pool_attend_buf(struct kvs_mc_pool *p, int layer, int pair, int T, const int32_t *q_pos,
                                       int n_head, const float *q, float *out)
{
    if (layer < 0 || layer >= p->n_layer || (pair >= 0 && !pair_ok(p, pair))) {
        kvs_seterr(p->err, sizeof p->err, "minicache pool: layer %d / pair %d out of range", layer, pair);
        return KVS_ERR_ARG;
    }
    int side = 0;
    if (pair >= 0) {
        if (layer != p->pair_la[pair] && layer != p->pair_la[pair] + 1) {
            kvs_seterr(p->err, sizeof p->err, "minicache pool: layer %d is not in pair %d", layer, pair);
            return KVS_ERR_ARG;
        }
        side = layer - p->pair_la[pair];
    }
    struct kvs_kv_attend_args a = {.T = T, .q_pos = q_pos, .n_head = n_head, .n_head_kv = p->nkv, .head_dim = p->d};
    enum kvs_status st = kvs_backend_mc_attend(p->be, &p->rows->rows[layer], pair >= 0 ? &p->pairs[pair] : NULL,
                                               side, &a, q, out);
    return st == KVS_OK ? KVS_OK : fail(p, st, "attention", pair);
}

enum kvs_status kvs_mc_pool_score(struct kvs_mc_pool *p, int pair, const int32_t *idx, int m, float *dist,
                                  double *dots)
{
    if (!pair_ok(p, pair)) return KVS_ERR_ARG;
    int la = p->pair_la[pair];
    enum kvs_status st = kvs_backend_mc_score(p->be, &p->rows->rows[la], &p->rows->rows[la + 1], p->nkv, p->d, idx, m,
                                              dist, dots);
    return st == KVS_OK ? KVS_OK : fail(p, st, "scoring", pair);
}

enum kvs_status kvs_mc_pool_merge(struct kvs_mc_pool *p, int pair, float t, const int32_t *idx, int m, int keep)
{
    if (!pair_ok(p, pair)) return KVS_ERR_ARG;
    if (keep < 0 || keep > m) return fail(p, KVS_ERR_ARG, "merging (bad count)", pair);
    int la = p->pair_la[pair];
    struct kvs_kv_rows *A = &p->rows->rows[la], *B = &p->rows->rows[la + 1];
    struct kvs_mc_rows *P = &p->pairs[pair];
    if (A->n != B->n) {
        kvs_seterr(p->err, sizeof p->err, "minicache pool: layers %d and %d hold different tokens (%d, %d)", la, la + 1,
                   A->n, B->n);
        return KVS_ERR_STATE;
    }
    if (m == keep) return KVS_OK;
    if ((int64_t)P->n + (m - keep) > (int64_t)1 << 30) return fail(p, KVS_ERR_ARG, "too many rows", pair);
    if (P->n + (m - keep) > P->cap) {
        int cap = (P->n + (m - keep) + p->block - 1) / p->block * p->block;
        enum kvs_status st = kvs_backend_mc_grow(p->be, P, p->nkv, p->d, cap);
        if (st != KVS_OK) return fail(p, st, "growing", pair);
    }
    enum kvs_status st = kvs_backend_mc_merge(p->be, A, B, P, p->nkv, p->d, t, idx, m, keep);
    if (st != KVS_OK) return fail(p, st, "merging", pair);
    /* the merged tokens leave both layers' unmerged rows, in lock-step */
    uint8_t *rowkeep = malloc((size_t)A->n + 1);
    if (!rowkeep) return fail(p, KVS_ERR_NOMEM, "compacting", pair);
    memset(rowkeep, 1, (size_t)A->n);
    for (int r = keep; r < m; r++) rowkeep[idx[r]] = 0;
    st = kvs_cache_pool_compact(p->rows, la, rowkeep);
    if (st == KVS_OK) st = kvs_cache_pool_compact(p->rows, la + 1, rowkeep);
    free(rowkeep);
    if (st != KVS_OK) snprintf(p->err, sizeof p->err, "%s", p->rows->err);
    return st;
}

enum kvs_status kvs_mc_pool_read_pos(struct kvs_mc_pool *p, int layer, int row0, int n, int32_t *pos)
{
    enum kvs_status st = kvs_cache_pool_read(p->rows, layer, row0, n, NULL, NULL, pos);
    if (st != KVS_OK) snprintf(p->err, sizeof p->err, "%s", p->rows->err);
    return st;
}

void kvs_mc_pool_reset(struct kvs_mc_pool *p)
{
    kvs_cache_pool_reset(p->rows);
    for (int i = 0; i < p->n_pairs; i++) p->pairs[i].n = 0;
}

int kvs_mc_pool_rows(const struct kvs_mc_pool *p, int layer) { return kvs_cache_pool_rows(p->rows, layer); }

int kvs_mc_pool_merged(const struct kvs_mc_pool *p, int pair) { return p->pairs[pair].n; }

/* An unmerged row: K and V fp16 and its position. */
static uint64_t row_bytes(const struct kvs_mc_pool *p) { return (uint64_t)p->dkv * 4 + 4; }

static int pair_of(const struct kvs_mc_pool *p, int layer)
{
    for (int i = 0; i < p->n_pairs; i++)
        if (layer == p->pair_la[i] || layer == p->pair_la[i] + 1) return i;
    return -1;
}

uint64_t kvs_mc_pool_bytes_held(const struct kvs_mc_pool *p, int layer)
{
    uint64_t h = (uint64_t)kvs_cache_pool_rows(p->rows, layer) * row_bytes(p);
    int pi = pair_of(p, layer);
    if (pi >= 0) {
        uint64_t sh = (uint64_t)p->pairs[pi].n * kvs_mc_row_bytes(p->nkv, p->d);
        h += layer == p->pair_la[pi] ? sh - sh / 2 : sh / 2;
    }
    return h;
}

uint64_t kvs_mc_pool_bytes_alloc(const struct kvs_mc_pool *p, int layer)
{
    uint64_t a = kvs_cache_pool_bytes_alloc(p->rows, layer);
    int pi = pair_of(p, layer);
    if (pi >= 0 && layer == p->pair_la[pi]) a += (uint64_t)p->pairs[pi].cap * kvs_mc_row_bytes(p->nkv, p->d);
    return a;
}
