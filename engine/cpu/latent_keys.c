/* CPU kernels for the CommonKV press: K = C B^T with bf16 pairs and fp32 accumulation
 * (vdpbf16ps). Register blocking: up to 4 latent rows x 6 vectors of 16 outputs in zmm
 * accumulators, so each packed B vector loaded serves 4 rows and each broadcast pair 6 vectors.
 * Without __AVX512BF16__ the kernel reports itself unavailable and the press keeps its fp32 BLAS
 * path. Depends on kvs.h and the compiler's intrinsics only. */
#include "latent_keys.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) || defined(__AVX512F__) || defined(__AVX512VNNI__)
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

/* ---------------------------------------------------------------- int8 keys */

bool kvs_ckv_i8_available(void)
{
#ifdef __AVX512VNNI__
    return true;
#else
    return false;
#endif
}

void kvs_ckv_i8_free(struct kvs_ckv_i8_mat *m)
{
    free(m->w);
    free(m->scale);
    free(m->corr);
    free(m->ginv);
    memset(m, 0, sizeof *m);
}

enum kvs_status kvs_ckv_i8_pack(struct kvs_ckv_i8_mat *m, const float *B, int n_out, int k, int ldb, const float *g)
{
    memset(m, 0, sizeof *m);
    /* int32 accumulators: 255 * 127 * k_pad must stay below 2^31 */
    if (n_out <= 0 || k <= 0 || ldb < k || n_out > (1 << 20) || k > (1 << 16)) return KVS_ERR_ARG;
    int k_pad = (k + 3) & ~3, n_pad = (n_out + 15) & ~15, nq = k_pad / 4;
    size_t bytes = (size_t)nq * n_pad * 4;
    m->w = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    m->scale = calloc((size_t)n_pad, sizeof(float));
    m->corr = calloc((size_t)n_pad, sizeof(int32_t));
    m->ginv = malloc((size_t)k * sizeof(float));
    float *gv = malloc((size_t)k * sizeof(float));
    if (!m->w || !m->scale || !m->corr || !m->ginv || !gv) {
        free(gv);
        kvs_ckv_i8_free(m);
        return KVS_ERR_NOMEM;
    }
    memset(m->w, 0, bytes);
    for (int i = 0; i < k; i++) {
        float gi = g ? g[i] : 1.0f;
        bool ok = gi > 0 && isfinite(gi) && isfinite(1.0f / gi);
        gv[i] = ok ? gi : 0.0f;
        m->ginv[i] = ok ? 1.0f / gi : 0.0f;
    }
    int nvec = n_pad / 16;
    for (int out = 0; out < n_out; out++) {
        const float *row = B + (size_t)out * ldb;
        float mx = 0;
        for (int i = 0; i < k; i++) mx = fmaxf(mx, fabsf(row[i] * gv[i]));
        float sc = mx / 127.0f, inv = sc > 0 ? 1.0f / sc : 0.0f;
        m->scale[out] = sc;
        int v = out / 16, o = out % 16, v0 = v / KVS_CKV_BF16_NV * KVS_CKV_BF16_NV;
        int nv = KVS_MIN(KVS_CKV_BF16_NV, nvec - v0);
        int8_t *panel = m->w + (size_t)nq * v0 * 64;
        int32_t sum = 0;
        for (int i = 0; i < k; i++) {
            int qv = (int)lrintf(row[i] * gv[i] * inv);
            qv = qv > 127 ? 127 : qv < -127 ? -127 : qv;
            panel[(((size_t)(i / 4) * nv + (v - v0)) * 16 + o) * 4 + i % 4] = (int8_t)qv;
            sum += qv;
        }
        m->corr[out] = 128 * sum;
    }
    free(gv);
    m->n_out = n_out;
    m->k = k;
    m->k_pad = k_pad;
    m->n_out_pad = n_pad;
    return KVS_OK;
}

void kvs_ckv_i8_rows(const struct kvs_ckv_i8_mat *m, const float *x, int rows, int ldx, uint8_t *dst, float *scale)
{
    int k = m->k, kp = m->k_pad;
    for (int r = 0; r < rows; r++) {
        const float *s = x + (size_t)r * ldx;
        uint8_t *d = dst + (size_t)r * kp;
        float mx = 0;
        int i = 0;
#ifdef __AVX512F__
        __m512 vm = _mm512_setzero_ps();
        for (; i + 16 <= k; i += 16)
            vm = _mm512_max_ps(vm, _mm512_abs_ps(_mm512_mul_ps(_mm512_loadu_ps(s + i), _mm512_loadu_ps(m->ginv + i))));
        mx = _mm512_reduce_max_ps(vm);
#endif
        for (; i < k; i++) mx = fmaxf(mx, fabsf(s[i] * m->ginv[i]));
        float sc = mx / 127.0f, inv = sc > 0 ? 1.0f / sc : 0.0f;
        scale[r] = sc;
        i = 0;
#ifdef __AVX512F__
        __m512 vi = _mm512_set1_ps(inv);
        for (; i + 16 <= k; i += 16) {
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(s + i), _mm512_loadu_ps(m->ginv + i)), vi);
            __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(128)); /* nearest even */
            _mm_storeu_si128((__m128i *)(d + i), _mm512_cvtepi32_epi8(q));
        }
