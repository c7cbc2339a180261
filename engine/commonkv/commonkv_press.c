/* The CommonKV latent cache (DESIGN.md §3 steps 5-9, §4) and, with group size 1 and no merging,
 * the lowrank (Palu-like) press. Per layer a private pool of latents c = A_g xn (fp16 rows, or
 * packed rows when composed with quant), per group a shared pool of merged latents, each with the
 * tokens' positions: segments of the backend's latent pools (ckv_pool.h), in its memory, which
 * this press only decides about (what to store, merge, quantize, evict). Attention is the
 * backend's lat_attend, for every chunk and decode step (the CPU's is engine/cpu/latent_attend.c:
 * keys rebuilt per block of rows, values by re-association), with the key kernel the method
 * config's ckv_keys picks (bf16 by default where built); the similarities that drive merging are
 * the backend's lat_cosine. Merging under a global byte budget (capped at each step by the plan's
 * merge share, never below a similarity floor), quantization of old rows and eviction of (group,
 * token) slots happen in end_step. Depends on commonkv.h, ckv_pool.h, backend.h, latent_keys.h,
 * latent_pool.h and OpenBLAS. */
#include "latent_attend.h"
#include "latent_keys.h"
#include "latent_pool.h"
#include "ckv_pool.h"
#include "commonkv_priv.h"
#include "infer.h"
#include "quant.h"
#include "threads.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CKV_BLOCK 256       /* pools grow and shrink in blocks of this many tokens */
#define CKV_MERGE_BLOCK 32  /* decoded tokens merge once this many have left the recent window */

enum { FMT_F16 = 0, FMT_Q = 1 };

/* ---------------------------------------------------------------- RoPE table */

enum kvs_status kvs_rope_table_reserve(struct kvs_rope_table *t, int n_pos)
{
    if (n_pos <= t->n_pos) return KVS_OK;
    int cap = t->n_pos ? t->n_pos : 256;
    while (cap < n_pos) cap = cap > (1 << 29) ? n_pos : cap * 2;
    float *cs = realloc(t->cs, (size_t)cap * t->half * 2 * sizeof(float));
    if (!cs) return KVS_ERR_NOMEM;
    t->cs = cs;
    for (int p = t->n_pos; p < cap; p++)
        for (int i = 0; i < t->half; i++) {
            double ang = (double)p * t->freqs[i]; /* the same angle as kvs_cpu_rope */
            t->cs[((size_t)p * t->half + i) * 2] = (float)cos(ang);
            t->cs[((size_t)p * t->half + i) * 2 + 1] = (float)sin(ang);
        }
    t->n_pos = cap;
    return KVS_OK;
}

enum kvs_status kvs_rope_table_init(struct kvs_rope_table *t, const struct kvs_hparams *hp, int n_pos)
{
    memset(t, 0, sizeof *t);
    t->freqs = kvs_rope_freqs(hp);
    if (!t->freqs) return KVS_ERR_NOMEM;
    t->half = (int)hp->head_dim / 2;
    t->neox = hp->rope_neox;
    enum kvs_status st = kvs_rope_table_reserve(t, n_pos);
    if (st != KVS_OK) kvs_rope_table_free(t);
    return st;
}

void kvs_rope_table_free(struct kvs_rope_table *t)
{
    free(t->cs);
    free(t->freqs);
    t->cs = NULL;
    t->freqs = NULL;
    t->n_pos = 0;
}

void kvs_rope_table_apply(const struct kvs_rope_table *t, float *x, int n_heads, int32_t pos)
{
    kvs_ckv_rope_rows(t->cs, t->half, t->neox, x, 1, 0, n_heads, &pos);
}

/* ---------------------------------------------------------------- segments (pools) */

/* Rows of latents in one storage format with their tokens' positions: a segment of the backend's
 * latent pools (ckv_pool.h). A private segment holds one array per layer of the group, in
 * lock-step (row i of every array is the same token); a shared segment holds one array of merged
 * latents. The press reads positions from the segment's host copy and rows through the pool. */
#define seg kvs_ckv_seg

static void seg_init(struct seg *s, uint32_t fmt, uint32_t n_arr, uint32_t width, uint32_t bits, uint32_t qgroup)
{
    struct kvs_lat_fmt f = {.width = (int)width, .row_bytes = (int)width * 2};
    if (fmt == FMT_Q) {
        f.row_bytes = (int)kvs_qrow_bytes(width, bits, qgroup);
        f.bits = bits;
        f.group = qgroup;
        f.codec = KVS_LAT_QROW;
    }
    kvs_ckv_seg_init(s, &f, n_arr, CKV_BLOCK);
}

static bool seg_reserve(const struct kvs_press *p, struct seg *s, uint32_t need)
{
    return kvs_ckv_seg_reserve(s, p->be, need) == KVS_OK;
}

static void seg_free(struct seg *s) { kvs_ckv_seg_free(s); }
static uint64_t seg_held(const struct seg *s) { return kvs_ckv_seg_bytes_held(s); }
static uint64_t seg_alloc(const struct seg *s) { return kvs_ckv_seg_bytes_alloc(s); }
static uint64_t seg_held16(const struct seg *s) { return kvs_ckv_seg_bytes_held16(s); }

/* ---------------------------------------------------------------- the press */

struct grp {
    uint32_t l0, nl, r;
    float *A;                       /* (r, D); borrowed from the press's own factors when a_borrowed */
    bool a_borrowed;
    struct kvs_weight aw;           /* A as an fp32 weight, and its copy on a device backend (uploaded at
                                     * the first store; the latent projection is the backend's matmul) */
    struct kvs_backend_weight dev_a;
    struct seg p16, pq, s16, sq;    /* private fp16, private packed, shared fp16, shared packed */
    float w[KVS_CKV_MAX_G];         /* merge weights, summing to 1 */
    float *score;                   /* (n_ctx_max) eviction scores by position (snapkv), or NULL */
    struct kvs_buf dev_score;       /* the same on a device backend, where its attention adds the mass;
                                     * read (and added to SCORE: a staged layer's share) at eviction */
    double sim_mean;                /* mean similarity of the slots scored at the last merge */
    bool sim_valid;
    uint64_t evicted;
    uint64_t evicted_shared;        /* of those, merged slots (the CR split counts them at their size) */
};

struct ckv {
    struct kvs_press base;
    struct kvs_ckv_factors *own;
    const struct kvs_ckv_factors *f;
    struct kvs_ckv_plan plan;
    int N, D, dkv, d, nh, nkv, ng, n_ctx_max;
    struct grp g[KVS_MAX_GROUPS];
    int l2g[KVS_MAX_LAYERS];
    float *Bk[KVS_MAX_LAYERS], *Bv[KVS_MAX_LAYERS]; /* (dkv, r) */
    const float *bk[KVS_MAX_LAYERS], *bv[KVS_MAX_LAYERS];
    bool bf16;                  /* keys rebuilt by the bf16 kernel (else fp32 sgemm) */
    bool i8;                    /* keys rebuilt by the int8 kernel */
    struct kvs_ckv_bf16_mat bk16[KVS_MAX_LAYERS]; /* B_k packed as bf16 pairs (weights) */
    struct kvs_ckv_i8_mat bk8[KVS_MAX_LAYERS];    /* B_k packed as int8 quads (weights) */
    float *csc;                 /* (rows) int8 row scales, int8 path only */
    struct kvs_rope_table rope;
    bool merge, quant, evict;
    float cr_final;             /* target on real bytes (<0: none) */
    float cr_merge;             /* target the merge budget aims at, in fp16-equivalent bytes */
    float floor;                /* slots less similar than this are never merged */
    uint64_t factor_bytes;      /* what the press keeps of the factors for decoding (A, B_k, B_v, packs) */
    bool floor_blocked;         /* the last merge stopped at the floor, short of the budget */
    bool note_is_floor;         /* plan.note holds the floor's message (cleared when it no longer holds) */
    uint32_t qbits, qgroup, qres, sinks, recent, snap_window, snap_kernel, snap_capacity;
    int n_ctx, last_merge_ctx, last_evict_ctx;
    float *lat;                 /* (T, r) store scratch */
    size_t lat_cap;
    /* a backend whose memory is not the host's: each layer's factors uploaded once for its
     * lat_attend, and the latents of a store (T, r) computed there */
    struct kvs_buf dev_bk[KVS_MAX_LAYERS], dev_bv[KVS_MAX_LAYERS], dev_kb[KVS_MAX_LAYERS], dev_vb[KVS_MAX_LAYERS];
    struct kvs_buf dev_freqs, dev_lat;
    float *h_q, *h_out;         /* (h_cap) a staged attention's queries and output on the host */
    size_t h_cap;
    float *mass;                /* (mass_cap) attention mass of the rows, host (eviction) */
    size_t mass_cap;
    /* a device backend that cannot attend over every segment (packed rows a library keeps on the
     * host beside its fp16 ones): its device rows staged to host fp16 segments,
     * one per native segment of the call */
    struct kvs_lat_rows stage[4];
    struct kvs_lat_fmt stage_fmt[4]; /* the staged segments' formats (fp16) */
    float *stage_f;             /* (stage_cap, r_max) the rows decoded on their way */
    size_t stage_cap;
};

