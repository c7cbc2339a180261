/* CPU twin of kernels/kv_quant.cu (kv_quant.h): the quantized K/V pool in host memory. Blocks are
 * packed by quant_codec.c from the fp16 tier's rows widened to fp32; attention decodes packed rows
 * to fp16 (the values a stored row would have) and runs attention.h with the attention weights,
 * summed per row (queries and heads in order) before they are added to the score by position, the
 * reduction order the device uses. Depends on kv_quant.h, attention.h, quant_codec.h, libc. */
#include "kv_quant.h"

#include "attention.h"
#include "quant_codec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool fmt_ok(const struct kvs_kvq_fmt *f)
{
    return f->dkv > 0 && (f->bits == 2 || f->bits == 4 || f->bits == 8) && f->group > 0 &&
           f->vrow == kvs_qrow_bytes((uint32_t)f->dkv, f->bits, f->group);
}

enum kvs_status kvs_cpu_kvq_grow(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, int tq_cap, size_t kq_cap,
                                 int n_score)
{
    if (!fmt_ok(f) || tq_cap < L->tq || kq_cap < L->kq_bytes || n_score < 0) return KVS_ERR_ARG;
    if (tq_cap == 0 && kq_cap == 0 && n_score == 0) {
        free(L->kq), free(L->vq), free(L->pq), free(L->score);
        L->kq = L->vq = L->pq = NULL;
        L->score = NULL;
        L->tq_cap = 0, L->kq_cap = 0, L->n_score = 0;
        return KVS_OK;
    }
    if ((size_t)tq_cap > SIZE_MAX / f->vrow) return KVS_ERR_ARG;
    if (n_score > 0 && !L->score) {
        float *s = calloc((size_t)n_score, sizeof(float));
        if (!s) return KVS_ERR_NOMEM;
        L->score = s;
        L->n_score = n_score;
    }
    if (tq_cap != L->tq_cap) {
        void *v = realloc(L->vq, (size_t)(tq_cap ? tq_cap : 1) * f->vrow);
        if (v) L->vq = v;
        void *p = realloc(L->pq, (size_t)(tq_cap ? tq_cap : 1) * sizeof(int32_t));
        if (p) L->pq = p;
        if (!v || !p) return KVS_ERR_NOMEM;
        L->tq_cap = tq_cap;
    }
    if (kq_cap != L->kq_cap) {
        void *k = realloc(L->kq, kq_cap ? kq_cap : 1);
        if (!k) return KVS_ERR_NOMEM;
        L->kq = k;
        L->kq_cap = kq_cap;
    }
    return KVS_OK;
}

enum kvs_status kvs_cpu_kvq_quantize(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f)
{
    uint32_t G = f->group, dkv = (uint32_t)f->dkv, kb;
    if (!fmt_ok(f) || L->f16.n < (int)G || L->nblk >= L->blk_cap) return KVS_ERR_ARG;
    kb = kvs_qcol_bytes(G, dkv, f->bits);
    if (L->tq + (int)G > L->tq_cap || L->kq_bytes + kb > L->kq_cap) return KVS_ERR_ARG;
    float *tmp = malloc((size_t)G * dkv * sizeof(float));
    if (!tmp) return KVS_ERR_NOMEM;
    const uint16_t *k16 = L->f16.k, *v16 = L->f16.v;
    uint8_t *kdst = (uint8_t *)L->kq + L->kq_bytes, *vdst = (uint8_t *)L->vq + (size_t)L->tq * f->vrow;
    for (uint32_t t = 0; t < G; t++) kvs_f16_to_f32_row(k16 + (size_t)t * dkv, tmp + (size_t)t * dkv, (int)dkv);
    kvs_qcol_encode(tmp, G, dkv, f->bits, kdst);
    for (uint32_t t = 0; t < G; t++) {
        kvs_f16_to_f32_row(v16 + (size_t)t * dkv, tmp, (int)dkv);
        kvs_qrow_encode(tmp, dkv, f->bits, f->group, vdst + (size_t)t * f->vrow);
    }
    free(tmp);
    memcpy((int32_t *)L->pq + L->tq, L->f16.pos, (size_t)G * sizeof(int32_t));
    L->blk_nt[L->nblk] = G;
    L->blk_koff[L->nblk] = (uint32_t)L->kq_bytes;
    L->blk_t0[L->nblk] = (uint32_t)L->tq;
    L->nblk++;
    L->tq += (int)G;
    L->kq_bytes += kb;
    return KVS_OK;
}

/* Packed blocks [b, e) to fp16 rows of the scratch at their token rows. A block of stored rows at
 * ±65504 can decode a little beyond (min + 3·scale with the scale rounded up): the conversion
 * saturates as a store does, uncounted, since the values were counted when they were stored. */
