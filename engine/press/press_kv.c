/* The K/V-row presses of DESIGN.md §5: `quant` (KIVI: keys quantized per channel in blocks of
 * quant_group tokens, values per token in channel groups, the newest quant_residual tokens in
 * fp16), `snapkv` (eviction by pooled attention mass from an observation window) and `streaming`
 * (sinks + window), alone or as quant+snapkv / quant+streaming. Everything is really stored packed
 * and counted from what is held. The rows, packed blocks and snapkv's attention mass live in a
 * quantized pool (kvq_pool.h) in the backend's memory: the press decides what to quantize and
 * evict and calls it; k, v, q and out stay in backend memory (KVS_PRESS_BACKEND_IO), and only the
 * pooled eviction scores and the rows' positions come to the host.
 * Depends on press.h, kvq_pool.h, quant_codec.h (sizes), threads.h. */
#include "commonkv_priv.h"
#include "kvq_pool.h"
#include "quant.h"
#include "threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KV_BLOCK 256        /* the fp16 tier grows in blocks of tokens */
#define KV_EVICT_EVERY 32   /* decoded tokens between evictions */

struct kvp {
    struct kvs_press base;
    int N, dkv, nh, nkv, d, n_ctx_max, n_ctx, last_evict;
    bool quant, snap, stream;
    uint32_t bits, qgroup, qres, window, kernel, capacity, sinks, swin;
    float cr;
    char note[160];
    struct kvs_kvq_pool *cp; /* every layer's rows, on base.be (NULL until the first store) */
};

/* The pool of the rows, on the press's current backend, made on first use. */
static enum kvs_status kv_pool(struct kvp *p)
{
    if (p->cp) return KVS_OK;
    char e[256];
    /* without quant nothing is ever packed: any valid width will do */
    enum kvs_status st = kvs_kvq_pool_new(&p->cp, p->base.be, p->N, p->dkv, p->quant ? p->bits : 8, p->qgroup,
                                          KV_BLOCK, p->snap ? p->n_ctx_max : 0, e, sizeof e);
    if (st != KVS_OK) kvs_seterr(p->base.err, sizeof p->base.err, "%s: %s", p->base.cfg.spec, e);
    return st;
}

static enum kvs_status pool_fail(struct kvp *p, enum kvs_status st)
{
    kvs_seterr(p->base.err, sizeof p->base.err, "%s: %s", p->base.cfg.spec, p->cp->err);
    return st;
}

static enum kvs_status kv_store(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *xn,
                                const float *k, const float *v)
{
    struct kvp *p = (struct kvp *)pr;
    if (!k || !v) {
        kvs_seterr(pr->err, sizeof pr->err, "%s: keys/values not computed", pr->cfg.spec);
        return KVS_ERR_STATE;
    }
    enum kvs_status st = kv_pool(p);
    if (st != KVS_OK) return st;
    st = kvs_kvq_pool_store_buf(p->cp, layer, T, pos, k, v);
    return st == KVS_OK ? KVS_OK : pool_fail(p, st);
}

/* Attention over a layer's rows; the observation window's queries (snapkv) also add the attention
 * mass of each row to the layer's score by position, in the backend. */
static enum kvs_status kv_attend(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *q,
                                 float *out)
{
    struct kvp *p = (struct kvp *)pr;
    enum kvs_status st = kv_pool(p);
    if (st != KVS_OK) return st;
    int dq = p->nh * p->d;
    int obs = p->snap ? KVS_MIN(T, (int)p->window) : 0;
    if (T - obs > 0) st = kvs_kvq_pool_attend_buf(p->cp, layer, T - obs, pos, p->nh, p->nkv, p->d, q, out, false);
    if (st == KVS_OK && obs > 0)
        st = kvs_kvq_pool_attend_buf(p->cp, layer, obs, pos + (T - obs), p->nh, p->nkv, p->d, q + (size_t)(T - obs) * dq,
                                 out + (size_t)(T - obs) * dq, true);
    return st == KVS_OK ? KVS_OK : pool_fail(p, st);
}

