/* MiniCache (DESIGN.md §5 `minicache`): from a start layer down to the last, layers are paired
 * (l, l+1); for every token outside the sinks and the recent window the two layers' keys (after
 * RoPE, same position) and values are merged per KV head by SLERP of their directions at t, and
 * each layer keeps its own norms; the most dissimilar fraction of tokens (mc_threshold) is retained
 * unmerged in both layers. Layers before the start layer keep a plain fp16 cache. With a target CR
 * the start layer is chosen to reach it where possible. The rows, merged or not, live in a
 * minicache pool (mc_pool.h) in the backend's memory: this press decides which tokens merge and
 * which are retained, and never touches a row. Its k, v, q and out are backend memory
 * (KVS_PRESS_BACKEND_IO). Depends on press.h, mc_pool.h, commonkv_priv.h. */
#include "commonkv_priv.h"
#include "mc_pool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MC_BLOCK 256
#define MC_MERGE_EVERY 32

struct mpair {                  /* what the press decides about layers (la, la+1) */
    int la;
    uint8_t *retained;          /* (n_ctx_max) by position: kept unmerged for good */
    double sim_sum;
    uint64_t sim_n;
};

struct mc {
    struct kvs_press base;
    int N, dkv, nh, nkv, d, n_ctx_max, n_ctx, last_merge, start, n_pairs;
    float t, retain;
    uint32_t sinks, recent;
    float cr;
    struct kvs_mc_pool *pool;   /* NULL until the first store; on base.be */
    struct mpair *P;
    int *pair_of;               /* layer -> pair index or -1 */
    char note[160];
};

/* The pool on the press's current backend, made on first use. */
static enum kvs_status mc_pool(struct mc *m)
{
    if (m->pool) return KVS_OK;
    char e[256];
    int *la = malloc((size_t)KVS_MAX(m->n_pairs, 1) * sizeof(int));
    if (!la) {
        kvs_seterr(m->base.err, sizeof m->base.err, "minicache: out of memory");
        return KVS_ERR_NOMEM;
    }
    for (int i = 0; i < m->n_pairs; i++) la[i] = m->P[i].la;
    enum kvs_status st = kvs_mc_pool_new(&m->pool, m->base.be, m->N, m->nkv, m->d, MC_BLOCK, m->n_pairs, la, e,
                                         sizeof e);
    free(la);
    if (st != KVS_OK) kvs_seterr(m->base.err, sizeof m->base.err, "minicache: %s", e);
    return st;
}

static enum kvs_status mc_store(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *xn,
                                const float *k, const float *v)
{
    struct mc *m = (struct mc *)pr;
    if (!k || !v) {
        kvs_seterr(pr->err, sizeof pr->err, "minicache: keys/values not computed");
        return KVS_ERR_STATE;
    }
    enum kvs_status st = mc_pool(m);
    if (st == KVS_OK && (st = kvs_mc_pool_store_buf(m->pool, layer, T, pos, k, v)) != KVS_OK)
        kvs_seterr(pr->err, sizeof pr->err, "minicache: %s", m->pool->err);
    return st;
}

static enum kvs_status mc_attend(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *q,
                                 float *out)
{
    struct mc *m = (struct mc *)pr;
    enum kvs_status st = mc_pool(m);
    if (st == KVS_OK && (st = kvs_mc_pool_attend_buf(m->pool, layer, m->pair_of[layer], T, pos, m->nh, q, out)) != KVS_OK)
        kvs_seterr(pr->err, sizeof pr->err, "minicache: %s", m->pool->err);
    return st;
}

struct mcand { float dist; uint32_t idx; };
static int mcand_cmp(const void *x, const void *y)
{
    const struct mcand *a = x, *b = y;
    return a->dist < b->dist ? 1 : a->dist > b->dist ? -1 : (a->idx > b->idx) - (a->idx < b->idx);
}

/* Every pair: the tokens outside the sinks and the recent window that are neither merged nor
 * retained yet are scored in the backend (angular distance of the two layers' rows); the most
 * distant share is retained for good, the rest merged (in order of distance) by the backend. */
