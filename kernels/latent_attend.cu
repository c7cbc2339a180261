/* Attention over one layer's CommonKV latent segment rows (lat_attend; DESIGN.md §3 steps 5–6, §7).
 * Decode (T <= LA_TMAX queries) runs fused: one block per (KV head, context split) walks tiles of 16
 * rows of all segments, rebuilds the tile's keys on tensor cores (WMMA 16x16x16, fp16 or bf16 in,
 * fp32 accumulate, B_k as the caller's 16-bit copy), adds b_k, applies RoPE at each row's own
 * position, scores the GQA group's queries and keeps an online softmax with P·C in fp32; a combine
 * kernel merges the splits (log-sum-exp) and applies ·B_vᵀ + b_v. K, V and the score matrix are
 * never stored; the attention mass is a second pass over the tiles with the final max and sum.
 * Prefill chunks (and attn_latent) run as cuBLAS GEMMs plus kernels without block barriers: the
 * rows gathered to fp32, all KV heads' keys rebuilt once per call (one GEMM, then b_k and RoPE),
 * then per chunk of queries the scores per head (strided batched over the KV heads), mask and
 * softmax (a warp per row), P·C (one GEMM) and (P C) B_vᵀ (strided batched), + b_v. The CPU twin
 * is kvs_cpu_lat_attend (engine/cpu/). Depends on CUDA (mma.h) and cuBLAS. */
#include <mma.h>

#include <stdlib.h>
#include <type_traits>

#include "internal.cuh"

using namespace nvcuda;

#define LA_WARPS 4
#define LA_THREADS (LA_WARPS * 32)
#define LA_ROWS 16                                      /* rows per tile: one WMMA m-tile */
#define LA_KC 64                                        /* latent columns staged in shared memory per step */
#define LA_TMAX 4                                       /* queries the fused path takes */
#define LA_QMAX 64                                      /* query heads per block: T * (n_head / n_head_kv) */
#define LA_NF (KVS_CUDA_MAX_HEAD_DIM / 16 / LA_WARPS)   /* accumulator tiles per warp at the widest head */
#define LA_MAX_SPLITS 256
#define LA_KLD (KVS_CUDA_MAX_HEAD_DIM + 4) /* la_k's row stride: the score loop's 16 rows fall in 8 banks */
#define LA_EMU_SMS 16 /* the SM count the emulation pretends (it reports 1) */

/* bf16 WMMA exists from sm_80 on; the launcher never picks it below (see la_fused_ok). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define LA_BF16_MMA 0
#else
#define LA_BF16_MMA 1
#endif

struct la_args {
    int T, n_head, n_head_kv, d, rank, rp; /* rp: rank rounded up to 16 (the 16-bit B_k's row length) */
    int n, n_segs, tiles_per_split, mass_from;
    const __half *rows[KVS_CUDA_LAT_ATTEND_MAX_SEGS];
    const int32_t *pos[KVS_CUDA_LAT_ATTEND_MAX_SEGS];
    int off[KVS_CUDA_LAT_ATTEND_MAX_SEGS + 1]; /* first row of each segment in the global numbering */
    const float *q;           /* (T, n_head*d) */
    const int32_t *q_pos;     /* (T) */
    const void *bk16;         /* (n_head_kv*d, rp) fp16 or bf16, zero-padded */
    const float *kb;          /* (n_head_kv*d) or NULL */
    const float *freqs;       /* (d/2) */
    int neox;
    float scale;
    float *acc;               /* (splits, T*n_head, rank): each split's unnormalised P·C */
    float *ml;                /* (splits, T*n_head, 2): each split's running max and sum */
    const float *mlf;         /* (T*n_head, 2): the final max and sum (mass pass) */
    float *mass_part;         /* (n_head_kv, n): mass per KV head (mass pass) */
};

/* Shared by the two tile kernels (file scope: one copy whatever the element type). */
__shared__ __align__(32) float la_k[LA_ROWS][LA_KLD];                /* the tile's keys, fp32 */
__shared__ __align__(32) unsigned short la_c[LA_ROWS * LA_KC];       /* latents staged as 16-bit inputs */
__shared__ float la_s[LA_QMAX][LA_ROWS];                            /* scores, then weights */
__shared__ float la_m[LA_QMAX], la_l[LA_QMAX], la_alpha[LA_QMAX];
__shared__ int32_t la_pos[LA_ROWS];
__shared__ int la_seg[LA_ROWS], la_loc[LA_ROWS]; /* segment and row in it; seg -1: past the range */
__shared__ float la_w[LA_MAX_SPLITS];

