/* Stand-in for cuda_bf16.h under host emulation: __nv_bfloat16 as the top 16 bits of an IEEE
 * binary32, converted with round-to-nearest-even (NaN kept quiet). */
#ifndef KVS_EMU_CUDA_BF16_H
#define KVS_EMU_CUDA_BF16_H

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    unsigned short __x;
};

static inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t bits = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    __nv_bfloat16 h;
    if ((x & 0x7fffffffu) > 0x7f800000u) h.__x = (unsigned short)((x >> 16) | 0x40u);
    else h.__x = (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    return h;
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

#endif
