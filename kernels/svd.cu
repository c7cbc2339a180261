/* Thin SVD on the GPU with cuSOLVER gesvdj (Jacobi, fp32), twin of kvs_cpu_svd (LAPACK sgesdd,
 * engine/cpu/svd.c). Row-major A (m, n) is column-major X = Aᵀ (n, m); with X = Uₓ S Vₓᵀ,
 * A = Vₓ S Uₓᵀ, so row-major vt (k, n) is exactly column-major Uₓ (n, k) and u (m, k) is the
 * transpose of column-major Vₓ (m, k). Depends on the CUDA runtime, cuBLAS, cuSOLVER. */
#include "internal.cuh"

int kvs_cuda_svd(struct kvs_cuda_ctx *c, const float *a, int m, int n, float *u, float *s, float *vt)
{
    const float one = 1.0f, zero = 0.0f;
    gesvdjInfo_t params = NULL;
    int k, lwork = 0, info = 0;
    float *x, *vx, *work;
    int *dinfo;
    KVS_REQUIRE(m > 0 && n > 0 && (int64_t)m * n <= 0x7fffffff, "svd: bad shape (%d, %d)", m, n);
    k = m < n ? m : n;
    x = (float *)kvs_cuda_scratch(c, KVS_SCR_SVD_A, (size_t)m * n * sizeof(float));
    if (!x) goto fail;
    vx = (float *)kvs_cuda_scratch(c, KVS_SCR_SVD_V, (size_t)m * k * sizeof(float));
    if (!vx) goto fail;
    dinfo = (int *)kvs_cuda_scratch(c, KVS_SCR_SVD_INFO, sizeof(int));
    if (!dinfo) goto fail;
    CUDA_CHECK(cudaMemcpyAsync(x, a, (size_t)m * n * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
    CUSOLVER_CHECK(cusolverDnCreateGesvdjInfo(&params));
    CUSOLVER_CHECK(cusolverDnXgesvdjSetSortEig(params, 1));
    /* the problem is (n rows, m cols) column-major; U of it goes straight into vt */
    CUSOLVER_CHECK(cusolverDnSgesvdj_bufferSize(c->solver, CUSOLVER_EIG_MODE_VECTOR, 1, n, m, x, n, s, vt, n, vx, m,
                                                &lwork, params));
    work = (float *)kvs_cuda_scratch(c, KVS_SCR_SVD_WORK, (size_t)(lwork > 0 ? lwork : 1) * sizeof(float));
    if (!work) goto fail;
    CUSOLVER_CHECK(cusolverDnSgesvdj(c->solver, CUSOLVER_EIG_MODE_VECTOR, 1, n, m, x, n, s, vt, n, vx, m, work,
                                     lwork, dinfo, params));
    /* u (m, k) row-major = column-major (k, m) = Vₓᵀ */
    CUBLAS_CHECK(cublasSgeam(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, k, m, &one, vx, m, &zero, u, k, u, k));
    CUDA_CHECK(cudaMemcpyAsync(&info, dinfo, sizeof(int), cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    KVS_REQUIRE(info == 0, "svd: gesvdj %s (info %d) for (%d, %d)",
                info > 0 ? "did not converge" : "rejected an argument", info, m, n);
    cusolverDnDestroyGesvdjInfo(params);
    return KVS_CUDA_OK;
fail:
    if (params) cusolverDnDestroyGesvdjInfo(params);
    return KVS_CUDA_FAIL;
}