template <typename T> static __device__ __forceinline__ T la_cvt(float v)
{
    if constexpr (std::is_same<T, __half>::value) return __float2half_rn(v);
    else return __float2bfloat16_rn(v);
}

/* Rows [j0, min(j0 + 16, jend)) of all segments: their keys k = RoPE_pos(B_k[g] c + b_k[g]) in
 * la_k, positions in la_pos. Called by every thread of the block. */
template <typename T> static __device__ void la_tile_keys(const la_args &a, int g, int j0, int jend)
{
    int tid = threadIdx.x, warp = tid >> 5, d = a.d, ntiles = d / 16;
    __syncthreads(); /* the previous tile's readers of la_seg, la_s and la_k are done */
    if (tid < LA_ROWS) {
        int j = j0 + tid, s = -1, l = 0;
        if (j < jend) {
            s = 0;
            while (j >= a.off[s + 1]) s++;
            l = j - a.off[s];
        }
        la_seg[tid] = s;
        la_loc[tid] = l;
        la_pos[tid] = s >= 0 ? a.pos[s][l] : 0;
    }
    if constexpr (std::is_same<T, __nv_bfloat16>::value && !LA_BF16_MMA) {
        __trap();
    } else {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[LA_NF];
        for (int f = 0; f < LA_NF; f++) wmma::fill_fragment(acc[f], 0.0f);
        for (int k0 = 0; k0 < a.rp; k0 += LA_KC) {
            __syncthreads(); /* la_seg written; the previous chunk consumed */
            for (int e = tid; e < LA_ROWS * LA_KC; e += LA_THREADS) {
                int rr = e / LA_KC, col = k0 + e % LA_KC, s = la_seg[rr];
                float v = 0.0f; /* rows past the range and columns past the rank pad with zeros */
                if (s >= 0 && col < a.rank) v = __half2float(a.rows[s][(size_t)la_loc[rr] * a.rank + col]);
                ((T *)la_c)[e] = la_cvt<T>(v);
            }
            __syncthreads();
            int kn = a.rp - k0 < LA_KC ? a.rp - k0 : LA_KC;
            for (int kk = 0; kk < kn; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
                wmma::load_matrix_sync(fa, (const T *)la_c + kk, LA_KC);
                for (int f = 0; f < LA_NF; f++) {
                    int nt = warp + f * LA_WARPS;
                    if (nt >= ntiles) break;
                    /* B_k[g] rows nt*16.. as the (k, n) operand: column-major with ldm = rp */
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
                    wmma::load_matrix_sync(fb, (const T *)a.bk16 + ((size_t)g * d + nt * 16) * a.rp + k0 + kk, a.rp);
                    wmma::mma_sync(acc[f], fa, fb, acc[f]);
                }
            }
        }
        for (int f = 0; f < LA_NF; f++) {
            int nt = warp + f * LA_WARPS;
            if (nt >= ntiles) break;
            wmma::store_matrix_sync(&la_k[0][nt * 16], acc[f], LA_KLD, wmma::mem_row_major);
        }
    }
    __syncthreads();
    int half = d / 2;
    for (int e = tid; e < LA_ROWS * half; e += LA_THREADS) {
        int rr = e / half, i = e % half;
        if (la_seg[rr] < 0) continue;
        int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
        float x0 = la_k[rr][ia], x1 = la_k[rr][ib];
        if (a.kb) x0 += a.kb[g * d + ia], x1 += a.kb[g * d + ib];
        double sn, cs;
        sincos((double)la_pos[rr] * (double)a.freqs[i], &sn, &cs);
        la_k[rr][ia] = x0 * (float)cs - x1 * (float)sn;
        la_k[rr][ib] = x0 * (float)sn + x1 * (float)cs;
    }
    __syncthreads();
}

/* la_s[qi][rr] = scale · q[t, h] · k[rr] for the block's query heads qi = t*gq + hh (h = g*gq + hh),
 * -inf where row rr is past the range, after the query, or t < T_FROM. */
