/* Tensor element types: ggml block layouts, fp16/bf16 conversions, dequantizers (bit-exact with
 * the ggml/gguf-py reference formulas), quantizers (round-to-nearest, used by the test-model
 * writer and cache quantization), and the portable dot kernels behind kvs_vec_dot.
 * SIMD kernels live in quant_simd.c. Depends on libc only; never prints. */
#include "quant_internal.h"

#include <math.h>
#include <stdlib.h>

/* The dequantizers must round exactly as the reference (separate multiply and add, never a
 * fused multiply-add), so contraction is off in this file. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---- types ---- */

uint32_t kvs_type_block_elems(uint32_t type)
{
    switch (type) {
    case KVS_GGML_F32: case KVS_GGML_F16: case KVS_GGML_BF16: return 1;
    case KVS_GGML_Q4_0: case KVS_GGML_Q4_1: case KVS_GGML_Q5_0: case KVS_GGML_Q5_1:
    case KVS_GGML_Q8_0: case KVS_GGML_Q8_1: return QK32;
    case KVS_GGML_Q4_K: case KVS_GGML_Q6_K: return QKK;
    }
    return 0;
}

uint32_t kvs_type_block_bytes(uint32_t type)
{
    switch (type) {
    case KVS_GGML_F32: return 4;
    case KVS_GGML_F16: case KVS_GGML_BF16: return 2;
    case KVS_GGML_Q4_0: return BB_Q4_0;
    case KVS_GGML_Q4_1: return BB_Q4_1;
    case KVS_GGML_Q5_0: return BB_Q5_0;
    case KVS_GGML_Q5_1: return BB_Q5_1;
    case KVS_GGML_Q8_0: return BB_Q8_0;
    case KVS_GGML_Q8_1: return BB_Q8_1;
    case KVS_GGML_Q4_K: return BB_Q4_K;
    case KVS_GGML_Q6_K: return BB_Q6_K;
    }
    return 0;
}

bool kvs_type_supported(uint32_t type)
{
    return kvs_type_block_elems(type) != 0;
}

bool kvs_type_row_bytes(uint32_t type, uint64_t n, uint64_t *out)
{
    uint32_t be = kvs_type_block_elems(type);
    if (be == 0 || n % be != 0) return false;
    return kvs_mul_ok(n / be, kvs_type_block_bytes(type), out);
}

/* ---- fp16 / bf16 ---- */

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float kvs_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return bits_f32(f32_bits(v) | sign);
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t kvs_fp32_to_fp16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00;       /* NaN (quiet) */
    uint32_t e = x >> 23;
    if (e >= 143) return sign | 0x7c00;              /* >= 65536 or inf */
    if (e >= 113) {                                  /* normal half */
        uint32_t h = ((e - 112) << 10) | ((x & 0x7fffff) >> 13);
        uint32_t rem = x & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* carries into the exponent, up to inf */
        return sign | (uint16_t)h;
    }
    if (e < 102) return sign;                        /* below half of the smallest subnormal */
    /* subnormal half: units of 2^-24 */
    uint32_t m = (x & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e;                        /* 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return sign | (uint16_t)r;
}

float kvs_bf16_to_fp32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

static uint16_t fp32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static inline float h2f(const uint8_t *p) { return kvs_fp16_to_fp32(kvs_rd16(p)); }
static inline void f2h(uint8_t *p, float f)
{
    uint16_t h = kvs_fp32_to_fp16(f);
    memcpy(p, &h, 2);
}

/* ---- dequantization (formulas as ggml's reference: y = d*q, d*q + m, (d*sc)*q - dmin*m) ---- */

static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = h2f(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[2 + j] & 0xF) - 8);
        y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
}