/* BUF holds at least BYTES of BE's memory (contents not kept); then BYTES of host SRC copied
 * there unless SRC is NULL. */
static enum kvs_status dev_put(struct kvs_backend *be, struct kvs_buf *buf, size_t bytes, const float *src)
{
    enum kvs_status st = KVS_OK;
    if (buf->bytes < bytes) {
        kvs_backend_buf_free(be, buf);
        if ((st = kvs_backend_buf_alloc(be, buf, bytes)) != KVS_OK) return st;
    }
    return src ? kvs_backend_buf_upload(be, buf, 0, src, bytes) : KVS_OK;
}

static enum kvs_status ckv_store(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *xn,
                                 const float *k, const float *v)
{
    struct ckv *c = (struct ckv *)p;
    struct grp *g = &c->g[c->l2g[layer]];
    uint32_t li = (uint32_t)layer - g->l0, r = g->r;
    bool dev = p->be && !kvs_backend_host_memory(p->be);
    enum kvs_status st;
    const float *lat;
    if (dev) {
        /* c = A xn where xn is: the backend's matmul (an fp32 cuBLAS GEMM on a GPU: A uploaded once
         * and kept exact, so the latents carry only the cache's fp16 rounding, as on the CPU); the
         * latents go to the pool without leaving the device */
        if (!g->dev_a.dev) {
            g->aw = (struct kvs_weight){.type = KVS_GGML_F32, .rows = r, .cols = c->D, .data = g->A,
                                        .row_bytes = (uint64_t)c->D * sizeof(float)};
            if ((st = kvs_backend_factor_prepare(p->be, &g->dev_a, &g->aw)) != KVS_OK) goto dev_fail;
        }
        if ((st = dev_put(p->be, &c->dev_lat, (size_t)T * r * sizeof(float), NULL)) != KVS_OK ||
            (st = kvs_backend_matmul_buf(p->be, &g->dev_a, xn, c->dev_lat.data, T)) != KVS_OK)
            goto dev_fail;
        lat = c->dev_lat.data;
    } else {
        if ((size_t)T * r > c->lat_cap) {
            float *nl = realloc(c->lat, (size_t)T * r * sizeof(float));
            if (!nl) goto oom;
            c->lat = nl;
            c->lat_cap = (size_t)T * r;
        }
        /* c = A xn for every new token: (T, D) x (r, D)^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)r, c->D, 1.0f, xn, c->D, g->A, c->D, 0.0f,
                    c->lat, (int)r);
        lat = c->lat;
    }
    struct seg *s = &g->p16;
    if (li == 0) {
        for (int t = 0; t < T; t++) {
            if (pos[t] < 0 || pos[t] >= c->n_ctx_max) {
                kvs_seterr(p->err, sizeof p->err, "commonkv: position %d outside the context of %d", pos[t],
                           c->n_ctx_max);
                return KVS_ERR_LIMIT;
            }
            if (kvs_rope_table_reserve(&c->rope, pos[t] + 1) != KVS_OK) goto oom;
        }
        if (!seg_reserve(p, s, s->n + (uint32_t)T)) goto oom;
        st = dev ? kvs_ckv_seg_append_buf(s, T, pos, lat) : kvs_ckv_seg_append(s, T, pos, lat);
    } else {
        /* later layers of the group fill the rows the first layer opened, token for token */
        if (s->n < (uint32_t)T || memcmp(s->pos + s->n - T, pos, (size_t)T * sizeof(int32_t)) != 0) {
            kvs_seterr(p->err, sizeof p->err, "commonkv: layer %d stored tokens its group's first layer did not",
                       layer);
            return KVS_ERR_STATE;
        }
        st = dev ? kvs_ckv_seg_fill_buf(s, li, T, lat) : kvs_ckv_seg_fill(s, li, T, lat);
    }
    if (st != KVS_OK) {
        kvs_seterr(p->err, sizeof p->err, "commonkv: storing layer %d's latents: %s", layer,
                   p->be && p->be->err[0] ? kvs_backend_error(p->be) : kvs_status_str(st));
        return st;
    }
    return KVS_OK;
dev_fail:
    kvs_seterr(p->err, sizeof p->err, "commonkv: latent projection of layer %d on %s: %s", layer, p->be->ops->name,
               p->be->err[0] ? kvs_backend_error(p->be) : kvs_status_str(st));
    return st;
oom:
    kvs_seterr(p->err, sizeof p->err, "commonkv: out of memory storing layer %d", layer);
    return KVS_ERR_NOMEM;
}

static void ckv_dev_free(struct ckv *c)
{
    struct kvs_backend *be = c->base.be;
    for (int l = 0; l < c->N; l++) {
        kvs_backend_buf_free(be, &c->dev_bk[l]);
        kvs_backend_buf_free(be, &c->dev_bv[l]);
        kvs_backend_buf_free(be, &c->dev_kb[l]);
        kvs_backend_buf_free(be, &c->dev_vb[l]);
    }
    for (int gi = 0; gi < c->ng; gi++) {
        kvs_backend_weight_release(be, &c->g[gi].dev_a);
        kvs_backend_buf_free(be, &c->g[gi].dev_score);
    }
    kvs_backend_buf_free(be, &c->dev_freqs);
    kvs_backend_buf_free(be, &c->dev_lat);
}

/* The host scratch of attention: the mass and the staging of a device's rows. */
static void ckv_attend_scratch_free(struct ckv *c)
{
    struct kvs_lat_fmt f16 = {.width = 1, .row_bytes = 2, .codec = KVS_LAT_FP16};
    for (int i = 0; i < 4; i++)
        if (c->stage[i].n_arr) {
            c->stage[i].n = 0;
            kvs_cpu_lat_grow(&c->stage[i], &f16, 0);
        }
    free(c->stage_f);
    free(c->mass);
    c->stage_f = NULL;
    c->mass = NULL;
    c->stage_cap = c->mass_cap = 0;
}

/* A's factors, RoPE and key kernel as host arrays (the CPU backend, or rows staged to the host). */
static void ckv_args_host(const struct ckv *c, int layer, struct kvs_lat_attend_args *a)
{
    a->bk = c->Bk[layer];
    a->bv = c->Bv[layer];
    a->bk_bias = c->bk[layer];
    a->bv_bias = c->bv[layer];
    a->freqs = c->rope.freqs;
    a->rope_cs = c->rope.cs;
    a->rope_n_pos = c->rope.n_pos;
    a->keys = c->i8 ? KVS_CKV_KEYS_INT8 : c->bf16 ? KVS_CKV_KEYS_BF16 : KVS_CKV_KEYS_FP32;
    a->bk_pack = c->i8 ? (const void *)&c->bk8[layer] : c->bf16 ? (const void *)&c->bk16[layer] : NULL;
}

