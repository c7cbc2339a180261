/* Attention kernels (DESIGN.md §3 step 6, §5 `full`):
 *  - over CommonKV latents: one warp per (token, KV head) rebuilds k = B_k c in shared memory,
 *    rotates it and dots it with every query of the head group (fused, K never stored); softmax;
 *    P·C with cuBLAS; then (P C) B_vᵀ, one warp per output element (re-association, V never stored).
 *    This score-matrix path also serves lat_attend's prefill chunks (kernels/latent_attend.cu holds
 *    lat_attend and its fused decode kernel);
 *  - over a plain fp16 K/V cache: warp-per-token dots, softmax, P·V per (query, head).
 * Queries are processed in chunks so the score matrix stays bounded. The CPU twins are
 * kvs_cpu_attn_latent / kvs_cpu_attn_kv16 (engine/cpu/attention.c). Depends on CUDA, cuBLAS. */
#include "internal.cuh"

#define ATT_WARPS 4                      /* warps (tokens) per block in the score kernels */
#ifndef ATT_SCORE_BYTES                  /* the emulated build lowers it so that tests reach the chunk loop */
#define ATT_SCORE_BYTES (256u << 20)     /* cap on the (T_chunk, n_head, n) score matrix */
#endif

/* scores (T, n_head, n): one warp per (latent j, KV head g) = (blockIdx.x*ATT_WARPS + warp, blockIdx.y). */
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

__global__ void k_latent_scores(const float *q, const int32_t *q_pos, int T, int n_head, int n_head_kv, int d,
                                int rank, const float *cl, const int32_t *pos, int n, const float *bk,
                                const float *kb, const float *freqs, int neox, float scale, float *scores)
{
    __shared__ float ks[ATT_WARPS][KVS_CUDA_MAX_HEAD_DIM];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = blockIdx.x * ATT_WARPS + warp;
    int g = blockIdx.y;
    if (j >= n) return; /* whole warp leaves together: no block-wide barrier below */
    float *k = ks[warp];
    const float *cj = cl + (size_t)j * rank;
    const float *B = bk + (size_t)g * d * rank;
    /* k = B_k[g] c_j: one coalesced dot of length rank per output element */
    for (int i = 0; i < d; i++) {
        const float *brow = B + (size_t)i * rank;
        float s = 0.0f;
        for (int r = lane; r < rank; r += 32) s += brow[r] * cj[r];
        s = kvs_warp_sum(s);
        if (lane == 0) k[i] = kb ? s + kb[g * d + i] : s;
    }
    __syncwarp();
    int half = d / 2;
    int32_t pj = pos[j];
    for (int i = lane; i < half; i += 32) {
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        double sn, cs;
        sincos((double)pj * (double)freqs[i], &sn, &cs);
        float x0 = k[a], x1 = k[b];
        k[a] = x0 * (float)cs - x1 * (float)sn;
        k[b] = x0 * (float)sn + x1 * (float)cs;
    }
    __syncwarp();
    warp_key_scores(q, q_pos, T, n_head, n_head_kv, d, scale, g, k, pj, scores, n, j, lane);
}

/* out[t, h, i] = B_v[g*d + i, :] · pc[t, h, :], one warp per output element. */
__global__ void k_latent_out(const float *pc, const float *bv, const float *vb, int T, int n_head, int n_head_kv,
                             int d, int rank, float *out)
{
    int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    int64_t total = (int64_t)T * n_head * d;
    if (wid >= total) return;
    int i = (int)(wid % d);
    int64_t th = wid / d; /* t * n_head + h */
    int h = (int)(th % n_head);
    int g = h / (n_head / n_head_kv);
    const float *brow = bv + ((size_t)g * d + i) * rank;
    const float *p = pc + th * rank;
    float s = 0.0f;
    for (int r = lane; r < rank; r += 32) s += brow[r] * p[r];
    s = kvs_warp_sum(s);
    if (lane == 0) out[wid] = vb ? s + vb[g * d + i] : s;
}

/* Queries per chunk so that (chunk, n_head, n) floats fit the score cap; at least 1. */
static int att_chunk(int T, int n_head, int n)
{
    uint64_t per_q = (uint64_t)n_head * (uint64_t)n * sizeof(float);
    uint64_t tc = per_q ? ATT_SCORE_BYTES / per_q : (uint64_t)T;
    if (tc < 1) tc = 1;
    if (tc > (uint64_t)T) tc = (uint64_t)T;
    return (int)tc;
}

