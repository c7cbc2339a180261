/* Matrix product on tensor cores: y (T, rows) = x (T, cols) · Wᵀ with W resident as fp16/bf16.
 * Twin of kvs_cpu_matmul (engine/run/infer.c). The fp32 activations are converted to W's dtype (cuBLAS
 * wants both inputs of one type) and cublasGemmEx accumulates in fp32 (CUBLAS_COMPUTE_32F).
 * Depends on the CUDA runtime and cuBLAS. */
#include "internal.cuh"

int kvs_cuda_matmul(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const float *x, float *y, int T)
{
    const float alpha = 1.0f, beta = 0.0f;
    cudaDataType_t type;
    void *xs;
    KVS_REQUIRE(w != NULL && T >= 0, "matmul: bad arguments");
    if (T == 0) return KVS_CUDA_OK;
    type = w->dtype == KVS_CUDA_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    xs = kvs_cuda_scratch(c, KVS_SCR_ACT, (size_t)T * (size_t)w->cols * 2);
    if (!xs) goto fail;
    if (kvs_cuda_convert(c, xs, x, (int64_t)T * w->cols, w->dtype) != KVS_CUDA_OK) goto fail;
    /* Row-major Y (T, rows) is column-major Yᶜ (rows, T) = Wᶜᵀ (rows, cols) · Xᶜ (cols, T), where
     * the row-major W (rows, cols) is seen by cuBLAS as column-major (cols, rows), hence OP_T. */
    CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, T, (int)w->cols, &alpha, w->data,
                              type, (int)w->cols, xs, type, (int)w->cols, &beta, y, CUDA_R_32F, (int)w->rows,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
