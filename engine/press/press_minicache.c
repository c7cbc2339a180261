/* MiniCache (DESIGN.md §5 `minicache`): from a start layer down to the last, layers are paired
 * (l, l+1); for every token outside the sinks and the recent window the two layers' keys (after
 * RoPE, same position) and values are merged per KV head by SLERP of their directions at t, and
 * each layer keeps its own norms; the most dissimilar fraction of tokens (mc_threshold) is retained
 * unmerged in both layers. Layers before the start layer keep a plain fp16 cache. With a target CR
 * the start layer is chosen to reach it where possible. Depends on press.h, attention.h, quant.h. */
#include "attention.h"
#include "commonkv_priv.h"
#include "quant.h"
#include "threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MC_BLOCK 256
#define MC_MERGE_EVERY 32

struct mrows {                  /* unmerged fp16 K/V rows of one layer */
    uint16_t *k, *v;            /* (cap, dkv) */
    int32_t *pos;
    uint32_t n, cap;
};

struct mpair {                  /* merged tokens of layers (la, la+1) */
    int la;
    uint16_t *ek, *ev;          /* (cap, dkv) unit directions per head */
    uint16_t *nrm;              /* (cap, 4*nkv): |k_a|, |k_b|, |v_a|, |v_b| per head */
    int32_t *pos;
    uint32_t n, cap;
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
    struct mrows *L;
    struct mpair *P;
    int *pair_of;               /* layer -> pair index or -1 */
    uint16_t *sk, *sv;
    int32_t *sp;
    size_t scap;
    char note[160];
};

static bool rows_reserve(struct mrows *r, uint32_t need, int dkv)
{
    uint32_t cap = (need + MC_BLOCK - 1) / MC_BLOCK * MC_BLOCK;
    if (cap == 0) cap = MC_BLOCK;
    if (need <= r->cap && cap >= r->cap) return true;
    uint16_t *k = realloc(r->k, (size_t)cap * dkv * 2);
    if (k) r->k = k;
    uint16_t *v = realloc(r->v, (size_t)cap * dkv * 2);
    if (v) r->v = v;
    int32_t *p = realloc(r->pos, (size_t)cap * 4);
    if (p) r->pos = p;
    if (!k || !v || !p) return false;
    r->cap = cap;
    return true;
}

static bool pair_reserve(struct mpair *q, uint32_t need, int dkv, int nkv)
{
    if (need <= q->cap) return true;
    uint32_t cap = (need + MC_BLOCK - 1) / MC_BLOCK * MC_BLOCK;
    uint16_t *a = realloc(q->ek, (size_t)cap * dkv * 2);
    if (a) q->ek = a;
    uint16_t *b = realloc(q->ev, (size_t)cap * dkv * 2);
    if (b) q->ev = b;
    uint16_t *c = realloc(q->nrm, (size_t)cap * 4 * nkv * 2);
    if (c) q->nrm = c;
    int32_t *p = realloc(q->pos, (size_t)cap * 4);
    if (p) q->pos = p;
    if (!a || !b || !c || !p) return false;
    q->cap = cap;
    return true;
}

static uint64_t pair_row_bytes(const struct mc *m) { return (uint64_t)m->dkv * 4 + (uint64_t)m->nkv * 8 + 4; }
static uint64_t rows_row_bytes(const struct mc *m) { return (uint64_t)m->dkv * 4 + 4; }

static enum kvs_status mc_store(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *xn,
                                const float *k, const float *v)
{
    struct mc *m = (struct mc *)pr;
    struct mrows *r = &m->L[layer];
    if (!k || !v) {
        kvs_seterr(pr->err, sizeof pr->err, "minicache: keys/values not computed");
        return KVS_ERR_STATE;
    }
    if (!rows_reserve(r, r->n + (uint32_t)T, m->dkv)) {
        kvs_seterr(pr->err, sizeof pr->err, "minicache: out of memory storing layer %d", layer);
        return KVS_ERR_NOMEM;
    }
    for (int t = 0; t < T; t++) {
        kvs_f32_to_f16_row(k + (size_t)t * m->dkv, r->k + (size_t)r->n * m->dkv, m->dkv);
        kvs_f32_to_f16_row(v + (size_t)t * m->dkv, r->v + (size_t)r->n * m->dkv, m->dkv);
        r->pos[r->n++] = pos[t];
    }
    return KVS_OK;
}

