/* The emulation shim itself (tests/cuda_emu): warp shuffles give CUDA's results, __shared__ starts
 * as NaN in every block, launch limits and device-memory misuse are errors, and each kind of
 * divergence (threads at different __syncthreads, a thread leaving a barrier or a shuffle, lanes
 * at different shuffles, an overrun past an allocation) aborts with a line naming the kernel.
 * Aborting cases run in a forked child whose stderr is checked. fp16/bf16 conversions are checked
 * against the engine's (engine/model/quant.h). cuBLAS and gesvdj argument checks and layouts. WMMA
 * (mma.h): products of fp16 and bf16 tiles in every layout, a warp that does not meet whole at a
 * WMMA call, a misaligned tile pointer. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <mma.h>

#include <csignal>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

extern "C" {
#include "harness.h"
#include "quant.h"
}

#define LAUNCH(k, g, b) kvs_emu::make_launcher(#k, k, (g), (b), 0, (cudaStream_t)0)

/* Runs FN in a child; true when it died of SIGABRT with WANT (and KERNEL) in its stderr. */
template <typename F> static bool aborts_with(F fn, const char *want, const char *kernel)
{
    int fd[2];
    if (pipe(fd)) return false;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        fn();
        _exit(0);
    }
    close(fd[1]);
    std::string err;
    char buf[512];
    ssize_t r;
    while ((r = read(fd[0], buf, sizeof buf)) > 0) err.append(buf, (size_t)r);
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && err.find(want) != std::string::npos &&
              (!kernel || err.find(kernel) != std::string::npos);
    fprintf(stderr, "   expect abort \"%s\": %s", want, err.empty() ? "(no message)\n" : err.c_str());
    return ok;
}

/* ---------------------------------------------------------------- kernels */

__global__ void k_shuffles(int *out)
{
    int lane = threadIdx.x & 31, base = (int)(threadIdx.x - lane) * 4;
    out[base + lane] = __shfl_xor_sync(0xffffffffu, lane * 10, 5);
    out[base + 32 + lane] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
    out[base + 64 + lane] = __shfl_up_sync(0xffffffffu, lane * 10, 2, 8);
    out[base + 96 + lane] = __shfl_sync(0xffffffffu, lane * 10, 7, 16);
}

__global__ void k_block_sum(float *out)
{
    __shared__ float part[64];
    part[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (unsigned i = 0; i < blockDim.x; i++) s += part[i];
        out[blockIdx.x] = s;
    }
}

/* reads a __shared__ slot nobody wrote in this block */
__global__ void k_shared_unwritten(float *out)
{
    __shared__ float s[32];
    if (blockIdx.x == 0) s[threadIdx.x] = 1.0f; /* block 1 must not see block 0's values */
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];
}

__global__ void k_divergent_barrier(int *)
{
    if (threadIdx.x < 16) __syncthreads();
    else __syncthreads();
}

__global__ void k_exit_at_barrier(int *)
{
    if (threadIdx.x == 5) return;
    __syncthreads();
}

__global__ void k_exit_at_shuffle(int *out)
{
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void k_divergent_shuffle(int *out)
{
    int v;
    if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, 1, 1);
    else v = __shfl_down_sync(0xffffffffu, 1, 1);
    out[threadIdx.x] = v;
}

__global__ void k_overrun(float *p, int n)
{
    p[threadIdx.x] = 1.0f; /* launched with more threads than n */
}

__global__ void k_nothing(float *) {}

/* D (16x16, row-major, or column-major when COL) = A (16x16, row-major) · B (16x16, column-major
 * when BCOL) + C, one warp, element type T. */
template <typename T, bool BCOL, bool COL> __global__ void k_wmma(const T *a, const T *b, const float *c, float *d)
{
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    typename std::conditional<BCOL, wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>,
                              wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>>::type fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, COL ? wmma::mem_col_major : wmma::mem_row_major);
}

