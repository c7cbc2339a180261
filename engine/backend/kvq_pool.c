/* The quantized K/V pool (see kvq_pool.h): bookkeeping of tiers, blocks and bytes over the
 * backend's kv_* and kvq_* entries, which alone read and write the storage. Depends on backend.h,
 * quant_codec.h (sizes) and libc. */
#include "kvq_pool.h"

#include "quant_codec.h"

#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_kvq_pool_new(struct kvs_kvq_pool **out, struct kvs_backend *be, int n_layer, int dkv,
                                 uint32_t bits, uint32_t group, int block, int n_score, char *err, size_t errlen)
{
    *out = NULL;
    if (n_layer <= 0 || dkv <= 0 || block <= 0 || n_score < 0 || group == 0 || group > (1u << 16) ||
        (bits != 2 && bits != 4 && bits != 8)) {
        kvs_seterr(err, errlen, "quantized pool: bad shape (%d layers, %d wide, %u bits, groups of %u)", n_layer,
                   dkv, bits, group);
        return KVS_ERR_ARG;
    }
    struct kvs_kvq_pool *p = calloc(1, sizeof *p);
    if (p) p->rows = calloc((size_t)n_layer, sizeof *p->rows);
    if (!p || !p->rows) {
        free(p);
        kvs_seterr(err, errlen, "quantized pool: out of memory");
        return KVS_ERR_NOMEM;
    }
    p->be = be;
    p->fbe = kvs_backend_kvq_native(be) ? be : NULL;
    p->n_layer = n_layer;
    p->block = block;
    p->n_score = n_score;
    p->f = (struct kvs_kvq_fmt){.dkv = dkv, .bits = bits, .group = group,
                                .vrow = kvs_qrow_bytes((uint32_t)dkv, bits, group)};
    for (int l = 0; l < n_layer; l++) p->rows[l].f16.dense = true;
    *out = p;
    return KVS_OK;
}

void kvs_kvq_pool_delete(struct kvs_kvq_pool *p)
{
    if (!p) return;
    for (int l = 0; l < p->n_layer; l++) {
        struct kvs_kvq_rows *L = &p->rows[l];
        L->f16.n = 0;
        if (L->f16.cap) kvs_backend_kv_grow(p->fbe, &L->f16, p->f.dkv, 0);
        L->tq = L->nblk = 0;
        L->kq_bytes = 0;
        if (L->tq_cap || L->kq_cap || L->score) kvs_backend_kvq_grow(p->be, L, &p->f, 0, 0, 0);
        free(L->blk_nt), free(L->blk_koff), free(L->blk_t0);
    }
    for (int i = 0; i < 2; i++) kvs_backend_buf_free(p->be, &p->stage[i]), free(p->host[i]);
    free(p->pos);
    free(p->rows);
    free(p);
}

static enum kvs_status fail(struct kvs_kvq_pool *p, enum kvs_status st, const char *what, int layer)
{
    const char *why = p->be && p->be->err[0] ? kvs_backend_error(p->be) : kvs_status_str(st);
    kvs_seterr(p->err, sizeof p->err, "quantized pool (%s): %s, layer %d: %s", kvs_backend_name(p->be), what, layer,
               why);
    return st;
}

static bool layer_ok(struct kvs_kvq_pool *p, int layer)
{
    if (layer >= 0 && layer < p->n_layer) return true;
    kvs_seterr(p->err, sizeof p->err, "quantized pool: layer %d out of range (%d layers)", layer, p->n_layer);
    return false;
}

/* On a backend whose memory is not the host's, host arrays go through two staging buffers kept for
 * the pool's life. */
static bool staged(const struct kvs_kvq_pool *p) { return p->fbe && !kvs_backend_host_memory(p->be); }

static enum kvs_status stage_buf(struct kvs_kvq_pool *p, int i, size_t bytes)
{
    if (p->stage[i].data && p->stage[i].bytes >= bytes) return KVS_OK;
    kvs_backend_buf_free(p->be, &p->stage[i]);
    return kvs_backend_buf_alloc(p->be, &p->stage[i], bytes + bytes / 2 + 1);
}

