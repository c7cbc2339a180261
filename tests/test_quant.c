/* Tests for engine/model/quant.c and quant_simd.c: fp16/bf16 conversions, hand-built blocks of every
 * layout, dequant(quant(x)) error per type, and kvs_vec_dot (SIMD and scalar) against a double
 * dot of the dequantized weights. `test_quant --bench` measures ns per row instead. */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "gguf.h"
#include "harness.h"
#include "quant.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

static uint64_t rs = 0x1234567;
static uint64_t rnd64(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}
static float gauss(void)
{
    double u1 = ((rnd64() >> 11) + 0.5) / 9007199254740992.0, u2 = ((rnd64() >> 11) + 0.5) / 9007199254740992.0;
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}

static const uint32_t all_types[] = {KVS_GGML_F32, KVS_GGML_F16, KVS_GGML_BF16, KVS_GGML_Q4_0, KVS_GGML_Q4_1,
                                     KVS_GGML_Q5_0, KVS_GGML_Q5_1, KVS_GGML_Q8_0, KVS_GGML_Q8_1, KVS_GGML_Q4_K,
                                     KVS_GGML_Q6_K};

static void test_fp16(void)
{
    int bad_rt = 0, bad_ref = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kvs_fp16_to_fp32((uint16_t)h);
        uint16_t back = kvs_fp32_to_fp16(f);
        bool nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff);
        if (nan ? !isnan(f) || (back & 0x7fff) <= 0x7c00 : back != h) bad_rt++;
#ifdef __F16C__
        if (!nan && _cvtsh_ss((uint16_t)h) != f) bad_ref++;
#endif
    }
    CHECKF(bad_rt == 0, "%d halves do not round-trip", bad_rt);
    CHECK(bad_ref == 0);
    CHECK(kvs_fp32_to_fp16(1.0f) == 0x3C00);
    CHECK(kvs_fp32_to_fp16(-2.0f) == 0xC000);
    CHECK(kvs_fp32_to_fp16(65504.0f) == 0x7BFF);
    CHECK(kvs_fp32_to_fp16(65519.0f) == 0x7BFF);
    CHECK(kvs_fp32_to_fp16(65520.0f) == 0x7C00);    /* tie rounds to even: infinity */
    CHECK(kvs_fp32_to_fp16(ldexpf(1, -24)) == 0x0001);
    CHECK(kvs_fp32_to_fp16(ldexpf(1, -25)) == 0x0000); /* tie to even */
    CHECK(kvs_fp32_to_fp16(ldexpf(1.5f, -25)) == 0x0001);
    CHECK(kvs_fp32_to_fp16(ldexpf(3, -25)) == 0x0002); /* 1.5 units ties to 2 */
    CHECK(kvs_fp32_to_fp16(1.0f + ldexpf(1, -11)) == 0x3C00);          /* tie, even stays */
    CHECK(kvs_fp32_to_fp16(1.0f + 3 * ldexpf(1, -11)) == 0x3C02);      /* tie, odd rounds up */
    CHECK(kvs_fp32_to_fp16(ldexpf(1023, -24) + ldexpf(1, -25)) == 0x0400); /* carry into normal */
    CHECK(isnan(kvs_fp16_to_fp32(kvs_fp32_to_fp16(NAN))));
    CHECK(kvs_fp32_to_fp16(INFINITY) == 0x7C00 && kvs_fp32_to_fp16(-1e30f) == 0xFC00);
    /* against the hardware conversion on random floats, where the build has one */
#ifdef __F16C__
    int bad_hw = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)rnd64();
        u = (u & 0x8000FFFFu) | ((0x60u + (u >> 16) % 0x30u) << 23); /* exponents around the half range */
        float f;
        memcpy(&f, &u, 4);
        if (kvs_fp32_to_fp16(f) != _cvtss_sh(f, 0)) bad_hw++;
    }
    CHECKF(bad_hw == 0, "%d conversions differ from F16C", bad_hw);