/* half a warp reaches the product */
__global__ void k_wmma_divergent(float *d)
{
    using namespace nvcuda;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (threadIdx.x < 16) wmma::fill_fragment(acc, 1.0f);
    else wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void k_wmma_misaligned(float *d)
{
    using namespace nvcuda;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 1.0f);
    wmma::store_matrix_sync(d + 4, acc, 16, wmma::mem_row_major);
}

/* ---------------------------------------------------------------- tests */

static void test_shuffles(void)
{
    int *d = nullptr, h[256];
    CHECK(cudaMalloc(&d, sizeof h) == cudaSuccess);
    LAUNCH(k_shuffles, 1, 64)(d);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaSuccess);
    int bad = 0;
    for (int w = 0; w < 2; w++)
        for (int l = 0; l < 32; l++) {
            const int *o = h + w * 128;
            int x = (l ^ 5) * 10, dn = (l + 3 < 32 ? l + 3 : l) * 10, up = ((l & 7) >= 2 ? l - 2 : l) * 10,
                idx = ((l & ~15) + 7) * 10;
            bad += o[l] != x || o[32 + l] != dn || o[64 + l] != up || o[96 + l] != idx;
        }
    CHECKF(bad == 0, "%d lanes with wrong shuffle results", bad);
    cudaFree(d);
}