static enum kvs_status kv_evict(struct kvp *p, int n_ctx)
{
    uint8_t *keep = malloc((size_t)n_ctx);
    float *pooled = malloc((size_t)n_ctx * sizeof(float));
    enum kvs_status st = KVS_OK;
    if (!keep || !pooled) {
        free(keep);
        free(pooled);
        kvs_seterr(p->base.err, sizeof p->base.err, "%s: out of memory evicting", p->base.cfg.spec);
        return KVS_ERR_NOMEM;
    }
    for (int l = 0; l < p->N && st == KVS_OK; l++) {
        int n = kvs_kvq_pool_rows(p->cp, l);
        memset(keep, 0, (size_t)n_ctx);
        if (p->stream) {
            int win = (int)p->swin;
            if (p->cr >= 0) win = KVS_MAX(0, (int)floor((1.0 - p->cr) * n_ctx) - (int)p->sinks);
            for (int i = 0; i < n_ctx; i++) keep[i] = kvs_stream_keep(i, n_ctx, (int)p->sinks, win);
        } else {
            /* snapkv: capacity in tokens from the target or the knob; window and sinks always stay */
            uint64_t per = (uint64_t)p->dkv * 4 + 4;
            int cap = p->cr >= 0 ? (int)floor((1.0 - p->cr) * n_ctx * (p->dkv * 4.0) / per) : (int)p->capacity;
            if (n <= cap) continue;
            /* the backend pools the mass and marks the positions already evicted with -inf, so
             * they are not chosen again */
            if ((st = kvs_kvq_pool_scores(p->cp, l, n_ctx, (int)p->kernel, pooled)) != KVS_OK) break;
            for (int i = 0; i < n_ctx; i++)
                if (pooled[i] != -INFINITY && (i < (int)p->sinks || i >= n_ctx - (int)p->window)) pooled[i] = INFINITY;
            kvs_snap_select(pooled, n_ctx, cap, keep);
        }
        st = kvs_kvq_pool_drop(p->cp, l, keep, n_ctx);
    }
    free(keep);
    free(pooled);
    return st == KVS_OK ? KVS_OK : pool_fail(p, st);
}

static enum kvs_status kv_end_step(struct kvs_press *pr, int n_ctx)
{
    struct kvp *p = (struct kvp *)pr;
    int step = n_ctx - p->n_ctx;
    p->n_ctx = n_ctx;
    if ((p->snap || p->stream) && p->cp && (step > 1 || n_ctx - p->last_evict >= KV_EVICT_EVERY)) {
        uint64_t t0 = kvs_now_ns();
        enum kvs_status st = kv_evict(p, n_ctx);
        if (st != KVS_OK) return st;
        p->last_evict = n_ctx;
        if (pr->ops_ctr) {
            pr->ops_ctr[KVS_OP_EVICT].ns += kvs_now_ns() - t0;
            pr->ops_ctr[KVS_OP_EVICT].calls++;
        }
    }
    if (p->quant && p->cp) {
        uint64_t t0 = kvs_now_ns();
        for (int l = 0; l < p->N; l++) {
            enum kvs_status st = kvs_kvq_pool_quantize(p->cp, l, (int)p->qres);
            if (st != KVS_OK) return pool_fail(p, st);
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
    for (int l = 0; l < p->N && p->cp; l++) {
        int64_t kept = kvs_kvq_pool_rows(p->cp, l), packed = kvs_kvq_pool_rows_packed(p->cp, l);
        quant += packed * (row + 4) - (int64_t)kvs_kvq_pool_bytes_packed(p->cp, l);
        evict += ((int64_t)p->n_ctx - kept) * row;
        pos += kept * 4;
    }
    if (!p->cp) evict = (int64_t)p->n_ctx * row * p->N;
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
        /* both tiers and the positions every kept row carries */
        uint64_t h = p->cp ? kvs_kvq_pool_bytes_held(p->cp, l) : 0;
        r->layer_kept[l] = p->cp ? (uint32_t)kvs_kvq_pool_rows(p->cp, l) : 0;
        r->layer_bytes_held[l] = h;
        r->layer_sim[l] = NAN;
        held += h;
        alloc += p->cp ? kvs_kvq_pool_bytes_alloc(p->cp, l) : 0;
    }
    r->bytes_full = (uint64_t)p->n_ctx * p->N * p->dkv * 4;
    r->bytes_held = held;
    r->bytes_alloc = alloc;
    r->cr_target = p->cr;
    r->cr_achieved = r->bytes_full ? (float)(1.0 - (double)held / r->bytes_full) : 0.0f;
    r->valid |= KVS_VALID_BYTES;
    kv_fill_split(p, r);
}

static void kv_reset(struct kvs_press *pr)
{
    struct kvp *p = (struct kvp *)pr;
    /* a failed reset of the scores on a device leaves its message; the rows are forgotten anyway */
    if (p->cp && kvs_kvq_pool_reset(p->cp) != KVS_OK) pool_fail(p, KVS_ERR_BACKEND);
    p->n_ctx = p->last_evict = 0;
}

static void kv_destroy(struct kvs_press *pr)
{
    struct kvp *p = (struct kvp *)pr;
    kvs_kvq_pool_delete(p->cp);
    free(p);
}

/* The pool goes with the backend; the press starts a new sequence. */
static void kv_detach(struct kvs_press *pr)
{
    struct kvp *p = (struct kvp *)pr;
    kv_reset(pr);
    kvs_kvq_pool_delete(p->cp);
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
    p->base.needs = KVS_PRESS_NEEDS_KV | KVS_PRESS_BACKEND_IO; /* k, v, q, out stay in backend memory */
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
    *out = &p->base;
    return KVS_OK;
oom:
    kvs_seterr(err, errlen, "%s: out of memory", cfg->spec);
    return KVS_ERR_NOMEM;
}
