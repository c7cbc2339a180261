/* Matrix product on tensor cores: y (T, rows) = x (T, cols) · Wᵀ with W resident as fp16/bf16.
 * Twin of kvs_cpu_matmul (engine/run/infer.c). The fp32 activations are converted to W's dtype (cuBLAS
 * wants both inputs of one type) and cublasGemmEx accumulates in fp32 (CUBLAS_COMPUTE_32F); for fp16
 * the values the conversion clamps are counted on the device, never silently.
 * Depends on the CUDA runtime and cuBLAS. */
#include "internal.cuh"

/* fp32 -> fp16 for a product's activations: beyond ±65504 clamped (an inf would make the whole
 * output row inf or NaN) and counted into *CLAMPED; NaN stays NaN and is not counted. Only a thread
 * that clamped something touches the counter, so the common case costs no atomic. */
__global__ void k_act_to_f16(__half *dst, const float *src, int64_t n, unsigned long long *clamped)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    unsigned long long over = 0;
    for (; i < n; i += stride) {
        float v = src[i];
        if (fabsf(v) > 65504.0f) {
            v = v > 0.0f ? 65504.0f : -65504.0f;
            over++;
        }
        dst[i] = __float2half_rn(v);
    }
    if (over) atomicAdd(clamped, over);
}

int kvs_cuda_matmul(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const float *x, float *y, int T)
{
    const float alpha = 1.0f, beta = 0.0f;
    cudaDataType_t type;
    void *xs;
    KVS_REQUIRE(w != NULL && T >= 0, "matmul: bad arguments");
    if (T == 0) return KVS_CUDA_OK;
    if (w->dtype == KVS_CUDA_F32) { /* an exact factor: fp32 in, fp32 products (no narrowing) */
        CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, T, (int)w->cols, &alpha,
                                 (const float *)w->data, (int)w->cols, x, (int)w->cols, &beta, y, (int)w->rows));
        return KVS_CUDA_OK;
    }
    type = w->dtype == KVS_CUDA_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    xs = kvs_cuda_scratch(c, KVS_SCR_ACT, (size_t)T * (size_t)w->cols * 2);
    if (!xs) goto fail;
    if (w->dtype == KVS_CUDA_F16) {
        int64_t n = (int64_t)T * w->cols;
        unsigned grid = kvs_grid(n, 256);
        if (grid > 65535u * 8u) grid = 65535u * 8u; /* grid-stride loop covers the rest */
        KVS_LAUNCH(k_act_to_f16, grid, 256, 0, c->stream)((__half *)xs, x, n, c->acts_clamped);
        KVS_LAUNCH_CHECK();
    } else if (kvs_cuda_convert(c, xs, x, (int64_t)T * w->cols, w->dtype) != KVS_CUDA_OK) {
        goto fail;
    }
    /* Row-major Y (T, rows) is column-major Yᶜ (rows, T) = Wᶜᵀ (rows, cols) · Xᶜ (cols, T), where
     * the row-major W (rows, cols) is seen by cuBLAS as column-major (cols, rows), hence OP_T. */
    CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, T, (int)w->cols, &alpha, w->data,
                              type, (int)w->cols, xs, type, (int)w->cols, &beta, y, CUDA_R_32F, (int)w->rows,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