/* The fp16 tier's capacity: whole blocks, at least ROWS, no more than one spare block. */
static enum kvs_status f16_fit(struct kvs_kvq_pool *p, struct kvs_kvq_rows *L, int rows)
{
    int cap = (rows + p->block - 1) / p->block * p->block;
    if (rows <= L->f16.cap && cap >= L->f16.cap) return KVS_OK;
    if (cap == 0) cap = p->block;
    if (cap == L->f16.cap) return KVS_OK;
    return kvs_backend_kv_grow(p->fbe, &L->f16, p->f.dkv, cap);
}

/* Appends T rows whose k, v are where the fp16 tier's backend (fbe) reads them. */
static enum kvs_status store_rows(struct kvs_kvq_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                  const float *v)
{
    if (!layer_ok(p, layer) || T < 0) return KVS_ERR_ARG;
    struct kvs_kvq_rows *L = &p->rows[layer];
    if ((int64_t)L->f16.n + T > (int64_t)1 << 30) return fail(p, KVS_ERR_ARG, "too many rows", layer);
    if (p->n_score)
        for (int t = 0; t < T; t++)
            if (pos[t] < 0 || pos[t] >= p->n_score) return fail(p, KVS_ERR_ARG, "position past the context", layer);
    enum kvs_status st = KVS_OK;
    if (L->f16.n + T > L->f16.cap && (st = f16_fit(p, L, L->f16.n + T)) != KVS_OK) return fail(p, st, "growing", layer);
    bool dense = L->f16.n + L->tq == 0 || (L->f16.dense && L->tq == 0);
    for (int t = 0; t < T && dense; t++) dense = pos[t] == L->f16.n + t;
    if ((st = kvs_backend_kv_store(p->fbe, &L->f16, p->f.dkv, T, pos, k, v)) != KVS_OK)
        return fail(p, st, "storing", layer);
    L->f16.dense = dense;
    return KVS_OK;
}

/* Host scratch of BYTES for a device backend without the kvq entries (its pool is host memory). */
static float *host_buf(struct kvs_kvq_pool *p, int i, size_t bytes)
{
    if (p->host_cap[i] < bytes) {
        float *h = realloc(p->host[i], bytes);
        if (!h) return NULL;
        p->host[i] = h;
        p->host_cap[i] = bytes;
    }
    return p->host[i];
}

enum kvs_status kvs_kvq_pool_store(struct kvs_kvq_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                   const float *v)
{
    if (!layer_ok(p, layer) || T < 0) return KVS_ERR_ARG;
    if (!staged(p)) return store_rows(p, layer, T, pos, k, v);
    size_t bytes = (size_t)T * (size_t)p->f.dkv * sizeof(float);
    enum kvs_status st;
    if ((st = stage_buf(p, 0, bytes)) != KVS_OK || (st = stage_buf(p, 1, bytes)) != KVS_OK ||
        (st = kvs_backend_buf_upload(p->be, &p->stage[0], 0, k, bytes)) != KVS_OK ||
        (st = kvs_backend_buf_upload(p->be, &p->stage[1], 0, v, bytes)) != KVS_OK)
        return fail(p, st, "staging", layer);
    return store_rows(p, layer, T, pos, p->stage[0].data, p->stage[1].data);
}

enum kvs_status kvs_kvq_pool_store_buf(struct kvs_kvq_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                       const float *v)
{
    if (!layer_ok(p, layer) || T < 0) return KVS_ERR_ARG;
    if (p->fbe || kvs_backend_host_memory(p->be)) return store_rows(p, layer, T, pos, k, v);
    /* a device backend without the entries: its rows come to the host pool */
    size_t bytes = (size_t)T * (size_t)p->f.dkv * sizeof(float);
    float *hk = host_buf(p, 0, bytes), *hv = host_buf(p, 1, bytes);
    if (!hk || !hv) return fail(p, KVS_ERR_NOMEM, "staging", layer);
    struct kvs_buf bk = {(void *)k, bytes}, bv = {(void *)v, bytes};
    enum kvs_status st;
    if ((st = kvs_backend_buf_download(p->be, hk, &bk, 0, bytes)) != KVS_OK ||
        (st = kvs_backend_buf_download(p->be, hv, &bv, 0, bytes)) != KVS_OK)
        return fail(p, st, "staging", layer);
    return store_rows(p, layer, T, pos, hk, hv);
}

