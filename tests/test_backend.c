/* Backends (engine/backend/backend.h) and the CUPTI profiler (engine/backend/profiler.h): the CUDA probe degrades
 * to a reason without crashing (library missing, invalid, no driver, no GPU); the CPU backend ops
 * match plain reference implementations written here (naive attention that materialises K and V,
 * a double-precision RoPE, SVD reconstruction); the profiler reports why it cannot start.
 * With a GPU, CPU-vs-CUDA comparisons run (|a-b| <= atol + rtol|ref|, normalised error, worst
 * elements); without one they print "skipped: no GPU" and count neither way.
 * Options: --gpu (a missing GPU is a failure; used by tests/check-gpu.sh), -v (verbose).
 * With KVS_CUDA_LIB pointing at the host emulation (tests/cuda_emu) the comparisons run on the CPU. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attention.h"
#include "backend.h"
#include "cache_pool.h"
#include "harness.h"
#include "infer.h"
#include "mc_pool.h"
#include "profiler.h"
#include "svd.h"
#include "quant.h"
#include "record.h"

static int verbose;
static int require_gpu;

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(float lo, float hi)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}
static float *rand_vec(size_t n, float lo, float hi)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = frand(lo, hi);
    return v;
}

/* kvs_test_allclose, plus (verbose) the three largest absolute differences. */
static int compare(const char *what, const float *got, const float *ref, long n, float atol, float rtol)
{
    if (verbose) {
        long w[3] = {-1, -1, -1};
        for (long i = 0; i < n; i++) {
            double d = fabs((double)got[i] - ref[i]);
            for (int k = 0; k < 3; k++) {
                if (w[k] < 0 || d > fabs((double)got[w[k]] - ref[w[k]]) || isnan(d)) {
                    for (int m = 2; m > k; m--) w[m] = w[m - 1];
                    w[k] = i;
                    break;
                }
            }
        }
        for (int k = 0; k < 3 && w[k] >= 0; k++)
            fprintf(stderr, "   %s worst[%d]: [%ld] got %.7g ref %.7g |d| %.3g\n", what, k, w[k], (double)got[w[k]],
                    (double)ref[w[k]], fabs((double)got[w[k]] - ref[w[k]]));
    }
    return kvs_test_allclose(what, got, ref, n, atol, rtol);
}

static float *rope_freqs(int head_dim, double theta)
{
    float *f = malloc((size_t)(head_dim / 2) * sizeof(float));
    for (int i = 0; i < head_dim / 2; i++) f[i] = (float)pow(theta, -2.0 * i / head_dim);
    return f;
}

/* Independent RoPE in double: x (d) rotated at POS. */
static void ref_rope(double *x, int d, int32_t pos, const float *freqs, bool neox)
{
    for (int i = 0; i < d / 2; i++) {
        int a = neox ? i : 2 * i, b = neox ? i + d / 2 : 2 * i + 1;
        double ang = (double)pos * freqs[i], c = cos(ang), s = sin(ang);
        double x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

/* Naive attention of T queries over n materialised keys/values (n, n_kv, d) in double. */
static void ref_attend(int T, const int32_t *q_pos, const float *q, int H, int G, int d, float scale, int n,
                       const double *K, const double *V, const int32_t *pos, float *out)
{
    double *p = malloc((size_t)(n ? n : 1) * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / G);
            const float *qv = q + ((size_t)t * H + h) * d;
            double m = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                if (pos[j] > q_pos[t]) { p[j] = -INFINITY; continue; }
                double s = 0;
                for (int i = 0; i < d; i++) s += qv[i] * K[((size_t)j * G + g) * d + i];
                p[j] = s * scale;
                if (p[j] > m) m = p[j];
            }
            for (int j = 0; j < n; j++) {
                p[j] = p[j] == -INFINITY ? 0 : exp(p[j] - m);
                sum += p[j];
            }
            float *o = out + ((size_t)t * H + h) * d;
            for (int i = 0; i < d; i++) {
                double acc = 0;
                for (int j = 0; j < n; j++) acc += p[j] * V[((size_t)j * G + g) * d + i];
                o[i] = sum > 0 ? (float)(acc / sum) : 0.0f;
            }
        }
    free(p);
}

/* ---------------------------------------------------------------- probe (CUDA) */

/* Runs the probe in a child with KVS_CUDA_LIB=LIB (the parent's probe result is cached per process)
 * and returns 0 when the child's status equals WANT (or WANT is NULL and it is unavailable). */
static int probe_in_child(const char *lib, const char *want)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("KVS_CUDA_LIB", lib, 1);
        bool avail = true;
        const char *s = kvs_backend_probe(&avail);
        const struct kvs_backend_cuda_info *in = kvs_backend_cuda_info();
        fprintf(stderr, "   KVS_CUDA_LIB=%s -> \"%s\" (%s)\n", lib, s, in->detail);
        _exit(want ? (strcmp(s, want) == 0 && !avail ? 0 : 1) : (!avail ? 0 : 1));
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *find_libz(void)
{
    static const char *const c[] = {"/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
                                    "/lib64/libz.so.1", "/usr/lib/libz.so.1", "/lib/aarch64-linux-gnu/libz.so.1"};
    for (size_t i = 0; i < KVS_ARRAY_LEN(c); i++)
        if (access(c[i], R_OK) == 0) return c[i];
    return NULL;
}

static void test_probe_degrades(void)
{
    /* must run before anything probes in this process: children inherit the cached answer */
    CHECK(probe_in_child("/nonexistent/libkvscope_cuda.so", "CUDA backend not built") == 0);
    const char *z = find_libz();
    if (z) CHECK(probe_in_child(z, "CUDA backend library is invalid") == 0);
    char built[1024];
    snprintf(built, sizeof built, "%s/libkvscope_cuda.so", KVS_BUILD_DIR);
    if (access(built, R_OK) == 0) {
        /* the real library: loads (ABI matches) and answers; unavailable unless a GPU is here */
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("KVS_CUDA_LIB", built, 1);
            bool avail = false;
            const char *s = kvs_backend_probe(&avail);
            const struct kvs_backend_cuda_info *in = kvs_backend_cuda_info();
            fprintf(stderr, "   built library -> \"%s\" (runtime %d, driver %d, detail: %s)\n", s,
                    in->probe.runtime_version, in->probe.driver_version, in->detail);
            bool ok = in->lib_found && (in->lib_loaded || strstr(s, "runtime libraries missing") ||
                                        !strcmp(s, "no NVIDIA driver"));
            if (in->lib_loaded) ok = ok && in->probe.runtime_version > 0;
            _exit(ok ? 0 : 1);
        }
        int st = 1;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    } else {
        fprintf(stderr, "   (%s not built: the real-library probe is not exercised)\n", built);
    }
}

static bool is_known_reason(const char *s)
{
    static const char *const r[] = {"CUDA backend not built", "no NVIDIA driver", "no GPU",
                                    "CUDA runtime libraries missing", "CUDA backend library is invalid"};
    for (size_t i = 0; i < KVS_ARRAY_LEN(r); i++)
        if (!strcmp(s, r[i])) return true;
    return !strncmp(s, "NVIDIA driver too old", 21) || !strncmp(s, "CUDA error:", 11) ||
           !strncmp(s, "CUDA backend ABI mismatch", 25);
}