#endif
        for (; i < k; i++) d[i] = (uint8_t)(lrintf(s[i] * m->ginv[i] * inv) + 128);
        for (; i < kp; i++) d[i] = 128;
    }
}

#ifdef __AVX512VNNI__
/* vpdpbusd through asm: GCC 12 keeps the intrinsic's accumulators on the stack (copying each one
 * in and out of a register every step, half the speed); "+v" pins them in registers. */
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))

static inline __attribute__((always_inline)) void micro8(const uint8_t *a, int lda, const int8_t *w, int nq,
                                                         const int mr, const int nv, float *out, int ldo, int n_valid,
                                                         const float *ascale, const float *bscale, const int32_t *corr)
{
    __m512i acc[MR][KVS_CKV_BF16_NV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_si512();
    for (int p = 0; p < nq; p++) {
        const int8_t *wp = w + (size_t)p * nv * 64;
        __m512i ai[MR];
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            int32_t quad; /* memcpy: the rows are bytes */
            memcpy(&quad, a + (size_t)i * lda + 4 * p, sizeof quad);
            ai[i] = _mm512_set1_epi32(quad);
        }
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) {
            __m512i b = _mm512_load_si512(wp + v * 64);
#pragma GCC unroll 4
            for (int i = 0; i < mr; i++) DPBUSD(acc[i][v], ai[i], b);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
        __m512 sa = _mm512_set1_ps(ascale[i]);
#pragma GCC unroll 6
        for (int v = 0; v < nv; v++) {
            __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][v], _mm512_loadu_si512(corr + 16 * v)));
            f = _mm512_mul_ps(f, _mm512_mul_ps(sa, _mm512_loadu_ps(bscale + 16 * v)));
            int left = n_valid - 16 * v;
            float *o = out + (size_t)i * ldo + 16 * v;
            if (left >= 16) _mm512_storeu_ps(o, f);
            else if (left > 0) _mm512_mask_storeu_ps(o, (__mmask16)((1u << left) - 1), f);
        }
    }
}

#define MICRO8_NV(mr_, nv_)                                                                        \
    case nv_:                                                                                      \
        micro8(a, lda, w, nq, mr_, nv_, out, ldo, n_valid, ascale, bscale, corr);                  \
        break
#define MICRO8_MR(mr_)                                                                             \
    case mr_:                                                                                      \
        switch (nv) {                                                                              \
            MICRO8_NV(mr_, 1); MICRO8_NV(mr_, 2); MICRO8_NV(mr_, 3);                                \
            MICRO8_NV(mr_, 4); MICRO8_NV(mr_, 5); MICRO8_NV(mr_, 6);                                \
        }                                                                                          \
        break

static void micro8_any(const uint8_t *a, int lda, const int8_t *w, int nq, int mr, int nv, float *out, int ldo,
                       int n_valid, const float *ascale, const float *bscale, const int32_t *corr)
{
    switch (mr) {
        MICRO8_MR(1);
        MICRO8_MR(2);
        MICRO8_MR(3);
        MICRO8_MR(4);
    }
}
#endif

bool kvs_ckv_i8_gemm(const struct kvs_ckv_i8_mat *m, const uint8_t *a, const float *ascale, int rows, float *out,
                     int ldo)
{
#ifdef __AVX512VNNI__
    int nq = m->k_pad / 4, lda = m->k_pad, nvec = m->n_out_pad / 16;
    for (int v0 = 0; v0 < nvec; v0 += KVS_CKV_BF16_NV) {
        int nv = KVS_MIN(KVS_CKV_BF16_NV, nvec - v0);
        const int8_t *w = m->w + (size_t)nq * v0 * 64;
        int n_valid = KVS_MIN(nv * 16, m->n_out - v0 * 16);
        for (int r0 = 0; r0 < rows; r0 += MR)
            micro8_any(a + (size_t)r0 * lda, lda, w, nq, KVS_MIN(MR, rows - r0), nv, out + (size_t)r0 * ldo + v0 * 16,
                       ldo, n_valid, ascale + r0, m->scale + v0 * 16, m->corr + v0 * 16);
    }
    return true;
#else
    (void)m; (void)a; (void)ascale; (void)rows; (void)out; (void)ldo;
    return false;
#endif
}

/* ---------------------------------------------------------------- fused decode pieces */