/* Attention of LAYER by a device backend's lat_attend over the rows where they are, Q and OUT in
 * its memory: the layer's factors uploaded once. */
static enum kvs_status ckv_attend_dev(struct ckv *c, const struct grp *g, int layer, struct kvs_lat_attend_args *a,
                                      const float *q, float *out, float *mass)
{
    struct kvs_backend *be = c->base.be;
    const int d = c->d, r = (int)g->r;
    size_t dkv = (size_t)c->dkv;
    enum kvs_status st;
    if (!c->dev_freqs.data && (st = dev_put(be, &c->dev_freqs, (size_t)(d / 2) * sizeof(float), c->rope.freqs)))
        return st;
    if (!c->dev_bk[layer].data) {
        if ((st = dev_put(be, &c->dev_bk[layer], dkv * r * sizeof(float), c->Bk[layer])) ||
            (st = dev_put(be, &c->dev_bv[layer], dkv * r * sizeof(float), c->Bv[layer])) ||
            (c->bk[layer] && (st = dev_put(be, &c->dev_kb[layer], dkv * sizeof(float), c->bk[layer]))) ||
            (c->bv[layer] && (st = dev_put(be, &c->dev_vb[layer], dkv * sizeof(float), c->bv[layer])))) {
            kvs_backend_buf_free(be, &c->dev_bk[layer]); /* uploaded again next time */
            return st;
        }
    }
    a->bk = c->dev_bk[layer].data;
    a->bv = c->dev_bv[layer].data;
    a->bk_bias = c->dev_kb[layer].data;
    a->bv_bias = c->dev_vb[layer].data;
    a->freqs = c->dev_freqs.data;
    return kvs_backend_lat_attend(be, a, q, out, mass);
}

/* Attention of LAYER on the host for a device backend that cannot take every segment where it is
 * (packed rows a library without packed support keeps in host memory): the
 * segments in device memory are staged to host fp16 segments (fp16 -> fp32 -> fp16 is exact; packed
 * rows are decoded and rounded to fp16, as the device's own attention reads them), Q comes down,
 * the CPU twin runs on the backend's threads (a counted fallback) and OUT goes back up. USED: the
 * segments of A, in order. */
static enum kvs_status ckv_attend_staged(struct ckv *c, int layer, struct kvs_lat_attend_args *a,
                                         const struct seg *const *used, const float *q, float *out, float *mass)
{
    struct kvs_backend *be = c->base.be;
    int k = 0;
    enum kvs_status st;
    for (int i = 0; i < a->n_segs; i++) {
        const struct seg *s = used[i];
        if (!kvs_ckv_seg_native(s)) continue;
        if (k == 4) return KVS_ERR_STATE;
        uint32_t arr = (uint32_t)a->segs[i].arr;
        if ((size_t)s->n * s->width > c->stage_cap) {
            float *nf = realloc(c->stage_f, (size_t)s->n * s->width * sizeof(float));
            if (!nf) return KVS_ERR_NOMEM;
            c->stage_f = nf;
            c->stage_cap = (size_t)s->n * s->width;
        }
        struct kvs_lat_fmt *f16 = &c->stage_fmt[k];
        *f16 = (struct kvs_lat_fmt){.width = (int)s->width, .row_bytes = 2 * (int)s->width, .codec = KVS_LAT_FP16};
        struct kvs_lat_rows *L = &c->stage[k++];
        L->n_arr = 1;
        L->n = 0;
        /* sized for this segment's rows and width (groups differ in rank) */
        if ((st = kvs_cpu_lat_grow(L, f16, (int)s->n)) ||
            (st = kvs_ckv_seg_read(s, arr, 0, s->n, c->stage_f)) ||
            (st = kvs_cpu_lat_store(L, f16, 0, 0, (int)s->n, c->stage_f, s->pos)))
            return st;
        a->seg_f[i] = f16;
        L->n = (int)s->n;
        a->segs[i].L = L;
        a->segs[i].arr = 0;
    }
    ckv_args_host(c, layer, a);
    size_t qn = (size_t)a->T * c->nh * c->d;
    if (qn > c->h_cap) {
        float *nq = realloc(c->h_q, qn * sizeof(float)), *no = nq ? realloc(c->h_out, qn * sizeof(float)) : NULL;
        if (nq) c->h_q = nq;
        if (no) c->h_out = no;
        if (!no) return KVS_ERR_NOMEM;
        c->h_cap = qn;
    }
    struct kvs_buf qb = {.data = (void *)q, .bytes = qn * sizeof(float)}, ob = {.data = out, .bytes = qb.bytes};
    if ((st = kvs_backend_buf_download(be, c->h_q, &qb, 0, qb.bytes)) ||
        (st = kvs_backend_lat_attend_host(be, c->base.pool, a, c->h_q, c->h_out, mass)))
        return st;
    return kvs_backend_buf_upload(be, &ob, 0, c->h_out, ob.bytes);
}

/* G's eviction scores in device memory, zeroed (the first device attention of a composition with
 * snapkv); until then the mass of staged layers was added to the host's. */
static enum kvs_status ckv_dev_scores(struct ckv *c, struct grp *g)
{
    float *zero = calloc((size_t)c->n_ctx_max, sizeof(float));
    if (!zero) return KVS_ERR_NOMEM;
    enum kvs_status st = dev_put(c->base.be, &g->dev_score, (size_t)c->n_ctx_max * sizeof(float), zero);
    free(zero);
    return st;
}

/* Device scores of G into its host scores (added: a staged layer's mass may be there), then zeroed
 * there; positions [0, N_USED). */
static enum kvs_status ckv_scores_down(struct ckv *c, struct grp *g, size_t n_used)
{
    if (!g->dev_score.data || !n_used) return KVS_OK;
    float *t = calloc(n_used, sizeof(float));
    if (!t) return KVS_ERR_NOMEM;
    enum kvs_status st = kvs_backend_buf_download(c->base.be, t, &g->dev_score, 0, n_used * sizeof(float));
    if (st == KVS_OK) {
        for (size_t i = 0; i < n_used; i++) g->score[i] += t[i];
        memset(t, 0, n_used * sizeof(float));
        st = kvs_backend_buf_upload(c->base.be, &g->dev_score, 0, t, n_used * sizeof(float));
    }
    free(t);
    return st;
}

/* Attention of LAYER over every row it may see (private fp16, private packed, shared fp16, shared
 * packed; empty segments left out), always by the backend's lat_attend: where the rows are, or on
 * the host (the CPU twin over staged rows) for a device that cannot take them all. The eviction mass
 * of the last snap_window queries is added to the group's scores by position (on a device, where
 * they are). */