static void test_probe_here(void)
{
    bool avail = false;
    const char *s = kvs_backend_probe(&avail);
    const struct kvs_backend_cuda_info *in = kvs_backend_cuda_info();
    printf("cuda probe: %s\n", s);
    fprintf(stderr, "   lib %s (found %d, loaded %d), driver %d, detail: %s\n", in->lib_path, in->lib_found,
            in->lib_loaded, in->driver_loaded, in->detail);
    CHECK(s && *s);
    CHECK(strcmp(s, in->status) == 0);
    if (avail) CHECKF(!strncmp(s, "cuda: ", 6) && strstr(s, "(sm_"), "status \"%s\"", s);
    else CHECKF(is_known_reason(s), "unexpected reason \"%s\"", s);
    /* the driver's own answer must agree with the status */
    char detail[256];
    enum kvs_gpu_driver d = kvs_gpu_driver_probe(NULL, detail, sizeof detail);
    /* the host emulation (KVS_CUDA_LIB=build/emu/libkvscope_cuda_emu.so) needs no driver */
    bool emulated = strstr(s, "CUDA emulation") != NULL;
    if (d == KVS_GPU_NO_DRIVER && in->lib_found && !emulated)
        CHECKF(!strcmp(s, "no NVIDIA driver") || !in->lib_loaded, "%s", s);
    if (d != KVS_GPU_PRESENT && !emulated) CHECK(!avail);
    CHECK(kvs_backend_probe(NULL) == s); /* cached, static */

    CHECK(kvs_backend_count() >= 2);
    CHECK(!strcmp(kvs_backend_entry_at(0)->name, "cpu"));
    CHECK(!strcmp(kvs_backend_entry_at(1)->name, "cuda"));
    CHECK(kvs_backend_entry_at(kvs_backend_count()) == NULL);
    bool cpu_ok = false;
    kvs_backend_entry_at(0)->probe(&cpu_ok);
    CHECK(cpu_ok);
}

static void test_backend_new(void)
{
    char err[256] = "";
    struct kvs_backend *b = NULL;
    CHECK(kvs_backend_new(&b, "cpu", NULL, err, sizeof err) == KVS_OK && b);
    CHECK(b && !strcmp(kvs_backend_name(b), "cpu"));
    kvs_backend_delete(b);

    b = NULL;
    CHECK(kvs_backend_new(&b, "tpu", NULL, err, sizeof err) == KVS_ERR_ARG && !b);
    CHECK(strstr(err, "tpu") != NULL);

    bool avail = false;
    const char *why = kvs_backend_probe(&avail);
    b = NULL;
    err[0] = 0;
    enum kvs_status st = kvs_backend_new(&b, "cuda", NULL, err, sizeof err);
    if (avail) {
        CHECKF(st == KVS_OK || st == KVS_ERR_BACKEND, "%s", err);
    } else {
        CHECK(st == KVS_ERR_UNSUPPORTED && !b);
        /* the error is the probe's status and, in parentheses, the detail behind it */
        const struct kvs_backend_cuda_info *in = kvs_backend_cuda_info();
        CHECKF(!strncmp(err, why, strlen(why)), "err \"%s\" probe \"%s\"", err, why);
        CHECKF(!in->detail[0] || strstr(err, in->detail), "err \"%s\" lacks the probe's detail \"%s\"", err, in->detail);
        CHECK(!strcmp(err, kvs_backend_probe_detail()));
    }
    kvs_backend_delete(b);

    b = NULL;
    CHECK(kvs_backend_new(&b, "auto", NULL, err, sizeof err) == KVS_OK && b);
    if (b && !avail) CHECK(!strcmp(kvs_backend_name(b), "cpu"));
    kvs_backend_delete(b);
    kvs_backend_delete(NULL);
}

/* ---------------------------------------------------------------- CPU backend vs references */

static struct kvs_pool *pool;

static void test_cpu_rmsnorm_rope(void)
{
    struct kvs_backend *b = NULL;
    char err[128];
    CHECK(kvs_backend_new(&b, "cpu", pool, err, sizeof err) == KVS_OK);
    int T = 5, n = 96;
    float *x = rand_vec((size_t)T * n, -2, 2), *w = rand_vec(n, 0.5f, 1.5f);
    float *got = calloc((size_t)T * n, sizeof(float)), *ref = calloc((size_t)T * n, sizeof(float));
    CHECK(kvs_backend_rmsnorm(b, got, x, w, T, n, 1e-5f) == KVS_OK);
    for (int t = 0; t < T; t++) kvs_cpu_rmsnorm(ref + (size_t)t * n, x + (size_t)t * n, w, n, 1e-5f);
    CHECK(memcmp(got, ref, (size_t)T * n * sizeof(float)) == 0);
    /* and against the formula itself */
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)x[t * n + i] * x[t * n + i];
        for (int i = 0; i < n; i++) ref[t * n + i] = (float)(x[t * n + i] / sqrt(ss / n + 1e-5) * w[i]);
    }
    compare("rmsnorm vs formula", got, ref, (long)T * n, 1e-6f, 1e-5f);
    CHECK(kvs_backend_rmsnorm(NULL, got, x, w, T, n, 1e-5f) == KVS_OK); /* NULL backend: CPU path */
    compare("rmsnorm NULL backend", got, ref, (long)T * n, 1e-6f, 1e-5f);

    int H = 3, d = 16;
    int32_t pos[5] = {0, 1, 7, 300, 4095};
    float *freqs = rope_freqs(d, 10000.0);
    for (int neox = 0; neox < 2; neox++) {
        float *q = rand_vec((size_t)T * H * d, -1, 1);
        float *r = malloc((size_t)T * H * d * sizeof(float));
        memcpy(r, q, (size_t)T * H * d * sizeof(float));
        CHECK(kvs_backend_rope(b, q, T, H, d, pos, freqs, neox) == KVS_OK);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                double tmp[64];
                float *v = r + ((size_t)t * H + h) * d;
                for (int i = 0; i < d; i++) tmp[i] = v[i];
                ref_rope(tmp, d, pos[t], freqs, neox);
                for (int i = 0; i < d; i++) v[i] = (float)tmp[i];
            }
        compare(neox ? "rope neox vs double" : "rope vs double", q, r, (long)T * H * d, 1e-6f, 1e-5f);
        free(q);
        free(r);
    }
    free(freqs);
    free(x);
    free(w);
    free(got);
    free(ref);
    kvs_backend_delete(b);
}

static void test_cpu_matmul(void)
{
    struct kvs_backend *b = NULL;
    char err[128];
    CHECK(kvs_backend_new(&b, "cpu", pool, err, sizeof err) == KVS_OK);
    int rows = 40, cols = 64;
    float *wf = rand_vec((size_t)rows * cols, -0.5f, 0.5f);
    uint16_t *wh = malloc((size_t)rows * cols * sizeof(uint16_t));
    for (int i = 0; i < rows * cols; i++) wh[i] = kvs_fp32_to_fp16(wf[i]);
    struct kvs_weight w32 = {.type = KVS_GGML_F32, .rows = rows, .cols = cols, .data = wf,
                             .row_bytes = (uint64_t)cols * 4};
    struct kvs_weight w16 = {.type = KVS_GGML_F16, .rows = rows, .cols = cols, .data = wh,
                             .row_bytes = (uint64_t)cols * 2};
    const struct kvs_weight *ws[2] = {&w32, &w16};
    for (int k = 0; k < 2; k++)
        for (int T = 1; T <= 9; T += 8) { /* T=1: vector dots; T=9: the sgemm path */
            float *x = rand_vec((size_t)T * cols, -1, 1);
            float *y = calloc((size_t)T * rows, sizeof(float)), *ref = calloc((size_t)T * rows, sizeof(float));
            struct kvs_backend_weight bw;
            CHECK(kvs_backend_weight_prepare(b, &bw, ws[k]) == KVS_OK && bw.dev == NULL);
            CHECK(kvs_backend_matmul(b, &bw, x, y, T) == KVS_OK);
            for (int t = 0; t < T; t++)
                for (int r = 0; r < rows; r++) {
                    double s = 0;
                    for (int c = 0; c < cols; c++) {
                        float wv = k ? kvs_fp16_to_fp32(wh[r * cols + c]) : wf[r * cols + c];
                        s += (double)wv * x[t * cols + c];
                    }
                    ref[t * rows + r] = (float)s;
                }
            char what[64];
            snprintf(what, sizeof what, "matmul %s T=%d", k ? "f16" : "f32", T);
            /* the vector path may quantize activations (q8): a few 1e-3 relative */
            compare(what, y, ref, (long)T * rows, 2e-2f, 1e-2f);
            kvs_backend_weight_release(b, &bw);
            free(x);
            free(y);
            free(ref);
        }
    free(wf);
    free(wh);
    kvs_backend_delete(b);
}

