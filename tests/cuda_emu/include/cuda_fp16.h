/* Stand-in for cuda_fp16.h under host emulation: __half as its IEEE binary16 bits and software
 * conversions with round-to-nearest-even (subnormals, overflow to inf, NaN kept quiet). */
#ifndef KVS_EMU_CUDA_FP16_H
#define KVS_EMU_CUDA_FP16_H

#include <cstdint>
#include <cstring>

struct __half {
    unsigned short __x;
};

static inline float __half2float(__half h)
{
    uint32_t s = (uint32_t)(h.__x & 0x8000u) << 16, e = (h.__x >> 10) & 0x1fu, m = h.__x & 0x3ffu, bits;
    if (e == 0x1f) {
        bits = s | 0x7f800000u | (m << 13); /* inf or NaN (payload kept) */
    } else if (e) {
        bits = s | ((e + 112u) << 23) | (m << 13);
    } else if (!m) {
        bits = s;
    } else { /* subnormal: normalise */
        int sh = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            sh++;
        }
        bits = s | ((uint32_t)(113 - sh) << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline __half __float2half_rn(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t s = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    __half h;
    if (ax > 0x7f800000u) { /* NaN: quiet, keep the top of the payload */
        h.__x = (unsigned short)(s | 0x7e00u | ((ax >> 13) & 0x3ffu));
        return h;
    }
    if (ax >= 0x477ff000u) { /* rounds to >= 65520: infinity */
        h.__x = (unsigned short)(s | 0x7c00u);
        return h;
    }
    if (ax >= 0x38800000u) { /* normal half: drop 13 bits, round to nearest even */
        uint32_t r = ax - 0x38000000u; /* rebias 127 -> 15 */
        r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
        h.__x = (unsigned short)(s | r);
        return h;
    }
    if (ax < 0x33000000u) { /* below half the smallest subnormal (2^-25): zero */
        h.__x = (unsigned short)s;
        return h;
    }
    /* subnormal half q * 2^-24 = m * 2^(e-150): q = m >> (126 - e), rounded to nearest even */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) q++;
    h.__x = (unsigned short)(s | q);
    return h;
}
static inline __half __float2half(float f) { return __float2half_rn(f); }

#endif