static void rope_row_scalar(const float *c, int half, bool neox, float *x, int n_heads)
{
    int d = 2 * half;
    for (int h = 0; h < n_heads; h++) {
        float *hx = x + (size_t)h * d;
        for (int i = 0; i < half; i++) {
            int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            float cs = c[2 * i], sn = c[2 * i + 1], x0 = hx[a], x1 = hx[b];
            hx[a] = x0 * cs - x1 * sn;
            hx[b] = x0 * sn + x1 * cs;
        }
    }
}

void kvs_ckv_rope_rows(const float *cs, int half, bool neox, float *x, int rows, int ldx, int n_heads,
                       const int32_t *pos)
{
    int d = 2 * half;
    for (int row = 0; row < rows; row++) {
        const float *c = cs + (size_t)pos[row] * half * 2;
        float *xr = x + (size_t)row * ldx;
#ifdef __AVX512F__
        if (!neox && d % 16 == 0) {
            /* 16 dims = 8 pairs; the table's 16 floats for them are (cos, sin) x 8 */
            const __m512i ev = _mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14);
            const __m512i od = _mm512_setr_epi32(1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15);
            const __m512 sg = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
            for (int v = 0; v < d / 16; v++) {
                __m512 t = _mm512_loadu_ps(c + 16 * v);
                __m512 cd = _mm512_permutexvar_ps(ev, t), sd = _mm512_mul_ps(_mm512_permutexvar_ps(od, t), sg);
                for (int h = 0; h < n_heads; h++) {
                    float *p = xr + (size_t)h * d + 16 * v;
                    __m512 a = _mm512_loadu_ps(p), sw = _mm512_permute_ps(a, 0xB1); /* swap within pairs */
                    _mm512_storeu_ps(p, _mm512_fmadd_ps(a, cd, _mm512_mul_ps(sw, sd)));
                }
            }
            continue;
        }
        if (neox && half % 16 == 0) {
            const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            for (int v = 0; v < half / 16; v++) {
                __m512 t0 = _mm512_loadu_ps(c + 32 * v), t1 = _mm512_loadu_ps(c + 32 * v + 16);
                __m512 co = _mm512_permutex2var_ps(t0, ev, t1), sn = _mm512_permutex2var_ps(t0, od, t1);
                for (int h = 0; h < n_heads; h++) {
                    float *lo = xr + (size_t)h * d + 16 * v, *hi = lo + half;
                    __m512 a = _mm512_loadu_ps(lo), b = _mm512_loadu_ps(hi);
                    _mm512_storeu_ps(lo, _mm512_fmsub_ps(a, co, _mm512_mul_ps(b, sn)));
                    _mm512_storeu_ps(hi, _mm512_fmadd_ps(a, sn, _mm512_mul_ps(b, co)));
                }
            }
            continue;
        }
#endif
        rope_row_scalar(c, half, neox, xr, n_heads);
    }
}

void kvs_ckv_scores(const float *k, int rows, int ldk, const float *q, int nq, int ldq, int d, float *s, int lds)
{
    for (int t = 0; t < rows; t++) {
        const float *kt = k + (size_t)t * ldk;
        for (int i = 0; i < nq; i++) {
            const float *qi = q + (size_t)i * ldq;
            int x = 0;
            float acc = 0;
#ifdef __AVX512F__
            __m512 va = _mm512_setzero_ps();
            for (; x + 16 <= d; x += 16) va = _mm512_fmadd_ps(_mm512_loadu_ps(qi + x), _mm512_loadu_ps(kt + x), va);
            acc = _mm512_reduce_add_ps(va);
#endif
            for (; x < d; x++) acc += qi[x] * kt[x];
            s[(size_t)i * lds + t] = acc;
        }
    }
}

void kvs_ckv_accum(float *y, const float *p, const float *c, int rows, int ldc, int r)
{
    int j = 0;
#ifdef __AVX512F__
    /* blocks of 8 vectors held in registers over all rows; the last block masked */
    for (; j < r; j += 128) {
        __mmask16 mk[8];
        __m512 acc[8];
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) {
            int left = r - j - 16 * v;
            mk[v] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
            acc[v] = _mm512_maskz_loadu_ps(mk[v], y + j + 16 * v);
        }
        for (int t = 0; t < rows; t++) {
            if (p[t] == 0.0f) continue;
            __m512 bp = _mm512_set1_ps(p[t]);
            const float *ct = c + (size_t)t * ldc + j;
#pragma GCC unroll 8
            for (int v = 0; v < 8; v++) acc[v] = _mm512_fmadd_ps(bp, _mm512_maskz_loadu_ps(mk[v], ct + 16 * v), acc[v]);
        }
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) _mm512_mask_storeu_ps(y + j + 16 * v, mk[v], acc[v]);
    }
#endif
    for (; j < r; j++) {
        float acc = y[j];
        for (int t = 0; t < rows; t++) acc += p[t] * c[(size_t)t * ldc + j];
        y[j] = acc;
    }
}