/* The merged rows of pair P as this layer's keys and values (its own norms times the shared unit
 * directions), written after the AT unmerged rows of the attention scratch; tasks of
 * MC_REBUILD_ROWS rows. */
#define MC_REBUILD_ROWS 64
struct rebuild_job {
    struct mc *m;
    const struct mpair *P;
    int side;
    uint32_t at;
};

static void rebuild_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct rebuild_job *j = ctx;
    struct mc *m = j->m;
    const struct mpair *P = j->P;
    const int d = m->d, dkv = m->dkv, nkv = m->nkv;
    float tmp[256];
    (void)thread;
    for (int64_t task = b; task < e; task++) {
        uint32_t i1 = (uint32_t)KVS_MIN((int64_t)P->n, (task + 1) * MC_REBUILD_ROWS);
        for (uint32_t i = (uint32_t)task * MC_REBUILD_ROWS; i < i1; i++) {
            const uint16_t *nr = P->nrm + (size_t)i * 4 * nkv;
            uint16_t *dst[2] = {m->sk + (size_t)(j->at + i) * dkv, m->sv + (size_t)(j->at + i) * dkv};
            const uint16_t *src[2] = {P->ek + (size_t)i * dkv, P->ev + (size_t)i * dkv};
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < nkv; h++) {
                    float nrm = kvs_fp16_to_fp32(nr[(2 * kv + j->side) * nkv + h]);
                    for (int x0 = 0; x0 < d; x0 += 256) { /* tmp holds 256 floats; head widths may be more */
                        int w = KVS_MIN(256, d - x0);
                        kvs_f16_to_f32_row(src[kv] + (size_t)h * d + x0, tmp, w);
                        for (int x = 0; x < w; x++) tmp[x] *= nrm;
                        kvs_f32_to_f16_row(tmp, dst[kv] + (size_t)h * d + x0, w);
                    }
                }
            m->sp[j->at + i] = P->pos[i];
        }
    }
}

static enum kvs_status mc_attend(struct kvs_press *pr, int layer, int T, const int32_t *pos, const float *q,
                                 float *out)
{
    struct mc *m = (struct mc *)pr;
    struct mrows *r = &m->L[layer];
    int pi = m->pair_of[layer];
    struct mpair *P = pi >= 0 ? &m->P[pi] : NULL;
    uint32_t n = r->n + (P ? P->n : 0);
    const uint16_t *K = r->k, *V = r->v;
    const int32_t *PS = r->pos;
    if (P && P->n) {
        if (n > m->scap) {
            size_t cap = (n + MC_BLOCK - 1) / MC_BLOCK * MC_BLOCK;
            uint16_t *a = realloc(m->sk, cap * m->dkv * 2);
            if (a) m->sk = a;
            uint16_t *b = realloc(m->sv, cap * m->dkv * 2);
            if (b) m->sv = b;
            int32_t *c = realloc(m->sp, cap * 4);
            if (c) m->sp = c;
            if (!a || !b || !c) goto oom;
            m->scap = cap;
        }
        memcpy(m->sk, r->k, (size_t)r->n * m->dkv * 2);
        memcpy(m->sv, r->v, (size_t)r->n * m->dkv * 2);
        memcpy(m->sp, r->pos, (size_t)r->n * 4);
        struct rebuild_job rj = {.m = m, .P = P, .side = layer == P->la ? 0 : 1, .at = r->n};
        kvs_pool_for(pr->pool, (P->n + MC_REBUILD_ROWS - 1) / MC_REBUILD_ROWS, rebuild_range, &rj);
        K = m->sk;
        V = m->sv;
        PS = m->sp;
    }
    struct kvs_attn_args a = {.T = T, .n_head = m->nh, .n_head_kv = m->nkv, .head_dim = m->d, .q = q, .out = out,
                              .qpos = pos, .n_keys = (int)n, .k = K, .v = V, .kpos = PS};
    if (!kvs_attn_f16(pr->pool, &a)) goto oom;
    return KVS_OK;
oom:
    kvs_seterr(pr->err, sizeof pr->err, "minicache: out of memory in attention");
    return KVS_ERR_NOMEM;
}

/* SLERP of unit directions a and b (n floats) at t; returns the angle. */
static float slerp(const float *a, const float *b, int n, float t, float *out)
{
    double dot = 0;
    for (int i = 0; i < n; i++) dot += (double)a[i] * b[i];
    dot = dot > 1 ? 1 : dot < -1 ? -1 : dot;
    double om = acos(dot), so = sin(om);
    if (so < 1e-6) {
        for (int i = 0; i < n; i++) out[i] = (1 - t) * a[i] + t * b[i];
    } else {
        double wa = sin((1 - t) * om) / so, wb = sin(t * om) / so;
        for (int i = 0; i < n; i++) out[i] = (float)(wa * a[i] + wb * b[i]);
    }
    return (float)om;
}

