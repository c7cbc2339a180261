/* The K/V-row presses of DESIGN.md §5: `quant` (KIVI: keys quantized per channel in blocks of
 * quant_group tokens, values per token in channel groups, the newest quant_residual tokens in
 * fp16), `snapkv` (eviction by pooled attention mass from an observation window) and `streaming`
 * (sinks + window), alone or as quant+snapkv / quant+streaming. Everything is really stored packed
 * and counted from what is held. Without quant the rows live in a cache pool (cache_pool.h) in the
 * backend's memory: stores, attention with the attention mass, eviction by compaction are backend
 * entries. With quant the fp16 tier and packed blocks are still host memory here, and attention
 * dequantizes into fp16 scratch and runs attention.h (the next step moves them to the backend).
 * Depends on press.h, cache_pool.h, attention.h, quant.h, threads.h. */
#include "attention.h"
#include "cache_pool.h"
#include "commonkv_priv.h"
#include "quant.h"
#include "threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KV_BLOCK 256        /* fp16 tier grows in blocks of tokens */
#define KV_EVICT_EVERY 32   /* decoded tokens between evictions */

struct qblk {
    uint32_t nt;            /* tokens in the block (< quant_group after an eviction) */
    uint8_t *k;             /* kvs_qcol (nt tokens x dkv channels), keys after RoPE */
    uint8_t *v;             /* nt rows of kvs_qrow (dkv) */
    int32_t *pos;           /* (nt) */
};

struct kvl {
    uint16_t *k16, *v16;    /* (cap, dkv) fp16 */
    int32_t *p16;           /* (cap) */
    uint32_t n16, cap16;
    struct qblk *blk;
    uint32_t nblk, capblk;
    float *score;           /* (n_ctx_max) attention mass by position (snapkv), or NULL */
};

struct kvp {
    struct kvs_press base;
    int N, dkv, nh, nkv, d, n_ctx_max, n_ctx, last_evict;
    bool quant, snap, stream;
    uint32_t bits, qgroup, qres, window, kernel, capacity, sinks, swin;
    float cr;
    char note[160];
    struct kvl *L;
    struct kvs_cache_pool *cp; /* without quant: every layer's rows, on base.be (NULL until the first store) */
    uint16_t *sk, *sv;      /* attention scratch (rows, dkv) fp16 */
    int32_t *sp;
    float *probs;
    size_t scap, pcap;
    uint32_t *boff;         /* (nblk) scratch row of each packed block */
    float *tbuf;            /* (threads, qgroup, dkv) unpacking scratch */
    uint32_t boff_cap;
    int tbuf_nth;
};

static uint64_t blk_bytes(const struct kvp *p, uint32_t nt)
{
    return (uint64_t)kvs_qcol_bytes(nt, (uint32_t)p->dkv, p->bits) +
           (uint64_t)nt * (kvs_qrow_bytes((uint32_t)p->dkv, p->bits, p->qgroup) + 4);
}

static uint64_t layer_held(const struct kvp *p, const struct kvl *L)
{
    uint64_t b = (uint64_t)L->n16 * ((uint64_t)p->dkv * 4 + 4);
    for (uint32_t i = 0; i < L->nblk; i++) b += blk_bytes(p, L->blk[i].nt);
    return b;
}

static uint64_t layer_alloc(const struct kvp *p, const struct kvl *L)
{
    uint64_t b = (uint64_t)L->cap16 * ((uint64_t)p->dkv * 4 + 4) + (uint64_t)L->capblk * sizeof(struct qblk);
    for (uint32_t i = 0; i < L->nblk; i++) b += blk_bytes(p, L->blk[i].nt);
    return b;
}

static uint32_t layer_tokens(const struct kvl *L)
{
    uint32_t n = L->n16;
    for (uint32_t i = 0; i < L->nblk; i++) n += L->blk[i].nt;
    return n;
}