static enum kvs_status ckv_attend(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *q,
                                  float *out)
{
    struct ckv *c = (struct ckv *)p;
    struct grp *g = &c->g[c->l2g[layer]];
    struct kvs_backend *be = p->be;
    uint32_t li = (uint32_t)layer - g->l0, n = 0;
    const struct seg *all[4] = {&g->p16, &g->pq, &g->s16, &g->sq}, *used[4];
    const uint32_t arr[4] = {li, li, 0, 0};
    struct kvs_lat_attend_args a = {.T = T, .q_pos = pos, .n_head = c->nh, .n_head_kv = c->nkv, .head_dim = c->d,
                                    .rank = (int)g->r, .scale = 1.0f / sqrtf((float)c->d), .neox = c->rope.neox,
                                    .f = &g->p16.f, .mass_from = T - (int)c->snap_window};
    bool native = true;
    for (int i = 0; i < 4; i++) {
        if (!all[i]->n) continue;
        used[a.n_segs] = all[i];
        a.segs[a.n_segs].L = &all[i]->L;
        a.segs[a.n_segs].arr = (int)arr[i];
        a.seg_f[a.n_segs] = &all[i]->f;
        native &= kvs_ckv_seg_native(all[i]);
        a.n_segs++;
        n += all[i]->n;
    }
    if (n == 0) {
        memset(out, 0, (size_t)T * c->nh * c->d * sizeof(float));
        return KVS_OK;
    }
    float *mass = NULL;
    if (g->score) {
        if (n > c->mass_cap) {
            float *mm = realloc(c->mass, (size_t)n * sizeof(float));
            if (!mm) {
                kvs_seterr(p->err, sizeof p->err, "commonkv: out of memory for eviction scores over %u tokens", n);
                return KVS_ERR_NOMEM;
            }
            c->mass = mm;
            c->mass_cap = n;
        }
        mass = c->mass;
    }
    enum kvs_status st;
    if (be && !kvs_backend_host_memory(be)) {
        /* a device attends where the rows are, decode steps and prefill chunks alike; with snapkv
         * the mass stays there too, added to the group's scores by position */
        bool dev = native && kvs_backend_lat_attend_native(be, &a);
        if (dev && g->score) {
            if (!g->dev_score.data && (st = ckv_dev_scores(c, g)) != KVS_OK) goto fail;
            a.score = g->dev_score.data;
            a.n_score = c->n_ctx_max;
        }
        st = dev ? ckv_attend_dev(c, g, layer, &a, q, out, a.score ? NULL : mass)
                 : ckv_attend_staged(c, layer, &a, used, q, out, mass);
    } else {
        ckv_args_host(c, layer, &a);
        st = be ? kvs_backend_lat_attend(be, &a, q, out, mass) : kvs_backend_lat_attend_host(NULL, p->pool, &a, q, out, mass);
    }
fail:
    if (st != KVS_OK) {
        kvs_seterr(p->err, sizeof p->err, "commonkv: attention of layer %d over %u tokens on %s: %s", layer, n,
                   be ? be->ops->name : "cpu",
                   be && be->err[0] ? be->err : kvs_status_str(st));
        return st;
    }
    if (mass && !a.score) {
        for (int i = 0, off = 0; i < a.n_segs; off += (int)used[i]->n, i++)
            for (uint32_t x = 0; x < used[i]->n; x++) g->score[used[i]->pos[x]] += mass[off + x];
    }
    return KVS_OK;
}

/* ---------------------------------------------------------------- end of step: merge, quantize, evict */

static void ckv_bytes(const struct ckv *c, uint64_t *held, uint64_t *alloc, uint64_t *held16)
{
    uint64_t h = 0, a = 0, h16 = 0;
    for (int gi = 0; gi < c->ng; gi++) {
        const struct grp *g = &c->g[gi];
        const struct seg *s[4] = {&g->p16, &g->pq, &g->s16, &g->sq};
        for (int i = 0; i < 4; i++) {
            h += seg_held(s[i]);
            a += seg_alloc(s[i]);
            h16 += seg_held16(s[i]);
        }
    }
    if (held) *held = h;
    if (alloc) *alloc = a;
    if (held16) *held16 = h16;
}

static uint64_t ckv_full_bytes(const struct ckv *c, int n_ctx) { return (uint64_t)n_ctx * c->N * c->dkv * 2 * 2; }

struct cand {
    float sim;
    uint16_t g;
    uint8_t packed;
    uint32_t idx;
};

static int cand_cmp(const void *x, const void *y)
{
    const struct cand *a = x, *b = y;
    if (a->sim != b->sim) return a->sim < b->sim ? 1 : -1;
    if (a->g != b->g) return a->g < b->g ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* Similarity of the (group, token) slots of private segment S, row by row into SIM (s->n): the
 * cosine of their first and last layers' latents, or the mean over adjacent pairs, by the backend
 * that holds the rows (lat_cosine). */
static enum kvs_status slot_sims(const struct ckv *c, const struct grp *g, const struct seg *s, float *sim)
{
    bool adj = c->base.cfg.sim_mode == KVS_SIM_ADJ_MEAN;
    return kvs_backend_lat_cosine(s->be, &s->L, &s->f, 0, (int)g->nl - 1, adj, 0, (int)s->n, sim);
}

static enum kvs_status ckv_merge(struct ckv *c, int n_ctx)
{
    uint64_t held16;
    ckv_bytes(c, NULL, NULL, &held16);
    /* the budget is relative to the full fp16 bytes of the slots still held, so that eviction in
     * a composition does not use up what merging is meant to save */
    double full_held = 0;
    for (int gi = 0; gi < c->ng; gi++) {
        const struct grp *g = &c->g[gi];
        full_held += (double)(g->p16.n + g->pq.n + g->s16.n + g->sq.n) * g->nl * c->dkv * 4;
    }
    double target = c->cr_merge >= 0 ? (1.0 - c->cr_merge) * full_held : 0.0; /* none: the cap decides */
    uint32_t n_max = 1;
    for (int gi = 0; gi < c->ng; gi++) n_max = KVS_MAX(n_max, KVS_MAX(c->g[gi].p16.n, c->g[gi].pq.n));
    float *buf = malloc((size_t)n_max * sizeof(float)); /* one segment's similarities */
    size_t nc = 0, ccap = 0;
    struct cand *cd = NULL;
    enum kvs_status st = KVS_OK;
    if (!buf) goto oom;
    int32_t lo = (int32_t)c->sinks, hi = n_ctx - (int32_t)c->recent;
    for (int gi = 0; gi < c->ng; gi++) {
        struct grp *g = &c->g[gi];
        if (g->nl < 2) continue;
        double sum = 0;
        uint64_t cnt = 0;
        for (int packed = 0; packed < 2; packed++) {
            const struct seg *s = packed ? &g->pq : &g->p16;
            if (s->n && (st = slot_sims(c, g, s, buf)) != KVS_OK) {
                kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: similarity of group %d: %s", gi,
                           s->be && s->be->err[0] ? kvs_backend_error(s->be) : kvs_status_str(st));
                goto done;
            }
            for (uint32_t i = 0; i < s->n; i++) {
                if (s->pos[i] < lo || s->pos[i] >= hi) continue;
                if (nc == ccap) {
                    size_t ncap = ccap ? ccap * 2 : 1024;
                    struct cand *n2 = realloc(cd, ncap * sizeof *cd);
                    if (!n2) goto oom;
                    cd = n2;
                    ccap = ncap;
                }
                float sim = buf[i];
                cd[nc++] = (struct cand){.sim = sim, .g = (uint16_t)gi, .packed = (uint8_t)packed, .idx = i};
                sum += sim;
                cnt++;
            }
        }
        if (cnt) {
            g->sim_mean = sum / cnt;
            g->sim_valid = true;
        }
    }
    if ((double)held16 <= target || nc == 0) goto done;
    /* The cap: at most the plan's share of the eligible slots (merged or not) is ever merged. A
     * partial context (an early prefill chunk) cannot meet the whole target, and without the cap
     * it merged everything eligible there, dissimilar slots included, for good. */
    /* The cap is on bytes saved, as the plan counts them (a merge in a group of nl layers saves
     * nl-1 latents), so that similar slots of small groups do not use it up. */
    uint64_t merged = 0;
    double saved = 0, cap = 0;
    for (int gi = 0; gi < c->ng; gi++) {
        const struct grp *g = &c->g[gi];
        if (g->nl < 2) continue;
        double per = (double)(g->nl - 1) * g->r * 2;
        merged += g->s16.n + g->sq.n;
        saved += per * (g->s16.n + g->sq.n);
        cap += per * (g->s16.n + g->sq.n);
    }
    for (size_t x = 0; x < nc; x++) cap += (double)(c->g[cd[x].g].nl - 1) * c->g[cd[x].g].r * 2;
    cap *= c->plan.merge_frac;
    /* the global budget: merge the most similar slots first, until the bytes fit, never a slot
     * below the similarity floor */
    qsort(cd, nc, sizeof *cd, cand_cmp);
    size_t take = 0;
    double need = (double)held16 - target;
    while (take < nc && saved < cap && need > 0 && cd[take].sim >= c->floor) {
        const struct grp *g = &c->g[cd[take].g];
        need -= (double)(g->nl - 1) * g->r * 2;
        saved += (double)(g->nl - 1) * g->r * 2;
        take++;
    }
    c->floor_blocked = take < nc && saved < cap && need > 0;
    /* the note tells the latest merge's state: a floor that stopped an early chunk may not stop
     * the last one */
    if (c->floor_blocked && (!c->plan.note[0] || c->note_is_floor)) {
        snprintf(c->plan.note, sizeof c->plan.note,
                 "similarity floor %.2f stopped merging at %zu of %zu eligible slots, short of the target",
                 (double)c->floor, (size_t)(take + merged), (size_t)(nc + merged));
        c->note_is_floor = true;
    } else if (!c->floor_blocked && c->note_is_floor) {
        c->plan.note[0] = 0;
        c->note_is_floor = false;
    }
    /* per group, the chosen slots of each private segment move to its shared segment in the order
     * they were chosen: the backend merges them (the layers' latents weighted by g->w) */
    for (int gi = 0; gi < c->ng && st == KVS_OK; gi++) {
        struct grp *g = &c->g[gi];
        if (g->nl < 2) continue;
        for (int packed = 0; packed < 2 && st == KVS_OK; packed++) {
            struct seg *src = packed ? &g->pq : &g->p16, *dst = packed ? &g->sq : &g->s16;
            uint32_t m = 0;
            for (size_t x = 0; x < take; x++) m += cd[x].g == gi && cd[x].packed == packed;
            if (!m) continue;
            int32_t *idx = malloc((size_t)m * sizeof(int32_t));
            uint8_t *drop = calloc(src->n + 1, 1);
            if (!idx || !drop || !seg_reserve(&c->base, dst, dst->n + m)) {
                free(idx);
                free(drop);
                goto oom;
            }
            m = 0;
            for (size_t x = 0; x < take; x++)
                if (cd[x].g == gi && cd[x].packed == packed) {
                    idx[m++] = (int32_t)cd[x].idx;
                    drop[cd[x].idx] = 1;
                }
            st = kvs_ckv_seg_merge(src, dst, idx, m, g->w);
            if (st == KVS_OK) st = kvs_ckv_seg_compact(src, drop, NULL);
            free(idx);
            free(drop);
        }
    }
    if (st != KVS_OK)
        kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: merging: %s",
                   c->base.be && c->base.be->err[0] ? kvs_backend_error(c->base.be) : kvs_status_str(st));
