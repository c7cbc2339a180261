/* CPU twin of kernels/minicache.cu: MiniCache's merged pairs (struct kvs_mc_rows) in host memory,
 * grown by realloc; the per-token angular distance of two layers' fp16 rows, their SLERP merge
 * (unit directions at t, renormalised, each layer's norms kept), and attention over a layer's
 * unmerged rows plus the pair's merged rows rebuilt with that layer's norms (the arithmetic the
 * minicache press has always done). Depends on minicache.h, attention.h, quant.h, threads.h, libc. */
#include "minicache.h"

#include "attention.h"
#include "quant.h"
#include "threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint64_t kvs_mc_row_bytes(int nkv, int d) { return (uint64_t)nkv * d * 4 + (uint64_t)nkv * 8 + 4; }

enum kvs_status kvs_cpu_mc_grow(struct kvs_mc_rows *P, int nkv, int d, int cap)
{
    if (nkv <= 0 || d <= 0 || cap < P->n) return KVS_ERR_ARG;
    if (cap == 0) {
        free(P->ek), free(P->ev), free(P->nrm), free(P->pos);
        P->ek = P->ev = P->nrm = P->pos = NULL;
        P->cap = 0;
        return KVS_OK;
    }
    size_t row = (size_t)nkv * d * sizeof(uint16_t);
    if ((size_t)cap > SIZE_MAX / row) return KVS_ERR_ARG;
    void *a = realloc(P->ek, (size_t)cap * row);
    if (a) P->ek = a;
    void *b = realloc(P->ev, (size_t)cap * row);
    if (b) P->ev = b;
    void *c = realloc(P->nrm, (size_t)cap * 4 * nkv * sizeof(uint16_t));
    if (c) P->nrm = c;
    void *p = realloc(P->pos, (size_t)cap * sizeof(int32_t));
    if (p) P->pos = p;
    if (!a || !b || !c || !p) return KVS_ERR_NOMEM;
    P->cap = cap;
    return KVS_OK;
}

/* DST = SRC (n fp16) / |SRC|, in fp32; returns the norm. */
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

static bool rows_ok(const struct kvs_kv_rows *A, const struct kvs_kv_rows *B, const int32_t *idx, int m)
{
    for (int r = 0; r < m; r++)
        if (idx[r] < 0 || idx[r] >= A->n || idx[r] >= B->n) return false;
    return true;
}

enum kvs_status kvs_cpu_mc_score(const struct kvs_kv_rows *A, const struct kvs_kv_rows *B, int nkv, int d,
                                 const int32_t *idx, int m, float *dist, double *dots)
{
    if (nkv <= 0 || d <= 0 || m < 0 || !rows_ok(A, B, idx, m)) return KVS_ERR_ARG;
    float *ua = malloc((size_t)d * 2 * sizeof(float));
    if (!ua) return KVS_ERR_NOMEM;
    float *ub = ua + d;
    int dkv = nkv * d;
    for (int r = 0; r < m; r++) {
        size_t i = (size_t)idx[r];
        double acc = 0;
        for (int kv = 0; kv < 2; kv++)
            for (int h = 0; h < nkv; h++) {
                const uint16_t *xa = (const uint16_t *)(kv ? A->v : A->k) + i * dkv + h * d;
                const uint16_t *xb = (const uint16_t *)(kv ? B->v : B->k) + i * dkv + h * d;
                unit(xa, d, ua);
                unit(xb, d, ub);
                double dot = 0;
                for (int x = 0; x < d; x++) dot += (double)ua[x] * ub[x];
                acc += acos(dot > 1 ? 1 : dot < -1 ? -1 : dot) / M_PI;
                if (dots) dots[(size_t)r * 2 * nkv + kv * nkv + h] = dot;
            }
        dist[r] = (float)(acc / (2 * nkv));
    }
    free(ua);
    return KVS_OK;
}

enum kvs_status kvs_cpu_mc_merge(const struct kvs_kv_rows *A, const struct kvs_kv_rows *B, struct kvs_mc_rows *P,
                                 int nkv, int d, float t, const int32_t *idx, int m, int keep)
{
    if (nkv <= 0 || d <= 0 || m < 0 || keep < 0 || keep > m || P->n + (m - keep) > P->cap || !rows_ok(A, B, idx, m))
        return KVS_ERR_ARG;
    float *ua = malloc((size_t)d * 3 * sizeof(float));
    if (!ua) return KVS_ERR_NOMEM;
    float *ub = ua + d, *e = ua + 2 * d;
    int dkv = nkv * d;
    uint16_t *EK = P->ek, *EV = P->ev, *NR = P->nrm;
    int32_t *PS = P->pos;
    for (int r = keep; r < m; r++) {
        size_t i = (size_t)idx[r];
        uint16_t *nr = NR + (size_t)P->n * 4 * nkv;
        for (int kv = 0; kv < 2; kv++)
            for (int h = 0; h < nkv; h++) {
                const uint16_t *xa = (const uint16_t *)(kv ? A->v : A->k) + i * dkv + h * d;
                const uint16_t *xb = (const uint16_t *)(kv ? B->v : B->k) + i * dkv + h * d;
                float na = unit(xa, d, ua), nb = unit(xb, d, ub);
                slerp(ua, ub, d, t, e);
                double s = 0;
                for (int x = 0; x < d; x++) s += (double)e[x] * e[x];
                float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
                uint16_t *dst = (kv ? EV : EK) + (size_t)P->n * dkv + h * d;
                /* a unit direction stays inside fp16; a norm of fp16 values need not (64 of them
                 * at 10^4 make 8·10^4): saturated and counted like any cache store */
                for (int x = 0; x < d; x++) dst[x] = kvs_f32_to_f16_sat(e[x] * inv, &P->clamped);
                nr[(2 * kv) * nkv + h] = kvs_f32_to_f16_sat(na, &P->clamped);
                nr[(2 * kv + 1) * nkv + h] = kvs_f32_to_f16_sat(nb, &P->clamped);
            }
        PS[P->n++] = ((const int32_t *)A->pos)[i];
    }
    free(ua);
    return KVS_OK;
}