static bool f16_reserve(struct kvp *p, struct kvl *L, uint32_t need)
{
    if (need <= L->cap16 && (need + KV_BLOCK < L->cap16) == false) return true;
    uint32_t cap = (need + KV_BLOCK - 1) / KV_BLOCK * KV_BLOCK;
    if (cap == 0) cap = KV_BLOCK;
    uint16_t *k = realloc(L->k16, (size_t)cap * p->dkv * 2);
    if (k) L->k16 = k;
    uint16_t *v = realloc(L->v16, (size_t)cap * p->dkv * 2);
    if (v) L->v16 = v;
    int32_t *ps = realloc(L->p16, (size_t)cap * 4);
    if (ps) L->p16 = ps;
    if (!k || !v || !ps) return false;
    L->cap16 = cap;
    return true;
}

/* The pool of the rows without quant, on the press's current backend, made on first use. */
static enum kvs_status kv_pool(struct kvp *p)
{
    if (p->cp) return KVS_OK;
    char e[256];
    enum kvs_status st = kvs_cache_pool_new(&p->cp, p->base.be, p->N, p->dkv, KV_BLOCK, e, sizeof e);
    if (st != KVS_OK) kvs_seterr(p->base.err, sizeof p->base.err, "%s: %s", p->base.cfg.spec, e);
    return st;
}

/* Grows the attention scratch to N rows (positions and the fp16 rows of the quantized path). */
static bool scratch_reserve(struct kvp *p, uint32_t n)
{
    if (n <= p->scap) return true;
    size_t cap = (n + KV_BLOCK - 1) / KV_BLOCK * KV_BLOCK;
    uint16_t *a = realloc(p->sk, cap * p->dkv * 2);
    if (a) p->sk = a;
    uint16_t *b = realloc(p->sv, cap * p->dkv * 2);
    if (b) p->sv = b;
    int32_t *c = realloc(p->sp, cap * 4);
    if (c) p->sp = c;
    if (!a || !b || !c) return false;
    p->scap = cap;
    return true;
}

static enum kvs_status kv_store(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *xn,
                                const float *k, const float *v)
{
    struct kvp *p = (struct kvp *)pr;
    struct kvl *L = &p->L[layer];
    if (!k || !v) {
        kvs_seterr(pr->err, sizeof pr->err, "%s: keys/values not computed", pr->cfg.spec);
        return KVS_ERR_STATE;
    }
    if (!p->quant) {
        enum kvs_status st = kv_pool(p);
        if (st == KVS_OK) st = kvs_cache_pool_store(p->cp, layer, T, pos, k, v);
        if (st != KVS_OK && p->cp) kvs_seterr(pr->err, sizeof pr->err, "%s: %s", pr->cfg.spec, p->cp->err);
        return st;
    }
    if (!f16_reserve(p, L, L->n16 + (uint32_t)T)) {
        kvs_seterr(pr->err, sizeof pr->err, "%s: out of memory storing layer %d", pr->cfg.spec, layer);
        return KVS_ERR_NOMEM;
    }
    for (int t = 0; t < T; t++) {
        kvs_f32_to_f16_row(k + (size_t)t * p->dkv, L->k16 + (size_t)L->n16 * p->dkv, p->dkv);
        kvs_f32_to_f16_row(v + (size_t)t * p->dkv, L->v16 + (size_t)L->n16 * p->dkv, p->dkv);
        L->p16[L->n16++] = pos[t];
    }
    return KVS_OK;
}

/* Packed blocks [b, e) of layer L to fp16 rows of the attention scratch, at their offsets. */
struct unpack_job {
    struct kvp *p;
    const struct kvl *L;
};

static void unpack_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct unpack_job *j = ctx;
    struct kvp *p = j->p;
    const uint32_t dkv = (uint32_t)p->dkv, vb = kvs_qrow_bytes(dkv, p->bits, p->qgroup);
    float *f = p->tbuf + (size_t)thread * p->qgroup * dkv;
    for (int64_t bi = b; bi < e; bi++) {
        const struct qblk *q2 = &j->L->blk[bi];
        uint32_t at = p->boff[bi];
        kvs_qcol_decode(q2->k, q2->nt, dkv, p->bits, f);
        for (uint32_t t = 0; t < q2->nt; t++) kvs_f32_to_f16_row(f + (size_t)t * dkv, p->sk + (size_t)(at + t) * dkv, (int)dkv);
        for (uint32_t t = 0; t < q2->nt; t++) {
            kvs_qrow_decode(q2->v + (size_t)t * vb, dkv, p->bits, p->qgroup, f);
            kvs_f32_to_f16_row(f, p->sv + (size_t)(at + t) * dkv, (int)dkv);
        }
        memcpy(p->sp + at, q2->pos, (size_t)q2->nt * sizeof(int32_t));
    }
}