/* Random latent attention problem: two segments, positions out of order, some masked. */
struct latent_case {
    int T, H, G, d, r, n0, n1;
    float *q, *bk, *bv, *c0, *c1, *freqs;
    int32_t *qpos, *p0, *p1;
    struct kvs_latent_seg segs[2];
    struct kvs_attn_latent_args a;
};

static void latent_case_init(struct latent_case *L, int T, int H, int G, int d, int r, int n0, int n1, bool neox)
{
    memset(L, 0, sizeof *L);
    L->T = T, L->H = H, L->G = G, L->d = d, L->r = r, L->n0 = n0, L->n1 = n1;
    L->q = rand_vec((size_t)T * H * d, -1, 1);
    L->bk = rand_vec((size_t)G * d * r, -0.1f, 0.1f);
    L->bv = rand_vec((size_t)G * d * r, -0.1f, 0.1f);
    L->c0 = rand_vec((size_t)n0 * r, -1, 1);
    L->c1 = rand_vec((size_t)(n1 ? n1 : 1) * r, -1, 1);
    L->freqs = rope_freqs(d, 10000.0);
    L->qpos = malloc((size_t)T * sizeof(int32_t));
    L->p0 = malloc((size_t)n0 * sizeof(int32_t));
    L->p1 = malloc((size_t)(n1 ? n1 : 1) * sizeof(int32_t));
    int n = n0 + n1;
    /* positions 0..n-1 spread over both segments (odd ones in the shared pool, say) */
    int i0 = 0, i1 = 0;
    for (int p = 0; p < n; p++) {
        if ((p % 2 && i1 < n1) || i0 >= n0) L->p1[i1++] = p;
        else L->p0[i0++] = p;
    }
    for (int t = 0; t < T; t++) L->qpos[t] = n - T + t; /* the last T positions: causal prefill */
    L->segs[0] = (struct kvs_latent_seg){L->c0, L->p0, n0};
    L->segs[1] = (struct kvs_latent_seg){L->c1, L->p1, n1};
    L->a = (struct kvs_attn_latent_args){.T = T, .q_pos = L->qpos, .n_head = H, .n_head_kv = G, .head_dim = d,
                                         .rank = r, .bk = L->bk, .bv = L->bv, .freqs = L->freqs, .neox = neox,
                                         .scale = 1.0f / sqrtf((float)d), .segs = L->segs, .n_segs = 2};
}

static void latent_case_free(struct latent_case *L)
{
    free(L->q), free(L->bk), free(L->bv), free(L->c0), free(L->c1), free(L->freqs);
    free(L->qpos), free(L->p0), free(L->p1);
}

/* Materialises K = RoPE(B_k c) and V = B_v c and runs naive attention. */
static void latent_reference(const struct latent_case *L, float *out)
{
    int n = L->n0 + L->n1, G = L->G, d = L->d, r = L->r;
    double *K = malloc((size_t)n * G * d * sizeof(double)), *V = malloc((size_t)n * G * d * sizeof(double));
    int32_t *pos = malloc((size_t)n * sizeof(int32_t));
    for (int j = 0; j < n; j++) {
        const float *c = j < L->n0 ? L->c0 + (size_t)j * r : L->c1 + (size_t)(j - L->n0) * r;
        pos[j] = j < L->n0 ? L->p0[j] : L->p1[j - L->n0];
        for (int g = 0; g < G; g++) {
            double *k = K + ((size_t)j * G + g) * d, *v = V + ((size_t)j * G + g) * d;
            for (int i = 0; i < d; i++) {
                double sk = 0, sv = 0;
                for (int x = 0; x < r; x++) {
                    sk += (double)L->bk[((size_t)g * d + i) * r + x] * c[x];
                    sv += (double)L->bv[((size_t)g * d + i) * r + x] * c[x];
                }
                k[i] = sk;
                v[i] = sv;
            }
            ref_rope(k, d, pos[j], L->freqs, L->a.neox);
        }
    }
    ref_attend(L->T, L->qpos, L->q, L->H, G, d, L->a.scale, n, K, V, pos, out);
    free(K);
    free(V);
    free(pos);
}

static void test_cpu_attn_latent(void)
{
    for (int neox = 0; neox < 2; neox++) {
        struct latent_case L;
        latent_case_init(&L, 3, 4, 2, 16, 24, 7, 6, neox);
        size_t no = (size_t)L.T * L.H * L.d;
        float *got = calloc(no, sizeof(float)), *got1 = calloc(no, sizeof(float)), *ref = calloc(no, sizeof(float));
        latent_reference(&L, ref);
        CHECK(kvs_cpu_attn_latent(pool, &L.a, L.q, got) == KVS_OK);
        compare(neox ? "attn_latent neox vs naive" : "attn_latent vs naive", got, ref, (long)no, 1e-5f, 1e-4f);
        CHECK(kvs_backend_attn_latent(NULL, &L.a, L.q, got1) == KVS_OK); /* no pool, wrapper */
        CHECK(memcmp(got, got1, no * sizeof(float)) == 0);
        /* the order of segments does not matter */
        struct kvs_latent_seg swapped[2] = {L.segs[1], L.segs[0]};
        struct kvs_attn_latent_args a2 = L.a;
        a2.segs = swapped;
        CHECK(kvs_cpu_attn_latent(pool, &a2, L.q, got1) == KVS_OK);
        compare("attn_latent swapped segments", got1, ref, (long)no, 1e-5f, 1e-4f);
        free(got), free(got1), free(ref);
        latent_case_free(&L);
    }
    /* an empty cache attends to nothing; bad shapes are refused */
    struct latent_case L;
    latent_case_init(&L, 2, 4, 2, 16, 8, 3, 0, false);
    L.a.n_segs = 0;
    float out[2 * 4 * 16];
    for (size_t i = 0; i < KVS_ARRAY_LEN(out); i++) out[i] = 1;
    CHECK(kvs_cpu_attn_latent(NULL, &L.a, L.q, out) == KVS_OK);
    bool zero = true;
    for (size_t i = 0; i < KVS_ARRAY_LEN(out); i++) zero = zero && out[i] == 0;
    CHECK(zero);
    L.a.n_segs = 2;
    L.a.n_head = 3; /* not a multiple of n_head_kv */
    CHECK(kvs_cpu_attn_latent(NULL, &L.a, L.q, out) == KVS_ERR_ARG);
    L.a.n_head = 4;
    L.a.head_dim = 15;
    CHECK(kvs_cpu_attn_latent(NULL, &L.a, L.q, out) == KVS_ERR_ARG);
    latent_case_free(&L);
}