struct unpack_job {
    const struct kvs_kvq_rows *L;
    const struct kvs_kvq_fmt *f;
    uint16_t *sk, *sv;
    float *tbuf;              /* (threads, group, dkv) */
};

static void unpack_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct unpack_job *j = ctx;
    const struct kvs_kvq_rows *L = j->L;
    const uint32_t dkv = (uint32_t)j->f->dkv, bits = j->f->bits;
    float *x = j->tbuf + (size_t)thread * j->f->group * dkv;
    for (int64_t bi = b; bi < e; bi++) {
        uint32_t nt = L->blk_nt[bi], t0 = L->blk_t0[bi];
        kvs_qcol_decode((const uint8_t *)L->kq + L->blk_koff[bi], nt, dkv, bits, x);
        for (uint32_t t = 0; t < nt; t++) kvs_f32_to_f16_row(x + (size_t)t * dkv, j->sk + (size_t)(t0 + t) * dkv, (int)dkv);
        for (uint32_t t = 0; t < nt; t++) {
            kvs_qrow_decode((const uint8_t *)L->vq + (size_t)(t0 + t) * j->f->vrow, dkv, bits, j->f->group, x);
            kvs_f32_to_f16_row(x, j->sv + (size_t)(t0 + t) * dkv, (int)dkv);
        }
    }
}

enum kvs_status kvs_cpu_kvq_attend(struct kvs_pool *pool, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                   const struct kvs_kv_attend_args *a, const float *q, float *out, bool score)
{
    if (!fmt_ok(f) || a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || a->n_head % a->n_head_kv ||
        a->head_dim <= 0 || a->n_head_kv * a->head_dim != f->dkv || (score && !L->score))
        return KVS_ERR_ARG;
    int n = L->tq + L->f16.n, dq = a->n_head * a->head_dim, dkv = f->dkv;
    if (a->T == 0) return KVS_OK;
    if (n == 0) {
        memset(out, 0, (size_t)a->T * dq * sizeof(float));
        return KVS_OK;
    }
    enum kvs_status st = KVS_ERR_NOMEM;
    uint16_t *sk = NULL, *sv = NULL;
    int32_t *sp = NULL;
    float *tbuf = NULL, *probs = NULL, *mass = NULL;
    struct kvs_attn_args aa = {.T = a->T, .n_head = a->n_head, .n_head_kv = a->n_head_kv, .head_dim = a->head_dim,
                               .q = q, .out = out, .qpos = a->q_pos, .n_keys = n, .k = L->f16.k, .v = L->f16.v,
                               .kpos = L->f16.dense ? NULL : L->f16.pos};
    if (L->tq) { /* packed blocks first (decoded in parallel), then the fp16 tier */
        int nth = pool ? kvs_pool_size(pool) : 1;
        sk = malloc((size_t)n * dkv * sizeof(uint16_t));
        sv = malloc((size_t)n * dkv * sizeof(uint16_t));
        sp = malloc((size_t)n * sizeof(int32_t));
        tbuf = malloc((size_t)nth * f->group * dkv * sizeof(float));
        if (!sk || !sv || !sp || !tbuf) goto done;
        struct unpack_job uj = {.L = L, .f = f, .sk = sk, .sv = sv, .tbuf = tbuf};
        kvs_pool_for(pool, L->nblk, unpack_range, &uj);
        memcpy(sk + (size_t)L->tq * dkv, L->f16.k, (size_t)L->f16.n * dkv * sizeof(uint16_t));
        memcpy(sv + (size_t)L->tq * dkv, L->f16.v, (size_t)L->f16.n * dkv * sizeof(uint16_t));
        memcpy(sp, L->pq, (size_t)L->tq * sizeof(int32_t));
        memcpy(sp + L->tq, L->f16.pos, (size_t)L->f16.n * sizeof(int32_t));
        aa.k = sk, aa.v = sv, aa.kpos = sp;
    }
    if (score) {
        size_t rows = (size_t)a->T * a->n_head;
        probs = malloc(rows * (size_t)n * sizeof(float));
        mass = calloc((size_t)n, sizeof(float));
        if (!probs || !mass) goto done;
        aa.probs = probs;
        if (!kvs_attn_f16(pool, &aa)) goto done;
        for (size_t r = 0; r < rows; r++) /* rows outer: the sum does not depend on threads */
            for (int j = 0; j < n; j++) mass[j] += probs[r * n + j];
        st = KVS_ERR_ARG;
        for (int j = 0; j < n; j++) {
            int32_t p = j < L->tq ? ((const int32_t *)L->pq)[j] : ((const int32_t *)L->f16.pos)[j - L->tq];
            if (p < 0 || p >= L->n_score) goto done;
            L->score[p] += mass[j];
        }
    } else if (!kvs_attn_f16(pool, &aa))
        goto done;
    st = KVS_OK;
done:
    free(sk), free(sv), free(sp), free(tbuf), free(probs), free(mass);
    return st;
}

