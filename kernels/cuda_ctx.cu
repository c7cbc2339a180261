/* CUDA backend core: device probe, context (stream, cuBLAS, cuSOLVER), device memory, scratch,
 * weights resident as fp16/bf16, and the function table returned by kvs_cuda_get_api().
 * Loaded with dlopen by engine/backend/backend_cuda.c; depends on the CUDA runtime, cuBLAS, cuSOLVER only. */
#include <stdlib.h>
#include <string.h>

#include <nvtx3/nvToolsExt.h>

#include "internal.cuh"

const char *kvs_cusolver_status_str(cusolverStatus_t s)
{
    switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "success";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUSOLVER_STATUS_INVALID_VALUE: return "invalid value";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "internal error";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "matrix type not supported";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown cuSOLVER status";
    }
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    if (!cap) return;
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* ---------------------------------------------------------------- probe */

static void api_probe(struct kvs_cuda_probe *p)
{
    cudaError_t e;
    struct cudaDeviceProp prop;
    memset(p, 0, sizeof *p);
    cudaRuntimeGetVersion(&p->runtime_version);
    if (cudaDriverGetVersion(&p->driver_version) != cudaSuccess) p->driver_version = 0;
    e = cudaGetDeviceCount(&p->device_count);
    p->runtime_error = (int)e;
    copy_str(p->message, sizeof p->message, cudaGetErrorString(e));
    if (e == cudaErrorInsufficientDriver) {
        p->status = p->driver_version == 0 ? KVS_CUDA_PROBE_NO_DRIVER : KVS_CUDA_PROBE_OLD_DRIVER;
        p->device_count = 0;
        return;
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && p->device_count == 0)) {
        p->status = KVS_CUDA_PROBE_NO_GPU;
        p->device_count = 0;
        return;
    }
    if (e != cudaSuccess) {
        p->status = KVS_CUDA_PROBE_ERROR;
        p->device_count = 0;
        return;
    }
    e = cudaGetDeviceProperties(&prop, 0);
    if (e != cudaSuccess) {
        p->status = KVS_CUDA_PROBE_ERROR;
        p->runtime_error = (int)e;
        copy_str(p->message, sizeof p->message, cudaGetErrorString(e));
        return;
    }
    p->status = KVS_CUDA_PROBE_OK;
    p->cc_major = prop.major;
    p->cc_minor = prop.minor;
    p->total_mem = (uint64_t)prop.totalGlobalMem;
    copy_str(p->name, sizeof p->name, prop.name);
}

/* ---------------------------------------------------------------- context */

static void ctx_release(struct kvs_cuda_ctx *c)
{
    for (int i = 0; i < KVS_SCR_COUNT; i++)
        if (c->scratch[i]) cudaFree(c->scratch[i]);
    if (c->acts_clamped) cudaFree(c->acts_clamped);
    if (c->solver) cusolverDnDestroy(c->solver);
    if (c->blas) cublasDestroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static int api_init(struct kvs_cuda_ctx **out, int device, char *err, size_t errlen)
{
    struct kvs_cuda_ctx *c;
    struct cudaDeviceProp prop;
    *out = NULL;
    c = (struct kvs_cuda_ctx *)calloc(1, sizeof *c);
    if (!c) {
        if (errlen) snprintf(err, errlen, "out of host memory");
        return KVS_CUDA_FAIL;
    }
    c->device = device;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    copy_str(c->name, sizeof c->name, prop.name);
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    {
        const char *sync = getenv("KVS_CUDA_SYNC"); /* a debugging switch, like CUDA_LAUNCH_BLOCKING */
        c->sync_launches = sync && *sync && strcmp(sync, "0") != 0;
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&c->blas));
    CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    CUSOLVER_CHECK(cusolverDnCreate(&c->solver));
    CUSOLVER_CHECK(cusolverDnSetStream(c->solver, c->stream));
    /* both overflow counters in one allocation: [0] activations, [1] cache stores */
    CUDA_CHECK(cudaMalloc(&c->acts_clamped, 2 * sizeof *c->acts_clamped));
    CUDA_CHECK(cudaMemsetAsync(c->acts_clamped, 0, 2 * sizeof *c->acts_clamped, c->stream));
    c->cache_clamped = c->acts_clamped + 1;
    *out = c;
    return KVS_CUDA_OK;
fail:
    if (errlen) copy_str(err, errlen, c->err);
    ctx_release(c);
    return KVS_CUDA_FAIL;
}