static __device__ void la_scores(const la_args &a, int g, int t_from)
{
    int gq = a.n_head / a.n_head_kv, nq = a.T * gq, d = a.d;
    for (int e = threadIdx.x; e < nq * LA_ROWS; e += LA_THREADS) {
        int qi = e / LA_ROWS, rr = e % LA_ROWS, t = qi / gq, h = g * gq + qi % gq;
        float s = -INFINITY;
        if (t >= t_from && la_seg[rr] >= 0 && la_pos[rr] <= a.q_pos[t]) {
            const float *qv = a.q + ((size_t)t * a.n_head + h) * d;
            float acc = 0.0f;
            for (int i = 0; i < d; i++) acc += qv[i] * la_k[rr][i];
            s = acc * a.scale;
        }
        la_s[qi][rr] = s;
    }
    __syncthreads();
}

/* The split's row range [*jb, *je). */
static __device__ void la_range(const la_args &a, int *jb, int *je)
{
    int64_t b = (int64_t)blockIdx.y * a.tiles_per_split * LA_ROWS, e = b + (int64_t)a.tiles_per_split * LA_ROWS;
    *jb = (int)(b < a.n ? b : a.n);
    *je = (int)(e < a.n ? e : a.n);
}

/* One block per (KV head g = blockIdx.x, split = blockIdx.y): online softmax over the split's
 * tiles; writes the split's P·C (unnormalised), max and sum for each of the group's query heads. */
template <typename T> __global__ void __launch_bounds__(LA_THREADS) k_lat_attend_fused(la_args a)
{
    int g = blockIdx.x, split = blockIdx.y, tid = threadIdx.x;
    int gq = a.n_head / a.n_head_kv, nq = a.T * gq, r = a.rank, jb, je;
    size_t nrow = (size_t)a.T * a.n_head;
    float *acc = a.acc + (size_t)split * nrow * r;
    la_range(a, &jb, &je);
    if (tid < nq) la_m[tid] = -INFINITY, la_l[tid] = 0.0f;
    for (int e = tid; e < nq * r; e += LA_THREADS) {
        int qi = e / r;
        acc[((size_t)(qi / gq) * a.n_head + g * gq + qi % gq) * r + e % r] = 0.0f;
    }
    for (int j0 = jb; j0 < je; j0 += LA_ROWS) {
        la_tile_keys<T>(a, g, j0, je);
        la_scores(a, g, 0);
        if (tid < nq) {
            float mt = -INFINITY, sum = 0.0f, al = 1.0f;
            for (int rr = 0; rr < LA_ROWS; rr++) mt = fmaxf(mt, la_s[tid][rr]);
            float mn = fmaxf(la_m[tid], mt);
            if (mn == -INFINITY) {
                for (int rr = 0; rr < LA_ROWS; rr++) la_s[tid][rr] = 0.0f;
            } else {
                al = expf(la_m[tid] - mn); /* 0 while nothing was visible before */
                for (int rr = 0; rr < LA_ROWS; rr++) {
                    float p = expf(la_s[tid][rr] - mn);
                    la_s[tid][rr] = p;
                    sum += p;
                }
            }
            la_l[tid] = la_l[tid] * al + sum;
            la_m[tid] = mn;
            la_alpha[tid] = al;
        }
        __syncthreads();
        /* each thread owns the same accumulator elements on every tile: no race, fixed order */
        for (int e = tid; e < nq * r; e += LA_THREADS) {
            int qi = e / r, x = e % r;
            float *ap = acc + ((size_t)(qi / gq) * a.n_head + g * gq + qi % gq) * r + x;
            float v = *ap * la_alpha[qi];
            for (int rr = 0; rr < LA_ROWS; rr++) {
                float p = la_s[qi][rr];
                if (p != 0.0f) v = fmaf(p, __half2float(a.rows[la_seg[rr]][(size_t)la_loc[rr] * r + x]), v);
            }
            *ap = v;
        }
    }
    if (tid < nq) {
        size_t row = (size_t)(tid / gq) * a.n_head + g * gq + tid % gq;
        a.ml[((size_t)split * nrow + row) * 2] = la_m[tid];
        a.ml[((size_t)split * nrow + row) * 2 + 1] = la_l[tid];
    }
}

/* One block per (t, h): the log-sum-exp merge of the splits. pc[row] = Σ_s w_s acc_s / Σ_s w_s l_s
 * with w_s = e^(m_s - M), M the largest split max; mlf[row] = (M, the merged sum). No visible row
 * anywhere: pc = 0. */