#endif
    CHECK(kvs_bf16_to_fp32(0x3F80) == 1.0f);
    CHECK(kvs_bf16_to_fp32(0xC040) == -3.0f);
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* Hand-built blocks with values worked out from the ggml layouts, independently of the quantizers. */
static void test_known_blocks(void)
{
    float y[256];
    uint8_t b[256];

    memset(b, 0, sizeof b); /* q4_0: d=2, qs[0]=0x9F -> y0=(15-8)*2, y16=(9-8)*2 */
    put16(b, 0x4000);
    b[2] = 0x9F;
    kvs_dequant_row(KVS_GGML_Q4_0, b, y, 32);
    CHECK(y[0] == 14 && y[16] == 2 && y[1] == -16 && y[17] == -16);

    memset(b, 0, sizeof b); /* q4_1: d=0.5, m=-1, qs[3]=0x3A -> y3 = 10*.5-1, y19 = 3*.5-1 */
    put16(b, 0x3800);
    put16(b + 2, 0xBC00);
    b[4 + 3] = 0x3A;
    kvs_dequant_row(KVS_GGML_Q4_1, b, y, 32);
    CHECK(y[3] == 4 && y[19] == 0.5f && y[0] == -1);

    memset(b, 0, sizeof b); /* q5_0: d=1, qh bit 0 and bit 17 set, qs[1]=0x21 */
    put16(b, 0x3C00);
    uint32_t qh = 1u | (1u << 17);
    memcpy(b + 2, &qh, 4);
    b[6 + 1] = 0x21;
    kvs_dequant_row(KVS_GGML_Q5_0, b, y, 32);
    CHECK(y[0] == 0 && y[16] == -16 && y[1] == 1 - 16 && y[17] == (2 | 16) - 16);

    memset(b, 0, sizeof b); /* q5_1: d=1, m=0.25, qh bit 31, qs[15]=0xF0 */
    put16(b, 0x3C00);
    put16(b + 2, 0x3400);
    qh = 1u << 31;
    memcpy(b + 4, &qh, 4);
    b[8 + 15] = 0xF0;
    kvs_dequant_row(KVS_GGML_Q5_1, b, y, 32);
    CHECK(y[31] == 31.25f && y[15] == 0.25f);

    memset(b, 0, sizeof b); /* q8_0: d=0.25, qs = -128, 127 */
    put16(b, 0x3400);
    b[2] = 0x80;
    b[3] = 0x7F;
    kvs_dequant_row(KVS_GGML_Q8_0, b, y, 32);
    CHECK(y[0] == -32 && y[1] == 31.75f && y[2] == 0);

    /* q4_k: d=1, dmin=0.5; sub-block 1: sc=3, m=2; sub-block 5: sc = 0x25 (low 5, high 2 bits), m = 0x13 */
    memset(b, 0, sizeof b);
    put16(b, 0x3C00);
    put16(b + 2, 0x3800);
    uint8_t *sc = b + 4;
    sc[1] = 3;
    sc[5] = 2;
    sc[1] |= (0x25 >> 4) << 6;          /* high bits of sc[5] in byte 1 */
    sc[5] |= (0x13 >> 4) << 6;          /* high bits of m[5] in byte 5 */
    sc[9] = (0x25 & 0xF) | ((0x13 & 0xF) << 4);
    uint8_t *qs = b + 16;
    qs[0 * 32 + 4] = 0x70;              /* element 32+4 (sub-block 1, high nibble of chunk 0) = 7 */
    qs[2 * 32 + 9] = 0xB0;              /* element 128+32+9 (sub-block 5) = 11 */
    kvs_dequant_row(KVS_GGML_Q4_K, b, y, 256);
    CHECK(y[36] == 7 * 3 - 0.5f * 2);
    CHECK(y[33] == -0.5f * 2);
    CHECK(y[169] == 11.0f * 0x25 - 0.5f * 0x13);
    CHECK(y[0] == 0);

    /* q6_k: d=0.5; element 70 of the second half (y = 128+70): l=6, group 2 (ql high nibble of
     * ql[64+6], qh bits 4-5 of qh[32+6]), scale index 8 + 70/16 = 12 */
    memset(b, 0, sizeof b);
    put16(b + 208, 0x3800);
    b[64 + 6] = 0x50;                   /* q low 4 bits = 5 */
    b[128 + 32 + 6] = 0x20;             /* q high 2 bits = 2 -> q = 37, minus 32 = 5 */
    ((int8_t *)(b + 192))[12] = -3;
    kvs_dequant_row(KVS_GGML_Q6_K, b, y, 256);
    CHECK(y[198] == 0.5f * -3 * 5);
    CHECK(y[0] == 0); /* scale 0 */
}