/* Attention over a layer's pooled rows; the observation window's queries (snapkv) also return the
 * attention mass of each row, added to the layer's score by position. */
static enum kvs_status kv_pool_attend(struct kvp *p, int layer, int T, const int32_t *pos, const float *q, float *out)
{
    struct kvs_press *pr = &p->base;
    enum kvs_status st = kv_pool(p);
    if (st != KVS_OK) return st;
    int n = kvs_cache_pool_rows(p->cp, layer), dq = p->nh * p->d;
    int obs = p->snap ? KVS_MIN(T, (int)p->window) : 0;
    if (T - obs > 0) st = kvs_cache_pool_attend(p->cp, layer, T - obs, pos, p->nh, p->nkv, p->d, q, out, NULL);
    if (st == KVS_OK && obs > 0) {
        if ((size_t)n > p->pcap) {
            float *pb = realloc(p->probs, (size_t)n * sizeof(float));
            if (!pb) goto oom;
            p->probs = pb;
            p->pcap = (size_t)n;
        }
        if (!scratch_reserve(p, (uint32_t)n)) goto oom;
        st = kvs_cache_pool_attend(p->cp, layer, obs, pos + (T - obs), p->nh, p->nkv, p->d,
                                   q + (size_t)(T - obs) * dq, out + (size_t)(T - obs) * dq, p->probs);
        if (st == KVS_OK) st = kvs_cache_pool_read(p->cp, layer, 0, n, NULL, NULL, p->sp);
        if (st == KVS_OK)
            for (int j = 0; j < n; j++) p->L[layer].score[p->sp[j]] += p->probs[j];
    }
    if (st != KVS_OK) kvs_seterr(pr->err, sizeof pr->err, "%s: %s", pr->cfg.spec, p->cp->err);
    return st;
oom:
    kvs_seterr(pr->err, sizeof pr->err, "%s: out of memory in attention", pr->cfg.spec);
    return KVS_ERR_NOMEM;
}

static enum kvs_status kv_attend(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *q,
                                 float *out)
{
    struct kvp *p = (struct kvp *)pr;
    struct kvl *L = &p->L[layer];
    if (!p->quant) return kv_pool_attend(p, layer, T, pos, q, out);
    uint32_t n = layer_tokens(L);
    int dkv = p->dkv;
    if (!scratch_reserve(p, n)) goto oom;
    const uint16_t *K = L->k16, *V = L->v16;
    const int32_t *P = L->p16;
    if (L->nblk) {
        /* packed blocks first (decoded in parallel), then the fp16 residual, into scratch */
        int nth = kvs_pool_size(pr->pool);
        size_t tb = (size_t)p->qgroup * dkv;
        if (L->nblk + 1 > p->boff_cap || nth > p->tbuf_nth) {
            uint32_t *bo = realloc(p->boff, (L->nblk + 1) * 2 * sizeof(uint32_t));
            if (bo) p->boff = bo;
            float *t = realloc(p->tbuf, (size_t)nth * tb * sizeof(float));
            if (t) p->tbuf = t;
            if (!bo || !t) goto oom;
            p->boff_cap = (L->nblk + 1) * 2;
            p->tbuf_nth = nth;
        }
        uint32_t at = 0;
        for (uint32_t b = 0; b < L->nblk; b++) {
            p->boff[b] = at;
            at += L->blk[b].nt;
        }
        struct unpack_job uj = {.p = p, .L = L};
        kvs_pool_for(pr->pool, L->nblk, unpack_range, &uj);
        memcpy(p->sk + (size_t)at * dkv, L->k16, (size_t)L->n16 * dkv * 2);
        memcpy(p->sv + (size_t)at * dkv, L->v16, (size_t)L->n16 * dkv * 2);
        memcpy(p->sp + at, L->p16, (size_t)L->n16 * 4);
        K = p->sk;
        V = p->sv;
        P = p->sp;
    }
    int dq = p->nh * p->d;
    int obs = p->snap ? KVS_MIN(T, (int)p->window) : 0;
    struct kvs_attn_args a = {.T = T - obs, .n_head = p->nh, .n_head_kv = p->nkv, .head_dim = p->d, .q = q,
                              .out = out, .qpos = pos, .n_keys = (int)n, .k = K, .v = V, .kpos = P};
    if (a.T > 0 && !kvs_attn_f16(pr->pool, &a)) goto oom;
    if (obs > 0) {
        size_t need = (size_t)obs * p->nh * n;
        if (need > p->pcap) {
            float *pb = realloc(p->probs, need * sizeof(float));
            if (!pb) goto oom;
            p->probs = pb;
            p->pcap = need;
        }
        a.T = obs;
        a.q = q + (size_t)(T - obs) * dq;
        a.out = out + (size_t)(T - obs) * dq;
        a.qpos = pos + (T - obs);
        a.probs = p->probs;
        if (!kvs_attn_f16(pr->pool, &a)) goto oom;
        for (size_t i = 0; i < (size_t)obs * p->nh; i++)
            for (uint32_t j = 0; j < n; j++) L->score[P[j]] += p->probs[i * n + j];
    }
    return KVS_OK;
oom:
    kvs_seterr(pr->err, sizeof pr->err, "%s: out of memory in attention", pr->cfg.spec);
    return KVS_ERR_NOMEM;
}

