/* SIMD dot kernels for kvs_vec_dot: quantized weight rows against the int8 activations that
 * kvs_quant_prepare builds (integer products per block, fp32 accumulation), and fp32/fp16/bf16
 * rows against fp32. AVX2+FMA, with AVX512-VNNI (256-bit) for the int8 products when the build
 * targets it. Without AVX2 every entry reports "no kernel" and quant.c's scalar code runs.
 * Depends on libc and compiler intrinsics only. */
#include "quant_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <math.h>

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define KVS_VNNI 1
#endif

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float ldh(const uint8_t *p)
{
    return _cvtsh_ss(kvs_rd16(p));
}

/* Sum of u[i]*s[i] over 32 unsigned (u <= 128 where products may saturate otherwise) and signed
 * bytes, as 8 int32 lanes. */
static inline __m256i dot_us8(__m256i u, __m256i s)
{
#ifdef KVS_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* 32 nibbles of 16 bytes: low nibbles are elements 0..15, high nibbles 16..31. */
static inline __m256i unpack_nibbles(const uint8_t *p)
{
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    __m128i m = _mm_set1_epi8(0xF);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

/* The 32 fifth bits of q5 blocks as bytes 0x10 or 0. */
static inline __m256i q5_high_bits(const uint8_t *qhp)
{
    uint32_t qh = kvs_rd32(qhp);
    /* byte j picks the qh byte j/8 and tests bit j%8 */
    __m256i v = _mm256_set1_epi32((int)qh);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                           0x0101010101010101LL, 0x0000000000000000LL);
    v = _mm256_shuffle_epi8(v, shuf);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

static float dot_q8_0(const uint8_t *b, const struct kvs_q8a *a, int64_t nb, int off, int bb)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const uint8_t *b1 = b + bb;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(b + off));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(b1 + off));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)a[i + 1].qs);
        __m256i p0 = dot_us8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        __m256i p1 = dot_us8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(ldh(b) * a[i].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(ldh(b1) * a[i + 1].d), _mm256_cvtepi32_ps(p1), acc1);
        b += 2 * bb;
    }
    for (; i < nb; i++) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(b + off));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i p0 = dot_us8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(ldh(b) * a[i].d), _mm256_cvtepi32_ps(p0), acc0);
        b += bb;
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

/* q4_1 (HAS_MIN) and q4_0 (offset 8 folded in through the activation sums). */
static float dot_q4(const uint8_t *b, const struct kvs_q8a *a, int64_t nb, bool has_min)
{
    const int off = has_min ? 4 : 2, bb = has_min ? BB_Q4_1 : BB_Q4_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float accm = 0;
    int64_t i = 0;
    for (; i + 1 < nb; i += 2) {
        const uint8_t *b1 = b + bb;
        __m256i p0 = dot_us8(unpack_nibbles(b + off), _mm256_loadu_si256((const __m256i *)a[i].qs));
        __m256i p1 = dot_us8(unpack_nibbles(b1 + off), _mm256_loadu_si256((const __m256i *)a[i + 1].qs));
        float d0 = ldh(b), d1 = ldh(b1);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[i].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a[i + 1].d), _mm256_cvtepi32_ps(p1), acc1);
        if (has_min) accm += ldh(b + 2) * a[i].s + ldh(b1 + 2) * a[i + 1].s;
        else accm -= 8.0f * (d0 * a[i].s + d1 * a[i + 1].s);
        b += 2 * bb;
    }
    for (; i < nb; i++) {
        __m256i p0 = dot_us8(unpack_nibbles(b + off), _mm256_loadu_si256((const __m256i *)a[i].qs));
        float d0 = ldh(b);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[i].d), _mm256_cvtepi32_ps(p0), acc0);
        if (has_min) accm += ldh(b + 2) * a[i].s;
        else accm -= 8.0f * d0 * a[i].s;
        b += bb;
    }
    return hsum8(_mm256_add_ps(acc0, acc1)) + accm;
}

static float dot_q5(const uint8_t *b, const struct kvs_q8a *a, int64_t nb, bool has_min)
{
    const int qh_off = has_min ? 4 : 2, bb = has_min ? BB_Q5_1 : BB_Q5_0;
    __m256 acc = _mm256_setzero_ps();
    float accm = 0;
    for (int64_t i = 0; i < nb; i++, b += bb) {
        __m256i q = _mm256_or_si256(unpack_nibbles(b + qh_off + 4), q5_high_bits(b + qh_off));
        __m256i p = dot_us8(q, _mm256_loadu_si256((const __m256i *)a[i].qs));
        float d = ldh(b);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a[i].d), _mm256_cvtepi32_ps(p), acc);
        if (has_min) accm += ldh(b + 2) * a[i].s;
        else accm -= 16.0f * d * a[i].s;
    }
    return hsum8(acc) + accm;
}

