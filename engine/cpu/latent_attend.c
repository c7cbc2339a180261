/* CPU twin of kernels/latent_attend.cu (see latent_attend.h): attention of T queries over a layer's
 * CommonKV latent rows, fp16 or packed, segment after segment. Keys are rebuilt per block of rows
 * (latents -> B_k by fp32 sgemm or the bf16/int8 kernels of latent_keys.h, + b_k, RoPE at each
 * row's own position); values by re-association (P C) B_v^T, never materialised. Decode runs fused
 * in tiles with an online softmax in fixed slots; longer chunks materialise the keys once. Results
 * do not depend on the thread count. Depends on backend.h, latent_keys.h, latent_pool.h, threads.h,
 * OpenBLAS. */
#include "latent_attend.h"

#include "attention.h"
#include "latent_keys.h"
#include "latent_pool.h"
#include "record.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LA_ROWS_TASK 64     /* cached rows per key-reconstruction task (materialising path) */
#define LA_QTILE 32         /* query rows per attention task (materialising path) */
#define LA_DTILE 64         /* cached rows per fused decode task */
#define LA_DSUB 16          /* rows of a tile accumulated at once (L1-sized) */
#define LA_DSLOTS 8         /* fused decode: softmax states, each over a fixed run of tiles (not per thread) */

enum { KEYS_F32, KEYS_BF16, KEYS_I8 };

/* One call: the arguments, the rows' layout and what the key rebuild needs. */
struct la {
    const struct kvs_lat_attend_args *a;
    const struct kvs_lat_fmt *f[KVS_LAT_ATTEND_MAX_SEGS];
    int start[KVS_LAT_ATTEND_MAX_SEGS + 1]; /* first row of each segment; start[n_segs] = n */
    int n, r, d, nh, nkv, dkv, rep, dq;
    int kern;
    const float *cs;        /* RoPE table (positions, half, 2) covering every row's position */
    int half;
};

/* Rows [r0, r0 + m): latents to CF (fp32, leading dimension r) and positions to RP, then keys into
 * KK (leading dimension dkv) plus b_k, with RoPE at each row's own position. CB: conversion scratch
 * (m rows of r + 4 uint16); SC: m floats (int8 row scales). Shared by both paths. */
static void rows_keys(const struct la *s, int r0, int m, float *cf, int32_t *rp, uint16_t *cb, float *sc, float *kk)
{
    const struct kvs_lat_attend_args *a = s->a;
    const int r = s->r;
    /* the rows in runs that lie in one segment: one read per run */
    for (int i = 0, si = 0; i < m;) {
        int row = r0 + i;
        while (row >= s->start[si + 1]) si++;
        int x = row - s->start[si], cnt = KVS_MIN(m - i, s->start[si + 1] - row);
        kvs_cpu_lat_read(a->segs[si].L, s->f[si], a->segs[si].arr, x, cnt, cf + (size_t)i * r, rp + i);
        i += cnt;
    }
    if (s->kern == KEYS_I8) {
        const struct kvs_ckv_i8_mat *bm = a->bk_pack;
        kvs_ckv_i8_rows(bm, cf, m, r, (uint8_t *)cb, sc);
        kvs_ckv_i8_gemm(bm, (const uint8_t *)cb, sc, m, kk, s->dkv);
    } else if (s->kern == KEYS_BF16) {
        const struct kvs_ckv_bf16_mat *bm = a->bk_pack;
        kvs_ckv_bf16_rows(bm, cf, m, r, cb);
        kvs_ckv_bf16_gemm(bm, cb, m, kk, s->dkv);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, s->dkv, r, 1.0f, cf, r, a->bk, r, 0.0f, kk, s->dkv);
    }
    if (a->bk_bias)
        for (int i = 0; i < m; i++)
            for (int x = 0; x < s->dkv; x++) kk[(size_t)i * s->dkv + x] += a->bk_bias[x];
    kvs_ckv_rope_rows(s->cs, s->half, a->neox, kk, m, s->dkv, s->nkv, rp);
}

