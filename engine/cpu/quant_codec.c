/* CPU twin of kernels/quant_codec.cuh (quant_codec.h): KIVI-style asymmetric quantization, rows
 * per token in channel groups (values, CommonKV latents) and token blocks per channel (keys), 2, 4
 * or 8 bits, packed LSB-first, scale and minimum in fp16. press_kv.c uses it for K/V, commonkv+quant
 * for latents. Decoding is min + scale·code as one fused multiply-add (fmaf), as the device
 * computes it, whatever the compiler's contraction setting. Depends on quant.h (fp16) only. */
#include "quant_codec.h"
#include "quant.h"

#include <math.h>
#include <string.h>

static void pack_put(uint8_t *dst, uint32_t i, uint32_t bits, uint32_t code)
{
    uint32_t bit = i * bits;
    dst[bit >> 3] |= (uint8_t)(code << (bit & 7));
}

static uint32_t pack_get(const uint8_t *src, uint32_t i, uint32_t bits)
{
    uint32_t bit = i * bits;
    return (src[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1);
}

/* The fp16 scale and minimum that lead a group, as floats. */
static void q_header(const uint8_t *h, float *s, float *mn)
{
    uint16_t hs, hm;
    memcpy(&hs, h, 2);
    memcpy(&hm, h + 2, 2);
    *s = kvs_fp16_to_fp32(hs);
    *mn = kvs_fp16_to_fp32(hm);
}

/* Quantizes n values (stride apart) into a header (scale, min) and packed codes. */
static void q_encode(const float *x, size_t stride, uint32_t n, uint32_t bits, uint8_t *hdr, uint8_t *codes)
{
    float lo = INFINITY, hi = -INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        float v = x[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    uint32_t qmax = (1u << bits) - 1;
    uint16_t hmin = kvs_fp32_to_fp16(lo);
    float fmin = kvs_fp16_to_fp32(hmin);
    float scale = (hi - fmin) / (float)qmax;
    uint16_t hs = kvs_fp32_to_fp16(scale);
    float fs = kvs_fp16_to_fp32(hs);
    memcpy(hdr, &hs, 2);
    memcpy(hdr + 2, &hmin, 2);
    memset(codes, 0, (n * bits + 7) / 8);
    float inv = fs > 0 ? 1.0f / fs : 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        float c = (x[i * stride] - fmin) * inv;
        int q = (int)lrintf(c);
        q = q < 0 ? 0 : q > (int)qmax ? (int)qmax : q;
        pack_put(codes, i, bits, (uint32_t)q);
    }
}

uint32_t kvs_qrow_bytes(uint32_t n, uint32_t bits, uint32_t group)
{
    uint32_t b = 0;
    for (uint32_t i = 0; i < n; i += group) {
        uint32_t len = n - i < group ? n - i : group;
        b += 4 + (len * bits + 7) / 8;
    }
    return b;
}

void kvs_qrow_encode(const float *x, uint32_t n, uint32_t bits, uint32_t group, uint8_t *dst)
{
    for (uint32_t i = 0; i < n; i += group) {
        uint32_t len = n - i < group ? n - i : group;
        q_encode(x + i, 1, len, bits, dst, dst + 4);
        dst += 4 + (len * bits + 7) / 8;
    }
}

void kvs_qrow_decode(const uint8_t *src, uint32_t n, uint32_t bits, uint32_t group, float *dst)
{
    for (uint32_t i = 0; i < n; i += group) {
        uint32_t len = n - i < group ? n - i : group;
        float s, mn;
        q_header(src, &s, &mn);
        const uint8_t *codes = src + 4;
        if (bits == 4) {
            for (uint32_t j = 0; j + 1 < len; j += 2) {
                uint8_t b = codes[j >> 1];
                dst[i + j] = fmaf(s, (float)(b & 15), mn);
                dst[i + j + 1] = fmaf(s, (float)(b >> 4), mn);
            }
            if (len & 1) dst[i + len - 1] = fmaf(s, (float)(codes[(len - 1) >> 1] & 15), mn);
        } else if (bits == 8) {
            for (uint32_t j = 0; j < len; j++) dst[i + j] = fmaf(s, (float)codes[j], mn);
        } else {
            for (uint32_t j = 0; j < len; j++) dst[i + j] = fmaf(s, (float)pack_get(codes, j, bits), mn);
        }
        src += 4 + (len * bits + 7) / 8;
    }
}

uint32_t kvs_qcol_bytes(uint32_t T, uint32_t C, uint32_t bits) { return C * (4 + (T * bits + 7) / 8); }

/* Tokens [t0, t1) of channel C of a key block of T tokens, STRIDE floats apart from DST. The one
 * reader of the per-channel layout: a whole block and a single token are its two loops, so they
 * give the same values by construction, and a block reads each channel's header once. Inline:
 * called out of line, decode_row's one-token calls took twice as long. */
static inline void qcol_decode_channel(const uint8_t *src, uint32_t T, uint32_t c, uint32_t bits, uint32_t t0,
                                       uint32_t t1, float *dst, size_t stride)
{
    const uint8_t *h = src + (size_t)c * (4 + (T * bits + 7) / 8);
    float s, mn;
    q_header(h, &s, &mn);
    for (uint32_t t = t0; t < t1; t++) dst[(size_t)(t - t0) * stride] = fmaf(s, (float)pack_get(h + 4, t, bits), mn);
}

void kvs_qcol_encode(const float *x, uint32_t T, uint32_t C, uint32_t bits, uint8_t *dst)
{
    uint32_t per = 4 + (T * bits + 7) / 8;
    for (uint32_t c = 0; c < C; c++) q_encode(x + c, C, T, bits, dst + (size_t)c * per, dst + (size_t)c * per + 4);
}

void kvs_qcol_decode(const uint8_t *src, uint32_t T, uint32_t C, uint32_t bits, float *dst)
{
    for (uint32_t c = 0; c < C; c++) qcol_decode_channel(src, T, c, bits, 0, T, dst + c, C);
}

void kvs_qcol_decode_row(const uint8_t *src, uint32_t T, uint32_t C, uint32_t bits, uint32_t t, float *dst)
{
    for (uint32_t c = 0; c < C; c++) qcol_decode_channel(src, T, c, bits, t, t + 1, dst + c, C);
}