static void test_shared(void)
{
    float *d = nullptr, h[64];
    CHECK(cudaMalloc(&d, 3 * sizeof(float)) == cudaSuccess);
    LAUNCH(k_block_sum, 3, 64)(d);
    CHECK(cudaMemcpy(h, d, 3 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(h[0] == 2016.0f && h[1] == 2016.0f && h[2] == 2016.0f);
    cudaFree(d);
    CHECK(cudaMalloc(&d, sizeof h) == cudaSuccess);
    LAUNCH(k_shared_unwritten, 2, 32)(d);
    CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(h[0] == 1.0f && h[31] == 1.0f);
    CHECKF(std::isnan(h[32]) && std::isnan(h[63]), "block 1 read %g from unwritten shared memory", (double)h[32]);
    cudaFree(d);
}

static void test_launch_limits(void)
{
    float *d = nullptr;
    CHECK(cudaMalloc(&d, 64) == cudaSuccess);
    LAUNCH(k_nothing, 1, 1025)(d);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaSuccess); /* read and reset, like CUDA */
    LAUNCH(k_nothing, 0, 32)(d);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    LAUNCH(k_nothing, dim3(1, 65536), 32)(d);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    LAUNCH(k_nothing, 1, dim3(32, 32, 2))(d);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    float host[4];
    LAUNCH(k_nothing, 1, 32)(host); /* a host pointer handed to a kernel */
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    LAUNCH(k_nothing, 1, 1024)(d);
    CHECK(cudaGetLastError() == cudaSuccess);
    cudaFree(d);
}

static void test_memory(void)
{
    unsigned char *d = nullptr, h[32];
    CHECK(cudaMalloc(&d, 16) == cudaSuccess);
    CHECK(cudaMemcpy(h, d, 16, cudaMemcpyDeviceToHost) == cudaSuccess);
    bool nan = true;
    for (int i = 0; i < 16; i++) nan = nan && h[i] == 0xff;
    CHECKF(nan, "fresh device memory is not NaN-filled");
    CHECK(cudaMemcpy(h, d, 17, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d + 8, h, 9, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d, h, 16, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue); /* directions swapped */
    CHECK(cudaMemset(d + 1, 0, 16) == cudaErrorInvalidValue);
    CHECK(cudaMemset(d, 0, 16) == cudaSuccess);
    CHECK(cudaFree(d) == cudaSuccess);
    CHECK(cudaFree(nullptr) == cudaSuccess);
    CHECK(aborts_with([] { cudaFree((void *)0x1000); }, "not a live device allocation", nullptr));
    CHECK(aborts_with(
        [] {
            void *p;
            cudaMalloc(&p, 64);
            cudaFree(p);
            cudaFree(p);
        },
        "not a live device allocation", nullptr));
    CHECK(aborts_with(
        [] {
            float *p;
            cudaMalloc(&p, 16 * sizeof(float));
            LAUNCH(k_overrun, 1, 32)(p, 16);
        },
        "wrote past the end of the 64-byte allocation", "k_overrun"));
}

static void test_divergence(void)
{
    static int *d;
    cudaMalloc(&d, 256 * sizeof(int));
    CHECK(aborts_with([] { LAUNCH(k_divergent_barrier, 1, 32)(d); }, "divergent __syncthreads", "k_divergent_barrier"));
    CHECK(aborts_with([] { LAUNCH(k_exit_at_barrier, 1, 64)(d); }, "exited", "k_exit_at_barrier"));
    CHECK(aborts_with([] { LAUNCH(k_exit_at_shuffle, 1, 32)(d); }, "exited", "k_exit_at_shuffle"));
    CHECK(aborts_with([] { LAUNCH(k_divergent_shuffle, 1, 32)(d); }, "diverged", "k_divergent_shuffle"));
    cudaFree(d);
}

/* One WMMA product of element type T against the host's, both layouts of B and of D. */
template <typename T, bool BCOL, bool COL> static int wmma_case(T (*cvt)(float))
{
    T ha[256], hb[256];
    float fa[256], fb[256], hc[256], hd[256];
    for (int i = 0; i < 256; i++) {
        ha[i] = cvt((float)((i * 7) % 13 - 6) / 8.0f);
        hb[i] = cvt((float)((i * 5) % 11 - 5) / 4.0f);
        hc[i] = (float)(i % 9) - 4.0f;
    }
    for (int i = 0; i < 256; i++) fa[i] = (float)((i * 7) % 13 - 6) / 8.0f, fb[i] = (float)((i * 5) % 11 - 5) / 4.0f;
    T *da, *db;
    float *dc, *dd;
    cudaMalloc(&da, sizeof ha), cudaMalloc(&db, sizeof hb), cudaMalloc(&dc, sizeof hc), cudaMalloc(&dd, sizeof hd);
    cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice);
    cudaMemcpy(dc, hc, sizeof hc, cudaMemcpyHostToDevice);
    LAUNCH((k_wmma<T, BCOL, COL>), 1, 32)(da, db, dc, dd);
    cudaMemcpy(hd, dd, sizeof hd, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            double ref = hc[m * 16 + n]; /* small integers over powers of two: exact in fp16, bf16, fp32 */
            for (int k = 0; k < 16; k++) ref += (double)fa[m * 16 + k] * fb[BCOL ? n * 16 + k : k * 16 + n];
            bad += hd[COL ? n * 16 + m : m * 16 + n] != (float)ref;
        }
    cudaFree(da), cudaFree(db), cudaFree(dc), cudaFree(dd);
    return bad;
}

static void test_wmma(void)
{
    CHECKF((wmma_case<__half, false, false>(__float2half_rn)) == 0, "fp16, B row-major: wrong elements");
    CHECKF((wmma_case<__half, true, false>(__float2half_rn)) == 0, "fp16, B column-major: wrong elements");
    CHECKF((wmma_case<__nv_bfloat16, true, true>(__float2bfloat16_rn)) == 0, "bf16, D column-major: wrong elements");
    static float *d;
    cudaMalloc(&d, 512 * sizeof(float));
    CHECK(aborts_with([] { LAUNCH(k_wmma_divergent, 1, 32)(d); }, "diverged", "k_wmma_divergent"));
    CHECK(aborts_with([] { LAUNCH(k_wmma_misaligned, 1, 32)(d); }, "not 256-bit aligned", "k_wmma_misaligned"));
    cudaFree(d);
}

static void test_conversions(void)
{
    int bad = 0;
    for (uint32_t b = 0; b < 65536; b++) { /* every half: to float as the engine does, and back */
        __half h;
        h.__x = (unsigned short)b;
        float f = __half2float(h), e = kvs_fp16_to_fp32((uint16_t)b);
        if (std::isnan(e) ? !std::isnan(f) : memcmp(&f, &e, 4) != 0)
            if (bad++ < 5) fprintf(stderr, "   half %04x: %g, engine %g\n", b, (double)f, (double)e);
        if (!std::isnan(f) && __float2half_rn(f).__x != b)
            if (bad++ < 5) fprintf(stderr, "   half %04x comes back as %04x\n", b, __float2half_rn(f).__x);
    }
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < 2000000; i++) { /* random bit patterns of every exponent */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint32_t x = (uint32_t)s;
        float f;
        memcpy(&f, &x, 4);
        if (std::isnan(f)) continue;
        if (__float2half_rn(f).__x != kvs_fp32_to_fp16(f))
            if (bad++ < 5) fprintf(stderr, "   %a: %04x, engine %04x\n", (double)f, __float2half_rn(f).__x, kvs_fp32_to_fp16(f));
        /* bf16 against an independent RNE: round f / ulp to the nearest integer, ties to even
         * (nearbyint in the default rounding mode); subnormals share the smallest normal's ulp */
        __nv_bfloat16 bf = __float2bfloat16_rn(f);
        double ulp = ldexp(1.0, (f == 0 ? -126 : std::max(ilogb(f), -126)) - 7);
        double want = nearbyint((double)f / ulp) * ulp, back = kvs_bf16_to_fp32(bf.__x);
        if (fabs(want) >= 0x1p128) want = f < 0 ? -INFINITY : INFINITY;
        if (back != want)
            if (bad++ < 5) fprintf(stderr, "   bf16 %a -> %a, expected %a\n", (double)f, back, want);
    }
    CHECKF(bad == 0, "%d conversions differ from the engine's round-to-nearest-even", bad);
}