static double block_amax(const float *x, int64_t i, int64_t be)
{
    int64_t s = i / be * be;
    double m = 0;
    for (int64_t k = s; k < s + be; k++) m = fmax(m, fabs(x[k]));
    return m;
}

static void test_roundtrip(void)
{
    enum { N = 4096 };
    static float x[N], y[N];
    static uint8_t q[N * 4 + 64];
    /* normalised RMS error bound and max error as a fraction of the block's max magnitude; the
     * max bounds are one quantization step (clamping at the range end), RMS ~ step/sqrt(12) */
    static const struct { uint32_t t; double nrms, maxrel; } lim[] = {
        {KVS_GGML_F32, 0, 0}, {KVS_GGML_F16, 1e-3, 1e-3}, {KVS_GGML_BF16, 8e-3, 8e-3},
        {KVS_GGML_Q8_0, 0.01, 0.5 / 127 + 2e-3}, {KVS_GGML_Q8_1, 0.01, 0.5 / 127 + 2e-3},
        {KVS_GGML_Q5_0, 0.05, 1.0 / 16 + 1e-3}, {KVS_GGML_Q5_1, 0.05, 2.0 / 31 + 1e-3},
        {KVS_GGML_Q4_0, 0.11, 1.0 / 8 + 1e-3}, {KVS_GGML_Q4_1, 0.11, 2.0 / 15 + 1e-3},
        {KVS_GGML_Q4_K, 0.12, 0.30}, {KVS_GGML_Q6_K, 0.03, 0.10},
    };
    for (size_t k = 0; k < KVS_ARRAY_LEN(lim); k++) {
        uint32_t t = lim[k].t, be = kvs_type_block_elems(t);
        for (int i = 0; i < N; i++) x[i] = gauss() * (i % 700 < 350 ? 1.0f : 0.01f) + (i % 97 == 0 ? 3.0f : 0);
        CHECK(kvs_quant_row(t, x, q, N) == KVS_OK);
        kvs_dequant_row(t, q, y, N);
        double num = 0, den = 0, worst = 0;
        for (int i = 0; i < N; i++) {
            num += (double)(y[i] - x[i]) * (y[i] - x[i]);
            den += (double)x[i] * x[i];
            /* element types: relative to the value, floored at fp16's smallest normal */
            double a = be < 32 ? fmax(fabs(x[i]), 6.2e-5) : block_amax(x, i, be);
            worst = fmax(worst, fabs(y[i] - x[i]) / (a > 0 ? a : 1));
        }
        double nrms = sqrt(num / den);
        CHECKF(nrms <= lim[k].nrms && worst <= lim[k].maxrel, "%s: normalised RMS error %.4g (limit %.3g), "
               "worst error %.4g of the block max (limit %.3g)", kvs_ggml_type_name(t), nrms, lim[k].nrms,
               worst, lim[k].maxrel);
        fprintf(stderr, "   %-5s round trip: normalised RMS error %.4f, worst %.4f of block max\n",
                kvs_ggml_type_name(t), nrms, worst);
        /* an all-zero block stays zero and finite */
        memset(x, 0, sizeof x);
        kvs_quant_row(t, x, q, N);
        kvs_dequant_row(t, q, y, N);
        int nz = 0;
        for (int i = 0; i < N; i++) nz += y[i] != 0;
        CHECK(nz == 0);
    }
    uint64_t rb;
    CHECK(!kvs_type_row_bytes(KVS_GGML_Q4_0, 33, &rb));
    CHECK(kvs_type_row_bytes(KVS_GGML_Q4_0, 64, &rb) && rb == 36);
    CHECK(kvs_type_row_bytes(KVS_GGML_Q6_K, 512, &rb) && rb == 420);
    CHECK(!kvs_type_row_bytes(KVS_GGML_Q2_K, 256, &rb));
    CHECK(!kvs_type_row_bytes(KVS_GGML_Q8_0, UINT64_MAX - 31, &rb));
    CHECK(kvs_quant_row(KVS_GGML_Q4_K, x, q, 128) == KVS_ERR_ARG);
    CHECK(kvs_quant_row(KVS_GGML_Q3_K, x, q, 256) == KVS_ERR_ARG);
}