/* Scratch carved from one allocation: each piece 64-byte aligned. With BASE NULL only counts. */
static void *carve(char *base, size_t *off, size_t bytes)
{
    void *p = base ? base + *off : NULL;
    *off += (bytes + 63) & ~(size_t)63;
    return p;
}

/* ---------------------------------------------------------------- materialising path (query chunks) */

struct mat_job {
    const struct la *s;
    const float *q;
    const int32_t *q_pos;
    float *out;
    int T, n_tiles, ev_from, ev_tile0;
    float *cf, *kk, *csc;   /* (n, r), (n, dkv), (n) */
    int32_t *rp;            /* (n) */
    uint16_t *cb;           /* (n, r + 4) */
    float **th_s, **th_y;   /* per thread: (QTILE, n), (QTILE, r) */
    float *ev;              /* (nh, n_tiles - ev_tile0, n) attention mass per task, or NULL */
};

/* Tasks [b, e) of LA_ROWS_TASK rows: their latents and keys. */
static void keys_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct mat_job *j = ctx;
    const struct la *s = j->s;
    (void)thread;
    for (int64_t task = b; task < e; task++) {
        int r0 = (int)task * LA_ROWS_TASK, m = KVS_MIN(s->n, r0 + LA_ROWS_TASK) - r0;
        rows_keys(s, r0, m, j->cf + (size_t)r0 * s->r, j->rp + r0, j->cb ? j->cb + (size_t)r0 * (s->r + 4) : NULL,
                  j->csc ? j->csc + r0 : NULL, j->kk + (size_t)r0 * s->dkv);
    }
}

/* Tasks (head, tile of LA_QTILE queries): scores, masked softmax, Y = P C, out = Y B_v^T. */
static void attn_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct mat_job *j = ctx;
    const struct la *s = j->s;
    const struct kvs_lat_attend_args *a = s->a;
    const int d = s->d, r = s->r, n = s->n, dq = s->dq, dkv = s->dkv;
    float *S = j->th_s[thread], *Y = j->th_y[thread];
    for (int64_t task = b; task < e; task++) {
        int h = (int)(task / j->n_tiles), tile = (int)(task % j->n_tiles);
        int kv = h / s->rep, i0 = tile * LA_QTILE, tq = KVS_MIN(LA_QTILE, j->T - i0);
        /* this task's own mass row (summed in task order after the loop, never per thread) */
        float *ev = j->ev && tile >= j->ev_tile0 ?
                    j->ev + ((size_t)h * (j->n_tiles - j->ev_tile0) + (tile - j->ev_tile0)) * n : NULL;
        if (ev) memset(ev, 0, (size_t)n * sizeof(float));
        bool seen[LA_QTILE]; /* the query saw a row: only then does it get b_v (the contract's 0) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tq, n, d, a->scale, j->q + (size_t)i0 * dq + (size_t)h * d,
                    dq, j->kk + (size_t)kv * d, dkv, 0.0f, S, n);
        for (int i = 0; i < tq; i++) {
            float *sr = S + (size_t)i * n;
            int32_t qp = j->q_pos[i0 + i];
            float mx = -INFINITY;
            for (int x = 0; x < n; x++) {
                if (j->rp[x] > qp) sr[x] = -INFINITY;
                else if (sr[x] > mx) mx = sr[x];
            }
            seen[i] = mx != -INFINITY;
            if (!seen[i]) {
                memset(sr, 0, (size_t)n * sizeof(float));
                continue;
            }
            double sum = 0;
            for (int x = 0; x < n; x++) {
                float pexp = sr[x] == -INFINITY ? 0.0f : expf(sr[x] - mx);
                sr[x] = pexp;
                sum += pexp;
            }
            float inv = (float)(1.0 / sum);
            for (int x = 0; x < n; x++) sr[x] *= inv;
            if (ev && i0 + i >= j->ev_from)
                for (int x = 0; x < n; x++) ev[x] += sr[x];
        }
        /* values by re-association: (P C) B_v^T, V is never formed */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tq, r, n, 1.0f, S, n, j->cf, r, 0.0f, Y, r);
        float *o = j->out + (size_t)i0 * dq + (size_t)h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tq, d, r, 1.0f, Y, r, a->bv + (size_t)kv * d * r, r, 0.0f,
                    o, dq);
        if (a->bv_bias)
            for (int i = 0; i < tq; i++)
                for (int x = 0; x < d && seen[i]; x++) o[(size_t)i * dq + x] += a->bv_bias[kv * d + x];
    }
}