static void test_cublas(void)
{
    cublasHandle_t h = nullptr;
    CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    float *a, *b, *c, one = 1, zero = 0;
    cudaMalloc(&a, 6 * sizeof(float)), cudaMalloc(&b, 6 * sizeof(float)), cudaMalloc(&c, 9 * sizeof(float));
    float ha[6] = {1, 2, 3, 4, 5, 6}, hb[6] = {1, 0, -1, 2, 1, 0}, hc[9];
    cudaMemcpy(a, ha, sizeof ha, cudaMemcpyHostToDevice);
    cudaMemcpy(b, hb, sizeof hb, cudaMemcpyHostToDevice);
    /* C (3x3) = A (3x2, col-major) · B (2x3); C held NaN, beta 0 must not read it */
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 3, 2, &one, a, 3, b, 2, &zero, c, 3) == CUBLAS_STATUS_SUCCESS);
    cudaMemcpy(hc, c, sizeof hc, cudaMemcpyDeviceToHost);
    float want[9] = {1, 2, 3, -1 + 8, -2 + 10, -3 + 12, 1, 2, 3};
    CHECK(memcmp(hc, want, sizeof hc) == 0);
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 3, 2, &one, a, 2, b, 2, &zero, c, 3) ==
          CUBLAS_STATUS_INVALID_VALUE); /* lda < m */
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 3, 2, &one, a, 3, b, 2, nullptr, c, 3) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasSgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 3, 3, 2, &one, a, 3, b, 2, &zero, c, 3) ==
          CUBLAS_STATUS_NOT_INITIALIZED);
    CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 4, 2, &one, a, 3, b, 2, &zero, c, 3) ==
          CUBLAS_STATUS_EXECUTION_FAILED); /* B and C too small for n = 4 */
    /* transpose with geam, in place on B = C as the svd launcher does */
    CHECK(cublasSgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 3, &one, a, 3, &zero, c, 2, c, 2) == CUBLAS_STATUS_SUCCESS);
    cudaMemcpy(hc, c, 6 * sizeof(float), cudaMemcpyDeviceToHost);
    float tw[6] = {1, 4, 2, 5, 3, 6};
    CHECK(memcmp(hc, tw, sizeof tw) == 0);
    CHECK(cublasSgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 3, &one, c, 2, &zero, c, 2, c, 2) ==
          CUBLAS_STATUS_INVALID_VALUE); /* C = A needs op N */
    cudaFree(a), cudaFree(b), cudaFree(c);
    cublasDestroy(h);
}