static void deq_q4_1(const uint8_t *b, float *y)
{
    float d = h2f(b), m = h2f(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(b[4 + j] & 0xF) + m;
        y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
}

static void deq_q5_0(const uint8_t *b, float *y)
{
    float d = h2f(b);
    uint32_t qh = kvs_rd32(b + 2);
    for (int j = 0; j < 16; j++) {
        int lo = (b[6 + j] & 0xF) | (int)(((qh >> j) & 1) << 4);
        int hi = (b[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}

static void deq_q5_1(const uint8_t *b, float *y)
{
    float d = h2f(b), m = h2f(b + 2);
    uint32_t qh = kvs_rd32(b + 4);
    for (int j = 0; j < 16; j++) {
        int lo = (b[8 + j] & 0xF) | (int)(((qh >> j) & 1) << 4);
        int hi = (b[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)lo + m;
        y[j + 16] = d * (float)hi + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = h2f(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
}

static void deq_q8_1(const uint8_t *b, float *y)
{
    float d = h2f(b);
    const int8_t *q = (const int8_t *)(b + 4);
    for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
}

static void deq_q4_k(const uint8_t *b, float *y)
{
    float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    for (int c = 0; c < 4; c++) {
        uint8_t sc, m;
        kvs_q4k_scale_min(2 * c, scales, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        kvs_q4k_scale_min(2 * c + 1, scales, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++) y[64 * c + l] = d1 * (float)(q[32 * c + l] & 0xF) - m1;
        for (int l = 0; l < 32; l++) y[64 * c + 32 + l] = d2 * (float)(q[32 * c + l] >> 4) - m2;
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = h2f(b + 208);
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = (d * (float)sc[is + 0]) * (float)q1;
            y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
            y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
            y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

void kvs_dequant_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    if (!kvs_simd_dequant(type, src, dst, n)) kvs_dequant_row_scalar(type, src, dst, n);
}

void kvs_dequant_row_scalar(uint32_t type, const void *src, float *dst, int64_t n)
{
    const uint8_t *b = src;
    switch (type) {
    case KVS_GGML_F32: memcpy(dst, src, (size_t)n * 4); return;
    case KVS_GGML_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = h2f(b + 2 * i);
        return;
    case KVS_GGML_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = kvs_bf16_to_fp32(kvs_rd16(b + 2 * i));
        return;
    }
    void (*fn)(const uint8_t *, float *) = NULL;
    switch (type) {
    case KVS_GGML_Q4_0: fn = deq_q4_0; break;
    case KVS_GGML_Q4_1: fn = deq_q4_1; break;
    case KVS_GGML_Q5_0: fn = deq_q5_0; break;
    case KVS_GGML_Q5_1: fn = deq_q5_1; break;
    case KVS_GGML_Q8_0: fn = deq_q8_0; break;
    case KVS_GGML_Q8_1: fn = deq_q8_1; break;
    case KVS_GGML_Q4_K: fn = deq_q4_k; break;
    case KVS_GGML_Q6_K: fn = deq_q6_k; break;
    default: return;
    }
    uint32_t be = kvs_type_block_elems(type), bb = kvs_type_block_bytes(type);
    for (int64_t i = 0; i + be <= n; i += be, b += bb) fn(b, dst + i);
}

/* ---- quantization (round to nearest; no importance weighting) ---- */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
static int rnd(float v) { return (int)lrintf(v); }

/* Value of largest magnitude, with its sign. */
static float signed_absmax(const float *x, int n)
{
    float amax = 0, vmax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; vmax = x[i]; }
    }
    return vmax;
}

static void pack_nibbles(uint8_t *qs, const int *q)
{
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

static void quant_q4_0(const float *x, uint8_t *b)
{
    /* the largest magnitude maps to -8 so the full range -8..7 is used */
    float d = signed_absmax(x, 32) / -8.0f;
    f2h(b, d);
    float dq = h2f(b), id = dq != 0 ? 1.0f / dq : 0;
    int q[32];
    for (int j = 0; j < 32; j++) q[j] = clampi(rnd(x[j] * id) + 8, 0, 15);
    pack_nibbles(b + 2, q);
}

static void quant_q4_1(const float *x, uint8_t *b, int levels, bool five)
{
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; j++) {
        mn = fminf(mn, x[j]);
        mx = fmaxf(mx, x[j]);
    }
    f2h(b, (mx - mn) / (float)levels);
    f2h(b + 2, mn);
    float dq = h2f(b), mq = h2f(b + 2), id = dq != 0 ? 1.0f / dq : 0;
    int q[32];
    uint32_t qh = 0;
    for (int j = 0; j < 32; j++) {
        int v = clampi(rnd((x[j] - mq) * id), 0, levels);
        q[j] = v & 0xF;
        if (five) qh |= (uint32_t)(v >> 4) << j;
    }
    if (five) {
        memcpy(b + 4, &qh, 4);
        pack_nibbles(b + 8, q);
    } else {
        pack_nibbles(b + 4, q);
    }
}

static void quant_q5_0(const float *x, uint8_t *b)
{
    float d = signed_absmax(x, 32) / -16.0f;
    f2h(b, d);
    float dq = h2f(b), id = dq != 0 ? 1.0f / dq : 0;
    int q[32];
    uint32_t qh = 0;
    for (int j = 0; j < 32; j++) {
        int v = clampi(rnd(x[j] * id) + 16, 0, 31);
        q[j] = v & 0xF;
        qh |= (uint32_t)(v >> 4) << j;
    }
    memcpy(b + 2, &qh, 4);
    pack_nibbles(b + 6, q);
}

static void quant_q8_0(const float *x, uint8_t *b, bool with_sum)
{
    float amax = fabsf(signed_absmax(x, 32));
    f2h(b, amax / 127.0f);
    float dq = h2f(b), id = dq != 0 ? 1.0f / dq : 0;
    int8_t *q = (int8_t *)(b + (with_sum ? 4 : 2));
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        q[j] = (int8_t)clampi(rnd(x[j] * id), -127, 127);
        sum += q[j];
    }
    if (with_sum) f2h(b + 2, dq * (float)sum);
}

static void quant_q4_k(const float *x, uint8_t *b)
{
    float scale[8], minv[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *s = x + 32 * j;
        float mn = 0, mx = s[0];
        for (int l = 0; l < 32; l++) {
            mn = fminf(mn, s[l]);
            mx = fmaxf(mx, s[l]);
        }
        scale[j] = (mx - mn) / 15.0f;
        minv[j] = -mn;
        max_scale = fmaxf(max_scale, scale[j]);
        max_min = fmaxf(max_min, minv[j]);
    }
    f2h(b, max_scale / 63.0f);
    f2h(b + 2, max_min / 63.0f);
    float d = h2f(b), dmin = h2f(b + 2);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)(d > 0 ? clampi(rnd(scale[j] / d), 0, 63) : 0);
        m[j] = (uint8_t)(dmin > 0 ? clampi(rnd(minv[j] / dmin), 0, 63) : 0);
        /* a sub-block with a nonzero range must keep a nonzero scale */
        if (sc[j] == 0 && scale[j] > 0 && d > 0) sc[j] = 1;
    }
    uint8_t *scales = b + 4;
    for (int j = 0; j < 4; j++) {
        scales[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        scales[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        scales[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
    int q[256];
    for (int j = 0; j < 8; j++) {
        float ds = d * (float)sc[j], dm = dmin * (float)m[j];
        float id = ds != 0 ? 1.0f / ds : 0;
        for (int l = 0; l < 32; l++) q[32 * j + l] = clampi(rnd((x[32 * j + l] + dm) * id), 0, 15);
    }
    uint8_t *qs = b + 16;
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}

static void quant_q6_k(const float *x, uint8_t *b)
{
    float scale[16], amax = 0;
    for (int j = 0; j < 16; j++) {
        /* the largest magnitude maps to -32 so the full range -32..31 is used */
        scale[j] = signed_absmax(x + 16 * j, 16) / -32.0f;
        amax = fmaxf(amax, fabsf(scale[j]));
    }
    f2h(b + 208, amax / 127.0f);
    float d = h2f(b + 208);
    int8_t *sc = (int8_t *)(b + 192);
    for (int j = 0; j < 16; j++) sc[j] = (int8_t)(d > 0 ? clampi(rnd(scale[j] / d), -128, 127) : 0);
    int q[256];
    for (int j = 0; j < 16; j++) {
        float ds = d * (float)sc[j], id = ds != 0 ? 1.0f / ds : 0;
        for (int l = 0; l < 16; l++) q[16 * j + l] = clampi(rnd(x[16 * j + l] * id), -32, 31) + 32;
    }
    uint8_t *ql = b, *qh = b + 128;
    for (int h = 0; h < 2; h++) {
        const int *qq = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            int q1 = qq[l], q2 = qq[l + 32], q3 = qq[l + 64], q4 = qq[l + 96];
            ql[64 * h + l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            ql[64 * h + l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            qh[32 * h + l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

enum kvs_status kvs_quant_row(uint32_t type, const float *src, void *dst, int64_t n)
{
    uint32_t be = kvs_type_block_elems(type), bb = kvs_type_block_bytes(type);
    if (be == 0 || n < 0 || n % be != 0) return KVS_ERR_ARG;
    uint8_t *b = dst;
    switch (type) {
    case KVS_GGML_F32: memcpy(dst, src, (size_t)n * 4); return KVS_OK;
    case KVS_GGML_F16:
        for (int64_t i = 0; i < n; i++) f2h(b + 2 * i, src[i]);
        return KVS_OK;
    case KVS_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = fp32_to_bf16(src[i]);
            memcpy(b + 2 * i, &h, 2);
        }
        return KVS_OK;
    }
    for (int64_t i = 0; i < n; i += be, b += bb) {
        const float *x = src + i;
        switch (type) {
        case KVS_GGML_Q4_0: quant_q4_0(x, b); break;
        case KVS_GGML_Q4_1: quant_q4_1(x, b, 15, false); break;
        case KVS_GGML_Q5_0: quant_q5_0(x, b); break;
        case KVS_GGML_Q5_1: quant_q4_1(x, b, 31, true); break;
        case KVS_GGML_Q8_0: quant_q8_0(x, b, false); break;
        case KVS_GGML_Q8_1: quant_q8_0(x, b, true); break;
        case KVS_GGML_Q4_K: quant_q4_k(x, b); break;
        case KVS_GGML_Q6_K: quant_q6_k(x, b); break;
        }
    }
    return KVS_OK;
}

/* ---- activation preparation ---- */

static uint32_t act_type(uint32_t wtype)
{
    switch (wtype) {
    case KVS_GGML_Q4_0: case KVS_GGML_Q4_1: case KVS_GGML_Q5_0: case KVS_GGML_Q5_1:
    case KVS_GGML_Q8_0: case KVS_GGML_Q8_1:
        return KVS_GGML_Q8_0;
    case KVS_GGML_Q4_K: case KVS_GGML_Q6_K:
        return KVS_GGML_Q8_K;
    }
    return KVS_GGML_F32;
}

static void prep_q8a(const float *x, struct kvs_q8a *a, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        float amax = 0;
        bool nan = false; /* fmaxf drops NaN: note it so the dot products carry it on */
        for (int j = 0; j < QK32; j++) amax = fmaxf(amax, fabsf(x[j])), nan |= x[j] != x[j];
        float d = amax / 127.0f, id = d != 0 ? 127.0f / amax : 0;
        if (nan) d = NAN;
        int sum = 0;
        for (int j = 0; j < QK32; j++) {
            int v = clampi(rnd(x[j] * id), -127, 127);
            a[i].qs[j] = (int8_t)v;
            sum += v;
        }
        a[i].d = d;
        a[i].s = d * (float)sum;
    }
}

static void prep_q8k(const float *x, struct kvs_q8k *a, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QKK) {
        float amax = 0;
        bool nan = false;
        for (int j = 0; j < QKK; j++) amax = fmaxf(amax, fabsf(x[j])), nan |= x[j] != x[j];
        float d = amax / 127.0f, id = d != 0 ? 127.0f / amax : 0;
        for (int g = 0; g < QKK / 16; g++) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; j++) {
                int v = clampi(rnd(x[j] * id), -127, 127);
                a[i].qs[j] = (int8_t)v;
                sum += v;
            }
            a[i].bsums[g] = (int16_t)sum;
        }
        a[i].d = nan ? NAN : d;
    }
}

enum kvs_status kvs_quant_prepare(struct kvs_qvec *q, uint32_t wtype, const float *x, int64_t n)
{
    uint32_t at = act_type(wtype);
    size_t need;
    if (n < 0) return KVS_ERR_ARG;
    if (at == KVS_GGML_Q8_0) {
        if (n % QK32) return KVS_ERR_ARG;
        need = (size_t)(n / QK32) * sizeof(struct kvs_q8a);
    } else if (at == KVS_GGML_Q8_K) {
        if (n % QKK) return KVS_ERR_ARG;
        need = (size_t)(n / QKK) * sizeof(struct kvs_q8k);
    } else {
        need = (size_t)n * sizeof(float);
    }
    if (need > q->cap || !q->data) {
        void *p = malloc(need ? need : 1);
        if (!p) return KVS_ERR_NOMEM;
        free(q->data);
        q->data = p;
        q->cap = need;
    }
    q->type = at;
    q->n = n;
    if (at == KVS_GGML_Q8_0) {
        if (!kvs_simd_prepare(at, x, q->data, n / QK32)) prep_q8a(x, q->data, n / QK32);
    } else if (at == KVS_GGML_Q8_K) {
        if (!kvs_simd_prepare(at, x, q->data, n / QKK)) prep_q8k(x, q->data, n / QKK);
    } else {
        memcpy(q->data, x, need);
    }
    return KVS_OK;
}

void kvs_qvec_free(struct kvs_qvec *q)
{
    free(q->data);
    q->data = NULL;
    q->cap = 0;
    q->n = 0;
}

/* ---- portable dots (the oracle for quant_simd.c) ---- */

static float dot_q8a(uint32_t wtype, const uint8_t *b, const struct kvs_q8a *a, int64_t nb)
{
    float acc = 0;
    for (int64_t i = 0; i < nb; i++, a++) {
        const int8_t *x = a->qs;
        int sumi = 0;
        switch (wtype) {
        case KVS_GGML_Q4_0:
            for (int j = 0; j < 16; j++)
                sumi += ((b[2 + j] & 0xF) - 8) * x[j] + ((b[2 + j] >> 4) - 8) * x[j + 16];
            acc += h2f(b) * a->d * (float)sumi;
            break;
        case KVS_GGML_Q4_1:
            for (int j = 0; j < 16; j++) sumi += (b[4 + j] & 0xF) * x[j] + (b[4 + j] >> 4) * x[j + 16];
            acc += h2f(b) * a->d * (float)sumi + h2f(b + 2) * a->s;
            break;
        case KVS_GGML_Q5_0: {
            uint32_t qh = kvs_rd32(b + 2);
            for (int j = 0; j < 16; j++) {
                int lo = ((b[6 + j] & 0xF) | (int)(((qh >> j) & 1) << 4)) - 16;
                int hi = ((b[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16;
                sumi += lo * x[j] + hi * x[j + 16];
            }
            acc += h2f(b) * a->d * (float)sumi;
            break;
        }
        case KVS_GGML_Q5_1: {
            uint32_t qh = kvs_rd32(b + 4);
            for (int j = 0; j < 16; j++) {
                int lo = (b[8 + j] & 0xF) | (int)(((qh >> j) & 1) << 4);
                int hi = (b[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                sumi += lo * x[j] + hi * x[j + 16];
            }
            acc += h2f(b) * a->d * (float)sumi + h2f(b + 2) * a->s;
            break;
        }
        case KVS_GGML_Q8_0:
        case KVS_GGML_Q8_1: {
            const int8_t *w = (const int8_t *)(b + (wtype == KVS_GGML_Q8_0 ? 2 : 4));
            for (int j = 0; j < 32; j++) sumi += w[j] * x[j];
            acc += h2f(b) * a->d * (float)sumi;
            break;
        }
        }
        b += kvs_type_block_bytes(wtype);
    }
    return acc;
}

static float dot_q8k(uint32_t wtype, const uint8_t *b, const struct kvs_q8k *a, int64_t nb)
{
    float acc = 0;
    for (int64_t i = 0; i < nb; i++, a++) {
        const int8_t *x = a->qs;
        if (wtype == KVS_GGML_Q4_K) {
            const uint8_t *qs = b + 16;
            int sumi = 0, summ = 0;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                kvs_q4k_scale_min(j, b + 4, &sc, &m);
                const uint8_t *q = qs + 32 * (j / 2);
                int shift = (j & 1) * 4, s = 0;
                for (int l = 0; l < 32; l++) s += ((q[l] >> shift) & 0xF) * x[32 * j + l];
                sumi += sc * s;
                summ += m * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
            }
            acc += a->d * (h2f(b) * (float)sumi - h2f(b + 2) * (float)summ);
            b += BB_Q4_K;
        } else {
            const uint8_t *ql = b, *qh = b + 128;
            const int8_t *sc = (const int8_t *)(b + 192);
            int sumi = 0;
            for (int h = 0; h < 2; h++) {
                int s[8] = {0};
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    s[is + 0] += q1 * x[l];
                    s[is + 2] += q2 * x[l + 32];
                    s[is + 4] += q3 * x[l + 64];
                    s[is + 6] += q4 * x[l + 96];
                }
                for (int k = 0; k < 8; k++) sumi += sc[k] * s[k];
                x += 128;
                ql += 64;
                qh += 32;
                sc += 8;
            }
            acc += a->d * h2f(b + 208) * (float)sumi;
            b += BB_Q6_K;
        }
    }
    return acc;
}

static float dot_f(uint32_t wtype, const uint8_t *b, const float *x, int64_t n)
{
    double acc = 0;
    for (int64_t i = 0; i < n; i++) {
        float w;
        if (wtype == KVS_GGML_F32) memcpy(&w, b + 4 * i, 4);
        else if (wtype == KVS_GGML_F16) w = h2f(b + 2 * i);
        else w = kvs_bf16_to_fp32(kvs_rd16(b + 2 * i));
        acc += (double)w * x[i];
    }
    return (float)acc;
}

float kvs_vec_dot_scalar(uint32_t wtype, const void *wrow, const struct kvs_qvec *q)
{
    if (q->type != act_type(wtype)) return NAN;
    switch (q->type) {
    case KVS_GGML_Q8_0: return dot_q8a(wtype, wrow, q->data, q->n / QK32);
    case KVS_GGML_Q8_K: return dot_q8k(wtype, wrow, q->data, q->n / QKK);
    }
    if (!kvs_type_supported(wtype)) return NAN;
    return dot_f(wtype, wrow, q->data, q->n);
}

float kvs_vec_dot(uint32_t wtype, const void *wrow, const struct kvs_qvec *q)
{
    float r;
    if (q->type == act_type(wtype) && kvs_simd_dot(wtype, wrow, q->data, q->n, &r)) return r;
    return kvs_vec_dot_scalar(wtype, wrow, q);
}

const char *kvs_quant_simd(void)
{
    return kvs_simd_level();
}
