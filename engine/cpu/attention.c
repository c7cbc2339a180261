/* CPU twin of kernels/attention.cu: attention over an fp16 K/V cache (the scalar path is the
 * reference; the F16C+FMA path is the same arithmetic eight lanes at a time), and the reference
 * attention entries of the backend over latents (keys rebuilt on the fly, values re-associated)
 * and over fp16 K/V segments. Depends on backend.h (argument types), infer.h (RoPE), threads.h,
 * quant.h and libc; never prints. */
#include "attention.h"
#include "infer.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__F16C__) && defined(__FMA__) && defined(__AVX2__)
#include <immintrin.h>
#define KVS_SIMD_F16 1
#endif

/* (token, KV head) items below which decode splits the keys into ranges (a fixed count, not one per
 * thread: see kvs_attn_f16) */
#define ATTN_MIN_ITEMS 16

uint16_t kvs_f32_to_f16_sat(float f, uint64_t *clamped)
{
    if (fabsf(f) > 65504.0f) { /* NaN compares false: it stays NaN, uncounted */
        f = f > 0.0f ? 65504.0f : -65504.0f;
        (*clamped)++;
    }
    return kvs_fp32_to_fp16(f);
}

uint64_t kvs_f32_to_f16_row(const float *src, uint16_t *dst, int n)
{
    uint64_t clamped = 0;
    int i = 0;
#ifdef KVS_SIMD_F16
    /* min/max return their second operand when either is NaN, so NaN passes through the clamp */
    const __m256 hi = _mm256_set1_ps(65504.0f), lo = _mm256_set1_ps(-65504.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        int over = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, x), hi, _CMP_GT_OQ));
        if (over) {
            clamped += (uint64_t)__builtin_popcount((unsigned)over);
            x = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
        }
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
    for (; i < n; i++) dst[i] = kvs_f32_to_f16_sat(src[i], &clamped);
    return clamped;
}

void kvs_f16_to_f32_row(const uint16_t *src, float *dst, int n)
{
    int i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
#endif
#ifdef KVS_SIMD_F16
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = kvs_fp16_to_fp32(src[i]);
}

static inline void axpy_f32(float *y, float a, const float *x, int d)
{
    int i = 0;
#ifdef KVS_SIMD_F16
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= d; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < d; i++) y[i] += a * x[i];
}

struct attn_job {
    const struct kvs_attn_args *a;
    float **scratch;
    int n_splits;   /* key ranges per (token, KV head): decode has few heads for many threads */
    float *part;    /* (T, n_kv, n_splits, rep, 2 + d): max, sum, unnormalised output per range */
};

#ifdef KVS_SIMD_F16
/* exp on 8 lanes: 2^(x log2 e) as 2^n * p(f), p a degree-6 polynomial on [-0.5, 0.5];
 * relative error below 4e-6 over the whole float range used here (below 3e-7 for x > -80). */
