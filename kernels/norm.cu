/* Row kernels: RMSNorm (one block per row) and row softmax with masking (one block per row).
 * Twin of kvs_cpu_rmsnorm (engine/cpu/norm.c), which is the oracle: same formula.
 * Depends on the CUDA runtime only. */
#include "internal.cuh"

#define NORM_THREADS 256

__global__ void k_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    const float *xr = x + (size_t)blockIdx.x * n;
    float *orow = out + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = kvs_block_sum(ss);
    float scale = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * scale * w[i];
}

int kvs_cuda_rmsnorm(struct kvs_cuda_ctx *c, float *out, const float *x, const float *w, int T, int n, float eps)
{
    KVS_REQUIRE(T >= 0 && n > 0, "rmsnorm: bad shape (%d, %d)", T, n);
    if (T == 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_rmsnorm, (unsigned)T, NORM_THREADS, 0, c->stream)(out, x, w, n, eps);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

__global__ void k_softmax_rows(float *x, int n)
{
    float *row = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, row[i]);
    m = kvs_block_max(m);
    if (m == -INFINITY) { /* nothing visible: attend to nothing rather than produce NaN */
        for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = 0.0f;
        return;
    }
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float e = expf(row[i] - m);
        row[i] = e;
        s += e;
    }
    s = kvs_block_sum(s);
    float inv = 1.0f / s;
    for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] *= inv;
}

int kvs_cuda_softmax_rows(struct kvs_cuda_ctx *c, float *x, int64_t rows, int n)
{
    KVS_REQUIRE(rows >= 0 && rows <= 0x7fffffff && n > 0, "softmax: bad shape (%lld, %d)", (long long)rows, n);
    if (rows == 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_softmax_rows, (unsigned)rows, NORM_THREADS, 0, c->stream)(x, n);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