/* Room for one more block: the host block table, packed tokens and key bytes (doubling). */
static enum kvs_status block_room(struct kvs_kvq_pool *p, struct kvs_kvq_rows *L)
{
    if (L->nblk == L->blk_cap) {
        int cap = L->blk_cap ? L->blk_cap * 2 : 16;
        uint32_t *a = realloc(L->blk_nt, (size_t)cap * sizeof *a);
        if (a) L->blk_nt = a;
        uint32_t *b = realloc(L->blk_koff, (size_t)cap * sizeof *b);
        if (b) L->blk_koff = b;
        uint32_t *c = realloc(L->blk_t0, (size_t)cap * sizeof *c);
        if (c) L->blk_t0 = c;
        if (!a || !b || !c) return KVS_ERR_NOMEM;
        L->blk_cap = cap;
    }
    int G = (int)p->f.group;
    size_t kb = kvs_qcol_bytes(p->f.group, (uint32_t)p->f.dkv, p->f.bits);
    if (L->tq + G <= L->tq_cap && L->kq_bytes + kb <= L->kq_cap && (!p->n_score || L->score)) return KVS_OK;
    int tq_cap = L->tq_cap;
    size_t kq_cap = L->kq_cap;
    if (L->tq + G > tq_cap) tq_cap = KVS_MAX(2 * tq_cap, 8 * G);
    if (L->kq_bytes + kb > kq_cap) kq_cap = KVS_MAX(2 * kq_cap, 8 * kb);
    return kvs_backend_kvq_grow(p->be, L, &p->f, tq_cap, kq_cap, p->n_score);
}

/* Keeps the fp16 tier's rows whose KEEP (f16.n) byte is set; gives whole spare blocks back. */
static enum kvs_status f16_compact(struct kvs_kvq_pool *p, struct kvs_kvq_rows *L, const uint8_t *keep)
{
    int kept = 0;
    bool dense = L->f16.dense;
    for (int i = 0; i < L->f16.n; i++)
        if (keep[i]) {
            dense = dense && kept == i;
            kept++;
        }
    if (kept == L->f16.n) return KVS_OK;
    enum kvs_status st = kvs_backend_kv_compact(p->fbe, &L->f16, p->f.dkv, keep);
    if (st != KVS_OK) return st;
    L->f16.dense = dense;
    /* giving blocks back is best effort: a failed move keeps the rows and the capacity */
    f16_fit(p, L, L->f16.n);
    return KVS_OK;
}

enum kvs_status kvs_kvq_pool_quantize(struct kvs_kvq_pool *p, int layer, int residual)
{
    if (!layer_ok(p, layer) || residual < 0) return KVS_ERR_ARG;
    struct kvs_kvq_rows *L = &p->rows[layer];
    int G = (int)p->f.group;
    if (L->f16.n < residual + G) return KVS_OK;
    uint8_t *keep = malloc((size_t)L->f16.n);
    if (!keep) return fail(p, KVS_ERR_NOMEM, "quantizing", layer);
    enum kvs_status st = KVS_OK;
    while (st == KVS_OK && L->f16.n >= residual + G) {
        if ((st = block_room(p, L)) != KVS_OK) break;
        if ((st = kvs_backend_kvq_quantize(p->be, L, &p->f)) != KVS_OK) break;
        memset(keep, 0, (size_t)G);
        memset(keep + G, 1, (size_t)(L->f16.n - G));
        st = f16_compact(p, L, keep);
    }
    free(keep);
    return st == KVS_OK ? KVS_OK : fail(p, st, "quantizing", layer);
}

/* Attention with q and out where the kvq entries (or the CPU twin, host) read them. */
static enum kvs_status attend_rows(struct kvs_kvq_pool *p, int layer, int T, const int32_t *q_pos, int n_head,
                                   int n_head_kv, int head_dim, const float *q, float *out, bool score)
{
    if (n_head_kv * head_dim != p->f.dkv) return fail(p, KVS_ERR_ARG, "attention heads do not match the rows", layer);
    if (score && !p->n_score) return fail(p, KVS_ERR_ARG, "no scores kept", layer);
    struct kvs_kvq_rows *L = &p->rows[layer];
    enum kvs_status st;
    if (score && !L->score && (st = kvs_backend_kvq_grow(p->be, L, &p->f, L->tq_cap, L->kq_cap, p->n_score)) != KVS_OK)
        return fail(p, st, "allocating the scores", layer);
    struct kvs_kv_attend_args a = {.T = T, .q_pos = q_pos, .n_head = n_head, .n_head_kv = n_head_kv,
                                   .head_dim = head_dim};
    st = kvs_backend_kvq_attend(p->be, L, &p->f, &a, q, out, score);
    return st == KVS_OK ? KVS_OK : fail(p, st, "attention", layer);
}

