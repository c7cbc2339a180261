/* Element-wise layer steps on the device, one thread per element (grid-stride): bias add, residual
 * add, SwiGLU. Twins of engine/cpu/elementwise.c, the oracle: the same formulas in fp32 (expf).
 * Depends on the CUDA runtime only. */
#include "internal.cuh"

#define EW_THREADS 256
#define EW_MAX_GRID (65535u * 8u) /* the grid-stride loops cover the rest */

static unsigned ew_grid(int64_t n)
{
    unsigned g = kvs_grid(n, EW_THREADS);
    return g > EW_MAX_GRID ? EW_MAX_GRID : g;
}

__global__ void k_add_bias(float *y, const float *b, int64_t total, int n)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) y[i] += b[i % n];
}

__global__ void k_add(float *x, const float *y, int64_t n)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] += y[i];
}

__global__ void k_swiglu(float *g, const float *u, int64_t n)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = g[i];
        g[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

int kvs_cuda_add_bias(struct kvs_cuda_ctx *c, float *y, const float *b, int T, int n)
{
    int64_t total;
    KVS_REQUIRE(T >= 0 && n > 0, "add_bias: bad shape (%d, %d)", T, n);
    total = (int64_t)T * n;
    if (total == 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_add_bias, ew_grid(total), EW_THREADS, 0, c->stream)(y, b, total, n);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

int kvs_cuda_add(struct kvs_cuda_ctx *c, float *x, const float *y, int64_t n)
{
    KVS_REQUIRE(n >= 0, "add: bad length %lld", (long long)n);
    if (n == 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_add, ew_grid(n), EW_THREADS, 0, c->stream)(x, y, n);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

int kvs_cuda_swiglu(struct kvs_cuda_ctx *c, float *g, const float *u, int64_t n)
{
    KVS_REQUIRE(n >= 0, "swiglu: bad length %lld", (long long)n);
    if (n == 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_swiglu, ew_grid(n), EW_THREADS, 0, c->stream)(g, u, n);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
