/* Quantized K/V pool kernels (DESIGN.md §5 `quant`, §7; issue 9): KIVI packing of a layer's oldest
 * fp16 rows into a block (keys per channel, values per token), attention over packed blocks and the
 * fp16 tier (rows decoded to fp16, then kvs_cuda_attn_kv16) with the attention mass added to the
 * snapkv score by position, eviction that re-encodes blocks losing tokens, and the pooled eviction
 * scores. Codec: quant_codec.cuh (same bytes as the CPU twin engine/cpu/kv_quant.c). Depends on CUDA only. */
#include "internal.cuh"
#include "quant_codec.cuh"

/* x (n) fp32 = the fp16 rows h (n), twice (keys and values). */
__global__ void k_kvq_widen(const __half *hk, const __half *hv, int64_t n, float *xk, float *xv)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    xk[i] = __half2float(hk[i]);
    xv[i] = __half2float(hv[i]);
}

/* Channel c of a key block: one thread per channel. */
__global__ void k_kvq_pack_keys(const float *xk, int nt, int dkv, int bits, uint8_t *kdst)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dkv) return;
    kvs_dev_qcol_encode_channel(xk, (uint32_t)nt, (uint32_t)dkv, (uint32_t)c, (uint32_t)bits, kdst);
}

/* Value row t of a block: one thread per (token, channel group). */
__global__ void k_kvq_pack_values(const float *xv, int nt, int dkv, int bits, int group, int vrow, uint8_t *vdst)
{
    int ng = (dkv + group - 1) / group;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nt * ng) return;
    int t = i / ng, g = i % ng;
    int len = dkv - g * group < group ? dkv - g * group : group;
    uint8_t *dst = vdst + (size_t)t * vrow + (size_t)g * (4 + (group * bits + 7) / 8);
    kvs_dev_qgroup_encode(xv + (size_t)t * dkv + (size_t)g * group, 1, (uint32_t)len, (uint32_t)bits, dst, dst + 4);
}

int kvs_cuda_kvq_quantize(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_quantize *a)
{
    int64_t n;
    float *x;
    int ng;
    KVS_REQUIRE(a->dkv > 0 && a->group > 0 && (a->bits == 2 || a->bits == 4 || a->bits == 8) &&
                    a->vrow == (int)kvs_dev_qrow_bytes((uint32_t)a->dkv, (uint32_t)a->bits, (uint32_t)a->group),
                "kvq_quantize: bad format (dkv %d, bits %d, group %d, row %d)", a->dkv, a->bits, a->group, a->vrow);
    n = (int64_t)a->group * a->dkv;
    x = (float *)kvs_cuda_scratch(c, KVS_SCR_KVQ_ROWS, 2 * (size_t)n * sizeof(float));
    if (!x) goto fail;
    KVS_LAUNCH(k_kvq_widen, kvs_grid(n, 256), 256, 0, c->stream)((const __half *)a->k16, (const __half *)a->v16, n, x,
                                                                  x + n);
    KVS_LAUNCH_CHECK();
    KVS_LAUNCH(k_kvq_pack_keys, kvs_grid(a->dkv, 64), 64, 0, c->stream)(x, a->group, a->dkv, a->bits, a->kdst);
    KVS_LAUNCH_CHECK();
    ng = (a->dkv + a->group - 1) / a->group;
    KVS_LAUNCH(k_kvq_pack_values, kvs_grid((int64_t)a->group * ng, 64), 64, 0, c->stream)(x + n, a->group, a->dkv,
                                                                                          a->bits, a->group, a->vrow,
                                                                                          a->vdst);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Block b's tokens to fp16 rows (the CPU twin's decode, then IEEE round to nearest even, saturating
 * at ±65504 like a store: rows stored at ±65504 can decode a little beyond; uncounted, as they were
 * counted when stored), one CUDA block per packed block. */