/* Fills a row of random bytes with finite, moderate fp16 scales (any quantized bit pattern). */
static void random_row(uint32_t t, uint8_t *b, int64_t n)
{
    uint64_t rb;
    kvs_type_row_bytes(t, (uint64_t)n, &rb);
    for (uint64_t i = 0; i < rb; i++) b[i] = (uint8_t)rnd64();
    uint32_t bb = kvs_type_block_bytes(t), nb = (uint32_t)(rb / bb);
    for (uint32_t k = 0; k < nb; k++) {
        uint8_t *p = b + (size_t)k * bb;
        uint16_t h[2] = {kvs_fp32_to_fp16(gauss() * 0.01f), kvs_fp32_to_fp16(gauss() * 0.01f)};
        switch (t) {
        case KVS_GGML_F16: case KVS_GGML_BF16: case KVS_GGML_F32: break;
        case KVS_GGML_Q4_1: case KVS_GGML_Q5_1: case KVS_GGML_Q8_1: case KVS_GGML_Q4_K:
            memcpy(p, h, 4);
            break;
        case KVS_GGML_Q6_K: memcpy(p + 208, h, 2); break;
        default: memcpy(p, h, 2);
        }
    }
    if (t == KVS_GGML_F32 || t == KVS_GGML_F16 || t == KVS_GGML_BF16) {
        float *row = malloc((size_t)n * sizeof *row);
        for (int64_t i = 0; i < n; i++) row[i] = gauss() * 0.05f;
        kvs_quant_row(t, row, b, n);
        free(row);
    }
}

/* The SIMD dequantizers give exactly the scalar results, for any bit pattern. */
static void test_dequant_simd(void)
{
    enum { N = 2048 };
    static uint8_t row[N * 4];
    static float a[N], b[N];
    for (size_t k = 0; k < KVS_ARRAY_LEN(all_types); k++) {
        uint32_t t = all_types[k];
        int diff = 0;
        for (int trial = 0; trial < 20; trial++) {
            int64_t n = trial % 2 ? N : 256 + 256 * (trial % 5);
            random_row(t, row, n);
            kvs_dequant_row(t, row, a, n);
            kvs_dequant_row_scalar(t, row, b, n);
            diff += memcmp(a, b, (size_t)n * sizeof *a) != 0;
        }
        CHECKF(diff == 0, "%s: SIMD and scalar dequantization differ in %d of 20 rows", kvs_ggml_type_name(t), diff);
    }
}