/* KIVI: once the fp16 tier holds residual + quant_group tokens, its oldest quant_group become a
 * packed block. */
static bool kv_quantize(struct kvp *p, struct kvl *L)
{
    uint32_t G = p->qgroup, dkv = (uint32_t)p->dkv;
    float *tmp = malloc((size_t)G * dkv * sizeof(float));
    if (!tmp) return false;
    while (L->n16 >= p->qres + G) {
        if (L->nblk == L->capblk) {
            uint32_t cap = L->capblk ? L->capblk * 2 : 16;
            struct qblk *nb = realloc(L->blk, cap * sizeof *nb);
            if (!nb) goto oom;
            L->blk = nb;
            L->capblk = cap;
        }
        struct qblk b = {.nt = G};
        uint32_t vb = kvs_qrow_bytes(dkv, p->bits, p->qgroup);
        b.k = malloc(kvs_qcol_bytes(G, dkv, p->bits));
        b.v = malloc((size_t)G * vb);
        b.pos = malloc((size_t)G * 4);
        if (!b.k || !b.v || !b.pos) {
            free(b.k); free(b.v); free(b.pos);
            goto oom;
        }
        for (uint32_t t = 0; t < G; t++) kvs_f16_to_f32_row(L->k16 + (size_t)t * dkv, tmp + (size_t)t * dkv, (int)dkv);
        kvs_qcol_encode(tmp, G, dkv, p->bits, b.k);
        for (uint32_t t = 0; t < G; t++) {
            kvs_f16_to_f32_row(L->v16 + (size_t)t * dkv, tmp, (int)dkv);
            kvs_qrow_encode(tmp, dkv, p->bits, p->qgroup, b.v + (size_t)t * vb);
        }
        memcpy(b.pos, L->p16, (size_t)G * 4);
        L->blk[L->nblk++] = b;
        L->n16 -= G;
        memmove(L->k16, L->k16 + (size_t)G * dkv, (size_t)L->n16 * dkv * 2);
        memmove(L->v16, L->v16 + (size_t)G * dkv, (size_t)L->n16 * dkv * 2);
        memmove(L->p16, L->p16 + G, (size_t)L->n16 * 4);
    }
    free(tmp);
    f16_reserve(p, L, L->n16);
    return true;
oom:
    free(tmp);
    return false;
}