__global__ void k_kv16_mass(const float *p, int64_t rows, int n, float *mass);

/* The latent path shared by attn_latent and lat_attend's prefill (internal.cuh). */
int kvs_cuda_latent_attend_scored(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a, const float *kb,
                         const float *vb, float *mass, int mass_from)
{
    const float one = 1.0f, zero = 0.0f;
    int tc, dq;
    float *scores, *pc;
    KVS_REQUIRE(a->T >= 0 && a->n >= 0 && a->n_head > 0 && a->n_head_kv > 0 && a->n_head % a->n_head_kv == 0 &&
                    a->head_dim > 0 && a->head_dim % 2 == 0 && a->head_dim <= KVS_CUDA_MAX_HEAD_DIM &&
                    a->rank > 0 && a->n_head_kv <= 65535,
                "attn_latent: bad shape (T %d, n %d, heads %d/%d, dim %d, rank %d)", a->T, a->n, a->n_head,
                a->n_head_kv, a->head_dim, a->rank);
    dq = a->n_head * a->head_dim;
    if (a->T == 0) return KVS_CUDA_OK;
    if (a->n == 0) {
        CUDA_CHECK(cudaMemsetAsync(a->out, 0, (size_t)a->T * dq * sizeof(float), c->stream));
        return KVS_CUDA_OK;
    }
    tc = att_chunk(a->T, a->n_head, a->n);
    scores = (float *)kvs_cuda_scratch(c, KVS_SCR_SCORES, (size_t)tc * a->n_head * a->n * sizeof(float));
    if (!scores) goto fail;
    pc = (float *)kvs_cuda_scratch(c, KVS_SCR_PC, (size_t)tc * a->n_head * a->rank * sizeof(float));
    if (!pc) goto fail;
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        int tn = a->T - t0 < tc ? a->T - t0 : tc;
        int64_t rows = (int64_t)tn * a->n_head;
        int64_t outs = rows * a->head_dim;
        dim3 grid(kvs_grid(a->n, ATT_WARPS), (unsigned)a->n_head_kv);
        KVS_LAUNCH(k_latent_scores, grid, ATT_WARPS * 32, 0, c->stream)(
            a->q + (size_t)t0 * dq, a->q_pos + t0, tn, a->n_head, a->n_head_kv, a->head_dim, a->rank, a->c, a->pos,
            a->n, a->bk, kb, a->freqs, a->neox, a->scale, scores);
        KVS_LAUNCH_CHECK();
        if (kvs_cuda_softmax_rows(c, scores, rows, a->n) != KVS_CUDA_OK) goto fail;
        /* Row-major PC (rows, rank) = P (rows, n) · C (n, rank); column-major: PCᶜ = Cᶜ · Pᶜ. */
        CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, a->rank, (int)rows, a->n, &one, a->c, a->rank,
                                 scores, a->n, &zero, pc, a->rank));
        KVS_LAUNCH(k_latent_out, kvs_grid(outs * 32, 256), 256, 0, c->stream)(
            pc, a->bv, vb, tn, a->n_head, a->n_head_kv, a->head_dim, a->rank, a->out + (size_t)t0 * dq);
        KVS_LAUNCH_CHECK();
        if (mass) {
            /* the chunk's rows (t, h) of the queries in the mass window, in order */
            int64_t r0 = t0 >= mass_from ? 0 : (int64_t)(mass_from - t0) * a->n_head;
            if (r0 < rows) {
                KVS_LAUNCH(k_kv16_mass, kvs_grid(a->n, 256), 256, 0, c->stream)(scores + r0 * a->n, rows - r0, a->n,
                                                                                mass);
                KVS_LAUNCH_CHECK();
            }
        }
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
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
    tc = att_chunk(a->T, a->n_head, a->n);
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
        if (a->mass) {
            KVS_LAUNCH(k_kv16_mass, kvs_grid(a->n, 256), 256, 0, c->stream)(scores, rows, a->n, a->mass);
            KVS_LAUNCH_CHECK();
        }
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
