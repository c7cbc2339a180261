/* RoPE on the device, one thread per rotated pair. Twin of kvs_cpu_rope (engine/cpu/rope.c), the
 * oracle: the same pairs and the angles in double, as on the CPU. Depends on the CUDA runtime only. */
#include "internal.cuh"

/* One thread per (token, head, pair). */
__global__ void k_rope(float *x, int T, int n_heads, int head_dim, const int32_t *pos, const float *freqs, int neox)
{
    int half = head_dim / 2;
    int64_t total = (int64_t)T * n_heads * half;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int i = (int)(idx % half);
    int64_t th = idx / half; /* token * n_heads + head */
    int t = (int)(th / n_heads);
    float *hx = x + th * head_dim;
    int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    double sn, cs;
    sincos((double)pos[t] * (double)freqs[i], &sn, &cs);
    float fc = (float)cs, fs = (float)sn;
    float x0 = hx[a], x1 = hx[b];
    hx[a] = x0 * fc - x1 * fs;
    hx[b] = x0 * fs + x1 * fc;
}

int kvs_cuda_rope(struct kvs_cuda_ctx *c, float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                  const float *freqs, int neox)
{
    int64_t total;
    KVS_REQUIRE(T >= 0 && n_heads > 0 && head_dim > 0 && head_dim % 2 == 0, "rope: bad shape (%d, %d, %d)", T,
                n_heads, head_dim);
    total = (int64_t)T * n_heads * (head_dim / 2);
    if (total == 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_rope, kvs_grid(total, 256), 256, 0, c->stream)(x, T, n_heads, head_dim, pos, freqs, neox);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