/* Drops tokens whose KEEP(position) is false from both tiers; packed blocks are re-encoded. */
static bool kv_drop(struct kvp *p, struct kvl *L, const uint8_t *keep_by_pos)
{
    uint32_t w = 0, dkv = (uint32_t)p->dkv;
    for (uint32_t i = 0; i < L->n16; i++) {
        if (!keep_by_pos[L->p16[i]]) continue;
        if (w != i) {
            memcpy(L->k16 + (size_t)w * dkv, L->k16 + (size_t)i * dkv, dkv * 2);
            memcpy(L->v16 + (size_t)w * dkv, L->v16 + (size_t)i * dkv, dkv * 2);
            L->p16[w] = L->p16[i];
        }
        w++;
    }
    L->n16 = w;
    f16_reserve(p, L, L->n16);
    uint32_t vb = kvs_qrow_bytes(dkv, p->bits, p->qgroup), bw = 0;
    for (uint32_t b = 0; b < L->nblk; b++) {
        struct qblk *q = &L->blk[b];
        uint32_t kept = 0;
        for (uint32_t t = 0; t < q->nt; t++) kept += keep_by_pos[q->pos[t]];
        if (kept == q->nt) {
            L->blk[bw++] = *q;
            continue;
        }
        if (kept == 0) {
            free(q->k); free(q->v); free(q->pos);
            continue;
        }
        float *tmp = malloc((size_t)q->nt * dkv * sizeof(float));
        struct qblk nb = {.nt = kept};
        nb.k = malloc(kvs_qcol_bytes(kept, dkv, p->bits));
        nb.v = malloc((size_t)kept * vb);
        nb.pos = malloc((size_t)kept * 4);
        if (!tmp || !nb.k || !nb.v || !nb.pos) {
            free(tmp); free(nb.k); free(nb.v); free(nb.pos);
            return false;
        }
        uint32_t x = 0;
        for (uint32_t t = 0; t < q->nt; t++) {
            if (!keep_by_pos[q->pos[t]]) continue;
            kvs_qcol_decode_row(q->k, q->nt, dkv, p->bits, t, tmp + (size_t)x * dkv);
            memcpy(nb.v + (size_t)x * vb, q->v + (size_t)t * vb, vb);
            nb.pos[x++] = q->pos[t];
        }
        kvs_qcol_encode(tmp, kept, dkv, p->bits, nb.k);
        free(tmp);
        free(q->k); free(q->v); free(q->pos);
        L->blk[bw++] = nb;
    }
    L->nblk = bw;
    return true;
}

/* Pooled rows: drops the rows whose KEEP(position) is false by a backend compaction. POS (rows)
 * holds the layer's positions; ROWKEEP is scratch of the same size. */
static enum kvs_status kv_pool_drop(struct kvp *p, int layer, const int32_t *pos, int n, const uint8_t *keep_by_pos,
                                    uint8_t *rowkeep)
{
    bool all = true;
    for (int i = 0; i < n; i++) {
        rowkeep[i] = keep_by_pos[pos[i]];
        all = all && rowkeep[i];
    }
    if (all) return KVS_OK;
    enum kvs_status st = kvs_cache_pool_compact(p->cp, layer, rowkeep);
    if (st != KVS_OK) kvs_seterr(p->base.err, sizeof p->base.err, "%s: %s", p->base.cfg.spec, p->cp->err);
    return st;
}