/* The merged rows of P as one layer's keys and values (its own norms times the shared unit
 * directions), written after the AT unmerged rows of the attention scratch; tasks of
 * MC_REBUILD_ROWS rows. Unit directions times norms at most 65504 stay in range; the conversion
 * saturates all the same (uncounted: the norms were counted when merged). */
#define MC_REBUILD_ROWS 64
struct rebuild_job {
    const struct kvs_mc_rows *P;
    int side, nkv, d, at;
    uint16_t *sk, *sv;
    int32_t *sp;
};

static void rebuild_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct rebuild_job *j = ctx;
    const struct kvs_mc_rows *P = j->P;
    const int d = j->d, nkv = j->nkv, dkv = nkv * d;
    const uint16_t *NR = P->nrm, *EK = P->ek, *EV = P->ev;
    float tmp[256];
    (void)thread;
    for (int64_t task = b; task < e; task++) {
        int i1 = (int)KVS_MIN((int64_t)P->n, (task + 1) * MC_REBUILD_ROWS);
        for (int i = (int)task * MC_REBUILD_ROWS; i < i1; i++) {
            const uint16_t *nr = NR + (size_t)i * 4 * nkv;
            uint16_t *dst[2] = {j->sk + (size_t)(j->at + i) * dkv, j->sv + (size_t)(j->at + i) * dkv};
            const uint16_t *src[2] = {EK + (size_t)i * dkv, EV + (size_t)i * dkv};
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
            j->sp[j->at + i] = ((const int32_t *)P->pos)[i];
        }
    }
}

enum kvs_status kvs_cpu_mc_attend(struct kvs_pool *pool, const struct kvs_kv_rows *L, const struct kvs_mc_rows *P,
                                  int side, const struct kvs_kv_attend_args *a, const float *q, float *out)
{
    if (a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || a->n_head % a->n_head_kv || a->head_dim <= 0 ||
        (side != 0 && side != 1))
        return KVS_ERR_ARG;
    int nm = P ? P->n : 0, n = L->n + nm, dkv = a->n_head_kv * a->head_dim;
    if (a->T == 0) return KVS_OK;
    if (n == 0) {
        memset(out, 0, (size_t)a->T * a->n_head * a->head_dim * sizeof(float));
        return KVS_OK;
    }
    struct kvs_attn_args aa = {.T = a->T, .n_head = a->n_head, .n_head_kv = a->n_head_kv, .head_dim = a->head_dim,
                               .q = q, .out = out, .qpos = a->q_pos, .n_keys = n, .k = L->k, .v = L->v,
                               .kpos = L->pos};
    if (!nm) return kvs_attn_f16(pool, &aa) ? KVS_OK : KVS_ERR_NOMEM;
    /* the unmerged rows, then the merged ones rebuilt as this layer's: one fp16 cache to attend over */
    uint16_t *sk = malloc((size_t)n * dkv * sizeof(uint16_t)), *sv = malloc((size_t)n * dkv * sizeof(uint16_t));
    int32_t *sp = malloc((size_t)n * sizeof(int32_t));
    bool ok = sk && sv && sp;
    if (ok) {
        if (L->n) {
            memcpy(sk, L->k, (size_t)L->n * dkv * sizeof(uint16_t));
            memcpy(sv, L->v, (size_t)L->n * dkv * sizeof(uint16_t));
            memcpy(sp, L->pos, (size_t)L->n * sizeof(int32_t));
        }
        struct rebuild_job rj = {.P = P, .side = side, .nkv = a->n_head_kv, .d = a->head_dim, .at = L->n,
                                 .sk = sk, .sv = sv, .sp = sp};
        kvs_pool_for(pool, (nm + MC_REBUILD_ROWS - 1) / MC_REBUILD_ROWS, rebuild_range, &rj);
        aa.k = sk, aa.v = sv, aa.kpos = sp;
        ok = kvs_attn_f16(pool, &aa);
    }
    free(sk), free(sv), free(sp);
    return ok ? KVS_OK : KVS_ERR_NOMEM;
}

enum kvs_status kvs_cpu_mc_read(const struct kvs_mc_rows *P, int nkv, int d, int row0, int n, uint16_t *ek,
                                uint16_t *ev, uint16_t *nrm, int32_t *pos)
{
    if (nkv <= 0 || d <= 0 || row0 < 0 || n < 0 || row0 > P->n - n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    size_t dkv = (size_t)nkv * d;
    if (ek) memcpy(ek, (const uint16_t *)P->ek + (size_t)row0 * dkv, (size_t)n * dkv * sizeof(uint16_t));
    if (ev) memcpy(ev, (const uint16_t *)P->ev + (size_t)row0 * dkv, (size_t)n * dkv * sizeof(uint16_t));
    if (nrm) memcpy(nrm, (const uint16_t *)P->nrm + (size_t)row0 * 4 * nkv, (size_t)n * 4 * nkv * sizeof(uint16_t));
    if (pos) memcpy(pos, (const int32_t *)P->pos + row0, (size_t)n * sizeof(int32_t));
    return KVS_OK;
}