static enum kvs_status mc_merge(struct mc *m, int n_ctx)
{
    int nkv = m->nkv;
    int32_t *pos = NULL, *idx = NULL;
    float *dist = NULL;
    double *dots = NULL;
    struct mcand *cd = NULL;
    enum kvs_status st = KVS_OK;
    int32_t lo = (int32_t)m->sinks, hi = n_ctx - (int32_t)m->recent;
    for (int pi = 0; pi < m->n_pairs && st == KVS_OK; pi++) {
        struct mpair *P = &m->P[pi];
        int na = kvs_mc_pool_rows(m->pool, P->la), nb = kvs_mc_pool_rows(m->pool, P->la + 1);
        if (na != nb) {
            kvs_seterr(m->base.err, sizeof m->base.err, "minicache: layers %d and %d hold different tokens", P->la,
                       P->la + 1);
            st = KVS_ERR_STATE;
            break;
        }
        free(pos), free(idx), free(dist), free(dots), free(cd);
        pos = malloc((size_t)(na + 1) * sizeof *pos);
        idx = malloc((size_t)(na + 1) * sizeof *idx);
        dist = malloc((size_t)(na + 1) * sizeof *dist);
        dots = malloc(((size_t)na * 2 * nkv + 1) * sizeof *dots);
        cd = malloc((size_t)(na + 1) * sizeof *cd);
        if (!pos || !idx || !dist || !dots || !cd) {
            kvs_seterr(m->base.err, sizeof m->base.err, "minicache: out of memory merging");
            st = KVS_ERR_NOMEM;
            break;
        }
        if ((st = kvs_mc_pool_read_pos(m->pool, P->la, 0, na, pos)) != KVS_OK) break;
        int nc = 0;
        for (int i = 0; i < na; i++)
            if (pos[i] >= lo && pos[i] < hi && !P->retained[pos[i]]) idx[nc++] = i;
        if (!nc) continue;
        if ((st = kvs_mc_pool_score(m->pool, pi, idx, nc, dist, dots)) != KVS_OK) break;
        for (int c = 0; c < nc; c++) {
            for (int j = 0; j < 2 * nkv; j++) P->sim_sum += dots[(size_t)c * 2 * nkv + j];
            P->sim_n += (uint64_t)(2 * nkv);
            cd[c] = (struct mcand){dist[c], (uint32_t)idx[c]};
        }
        qsort(cd, (size_t)nc, sizeof *cd, mcand_cmp);
        int keep = (int)lroundf(m->retain * (float)nc);
        for (int c = 0; c < nc; c++) {
            idx[c] = (int32_t)cd[c].idx;
            if (c < keep) P->retained[pos[cd[c].idx]] = 1;
        }
        st = kvs_mc_pool_merge(m->pool, pi, m->t, idx, nc, keep);
    }
    if (st != KVS_OK && m->pool && m->pool->err[0] && !m->base.err[0])
        kvs_seterr(m->base.err, sizeof m->base.err, "minicache: %s", m->pool->err);
    free(pos), free(idx), free(dist), free(dots), free(cd);
    return st;
}

static enum kvs_status mc_end_step(struct kvs_press *pr, int n_ctx)
{
    struct mc *m = (struct mc *)pr;
    int step = n_ctx - m->n_ctx;
    m->n_ctx = n_ctx;
    if (m->pool && m->n_pairs && (step > 1 || n_ctx - m->last_merge >= MC_MERGE_EVERY)) {
        m->last_merge = n_ctx;
        pr->err[0] = 0;
        return mc_merge(m, n_ctx);
    }
    return KVS_OK;
}

static void mc_fill_record(const struct kvs_press *pr, struct kvs_rec_step *r)
{
    const struct mc *m = (const struct mc *)pr;
    uint64_t held = 0, alloc = 0;
    r->n_layer = (uint32_t)m->N;
    r->n_groups = (uint32_t)m->n_pairs;
    for (int l = 0; l < m->N; l++) {
        uint64_t h = m->pool ? kvs_mc_pool_bytes_held(m->pool, l) : 0;
        uint32_t kept = m->pool ? (uint32_t)kvs_mc_pool_rows(m->pool, l) : 0;
        int pi = m->pair_of[l];
        if (pi >= 0 && m->pool) kept += (uint32_t)kvs_mc_pool_merged(m->pool, pi);
        r->layer_kept[l] = kept;
        r->layer_bytes_held[l] = h;
        r->layer_sim[l] = NAN;
        held += h;
        alloc += m->pool ? kvs_mc_pool_bytes_alloc(m->pool, l) : 0;
    }
    for (int pi = 0; pi < m->n_pairs && pi < KVS_MAX_GROUPS; pi++) {
        const struct mpair *P = &m->P[pi];
        uint32_t merged = m->pool ? (uint32_t)kvs_mc_pool_merged(m->pool, pi) : 0;
        uint32_t tot = merged + (m->pool ? (uint32_t)kvs_mc_pool_rows(m->pool, P->la) : 0);
        r->group_merged[pi] = tot ? (float)merged / tot : 0.0f;
        r->group_sim[pi] = P->sim_n ? (float)(P->sim_sum / P->sim_n) : NAN;
        r->group_rank[pi] = 0;
        r->layer_sim[P->la] = r->group_sim[pi];
    }
    r->bytes_full = (uint64_t)m->n_ctx * m->N * m->dkv * 4;
    r->bytes_held = held;
    r->bytes_alloc = alloc;
    r->cr_target = m->cr;
    r->cr_achieved = r->bytes_full ? (float)(1.0 - (double)held / r->bytes_full) : 0.0f;
    r->valid |= KVS_VALID_BYTES | (m->n_pairs ? KVS_VALID_GROUP_SIM : 0);
}

