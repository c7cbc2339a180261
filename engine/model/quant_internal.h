/* Private to engine/quant*.c: the ggml block layouts (byte offsets), the activation block formats
 * kvs_quant_prepare produces, and the SIMD dot kernels in quant_simd.c. Nothing outside
 * engine/quant*.c may include this header. */
#ifndef KVS_QUANT_INTERNAL_H
#define KVS_QUANT_INTERNAL_H

#include <string.h>

#include "gguf.h"
#include "quant.h"

#define QK32 32  /* elements per block of the 32-element family */
#define QKK 256  /* elements per K-quant super-block */

/* ggml block sizes in bytes (all fields little-endian, fp16 scales):
 *   q4_0: d, qs[16]                 q4_1: d, m, qs[16]
 *   q5_0: d, qh[4], qs[16]          q5_1: d, m, qh[4], qs[16]
 *   q8_0: d, qs[32] (int8)          q8_1: d, s, qs[32] (int8)
 *   q4_k: d, dmin, scales[12], qs[128]
 *   q6_k: ql[128], qh[64], scales[16] (int8), d */
#define BB_Q4_0 18
#define BB_Q4_1 20
#define BB_Q5_0 22
#define BB_Q5_1 24
#define BB_Q8_0 34
#define BB_Q8_1 36
#define BB_Q4_K 144
#define BB_Q6_K 210

/* Activation blocks. fp32 scales (not fp16 as ggml's q8_0/q8_1): the activation is quantized
 * once per matrix product, so the extra bytes cost nothing and the dots lose less precision. */
struct kvs_q8a {          /* 32 elements: x[i] ~ d * qs[i] */
    float d;
    float s;              /* d * sum(qs), for weight formats with a min (q4_1, q5_1) or offset */
    int8_t qs[QK32];
};
struct kvs_q8k {          /* 256 elements: x[i] ~ d * qs[i] */
    float d;
    int16_t bsums[QKK / 16]; /* sums of qs over each 16 elements */
    int8_t qs[QKK];
};

static inline uint16_t kvs_rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline uint32_t kvs_rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Q4_K 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void kvs_q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* SIMD dot kernels (quant_simd.c). Each takes NB blocks of the weight type and the matching
 * prepared activation. kvs_simd_dot returns false when no SIMD kernel exists for the type on
 * this build (the caller then uses the scalar one). */
bool kvs_simd_dot(uint32_t wtype, const void *wrow, const void *act, int64_t n, float *out);
/* Quantizes NB blocks of X into kvs_q8a (ATYPE KVS_GGML_Q8_0) or kvs_q8k (KVS_GGML_Q8_K) blocks,
 * bit-identical to the scalar code in quant.c; false when no SIMD version exists. */
bool kvs_simd_prepare(uint32_t atype, const float *x, void *dst, int64_t nb);
/* Dequantizes N elements (whole blocks), bit-identical to quant.c's scalar code; false when no
 * SIMD version exists for TYPE. */
bool kvs_simd_dequant(uint32_t type, const void *src, float *dst, int64_t n);
/* Name of the SIMD level compiled in ("avx512-vnni", "avx2", "none"). */
const char *kvs_simd_level(void);

#endif