static inline __m256 exp256(__m256 x)
{
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

static inline float hsum256(__m256 v)
{
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}
#endif

/* row[x] = exp(row[x] - mx) (0 where row[x] is -inf); returns the sum. */
double kvs_exp_row(float *row, int n, float mx)
{
    int x = 0;
    double sum = 0;
#ifdef KVS_SIMD_F16
    __m256 vm = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY), acc = _mm256_setzero_ps();
    for (; x + 8 <= n; x += 8) {
        __m256 s = _mm256_loadu_ps(row + x);
        __m256 e = exp256(_mm256_sub_ps(s, vm));
        e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(s, ninf, _CMP_EQ_OQ));
        _mm256_storeu_ps(row + x, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum256(acc);
#endif
    for (; x < n; x++) {
        float pe = row[x] == -INFINITY ? 0.0f : expf(row[x] - mx);
        row[x] = pe;
        sum += pe;
    }
    return sum;
}

/* One (query token, KV head, key range): scores for the REP query heads that share the KV head
 * (each fp16 key row converted once), softmax, then each head's output accumulated in registers
 * over the value rows. D is a compile-time constant in the common case (64), so the loops unroll. */
static inline __attribute__((always_inline)) void attn_item(const struct kvs_attn_args *a, const struct attn_job *j,
                                                             float *sc, int t, int g, int sp, const int d)
{
    const int dkv = a->n_head_kv * d, dq = a->n_head * d, rep = a->n_head / a->n_head_kv;
    const int nk = a->n_keys, ns = j->n_splits;
    const int k0 = (int)((int64_t)sp * nk / ns), k1 = (int)((int64_t)(sp + 1) * nk / ns), n = k1 - k0;
    const float scale = 1.0f / sqrtf((float)d);
    const int32_t qp = a->qpos[t];
    const float *q0 = a->q + (size_t)t * dq + (size_t)g * rep * d;
    float mx[64];
    for (int r = 0; r < rep; r++) mx[r] = -INFINITY;
    for (int jx = k0; jx < k1; jx++) {
        int32_t kp = a->kpos ? a->kpos[jx] : jx;
        float *col = sc + (jx - k0);
        if (kp > qp) {
            for (int r = 0; r < rep; r++) col[(size_t)r * n] = -INFINITY;
            continue;
        }
        const uint16_t *kr = a->k + (size_t)jx * dkv + (size_t)g * d;
#ifdef KVS_SIMD_F16
        if (d % 8 == 0 && d <= 128) {
            __m256 kv[16];
            for (int c = 0; c < d / 8; c++) kv[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + 8 * c)));
            for (int r = 0; r < rep; r++) {
                const float *q = q0 + (size_t)r * d;
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                int c = 0;
                for (; c + 2 <= d / 8; c += 2) {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), kv[c], a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c + 8), kv[c + 1], a1);
                }
                if (c < d / 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), kv[c], a0);
                float s = hsum256(_mm256_add_ps(a0, a1)) * scale;
                col[(size_t)r * n] = s;
                if (s > mx[r]) mx[r] = s;
            }
            continue;
        }
#endif
        for (int r = 0; r < rep; r++) {
            const float *q = q0 + (size_t)r * d;
            float s = 0;
            for (int x = 0; x < d; x++) s += q[x] * kvs_fp16_to_fp32(kr[x]);
            s *= scale;
            col[(size_t)r * n] = s;
            if (s > mx[r]) mx[r] = s;
        }
    }
    for (int r = 0; r < rep; r++) {
        float *row = sc + (size_t)r * n;
        float *o;
        if (ns == 1) {
            o = a->out + (size_t)t * dq + (size_t)(g * rep + r) * d;
        } else {
            float *pp = j->part + ((((size_t)t * a->n_head_kv + g) * ns + sp) * rep + r) * (size_t)(d + 2);
            o = pp + 2;
            pp[0] = mx[r];
            pp[1] = 0;
        }
        if (mx[r] == -INFINITY) { /* nothing visible in this range */
            memset(o, 0, (size_t)d * sizeof(float));
            continue;
        }
        double sum = kvs_exp_row(row, n, mx[r]);
        /* one range: normalise here; several: kvs_attn_f16 normalises after combining */
        float inv = ns == 1 ? (float)(1.0 / sum) : 1.0f;
        if (ns > 1) o[-1] = (float)sum;
        if (a->probs) { /* only with one range (see kvs_attn_f16) */
            float *pr = a->probs + ((size_t)t * a->n_head + g * rep + r) * nk;
            for (int x = 0; x < n; x++) pr[x] = row[x] * inv;
        }
#ifdef KVS_SIMD_F16
        if (d % 8 == 0 && d <= 128) {
            __m256 acc[16];
            for (int c = 0; c < d / 8; c++) acc[c] = _mm256_setzero_ps();
            for (int x = 0; x < n; x++) {
                if (row[x] == 0.0f) continue;
                __m256 w = _mm256_set1_ps(row[x] * inv);
                const uint16_t *vr = a->v + (size_t)(k0 + x) * dkv + (size_t)g * d;
                for (int c = 0; c < d / 8; c++)
                    acc[c] = _mm256_fmadd_ps(w, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vr + 8 * c))), acc[c]);
            }
            for (int c = 0; c < d / 8; c++) _mm256_storeu_ps(o + 8 * c, acc[c]);
            continue;
        }
#endif
        memset(o, 0, (size_t)d * sizeof(float));
        for (int x = 0; x < n; x++) {
            if (row[x] == 0.0f) continue;
            float w = row[x] * inv;
            const uint16_t *vr = a->v + (size_t)(k0 + x) * dkv + (size_t)g * d;
            for (int c = 0; c < d; c++) o[c] += w * kvs_fp16_to_fp32(vr[c]);
        }
    }
}

