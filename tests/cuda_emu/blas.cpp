/* CUDA host emulation, libraries: cuBLAS (Sgemm, SgemmStridedBatched, GemmEx with fp16/bf16/fp32 inputs and fp32
 * compute, Sgeam) mapped to OpenBLAS after converting half types to float, and cuSOLVER gesvdj
 * mapped to LAPACKE_sgesdd. Arguments are checked as cuBLAS/cuSOLVER check them (status codes),
 * and every operand must lie inside a device allocation (a GPU would fault). Column-major. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cusolverDn.h>

#include <cblas.h>
#include <lapacke.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

struct kvs_emu_cublas {
    cudaStream_t stream;
};
struct kvs_emu_cusolver {
    cudaStream_t stream;
};
struct kvs_emu_gesvdj_info {
    int sort;
};

namespace {

int imax(int a, int b) { return a > b ? a : b; }

size_t type_size(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

/* Bytes spanned by a column-major (rows, cols) matrix with leading dimension LD. */
size_t span(int rows, int cols, int ld, size_t elem)
{
    if (rows <= 0 || cols <= 0) return 0;
    return ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * elem;
}

bool operand(const char *fn, const char *name, const void *p, int rows, int cols, int ld, size_t elem)
{
    size_t bytes = span(rows, cols, ld, elem);
    if (!bytes) return true;
    char what[96];
    snprintf(what, sizeof what, "%s operand %s (%d x %d, ld %d)", fn, name, rows, cols, ld);
    return kvs_emu::device_range(p, bytes, what);
}

/* Dense column-major float copy (rows, cols) of a matrix of TYPE with leading dimension LD. */
std::vector<float> to_float(const void *p, cudaDataType_t type, int rows, int cols, int ld)
{
    std::vector<float> out((size_t)rows * (size_t)cols);
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) {
            size_t i = (size_t)c * (size_t)ld + (size_t)r;
            float v;
            if (type == CUDA_R_32F) v = ((const float *)p)[i];
            else if (type == CUDA_R_16F) v = __half2float(((const __half *)p)[i]);
            else v = __bfloat162float(((const __nv_bfloat16 *)p)[i]);
            out[(size_t)c * rows + r] = v;
        }
    return out;
}

