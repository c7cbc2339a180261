/* The card's measured peaks for the decode floors of tests/bench_gpu.sh (issue 13): device-to-device
 * copy bandwidth (cudaMemcpyAsync; a copy of N bytes reads N and writes N, so bandwidth = 2N / time)
 * and the tensor-core rate of the key-rebuild product (cublasGemmEx, bf16 inputs, fp32 accumulation,
 * m = d_kv, n = cached tokens, k = rank) in multiply-adds per second. Prints one JSON line.
 * Built by nvcc for a GPU and as host C++ against tests/cuda_emu, where the timings mean nothing and
 * the run only proves the program and its output. Depends on the CUDA runtime and cuBLAS only. */
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_GEMMS 8

#define CK(expr)                                                                                   \
    do {                                                                                           \
        cudaError_t ck_rc_ = (expr);                                                               \
        if (ck_rc_ != cudaSuccess) {                                                               \
            fprintf(stderr, "bench_peak: %s: %s\n", #expr, cudaGetErrorString(ck_rc_));            \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define CKB(expr)                                                                                  \
    do {                                                                                           \
        cublasStatus_t ck_rc_ = (expr);                                                            \
        if (ck_rc_ != CUBLAS_STATUS_SUCCESS) {                                                     \
            fprintf(stderr, "bench_peak: %s: cuBLAS status %d\n", #expr, (int)ck_rc_);             \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Device buffer of BYTES holding pseudo-random bf16 values in [-1, 1) (never zeros: tensor cores
 * draw less power, and may clock higher, on zeros). */
static void *random_bf16(size_t n)
{
    uint16_t *h = (uint16_t *)malloc(n * 2);
    void *d = NULL;
    if (!h) { fprintf(stderr, "bench_peak: out of host memory\n"); exit(1); }
    uint64_t s = 0x9E3779B97F4A7C15ull ^ n;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        float f = (float)((s >> 40) * (1.0 / 8388608.0)) - 1.0f;
        uint32_t u;
        memcpy(&u, &f, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

/* Repetitions so that a measurement lasts about TARGET seconds, from one timed call of T1. */
static int reps_for(double t1, double target, int lo, int hi)
{
    int r = t1 > 0 ? (int)(target / t1) : hi;
    return r < lo ? lo : r > hi ? hi : r;
}

int main(int argc, char **argv)
{
    size_t copy_bytes = (size_t)1 << 30;
    double target = 0.25;
    int gm[MAX_GEMMS], gn[MAX_GEMMS], gk[MAX_GEMMS], ng = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--copy-mib") && i + 1 < argc) copy_bytes = (size_t)strtoull(argv[++i], NULL, 10) << 20;
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) target = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--gemm") && i + 1 < argc && ng < MAX_GEMMS) {
            if (sscanf(argv[++i], "%d,%d,%d", &gm[ng], &gn[ng], &gk[ng]) != 3 || gm[ng] <= 0 || gn[ng] <= 0 ||
                gk[ng] <= 0) {
                fprintf(stderr, "bench_peak: --gemm wants M,N,K (positive)\n");
                return 2;
            }
            ng++;
        } else {
            fprintf(stderr, "usage: bench_peak [--copy-mib N] [--seconds S] [--gemm M,N,K]... (at most %d)\n",
                    MAX_GEMMS);
            return 2;
        }
    }
    if (copy_bytes == 0 || !(target > 0)) { fprintf(stderr, "bench_peak: sizes must be positive\n"); return 2; }
    int count = 0;
    cudaDeviceProp prop;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
        fprintf(stderr, "bench_peak: no GPU\n");
        return 1;
    }
    CK(cudaSetDevice(0));
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));

    /* copy bandwidth: one warm-up, one timed call to size the run, then the run */
    void *src = NULL, *dst = NULL;
    CK(cudaMalloc(&src, copy_bytes));
    CK(cudaMalloc(&dst, copy_bytes));
    CK(cudaMemset(src, 0x5a, copy_bytes));
    CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, st));
    CK(cudaStreamSynchronize(st));
    double t0 = now_s();
    CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, st));
    CK(cudaStreamSynchronize(st));
    int creps = reps_for(now_s() - t0, target, 3, 1000);
    t0 = now_s();
    for (int r = 0; r < creps; r++) CK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, st));
    CK(cudaStreamSynchronize(st));
    double copy_s = now_s() - t0;
    CK(cudaFree(src));
    CK(cudaFree(dst));
    printf("{\"device\": \"%s\", \"cc\": \"%d.%d\", \"copy_bytes\": %zu, \"copy_reps\": %d, \"copy_s\": %.6f, "
           "\"bandwidth_GBps\": %.3f, \"gemm\": [",
           prop.name, prop.major, prop.minor, copy_bytes, creps, copy_s, 2.0 * copy_bytes * creps / copy_s / 1e9);

    cublasHandle_t h;
    CKB(cublasCreate(&h));
    CKB(cublasSetStream(h, st));
    for (int g = 0; g < ng; g++) {
        /* C (m, n) = A (m, k) · B (k, n), column-major: A = B_k (d_kv, rank), B = the latents */
        void *A = random_bf16((size_t)gm[g] * gk[g]), *B = random_bf16((size_t)gk[g] * gn[g]), *C = NULL;
        const float one = 1.0f, zero = 0.0f;
        CK(cudaMalloc(&C, (size_t)gm[g] * gn[g] * sizeof(float)));
#define GEMM()                                                                                                      \
    CKB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, gm[g], gn[g], gk[g], &one, A, CUDA_R_16BF, gm[g], B, CUDA_R_16BF, \
                     gk[g], &zero, C, CUDA_R_32F, gm[g], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT))
        GEMM();
        CK(cudaStreamSynchronize(st));
        t0 = now_s();
        GEMM();
        CK(cudaStreamSynchronize(st));
        int greps = reps_for(now_s() - t0, target, 3, 10000);
        t0 = now_s();
        for (int r = 0; r < greps; r++) GEMM();
        CK(cudaStreamSynchronize(st));
        double gs = now_s() - t0;
#undef GEMM
        double macs = (double)gm[g] * gn[g] * gk[g] * greps;
        printf("%s{\"m\": %d, \"n\": %d, \"k\": %d, \"dtype\": \"bf16\", \"reps\": %d, \"s\": %.6f, \"tmacs\": %.4f}",
               g ? ", " : "", gm[g], gn[g], gk[g], greps, gs, macs / gs / 1e12);
        CK(cudaFree(A));
        CK(cudaFree(B));
        CK(cudaFree(C));
    }
    printf("]}\n");
    CKB(cublasDestroy(h));
    CK(cudaStreamDestroy(st));
    return fflush(stdout) == 0 ? 0 : 1;
}