static void test_gesvdj(void)
{
    cusolverDnHandle_t s = nullptr;
    gesvdjInfo_t p = nullptr;
    CHECK(cusolverDnCreate(&s) == CUSOLVER_STATUS_SUCCESS && cusolverDnCreateGesvdjInfo(&p) == CUSOLVER_STATUS_SUCCESS);
    const int m = 5, n = 3;
    float ha[m * n], hu[m * n], hv[n * n], hs[n];
    for (int i = 0; i < m * n; i++) ha[i] = (float)((i * 7) % 11) - 5.0f;
    float *a, *u, *v, *sv, *w;
    int *info, lwork = 0, hinfo = -1;
    cudaMalloc(&a, sizeof ha), cudaMalloc(&u, sizeof hu), cudaMalloc(&v, sizeof hv), cudaMalloc(&sv, sizeof hs);
    cudaMalloc(&info, sizeof(int));
    cudaMemcpy(a, ha, sizeof ha, cudaMemcpyHostToDevice);
    CHECK(cusolverDnSgesvdj_bufferSize(s, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, m, sv, u, m, v, n, &lwork, p) ==
          CUSOLVER_STATUS_SUCCESS);
    cudaMalloc(&w, (size_t)lwork * sizeof(float));
    CHECK(cusolverDnSgesvdj(s, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, m - 1, sv, u, m, v, n, w, lwork, info, p) ==
          CUSOLVER_STATUS_INVALID_VALUE); /* lda < m */
    CHECK(cusolverDnSgesvdj(s, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, m, sv, u, m, v, n, w, lwork - 1, info, p) ==
          CUSOLVER_STATUS_INVALID_VALUE);
    CHECK(cusolverDnSgesvdj(s, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, m, sv, u, m, v, n, w, lwork, info, p) ==
          CUSOLVER_STATUS_SUCCESS);
    cudaMemcpy(hu, u, sizeof hu, cudaMemcpyDeviceToHost), cudaMemcpy(hv, v, sizeof hv, cudaMemcpyDeviceToHost);
    cudaMemcpy(hs, sv, sizeof hs, cudaMemcpyDeviceToHost), cudaMemcpy(&hinfo, info, sizeof hinfo, cudaMemcpyDeviceToHost);
    CHECK(hinfo == 0);
    double err = 0; /* A = U diag(S) Vᵀ with V as returned (not transposed), all column-major */
    for (int r = 0; r < m; r++)
        for (int c = 0; c < n; c++) {
            double x = 0;
            for (int k = 0; k < n; k++) x += (double)hu[k * m + r] * hs[k] * hv[k * n + c];
            err = fmax(err, fabs(x - ha[c * m + r]));
        }
    CHECKF(err < 1e-4 && hs[0] >= hs[1] && hs[1] >= hs[2], "gesvdj reconstruction error %g", err);
    cudaFree(a), cudaFree(u), cudaFree(v), cudaFree(sv), cudaFree(info), cudaFree(w);
    cusolverDnDestroyGesvdjInfo(p);
    cusolverDnDestroy(s);
}

int main(void)
{
    RUN(test_shuffles);
    RUN(test_shared);
    RUN(test_launch_limits);
    RUN(test_memory);
    RUN(test_divergence);
    RUN(test_wmma);
    RUN(test_conversions);
    RUN(test_cublas);
    RUN(test_gesvdj);
    return kvs_test_summary();
}