CBLAS_TRANSPOSE cb(cublasOperation_t t) { return t == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

bool op_ok(cublasOperation_t t) { return t == CUBLAS_OP_N || t == CUBLAS_OP_T || t == CUBLAS_OP_C; }

/* C (m, n) = alpha op(A) op(B) + beta C with float inputs already dense (lda = stored rows). */
cublasStatus_t gemm_common(const char *fn, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                           const void *A, cudaDataType_t at, int lda, const void *B, cudaDataType_t bt, int ldb,
                           float beta, float *C, int ldc)
{
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    bool use_ab = k > 0 && alpha != 0.0f;
    if (use_ab && (!operand(fn, "A", A, ar, ac, lda, type_size(at)) || !operand(fn, "B", B, br, bc, ldb, type_size(bt))))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!operand(fn, "C", C, m, n, ldc, 4)) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (beta == 0.0f) /* C is output only: whatever it held (NaN included) is not read */
        for (int c = 0; c < n; c++)
            for (int r = 0; r < m; r++) C[(size_t)c * ldc + r] = 0.0f;
    else if (beta != 1.0f)
        for (int c = 0; c < n; c++)
            for (int r = 0; r < m; r++) C[(size_t)c * ldc + r] *= beta;
    if (!use_ab) return CUBLAS_STATUS_SUCCESS;
    std::vector<float> a = to_float(A, at, ar, ac, lda), b = to_float(B, bt, br, bc, ldb);
    cblas_sgemm(CblasColMajor, cb(ta), cb(tb), m, n, k, alpha, a.data(), imax(1, ar), b.data(), imax(1, br), 1.0f, C,
                ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t gemm_check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                          const void *alpha, int lda, int ldb, const void *beta, int ldc)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!op_ok(ta) || !op_ok(tb) || m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < imax(1, ta == CUBLAS_OP_N ? m : k) || ldb < imax(1, tb == CUBLAS_OP_N ? k : n) || ldc < imax(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new kvs_emu_cublas{nullptr};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    cublasStatus_t st = gemm_check(h, ta, tb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return gemm_common("cublasSgemm", ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C, ldc);
}

/* Batch i is cublasSgemm on A + i*strideA, B + i*strideB, C + i*strideC, in order, each operand
 * checked inside its allocation. cuBLAS leaves overlapping C batches undefined (a GPU runs them
 * at once): rejected here, so a wrong stride fails instead of depending on the order. */
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float *alpha, const float *A, int lda, long long strideA,
                                         const float *B, int ldb, long long strideB, const float *beta, float *C,
                                         int ldc, long long strideC, int batchCount)
{
    cublasStatus_t st = gemm_check(h, ta, tb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (batchCount > 1 && m && n) {
        /* apart when each batch lies past the previous one's last column, or when the batches take
         * disjoint row ranges of the same columns (all of them inside one leading dimension) */
        long long s = strideC < 0 ? -strideC : strideC;
        bool apart = s >= (long long)(n - 1) * ldc + m || (s >= m && (long long)(batchCount - 1) * s + m <= ldc);
        if (!apart) {
            fprintf(stderr, "cuda-emu: cublasSgemmStridedBatched: C batches overlap (m %d, n %d, ldc %d, strideC %lld)\n",
                    m, n, ldc, strideC);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    for (int i = 0; i < batchCount; i++) {
        st = gemm_common("cublasSgemmStridedBatched", ta, tb, m, n, k, *alpha, A + (long long)i * strideA, CUDA_R_32F,
                         lda, B + (long long)i * strideB, CUDA_R_32F, ldb, *beta, C + (long long)i * strideC, ldc);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType_t Atype, int lda, const void *B,
                            cudaDataType_t Btype, int ldb, const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo)
{
    cublasStatus_t st = gemm_check(h, ta, tb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    /* the combinations the emulation implements: fp32 output and scalars, fp32 accumulation */
    bool half_in = Atype == Btype && (Atype == CUDA_R_16F || Atype == CUDA_R_16BF || Atype == CUDA_R_32F);
    bool fp32_compute = compute == CUBLAS_COMPUTE_32F ||
                        (Atype == CUDA_R_32F && (compute == CUBLAS_COMPUTE_32F_FAST_16F ||
                                                 compute == CUBLAS_COMPUTE_32F_FAST_16BF));
    if (!half_in || Ctype != CUDA_R_32F || !fp32_compute) {
        fprintf(stderr, "cuda-emu: cublasGemmEx types A %d B %d C %d compute %d are not emulated\n", (int)Atype,
                (int)Btype, (int)Ctype, (int)compute);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP) return CUBLAS_STATUS_INVALID_VALUE;
    return gemm_common("cublasGemmEx", ta, tb, m, n, k, *(const float *)alpha, A, Atype, lda, B, Btype, ldb,
                       *(const float *)beta, (float *)C, ldc);
}

cublasStatus_t cublasSgeam(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           const float *alpha, const float *A, int lda, const float *beta, const float *B, int ldb,
                           float *C, int ldc)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!op_ok(ta) || !op_ok(tb) || m < 0 || n < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < imax(1, ta == CUBLAS_OP_N ? m : n) || ldb < imax(1, tb == CUBLAS_OP_N ? m : n) || ldc < imax(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    /* in place only as cuBLAS allows it: C = A needs op N and ldc = lda, C = B likewise */
    if ((C == A && (ta != CUBLAS_OP_N || ldc != lda)) || (C == B && (tb != CUBLAS_OP_N || ldc != ldb)))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    float a = *alpha, b = *beta;
    int ar = ta == CUBLAS_OP_N ? m : n, ac = ta == CUBLAS_OP_N ? n : m;
    int br = tb == CUBLAS_OP_N ? m : n, bc = tb == CUBLAS_OP_N ? n : m;
    /* a zero scale means the operand is not read (the transpose idiom passes C or NULL as B) */
    if (a != 0.0f && !operand("cublasSgeam", "A", A, ar, ac, lda, 4)) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (b != 0.0f && !operand("cublasSgeam", "B", B, br, bc, ldb, 4)) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!operand("cublasSgeam", "C", C, m, n, ldc, 4)) return CUBLAS_STATUS_EXECUTION_FAILED;
    std::vector<float> out((size_t)m * n);
    for (int c = 0; c < n; c++)
        for (int r = 0; r < m; r++) {
            float v = 0.0f;
            if (a != 0.0f) v += a * (ta == CUBLAS_OP_N ? A[(size_t)c * lda + r] : A[(size_t)r * lda + c]);
            if (b != 0.0f) v += b * (tb == CUBLAS_OP_N ? B[(size_t)c * ldb + r] : B[(size_t)r * ldb + c]);
            out[(size_t)c * m + r] = v;
        }
    for (int c = 0; c < n; c++)
        for (int r = 0; r < m; r++) C[(size_t)c * ldc + r] = out[(size_t)c * m + r];
    return CUBLAS_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- cuSOLVER */

cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h)
{
    if (!h) return CUSOLVER_STATUS_INVALID_VALUE;
    *h = new kvs_emu_cusolver{nullptr};
    return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    delete h;
    return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t h, cudaStream_t s)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnCreateGesvdjInfo(gesvdjInfo_t *info)
{
    if (!info) return CUSOLVER_STATUS_INVALID_VALUE;
    *info = new kvs_emu_gesvdj_info{1};
    return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnDestroyGesvdjInfo(gesvdjInfo_t info)
{
    delete info;
    return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnXgesvdjSetSortEig(gesvdjInfo_t info, int sort)
{
    if (!info) return CUSOLVER_STATUS_INVALID_VALUE;
    info->sort = sort;
    return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnXgesvdjSetTolerance(gesvdjInfo_t info, double) { return info ? CUSOLVER_STATUS_SUCCESS : CUSOLVER_STATUS_INVALID_VALUE; }
cusolverStatus_t cusolverDnXgesvdjSetMaxSweeps(gesvdjInfo_t info, int) { return info ? CUSOLVER_STATUS_SUCCESS : CUSOLVER_STATUS_INVALID_VALUE; }

static cusolverStatus_t gesvdj_check(cusolverDnHandle_t h, cusolverEigMode_t jobz, int econ, int m, int n, int lda,
                                     int ldu, int ldv)
{
    if (!h) return CUSOLVER_STATUS_NOT_INITIALIZED;
    if ((jobz != CUSOLVER_EIG_MODE_NOVECTOR && jobz != CUSOLVER_EIG_MODE_VECTOR) || (econ != 0 && econ != 1) || m < 0 ||
        n < 0 || lda < imax(1, m))
        return CUSOLVER_STATUS_INVALID_VALUE;
    if (jobz == CUSOLVER_EIG_MODE_VECTOR && (ldu < imax(1, m) || ldv < imax(1, n))) return CUSOLVER_STATUS_INVALID_VALUE;
    return CUSOLVER_STATUS_SUCCESS;
}

/* The emulation needs no workspace of its own; it asks for A's size so that the caller's use of
 * lwork and work is exercised and checked. */
static int gesvdj_lwork(int m, int n) { return imax(1, m * n); }

cusolverStatus_t cusolverDnSgesvdj_bufferSize(cusolverDnHandle_t h, cusolverEigMode_t jobz, int econ, int m, int n,
                                              const float *, int lda, const float *, const float *, int ldu,
                                              const float *, int ldv, int *lwork, gesvdjInfo_t params)
{
    cusolverStatus_t st = gesvdj_check(h, jobz, econ, m, n, lda, ldu, ldv);
    if (st != CUSOLVER_STATUS_SUCCESS) return st;
    if (!lwork || !params) return CUSOLVER_STATUS_INVALID_VALUE;
    *lwork = gesvdj_lwork(m, n);
    return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnSgesvdj(cusolverDnHandle_t h, cusolverEigMode_t jobz, int econ, int m, int n, float *A,
                                   int lda, float *S, float *U, int ldu, float *V, int ldv, float *work, int lwork,
                                   int *info, gesvdjInfo_t params)
{
    cusolverStatus_t st = gesvdj_check(h, jobz, econ, m, n, lda, ldu, ldv);
    if (st != CUSOLVER_STATUS_SUCCESS) return st;
    if (!params || lwork < gesvdj_lwork(m, n)) return CUSOLVER_STATUS_INVALID_VALUE;
    int p = m < n ? m : n, ucols = econ ? p : m, vcols = econ ? p : n;
    bool vec = jobz == CUSOLVER_EIG_MODE_VECTOR;
    if (!operand("cusolverDnSgesvdj", "A", A, m, n, lda, 4) || !operand("cusolverDnSgesvdj", "S", S, p, 1, imax(1, p), 4) ||
        !operand("cusolverDnSgesvdj", "work", work, lwork, 1, lwork, 4) ||
        !kvs_emu::device_range(info, sizeof(int), "cusolverDnSgesvdj info") ||
        (vec && (!operand("cusolverDnSgesvdj", "U", U, m, ucols, ldu, 4) ||
                 !operand("cusolverDnSgesvdj", "V", V, n, vcols, ldv, 4))))
        return CUSOLVER_STATUS_EXECUTION_FAILED;
    if (!m || !n) {
        *info = 0;
        return CUSOLVER_STATUS_SUCCESS;
    }
    std::vector<float> a((size_t)m * n), u(vec ? (size_t)m * ucols : 1), vt(vec ? (size_t)vcols * n : 1);
    for (int c = 0; c < n; c++)
        for (int r = 0; r < m; r++) a[(size_t)c * m + r] = A[(size_t)c * lda + r];
    char job = !vec ? 'N' : econ ? 'S' : 'A';
    lapack_int rc = LAPACKE_sgesdd(LAPACK_COL_MAJOR, job, m, n, a.data(), m, S, u.data(), m, vt.data(),
                                   vec ? vcols : 1);
    if (rc < 0) return CUSOLVER_STATUS_INTERNAL_ERROR;
    if (vec) {
        for (int c = 0; c < ucols; c++)
            for (int r = 0; r < m; r++) U[(size_t)c * ldu + r] = u[(size_t)c * m + r];
        /* gesvdj returns V itself (n, vcols), not Vᵀ as LAPACK does */
        for (int c = 0; c < vcols; c++)
            for (int r = 0; r < n; r++) V[(size_t)c * ldv + r] = vt[(size_t)r * vcols + c];
    }
    /* "On exit, the contents of A are destroyed": so they are here, visibly */
    for (int c = 0; c < n; c++)
        for (int r = 0; r < m; r++) A[(size_t)c * lda + r] = __builtin_nanf("");
    *info = rc > 0 ? p + 1 : 0;
    return CUSOLVER_STATUS_SUCCESS;
}