__global__ void k_lat_combine(const float *acc, const float *ml, int splits, int64_t nrow, int rank, float *pc,
                              float *mlf)
{
    int64_t row = blockIdx.x;
    float M = -INFINITY, L = 0.0f;
    for (int s = 0; s < splits; s++) M = fmaxf(M, ml[((size_t)s * nrow + row) * 2]);
    for (int s = threadIdx.x; s < splits; s += blockDim.x) {
        float ms = ml[((size_t)s * nrow + row) * 2];
        la_w[s] = ms == -INFINITY ? 0.0f : expf(ms - M);
    }
    __syncthreads();
    for (int s = 0; s < splits; s++) L = fmaf(la_w[s], ml[((size_t)s * nrow + row) * 2 + 1], L);
    for (int x = threadIdx.x; x < rank; x += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < splits; s++)
            if (la_w[s] != 0.0f) v = fmaf(la_w[s], acc[((size_t)s * nrow + row) * rank + x], v);
        pc[row * rank + x] = L > 0.0f ? v / L : 0.0f;
    }
    if (threadIdx.x == 0) mlf[row * 2] = M, mlf[row * 2 + 1] = L;
}

/* out[t, h, i] = B_v[g*d + i, :] · pc[t, h, :] + b_v[g*d + i], one warp per output element; 0 where
 * the query saw no row (mlf's merged sum is 0), as the contract and the CPU twin say. */
__global__ void k_lat_out(const float *pc, const float *bv, const float *vb, const float *mlf, int64_t total,
                          int n_head, int gq, int d, int rank, float *out)
{
    int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wid >= total) return; /* whole warps leave together */
    int i = (int)(wid % d);
    int64_t th = wid / d;
    int g = (int)(th % n_head) / gq;
    const float *brow = bv + ((size_t)g * d + i) * rank;
    const float *p = pc + th * rank;
    float s = 0.0f;
    for (int x = lane; x < rank; x += 32) s += brow[x] * p[x];
    s = kvs_warp_sum(s);
    if (lane == 0) out[wid] = mlf[th * 2 + 1] > 0.0f ? (vb ? s + vb[g * d + i] : s) : 0.0f;
}

/* The mass pass: the same tiles and keys; mass_part[g][j] = Σ over queries t >= mass_from and the
 * group's heads of e^(s - M[t,h]) / L[t,h]. */
template <typename T> __global__ void __launch_bounds__(LA_THREADS) k_lat_attend_mass(la_args a)
{
    int g = blockIdx.x, tid = threadIdx.x, gq = a.n_head / a.n_head_kv, nq = a.T * gq, jb, je;
    la_range(a, &jb, &je);
    for (int j0 = jb; j0 < je; j0 += LA_ROWS) {
        la_tile_keys<T>(a, g, j0, je);
        la_scores(a, g, a.mass_from);
        if (tid < LA_ROWS && la_seg[tid] >= 0) {
            float m = 0.0f;
            for (int qi = 0; qi < nq; qi++) {
                size_t row = (size_t)(qi / gq) * a.n_head + g * gq + qi % gq;
                float s = la_s[qi][tid], L = a.mlf[row * 2 + 1];
                if (s != -INFINITY && L > 0.0f) m += expf(s - a.mlf[row * 2]) / L;
            }
            a.mass_part[(size_t)g * a.n + j0 + tid] = m;
        }
    }
}

/* mass[j] = Σ_g mass_part[g][j], in order of g. */
__global__ void k_lat_mass_sum(const float *part, int n_kv, int n, float *mass)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0.0f;
    for (int g = 0; g < n_kv; g++) s += part[(size_t)g * n + j];
    mass[j] = s;
}

/* Context splits: enough blocks for two per SM when the KV heads alone are fewer, at least two
 * tiles per split; a->splits or $KVS_CUDA_LAT_SPLITS (tests) forces a count. */
static int la_splits(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a, int tiles)
{
    int want = a->splits, sms = LA_EMU_SMS;
    if (want <= 0) {
        const char *e = getenv("KVS_CUDA_LAT_SPLITS");
        if (e && *e) want = atoi(e);
    }
    if (want <= 0) {
#ifndef KVS_CUDA_EMU
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c->device) != cudaSuccess || sms < 1) {
            (void)cudaGetLastError();
            sms = 1;
        }
