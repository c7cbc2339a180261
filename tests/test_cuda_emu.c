/* The CUDA backend's kernels (kernels/ .cu files) run through the host emulation of tests/cuda_emu
 * (build/emu/libkvscope_cuda_emu.so, loaded by KVS_CUDA_LIB) against their CPU twins, at real model
 * shapes: head widths 64 and 128, GQA 3:1 and 4:1, ranks that are not multiples of 32, contexts of
 * several tiles, query chunks (the emulated build caps the score matrix at 64 KiB), an empty cache;
 * matmul with fp16 and bf16 weights, with the conversions checked bit for bit; the SVD; the K/V
 * cache pool in device memory (stores bit for bit, growth past a block, attention with the
 * attention mass, compaction, an empty pool) against the same pool on the CPU backend; lat_attend's
 * fused decode kernel (fp16 and bf16 tensor-core key rebuild, 1 to many context splits, rows out of
 * order and invisible to some queries) against the CPU twin given the same 16-bit B_k, and its
 * prefill GEMM path (2 to 4 segments, up to 2,000 rows, 1 to 9 queries a chunk); MiniCache's
 * layer pairs (scores, SLERP merges with retained rows, attention over unmerged and merged rows);
 * the quantized K/V pool (packed bytes bit for bit at 2/4/8 bits, attention over packed blocks,
 * eviction that re-encodes blocks, pooled eviction scores) and quant, quant+snapkv, quant+streaming
 * end to end; CommonKV's latent segments, fp16 and packed (quantized: the stored bytes equal the
 * CPU twin's), and the attention over them.
 * attention mass, compaction, an empty pool) against the same pool on the CPU backend; the cosine
 * scores between latent arrays bit for bit.
 * Each comparison prints its normalised error and worst elements. KVS_CUDA_EMU_LIB overrides the
 * library (tests/plant_bugs.sh points it at a copy with a planted bug); --ops skips the end-to-end
 * runs (tiny models, SmolLM2), --write-tiny PATH NAME writes a tiny model for tests/t_cuda_emu.sh,
 * --gpu runs the same checks on a real GPU through $KVS_CUDA_LIB (tests/check-gpu.sh), --only WORD
 * runs the checks whose function name contains WORD. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cache_pool.h"
#include "ckv_pool.h"
#include "attention.h"
#include "elementwise.h"
#include "embedding.h"
#include "harness.h"
#include "latent_attend.h"
#include "latent_keys.h"
#include "record.h"
#include "infer.h"
#include "mc_pool.h"
#include "kvq_pool.h"
#include "press.h"
#include "quant.h"
#include "quant_codec.h"
#include "tinymodel.h"
#include "tokenizer.h"

static struct kvs_pool *pool;
static bool on_gpu; /* --gpu: the same checks against the real library on a GPU (make check-gpu) */
static struct kvs_backend *cuda16, *cuda_bf, *cpu;

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}
static float *rand_vec(size_t n, float lo, float hi)
{
    float *v = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = frand(lo, hi);
    return v;
}

/* kvs_test_allclose plus the three worst elements, always printed. */
static int compare(const char *what, const float *got, const float *ref, long n, float atol, float rtol)
{
    long w[3] = {-1, -1, -1};
    for (long i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        for (int k = 0; k < 3; k++) {
            if (w[k] < 0 || isnan(d) || d > fabs((double)got[w[k]] - ref[w[k]])) {
                for (int m = 2; m > k; m--) w[m] = w[m - 1];
                w[k] = i;
                break;
            }
        }
    }
    int ok = kvs_test_allclose(what, got, ref, n, atol, rtol);
    for (int k = 0; k < 3 && w[k] >= 0; k++)
        fprintf(stderr, "      worst[%d] [%ld] got %.7g ref %.7g |d| %.3g\n", k, w[k], (double)got[w[k]],
                (double)ref[w[k]], fabs((double)got[w[k]] - ref[w[k]]));
    return ok;
}

static float *rope_freqs(int d, double theta)
{
    float *f = malloc((size_t)(d / 2) * sizeof(float));
    for (int i = 0; i < d / 2; i++) f[i] = (float)pow(theta, -2.0 * i / d);
    return f;
}

/* ---------------------------------------------------------------- probe */

static void test_probe(void)
{
    bool avail = false;
    const char *s = kvs_backend_probe(&avail);
    const struct kvs_backend_cuda_info *in = kvs_backend_cuda_info();
    fprintf(stderr, "   probe: \"%s\" (%s)\n", s, in->detail);
    CHECKF(avail, "CUDA library unavailable: %s (%s)", s, in->detail);
    if (on_gpu) CHECKF(strstr(s, "CUDA emulation") == NULL, "--gpu, but the library is the emulation: \"%s\"", s);
    else CHECKF(strstr(s, "CUDA emulation (host)") != NULL, "status \"%s\" does not say emulation", s);
    CHECK(in->lib_loaded);
}

static void test_backends(void)
{
    char err[256] = "";
    CHECKF(kvs_backend_new(&cuda16, "cuda", NULL, err, sizeof err) == KVS_OK, "%s", err);
    if (cuda16) CHECKF(kvs_backend_set_weights(cuda16, "fp16") == KVS_OK, "%s", kvs_backend_error(cuda16));
    CHECKF(kvs_backend_new(&cuda_bf, "cuda", NULL, err, sizeof err) == KVS_OK, "%s", err);
    if (cuda_bf) CHECKF(kvs_backend_set_weights(cuda_bf, "bf16") == KVS_OK, "%s", kvs_backend_error(cuda_bf));
    CHECK(kvs_backend_new(&cpu, "cpu", pool, err, sizeof err) == KVS_OK);
    if (cuda16) {
        fprintf(stderr, "   device: %s\n", kvs_backend_device(cuda16));
        CHECK(on_gpu || !strncmp(kvs_backend_device(cuda16), "CUDA emulation (host)", 21));
    }
}

/* ---------------------------------------------------------------- rmsnorm, rope */

static void test_rmsnorm(void)
{
    int shapes[3][2] = {{1, 576}, {7, 576}, {3, 2048}};
    for (int k = 0; k < 3; k++) {
        int T = shapes[k][0], n = shapes[k][1];
        float *x = rand_vec((size_t)T * n, -3, 3), *w = rand_vec(n, 0.2f, 2.0f);
        float *yg = calloc((size_t)T * n, sizeof(float)), *yc = calloc((size_t)T * n, sizeof(float));
        CHECKF(kvs_backend_rmsnorm(cuda16, yg, x, w, T, n, 1e-5f) == KVS_OK, "%s", kvs_backend_error(cuda16));
        CHECK(kvs_backend_rmsnorm(cpu, yc, x, w, T, n, 1e-5f) == KVS_OK);
        char what[64];
        snprintf(what, sizeof what, "emu rmsnorm T=%d n=%d", T, n);
        compare(what, yg, yc, (long)T * n, 1e-5f, 1e-4f);
        free(x), free(w), free(yg), free(yc);
    }
}

static void test_rope(void)
{
    int32_t pos[6] = {0, 1, 17, 511, 4096, 8191};
    int dims[2] = {64, 128}, heads[2] = {9, 3};
    for (int k = 0; k < 2; k++)
        for (int neox = 0; neox < 2; neox++) {
            int d = dims[k], H = heads[k], T = 6;
            float *freqs = rope_freqs(d, k ? 500000.0 : 10000.0);
            float *qg = rand_vec((size_t)T * H * d, -2, 2), *qc = malloc((size_t)T * H * d * sizeof(float));
            memcpy(qc, qg, (size_t)T * H * d * sizeof(float));
            CHECKF(kvs_backend_rope(cuda16, qg, T, H, d, pos, freqs, neox) == KVS_OK, "%s",
                   kvs_backend_error(cuda16));
            CHECK(kvs_backend_rope(cpu, qc, T, H, d, pos, freqs, neox) == KVS_OK);
            char what[64];
            snprintf(what, sizeof what, "emu rope d=%d %s", d, neox ? "neox" : "interleaved");
            compare(what, qg, qc, (long)T * H * d, 1e-5f, 1e-4f);
            free(freqs), free(qg), free(qc);
        }
}

/* ---------------------------------------------------------------- matmul */

static uint16_t bf16_rne(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* Weight values that stress the conversion: ties both ways, subnormals, the fp16 saturation
 * boundary, tiny and huge magnitudes. An identity activation brings them back exactly. */
static void test_convert_exact(void)
{
    enum { ROWS = 48, COLS = 32 };
    static float wf[ROWS * COLS];
    const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 1.0009765625f /* 1 + 2^-10 */, 1.00048828125f /* tie */,
                             1.00146484375f /* tie, odd */, 65504.0f, 65519.0f, 70000.0f, -1e30f, 6.0e-8f,
                             5.96046448e-8f /* 2^-24 */, 2.98023224e-8f /* 2^-25 tie */, 3.0e-8f, 1e-40f,
                             6.103515625e-05f /* 2^-14 */, 3.0517578e-05f, 1.00390625f /* bf16 tie */,
                             1.01171875f /* bf16 tie, odd */, 3.3895314e38f, -2.5f, 0.1f, 1.0f / 3.0f};
    size_t ns = sizeof special / sizeof special[0];
    for (int i = 0; i < ROWS * COLS; i++) wf[i] = i < (int)ns ? special[i] : frand(-4, 4) * powf(2.0f, frand(-20, 20));
    struct kvs_weight w = {.type = KVS_GGML_F32, .rows = ROWS, .cols = COLS, .data = wf,
                           .row_bytes = (uint64_t)COLS * 4};
    float *x = calloc((size_t)COLS * COLS, sizeof(float)), *y = malloc((size_t)COLS * ROWS * sizeof(float));
    for (int t = 0; t < COLS; t++) x[t * COLS + t] = 1.0f; /* y[t][r] = W[r][t], one exact product */
    for (int k = 0; k < 2; k++) {
        struct kvs_backend *b = k ? cuda_bf : cuda16;
        struct kvs_backend_weight bw;
        CHECKF(kvs_backend_weight_prepare(b, &bw, &w) == KVS_OK && bw.dev, "%s", kvs_backend_error(b));
        CHECKF(kvs_backend_matmul(b, &bw, x, y, COLS) == KVS_OK, "%s", kvs_backend_error(b));
        int bad = 0;
        for (int r = 0; r < ROWS; r++)
            for (int t = 0; t < COLS; t++) {
                float v = wf[r * COLS + t], got = y[t * ROWS + r], want;
                if (k) {
                    want = kvs_bf16_to_fp32(bf16_rne(v));
                } else { /* the upload saturates at the fp16 range, then rounds to nearest even */
                    float c = v > 65504.0f ? 65504.0f : v < -65504.0f ? -65504.0f : v;
                    want = kvs_fp16_to_fp32(kvs_fp32_to_fp16(c));
                }
                if (memcmp(&got, &want, 4) && !(got == 0 && want == 0)) {
                    if (bad++ < 3)
                        fprintf(stderr, "   %s W[%d][%d] = %.9g: device %.9g, expected %.9g\n", k ? "bf16" : "fp16",
                                r, t, (double)v, (double)got, (double)want);
                }
            }
        CHECKF(bad == 0, "%s conversion: %d of %d values differ from round-to-nearest-even", k ? "bf16" : "fp16",
               bad, ROWS * COLS);
        if (!bad) fprintf(stderr, "   %s conversion: %d values bit-exact\n", k ? "bf16" : "fp16", ROWS * COLS);
        kvs_backend_weight_release(b, &bw);
    }
    free(x), free(y);
}

/* The weights' type follows the compute capability (the emulator pretends one through
 * KVS_CUDA_EMU_CC): auto is bf16 on sm_80 and newer, fp16 on sm_75, where bf16 is refused with
 * the reason; an fp16 upload counts the values it clamps (the special values of
 * test_convert_exact hold 5 beyond ±65504), bf16 clamps none. */
static void test_weights_by_cc(void)
{
    static const struct { const char *cc, *want, *got; enum kvs_status st; } cases[] = {
        {"90", "auto", "bf16", KVS_OK}, {"80", "auto", "bf16", KVS_OK}, {"75", "auto", "fp16", KVS_OK},
        {"75", "bf16", "", KVS_ERR_UNSUPPORTED}, {"75", "fp16", "fp16", KVS_OK}, {"80", "fp16", "fp16", KVS_OK},
    };
    const float vals[8] = {1.0f, 65504.0f, 65519.0f, 70000.0f, -1e30f, 3.3895314e38f, -65505.0f, 0.5f};
    struct kvs_weight w = {.type = KVS_GGML_F32, .rows = 2, .cols = 4, .data = vals, .row_bytes = 16};
    if (on_gpu) {
        printf("skipped: compute capability cases need the emulation\n");
        return;
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        struct kvs_backend *b = NULL;
        setenv("KVS_CUDA_EMU_CC", cases[i].cc, 1);
        CHECKF(kvs_backend_new(&b, "cuda", NULL, err, sizeof err) == KVS_OK, "%s", err);
        unsetenv("KVS_CUDA_EMU_CC");
        if (!b) continue;
        enum kvs_status st = kvs_backend_set_weights(b, cases[i].want);
        fprintf(stderr, "   sm_%s --weights %s: %s%s%s\n", cases[i].cc, cases[i].want, st == KVS_OK ? b->weights : "refused",
                st == KVS_OK ? "" : ": ", st == KVS_OK ? "" : kvs_backend_error(b));
        CHECKF(st == cases[i].st, "sm_%s --weights %s: status %d, expected %d (%s)", cases[i].cc, cases[i].want, st,
               cases[i].st, kvs_backend_error(b));
        if (st == KVS_OK) {
            CHECKF(!strcmp(b->weights, cases[i].got), "sm_%s --weights %s chose %s, expected %s", cases[i].cc,
                   cases[i].want, b->weights, cases[i].got);
            struct kvs_backend_weight bw;
            CHECKF(kvs_backend_weight_prepare(b, &bw, &w) == KVS_OK, "%s", kvs_backend_error(b));
            uint64_t want_sat = strcmp(b->weights, "fp16") ? 0 : 5;
            CHECKF(b->weights_saturated == want_sat, "sm_%s %s: %llu weights counted as clamped, expected %llu",
                   cases[i].cc, b->weights, (unsigned long long)b->weights_saturated, (unsigned long long)want_sat);
            kvs_backend_weight_release(b, &bw);
        } else {
            CHECKF(strstr(kvs_backend_error(b), "sm_75") != NULL, "the refusal does not name the GPU: %s",
                   kvs_backend_error(b));
        }
        kvs_backend_delete(b);
    }
}

static void test_matmul(void)
{
    int rows = 1536, cols = 576; /* SmolLM2's FFN up projection */
    float *wf = rand_vec((size_t)rows * cols, -0.1f, 0.1f);
    struct kvs_weight w = {.type = KVS_GGML_F32, .rows = rows, .cols = cols, .data = wf,
                           .row_bytes = (uint64_t)cols * 4};
    struct kvs_backend_weight bc;
    CHECK(kvs_backend_weight_prepare(cpu, &bc, &w) == KVS_OK);
    for (int k = 0; k < 2; k++) {
        struct kvs_backend *b = k ? cuda_bf : cuda16;
        struct kvs_backend_weight bg;
        CHECKF(kvs_backend_weight_prepare(b, &bg, &w) == KVS_OK && bg.dev, "%s", kvs_backend_error(b));
        for (int T = 1; T <= 33; T += 32) {
            float *x = rand_vec((size_t)T * cols, -1, 1);
            float *yg = calloc((size_t)T * rows, sizeof(float)), *yc = calloc((size_t)T * rows, sizeof(float)),
                  *yr = calloc((size_t)T * rows, sizeof(float));
            CHECKF(kvs_backend_matmul(b, &bg, x, yg, T) == KVS_OK, "%s", kvs_backend_error(b));
            CHECK(kvs_backend_matmul(cpu, &bc, x, yc, T) == KVS_OK);
            /* exact reference: both operands rounded to the device dtype, products summed in double */
            for (int t = 0; t < T; t++)
                for (int r = 0; r < rows; r++) {
                    double s = 0;
                    for (int c = 0; c < cols; c++) {
                        float wv = wf[(size_t)r * cols + c], xv = x[(size_t)t * cols + c];
                        if (k) wv = kvs_bf16_to_fp32(bf16_rne(wv)), xv = kvs_bf16_to_fp32(bf16_rne(xv));
                        else wv = kvs_fp16_to_fp32(kvs_fp32_to_fp16(wv)), xv = kvs_fp16_to_fp32(kvs_fp32_to_fp16(xv));
                        s += (double)wv * xv;
                    }
                    yr[(size_t)t * rows + r] = (float)s;
                }
            char what[80];
            snprintf(what, sizeof what, "emu matmul %s T=%d vs rounded-operand reference", k ? "bf16" : "fp16", T);
            compare(what, yg, yr, (long)T * rows, 1e-5f, 1e-4f);
            snprintf(what, sizeof what, "emu matmul %s T=%d vs CPU twin", k ? "bf16" : "fp16", T);
            /* the device rounds activations to fp16/bf16; bf16 keeps 8 bits */
            compare(what, yg, yc, (long)T * rows, k ? 3e-2f : 5e-3f, k ? 3e-2f : 5e-3f);
            free(x), free(yg), free(yc), free(yr);
        }
        kvs_backend_weight_release(b, &bg);
    }
    kvs_backend_weight_release(cpu, &bc);
    free(wf);
}

/* A factor kept exact (CommonKV's latent projection A at SmolLM2's rank 288 and Qwen's 334 x 896):
 * fp32 on the device whatever the weights' type, its product against a double-precision sum within
 * fp32 rounding (a 16-bit copy is ~1e-3 away), on both the fp16 and the bf16 backend. */
static void test_matmul_factor(void)
{
    static const int shapes[][2] = {{288, 576}, {334, 896}};
    for (size_t si = 0; si < KVS_ARRAY_LEN(shapes); si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        float *wf = rand_vec((size_t)rows * cols, -0.1f, 0.1f);
        struct kvs_weight w = {.type = KVS_GGML_F32, .rows = rows, .cols = cols, .data = wf,
                               .row_bytes = (uint64_t)cols * 4};
        for (int k = 0; k < 2; k++) {
            struct kvs_backend *b = k ? cuda_bf : cuda16;
            struct kvs_backend_weight bg;
            CHECKF(kvs_backend_factor_prepare(b, &bg, &w) == KVS_OK && bg.dev && bg.exact, "%s", kvs_backend_error(b));
            int T = 9;
            float *x = rand_vec((size_t)T * cols, -1, 1);
            float *yg = calloc((size_t)T * rows, sizeof(float)), *yr = calloc((size_t)T * rows, sizeof(float));
            CHECKF(kvs_backend_matmul(b, &bg, x, yg, T) == KVS_OK, "%s", kvs_backend_error(b));
            for (int t = 0; t < T; t++)
                for (int r = 0; r < rows; r++) {
                    double sum = 0;
                    for (int c = 0; c < cols; c++) sum += (double)wf[(size_t)r * cols + c] * x[(size_t)t * cols + c];
                    yr[(size_t)t * rows + r] = (float)sum;
                }
            char what[96];
            snprintf(what, sizeof what, "emu matmul fp32 factor %dx%d on the %s backend vs fp64 sums", rows, cols,
                     k ? "bf16" : "fp16");
            compare(what, yg, yr, (long)T * rows, 1e-6f, 1e-5f);
            free(x), free(yg), free(yr);
            kvs_backend_weight_release(b, &bg);
        }
        free(wf);
    }
}

/* ---------------------------------------------------------------- element-wise steps of a token */

/* Backend buffer of BYTES holding a copy of SRC (uninitialised when SRC is NULL). */
static void *buf_in(struct kvs_backend *b, struct kvs_buf *bf, const void *src, size_t bytes)
{
    CHECKF(kvs_backend_buf_alloc(b, bf, bytes) == KVS_OK, "%s", kvs_backend_error(b));
    if (src && bf->data) CHECKF(kvs_backend_buf_upload(b, bf, 0, src, bytes) == KVS_OK, "%s", kvs_backend_error(b));
    return bf->data;
}

/* Real shapes: SmolLM2 (D 576, ff 1536), Qwen2-0.5B-like with biases (D 896, dq 896, dkv 128,
 * ff 4864), Llama-3-8B-like (D 4096, ff 14336); T = 1 (decode) and 7 (a prefill chunk). */
static const struct { const char *name; int D, dq, dkv, F; } ew_shapes[] = {
    {"SmolLM2", 576, 576, 192, 1536}, {"Qwen-like", 896, 896, 128, 4864}, {"Llama-8B-like", 4096, 4096, 1024, 14336},
};

/* bias add, residual add and SwiGLU against the CPU twins (engine/cpu/elementwise.c); the adds are
 * one fp32 operation per element and must agree bit for bit. */
static void test_elementwise(void)
{
    for (size_t k = 0; k < sizeof ew_shapes / sizeof ew_shapes[0]; k++)
        for (int T = 1; T <= 7; T += 6) {
            int D = ew_shapes[k].D, F = ew_shapes[k].F, nb = ew_shapes[k].dkv;
            size_t nD = (size_t)T * D, nF = (size_t)T * F, nB = (size_t)T * nb;
            float *x = rand_vec(nD, -4, 4), *y = rand_vec(nD, -4, 4), *g = rand_vec(nF, -12, 12),
                  *u = rand_vec(nF, -3, 3), *kb = rand_vec(nB, -2, 2), *bias = rand_vec(nb, -1, 1);
            float *got = malloc((nF > nD ? nF : nD) * sizeof(float)), *ref = malloc((nF > nD ? nF : nD) * sizeof(float));
            struct kvs_buf bx, by, bg, bu, bk, bb;
            float *dx = buf_in(cuda16, &bx, x, nD * 4), *dy = buf_in(cuda16, &by, y, nD * 4);
            float *dg = buf_in(cuda16, &bg, g, nF * 4), *du = buf_in(cuda16, &bu, u, nF * 4);
            float *dk = buf_in(cuda16, &bk, kb, nB * 4), *db = buf_in(cuda16, &bb, bias, (size_t)nb * 4);
            char what[96];
            CHECKF(kvs_backend_add(cuda16, dx, dy, nD) == KVS_OK, "%s", kvs_backend_error(cuda16));
            CHECK(kvs_backend_buf_download(cuda16, got, &bx, 0, nD * 4) == KVS_OK);
            memcpy(ref, x, nD * 4);
            kvs_cpu_add(ref, y, nD);
            snprintf(what, sizeof what, "emu add %s T=%d n=%d", ew_shapes[k].name, T, D);
            compare(what, got, ref, (long)nD, 0, 0);
            CHECKF(kvs_backend_add_bias(cuda16, dk, db, T, nb) == KVS_OK, "%s", kvs_backend_error(cuda16));
            CHECK(kvs_backend_buf_download(cuda16, got, &bk, 0, nB * 4) == KVS_OK);
            memcpy(ref, kb, nB * 4);
            kvs_cpu_add_bias(ref, bias, T, nb);
            snprintf(what, sizeof what, "emu add_bias %s T=%d n=%d", ew_shapes[k].name, T, nb);
            compare(what, got, ref, (long)nB, 0, 0);
            CHECKF(kvs_backend_swiglu(cuda16, dg, du, nF) == KVS_OK, "%s", kvs_backend_error(cuda16));
            CHECK(kvs_backend_buf_download(cuda16, got, &bg, 0, nF * 4) == KVS_OK);
            memcpy(ref, g, nF * 4);
            kvs_cpu_swiglu(ref, u, nF);
            snprintf(what, sizeof what, "emu swiglu %s T=%d n=%d", ew_shapes[k].name, T, F);
            compare(what, got, ref, (long)nF, 1e-6f, 1e-6f); /* the device's expf may differ by an ulp */
            struct kvs_buf *bufs[] = {&bx, &by, &bg, &bu, &bk, &bb};
            for (int i = 0; i < 6; i++) kvs_backend_buf_free(cuda16, bufs[i]);
            free(x), free(y), free(g), free(u), free(kb), free(bias), free(got), free(ref);
        }
}

/* The embedding lookup against its CPU twin: rows equal bit for bit once the twin's fp32 rows are
 * rounded to the table's 2-byte type (fp16: it holds these values on both backends). Tokens at
 * both ends of the vocabulary and repeated. */
static void test_embedding(void)
{
    const int V = 1000;
    int32_t tok[7] = {0, V - 1, 17, 17, 500, 1, V - 2};
    for (size_t k = 0; k < sizeof ew_shapes / sizeof ew_shapes[0]; k++) {
        int D = ew_shapes[k].D;
        float *tf = rand_vec((size_t)V * D, -0.5f, 0.5f);
        struct kvs_weight w = {.type = KVS_GGML_F32, .rows = V, .cols = D, .data = tf, .row_bytes = (uint64_t)D * 4};
        for (int b = 0; b < 2; b++) {
            struct kvs_backend *be = b ? cuda_bf : cuda16;
            struct kvs_backend_weight bw;
            CHECKF(kvs_backend_table_prepare(be, &bw, &w) == KVS_OK && bw.dev, "%s", kvs_backend_error(be));
            for (int T = 1; T <= 7; T += 6) {
                struct kvs_buf bt, bo;
                int32_t *dt = buf_in(be, &bt, tok + 7 - T, (size_t)T * sizeof(int32_t));
                float *dout = buf_in(be, &bo, NULL, (size_t)T * D * 4);
                float *got = malloc((size_t)T * D * 4), *ref = malloc((size_t)T * D * 4);
                CHECKF(kvs_backend_embed(be, &bw, dt, T, dout) == KVS_OK, "%s", kvs_backend_error(be));
                CHECK(kvs_backend_buf_download(be, got, &bo, 0, (size_t)T * D * 4) == KVS_OK);
                kvs_cpu_embedding(&w, tok + 7 - T, T, ref);
                for (long i = 0; i < (long)T * D; i++) ref[i] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(ref[i]));
                char what[96];
                snprintf(what, sizeof what, "emu embedding %s T=%d D=%d (%s backend)", ew_shapes[k].name, T, D,
                         b ? "bf16" : "fp16");
                compare(what, got, ref, (long)T * D, 0, 0);
                kvs_backend_buf_free(be, &bt);
                kvs_backend_buf_free(be, &bo);
                free(got), free(ref);
            }
            kvs_backend_weight_release(be, &bw);
        }
        free(tf);
    }
}

/* ---------------------------------------------------------------- attention */

/* A cache split over two segments, positions interleaved, queries at the last T positions. */
struct att_case {
    int T, H, G, d, r, n0, n1;
    float *q, *bk, *bv, *c0, *c1, *freqs;
    uint16_t *k0, *v0, *k1, *v1;
    int32_t *qpos, *p0, *p1;
};

static uint16_t *rand_f16(size_t n)
{
    uint16_t *v = malloc((n ? n : 1) * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) v[i] = kvs_fp32_to_fp16(frand(-1, 1));
    return v;
}

static void att_init(struct att_case *A, int T, int H, int G, int d, int r, int n0, int n1)
{
    memset(A, 0, sizeof *A);
    A->T = T, A->H = H, A->G = G, A->d = d, A->r = r, A->n0 = n0, A->n1 = n1;
    size_t dkv = (size_t)G * d;
    A->q = rand_vec((size_t)T * H * d, -1, 1);
    A->bk = rand_vec(dkv * r, -0.15f, 0.15f);
    A->bv = rand_vec(dkv * r, -0.15f, 0.15f);
    A->c0 = rand_vec((size_t)n0 * r, -1, 1);
    A->c1 = rand_vec((size_t)n1 * r, -1, 1);
    A->k0 = rand_f16(n0 * dkv), A->v0 = rand_f16(n0 * dkv), A->k1 = rand_f16(n1 * dkv), A->v1 = rand_f16(n1 * dkv);
    A->freqs = rope_freqs(d, 10000.0);
    A->qpos = malloc((size_t)(T ? T : 1) * sizeof(int32_t));
    A->p0 = malloc((size_t)(n0 ? n0 : 1) * sizeof(int32_t));
    A->p1 = malloc((size_t)(n1 ? n1 : 1) * sizeof(int32_t));
    int n = n0 + n1, i0 = 0, i1 = 0;
    for (int p = 0; p < n; p++) {
        if ((p % 3 == 1 && i1 < n1) || i0 >= n0) A->p1[i1++] = p;
        else A->p0[i0++] = p;
    }
    /* causal prefill over the cache's last T positions (decode when T = 1) */
    for (int t = 0; t < T; t++) A->qpos[t] = (n ? n : 1) - T + t;
}

static void att_free(struct att_case *A)
{
    free(A->q), free(A->bk), free(A->bv), free(A->c0), free(A->c1), free(A->freqs);
    free(A->k0), free(A->v0), free(A->k1), free(A->v1), free(A->qpos), free(A->p0), free(A->p1);
}

/* SHARP multiplies the softmax scale: real attention logits reach the hundreds (attention sinks),
 * where exp overflows unless the row maximum is subtracted first. */
static void att_latent(const char *tag, int T, int H, int G, int d, int r, int n0, int n1, bool neox, float sharp)
{
    struct att_case A;
    att_init(&A, T, H, G, d, r, n0, n1);
    struct kvs_latent_seg segs[2] = {{A.c0, A.p0, n0}, {A.c1, A.p1, n1}};
    struct kvs_attn_latent_args a = {.T = T, .q_pos = A.qpos, .n_head = H, .n_head_kv = G, .head_dim = d,
                                     .rank = r, .bk = A.bk, .bv = A.bv, .freqs = A.freqs, .neox = neox,
                                     .scale = sharp / sqrtf((float)d), .segs = segs, .n_segs = 2};
    size_t no = (size_t)T * H * d;
    float *og = malloc(no * sizeof(float)), *oc = malloc(no * sizeof(float));
    for (size_t i = 0; i < no; i++) og[i] = 12345.0f, oc[i] = -1.0f; /* stale values must not survive */
    CHECKF(kvs_backend_attn_latent(cuda16, &a, A.q, og) == KVS_OK, "%s", kvs_backend_error(cuda16));
    CHECK(kvs_backend_attn_latent(cpu, &a, A.q, oc) == KVS_OK);
    char what[128];
    snprintf(what, sizeof what, "emu attn_latent %s (T %d, %d:%d heads, d %d, rank %d, n %d%s)", tag, T, H, G, d, r,
             n0 + n1, neox ? ", neox" : "");
    compare(what, og, oc, (long)no, 2e-5f, 1e-3f);
    free(og), free(oc);
    att_free(&A);
}

