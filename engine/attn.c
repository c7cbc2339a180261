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

static inline float dot_f16(const float *q, const uint16_t *k, int n)
{
    int i = 0;
    float s = 0;
#ifdef KVS_SIMD_F16
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i))), acc);
    __m128 lo = _mm256_castps256_ps128(acc), hi = _mm256_extractf128_ps(acc, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    s = _mm_cvtss_f32(lo);
#endif
    for (; i < n; i++) s += q[i] * kvs_fp16_to_fp32(k[i]);
    return s;
}

static inline void axpy_f16(float *y, float a, const uint16_t *x, int n)
{
    int i = 0;
#ifdef KVS_SIMD_F16
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                                _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * kvs_fp16_to_fp32(x[i]);
}

struct attn_job {
    const struct kvs_attn_args *a;
    float **scratch;
    bool oom;
};

static void attn_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct attn_job *j = ctx;
    const struct kvs_attn_args *a = j->a;
    float *sc = j->scratch[thread];
    const int d = a->head_dim, dkv = a->n_head_kv * d, dq = a->n_head * d;
    const int rep = a->n_head / a->n_head_kv;
    const float scale = 1.0f / sqrtf((float)d);
    for (int64_t it = b; it < e; it++) {
        int t = (int)(it / a->n_head), h = (int)(it % a->n_head), g = h / rep;
        const float *q = a->q + (size_t)t * dq + (size_t)h * d;
        float *o = a->out + (size_t)t * dq + (size_t)h * d;
        int32_t qp = a->qpos[t];
        float mx = -INFINITY;
        for (int jx = 0; jx < a->n_keys; jx++) {
            int32_t kp = a->kpos ? a->kpos[jx] : jx;
            float s = kp <= qp ? dot_f16(q, a->k + (size_t)jx * dkv + (size_t)g * d, d) * scale : -INFINITY;
            sc[jx] = s;
            if (s > mx) mx = s;
        }
        memset(o, 0, (size_t)d * sizeof(float));
        if (mx == -INFINITY) continue; /* nothing visible */
        double sum = 0;
        for (int jx = 0; jx < a->n_keys; jx++) {
            float p = sc[jx] == -INFINITY ? 0.0f : expf(sc[jx] - mx);
            sc[jx] = p;
            sum += p;
        }
        float inv = (float)(1.0 / sum);
        for (int jx = 0; jx < a->n_keys; jx++) {
            if (sc[jx] == 0.0f) continue;
            axpy_f16(o, sc[jx] * inv, a->v + (size_t)jx * dkv + (size_t)g * d, d);
        }
        if (a->probs) {
            float *pr = a->probs + ((size_t)t * a->n_head + h) * a->n_keys;
            for (int jx = 0; jx < a->n_keys; jx++) pr[jx] = sc[jx] * inv;
        }
    }
}

bool kvs_attn_f16(struct kvs_pool *pool, const struct kvs_attn_args *a)
{
    int nth = kvs_pool_size(pool);
    float *bufs[256];
    struct attn_job j = {.a = a, .scratch = bufs};
    bool ok = true;
    for (int i = 0; i < nth; i++) {
        bufs[i] = malloc((size_t)(a->n_keys > 0 ? a->n_keys : 1) * sizeof(float));
        if (!bufs[i]) ok = false;
    }
    if (ok) kvs_pool_for(pool, (int64_t)a->T * a->n_head, attn_range, &j);
    for (int i = 0; i < nth; i++) free(bufs[i]);
    return ok;
}