static void test_dot(void)
{
    static const int64_t ns[] = {256, 512, 1536};
    enum { MAXN = 1536 };
    static float x[MAXN], w[MAXN];
    static uint8_t row[MAXN * 4];
    struct kvs_qvec qv = {0};
    fprintf(stderr, "   SIMD level: %s\n", kvs_quant_simd());
    for (size_t k = 0; k < KVS_ARRAY_LEN(all_types); k++) {
        uint32_t t = all_types[k];
        double worst_exact = 0, worst_bound = 0, worst_agree = 0;
        int fails = 0;
        for (size_t s = 0; s < KVS_ARRAY_LEN(ns); s++) {
            int64_t n = ns[s];
            for (int trial = 0; trial < 8; trial++) {
                /* (a) any weight bit pattern, activations that quantize exactly (integers, block max 127):
                 *     the result is the exact dot up to fp32 rounding */
                random_row(t, row, n);
                kvs_dequant_row(t, row, w, n);
                for (int64_t i = 0; i < n; i++) x[i] = (float)((int)(rnd64() % 255) - 127);
                for (int64_t i = 0; i < n; i += 32) x[i] = (i / 32) % 2 ? 127.0f : -127.0f;
                double ref = 0, mag = 0;
                for (int64_t i = 0; i < n; i++) {
                    ref += (double)w[i] * x[i];
                    mag += fabs((double)w[i] * x[i]);
                }
                kvs_quant_prepare(&qv, t, x, n);
                float fast = kvs_vec_dot(t, row, &qv), slow = kvs_vec_dot_scalar(t, row, &qv);
                double tol = 2e-6 * mag + 1e-6;
                double e1 = fabs(fast - ref) / (mag + 1e-30), e2 = fabs(slow - ref) / (mag + 1e-30);
                worst_exact = fmax(worst_exact, fmax(e1, e2));
                if (!(fabs(fast - ref) <= tol && fabs(slow - ref) <= tol)) {
                    if (fails++ < 3)
                        fprintf(stderr, "FAIL %s n=%lld exact activations: simd %.9g scalar %.9g ref %.9g (tol %.3g)\n",
                                kvs_ggml_type_name(t), (long long)n, fast, slow, ref, tol);
                }
                /* (b) quantized gaussian weights and activations: the error is bounded by the
                 *     activation rounding, |w_i| * (block max |x| / 127) / 2 per element */
                for (int64_t i = 0; i < n; i++) x[i] = gauss() * (i % 64 == 5 ? 4.0f : 1.0f);
                for (int64_t i = 0; i < n; i++) w[i] = gauss() * 0.02f;
                kvs_quant_row(t, w, row, n);
                kvs_dequant_row(t, row, w, n);
                uint32_t abe = (t == KVS_GGML_Q4_K || t == KVS_GGML_Q6_K) ? 256
                               : kvs_type_block_elems(t) == 32 ? 32 : 0;
                ref = 0, mag = 0;
                double bound = 0;
                for (int64_t i = 0; i < n; i++) {
                    ref += (double)w[i] * x[i];
                    mag += fabs((double)w[i] * x[i]);
                    if (abe) bound += fabs(w[i]) * block_amax(x, i, abe) / 127.0 / 2.0;
                }
                kvs_quant_prepare(&qv, t, x, n);
                fast = kvs_vec_dot(t, row, &qv);
                slow = kvs_vec_dot_scalar(t, row, &qv);
                tol = bound * 1.001 + 2e-6 * mag + 1e-6;
                worst_bound = fmax(worst_bound, fabs(fast - ref) / (bound + 2e-6 * mag + 1e-6));
                worst_agree = fmax(worst_agree, fabs(fast - slow) / (mag + 1e-30));
                if (!(fabs(fast - ref) <= tol && fabs(slow - ref) <= tol && fabs(fast - slow) <= 4e-6 * mag + 1e-7)) {
                    if (fails++ < 3)
                        fprintf(stderr, "FAIL %s n=%lld gaussian: simd %.9g scalar %.9g ref %.9g (tol %.3g)\n",
                                kvs_ggml_type_name(t), (long long)n, fast, slow, ref, tol);
                }
            }
        }
        CHECKF(fails == 0, "%s: %d dot products out of tolerance", kvs_ggml_type_name(t), fails);
        fprintf(stderr, "   %-5s dot: exact-activation rel err %.2g, gaussian err %.2f of the bound, "
                "simd-scalar %.2g\n", kvs_ggml_type_name(t), worst_exact, worst_bound, worst_agree);
    }
    CHECK(kvs_quant_prepare(&qv, KVS_GGML_Q8_0, x, 48) == KVS_ERR_ARG);
    CHECK(kvs_quant_prepare(&qv, KVS_GGML_Q4_K, x, 288) == KVS_ERR_ARG);
    kvs_qvec_free(&qv);
    CHECK(qv.data == NULL);
}