static void api_shutdown(struct kvs_cuda_ctx *c)
{
    if (!c) return;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream);
    ctx_release(c);
}

static const char *api_device_name(const struct kvs_cuda_ctx *c) { return c ? c->name : ""; }
static int api_compute_capability(const struct kvs_cuda_ctx *c) { return c ? c->cc_major * 10 + c->cc_minor : 0; }
/* NVTX3 is header-only: without a tool (NSYS_... injection) attached the first call finds none and
 * every later one returns at once; no GPU or driver is needed. */
static void api_range_push(struct kvs_cuda_ctx *c, const char *name) { nvtxRangePushA(name); }
static void api_range_pop(struct kvs_cuda_ctx *c) { nvtxRangePop(); }
static const char *api_last_error(const struct kvs_cuda_ctx *c) { return c ? c->err : ""; }

void *kvs_cuda_scratch(struct kvs_cuda_ctx *c, int slot, size_t bytes)
{
    void *p = NULL;
    size_t cap;
    if (bytes <= c->scratch_cap[slot] && c->scratch[slot]) return c->scratch[slot];
    /* grow by half again so that slowly growing contexts do not reallocate every step */
    cap = bytes + bytes / 2;
    if (cap < 4096) cap = 4096;
    CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* the old buffer may still be in use */
    if (c->scratch[slot]) {
        CUDA_CHECK(cudaFree(c->scratch[slot]));
        c->scratch[slot] = NULL;
        c->scratch_cap[slot] = 0;
    }
    CUDA_CHECK(cudaMalloc(&p, cap));
    c->scratch[slot] = p;
    c->scratch_cap[slot] = cap;
    return p;
fail:
    return NULL;
}

/* ---------------------------------------------------------------- memory */

static int api_alloc(struct kvs_cuda_ctx *c, void **dptr, size_t bytes)
{
    *dptr = NULL;
    CUDA_CHECK(cudaMalloc(dptr, bytes ? bytes : 1));
    return KVS_CUDA_OK;
fail:
    *dptr = NULL;
    /* the runtime keeps the failure as its last error: cleared here (the message is in c->err), or
     * the next launch check would blame a kernel for a full card */
    (void)cudaGetLastError();
    return KVS_CUDA_FAIL;
}

static void api_free(struct kvs_cuda_ctx *c, void *dptr)
{
    if (!dptr) return;
    /* cudaFree synchronises the device; work queued on the stream that reads dptr finishes first */
    if (cudaFree(dptr) != cudaSuccess) snprintf(c->err, sizeof c->err, "cudaFree failed");
}