done:
    free(buf);
    free(cd);
    return st;
oom:
    free(buf);
    free(cd);
    kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: out of memory while merging");
    return KVS_ERR_NOMEM;
}

/* Moves rows older than the fp16 residual window into packed segments, run by run of consecutive
 * rows, encoded where the rows are (the backend's lat_copy: on a device they never leave it). */
static enum kvs_status ckv_quantize(struct ckv *c, int n_ctx)
{
    int32_t hi = n_ctx - (int32_t)c->qres;
    for (int gi = 0; gi < c->ng; gi++) {
        struct grp *g = &c->g[gi];
        struct seg *pairs[2][2] = {{&g->p16, &g->pq}, {&g->s16, &g->sq}};
        for (int k = 0; k < 2; k++) {
            struct seg *src = pairs[k][0], *dst = pairs[k][1];
            uint32_t m = 0;
            for (uint32_t i = 0; i < src->n; i++) m += src->pos[i] < hi;
            if (!m) continue;
            uint8_t *drop = calloc(src->n, 1);
            if (!drop || !seg_reserve(&c->base, dst, dst->n + m)) {
                free(drop);
                kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: out of memory quantizing latents");
                return KVS_ERR_NOMEM;
            }
            enum kvs_status st = KVS_OK;
            for (uint32_t i = 0; i < src->n && st == KVS_OK;) {
                if (src->pos[i] >= hi) {
                    i++;
                    continue;
                }
                uint32_t e = i;
                while (e < src->n && src->pos[e] < hi) drop[e++] = 1;
                st = kvs_ckv_seg_move_rows(src, i, e - i, dst);
                i = e;
            }
            if (st == KVS_OK) st = kvs_ckv_seg_compact(src, drop, NULL);
            free(drop);
            if (st != KVS_OK) {
                kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: quantizing latents: %s",
                           c->base.be && c->base.be->err[0] ? kvs_backend_error(c->base.be) : kvs_status_str(st));
                return st;
            }
        }
    }
    return KVS_OK;
}

struct evc {
    float score;
    uint16_t g;
    uint8_t which;  /* 0..3: p16, pq, s16, sq */
    uint32_t idx;
    uint64_t bytes;
};

static int evc_cmp(const void *x, const void *y)
{
    const struct evc *a = x, *b = y;
    if (a->score != b->score) return a->score < b->score ? -1 : 1;
    if (a->g != b->g) return a->g < b->g ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* SnapKV on (group, token) slots: pooled attention mass from the observation window; the lowest
 * slots go until the real bytes meet the target (or each group keeps snap_capacity tokens). */
static enum kvs_status ckv_evict(struct ckv *c, int n_ctx)
{
    uint64_t held;
    ckv_bytes(c, &held, NULL, NULL);
    double target = c->cr_final >= 0 ? (1.0 - c->cr_final) * (double)ckv_full_bytes(c, n_ctx) : -1;
    if (target >= 0) {
        /* evictions come every snap_window tokens: leave room for half a window of new fp16 slots
         * so the ratio swings around the target in between, not only below it */
        double per_token = 0;
        for (int gi = 0; gi < c->ng; gi++) per_token += (double)c->g[gi].nl * c->g[gi].r * 2 + 4;
        target = KVS_MAX(0.0, target - 0.5 * c->snap_window * per_token);
    }
    /* a device's scores come down once per eviction (every snap_window tokens), not per step */
    for (int gi = 0; gi < c->ng; gi++) {
        enum kvs_status st = ckv_scores_down(c, &c->g[gi], (size_t)KVS_MIN(n_ctx, c->n_ctx_max));
        if (st != KVS_OK) {
            kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: eviction scores of group %d: %s", gi,
                       c->base.be && c->base.be->err[0] ? kvs_backend_error(c->base.be) : kvs_status_str(st));
            return st;
        }
    }
    float *pooled = malloc((size_t)KVS_MAX(n_ctx, 1) * sizeof(float));
    struct evc *ev = NULL;
    size_t ne = 0, cap = 0;
    if (!pooled) goto oom;
    int32_t win_lo = n_ctx - (int32_t)c->snap_window;
    for (int gi = 0; gi < c->ng; gi++) {
        struct grp *g = &c->g[gi];
        kvs_snap_pool(g->score, n_ctx, (int)c->snap_kernel, pooled);
        struct seg *ss[4] = {&g->p16, &g->pq, &g->s16, &g->sq};
        uint32_t kept = 0;
        for (int w = 0; w < 4; w++) kept += ss[w]->n;
        size_t first = ne;
        for (int w = 0; w < 4; w++) {
            struct seg *s = ss[w];
            uint64_t per = (uint64_t)s->n_arr * s->row_bytes + 4;
            for (uint32_t i = 0; i < s->n; i++) {
                int32_t ps = s->pos[i];
                if (ps < (int32_t)c->sinks || ps >= win_lo) continue;
                if (ne == cap) {
                    size_t nc2 = cap ? cap * 2 : 1024;
                    struct evc *n2 = realloc(ev, nc2 * sizeof *ev);
                    if (!n2) goto oom;
                    ev = n2;
                    cap = nc2;
                }
                ev[ne++] = (struct evc){.score = pooled[ps] / g->nl, .g = (uint16_t)gi, .which = (uint8_t)w,
                                        .idx = i, .bytes = per};
            }
        }
        if (target < 0 && kept > c->snap_capacity) {
            /* fixed capacity per group: keep the best, mark the rest with -inf so they go first */
            size_t n_g = ne - first;
            if (n_g > 1) qsort(ev + first, n_g, sizeof *ev, evc_cmp); /* ev is NULL while empty */
            size_t excess = KVS_MIN((size_t)(kept - c->snap_capacity), n_g);
            for (size_t x = 0; x < n_g; x++) ev[first + x].score = x < excess ? -INFINITY : INFINITY;
        } else if (target < 0) {
            for (size_t x = first; x < ne; x++) ev[x].score = INFINITY;
        }
    }
    /* a short context leaves no candidates and EV NULL: qsort(NULL, 0, ...) is undefined */
    if (ne > 1) qsort(ev, ne, sizeof *ev, evc_cmp);
    size_t take = 0;
    if (target >= 0) {
        double need = (double)held - target;
        while (take < ne && need > 0) need -= (double)ev[take++].bytes;
    } else {
        while (take < ne && ev[take].score == -INFINITY) take++;
    }
    for (int gi = 0; gi < c->ng && take; gi++) {
        struct grp *g = &c->g[gi];
        struct seg *ss[4] = {&g->p16, &g->pq, &g->s16, &g->sq};
        for (int w = 0; w < 4; w++) {
            uint8_t *drop = calloc(ss[w]->n + 1, 1);
            if (!drop) goto oom;
            for (size_t x = 0; x < take; x++)
                if (ev[x].g == gi && ev[x].which == w) drop[ev[x].idx] = 1;
            uint32_t removed = 0;
            enum kvs_status st = kvs_ckv_seg_compact(ss[w], drop, &removed);
            g->evicted += removed;
            if (w >= 2) g->evicted_shared += removed;
            free(drop);
            if (st != KVS_OK) {
                free(pooled);
                free(ev);
                kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: evicting: %s",
                           c->base.be && c->base.be->err[0] ? kvs_backend_error(c->base.be) : kvs_status_str(st));
                return st;
            }
        }
    }
    /* every stored position is below the RoPE table's size, which grows with use: clearing only that
     * much keeps a huge context capacity from costing a huge memset per eviction */
    size_t n_used = (size_t)KVS_MIN(c->rope.n_pos, c->n_ctx_max);
    for (int gi = 0; gi < c->ng; gi++) memset(c->g[gi].score, 0, n_used * sizeof(float));
    free(pooled);
    free(ev);
    return KVS_OK;