static void attn_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct attn_job *j = ctx;
    const struct kvs_attn_args *a = j->a;
    const int ns = j->n_splits;
    for (int64_t it = b; it < e; it++) {
        int sp = (int)(it % ns), tg = (int)(it / ns);
        int t = tg / a->n_head_kv, g = tg % a->n_head_kv;
        if (a->head_dim == 64) attn_item(a, j, j->scratch[thread], t, g, sp, 64);
        else attn_item(a, j, j->scratch[thread], t, g, sp, a->head_dim);
    }
}

bool kvs_attn_f16(struct kvs_pool *pool, const struct kvs_attn_args *a)
{
    int nth = kvs_pool_size(pool);
    if (nth > 256) nth = 256;
    float *bufs[256];
    int rep = a->n_head / a->n_head_kv;
    if (rep > 64 || a->n_head % a->n_head_kv) return false;
    /* Split the keys when there are too few (token, KV head) items to keep threads busy. The split
     * depends on the shapes only, never on the thread count: the partial softmaxes are combined in
     * split order, so the output is the same bytes at any -t. */
    int items = a->T * a->n_head_kv, ns = 1;
    if (!a->probs && items < ATTN_MIN_ITEMS && a->n_keys >= 256) {
        ns = (ATTN_MIN_ITEMS + items - 1) / items;
        if (ns > a->n_keys / 128) ns = a->n_keys / 128;
        if (ns < 1) ns = 1;
    }
    struct attn_job j = {.a = a, .scratch = bufs, .n_splits = ns, .part = NULL};
    int chunk = (a->n_keys + ns - 1) / ns;
    bool ok = true;
    if (ns > 1) {
        j.part = malloc((size_t)items * ns * rep * (size_t)(a->head_dim + 2) * sizeof(float));
        if (!j.part) return false;
    }
    for (int i = 0; i < nth; i++) {
        bufs[i] = malloc(((size_t)rep * (chunk > 0 ? chunk : 1) + 2 * (size_t)a->head_dim) * sizeof(float));
        if (!bufs[i]) ok = false;
    }
    if (ok) kvs_pool_for(pool, (int64_t)items * ns, attn_range, &j);
    if (ok && ns > 1) {
        const int d = a->head_dim, dq = a->n_head * d;
        for (int tg = 0; tg < items; tg++) {
            int t = tg / a->n_head_kv, g = tg % a->n_head_kv;
            for (int r = 0; r < rep; r++) {
                float *o = a->out + (size_t)t * dq + (size_t)(g * rep + r) * d;
                float M = -INFINITY;
                for (int sp = 0; sp < ns; sp++) {
                    const float *pp = j.part + (((size_t)tg * ns + sp) * rep + r) * (size_t)(d + 2);
                    if (pp[1] > 0 && pp[0] > M) M = pp[0];
                }
                memset(o, 0, (size_t)d * sizeof(float));
                if (M == -INFINITY) continue;
                double L = 0;
                for (int sp = 0; sp < ns; sp++) {
                    const float *pp = j.part + (((size_t)tg * ns + sp) * rep + r) * (size_t)(d + 2);
                    if (!(pp[1] > 0)) continue;
                    float w = expf(pp[0] - M);
                    L += (double)w * pp[1];
                    axpy_f32(o, w, pp + 2, d);
                }
                float inv = (float)(1.0 / L);
                for (int x = 0; x < d; x++) o[x] *= inv;
            }
        }
    }
    for (int i = 0; i < nth; i++) free(bufs[i]);
    free(j.part);
    return ok;
}

/* ---------------------------------------------------------------- the backend's reference entries */

/* Queries per chunk so that the (chunk, n_head, n) score matrix stays near 64 MiB. */
static int attn_chunk(int T, int n_head, int64_t n)
{
    int64_t per_q = (int64_t)n_head * n;
    int64_t tc = per_q > 0 ? ((int64_t)16 << 20) / per_q : T;
    if (tc < 1) tc = 1;
    if (tc > T) tc = T;
    return (int)tc;
}

