/* CPU kernels for the CommonKV press: K = C B^T with bf16 pairs and fp32 accumulation
 * (vdpbf16ps). Register blocking: up to 4 latent rows x 6 vectors of 16 outputs in zmm
 * accumulators, so each packed B vector loaded serves 4 rows and each broadcast pair 6 vectors.
 * Without __AVX512BF16__ the kernel reports itself unavailable and the press keeps its fp32 BLAS
 * path. Depends on kvs.h and the compiler's intrinsics only. */
#include "ckv_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

#define MR 4 /* rows per register block */

uint16_t kvs_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

bool kvs_ckv_bf16_available(void)
{
#ifdef __AVX512BF16__
    return true;
#else
    return false;
#endif
}

void kvs_ckv_bf16_free(struct kvs_ckv_bf16_mat *m)
{
    free(m->w);
    memset(m, 0, sizeof *m);
}

enum kvs_status kvs_ckv_bf16_pack(struct kvs_ckv_bf16_mat *m, const float *B, int n_out, int k, int ldb)
{
    memset(m, 0, sizeof *m);
    if (n_out <= 0 || k <= 0 || ldb < k || n_out > (1 << 20) || k > (1 << 20)) return KVS_ERR_ARG;
    int k_pad = (k + 1) & ~1, n_pad = (n_out + 15) & ~15, np = k_pad / 2;
    size_t bytes = (size_t)np * n_pad * 2 * sizeof(uint16_t);
    uint16_t *w = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!w) return KVS_ERR_NOMEM;
    memset(w, 0, bytes);
    int nvec = n_pad / 16;
    for (int v0 = 0; v0 < nvec; v0 += KVS_CKV_BF16_NV) {
        int nv = KVS_MIN(KVS_CKV_BF16_NV, nvec - v0);
        uint16_t *panel = w + (size_t)np * v0 * 32; /* earlier panels: np pairs x v0 vectors x 32 */
        for (int p = 0; p < np; p++)
            for (int v = 0; v < nv; v++)
                for (int o = 0; o < 16; o++) {
                    int out = (v0 + v) * 16 + o;
                    if (out >= n_out) continue;
                    uint16_t *dst = panel + ((size_t)p * nv + v) * 32 + 2 * o;
                    const float *src = B + (size_t)out * ldb + 2 * p;
                    dst[0] = kvs_f32_to_bf16(src[0]);
                    dst[1] = 2 * p + 1 < k ? kvs_f32_to_bf16(src[1]) : 0;
                }
    }
    m->w = w;
    m->n_out = n_out;
    m->k = k;
    m->k_pad = k_pad;
    m->n_out_pad = n_pad;
    return KVS_OK;
}

void kvs_ckv_bf16_rows(const struct kvs_ckv_bf16_mat *m, const float *x, int rows, int ldx, uint16_t *dst)
{
    int k = m->k, kp = m->k_pad;
    for (int i = 0; i < rows; i++) {
        const float *s = x + (size_t)i * ldx;
        uint16_t *d = dst + (size_t)i * kp;
        int j = 0;
#ifdef __AVX512BF16__
        for (; j + 32 <= k; j += 32) {
            __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + j + 16), _mm512_loadu_ps(s + j));
            _mm512_storeu_si512(d + j, (__m512i)b);
        }
#endif
        for (; j < k; j++) d[j] = kvs_f32_to_bf16(s[j]);
        if (kp > k) d[k] = 0;
    }
}

#ifdef __AVX512BF16__
/* OUT rows [0, mr) x panel outputs [0, nv*16) (N_VALID of them stored) over NP pairs. A holds mr
 * rows of bf16 pairs (leading dimension LDA pairs); W is the panel. mr and nv are compile-time
 * constants at every call site so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void micro(const uint16_t *a, int lda, const uint16_t *w, int np,
                                                        const int mr, const int nv, float *out, int ldo, int n_valid)
{
    __m512 acc[MR][KVS_CKV_BF16_NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        const uint16_t *wp = w + (size_t)p * nv * 32;
        __m512bh b[KVS_CKV_BF16_NV];
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) b[v] = (__m512bh)_mm512_load_si512(wp + v * 32);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            int32_t pair; /* memcpy: the rows are stored as uint16_t */
            memcpy(&pair, a + ((size_t)i * lda + p) * 2, sizeof pair);
            __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 6
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, b[v]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) {
            int left = n_valid - 16 * v;
            float *o = out + (size_t)i * ldo + 16 * v;
            if (left >= 16) _mm512_storeu_ps(o, acc[i][v]);
            else if (left > 0) _mm512_mask_storeu_ps(o, (__mmask16)((1u << left) - 1), acc[i][v]);
        }
}

#define MICRO_NV(mr_, nv_)                                                                \
    case nv_:                                                                             \
        micro(a, lda, w, np, mr_, nv_, out, ldo, n_valid);                                \
        break
#define MICRO_MR(mr_)                                                                     \
    case mr_:                                                                             \
        switch (nv) {                                                                     \
            MICRO_NV(mr_, 1); MICRO_NV(mr_, 2); MICRO_NV(mr_, 3);                          \
            MICRO_NV(mr_, 4); MICRO_NV(mr_, 5); MICRO_NV(mr_, 6);                          \
        }                                                                                 \
        break

static void micro_any(const uint16_t *a, int lda, const uint16_t *w, int np, int mr, int nv, float *out, int ldo,
                      int n_valid)
{
    switch (mr) {
        MICRO_MR(1);
        MICRO_MR(2);
        MICRO_MR(3);
        MICRO_MR(4);
    }
}
#endif

bool kvs_ckv_bf16_gemm(const struct kvs_ckv_bf16_mat *m, const uint16_t *a16, int rows, float *out, int ldo)
{
#ifdef __AVX512BF16__
    int np = m->k_pad / 2, lda = np, nvec = m->n_out_pad / 16;
    for (int v0 = 0; v0 < nvec; v0 += KVS_CKV_BF16_NV) {
        int nv = KVS_MIN(KVS_CKV_BF16_NV, nvec - v0);
        const uint16_t *w = m->w + (size_t)np * v0 * 32;
        int n_valid = KVS_MIN(nv * 16, m->n_out - v0 * 16);
        for (int r0 = 0; r0 < rows; r0 += MR)
            micro_any(a16 + (size_t)r0 * lda * 2, lda, w, np, KVS_MIN(MR, rows - r0), nv, out + (size_t)r0 * ldo + v0 * 16,
                      ldo, n_valid);
    }
    return true;
#else
    (void)m; (void)a16; (void)rows; (void)out; (void)ldo;
    return false;
#endif
}