oom:
    free(pooled);
    free(ev);
    kvs_seterr(c->base.err, sizeof c->base.err, "commonkv: out of memory evicting");
    return KVS_ERR_NOMEM;
}

static enum kvs_status ckv_end_step(struct kvs_press *p, int n_ctx)
{
    struct ckv *c = (struct ckv *)p;
    int step = n_ctx - c->n_ctx;
    c->n_ctx = n_ctx;
    enum kvs_status st = KVS_OK;
    uint64_t t0 = kvs_now_ns();
    if (c->merge && (step > 1 || n_ctx - c->last_merge_ctx >= CKV_MERGE_BLOCK)) {
        st = ckv_merge(c, n_ctx);
        c->last_merge_ctx = n_ctx;
    }
    if (st == KVS_OK && c->quant) {
        uint64_t t1 = kvs_now_ns();
        st = ckv_quantize(c, n_ctx);
        if (p->ops_ctr) {
            p->ops_ctr[KVS_OP_QUANT].ns += kvs_now_ns() - t1;
            p->ops_ctr[KVS_OP_QUANT].calls++;
        }
    }
    if (st == KVS_OK && c->evict && (step > 1 || n_ctx - c->last_evict_ctx >= (int)c->snap_window)) {
        uint64_t t1 = kvs_now_ns();
        st = ckv_evict(c, n_ctx);
        c->last_evict_ctx = n_ctx;
        if (p->ops_ctr) {
            p->ops_ctr[KVS_OP_EVICT].ns += kvs_now_ns() - t1;
            p->ops_ctr[KVS_OP_EVICT].calls++;
        }
    }
    (void)t0;
    return st;
}

/* The CR split (record.h): each stage undone from the held bytes, last to first, so the four parts
 * sum exactly to bytes_full - bytes_held when every token of the context is one slot per group. */
static void ckv_fill_split(const struct ckv *c, struct kvs_rec_step *rec)
{
    int64_t lat = 0, merge = 0, quant = 0, evict = 0;
    for (int gi = 0; gi < c->ng; gi++) {
        const struct grp *g = &c->g[gi];
        int64_t row = (int64_t)g->r * 2, unmerged = (int64_t)g->nl * row + 4;
        quant += (int64_t)(seg_held16(&g->pq) - seg_held(&g->pq)) + (int64_t)(seg_held16(&g->sq) - seg_held(&g->sq));
        evict += (int64_t)(g->evicted - g->evicted_shared) * unmerged + (int64_t)g->evicted_shared * (row + 4);
        merge += (int64_t)(g->s16.n + g->sq.n + g->evicted_shared) * (int64_t)(g->nl - 1) * row;
        lat += (int64_t)c->n_ctx * unmerged;
    }
    rec->saved_rank = (int64_t)ckv_full_bytes(c, c->n_ctx) - lat;
    rec->saved_merge = merge;
    rec->saved_quant = quant;
    rec->saved_evict = evict;
    rec->valid |= KVS_VALID_SPLIT;
}

static void ckv_fill_record(const struct kvs_press *p, struct kvs_rec_step *rec)
{
    const struct ckv *c = (const struct ckv *)p;
    rec->n_layer = (uint32_t)c->N;
    rec->n_groups = (uint32_t)c->ng;
    uint64_t held = 0, alloc = 0;
    bool any_sim = false, any_gsim = false;
    for (int gi = 0; gi < c->ng; gi++) {
        const struct grp *g = &c->g[gi];
        const struct seg *ss[4] = {&g->p16, &g->pq, &g->s16, &g->sq};
        uint64_t gh = 0, priv_rows = 0, shared = 0, pos_bytes = 0;
        uint32_t kept = 0;
        for (int w = 0; w < 4; w++) {
            gh += seg_held(ss[w]);
            alloc += seg_alloc(ss[w]);
            kept += ss[w]->n;
            pos_bytes += (uint64_t)ss[w]->n * 4;
        }
        shared = (uint64_t)g->s16.n * g->s16.row_bytes + (uint64_t)g->sq.n * g->sq.row_bytes;
        held += gh;
        rec->group_rank[gi] = g->r;
        uint32_t merged = g->s16.n + g->sq.n;
        rec->group_merged[gi] = kept ? (float)merged / kept : 0.0f;
        rec->group_sim[gi] = g->sim_valid ? (float)g->sim_mean : NAN;
        any_gsim |= g->sim_valid;
        /* bytes per layer: its private rows plus an equal share of the shared rows and positions;
         * the remainder of the division goes to the group's first layer so the sum is exact */
        uint64_t share = (shared + pos_bytes) / g->nl, rem = (shared + pos_bytes) % g->nl;
        for (uint32_t l = 0; l < g->nl; l++) {
            priv_rows = (uint64_t)g->p16.n * g->p16.row_bytes + (uint64_t)g->pq.n * g->pq.row_bytes;
            rec->layer_bytes_held[g->l0 + l] = priv_rows + share + (l == 0 ? rem : 0);
            rec->layer_kept[g->l0 + l] = kept;
            int lay = (int)(g->l0 + l);
            rec->layer_sim[lay] = NAN;
            float sim;
            if (l + 1 < g->nl && g->p16.n > 0 &&
                kvs_backend_lat_cosine(g->p16.be, &g->p16.L, &g->p16.f, (int)l, (int)l + 1, false,
                                       (int)g->p16.n - 1, 1, &sim) == KVS_OK) {
                rec->layer_sim[lay] = sim;
                any_sim = true;
            }
        }
    }
    rec->bytes_full = ckv_full_bytes(c, c->n_ctx);
    rec->bytes_held = held;
    rec->bytes_alloc = alloc;
    rec->bytes_factors = c->factor_bytes;
    rec->cr_target = c->cr_final;
    rec->cr_achieved = rec->bytes_full ? (float)(1.0 - (double)held / rec->bytes_full) : 0.0f;
    rec->valid |= KVS_VALID_BYTES | KVS_VALID_BUDGET | (any_sim ? KVS_VALID_LAYER_SIM : 0) |
                  (any_gsim ? KVS_VALID_GROUP_SIM : 0);
    ckv_fill_split(c, rec);
}