/* Softmax of one row in place; -inf entries become 0, a fully masked row all 0. */
static void softmax_row(float *x, int64_t n)
{
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof(float));
        return;
    }
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static float dotf(const float *a, const float *b, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Validates the common head shape; returns the total token count in *n_out. */
static enum kvs_status attn_shape(int T, const int32_t *q_pos, int n_head, int n_head_kv, int head_dim,
                                  int n_segs, const int *seg_n, int64_t *n_out)
{
    int64_t n = 0;
    if (T < 0 || (T > 0 && !q_pos) || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv != 0 || head_dim <= 0 ||
        head_dim % 2 != 0 || head_dim > KVS_CUDA_MAX_HEAD_DIM || n_segs < 0)
        return KVS_ERR_ARG;
    for (int s = 0; s < n_segs; s++) {
        if (seg_n[s] < 0) return KVS_ERR_ARG;
        n += seg_n[s];
    }
    if (n > 0x7fffffff) return KVS_ERR_ARG;
    *n_out = n;
    return KVS_OK;
}

struct latent_job {
    const struct kvs_attn_latent_args *a;
    const float *kb, *vb;     /* (n_head_kv*d) biases b_k, b_v, or NULL */
    const float *q;           /* (tn, n_head*d) this chunk's queries */
    const int32_t *q_pos;     /* (tn) */
    int tn;
    int64_t n;
    const int64_t *seg_off;   /* (n_segs + 1) first global token of each segment */
    float *scores;            /* (tn, n_head, n) */
    float *pc;                /* (tn, n_head, rank) */
    float *out;               /* (tn, n_head*d) */
};

/* Scores of key K (KV head G, position PJ) against the GQ query heads of G for every query of the
 * chunk, written at column J of SCORES (tn, H, n); masked queries get -inf. */
static void key_scores(const float *q, const int32_t *q_pos, int tn, int H, int gq, int d, float scale, int g,
                       const float *k, int32_t pj, float *scores, int64_t n, int64_t j)
{
    for (int t = 0; t < tn; t++) {
        bool visible = pj <= q_pos[t];
        for (int hh = 0; hh < gq; hh++) {
            int h = g * gq + hh;
            scores[((size_t)t * H + h) * n + j] = visible ? dotf(q + ((size_t)t * H + h) * d, k, d) * scale : -INFINITY;
        }
    }
}

static void seg_find(const int64_t *off, int n_segs, int64_t j, int *s, int *local)
{
    int i = 0;
    while (i + 1 < n_segs && j >= off[i + 1]) i++;
    *s = i;
    *local = (int)(j - off[i]);
}

/* Fused keys: k = RoPE(B_k[g] c_j) one at a time, dotted with every query of the head group. */
static void latent_scores_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct latent_job *jb = ctx;
    const struct kvs_attn_latent_args *a = jb->a;
    int d = a->head_dim, r = a->rank, H = a->n_head, gq = a->n_head / a->n_head_kv;
    float k[KVS_CUDA_MAX_HEAD_DIM];
    for (int64_t j = b; j < e; j++) {
        int s, l;
        seg_find(jb->seg_off, a->n_segs, j, &s, &l);
        const float *cj = a->segs[s].c + (size_t)l * r;
        int32_t pj = a->segs[s].pos[l];
        for (int g = 0; g < a->n_head_kv; g++) {
            for (int i = 0; i < d; i++) k[i] = dotf(a->bk + ((size_t)g * d + i) * r, cj, r);
            if (jb->kb)
                for (int i = 0; i < d; i++) k[i] += jb->kb[g * d + i];
            kvs_cpu_rope(k, 1, d, pj, a->freqs, a->neox);
            key_scores(jb->q, jb->q_pos, jb->tn, H, gq, d, a->scale, g, k, pj, jb->scores, jb->n, j);
        }
    }
}

