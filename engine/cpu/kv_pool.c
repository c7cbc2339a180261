/* CPU twin of kernels/kv_pool.cu: the rows of a K/V cache pool (struct kvs_kv_rows) in host memory,
 * grown by realloc, fp32 -> fp16 stores (saturating at ±65504, counted in L->clamped), attention
 * through attention.h (the path the `full` press has always run) with the per-row attention mass
 * eviction needs, compaction and row reads.
 * Depends on kv_pool.h, attention.h, quant.h and libc; never prints. */
#include "kv_pool.h"

#include "attention.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_cpu_kv_grow(struct kvs_kv_rows *L, int dkv, int cap)
{
    if (dkv <= 0 || cap < L->n) return KVS_ERR_ARG;
    if (cap == 0) {
        free(L->k), free(L->v), free(L->pos);
        L->k = L->v = L->pos = NULL;
        L->cap = 0;
        return KVS_OK;
    }
    size_t row = (size_t)dkv * sizeof(uint16_t);
    if ((size_t)cap > SIZE_MAX / row) return KVS_ERR_ARG;
    void *k = realloc(L->k, (size_t)cap * row);
    if (k) L->k = k;
    void *v = realloc(L->v, (size_t)cap * row);
    if (v) L->v = v;
    void *p = realloc(L->pos, (size_t)cap * sizeof(int32_t));
    if (p) L->pos = p;
    /* a failed realloc left its block as it was: L stays consistent with the old capacity, or
     * with the larger blocks that did move (only the capacity is not raised) */
    if (!k || !v || !p) return KVS_ERR_NOMEM;
    L->cap = cap;
    return KVS_OK;
}

enum kvs_status kvs_cpu_kv_store(struct kvs_kv_rows *L, int dkv, int T, const int32_t *pos, const float *k,
                                 const float *v)
{
    if (T < 0 || dkv <= 0 || L->n + T > L->cap) return KVS_ERR_ARG;
    uint16_t *K = L->k, *V = L->v;
    int32_t *P = L->pos;
    for (int t = 0; t < T; t++) {
        L->clamped += kvs_f32_to_f16_row(k + (size_t)t * dkv, K + (size_t)(L->n + t) * dkv, dkv);
        L->clamped += kvs_f32_to_f16_row(v + (size_t)t * dkv, V + (size_t)(L->n + t) * dkv, dkv);
        P[L->n + t] = pos[t];
    }
    L->n += T;
    return KVS_OK;
}

enum kvs_status kvs_cpu_kv_attend(struct kvs_pool *pool, const struct kvs_kv_rows *L,
                                  const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass)
{
    if (a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || a->n_head % a->n_head_kv || a->head_dim <= 0)
        return KVS_ERR_ARG;
    int n = L->n, dq = a->n_head * a->head_dim;
    if (mass) memset(mass, 0, (size_t)n * sizeof(float));
    if (a->T == 0) return KVS_OK;
    if (n == 0) {
        memset(out, 0, (size_t)a->T * dq * sizeof(float));
        return KVS_OK;
    }
    struct kvs_attn_args aa = {.T = a->T, .n_head = a->n_head, .n_head_kv = a->n_head_kv, .head_dim = a->head_dim,
                               .q = q, .out = out, .qpos = a->q_pos, .n_keys = n, .k = L->k, .v = L->v,
                               .kpos = L->dense ? NULL : L->pos};
    if (!mass) return kvs_attn_f16(pool, &aa) ? KVS_OK : KVS_ERR_NOMEM;
    size_t rows = (size_t)a->T * a->n_head;
    float *probs = malloc(rows * (size_t)n * sizeof(float));
    if (!probs) return KVS_ERR_NOMEM;
    aa.probs = probs;
    bool ok = kvs_attn_f16(pool, &aa);
    if (ok) /* fixed order: rows outer, so the sum does not depend on threads */
        for (size_t r = 0; r < rows; r++)
            for (int j = 0; j < n; j++) mass[j] += probs[r * n + j];
    free(probs);
    return ok ? KVS_OK : KVS_ERR_NOMEM;
}

enum kvs_status kvs_cpu_kv_compact(struct kvs_kv_rows *L, int dkv, const uint8_t *keep)
{
    if (dkv <= 0) return KVS_ERR_ARG;
    uint16_t *K = L->k, *V = L->v;
    int32_t *P = L->pos;
    int w = 0;
    for (int i = 0; i < L->n; i++) {
        if (!keep[i]) continue;
        if (w != i) {
            memcpy(K + (size_t)w * dkv, K + (size_t)i * dkv, (size_t)dkv * sizeof(uint16_t));
            memcpy(V + (size_t)w * dkv, V + (size_t)i * dkv, (size_t)dkv * sizeof(uint16_t));
            P[w] = P[i];
        }
        w++;
    }
    L->n = w;
    return KVS_OK;
}

enum kvs_status kvs_cpu_kv_read(const struct kvs_kv_rows *L, int dkv, int row0, int n, uint16_t *k, uint16_t *v,
                                int32_t *pos)
{
    if (dkv <= 0 || row0 < 0 || n < 0 || row0 > L->n - n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    const uint16_t *K = L->k, *V = L->v;
    const int32_t *P = L->pos;
    if (k) memcpy(k, K + (size_t)row0 * dkv, (size_t)n * dkv * sizeof(uint16_t));
    if (v) memcpy(v, V + (size_t)row0 * dkv, (size_t)n * dkv * sizeof(uint16_t));
    if (pos) memcpy(pos, P + row0, (size_t)n * sizeof(int32_t));
    return KVS_OK;
}