static enum kvs_status kv_evict(struct kvp *p, int n_ctx)
{
    uint8_t *keep = malloc((size_t)n_ctx);
    float *pooled = malloc((size_t)n_ctx * sizeof(float));
    uint8_t *rowkeep = NULL;
    enum kvs_status st;
    if (!keep || !pooled) goto oom;
    if (p->cp && (!scratch_reserve(p, (uint32_t)n_ctx) || !(rowkeep = malloc((size_t)n_ctx)))) goto oom;
    for (int l = 0; l < p->N; l++) {
        struct kvl *L = &p->L[l];
        uint32_t n = p->cp ? (uint32_t)kvs_cache_pool_rows(p->cp, l) : layer_tokens(L);
        if (p->cp && n > (uint32_t)n_ctx) {
            kvs_seterr(p->base.err, sizeof p->base.err, "%s: layer %d holds %u rows for %d tokens", p->base.cfg.spec,
                       l, n, n_ctx);
            st = KVS_ERR_STATE;
            goto fail;
        }
        if (p->cp && (st = kvs_cache_pool_read(p->cp, l, 0, (int)n, NULL, NULL, p->sp)) != KVS_OK) {
            kvs_seterr(p->base.err, sizeof p->base.err, "%s: %s", p->base.cfg.spec, p->cp->err);
            goto fail;
        }
        memset(keep, 0, (size_t)n_ctx);
        if (p->stream) {
            int win = (int)p->swin;
            if (p->cr >= 0) win = KVS_MAX(0, (int)floor((1.0 - p->cr) * n_ctx) - (int)p->sinks);
            for (int i = 0; i < n_ctx; i++) keep[i] = kvs_stream_keep(i, n_ctx, (int)p->sinks, win);
        } else {
            /* snapkv: capacity in tokens from the target or the knob; window and sinks always stay */
            uint64_t per = (uint64_t)p->dkv * 4 + 4;
            int cap = p->cr >= 0 ? (int)floor((1.0 - p->cr) * n_ctx * (p->dkv * 4.0) / per) : (int)p->capacity;
            if ((int)n <= cap) continue;
            kvs_snap_pool(L->score, n_ctx, (int)p->kernel, pooled);
            for (int i = 0; i < n_ctx; i++)
                if (i < (int)p->sinks || i >= n_ctx - (int)p->window) pooled[i] = INFINITY;
            /* positions already evicted must not be chosen again */
            uint8_t *present = calloc((size_t)n_ctx, 1);
            if (!present) goto oom;
            if (p->cp)
                for (uint32_t i = 0; i < n; i++) present[p->sp[i]] = 1;
            for (uint32_t i = 0; i < L->n16; i++) present[L->p16[i]] = 1;
            for (uint32_t b = 0; b < L->nblk; b++)
                for (uint32_t t = 0; t < L->blk[b].nt; t++) present[L->blk[b].pos[t]] = 1;
            for (int i = 0; i < n_ctx; i++)
                if (!present[i]) pooled[i] = -INFINITY;
            free(present);
            kvs_snap_select(pooled, n_ctx, cap, keep);
        }
        if (p->cp) {
            if ((st = kv_pool_drop(p, l, p->sp, (int)n, keep, rowkeep)) != KVS_OK) goto fail;
        } else if (!kv_drop(p, L, keep))
            goto oom;
        if (L->score) memset(L->score, 0, (size_t)p->n_ctx_max * sizeof(float));
    }
    free(keep);
    free(pooled);
    free(rowkeep);
    return KVS_OK;
oom:
    kvs_seterr(p->base.err, sizeof p->base.err, "%s: out of memory evicting", p->base.cfg.spec);
    st = KVS_ERR_NOMEM;
fail:
    free(keep);
    free(pooled);
    free(rowkeep);
    return st;
}

static enum kvs_status kv_end_step(struct kvs_press *pr, int n_ctx)
{
    struct kvp *p = (struct kvp *)pr;
    int step = n_ctx - p->n_ctx;
    p->n_ctx = n_ctx;
    if ((p->snap || p->stream) && (step > 1 || n_ctx - p->last_evict >= KV_EVICT_EVERY)) {
        uint64_t t0 = kvs_now_ns();
        enum kvs_status st = kv_evict(p, n_ctx);
        if (st != KVS_OK) return st;
        p->last_evict = n_ctx;
        if (pr->ops_ctr) {
            pr->ops_ctr[KVS_OP_EVICT].ns += kvs_now_ns() - t0;
            pr->ops_ctr[KVS_OP_EVICT].calls++;
        }
    }
    if (p->quant) {
        uint64_t t0 = kvs_now_ns();
        for (int l = 0; l < p->N; l++)
            if (!kv_quantize(p, &p->L[l])) {
                kvs_seterr(pr->err, sizeof pr->err, "%s: out of memory quantizing", pr->cfg.spec);
                return KVS_ERR_NOMEM;
            }
        if (pr->ops_ctr) {
            pr->ops_ctr[KVS_OP_QUANT].ns += kvs_now_ns() - t0;
            pr->ops_ctr[KVS_OP_QUANT].calls++;
        }
    }
    return KVS_OK;
}

