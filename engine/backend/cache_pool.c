/* The K/V cache pool (see cache_pool.h): bookkeeping of rows, blocks and bytes over the backend's
 * kv_* entries, which alone read and write the storage. Depends on backend.h and libc. */
#include "cache_pool.h"

#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_cache_pool_new(struct kvs_cache_pool **out, struct kvs_backend *be, int n_layer, int dkv,
                                   int block, char *err, size_t errlen)
{
    *out = NULL;
    if (n_layer <= 0 || dkv <= 0 || block <= 0) {
        kvs_seterr(err, errlen, "cache pool: bad shape (%d layers, %d wide, blocks of %d)", n_layer, dkv, block);
        return KVS_ERR_ARG;
    }
    struct kvs_cache_pool *p = calloc(1, sizeof *p);
    if (p) p->rows = calloc((size_t)n_layer, sizeof *p->rows);
    if (!p || !p->rows) {
        free(p);
        kvs_seterr(err, errlen, "cache pool: out of memory");
        return KVS_ERR_NOMEM;
    }
    p->be = be;
    p->n_layer = n_layer;
    p->dkv = dkv;
    p->block = block;
    *out = p;
    return KVS_OK;
}

void kvs_cache_pool_delete(struct kvs_cache_pool *p)
{
    if (!p) return;
    for (int l = 0; l < p->n_layer; l++) {
        p->rows[l].n = 0;
        if (p->rows[l].cap) kvs_backend_kv_grow(p->be, &p->rows[l], p->dkv, 0);
    }
    for (int i = 0; i < 2; i++) kvs_backend_buf_free(p->be, &p->stage[i]);
    free(p->rows);
    free(p);
}

/* Staging buffer I of at least BYTES (kept for the pool's life: no allocation per call). */
static enum kvs_status stage_buf(struct kvs_cache_pool *p, int i, size_t bytes)
{
    if (p->stage[i].data && p->stage[i].bytes >= bytes) return KVS_OK;
    kvs_backend_buf_free(p->be, &p->stage[i]);
    return kvs_backend_buf_alloc(p->be, &p->stage[i], bytes + bytes / 2);
}

static enum kvs_status fail(struct kvs_cache_pool *p, enum kvs_status st, const char *what, int layer)
{
    const char *why = p->be && p->be->err[0] ? kvs_backend_error(p->be) : kvs_status_str(st);
    kvs_seterr(p->err, sizeof p->err, "cache pool (%s): %s, layer %d: %s", kvs_backend_name(p->be), what, layer, why);
    return st;
}

static bool layer_ok(struct kvs_cache_pool *p, int layer)
{
    if (layer >= 0 && layer < p->n_layer) return true;
    kvs_seterr(p->err, sizeof p->err, "cache pool: layer %d out of range (%d layers)", layer, p->n_layer);
    return false;
}

enum kvs_status kvs_cache_pool_store_buf(struct kvs_cache_pool *p, int layer, int T, const int32_t *pos,
                                         const float *k, const float *v)
{
    if (!layer_ok(p, layer) || T < 0) return KVS_ERR_ARG;
    struct kvs_kv_rows *L = &p->rows[layer];
    if ((int64_t)L->n + T > (int64_t)1 << 30) return fail(p, KVS_ERR_ARG, "too many rows", layer);
    if (L->n + T > L->cap) {
        int cap = (L->n + T + p->block - 1) / p->block * p->block;
        enum kvs_status st = kvs_backend_kv_grow(p->be, L, p->dkv, cap);
        if (st != KVS_OK) return fail(p, st, "growing", layer);
    }
    bool dense = L->n == 0 || L->dense;
    for (int t = 0; t < T && dense; t++) dense = pos[t] == L->n + t;
    enum kvs_status st = kvs_backend_kv_store(p->be, L, p->dkv, T, pos, k, v);
    if (st != KVS_OK) return fail(p, st, "storing", layer);
    L->dense = dense;
    return KVS_OK;
}

enum kvs_status kvs_cache_pool_attend_buf(struct kvs_cache_pool *p, int layer, int T, const int32_t *q_pos,
                                          int n_head, int n_head_kv, int head_dim, const float *q, float *out,
                                          float *mass)
{
    if (!layer_ok(p, layer)) return KVS_ERR_ARG;
    struct kvs_kv_attend_args a = {.T = T, .q_pos = q_pos, .n_head = n_head, .n_head_kv = n_head_kv,
                                   .head_dim = head_dim};
    if (n_head_kv * head_dim != p->dkv) return fail(p, KVS_ERR_ARG, "attention heads do not match the rows", layer);
    enum kvs_status st = kvs_backend_kv_attend(p->be, &p->rows[layer], &a, q, out, mass);
    return st == KVS_OK ? KVS_OK : fail(p, st, "attention", layer);
}

/* Host arrays on a backend whose memory is not the host's go through the pool's staging buffers. */
enum kvs_status kvs_cache_pool_store(struct kvs_cache_pool *p, int layer, int T, const int32_t *pos,
                                     const float *k, const float *v)
{
    if (kvs_backend_host_memory(p->be)) return kvs_cache_pool_store_buf(p, layer, T, pos, k, v);
    if (!layer_ok(p, layer) || T < 0) return KVS_ERR_ARG;
    size_t bytes = (size_t)T * (size_t)p->dkv * sizeof(float);
    enum kvs_status st = stage_buf(p, 0, bytes);
    if (st == KVS_OK) st = stage_buf(p, 1, bytes);
    if (st == KVS_OK) st = kvs_backend_buf_upload(p->be, &p->stage[0], 0, k, bytes);
    if (st == KVS_OK) st = kvs_backend_buf_upload(p->be, &p->stage[1], 0, v, bytes);
    if (st != KVS_OK) return fail(p, st, "staging", layer);
    return kvs_cache_pool_store_buf(p, layer, T, pos, p->stage[0].data, p->stage[1].data);
}