struct kv16_case {
    int T, H, G, d, n0, n1;
    float *q;
    uint16_t *k0, *v0, *k1, *v1;
    int32_t *qpos, *p0, *p1;
    struct kvs_kv16_seg segs[2];
    struct kvs_attn_kv16_args a;
};

static uint16_t *rand_f16(size_t n)
{
    uint16_t *v = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) v[i] = kvs_fp32_to_fp16(frand(-1, 1));
    return v;
}

static void kv16_case_init(struct kv16_case *C, int T, int H, int G, int d, int n0, int n1)
{
    memset(C, 0, sizeof *C);
    C->T = T, C->H = H, C->G = G, C->d = d, C->n0 = n0, C->n1 = n1;
    size_t dkv = (size_t)G * d;
    C->q = rand_vec((size_t)T * H * d, -1, 1);
    C->k0 = rand_f16(n0 * dkv), C->v0 = rand_f16(n0 * dkv);
    C->k1 = rand_f16(n1 * dkv), C->v1 = rand_f16(n1 * dkv);
    C->qpos = malloc((size_t)T * sizeof(int32_t));
    C->p0 = malloc((size_t)n0 * sizeof(int32_t));
    C->p1 = malloc((size_t)n1 * sizeof(int32_t));
    int n = n0 + n1;
    for (int j = 0; j < n1; j++) C->p1[j] = j;          /* older tokens in the second run */
    for (int j = 0; j < n0; j++) C->p0[j] = n1 + j;
    for (int t = 0; t < T; t++) C->qpos[t] = n - T + t;
    C->segs[0] = (struct kvs_kv16_seg){C->k0, C->v0, C->p0, n0};
    C->segs[1] = (struct kvs_kv16_seg){C->k1, C->v1, C->p1, n1};
    C->a = (struct kvs_attn_kv16_args){.T = T, .q_pos = C->qpos, .n_head = H, .n_head_kv = G, .head_dim = d,
                                       .scale = 1.0f / sqrtf((float)d), .segs = C->segs, .n_segs = 2};
}

static void kv16_case_free(struct kv16_case *C)
{
    free(C->q), free(C->k0), free(C->v0), free(C->k1), free(C->v1), free(C->qpos), free(C->p0), free(C->p1);
}

static void kv16_reference(const struct kv16_case *C, float *out)
{
    int n = C->n0 + C->n1;
    size_t dkv = (size_t)C->G * C->d;
    double *K = malloc((size_t)n * dkv * sizeof(double)), *V = malloc((size_t)n * dkv * sizeof(double));
    int32_t *pos = malloc((size_t)n * sizeof(int32_t));
    for (int j = 0; j < n; j++) {
        bool first = j < C->n0;
        int l = first ? j : j - C->n0;
        const uint16_t *k = (first ? C->k0 : C->k1) + (size_t)l * dkv, *v = (first ? C->v0 : C->v1) + (size_t)l * dkv;
        for (size_t i = 0; i < dkv; i++) {
            K[j * dkv + i] = kvs_fp16_to_fp32(k[i]);
            V[j * dkv + i] = kvs_fp16_to_fp32(v[i]);
        }
        pos[j] = first ? C->p0[l] : C->p1[l];
    }
    ref_attend(C->T, C->qpos, C->q, C->H, C->G, C->d, C->a.scale, n, K, V, pos, out);
    free(K), free(V), free(pos);
}

static void test_cpu_attn_kv16(void)
{
    struct kv16_case C;
    kv16_case_init(&C, 4, 6, 2, 32, 9, 11);
    size_t no = (size_t)C.T * C.H * C.d;
    float *got = calloc(no, sizeof(float)), *ref = calloc(no, sizeof(float));
    kv16_reference(&C, ref);
    CHECK(kvs_cpu_attn_kv16(pool, &C.a, C.q, got) == KVS_OK);
    compare("attn_kv16 vs naive", got, ref, (long)no, 1e-5f, 1e-4f);
    struct kvs_backend *b = NULL;
    char err[64];
    CHECK(kvs_backend_new(&b, "cpu", pool, err, sizeof err) == KVS_OK);
    memset(got, 0, no * sizeof(float));
    CHECK(kvs_backend_attn_kv16(b, &C.a, C.q, got) == KVS_OK);
    compare("attn_kv16 backend", got, ref, (long)no, 1e-5f, 1e-4f);
    kvs_backend_delete(b);
    free(got), free(ref);
    kv16_case_free(&C);
}

/* A CPU backend and "fake": the same entries less the optional family LACKS names, so each pool call
 * on it runs the CPU twins on host memory and counts a fallback. Each counts into its own
 * counters. Returns false (one failed check) when the CPU backend cannot be made; then nothing is
 * held. F must stay where it is while fake is used (fake.ops points into it). */
enum fake_lacks { FAKE_NO_KV, FAKE_NO_MC };
struct fake_pair {
    struct kvs_backend *cpu;
    struct kvs_backend_ops ops; /* fake's entries */
    struct kvs_backend fake;
    struct kvs_op_counter ctr[KVS_OP_COUNT], fctr[KVS_OP_COUNT]; /* cpu's, fake's */
};

static bool fake_pair_init(struct fake_pair *F, enum fake_lacks lacks)
{
    char err[256];
    memset(F, 0, sizeof *F);
    CHECKF(kvs_backend_new(&F->cpu, "cpu", pool, err, sizeof err) == KVS_OK, "%s", err);
    if (!F->cpu) return false;
    F->cpu->ctr = F->ctr;
    F->ops = *F->cpu->ops;
    F->ops.name = "fake";
    if (lacks == FAKE_NO_KV) {
        F->ops.kv_grow = NULL, F->ops.kv_store = NULL, F->ops.kv_attend = NULL;
        F->ops.kv_compact = NULL, F->ops.kv_read = NULL;
    } else {
        F->ops.mc_grow = NULL, F->ops.mc_score = NULL, F->ops.mc_merge = NULL;
        F->ops.mc_attend = NULL, F->ops.mc_read = NULL;
    }
    F->fake = (struct kvs_backend){.ops = &F->ops, .pool = pool, .ctr = F->fctr};
    return true;
}

/* The K/V pool on the CPU backend: its attention (engine/cpu/attention.c, the path the full press runs) agrees with
 * the kv16 reference over the rows it holds, compaction keeps the chosen rows; and a backend
 * without the kv_* entries keeps its pool in host memory, with every call counted as a fallback. */