static void att_kv16(const char *tag, int T, int H, int G, int d, int n0, int n1, float sharp)
{
    struct att_case A;
    att_init(&A, T, H, G, d, 1, n0, n1);
    struct kvs_kv16_seg segs[2] = {{A.k0, A.v0, A.p0, n0}, {A.k1, A.v1, A.p1, n1}};
    struct kvs_attn_kv16_args a = {.T = T, .q_pos = A.qpos, .n_head = H, .n_head_kv = G, .head_dim = d,
                                   .scale = sharp / sqrtf((float)d), .segs = segs, .n_segs = 2};
    size_t no = (size_t)T * H * d;
    float *og = malloc(no * sizeof(float)), *oc = malloc(no * sizeof(float));
    for (size_t i = 0; i < no; i++) og[i] = 12345.0f, oc[i] = -1.0f;
    CHECKF(kvs_backend_attn_kv16(cuda16, &a, A.q, og) == KVS_OK, "%s", kvs_backend_error(cuda16));
    CHECK(kvs_backend_attn_kv16(cpu, &a, A.q, oc) == KVS_OK);
    char what[128];
    snprintf(what, sizeof what, "emu attn_kv16 %s (T %d, %d:%d heads, d %d, n %d)", tag, T, H, G, d, n0 + n1);
    compare(what, og, oc, (long)no, 2e-5f, 1e-3f);
    free(og), free(oc);
    att_free(&A);
}

static void test_attn_latent(void)
{
    /* SmolLM2-135M: 9 query heads over 3 KV heads of 64 */
    att_latent("decode", 1, 9, 3, 64, 45, 150, 107, false, 1);
    att_latent("decode", 1, 9, 3, 64, 45, 150, 107, true, 1);
    /* 9 queries > the emulated chunk of 7 at n = 257: two chunks */
    att_latent("prefill chunks", 9, 9, 3, 64, 45, 150, 107, false, 1);
    /* Llama-3-like: 8 query heads over 2 KV heads of 128, GQA 4:1 */
    att_latent("decode", 1, 8, 2, 128, 77, 180, 120, true, 1);
    att_latent("prefill chunks", 9, 8, 2, 128, 77, 180, 120, false, 1);
    att_latent("large scores", 2, 9, 3, 64, 45, 40, 30, false, 200);
    /* an empty cache attends to nothing */
    att_latent("empty cache", 3, 9, 3, 64, 45, 0, 0, false, 1);
}

static void test_attn_kv16(void)
{
    att_kv16("decode", 1, 9, 3, 64, 150, 107, 1);
    att_kv16("prefill chunks", 9, 9, 3, 64, 150, 107, 1);
    att_kv16("decode", 1, 8, 2, 128, 180, 120, 1);
    att_kv16("prefill chunks", 9, 8, 2, 128, 180, 120, 1);
    att_kv16("large scores", 2, 8, 2, 128, 40, 30, 200);
    att_kv16("empty cache", 3, 8, 2, 128, 0, 0, 1);
}

/* ---------------------------------------------------------------- MiniCache pairs */

/* The merged rows of pair 0 on the device equal the CPU's: positions exactly, directions and norms
 * to within an fp16 step (the kernels sum in the CPU's order; only the math library and fused
 * multiply-adds may move a last bit). */
static void mc_pairs_same(const char *what, struct kvs_mc_pool *pg, struct kvs_mc_pool *pc)
{
    int n = kvs_mc_pool_merged(pc, 0), nkv = pc->nkv, d = pc->d;
    CHECKF(kvs_mc_pool_merged(pg, 0) == n, "%s: %d merged rows on the device, %d on the CPU", what,
           kvs_mc_pool_merged(pg, 0), n);
    if (kvs_mc_pool_merged(pg, 0) != n || !n) return;
    size_t e = (size_t)n * nkv * d, en = (size_t)n * 4 * nkv;
    uint16_t *h[2][3];
    int32_t *ps[2];
    for (int s = 0; s < 2; s++) {
        h[s][0] = malloc(e * 2), h[s][1] = malloc(e * 2), h[s][2] = malloc(en * 2);
        ps[s] = malloc((size_t)n * 4);
        struct kvs_mc_pool *p = s ? pc : pg;
        CHECKF(kvs_backend_mc_read(p->be, &p->pairs[0], nkv, d, 0, n, h[s][0], h[s][1], h[s][2], ps[s]) == KVS_OK,
               "%s: reading merged rows: %s", what, kvs_backend_error(p->be));
    }
    CHECKF(!memcmp(ps[0], ps[1], (size_t)n * 4), "%s: merged rows' positions differ", what);
    const char *names[3] = {"key directions", "value directions", "norms"};
    for (int a = 0; a < 3; a++) {
        size_t cnt = a < 2 ? e : en, bits = 0;
        float *x = malloc(cnt * sizeof(float)), *y = malloc(cnt * sizeof(float));
        for (size_t i = 0; i < cnt; i++) {
            x[i] = kvs_fp16_to_fp32(h[0][a][i]), y[i] = kvs_fp16_to_fp32(h[1][a][i]);
            bits += h[0][a][i] != h[1][a][i];
        }
        char w[200];
        snprintf(w, sizeof w, "%s: merged %s (%d rows, %d heads of %d; %zu of %zu fp16 values not bit-equal)", what,
                 names[a], n, nkv, d, bits, cnt);
        compare(w, x, y, (long)cnt, a < 2 ? 1e-3f : 1e-4f, 2e-3f);
        free(x), free(y);
    }
    for (int s = 0; s < 2; s++) free(h[s][0]), free(h[s][1]), free(h[s][2]), free(ps[s]);
}

/* Unmerged rows of LAYER equal bit for bit (plain stores and compaction). */
static void mc_rows_same(const char *what, struct kvs_mc_pool *pg, struct kvs_mc_pool *pc, int layer)
{
    int n = kvs_mc_pool_rows(pc, layer), dkv = pc->dkv;
    CHECKF(kvs_mc_pool_rows(pg, layer) == n, "%s: layer %d keeps %d unmerged rows on the device, %d on the CPU",
           what, layer, kvs_mc_pool_rows(pg, layer), n);
    if (kvs_mc_pool_rows(pg, layer) != n || !n) return;
    size_t e = (size_t)n * dkv;
    uint16_t *kg = malloc(e * 2), *vg = malloc(e * 2), *kc = malloc(e * 2), *vc = malloc(e * 2);
    int32_t *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    CHECK(kvs_cache_pool_read(pg->rows, layer, 0, n, kg, vg, a) == KVS_OK);
    CHECK(kvs_cache_pool_read(pc->rows, layer, 0, n, kc, vc, b) == KVS_OK);
    CHECKF(!memcmp(kg, kc, e * 2) && !memcmp(vg, vc, e * 2) && !memcmp(a, b, (size_t)n * 4),
           "%s: layer %d's unmerged rows differ from the CPU's", what, layer);
    free(kg), free(vg), free(kc), free(vc), free(a), free(b);
}

/* Attention of T queries (the last T positions) of both layers of the pair over unmerged and
 * merged rows, device against CPU. */
static void mc_attend_same(const char *what, struct kvs_mc_pool *pg, struct kvs_mc_pool *pc, int T, int H, int last,
                           float sharp)
{
    int d = pc->d;
    size_t no = (size_t)T * H * d, bytes = no * sizeof(float);
    float *q = rand_vec(no, -sharp, sharp), *og = malloc(bytes), *oc = malloc(bytes);
    int32_t *qp = malloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) qp[t] = last - T + 1 + t;
    struct kvs_buf bq = {0}, bo = {0};
    CHECK(kvs_backend_buf_alloc(cuda16, &bq, bytes) == KVS_OK && kvs_backend_buf_alloc(cuda16, &bo, bytes) == KVS_OK);
    CHECK(kvs_backend_buf_upload(cuda16, &bq, 0, q, bytes) == KVS_OK);
    for (int layer = 0; layer < 2; layer++) {
        for (size_t i = 0; i < no; i++) og[i] = 12345.0f, oc[i] = -1.0f;
        CHECK(kvs_backend_buf_upload(cuda16, &bo, 0, og, bytes) == KVS_OK); /* stale values must not survive */
        CHECKF(kvs_mc_pool_attend_buf(pg, layer, 0, T, qp, H, bq.data, bo.data) == KVS_OK, "%s: %s", what, pg->err);
        CHECK(kvs_backend_buf_download(cuda16, og, &bo, 0, bytes) == KVS_OK);
        CHECKF(kvs_mc_pool_attend_buf(pc, layer, 0, T, qp, H, q, oc) == KVS_OK, "%s: %s", what, pc->err);
        char w[200];
        snprintf(w, sizeof w, "%s: attention of layer %d (T %d, %d:%d heads, d %d, %d unmerged + %d merged rows)",
                 what, layer, T, H, pc->nkv, d, kvs_mc_pool_rows(pc, layer), kvs_mc_pool_merged(pc, 0));
        compare(w, og, oc, (long)no, 2e-5f, 1e-3f);
    }
    kvs_backend_buf_free(cuda16, &bq), kvs_backend_buf_free(cuda16, &bo);
    free(q), free(og), free(oc), free(qp);
}

/* Stores T tokens at positions N.. into both layers of both pools: layer 1's rows are layer 0's
 * scaled per head (1.7 for keys, 0.6 for values) plus noise, so the layers are similar but their
 * norms differ; one token's first key head is exactly parallel (SLERP's linear branch). */
static void mc_store_both(struct kvs_mc_pool *pg, struct kvs_mc_pool *pc, int n, int T)
{
    int dkv = pc->dkv, d = pc->d;
    size_t e = (size_t)T * dkv;
    float *k0 = rand_vec(e, -2, 2), *v0 = rand_vec(e, -2, 2), *k1 = rand_vec(e, -0.8f, 0.8f),
          *v1 = rand_vec(e, -0.8f, 0.8f);
    for (size_t i = 0; i < e; i++) k1[i] += 1.7f * k0[i], v1[i] += 0.6f * v0[i];
    for (int x = 0; x < d; x++) k1[x] = 2.0f * k0[x];
    int32_t *pos = malloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) pos[t] = n + t;
    float *kv[4] = {k0, v0, k1, v1};
    struct kvs_buf b[4];
    for (int i = 0; i < 4; i++) {
        memset(&b[i], 0, sizeof b[i]);
        CHECK(kvs_backend_buf_alloc(cuda16, &b[i], e * sizeof(float)) == KVS_OK);
        CHECK(kvs_backend_buf_upload(cuda16, &b[i], 0, kv[i], e * sizeof(float)) == KVS_OK);
    }
    for (int l = 0; l < 2; l++) {
        CHECKF(kvs_mc_pool_store_buf(pg, l, T, pos, b[2 * l].data, b[2 * l + 1].data) == KVS_OK, "%s", pg->err);
        CHECKF(kvs_mc_pool_store_buf(pc, l, T, pos, kv[2 * l], kv[2 * l + 1]) == KVS_OK, "%s", pc->err);
    }
    for (int i = 0; i < 4; i++) kvs_backend_buf_free(cuda16, &b[i]), free(kv[i]);
    free(pos);
}

/* Scores every unmerged row from SINKS on except the last RECENT on both backends (compared), then
 * merges on both in the CPU's order of distance, the first KEEP of them retained. */
static void mc_merge_both(const char *what, struct kvs_mc_pool *pg, struct kvs_mc_pool *pc, int sinks, int recent,
                          float retain)
{
    int n = kvs_mc_pool_rows(pc, 0), nkv = pc->nkv, m = 0;
    int32_t *idx = malloc((size_t)(n + 1) * sizeof(int32_t)), *pos = malloc((size_t)(n + 1) * sizeof(int32_t));
    CHECK(kvs_mc_pool_read_pos(pc, 0, 0, n, pos) == KVS_OK);
    int32_t last = n ? pos[n - 1] : 0;
    for (int i = 0; i < n; i++)
        if (pos[i] >= sinks && pos[i] <= last - recent) idx[m++] = i;
    float *dg = malloc((size_t)(m + 1) * sizeof(float)), *dc = malloc((size_t)(m + 1) * sizeof(float));
    double *xg = malloc(((size_t)m * 2 * nkv + 1) * sizeof(double)), *xc = malloc(((size_t)m * 2 * nkv + 1) * sizeof(double));
    CHECKF(kvs_mc_pool_score(pg, 0, idx, m, dg, xg) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_mc_pool_score(pc, 0, idx, m, dc, xc) == KVS_OK, "%s: %s", what, pc->err);
    char w[160];
    snprintf(w, sizeof w, "%s: distances of %d rows", what, m);
    compare(w, dg, dc, m, 1e-6f, 1e-5f);
    float *fg = malloc(((size_t)m * 2 * nkv + 1) * sizeof(float)), *fc = malloc(((size_t)m * 2 * nkv + 1) * sizeof(float));
    for (size_t i = 0; i < (size_t)m * 2 * nkv; i++) fg[i] = (float)xg[i], fc[i] = (float)xc[i];
    snprintf(w, sizeof w, "%s: cosines of %d rows x %d heads", what, m, 2 * nkv);
    compare(w, fg, fc, (long)m * 2 * nkv, 1e-6f, 1e-5f);
    /* the CPU's order (most distant first, then by row) for both: the contents can then be compared */
    for (int a = 1; a < m; a++)
        for (int b = a; b > 0 && (dc[b] > dc[b - 1] || (dc[b] == dc[b - 1] && idx[b] < idx[b - 1])); b--) {
            float tf = dc[b];
            dc[b] = dc[b - 1], dc[b - 1] = tf;
            int32_t ti = idx[b];
            idx[b] = idx[b - 1], idx[b - 1] = ti;
        }
    int keep = (int)lroundf(retain * (float)m);
    CHECKF(kvs_mc_pool_merge(pg, 0, 0.6f, idx, m, keep) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_mc_pool_merge(pc, 0, 0.6f, idx, m, keep) == KVS_OK, "%s: %s", what, pc->err);
    fprintf(stderr, "   %s: %d scored, %d retained, %d merged\n", what, m, keep, m - keep);
    free(idx), free(pos), free(dg), free(dc), free(xg), free(xc), free(fg), free(fc);
}

/* One layer pair on the emulated device and on the CPU fed the same rows: an empty pool and an
 * empty pair, stores past several blocks, scores, a merge with retained rows, attention of both
 * layers (a decode query and query chunks), more stores and a second merge appended after the
 * first, and the device bytes counted and given back. */
static void mc_case(int H, int G, int d, int block)
{
    char what[96], err[256];
    snprintf(what, sizeof what, "emu minicache pair (%d:%d heads, d %d, blocks of %d)", H, G, d, block);
    struct kvs_mc_pool *pg = NULL, *pc = NULL;
    uint64_t base = cuda16->pool_bytes;
    const int la = 0;
    CHECKF(kvs_mc_pool_new(&pg, cuda16, 2, G, d, block, 1, &la, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_mc_pool_new(&pc, cpu, 2, G, d, block, 1, &la, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) goto done;
    CHECKF(kvs_backend_mc_native(cuda16), "%s: the CUDA backend has no minicache entries", what);
    mc_attend_same("empty pool", pg, pc, 3, H, 2, 1);
    int n = 0;
    const int chunks[] = {37, 1, 100, 1, 60};
    for (size_t c = 0; c < KVS_ARRAY_LEN(chunks); c++) mc_store_both(pg, pc, n, chunks[c]), n += chunks[c];
    mc_attend_same("empty pair", pg, pc, 1, H, n - 1, 1);
    mc_merge_both(what, pg, pc, 4, 16, 0.1f);
    mc_pairs_same(what, pg, pc);
    for (int l = 0; l < 2; l++) mc_rows_same(what, pg, pc, l);
    mc_attend_same(what, pg, pc, 1, H, n - 1, 1);
    mc_attend_same(what, pg, pc, 9, H, n - 1, 1); /* query chunks; early queries see fewer rows */
    mc_attend_same("large scores", pg, pc, 2, H, n - 1, 8);
    mc_store_both(pg, pc, n, 70), n += 70;
    mc_merge_both("second merge", pg, pc, 4, 16, 0.1f);
    mc_pairs_same("second merge", pg, pc);
    for (int l = 0; l < 2; l++) mc_rows_same("second merge", pg, pc, l);
    mc_attend_same("second merge", pg, pc, 1, H, n - 1, 1);
    uint64_t ag = kvs_mc_pool_bytes_alloc(pg, 0) + kvs_mc_pool_bytes_alloc(pg, 1);
    uint64_t ac = kvs_mc_pool_bytes_alloc(pc, 0) + kvs_mc_pool_bytes_alloc(pc, 1);
    uint64_t hg = kvs_mc_pool_bytes_held(pg, 0) + kvs_mc_pool_bytes_held(pg, 1);
    uint64_t hc = kvs_mc_pool_bytes_held(pc, 0) + kvs_mc_pool_bytes_held(pc, 1);
    CHECKF(ag == ac && hg == hc && hg <= ag && pg->pairs[0].cap == (pg->pairs[0].n + block - 1) / block * block,
           "%s: device %llu held / %llu allocated, CPU %llu / %llu, %d merged rows in %d", what, (unsigned long long)hg,
           (unsigned long long)ag, (unsigned long long)hc, (unsigned long long)ac, pg->pairs[0].n, pg->pairs[0].cap);
    CHECKF(cuda16->pool_bytes - base == ag, "%s: the backend counts %llu device bytes, the pool %llu", what,
           (unsigned long long)(cuda16->pool_bytes - base), (unsigned long long)ag);
done:
    kvs_mc_pool_delete(pg);
    kvs_mc_pool_delete(pc);
    CHECKF(cuda16->pool_bytes == base, "%s: %llu device bytes left after the pool was deleted", what,
           (unsigned long long)(cuda16->pool_bytes - base));
}

static void test_minicache(void)
{
    mc_case(9, 3, 64, 64);   /* SmolLM2: GQA 3:1, head width 64 */
    mc_case(8, 2, 128, 64);  /* Llama-3-like: GQA 4:1, head width 128 */
}

/* ---------------------------------------------------------------- svd */

/* Rows of LAYER 0 of both pools are equal bit for bit (K, V and positions). */
static void kv_rows_same(const char *what, struct kvs_cache_pool *pg, struct kvs_cache_pool *pc, int dkv)
{
    int n = kvs_cache_pool_rows(pc, 0);
    CHECKF(kvs_cache_pool_rows(pg, 0) == n, "%s: rows %d on the device, %d on the CPU", what,
           kvs_cache_pool_rows(pg, 0), n);
    if (kvs_cache_pool_rows(pg, 0) != n || n == 0) return;
    size_t e = (size_t)n * dkv;
    uint16_t *kg = malloc(e * 2), *vg = malloc(e * 2), *kc = malloc(e * 2), *vc = malloc(e * 2);
    int32_t *pgp = malloc((size_t)n * 4), *pcp = malloc((size_t)n * 4);
    CHECKF(kvs_cache_pool_read(pg, 0, 0, n, kg, vg, pgp) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_cache_pool_read(pc, 0, 0, n, kc, vc, pcp) == KVS_OK, "%s: %s", what, pc->err);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < e; i++)
        if (kg[i] != kc[i] || vg[i] != vc[i]) {
            if (!bad) first = i;
            bad++;
        }
    CHECKF(bad == 0, "%s: %zu of %zu fp16 K/V values differ from the CPU's, first at row %zu", what, bad, e,
           first / dkv);
    CHECKF(!memcmp(pgp, pcp, (size_t)n * 4), "%s: positions differ", what);
    free(kg), free(vg), free(kc), free(vc), free(pgp), free(pcp);
}

/* Attention of T queries at the last T positions of both pools, with the attention mass. */
static void kv_attend_same(const char *what, struct kvs_cache_pool *pg, struct kvs_cache_pool *pc, int T, int H,
                           int G, int d, float sharp)
{
    int n = kvs_cache_pool_rows(pc, 0), last = 0;
    if (n) CHECK(kvs_cache_pool_read(pc, 0, n - 1, 1, NULL, NULL, &last) == KVS_OK);
    size_t no = (size_t)T * H * d;
    float *q = rand_vec(no, -sharp, sharp);
    float *og = malloc(no * sizeof(float)), *oc = malloc(no * sizeof(float));
    float *mg = malloc((size_t)(n + 1) * sizeof(float)), *mc = malloc((size_t)(n + 1) * sizeof(float));
    int32_t *qp = malloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) qp[t] = last - T + 1 + t; /* causal: early queries do not see late rows */
    for (size_t i = 0; i < no; i++) og[i] = 12345.0f, oc[i] = -1.0f;
    for (int j = 0; j <= n; j++) mg[j] = 777.0f, mc[j] = -1.0f;
    CHECKF(kvs_cache_pool_attend(pg, 0, T, qp, H, G, d, q, og, mg) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_cache_pool_attend(pc, 0, T, qp, H, G, d, q, oc, mc) == KVS_OK, "%s: %s", what, pc->err);
    char w[160];
    snprintf(w, sizeof w, "%s: attention (T %d, %d:%d heads, d %d, n %d)", what, T, H, G, d, n);
    compare(w, og, oc, (long)no, 2e-5f, 1e-3f);
    if (n) {
        snprintf(w, sizeof w, "%s: attention mass (T %d, %d heads, n %d)", what, T, H, n);
        compare(w, mg, mc, n, 1e-5f, 1e-3f);
    }
    CHECKF(mg[n] == 777.0f, "%s: attention mass written past the %d rows", what, n);
    free(q), free(og), free(oc), free(mg), free(mc), free(qp);
}

/* One pool on the emulated device and one on the CPU fed the same rows: stores of CHUNKS rows
 * (growing past blocks of BLOCK), attention with mass, compaction, more stores after it. */