__global__ void k_kvq_unpack(const int32_t *blk, const uint8_t *kq, const uint8_t *vq, const int32_t *pq, int dkv,
                             int bits, int group, int vrow, __half *k, __half *v, int32_t *pos)
{
    int b = blockIdx.x;
    int nt = blk[3 * b], t0 = blk[3 * b + 2];
    const uint8_t *kb = kq + blk[3 * b + 1];
    unsigned long long over = 0;
    for (int64_t e = threadIdx.x; e < (int64_t)nt * dkv; e += blockDim.x) {
        int t = (int)(e / dkv), ch = (int)(e % dkv);
        size_t r = (size_t)(t0 + t) * dkv + ch;
        k[r] = kvs_dev_f2h_sat(kvs_dev_qcol_get(kb, (uint32_t)nt, (uint32_t)t, (uint32_t)ch, (uint32_t)bits), &over);
        v[r] = kvs_dev_f2h_sat(kvs_dev_qrow_get(vq + (size_t)(t0 + t) * vrow, (uint32_t)ch, (uint32_t)bits,
                                                (uint32_t)group), &over);
        if (ch == 0) pos[t0 + t] = pq[t0 + t];
    }
}

/* score[pos[j]] += mass[j]: positions are distinct within a layer, so no two threads meet. */
__global__ void k_kvq_score_add(float *score, const int32_t *pos, const float *mass, int n)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) score[pos[j]] += mass[j];
}