static enum kvs_status attend_mat(struct kvs_pool *pool, const struct la *s, const float *q, float *out,
                                  float *mass)
{
    const struct kvs_lat_attend_args *a = s->a;
    const int n = s->n, r = s->r, nth = kvs_pool_size(pool);
    struct mat_job j = {.s = s, .q = q, .q_pos = a->q_pos, .out = out, .T = a->T,
                        .n_tiles = (a->T + LA_QTILE - 1) / LA_QTILE, .ev_from = a->mass_from};
    bool ev = mass && a->mass_from < a->T;
    j.ev_tile0 = ev ? KVS_MAX(j.ev_from, 0) / LA_QTILE : j.n_tiles;
    size_t n_ev = (size_t)s->nh * (size_t)(j.n_tiles - j.ev_tile0);
    bool conv = s->kern != KEYS_F32;
    char *base = NULL;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        j.cf = carve(base, &off, (size_t)n * r * sizeof(float));
        j.kk = carve(base, &off, (size_t)n * s->dkv * sizeof(float));
        j.rp = carve(base, &off, (size_t)n * sizeof(int32_t));
        j.cb = conv ? carve(base, &off, (size_t)n * (r + 4) * sizeof(uint16_t)) : NULL;
        j.csc = s->kern == KEYS_I8 ? carve(base, &off, (size_t)n * sizeof(float)) : NULL;
        j.th_s = carve(base, &off, (size_t)nth * sizeof(float *));
        j.th_y = carve(base, &off, (size_t)nth * sizeof(float *));
        for (int t = 0; t < nth; t++) {
            float *ts = carve(base, &off, (size_t)LA_QTILE * n * sizeof(float));
            float *ty = carve(base, &off, (size_t)LA_QTILE * r * sizeof(float));
            if (base) j.th_s[t] = ts, j.th_y[t] = ty;
        }
        j.ev = ev ? carve(base, &off, n_ev * n * sizeof(float)) : NULL;
        if (pass == 0 && !(base = malloc(off))) return KVS_ERR_NOMEM;
    }
    kvs_pool_for(pool, (n + LA_ROWS_TASK - 1) / LA_ROWS_TASK, keys_range, &j);
    kvs_pool_for(pool, (int64_t)s->nh * j.n_tiles, attn_range, &j);
    if (mass) {
        /* attention mass of the queries from mass_from, summed over heads and tiles in task order */
        memset(mass, 0, (size_t)n * sizeof(float));
        for (size_t t = 0; ev && t < n_ev; t++)
            for (int x = 0; x < n; x++) mass[x] += j.ev[t * (size_t)n + x];
    }
    free(base);
    return KVS_OK;
}

/* ---------------------------------------------------------------- fused decode */

/* One pass over the rows in tiles of LA_DTILE, each task rebuilding its tile's keys, scores for
 * every (query, head), then an online softmax that folds the tile into the running max, sum and
 * weighted latent sum Y = sum p C of its slot. A slot is a fixed run of consecutive tiles folded in
 * order (at most LA_DSLOTS slots, whatever the thread count), and the slots are combined in slot
 * order, so the result is the same bytes at any -t. Nothing the size of the context is
 * materialised unless the mass is asked for; out = (Y / sum) B_v^T. */