static void kv_pool_case(int H, int G, int d, int block, float sharp)
{
    int dkv = G * d, n = 0;
    char what[96], err[256];
    snprintf(what, sizeof what, "emu kv pool (%d:%d heads, d %d, blocks of %d)", H, G, d, block);
    struct kvs_cache_pool *pg = NULL, *pc = NULL;
    uint64_t base = cuda16->pool_bytes;
    CHECKF(kvs_cache_pool_new(&pg, cuda16, 1, dkv, block, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_cache_pool_new(&pc, cpu, 1, dkv, block, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) goto done;
    CHECKF(kvs_cache_pool_native(pg), "%s: the device pool takes the CPU fallback", what);
    kv_attend_same("empty pool", pg, pc, 3, H, G, d, 1); /* nothing allocated yet: output all zero */
    const int chunks[] = {37, 1, 100, 1, 60};
    for (size_t c = 0; c < KVS_ARRAY_LEN(chunks); c++) {
        int T = chunks[c];
        float *k = rand_vec((size_t)T * dkv, -4, 4), *v = rand_vec((size_t)T * dkv, -4, 4);
        int32_t *pos = malloc((size_t)T * sizeof(int32_t));
        for (int t = 0; t < T; t++) pos[t] = n + t;
        if (c == 0) k[5] = 1e5f, v[7] = -3e-8f; /* overflow to inf and a subnormal round as on the CPU */
        CHECKF(kvs_cache_pool_store(pg, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pg->err);
        CHECKF(kvs_cache_pool_store(pc, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pc->err);
        n += T;
        free(k), free(v), free(pos);
        if (c == 0) { /* the inf key would make every score non-finite: overwrite through a fresh pool below */
            kv_rows_same(what, pg, pc, dkv);
            kvs_cache_pool_reset(pg), kvs_cache_pool_reset(pc);
            n = 0;
            float *k2 = rand_vec((size_t)T * dkv, -4, 4), *v2 = rand_vec((size_t)T * dkv, -4, 4);
            int32_t *p2 = malloc((size_t)T * sizeof(int32_t));
            for (int t = 0; t < T; t++) p2[t] = t;
            CHECK(kvs_cache_pool_store(pg, 0, T, p2, k2, v2) == KVS_OK);
            CHECK(kvs_cache_pool_store(pc, 0, T, p2, k2, v2) == KVS_OK);
            n = T;
            free(k2), free(v2), free(p2);
        }
    }
    CHECKF(kvs_cache_pool_bytes_alloc(pg, 0) == kvs_cache_pool_bytes_alloc(pc, 0) &&
               kvs_cache_pool_bytes_alloc(pg, 0) >= kvs_cache_pool_bytes_held(pg, 0) &&
               pg->rows[0].cap == (n + block - 1) / block * block,
           "%s: %d rows in %d allocated (blocks of %d)", what, n, pg->rows[0].cap, block);
    CHECKF(cuda16->pool_bytes - base == kvs_cache_pool_bytes_alloc(pg, 0),
           "%s: the backend counts %llu device bytes, the pool %llu", what,
           (unsigned long long)(cuda16->pool_bytes - base), (unsigned long long)kvs_cache_pool_bytes_alloc(pg, 0));
    kv_rows_same(what, pg, pc, dkv);
    kv_attend_same(what, pg, pc, 1, H, G, d, sharp);
    kv_attend_same(what, pg, pc, 20, H, G, d, sharp); /* query chunks: the mass adds up over them */
    /* eviction: keep the first 4, every third row and the last 30 */
    uint8_t *keep = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) keep[i] = i < 4 || i % 3 == 0 || i >= n - 30;
    CHECKF(kvs_cache_pool_compact(pg, 0, keep) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_cache_pool_compact(pc, 0, keep) == KVS_OK, "%s: %s", what, pc->err);
    free(keep);
    kv_rows_same("after compaction", pg, pc, dkv);
    kv_attend_same("after compaction", pg, pc, 20, H, G, d, sharp);
    CHECKF(pg->rows[0].cap == (kvs_cache_pool_rows(pg, 0) + block - 1) / block * block,
           "%s: compaction kept %d blocks for %d rows", what, pg->rows[0].cap / block, kvs_cache_pool_rows(pg, 0));
    float *k = rand_vec((size_t)70 * dkv, -4, 4), *v = rand_vec((size_t)70 * dkv, -4, 4);
    int32_t pos[70];
    for (int t = 0; t < 70; t++) pos[t] = n + t;
    CHECK(kvs_cache_pool_store(pg, 0, 70, pos, k, v) == KVS_OK);
    CHECK(kvs_cache_pool_store(pc, 0, 70, pos, k, v) == KVS_OK);
    free(k), free(v);
    kv_rows_same("stored after compaction", pg, pc, dkv);
    kv_attend_same("stored after compaction", pg, pc, 1, H, G, d, sharp);
done:
    kvs_cache_pool_delete(pg);
    kvs_cache_pool_delete(pc);
    CHECKF(cuda16->pool_bytes == base, "%s: %llu device bytes left after the pool was deleted", what,
           (unsigned long long)(cuda16->pool_bytes - base));
}

/* ---------------------------------------------------------------- quantized K/V pool */

/* The packed tier of layer 0 of two quantized pools, byte for byte, and their block tables. */
static void kvq_bytes_same(const char *what, struct kvs_kvq_pool *pg, struct kvs_kvq_pool *pc)
{
    const struct kvs_kvq_rows *g = &pg->rows[0], *c = &pc->rows[0];
    bool table = g->nblk == c->nblk && g->tq == c->tq && g->kq_bytes == c->kq_bytes && g->f16.n == c->f16.n;
    for (int b = 0; table && b < g->nblk; b++)
        table = g->blk_nt[b] == c->blk_nt[b] && g->blk_koff[b] == c->blk_koff[b] && g->blk_t0[b] == c->blk_t0[b];
    CHECKF(table, "%s: block tables differ (device %d blocks / %d tokens / %zu key bytes / %d fp16, CPU %d / %d / %zu / %d)",
           what, g->nblk, g->tq, g->kq_bytes, g->f16.n, c->nblk, c->tq, c->kq_bytes, c->f16.n);
    if (!table) return;
    size_t vb = (size_t)c->tq * pc->f.vrow;
    uint8_t *kg = malloc(c->kq_bytes + 1), *kc = malloc(c->kq_bytes + 1), *vg = malloc(vb + 1), *vc = malloc(vb + 1);
    int32_t *ppg = malloc((size_t)c->tq * 4 + 4), *ppc = malloc((size_t)c->tq * 4 + 4);
    CHECK(kvs_backend_kvq_read(cuda16, g, &pg->f, kg, vg, ppg) == KVS_OK);
    CHECK(kvs_backend_kvq_read(cpu, c, &pc->f, kc, vc, ppc) == KVS_OK);
    size_t kd = 0, vd = 0;
    for (size_t i = 0; i < c->kq_bytes; i++) kd += kg[i] != kc[i];
    for (size_t i = 0; i < vb; i++) vd += vg[i] != vc[i];
    fprintf(stderr, "   %s: %d blocks, %d packed tokens, %zu key and %zu value bytes; differing bytes %zu and %zu\n",
            what, c->nblk, c->tq, c->kq_bytes, vb, kd, vd);
    CHECKF(kd == 0 && vd == 0 && !memcmp(ppg, ppc, (size_t)c->tq * 4),
           "%s: packed bytes differ from the CPU twin's (%zu key, %zu value bytes)", what, kd, vd);
    free(kg), free(kc), free(vg), free(vc), free(ppg), free(ppc);
}

/* Attention of T queries (positions spread over the context, the last at its end) over both pools,
 * with the mass added to the scores, then the pooled eviction scores of both. */
static void kvq_attend_same(const char *what, struct kvs_kvq_pool *pg, struct kvs_kvq_pool *pc, int T, int H, int G,
                            int d, int n_ctx)
{
    int dq = H * d;
    float *q = rand_vec((size_t)T * dq, -1, 1), *og = malloc((size_t)T * dq * 4), *oc = malloc((size_t)T * dq * 4);
    int32_t *qp = malloc((size_t)T * 4);
    for (int t = 0; t < T; t++) qp[t] = n_ctx - 1 - (T - 1 - t) * 3 < 0 ? 0 : n_ctx - 1 - (T - 1 - t) * 3;
    char w[200];
    enum kvs_status sg = kvs_kvq_pool_attend(pg, 0, T, qp, H, G, d, q, og, true);
    enum kvs_status sc = kvs_kvq_pool_attend(pc, 0, T, qp, H, G, d, q, oc, true);
    CHECKF(sg == KVS_OK && sc == KVS_OK, "%s: attention: %s / %s", what, pg->err, pc->err);
    snprintf(w, sizeof w, "%s: attention over %d packed + %d fp16 rows (T %d)", what, pg->rows[0].tq,
             pg->rows[0].f16.n, T);
    compare(w, og, oc, (long)T * dq, 1e-4f, 1e-3f);
    float *pg_ = malloc((size_t)n_ctx * 4 + 4), *pc_ = malloc((size_t)n_ctx * 4 + 4);
    sg = kvs_kvq_pool_scores(pg, 0, n_ctx, 7, pg_);
    sc = kvs_kvq_pool_scores(pc, 0, n_ctx, 7, pc_);
    CHECKF(sg == KVS_OK && sc == KVS_OK, "%s: eviction scores: %s / %s", what, pg->err, pc->err);
    int inf_diff = 0, held = 0;
    for (int i = 0; i < n_ctx; i++) {
        inf_diff += isinf(pg_[i]) != isinf(pc_[i]);
        held += !isinf(pc_[i]);
        if (isinf(pg_[i]) || isinf(pc_[i])) pg_[i] = pc_[i] = 0;
    }
    CHECKF(inf_diff == 0 && held == kvs_kvq_pool_rows(pc, 0),
           "%s: %d positions marked absent differently, %d scored for %d rows", what, inf_diff, held,
           kvs_kvq_pool_rows(pc, 0));
    snprintf(w, sizeof w, "%s: pooled eviction scores (kernel 7)", what);
    compare(w, pg_, pc_, n_ctx, 1e-5f, 1e-3f);
    free(q), free(og), free(oc), free(qp), free(pg_), free(pc_);
}

/* One quantized pool on the emulated device and one on the CPU fed the same rows: stores, KIVI
 * packing past several blocks (bytes compared), attention with the mass, eviction that empties a
 * block, trims others and drops fp16 rows, then more stores and packing after it. */
static void kvq_case(int H, int G, int d, uint32_t bits)
{
    int dkv = G * d, n = 0, n_ctx = 400, res = 16;
    char what[96], err[256];
    snprintf(what, sizeof what, "emu quantized pool (%d:%d heads, d %d, %u bits)", H, G, d, bits);
    struct kvs_kvq_pool *pg = NULL, *pc = NULL;
    uint64_t base = cuda16->pool_bytes, fb = cuda16->ctr ? cuda16->ctr[KVS_OP_FALLBACK].calls : 0;
    CHECKF(kvs_kvq_pool_new(&pg, cuda16, 1, dkv, bits, 32, 64, n_ctx, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_kvq_pool_new(&pc, cpu, 1, dkv, bits, 32, 64, n_ctx, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) goto done;
    CHECKF(kvs_kvq_pool_native(pg), "%s: the device pool takes the CPU fallback", what);
    kvq_attend_same("empty quantized pool", pg, pc, 2, H, G, d, 8);
    const int chunks[] = {37, 1, 100, 1, 60, 33};
    for (size_t c = 0; c < KVS_ARRAY_LEN(chunks); c++) {
        int T = chunks[c];
        float *k = rand_vec((size_t)T * dkv, -4, 4), *v = rand_vec((size_t)T * dkv, -2, 2);
        int32_t *pos = malloc((size_t)T * sizeof(int32_t));
        for (int t = 0; t < T; t++) pos[t] = n + t;
        if (c == 2) /* a constant channel (scale 0) and a wide one */
            for (int t = 0; t < T; t++) k[(size_t)t * dkv + 3] = 0.5f, k[(size_t)t * dkv + 4] = t * 40.0f;
        CHECKF(kvs_kvq_pool_store(pg, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pg->err);
        CHECKF(kvs_kvq_pool_store(pc, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pc->err);
        CHECKF(kvs_kvq_pool_quantize(pg, 0, res) == KVS_OK, "%s: %s", what, pg->err);
        CHECKF(kvs_kvq_pool_quantize(pc, 0, res) == KVS_OK, "%s: %s", what, pc->err);
        n += T;
        free(k), free(v), free(pos);
    }
    kvq_bytes_same(what, pg, pc);
    CHECKF(pc->rows[0].nblk == (n - res) / 32 && pc->rows[0].f16.n == n - 32 * pc->rows[0].nblk,
           "%s: %d blocks and %d fp16 rows for %d tokens", what, pc->rows[0].nblk, pc->rows[0].f16.n, n);
    kvq_attend_same(what, pg, pc, 1, H, G, d, n);
    kvq_attend_same(what, pg, pc, 20, H, G, d, n);
    /* eviction: block 1 goes whole, block 0 keeps its last token only (the one a dropped-tail bug
     * loses), the others every third token, the fp16 tier its even positions */
    uint8_t *keep = calloc((size_t)n_ctx, 1);
    int packed = pc->rows[0].tq;
    for (int i = 0; i < n; i++)
        keep[i] = i < packed ? (i < 32 ? i == 31 : i < 64 ? 0 : i % 3 == 0 || i == 95) : i % 2 == 0;
    CHECKF(kvs_kvq_pool_drop(pg, 0, keep, n) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_kvq_pool_drop(pc, 0, keep, n) == KVS_OK, "%s: %s", what, pc->err);
    free(keep);
    kvq_bytes_same("after eviction", pg, pc);
    CHECKF(pc->rows[0].blk_nt[0] == 1 && pc->rows[0].nblk == packed / 32 - 1,
           "after eviction: %d blocks, the first of %u tokens", pc->rows[0].nblk, pc->rows[0].blk_nt[0]);
    kvq_attend_same("after eviction", pg, pc, 20, H, G, d, n);
    float *k = rand_vec((size_t)70 * dkv, -4, 4), *v = rand_vec((size_t)70 * dkv, -2, 2);
    int32_t pos[70];
    for (int t = 0; t < 70; t++) pos[t] = n + t;
    CHECK(kvs_kvq_pool_store(pg, 0, 70, pos, k, v) == KVS_OK && kvs_kvq_pool_store(pc, 0, 70, pos, k, v) == KVS_OK);
    CHECK(kvs_kvq_pool_quantize(pg, 0, res) == KVS_OK && kvs_kvq_pool_quantize(pc, 0, res) == KVS_OK);
    n += 70;
    free(k), free(v);
    kvq_bytes_same("stored and packed after eviction", pg, pc);
    kvq_attend_same("stored and packed after eviction", pg, pc, 1, H, G, d, n);
    CHECKF(kvs_kvq_pool_bytes_held(pg, 0) == kvs_kvq_pool_bytes_held(pc, 0) &&
               kvs_kvq_pool_bytes_alloc(pg, 0) >= kvs_kvq_pool_bytes_held(pg, 0),
           "%s: %llu bytes held on the device, %llu on the CPU", what,
           (unsigned long long)kvs_kvq_pool_bytes_held(pg, 0), (unsigned long long)kvs_kvq_pool_bytes_held(pc, 0));
    CHECKF(cuda16->pool_bytes - base == kvs_kvq_pool_bytes_alloc(pg, 0),
           "%s: the backend counts %llu device bytes, the pool %llu", what,
           (unsigned long long)(cuda16->pool_bytes - base), (unsigned long long)kvs_kvq_pool_bytes_alloc(pg, 0));
    CHECKF(!cuda16->ctr || cuda16->ctr[KVS_OP_FALLBACK].calls == fb, "%s: %llu CPU fallbacks", what,
           (unsigned long long)(cuda16->ctr[KVS_OP_FALLBACK].calls - fb));
done:
    kvs_kvq_pool_delete(pg);
    kvs_kvq_pool_delete(pc);
    CHECKF(cuda16->pool_bytes == base, "%s: %llu device bytes left after the pool was deleted", what,
           (unsigned long long)(cuda16->pool_bytes - base));
}

static void test_kv_quant(void)
{
    kvq_case(9, 3, 64, 2); /* SmolLM2: dkv 192 */
    kvq_case(9, 3, 64, 4);
    kvq_case(9, 3, 64, 8);
    kvq_case(8, 2, 128, 4); /* dkv 256, head width 128 */
    kvq_case(8, 4, 128, 2); /* dkv 512 */
    kvq_case(8, 4, 128, 8);
}

/* Every layer's newest key row in one read (a step record's layer similarity): SmolLM2's 30 layers,
 * rows held differing by layer (one empty), bit for bit the device's and the CPU's, each equal to
 * that layer's last row read alone. */
static void kv_newest_keys_case(void)
{
    const int NL = 30, dkv = 192;
    struct kvs_cache_pool *pg = NULL, *pc = NULL;
    char err[256];
    CHECKF(kvs_cache_pool_new(&pg, cuda16, NL, dkv, 64, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_cache_pool_new(&pc, cpu, NL, dkv, 64, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) return;
    for (int l = 0; l < NL; l++) {
        int T = l == 7 ? 0 : 1 + (l * 13) % 70;
        int32_t pos[80];
        for (int t = 0; t < T; t++) pos[t] = t;
        float *k = rand_vec((size_t)(T ? T : 1) * dkv, -3, 3), *v = rand_vec((size_t)(T ? T : 1) * dkv, -3, 3);
        if (T) {
            CHECK(kvs_cache_pool_store(pg, l, T, pos, k, v) == KVS_OK);
            CHECK(kvs_cache_pool_store(pc, l, T, pos, k, v) == KVS_OK);
        }
        free(k), free(v);
    }
    uint16_t *kg = malloc((size_t)NL * dkv * 2), *kc = malloc((size_t)NL * dkv * 2), *one = malloc((size_t)dkv * 2);
    CHECKF(kvs_cache_pool_newest_keys(pg, kg) == KVS_OK, "%s", pg->err);
    CHECK(kvs_cache_pool_newest_keys(pc, kc) == KVS_OK);
    CHECKF(!memcmp(kg, kc, (size_t)NL * dkv * 2), "newest keys of %d layers differ between the device and the CPU", NL);
    int bad = -1;
    for (int l = 0; l < NL && bad < 0; l++) {
        int n = kvs_cache_pool_rows(pc, l);
        if (n) CHECK(kvs_cache_pool_read(pc, l, n - 1, 1, one, NULL, NULL) == KVS_OK);
        else memset(one, 0, (size_t)dkv * 2);
        if (memcmp(kg + (size_t)l * dkv, one, (size_t)dkv * 2)) bad = l;
    }
    CHECKF(bad < 0, "layer %d's newest key read with the others differs from its last row", bad);
    free(kg), free(kc), free(one);
    kvs_cache_pool_delete(pg);
    kvs_cache_pool_delete(pc);
}

static void test_kv_pool(void)
{
    kv_pool_case(9, 3, 64, 64, 1);   /* SmolLM2: GQA 3:1, head width 64 */
    kv_pool_case(8, 2, 128, 64, 1);  /* Llama-3-like: GQA 4:1, head width 128 */
    kv_pool_case(8, 2, 128, 16, 12); /* small blocks (many moves), large scores */
    kv_newest_keys_case();
}

/* ---------------------------------------------------------------- CommonKV latent segments */

/* Every array and position of segment A (device) equals B's (CPU), bit for bit: both round fp32 to
 * fp16 the same way and the merge sums in the same order with the same fused multiply-adds. */
static void lat_same(const char *what, const struct kvs_ckv_seg *a, const struct kvs_ckv_seg *b)
{
    CHECKF(a->n == b->n, "%s: %u rows on the device, %u on the CPU", what, a->n, b->n);
    if (a->n != b->n) return;
    CHECKF(!a->n || !memcmp(a->pos, b->pos, a->n * sizeof(int32_t)), "%s: positions differ", what);
    size_t cnt = (size_t)a->n * a->width;
    float *x = malloc((cnt + 1) * sizeof(float)), *y = malloc((cnt + 1) * sizeof(float));
    int32_t *pd = malloc(((size_t)a->n + 1) * sizeof(int32_t));
    for (uint32_t arr = 0; arr < a->n_arr; arr++) {
        x[cnt] = 555.0f;
        CHECKF(kvs_ckv_seg_read(a, arr, 0, a->n, x) == KVS_OK, "%s: device read: %s", what, cuda16->err);
        CHECK(kvs_ckv_seg_read(b, arr, 0, b->n, y) == KVS_OK);
        CHECKF(x[cnt] == 555.0f, "%s: read wrote past %u rows", what, a->n);
        long bad = -1;
        for (size_t i = 0; i < cnt && bad < 0; i++)
            if (memcmp(&x[i], &y[i], sizeof(float))) bad = (long)i;
        CHECKF(bad < 0, "%s: array %u differs first at row %ld col %ld: %.7g vs %.7g", what, arr,
               bad < 0 ? 0 : bad / (long)a->width, bad < 0 ? 0 : bad % (long)a->width, bad < 0 ? 0.0 : (double)x[bad],
               bad < 0 ? 0.0 : (double)y[bad]);
    }
    /* the stored bytes themselves (packed rows: the device encoder's scale, minimum and codes) */
    size_t rb = (size_t)a->n * a->row_bytes;
    uint8_t *raw = malloc(rb + 1);
    for (uint32_t arr = 0; arr < a->n_arr && a->n; arr++) {
        CHECK(cuda16->ops->buf_download(cuda16, raw, a->L.rows[arr], rb) == KVS_OK);
        long bad = -1;
        for (size_t i = 0; i < rb && bad < 0; i++)
            if (raw[i] != ((const uint8_t *)b->L.rows[arr])[i]) bad = (long)i;
        CHECKF(bad < 0, "%s: array %u's bytes differ first at row %ld byte %ld (%d bytes a row)", what, arr,
               bad / (long)a->row_bytes, bad % (long)a->row_bytes, (int)a->row_bytes);
    }
    free(raw);
    /* the positions in device memory, not only the host copy */
    if (a->n) {
        CHECK(kvs_backend_lat_read(cuda16, &a->L, &a->f, 0, 0, (int)a->n, x, pd) == KVS_OK);
        CHECKF(!memcmp(pd, b->pos, a->n * sizeof(int32_t)), "%s: device positions differ from the CPU's", what);
    }
    free(x), free(y), free(pd);
}

/* A private segment of G arrays of rank R and a shared one, on the emulated device and on the CPU,
 * fed the same tokens at non-dense positions: appends past several blocks, a merge of scattered
 * rows in a shuffled order into the shared segment, compaction of the merged rows, appends after
 * it, an empty segment, and the device bytes counted and given back. */
static void lat_pool_case(int G, int R, int block, int bits, int group)
{
    char what[128];
    snprintf(what, sizeof what, "emu latent segment (%d layers, rank %d, blocks of %d, %s%d%s%d)", G, R, block,
             bits ? "packed " : "fp16", bits, bits ? " bits, groups of " : "", bits ? group : 0);
    struct kvs_lat_fmt f = {.width = R, .row_bytes = 2 * R};
    if (bits) { /* the row codec of quant_codec.h, as commonkv+quant stores its older latents */
        f.codec = KVS_LAT_QROW, f.bits = (uint32_t)bits, f.group = (uint32_t)group;
        f.row_bytes = (int)kvs_qrow_bytes((uint32_t)R, (uint32_t)bits, (uint32_t)group);
    }
    struct kvs_ckv_seg pg, pc, sg, sc;
    kvs_ckv_seg_init(&pg, &f, (uint32_t)G, (uint32_t)block);
    kvs_ckv_seg_init(&pc, &f, (uint32_t)G, (uint32_t)block);
    kvs_ckv_seg_init(&sg, &f, 1, (uint32_t)block);
    kvs_ckv_seg_init(&sc, &f, 1, (uint32_t)block);
    uint64_t base = cuda16->pool_bytes;
    /* empty: nothing allocated, reads of nothing and a merge of nothing succeed */
    CHECK(kvs_ckv_seg_read(&pg, 0, 0, 0, NULL) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(&sg, cuda16, 1) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, 1) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(&pg, cuda16, 1) == KVS_OK && kvs_ckv_seg_reserve(&pc, cpu, 1) == KVS_OK);
    CHECKF(kvs_ckv_seg_native(&pg) && kvs_ckv_seg_native(&sg), "%s: the device segment takes the CPU fallback", what);
    CHECK(kvs_ckv_seg_merge(&pg, &sg, NULL, 0, NULL) == KVS_OK && sg.n == 0);
    lat_same("empty segment", &pg, &pc);
    int n = 0;
    const int chunks[] = {37, 1, 100, 1, 60};
    for (size_t ci = 0; ci < KVS_ARRAY_LEN(chunks); ci++) {
        int T = chunks[ci];
        int32_t *pos = malloc((size_t)T * sizeof(int32_t));
        for (int t = 0; t < T; t++) pos[t] = 3 * (n + t) + 1; /* positions not dense (an earlier eviction) */
        CHECK(kvs_ckv_seg_reserve(&pg, cuda16, pg.n + (uint32_t)T) == KVS_OK);
        CHECK(kvs_ckv_seg_reserve(&pc, cpu, pc.n + (uint32_t)T) == KVS_OK);
        for (int l = 0; l < G; l++) {
            float *x = rand_vec((size_t)T * R, -3, 3);
            if (ci == 0 && l == 0) x[3] = 1e5f, x[4] = -3e-8f; /* overflow to inf (fp16), a subnormal */
            if (ci == 1 && bits) for (int i = 0; i < R; i++) x[i] = 0.25f; /* a constant group: scale 0 */
            if (l == 0) {
                CHECKF(kvs_ckv_seg_append(&pg, T, pos, x) == KVS_OK, "%s: append: %s", what, cuda16->err);
                CHECK(kvs_ckv_seg_append(&pc, T, pos, x) == KVS_OK);
            } else {
                CHECKF(kvs_ckv_seg_fill(&pg, (uint32_t)l, T, x) == KVS_OK, "%s: fill: %s", what, cuda16->err);
                CHECK(kvs_ckv_seg_fill(&pc, (uint32_t)l, T, x) == KVS_OK);
            }
            free(x);
        }
        n += T;
        free(pos);
    }
    lat_same(what, &pg, &pc);
    CHECKF(pg.cap == (uint32_t)((n + block - 1) / block * block) &&
               kvs_ckv_seg_bytes_alloc(&pg) == kvs_ckv_seg_bytes_alloc(&pc),
           "%s: %d rows in %u allocated (blocks of %d)", what, n, pg.cap, block);
    CHECKF(cuda16->pool_bytes - base == kvs_ckv_seg_bytes_alloc(&pg) + kvs_ckv_seg_bytes_alloc(&sg),
           "%s: the backend counts %llu device bytes, the segments %llu", what,
           (unsigned long long)(cuda16->pool_bytes - base),
           (unsigned long long)(kvs_ckv_seg_bytes_alloc(&pg) + kvs_ckv_seg_bytes_alloc(&sg)));
    /* merge every 5th row (the first row with its inf included) in a shuffled order */
    int m = 0;
    int32_t *idx = malloc((size_t)n * sizeof(int32_t));
    uint8_t *drop = calloc((size_t)n, 1);
    for (int i = 0; i < n; i += 5) idx[m++] = i;
    for (int i = m - 1; i > 0; i--) {
        int j = (int)(frand(0, 1) * (float)(i + 1)) % (i + 1), t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
    for (int i = 0; i < m; i++) drop[idx[i]] = 1;
    float w[KVS_LAT_MAX_ARR];
    for (int l = 0; l < G; l++) w[l] = (float)(l + 1) / (float)(G * (G + 1) / 2);
    CHECK(kvs_ckv_seg_reserve(&sg, cuda16, (uint32_t)m) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, (uint32_t)m) == KVS_OK);
    CHECKF(kvs_ckv_seg_merge(&pg, &sg, idx, (uint32_t)m, w) == KVS_OK, "%s: merge: %s", what, cuda16->err);
    CHECK(kvs_ckv_seg_merge(&pc, &sc, idx, (uint32_t)m, w) == KVS_OK);
    lat_same("merged rows", &sg, &sc);
    CHECKF(sg.n == (uint32_t)m && sg.pos[0] == 3 * idx[0] + 1, "%s: merged %u rows, first at %d", what, sg.n,
           sg.n ? sg.pos[0] : -1);
    /* a second merge appends after the first (row0 = n) */
    int32_t two[2] = {2, 1};
    CHECK(kvs_ckv_seg_reserve(&sg, cuda16, sg.n + 2) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, sc.n + 2) == KVS_OK);
    CHECK(kvs_ckv_seg_merge(&pg, &sg, two, 2, w) == KVS_OK && kvs_ckv_seg_merge(&pc, &sc, two, 2, w) == KVS_OK);
    lat_same("merged rows appended", &sg, &sc);
    uint32_t rg = 0, rc = 0;
    CHECKF(kvs_ckv_seg_compact(&pg, drop, &rg) == KVS_OK, "%s: compact: %s", what, cuda16->err);
    CHECK(kvs_ckv_seg_compact(&pc, drop, &rc) == KVS_OK);
    CHECKF(rg == (uint32_t)m && rc == (uint32_t)m, "%s: compaction removed %u and %u rows, not %d", what, rg, rc, m);
    lat_same("after compaction", &pg, &pc);
    CHECKF(pg.cap == (pg.n + (uint32_t)block - 1) / (uint32_t)block * (uint32_t)block,
           "%s: compaction kept %u rows of room for %u", what, pg.cap, pg.n);
    {
        int T = 70;
        int32_t pos[70];
        for (int t = 0; t < T; t++) pos[t] = 3 * n + 10 + t;
        CHECK(kvs_ckv_seg_reserve(&pg, cuda16, pg.n + 70) == KVS_OK && kvs_ckv_seg_reserve(&pc, cpu, pc.n + 70) == KVS_OK);
        for (int l = 0; l < G; l++) {
            float *x = rand_vec((size_t)T * R, -3, 3);
            CHECK(l ? kvs_ckv_seg_fill(&pg, (uint32_t)l, T, x) == KVS_OK : kvs_ckv_seg_append(&pg, T, pos, x) == KVS_OK);
            CHECK(l ? kvs_ckv_seg_fill(&pc, (uint32_t)l, T, x) == KVS_OK : kvs_ckv_seg_append(&pc, T, pos, x) == KVS_OK);
            free(x);
        }
    }
    lat_same("stored after compaction", &pg, &pc);
    {
        /* rows leave for a segment of the other format (commonkv+quant's residual window, or back):
         * the device re-encodes them where they are (lat_copy), byte for byte as the twin, two runs
         * appended one after the other, positions following */
        struct kvs_lat_fmt fo = {.width = R, .row_bytes = 2 * R};
        if (!bits) {
            fo.codec = KVS_LAT_QROW, fo.bits = 4, fo.group = 32;
            fo.row_bytes = (int)kvs_qrow_bytes((uint32_t)R, 4, 32);
        }
        struct kvs_ckv_seg og, oc;
        kvs_ckv_seg_init(&og, &fo, (uint32_t)G, (uint32_t)block);
        kvs_ckv_seg_init(&oc, &fo, (uint32_t)G, (uint32_t)block);
        /* the second run longer than the twin's 64-row chunk */
        CHECK(kvs_ckv_seg_reserve(&og, cuda16, 107) == KVS_OK && kvs_ckv_seg_reserve(&oc, cpu, 107) == KVS_OK);
        const uint32_t runs[2][2] = {{0, 7}, {20, 100}};
        for (int k = 0; k < 2; k++) {
            CHECKF(kvs_ckv_seg_move_rows(&pg, runs[k][0], runs[k][1], &og) == KVS_OK, "%s: rows to %s: %s", what,
                   bits ? "fp16" : "packed", cuda16->err);
            CHECK(kvs_ckv_seg_move_rows(&pc, runs[k][0], runs[k][1], &oc) == KVS_OK);
        }
        lat_same(bits ? "packed rows copied to fp16" : "fp16 rows copied to packed", &og, &oc);
        CHECKF(og.n == 107 && og.pos[7] == pg.pos[20] && og.pos[106] == pg.pos[119],
               "%s: %u rows copied, row 7 at %d", what, og.n, og.n > 7 ? og.pos[7] : -1);
        kvs_ckv_seg_free(&og), kvs_ckv_seg_free(&oc);
    }
    free(idx), free(drop);
    kvs_ckv_seg_free(&pg), kvs_ckv_seg_free(&pc), kvs_ckv_seg_free(&sg), kvs_ckv_seg_free(&sc);
    CHECKF(cuda16->pool_bytes == base, "%s: %llu device bytes left after the segments were freed", what,
           (unsigned long long)(cuda16->pool_bytes - base));
}

static void test_latent_pool(void)
{
    lat_pool_case(4, 403, 256, 0, 0); /* SmolLM2 at CR 0.5: rank 403 (not a multiple of 32), groups of 4 */
    lat_pool_case(3, 45, 16, 0, 0);   /* a small rank, groups of 3, small blocks (many moves) */
    lat_pool_case(2, 128, 64, 0, 0);
}

/* Packed rows (commonkv+quant) in device memory against the CPU twin, byte for byte: ranks with a
 * partial last group of 32 (45, 90) and without (64, 96), 2, 4 and 8 bits, 2 to 4 arrays (the
 * merge sums that many), a group wider than the row. */
static void test_latent_packed(void)
{
    CHECKF(kvs_backend_lat_native(cuda16, &(struct kvs_lat_fmt){.width = 45, .row_bytes = 31, .codec = KVS_LAT_QROW,
                                                                 .bits = 4, .group = 32}),
           "the emulated library does not report packed latent rows");
    static const int cases[][5] = {{4, 45, 16, 4, 32}, {3, 45, 64, 2, 32}, {2, 45, 16, 8, 32}, {4, 64, 64, 2, 32},
                                   {3, 64, 16, 4, 32}, {2, 90, 64, 8, 32}, {4, 90, 16, 2, 32}, {3, 96, 64, 4, 32},
                                   {2, 96, 16, 8, 32}, {3, 90, 64, 4, 128}};
    for (size_t k = 0; k < KVS_ARRAY_LEN(cases); k++)
        lat_pool_case(cases[k][0], cases[k][1], cases[k][2], cases[k][3], cases[k][4]);
}

/* A CUDA backend that does not report packed rows (as with a library that lacks them: lat_codec
 * absent) keeps them in host memory through the CPU twins, each call a counted fallback, its fp16
 * rows still on the device; attention over its device rows beside host packed ones is refused
 * with one clear error, not run on the wrong memory. */
static void test_latent_packed_fallback(void)
{
    struct kvs_backend_ops ops = *cuda16->ops;
    struct kvs_backend nb = *cuda16;
    struct kvs_op_counter ctr[KVS_OP_COUNT];
    memset(ctr, 0, sizeof ctr);
    ops.lat_codec = NULL;
    nb.ops = &ops, nb.ctr = ctr, nb.pool_bytes = 0, nb.err[0] = 0;
    struct kvs_lat_fmt fq = {.width = 45, .codec = KVS_LAT_QROW, .bits = 4, .group = 32,
                             .row_bytes = (int)kvs_qrow_bytes(45, 4, 32)};
    struct kvs_lat_fmt f16 = {.width = 45, .row_bytes = 90};
    CHECK(!kvs_backend_lat_native(&nb, &fq) && kvs_backend_lat_native(&nb, &f16));
    struct kvs_ckv_seg sq, sc, s16;
    kvs_ckv_seg_init(&sq, &fq, 2, 16), kvs_ckv_seg_init(&sc, &fq, 2, 16), kvs_ckv_seg_init(&s16, &f16, 2, 16);
    int32_t pos[20];
    for (int i = 0; i < 20; i++) pos[i] = 3 * i;
    CHECK(kvs_ckv_seg_reserve(&sq, &nb, 20) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, 20) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(&s16, &nb, 20) == KVS_OK);
    for (uint32_t l = 0; l < 2; l++) {
        float *x = rand_vec(20 * 45, -2, 2);
        CHECK(l ? kvs_ckv_seg_fill(&sq, l, 20, x) == KVS_OK : kvs_ckv_seg_append(&sq, 20, pos, x) == KVS_OK);
        CHECK(l ? kvs_ckv_seg_fill(&sc, l, 20, x) == KVS_OK : kvs_ckv_seg_append(&sc, 20, pos, x) == KVS_OK);
        CHECK(l ? kvs_ckv_seg_fill(&s16, l, 20, x) == KVS_OK : kvs_ckv_seg_append(&s16, 20, pos, x) == KVS_OK);
        free(x);
    }
    uint32_t calls = ctr[KVS_OP_FALLBACK].calls;
    CHECKF(calls >= 3 && !kvs_ckv_seg_native(&sq) && kvs_ckv_seg_native(&s16),
           "packed rows without the library's support: %u fallbacks counted", calls);
    CHECKF(nb.pool_bytes == kvs_ckv_seg_bytes_alloc(&s16), "the device holds %llu bytes, its fp16 rows %llu",
           (unsigned long long)nb.pool_bytes, (unsigned long long)kvs_ckv_seg_bytes_alloc(&s16));
    /* host rows: the twin's own bytes */
    CHECK(!memcmp(sq.L.rows[1], sc.L.rows[1], 20 * (size_t)fq.row_bytes));
    float x[45];
    CHECK(kvs_ckv_seg_read(&sq, 1, 19, 1, x) == KVS_OK && ctr[KVS_OP_FALLBACK].calls == calls + 1);
    struct kvs_lat_attend_args a = {.T = 1, .q_pos = pos, .n_head = 3, .n_head_kv = 1, .head_dim = 64, .rank = 45,
                                    .scale = 0.125f, .f = &f16, .n_segs = 2};
    a.segs[0].L = &s16.L, a.segs[1].L = &sq.L, a.seg_f[1] = &fq;
    float dummy[192];
    nb.err[0] = 0;
    CHECKF(kvs_backend_lat_attend(&nb, &a, dummy, dummy, NULL) == KVS_ERR_STATE && strstr(nb.err, "lat_attend"),
           "attention over device and host rows: \"%s\"", nb.err);
    kvs_ckv_seg_free(&sq), kvs_ckv_seg_free(&sc), kvs_ckv_seg_free(&s16);
    CHECK(nb.pool_bytes == 0);
}

/* ---------------------------------------------------------------- attention over latent segments */

/* X rounded to the 16-bit type the fused kernel's tensor cores read (fp16, or bf16 to nearest even). */
static float round16(float x, bool bf)
{
    if (!bf) return kvs_fp16_to_fp32(kvs_fp32_to_fp16(x));
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* BYTES of host SRC in a fresh buffer of B (NULL data for 0 bytes). */
static void *buf_put(struct kvs_backend *b, struct kvs_buf *bf, const void *src, size_t bytes)
{
    memset(bf, 0, sizeof *bf);
    if (!bytes) return NULL;
    CHECK(kvs_backend_buf_alloc(b, bf, bytes) == KVS_OK);
    CHECK(kvs_backend_buf_upload(b, bf, 0, src, bytes) == KVS_OK);
    return bf->data;
}

/* One backend's copy of a layer's factors (B_k, B_v, b_k, b_v, RoPE frequencies), uploaded once. */
struct lat_consts {
    struct kvs_buf bk, bv, kb, vb, fr;
};

static void lat_consts_put(struct lat_consts *k, struct kvs_backend *b, const float *bk, const float *bv,
                           const float *kb, const float *vb, const float *fr, size_t dkv, int r, int d)
{
    buf_put(b, &k->bk, bk, dkv * r * sizeof(float));
    buf_put(b, &k->bv, bv, dkv * r * sizeof(float));
    buf_put(b, &k->kb, kb, kb ? dkv * sizeof(float) : 0);
    buf_put(b, &k->vb, vb, vb ? dkv * sizeof(float) : 0);
    buf_put(b, &k->fr, fr, (size_t)(d / 2) * sizeof(float));
}

static void lat_consts_free(struct lat_consts *k, struct kvs_backend *b)
{
    kvs_backend_buf_free(b, &k->bk), kvs_backend_buf_free(b, &k->bv), kvs_backend_buf_free(b, &k->kb);
    kvs_backend_buf_free(b, &k->vb), kvs_backend_buf_free(b, &k->fr);
}

/* lat_attend of T queries with head layout H:G of width d over the layer ARR of private segment
 * P* and shared segment S* (device: pg, sg; CPU: pc, sc), queries at the positions QP, mass of the
 * queries from MASS_FROM on: output and mass of the emulated device against the CPU twin; on the
 * CPU, without biases, the same bytes as attn_latent over the rows decoded to fp32 (the oracle the
 * existing tests hold to). Decode (T <= 4) runs the fused kernel, whose tensor cores read B_k in
 * fp16: held tightly to the CPU twin given that B_k (KC16), loosely to the fp32 one. */
static void lat_attend_same(const char *what, const struct kvs_ckv_seg *pg, const struct kvs_ckv_seg *sg,
                            const struct kvs_ckv_seg *pc, const struct kvs_ckv_seg *sc, int arr, int T,
                            const int32_t *qp, int mass_from, int H, int G, int d, bool neox, float sharp,
                            const struct lat_consts *kg, const struct lat_consts *kc,
                            const struct lat_consts *kc16, const float *bk, const float *bv, const float *fr,
                            bool biases)
{
    int r = pg->width, n = (int)(pc->n + sc->n);
    size_t no = (size_t)T * H * d;
    float *q = rand_vec(no, -1, 1);
    float *og = malloc(no * sizeof(float)), *oc = malloc(no * sizeof(float)), *ol = malloc(no * sizeof(float));
    float *mg = malloc((size_t)(n + 1) * sizeof(float)), *mc = malloc((size_t)(n + 1) * sizeof(float));
    struct kvs_buf qg, qc, bo_g, bo_c;
    buf_put(cuda16, &qg, q, no * sizeof(float));
    buf_put(cpu, &qc, q, no * sizeof(float));
    for (size_t i = 0; i < no; i++) og[i] = 12345.0f; /* stale values must not survive */
    buf_put(cuda16, &bo_g, og, no * sizeof(float));
    buf_put(cpu, &bo_c, og, no * sizeof(float));
    for (int j = 0; j <= n; j++) mg[j] = 777.0f, mc[j] = -1.0f;
    struct kvs_lat_attend_args a = {.T = T, .q_pos = qp, .n_head = H, .n_head_kv = G, .head_dim = d, .rank = r,
                                    .scale = sharp / sqrtf((float)d), .neox = neox, .f = &pc->f, .n_segs = 2,
                                    .mass_from = mass_from};
    a.segs[0].L = &pg->L, a.segs[0].arr = arr, a.segs[1].L = &sg->L, a.segs[1].arr = 0;
    a.bk = kg->bk.data, a.bv = kg->bv.data, a.bk_bias = kg->kb.data, a.bv_bias = kg->vb.data, a.freqs = kg->fr.data;
    CHECKF(kvs_backend_lat_attend(cuda16, &a, qg.data, bo_g.data, mg) == KVS_OK, "%s: %s", what, cuda16->err);
    a.segs[0].L = &pc->L, a.segs[1].L = &sc->L;
    a.bk = kc->bk.data, a.bv = kc->bv.data, a.bk_bias = kc->kb.data, a.bv_bias = kc->vb.data, a.freqs = kc->fr.data;
    uint64_t fb = cpu->ctr ? cpu->ctr[KVS_OP_FALLBACK].calls : 0;
    CHECKF(kvs_backend_lat_attend(cpu, &a, qc.data, bo_c.data, mc) == KVS_OK, "%s: %s", what, cpu->err);
    CHECKF(!cpu->ctr || cpu->ctr[KVS_OP_FALLBACK].calls == fb, "%s: the CPU backend's own entry counted as a fallback",
           what);
    CHECK(kvs_backend_buf_download(cuda16, og, &bo_g, 0, no * sizeof(float)) == KVS_OK);
    CHECK(kvs_backend_buf_download(cpu, oc, &bo_c, 0, no * sizeof(float)) == KVS_OK);
    char w[200];
    bool fused = T <= 4 && n > 0;
    float *oc16 = malloc(no * sizeof(float)), *mc16 = malloc((size_t)(n + 1) * sizeof(float));
    if (fused) { /* the CPU twin again, with the fp16 B_k */
        a.bk = kc16->bk.data, a.bv = kc16->bv.data, a.bk_bias = kc16->kb.data, a.bv_bias = kc16->vb.data;
        CHECKF(kvs_backend_lat_attend(cpu, &a, qc.data, bo_c.data, mc16) == KVS_OK, "%s: %s", what, cpu->err);
        CHECK(kvs_backend_buf_download(cpu, oc16, &bo_c, 0, no * sizeof(float)) == KVS_OK);
    }
    snprintf(w, sizeof w, "emu lat_attend %s (T %d, %d:%d heads, d %d, rank %d, n %d+%d%s%s)", what, T, H, G, d, r,
             (int)pc->n, (int)sc->n, neox ? ", neox" : "", biases ? ", biases" : "");
    compare(w, og, fused ? oc16 : oc, (long)no, 2e-5f, 1e-3f);
    if (fused) {
        /* logits 150x sharp amplify B_k's fp16 rounding: after the merge two elements of ~0.01 moved
         * by 0.005 (normalised error 0.0019) once the CPU twin became the press's fused decode,
         * whose fp32 sums run in another order; the tight check above holds the kernel itself */
        snprintf(w, sizeof w, "emu lat_attend %s: fused vs the fp32 B_k (fp16 inputs: atol 8e-3, rtol 2e-2)", what);
        compare(w, og, oc, (long)no, 8e-3f, 2e-2f);
    }
    if (n) {
        snprintf(w, sizeof w, "emu lat_attend %s: attention mass (T %d from %d, %d heads, n %d)", what, T, mass_from,
                 H, n);
        compare(w, mg, fused ? mc16 : mc, n, 1e-5f, 1e-3f);
    }
    free(oc16), free(mc16);
    CHECKF(mg[n] == 777.0f && mc[n] == -1.0f, "%s: attention mass written past the %d rows", what, n);
    if (n && mass_from < T) {
        /* the mass added to eviction scores by position where they are (a CommonKV composition with
         * snapkv): each backend's scores = what they held + the mass it returned above, bit for bit,
         * at the rows' positions only; the device's never come to the host for it */
        int32_t pmax = 0;
        for (uint32_t i = 0; i < pc->n; i++) pmax = pc->pos[i] > pmax ? pc->pos[i] : pmax;
        for (uint32_t i = 0; i < sc->n; i++) pmax = sc->pos[i] > pmax ? sc->pos[i] : pmax;
        int ns = pmax + 3;
        float *s0 = malloc((size_t)ns * sizeof(float)), *s1 = malloc((size_t)ns * sizeof(float));
        for (int i = 0; i < ns; i++) s0[i] = 0.25f * (float)(i % 7);
        for (int k = 0; k < 2; k++) {
            struct kvs_backend *b = k ? cpu : cuda16;
            const struct lat_consts *kk = k ? kc : kg;
            struct kvs_buf sb;
            buf_put(b, &sb, s0, (size_t)ns * sizeof(float));
            a.segs[0].L = k ? &pc->L : &pg->L, a.segs[1].L = k ? &sc->L : &sg->L;
            a.bk = kk->bk.data, a.bv = kk->bv.data, a.bk_bias = kk->kb.data, a.bv_bias = kk->vb.data;
            a.freqs = kk->fr.data, a.score = sb.data, a.n_score = ns;
            CHECKF(kvs_backend_lat_attend(b, &a, k ? qc.data : qg.data, k ? bo_c.data : bo_g.data, NULL) == KVS_OK,
                   "%s: attention with scores: %s", what, b->err);
            CHECK(kvs_backend_buf_download(b, s1, &sb, 0, (size_t)ns * sizeof(float)) == KVS_OK);
            const float *m = k ? mc : mg;
            uint8_t *hit = calloc((size_t)ns, 1);
            int bad = -1;
            for (int j = 0; j < n && bad < 0; j++) {
                int32_t p = j < (int)pc->n ? pc->pos[j] : sc->pos[j - (int)pc->n];
                hit[p] = 1;
                float want = s0[p] + m[j];
                if (memcmp(&s1[p], &want, sizeof want)) bad = j;
            }
            for (int i = 0; i < ns && bad < 0; i++)
                if (!hit[i] && s1[i] != s0[i]) bad = n + i;
            CHECKF(bad < 0, "%s: %s scores by position differ from held + mass at %s %d", what, k ? "CPU" : "device",
                   bad < n ? "row" : "untouched position", bad < n ? bad : bad - n);
            free(hit);
            kvs_backend_buf_free(b, &sb);
            a.score = NULL, a.n_score = 0;
        }
        free(s0), free(s1);
    }
    if (!biases) {
        /* the CPU twin against attn_latent over the decoded rows (fp32, two host segments) */
        float *c0 = malloc(((size_t)pc->n * r + 1) * sizeof(float)), *c1 = malloc(((size_t)sc->n * r + 1) * sizeof(float));
        CHECK(kvs_ckv_seg_read(pc, (uint32_t)arr, 0, pc->n, c0) == KVS_OK);
        CHECK(kvs_ckv_seg_read(sc, 0, 0, sc->n, c1) == KVS_OK);
        struct kvs_latent_seg segs[2] = {{c0, pc->pos, (int)pc->n}, {c1, sc->pos, (int)sc->n}};
        struct kvs_attn_latent_args la = {.T = T, .q_pos = qp, .n_head = H, .n_head_kv = G, .head_dim = d,
                                          .rank = r, .bk = bk, .bv = bv, .freqs = fr, .neox = neox,
                                          .scale = sharp / sqrtf((float)d), .segs = segs, .n_segs = 2};
        CHECK(kvs_backend_attn_latent(cpu, &la, q, ol) == KVS_OK);
        /* the CPU's lat_attend is the live path (fused decode, materialising chunks, keys by sgemm):
         * the reference attn_latent's arithmetic in another order, so equal within rounding */
        snprintf(w, sizeof w, "cpu lat_attend %s vs attn_latent over the decoded rows", what);
        compare(w, oc, ol, (long)no, 2e-5f, 1e-3f);
        free(c0), free(c1);
    }
    kvs_backend_buf_free(cuda16, &qg), kvs_backend_buf_free(cpu, &qc);
    kvs_backend_buf_free(cuda16, &bo_g), kvs_backend_buf_free(cpu, &bo_c);
    free(q), free(og), free(oc), free(ol), free(mg), free(mc);
}

/* Appends T rows at POS to every array of both private segments (the same values). */
static void lat_rows_add(struct kvs_ckv_seg *pg, struct kvs_ckv_seg *pc, int T, const int32_t *pos, float amp)
{
    CHECK(kvs_ckv_seg_reserve(pg, cuda16, pg->n + (uint32_t)T) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(pc, cpu, pc->n + (uint32_t)T) == KVS_OK);
    for (uint32_t l = 0; l < pg->n_arr; l++) {
        float *x = rand_vec((size_t)T * pg->width, -amp, amp);
        CHECK(l ? kvs_ckv_seg_fill(pg, l, T, x) == KVS_OK : kvs_ckv_seg_append(pg, T, pos, x) == KVS_OK);
        CHECK(l ? kvs_ckv_seg_fill(pc, l, T, x) == KVS_OK : kvs_ckv_seg_append(pc, T, pos, x) == KVS_OK);
        free(x);
    }
}

/* A layer group of NL layers with H:G heads of width d and rank R: its private and shared segments
 * on the emulated device and on the CPU; attention of layer 1 over them while empty, after stores
 * past one decode tile (64 rows), after a merge of scattered rows in a shuffled order into the
 * shared segment and the compaction of those rows (positions neither dense nor sorted), with
 * decode (T 1) and query chunks (T 9 > the emulated chunk of 6), the mass over a window of the last
 * queries, biases on and off. */
static void lat_attend_case(int NL, int H, int G, int d, int R, bool neox, float sharp)
{
    struct kvs_lat_fmt f = {.width = R, .row_bytes = 2 * R};
    struct kvs_ckv_seg pg, pc, sg, sc;
    kvs_ckv_seg_init(&pg, &f, (uint32_t)NL, 64);
    kvs_ckv_seg_init(&pc, &f, (uint32_t)NL, 64);
    kvs_ckv_seg_init(&sg, &f, 1, 64);
    kvs_ckv_seg_init(&sc, &f, 1, 64);
    size_t dkv = (size_t)G * d;
    float *bk = rand_vec(dkv * R, -0.15f, 0.15f), *bv = rand_vec(dkv * R, -0.15f, 0.15f);
    float *kb = rand_vec(dkv, -0.5f, 0.5f), *vb = rand_vec(dkv, -0.5f, 0.5f), *fr = rope_freqs(d, 10000.0);
    struct lat_consts k0g, k0c, k1g, k1c, k0c16, k1c16; /* without and with biases; CPU with the fp16 B_k */
    lat_consts_put(&k0g, cuda16, bk, bv, NULL, NULL, fr, dkv, R, d);
    lat_consts_put(&k0c, cpu, bk, bv, NULL, NULL, fr, dkv, R, d);
    lat_consts_put(&k1g, cuda16, bk, bv, kb, vb, fr, dkv, R, d);
    lat_consts_put(&k1c, cpu, bk, bv, kb, vb, fr, dkv, R, d);
    float *bk16 = malloc(dkv * R * sizeof(float));
    for (size_t i = 0; i < dkv * R; i++) bk16[i] = round16(bk[i], false);
    lat_consts_put(&k0c16, cpu, bk16, bv, NULL, NULL, fr, dkv, R, d);
    lat_consts_put(&k1c16, cpu, bk16, bv, kb, vb, fr, dkv, R, d);
    free(bk16);
    int32_t qp[9];
    /* empty: nothing allocated, then allocated but no rows */
    for (int t = 0; t < 3; t++) qp[t] = t;
    lat_attend_same("empty pool", &pg, &sg, &pc, &sc, 1, 3, qp, 0, H, G, d, neox, sharp,
                    &k1g, &k1c, &k1c16, bk, bv, fr, true);
    CHECK(kvs_ckv_seg_reserve(&sg, cuda16, 1) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, 1) == KVS_OK);
    lat_attend_same("empty pool", &pg, &sg, &pc, &sc, 1, 3, qp, 0, H, G, d, neox, sharp,
                    &k0g, &k0c, &k0c16, bk, bv, fr, false);
    /* 300 rows at positions 2i (every other token evicted earlier): 9 queries make two chunks */
    int n = 300;
    int32_t *pos = malloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) pos[i] = 2 * i;
    lat_rows_add(&pg, &pc, 100, pos, 1.0f);
    lat_rows_add(&pg, &pc, n - 100, pos + 100, 1.0f);
    int last = pos[n - 1];
    qp[0] = last + 1;
    lat_attend_same("decode", &pg, &sg, &pc, &sc, 1, 1, qp, 0, H, G, d, neox, sharp,
                    &k0g, &k0c, &k0c16, bk, bv, fr, false);
    /* a chunk of 9 queries, the earliest seeing fewer rows (and the first none at all) */
    for (int t = 0; t < 9; t++) qp[t] = t ? last - 2 * (8 - t) : -1;
    lat_attend_same("prefill chunks", &pg, &sg, &pc, &sc, 1, 9, qp, 5, H, G, d, neox, sharp,
                    &k1g, &k1c, &k1c16, bk, bv, fr, true);
    /* merge every 7th row, shuffled, into the shared segment and compact them out of the private one */
    int m = 0;
    int32_t idx[64];
    uint8_t *drop = calloc((size_t)n, 1);
    for (int i = 3; i < n; i += 7) idx[m++] = i;
    for (int i = m - 1; i > 0; i--) {
        int j = (int)(frand(0, 1) * (float)(i + 1)) % (i + 1), t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
    for (int i = 0; i < m; i++) drop[idx[i]] = 1;
    float w[KVS_LAT_MAX_ARR];
    for (int l = 0; l < NL; l++) w[l] = 1.0f / (float)NL;
    CHECK(kvs_ckv_seg_reserve(&sg, cuda16, (uint32_t)m) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, (uint32_t)m) == KVS_OK);
    CHECK(kvs_ckv_seg_merge(&pg, &sg, idx, (uint32_t)m, w) == KVS_OK && kvs_ckv_seg_merge(&pc, &sc, idx, (uint32_t)m, w) == KVS_OK);
    CHECK(kvs_ckv_seg_compact(&pg, drop, NULL) == KVS_OK && kvs_ckv_seg_compact(&pc, drop, NULL) == KVS_OK);
    qp[0] = last + 1;
    lat_attend_same("decode after merge", &pg, &sg, &pc, &sc, 1, 1, qp, 0, H, G, d, neox, sharp,
                    &k1g, &k1c, &k1c16, bk, bv, fr, true);
    lat_attend_same("decode after merge", &pg, &sg, &pc, &sc, 0, 1, qp, 0, H, G, d, neox, sharp,
                    &k0g, &k0c, &k0c16, bk, bv, fr, false);
    for (int t = 0; t < 9; t++) qp[t] = last - 3 * (8 - t);
    lat_attend_same("chunks after merge", &pg, &sg, &pc, &sc, 1, 9, qp, 4, H, G, d, neox, sharp,
                    &k0g, &k0c, &k0c16, bk, bv, fr, false);
    /* only the shared segment holds rows */
    memset(drop, 1, (size_t)n);
    CHECK(kvs_ckv_seg_compact(&pg, drop, NULL) == KVS_OK && kvs_ckv_seg_compact(&pc, drop, NULL) == KVS_OK);
    qp[0] = last + 1;
    lat_attend_same("shared rows only", &pg, &sg, &pc, &sc, 1, 1, qp, 0, H, G, d, neox, sharp,
                    &k1g, &k1c, &k1c16, bk, bv, fr, true);
    free(pos), free(drop), free(bk), free(bv), free(kb), free(vb), free(fr);
    lat_consts_free(&k0g, cuda16), lat_consts_free(&k0c, cpu), lat_consts_free(&k1g, cuda16), lat_consts_free(&k1c, cpu);
    lat_consts_free(&k0c16, cpu), lat_consts_free(&k1c16, cpu);
    kvs_ckv_seg_free(&pg), kvs_ckv_seg_free(&pc), kvs_ckv_seg_free(&sg), kvs_ckv_seg_free(&sc);
}

/* ---- attention over packed rows beside fp16 ones (commonkv+quant) ---- */

/* A layer group's four segments as commonkv+quant holds them: private fp16, private packed, shared
 * fp16, shared packed (the press's order). */
struct qgroup {
    struct kvs_ckv_seg s[4];
};

/* BITS 0: all four segments fp16 (the reference holding the packed rows' decoded values). */
static void qgroup_init(struct qgroup *q, int NL, int R, int bits)
{
    struct kvs_lat_fmt f16 = {.width = R, .row_bytes = 2 * R};
    struct kvs_lat_fmt fq = {.width = R, .codec = KVS_LAT_QROW, .bits = (uint32_t)bits, .group = 32,
                             .row_bytes = (int)kvs_qrow_bytes((uint32_t)R, (uint32_t)bits, 32)};
    for (int i = 0; i < 4; i++)
        kvs_ckv_seg_init(&q->s[i], i & 1 && bits ? &fq : &f16, i < 2 ? (uint32_t)NL : 1, 64);
}

static void qgroup_free(struct qgroup *q)
{
    for (int i = 0; i < 4; i++) kvs_ckv_seg_free(&q->s[i]);
}

/* lat_attend of layer ARR over the four segments of QG (device), QC (CPU, packed rows decoded to
 * fp32 by the twin) and Q16 (CPU, the packed rows' decoded values stored as fp16 rows: what the
 * device attends over): the device must match Q16 as closely as the fp16 tests match, and QC
 * within the fp16 rounding of the decoded latents (measured and printed). */
static void qattend_same(const char *what, struct qgroup *qg, struct qgroup *qc, struct qgroup *q16, int arr, int T,
                         const int32_t *qp, int mass_from, int H, int G, int d, const struct lat_consts *kg,
                         const struct lat_consts *kc, double *worst)
{
    int r = qg->s[0].width, n = 0;
    for (int i = 0; i < 4; i++) n += (int)qc->s[i].n;
    size_t no = (size_t)T * H * d;
    float *q = rand_vec(no, -1, 1), *o[3], *m[3];
    struct kvs_buf bq[3], bo[3];
    struct qgroup *grp[3] = {qg, qc, q16};
    struct kvs_backend *be[3] = {cuda16, cpu, cpu};
    const struct lat_consts *kk[3] = {kg, kc, kc};
    for (int v = 0; v < 3; v++) {
        o[v] = malloc(no * sizeof(float)), m[v] = malloc((size_t)(n + 1) * sizeof(float));
        for (size_t i = 0; i < no; i++) o[v][i] = 12345.0f; /* stale values must not survive */
        for (int j = 0; j <= n; j++) m[v][j] = 777.0f;
        buf_put(be[v], &bq[v], q, no * sizeof(float));
        buf_put(be[v], &bo[v], o[v], no * sizeof(float));
        struct kvs_lat_attend_args a = {.T = T, .q_pos = qp, .n_head = H, .n_head_kv = G, .head_dim = d, .rank = r,
                                        .scale = 1.0f / sqrtf((float)d), .f = &grp[v]->s[0].f, .n_segs = 4,
                                        .mass_from = mass_from, .bk = kk[v]->bk.data, .bv = kk[v]->bv.data,
                                        .bk_bias = kk[v]->kb.data, .bv_bias = kk[v]->vb.data, .freqs = kk[v]->fr.data};
        for (int i = 0; i < 4; i++) {
            a.segs[i].L = &grp[v]->s[i].L, a.segs[i].arr = i < 2 ? arr : 0;
            a.seg_f[i] = &grp[v]->s[i].f;
        }
        uint64_t fb = be[v]->ctr ? be[v]->ctr[KVS_OP_FALLBACK].calls : 0;
        CHECKF(kvs_backend_lat_attend(be[v], &a, bq[v].data, bo[v].data, m[v]) == KVS_OK, "%s: %s", what,
               be[v]->err);
        CHECKF(!be[v]->ctr || be[v]->ctr[KVS_OP_FALLBACK].calls == fb, "%s: lat_attend took a CPU fallback", what);
        CHECK(kvs_backend_buf_download(be[v], o[v], &bo[v], 0, no * sizeof(float)) == KVS_OK);
        kvs_backend_buf_free(be[v], &bq[v]), kvs_backend_buf_free(be[v], &bo[v]);
    }
    char w[200];
    snprintf(w, sizeof w, "emu lat_attend packed %s (T %d, %d:%d heads, d %d, rank %d, %s bits, n %u+%u+%u+%u)",
             what, T, H, G, d, r, qg->s[1].f.bits == 2 ? "2" : qg->s[1].f.bits == 4 ? "4" : "8", qc->s[0].n,
             qc->s[1].n, qc->s[2].n, qc->s[3].n);
    compare(w, o[0], o[2], (long)no, 2e-5f, 1e-3f);
    if (n) {
        snprintf(w, sizeof w, "emu lat_attend packed %s: attention mass (n %d)", what, n);
        compare(w, m[0], m[2], n, 1e-5f, 1e-3f);
    }
    CHECKF(m[0][n] == 777.0f, "%s: attention mass written past the %d rows", what, n);
    /* against the fp32 twin: the device's one extra rounding (decoded latents to fp16, relative
     * 2^-11 at most), measured alone as the CPU twin over both row sets, and in all */
    for (int k = 0; k < 2; k++) {
        const float *g = k ? o[0] : o[2];
        double num = 0, den = 0, mx = 0;
        for (size_t i = 0; i < no; i++) {
            double dd = (double)g[i] - o[1][i];
            num += dd * dd, den += (double)o[1][i] * o[1][i], mx = fmax(mx, fabs(dd));
        }
        double nerr = sqrt(num / (den > 0 ? den : 1));
        worst[k] = fmax(worst[k], nerr);
        fprintf(stderr, "   packed %s: %s against the CPU twin decoding to fp32: normalised error %.3g, max |d| %.3g\n",
                what, k ? "the device" : "the CPU over fp16-rounded decoded rows", nerr, mx);
    }
    snprintf(w, sizeof w, "emu lat_attend packed %s vs the fp32 twin", what);
    compare(w, o[0], o[1], (long)no, 2e-3f, 1e-2f);
    for (int v = 0; v < 3; v++) free(o[v]), free(m[v]);
    free(q);
}

/* Appends T rows at POS to every array of segment I of the device, CPU and fp16-reference groups:
 * random rows to the first two, the CPU twin's decoding of them to the reference. */
static void qgroup_add(struct qgroup *qg, struct qgroup *qc, struct qgroup *q16, int i, int T, const int32_t *pos)
{
    struct kvs_ckv_seg *sg = &qg->s[i], *sc = &qc->s[i], *sr = &q16->s[i];
    int R = (int)sg->width;
    CHECK(kvs_ckv_seg_reserve(sg, cuda16, sg->n + (uint32_t)T) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(sc, cpu, sc->n + (uint32_t)T) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(sr, cpu, sr->n + (uint32_t)T) == KVS_OK);
    float *y = malloc((size_t)T * R * sizeof(float));
    for (uint32_t l = 0; l < sg->n_arr; l++) {
        float *x = rand_vec((size_t)T * R, -1.5f, 1.5f);
        CHECK(l ? kvs_ckv_seg_fill(sg, l, T, x) == KVS_OK : kvs_ckv_seg_append(sg, T, pos, x) == KVS_OK);
        CHECK(l ? kvs_ckv_seg_fill(sc, l, T, x) == KVS_OK : kvs_ckv_seg_append(sc, T, pos, x) == KVS_OK);
        CHECK(kvs_ckv_seg_read(sc, l, sc->n - (uint32_t)T, (uint32_t)T, y) == KVS_OK);
        CHECK(l ? kvs_ckv_seg_fill(sr, l, T, y) == KVS_OK : kvs_ckv_seg_append(sr, T, pos, y) == KVS_OK);
        free(x);
    }
    free(y);
}

/* Merges rows IDX (M) of private segment I into shared segment I + 2 and compacts them out, on all
 * three groups (the reference merges the CPU twin's merged rows, decoded). */
static void qgroup_merge(struct qgroup *qg, struct qgroup *qc, struct qgroup *q16, int i, const int32_t *idx, int m,
                         const float *w)
{
    uint8_t *drop = calloc(qc->s[i].n + 1, 1);
    for (int x = 0; x < m; x++) drop[idx[x]] = 1;
    CHECK(kvs_ckv_seg_reserve(&qg->s[i + 2], cuda16, qg->s[i + 2].n + (uint32_t)m) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(&qc->s[i + 2], cpu, qc->s[i + 2].n + (uint32_t)m) == KVS_OK);
    CHECK(kvs_ckv_seg_merge(&qg->s[i], &qg->s[i + 2], idx, (uint32_t)m, w) == KVS_OK);
    CHECK(kvs_ckv_seg_merge(&qc->s[i], &qc->s[i + 2], idx, (uint32_t)m, w) == KVS_OK);
    /* the reference's merged rows: the twin's, decoded */
    int R = (int)qc->s[i].width;
    float *y = malloc((size_t)m * R * sizeof(float));
    struct kvs_ckv_seg *sc = &qc->s[i + 2], *sr = &q16->s[i + 2];
    CHECK(kvs_ckv_seg_read(sc, 0, sc->n - (uint32_t)m, (uint32_t)m, y) == KVS_OK);
    CHECK(kvs_ckv_seg_reserve(sr, cpu, sr->n + (uint32_t)m) == KVS_OK);
    CHECK(kvs_ckv_seg_append(sr, m, sc->pos + sc->n - m, y) == KVS_OK);
    free(y);
    CHECK(kvs_ckv_seg_compact(&qg->s[i], drop, NULL) == KVS_OK);
    CHECK(kvs_ckv_seg_compact(&qc->s[i], drop, NULL) == KVS_OK);
    CHECK(kvs_ckv_seg_compact(&q16->s[i], drop, NULL) == KVS_OK);
    lat_same("packed group after a merge", &qg->s[i + 2], &qc->s[i + 2]);
    free(drop);
}

/* NL layers, H:G heads of width d, rank R, BITS-bit packed rows: attention while every segment is
 * empty, then over fp16 and packed private rows (positions interleaved, so not sorted by segment),
 * after merges into both shared segments, with only packed rows left; decode and query chunks
 * with some rows invisible to the earlier queries, mass over a window. */
static void qattend_case(int NL, int H, int G, int d, int R, int bits, double *worst)
{
    struct qgroup qg, qc, q16;
    qgroup_init(&qg, NL, R, bits), qgroup_init(&qc, NL, R, bits), qgroup_init(&q16, NL, R, 0);
    size_t dkv = (size_t)G * d;
    float *bk = rand_vec(dkv * R, -0.15f, 0.15f), *bv = rand_vec(dkv * R, -0.15f, 0.15f);
    float *kb = rand_vec(dkv, -0.5f, 0.5f), *vb = rand_vec(dkv, -0.5f, 0.5f), *fr = rope_freqs(d, 10000.0);
    struct lat_consts kg, kc;
    lat_consts_put(&kg, cuda16, bk, bv, kb, vb, fr, dkv, R, d);
    lat_consts_put(&kc, cpu, bk, bv, kb, vb, fr, dkv, R, d);
    int32_t qp[9], pos[200];
    for (int t = 0; t < 3; t++) qp[t] = t;
    qattend_same("empty segments", &qg, &qc, &q16, 1, 3, qp, 0, H, G, d, &kg, &kc, worst);
    for (int i = 0; i < 4; i++) {
        CHECK(kvs_ckv_seg_reserve(&qg.s[i], cuda16, 1) == KVS_OK && kvs_ckv_seg_reserve(&qc.s[i], cpu, 1) == KVS_OK);
        CHECK(kvs_ckv_seg_reserve(&q16.s[i], cpu, 1) == KVS_OK);
    }
    qattend_same("allocated, empty", &qg, &qc, &q16, 1, 3, qp, 0, H, G, d, &kg, &kc, worst);
    /* packed: the older tokens at even positions; fp16: the recent ones at odd positions */
    for (int i = 0; i < 200; i++) pos[i] = 2 * i;
    qgroup_add(&qg, &qc, &q16, 1, 130, pos);
    qgroup_add(&qg, &qc, &q16, 1, 70, pos + 130);
    for (int i = 0; i < 100; i++) pos[i] = 2 * i + 201;
    qgroup_add(&qg, &qc, &q16, 0, 100, pos);
    lat_same("packed private rows", &qg.s[1], &qc.s[1]);
    qp[0] = 400;
    qattend_same("decode", &qg, &qc, &q16, 1, 1, qp, 0, H, G, d, &kg, &kc, worst);
    for (int t = 0; t < 9; t++) qp[t] = t ? 390 - 30 * (8 - t) : -1; /* the first query sees nothing */
    qattend_same("query chunk", &qg, &qc, &q16, 1, 9, qp, 5, H, G, d, &kg, &kc, worst);
    float w[KVS_LAT_MAX_ARR];
    for (int l = 0; l < NL; l++) w[l] = (float)(l + 1) / (float)(NL * (NL + 1) / 2);
    int32_t idx[64];
    int m = 0;
    for (int i = 5; i < 200; i += 7) idx[m++] = i;
    for (int i = m - 1; i > 0; i--) { /* shuffled */
        int j = (int)(frand(0, 1) * (float)(i + 1)) % (i + 1), t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
    qgroup_merge(&qg, &qc, &q16, 1, idx, m, w);
    m = 0;
    for (int i = 2; i < 100; i += 9) idx[m++] = i;
    qgroup_merge(&qg, &qc, &q16, 0, idx, m, w);
    qp[0] = 400;
    qattend_same("decode after merges", &qg, &qc, &q16, 1, 1, qp, 0, H, G, d, &kg, &kc, worst);
    qattend_same("decode after merges", &qg, &qc, &q16, 0, 1, qp, 0, H, G, d, &kg, &kc, worst);
    /* only packed rows (the fp16 private rows all gone) */
    uint8_t drop[100];
    memset(drop, 1, sizeof drop);
    CHECK(kvs_ckv_seg_compact(&qg.s[0], drop, NULL) == KVS_OK && kvs_ckv_seg_compact(&qc.s[0], drop, NULL) == KVS_OK);
    CHECK(kvs_ckv_seg_compact(&q16.s[0], drop, NULL) == KVS_OK);
    qattend_same("fp16 private rows gone", &qg, &qc, &q16, 1, 1, qp, 0, H, G, d, &kg, &kc, worst);
    free(bk), free(bv), free(kb), free(vb), free(fr);
    lat_consts_free(&kg, cuda16), lat_consts_free(&kc, cpu);
    qgroup_free(&qg), qgroup_free(&qc), qgroup_free(&q16);
}

static void test_lat_attend_packed(void)
{
    double worst[2] = {0, 0};
    qattend_case(3, 9, 3, 64, 45, 4, worst); /* SmolLM2-135M's heads, rank 45: a partial last group */
    qattend_case(2, 9, 3, 64, 64, 2, worst);
    qattend_case(4, 8, 2, 128, 90, 8, worst); /* GQA 4:1, width 128 */
    qattend_case(2, 8, 2, 128, 96, 4, worst);
    fprintf(stderr, "   packed lat_attend against the CPU twin decoding to fp32, worst normalised error: %.3g from "
            "rounding the decoded latents to fp16 alone, %.3g for the device in all\n", worst[0], worst[1]);
}

/* ---------------------------------------------------------------- the CPU's lat_attend paths */

/* The CPU lat_attend of T queries at QP over SEGS (n_segs of them, the layer's array ARR[i]), with
 * the key kernel KEYS (B_k packed in PACK) and RoPE table CS (NULL: built by the call), on POOL;
 * out and mass (n) of the queries from MASS_FROM. */
static void cpu_lat_call(struct kvs_pool *tp, struct kvs_ckv_seg *const *segs, const int *arr, int n_segs, int T,
                         const int32_t *qp, int mass_from, int H, int G, int d, const float *q, const float *bk,
                         const float *bv, const float *kb, const float *vb, const float *fr, uint32_t keys,
                         const void *pack, const float *cs, int cs_n, float *out, float *mass)
{
    struct kvs_lat_attend_args a = {.T = T, .q_pos = qp, .n_head = H, .n_head_kv = G, .head_dim = d,
                                    .rank = segs[0]->width, .scale = 1.0f / sqrtf((float)d), .bk = bk, .bv = bv,
                                    .bk_bias = kb, .bv_bias = vb, .freqs = fr, .f = &segs[0]->f, .n_segs = n_segs,
                                    .mass_from = mass_from, .keys = keys, .bk_pack = pack, .rope_cs = cs,
                                    .rope_n_pos = cs_n};
    for (int i = 0; i < n_segs; i++) {
        a.segs[i].L = &segs[i]->L;
        a.segs[i].arr = arr[i];
        a.seg_f[i] = &segs[i]->f;
    }
    CHECK(kvs_cpu_lat_attend(tp, &a, q, out, mass) == KVS_OK);
}

static bool same_bytes(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

/* The paths live CPU runs take, on a group's four segments as the press keeps them (private fp16
 * and packed, shared fp16 and packed) at SmolLM2's head layout and rank R: the fused decode and the
 * materialising chunk against attn_latent over the decoded rows; the chunk's mass against the sum
 * of its queries decoded one at a time (the two paths against each other); the same bytes at one
 * and two threads and with the caller's RoPE table; bf16 keys within bf16's rounding. */
static void lat_attend_cpu_case(int NL, int H, int G, int d, int R)
{
    struct kvs_lat_fmt f16 = {.width = R, .row_bytes = 2 * R};
    struct kvs_lat_fmt fq = {.width = R, .row_bytes = (int)kvs_qrow_bytes((uint32_t)R, 4, 32), .codec = KVS_LAT_QROW,
                             .bits = 4, .group = 32};
    struct kvs_ckv_seg p16, pq, s16, sq;
    kvs_ckv_seg_init(&p16, &f16, (uint32_t)NL, 64), kvs_ckv_seg_init(&pq, &fq, (uint32_t)NL, 64);
    kvs_ckv_seg_init(&s16, &f16, 1, 64), kvs_ckv_seg_init(&sq, &fq, 1, 64);
    struct kvs_ckv_seg *segs[4] = {&p16, &pq, &s16, &sq};
    const int rows[4] = {150, 170, 40, 37}, arr[4] = {1, 1, 0, 0};
    int n = 0, pmax = 0;
    for (int k = 0; k < 4; k++) {
        struct kvs_ckv_seg *sg = segs[k];
        CHECK(kvs_ckv_seg_reserve(sg, cpu, (uint32_t)rows[k]) == KVS_OK);
        int32_t *pos = malloc((size_t)rows[k] * sizeof(int32_t));
        for (int i = 0; i < rows[k]; i++) pos[i] = 4 * (n + i) + k, pmax = KVS_MAX(pmax, pos[i]); /* interleaved */
        for (uint32_t l = 0; l < sg->n_arr; l++) {
            float *x = rand_vec((size_t)rows[k] * R, -1, 1);
            CHECK(l ? kvs_ckv_seg_fill(sg, l, rows[k], x) == KVS_OK : kvs_ckv_seg_append(sg, rows[k], pos, x) == KVS_OK);
            free(x);
        }
        n += rows[k];
        free(pos);
    }
    size_t dkv = (size_t)G * d;
    float *bk = rand_vec(dkv * R, -0.15f, 0.15f), *bv = rand_vec(dkv * R, -0.15f, 0.15f);
    float *kb = rand_vec(dkv, -0.5f, 0.5f), *vb = rand_vec(dkv, -0.5f, 0.5f), *fr = rope_freqs(d, 10000.0);
    int T = 9, dq = H * d;
    int32_t qp[9];
    for (int t = 0; t < T; t++) qp[t] = pmax - 40 * (8 - t); /* the earlier queries see fewer rows */
    float *q = rand_vec((size_t)T * dq, -1, 1);
    float *o1 = malloc((size_t)T * dq * sizeof(float)), *o2 = malloc((size_t)T * dq * sizeof(float));
    float *ol = malloc((size_t)T * dq * sizeof(float)), *m1 = calloc((size_t)n, sizeof(float));
    float *m2 = calloc((size_t)n, sizeof(float)), *msum = calloc((size_t)n, sizeof(float));
    /* the reference: attn_latent over the rows decoded to fp32, with the biases added around it */
    float *c[4];
    struct kvs_latent_seg ls[4];
    for (int k = 0; k < 4; k++) {
        c[k] = malloc((size_t)rows[k] * R * sizeof(float));
        CHECK(kvs_ckv_seg_read(segs[k], (uint32_t)arr[k], 0, (uint32_t)rows[k], c[k]) == KVS_OK);
        ls[k] = (struct kvs_latent_seg){c[k], segs[k]->pos, rows[k]};
    }
    struct kvs_attn_latent_args la = {.T = T, .q_pos = qp, .n_head = H, .n_head_kv = G, .head_dim = d, .rank = R,
                                      .bk = bk, .bv = bv, .freqs = fr, .scale = 1.0f / sqrtf((float)d), .segs = ls,
                                      .n_segs = 4};
    CHECK(kvs_backend_attn_latent(cpu, &la, q, ol) == KVS_OK);
    char w[200];
    /* the chunk (materialising) and its queries one by one (fused), without biases */
    cpu_lat_call(pool, segs, arr, 4, T, qp, 0, H, G, d, q, bk, bv, NULL, NULL, fr, 0, NULL, NULL, 0, o1, m1);
    snprintf(w, sizeof w, "cpu lat_attend chunk of %d over fp16+packed rows (rank %d, n %d) vs attn_latent", T, R, n);
    compare(w, o1, ol, (long)T * dq, 2e-5f, 1e-3f);
    for (int t = 0; t < T; t++) {
        cpu_lat_call(pool, segs, arr, 4, 1, qp + t, 0, H, G, d, q + (size_t)t * dq, bk, bv, NULL, NULL, fr, 0, NULL,
                     NULL, 0, o2 + (size_t)t * dq, m2);
        for (int x = 0; x < n; x++) msum[x] += m2[x];
    }
    snprintf(w, sizeof w, "cpu lat_attend fused decode over fp16+packed rows (rank %d, n %d) vs attn_latent", R, n);
    compare(w, o2, ol, (long)T * dq, 2e-5f, 1e-3f);
    snprintf(w, sizeof w, "cpu lat_attend chunk mass vs the sum of its queries' decode mass (rank %d)", R);
    compare(w, m1, msum, n, 1e-5f, 1e-4f);
    double tot = 0;
    for (int x = 0; x < n; x++) tot += m1[x];
    CHECKF(fabs(tot - (double)T * H) < 1e-3 * T * H, "rank %d: the mass sums to %.6g, not %d queries x %d heads", R,
           tot, T, H);
    /* with biases, mass from query 6: threads and the caller's RoPE table change no byte */
    float *cs = malloc((size_t)(pmax + 1) * (d / 2) * 2 * sizeof(float));
    for (int p = 0; p <= pmax; p++)
        for (int i = 0; i < d / 2; i++) {
            cs[((size_t)p * (d / 2) + i) * 2] = (float)cos((double)p * fr[i]);
            cs[((size_t)p * (d / 2) + i) * 2 + 1] = (float)sin((double)p * fr[i]);
        }
    for (int tt = 1; tt <= T; tt += T - 1) {
        cpu_lat_call(pool, segs, arr, 4, tt, qp + T - tt, tt - 3, H, G, d, q, bk, bv, kb, vb, fr, 0, NULL, NULL, 0, o1, m1);
        cpu_lat_call(NULL, segs, arr, 4, tt, qp + T - tt, tt - 3, H, G, d, q, bk, bv, kb, vb, fr, 0, NULL, cs, pmax + 1,
                     o2, m2);
        CHECKF(same_bytes(o1, o2, (size_t)tt * dq) && same_bytes(m1, m2, (size_t)n),
               "rank %d, T %d: lat_attend on 2 threads with its own RoPE table differs from 1 thread with the caller's",
               R, tt);
    }
    /* bf16 keys (where the build has the kernel): the rounding of B_k and the latents to bf16 */
    struct kvs_ckv_bf16_mat bm = {0};
    if (kvs_ckv_bf16_available() && kvs_ckv_bf16_pack(&bm, bk, (int)dkv, R, R) == KVS_OK) {
        cpu_lat_call(pool, segs, arr, 4, T, qp, 0, H, G, d, q, bk, bv, NULL, NULL, fr, KVS_CKV_KEYS_BF16, &bm, cs,
                     pmax + 1, o1, m1);
        snprintf(w, sizeof w, "cpu lat_attend bf16 keys, chunk of %d (rank %d) vs attn_latent in fp32", T, R);
        compare(w, o1, ol, (long)T * dq, 2e-3f, 2e-2f);
        cpu_lat_call(pool, segs, arr, 4, 1, qp + T - 1, 0, H, G, d, q + (size_t)(T - 1) * dq, bk, bv, NULL, NULL, fr,
                     KVS_CKV_KEYS_BF16, &bm, cs, pmax + 1, o2, m2);
        snprintf(w, sizeof w, "cpu lat_attend bf16 keys, decode (rank %d) vs attn_latent in fp32", R);
        compare(w, o2, ol + (size_t)(T - 1) * dq, dq, 2e-3f, 2e-2f);
        kvs_ckv_bf16_free(&bm);
    } else {
        fprintf(stderr, "   skipped: bf16 keys (this build has no bf16 kernel)\n");
    }
    for (int k = 0; k < 4; k++) free(c[k]), kvs_ckv_seg_free(segs[k]);
    free(bk), free(bv), free(kb), free(vb), free(fr), free(q), free(o1), free(o2), free(ol), free(m1), free(m2);
    free(msum), free(cs);
}

static void test_lat_attend(void)
{
    lat_attend_cpu_case(3, 9, 3, 64, 45); /* SmolLM2: 9 heads over 3 of 64, rank 45 (not a multiple of 32) */
    lat_attend_cpu_case(2, 8, 2, 128, 96);
    lat_attend_case(3, 9, 3, 64, 45, false, 1);   /* SmolLM2-135M: 9 heads over 3 of 64, GQA 3:1, rank 45 */
    lat_attend_case(2, 8, 2, 128, 77, true, 1);   /* Llama-3-like: 8 over 2 of 128, GQA 4:1, rank 77 */
    lat_attend_case(2, 9, 3, 64, 45, false, 150); /* large logits: the max must be subtracted */
}

/* ---------------------------------------------------------------- lat_attend: the fused decode kernel */

/* One backend's copy of a fused-decode case: a private segment of 2 layers and a shared one. */
struct fused_side {
    struct kvs_backend *b;
    struct kvs_ckv_seg p, s;
    struct lat_consts k;
};

/* Decode (T 1, 3, 4 queries) over NP private and NS shared rows at shuffled positions (odd
 * numbers, some after a query's position), with biases, through the fused kernel on the fp16 and
 * the bf16 device, the context split 1, 3 and "many" ways ($KVS_CUDA_LAT_SPLITS), mass on and off.
 * Latents are values exact in both fp16 and bf16, so each device must match the CPU twin fed with
 * B_k rounded to its 16-bit type up to summation order (tight); against the fp32 B_k it shows the
 * error of 16-bit tensor-core inputs (loose, stated). */
static void fused_case(int H, int G, int d, int R, bool neox, float sharp, int np, int ns)
{
    struct kvs_lat_fmt f = {.width = R, .row_bytes = 2 * R};
    size_t dkv = (size_t)G * d;
    int N = np + ns;
    float *bk = rand_vec(dkv * R, -0.15f, 0.15f), *bv = rand_vec(dkv * R, -0.15f, 0.15f);
    float *kb = rand_vec(dkv, -0.5f, 0.5f), *vb = rand_vec(dkv, -0.5f, 0.5f), *fr = rope_freqs(d, 10000.0);
    float *bk16 = malloc(dkv * R * sizeof(float)), *bkbf = malloc(dkv * R * sizeof(float));
    for (size_t i = 0; i < dkv * R; i++) bk16[i] = round16(bk[i], false), bkbf[i] = round16(bk[i], true);
    int32_t *pos = malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) pos[i] = 2 * i + 1;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(frand(0, 1) * (float)(i + 1)) % (i + 1), t = pos[i];
        pos[i] = pos[j], pos[j] = t;
    }
    float *xp[2], *xs = rand_vec((size_t)ns * R + 1, -1, 1);
    for (int l = 0; l < 2; l++) xp[l] = rand_vec((size_t)np * R + 1, -1, 1);
    for (int l = 0; l < 3; l++) {
        float *x = l < 2 ? xp[l] : xs;
        size_t cnt = (size_t)(l < 2 ? np : ns) * R;
        for (size_t i = 0; i < cnt; i++) x[i] = fabsf(x[i]) < 1e-3f ? 0.0f : round16(x[i], true);
    }
    struct fused_side sd[3] = {{.b = cuda16}, {.b = cuda_bf}, {.b = cpu}};
    struct lat_consts kc16, kcbf; /* the CPU twin with B_k as each device's tensor cores see it */
    for (int k = 0; k < 3; k++) {
        struct fused_side *z = &sd[k];
        kvs_ckv_seg_init(&z->p, &f, 2, 64);
        kvs_ckv_seg_init(&z->s, &f, 1, 64);
        CHECK(kvs_ckv_seg_reserve(&z->p, z->b, (uint32_t)np) == KVS_OK);
        CHECK(kvs_ckv_seg_reserve(&z->s, z->b, (uint32_t)ns) == KVS_OK);
        CHECK(kvs_ckv_seg_append(&z->p, np, pos, xp[0]) == KVS_OK && kvs_ckv_seg_fill(&z->p, 1, np, xp[1]) == KVS_OK);
        CHECK(kvs_ckv_seg_append(&z->s, ns, pos + np, xs) == KVS_OK);
        lat_consts_put(&z->k, z->b, bk, bv, kb, vb, fr, dkv, R, d);
    }
    lat_consts_put(&kc16, cpu, bk16, bv, kb, vb, fr, dkv, R, d);
    lat_consts_put(&kcbf, cpu, bkbf, bv, kb, vb, fr, dkv, R, d);
    int top = 2 * N; /* above every position */
    struct {
        int T, mass_from;
        int32_t qp[4];
    } qs[3] = {{1, 0, {top - 40}}, {3, 1, {N, top - 60, top + 5}}, {4, 2, {-1, N, top - 60, top + 5}}};
    const char *splits[3] = {"1", "3", "1000"};
    for (int c = 0; c < 3; c++) {
        int T = qs[c].T;
        size_t no = (size_t)T * H * d;
        bool with_mass = c != 1;
        float *q = rand_vec(no, -1, 1), *o[5], *m[5];
        for (int k = 0; k < 5; k++) o[k] = malloc(no * sizeof(float)), m[k] = malloc((size_t)(N + 1) * sizeof(float));
        /* o[0], o[1]: fp16 and bf16 devices; o[2]: CPU, fp32 B_k; o[3], o[4]: CPU, B_k rounded */
        for (int k = 0; k < 5; k++) {
            struct fused_side *z = &sd[k < 2 ? k : 2];
            const struct lat_consts *kk = k < 3 ? &z->k : k == 3 ? &kc16 : &kcbf;
            struct kvs_buf qb, ob;
            buf_put(z->b, &qb, q, no * sizeof(float));
            for (size_t i = 0; i < no; i++) o[k][i] = 12345.0f;
            buf_put(z->b, &ob, o[k], no * sizeof(float));
            for (int j = 0; j <= N; j++) m[k][j] = 777.0f;
            struct kvs_lat_attend_args a = {.T = T, .q_pos = qs[c].qp, .n_head = H, .n_head_kv = G, .head_dim = d,
                                            .rank = R, .scale = sharp / sqrtf((float)d), .neox = neox, .f = &f,
                                            .n_segs = 2, .mass_from = qs[c].mass_from};
            a.segs[0].L = &z->p.L, a.segs[0].arr = 1, a.segs[1].L = &z->s.L, a.segs[1].arr = 0;
            a.bk = kk->bk.data, a.bv = kk->bv.data, a.bk_bias = kk->kb.data, a.bv_bias = kk->vb.data;
            a.freqs = kk->fr.data;
            setenv("KVS_CUDA_LAT_SPLITS", splits[c], 1);
            CHECKF(kvs_backend_lat_attend(z->b, &a, qb.data, ob.data, with_mass ? m[k] : NULL) == KVS_OK, "%s",
                   z->b->err);
            unsetenv("KVS_CUDA_LAT_SPLITS");
            CHECK(kvs_backend_buf_download(z->b, o[k], &ob, 0, no * sizeof(float)) == KVS_OK);
            kvs_backend_buf_free(z->b, &qb), kvs_backend_buf_free(z->b, &ob);
        }
        char w[200];
        for (int k = 0; k < 2; k++) {
            const char *dt = k ? "bf16" : "fp16";
            snprintf(w, sizeof w, "emu fused decode %s (T %d, %d:%d heads, d %d, rank %d, n %d+%d, splits %s%s)", dt, T,
                     H, G, d, R, np, ns, splits[c], neox ? ", neox" : "");
            compare(w, o[k], o[3 + k], (long)no, 2e-5f, 1e-3f);
            snprintf(w, sizeof w, "emu fused decode %s vs the fp32 B_k (16-bit inputs: atol %g, rtol %g)", dt,
                     k ? 2e-2 : 4e-3, k ? 8e-2 : 2e-2);
            compare(w, o[k], o[2], (long)no, k ? 2e-2f : 4e-3f, k ? 8e-2f : 2e-2f);
            if (with_mass) {
                snprintf(w, sizeof w, "emu fused decode %s: attention mass (T %d from %d, n %d)", dt, T,
                         qs[c].mass_from, N);
                compare(w, m[k], m[3 + k], N, 1e-5f, 1e-3f);
            }
            CHECKF(m[k][N] == 777.0f, "%s: attention mass written past the %d rows", w, N);
        }
        free(q);
        for (int k = 0; k < 5; k++) free(o[k]), free(m[k]);
    }
    /* new B_k bytes in the same device buffer: the fp16 device's 16-bit copy must follow them */
    {
        float *bk2 = rand_vec(dkv * R, -0.15f, 0.15f);
        for (size_t i = 0; i < dkv * R; i++) bk2[i] = round16(bk2[i], false);
        int32_t qp = top;
        size_t no = (size_t)H * d;
        float *q = rand_vec(no, -1, 1), *o[2];
        struct lat_consts kc2;
        lat_consts_put(&kc2, cpu, bk2, bv, kb, vb, fr, dkv, R, d);
        CHECK(kvs_backend_buf_upload(cuda16, &sd[0].k.bk, 0, bk2, dkv * R * sizeof(float)) == KVS_OK);
        for (int k = 0; k < 2; k++) {
            struct fused_side *z = &sd[2 * k];
            const struct lat_consts *kk = k ? &kc2 : &z->k;
            struct kvs_buf qb, ob;
            o[k] = malloc(no * sizeof(float));
            buf_put(z->b, &qb, q, no * sizeof(float));
            buf_put(z->b, &ob, q, no * sizeof(float));
            struct kvs_lat_attend_args a = {.T = 1, .q_pos = &qp, .n_head = H, .n_head_kv = G, .head_dim = d,
                                            .rank = R, .scale = sharp / sqrtf((float)d), .neox = neox, .f = &f,
                                            .n_segs = 2};
            a.segs[0].L = &z->p.L, a.segs[0].arr = 0, a.segs[1].L = &z->s.L, a.segs[1].arr = 0;
            a.bk = kk->bk.data, a.bv = kk->bv.data, a.bk_bias = kk->kb.data, a.bv_bias = kk->vb.data;
            a.freqs = kk->fr.data;
            CHECKF(kvs_backend_lat_attend(z->b, &a, qb.data, ob.data, NULL) == KVS_OK, "%s", z->b->err);
            CHECK(kvs_backend_buf_download(z->b, o[k], &ob, 0, no * sizeof(float)) == KVS_OK);
            kvs_backend_buf_free(z->b, &qb), kvs_backend_buf_free(z->b, &ob);
        }
        compare("emu fused decode after B_k was uploaded again (its 16-bit copy follows)", o[0], o[1], (long)no,
                2e-5f, 1e-3f);
        lat_consts_free(&kc2, cpu);
        free(bk2), free(q), free(o[0]), free(o[1]);
    }
    for (int k = 0; k < 3; k++) {
        lat_consts_free(&sd[k].k, sd[k].b);
        kvs_ckv_seg_free(&sd[k].p), kvs_ckv_seg_free(&sd[k].s);
    }
    lat_consts_free(&kc16, cpu), lat_consts_free(&kcbf, cpu);
    free(bk), free(bv), free(kb), free(vb), free(fr), free(bk16), free(bkbf), free(pos), free(xp[0]), free(xp[1]),
        free(xs);
}

static void test_lat_attend_fused(void)
{
    fused_case(9, 3, 64, 45, false, 1, 150, 57);  /* SmolLM2-135M's heads, GQA 3:1, rank 45 (not a multiple of 16) */
    fused_case(8, 2, 128, 90, true, 1, 171, 40);  /* Llama-3-like, GQA 4:1, rank 90 */
    fused_case(9, 3, 64, 90, false, 12, 100, 9);  /* sharp logits: the running max moves */
}

/* ---------------------------------------------------------------- cosine scores (lat_cosine) */

/* Cosine of A and B in fp64, written out here (a third opinion beside the two twins). */
static double cos_ref(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return aa > 0 && bb > 0 ? ab / sqrt(aa) / sqrt(bb) : 0.0;
}

/* One lat_cosine call on both backends (device segment PG, CPU segment PC): bit for bit, nothing
 * written past the N rows, and within 1e-6 of cos_ref over the rows read back. */
static void lat_cosine_same(const char *what, const struct kvs_ckv_seg *pg, const struct kvs_ckv_seg *pc, int arr0,
                            int arr1, bool adj, int row0, int n)
{
    int R = pc->width;
    float *og = malloc((size_t)(n + 1) * sizeof(float)), *oc = malloc((size_t)(n + 1) * sizeof(float));
    float *ref = malloc((size_t)(n + 1) * sizeof(float)), *x = malloc((size_t)2 * R * sizeof(float));
    for (int i = 0; i <= n; i++) og[i] = 777.0f, oc[i] = -1.0f;
    CHECKF(kvs_backend_lat_cosine(cuda16, &pg->L, &pg->f, arr0, arr1, adj, row0, n, og) == KVS_OK, "%s: %s", what,
           cuda16->err);
    CHECKF(kvs_backend_lat_cosine(cpu, &pc->L, &pc->f, arr0, arr1, adj, row0, n, oc) == KVS_OK, "%s", what);
    for (int i = 0; i < n; i++) {
        double acc = 0;
        for (int a = arr0; a < (adj ? arr1 : arr0 + 1); a++) {
            int b = adj ? a + 1 : arr1;
            CHECK(kvs_ckv_seg_read(pc, (uint32_t)a, (uint32_t)(row0 + i), 1, x) == KVS_OK);
            CHECK(kvs_ckv_seg_read(pc, (uint32_t)b, (uint32_t)(row0 + i), 1, x + R) == KVS_OK);
            acc += cos_ref(x, x + R, R);
        }
        ref[i] = (float)(adj ? acc / (arr1 - arr0) : acc);
    }
    char w[200];
    snprintf(w, sizeof w, "emu lat_cosine %s (rank %d, arrays %d..%d%s, rows %d+%d)", what, R, arr0, arr1,
             adj ? " adjacent" : "", row0, n);
    compare(w, og, oc, n, 0.0f, 0.0f);
    snprintf(w, sizeof w, "cpu lat_cosine %s against the cosines written out (rank %d)", what, R);
    compare(w, oc, ref, n, 1e-6f, 0.0f);
    CHECKF(og[n] == 777.0f && oc[n] == -1.0f, "%s: lat_cosine wrote past the %d rows", what, n);
    free(og), free(oc), free(ref), free(x);
}

/* A group of NL layers at rank R, 300 rows (past a block of 128 threads) that agree more in the
 * earlier layers, with a zero row and a row the same in every layer: first/last, adjacent mean,
 * single pairs, a range from an offset, no rows; packed rows on the device backend take the CPU
 * twin in host memory. */
static void lat_cosine_case(int NL, int R)
{
    struct kvs_lat_fmt f = {.width = R, .row_bytes = 2 * R};
    struct kvs_lat_fmt fq = {.width = R, .row_bytes = (int)kvs_qrow_bytes((uint32_t)R, 4, 32), .codec = KVS_LAT_QROW,
                             .bits = 4, .group = 32};
    struct kvs_ckv_seg pg, pc, qg, qc;
    kvs_ckv_seg_init(&pg, &f, (uint32_t)NL, 64), kvs_ckv_seg_init(&pc, &f, (uint32_t)NL, 64);
    kvs_ckv_seg_init(&qg, &fq, (uint32_t)NL, 64), kvs_ckv_seg_init(&qc, &fq, (uint32_t)NL, 64);
    int n = 300;
    int32_t *pos = malloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) pos[i] = 5 * i + 1;
    float *base = rand_vec((size_t)n * R, -1, 1), *x = malloc((size_t)n * R * sizeof(float));
    struct kvs_ckv_seg *segs[4] = {&pg, &pc, &qg, &qc};
    struct kvs_backend *owner[4] = {cuda16, cpu, cuda16, cpu};
    for (int k = 0; k < 4; k++) CHECK(kvs_ckv_seg_reserve(segs[k], owner[k], (uint32_t)n) == KVS_OK);
    for (int l = 0; l < NL; l++) {
        for (size_t i = 0; i < (size_t)n * R; i++) x[i] = base[i] + (float)l * 0.4f * frand(-1, 1);
        for (int r = 0; r < R; r++) x[(size_t)7 * R + r] = base[(size_t)7 * R + r]; /* row 7: every layer the same */
        if (l == NL - 1) memset(x + (size_t)11 * R, 0, (size_t)R * sizeof(float)); /* row 11: zero in the last */
        for (int k = 0; k < 4; k++)
            CHECK(l ? kvs_ckv_seg_fill(segs[k], (uint32_t)l, n, x) == KVS_OK
                    : kvs_ckv_seg_append(segs[k], n, pos, x) == KVS_OK);
    }
    lat_cosine_same("first/last", &pg, &pc, 0, NL - 1, false, 0, n);
    lat_cosine_same("adjacent mean", &pg, &pc, 0, NL - 1, true, 0, n);
    for (int l = 0; l + 1 < NL; l++) lat_cosine_same("one pair", &pg, &pc, l, l + 1, false, 130, n - 130);
    lat_cosine_same("the last row", &pg, &pc, 0, 1, false, n - 1, 1);
    lat_cosine_same("no rows", &pg, &pc, 0, NL - 1, true, 17, 0);
    lat_cosine_same("packed rows on the device", &qg, &qc, 0, NL - 1, true, 0, n);
    float v[2];
    CHECK(kvs_backend_lat_cosine(cuda16, &pg.L, &pg.f, 0, NL - 1, false, 7, 1, v) == KVS_OK);
    CHECK(kvs_backend_lat_cosine(cuda16, &pg.L, &pg.f, 0, NL - 1, false, 11, 1, v + 1) == KVS_OK);
    CHECKF(fabsf(v[0] - 1.0f) < 1e-6f && v[1] == 0.0f, "rank %d: same rows score %.9g (1), a zero row %.9g (0)", R,
           (double)v[0], (double)v[1]);
    CHECK(kvs_backend_lat_cosine(cpu, &pc.L, &pc.f, 0, NL, false, 0, 1, v) == KVS_ERR_ARG);
    CHECK(kvs_backend_lat_cosine(cpu, &pc.L, &pc.f, 0, 1, false, n - 1, 2, v) == KVS_ERR_ARG);
    CHECK(kvs_backend_lat_cosine(cuda16, &pg.L, &pg.f, 1, 1, true, 0, 1, v) == KVS_ERR_ARG);
    free(pos), free(base), free(x);
    for (int k = 0; k < 4; k++) kvs_ckv_seg_free(segs[k]);
}

static void test_lat_cosine(void)
{
    lat_cosine_case(3, 45); /* SmolLM2 at a low rank, groups of 3 */
    lat_cosine_case(4, 64);
    lat_cosine_case(2, 90);
}

static void test_svd(void)
{
    int shapes[3][2] = {{384, 96}, {96, 200}, {77, 77}};
    for (int k = 0; k < 3; k++) {
        int m = shapes[k][0], n = shapes[k][1], p = m < n ? m : n;
        float *a = rand_vec((size_t)m * n, -1, 1);
        float *u = malloc((size_t)m * p * sizeof(float)), *s = malloc((size_t)p * sizeof(float)),
              *vt = malloc((size_t)p * n * sizeof(float)), *uc = malloc((size_t)m * p * sizeof(float)),
              *sc = malloc((size_t)p * sizeof(float)), *vc = malloc((size_t)p * n * sizeof(float));
        CHECKF(kvs_backend_svd(cuda16, a, m, n, u, s, vt) == KVS_OK, "%s", kvs_backend_error(cuda16));
        CHECK(kvs_backend_svd(cpu, a, m, n, uc, sc, vc) == KVS_OK);
        char what[64];
        snprintf(what, sizeof what, "emu svd values %dx%d", m, n);
        compare(what, s, sc, p, 1e-5f * sc[0], 1e-4f);
        /* u diag(s) vt must rebuild a, and u, vt be orthonormal: the layout conventions */
        double num = 0, den = 0, orth = 0;
        for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++) {
                double x = 0;
                for (int i = 0; i < p; i++) x += (double)u[(size_t)r * p + i] * s[i] * vt[(size_t)i * n + c];
                num += (x - a[(size_t)r * n + c]) * (x - a[(size_t)r * n + c]);
                den += (double)a[(size_t)r * n + c] * a[(size_t)r * n + c];
            }
        for (int i = 0; i < p; i++)
            for (int j = 0; j < p; j++) {
                double du = 0, dv = 0;
                for (int r = 0; r < m; r++) du += (double)u[(size_t)r * p + i] * u[(size_t)r * p + j];
                for (int c = 0; c < n; c++) dv += (double)vt[(size_t)i * n + c] * vt[(size_t)j * n + c];
                orth = fmax(orth, fmax(fabs(du - (i == j)), fabs(dv - (i == j))));
            }
        double rec = sqrt(num / den);
        fprintf(stderr, "   emu svd %dx%d: reconstruction %.3g, orthogonality %.3g\n", m, n, rec, orth);
        CHECKF(rec < 1e-5 && orth < 1e-4, "svd %dx%d: reconstruction %.3g orthogonality %.3g", m, n, rec, orth);
        free(a), free(u), free(s), free(vt), free(uc), free(sc), free(vc);
    }
}

/* ---------------------------------------------------------------- the card: memory, fp16 overflow */

/* The card's used/total memory: under the emulation, exactly the live device allocations against
 * the pretend size of KVS_CUDA_EMU_MEM (an allocation beyond it fails as on a full card); on a GPU,
 * used within total and total the probe's. The CPU has no card to report. */
static void test_mem_info(void)
{
    uint64_t u0, t0, u1, t1, u2, t2;
    const size_t bytes = 3u << 20;
    struct kvs_buf buf = {0};
    if (!on_gpu) setenv("KVS_CUDA_EMU_MEM", "4G", 1);
    CHECKF(kvs_backend_mem_info(cuda16, &u0, &t0) == KVS_OK, "%s", kvs_backend_error(cuda16));
    CHECKF(kvs_backend_buf_alloc(cuda16, &buf, bytes) == KVS_OK, "%s", kvs_backend_error(cuda16));
    CHECK(kvs_backend_mem_info(cuda16, &u1, &t1) == KVS_OK);
    kvs_backend_buf_free(cuda16, &buf);
    CHECK(kvs_backend_mem_info(cuda16, &u2, &t2) == KVS_OK);
    fprintf(stderr, "   card: %llu of %llu bytes used, %llu with a %zu-byte buffer, %llu after it was freed\n",
            (unsigned long long)u0, (unsigned long long)t0, (unsigned long long)u1, bytes, (unsigned long long)u2);
    CHECKF(u0 > 0 && u0 < t0 && u1 <= t1 && t0 == t1 && t1 == t2, "used %llu / %llu, then %llu / %llu",
           (unsigned long long)u0, (unsigned long long)t0, (unsigned long long)u1, (unsigned long long)t1);
    if (on_gpu) {
        CHECKF(t0 == kvs_backend_cuda_info()->probe.total_mem, "total %llu, the probe says %llu",
               (unsigned long long)t0, (unsigned long long)kvs_backend_cuda_info()->probe.total_mem);
    } else {
        CHECKF(t0 == 4ull << 30, "total %llu, KVS_CUDA_EMU_MEM says %llu", (unsigned long long)t0, 4ull << 30);
        CHECKF(u1 - u0 == bytes && u2 == u0, "a %zu-byte buffer moved used by %lld, its free by %lld", bytes,
               (long long)(u1 - u0), (long long)(u2 - u1));
        /* a card with less free memory than asked for: an error with the reason, nothing allocated */
        char small[32];
        snprintf(small, sizeof small, "%llu", (unsigned long long)(u0 + bytes - 1));
        setenv("KVS_CUDA_EMU_MEM", small, 1);
        CHECKF(kvs_backend_buf_alloc(cuda16, &buf, bytes) != KVS_OK && buf.data == NULL &&
                   strstr(kvs_backend_error(cuda16), "out of memory"),
               "an allocation beyond the card: \"%s\"", kvs_backend_error(cuda16));
        kvs_backend_buf_free(cuda16, &buf);
        CHECK(kvs_backend_mem_info(cuda16, &u2, &t2) == KVS_OK && u2 == u0 && t2 == u0 + bytes - 1);
        unsetenv("KVS_CUDA_EMU_MEM");
    }
    uint64_t cu, ct;
    CHECK(kvs_backend_mem_info(cpu, &cu, &ct) == KVS_ERR_UNSUPPORTED && cu == 0 && ct == 0);
}

/* fp16 products clamp activations beyond ±65504 and count each one on the device (never silent):
 * a matmul whose input holds K such values (±inf among them, NaN not: it is no overflow) adds
 * exactly K to the count, and its output equals the product of the clamped input; bf16 counts
 * none; the CPU none. */
static void test_acts_saturated(void)
{
    enum { ROWS = 40, COLS = 96, T = 5 };
    float *wf = rand_vec((size_t)ROWS * COLS, -0.01f, 0.01f);
    float *x = rand_vec((size_t)T * COLS, -2, 2), *xc = malloc((size_t)T * COLS * sizeof(float));
    float *yg = malloc((size_t)T * ROWS * sizeof(float)), *yc = malloc((size_t)T * ROWS * sizeof(float));
    const float over[] = {65505.0f, -65600.0f, 1e6f, -3e38f, INFINITY, -INFINITY, 7e4f, -70000.5f, 65519.0f};
    const int n_over = (int)(sizeof over / sizeof over[0]);
    for (int i = 0; i < n_over; i++) x[(i * 53) % (T * COLS)] = over[i];
    x[7] = 65504.0f; /* exactly the largest fp16: not clamped */
    x[11] = -65504.0f;
    x[13] = NAN;
    memcpy(xc, x, (size_t)T * COLS * sizeof(float));
    for (int i = 0; i < T * COLS; i++) xc[i] = xc[i] > 65504.0f ? 65504.0f : xc[i] < -65504.0f ? -65504.0f : xc[i];
    struct kvs_weight w = {.type = KVS_GGML_F32, .rows = ROWS, .cols = COLS, .data = wf,
                           .row_bytes = (uint64_t)COLS * 4};
    for (int k = 0; k < 2; k++) {
        struct kvs_backend *b = k ? cuda_bf : cuda16;
        struct kvs_backend_weight bg;
        uint64_t before = 0, after = 0;
        CHECKF(kvs_backend_weight_prepare(b, &bg, &w) == KVS_OK, "%s", kvs_backend_error(b));
        CHECKF(kvs_backend_acts_saturated(b, &before) == KVS_OK, "%s", kvs_backend_error(b));
        CHECKF(kvs_backend_matmul(b, &bg, x, yg, T) == KVS_OK, "%s", kvs_backend_error(b));
        CHECKF(kvs_backend_matmul(b, &bg, x, yg, 1) == KVS_OK, "%s", kvs_backend_error(b)); /* row 0 again */
        CHECKF(kvs_backend_acts_saturated(b, &after) == KVS_OK && after == b->acts_saturated, "%s",
               kvs_backend_error(b));
        int want = 0;
        for (int i = 0; i < T * COLS; i++) want += fabsf(x[i]) > 65504.0f;
        for (int i = 0; i < COLS; i++) want += fabsf(x[i]) > 65504.0f;
        if (k) want = 0;
        fprintf(stderr, "   %s: %llu activation values counted as clamped, %d expected\n", b->weights,
                (unsigned long long)(after - before), want);
        CHECKF(after - before == (uint64_t)want, "%s: %llu activations counted as clamped, expected %d", b->weights,
               (unsigned long long)(after - before), want);
        if (!k) { /* fp16: the row of the clamped input (NaN rows are NaN on both) */
            CHECK(kvs_backend_matmul(b, &bg, xc, yc, T) == KVS_OK);
            int bad = 0;
            for (int i = 0; i < T * ROWS; i++)
                if (!(yg[i] == yc[i] || (isnan(yg[i]) && isnan(yc[i])))) bad++;
            CHECKF(bad == 0, "fp16: %d outputs differ from the product of the clamped input", bad);
            for (int i = 0; i < T * ROWS; i++)
                if (isinf(yg[i])) bad++;
            CHECKF(bad == 0, "fp16: %d outputs are infinite: the conversion overflowed instead of clamping", bad);
        }
        kvs_backend_weight_release(b, &bg);
    }
    uint64_t c = 1;
    CHECK(kvs_backend_acts_saturated(cpu, &c) == KVS_OK && c == 0);
    free(wf), free(x), free(xc), free(yg), free(yc);
}

/* ---------------------------------------------------------------- fp16 cache overflow */

/* Values beyond the fp16 range (issue 13: saturation is reported, never silent), ±inf among them;
 * 65504 itself and 65519 (which rounds down to it anyway) are in / at the edge. */
static const float cache_over[] = {65505.0f, -65600.0f, 1e6f, -3e38f, INFINITY, -INFINITY, 7e4f, -70000.5f,
                                   65519.0f, 65520.0f, -65520.0f, 1e5f};

/* The fp16 bits a saturating cache store must give for X (NaN excepted): ±65504 beyond the range,
 * else the plain IEEE rounding every stored value has always had. */
static uint16_t f16_sat_ref(float x)
{
    if (fabsf(x) > 65504.0f) return x > 0 ? 0x7bff : 0xfbff;
    return kvs_fp32_to_fp16(x);
}

/* Plants the overflowing values into X (N) at spread indices from OFF; returns how many lie beyond
 * ±65504 (every one of them). 65504 and -65504 exactly go in too, uncounted. */
static uint64_t plant_over(float *x, size_t n, size_t off)
{
    uint64_t k = 0;
    const size_t no = KVS_ARRAY_LEN(cache_over);
    for (size_t i = 0; i < no && i * 37 + off < n; i++) x[i * 37 + off] = cache_over[i], k++;
    if (no * 37 + off + 1 < n) x[no * 37 + off] = 65504.0f, x[no * 37 + off + 1] = -65504.0f;
    return k;
}

static uint64_t cache_count(struct kvs_backend *b)
{
    uint64_t n = UINT64_MAX;
    CHECKF(kvs_backend_cache_saturated(b, &n) == KVS_OK && n == b->cache_saturated, "%s: %s", kvs_backend_name(b),
           kvs_backend_error(b));
    return n;
}

/* N stored fp16 values against f16_sat_ref of the values that went in: no infinity, the clamped
 * ones at ±65504, the others their usual bytes. */
static void f16_sat_check(const char *what, const uint16_t *got, const float *x, size_t n)
{
    size_t bad = 0, inf = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        inf += (got[i] & 0x7fff) == 0x7c00;
        if (got[i] != f16_sat_ref(x[i]) && !bad++) first = i;
    }
    CHECKF(inf == 0, "%s: %zu stored values are infinite", what, inf);
    CHECKF(bad == 0, "%s: %zu of %zu stored values are not the saturating conversion's, first [%zu] %.9g -> %04x, "
           "expected %04x", what, bad, n, first, (double)x[first], got[first], f16_sat_ref(x[first]));
}

/* The CPU conversion itself (vector body and scalar tail): the reference bytes, NaN kept (not
 * counted), the count right. */
static void cache_sat_convert(void)
{
    enum { N = 203 };
    float *x = rand_vec(N, -70000.0f, 70000.0f);
    uint16_t h[N];
    uint64_t want = 0;
    plant_over(x, N, 2);
    x[N - 1] = -INFINITY, x[N - 2] = NAN, x[5] = NAN; /* the tail and the vector body */
    for (int i = 0; i < N; i++) want += fabsf(x[i]) > 65504.0f;
    uint64_t got = kvs_f32_to_f16_row(x, h, N);
    CHECKF(got == want, "kvs_f32_to_f16_row: %llu values counted as clamped, %llu expected", (unsigned long long)got,
           (unsigned long long)want);
    CHECKF((h[5] & 0x7c00) == 0x7c00 && (h[5] & 0x3ff) && (h[N - 2] & 0x7c00) == 0x7c00 && (h[N - 2] & 0x3ff),
           "kvs_f32_to_f16_row: NaN became %04x / %04x", h[5], h[N - 2]);
    x[5] = x[N - 2] = 0.0f, h[5] = h[N - 2] = 0;
    f16_sat_check("kvs_f32_to_f16_row", h, x, N);
    free(x);
}

/* K/V pool: rows with values beyond the range in keys and values, stored on the device and the CPU:
 * bit-equal, saturated, counted the same on both; attention over them is finite on both. */
static void cache_sat_kv(int H, int G, int d)
{
    int dkv = G * d, T = 29;
    char what[96], err[256];
    snprintf(what, sizeof what, "fp16 overflow: kv pool (%d:%d heads, d %d)", H, G, d);
    struct kvs_cache_pool *pg = NULL, *pc = NULL;
    CHECKF(kvs_cache_pool_new(&pg, cuda16, 1, dkv, 64, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_cache_pool_new(&pc, cpu, 1, dkv, 64, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) goto done;
    size_t e = (size_t)T * dkv;
    float *k = rand_vec(e, -4, 4), *v = rand_vec(e, -4, 4);
    uint64_t want = plant_over(k, e, 3) + plant_over(v, e, 11 + (size_t)dkv * 7);
    int32_t pos[29];
    for (int t = 0; t < T; t++) pos[t] = t;
    uint64_t g0 = cache_count(cuda16), c0 = cache_count(cpu);
    CHECKF(kvs_cache_pool_store(pg, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_cache_pool_store(pc, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pc->err);
    uint64_t g = cache_count(cuda16) - g0, c = cache_count(cpu) - c0;
    fprintf(stderr, "   %s: %llu values clamped on the device, %llu on the CPU, %llu planted\n", what,
            (unsigned long long)g, (unsigned long long)c, (unsigned long long)want);
    CHECKF(g == want && c == want, "%s: %llu (device) and %llu (CPU) values counted as clamped, %llu expected", what,
           (unsigned long long)g, (unsigned long long)c, (unsigned long long)want);
    kv_rows_same(what, pg, pc, dkv);
    uint16_t *kh = malloc(e * 2), *vh = malloc(e * 2);
    CHECK(kvs_cache_pool_read(pg, 0, 0, T, kh, vh, NULL) == KVS_OK);
    f16_sat_check("fp16 overflow: device keys", kh, k, e);
    f16_sat_check("fp16 overflow: device values", vh, v, e);
    /* attention over the saturated rows: finite, the same on both (scores of ±65504 keys are large,
     * so small queries) */
    size_t no = (size_t)4 * H * d;
    float *q = rand_vec(no, -1e-4f, 1e-4f), *og = malloc(no * 4), *oc = malloc(no * 4);
    int32_t qp[4] = {T - 4, T - 3, T - 2, T - 1};
    CHECKF(kvs_cache_pool_attend(pg, 0, 4, qp, H, G, d, q, og, NULL) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_cache_pool_attend(pc, 0, 4, qp, H, G, d, q, oc, NULL) == KVS_OK, "%s: %s", what, pc->err);
    size_t nonfinite = 0;
    for (size_t i = 0; i < no; i++) nonfinite += !isfinite(og[i]) + !isfinite(oc[i]);
    CHECKF(nonfinite == 0, "%s: %zu attention outputs are not finite", what, nonfinite);
    char w[160];
    snprintf(w, sizeof w, "%s: attention over saturated rows", what);
    compare(w, og, oc, (long)no, 5e-2f, 1e-3f);
    free(k), free(v), free(kh), free(vh), free(q), free(og), free(oc);
done:
    kvs_cache_pool_delete(pg);
    kvs_cache_pool_delete(pc);
}

/* Quantized pool: its fp16 tier stores saturate and count as the K/V pool's; a block packed from
 * rows at ±65504 can decode a little beyond (the scale rounds up), which the attention's decode
 * saturates on both sides, so attention stays finite and equal. */
static void cache_sat_kvq(int H, int G, int d, uint32_t bits)
{
    int dkv = G * d, T = 48, n_ctx = 64;
    char what[96], err[256];
    snprintf(what, sizeof what, "fp16 overflow: quantized pool (%d:%d heads, d %d, %u bits)", H, G, d, bits);
    struct kvs_kvq_pool *pg = NULL, *pc = NULL;
    CHECKF(kvs_kvq_pool_new(&pg, cuda16, 1, dkv, bits, 32, 64, n_ctx, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_kvq_pool_new(&pc, cpu, 1, dkv, bits, 32, 64, n_ctx, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) goto done;
    size_t e = (size_t)T * dkv;
    float *k = rand_vec(e, -4, 4), *v = rand_vec(e, -4, 4);
    uint64_t want = plant_over(k, e, 1) + plant_over(v, e, 5);
    /* a channel and a row spanning the whole range: packed, they decode beyond ±65504 */
    for (int t = 0; t < 32; t++) k[(size_t)t * dkv + 2] = t % 2 ? 1e5f : -1e5f, want++;
    for (int x = 0; x < dkv; x++) v[(size_t)20 * dkv + x] = x % 2 ? 65504.0f : -65504.0f; /* past the planted */
    int32_t pos[48];
    for (int t = 0; t < T; t++) pos[t] = t;
    uint64_t g0 = cache_count(cuda16), c0 = cache_count(cpu);
    CHECKF(kvs_kvq_pool_store(pg, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_kvq_pool_store(pc, 0, T, pos, k, v) == KVS_OK, "%s: %s", what, pc->err);
    uint64_t g = cache_count(cuda16) - g0, c = cache_count(cpu) - c0;
    CHECKF(g == want && c == want, "%s: %llu (device) and %llu (CPU) values counted as clamped, %llu expected", what,
           (unsigned long long)g, (unsigned long long)c, (unsigned long long)want);
    CHECK(kvs_kvq_pool_quantize(pg, 0, 16) == KVS_OK && kvs_kvq_pool_quantize(pc, 0, 16) == KVS_OK);
    CHECKF(pc->rows[0].nblk == 1, "%s: %d blocks packed", what, pc->rows[0].nblk);
    kvq_bytes_same(what, pg, pc);
    CHECKF(cache_count(cuda16) - g0 == want && cache_count(cpu) - c0 == want, "%s: packing or attention counted",
           what);
    size_t no = (size_t)2 * H * d;
    float *q = rand_vec(no, -1e-4f, 1e-4f), *og = malloc(no * 4), *oc = malloc(no * 4);
    int32_t qp[2] = {T - 2, T - 1};
    CHECKF(kvs_kvq_pool_attend(pg, 0, 2, qp, H, G, d, q, og, false) == KVS_OK, "%s: %s", what, pg->err);
    CHECKF(kvs_kvq_pool_attend(pc, 0, 2, qp, H, G, d, q, oc, false) == KVS_OK, "%s: %s", what, pc->err);
    size_t nonfinite = 0;
    for (size_t i = 0; i < no; i++) nonfinite += !isfinite(og[i]) + !isfinite(oc[i]);
    CHECKF(nonfinite == 0, "%s: %zu attention outputs are not finite", what, nonfinite);
    char w[160];
    snprintf(w, sizeof w, "%s: attention over packed saturated rows", what);
    compare(w, og, oc, (long)no, 5e-2f, 1e-3f);
    CHECKF(cache_count(cuda16) - g0 == want && cache_count(cpu) - c0 == want, "%s: attention's decode counted",
           what);
    free(k), free(v), free(q), free(og), free(oc);
done:
    kvs_kvq_pool_delete(pg);
    kvs_kvq_pool_delete(pc);
}

/* CommonKV fp16 latents: stores beyond the range and a merge whose weighted sums exceed it (rows
 * near 65504, weights summing to more than 1), bit-equal and counted the same on both. */
static void cache_sat_latent(int G, int R)
{
    char what[96];
    snprintf(what, sizeof what, "fp16 overflow: latent segments (%d layers, rank %d)", G, R);
    struct kvs_lat_fmt f = {.width = R, .row_bytes = 2 * R};
    struct kvs_ckv_seg pg, pc, sg, sc;
    int T = 24;
    kvs_ckv_seg_init(&pg, &f, (uint32_t)G, 16);
    kvs_ckv_seg_init(&pc, &f, (uint32_t)G, 16);
    kvs_ckv_seg_init(&sg, &f, 1, 16);
    kvs_ckv_seg_init(&sc, &f, 1, 16);
    int32_t pos[24];
    for (int t = 0; t < T; t++) pos[t] = 2 * t;
    CHECK(kvs_ckv_seg_reserve(&pg, cuda16, (uint32_t)T) == KVS_OK && kvs_ckv_seg_reserve(&pc, cpu, (uint32_t)T) == KVS_OK);
    uint64_t g0 = cache_count(cuda16), c0 = cache_count(cpu), want = 0;
    size_t e = (size_t)T * R;
    float **xs = malloc((size_t)G * sizeof(float *));
    for (int l = 0; l < G; l++) {
        float *x = xs[l] = rand_vec(e, -3, 3);
        want += plant_over(x, e, (size_t)l * 5);
        for (int i = 0; i < R; i++) x[(size_t)20 * R + i] = i % 3 ? 60000.0f : -61000.0f; /* near the edge */
        if (!l) {
            CHECKF(kvs_ckv_seg_append(&pg, T, pos, x) == KVS_OK, "%s: append: %s", what, cuda16->err);
            CHECK(kvs_ckv_seg_append(&pc, T, pos, x) == KVS_OK);
        } else {
            CHECKF(kvs_ckv_seg_fill(&pg, (uint32_t)l, T, x) == KVS_OK, "%s: fill: %s", what, cuda16->err);
            CHECK(kvs_ckv_seg_fill(&pc, (uint32_t)l, T, x) == KVS_OK);
        }
    }
    uint64_t g = cache_count(cuda16) - g0, c = cache_count(cpu) - c0;
    CHECKF(g == want && c == want, "%s: stores: %llu (device) and %llu (CPU) values counted as clamped, %llu expected",
           what, (unsigned long long)g, (unsigned long long)c, (unsigned long long)want);
    lat_same(what, &pg, &pc);
    float *rd = malloc(e * sizeof(float));
    CHECK(kvs_ckv_seg_read(&pg, 0, 0, (uint32_t)T, rd) == KVS_OK);
    size_t inf = 0;
    for (size_t i = 0; i < e; i++) inf += isinf(rd[i]);
    CHECKF(inf == 0, "%s: %zu stored latents are infinite", what, inf);
    /* merge row 20 (sums of about ±1.2e5: every element clamped) and two rows with planted values
     * (each at most one layer's ±65504 in an element: a sum inside the range) */
    int32_t idx[3] = {20, 0, 13};
    float w[KVS_LAT_MAX_ARR];
    for (int l = 0; l < G; l++) w[l] = 2.0f / (float)G;
    CHECK(kvs_ckv_seg_reserve(&sg, cuda16, 3) == KVS_OK && kvs_ckv_seg_reserve(&sc, cpu, 3) == KVS_OK);
    g0 = cache_count(cuda16), c0 = cache_count(cpu);
    CHECKF(kvs_ckv_seg_merge(&pg, &sg, idx, 3, w) == KVS_OK, "%s: merge: %s", what, cuda16->err);
    CHECK(kvs_ckv_seg_merge(&pc, &sc, idx, 3, w) == KVS_OK);
    g = cache_count(cuda16) - g0, c = cache_count(cpu) - c0;
    fprintf(stderr, "   %s: the merge clamped %llu values on the device, %llu on the CPU\n", what,
            (unsigned long long)g, (unsigned long long)c);
    CHECKF(g == (uint64_t)R && c == (uint64_t)R, "%s: merge: %llu (device) and %llu (CPU) values counted as "
           "clamped, %d expected", what, (unsigned long long)g, (unsigned long long)c, R);
    lat_same("fp16 overflow: merged latents", &sg, &sc);
    CHECK(kvs_ckv_seg_read(&sg, 0, 0, 3, rd) == KVS_OK);
    inf = 0;
    for (int i = 0; i < 3 * R; i++) inf += isinf(rd[i]);
    CHECKF(inf == 0, "%s: %zu merged latents are infinite", what, inf);
    for (int l = 0; l < G; l++) free(xs[l]);
    free(xs), free(rd);
    kvs_ckv_seg_free(&pg), kvs_ckv_seg_free(&pc), kvs_ckv_seg_free(&sg), kvs_ckv_seg_free(&sc);
}

/* MiniCache: keys of about ±2·10^4 per element are inside fp16 but their per-head norms (about
 * 1.6·10^5 over 64) are not: the merged norms saturate, counted the same on both, bit-equal, and
 * attention over the rebuilt rows stays finite. */
static void cache_sat_mc(int H, int G, int d)
{
    char what[96], err[256];
    snprintf(what, sizeof what, "fp16 overflow: minicache pair (%d:%d heads, d %d)", H, G, d);
    struct kvs_mc_pool *pg = NULL, *pc = NULL;
    const int la = 0;
    int T = 40, dkv = G * d;
    CHECKF(kvs_mc_pool_new(&pg, cuda16, 2, G, d, 64, 1, &la, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_mc_pool_new(&pc, cpu, 2, G, d, 64, 1, &la, err, sizeof err) == KVS_OK, "%s", err);
    if (!pg || !pc) goto done;
    size_t e = (size_t)T * dkv;
    float *kv[4];
    for (int i = 0; i < 4; i++) kv[i] = rand_vec(e, i % 2 ? -2 : -2.5e4f, i % 2 ? 2 : 2.5e4f);
    for (size_t i = 0; i < e; i++) kv[2][i] = 0.9f * kv[0][i] + 0.1f * kv[2][i]; /* layers alike: merged */
    int32_t pos[40];
    for (int t = 0; t < T; t++) pos[t] = t;
    struct kvs_buf b[4];
    for (int i = 0; i < 4; i++) {
        memset(&b[i], 0, sizeof b[i]);
        CHECK(kvs_backend_buf_alloc(cuda16, &b[i], e * sizeof(float)) == KVS_OK);
        CHECK(kvs_backend_buf_upload(cuda16, &b[i], 0, kv[i], e * sizeof(float)) == KVS_OK);
    }
    uint64_t g0 = cache_count(cuda16), c0 = cache_count(cpu);
    for (int l = 0; l < 2; l++) {
        CHECKF(kvs_mc_pool_store_buf(pg, l, T, pos, b[2 * l].data, b[2 * l + 1].data) == KVS_OK, "%s", pg->err);
        CHECKF(kvs_mc_pool_store_buf(pc, l, T, pos, kv[2 * l], kv[2 * l + 1]) == KVS_OK, "%s", pc->err);
    }
    CHECKF(cache_count(cuda16) == g0 && cache_count(cpu) == c0, "%s: in-range rows counted as clamped", what);
    mc_merge_both(what, pg, pc, 0, 8, 0.0f);
    uint64_t g = cache_count(cuda16) - g0, c = cache_count(cpu) - c0;
    int n = kvs_mc_pool_merged(pc, 0);
    uint16_t *nr = malloc(((size_t)n * 4 * G + 1) * 2);
    CHECK(kvs_backend_mc_read(cpu, &pc->pairs[0], G, d, 0, n, NULL, NULL, nr, NULL) == KVS_OK);
    uint64_t at_max = 0;
    for (size_t i = 0; i < (size_t)n * 4 * G; i++) at_max += nr[i] == 0x7bff;
    fprintf(stderr, "   %s: %d rows merged, %llu norms clamped on the device, %llu on the CPU, %llu at 65504\n", what,
            n, (unsigned long long)g, (unsigned long long)c, (unsigned long long)at_max);
    CHECKF(n > 0 && g == c && c > 0 && c == at_max, "%s: %llu (device) and %llu (CPU) norms counted as clamped, %llu "
           "stored at 65504", what, (unsigned long long)g, (unsigned long long)c, (unsigned long long)at_max);
    mc_pairs_same(what, pg, pc);
    {
        size_t no = (size_t)2 * H * d, bytes = no * sizeof(float);
        float *q = rand_vec(no, -1e-5f, 1e-5f), *og = malloc(bytes), *oc = malloc(bytes);
        int32_t qp[2] = {T - 2, T - 1};
        struct kvs_buf bq = {0}, bo = {0};
        CHECK(kvs_backend_buf_alloc(cuda16, &bq, bytes) == KVS_OK && kvs_backend_buf_alloc(cuda16, &bo, bytes) == KVS_OK);
        CHECK(kvs_backend_buf_upload(cuda16, &bq, 0, q, bytes) == KVS_OK);
        for (int layer = 0; layer < 2; layer++) {
            CHECKF(kvs_mc_pool_attend_buf(pg, layer, 0, 2, qp, H, bq.data, bo.data) == KVS_OK, "%s: %s", what, pg->err);
            CHECK(kvs_backend_buf_download(cuda16, og, &bo, 0, bytes) == KVS_OK);
            CHECKF(kvs_mc_pool_attend_buf(pc, layer, 0, 2, qp, H, q, oc) == KVS_OK, "%s: %s", what, pc->err);
            size_t nonfinite = 0;
            for (size_t i = 0; i < no; i++) nonfinite += !isfinite(og[i]) + !isfinite(oc[i]);
            CHECKF(nonfinite == 0, "%s: layer %d: %zu attention outputs are not finite", what, layer, nonfinite);
            char w[160];
            snprintf(w, sizeof w, "%s: attention of layer %d over saturated merged rows", what, layer);
            compare(w, og, oc, (long)no, 1e-1f, 1e-3f);
        }
        kvs_backend_buf_free(cuda16, &bq), kvs_backend_buf_free(cuda16, &bo);
        free(q), free(og), free(oc);
    }
    for (int i = 0; i < 4; i++) kvs_backend_buf_free(cuda16, &b[i]), free(kv[i]);
    free(nr);
done:
    kvs_mc_pool_delete(pg);
    kvs_mc_pool_delete(pc);
}

/* Every fp16 cache store saturates at ±65504 (never ±inf, which the next softmax makes NaN) and
 * counts what it clamped, on the device and the CPU alike, bit for bit (issue 13). */
static void test_cache_saturated(void)
{
    cache_sat_convert();
    cache_sat_kv(9, 3, 64);  /* SmolLM2 */
    cache_sat_kv(14, 2, 64); /* Qwen2.5-0.5B */
    cache_sat_kvq(9, 3, 64, 2);
    cache_sat_kvq(14, 2, 64, 4);
    cache_sat_latent(4, 403); /* SmolLM2 at CR 0.5 */
    cache_sat_latent(3, 45);
    cache_sat_mc(9, 3, 64);
    cache_sat_mc(14, 2, 64);
    uint64_t n = UINT64_MAX;
    CHECK(kvs_backend_cache_saturated(NULL, &n) == KVS_OK && n == 0);
}

/* ---------------------------------------------------------------- end to end */

/* Statistics of one logit row against the CPU's: normalised error, KL(cpu || cuda), argmaxes. */
struct logit_cmp {
    double nerr, maxd, kl;
    int top_cpu, top_gpu;
    double margin; /* CPU's top-1 minus top-2 logit */
};

static struct logit_cmp logit_compare(const float *g, const float *c, int V)
{
    struct logit_cmp r = {0};
    double num = 0, den = 0, mc = -INFINITY, mg = -INFINITY, second = -INFINITY;
    for (int i = 0; i < V; i++) {
        double d = (double)g[i] - c[i];
        num += d * d;
        den += (double)c[i] * c[i];
        r.maxd = fmax(r.maxd, fabs(d));
        if (c[i] > mc) second = mc, mc = c[i], r.top_cpu = i;
        else if (c[i] > second) second = c[i];
        if (g[i] > mg) mg = g[i], r.top_gpu = i;
    }
    r.nerr = sqrt(num / (den > 0 ? den : 1));
    r.margin = mc - second;
    double zc = 0, zg = 0;
    for (int i = 0; i < V; i++) zc += exp(c[i] - mc), zg += exp(g[i] - mg);
    for (int i = 0; i < V; i++) {
        double pc = exp(c[i] - mc) / zc, lpc = c[i] - mc - log(zc), lpg = g[i] - mg - log(zg);
        r.kl += pc * (lpc - lpg);
    }
    return r;
}

/* Prefill PROMPT then N_GEN greedy tokens with the CPU engine and the emulated CUDA backend (weights
 * as DTYPE), both through the `full` press. Every logit row must be within NERR_TOL (normalised
 * error), the mean KL(cpu || cuda) within KL_TOL, and every greedy token must agree. The CPU rounds
 * activations to q8 for quantized weights, the device to fp16/bf16: the tolerances cover that. */
/* METHOD ("full", "streaming", "snapkv", "commonkv", "commonkv+quant+snapkv") at target CR (<0: its
 * defaults) on the CPU and the emulated device, fed the same tokens: logits, greedy tokens and the
 * cache's place and bytes compared. CommonKV runs with a short recent window (8 tokens, 2 sinks) so
 * that a short prompt already merges, quantizes and evicts. */
/* CommonKV runs of e2e_model with an explicit rank and merge share, and without a target snapkv's
 * capacity 24 tokens (0: the plan decides): a composition whose target the other parts already
 * reach would otherwise merge nothing. */
static uint32_t e2e_rank;
static float e2e_share;

static void e2e_model(const char *label, const char *path, const char *dtype, const char *method, float cr,
                      const char *prompt, int n_gen, double nerr_tol, double kl_tol)
{
    char err[512] = "";
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, path, err, sizeof err) != KVS_OK) {
        CHECKF(0, "%s: %s", label, err);
        return;
    }
    struct kvs_method_config mc;
    CHECK(kvs_method_parse(&mc, method, err, sizeof err) == KVS_OK);
    mc.target_cr = cr;
    bool full = !strcmp(method, "full"), ckv = strstr(method, "commonkv") != NULL;
    bool minicache = !strcmp(method, "minicache");
    bool evicts = strstr(method, "snapkv") || strstr(method, "streaming");
    /* packed CommonKV latents stay in host memory (a counted fallback); packed K/V rows do not */
    bool packed = ckv && strstr(method, "quant") != NULL;
    if (!ckv && strstr(method, "quant")) { /* a short prompt already packs blocks and evicts */
        mc.quant_residual = 8;
        mc.snap_window = 8;
        mc.sinks = 2;
    }
    if (ckv) {
        mc.sinks = 2;
        mc.recent = 8;
        mc.quant_residual = 8;
        mc.snap_window = 8;
        mc.cache_dir[0] = 0; /* factors are not cached to disk from a test */
        mc.whiten = false;
        mc.merge_floor = -1.0f; /* random weights: dissimilar layers, merged anyway */
        /* the device attends over fp16 rows by lat_attend, keys rebuilt in fp32: the CPU oracle
         * rebuilds them in fp32 too (its default bf16 kernel rounds B_k and the latents) */
        mc.ckv_keys = KVS_CKV_KEYS_FP32;
        if (e2e_rank) mc.rank = e2e_rank, mc.merge_share = e2e_share, mc.snap_capacity = 24;
    }
    if (minicache) { /* a short window, so that the prompt is merged (and retained) already */
        mc.sinks = 2;
        mc.recent = 8;
    }
    struct kvs_press *pc = NULL, *pg = NULL;
    struct kvs_ctx *cc = NULL, *cg = NULL;
    int32_t toks[256];
    int n = 0;
    if (kvs_tokenizer_add_bos(m->tok) && kvs_tokenizer_bos(m->tok) >= 0) toks[n++] = kvs_tokenizer_bos(m->tok);
    int64_t got = kvs_tokenizer_encode(m->tok, prompt, strlen(prompt), false, toks + n, 200);
    CHECKF(got > 0, "%s: tokenizer", label);
    if (got <= 0) goto done;
    n += (int)got;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = 256;
    cp.n_batch = 64;
    cp.n_threads = 2;
    CHECK(kvs_press_new(&pc, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK);
    CHECK(kvs_press_new(&pg, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK);
    /* the CPU twin on its accurate path: decode products of <= 4 rows otherwise quantize their
     * activations to 8 bits (normalised logit error up to 0.25 against float64, man kvscope), which
     * the CUDA products do not, so the comparison would measure the CPU's shortcut, not the GPU */
    cp.precise = true;
    CHECKF(kvs_ctx_new(&cc, m, pc, &cp, err, sizeof err) == KVS_OK, "%s", err);
    cp.precise = false;
    snprintf(cp.backend, sizeof cp.backend, "cuda");
    snprintf(cp.weights, sizeof cp.weights, "%s", dtype ? dtype : "fp16");
    CHECKF(kvs_ctx_new(&cg, m, pg, &cp, err, sizeof err) == KVS_OK, "%s", err);
    if (!cc || !cg) goto done;
    CHECKF(!strcmp(kvs_ctx_backend(cg), "cuda"), "%s: context runs on %s", label, kvs_ctx_backend(cg));
    int V = (int)m->hp.n_vocab;
    float *lc = malloc((size_t)n * V * sizeof(float)), *lg = malloc((size_t)n * V * sizeof(float));
    CHECKF(kvs_ctx_eval(cc, toks, n, lc) == KVS_OK, "%s", kvs_ctx_error(cc));
    CHECKF(kvs_ctx_eval(cg, toks, n, lg) == KVS_OK, "%s", kvs_ctx_error(cg));
    double worst = 0, kl = 0, maxd = 0, min_margin = INFINITY;
    int rows = 0, top1 = 0, tok_ok = 0;
    for (int t = 0; t < n; t++) { /* teacher-forced prompt rows */
        struct logit_cmp r = logit_compare(lg + (size_t)t * V, lc + (size_t)t * V, V);
        worst = fmax(worst, r.nerr), maxd = fmax(maxd, r.maxd), kl += r.kl, rows++, top1 += r.top_cpu == r.top_gpu;
    }
    char gen_c[256] = "", gen_g[256] = "";
    uint32_t fb_prefill = kvs_ctx_counters(cg)[KVS_OP_FALLBACK].calls;
    struct kvs_ctx_xfer x0, x1;
    kvs_ctx_transfers(cg, &x0);
    x1 = x0;
    /* traffic per token is measured over the (up to 8) decoded tokens after the first: a decode-time
     * merge (minicache, every 32 tokens) brings its scores to the press, which decides; the first
     * decoded token also makes one-time copies (CommonKV uploads a layer's factors at its first
     * attention on the device, when the prompt's attention ran on the host) */
    int x_from = n_gen > 1 ? 1 : 0, n_xfer = n_gen - x_from < 8 ? n_gen - x_from : 8;
    for (int i = 0; i < n_gen; i++) { /* greedy decode; both are fed the CPU's token */
        struct logit_cmp r = logit_compare(kvs_ctx_logits(cg), kvs_ctx_logits(cc), V);
        worst = fmax(worst, r.nerr), maxd = fmax(maxd, r.maxd), kl += r.kl, rows++, top1 += r.top_cpu == r.top_gpu;
        min_margin = fmin(min_margin, r.margin);
        tok_ok += r.top_cpu == r.top_gpu;
        snprintf(gen_c + strlen(gen_c), sizeof gen_c - strlen(gen_c), " %d", r.top_cpu);
        snprintf(gen_g + strlen(gen_g), sizeof gen_g - strlen(gen_g), " %d", r.top_gpu);
        int32_t id = r.top_cpu;
        if (kvs_ctx_eval(cc, &id, 1, NULL) != KVS_OK || kvs_ctx_eval(cg, &id, 1, NULL) != KVS_OK) {
            CHECKF(0, "%s: decode step %d: %s %s", label, i, kvs_ctx_error(cc), kvs_ctx_error(cg));
            break;
        }
        if (i + 1 == x_from) kvs_ctx_transfers(cg, &x0);
        if (i + 1 == x_from + n_xfer) kvs_ctx_transfers(cg, &x1);
    }
    {
        /* a decoded token's activations stay on the device: what crosses per token is its id and
         * position (and the positions the K/V store and attention need) up, the logits down; a
         * press on host arrays adds its inputs and output, counted as press crossings */
        uint64_t down = (x1.down_bytes - x0.down_bytes) / (uint64_t)n_xfer, up = (x1.up_bytes - x0.up_bytes) / (uint64_t)n_xfer;
        uint64_t press = (x1.press_bytes - x0.press_bytes) / (uint64_t)n_xfer;
        bool backend_io = pg->needs & KVS_PRESS_BACKEND_IO;
        fprintf(stderr, "   %s %s: per decoded token %llu bytes down (logits %d), %llu up, %llu across the press "
                "boundary (%s), host copies per token %.1f\n", label, method, (unsigned long long)down, V * 4,
                (unsigned long long)up, (unsigned long long)press, backend_io ? "device press" : "host press",
                (double)(x1.down_calls - x0.down_calls + x1.up_calls - x0.up_calls) / n_xfer);
        /* CommonKV with eviction keeps each group's scores by position on the device (its attention
         * adds the mass there); an eviction step (every snap_window tokens) brings them down once to
         * decide what goes: at most one float per position and layer, averaged over the window */
        uint64_t mass_max = ckv && evicts ? (uint64_t)m->hp.n_layer * (uint64_t)(n + n_gen) * sizeof(float) : 0;
        CHECKF(!backend_io || (press == 0 && down >= (uint64_t)V * 4 && down <= (uint64_t)V * 4 + mass_max),
               "%s %s: a decoded token left the device: %llu bytes down per token (logits are %d, eviction mass at "
               "most %llu), %llu across the press boundary", label, method, (unsigned long long)down, V * 4,
               (unsigned long long)mass_max, (unsigned long long)press);
        CHECKF(backend_io || press > 0, "%s %s: a host press's inputs crossed uncounted", label, method);
        /* CommonKV projects, stores and attends on the device: no layer's activations go up either
         * (before, each layer's queries and the press's output crossed: 2 x 69120 bytes for SmolLM2);
         * what goes up per token is a few positions and indices */
        uint64_t qb = (uint64_t)m->hp.n_layer * m->hp.n_head * m->hp.head_dim * sizeof(float);
        CHECKF(!ckv || up < qb / 4, "%s %s: %llu bytes up per decoded token (every layer's queries are %llu): "
               "the press's inputs crossed", label, method, (unsigned long long)up, (unsigned long long)qb);
    }
    fprintf(stderr, "   %s %s (%s weights): %d prompt + %d greedy tokens; cpu%s / cuda-emu%s\n", label, method,
            dtype ? dtype : "fp16", n, n_gen, gen_c, gen_g);
    fprintf(stderr, "   %s: logits normalised error max %.3g (tolerance %.3g), max |d| %.3g, mean KL %.3g "
            "(tolerance %.3g), top-1 agreement %d/%d, smallest greedy margin %.3g\n", label, worst, nerr_tol, maxd,
            kl / rows, kl_tol, top1, rows, min_margin);
    /* the K/V cache is in (emulated) device memory: the CUDA backend holds exactly the bytes the
     * press reports allocated, took no CPU fallback, and the CPU context holds the same amount */
    struct kvs_rec_step *rg = calloc(1, sizeof *rg), *rc = calloc(1, sizeof *rc);
    pg->ops->fill_record(pg, rg);
    pc->ops->fill_record(pc, rc);
    fprintf(stderr, "   %s %s: K/V pool %llu bytes allocated in device memory (%llu held, %u of %d tokens kept in "
            "layer 0), %u CPU fallbacks\n", label, method, (unsigned long long)kvs_ctx_pool_bytes(cg),
            (unsigned long long)rg->bytes_held, rg->layer_kept[0], n + n_gen, kvs_ctx_counters(cg)[KVS_OP_FALLBACK].calls);
    /* packed (quantized) latents live in device memory too: the device holds every byte */
    CHECKF(rg->bytes_alloc > 0 && kvs_ctx_pool_bytes(cg) == rg->bytes_alloc,
           "%s: the CUDA backend holds %llu pool bytes, the press reports %llu allocated", label,
           (unsigned long long)kvs_ctx_pool_bytes(cg), (unsigned long long)rg->bytes_alloc);
    CHECKF(rg->bytes_held == rc->bytes_held && (!full || rg->layer_kept[0] == (uint32_t)(n + n_gen)) &&
               (!evicts || cr < 0 || rg->layer_kept[0] < (uint32_t)(n + n_gen)) && rg->layer_kept[0] == rc->layer_kept[0],
           "%s: device pool holds %llu bytes / %u tokens, CPU %llu / %u", label, (unsigned long long)rg->bytes_held,
           rg->layer_kept[0], (unsigned long long)rc->bytes_held, rc->layer_kept[0]);
    CHECKF(!packed || (rg->saved_quant > 0 && rg->saved_quant == rc->saved_quant),
           "%s %s: quantization saved %lld bytes on the device, %lld on the CPU", label, method,
           (long long)rg->saved_quant, (long long)rc->saved_quant);
    /* every row op, fp16 or packed, ran on the device, CommonKV's attention included: decode steps
     * by the fused kernel, prefill chunks by the GEMM path; nothing took the host twin */
    uint32_t fb = kvs_ctx_counters(cg)[KVS_OP_FALLBACK].calls;
    CHECKF(fb == 0, "%s %s: %u CPU fallbacks on the CUDA backend (%u of them in the prompt pass)", label, method, fb,
           fb_prefill);
    if (ckv) {
        /* the plan may leave a dissimilar group unmerged (SmolLM2's group 0): some group merges, each
         * the same share on both */
        float most = 0;
        int gm = 0;
        for (uint32_t g = 0; g < rg->n_groups && g < KVS_MAX_GROUPS; g++) {
            CHECKF(rg->group_merged[g] == rc->group_merged[g], "%s: group %u merged %.3f of its tokens on the device, "
                   "%.3f on the CPU", label, g, rg->group_merged[g], rc->group_merged[g]);
            if (rg->group_merged[g] > most) most = rg->group_merged[g], gm = (int)g;
        }
        CHECKF(most > 0 && rg->n_groups == rc->n_groups, "%s %s: no group merged", label, method);
        fprintf(stderr, "   %s %s: group %d merged %.3f of its tokens, the most of %u groups (device and CPU)\n", label,
                method, gm, most, rg->n_groups);
    }
    if (minicache) { /* the device scored, retained and merged the same share of every pair */
        int last = (int)rg->n_groups - 1;
        CHECKF(rg->n_groups > 0 && rg->n_groups == rc->n_groups && rg->group_merged[last] > 0 &&
                   rg->group_merged[last] == rc->group_merged[last] &&
                   fabsf(rg->group_sim[last] - rc->group_sim[last]) < 1e-4f,
               "%s: the last pair merged %.3f of its tokens (similarity %.5f) on the device, %.3f (%.5f) on the CPU",
               label, last >= 0 ? rg->group_merged[last] : 0.0f, last >= 0 ? rg->group_sim[last] : 0.0f,
               last >= 0 ? rc->group_merged[last] : 0.0f, last >= 0 ? rc->group_sim[last] : 0.0f);
        if (last >= 0)
            fprintf(stderr, "   %s %s: %u pairs, the last merged %.3f of its tokens (similarity %.5f device, %.5f CPU)\n",
                    label, method, rg->n_groups, rg->group_merged[last], rg->group_sim[last], rc->group_sim[last]);
    }
    CHECKF(!full || fabsf(rg->layer_sim[0] - rc->layer_sim[0]) < 0.02f, "%s: layer similarity %g on the device, %g on the CPU",
           label, rg->layer_sim[0], rc->layer_sim[0]);
    free(rg), free(rc);
    CHECKF(tok_ok == n_gen, "%s: greedy tokens differ: cpu%s cuda-emu%s", label, gen_c, gen_g);
    CHECKF(worst <= nerr_tol, "%s: logits normalised error %.3g > %.3g", label, worst, nerr_tol);
    CHECKF(kl / rows <= kl_tol, "%s: mean KL %.3g > %.3g", label, kl / rows, kl_tol);
    free(lc), free(lg);
done:
    kvs_ctx_delete(cg);
    kvs_ctx_delete(cc);
    kvs_press_delete(pg);
    kvs_press_delete(pc);
    kvs_model_delete(m);
}

/* Tiny models written here: peaked logits (larger weights) so that greedy tokens are decided by
 * margins well above fp16 rounding. */
static void tiny_opts(struct kvs_tiny_opts *o, int which)
{
    kvs_tiny_defaults(o);
    o->weight_std = 0.15f;
    o->embd_std = 1.0f;
    o->seed = 7;
    if (which == 1) { /* GQA 3:1, head width 32, Qwen2 biases, fp16 weights */
        o->arch = "qwen2";
        o->n_embd = 192;
        o->n_head = 6;
        o->n_head_kv = 2;
        o->n_ff = 256;
        o->wtype = KVS_GGML_F16;
        o->tied = false;
        o->seed = 11;
    }
}

static const char *const tiny_names[] = {"llama", "qwen2-gqa3"};

/* The tiny llama with norm weights of about ±3e4: a few percent of every RMSNorm output, the input
 * of the q, k, v, gate and up products, lie beyond the fp16 range (65504), as a badly scaled fine-tune's
 * activations might. fp32 and bf16 hold them; fp16 products must clamp them and say so. */
static void tiny_overflow_opts(struct kvs_tiny_opts *o)
{
    tiny_opts(o, 0);
    o->norm_jitter = 3e4f;
    o->weight_std = 0.01f; /* keys and values stay inside fp16: the K/V cache holds fp16 */
    o->seed = 5;
}

struct hook_over {
    int D;        /* the model's width */
    uint64_t n;   /* layer 0's RMSNorm outputs beyond ±65504 */
};
static void count_over_hook(void *ud, int layer, int T, const int32_t *pos, const float *x, const float *xn,
                            const float *k)
{
    struct hook_over *h = ud;
    (void)pos, (void)x, (void)k;
    if (layer != 0) return;
    for (int i = 0; i < T * h->D; i++) h->n += fabsf(xn[i]) > 65504.0f;
}

/* Prefill of PROMPT on MODEL through the emulated device pretending compute capability CC (the
 * weights' type follows: fp16 on sm_75, bf16 on sm_80): the activations its fp16 products clamped. */
static uint64_t acts_clamped_run(const char *path, const char *cc, const char *prompt, char wtype[8])
{
    struct kvs_model *m = NULL;
    struct kvs_press *pr = NULL;
    struct kvs_ctx *c = NULL;
    struct kvs_method_config mc;
    struct kvs_ctx_params cp;
    char err[256] = "";
    uint64_t n = UINT64_MAX;
    int32_t toks[64];
    kvs_ctx_params_default(&cp);
    cp.n_ctx = 128;
    cp.n_batch = 16;
    snprintf(cp.backend, sizeof cp.backend, "cuda");
    CHECKF(kvs_model_load(&m, path, err, sizeof err) == KVS_OK, "%s", err);
    if (m) CHECK(kvs_method_parse(&mc, "full", err, sizeof err) == KVS_OK &&
                 kvs_press_new(&pr, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK);
    setenv("KVS_CUDA_EMU_CC", cc, 1);
    if (pr) CHECKF(kvs_ctx_new(&c, m, pr, &cp, err, sizeof err) == KVS_OK, "%s", err);
    unsetenv("KVS_CUDA_EMU_CC");
    if (c) {
        int64_t nt = kvs_tokenizer_encode(m->tok, prompt, strlen(prompt), false, toks, 64);
        CHECK(nt > 0);
        CHECKF(kvs_ctx_eval(c, toks, (int)nt, NULL) == KVS_OK, "%s", kvs_ctx_error(c));
        int32_t id = kvs_sample(kvs_ctx_logits(c), (int)m->hp.n_vocab, 0, 1, &rng);
        CHECKF(kvs_ctx_eval(c, &id, 1, NULL) == KVS_OK, "%s", kvs_ctx_error(c)); /* and a decoded token */
        n = kvs_ctx_acts_saturated(c);
        uint64_t ws = 0;
        snprintf(wtype, 8, "%s", kvs_ctx_weights(c, &ws));
    }
    kvs_ctx_delete(c);
    kvs_press_delete(pr);
    kvs_model_delete(m);
    return n;
}

/* End to end on sm_75 (fp16 weights): a model whose activations overflow fp16 gets them counted, at
 * least the RMSNorm outputs of layer 0 beyond the range that the CPU's hook sees (each feeds the q,
 * k and v products); the ordinary tiny model counts 0; on sm_80 (bf16) the overflowing one 0 too. */
static void test_e2e_acts_saturated(void)
{
    const char *prompt = "The GNU General Public License is a free license";
    char over[1024], plain[1024], err[256] = "";
    struct kvs_tiny_opts o;
    if (on_gpu) {
        printf("skipped: compute capability 7.5 is pretended by the emulation\n");
        return;
    }
    tiny_overflow_opts(&o);
    snprintf(over, sizeof over, "%s/emu-overflow.gguf", kvs_test_tmpdir());
    CHECKF(kvs_tiny_write(over, &o) == 0, "%s", kvs_tiny_error());
    tiny_opts(&o, 0);
    snprintf(plain, sizeof plain, "%s/emu-plain.gguf", kvs_test_tmpdir());
    CHECKF(kvs_tiny_write(plain, &o) == 0, "%s", kvs_tiny_error());
    /* layer 0's RMSNorm outputs beyond fp16 on the CPU (the same prompt, the same embedding) */
    struct hook_over h = {0};
    struct kvs_model *m = NULL;
    struct kvs_press *pr = NULL;
    struct kvs_ctx *c = NULL;
    struct kvs_method_config mc;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = 128;
    cp.n_batch = 16;
    if (kvs_model_load(&m, over, err, sizeof err) == KVS_OK && kvs_method_parse(&mc, "full", err, sizeof err) == KVS_OK &&
        kvs_press_new(&pr, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK &&
        kvs_ctx_new(&c, m, pr, &cp, err, sizeof err) == KVS_OK) {
        int32_t toks[64];
        h.D = (int)m->hp.n_embd;
        int64_t nt = kvs_tokenizer_encode(m->tok, prompt, strlen(prompt), false, toks, 64);
        kvs_ctx_set_hook(c, count_over_hook, &h);
        CHECK(nt > 0 && kvs_ctx_eval(c, toks, (int)nt, NULL) == KVS_OK);
    } else {
        CHECKF(false, "CPU context on the overflowing model: %s", err);
    }
    kvs_ctx_delete(c);
    kvs_press_delete(pr);
    kvs_model_delete(m);
    char w75[8] = "", w80[8] = "", wp[8] = "";
    uint64_t n75 = acts_clamped_run(over, "75", prompt, w75);
    uint64_t n80 = acts_clamped_run(over, "80", prompt, w80);
    uint64_t np = acts_clamped_run(plain, "75", prompt, wp);
    fprintf(stderr, "   activations clamped: overflowing model %llu (%s; layer 0's norm outputs beyond fp16 on the "
            "CPU: %llu), %llu (%s); ordinary model %llu (%s)\n", (unsigned long long)n75, w75,
            (unsigned long long)h.n, (unsigned long long)n80, w80, (unsigned long long)np, wp);
    CHECKF(!strcmp(w75, "fp16") && !strcmp(w80, "bf16") && !strcmp(wp, "fp16"), "weights %s, %s, %s", w75, w80, wp);
    CHECKF(h.n > 0, "the overflowing model does not overflow on the CPU");
    CHECKF(n75 != UINT64_MAX && n75 >= 3 * h.n, "sm_75: %llu activations counted as clamped, at least %llu expected",
           (unsigned long long)n75, (unsigned long long)(3 * h.n));
    CHECKF(n80 == 0, "sm_80 (bf16): %llu activations counted as clamped", (unsigned long long)n80);
    CHECKF(np == 0, "the ordinary model: %llu activations counted as clamped", (unsigned long long)np);
    remove(over);
    remove(plain);
}

/* The tiny Qwen2 (fp16 weights, K/V bias) with a K bias of 1e5 in each head's first channel: one
 * pair of every key leaves the fp16 range where RoPE turns it, as a badly scaled model's might.
 * Before issue 13 such keys were stored as ±inf, a score became +inf, the softmax NaN and with it
 * every logit (measured: 355 of 355 non-finite from the first decoded token on the CPU, from the
 * prompt on the device). With a bias in every channel the scores were all NaN and the attention
 * output silently 0 instead: no NaN to see, so the test uses the single channel. */
static void tiny_kv_overflow_opts(struct kvs_tiny_opts *o)
{
    tiny_opts(o, 1);
    o->k_bias_shift = 1e5f;
}

/* Prefill of PROMPT and 3 decoded tokens with METHOD on BACKEND: *FINITE whether every logit of
 * every step was finite; returns the cache values clamped (UINT64_MAX when the run failed). */
static uint64_t cache_clamped_run(const char *path, const char *backend, const char *method, const char *prompt,
                                  bool *finite)
{
    struct kvs_model *m = NULL;
    struct kvs_press *pr = NULL;
    struct kvs_ctx *c = NULL;
    struct kvs_method_config mc;
    struct kvs_ctx_params cp;
    char err[256] = "";
    uint64_t n = UINT64_MAX;
    int32_t toks[64];
    *finite = false;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = 128;
    cp.n_batch = 16;
    snprintf(cp.backend, sizeof cp.backend, "%s", backend);
    CHECKF(kvs_model_load(&m, path, err, sizeof err) == KVS_OK, "%s", err);
    if (m) CHECKF(kvs_method_parse(&mc, method, err, sizeof err) == KVS_OK, "%s", err);
    mc.sinks = 2, mc.recent = 4, mc.quant_residual = 4; /* the short prompt is merged / packed already */
    if (m) CHECKF(kvs_press_new(&pr, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK, "%s", err);
    if (pr) CHECKF(kvs_ctx_new(&c, m, pr, &cp, err, sizeof err) == KVS_OK, "%s", err);
    if (c) {
        int64_t nt = kvs_tokenizer_encode(m->tok, prompt, strlen(prompt), false, toks, 64);
        bool ok = nt > 0 && kvs_ctx_eval(c, toks, (int)nt, NULL) == KVS_OK;
        CHECKF(ok, "%s on %s: %s", method, backend, kvs_ctx_error(c));
        *finite = ok;
        for (int s = 0; ok && s < 4; s++) {
            const float *lg = kvs_ctx_logits(c);
            for (uint32_t i = 0; i < m->hp.n_vocab; i++) *finite &= isfinite(lg[i]) != 0;
            if (s == 3) break;
            int32_t id = kvs_sample(lg, (int)m->hp.n_vocab, 0, 1, &rng);
            ok = kvs_ctx_eval(c, &id, 1, NULL) == KVS_OK;
            CHECKF(ok, "%s on %s: decode: %s", method, backend, kvs_ctx_error(c));
        }
        if (ok) n = kvs_ctx_cache_saturated(c);
    }
    kvs_ctx_delete(c);
    kvs_press_delete(pr);
    kvs_model_delete(m);
    return n;
}

/* End to end, both backends, the methods whose caches hold fp16 K/V (the quantized pool's fp16 tier
 * and MiniCache's merged rows included): the overflowing model's logits stay finite and the clamped
 * keys are counted, the same number on both (the stores are bit-identical and the keys computed
 * alike); the ordinary model counts none. */
static void test_e2e_cache_saturated(void)
{
    const char *prompt = "The GNU General Public License is a free license";
    const char *methods[] = {"full", "snapkv", "quant", "minicache"};
    char over[1024], plain[1024];
    struct kvs_tiny_opts o;
    tiny_kv_overflow_opts(&o);
    snprintf(over, sizeof over, "%s/emu-kv-overflow.gguf", kvs_test_tmpdir());
    CHECKF(kvs_tiny_write(over, &o) == 0, "%s", kvs_tiny_error());
    tiny_opts(&o, 1);
    snprintf(plain, sizeof plain, "%s/emu-kv-plain.gguf", kvs_test_tmpdir());
    CHECKF(kvs_tiny_write(plain, &o) == 0, "%s", kvs_tiny_error());
    for (size_t i = 0; i < KVS_ARRAY_LEN(methods); i++) {
        bool fc = false, fg = false, fp = false;
        uint64_t nc = cache_clamped_run(over, "cpu", methods[i], prompt, &fc);
        uint64_t ng = cache_clamped_run(over, "cuda", methods[i], prompt, &fg);
        uint64_t np = cache_clamped_run(plain, "cuda", methods[i], prompt, &fp);
        fprintf(stderr, "   %s, keys biased by 1e5: cache values clamped %llu (CPU), %llu (device); logits %s, %s; "
                "the ordinary model %llu\n", methods[i], (unsigned long long)nc, (unsigned long long)ng,
                fc ? "finite" : "NOT finite", fg ? "finite" : "NOT finite", (unsigned long long)np);
        CHECKF(fc && fg, "%s: the overflowing model's logits are not finite (CPU %d, device %d)", methods[i], fc, fg);
        /* one pair per KV head, 2 heads, 2 layers: at most 8 values a token, fewer where RoPE turns them */
        CHECKF(nc != UINT64_MAX && nc == ng && nc >= 10,
               "%s: %llu (CPU) and %llu (device) cache values counted as clamped", methods[i], (unsigned long long)nc,
               (unsigned long long)ng);
        CHECKF(fp && np == 0, "%s: the ordinary model: %llu cache values counted as clamped", methods[i],
               (unsigned long long)np);
    }
    remove(over);
    remove(plain);
}

static void test_e2e_tiny(void)
{
    const char *prompt = "The GNU General Public License is a free, copyleft license for software";
    for (int k = 0; k < 2; k++) {
        struct kvs_tiny_opts o;
        tiny_opts(&o, k);
        char path[1024];
        snprintf(path, sizeof path, "%s/emu-tiny-%s.gguf", kvs_test_tmpdir(), tiny_names[k]);
        CHECKF(kvs_tiny_write(path, &o) == 0, "%s", kvs_tiny_error());
        char label[64];
        snprintf(label, sizeof label, "tiny %s", tiny_names[k]);
        e2e_model(label, path, NULL, "full", -1, prompt, 8, 1e-2, 1e-4);
        e2e_model(label, path, "bf16", "full", -1, prompt, 8, 6e-2, 2e-3);
        /* eviction in the prefill and at decode: the attention mass and compaction on the device */
        e2e_model(label, path, NULL, "streaming", 0.5f, prompt, 8, 1e-2, 1e-4);
        e2e_model(label, path, NULL, "snapkv", 0.5f, prompt, 8, 1e-2, 1e-4);
        /* CommonKV's latent segments on the device: stores, merges, compaction (and the packed
         * rows' counted fallback when composed with quant) */
        e2e_model(label, path, NULL, "commonkv", 0.5f, prompt, 8, 2e-2, 1e-4);
        /* 4-bit latents turn the devices' fp16 rounding of the activations into larger steps: with
         * the device-resident layers in front, measured normalised error 0.065 (tiny qwen2), mean KL
         * 3e-4, every greedy token equal; the KL bound is what holds the composition to the CPU */
        e2e_model(label, path, NULL, "commonkv+quant+snapkv", 0.7f, prompt, 8, 1e-1, 1e-3);
        /* MiniCache's pairs on the device: scores, SLERP merges, retained rows, attention; 40
         * decoded tokens reach the decode-time merge (every 32 tokens) */
        e2e_model(label, path, NULL, "minicache", 0.5f, prompt, 40, 1e-2, 1e-4);
        /* the quantized K/V pool on the device: packing, attention over packed rows, eviction.
         * quant alone at 0.4 packs at 8 bits: at 2 bits (target 0.7) the devices' fp16 rounding of
         * the keys flips codes a whole step wide, measured on tiny qwen2 normalised error 0.20,
         * KL 4.5e-3, top-1 67/67; at 4 bits 0.061, KL 3e-4 and a greedy near-tie (margin 0.004)
         * flipped. The packed bytes themselves are held to the CPU twin bit for bit in
         * test_kv_quant; the compositions pack at 4 bits and evict most rows. */
        e2e_model(label, path, NULL, "quant", 0.4f, prompt, 8, 2e-2, 1e-4);
        e2e_model(label, path, NULL, "quant+snapkv", 0.7f, prompt, 8, 2e-2, 1e-4);
        e2e_model(label, path, NULL, "quant+streaming", 0.7f, prompt, 8, 2e-2, 1e-4);
        remove(path);
    }
}

/* NVTX ranges: one per step (a prefill chunk, a decoded token) with one per layer inside it,
 * balanced, as the emulator's NVTX stand-in recorded them. */
static void test_nvtx_ranges(void)
{
    if (on_gpu) {
        printf("skipped: NVTX ranges are checked through the emulation (nsys shows them on a GPU)\n");
        return;
    }
    void *h = dlopen(getenv("KVS_CUDA_LIB"), RTLD_NOW | RTLD_NOLOAD);
    int (*nvtx_log)(char *, size_t) = h ? (int (*)(char *, size_t))dlsym(h, "kvs_cuda_emu_nvtx_log") : NULL;
    CHECKF(nvtx_log != NULL, "the emulated library exports no NVTX log");
    if (!nvtx_log) return;
    struct kvs_tiny_opts o;
    tiny_opts(&o, 0);
    char path[1024], err[256] = "";
    snprintf(path, sizeof path, "%s/emu-nvtx.gguf", kvs_test_tmpdir());
    CHECKF(kvs_tiny_write(path, &o) == 0, "%s", kvs_tiny_error());
    struct kvs_model *m = NULL;
    struct kvs_press *pr = NULL;
    struct kvs_ctx *c = NULL;
    struct kvs_method_config mc;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = 64;
    cp.n_batch = 8;
    snprintf(cp.backend, sizeof cp.backend, "cuda");
    CHECK(kvs_model_load(&m, path, err, sizeof err) == KVS_OK);
    CHECK(m && kvs_method_parse(&mc, "full", err, sizeof err) == KVS_OK);
    if (m) CHECK(kvs_press_new(&pr, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK);
    if (pr) CHECKF(kvs_ctx_new(&c, m, pr, &cp, err, sizeof err) == KVS_OK, "%s", err);
    if (c) {
        char got[4096], want[4096] = "";
        int32_t toks[5] = {1, 2, 3, 4, 5};
        nvtx_log(got, sizeof got); /* forget anything before */
        CHECKF(kvs_ctx_eval(c, toks, 5, NULL) == KVS_OK && kvs_ctx_eval(c, toks, 1, NULL) == KVS_OK, "%s",
               kvs_ctx_error(c));
        int depth = nvtx_log(got, sizeof got);
        const char *steps[2] = {"prefill 0-4", "decode 5"};
        for (int s = 0; s < 2; s++) {
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s>", steps[s]);
            for (uint32_t l = 0; l < m->hp.n_layer; l++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "layer %u><", l);
            snprintf(want + strlen(want), sizeof want - strlen(want), "<");
        }
        fprintf(stderr, "   NVTX ranges of a 5-token prefill and a decoded token: %s\n", got);
        CHECKF(!strcmp(got, want), "NVTX ranges \"%s\", expected \"%s\"", got, want);
        CHECKF(depth == 0, "%d NVTX ranges left open", depth);
    }
    kvs_ctx_delete(c);
    kvs_press_delete(pr);
    kvs_model_delete(m);
    remove(path);
}

/* ---------------------------------------------------------------- lat_attend: the prefill GEMM path */

/* Prefill chunks (T 5, 64, 300) over N rows in NS segments (private ones of 2 layers read at
 * layer 1, shared ones of 1, alternating; positions the odd numbers below 2N, shuffled), queries
 * at scattered positions: some see no row (-1, 0), some only a part, the last all of them; biases
 * on or off, the attention mass from a third of the chunk on or off. The device's GEMM path
 * (keys once per call, scores, mask, softmax, P·C, ·B_vᵀ; the emulated 64 KiB score cap makes it
 * loop over 1 to 9 queries a chunk) against the CPU twin, both in fp32 over the same fp16 rows:
 * the same arithmetic in another order, held to atol 2e-5, rtol 1e-3. WORST gets the largest
 * normalised error. */
static void prefill_case(int H, int G, int d, int R, bool neox, bool biases, int ns, const int *cnt, double *worst)
{
    struct kvs_lat_fmt f = {.width = R, .row_bytes = 2 * R};
    size_t dkv = (size_t)G * d;
    int N = 0;
    for (int i = 0; i < ns; i++) N += cnt[i];
    float *bk = rand_vec(dkv * R, -0.15f, 0.15f), *bv = rand_vec(dkv * R, -0.15f, 0.15f);
    float *kb = rand_vec(dkv, -0.5f, 0.5f), *vb = rand_vec(dkv, -0.5f, 0.5f), *fr = rope_freqs(d, 10000.0);
    int32_t *pos = malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) pos[i] = 2 * i + 1;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(frand(0, 1) * (float)(i + 1)) % (i + 1), t = pos[i];
        pos[i] = pos[j], pos[j] = t;
    }
    float *x = rand_vec((size_t)N * R, -1, 1); /* layer 1's rows (layer 0 of a private segment: other values) */
    float *x0 = rand_vec((size_t)N * R, -1, 1);
    struct kvs_backend *be[2] = {cuda16, cpu};
    struct kvs_ckv_seg sg[2][4];
    struct lat_consts k[2];
    for (int v = 0; v < 2; v++) {
        for (int i = 0, off = 0; i < ns; off += cnt[i], i++) {
            bool priv = i % 2 == 0;
            kvs_ckv_seg_init(&sg[v][i], &f, priv ? 2 : 1, 64);
            CHECK(kvs_ckv_seg_reserve(&sg[v][i], be[v], (uint32_t)cnt[i]) == KVS_OK);
            const float *first = priv ? x0 + (size_t)off * R : x + (size_t)off * R;
            CHECK(kvs_ckv_seg_append(&sg[v][i], cnt[i], pos + off, first) == KVS_OK);
            if (priv) CHECK(kvs_ckv_seg_fill(&sg[v][i], 1, cnt[i], x + (size_t)off * R) == KVS_OK);
        }
        lat_consts_put(&k[v], be[v], bk, bv, biases ? kb : NULL, biases ? vb : NULL, fr, dkv, R, d);
    }
    static const int Ts[3] = {5, 64, 300};
    for (int c = 0; c < 3; c++) {
        int T = Ts[c], mass_from = c == 1 ? -1 : T / 3;
        bool with_mass = c != 0 || !biases;
        size_t no = (size_t)T * H * d;
        int32_t *qp = malloc((size_t)T * sizeof(int32_t));
        for (int t = 0; t < T; t++) qp[t] = (int32_t)(frand(0, 1) * (float)(2 * N)); /* sees a part */
        qp[0] = -1, qp[1] = 0, qp[T - 1] = 2 * N; /* none, none, all */
        if (T > 10) qp[T / 2] = -1;
        float *q = rand_vec(no, -1, 1), *o[2], *m[2];
        for (int v = 0; v < 2; v++) {
            o[v] = malloc(no * sizeof(float)), m[v] = malloc((size_t)(N + 1) * sizeof(float));
            struct kvs_buf qb, ob;
            buf_put(be[v], &qb, q, no * sizeof(float));
            for (size_t i = 0; i < no; i++) o[v][i] = 12345.0f; /* stale values must not survive */
            buf_put(be[v], &ob, o[v], no * sizeof(float));
            for (int j = 0; j <= N; j++) m[v][j] = 777.0f;
            struct kvs_lat_attend_args a = {.T = T, .q_pos = qp, .n_head = H, .n_head_kv = G, .head_dim = d,
                                            .rank = R, .scale = 1.0f / sqrtf((float)d), .neox = neox, .f = &f,
                                            .n_segs = ns, .mass_from = mass_from};
            for (int i = 0; i < ns; i++) a.segs[i].L = &sg[v][i].L, a.segs[i].arr = i % 2 == 0 ? 1 : 0;
            a.bk = k[v].bk.data, a.bv = k[v].bv.data, a.bk_bias = k[v].kb.data, a.bv_bias = k[v].vb.data;
            a.freqs = k[v].fr.data;
            uint64_t fb = be[v]->ctr ? be[v]->ctr[KVS_OP_FALLBACK].calls : 0;
            CHECKF(kvs_backend_lat_attend(be[v], &a, qb.data, ob.data, with_mass ? m[v] : NULL) == KVS_OK, "%s",
                   be[v]->err);
            CHECKF(!be[v]->ctr || be[v]->ctr[KVS_OP_FALLBACK].calls == fb, "prefill: lat_attend took a CPU fallback");
            CHECK(kvs_backend_buf_download(be[v], o[v], &ob, 0, no * sizeof(float)) == KVS_OK);
            kvs_backend_buf_free(be[v], &qb), kvs_backend_buf_free(be[v], &ob);
        }
        char w[200];
        snprintf(w, sizeof w, "emu lat_attend prefill (T %d, %d:%d heads, d %d, rank %d, n %d in %d segments%s%s)", T,
                 H, G, d, R, N, ns, neox ? ", neox" : "", biases ? ", biases" : "");
        compare(w, o[0], o[1], (long)no, 2e-5f, 1e-3f);
        double num = 0, den = 0;
        for (size_t i = 0; i < no; i++) num += (o[0][i] - o[1][i]) * (double)(o[0][i] - o[1][i]), den += (double)o[1][i] * o[1][i];
        if (den > 0 && sqrt(num / den) > *worst) *worst = sqrt(num / den);
        /* the queries that see no row get 0, biases or not */
        bool zero = true;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < H * d && qp[t] < 1; i++) zero &= o[0][(size_t)t * H * d + i] == 0.0f;
        CHECKF(zero, "%s: a query that sees no row did not get 0", w);
        if (with_mass) {
            snprintf(w, sizeof w, "emu lat_attend prefill: attention mass (T %d from %d, %d heads, n %d)", T, mass_from,
                     H, N);
            compare(w, m[0], m[1], N, 1e-5f, 1e-3f);
        }
        CHECKF(m[0][N] == 777.0f, "prefill T %d: attention mass written past the %d rows", T, N);
        free(q), free(qp);
        for (int v = 0; v < 2; v++) free(o[v]), free(m[v]);
    }
    for (int v = 0; v < 2; v++) {
        lat_consts_free(&k[v], be[v]);
        for (int i = 0; i < ns; i++) kvs_ckv_seg_free(&sg[v][i]);
    }
    free(bk), free(bv), free(kb), free(vb), free(fr), free(pos), free(x), free(x0);
}

static void test_lat_attend_prefill(void)
{
    double worst = 0;
    static const int a[2] = {180, 45}, b[4] = {700, 300, 500, 100}, c[3] = {1100, 600, 300};
    prefill_case(9, 3, 64, 288, false, false, 2, a, &worst); /* SmolLM2-135M: n 225, 8 queries a chunk */
    prefill_case(9, 3, 64, 160, false, true, 4, b, &worst);  /* n 1,600: one query a chunk */
    prefill_case(14, 2, 64, 334, false, true, 3, c, &worst); /* Qwen2.5-0.5B: 14:2 heads, K/V bias, n 2,000 */
    prefill_case(14, 2, 64, 334, true, true, 2, a, &worst);  /* neox pairs, 5 queries a chunk */
    fprintf(stderr, "   prefill lat_attend against the CPU twin, worst normalised error %.3g\n", worst);
}

static void test_e2e_smollm2(void)
{
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (access(path, R_OK) != 0) {
        printf("skipped: %s not present (make model)\n", path);
        return;
    }
    e2e_model("SmolLM2-135M", path, NULL, "full", -1, "The capital of France is", 4, 1e-2, 1e-4);
    e2e_model("SmolLM2-135M", path, "bf16", "full", -1, "The capital of France is", 4, 6e-2, 2e-3);
    const char *longer = "This License applies to any program or other work which contains a notice placed by the "
                         "copyright holder saying it may be distributed under the terms of this General Public "
                         "License. The capital of France is";
    /* measured against the CPU's precise path: full and snapkv 0.0065 normalised error, KL 1.2e-5,
     * top-1 41/41 (the fp16 weights' rounding); against the default decode path they were 0.025
     * and up to 0.12, the CPU's own 8-bit activations */
    e2e_model("SmolLM2-135M", path, NULL, "full", -1, longer, 4, 2e-2, 1e-4);
    e2e_model("SmolLM2-135M", path, NULL, "snapkv", 0.5f, longer, 4, 2e-2, 1e-4);
    e2e_model("SmolLM2-135M", path, NULL, "minicache", 0.5f, longer, 4, 2e-2, 1e-4);
    /* the quantized K/V pool on the device (residual 8, groups of 32: the prompt packs a block) */
    e2e_model("SmolLM2-135M", path, NULL, "quant", 0.7f, longer, 4, 2e-2, 1e-4);
    e2e_model("SmolLM2-135M", path, NULL, "quant+snapkv", 0.7f, longer, 4, 2e-2, 1e-4);
    e2e_model("SmolLM2-135M", path, NULL, "quant+streaming", 0.7f, longer, 4, 2e-2, 1e-4);
    /* quantized latents in device memory: stored, merged, compacted, evicted and attended over
     * there (rank D/2, half the slots merged: at a target the composition's quantization and
     * eviction carry it and the plan merges nothing on this short text). The device's fp16
     * activations move latents across 4-bit code boundaries that the CPU's fp32 ones do not:
     * measured normalised logit error 0.080, mean KL 7.2e-5, top-1 41/41 (commonkv+quant; 0.054 and
     * 5.7e-5 while the latents were projected on the host by the CPU's own sgemm call). Plain
     * commonkv (fp16 latents, merged): the fused decode's 16-bit B_k over 30 layers against the
     * CPU's fp32 keys: measured 0.0225, KL 1.7e-5, top-1 41/41 (tolerance 0.05, KL 1e-4) */
    e2e_rank = 288, e2e_share = 0.5f;
    e2e_model("SmolLM2-135M", path, NULL, "commonkv", -1, longer, 4, 5e-2, 1e-4);
    e2e_model("SmolLM2-135M", path, NULL, "commonkv+quant", -1, longer, 4, 1e-1, 3e-4);
    e2e_model("SmolLM2-135M", path, NULL, "commonkv+quant+snapkv", -1, longer, 4, 1e-1, 3e-4);
    e2e_rank = 0;
}

int main(int argc, char **argv)
{
    bool ops_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ops")) ops_only = true; /* no end-to-end runs (tests/plant_bugs.sh) */
        else if (!strcmp(argv[i], "--gpu")) on_gpu = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) setenv("KVS_TEST_ONLY", argv[++i], 1); /* as $KVS_TEST_ONLY */
        else if (strcmp(argv[i], "--write-tiny")) {
            fprintf(stderr, "usage: test_cuda_emu [--ops] [--gpu] [--only WORD] | --write-tiny PATH NAME\n");
            return 2;
        } else break;
    }
    if (argc == 4 && !strcmp(argv[1], "--write-tiny")) { /* for tests/t_cuda_emu.sh */
        if (!strcmp(argv[3], "fp16-overflow") || !strcmp(argv[3], "kv-overflow")) {
            struct kvs_tiny_opts o;
            if (argv[3][0] == 'f') tiny_overflow_opts(&o);
            else tiny_kv_overflow_opts(&o);
            if (kvs_tiny_write(argv[2], &o) == 0) return 0;
            fprintf(stderr, "%s\n", kvs_tiny_error());
            return 1;
        }
        for (int k = 0; k < 2; k++)
            if (!strcmp(argv[3], tiny_names[k])) {
                struct kvs_tiny_opts o;
                tiny_opts(&o, k);
                if (kvs_tiny_write(argv[2], &o) == 0) return 0;
                fprintf(stderr, "%s\n", kvs_tiny_error());
                return 1;
            }
        fprintf(stderr, "unknown tiny model '%s'\n", argv[3]);
        return 2;
    }
    if (!on_gpu) {
        char lib[1024];
        const char *env = getenv("KVS_CUDA_EMU_LIB");
        snprintf(lib, sizeof lib, "%s", env && *env ? env : KVS_BUILD_DIR "/emu/libkvscope_cuda_emu.so");
        setenv("KVS_CUDA_LIB", lib, 1); /* before anything probes: the answer is cached per process */
        printf("emulated CUDA library: %s\n", lib);
    }
    pool = kvs_pool_new(2);
    /* not filtered by $KVS_TEST_ONLY: they make the backends every other test uses */
    fprintf(stderr, "-- test_probe\n"), test_probe();
    fprintf(stderr, "-- test_backends\n"), test_backends();
    if (cuda16 && cuda_bf && cpu) {
        RUN(test_rmsnorm);
        RUN(test_rope);
        RUN(test_convert_exact);
        RUN(test_weights_by_cc);
        RUN(test_matmul);
        RUN(test_matmul_factor);
        RUN(test_elementwise);
        RUN(test_embedding);
        RUN(test_attn_latent);
        RUN(test_attn_kv16);
        RUN(test_kv_pool);
        RUN(test_kv_quant);
        RUN(test_latent_pool);
        RUN(test_latent_packed);
        RUN(test_latent_packed_fallback);
        RUN(test_lat_attend);
        RUN(test_lat_attend_fused);
        RUN(test_lat_attend_prefill);
        RUN(test_minicache);
        RUN(test_lat_attend_packed);
        RUN(test_lat_cosine);
        RUN(test_svd);
        RUN(test_nvtx_ranges);
        RUN(test_mem_info);
        RUN(test_acts_saturated);
        RUN(test_cache_saturated);
        if (!ops_only) RUN(test_e2e_acts_saturated);
        if (!ops_only) RUN(test_e2e_cache_saturated);
        if (!ops_only) RUN(test_e2e_tiny);
        if (!ops_only) RUN(test_e2e_smollm2);
    }
    kvs_backend_delete(cuda16);
    kvs_backend_delete(cuda_bf);
    kvs_backend_delete(cpu);
    kvs_pool_delete(pool);
    return kvs_test_summary();
}
