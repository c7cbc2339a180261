/* CommonKV latent segment kernels (DESIGN.md §4, §7; the private and shared latent pools in device
 * memory): fp32 -> fp16 stores of new rows, compaction (eviction, or the rows a merge moved out)
 * by a gather through scratch, the merge of one token's per-layer latents into a shared row, and
 * the cosine scores between a segment's arrays that drive merging. The CPU twin is engine/cpu/latent_pool.c. Depends on CUDA only. */
#include "internal.cuh"

/* rows[row0*width + i] = half(x[i]), one thread per element (grid-stride). */
__global__ void k_lat_store(__half *rows, int width, int row0, int64_t count, const float *x)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    size_t off = (size_t)row0 * width;
    for (; i < count; i += stride) rows[off + i] = __float2half_rn(x[i]);
}

int kvs_cuda_lat_store(struct kvs_cuda_ctx *c, uint16_t *rows, int width, int row0, int T, const float *x)
{
    int64_t count;
    unsigned grid;
    KVS_REQUIRE(width > 0 && row0 >= 0 && T >= 0, "lat_store: bad shape (width %d, row %d, T %d)", width, row0, T);
    count = (int64_t)T * width;
    if (!count) return KVS_CUDA_OK;
    grid = kvs_grid(count, 256);
    if (grid > 65535u * 8u) grid = 65535u * 8u;
    KVS_LAUNCH(k_lat_store, grid, 256, 0, c->stream)((__half *)rows, width, row0, count, x);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Row i of g = row src[i] of rows (and of pos into gp when both are given): one block per kept row. */
__global__ void k_lat_gather(const __half *rows, const int32_t *pos, int width, const int32_t *src, int n_keep,
                             __half *g, int32_t *gp)
{
    int r = blockIdx.x;
    if (r >= n_keep) return;
    size_t from = (size_t)src[r] * width, to = (size_t)r * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) g[to + i] = rows[from + i];
    if (gp && threadIdx.x == 0) gp[r] = pos[src[r]];
}

int kvs_cuda_lat_compact(struct kvs_cuda_ctx *c, uint16_t *const *rows, int n_arr, int32_t *pos, int width,
                         const int32_t *src, int n_keep)
{
    size_t bytes;
    char *g;
    KVS_REQUIRE(width > 0 && n_arr > 0 && n_arr <= KVS_CUDA_LAT_MAX_ARR && n_keep >= 0,
                "lat_compact: bad shape (width %d, %d arrays, keep %d)", width, n_arr, n_keep);
    if (!n_keep) return KVS_CUDA_OK;
    bytes = (size_t)n_keep * width * sizeof(uint16_t);
    g = (char *)kvs_cuda_scratch(c, KVS_SCR_COMPACT, bytes + (size_t)n_keep * sizeof(int32_t));
    if (!g) goto fail;
    /* rows move down in place; an in-place gather would race (a row read by one block is written
     * by another), so each array is gathered to scratch and copied back */
    for (int a = 0; a < n_arr; a++) {
        int32_t *gp = a == 0 ? (int32_t *)(g + bytes) : NULL;
        KVS_LAUNCH(k_lat_gather, (unsigned)n_keep, 128, 0, c->stream)((const __half *)rows[a], pos, width, src,
                                                                      n_keep, (__half *)g, gp);
        KVS_LAUNCH_CHECK();
        CUDA_CHECK(cudaMemcpyAsync(rows[a], g, bytes, cudaMemcpyDeviceToDevice, c->stream));
        if (a == 0)
            CUDA_CHECK(cudaMemcpyAsync(pos, g + bytes, (size_t)n_keep * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                       c->stream));
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* One block per merged row: dst[row0 + i] = half(Σ_a w[a] · src[a][idx[i]]), summed in layer order
 * with fused multiply-adds (the CPU twin's order and rounding), and its position. */
__global__ void k_lat_merge(struct kvs_cuda_lat_merge a)
{
    int r = blockIdx.x;
    if (r >= a.m) return;
    int from = a.idx[r];
    size_t to = (size_t)(a.row0 + r) * a.width;
    for (int x = threadIdx.x; x < a.width; x += blockDim.x) {
        float acc = 0.0f;
        for (int l = 0; l < a.n_arr; l++)
            acc = fmaf(a.w[l], __half2float(((const __half *)a.src[l])[(size_t)from * a.width + x]), acc);
        ((__half *)a.dst)[to + x] = __float2half_rn(acc);
    }
    if (threadIdx.x == 0) a.dst_pos[a.row0 + r] = a.src_pos[from];
}

int kvs_cuda_lat_merge(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_merge *a)
{
    KVS_REQUIRE(a->width > 0 && a->n_arr > 0 && a->n_arr <= KVS_CUDA_LAT_MAX_ARR && a->m >= 0 && a->row0 >= 0,
                "lat_merge: bad shape (width %d, %d arrays, %d rows at %d)", a->width, a->n_arr, a->m, a->row0);
    if (!a->m) return KVS_CUDA_OK;
    KVS_LAUNCH(k_lat_merge, (unsigned)a->m, 128, 0, c->stream)(*a);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Cosine of rows X and Y (WIDTH fp16): fp64 sums in element order (products of two floats are
 * exact in fp64, so a contracted multiply-add rounds as the CPU twin's multiply then add). */
__device__ static double lat_cos(const __half *x, const __half *y, int width)
{
    double ab = 0, aa = 0, bb = 0;
    for (int k = 0; k < width; k++) {
        double u = (double)__half2float(x[k]), v = (double)__half2float(y[k]);
        ab += u * v;
        aa += u * u;
        bb += v * v;
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

/* One thread per row i < n: out[i] as struct kvs_cuda_lat_cosine says. */
__global__ void k_lat_cosine(struct kvs_cuda_lat_cosine a)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n) return;
    size_t off = (size_t)(a.row0 + i) * a.width;
    if (!a.adj) {
        a.out[i] = (float)lat_cos((const __half *)a.rows[0] + off, (const __half *)a.rows[a.n_arr - 1] + off, a.width);
        return;
    }
    double acc = 0;
    for (int l = 0; l + 1 < a.n_arr; l++)
        acc += lat_cos((const __half *)a.rows[l] + off, (const __half *)a.rows[l + 1] + off, a.width);
    a.out[i] = (float)(acc / (a.n_arr - 1));
}

int kvs_cuda_lat_cosine(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_cosine *a)
{
    KVS_REQUIRE(a->width > 0 && a->n_arr > 0 && a->n_arr <= KVS_CUDA_LAT_MAX_ARR && a->n >= 0 && a->row0 >= 0 &&
                    (!a->adj || a->n_arr > 1),
                "lat_cosine: bad shape (width %d, %d arrays, %d rows at %d, adj %d)", a->width, a->n_arr, a->n,
                a->row0, a->adj);
    if (!a->n) return KVS_CUDA_OK;
    KVS_LAUNCH(k_lat_cosine, kvs_grid(a->n, 128), 128, 0, c->stream)(*a);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