static void test_cpu_kv_pool(void)
{
    const int H = 6, G = 2, d = 32, dkv = G * d, n = 300, T = 5;
    struct fake_pair F;
    if (!fake_pair_init(&F, FAKE_NO_KV)) return;
    struct kvs_backend *cpu = F.cpu, *fake = &F.fake;
    const struct kvs_op_counter *ctr = F.ctr, *fctr = F.fctr;
    char err[256];
    struct kvs_cache_pool *pc = NULL, *pf = NULL;
    CHECKF(kvs_cache_pool_new(&pc, cpu, 1, dkv, 128, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_cache_pool_new(&pf, fake, 1, dkv, 128, err, sizeof err) == KVS_OK, "%s", err);
    float *k = malloc((size_t)n * dkv * sizeof(float)), *v = malloc((size_t)n * dkv * sizeof(float));
    int32_t *pos = malloc((size_t)n * sizeof(int32_t)), qpos[T];
    for (size_t i = 0; i < (size_t)n * dkv; i++) k[i] = frand(-1, 1), v[i] = frand(-1, 1);
    for (int i = 0; i < n; i++) pos[i] = i;
    for (int t = 0; t < T; t++) qpos[t] = n - T + t;
    const int parts[3] = {100, 1, 199};
    for (int i = 0, at = 0; i < 3; at += parts[i++]) {
        CHECKF(kvs_cache_pool_store(pc, 0, parts[i], pos + at, k + (size_t)at * dkv, v + (size_t)at * dkv) == KVS_OK,
               "%s", pc->err);
        CHECKF(kvs_cache_pool_store(pf, 0, parts[i], pos + at, k + (size_t)at * dkv, v + (size_t)at * dkv) == KVS_OK,
               "%s", pf->err);
    }
    CHECK(kvs_cache_pool_rows(pc, 0) == n && pc->rows[0].cap == 384);
    CHECK(kvs_cache_pool_bytes_held(pc, 0) == (uint64_t)n * dkv * 4);
    CHECK(kvs_cache_pool_bytes_alloc(pc, 0) == 384ull * (dkv * 4 + 4) && cpu->pool_bytes == 384ull * (dkv * 4 + 4));
    size_t no = (size_t)T * H * d;
    float *q = malloc(no * sizeof(float)), *oc = malloc(no * sizeof(float)), *of = malloc(no * sizeof(float));
    float *ref = malloc(no * sizeof(float)), *mc = malloc(n * sizeof(float)), *mf = malloc(n * sizeof(float));
    for (size_t i = 0; i < no; i++) q[i] = frand(-2, 2);
    CHECK(kvs_cache_pool_attend(pc, 0, T, qpos, H, G, d, q, oc, mc) == KVS_OK);
    CHECK(kvs_cache_pool_attend(pf, 0, T, qpos, H, G, d, q, of, mf) == KVS_OK);
    uint16_t *k16 = malloc((size_t)n * dkv * 2), *v16 = malloc((size_t)n * dkv * 2);
    int32_t *p16 = malloc((size_t)n * sizeof(int32_t));
    CHECK(kvs_cache_pool_read(pc, 0, 0, n, k16, v16, p16) == KVS_OK);
    struct kvs_kv16_seg seg = {k16, v16, p16, n};
    struct kvs_attn_kv16_args a = {.T = T, .q_pos = qpos, .n_head = H, .n_head_kv = G, .head_dim = d,
                                   .scale = 1.0f / sqrtf((float)d), .segs = &seg, .n_segs = 1};
    CHECK(kvs_cpu_attn_kv16(pool, &a, q, ref) == KVS_OK);
    compare("kv pool attention vs the kv16 reference", oc, ref, (long)no, 1e-5f, 1e-4f);
    double total = 0;
    for (int j = 0; j < n; j++) total += mc[j];
    CHECKF(fabs(total - T * H) < 1e-3, "attention mass sums to %.6f, not %d (queries x heads)", total, T * H);
    CHECK(!memcmp(oc, of, no * sizeof(float)) && !memcmp(mc, mf, (size_t)n * sizeof(float)));
    uint8_t *keep = calloc(n, 1);
    for (int i = 0; i < n; i++) keep[i] = i % 7 == 0;
    CHECK(kvs_cache_pool_compact(pc, 0, keep) == KVS_OK);
    int kept = kvs_cache_pool_rows(pc, 0);
    CHECK(kept == (n + 6) / 7 && pc->rows[0].cap == 128 && cpu->pool_bytes == 128ull * (dkv * 4 + 4));
    int32_t *pk = malloc((size_t)kept * sizeof(int32_t));
    uint16_t *kk = malloc((size_t)kept * dkv * 2);
    CHECK(kvs_cache_pool_read(pc, 0, 0, kept, kk, NULL, pk) == KVS_OK);
    bool rows_ok = true;
    for (int i = 0; i < kept; i++)
        rows_ok = rows_ok && pk[i] == 7 * i && !memcmp(kk + (size_t)i * dkv, k16 + (size_t)7 * i * dkv, (size_t)dkv * 2);
    CHECKF(rows_ok, "compaction did not keep rows 0, 7, 14, ... in order");
    CHECK(kvs_cache_pool_read(pc, 0, kept - 1, 2, kk, NULL, NULL) == KVS_ERR_ARG);
    /* the fake backend: host rows, no bytes of its own, each of 2 grows (128, 384 rows), 3 stores, 1 attention counted */
    CHECK(!kvs_cache_pool_native(pf) && kvs_cache_pool_native(pc));
    CHECKF(fctr[KVS_OP_FALLBACK].calls == 6 && fake->pool_bytes == 0, "fallbacks counted %u, fake backend bytes %llu",
           fctr[KVS_OP_FALLBACK].calls, (unsigned long long)fake->pool_bytes);
    CHECKF(ctr[KVS_OP_FALLBACK].calls == 0, "the CPU backend counted %u fallbacks", ctr[KVS_OP_FALLBACK].calls);
    kvs_cache_pool_delete(pc);
    kvs_cache_pool_delete(pf);
    CHECK(cpu->pool_bytes == 0);
    kvs_backend_delete(cpu);
    free(k), free(v), free(pos), free(q), free(oc), free(of), free(ref), free(mc), free(mf);
    free(k16), free(v16), free(p16), free(keep), free(pk), free(kk);
}

/* Checks a thin SVD: descending non-negative s, orthonormal u columns and vt rows, u s vt = a. */
static void check_svd(const char *what, const float *a, int m, int n, const float *u, const float *s,
                      const float *vt, double tol)
{
    int k = KVS_MIN(m, n);
    bool desc = true;
    for (int i = 0; i < k; i++) desc = desc && s[i] >= 0 && (i == 0 || s[i] <= s[i - 1] * (1 + 1e-6f));
    CHECKF(desc, "%s: singular values not descending", what);
    double orth = 0, num = 0, den = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double du = 0, dv = 0;
            for (int r = 0; r < m; r++) du += (double)u[r * k + i] * u[r * k + j];
            for (int c = 0; c < n; c++) dv += (double)vt[i * n + c] * vt[j * n + c];
            orth = fmax(orth, fabs(du - (i == j)));
            orth = fmax(orth, fabs(dv - (i == j)));
        }
    for (int r = 0; r < m; r++)
        for (int c = 0; c < n; c++) {
            double x = 0;
            for (int i = 0; i < k; i++) x += (double)u[r * k + i] * s[i] * vt[i * n + c];
            num += (x - a[r * n + c]) * (x - a[r * n + c]);
            den += (double)a[r * n + c] * a[r * n + c];
        }
    double rec = sqrt(num / den);
    fprintf(stderr, "   %s: reconstruction %.3g, orthogonality %.3g\n", what, rec, orth);
    CHECKF(rec < tol && orth < tol * 10, "%s: reconstruction %.3g orthogonality %.3g", what, rec, orth);
}

static enum kvs_status fake_buf_alloc(struct kvs_backend *b, void **data, size_t bytes)
{
    *data = NULL;
    return KVS_ERR_NOMEM;
}

/* MiniCache's pool on the CPU backend against a backend without the mc_* entries (host memory: the
 * CPU twins, each call counted as a fallback): the same scores, merged rows and attention, bit for
 * bit; bytes held and allocated counted in one place and given back; a backend with its own
 * memory and no mc_* entries gets one clear error, not a fallback on memory it cannot read. */