static int api_upload(struct kvs_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
    if (!bytes) return KVS_CUDA_OK;
    /* from pageable memory the call returns once SRC has been staged, so SRC may be reused; from
     * pinned memory (host_alloc) it is asynchronous and the next download orders it */
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int api_download(struct kvs_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int api_sync(struct kvs_cuda_ctx *c)
{
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int api_copy(struct kvs_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int api_host_alloc(struct kvs_cuda_ctx *c, void **hptr, size_t bytes)
{
    *hptr = NULL;
    CUDA_CHECK(cudaMallocHost(hptr, bytes ? bytes : 1));
    return KVS_CUDA_OK;
fail:
    *hptr = NULL;
    return KVS_CUDA_FAIL;
}

static void api_host_free(struct kvs_cuda_ctx *c, void *hptr)
{
    if (!hptr) return;
    cudaStreamSynchronize(c->stream); /* a copy from it may still be queued */
    if (cudaFreeHost(hptr) != cudaSuccess) snprintf(c->err, sizeof c->err, "cudaFreeHost failed");
}

/* The card's memory: what every process (this one's context included) holds, not only this
 * context's allocations, since that is what is left for a longer context or a larger batch. */
static int api_mem_info(struct kvs_cuda_ctx *c, uint64_t *used, uint64_t *total)
{
    size_t f = 0, t = 0;
    *used = *total = 0;
    CUDA_CHECK(cudaSetDevice(c->device));
    CUDA_CHECK(cudaMemGetInfo(&f, &t));
    KVS_REQUIRE(f <= t, "cudaMemGetInfo: %zu bytes free of %zu", f, t);
    *used = (uint64_t)(t - f);
    *total = (uint64_t)t;
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* *COUNT = the device counter DEV, once the stream's work is done. */
static int read_counter(struct kvs_cuda_ctx *c, const unsigned long long *dev, uint64_t *count)
{
    unsigned long long n = 0;
    *count = 0;
    CUDA_CHECK(cudaMemcpyAsync(&n, dev, sizeof n, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    *count = (uint64_t)n;
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int api_acts_saturated(struct kvs_cuda_ctx *c, uint64_t *count)
{
    return read_counter(c, c->acts_clamped, count);
}

static int api_cache_saturated(struct kvs_cuda_ctx *c, uint64_t *count)
{
    return read_counter(c, c->cache_clamped, count);
}

/* ---------------------------------------------------------------- weights */

__global__ void k_f32_to_f16(__half *dst, const float *src, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (; i < n; i += stride) dst[i] = __float2half_rn(fminf(fmaxf(src[i], -65504.0f), 65504.0f));
}

__global__ void k_f32_to_bf16(__nv_bfloat16 *dst, const float *src, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (; i < n; i += stride) dst[i] = __float2bfloat16_rn(src[i]);
}

/* Converts N fp32 device values to DTYPE at DST (device), saturating fp16 at ±65504. */
int kvs_cuda_convert(struct kvs_cuda_ctx *c, void *dst, const float *src, int64_t n, int dtype)
{
    unsigned grid = kvs_grid(n, 256);
    if (grid > 65535u * 8u) grid = 65535u * 8u; /* grid-stride loop covers the rest */
    if (n <= 0) return KVS_CUDA_OK;
    if (dtype == KVS_CUDA_F16) KVS_LAUNCH(k_f32_to_f16, grid, 256, 0, c->stream)((__half *)dst, src, n);
    else KVS_LAUNCH(k_f32_to_bf16, grid, 256, 0, c->stream)((__nv_bfloat16 *)dst, src, n);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int api_weight_new(struct kvs_cuda_ctx *c, struct kvs_cuda_weight **out, int64_t rows, int64_t cols,
                          int dtype)
{
    struct kvs_cuda_weight *w = NULL;
    *out = NULL;
    KVS_REQUIRE(dtype == KVS_CUDA_F16 || dtype == KVS_CUDA_BF16 || dtype == KVS_CUDA_F32,
                "weight_new: unknown dtype %d", dtype);
    /* cuBLAS takes int dimensions */
    KVS_REQUIRE(rows > 0 && cols > 0 && rows <= 0x7fffffff && cols <= 0x7fffffff &&
                    (uint64_t)rows <= UINT64_MAX / 2 / (uint64_t)cols,
                "weight_new: bad shape (%lld, %lld)", (long long)rows, (long long)cols);
    w = (struct kvs_cuda_weight *)calloc(1, sizeof *w);
    KVS_REQUIRE(w != NULL, "weight_new: out of host memory");
    w->rows = rows;
    w->cols = cols;
    w->dtype = dtype;
    CUDA_CHECK(cudaMalloc(&w->data, (size_t)rows * (size_t)cols * (dtype == KVS_CUDA_F32 ? 4 : 2)));
    *out = w;
    return KVS_CUDA_OK;
fail:
    free(w);
    return KVS_CUDA_FAIL;
}

static int api_weight_set_rows(struct kvs_cuda_ctx *c, struct kvs_cuda_weight *w, int64_t row0, int64_t n,
                               const float *src)
{
    size_t count, bytes;
    float *stage;
    KVS_REQUIRE(row0 >= 0 && n >= 0 && row0 <= w->rows && n <= w->rows - row0,
                "weight_set_rows: rows [%lld, %lld) outside (%lld)", (long long)row0, (long long)(row0 + n),
                (long long)w->rows);
    if (!n) return KVS_CUDA_OK;
    count = (size_t)n * (size_t)w->cols;
    bytes = count * sizeof(float);
    if (w->dtype == KVS_CUDA_F32) { /* kept as given */
        CUDA_CHECK(cudaMemcpyAsync((char *)w->data + (size_t)row0 * (size_t)w->cols * 4, src, bytes,
                                   cudaMemcpyHostToDevice, c->stream));
        return KVS_CUDA_OK;
    }
    stage = (float *)kvs_cuda_scratch(c, KVS_SCR_STAGE, bytes);
    if (!stage) goto fail;
    CUDA_CHECK(cudaMemcpyAsync(stage, src, bytes, cudaMemcpyHostToDevice, c->stream));
    if (kvs_cuda_convert(c, (char *)w->data + (size_t)row0 * (size_t)w->cols * 2, stage, (int64_t)count,
                         w->dtype) != KVS_CUDA_OK)
        goto fail;
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static void api_weight_free(struct kvs_cuda_ctx *c, struct kvs_cuda_weight *w)
{
    if (!w) return;
    if (w->data) cudaFree(w->data);
    free(w);
}

/* Packed latent rows are stored, read, compacted, merged and attended over by this library. */
static uint32_t api_lat_codecs(const struct kvs_cuda_ctx *c)
{
    (void)c;
    return KVS_CUDA_LAT_CODEC_FP16 | KVS_CUDA_LAT_CODEC_QROW;
}

/* ---------------------------------------------------------------- table */

static const struct kvs_cuda_api kvs_cuda_table = {
    KVS_CUDA_ABI_VERSION,
    (uint32_t)sizeof(struct kvs_cuda_api),
    api_probe,
    api_init,
    api_shutdown,
    api_device_name,
    api_last_error,
    api_alloc,
    api_free,
    api_upload,
    api_download,
    api_sync,
    api_copy,
    api_weight_new,
    api_weight_set_rows,
    api_weight_free,
    kvs_cuda_rmsnorm,
    kvs_cuda_rope,
    kvs_cuda_matmul,
    kvs_cuda_attn_latent,
    kvs_cuda_attn_kv16,
    kvs_cuda_svd,
    kvs_cuda_kv_store,
    kvs_cuda_kv_compact,
    kvs_cuda_lat_store,
    kvs_cuda_lat_compact,
    kvs_cuda_lat_merge,
    api_host_alloc,
    api_host_free,
    kvs_cuda_embed,
    kvs_cuda_add_bias,
    kvs_cuda_add,
    kvs_cuda_swiglu,
    api_compute_capability,
    api_range_push,
    api_range_pop,
    kvs_cuda_lat_attend,
    api_mem_info,
    api_acts_saturated,
    kvs_cuda_mc_score,
    kvs_cuda_mc_merge,
    kvs_cuda_mc_attend,
    kvs_cuda_kvq_quantize,
    kvs_cuda_kvq_attend,
    kvs_cuda_kvq_compact,
    kvs_cuda_kvq_scores,
    api_lat_codecs,
    kvs_cuda_lat_qstore,
    kvs_cuda_lat_qload,
    kvs_cuda_lat_qcompact,
    kvs_cuda_lat_qmerge,
    kvs_cuda_lat_cosine,
    api_cache_saturated,
    kvs_cuda_lat_load,
    kvs_cuda_lat_mass_add,
};

extern "C" __attribute__((visibility("default"))) const struct kvs_cuda_api *kvs_cuda_get_api(void)
{
    return &kvs_cuda_table;
}