enum kvs_status kvs_kvq_pool_attend(struct kvs_kvq_pool *p, int layer, int T, const int32_t *q_pos, int n_head,
                                    int n_head_kv, int head_dim, const float *q, float *out, bool score)
{
    if (!layer_ok(p, layer) || T < 0 || n_head <= 0 || head_dim <= 0) return KVS_ERR_ARG;
    if (!staged(p)) return attend_rows(p, layer, T, q_pos, n_head, n_head_kv, head_dim, q, out, score);
    size_t bytes = (size_t)T * (size_t)n_head * (size_t)head_dim * sizeof(float);
    enum kvs_status st;
    if ((st = stage_buf(p, 0, bytes)) != KVS_OK || (st = stage_buf(p, 1, bytes)) != KVS_OK ||
        (st = kvs_backend_buf_upload(p->be, &p->stage[0], 0, q, bytes)) != KVS_OK)
        return fail(p, st, "staging", layer);
    st = attend_rows(p, layer, T, q_pos, n_head, n_head_kv, head_dim, p->stage[0].data, p->stage[1].data, score);
    if (st == KVS_OK && (st = kvs_backend_buf_download(p->be, out, &p->stage[1], 0, bytes)) != KVS_OK)
        return fail(p, st, "staging", layer);
    return st;
}

enum kvs_status kvs_kvq_pool_attend_buf(struct kvs_kvq_pool *p, int layer, int T, const int32_t *q_pos, int n_head,
                                        int n_head_kv, int head_dim, const float *q, float *out, bool score)
{
    if (!layer_ok(p, layer) || T < 0 || n_head <= 0 || head_dim <= 0) return KVS_ERR_ARG;
    if (p->fbe || kvs_backend_host_memory(p->be))
        return attend_rows(p, layer, T, q_pos, n_head, n_head_kv, head_dim, q, out, score);
    size_t bytes = (size_t)T * (size_t)n_head * (size_t)head_dim * sizeof(float);
    float *hq = host_buf(p, 0, bytes), *ho = host_buf(p, 1, bytes);
    if (!hq || !ho) return fail(p, KVS_ERR_NOMEM, "staging", layer);
    struct kvs_buf bq = {(void *)q, bytes}, bo = {out, bytes};
    enum kvs_status st;
    if ((st = kvs_backend_buf_download(p->be, hq, &bq, 0, bytes)) != KVS_OK) return fail(p, st, "staging", layer);
    if ((st = attend_rows(p, layer, T, q_pos, n_head, n_head_kv, head_dim, hq, ho, score)) != KVS_OK) return st;
    if ((st = kvs_backend_buf_upload(p->be, &bo, 0, ho, bytes)) != KVS_OK) return fail(p, st, "staging", layer);
    return KVS_OK;
}

enum kvs_status kvs_kvq_pool_scores(struct kvs_kvq_pool *p, int layer, int n_ctx, int kernel, float *pooled)
{
    if (!layer_ok(p, layer)) return KVS_ERR_ARG;
    if (n_ctx < 0 || n_ctx > p->n_score) return fail(p, KVS_ERR_ARG, "scores past the context", layer);
    struct kvs_kvq_rows *L = &p->rows[layer];
    enum kvs_status st;
    if (!L->score && (st = kvs_backend_kvq_grow(p->be, L, &p->f, L->tq_cap, L->kq_cap, p->n_score)) != KVS_OK)
        return fail(p, st, "allocating the scores", layer);
    st = kvs_backend_kvq_scores(p->be, L, &p->f, n_ctx, kernel, pooled);
    return st == KVS_OK ? KVS_OK : fail(p, st, "eviction scores", layer);
}