struct dec_tile_scr {      /* one thread's tile: latents (fp32, converted), keys, positions, scores */
    float *tf, *tk, *ts, *tsc;
    uint16_t *tb;
    int32_t *rp;
};
struct dec_state {         /* one slot's running softmax per (query, head) */
    float *m, *l, *y;
};
struct dec_job {
    const struct la *s;
    const int32_t *q_pos;
    const float *qs;        /* (T, nh*d) queries times the scale */
    int T, n_tiles, n_slots;
    struct dec_tile_scr *w; /* per thread */
    struct dec_state *st;   /* per slot */
    float *S;               /* (T*nh, n) masked scores kept for the mass, or NULL */
};

/* Tile TASK: rebuild its keys in W's scratch and fold it into the slot state ST. */
static void dec_tile(const struct dec_job *j, const struct dec_tile_scr *w, const struct dec_state *st, int64_t task)
{
    const struct la *s = j->s;
    const int r = s->r, d = s->d, dkv = s->dkv, nh = s->nh, rep = s->rep, dq = s->dq;
    int r0 = (int)task * LA_DTILE, m = KVS_MIN(s->n, r0 + LA_DTILE) - r0;
    rows_keys(s, r0, m, w->tf, w->rp, w->tb, w->tsc, w->tk);
    for (int qi = 0; qi < j->T; qi++)
        for (int kv = 0; kv < s->nkv; kv++)
            kvs_ckv_scores(w->tk + (size_t)kv * d, m, dkv, j->qs + (size_t)qi * dq + (size_t)kv * rep * d, rep, d, d,
                           w->ts + (size_t)(qi * nh + kv * rep) * LA_DTILE, LA_DTILE);
    for (int qi = 0; qi < j->T; qi++) {
        int32_t qp = j->q_pos[qi];
        for (int h = 0; h < nh; h++) {
            int sh = qi * nh + h;
            float *sr = w->ts + (size_t)sh * LA_DTILE, mx = -INFINITY;
            for (int i = 0; i < m; i++) {
                if (w->rp[i] > qp) sr[i] = -INFINITY;
                else if (sr[i] > mx) mx = sr[i];
            }
            if (j->S) memcpy(j->S + (size_t)sh * s->n + r0, sr, (size_t)m * sizeof(float));
            if (mx == -INFINITY) { /* every row of the tile is in this query's future */
                memset(sr, 0, (size_t)m * sizeof(float));
                continue;
            }
            float *y = st->y + (size_t)sh * r;
            if (mx > st->m[sh]) {
                float f = st->m[sh] == -INFINITY ? 0.0f : expf(st->m[sh] - mx);
                st->l[sh] *= f;
                for (int x = 0; x < r; x++) y[x] *= f;
                st->m[sh] = mx;
            }
            st->l[sh] += (float)kvs_exp_row(sr, m, st->m[sh]);
        }
    }
    /* Y += P C in sub-blocks of rows small enough to stay in L1 while every head reads them (a tile
     * whose rows are all masked for a head has P = 0 there and is skipped) */
    for (int i0 = 0; i0 < m; i0 += LA_DSUB)
        for (int sh = 0; sh < j->T * nh; sh++)
            kvs_ckv_accum(st->y + (size_t)sh * r, w->ts + (size_t)sh * LA_DTILE + i0, w->tf + (size_t)i0 * r,
                          KVS_MIN(LA_DSUB, m - i0), r, r);
}

/* Slots [b, e): each folds its own run of tiles, in order, into its own state; the tile scratch is
 * the thread's. */
static void dec_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct dec_job *j = ctx;
    for (int64_t slot = b; slot < e; slot++)
        for (int64_t task = slot * j->n_tiles / j->n_slots; task < (slot + 1) * j->n_tiles / j->n_slots; task++)
            dec_tile(j, &j->w[thread], &j->st[slot], task);
}

