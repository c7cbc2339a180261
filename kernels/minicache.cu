/* MiniCache kernels (DESIGN.md §5 `minicache`, §7; its layer pairs in device memory): the angular
 * distance of two layers' fp16 K/V rows per token, their SLERP merge into shared unit directions
 * with each layer's norms, and attention over a layer's unmerged rows plus the pair's merged rows
 * rebuilt with that layer's norms. The sums run in one thread in the CPU twin's order (fp32 values,
 * double accumulators), so scores and merged rows match engine/cpu/minicache.c to the last bits
 * of the math library. Depends on CUDA only. */
#include "internal.cuh"

#define MC_PI 3.14159265358979323846

/* |x| of N fp16 values as the CPU twin computes it: fp32 values, a double sum, rounded to fp32. */
static __device__ float mc_norm(const __half *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) {
        float f = __half2float(x[i]);
        s += (double)f * f;
    }
    return (float)sqrt(s);
}

/* Element I of x / |x| (0 for a zero vector). */
static __device__ float mc_unit(const __half *x, int i, float nr)
{
    float f = __half2float(x[i]);
    return nr > 0 ? f / nr : 0.0f;
}

static __device__ double mc_dot(const __half *a, float na, const __half *b, float nb, int n)
{
    double dot = 0;
    for (int i = 0; i < n; i++) dot += (double)mc_unit(a, i, na) * mc_unit(b, i, nb);
    return dot;
}

/* One thread per scored row: distance averaged over keys' then values' heads, and the cosines. */
__global__ void k_mc_score(struct kvs_cuda_mc_pair a)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= a.m) return;
    int d = a.d, nkv = a.nkv, dkv = nkv * d;
    size_t i = (size_t)a.idx[r];
    double acc = 0;
    for (int kv = 0; kv < 2; kv++)
        for (int h = 0; h < nkv; h++) {
            const __half *xa = (const __half *)(kv ? a.va : a.ka) + i * dkv + (size_t)h * d;
            const __half *xb = (const __half *)(kv ? a.vb : a.kb) + i * dkv + (size_t)h * d;
            double dot = mc_dot(xa, mc_norm(xa, d), xb, mc_norm(xb, d), d);
            acc += acos(dot > 1 ? 1 : dot < -1 ? -1 : dot) / MC_PI;
            if (a.dots) a.dots[(size_t)r * 2 * nkv + kv * nkv + h] = dot;
        }
    a.dist[r] = (float)(acc / (2 * nkv));
}