static float dot_q4_k(const uint8_t *b, const struct kvs_q8k *a, int64_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    float accm = 0;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < nb; i++, b += BB_Q4_K, a++) {
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) kvs_q4k_scale_min(j, b + 4, &sc[j], &mn[j]);
        int summ = 0;
        for (int j = 0; j < 8; j++) summ += mn[j] * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
        __m256i sumi = _mm256_setzero_si256();
        const uint8_t *qs = b + 16;
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(a->qs + 64 * c));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(a->qs + 64 * c + 32));
            __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_set1_epi16(sc[2 * c]));
            __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * ldh(b)), _mm256_cvtepi32_ps(sumi), acc);
        accm -= a->d * ldh(b + 2) * (float)summ;
    }
    return hsum8(acc) + accm;
}

/* The 128 six-bit values of half H of a Q6_K block B as bytes 0..63 in Q[0..3] (32 each): low
 * nibbles from ql, the two high bits from qh. Shared by the dot product and the dequantizer. */
static inline void q6k_unpack_half(const uint8_t *b, int h, __m256i q[4])
{
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(0x30);
    const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
    __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
    __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
    __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
    q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m3));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m3));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m3));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m3));
}

static float dot_q6_k(const uint8_t *b, const struct kvs_q8k *a, int64_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, b += BB_Q6_K, a++) {
        const int8_t *sc = (const int8_t *)(b + 192);
        int sumb = 0; /* sum of scale * bsum, for the -32 offset */
        for (int j = 0; j < 16; j++) sumb += sc[j] * a->bsums[j];
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const int8_t *s = sc + 8 * h, *x = a->qs + 128 * h;
            __m256i q[4];
            q6k_unpack_half(b, h, q);
            for (int k = 0; k < 4; k++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * k));
                __m256i p16 = _mm256_maddubs_epi16(q[k], xv); /* 0..63 x int8: no saturation */
                __m256i scv = _mm256_set_m128i(_mm_set1_epi16(s[2 * k + 1]), _mm_set1_epi16(s[2 * k]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, scv));
            }
        }
        __m256i off = _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, 32 * sumb);
        sumi = _mm256_sub_epi32(sumi, off);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * ldh(b + 208)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

static float dot_f32(const uint8_t *b, const float *x, int64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)(b + 4 * i)), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)(b + 4 * i + 32)), _mm256_loadu_ps(x + i + 8), acc1);
    }
    float r = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        float w;
        memcpy(&w, b + 4 * i, 4);
        r += w * x[i];
    }
    return r;
}

static float dot_f16(const uint8_t *b, const float *x, int64_t n, bool bf16)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i h0 = _mm_loadu_si128((const __m128i *)(b + 2 * i));
        __m128i h1 = _mm_loadu_si128((const __m128i *)(b + 2 * i + 16));
        __m256 w0, w1;
        if (bf16) {
            w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h0), 16));
            w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h1), 16));
        } else {
            w0 = _mm256_cvtph_ps(h0);
            w1 = _mm256_cvtph_ps(h1);
        }
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
    }
    float r = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) {
        uint16_t h = kvs_rd16(b + 2 * i);
        r += (bf16 ? kvs_bf16_to_fp32(h) : _cvtsh_ss(h)) * x[i];
    }
    return r;
}

/* ---- activation quantization: x * (127 / max|x|) rounded to nearest even, as quant.c ---- */

static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline __m256 absf(__m256 v)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

static inline int hsum8i(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* max_ps drops a NaN operand, so a NaN activation would vanish into a finite scale: look for one
 * separately and let the block's scale carry it (NaN in, NaN out, as the scalar path). */
static inline bool has_nan(const float *x, int n)
{
    __m256 u = _mm256_setzero_ps();
    for (int k = 0; k < n; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        u = _mm256_or_ps(u, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    return _mm256_movemask_ps(u) != 0;
}

/* 32 floats scaled by ID to 32 int8 (in order) at DST; the int32 values go to Q[4]. */
static inline void round32(const float *x, __m256 id, int8_t *dst, __m256i q[4])
{
    const __m256i lim = _mm256_set1_epi32(127);
    for (int k = 0; k < 4; k++) {
        q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id));
        q[k] = _mm256_max_epi32(_mm256_min_epi32(q[k], lim), _mm256_sub_epi32(_mm256_setzero_si256(), lim));
    }
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, p);
}