#endif
        want = (2 * sms + a->n_head_kv - 1) / a->n_head_kv;
        if (want > (tiles + 1) / 2) want = (tiles + 1) / 2;
    }
    if (want > tiles) want = tiles;
    if (want > LA_MAX_SPLITS) want = LA_MAX_SPLITS;
    return want < 1 ? 1 : want;
}

/* The fused path applies: few queries, a 16-bit B_k of the right shape, head widths of whole
 * WMMA tiles, the group's query heads within a block's share, bf16 only where the GPU has it. */
static bool la_fused_ok(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a)
{
    const struct kvs_cuda_weight *w = a->bk16;
    int gq = a->n_head / a->n_head_kv;
    return w && a->T >= 1 && a->T <= LA_TMAX && a->T * gq <= LA_QMAX && a->head_dim % 16 == 0 &&
           w->rows == (int64_t)a->n_head_kv * a->head_dim && w->cols == (int64_t)((a->rank + 15) / 16 * 16) &&
           (w->dtype == KVS_CUDA_F16 || (w->dtype == KVS_CUDA_BF16 && c->cc_major >= 8));
}

template <typename T> static int la_launch(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a, la_args &la,
                                           int splits)
{
    size_t nrow = (size_t)a->T * a->n_head;
    float *part, *pc;
    dim3 grid((unsigned)a->n_head_kv, (unsigned)splits);
    part = (float *)kvs_cuda_scratch(c, KVS_SCR_LAT_PART,
                                     ((size_t)splits * nrow * (a->rank + 2) + nrow * 2) * sizeof(float));
    if (!part) goto fail;
    pc = (float *)kvs_cuda_scratch(c, KVS_SCR_PC, nrow * a->rank * sizeof(float));
    if (!pc) goto fail;
    la.acc = part;
    la.ml = part + (size_t)splits * nrow * a->rank;
    la.mlf = la.ml + (size_t)splits * nrow * 2;
    KVS_LAUNCH(k_lat_attend_fused<T>, grid, LA_THREADS, 0, c->stream)(la);
    KVS_LAUNCH_CHECK();
    KVS_LAUNCH(k_lat_combine, (unsigned)nrow, 128, 0, c->stream)(la.acc, la.ml, splits, (int64_t)nrow, a->rank, pc,
                                                                  (float *)la.mlf);
    KVS_LAUNCH_CHECK();
    KVS_LAUNCH(k_lat_out, kvs_grid((int64_t)nrow * a->head_dim * 32, 256), 256, 0, c->stream)(
        pc, a->bv, a->bv_bias, la.mlf, (int64_t)nrow * a->head_dim, a->n_head, a->n_head / a->n_head_kv, a->head_dim, a->rank,
        a->out);
    KVS_LAUNCH_CHECK();
    if (a->mass && a->mass_from < a->T) {
        la.mass_part = (float *)kvs_cuda_scratch(c, KVS_SCR_LAT_MASS, (size_t)a->n_head_kv * la.n * sizeof(float));
        if (!la.mass_part) goto fail;
        KVS_LAUNCH(k_lat_attend_mass<T>, grid, LA_THREADS, 0, c->stream)(la);
        KVS_LAUNCH_CHECK();
        KVS_LAUNCH(k_lat_mass_sum, kvs_grid(la.n, 256), 256, 0, c->stream)(la.mass_part, a->n_head_kv, la.n, a->mass);
        KVS_LAUNCH_CHECK();
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

static int lat_attend_fused(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a, int n)
{
    la_args la = {};
    int tiles = (n + LA_ROWS - 1) / LA_ROWS, splits;
    la.T = a->T, la.n_head = a->n_head, la.n_head_kv = a->n_head_kv, la.d = a->head_dim, la.rank = a->rank;
    la.rp = (a->rank + 15) / 16 * 16;
    la.n = n, la.n_segs = a->n_segs, la.mass_from = a->mass_from < 0 ? 0 : a->mass_from;
    la.off[0] = 0;
    for (int s = 0; s < a->n_segs; s++) {
        la.rows[s] = (const __half *)a->rows[s];
        la.pos[s] = a->pos[s];
        la.off[s + 1] = la.off[s] + a->n[s];
    }
    for (int s = a->n_segs; s < KVS_CUDA_LAT_ATTEND_MAX_SEGS; s++) la.off[s + 1] = la.off[s];
    la.q = a->q, la.q_pos = a->q_pos, la.bk16 = a->bk16->data, la.kb = a->bk_bias, la.freqs = a->freqs;
    la.neox = a->neox, la.scale = a->scale;
    splits = la_splits(c, a, tiles);
    la.tiles_per_split = (tiles + splits - 1) / splits;
    splits = (tiles + la.tiles_per_split - 1) / la.tiles_per_split; /* no split left empty */
    return a->bk16->dtype == KVS_CUDA_BF16 ? la_launch<__nv_bfloat16>(c, a, la, splits)
                                           : la_launch<__half>(c, a, la, splits);
}

/* ---------------------------------------------------------------- prefill: GEMMs */

/* C (n, rank) fp32 and P (n) from rows [0, n) of one segment, placed from row OFF on. */
__global__ void k_lat_gather_f32(const __half *rows, const int32_t *pos, int n, int rank, int off, float *C,
                                 int32_t *P)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * rank) return;
    C[(int64_t)off * rank + i] = __half2float(rows[i]);
    if (i % rank == 0) P[off + i / rank] = pos[i / rank];
}