static void test_cpu_mc_pool(void)
{
    enum { H = 4, G = 2, d = 32, dkv = G * d, n = 300, T = 3 };
    const int la = 0;
    struct fake_pair F;
    if (!fake_pair_init(&F, FAKE_NO_MC)) return;
    struct kvs_backend *cpu = F.cpu, *fake = &F.fake;
    const struct kvs_op_counter *ctr = F.ctr, *fctr = F.fctr;
    char err[256];
    struct kvs_mc_pool *pc = NULL, *pf = NULL;
    CHECKF(kvs_mc_pool_new(&pc, cpu, 2, G, d, 128, 1, &la, err, sizeof err) == KVS_OK, "%s", err);
    CHECKF(kvs_mc_pool_new(&pf, fake, 2, G, d, 128, 1, &la, err, sizeof err) == KVS_OK, "%s", err);
    if (!pc || !pf) goto done;
    float *k = malloc((size_t)n * dkv * sizeof(float)), *v = malloc((size_t)n * dkv * sizeof(float));
    int32_t *pos = malloc((size_t)n * sizeof(int32_t)), *idx = malloc((size_t)n * sizeof(int32_t)), qpos[T];
    for (int i = 0; i < n; i++) pos[i] = i;
    for (int l = 0; l < 2; l++) {
        for (size_t i = 0; i < (size_t)n * dkv; i++) k[i] = frand(-1, 1) + (l ? 0.9f * k[i] : 0.0f);
        for (size_t i = 0; i < (size_t)n * dkv; i++) v[i] = frand(-1, 1) + (l ? 0.5f * v[i] : 0.0f);
        CHECK(kvs_mc_pool_store_buf(pc, l, n, pos, k, v) == KVS_OK);
        CHECK(kvs_mc_pool_store_buf(pf, l, n, pos, k, v) == KVS_OK);
    }
    int m = 0;
    for (int i = 4; i < n - 16; i++) idx[m++] = i;
    float *dc = malloc((size_t)m * sizeof(float)), *df = malloc((size_t)m * sizeof(float));
    double *xc = malloc((size_t)m * 2 * G * sizeof(double)), *xf = malloc((size_t)m * 2 * G * sizeof(double));
    CHECK(kvs_mc_pool_score(pc, 0, idx, m, dc, xc) == KVS_OK && kvs_mc_pool_score(pf, 0, idx, m, df, xf) == KVS_OK);
    CHECK(!memcmp(dc, df, (size_t)m * sizeof(float)) && !memcmp(xc, xf, (size_t)m * 2 * G * sizeof(double)));
    bool dist_ok = true;
    for (int r = 0; r < m; r++) dist_ok = dist_ok && dc[r] > 0 && dc[r] < 0.5f; /* correlated layers: below 90° */
    CHECKF(dist_ok, "angular distances outside (0, 0.5) for correlated layers");
    const int keep = 20;
    CHECK(kvs_mc_pool_merge(pc, 0, 0.6f, idx, m, keep) == KVS_OK && kvs_mc_pool_merge(pf, 0, 0.6f, idx, m, keep) == KVS_OK);
    int nm = kvs_mc_pool_merged(pc, 0), left = kvs_mc_pool_rows(pc, 0);
    CHECKF(nm == m - keep && left == n - nm && kvs_mc_pool_rows(pc, 1) == left && kvs_mc_pool_merged(pf, 0) == nm,
           "%d merged, %d unmerged rows left of %d", nm, left, n);
    /* the retained rows (idx[0..keep)) stay unmerged in both layers, in order */
    int32_t *left_pos = malloc((size_t)left * sizeof(int32_t));
    CHECK(kvs_mc_pool_read_pos(pc, 1, 0, left, left_pos) == KVS_OK);
    bool kept_ok = left == 4 + keep + 16;
    for (int i = 0; kept_ok && i < left; i++) kept_ok = left_pos[i] == (i < 4 + keep ? i : n - 16 + (i - 4 - keep));
    CHECKF(kept_ok, "the retained rows are not the first %d candidates", keep);
    uint16_t *ec = malloc((size_t)nm * dkv * 2), *ef = malloc((size_t)nm * dkv * 2);
    int32_t *mpos = malloc((size_t)nm * sizeof(int32_t));
    CHECK(kvs_backend_mc_read(cpu, &pc->pairs[0], G, d, 0, nm, ec, NULL, NULL, mpos) == KVS_OK);
    bool merged_ok = true; /* the merged rows are the candidates after the retained ones, in order */
    for (int r = 0; r < nm; r++) merged_ok = merged_ok && mpos[r] == idx[keep + r];
    CHECKF(merged_ok, "the merged rows are not candidates %d.. (a retained row merged?)", keep);
    free(mpos);
    CHECK(kvs_backend_mc_read(fake, &pf->pairs[0], G, d, 0, nm, ef, NULL, NULL, NULL) == KVS_OK);
    CHECK(!memcmp(ec, ef, (size_t)nm * dkv * 2));
    size_t no = (size_t)T * H * d;
    float *q = malloc(no * sizeof(float)), *oc = malloc(no * sizeof(float)), *of = malloc(no * sizeof(float));
    for (size_t i = 0; i < no; i++) q[i] = frand(-2, 2);
    for (int t = 0; t < T; t++) qpos[t] = n - T + t;
    for (int l = 0; l < 2; l++) {
        CHECK(kvs_mc_pool_attend_buf(pc, l, 0, T, qpos, H, q, oc) == KVS_OK);
        CHECK(kvs_mc_pool_attend_buf(pf, l, 0, T, qpos, H, q, of) == KVS_OK);
        CHECKF(!memcmp(oc, of, no * sizeof(float)), "layer %d: the fallback's attention differs", l);
    }
    uint64_t row = (uint64_t)dkv * 4 + 4, mrow = kvs_mc_row_bytes(G, d);
    uint64_t held = kvs_mc_pool_bytes_held(pc, 0) + kvs_mc_pool_bytes_held(pc, 1);
    uint64_t alloc = kvs_mc_pool_bytes_alloc(pc, 0) + kvs_mc_pool_bytes_alloc(pc, 1);
    CHECKF(held == 2 * left * row + (uint64_t)nm * mrow && alloc == 2 * 128 * row + 384 * mrow &&
               cpu->pool_bytes == alloc && fake->pool_bytes == 2 * 128 * row,
           "held %llu, allocated %llu (backend counts %llu; the one without mc entries %llu: its K/V rows only)",
           (unsigned long long)held, (unsigned long long)alloc, (unsigned long long)cpu->pool_bytes,
           (unsigned long long)fake->pool_bytes);
    CHECKF(fctr[KVS_OP_FALLBACK].calls == 6 && ctr[KVS_OP_FALLBACK].calls == 0,
           "fallbacks: %u on the backend without mc entries (1 grow, 1 score, 1 merge, 1 read, 2 attentions), %u on "
           "the CPU", fctr[KVS_OP_FALLBACK].calls, ctr[KVS_OP_FALLBACK].calls);
    /* a backend with device memory and no mc_* entries: an error that says so */
    struct kvs_backend_ops dev_ops = F.ops;
    dev_ops.name = "devicelike";
    dev_ops.buf_alloc = fake_buf_alloc;
    struct kvs_backend dev = {.ops = &dev_ops, .pool = pool};
    struct kvs_mc_rows P = {0};
    CHECK(kvs_backend_mc_grow(&dev, &P, G, d, 128) == KVS_ERR_STATE && strstr(dev.err, "no minicache entries") &&
          P.cap == 0);
    free(k), free(v), free(pos), free(idx), free(dc), free(df), free(xc), free(xf), free(left_pos);
    free(ec), free(ef), free(q), free(oc), free(of);
done:
    kvs_mc_pool_delete(pc);
    kvs_mc_pool_delete(pf);
    CHECK(cpu->pool_bytes == 0);
    kvs_backend_delete(cpu);
}