bool kvs_simd_prepare(uint32_t atype, const float *x, void *dst, int64_t nb)
{
    __m256i q[4];
    if (atype == KVS_GGML_Q8_0) {
        struct kvs_q8a *a = dst;
        for (int64_t i = 0; i < nb; i++, x += QK32) {
            __m256 m = _mm256_max_ps(_mm256_max_ps(absf(_mm256_loadu_ps(x)), absf(_mm256_loadu_ps(x + 8))),
                                     _mm256_max_ps(absf(_mm256_loadu_ps(x + 16)), absf(_mm256_loadu_ps(x + 24))));
            float amax = hmax8(m);
            float d = amax / 127.0f, id = d != 0 ? 127.0f / amax : 0;
            if (has_nan(x, QK32)) d = NAN;
            round32(x, _mm256_set1_ps(id), a[i].qs, q);
            int sum = hsum8i(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
            a[i].d = d;
            a[i].s = d * (float)sum;
        }
        return true;
    }
    if (atype == KVS_GGML_Q8_K) {
        struct kvs_q8k *a = dst;
        for (int64_t i = 0; i < nb; i++, x += QKK) {
            __m256 m = _mm256_setzero_ps();
            for (int k = 0; k < QKK; k += 8) m = _mm256_max_ps(m, absf(_mm256_loadu_ps(x + k)));
            float amax = hmax8(m);
            float d = amax / 127.0f, id = d != 0 ? 127.0f / amax : 0;
            __m256 idv = _mm256_set1_ps(id);
            for (int c = 0; c < QKK / 32; c++) {
                round32(x + 32 * c, idv, a[i].qs + 32 * c, q);
                a[i].bsums[2 * c] = (int16_t)hsum8i(_mm256_add_epi32(q[0], q[1]));
                a[i].bsums[2 * c + 1] = (int16_t)hsum8i(_mm256_add_epi32(q[2], q[3]));
            }
            a[i].d = has_nan(x, QKK) ? NAN : d;
        }
        return true;
    }
    return false;
}

/* ---- dequantization: the same operations in the same order as quant.c (a multiply, then an
 * add or subtract, never fused), so the results are bit-identical ---- */

/* Keeps the compiler from contracting the multiply before it into a fused multiply-add. */
#define NO_FMA(v) __asm__("" : "+x"(v))

/* 32 int8 quants Q (element order) to y = q * D [+ M | - M]. */
static inline void store_q32(float *y, __m256i q, __m256 d, __m256 m, int op)
{
    __m128i h[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
    for (int k = 0; k < 4; k++) {
        __m128i part = k & 1 ? _mm_srli_si128(h[k >> 1], 8) : h[k >> 1];
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part)), d);
        if (op) {
            NO_FMA(f);
            f = op > 0 ? _mm256_add_ps(f, m) : _mm256_sub_ps(f, m);
        }
        _mm256_storeu_ps(y + 8 * k, f);
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const __m256i off = _mm256_set1_epi8(32);
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = ldh(b + 208);
    for (int h = 0; h < 2; h++) {
        __m256i q[4];
        q6k_unpack_half(b, h, q);
        for (int k = 0; k < 4; k++) {
            __m256i v = _mm256_sub_epi8(q[k], off);
            const int8_t *s = sc + 8 * h + 2 * k;
            __m128i h2[2] = {_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)};
            for (int e = 0; e < 4; e++) {
                __m128i part = e & 1 ? _mm_srli_si128(h2[e >> 1], 8) : h2[e >> 1];
                __m256 ds = _mm256_set1_ps(d * (float)s[e >> 1]);
                _mm256_storeu_ps(y + 128 * h + 32 * k + 8 * e,
                                 _mm256_mul_ps(ds, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part))));
            }
        }
    }
}