enum kvs_status kvs_cpu_kvq_compact(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, const uint8_t *keep)
{
    if (!fmt_ok(f)) return KVS_ERR_ARG;
    uint32_t dkv = (uint32_t)f->dkv, vb = f->vrow;
    uint8_t *kq = L->kq, *vq = L->vq;
    int32_t *pq = L->pq;
    float *tmp = malloc((size_t)f->group * dkv * sizeof(float));
    uint8_t *enc = malloc(kvs_qcol_bytes(f->group, dkv, f->bits));
    if (!tmp || !enc) {
        free(tmp), free(enc);
        return KVS_ERR_NOMEM;
    }
    /* blocks only ever move down (kept bytes <= old bytes), so one forward pass rewrites in place */
    uint32_t bw = 0, tw = 0;
    size_t kw = 0;
    for (int b = 0; b < L->nblk; b++) {
        uint32_t nt = L->blk_nt[b], t0 = L->blk_t0[b], kept = 0;
        for (uint32_t t = 0; t < nt; t++) kept += keep[t0 + t] != 0;
        if (kept == 0) continue;
        const uint8_t *ksrc = kq + L->blk_koff[b];
        uint32_t kb = kvs_qcol_bytes(kept, dkv, f->bits);
        if (kept == nt) {
            memmove(kq + kw, ksrc, kb);
        } else {
            uint32_t x = 0;
            for (uint32_t t = 0; t < nt; t++)
                if (keep[t0 + t]) kvs_qcol_decode_row(ksrc, nt, dkv, f->bits, t, tmp + (size_t)x++ * dkv);
            kvs_qcol_encode(tmp, kept, dkv, f->bits, enc);
            memcpy(kq + kw, enc, kb);
        }
        uint32_t x = 0;
        for (uint32_t t = 0; t < nt; t++) {
            if (!keep[t0 + t]) continue;
            memmove(vq + (size_t)(tw + x) * vb, vq + (size_t)(t0 + t) * vb, vb);
            pq[tw + x] = pq[t0 + t];
            x++;
        }
        L->blk_nt[bw] = kept;
        L->blk_koff[bw] = (uint32_t)kw;
        L->blk_t0[bw] = tw;
        bw++;
        tw += kept;
        kw += kb;
    }
    free(tmp), free(enc);
    L->nblk = (int)bw;
    L->tq = (int)tw;
    L->kq_bytes = kw;
    return KVS_OK;
}

enum kvs_status kvs_cpu_kvq_read(const struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, uint8_t *kq, uint8_t *vq,
                                 int32_t *pq)
{
    if (!fmt_ok(f)) return KVS_ERR_ARG;
    if (kq && L->kq_bytes) memcpy(kq, L->kq, L->kq_bytes);
    if (vq && L->tq) memcpy(vq, L->vq, (size_t)L->tq * f->vrow);
    if (pq && L->tq) memcpy(pq, L->pq, (size_t)L->tq * sizeof(int32_t));
    return KVS_OK;
}

enum kvs_status kvs_cpu_kvq_scores(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, int n_ctx, int kernel,
                                   float *pooled)
{
    if (!fmt_ok(f) || !L->score || n_ctx < 0 || n_ctx > L->n_score) return KVS_ERR_ARG;
    if (pooled) {
        uint8_t *present = calloc((size_t)(n_ctx ? n_ctx : 1), 1);
        if (!present) return KVS_ERR_NOMEM;
        const int32_t *pq = L->pq, *p16 = L->f16.pos;
        for (int i = 0; i < L->tq; i++)
            if (pq[i] >= 0 && pq[i] < n_ctx) present[pq[i]] = 1;
        for (int i = 0; i < L->f16.n; i++)
            if (p16[i] >= 0 && p16[i] < n_ctx) present[p16[i]] = 1;
        /* max-pool over KERNEL positions (kernel/2 each side, clipped at the ends) */
        int h = kernel > 1 ? kernel / 2 : 0;
        for (int i = 0; i < n_ctx; i++) {
            float m = -INFINITY;
            int lo = i - h < 0 ? 0 : i - h, hi = i + h >= n_ctx ? n_ctx - 1 : i + h;
            for (int j = lo; j <= hi; j++) m = L->score[j] > m ? L->score[j] : m;
            pooled[i] = present[i] ? m : -INFINITY;
        }
        free(present);
    }
    memset(L->score, 0, (size_t)L->n_score * sizeof(float));
    return KVS_OK;
}