int kvs_cuda_kvq_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_attend *a)
{
    const struct kvs_cuda_kvq *L = &a->L;
    struct kvs_cuda_attn_kv16 d;
    int n;
    size_t rows, kb;
    char *g;
    float *mass = NULL;
    KVS_REQUIRE(L->dkv > 0 && L->tq >= 0 && L->n16 >= 0 && L->nblk >= 0 && a->n_head_kv * a->head_dim == L->dkv &&
                    (L->bits == 2 || L->bits == 4 || L->bits == 8) && L->group > 0,
                "kvq_attend: bad shape (dkv %d, packed %d, fp16 %d, heads %d x %d)", L->dkv, L->tq, L->n16,
                a->n_head_kv, a->head_dim);
    n = L->tq + L->n16;
    memset(&d, 0, sizeof d);
    d.T = a->T;
    d.n = n;
    d.n_head = a->n_head;
    d.n_head_kv = a->n_head_kv;
    d.head_dim = a->head_dim;
    d.q = a->q;
    d.q_pos = a->q_pos;
    d.scale = 1.0f / sqrtf((float)a->head_dim);
    d.out = a->out;
    d.k = L->k16;
    d.v = L->v16;
    d.pos = L->p16;
    if (a->score && n) {
        mass = (float *)kvs_cuda_scratch(c, KVS_SCR_KVQ_MASS, (size_t)n * sizeof(float));
        if (!mass) goto fail;
        d.mass = mass;
    }
    if (L->tq) { /* packed rows first, then the fp16 tier, into scratch */
        kb = (size_t)n * L->dkv * sizeof(uint16_t);
        rows = 2 * kb + (size_t)n * sizeof(int32_t);
        g = (char *)kvs_cuda_scratch(c, KVS_SCR_KVQ_ROWS, rows);
        if (!g) goto fail;
        KVS_LAUNCH(k_kvq_unpack, (unsigned)L->nblk, 256, 0, c->stream)(L->blk, L->kq, L->vq, L->pq, L->dkv, L->bits,
                                                                      L->group, L->vrow, (__half *)g,
                                                                      (__half *)(g + kb), (int32_t *)(g + 2 * kb));
        KVS_LAUNCH_CHECK();
        if (L->n16) {
            size_t off = (size_t)L->tq * L->dkv * sizeof(uint16_t), b16 = (size_t)L->n16 * L->dkv * sizeof(uint16_t);
            CUDA_CHECK(cudaMemcpyAsync(g + off, L->k16, b16, cudaMemcpyDeviceToDevice, c->stream));
            CUDA_CHECK(cudaMemcpyAsync(g + kb + off, L->v16, b16, cudaMemcpyDeviceToDevice, c->stream));
            CUDA_CHECK(cudaMemcpyAsync(g + 2 * kb + (size_t)L->tq * sizeof(int32_t), L->p16,
                                       (size_t)L->n16 * sizeof(int32_t), cudaMemcpyDeviceToDevice, c->stream));
        }
        d.k = (const uint16_t *)g;
        d.v = (const uint16_t *)(g + kb);
        d.pos = (const int32_t *)(g + 2 * kb);
    }
    if (kvs_cuda_attn_kv16(c, &d) != KVS_CUDA_OK) goto fail;
    if (mass && a->T) {
        KVS_LAUNCH(k_kvq_score_add, kvs_grid(n, 256), 256, 0, c->stream)(a->score, d.pos, mass, n);
        KVS_LAUNCH_CHECK();
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Kept token r's keys decoded to fp32 (x, (tq_new, dkv)), one CUDA block per token. */
__global__ void k_kvq_dec_kept(const int32_t *src, const uint8_t *kq, int dkv, int bits, float *x)
{
    int r = blockIdx.x;
    int old = src[4 * r], nt = src[4 * r + 1], koff = src[4 * r + 2], t0 = src[4 * r + 3];
    for (int ch = threadIdx.x; ch < dkv; ch += blockDim.x)
        x[(size_t)r * dkv + ch] = kvs_dev_qcol_get(kq + koff, (uint32_t)nt, (uint32_t)(old - t0), (uint32_t)ch,
                                                   (uint32_t)bits);
}

/* New block b's keys, one thread per channel: a whole block is copied byte for byte, one that lost
 * tokens re-encoded from x. */
__global__ void k_kvq_rekey(const int32_t *plan, int nb, const uint8_t *kq, const float *x, int dkv, int bits,
                            uint8_t *nk)
{
    int b = blockIdx.y, ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb || ch >= dkv) return;
    const int32_t *pl = plan + 6 * b;
    int nt = pl[0], koff = pl[1], kept = pl[3], nkoff = pl[4], nt0 = pl[5];
    if (kept == nt) {
        int per = 4 + (nt * bits + 7) / 8;
        const uint8_t *s = kq + koff + (size_t)ch * per;
        uint8_t *d = nk + nkoff + (size_t)ch * per;
        for (int i = 0; i < per; i++) d[i] = s[i];
    } else {
        kvs_dev_qcol_encode_channel(x + (size_t)nt0 * dkv, (uint32_t)kept, (uint32_t)dkv, (uint32_t)ch, (uint32_t)bits,
                                    nk + nkoff);
    }
}

/* Kept token r's value row and position move to row r, one CUDA block per token. */
__global__ void k_kvq_move_rows(const int32_t *src, const uint8_t *vq, const int32_t *pq, int vrow, uint8_t *nv,
                                int32_t *np)
{
    int r = blockIdx.x, old = src[4 * r];
    for (int i = threadIdx.x; i < vrow; i += blockDim.x) nv[(size_t)r * vrow + i] = vq[(size_t)old * vrow + i];
    if (threadIdx.x == 0) np[r] = pq[old];
}

int kvs_cuda_kvq_compact(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_compact *a)
{
    float *x;
    char *g;
    size_t voff, poff, total;
    KVS_REQUIRE(a->dkv > 0 && a->nb_new >= 0 && a->tq_new >= 0 && a->nb_new <= 65535 &&
                    (a->bits == 2 || a->bits == 4 || a->bits == 8),
                "kvq_compact: bad shape (dkv %d, blocks %d, tokens %d)", a->dkv, a->nb_new, a->tq_new);
    if (!a->tq_new) return KVS_CUDA_OK;
    x = (float *)kvs_cuda_scratch(c, KVS_SCR_KVQ_ROWS, (size_t)a->tq_new * a->dkv * sizeof(float));
    voff = (a->kq_new + 15) / 16 * 16;
    poff = (voff + (size_t)a->tq_new * a->vrow + 15) / 16 * 16;
    total = poff + (size_t)a->tq_new * sizeof(int32_t);
    g = (char *)kvs_cuda_scratch(c, KVS_SCR_KVQ_MASS, total);
    if (!x || !g) goto fail;
    KVS_LAUNCH(k_kvq_dec_kept, (unsigned)a->tq_new, 64, 0, c->stream)(a->src, a->kq, a->dkv, a->bits, x);
    KVS_LAUNCH_CHECK();
    {
        dim3 grid(kvs_grid(a->dkv, 64), (unsigned)a->nb_new);
        KVS_LAUNCH(k_kvq_rekey, grid, 64, 0, c->stream)(a->plan, a->nb_new, a->kq, x, a->dkv, a->bits, (uint8_t *)g);
        KVS_LAUNCH_CHECK();
    }
    KVS_LAUNCH(k_kvq_move_rows, (unsigned)a->tq_new, 64, 0, c->stream)(a->src, a->vq, a->pq, a->vrow,
                                                                      (uint8_t *)(g + voff), (int32_t *)(g + poff));
    KVS_LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(a->kq, g, a->kq_new, cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpyAsync(a->vq, g + voff, (size_t)a->tq_new * a->vrow, cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpyAsync(a->pq, g + poff, (size_t)a->tq_new * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                               c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* present[pos[j]] = 1 for the N rows of one tier. */
__global__ void k_kvq_mark(const int32_t *pos, int n, int n_ctx, uint8_t *present)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n && pos[j] >= 0 && pos[j] < n_ctx) present[pos[j]] = 1;
}

/* pooled[i] = max of score over [i - kernel/2, i + kernel/2] clipped to [0, n_ctx), -inf where no
 * row sits at i (kvs_cpu_kvq_scores). */
__global__ void k_kvq_pool(const float *score, int n_ctx, int kernel, const uint8_t *present, float *pooled)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_ctx) return;
    int h = kernel > 1 ? kernel / 2 : 0;
    int lo = i - h < 0 ? 0 : i - h, hi = i + h >= n_ctx ? n_ctx - 1 : i + h;
    float m = -INFINITY;
    for (int j = lo; j <= hi; j++) m = score[j] > m ? score[j] : m;
    pooled[i] = present[i] ? m : -INFINITY;
}

int kvs_cuda_kvq_scores(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_scores *a)
{
    uint8_t *present;
    KVS_REQUIRE(a->n_ctx >= 0 && a->n_ctx <= a->n_score && a->tq >= 0 && a->n16 >= 0,
                "kvq_scores: bad shape (context %d, scores %d)", a->n_ctx, a->n_score);
    if (a->pooled && a->n_ctx) {
        present = (uint8_t *)kvs_cuda_scratch(c, KVS_SCR_KVQ_MASS, (size_t)a->n_ctx);
        if (!present) goto fail;
        CUDA_CHECK(cudaMemsetAsync(present, 0, (size_t)a->n_ctx, c->stream));
        if (a->tq) {
            KVS_LAUNCH(k_kvq_mark, kvs_grid(a->tq, 256), 256, 0, c->stream)(a->pq, a->tq, a->n_ctx, present);
            KVS_LAUNCH_CHECK();
        }
        if (a->n16) {
            KVS_LAUNCH(k_kvq_mark, kvs_grid(a->n16, 256), 256, 0, c->stream)(a->p16, a->n16, a->n_ctx, present);
            KVS_LAUNCH_CHECK();
        }
        KVS_LAUNCH(k_kvq_pool, kvs_grid(a->n_ctx, 256), 256, 0, c->stream)(a->score, a->n_ctx, a->kernel, present,
                                                                           a->pooled);
        KVS_LAUNCH_CHECK();
    }
    if (a->n_score) CUDA_CHECK(cudaMemsetAsync(a->score, 0, (size_t)a->n_score * sizeof(float), c->stream));
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