/* Where the saved bytes came from (the Budgets panel's CR split): no rank or merging here; quant
 * saves the difference between a packed block and the same tokens' fp16 rows, eviction the rows
 * of the tokens it dropped. Every kept token also stores its position (4 bytes), which a full fp16
 * cache does not: that cost is charged to eviction when it is active (it is why positions are
 * kept), else to quant, so that rank + merge + quant + evict = bytes_full - bytes_held exactly. */
static void kv_fill_split(const struct kvp *p, struct kvs_rec_step *r)
{
    int64_t quant = 0, evict = 0, pos = 0, row = (int64_t)p->dkv * 4;
    for (int l = 0; l < p->N; l++) {
        const struct kvl *L = &p->L[l];
        int64_t kept = p->cp ? (int64_t)kvs_cache_pool_rows(p->cp, l) : (int64_t)layer_tokens(L);
        for (uint32_t i = 0; !p->cp && i < L->nblk; i++)
            quant += (int64_t)L->blk[i].nt * (row + 4) - (int64_t)blk_bytes(p, L->blk[i].nt);
        evict += ((int64_t)p->n_ctx - kept) * row;
        pos += kept * 4;
    }
    if (p->snap || p->stream) evict -= pos;
    else quant -= pos;
    r->saved_rank = r->saved_merge = 0;
    r->saved_quant = quant;
    r->saved_evict = evict;
    r->valid |= KVS_VALID_SPLIT;
}

static void kv_fill_record(const struct kvs_press *pr, struct kvs_rec_step *r)
{
    const struct kvp *p = (const struct kvp *)pr;
    uint64_t held = 0, alloc = 0;
    r->n_layer = (uint32_t)p->N;
    r->n_groups = 0;
    for (int l = 0; l < p->N; l++) {
        const struct kvl *L = &p->L[l];
        uint64_t h = layer_held(p, L);
        r->layer_kept[l] = layer_tokens(L);
        if (p->cp) { /* the pool's K/V and the positions an evicting method must keep with them */
            h = kvs_cache_pool_bytes_held(p->cp, l) + (uint64_t)kvs_cache_pool_rows(p->cp, l) * sizeof(int32_t);
            r->layer_kept[l] = (uint32_t)kvs_cache_pool_rows(p->cp, l);
        }
        r->layer_bytes_held[l] = h;
        r->layer_sim[l] = NAN;
        held += h;
        alloc += p->cp ? kvs_cache_pool_bytes_alloc(p->cp, l) : layer_alloc(p, L);
    }
    r->bytes_full = (uint64_t)p->n_ctx * p->N * p->dkv * 4;
    r->bytes_held = held;
    r->bytes_alloc = alloc;
    r->cr_target = p->cr;
    r->cr_achieved = r->bytes_full ? (float)(1.0 - (double)held / r->bytes_full) : 0.0f;
    r->valid |= KVS_VALID_BYTES;
    kv_fill_split(p, r);
}

static void kv_free_layers(struct kvp *p)
{
    for (int l = 0; l < p->N; l++) {
        struct kvl *L = &p->L[l];
        for (uint32_t b = 0; b < L->nblk; b++) {
            free(L->blk[b].k); free(L->blk[b].v); free(L->blk[b].pos);
        }
        L->nblk = 0;
        L->n16 = 0;
    }
}

static void kv_reset(struct kvs_press *pr)
{
    struct kvp *p = (struct kvp *)pr;
    kv_free_layers(p);
    if (p->cp) kvs_cache_pool_reset(p->cp);
    for (int l = 0; l < p->N; l++) {
        f16_reserve(p, &p->L[l], 0);
        if (p->L[l].score) memset(p->L[l].score, 0, (size_t)p->n_ctx_max * sizeof(float));
    }
    p->n_ctx = p->last_evict = 0;
}

static void kv_destroy(struct kvs_press *pr)
{
    struct kvp *p = (struct kvp *)pr;
    if (p->L) {
        kv_free_layers(p);
        for (int l = 0; l < p->N; l++) {
            free(p->L[l].k16); free(p->L[l].v16); free(p->L[l].p16);
            free(p->L[l].blk); free(p->L[l].score);
        }
    }
    free(p->L);
    kvs_cache_pool_delete(p->cp);
    free(p->sk); free(p->sv); free(p->sp); free(p->probs);
    free(p->boff); free(p->tbuf);
    free(p);
}

