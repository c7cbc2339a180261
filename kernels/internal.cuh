/* Private to the kernels/ .cu files: the context and weight structs, the CUDA/cuBLAS/cuSOLVER members of the
 * check macro family, the launch macro, scratch buffers and small device helpers. Never included by engine/
 * code. Functions here use the single `fail:` label convention of KVS_CHECK_GEN (kernels.h).
 * Built by nvcc, or as host C++ with -DKVS_CUDA_EMU against the stand-in headers of tests/cuda_emu. */
#ifndef KVS_KERNELS_INTERNAL_CUH
#define KVS_KERNELS_INTERNAL_CUH

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cusolverDn.h>

#include "kernels.h"

/* Every launch goes through KVS_LAUNCH(kernel, grid, block, shmem, stream)(args...): `<<<>>>` under
 * nvcc, the emulator's launcher (a fiber per thread, launch-limit and pointer checks) under
 * KVS_CUDA_EMU, so that one source serves both. */
#ifdef KVS_CUDA_EMU
#define KVS_LAUNCH(kernel, grid, block, shmem, stream) \
    kvs_emu::make_launcher(#kernel, kernel, (grid), (block), (shmem), (stream))
#else
#define KVS_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<(grid), (block), (shmem), (stream)>>>
#endif

/* Scratch slots, each grown on demand and kept for the context's lifetime. */
enum kvs_cuda_scratch_slot {
    KVS_SCR_ACT = 0,    /* matmul: activations converted to the weight dtype */
    KVS_SCR_STAGE,      /* weight upload: fp32 rows before conversion */
    KVS_SCR_SCORES,     /* attention: (T_chunk, n_head, n) scores then probabilities */
    KVS_SCR_PC,         /* latent attention: (T_chunk, n_head, rank) P·C */
    KVS_SCR_SVD_A,      /* svd: copy of the input (gesvdj overwrites it) */
    KVS_SCR_SVD_V,      /* svd: V of the column-major problem */
    KVS_SCR_SVD_WORK,
    KVS_SCR_SVD_INFO,
    KVS_SCR_COMPACT,    /* kv_compact: gathered K, V rows and positions */
    KVS_SCR_LAT_C,      /* lat_attend: the segments' rows gathered to fp32 (n, rank) */
    KVS_SCR_LAT_POS,    /* lat_attend: their positions (n) */
    KVS_SCR_LAT_K,      /* latent attention, prefill: keys (n, n_head_kv*head_dim), then (T_chunk) seen flags */
    KVS_SCR_LAT_PART,   /* lat_attend decode: per split P·C (splits, T*n_head, rank), max and sum */
    KVS_SCR_LAT_MASS,   /* lat_attend decode: attention mass per KV head (n_head_kv, n) */
    KVS_SCR_MC_KV,      /* mc_attend: unmerged and rebuilt merged K, V rows and positions */
    KVS_SCR_KVQ_ROWS,   /* kvq_attend: fp16 K, V rows and positions of packed + fp16 tiers;
                         * kvq_compact: decoded keys of re-encoded blocks (fp32) */
    KVS_SCR_KVQ_MASS,   /* kvq_attend: per-row mass; kvq_scores: present flags;
                         * kvq_compact: the new packed arrays before they are copied back */
    KVS_SCR_LAT_QSUM,   /* lat_qmerge: the merged rows summed in fp32 (m, width) before encoding */
    KVS_SCR_COUNT
};

struct kvs_cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cusolverDnHandle_t solver;
    char name[96];
    int cc_major, cc_minor;
    bool sync_launches;   /* KVS_CUDA_SYNC=1: wait after every launch, so a fault names its launcher */
    void *scratch[KVS_SCR_COUNT];
    size_t scratch_cap[KVS_SCR_COUNT];
    char err[512];
    /* device, one counter: activation values kvs_cuda_matmul clamped to ±65504 converting them to
     * fp16, since init (read by acts_saturated once a step, so products never wait for it) */
    unsigned long long *acts_clamped;
    /* device, one counter beside acts_clamped (the same allocation): values the cache stores
     * (kv_store, lat_store, lat_merge, mc_merge) clamped to ±65504, since init (cache_saturated) */
    unsigned long long *cache_clamped;
};

struct kvs_cuda_weight {
    int64_t rows, cols;
    int dtype;       /* enum kvs_cuda_dtype */
    void *data;      /* (rows, cols) row-major, 2 bytes per element (4 for KVS_CUDA_F32) */
};

const char *kvs_cusolver_status_str(cusolverStatus_t s);