enum kvs_status kvs_kvq_pool_drop(struct kvs_kvq_pool *p, int layer, const uint8_t *keep_by_pos, int n_ctx)
{
    if (!layer_ok(p, layer)) return KVS_ERR_ARG;
    struct kvs_kvq_rows *L = &p->rows[layer];
    int n = L->tq + L->f16.n;
    if (n > p->pos_cap) {
        int32_t *ps = realloc(p->pos, (size_t)n * sizeof(int32_t));
        if (!ps) return fail(p, KVS_ERR_NOMEM, "evicting", layer);
        p->pos = ps;
        p->pos_cap = n;
    }
    enum kvs_status st = KVS_OK;
    if (L->tq && (st = kvs_backend_kvq_read(p->be, L, &p->f, NULL, NULL, p->pos)) != KVS_OK)
        return fail(p, st, "reading positions", layer);
    if (L->f16.n && (st = kvs_backend_kv_read(p->fbe, &L->f16, p->f.dkv, 0, L->f16.n, NULL, NULL, p->pos + L->tq)) !=
                        KVS_OK)
        return fail(p, st, "reading positions", layer);
    uint8_t *keep = malloc((size_t)(n ? n : 1));
    if (!keep) return fail(p, KVS_ERR_NOMEM, "evicting", layer);
    bool all_q = true, all_f = true;
    for (int i = 0; i < n; i++) {
        if (p->pos[i] < 0 || p->pos[i] >= n_ctx) {
            free(keep);
            return fail(p, KVS_ERR_STATE, "a row's position is past the context", layer);
        }
        keep[i] = keep_by_pos[p->pos[i]] != 0;
        if (!keep[i]) *(i < L->tq ? &all_q : &all_f) = false;
    }
    if (!all_q && (st = kvs_backend_kvq_compact(p->be, L, &p->f, keep)) != KVS_OK) {
        free(keep);
        return fail(p, st, "compacting packed blocks", layer);
    }
    if (!all_f) {
        /* the fp16 tier's flags follow the packed ones (row numbering of the entries) */
        st = f16_compact(p, L, keep + (n - L->f16.n));
        if (st != KVS_OK) {
            free(keep);
            return fail(p, st, "compacting", layer);
        }
    }
    free(keep);
    return KVS_OK;
}

enum kvs_status kvs_kvq_pool_reset(struct kvs_kvq_pool *p)
{
    enum kvs_status st = KVS_OK;
    for (int l = 0; l < p->n_layer; l++) {
        struct kvs_kvq_rows *L = &p->rows[l];
        L->f16.n = 0;
        L->f16.dense = true;
        L->tq = L->nblk = 0;
        L->kq_bytes = 0;
        if (L->score && st == KVS_OK) st = kvs_backend_kvq_scores(p->be, L, &p->f, 0, 0, NULL);
    }
    return st == KVS_OK ? KVS_OK : fail(p, st, "resetting", 0);
}

int kvs_kvq_pool_rows(const struct kvs_kvq_pool *p, int layer) { return p->rows[layer].tq + p->rows[layer].f16.n; }

int kvs_kvq_pool_rows_packed(const struct kvs_kvq_pool *p, int layer) { return p->rows[layer].tq; }

uint64_t kvs_kvq_pool_bytes_packed(const struct kvs_kvq_pool *p, int layer)
{
    const struct kvs_kvq_rows *L = &p->rows[layer];
    return L->kq_bytes + (uint64_t)L->tq * (p->f.vrow + sizeof(int32_t));
}

uint64_t kvs_kvq_pool_bytes_held(const struct kvs_kvq_pool *p, int layer)
{
    const struct kvs_kvq_rows *L = &p->rows[layer];
    return (uint64_t)L->f16.n * ((uint64_t)p->f.dkv * 2 * sizeof(uint16_t) + sizeof(int32_t)) +
           kvs_kvq_pool_bytes_packed(p, layer);
}

uint64_t kvs_kvq_pool_bytes_alloc(const struct kvs_kvq_pool *p, int layer)
{
    const struct kvs_kvq_rows *L = &p->rows[layer];
    return (uint64_t)L->f16.cap * ((uint64_t)p->f.dkv * 2 * sizeof(uint16_t) + sizeof(int32_t)) + L->kq_cap +
           (uint64_t)L->tq_cap * (p->f.vrow + sizeof(int32_t)) + (uint64_t)L->n_score * sizeof(float);
}

bool kvs_kvq_pool_native(const struct kvs_kvq_pool *p) { return kvs_backend_kvq_native(p->be); }