static void mc_forget(struct mc *m)
{
    for (int pi = 0; pi < m->n_pairs; pi++) {
        m->P[pi].sim_sum = 0;
        m->P[pi].sim_n = 0;
        memset(m->P[pi].retained, 0, (size_t)m->n_ctx_max);
    }
    m->n_ctx = m->last_merge = 0;
}

static void mc_reset(struct kvs_press *pr)
{
    struct mc *m = (struct mc *)pr;
    if (m->pool) kvs_mc_pool_reset(m->pool);
    mc_forget(m);
}

static void mc_detach(struct kvs_press *pr)
{
    struct mc *m = (struct mc *)pr;
    kvs_mc_pool_delete(m->pool);
    m->pool = NULL;
    mc_forget(m);
}

static void mc_destroy(struct kvs_press *pr)
{
    struct mc *m = (struct mc *)pr;
    kvs_mc_pool_delete(m->pool);
    if (m->P)
        for (int pi = 0; pi < m->n_pairs; pi++) free(m->P[pi].retained);
    free(m->P);
    free(m->pair_of);
    free(m);
}

const char *kvs_press_minicache_note(const struct kvs_press *p);
static const struct kvs_press_ops mc_ops;
const char *kvs_press_minicache_note(const struct kvs_press *p)
{
    return p->ops == &mc_ops ? ((const struct mc *)p)->note : NULL;
}

static const struct kvs_press_ops mc_ops = {
    .name = "minicache", .store = mc_store, .attend = mc_attend, .end_step = mc_end_step,
    .fill_record = mc_fill_record, .reset = mc_reset, .destroy = mc_destroy, .detach = mc_detach,
};

enum kvs_status kvs_press_minicache_create(struct kvs_press **out, const struct kvs_model *model,
                                           const struct kvs_method_config *cfg, int n_ctx_max, char *err,
                                           size_t errlen)
{
    *out = NULL;
    const struct kvs_hparams *hp = &model->hp;
    struct mc *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->base.ops = &mc_ops;
    m->base.model = model;
    m->base.cfg = *cfg;
    m->base.needs = KVS_PRESS_NEEDS_KV | KVS_PRESS_BACKEND_IO; /* k, v, q, out stay in backend memory */
    m->N = (int)hp->n_layer;
    m->nh = (int)hp->n_head;
    m->nkv = (int)hp->n_head_kv;
    m->d = (int)hp->head_dim;
    m->dkv = m->nkv * m->d;
    m->n_ctx_max = n_ctx_max;
    m->t = cfg->mc_t > 0 && cfg->mc_t < 1 ? cfg->mc_t : 0.6f;
    m->retain = cfg->mc_threshold >= 0 && cfg->mc_threshold <= 1 ? cfg->mc_threshold : 0.05f;
    m->sinks = cfg->sinks;
    m->recent = cfg->recent;
    m->cr = cfg->target_cr;
    int start = cfg->mc_start_layer ? (int)cfg->mc_start_layer : m->N / 2;
    if (m->cr >= 0) {
        /* a merged pair keeps one direction per token instead of two rows: it saves
         * (1 - pair/(2 rows)) of its layers' bytes on the merged share of the tokens */
        double save = 1.0 - (double)(m->dkv * 4 + m->nkv * 8 + 4) / (2.0 * (m->dkv * 4 + 4));
        double mu = n_ctx_max > (int)(m->sinks + m->recent)
                  ? (double)(n_ctx_max - (int)(m->sinks + m->recent)) / n_ctx_max : 0.0;
        double frac_layers = m->cr / (save * mu * (1.0 - m->retain));
        int pairs = (int)ceil(frac_layers * m->N / 2.0);
        pairs = KVS_MAX(0, KVS_MIN(pairs, m->N / 2));
        start = m->N - 2 * pairs;
        double crmax = save * mu * (1.0 - m->retain) * (2.0 * (m->N / 2)) / m->N;
        if (m->cr > crmax + 0.02)
            snprintf(m->note, sizeof m->note,
                     "minicache: target CR %.2f is beyond reach: merging every layer pair gives at most %.3f", m->cr,
                     crmax);
    }
    if (start < 0) start = 0;
    m->start = start;
    m->n_pairs = (m->N - start) / 2;
    m->P = calloc((size_t)KVS_MAX(m->n_pairs, 1), sizeof *m->P);
    m->pair_of = malloc((size_t)m->N * sizeof(int));
    if (!m->P || !m->pair_of) goto oom;
    for (int l = 0; l < m->N; l++) m->pair_of[l] = -1;
    for (int pi = 0; pi < m->n_pairs; pi++) {
        m->P[pi].la = m->N - 2 * m->n_pairs + 2 * pi;
        m->pair_of[m->P[pi].la] = m->pair_of[m->P[pi].la + 1] = pi;
        m->P[pi].retained = calloc((size_t)n_ctx_max, 1);
        if (!m->P[pi].retained) goto oom;
    }
    *out = &m->base;
    return KVS_OK;
oom:
    if (m) mc_destroy(&m->base);
    kvs_seterr(err, errlen, "minicache: out of memory");
    return KVS_ERR_NOMEM;
}