#define CUDA_CHECK(expr) KVS_CHECK_GEN(c->err, sizeof c->err, "CUDA", expr, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(expr) \
    KVS_CHECK_GEN(c->err, sizeof c->err, "cuBLAS", expr, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
#define CUSOLVER_CHECK(expr) \
    KVS_CHECK_GEN(c->err, sizeof c->err, "cuSOLVER", expr, CUSOLVER_STATUS_SUCCESS, kvs_cusolver_status_str)
/* Launch check: configuration errors surface at once, faults at the next synchronising call; with
 * KVS_CUDA_SYNC=1 the stream is waited on here, so a fault names the launcher that caused it (the
 * launcher is the CPU twin's namesake: "kernel launched by kvs_cuda_rmsnorm() at norm.cu:24"). */
#define KVS_LAUNCH_CHECK()                                                                            \
    do {                                                                                              \
        CUDA_CHECK(cudaGetLastError());                                                               \
        if (c->sync_launches) {                                                                       \
            cudaError_t kvs_sync_rc_ = cudaStreamSynchronize(c->stream);                              \
            if (kvs_sync_rc_ != cudaSuccess) {                                                        \
                snprintf(c->err, sizeof c->err, "kernel launched by %s() at %s:%d faulted: %s", __func__, \
                         __FILE__, __LINE__, cudaGetErrorString(kvs_sync_rc_));                       \
                goto fail;                                                                            \
            }                                                                                         \
        }                                                                                             \
    } while (0)
/* Argument check with a formatted message, same fail: convention. */
#define KVS_REQUIRE(cond, ...)                                  \
    do {                                                        \
        if (!(cond)) {                                          \
            snprintf(c->err, sizeof c->err, __VA_ARGS__);       \
            goto fail;                                          \
        }                                                       \
    } while (0)

/* Returns scratch SLOT with at least BYTES, or NULL with c->err set. Invalidates the slot's
 * previous contents when it grows. */
void *kvs_cuda_scratch(struct kvs_cuda_ctx *c, int slot, size_t bytes);

/* ---- device helpers ---- */

static __device__ __forceinline__ float kvs_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. */
static __device__ __forceinline__ float kvs_block_sum(float v)
{
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kvs_warp_sum(v);
    __syncthreads(); /* part[] may still be read by a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : 0.0f;
    return kvs_warp_sum(v);
}

static __device__ __forceinline__ float kvs_block_max(float v)
{
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nw ? part[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* fp32 -> fp16 for a cache store, the bytes of the CPU's kvs_f32_to_f16_row: beyond ±65504 (±inf
 * included) clamped, never rounded to ±inf (the next softmax would make it NaN), and counted in
 * *OVER (a per-thread count: the kernel adds it to c->cache_clamped once, only when non-zero, so
 * the common case costs no atomic); NaN stays NaN, uncounted. */
static __device__ __forceinline__ __half kvs_dev_f2h_sat(float v, unsigned long long *over)
{
    if (fabsf(v) > 65504.0f) {
        v = v > 0.0f ? 65504.0f : -65504.0f;
        (*over)++;
    }
    return __float2half_rn(v);
}

/* Grid size for N independent items of PER_BLOCK each, capped to the 1-D grid limit. */
static inline unsigned kvs_grid(int64_t n, int per_block)
{
    int64_t g = (n + per_block - 1) / per_block;
    if (g < 1) g = 1;
    if (g > 0x7fffffff) g = 0x7fffffff;
    return (unsigned)g;
}

/* Converts N fp32 device values to DTYPE (enum kvs_cuda_dtype) at DST; fp16 saturates at ±65504. */
int kvs_cuda_convert(struct kvs_cuda_ctx *c, void *dst, const float *src, int64_t n, int dtype);

/* Softmax of R rows of length N in place (masked entries are -inf and become 0; a fully masked
 * row becomes all 0). The K/V attention's (the latent one has its own, fused with the mask). */
int kvs_cuda_softmax_rows(struct kvs_cuda_ctx *c, float *x, int64_t rows, int n);

/* Attention through a score matrix takes queries in chunks so that (T_chunk, n_head, n) fp32
 * scores stay under this cap; the emulated build lowers it so that tests reach the chunk loop. */
#ifndef ATT_SCORE_BYTES
#define ATT_SCORE_BYTES (256u << 20)
#endif

/* Queries per chunk so that (chunk, n_head, n) floats fit the score cap; at least 1. */
static inline int kvs_att_chunk(int T, int n_head, int n)
{
    uint64_t per_q = (uint64_t)n_head * (uint64_t)n * sizeof(float);
    uint64_t tc = per_q ? ATT_SCORE_BYTES / per_q : (uint64_t)T;
    if (tc < 1) tc = 1;
    if (tc > (uint64_t)T) tc = (uint64_t)T;
    return (int)tc;
}

/* MASS[j] += Σ over ROWS rows of probabilities P (rows, n), rows in order (attention.cu). */
int kvs_cuda_mass_add(struct kvs_cuda_ctx *c, const float *p, int64_t rows, int n, float *mass);

/* Latent attention by GEMMs through a (T_chunk, n_head, n) score matrix (latent_attend.cu):
 * attn_latent, and lat_attend's prefill chunks over rows gathered to fp32. Biases KB, VB (NULL:
 * none); MASS (n, zeroed by the caller) or NULL gets the weights of the queries t >= MASS_FROM. */
int kvs_cuda_latent_attend_scored(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a, const float *kb,
                                  const float *vb, float *mass, int mass_from);

#endif