static float unit(const uint16_t *src, int n, float *dst)
{
    double s = 0;
    for (int i = 0; i < n; i++) {
        dst[i] = kvs_fp16_to_fp32(src[i]);
        s += (double)dst[i] * dst[i];
    }
    float nr = (float)sqrt(s);
    for (int i = 0; i < n; i++) dst[i] = nr > 0 ? dst[i] / nr : 0;
    return nr;
}

struct mcand { float dist; uint32_t idx; };
static int mcand_cmp(const void *x, const void *y)
{
    const struct mcand *a = x, *b = y;
    return a->dist < b->dist ? 1 : a->dist > b->dist ? -1 : (a->idx > b->idx) - (a->idx < b->idx);
}

static enum kvs_status mc_merge(struct mc *m, int n_ctx)
{
    int d = m->d, nkv = m->nkv, dkv = m->dkv;
    float *ua = malloc((size_t)d * 4 * sizeof(float));
    struct mcand *cd = NULL;
    uint8_t *drop = NULL;
    if (!ua) goto oom;
    float *ub = ua + d, *e = ua + 2 * d;
    int32_t lo = (int32_t)m->sinks, hi = n_ctx - (int32_t)m->recent;
    for (int pi = 0; pi < m->n_pairs; pi++) {
        struct mpair *P = &m->P[pi];
        struct mrows *A = &m->L[P->la], *B = &m->L[P->la + 1];
        if (A->n != B->n) {
            kvs_seterr(m->base.err, sizeof m->base.err, "minicache: layers %d and %d hold different tokens", P->la,
                       P->la + 1);
            free(ua);
            return KVS_ERR_STATE;
        }
        free(cd);
        cd = malloc((size_t)(A->n + 1) * sizeof *cd);
        free(drop);
        drop = calloc(A->n + 1, 1);
        if (!cd || !drop) goto oom;
        uint32_t nc = 0;
        for (uint32_t i = 0; i < A->n; i++) {
            int32_t ps = A->pos[i];
            if (ps < lo || ps >= hi || P->retained[ps]) continue;
            /* angular distance averaged over heads, keys and values */
            double acc = 0;
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < nkv; h++) {
                    const uint16_t *xa = (kv ? A->v : A->k) + (size_t)i * dkv + h * d;
                    const uint16_t *xb = (kv ? B->v : B->k) + (size_t)i * dkv + h * d;
                    unit(xa, d, ua);
                    unit(xb, d, ub);
                    double dot = 0;
                    for (int x = 0; x < d; x++) dot += (double)ua[x] * ub[x];
                    acc += acos(dot > 1 ? 1 : dot < -1 ? -1 : dot) / M_PI;
                    P->sim_sum += dot;
                    P->sim_n++;
                }
            cd[nc++] = (struct mcand){(float)(acc / (2 * nkv)), i};
        }
        if (!nc) continue;
        qsort(cd, nc, sizeof *cd, mcand_cmp);
        uint32_t keep = (uint32_t)lroundf(m->retain * nc);
        if (!pair_reserve(P, P->n + nc - keep, dkv, nkv)) goto oom;
        for (uint32_t c = 0; c < nc; c++) {
            uint32_t i = cd[c].idx;
            if (c < keep) {
                P->retained[A->pos[i]] = 1;
                continue;
            }
            uint16_t *nr = P->nrm + (size_t)P->n * 4 * nkv;
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < nkv; h++) {
                    const uint16_t *xa = (kv ? A->v : A->k) + (size_t)i * dkv + h * d;
                    const uint16_t *xb = (kv ? B->v : B->k) + (size_t)i * dkv + h * d;
                    float na = unit(xa, d, ua), nb = unit(xb, d, ub);
                    slerp(ua, ub, d, m->t, e);
                    double s = 0;
                    for (int x = 0; x < d; x++) s += (double)e[x] * e[x];
                    float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
                    uint16_t *dst = (kv ? P->ev : P->ek) + (size_t)P->n * dkv + h * d;
                    for (int x = 0; x < d; x++) dst[x] = kvs_fp32_to_fp16(e[x] * inv);
                    nr[(2 * kv) * nkv + h] = kvs_fp32_to_fp16(na);
                    nr[(2 * kv + 1) * nkv + h] = kvs_fp32_to_fp16(nb);
                }
            P->pos[P->n++] = A->pos[i];
            drop[i] = 1;
        }
        /* compact both layers' rows in lock-step */
        struct mrows *both[2] = {A, B};
        for (int s = 0; s < 2; s++) {
            struct mrows *R = both[s];
            uint32_t w = 0;
            for (uint32_t i = 0; i < R->n; i++) {
                if (drop[i]) continue;
                if (w != i) {
                    memcpy(R->k + (size_t)w * dkv, R->k + (size_t)i * dkv, (size_t)dkv * 2);
                    memcpy(R->v + (size_t)w * dkv, R->v + (size_t)i * dkv, (size_t)dkv * 2);
                    R->pos[w] = R->pos[i];
                }
                w++;
            }
            R->n = w;
            rows_reserve(R, R->n, dkv);
        }
    }
    free(ua);
    free(cd);
    free(drop);
    return KVS_OK;