static void ckv_run_records(struct kvs_press *p, void (*emit)(void *ud, struct kvs_record *r), void *ud)
{
    struct ckv *c = (struct ckv *)p;
    struct kvs_record *recs[KVS_MAX_GROUPS];
    int n = kvs_ckv_spectrum_records(c->f, recs, KVS_MAX_GROUPS);
    for (int i = 0; i < n; i++) emit(ud, recs[i]);
}

static void ckv_reset(struct kvs_press *p)
{
    struct ckv *c = (struct ckv *)p;
    for (int gi = 0; gi < c->ng; gi++) {
        struct grp *g = &c->g[gi];
        struct seg *ss[4] = {&g->p16, &g->pq, &g->s16, &g->sq};
        for (int w = 0; w < 4; w++) {
            kvs_ckv_seg_clear(ss[w]);
            kvs_ckv_seg_shrink(ss[w]);
        }
        if (g->score) memset(g->score, 0, (size_t)KVS_MIN(c->rope.n_pos, c->n_ctx_max) * sizeof(float));
        kvs_backend_buf_free(c->base.be, &g->dev_score); /* made again, zeroed, at the next device attention */
        g->sim_valid = false;
        g->evicted = g->evicted_shared = 0;
    }
    c->n_ctx = c->last_merge_ctx = c->last_evict_ctx = 0;
    if (c->note_is_floor) c->plan.note[0] = 0;
    c->note_is_floor = c->floor_blocked = false;
}

/* A group's four latent segments, freed where they live. */
static void ckv_segs_free(struct grp *g)
{
    seg_free(&g->p16);
    seg_free(&g->pq);
    seg_free(&g->s16);
    seg_free(&g->sq);
}

/* The backend that holds the pools goes away: free them there and forget the tokens. */
static void ckv_detach(struct kvs_press *p)
{
    struct ckv *c = (struct ckv *)p;
    for (int gi = 0; gi < c->ng; gi++) ckv_segs_free(&c->g[gi]);
    ckv_dev_free(c);
    ckv_reset(p);
}

static void ckv_destroy(struct kvs_press *p)
{
    struct ckv *c = (struct ckv *)p;
    for (int gi = 0; gi < c->ng; gi++) {
        struct grp *g = &c->g[gi];
        ckv_segs_free(g);
        if (!g->a_borrowed) free(g->A);
        free(g->score);
    }
    for (int l = 0; l < c->N; l++) {
        free(c->Bk[l]);
        free(c->Bv[l]);
        kvs_ckv_bf16_free(&c->bk16[l]);
        kvs_ckv_i8_free(&c->bk8[l]);
    }
    free(c->lat);
    free(c->h_q);
    free(c->h_out);
    ckv_attend_scratch_free(c);
    ckv_dev_free(c); /* nothing left after a detach; else the backend is still alive */
    kvs_rope_table_free(&c->rope);
    kvs_ckv_factors_delete(c->own);
    free(c);
}

static const struct kvs_press_ops ckv_ops = {
    .name = "commonkv", .store = ckv_store, .attend = ckv_attend, .end_step = ckv_end_step,
    .fill_record = ckv_fill_record, .run_records = ckv_run_records, .reset = ckv_reset, .destroy = ckv_destroy,
    .detach = ckv_detach,
};
static const struct kvs_press_ops lowrank_ops = {
    .name = "lowrank", .store = ckv_store, .attend = ckv_attend, .end_step = ckv_end_step,
    .fill_record = ckv_fill_record, .run_records = ckv_run_records, .reset = ckv_reset, .destroy = ckv_destroy,
    .detach = ckv_detach,
};

const struct kvs_ckv_factors *kvs_press_commonkv_factors(const struct kvs_press *p)
{
    if (!p || p->ops != &ckv_ops) return NULL; /* lowrank's factors are per layer, not grouped */
    return ((const struct ckv *)p)->f;
}

const float *kvs_press_commonkv_scores(const struct kvs_press *p, int group)
{
    if (!p || (p->ops != &ckv_ops && p->ops != &lowrank_ops)) return NULL;
    const struct ckv *c = (const struct ckv *)p;
    return group >= 0 && group < c->ng ? c->g[group].score : NULL;
}

const struct kvs_ckv_plan *kvs_press_commonkv_plan(const struct kvs_press *p)
{
    if (!p || (p->ops != &ckv_ops && p->ops != &lowrank_ops)) return NULL;
    return &((const struct ckv *)p)->plan;
}

void kvs_press_commonkv_run_fields(const struct kvs_press *p, struct kvs_rec_run *run)
{
    run->plan_merge_share = run->plan_merge_floor = NAN;
    run->plan_note[0] = 0;
    run->ckv_keys = KVS_CKV_KEYS_AUTO;
    if (!p || (p->ops != &ckv_ops && p->ops != &lowrank_ops)) return;
    const struct ckv *c = (const struct ckv *)p;
    run->plan_merge_share = c->merge ? c->plan.merge_frac : 0.0f;
    run->plan_merge_floor = c->merge ? c->floor : NAN;
    snprintf(run->plan_note, sizeof run->plan_note, "%s", c->plan.note);
    run->ckv_keys = c->i8 ? KVS_CKV_KEYS_INT8 : c->bf16 ? KVS_CKV_KEYS_BF16 : KVS_CKV_KEYS_FP32;
}