/* The pool goes with the backend; the press starts a new sequence. */
static void kv_detach(struct kvs_press *pr)
{
    struct kvp *p = (struct kvp *)pr;
    kv_reset(pr);
    kvs_cache_pool_delete(p->cp);
    p->cp = NULL;
}

static const struct kvs_press_ops kv_ops;
const char *kvs_press_kv_note(const struct kvs_press *p)
{
    return p->ops == &kv_ops ? ((const struct kvp *)p)->note : NULL;
}

static const struct kvs_press_ops kv_ops = {
    .name = "kv", .store = kv_store, .attend = kv_attend, .end_step = kv_end_step,
    .fill_record = kv_fill_record, .reset = kv_reset, .destroy = kv_destroy, .detach = kv_detach,
};

enum kvs_status kvs_press_kv_create(struct kvs_press **out, const struct kvs_model *m,
                                    const struct kvs_method_config *cfg, int n_ctx_max, char *err, size_t errlen)
{
    *out = NULL;
    const struct kvs_hparams *hp = &m->hp;
    if ((cfg->methods & KVS_M_QUANT) && cfg->quant_bits != 2 && cfg->quant_bits != 4 && cfg->quant_bits != 8) {
        kvs_seterr(err, errlen, "%s: quantization bits must be 2, 4 or 8 (got %u)", cfg->spec, cfg->quant_bits);
        return KVS_ERR_ARG;
    }
    struct kvp *p = calloc(1, sizeof *p);
    if (!p) goto oom;
    p->base.ops = &kv_ops;
    p->base.model = m;
    p->base.cfg = *cfg;
    p->base.needs = KVS_PRESS_NEEDS_KV;
    p->N = (int)hp->n_layer;
    p->nh = (int)hp->n_head;
    p->nkv = (int)hp->n_head_kv;
    p->d = (int)hp->head_dim;
    p->dkv = p->nkv * p->d;
    p->n_ctx_max = n_ctx_max;
    p->quant = (cfg->methods & KVS_M_QUANT) != 0;
    p->snap = (cfg->methods & KVS_M_SNAPKV) != 0;
    p->stream = (cfg->methods & KVS_M_STREAMING) != 0;
    p->bits = cfg->quant_bits;
    p->qgroup = cfg->quant_group ? cfg->quant_group : 32;
    p->qres = cfg->quant_residual;
    p->window = cfg->snap_window ? cfg->snap_window : 32;
    p->kernel = cfg->snap_kernel ? cfg->snap_kernel : 7;
    p->capacity = cfg->snap_capacity;
    p->sinks = p->stream ? cfg->stream_sinks : cfg->sinks;
    p->swin = cfg->stream_window;
    p->cr = cfg->target_cr;
    if (p->quant && !p->snap && !p->stream && p->cr >= 0) {
        /* quant alone compresses by a fixed factor: pick the widest bits that reach the target */
        uint32_t order[3] = {8, 4, 2};
        for (int i = 0; i < 3; i++) {
            double f = (double)(kvs_qcol_bytes(p->qgroup, (uint32_t)p->dkv, order[i]) +
                                p->qgroup * (kvs_qrow_bytes((uint32_t)p->dkv, order[i], p->qgroup) + 4)) /
                       ((double)p->qgroup * p->dkv * 4);
            p->bits = order[i];
            if (1.0 - f >= p->cr - 0.02) break;
            if (i == 2)
                snprintf(p->note, sizeof p->note,
                         "quant: 2 bits remove at most %.3f of the bytes (before the fp16 recent window), target %.2f",
                         1.0 - f, p->cr);
        }
    }
    p->L = calloc((size_t)p->N, sizeof *p->L);
    if (!p->L) goto oom;
    if (p->snap)
        for (int l = 0; l < p->N; l++) {
            p->L[l].score = calloc((size_t)n_ctx_max, sizeof(float));
            if (!p->L[l].score) goto oom;
        }
    *out = &p->base;
    return KVS_OK;
oom:
    if (p) kv_destroy(&p->base);
    kvs_seterr(err, errlen, "%s: out of memory", cfg->spec);
    return KVS_ERR_NOMEM;
}