int kvs_cuda_mc_score(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_pair *a)
{
    KVS_REQUIRE(a->nkv > 0 && a->d > 0 && a->m >= 0, "mc_score: bad shape (%d heads of %d, %d rows)", a->nkv, a->d,
                a->m);
    if (!a->m) return KVS_CUDA_OK;
    KVS_LAUNCH(k_mc_score, kvs_grid(a->m, 64), 64, 0, c->stream)(*a);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Element X of the SLERP of unit directions ua, ub at t (the linear blend when they are parallel). */
static __device__ float mc_slerp_at(const __half *xa, float na, const __half *xb, float nb, int x, bool lin, float t,
                                    double wa, double wb)
{
    float ua = mc_unit(xa, x, na), ub = mc_unit(xb, x, nb);
    return lin ? (1 - t) * ua + t * ub : (float)(wa * ua + wb * ub);
}

/* One thread per merged (row, K or V, head): directions, renormalised, and both norms, saturating
 * at ±65504 (a norm of fp16 values can exceed it) and counting what it clamped into *CLAMPED. */
__global__ void k_mc_merge(struct kvs_cuda_mc_pair a, unsigned long long *clamped)
{
    int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int d = a.d, nkv = a.nkv, dkv = nkv * d, heads = 2 * nkv;
    if (g >= (int64_t)(a.m - a.keep) * heads) return;
    int j = (int)(g / heads), kvh = (int)(g % heads), kv = kvh / nkv, h = kvh % nkv;
    int r = a.keep + j; /* the first KEEP rows of idx are retained */
    size_t i = (size_t)a.idx[r];
    const __half *xa = (const __half *)(kv ? a.va : a.ka) + i * dkv + (size_t)h * d;
    const __half *xb = (const __half *)(kv ? a.vb : a.kb) + i * dkv + (size_t)h * d;
    float na = mc_norm(xa, d), nb = mc_norm(xb, d), t = a.t;
    double dot = mc_dot(xa, na, xb, nb, d);
    dot = dot > 1 ? 1 : dot < -1 ? -1 : dot;
    double om = acos(dot), so = sin(om), wa = 0, wb = 0;
    bool lin = so < 1e-6;
    if (!lin) {
        wa = sin((1 - t) * om) / so;
        wb = sin(t * om) / so;
    }
    double s = 0;
    for (int x = 0; x < d; x++) {
        float e = mc_slerp_at(xa, na, xb, nb, x, lin, t, wa, wb);
        s += (double)e * e;
    }
    float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    size_t row = (size_t)a.row0 + (size_t)j;
    __half *dst = (__half *)(kv ? a.ev : a.ek) + row * dkv + (size_t)h * d;
    unsigned long long over = 0;
    for (int x = 0; x < d; x++) dst[x] = kvs_dev_f2h_sat(mc_slerp_at(xa, na, xb, nb, x, lin, t, wa, wb) * inv, &over);
    __half *nr = (__half *)a.nrm + row * 4 * nkv;
    nr[(2 * kv) * nkv + h] = kvs_dev_f2h_sat(na, &over);
    nr[(2 * kv + 1) * nkv + h] = kvs_dev_f2h_sat(nb, &over);
    if (over) atomicAdd(clamped, over);
    if (kvh == 0) a.pos[row] = a.pos_a[i];
}

int kvs_cuda_mc_merge(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_pair *a)
{
    int64_t count;
    KVS_REQUIRE(a->nkv > 0 && a->d > 0 && a->keep >= 0 && a->keep <= a->m && a->row0 >= 0,
                "mc_merge: bad shape (%d heads of %d, %d rows, %d kept, at %d)", a->nkv, a->d, a->m, a->keep, a->row0);
    count = (int64_t)(a->m - a->keep) * 2 * a->nkv;
    if (!count) return KVS_CUDA_OK;
    KVS_LAUNCH(k_mc_merge, kvs_grid(count, 64), 64, 0, c->stream)(*a, c->cache_clamped);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Merged row i as SIDE's keys and values: half(direction · that layer's norm), one block per row,
 * saturating as the CPU twin's rebuild does (uncounted: the norms were counted when merged). */
__global__ void k_mc_rebuild(const __half *ek, const __half *ev, const __half *nrm, const int32_t *mpos, int nkv,
                             int d, int side, __half *k, __half *v, int32_t *pos)
{
    int i = blockIdx.x, dkv = nkv * d;
    const __half *nr = nrm + (size_t)i * 4 * nkv;
    size_t off = (size_t)i * dkv;
    unsigned long long over = 0;
    for (int x = threadIdx.x; x < dkv; x += blockDim.x) {
        int h = x / d;
        k[off + x] = kvs_dev_f2h_sat(__half2float(ek[off + x]) * __half2float(nr[side * nkv + h]), &over);
        v[off + x] = kvs_dev_f2h_sat(__half2float(ev[off + x]) * __half2float(nr[(2 + side) * nkv + h]), &over);
    }
    if (threadIdx.x == 0) pos[i] = mpos[i];
}

int kvs_cuda_mc_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_attend *a)
{
    struct kvs_cuda_attn_kv16 at;
    int64_t all;
    size_t dkv, rows;
    char *g;
    KVS_REQUIRE(a->T >= 0 && a->n >= 0 && a->nm >= 0 && a->n_head_kv > 0 && a->head_dim > 0 &&
                    (a->side == 0 || a->side == 1),
                "mc_attend: bad shape (T %d, %d + %d rows, %d heads of %d, side %d)", a->T, a->n, a->nm, a->n_head_kv,
                a->head_dim, a->side);
    memset(&at, 0, sizeof at);
    at.T = a->T;
    at.n_head = a->n_head;
    at.n_head_kv = a->n_head_kv;
    at.head_dim = a->head_dim;
    at.q = a->q;
    at.q_pos = a->q_pos;
    at.scale = 1.0f / sqrtf((float)a->head_dim);
    at.out = a->out;
    at.n = a->n;
    at.k = a->k;
    at.v = a->v;
    at.pos = a->pos;
    if (a->nm && a->T) {
        /* the unmerged rows, then the merged ones rebuilt as this layer's: one fp16 cache */
        all = (int64_t)a->n + a->nm;
        KVS_REQUIRE(all <= 0x7fffffff, "mc_attend: %lld rows", (long long)all);
        dkv = (size_t)a->n_head_kv * a->head_dim;
        rows = (size_t)all * dkv * sizeof(uint16_t);
        g = (char *)kvs_cuda_scratch(c, KVS_SCR_MC_KV, 2 * rows + (size_t)all * sizeof(int32_t));
        if (!g) goto fail;
        if (a->n) {
            CUDA_CHECK(cudaMemcpyAsync(g, a->k, (size_t)a->n * dkv * sizeof(uint16_t), cudaMemcpyDeviceToDevice,
                                       c->stream));
            CUDA_CHECK(cudaMemcpyAsync(g + rows, a->v, (size_t)a->n * dkv * sizeof(uint16_t),
                                       cudaMemcpyDeviceToDevice, c->stream));
            CUDA_CHECK(cudaMemcpyAsync(g + 2 * rows, a->pos, (size_t)a->n * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                       c->stream));
        }
        KVS_LAUNCH(k_mc_rebuild, (unsigned)a->nm, 128, 0, c->stream)(
            (const __half *)a->ek, (const __half *)a->ev, (const __half *)a->nrm, a->mpos, a->n_head_kv, a->head_dim,
            a->side, (__half *)g + (size_t)a->n * dkv, (__half *)(g + rows) + (size_t)a->n * dkv,
            (int32_t *)(g + 2 * rows) + a->n);
        KVS_LAUNCH_CHECK();
        at.n = (int)all;
        at.k = (const uint16_t *)g;
        at.v = (const uint16_t *)(g + rows);
        at.pos = (const int32_t *)(g + 2 * rows);
    }
    return kvs_cuda_attn_kv16(c, &at);
fail:
    return KVS_CUDA_FAIL;
}
