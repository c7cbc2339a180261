/* Device side of the KIVI-style packed codec (DESIGN.md §5 `quant`); its CPU twin is engine/cpu/quant_codec.c
 * and the bytes are the same: groups of codes packed LSB-first at 2, 4 or 8 bits, each led by its
 * fp16 scale and fp16 minimum. Rows (values, CommonKV latents) are quantized per token in channel
 * groups; key blocks per channel over T tokens. Plain per-thread functions: the kernels that use
 * them decide how threads share the work (a thread per group is the simple choice). Decoding is
 * min + scale·code as one fused multiply-add, as the CPU twin computes it. Depends on CUDA only. */
#ifndef KVS_KERNELS_QUANT_CODEC_CUH
#define KVS_KERNELS_QUANT_CODEC_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#ifdef KVS_CUDA_EMU
#include <math.h>
static inline int kvs_dev_rint(float x) { return (int)lrintf(x); }
static inline float kvs_dev_fma(float a, float b, float c) { return fmaf(a, b, c); }
#else
static __device__ __forceinline__ int kvs_dev_rint(float x) { return __float2int_rn(x); }
static __device__ __forceinline__ float kvs_dev_fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
#endif

/* Bytes of one packed row of N elements in groups of GROUP (kvs_qrow_bytes). */
static __host__ __device__ __forceinline__ uint32_t kvs_dev_qrow_bytes(uint32_t n, uint32_t bits, uint32_t group)
{
    uint32_t full = n / group, rest = n % group;
    return full * (4 + (group * bits + 7) / 8) + (rest ? 4 + (rest * bits + 7) / 8 : 0);
}

/* Bytes of one column-quantized key block of T tokens x C channels (kvs_qcol_bytes). */
static __host__ __device__ __forceinline__ uint32_t kvs_dev_qcol_bytes(uint32_t T, uint32_t C, uint32_t bits)
{
    return C * (4 + (T * bits + 7) / 8);
}

static __device__ __forceinline__ float kvs_dev_h2f(const uint8_t *p)
{
    __half h;
    unsigned short u = (unsigned short)(p[0] | (p[1] << 8));
    memcpy(&h, &u, 2);
    return __half2float(h);
}

static __device__ __forceinline__ uint32_t kvs_dev_code(const uint8_t *codes, uint32_t i, uint32_t bits)
{
    uint32_t bit = i * bits;
    return (codes[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1);
}

/* Quantizes N values STRIDE apart into HDR (fp16 scale, fp16 minimum) and CODES (zeroed here). */
static __device__ __forceinline__ void kvs_dev_qgroup_encode(const float *x, size_t stride, uint32_t n, uint32_t bits,
                                                             uint8_t *hdr, uint8_t *codes)
{
    float lo = INFINITY, hi = -INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        float v = x[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    uint32_t qmax = (1u << bits) - 1;
    __half hmin = __float2half_rn(lo);
    float fmin = __half2float(hmin);
    __half hs = __float2half_rn((hi - fmin) / (float)qmax);
    float fs = __half2float(hs);
    memcpy(hdr, &hs, 2);
    memcpy(hdr + 2, &hmin, 2);
    for (uint32_t i = 0; i < (n * bits + 7) / 8; i++) codes[i] = 0;
    float inv = fs > 0 ? 1.0f / fs : 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        int q = kvs_dev_rint((x[i * stride] - fmin) * inv);
        q = q < 0 ? 0 : q > (int)qmax ? (int)qmax : q;
        uint32_t bit = i * bits;
        codes[bit >> 3] |= (uint8_t)((uint32_t)q << (bit & 7));
    }
}

/* Packs a row of N floats (kvs_qrow_encode). */
static __device__ __forceinline__ void kvs_dev_qrow_encode(const float *x, uint32_t n, uint32_t bits, uint32_t group,
                                                           uint8_t *dst)
{
    for (uint32_t i = 0; i < n; i += group) {
        uint32_t len = n - i < group ? n - i : group;
        kvs_dev_qgroup_encode(x + i, 1, len, bits, dst, dst + 4);
        dst += 4 + (len * bits + 7) / 8;
    }
}

/* Element J of a packed row of N elements (kvs_qrow_decode's value for it). */
static __device__ __forceinline__ float kvs_dev_qrow_get(const uint8_t *src, uint32_t j, uint32_t bits,
                                                         uint32_t group)
{
    uint32_t g = j / group;
    const uint8_t *h = src + (size_t)g * (4 + (group * bits + 7) / 8);
    return kvs_dev_fma(kvs_dev_h2f(h), (float)kvs_dev_code(h + 4, j - g * group, bits), kvs_dev_h2f(h + 2));
}

/* Packs channel C's T values (stride C in X, a (T, C) block) of a key block (kvs_qcol_encode does
 * every channel). */
static __device__ __forceinline__ void kvs_dev_qcol_encode_channel(const float *x, uint32_t T, uint32_t C, uint32_t c,
                                                                   uint32_t bits, uint8_t *dst)
{
    uint32_t per = 4 + (T * bits + 7) / 8;
    kvs_dev_qgroup_encode(x + c, C, T, bits, dst + (size_t)c * per, dst + (size_t)c * per + 4);
}

/* Token T's channel C of a key block of NT tokens (kvs_qcol_decode_row's value for it). */
static __device__ __forceinline__ float kvs_dev_qcol_get(const uint8_t *src, uint32_t nt, uint32_t t, uint32_t c,
                                                         uint32_t bits)
{
    const uint8_t *h = src + (size_t)c * (4 + (nt * bits + 7) / 8);
    return kvs_dev_fma(kvs_dev_h2f(h), (float)kvs_dev_code(h + 4, t, bits), kvs_dev_h2f(h + 2));
}

#endif