enum kvs_status kvs_cache_pool_attend(struct kvs_cache_pool *p, int layer, int T, const int32_t *q_pos,
                                      int n_head, int n_head_kv, int head_dim, const float *q, float *out,
                                      float *mass)
{
    if (kvs_backend_host_memory(p->be))
        return kvs_cache_pool_attend_buf(p, layer, T, q_pos, n_head, n_head_kv, head_dim, q, out, mass);
    if (!layer_ok(p, layer) || T < 0 || n_head <= 0 || head_dim <= 0) return KVS_ERR_ARG;
    size_t bytes = (size_t)T * (size_t)n_head * (size_t)head_dim * sizeof(float);
    enum kvs_status st = stage_buf(p, 0, bytes);
    if (st == KVS_OK) st = stage_buf(p, 1, bytes);
    if (st == KVS_OK) st = kvs_backend_buf_upload(p->be, &p->stage[0], 0, q, bytes);
    if (st != KVS_OK) return fail(p, st, "staging", layer);
    st = kvs_cache_pool_attend_buf(p, layer, T, q_pos, n_head, n_head_kv, head_dim, p->stage[0].data,
                                   p->stage[1].data, mass);
    if (st == KVS_OK && (st = kvs_backend_buf_download(p->be, out, &p->stage[1], 0, bytes)) != KVS_OK)
        return fail(p, st, "staging", layer);
    return st;
}

enum kvs_status kvs_cache_pool_compact(struct kvs_cache_pool *p, int layer, const uint8_t *keep)
{
    if (!layer_ok(p, layer)) return KVS_ERR_ARG;
    struct kvs_kv_rows *L = &p->rows[layer];
    int n0 = L->n, kept = 0;
    bool dense = L->dense;
    for (int i = 0; i < n0; i++) /* still dense only when the kept rows are a prefix */
        if (keep[i]) {
            dense = dense && kept == i;
            kept++;
        }
    enum kvs_status st = kvs_backend_kv_compact(p->be, L, p->dkv, keep);
    if (st != KVS_OK) return fail(p, st, "compacting", layer);
    L->dense = dense;
    int cap = (L->n + p->block - 1) / p->block * p->block;
    /* giving whole blocks back is best effort: a failed move leaves the rows where they were, and
     * the capacity (and so the allocated bytes) as it was */
    if (cap < L->cap) kvs_backend_kv_grow(p->be, L, p->dkv, cap);
    return KVS_OK;
}

enum kvs_status kvs_cache_pool_read(struct kvs_cache_pool *p, int layer, int row0, int n, uint16_t *k,
                                    uint16_t *v, int32_t *pos)
{
    if (!layer_ok(p, layer)) return KVS_ERR_ARG;
    enum kvs_status st = kvs_backend_kv_read(p->be, &p->rows[layer], p->dkv, row0, n, k, v, pos);
    return st == KVS_OK ? KVS_OK : fail(p, st, "reading rows", layer);
}

enum kvs_status kvs_cache_pool_newest_keys(struct kvs_cache_pool *p, uint16_t *k)
{
    const struct kvs_kv_rows **Ls = calloc((size_t)p->n_layer, sizeof *Ls);
    int32_t *rows = calloc((size_t)p->n_layer, sizeof *rows);
    int *lay = malloc((size_t)p->n_layer * sizeof *lay);
    uint16_t *g = malloc((size_t)p->n_layer * p->dkv * sizeof(uint16_t));
    enum kvs_status st = KVS_ERR_NOMEM;
    if (Ls && rows && lay && g) {
        int n = 0;
        for (int l = 0; l < p->n_layer; l++)
            if (p->rows[l].n > 0) Ls[n] = &p->rows[l], rows[n] = p->rows[l].n - 1, lay[n++] = l;
        st = kvs_backend_kv_keys_gather(p->be, Ls, n, p->dkv, rows, g);
        if (st == KVS_OK) {
            memset(k, 0, (size_t)p->n_layer * p->dkv * sizeof(uint16_t));
            for (int i = 0; i < n; i++) memcpy(k + (size_t)lay[i] * p->dkv, g + (size_t)i * p->dkv, p->dkv * sizeof(uint16_t));
        }
    }
    free(Ls), free(rows), free(lay), free(g);
    return st == KVS_OK ? KVS_OK : fail(p, st, "reading the newest keys", 0);
}

void kvs_cache_pool_reset(struct kvs_cache_pool *p)
{
    for (int l = 0; l < p->n_layer; l++) p->rows[l].n = 0, p->rows[l].dense = true;
}

int kvs_cache_pool_rows(const struct kvs_cache_pool *p, int layer) { return p->rows[layer].n; }

uint64_t kvs_cache_pool_bytes_held(const struct kvs_cache_pool *p, int layer)
{
    return (uint64_t)p->rows[layer].n * p->dkv * 2 * sizeof(uint16_t);
}

uint64_t kvs_cache_pool_bytes_alloc(const struct kvs_cache_pool *p, int layer)
{
    return (uint64_t)p->rows[layer].cap * ((uint64_t)p->dkv * 2 * sizeof(uint16_t) + sizeof(int32_t));
}

bool kvs_cache_pool_native(const struct kvs_cache_pool *p) { return kvs_backend_kv_native(p->be); }