/* Keys K (n, n_kv*d) = C B_kᵀ in place: + b_k, then RoPE at each row's own position, one thread per
 * (row, KV head, pair); the angle in double, as the fused kernel and the CPU twin's table. */
__global__ void k_lat_keys_rope(float *K, const int32_t *pos, const float *kb, const float *freqs, int64_t total,
                                int n_kv, int d, int neox)
{
    int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    int half = d / 2, i = (int)(e % half);
    int64_t jg = e / half; /* j * n_kv + g */
    int g = (int)(jg % n_kv), ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
    float *k = K + jg * d;
    float x0 = k[ia], x1 = k[ib];
    if (kb) x0 += kb[g * d + ia], x1 += kb[g * d + ib];
    double sn, cs;
    sincos((double)pos[jg / n_kv] * (double)freqs[i], &sn, &cs);
    k[ia] = x0 * (float)cs - x1 * (float)sn;
    k[ib] = x0 * (float)sn + x1 * (float)cs;
}

/* One warp per row (t, h) of the chunk's scores S (tn*n_head, n): scaled where row j is visible to
 * query t (pos[j] <= q_pos[t]), else -inf; then the softmax over the row in place, as
 * kvs_cuda_softmax_rows computes it (a row with nothing visible becomes all 0), and seen[t] = 1
 * when query t saw a row. Warp reductions only, no block barrier: the block-per-row softmax's
 * barriers and 256 threads per row took most of an emulated prefill, and 32 lanes per row fill a
 * GPU once a chunk has a few hundred (query, head) rows. */
__global__ void k_lat_softmax(float *S, const int32_t *q_pos, const int32_t *pos, int64_t rows, int n_head, int n,
                              float scale, int *seen)
{
    int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return; /* whole warps leave together */
    float *s = S + row * n;
    int32_t qp = q_pos[row / n_head];
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) {
        float v = pos[j] <= qp ? s[j] * scale : -INFINITY;
        s[j] = v;
        m = fmaxf(m, v);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0 && row % n_head == 0) seen[row / n_head] = m != -INFINITY;
    if (m == -INFINITY) { /* nothing visible: attend to nothing rather than produce NaN */
        for (int j = lane; j < n; j += 32) s[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) {
        float e = s[j] == -INFINITY ? 0.0f : expf(s[j] - m); /* a causal chunk masks half its scores */
        s[j] = e;
        sum += e;
    }
    float inv = 1.0f / kvs_warp_sum(sum);
    for (int j = lane; j < n; j += 32) s[j] *= inv;
}

/* out (tn, n_head*d) += b_v[g] for the queries that saw a row; the others keep their 0 (P C = 0). */
__global__ void k_lat_out_bias(float *out, const float *vb, const int *seen, int64_t total, int n_head, int gq, int d)
{
    int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    int i = (int)(e % d);
    int64_t th = e / d; /* t * n_head + h */
    int g = (int)(th % n_head) / gq;
    if (seen[th / n_head]) out[e] += vb[g * d + i];
}