/* ---- micro-benchmark ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void bench(void)
{
    static const uint32_t types[] = {KVS_GGML_Q4_1, KVS_GGML_Q8_0, KVS_GGML_Q4_0, KVS_GGML_Q5_0,
                                     KVS_GGML_Q4_K, KVS_GGML_Q6_K, KVS_GGML_F16, KVS_GGML_BF16, KVS_GGML_F32};
    static const int64_t cols[] = {576, 1536};
    enum { ROWS = 1536 };
    printf("SIMD level: %s; ns per row (one row dot, %d rows per pass, best of 5)\n", kvs_quant_simd(), ROWS);
    printf("%-6s %6s %10s %10s %8s %12s %12s\n", "type", "cols", "simd", "scalar", "speedup", "prepare(ns)",
           "dequant(ns)");
    for (size_t c = 0; c < KVS_ARRAY_LEN(cols); c++) {
        int64_t n = cols[c];
        float *x = malloc((size_t)n * sizeof *x), *w = malloc((size_t)n * sizeof *w);
        for (int64_t i = 0; i < n; i++) x[i] = gauss();
        for (size_t k = 0; k < KVS_ARRAY_LEN(types); k++) {
            uint32_t t = types[k];
            uint64_t rb;
            if (!kvs_type_row_bytes(t, (uint64_t)n, &rb)) continue;
            uint8_t *m = malloc(rb * ROWS);
            for (int r = 0; r < ROWS; r++) {
                for (int64_t i = 0; i < n; i++) w[i] = gauss() * 0.02f;
                kvs_quant_row(t, w, m + rb * r, n);
            }
            struct kvs_qvec qv = {0};
            double tp = 1e9;
            for (int rep = 0; rep < 5; rep++) {
                double t0 = now_s();
                for (int i = 0; i < 100; i++) kvs_quant_prepare(&qv, t, x, n);
                tp = fmin(tp, (now_s() - t0) / 100);
            }
            double best[2] = {1e9, 1e9};
            volatile float sink = 0;
            for (int path = 0; path < 2; path++)
                for (int rep = 0; rep < 5; rep++) {
                    double t0 = now_s();
                    float acc = 0;
                    for (int r = 0; r < ROWS; r++)
                        acc += path == 0 ? kvs_vec_dot(t, m + rb * r, &qv) : kvs_vec_dot_scalar(t, m + rb * r, &qv);
                    sink += acc;
                    best[path] = fmin(best[path], (now_s() - t0) / ROWS);
                }
            (void)sink;
            double td = 1e9;
            for (int rep = 0; rep < 5; rep++) {
                double t0 = now_s();
                for (int r = 0; r < ROWS; r++) kvs_dequant_row(t, m + rb * r, w, n);
                td = fmin(td, (now_s() - t0) / ROWS);
            }
            printf("%-6s %6lld %10.1f %10.1f %7.1fx %12.0f %12.0f\n", kvs_ggml_type_name(t), (long long)n,
                   best[0] * 1e9, best[1] * 1e9, best[1] / best[0], tp * 1e9, td * 1e9);
            kvs_qvec_free(&qv);
            free(m);
        }
        free(x);
        free(w);
    }
}


/* A NaN activation must reach the dot product's result (SIMD and scalar): max|x| ignores NaN, and
 * a finite int8 scale would turn a corrupt model's NaN into plausible garbage. */
static void test_dot_nan(void)
{
    const uint32_t types[] = {KVS_GGML_Q4_0, KVS_GGML_Q4_1, KVS_GGML_Q8_0, KVS_GGML_Q4_K, KVS_GGML_Q6_K};
    float x[256], w[256];
    for (int i = 0; i < 256; i++) x[i] = w[i] = 0.01f * (float)(i % 17) - 0.05f;
    for (size_t t = 0; t < KVS_ARRAY_LEN(types); t++) {
        uint8_t row[512];
        CHECK(kvs_quant_row(types[t], w, row, 256) == KVS_OK);
        for (int pos = 0; pos < 256; pos += 85) {
            float keep = x[pos];
            x[pos] = NAN;
            struct kvs_qvec q = {0};
            CHECK(kvs_quant_prepare(&q, types[t], x, 256) == KVS_OK);
            float d = kvs_vec_dot(types[t], row, &q), ds = kvs_vec_dot_scalar(types[t], row, &q);
            CHECKF(isnan(d) && isnan(ds), "%s: NaN at %d gave dot %g (scalar %g)", kvs_ggml_type_name(types[t]), pos,
                   (double)d, (double)ds);
            kvs_qvec_free(&q);
            x[pos] = keep;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        bench();
        return 0;
    }
    RUN(test_fp16);
    RUN(test_known_blocks);
    RUN(test_roundtrip);
    RUN(test_dequant_simd);
    RUN(test_dot);
    RUN(test_dot_nan);
    return kvs_test_summary();
}