enum kvs_status kvs_press_commonkv_create(struct kvs_press **out, const struct kvs_model *m,
                                          const struct kvs_method_config *cfg_in, int n_ctx_max,
                                          struct kvs_ckv_factors *factors, bool take,
                                          const struct kvs_ckv_plan *plan, char *err, size_t errlen)
{
    *out = NULL;
    const struct kvs_hparams *hp = &m->hp;
    struct kvs_method_config cfg = *cfg_in;
    bool common = (cfg.methods & KVS_M_COMMONKV) != 0;
    uint32_t G = common ? cfg.group_size : 1;
    enum kvs_status st = KVS_ERR_ARG;
    struct ckv *c = NULL;
    if (!factors || !plan) {
        kvs_seterr(err, errlen, "%s: the press needs its factors and plan (kvs_method_prepare)", cfg.spec);
        goto reject;
    }
    if (factors->group_size != G || factors->n_layer != hp->n_layer || factors->n_embd != hp->n_embd ||
        factors->d_kv != hp->n_head_kv * hp->head_dim) {
        kvs_seterr(err, errlen, "%s: factors were built for another model or group size", cfg.spec);
        goto reject;
    }
    if (hp->n_layer > KVS_MAX_LAYERS || n_ctx_max <= 0) {
        kvs_seterr(err, errlen, "%s: %u layers / context %d out of range", cfg.spec, hp->n_layer, n_ctx_max);
        st = KVS_ERR_UNSUPPORTED;
        goto reject;
    }
    uint32_t qbits = plan->quant_bits ? plan->quant_bits : cfg.quant_bits;
    if (qbits != 2 && qbits != 4 && qbits != 8 && (cfg.methods & KVS_M_QUANT)) {
        kvs_seterr(err, errlen, "%s: quantization bits must be 2, 4 or 8 (got %u)", cfg.spec, qbits);
        goto reject;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        kvs_seterr(err, errlen, "%s: out of memory", cfg.spec);
        st = KVS_ERR_NOMEM;
        goto reject;
    }
    c->base.ops = common ? &ckv_ops : &lowrank_ops;
    c->base.model = m;
    c->base.cfg = cfg;
    /* xn, q and out stay in the backend's memory: on a device the latents are projected, stored,
     * merged, quantized and attended over there */
    c->base.needs = KVS_PRESS_NEEDS_XN | KVS_PRESS_BACKEND_IO;
    c->N = (int)hp->n_layer;
    c->D = (int)hp->n_embd;
    c->d = (int)hp->head_dim;
    c->nh = (int)hp->n_head;
    c->nkv = (int)hp->n_head_kv;
    c->dkv = c->nkv * c->d;
    c->n_ctx_max = n_ctx_max;
    c->merge = common && G > 1;
    c->quant = (cfg.methods & KVS_M_QUANT) != 0;
    c->evict = (cfg.methods & KVS_M_SNAPKV) != 0;
    c->qbits = qbits;
    c->qgroup = cfg.quant_group ? cfg.quant_group : 32;
    c->qres = cfg.quant_residual;
    c->sinks = cfg.sinks;
    c->recent = cfg.recent;
    c->snap_window = cfg.snap_window ? cfg.snap_window : 32;
    c->snap_kernel = cfg.snap_kernel ? cfg.snap_kernel : 7;
    c->snap_capacity = cfg.snap_capacity;
    /* key kernel (cfg.ckv_keys): bf16 where the build has it, else fp32 BLAS. int8 (VNNI builds)
     * trades precision for speed: decode ~1.25x at 2048 tokens, ppl/KL unchanged at CR 0.3-0.7 on
     * SmolLM2, but one scale per latent row loses the small dimensions at full rank (max logit
     * change 2.9% against bf16's < 1%), so it is not the default. fp32: the reference. A kernel
     * this build lacks falls back to bf16, then fp32; the RUN record says which one ran. */
    c->i8 = cfg.ckv_keys == KVS_CKV_KEYS_INT8 && kvs_ckv_i8_available();
    c->bf16 = cfg.ckv_keys != KVS_CKV_KEYS_FP32 && !c->i8 && kvs_ckv_bf16_available();
    /* with eviction the observation window is the recent part worth keeping in fp16 */
    if (c->evict && c->quant) c->qres = KVS_MIN(c->qres, c->snap_window);
    if (take) c->own = factors;
    c->f = factors;
    c->ng = (int)c->f->n_groups;
    c->plan = *plan;
    c->cr_final = plan->cr_final;
    c->cr_merge = plan->cr_merge;
    c->floor = plan->floor;
    c->merge = c->merge && plan->merge;
    /* per-group A and per-layer B_k, B_v at the planned rank */
    const float *wl = plan->merge_w;
    for (int gi = 0; gi < c->ng; gi++) {
        struct grp *g = &c->g[gi];
        g->l0 = c->f->g_l0[gi];
        g->nl = c->f->g_nl[gi];
        g->r = c->plan.rank[gi];
        uint32_t rmax = c->f->r_max[gi], r = g->r;
        g->A = malloc((size_t)r * c->D * sizeof(float));
        if (!g->A) goto oom;
        memcpy(g->A, c->f->A[gi], (size_t)r * c->D * sizeof(float));
        double wsum = 0;
        for (uint32_t l = 0; l < g->nl; l++) wsum += wl[g->l0 + l];
        for (uint32_t l = 0; l < g->nl; l++)
            g->w[l] = wsum > 0 ? (float)(wl[g->l0 + l] / wsum) : 1.0f / g->nl;
        for (uint32_t l = 0; l < g->nl; l++) {
            int lay = (int)(g->l0 + l);
            c->l2g[lay] = gi;
            c->Bk[lay] = malloc((size_t)c->dkv * r * sizeof(float));
            c->Bv[lay] = malloc((size_t)c->dkv * r * sizeof(float));
            if (!c->Bk[lay] || !c->Bv[lay]) goto oom;
            const float *B = c->f->B[gi];
            for (int i = 0; i < c->dkv; i++) {
                memcpy(c->Bk[lay] + (size_t)i * r, B + ((size_t)l * c->dkv + i) * rmax, r * sizeof(float));
                memcpy(c->Bv[lay] + (size_t)i * r, B + ((size_t)(g->nl + l) * c->dkv + i) * rmax, r * sizeof(float));
            }
            if (c->bf16 && kvs_ckv_bf16_pack(&c->bk16[lay], c->Bk[lay], c->dkv, (int)r, (int)r) != KVS_OK) goto oom;
            /* no prescale: latents and B both scale as sqrt(sigma) per dimension, so one int8
             * scale per row on each side is the balanced split (prescaling the latents by
             * sqrt(sigma) doubled lowrank's KL at CR 0.3; unscaled, ppl and KL match bf16) */
            if (c->i8 && kvs_ckv_i8_pack(&c->bk8[lay], c->Bk[lay], c->dkv, (int)r, (int)r, NULL) != KVS_OK) goto oom;
            c->bk[lay] = m->layers[lay].bk;
            c->bv[lay] = m->layers[lay].bv;
        }
        seg_init(&g->p16, FMT_F16, g->nl, r, 0, 0);
        seg_init(&g->pq, FMT_Q, g->nl, r, c->qbits, c->qgroup);
        seg_init(&g->s16, FMT_F16, 1, r, 0, 0);
        seg_init(&g->sq, FMT_Q, 1, r, c->qbits, c->qgroup);
        if (c->evict) {
            g->score = calloc((size_t)n_ctx_max, sizeof(float));
            if (!g->score) goto oom;
        }
    }
    /* Decoding needs only A at the planned rank and the per-layer B copies made above: the press's
     * own full-rank factors shrink to their first r rows of A (which the latent similarity also
     * reads) and the singular values (the spectra records); B goes. Borrowed factors are the
     * caller's to keep. */
    if (c->own) {
        for (int gi = 0; gi < c->ng; gi++) {
            struct grp *g = &c->g[gi];
            free(c->own->B[gi]);
            c->own->B[gi] = NULL;
            free(c->own->A[gi]);
            c->own->A[gi] = g->A;
            g->a_borrowed = true;
        }
    }
    for (int gi = 0; gi < c->ng; gi++) {
        const struct grp *g = &c->g[gi];
        c->factor_bytes += (uint64_t)g->r * c->D * sizeof(float);
        if (c->own) c->factor_bytes += (uint64_t)c->f->r_max[gi] * sizeof(float);
    }
    for (int l = 0; l < c->N; l++) {
        uint64_t r = c->g[c->l2g[l]].r;
        c->factor_bytes += 2 * (uint64_t)c->dkv * r * sizeof(float);
        if (c->bk16[l].w) c->factor_bytes += (uint64_t)c->bk16[l].k_pad * c->bk16[l].n_out_pad * 2;
        if (c->bk8[l].w)
            c->factor_bytes += (uint64_t)c->bk8[l].k_pad * c->bk8[l].n_out_pad + (uint64_t)c->bk8[l].n_out_pad * 8 +
                               (uint64_t)c->bk8[l].k * 4;
    }
    if (kvs_rope_table_init(&c->rope, hp, KVS_MIN(n_ctx_max, 4096)) != KVS_OK) goto oom;
    *out = &c->base;
    return KVS_OK;
oom:
    kvs_seterr(err, errlen, "%s: out of memory", cfg.spec);
    ckv_destroy(&c->base);
    return KVS_ERR_NOMEM;
reject:
    if (take) kvs_ckv_factors_delete(factors);
    return st;
}