static void test_cpu_svd(void)
{
    int shapes[2][2] = {{40, 12}, {12, 40}};
    for (int k = 0; k < 2; k++) {
        int m = shapes[k][0], n = shapes[k][1], mn = KVS_MIN(m, n);
        float *a = rand_vec((size_t)m * n, -1, 1), *a0 = malloc((size_t)m * n * sizeof(float));
        memcpy(a0, a, (size_t)m * n * sizeof(float));
        float *u = malloc((size_t)m * mn * sizeof(float)), *s = malloc((size_t)mn * sizeof(float)),
              *vt = malloc((size_t)mn * n * sizeof(float));
        CHECK(kvs_backend_svd(NULL, a, m, n, u, s, vt) == KVS_OK);
        CHECK(memcmp(a, a0, (size_t)m * n * sizeof(float)) == 0);
        check_svd(k ? "svd 12x40" : "svd 40x12", a, m, n, u, s, vt, 1e-5);
        free(a), free(a0), free(u), free(s), free(vt);
    }
    float one = 1, u1, s1, v1;
    CHECK(kvs_cpu_svd(&one, 0, 1, &u1, &s1, &v1) == KVS_ERR_ARG);
}

/* ---------------------------------------------------------------- CUPTI profiler */

static void test_profiler_probe(void)
{
    enum kvs_prof_state st = KVS_PROF_ACTIVE;
    const char *s = kvs_profiler_probe(&st);
    printf("cupti probe: %s\n", s);
    CHECK(s && *s);
    static const char *const names[] = {
        [KVS_PROF_NOT_BUILT] = "CUPTI support not built", [KVS_PROF_NO_DRIVER] = "no NVIDIA driver",
        [KVS_PROF_NO_GPU] = "no GPU", [KVS_PROF_NO_CUPTI] = "CUPTI not found", [KVS_PROF_READY] = "CUPTI ready"};
    CHECKF(st < KVS_ARRAY_LEN(names) && names[st] && !strcmp(s, names[st]), "state %d status \"%s\"", st, s);
#ifdef KVS_HAVE_CUPTI
    enum kvs_gpu_driver d = kvs_gpu_driver_probe(NULL, NULL, 0);
    if (d == KVS_GPU_NO_DRIVER) CHECK(st == KVS_PROF_NO_DRIVER);
    if (d == KVS_GPU_NO_DEVICE) CHECK(st == KVS_PROF_NO_GPU);
    /* symbol resolution is checked wherever a libcupti is installed, GPU or not */
    char path[256];
    bool loadable = kvs_profiler_cupti_loadable(path, sizeof path);
    fprintf(stderr, "   libcupti: %s (%s)\n", loadable ? "all symbols resolved" : "not loadable", path);
    void *h = dlopen("libcupti.so.13", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("/usr/local/cuda/lib64/libcupti.so.13", RTLD_NOW | RTLD_LOCAL);
    if (h) CHECKF(loadable, "libcupti present but: %s", path);
#else
    CHECK(st == KVS_PROF_NOT_BUILT);
#endif

    struct kvs_profiler *p = NULL;
    CHECK(kvs_profiler_new(&p, 64) == KVS_OK && p);
    if (!p) return;
    CHECK(!strcmp(kvs_profiler_status(p), s));
    if (st != KVS_PROF_READY) {
        CHECK(kvs_profiler_start(p, kvs_now_ns()) == KVS_ERR_UNSUPPORTED);
        CHECK(kvs_profiler_state(p) == st);
        CHECK(!strcmp(kvs_profiler_status(p), s));
    }
    struct kvs_rec_kernel k[4];
    kvs_profiler_flush(p);
    CHECK(kvs_profiler_drain(p, k, 4) == 0);
    CHECK(kvs_profiler_pop_record(p) == NULL);
    CHECK(kvs_profiler_dropped(p) == 0);
    kvs_profiler_stop(p);
    kvs_profiler_delete(p);
}

/* ---------------------------------------------------------------- CPU vs CUDA (GPU only) */

static void gpu_rmsnorm_rope(struct kvs_backend *g, struct kvs_backend *c)
{
    int T = 7, n = 576;
    float *x = rand_vec((size_t)T * n, -3, 3), *w = rand_vec(n, 0.2f, 2.0f);
    float *yg = calloc((size_t)T * n, sizeof(float)), *yc = calloc((size_t)T * n, sizeof(float));
    CHECKF(kvs_backend_rmsnorm(g, yg, x, w, T, n, 1e-5f) == KVS_OK, "%s", kvs_backend_error(g));
    kvs_backend_rmsnorm(c, yc, x, w, T, n, 1e-5f);
    compare("cuda rmsnorm", yg, yc, (long)T * n, 1e-5f, 1e-4f);
    free(x), free(w), free(yg), free(yc);

    int H = 9, d = 64;
    int32_t pos[5] = {0, 1, 511, 4096, 8191};
    float *freqs = rope_freqs(d, 100000.0);
    for (int neox = 0; neox < 2; neox++) {
        float *qg = rand_vec((size_t)5 * H * d, -2, 2), *qc = malloc((size_t)5 * H * d * sizeof(float));
        memcpy(qc, qg, (size_t)5 * H * d * sizeof(float));
        CHECKF(kvs_backend_rope(g, qg, 5, H, d, pos, freqs, neox) == KVS_OK, "%s", kvs_backend_error(g));
        kvs_backend_rope(c, qc, 5, H, d, pos, freqs, neox);
        compare(neox ? "cuda rope neox" : "cuda rope", qg, qc, 5L * H * d, 1e-5f, 1e-4f);
        free(qg), free(qc);
    }
    free(freqs);
}

static void gpu_matmul(struct kvs_backend *g, struct kvs_backend *c)
{
    int rows = 1536, cols = 576;
    uint32_t types[3] = {KVS_GGML_F16, KVS_GGML_Q8_0, KVS_GGML_Q4_1};
    float *wf = rand_vec((size_t)rows * cols, -0.1f, 0.1f);
    for (int k = 0; k < 3; k++) {
        uint64_t rb = 0;
        if (!kvs_type_row_bytes(types[k], (uint64_t)cols, &rb)) continue;
        uint8_t *data = malloc((size_t)rb * rows);
        bool ok = true;
        for (int r = 0; r < rows; r++) {
            if (types[k] == KVS_GGML_F16) {
                uint16_t *h = (uint16_t *)(data + (size_t)r * rb);
                for (int i = 0; i < cols; i++) h[i] = kvs_fp32_to_fp16(wf[(size_t)r * cols + i]);
            } else if (kvs_quant_row(types[k], wf + (size_t)r * cols, data + (size_t)r * rb, cols) != KVS_OK) {
                ok = false;
            }
        }
        if (!ok) { free(data); continue; }
        struct kvs_weight w = {.type = types[k], .rows = rows, .cols = cols, .data = data, .row_bytes = rb};
        struct kvs_backend_weight bg, bc;
        CHECKF(kvs_backend_weight_prepare(g, &bg, &w) == KVS_OK && bg.dev, "%s", kvs_backend_error(g));
        kvs_backend_weight_prepare(c, &bc, &w);
        for (int T = 1; T <= 33; T += 32) {
            float *x = rand_vec((size_t)T * cols, -1, 1);
            float *yg = calloc((size_t)T * rows, sizeof(float)), *yc = calloc((size_t)T * rows, sizeof(float));
            CHECKF(kvs_backend_matmul(g, &bg, x, yg, T) == KVS_OK, "%s", kvs_backend_error(g));
            kvs_backend_matmul(c, &bc, x, yc, T);
            char what[64];
            snprintf(what, sizeof what, "cuda matmul type %u T=%d", types[k], T);
            /* fp16 or bf16 activations on the GPU (bf16 keeps 8 bits: the default on sm_80 and
             * newer), q8 activations on the CPU's vector path */
            bool bf = !strcmp(g->weights, "bf16");
            compare(what, yg, yc, (long)T * rows, bf ? 3e-2f : 1e-2f, bf ? 3e-2f : 2e-2f);
            free(x), free(yg), free(yc);
        }
        kvs_backend_weight_release(g, &bg);
        kvs_backend_weight_release(c, &bc);
        free(data);
    }
    free(wf);
}

static void gpu_attention(struct kvs_backend *g, struct kvs_backend *c)
{
    int Ts[2] = {1, 5};
    for (int i = 0; i < 2; i++) {
        struct latent_case L;
        latent_case_init(&L, Ts[i], 9, 3, 64, 192, 200, 57, i == 1);
        size_t no = (size_t)L.T * L.H * L.d;
        float *og = calloc(no, sizeof(float)), *oc = calloc(no, sizeof(float));
        CHECKF(kvs_backend_attn_latent(g, &L.a, L.q, og) == KVS_OK, "%s", kvs_backend_error(g));
        kvs_backend_attn_latent(c, &L.a, L.q, oc);
        compare(i ? "cuda attn_latent T=5 neox" : "cuda attn_latent T=1", og, oc, (long)no, 1e-4f, 1e-3f);
        free(og), free(oc);
        latent_case_free(&L);

        struct kv16_case C;
        kv16_case_init(&C, Ts[i], 9, 3, 64, 100, 200);
        no = (size_t)C.T * C.H * C.d;
        og = calloc(no, sizeof(float)), oc = calloc(no, sizeof(float));
        CHECKF(kvs_backend_attn_kv16(g, &C.a, C.q, og) == KVS_OK, "%s", kvs_backend_error(g));
        kvs_backend_attn_kv16(c, &C.a, C.q, oc);
        compare(i ? "cuda attn_kv16 T=5" : "cuda attn_kv16 T=1", og, oc, (long)no, 1e-4f, 1e-3f);
        free(og), free(oc);
        kv16_case_free(&C);
    }
}

static void gpu_svd(struct kvs_backend *g, struct kvs_backend *c)
{
    int shapes[2][2] = {{384, 96}, {96, 200}};
    for (int k = 0; k < 2; k++) {
        int m = shapes[k][0], n = shapes[k][1], mn = KVS_MIN(m, n);
        float *a = rand_vec((size_t)m * n, -1, 1);
        float *u = malloc((size_t)m * mn * sizeof(float)), *s = malloc((size_t)mn * sizeof(float)),
              *vt = malloc((size_t)mn * n * sizeof(float)), *sc = malloc((size_t)mn * sizeof(float)),
              *uc = malloc((size_t)m * mn * sizeof(float)), *vc = malloc((size_t)mn * n * sizeof(float));
        CHECKF(kvs_backend_svd(g, a, m, n, u, s, vt) == KVS_OK, "%s", kvs_backend_error(g));
        kvs_backend_svd(c, a, m, n, uc, sc, vc);
        compare(k ? "cuda svd values 96x200" : "cuda svd values 384x96", s, sc, mn, 1e-4f * sc[0], 1e-4f);
        check_svd(k ? "cuda svd 96x200" : "cuda svd 384x96", a, m, n, u, s, vt, 1e-4);
        free(a), free(u), free(s), free(vt), free(sc), free(uc), free(vc);
    }
}

static void gpu_profiler(struct kvs_backend *g)
{
    enum kvs_prof_state st;
    const char *why = kvs_profiler_probe(&st);
    if (st != KVS_PROF_READY) {
        printf("skipped: CUPTI activity check (%s)\n", why);
        return;
    }
    struct kvs_profiler *p = NULL;
    CHECK(kvs_profiler_new(&p, 4096) == KVS_OK);
    uint64_t t0 = kvs_now_ns();
    enum kvs_status rc = kvs_profiler_start(p, t0);
    if (rc != KVS_OK) {
        /* a busy CUPTI (Nsight attached) is a legitimate state, reported as such */
        printf("skipped: CUPTI activity check (%s)\n", kvs_profiler_status(p));
        CHECK(kvs_profiler_state(p) == KVS_PROF_BUSY || kvs_profiler_state(p) == KVS_PROF_ERROR);
        kvs_profiler_delete(p);
        return;
    }
    int T = 4, n = 576;
    float *x = rand_vec((size_t)T * n, -1, 1), *w = rand_vec(n, 0.5f, 1.5f), *y = calloc((size_t)T * n, 4);
    for (int i = 0; i < 3; i++) kvs_backend_rmsnorm(g, y, x, w, T, n, 1e-5f);
    kvs_profiler_stop(p);
    struct kvs_rec_kernel k[256];
    size_t got = kvs_profiler_drain(p, k, 256);
    int kernels = 0, copies = 0, bad_time = 0;
    for (size_t i = 0; i < got; i++) {
        if (k[i].kind == KVS_KREC_KERNEL && strstr(k[i].name, "rmsnorm")) kernels++;
        if (k[i].kind == KVS_KREC_MEMCPY) copies++;
        if (k[i].end_ns < k[i].start_ns || k[i].end_ns > kvs_now_ns() - t0 + 1000000000ull) bad_time++;
        if (verbose) fprintf(stderr, "   activity %u %-40s stream %u %llu..%llu ns %llu B\n", k[i].kind, k[i].name,
                             k[i].stream, (unsigned long long)k[i].start_ns, (unsigned long long)k[i].end_ns,
                             (unsigned long long)k[i].bytes);
    }
    fprintf(stderr, "   CUPTI: %zu activities, %d rmsnorm kernels, %d copies, dropped %llu\n", got, kernels, copies,
            (unsigned long long)kvs_profiler_dropped(p));
    CHECK(kernels == 3);
    CHECK(copies >= 6);
    CHECK(bad_time == 0);
    free(x), free(w), free(y);
    kvs_profiler_delete(p);
}

static void test_gpu(void)
{
    bool avail = false;
    const char *why = kvs_backend_probe(&avail);
    if (!avail) {
        printf("skipped: no GPU (%s)\n", why);
        if (require_gpu) CHECKF(avail, "check-gpu needs a GPU: %s", why);
        return;
    }
    struct kvs_backend *g = NULL, *c = NULL;
    char err[512] = "";
    enum kvs_status st = kvs_backend_new(&g, "cuda", NULL, err, sizeof err);
    CHECKF(st == KVS_OK, "cuda backend: %s", err);
    if (st != KVS_OK) return;
    CHECK(kvs_backend_new(&c, "cpu", pool, err, sizeof err) == KVS_OK);
    printf("comparing %s against %s\n", kvs_backend_device(g), kvs_backend_device(c));
    gpu_rmsnorm_rope(g, c);
    gpu_matmul(g, c);
    gpu_attention(g, c);
    gpu_svd(g, c);
    gpu_profiler(g);
    kvs_backend_delete(g);
    kvs_backend_delete(c);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gpu")) require_gpu = 1;
        else if (!strcmp(argv[i], "-v")) verbose = 1;
    }
    RUN(test_probe_degrades); /* first: forks before this process caches its own probe */
    RUN(test_probe_here);
    RUN(test_backend_new);
    pool = kvs_pool_new(2);
    RUN(test_cpu_rmsnorm_rope);
    RUN(test_cpu_matmul);
    RUN(test_cpu_attn_latent);
    RUN(test_cpu_attn_kv16);
    RUN(test_cpu_kv_pool);
    RUN(test_cpu_mc_pool);
    RUN(test_cpu_svd);
    RUN(test_profiler_probe);
    RUN(test_gpu);
    kvs_pool_delete(pool);
    return kvs_test_summary();
}