/* Rows (t, h): softmax, then out = (P C) B_vᵀ with P C computed here row by row. */
static void latent_rows_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct latent_job *jb = ctx;
    const struct kvs_attn_latent_args *a = jb->a;
    int d = a->head_dim, r = a->rank, gq = a->n_head / a->n_head_kv;
    for (int64_t row = b; row < e; row++) {
        float *p = jb->scores + (size_t)row * jb->n;
        float *pc = jb->pc + (size_t)row * r;
        softmax_row(p, jb->n);
        memset(pc, 0, (size_t)r * sizeof(float));
        for (int s = 0; s < a->n_segs; s++) {
            const float *ps = p + jb->seg_off[s];
            for (int l = 0; l < a->segs[s].n; l++) {
                float w = ps[l];
                if (w == 0.0f) continue;
                const float *cl = a->segs[s].c + (size_t)l * r;
                for (int x = 0; x < r; x++) pc[x] += w * cl[x];
            }
        }
        int g = (int)(row % a->n_head) / gq;
        float *o = jb->out + (size_t)row * d;
        for (int i = 0; i < d; i++) o[i] = dotf(a->bv + ((size_t)g * d + i) * r, pc, r);
        if (jb->vb)
            for (int i = 0; i < d; i++) o[i] += jb->vb[g * d + i];
    }
}

/* The latent path of attn_latent: biases KB, VB (NULL: none); MASS (n, zeroed by the caller) or
 * NULL gets the weights of the queries t >= MASS_FROM, row (t, h) after row, as the CUDA twin adds
 * them. */
static enum kvs_status latent_run(struct kvs_pool *pool, const struct kvs_attn_latent_args *a, const float *kb,
                                  const float *vb, const float *q, float *out, float *mass, int mass_from)
{
    int seg_n_small[16] = {0};
    int *seg_n = a->n_segs <= 16 ? seg_n_small : malloc((size_t)a->n_segs * sizeof(int));
    int64_t *seg_off = malloc(((size_t)(a->n_segs > 0 ? a->n_segs : 0) + 1) * sizeof(int64_t));
    float *scores = NULL, *pc = NULL;
    enum kvs_status st = KVS_ERR_NOMEM;
    int64_t n = 0;
    if (!seg_n || !seg_off) goto done;
    for (int s = 0; s < a->n_segs; s++) seg_n[s] = a->segs[s].n;
    st = attn_shape(a->T, a->q_pos, a->n_head, a->n_head_kv, a->head_dim, a->n_segs, seg_n, &n);
    if (st != KVS_OK) goto done;
    st = KVS_ERR_ARG;
    if (a->rank <= 0 || (n > 0 && (!a->bk || !a->bv || !a->freqs))) goto done;
    seg_off[0] = 0;
    for (int s = 0; s < a->n_segs; s++) seg_off[s + 1] = seg_off[s] + seg_n[s];
    int dq = a->n_head * a->head_dim;
    if (a->T == 0) { st = KVS_OK; goto done; }
    if (n == 0) {
        memset(out, 0, (size_t)a->T * dq * sizeof(float));
        st = KVS_OK;
        goto done;
    }
    int tc = attn_chunk(a->T, a->n_head, n);
    st = KVS_ERR_NOMEM;
    scores = malloc((size_t)tc * a->n_head * (size_t)n * sizeof(float));
    pc = malloc((size_t)tc * a->n_head * (size_t)a->rank * sizeof(float));
    if (!scores || !pc) goto done;
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        struct latent_job jb = {.a = a, .kb = kb, .vb = vb, .q = q + (size_t)t0 * dq, .q_pos = a->q_pos + t0,
                                .tn = KVS_MIN(tc, a->T - t0), .n = n, .seg_off = seg_off, .scores = scores,
                                .pc = pc, .out = out + (size_t)t0 * dq};
        kvs_pool_for(pool, n, latent_scores_range, &jb);
        kvs_pool_for(pool, (int64_t)jb.tn * a->n_head, latent_rows_range, &jb);
        if (mass)
            for (int t = KVS_MAX(mass_from - t0, 0); t < jb.tn; t++)
                for (int h = 0; h < a->n_head; h++) {
                    const float *p = scores + ((size_t)t * a->n_head + h) * n;
                    for (int64_t x = 0; x < n; x++) mass[x] += p[x];
                }
    }
    st = KVS_OK;
done:
    if (seg_n != seg_n_small) free(seg_n);
    free(seg_off);
    free(scores);
    free(pc);
    return st;
}

enum kvs_status kvs_cpu_attn_latent(struct kvs_pool *pool, const struct kvs_attn_latent_args *a, const float *q,
                                    float *out)
{
    return latent_run(pool, a, NULL, NULL, q, out, NULL, 0);
}

