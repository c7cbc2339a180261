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
};

/* One (query token, KV head) pair at a time: the REP query heads that share the KV head read each
 * fp16 key and value row once. */
static void attn_range(void *ctx, int64_t b, int64_t e, int thread)
{
    struct attn_job *j = ctx;
    const struct kvs_attn_args *a = j->a;
    const int d = a->head_dim, dkv = a->n_head_kv * d, dq = a->n_head * d;
    const int rep = a->n_head / a->n_head_kv, nk = a->n_keys;
    const float scale = 1.0f / sqrtf((float)d);
    float *sc = j->scratch[thread];          /* (rep, n_keys) */
    float *krow = sc + (size_t)rep * nk;     /* (d) */
    for (int64_t it = b; it < e; it++) {
        int t = (int)(it / a->n_head_kv), g = (int)(it % a->n_head_kv);
        int32_t qp = a->qpos[t];
        const float *q0 = a->q + (size_t)t * dq + (size_t)g * rep * d;
        float mx[64];
        for (int r = 0; r < rep; r++) mx[r] = -INFINITY;
        for (int jx = 0; jx < nk; jx++) {
            int32_t kp = a->kpos ? a->kpos[jx] : jx;
            if (kp > qp) {
                for (int r = 0; r < rep; r++) sc[(size_t)r * nk + jx] = -INFINITY;
                continue;
            }
            kvs_f16_to_f32_row(a->k + (size_t)jx * dkv + (size_t)g * d, krow, d);
            for (int r = 0; r < rep; r++) {
                float s = dot_f32(q0 + (size_t)r * d, krow, d) * scale;
                sc[(size_t)r * nk + jx] = s;
                if (s > mx[r]) mx[r] = s;
            }
        }
        float inv[64];
        for (int r = 0; r < rep; r++) {
            float *o = a->out + (size_t)t * dq + (size_t)(g * rep + r) * d;
            memset(o, 0, (size_t)d * sizeof(float));
            float *row = sc + (size_t)r * nk;
            inv[r] = 0;
            if (mx[r] == -INFINITY) continue; /* nothing visible */
            double sum = 0;
            for (int jx = 0; jx < nk; jx++) {
                float p = row[jx] == -INFINITY ? 0.0f : expf(row[jx] - mx[r]);
                row[jx] = p;
                sum += p;
            }
            inv[r] = (float)(1.0 / sum);
        }
        for (int jx = 0; jx < nk; jx++) {
            bool any = false;
            for (int r = 0; r < rep; r++) any |= inv[r] != 0 && sc[(size_t)r * nk + jx] != 0.0f;
            if (!any) continue;
            kvs_f16_to_f32_row(a->v + (size_t)jx * dkv + (size_t)g * d, krow, d);
            for (int r = 0; r < rep; r++) {
                float w = sc[(size_t)r * nk + jx] * inv[r];
                if (w == 0.0f) continue;
                axpy_f32(a->out + (size_t)t * dq + (size_t)(g * rep + r) * d, w, krow, d);
            }
        }
        if (a->probs)
            for (int r = 0; r < rep; r++) {
                float *pr = a->probs + ((size_t)t * a->n_head + g * rep + r) * nk;
                for (int jx = 0; jx < nk; jx++) pr[jx] = sc[(size_t)r * nk + jx] * inv[r];
            }
    }
}

bool kvs_attn_f16(struct kvs_pool *pool, const struct kvs_attn_args *a)
{
    int nth = kvs_pool_size(pool);
    float *bufs[256];
    struct attn_job j = {.a = a, .scratch = bufs};
    int rep = a->n_head / a->n_head_kv;
    if (rep > 64 || a->n_head % a->n_head_kv) return false;
    bool ok = true;
    for (int i = 0; i < nth; i++) {
        bufs[i] = malloc(((size_t)rep * (a->n_keys > 0 ? a->n_keys : 1) + (size_t)a->head_dim) * sizeof(float));
        if (!bufs[i]) ok = false;
    }
    if (ok) kvs_pool_for(pool, (int64_t)a->T * a->n_head_kv, attn_range, &j);
    for (int i = 0; i < nth; i++) free(bufs[i]);
    return ok;
}
