/* Attention kernels (DESIGN.md §3 step 6, §5 `full`):
 *  - over a plain fp16 K/V cache: warp-per-token dots, softmax, P·V per (query, head);
 *  - over CommonKV latents (attn_latent): the GEMM path of kernels/latent_attend.cu, which
 *    lat_attend's prefill chunks take too (keys rebuilt once per call, values by re-association).
 * Queries are processed in chunks so the score matrix stays bounded. The CPU twins are
 * kvs_cpu_attn_latent / kvs_cpu_attn_kv16 (engine/cpu/attention.c). Depends on CUDA. */
#include "internal.cuh"

#define ATT_WARPS 4                      /* warps (tokens) per block in the score kernel */

/* One warp: scores of key K (KV head G, position PJ, in shared memory) against the query heads of G
 * for every query, written at column J of SCORES (T, n_head, n); masked queries get -inf. */
static __device__ void warp_key_scores(const float *q, const int32_t *q_pos, int T, int n_head, int n_head_kv,
                                       int d, float scale, int g, const float *k, int32_t pj, float *scores,
                                       int64_t n, int64_t j, int lane)
{
    int gq = n_head / n_head_kv;
    for (int t = 0; t < T; t++) {
        bool visible = pj <= q_pos[t];
        for (int hh = 0; hh < gq; hh++) {
            int h = g * gq + hh;
            float s = -INFINITY;
            if (visible) {
                const float *qv = q + ((size_t)t * n_head + h) * d;
                float acc = 0.0f;
                for (int i = lane; i < d; i += 32) acc += qv[i] * k[i];
                s = kvs_warp_sum(acc) * scale;
            }
            if (lane == 0) scores[((size_t)t * n_head + h) * n + j] = s;
        }
    }
}

int kvs_cuda_attn_latent(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a)
{
    return kvs_cuda_latent_attend_scored(c, a, NULL, NULL, NULL, 0);
}

/* scores (T, n_head, n) over fp16 keys: one warp per (token j, KV head g). */
__global__ void k_kv16_scores(const float *q, const int32_t *q_pos, int T, int n_head, int n_head_kv, int d,
                              const __half *kc, const int32_t *pos, int n, float scale, float *scores)
{
    __shared__ float ks[ATT_WARPS][KVS_CUDA_MAX_HEAD_DIM];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = blockIdx.x * ATT_WARPS + warp;
    int g = blockIdx.y;
    if (j >= n) return;
    float *k = ks[warp];
    const __half *kj = kc + ((size_t)j * n_head_kv + g) * d;
    for (int i = lane; i < d; i += 32) k[i] = __half2float(kj[i]);
    __syncwarp();
    int32_t pj = pos[j];
    warp_key_scores(q, q_pos, T, n_head, n_head_kv, d, scale, g, k, pj, scores, n, j, lane);
}

/* out[t, h, :] = Σ_j p[t, h, j] v[j, g, :]: one block per (t, h), one thread per element i. */
__global__ void k_kv16_out(const float *p, const __half *vc, int n_head, int n_head_kv, int d, int n, float *out)
{
    int64_t th = blockIdx.x; /* t * n_head + h */
    int h = (int)(th % n_head);
    int g = h / (n_head / n_head_kv);
    const float *prow = p + th * n;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < n; j++) {
            float pj = prow[j];
            if (pj != 0.0f) s += pj * __half2float(vc[((size_t)j * n_head_kv + g) * d + i]);
        }
        out[th * d + i] = s;
    }
}

/* mass[j] += Σ_r p[r, j] over ROWS rows of probabilities, one thread per key; rows in order, so
 * the sum is the CPU twin's (kvs_cpu_kv_attend). */
__global__ void k_kv16_mass(const float *p, int64_t rows, int n, float *mass)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = mass[j];
    for (int64_t r = 0; r < rows; r++) s += p[r * n + j];
    mass[j] = s;
}

int kvs_cuda_mass_add(struct kvs_cuda_ctx *c, const float *p, int64_t rows, int n, float *mass)
{
    if (rows <= 0 || n <= 0) return KVS_CUDA_OK;
    KVS_LAUNCH(k_kv16_mass, kvs_grid(n, 256), 256, 0, c->stream)(p, rows, n, mass);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

int kvs_cuda_attn_kv16(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_kv16 *a)
{
    int tc, dq;
    float *scores;
    KVS_REQUIRE(a->T >= 0 && a->n >= 0 && a->n_head > 0 && a->n_head_kv > 0 && a->n_head % a->n_head_kv == 0 &&
                    a->head_dim > 0 && a->head_dim <= KVS_CUDA_MAX_HEAD_DIM && a->n_head_kv <= 65535,
                "attn_kv16: bad shape (T %d, n %d, heads %d/%d, dim %d)", a->T, a->n, a->n_head, a->n_head_kv,
                a->head_dim);
    dq = a->n_head * a->head_dim;
    if (a->mass && a->n) CUDA_CHECK(cudaMemsetAsync(a->mass, 0, (size_t)a->n * sizeof(float), c->stream));
    if (a->T == 0) return KVS_CUDA_OK;
    if (a->n == 0) {
        CUDA_CHECK(cudaMemsetAsync(a->out, 0, (size_t)a->T * dq * sizeof(float), c->stream));
        return KVS_CUDA_OK;
    }
    tc = kvs_att_chunk(a->T, a->n_head, a->n);
    scores = (float *)kvs_cuda_scratch(c, KVS_SCR_SCORES, (size_t)tc * a->n_head * a->n * sizeof(float));
    if (!scores) goto fail;
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        int tn = a->T - t0 < tc ? a->T - t0 : tc;
        int64_t rows = (int64_t)tn * a->n_head;
        dim3 grid(kvs_grid(a->n, ATT_WARPS), (unsigned)a->n_head_kv);
        KVS_LAUNCH(k_kv16_scores, grid, ATT_WARPS * 32, 0, c->stream)(
            a->q + (size_t)t0 * dq, a->q_pos + t0, tn, a->n_head, a->n_head_kv, a->head_dim, (const __half *)a->k,
            a->pos, a->n, a->scale, scores);
        KVS_LAUNCH_CHECK();
        if (kvs_cuda_softmax_rows(c, scores, rows, a->n) != KVS_CUDA_OK) goto fail;
        KVS_LAUNCH(k_kv16_out, (unsigned)rows, 64, 0, c->stream)(
            scores, (const __half *)a->v, a->n_head, a->n_head_kv, a->head_dim, a->n, a->out + (size_t)t0 * dq);
        KVS_LAUNCH_CHECK();
        if (a->mass && kvs_cuda_mass_add(c, scores, rows, a->n, a->mass) != KVS_CUDA_OK) goto fail;
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
