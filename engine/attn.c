/* fp16 K/V attention (see attn.h). The scalar path is the reference; the F16C+FMA path is the
 * same arithmetic eight lanes at a time. */
#include "attn.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__F16C__) && defined(__FMA__) && defined(__AVX2__)
#include <immintrin.h>
#define KVS_SIMD_F16 1
#endif

void kvs_f32_to_f16_row(const float *src, uint16_t *dst, int n)
{
    int i = 0;
#ifdef KVS_SIMD_F16
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = kvs_fp32_to_fp16(src[i]);
}

void kvs_f16_to_f32_row(const uint16_t *src, float *dst, int n)
{
    int i = 0;
#ifdef KVS_SIMD_F16
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = kvs_fp16_to_fp32(src[i]);
}

static inline float dot_f32(const float *q, const float *k, int d)
{
    int i = 0;
    float s = 0;
#ifdef KVS_SIMD_F16
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= d; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), a1);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    s = _mm_cvtss_f32(lo);
#endif
    for (; i < d; i++) s += q[i] * k[i];
    return s;
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

/* One (query token, KV head, key range) at a time: the REP query heads that share the KV head read
 * each fp16 key and value row once. With one range the output is final; with several, each range
 * leaves its softmax partials (max, sum, unnormalised sum of values) for kvs_attn_f16 to combine. */
static void attn_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct attn_job *j = ctx;
    const struct kvs_attn_args *a = j->a;
    const int d = a->head_dim, dkv = a->n_head_kv * d, dq = a->n_head * d;
    const int rep = a->n_head / a->n_head_kv, nk = a->n_keys, ns = j->n_splits;
    const float scale = 1.0f / sqrtf((float)d);
    for (int64_t it = b; it < e; it++) {
        int sp = (int)(it % ns), tg = (int)(it / ns);
        int t = tg / a->n_head_kv, g = tg % a->n_head_kv;
        int k0 = (int)((int64_t)sp * nk / ns), k1 = (int)((int64_t)(sp + 1) * nk / ns), n = k1 - k0;
        float *sc = j->scratch[thread];        /* (rep, n) */
        float *krow = sc + (size_t)rep * n;    /* (d) */
        int32_t qp = a->qpos[t];
        const float *q0 = a->q + (size_t)t * dq + (size_t)g * rep * d;
        float mx[64];
        for (int r = 0; r < rep; r++) mx[r] = -INFINITY;
        for (int jx = k0; jx < k1; jx++) {
            int32_t kp = a->kpos ? a->kpos[jx] : jx;
            if (kp > qp) {
                for (int r = 0; r < rep; r++) sc[(size_t)r * n + (jx - k0)] = -INFINITY;
                continue;
            }
            kvs_f16_to_f32_row(a->k + (size_t)jx * dkv + (size_t)g * d, krow, d);
            for (int r = 0; r < rep; r++) {
                float s = dot_f32(q0 + (size_t)r * d, krow, d) * scale;
                sc[(size_t)r * n + (jx - k0)] = s;
                if (s > mx[r]) mx[r] = s;
            }
        }
        float inv[64], sums[64];
        for (int r = 0; r < rep; r++) {
            float *row = sc + (size_t)r * n;
            inv[r] = 0;
            sums[r] = 0;
            if (mx[r] == -INFINITY) continue; /* nothing visible in this range */
            double sum = 0;
            for (int x = 0; x < n; x++) {
                float p = row[x] == -INFINITY ? 0.0f : expf(row[x] - mx[r]);
                row[x] = p;
                sum += p;
            }
            sums[r] = (float)sum;
            inv[r] = ns == 1 ? (float)(1.0 / sum) : 1.0f;
        }
        float *outs[64];
        for (int r = 0; r < rep; r++) {
            if (ns == 1) {
                outs[r] = a->out + (size_t)t * dq + (size_t)(g * rep + r) * d;
            } else {
                float *pp = j->part + ((((size_t)t * a->n_head_kv + g) * ns + sp) * rep + r) * (size_t)(d + 2);
                pp[0] = mx[r];
                pp[1] = sums[r];
                outs[r] = pp + 2;
            }
            memset(outs[r], 0, (size_t)d * sizeof(float));
        }
        for (int jx = k0; jx < k1; jx++) {
            bool any = false;
            for (int r = 0; r < rep; r++) any |= inv[r] != 0 && sc[(size_t)r * n + (jx - k0)] != 0.0f;
            if (!any) continue;
            kvs_f16_to_f32_row(a->v + (size_t)jx * dkv + (size_t)g * d, krow, d);
            for (int r = 0; r < rep; r++) {
                float w = sc[(size_t)r * n + (jx - k0)] * inv[r];
                if (w != 0.0f) axpy_f32(outs[r], w, krow, d);
            }
        }
        if (a->probs) /* only with one range (see kvs_attn_f16) */
            for (int r = 0; r < rep; r++) {
                float *pr = a->probs + ((size_t)t * a->n_head + g * rep + r) * nk;
                for (int x = 0; x < n; x++) pr[x] = sc[(size_t)r * n + x] * inv[r];
            }
    }
}

bool kvs_attn_f16(struct kvs_pool *pool, const struct kvs_attn_args *a)
{
    int nth = kvs_pool_size(pool);
    if (nth > 256) nth = 256;
    float *bufs[256];
    int rep = a->n_head / a->n_head_kv;
    if (rep > 64 || a->n_head % a->n_head_kv) return false;
    /* split the keys when there are too few (token, KV head) items to keep every thread busy */
    int items = a->T * a->n_head_kv, ns = 1;
    if (!a->probs && nth > 1 && items < 4 * nth && a->n_keys >= 256) {
        ns = (4 * nth + items - 1) / items;
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
        bufs[i] = malloc(((size_t)rep * (chunk > 0 ? chunk : 1) + (size_t)a->head_dim) * sizeof(float));
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