static enum kvs_status attend_fused(struct kvs_pool *pool, const struct la *s, const float *q, float *out,
                                    float *mass)
{
    const struct kvs_lat_attend_args *a = s->a;
    const int r = s->r, d = s->d, nh = s->nh, dq = s->dq, rep = s->rep, nq = a->T * nh, n = s->n;
    const int nth = kvs_pool_size(pool);
    struct dec_job j = {.s = s, .q_pos = a->q_pos, .T = a->T, .n_tiles = (n + LA_DTILE - 1) / LA_DTILE};
    j.n_slots = KVS_MIN(j.n_tiles, LA_DSLOTS);
    bool conv = s->kern != KEYS_F32;
    float *qs = NULL;
    char *base = NULL;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        j.w = carve(base, &off, (size_t)nth * sizeof *j.w);
        j.st = carve(base, &off, (size_t)j.n_slots * sizeof *j.st);
        for (int t = 0; t < nth; t++) {
            struct dec_tile_scr w;
            w.tf = carve(base, &off, (size_t)LA_DTILE * r * sizeof(float));
            w.tk = carve(base, &off, (size_t)LA_DTILE * s->dkv * sizeof(float));
            w.ts = carve(base, &off, (size_t)nq * LA_DTILE * sizeof(float));
            w.tsc = s->kern == KEYS_I8 ? carve(base, &off, (size_t)LA_DTILE * sizeof(float)) : NULL;
            w.tb = conv ? carve(base, &off, (size_t)LA_DTILE * (r + 4) * sizeof(uint16_t)) : NULL;
            w.rp = carve(base, &off, (size_t)LA_DTILE * sizeof(int32_t));
            if (base) j.w[t] = w;
        }
        for (int t = 0; t < j.n_slots; t++) {
            struct dec_state st;
            st.m = carve(base, &off, (size_t)nq * sizeof(float));
            st.l = carve(base, &off, (size_t)nq * sizeof(float));
            st.y = carve(base, &off, (size_t)nq * r * sizeof(float));
            if (base) j.st[t] = st;
        }
        qs = carve(base, &off, (size_t)a->T * dq * sizeof(float));
        j.S = mass ? carve(base, &off, (size_t)nq * n * sizeof(float)) : NULL;
        if (pass == 0 && !(base = malloc(off))) return KVS_ERR_NOMEM;
    }
    for (int i = 0; i < a->T * dq; i++) qs[i] = q[i] * a->scale;
    j.qs = qs;
    for (int t = 0; t < j.n_slots; t++) {
        for (int i = 0; i < nq; i++) {
            j.st[t].m[i] = -INFINITY;
            j.st[t].l[i] = 0;
        }
        memset(j.st[t].y, 0, (size_t)nq * r * sizeof(float));
    }
    kvs_pool_for(pool, j.n_slots, dec_range, &j);
    if (mass) memset(mass, 0, (size_t)n * sizeof(float));
    /* combine the slots' running softmax states in slot order, then values by re-association */
    float *y = j.st[0].y;
    for (int sh = 0; sh < nq; sh++) {
        float M = -INFINITY;
        for (int t = 0; t < j.n_slots; t++) M = KVS_MAX(M, j.st[t].m[sh]);
        float *o = out + (size_t)(sh / nh) * dq + (size_t)(sh % nh) * d;
        int kv = (sh % nh) / rep;
        if (M == -INFINITY) { /* no visible row: nothing to attend to */
            memset(o, 0, (size_t)d * sizeof(float));
            continue;
        }
        float *ys = y + (size_t)sh * r;
        double l = 0;
        for (int t = 0; t < j.n_slots; t++) {
            const struct dec_state *st = &j.st[t];
            float f = st->m[sh] == -INFINITY ? 0.0f : expf(st->m[sh] - M);
            l += (double)f * st->l[sh];
            if (t == 0) {
                for (int x = 0; x < r; x++) ys[x] *= f;
            } else if (f != 0.0f) {
                const float *yt = st->y + (size_t)sh * r;
                for (int x = 0; x < r; x++) ys[x] += f * yt[x];
            }
        }
        cblas_sgemv(CblasRowMajor, CblasNoTrans, d, r, (float)(1.0 / l), a->bv + (size_t)kv * d * r, r, ys, 1, 0.0f, o,
                    1);
        if (a->bv_bias)
            for (int x = 0; x < d; x++) o[x] += a->bv_bias[kv * d + x];
        if (j.S && sh / nh >= a->mass_from) {
            /* this (query, head)'s normalised weights, row by row */
            float *srow = j.S + (size_t)sh * n;
            kvs_exp_row(srow, n, M);
            float inv = (float)(1.0 / l);
            for (int x = 0; x < n; x++) mass[x] += srow[x] * inv;
        }
    }
    free(base);
    return KVS_OK;
}