bool kvs_simd_dequant(uint32_t type, const void *src, float *y, int64_t n)
{
    const uint8_t *b = src;
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    switch (type) {
    case KVS_GGML_F16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 2 * i))));
        for (; i < n; i++) y[i] = _cvtsh_ss(kvs_rd16(b + 2 * i));
        return true;
    case KVS_GGML_BF16:
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + 2 * i)));
            _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < n; i++) y[i] = kvs_bf16_to_fp32(kvs_rd16(b + 2 * i));
        return true;
    case KVS_GGML_Q8_0:
    case KVS_GGML_Q8_1: {
        int off = type == KVS_GGML_Q8_0 ? 2 : 4, bb = type == KVS_GGML_Q8_0 ? BB_Q8_0 : BB_Q8_1;
        for (; i < n; i += QK32, b += bb)
            store_q32(y + i, _mm256_loadu_si256((const __m256i *)(b + off)), _mm256_set1_ps(ldh(b)), zero, 0);
        return true;
    }
    case KVS_GGML_Q4_0:
        for (; i < n; i += QK32, b += BB_Q4_0)
            store_q32(y + i, _mm256_sub_epi8(unpack_nibbles(b + 2), _mm256_set1_epi8(8)), _mm256_set1_ps(ldh(b)),
                      zero, 0);
        return true;
    case KVS_GGML_Q4_1:
        for (; i < n; i += QK32, b += BB_Q4_1)
            store_q32(y + i, unpack_nibbles(b + 4), _mm256_set1_ps(ldh(b)), _mm256_set1_ps(ldh(b + 2)), 1);
        return true;
    case KVS_GGML_Q5_0:
        for (; i < n; i += QK32, b += BB_Q5_0) {
            __m256i q = _mm256_or_si256(unpack_nibbles(b + 6), q5_high_bits(b + 2));
            store_q32(y + i, _mm256_sub_epi8(q, _mm256_set1_epi8(16)), _mm256_set1_ps(ldh(b)), zero, 0);
        }
        return true;
    case KVS_GGML_Q5_1:
        for (; i < n; i += QK32, b += BB_Q5_1) {
            __m256i q = _mm256_or_si256(unpack_nibbles(b + 8), q5_high_bits(b + 4));
            store_q32(y + i, q, _mm256_set1_ps(ldh(b)), _mm256_set1_ps(ldh(b + 2)), 1);
        }
        return true;
    case KVS_GGML_Q4_K: {
        const __m256i m4 = _mm256_set1_epi8(0xF);
        for (; i < n; i += QKK, b += BB_Q4_K) {
            float d = ldh(b), dmin = ldh(b + 2);
            for (int c = 0; c < 4; c++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * c));
                for (int half = 0; half < 2; half++) {
                    uint8_t sc, m;
                    kvs_q4k_scale_min(2 * c + half, b + 4, &sc, &m);
                    __m256i v = half ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
                    store_q32(y + i + 64 * c + 32 * half, v, _mm256_set1_ps(d * (float)sc),
                              _mm256_set1_ps(dmin * (float)m), -1);
                }
            }
        }
        return true;
    }
    case KVS_GGML_Q6_K:
        for (; i < n; i += QKK, b += BB_Q6_K) deq_q6_k(b, y + i);
        return true;
    }
    return false;
}

bool kvs_simd_dot(uint32_t wtype, const void *wrow, const void *act, int64_t n, float *out)
{
    const uint8_t *b = wrow;
    switch (wtype) {
    case KVS_GGML_Q8_0: *out = dot_q8_0(b, act, n / QK32, 2, BB_Q8_0); return true;
    case KVS_GGML_Q8_1: *out = dot_q8_0(b, act, n / QK32, 4, BB_Q8_1); return true;
    case KVS_GGML_Q4_0: *out = dot_q4(b, act, n / QK32, false); return true;
    case KVS_GGML_Q4_1: *out = dot_q4(b, act, n / QK32, true); return true;
    case KVS_GGML_Q5_0: *out = dot_q5(b, act, n / QK32, false); return true;
    case KVS_GGML_Q5_1: *out = dot_q5(b, act, n / QK32, true); return true;
    case KVS_GGML_Q4_K: *out = dot_q4_k(b, act, n / QKK); return true;
    case KVS_GGML_Q6_K: *out = dot_q6_k(b, act, n / QKK); return true;
    case KVS_GGML_F32: *out = dot_f32(b, act, n); return true;
    case KVS_GGML_F16: *out = dot_f16(b, act, n, false); return true;
    case KVS_GGML_BF16: *out = dot_f16(b, act, n, true); return true;
    }
    return false;
}

const char *kvs_simd_level(void)
{
#ifdef KVS_VNNI
    return "avx512-vnni";
#else
    return "avx2";
#endif
}

#else /* no AVX2: the scalar kernels in quant.c do all the work */

bool kvs_simd_prepare(uint32_t atype, const float *x, void *dst, int64_t nb)
{
    (void)atype; (void)x; (void)dst; (void)nb;
    return false;
}

bool kvs_simd_dequant(uint32_t type, const void *src, float *y, int64_t n)
{
    (void)type; (void)src; (void)y; (void)n;
    return false;
}

bool kvs_simd_dot(uint32_t wtype, const void *wrow, const void *act, int64_t n, float *out)
{
    (void)wtype; (void)wrow; (void)act; (void)n; (void)out;
    return false;
}

const char *kvs_simd_level(void)
{
    return "scalar";
}

#endif