int kvs_cuda_latent_attend_scored(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a, const float *kb,
                                  const float *vb, float *mass, int mass_from)
{
    const float one = 1.0f, zero = 0.0f;
    int tc, dq, dkv, gq, G, d, r, n;
    float *K, *scores, *pc;
    int *seen;
    KVS_REQUIRE(a->T >= 0 && a->n >= 0 && a->n_head > 0 && a->n_head_kv > 0 && a->n_head % a->n_head_kv == 0 &&
                    a->head_dim > 0 && a->head_dim % 2 == 0 && a->head_dim <= KVS_CUDA_MAX_HEAD_DIM &&
                    a->rank > 0 && (int64_t)a->n_head * a->n <= 0x7fffffff &&
                    (int64_t)a->n_head * a->rank <= 0x7fffffff,
                "attn_latent: bad shape (T %d, n %d, heads %d/%d, dim %d, rank %d)", a->T, a->n, a->n_head,
                a->n_head_kv, a->head_dim, a->rank);
    G = a->n_head_kv, d = a->head_dim, r = a->rank, n = a->n;
    gq = a->n_head / G, dq = a->n_head * d, dkv = G * d;
    if (a->T == 0) return KVS_CUDA_OK;
    if (n == 0) {
        CUDA_CHECK(cudaMemsetAsync(a->out, 0, (size_t)a->T * dq * sizeof(float), c->stream));
        return KVS_CUDA_OK;
    }
    tc = kvs_att_chunk(a->T, a->n_head, n);
    K = (float *)kvs_cuda_scratch(c, KVS_SCR_LAT_K, (size_t)n * dkv * sizeof(float) + (size_t)tc * sizeof(int));
    if (!K) goto fail;
    seen = (int *)(K + (size_t)n * dkv);
    scores = (float *)kvs_cuda_scratch(c, KVS_SCR_SCORES, (size_t)tc * a->n_head * n * sizeof(float));
    if (!scores) goto fail;
    pc = (float *)kvs_cuda_scratch(c, KVS_SCR_PC, (size_t)tc * a->n_head * r * sizeof(float));
    if (!pc) goto fail;
    /* every KV head's keys once per call, whatever the number of chunks. Row-major K (n, dkv) =
     * C (n, r) · B_kᵀ; column-major: Kᶜ (dkv, n) = (B_kᶜ)ᵀ · Cᶜ */
    CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, dkv, n, r, &one, a->bk, r, a->c, r, &zero, K, dkv));
    KVS_LAUNCH(k_lat_keys_rope, kvs_grid((int64_t)n * dkv / 2, 256), 256, 0, c->stream)(
        K, a->pos, kb, a->freqs, (int64_t)n * dkv / 2, G, d, a->neox);
    KVS_LAUNCH_CHECK();
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        int tn = a->T - t0 < tc ? a->T - t0 : tc;
        int64_t rows = (int64_t)tn * a->n_head;
        const float *q = a->q + (size_t)t0 * dq;
        float *out = a->out + (size_t)t0 * dq;
        /* Head h = g*gq + hh: row-major S_h (tn, n) = Q_h (tn, d; ld dq) · K_gᵀ (K_g: n, d; ld dkv),
         * written at S + h*n with ld n_head*n so that S is (t, h, j). Column-major: S_hᶜ (n, tn) =
         * (K_gᶜ)ᵀ · Q_hᶜ. One call per in-group index hh, batched over g: K_g, Q_h and S_h step by
         * d, gq*d and gq*n from one KV head to the next. */
        for (int hh = 0; hh < gq; hh++)
            CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, tn, d, &one, K, dkv, d,
                                                   q + (size_t)hh * d, dq, (long long)gq * d, &zero,
                                                   scores + (size_t)hh * n, a->n_head * n, (long long)gq * n, G));
        KVS_LAUNCH(k_lat_softmax, kvs_grid(rows * 32, 256), 256, 0, c->stream)(scores, a->q_pos + t0, a->pos, rows,
                                                                                 a->n_head, n, a->scale, seen);
        KVS_LAUNCH_CHECK();
        /* Row-major PC (rows, r) = P (rows, n) · C (n, r); column-major: PCᶜ = Cᶜ · Pᶜ. */
        CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, r, (int)rows, n, &one, a->c, r, scores, n, &zero,
                                 pc, r));
        /* out_h (tn, d; ld dq) = PC_h (tn, r; ld n_head*r) · B_v[g]ᵀ (B_v[g]: d, r); column-major
         * out_hᶜ (d, tn) = (B_vᶜ[g])ᵀ · PC_hᶜ. Batched over g: B_v[g], PC_h and out_h step by d*r,
         * gq*r and gq*d. */
        for (int hh = 0; hh < gq; hh++)
            CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, d, tn, r, &one, a->bv, r,
                                                   (long long)d * r, pc + (size_t)hh * r, a->n_head * r,
                                                   (long long)gq * r, &zero, out + (size_t)hh * d, dq,
                                                   (long long)gq * d, G));
        if (vb) {
            KVS_LAUNCH(k_lat_out_bias, kvs_grid(rows * d, 256), 256, 0, c->stream)(out, vb, seen, rows * d,
                                                                                     a->n_head, gq, d);
            KVS_LAUNCH_CHECK();
        }
        if (mass) {
            /* the chunk's rows (t, h) of the queries in the mass window, in order */
            int64_t r0 = t0 >= mass_from ? 0 : (int64_t)(mass_from - t0) * a->n_head;
            if (r0 < rows && kvs_cuda_mass_add(c, scores + r0 * n, rows - r0, n, mass) != KVS_CUDA_OK) goto fail;
        }
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