/* ---------------------------------------------------------------- entry */

enum kvs_status kvs_cpu_lat_attend(struct kvs_pool *pool, const struct kvs_lat_attend_args *a, const float *q,
                                   float *out, float *mass)
{
    if (!a->f || a->f->width != a->rank || a->rank <= 0 || a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 ||
        a->head_dim <= 0 || a->head_dim % 2 || a->n_head % a->n_head_kv || a->n_segs < 0 ||
        a->n_segs > KVS_LAT_ATTEND_MAX_SEGS)
        return KVS_ERR_ARG;
    struct la s = {.a = a, .r = a->rank, .d = a->head_dim, .nh = a->n_head, .nkv = a->n_head_kv,
                   .half = a->head_dim / 2};
    s.dkv = s.nkv * s.d;
    s.rep = s.nh / s.nkv;
    s.dq = s.nh * s.d;
    int64_t n = 0;
    int32_t pmax = -1;
    for (int i = 0; i < a->n_segs; i++) {
        const struct kvs_lat_rows *L = a->segs[i].L;
        s.f[i] = a->seg_f[i] ? a->seg_f[i] : a->f;
        s.start[i] = (int)n;
        /* a read of no rows checks the format and the array */
        if (!L || s.f[i]->width != a->rank || kvs_cpu_lat_read(L, s.f[i], a->segs[i].arr, 0, 0, NULL, NULL) != KVS_OK ||
            L->n < 0)
            return KVS_ERR_ARG;
        for (int x = 0; x < L->n; x++) {
            int32_t p = ((const int32_t *)L->pos)[x];
            if (p < 0) return KVS_ERR_ARG;
            pmax = KVS_MAX(pmax, p);
        }
        n += L->n;
        if (n > 0x7fffffff) return KVS_ERR_ARG;
    }
    s.n = (int)n;
    s.start[a->n_segs] = s.n;
    if (a->T == 0) return KVS_OK;
    if (n == 0) {
        memset(out, 0, (size_t)a->T * s.dq * sizeof(float));
        return KVS_OK;
    }
    if (!a->bv || !a->q_pos) return KVS_ERR_ARG;
    s.kern = KEYS_F32;
    if (a->keys == KVS_CKV_KEYS_BF16 && a->bk_pack && kvs_ckv_bf16_available()) s.kern = KEYS_BF16;
    else if (a->keys == KVS_CKV_KEYS_INT8 && a->bk_pack && kvs_ckv_i8_available()) s.kern = KEYS_I8;
    if (s.kern == KEYS_F32 && !a->bk) return KVS_ERR_ARG;
    /* the caller's RoPE table when it covers every row, else one built here (the same angles) */
    float *own = NULL;
    s.cs = a->rope_cs;
    if (!s.cs || pmax >= a->rope_n_pos) {
        if (!a->freqs) return KVS_ERR_ARG;
        own = malloc(((size_t)pmax + 1) * s.half * 2 * sizeof(float));
        if (!own) return KVS_ERR_NOMEM;
        for (int32_t p = 0; p <= pmax; p++)
            for (int i = 0; i < s.half; i++) {
                double ang = (double)p * a->freqs[i]; /* as kvs_cpu_rope and the press's table */
                own[((size_t)p * s.half + i) * 2] = (float)cos(ang);
                own[((size_t)p * s.half + i) * 2 + 1] = (float)sin(ang);
            }
        s.cs = own;
    }
    enum kvs_status st = a->T <= KVS_LAT_FUSED_T ? attend_fused(pool, &s, q, out, mass)
                                                 : attend_mat(pool, &s, q, out, mass);
    free(own);
    return st;
}