struct kv16_job {
    const struct kvs_attn_kv16_args *a;
    const float *q;
    const int32_t *q_pos;
    int tn;
    int64_t n;
    const int64_t *seg_off;
    float *scores;
    float *out;
};

static void kv16_scores_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct kv16_job *jb = ctx;
    const struct kvs_attn_kv16_args *a = jb->a;
    int d = a->head_dim, H = a->n_head, dkv = a->n_head_kv * d, gq = a->n_head / a->n_head_kv;
    float k[KVS_CUDA_MAX_HEAD_DIM];
    for (int64_t j = b; j < e; j++) {
        int s, l;
        seg_find(jb->seg_off, a->n_segs, j, &s, &l);
        int32_t pj = a->segs[s].pos[l];
        for (int g = 0; g < a->n_head_kv; g++) {
            const uint16_t *kj = a->segs[s].k + (size_t)l * dkv + (size_t)g * d;
            for (int i = 0; i < d; i++) k[i] = kvs_fp16_to_fp32(kj[i]);
            key_scores(jb->q, jb->q_pos, jb->tn, H, gq, d, a->scale, g, k, pj, jb->scores, jb->n, j);
        }
    }
}

static void kv16_rows_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct kv16_job *jb = ctx;
    const struct kvs_attn_kv16_args *a = jb->a;
    int d = a->head_dim, dkv = a->n_head_kv * d, gq = a->n_head / a->n_head_kv;
    for (int64_t row = b; row < e; row++) {
        float *p = jb->scores + (size_t)row * jb->n;
        float *o = jb->out + (size_t)row * d;
        int g = (int)(row % a->n_head) / gq;
        softmax_row(p, jb->n);
        memset(o, 0, (size_t)d * sizeof(float));
        for (int s = 0; s < a->n_segs; s++) {
            const float *ps = p + jb->seg_off[s];
            for (int l = 0; l < a->segs[s].n; l++) {
                float w = ps[l];
                if (w == 0.0f) continue;
                const uint16_t *vl = a->segs[s].v + (size_t)l * dkv + (size_t)g * d;
                for (int i = 0; i < d; i++) o[i] += w * kvs_fp16_to_fp32(vl[i]);
            }
        }
    }
}

enum kvs_status kvs_cpu_attn_kv16(struct kvs_pool *pool, const struct kvs_attn_kv16_args *a, const float *q,
                                  float *out)
{
    int seg_n_small[16] = {0};
    int *seg_n = a->n_segs <= 16 ? seg_n_small : malloc((size_t)a->n_segs * sizeof(int));
    int64_t *seg_off = malloc(((size_t)(a->n_segs > 0 ? a->n_segs : 0) + 1) * sizeof(int64_t));
    float *scores = NULL;
    enum kvs_status st = KVS_ERR_NOMEM;
    int64_t n = 0;
    if (!seg_n || !seg_off) goto done;
    for (int s = 0; s < a->n_segs; s++) seg_n[s] = a->segs[s].n;
    st = attn_shape(a->T, a->q_pos, a->n_head, a->n_head_kv, a->head_dim, a->n_segs, seg_n, &n);
    if (st != KVS_OK) goto done;
    seg_off[0] = 0;
    for (int s = 0; s < a->n_segs; s++) seg_off[s + 1] = seg_off[s] + seg_n[s];
    int dq = a->n_head * a->head_dim;
    if (a->T == 0) goto done;
    if (n == 0) {
        memset(out, 0, (size_t)a->T * dq * sizeof(float));
        goto done;
    }
    int tc = attn_chunk(a->T, a->n_head, n);
    scores = malloc((size_t)tc * a->n_head * (size_t)n * sizeof(float));
    if (!scores) {
        st = KVS_ERR_NOMEM;
        goto done;
    }
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        struct kv16_job jb = {.a = a, .q = q + (size_t)t0 * dq, .q_pos = a->q_pos + t0,
                              .tn = KVS_MIN(tc, a->T - t0), .n = n, .seg_off = seg_off, .scores = scores,
                              .out = out + (size_t)t0 * dq};
        kvs_pool_for(pool, n, kv16_scores_range, &jb);
        kvs_pool_for(pool, (int64_t)jb.tn * a->n_head, kv16_rows_range, &jb);
    }
done:
    if (seg_n != seg_n_small) free(seg_n);
    free(seg_off);
    free(scores);
    return st;
}