int kvs_cuda_lat_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a)
{
    int64_t n = 0;
    int off = 0;
    float *C;
    int32_t *P;
    struct kvs_cuda_attn_latent d;
    KVS_REQUIRE(a->n_segs >= 0 && a->n_segs <= KVS_CUDA_LAT_ATTEND_MAX_SEGS, "lat_attend: %d segments", a->n_segs);
    KVS_REQUIRE(a->T >= 0 && a->n_head > 0 && a->n_head_kv > 0 && a->n_head % a->n_head_kv == 0 && a->head_dim > 0 &&
                    a->head_dim % 2 == 0 && a->head_dim <= KVS_CUDA_MAX_HEAD_DIM && a->rank > 0 &&
                    a->n_head_kv <= 65535,
                "lat_attend: bad shape (T %d, heads %d/%d, dim %d, rank %d)", a->T, a->n_head, a->n_head_kv,
                a->head_dim, a->rank);
    for (int s = 0; s < a->n_segs; s++) {
        KVS_REQUIRE(a->n[s] >= 0, "lat_attend: segment %d has %d rows", s, a->n[s]);
        n += a->n[s];
    }
    KVS_REQUIRE(n <= 0x7fffffff, "lat_attend: %lld rows", (long long)n);
    if (a->mass && n) CUDA_CHECK(cudaMemsetAsync(a->mass, 0, (size_t)n * sizeof(float), c->stream));
    if (a->T == 0) return KVS_CUDA_OK;
    if (n == 0) {
        CUDA_CHECK(cudaMemsetAsync(a->out, 0, (size_t)a->T * a->n_head * a->head_dim * sizeof(float), c->stream));
        return KVS_CUDA_OK;
    }
    if (la_fused_ok(c, a)) return lat_attend_fused(c, a, (int)n);
    /* prefill chunks (or no 16-bit B_k): rows gathered to fp32 once, then the GEMM path */
    C = (float *)kvs_cuda_scratch(c, KVS_SCR_LAT_C, (size_t)n * a->rank * sizeof(float));
    if (!C) goto fail;
    P = (int32_t *)kvs_cuda_scratch(c, KVS_SCR_LAT_POS, (size_t)n * sizeof(int32_t));
    if (!P) goto fail;
    for (int s = 0; s < a->n_segs; s++) {
        if (a->n[s] > 0) {
            KVS_LAUNCH(k_lat_gather_f32, kvs_grid((int64_t)a->n[s] * a->rank, 256), 256, 0, c->stream)(
                (const __half *)a->rows[s], a->pos[s], a->n[s], a->rank, off, C, P);
            KVS_LAUNCH_CHECK();
        }
        off += a->n[s];
    }
    d.T = a->T;
    d.n = (int)n;
    d.n_head = a->n_head;
    d.n_head_kv = a->n_head_kv;
    d.head_dim = a->head_dim;
    d.rank = a->rank;
    d.q = a->q;
    d.q_pos = a->q_pos;
    d.c = C;
    d.pos = P;
    d.bk = a->bk;
    d.bv = a->bv;
    d.freqs = a->freqs;
    d.neox = a->neox;
    d.scale = a->scale;
    d.out = a->out;
    return kvs_cuda_latent_attend_scored(c, &d, a->bk_bias, a->bv_bias, a->mass, a->mass_from);
fail:
    return KVS_CUDA_FAIL;
}