oom:
    free(ua);
    free(cd);
    free(drop);
    kvs_seterr(m->base.err, sizeof m->base.err, "minicache: out of memory merging");
    return KVS_ERR_NOMEM;
}

static enum kvs_status mc_end_step(struct kvs_press *pr, int n_ctx)
{
    struct mc *m = (struct mc *)pr;
    int step = n_ctx - m->n_ctx;
    m->n_ctx = n_ctx;
    if (m->n_pairs && (step > 1 || n_ctx - m->last_merge >= MC_MERGE_EVERY)) {
        m->last_merge = n_ctx;
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
        const struct mrows *R = &m->L[l];
        uint64_t h = (uint64_t)R->n * rows_row_bytes(m);
        uint32_t kept = R->n;
        int pi = m->pair_of[l];
        if (pi >= 0) {
            const struct mpair *P = &m->P[pi];
            uint64_t sh = (uint64_t)P->n * pair_row_bytes(m);
            h += l == P->la ? sh - sh / 2 : sh / 2;
            kept += P->n;
            if (l == P->la) alloc += (uint64_t)P->cap * pair_row_bytes(m);
        }
        r->layer_kept[l] = kept;
        r->layer_bytes_held[l] = h;
        r->layer_sim[l] = NAN;
        held += h;
        alloc += (uint64_t)R->cap * rows_row_bytes(m);
    }
    for (int pi = 0; pi < m->n_pairs && pi < KVS_MAX_GROUPS; pi++) {
        const struct mpair *P = &m->P[pi];
        uint32_t tot = P->n + m->L[P->la].n;
        r->group_merged[pi] = tot ? (float)P->n / tot : 0.0f;
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

static void mc_reset(struct kvs_press *pr)
{
    struct mc *m = (struct mc *)pr;
    for (int l = 0; l < m->N; l++) {
        m->L[l].n = 0;
        rows_reserve(&m->L[l], 0, m->dkv);
    }
    for (int pi = 0; pi < m->n_pairs; pi++) {
        m->P[pi].n = 0;
        m->P[pi].sim_sum = 0;
        m->P[pi].sim_n = 0;
        memset(m->P[pi].retained, 0, (size_t)m->n_ctx_max);
    }
    m->n_ctx = m->last_merge = 0;
}

static void mc_destroy(struct kvs_press *pr)
{
    struct mc *m = (struct mc *)pr;
    if (m->L)
        for (int l = 0; l < m->N; l++) {
            free(m->L[l].k); free(m->L[l].v); free(m->L[l].pos);
        }
    if (m->P)
        for (int pi = 0; pi < m->n_pairs; pi++) {
            free(m->P[pi].ek); free(m->P[pi].ev); free(m->P[pi].nrm); free(m->P[pi].pos); free(m->P[pi].retained);
        }
    free(m->L); free(m->P); free(m->pair_of);
    free(m->sk); free(m->sv); free(m->sp);
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
    .fill_record = mc_fill_record, .reset = mc_reset, .destroy = mc_destroy,
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
    m->base.needs = KVS_PRESS_NEEDS_KV;
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
    m->L = calloc((size_t)m->N, sizeof *m->L);
    m->P = calloc((size_t)KVS_MAX(m->n_pairs, 1), sizeof *m->P);
    m->pair_of = malloc((size_t)m->N * sizeof(int));
    if (!m->L || !m->P || !m->pair_of) goto oom;
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
