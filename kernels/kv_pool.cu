/* K/V pool kernels (DESIGN.md §4, §7; the `full` press's cache in device memory): fp32 -> fp16
 * stores of new rows at the end of a layer's pool (saturating at ±65504, counted), and compaction
 * (eviction) by a gather through scratch. Attention over the rows is kvs_cuda_attn_kv16
 * (attention.cu). The CPU twin is engine/cpu/kv_pool.c. Depends on CUDA only. */
#include "internal.cuh"

/* k[row0 + t, i] = half(ks[t, i]) and the same for v, one thread per element (grid-stride),
 * saturating at ±65504 and counting what it clamped into *CLAMPED. */
__global__ void k_kv_store(__half *k, __half *v, int dkv, int row0, int64_t count, const float *ks,
                           const float *vs, unsigned long long *clamped)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    size_t off = (size_t)row0 * dkv;
    unsigned long long over = 0;
    for (; i < count; i += stride) {
        k[off + i] = kvs_dev_f2h_sat(ks[i], &over);
        v[off + i] = kvs_dev_f2h_sat(vs[i], &over);
    }
    if (over) atomicAdd(clamped, over);
}

int kvs_cuda_kv_store(struct kvs_cuda_ctx *c, uint16_t *k, uint16_t *v, int dkv, int row0, int T, const float *ks,
                      const float *vs)
{
    int64_t count;
    unsigned grid;
    KVS_REQUIRE(dkv > 0 && row0 >= 0 && T >= 0, "kv_store: bad shape (dkv %d, row %d, T %d)", dkv, row0, T);
    count = (int64_t)T * dkv;
    if (!count) return KVS_CUDA_OK;
    grid = kvs_grid(count, 256);
    if (grid > 65535u * 8u) grid = 65535u * 8u;
    KVS_LAUNCH(k_kv_store, grid, 256, 0, c->stream)((__half *)k, (__half *)v, dkv, row0, count, ks, vs,
                                                        c->cache_clamped);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Row i of (gk, gv, gp) = row src[i] of (k, v, pos): one block per kept row. */
__global__ void k_kv_gather(const __half *k, const __half *v, const int32_t *pos, int dkv, const int32_t *src,
                            int n_keep, __half *gk, __half *gv, int32_t *gp)
{
    int r = blockIdx.x;
    if (r >= n_keep) return;
    size_t from = (size_t)src[r] * dkv, to = (size_t)r * dkv;
    for (int i = threadIdx.x; i < dkv; i += blockDim.x) {
        gk[to + i] = k[from + i];
        gv[to + i] = v[from + i];
    }
    if (threadIdx.x == 0) gp[r] = pos[src[r]];
}

int kvs_cuda_kv_compact(struct kvs_cuda_ctx *c, uint16_t *k, uint16_t *v, int32_t *pos, int dkv,
                        const int32_t *src, int n_keep)
{
    size_t rows;
    char *g;
    KVS_REQUIRE(dkv > 0 && n_keep >= 0, "kv_compact: bad shape (dkv %d, keep %d)", dkv, n_keep);
    if (!n_keep) return KVS_CUDA_OK;
    rows = (size_t)n_keep * dkv * sizeof(uint16_t);
    g = (char *)kvs_cuda_scratch(c, KVS_SCR_COMPACT, 2 * rows + (size_t)n_keep * sizeof(int32_t));
    if (!g) goto fail;
    /* rows move down in place; a direct in-place gather would race (row i is read as src[j] = i by
     * one block while another writes it), so gather to scratch and copy back */
    KVS_LAUNCH(k_kv_gather, (unsigned)n_keep, 128, 0, c->stream)((const __half *)k, (const __half *)v, pos, dkv, src,
                                                                 n_keep, (__half *)g, (__half *)(g + rows),
                                                                 (int32_t *)(g + 2 * rows));
    KVS_LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(k, g, rows, cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpyAsync(v, g + rows, rows, cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpyAsync(pos, g + 2 * rows, (size_t)n_keep * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                               c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
