/* CommonKV latent segment kernels (DESIGN.md §4, §7; the private and shared latent pools in device
 * memory): fp32 -> fp16 stores of new rows (saturating at ±65504, counted) and fp16 -> fp32 loads
 * (rows moving to packed segments), compaction (eviction, or the rows a merge moved out) by a
 * gather through scratch, the merge of one token's per-layer latents into a shared row, the cosine
 * scores between a segment's arrays that drive merging, and the attention mass added to eviction
 * scores by position. Packed rows (quantized latents, the row codec of quant_codec.cuh) are stored,
 * read, compacted and merged here too, byte for byte as the CPU twin. The CPU twin is
 * engine/cpu/latent_pool.c. Depends on CUDA only. */
#include "internal.cuh"
#include "quant_codec.cuh"

/* rows[row0*width + i] = half(x[i]), one thread per element (grid-stride), saturating at ±65504
 * and counting what it clamped into *CLAMPED. */
__global__ void k_lat_store(__half *rows, int width, int row0, int64_t count, const float *x,
                            unsigned long long *clamped)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    size_t off = (size_t)row0 * width;
    unsigned long long over = 0;
    for (; i < count; i += stride) rows[off + i] = kvs_dev_f2h_sat(x[i], &over);
    if (over) atomicAdd(clamped, over);
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
    KVS_LAUNCH(k_lat_store, grid, 256, 0, c->stream)((__half *)rows, width, row0, count, x,
                                                         c->cache_clamped);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* x[i] = float(rows[row0*width + i]), one thread per element (grid-stride): fp16 widens exactly. */
__global__ void k_lat_load(const __half *rows, int width, int row0, int64_t count, float *x)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    size_t off = (size_t)row0 * width;
    for (; i < count; i += stride) x[i] = __half2float(rows[off + i]);
}

int kvs_cuda_lat_load(struct kvs_cuda_ctx *c, const uint16_t *rows, int width, int row0, int n, float *x)
{
    int64_t count;
    unsigned grid;
    KVS_REQUIRE(width > 0 && row0 >= 0 && n >= 0, "lat_load: bad shape (width %d, row %d, n %d)", width, row0, n);
    count = (int64_t)n * width;
    if (!count) return KVS_CUDA_OK;
    grid = kvs_grid(count, 256);
    if (grid > 65535u * 8u) grid = 65535u * 8u;
    KVS_LAUNCH(k_lat_load, grid, 256, 0, c->stream)((const __half *)rows, width, row0, count, x);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* score[pos[i]] += mass[i] for the N rows of one segment; rows outside [0, n_score) are skipped
 * (the launcher checked them). One thread per row: the positions are distinct, so no two threads
 * touch one score and the sum is the twin's, bit for bit. */
__global__ void k_lat_mass_add(const int32_t *pos, int n, const float *mass, float *score, int n_score)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int32_t p = pos[i];
    if (p >= 0 && p < n_score) score[p] += mass[i];
}

int kvs_cuda_lat_mass_add(struct kvs_cuda_ctx *c, const int32_t *const *pos, const int *n, int n_segs,
                          const float *mass, float *score, int n_score)
{
    KVS_REQUIRE(n_segs >= 0 && n_segs <= KVS_CUDA_LAT_ATTEND_MAX_SEGS && n_score >= 0,
                "lat_mass_add: %d segments, %d scores", n_segs, n_score);
    for (int s = 0, off = 0; s < n_segs; off += n[s], s++) {
        KVS_REQUIRE(n[s] >= 0, "lat_mass_add: segment %d has %d rows", s, n[s]);
        if (!n[s]) continue;
        /* one segment after the other, in order: a kernel per segment keeps the twin's order */
        KVS_LAUNCH(k_lat_mass_add, kvs_grid(n[s], 256), 256, 0, c->stream)(pos[s], n[s], mass + off, score, n_score);
        KVS_LAUNCH_CHECK();
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Row i of g = row src[i] of rows, RB bytes each (and its position into gp when given): one block
 * per kept row. fp16 and packed rows alike. */
__global__ void k_lat_gather(const uint8_t *rows, const int32_t *pos, int rb, const int32_t *src, int n_keep,
                             uint8_t *g, int32_t *gp)
{
    int r = blockIdx.x;
    if (r >= n_keep) return;
    size_t from = (size_t)src[r] * rb, to = (size_t)r * rb;
    for (int i = threadIdx.x; i < rb; i += blockDim.x) g[to + i] = rows[from + i];
    if (gp && threadIdx.x == 0) gp[r] = pos[src[r]];
}

/* Keeps rows SRC (n_keep, in order) of the N_ARR arrays of RB-byte rows and their positions. Rows
 * move down in place; an in-place gather would race (a row read by one block is written by
 * another), so each array is gathered to scratch and copied back. */
static int lat_compact_rows(struct kvs_cuda_ctx *c, uint8_t *const *rows, int n_arr, int32_t *pos, int rb,
                            const int32_t *src, int n_keep)
{
    size_t bytes = ((size_t)n_keep * rb + 3) & ~(size_t)3; /* the positions after the rows, aligned */
    char *g = (char *)kvs_cuda_scratch(c, KVS_SCR_COMPACT, bytes + (size_t)n_keep * sizeof(int32_t));
    if (!g) goto fail;
    for (int a = 0; a < n_arr; a++) {
        int32_t *gp = a == 0 ? (int32_t *)(g + bytes) : NULL;
        KVS_LAUNCH(k_lat_gather, (unsigned)n_keep, 128, 0, c->stream)(rows[a], pos, rb, src, n_keep, (uint8_t *)g, gp);
        KVS_LAUNCH_CHECK();
        CUDA_CHECK(cudaMemcpyAsync(rows[a], g, (size_t)n_keep * rb, cudaMemcpyDeviceToDevice, c->stream));
        if (a == 0)
            CUDA_CHECK(cudaMemcpyAsync(pos, g + bytes, (size_t)n_keep * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                       c->stream));
    }
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

int kvs_cuda_lat_compact(struct kvs_cuda_ctx *c, uint16_t *const *rows, int n_arr, int32_t *pos, int width,
                         const int32_t *src, int n_keep)
{
    KVS_REQUIRE(width > 0 && n_arr > 0 && n_arr <= KVS_CUDA_LAT_MAX_ARR && n_keep >= 0,
                "lat_compact: bad shape (width %d, %d arrays, keep %d)", width, n_arr, n_keep);
    if (!n_keep) return KVS_CUDA_OK;
    return lat_compact_rows(c, (uint8_t *const *)rows, n_arr, pos, 2 * width, src, n_keep);
fail:
    return KVS_CUDA_FAIL;
}

/* One block per merged row: dst[row0 + i] = half(Σ_a w[a] · src[a][idx[i]]), summed in layer order
 * with fused multiply-adds (the CPU twin's order and rounding), saturating at ±65504 (counted into
 * *CLAMPED), and its position. */
__global__ void k_lat_merge(struct kvs_cuda_lat_merge a, unsigned long long *clamped)
{
    int r = blockIdx.x;
    if (r >= a.m) return;
    int from = a.idx[r];
    size_t to = (size_t)(a.row0 + r) * a.width;
    unsigned long long over = 0;
    for (int x = threadIdx.x; x < a.width; x += blockDim.x) {
        float acc = 0.0f;
        for (int l = 0; l < a.n_arr; l++)
            acc = fmaf(a.w[l], __half2float(((const __half *)a.src[l])[(size_t)from * a.width + x]), acc);
        ((__half *)a.dst)[to + x] = kvs_dev_f2h_sat(acc, &over);
    }
    if (over) atomicAdd(clamped, over);
    if (threadIdx.x == 0) a.dst_pos[a.row0 + r] = a.src_pos[from];
}

int kvs_cuda_lat_merge(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_merge *a)
{
    KVS_REQUIRE(a->width > 0 && a->n_arr > 0 && a->n_arr <= KVS_CUDA_LAT_MAX_ARR && a->m >= 0 && a->row0 >= 0,
                "lat_merge: bad shape (width %d, %d arrays, %d rows at %d)", a->width, a->n_arr, a->m, a->row0);
    if (!a->m) return KVS_CUDA_OK;
    KVS_LAUNCH(k_lat_merge, (unsigned)a->m, 128, 0, c->stream)(*a, c->cache_clamped);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* ---- packed rows (the row codec of quant_codec.cuh; twins: the KVS_LAT_QROW paths of
 * engine/cpu/latent_pool.c, same bytes) ---- */

static int qrow_groups(const struct kvs_cuda_qrow *f) { return (f->width + f->group - 1) / f->group; }

static bool qrow_ok(const struct kvs_cuda_qrow *f)
{
    return f->width > 0 && f->group > 0 && (f->bits == 2 || f->bits == 4 || f->bits == 8) &&
           (uint32_t)f->row_bytes == kvs_dev_qrow_bytes((uint32_t)f->width, (uint32_t)f->bits, (uint32_t)f->group);
}

/* One thread per (row t, group g): group g of x's row t encoded into row row0 + t of ROWS (every
 * group but the last is full, so its bytes start at g times a full group's). */
__global__ void k_lat_qstore(struct kvs_cuda_qrow f, uint8_t *rows, int row0, int T, int ng, const float *x)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)T * ng) return;
    int t = (int)(i / ng), g = (int)(i % ng);
    int j0 = g * f.group, len = f.width - j0 < f.group ? f.width - j0 : f.group;
    uint8_t *dst = rows + (size_t)(row0 + t) * f.row_bytes + (size_t)g * (4 + (f.group * f.bits + 7) / 8);
    kvs_dev_qgroup_encode(x + (size_t)t * f.width + j0, 1, (uint32_t)len, (uint32_t)f.bits, dst, dst + 4);
}

int kvs_cuda_lat_qstore(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, uint8_t *rows, int row0, int T,
                        const float *x)
{
    int ng;
    KVS_REQUIRE(qrow_ok(f) && row0 >= 0 && T >= 0, "lat_qstore: bad format or shape (width %d, %d bytes, %d bits, "
                "groups of %d, row %d, T %d)", f->width, f->row_bytes, f->bits, f->group, row0, T);
    if (!T) return KVS_CUDA_OK;
    ng = qrow_groups(f);
    KVS_LAUNCH(k_lat_qstore, kvs_grid((int64_t)T * ng, 128), 128, 0, c->stream)(*f, rows, row0, T, ng, x);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* out[i] = element i % width of row row0 + i / width, decoded (fp32 into O32, else fp16 into O16,
 * saturating at ±65504 as the CPU's fp16 staging of packed rows does; uncounted: a decode, not a
 * store): one thread per element, grid-stride. */
__global__ void k_lat_qload(struct kvs_cuda_qrow f, const uint8_t *rows, int row0, int64_t count, float *o32,
                            __half *o16)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    unsigned long long over = 0;
    for (; i < count; i += stride) {
        int64_t r = i / f.width;
        float v = kvs_dev_qrow_get(rows + (size_t)(row0 + r) * f.row_bytes, (uint32_t)(i - r * f.width),
                                   (uint32_t)f.bits, (uint32_t)f.group);
        if (o16) o16[i] = kvs_dev_f2h_sat(v, &over);
        else o32[i] = v;
    }
}

int kvs_cuda_lat_qload(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, const uint8_t *rows, int row0, int n,
                       void *out, int dtype)
{
    int64_t count;
    unsigned grid;
    KVS_REQUIRE(qrow_ok(f) && row0 >= 0 && n >= 0 && (dtype == 0 || dtype == KVS_CUDA_F16),
                "lat_qload: bad format or shape (width %d, %d bytes, %d bits, groups of %d, row %d, n %d, dtype %d)",
                f->width, f->row_bytes, f->bits, f->group, row0, n, dtype);
    count = (int64_t)n * f->width;
    if (!count) return KVS_CUDA_OK;
    grid = kvs_grid(count, 256);
    if (grid > 65535u * 8u) grid = 65535u * 8u;
    KVS_LAUNCH(k_lat_qload, grid, 256, 0, c->stream)(*f, rows, row0, count, dtype ? NULL : (float *)out,
                                                     dtype ? (__half *)out : NULL);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

int kvs_cuda_lat_qcompact(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, uint8_t *const *rows, int n_arr,
                          int32_t *pos, const int32_t *src, int n_keep)
{
    int rb = f->row_bytes;
    KVS_REQUIRE(qrow_ok(f) && n_arr > 0 && n_arr <= KVS_CUDA_LAT_MAX_ARR && n_keep >= 0,
                "lat_qcompact: bad format or shape (%d bytes a row, %d arrays, keep %d)", rb, n_arr, n_keep);
    if (!n_keep) return KVS_CUDA_OK;
    return lat_compact_rows(c, rows, n_arr, pos, rb, src, n_keep);
fail:
    return KVS_CUDA_FAIL;
}

/* S[r, x] = Σ_l w[l] · (row idx[r] of src[l], decoded)[x], fused multiply-adds in layer order (the
 * CPU twin's), one thread per element; the merged row's position beside it. */
__global__ void k_lat_qsum(struct kvs_cuda_qrow f, struct kvs_cuda_lat_merge a, float *S)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)a.m * f.width) return;
    int r = (int)(i / f.width), x = (int)(i % f.width);
    size_t from = (size_t)a.idx[r] * f.row_bytes;
    float acc = 0.0f;
    for (int l = 0; l < a.n_arr; l++)
        acc = kvs_dev_fma(a.w[l], kvs_dev_qrow_get((const uint8_t *)a.src[l] + from, (uint32_t)x, (uint32_t)f.bits,
                                                   (uint32_t)f.group), acc);
    S[i] = acc;
    if (x == 0) a.dst_pos[a.row0 + r] = a.src_pos[a.idx[r]];
}

int kvs_cuda_lat_qmerge(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, const struct kvs_cuda_lat_merge *a)
{
    float *S;
    int ng;
    KVS_REQUIRE(qrow_ok(f) && a->width == f->width && a->n_arr > 0 && a->n_arr <= KVS_CUDA_LAT_MAX_ARR && a->m >= 0 &&
                    a->row0 >= 0,
                "lat_qmerge: bad format or shape (width %d/%d, %d arrays, %d rows at %d)", a->width, f->width,
                a->n_arr, a->m, a->row0);
    if (!a->m) return KVS_CUDA_OK;
    ng = qrow_groups(f);
    S = (float *)kvs_cuda_scratch(c, KVS_SCR_LAT_QSUM, (size_t)a->m * f->width * sizeof(float));
    if (!S) goto fail;
    /* summed in fp32 first, then encoded once (one thread per group), as the CPU twin */
    KVS_LAUNCH(k_lat_qsum, kvs_grid((int64_t)a->m * f->width, 128), 128, 0, c->stream)(*f, *a, S);
    KVS_LAUNCH_CHECK();
    KVS_LAUNCH(k_lat_qstore, kvs_grid((int64_t)a->m * ng, 128), 128, 0, c->stream)(*f, (uint8_t *)a->dst, a->row0, a->m, ng, S);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}

/* Element K of row I of array ROWS: fp16, or packed by the row codec (BITS > 0). */
__device__ static float lat_elem(const struct kvs_cuda_lat_cosine &a, const void *rows, size_t i, int k)
{
    if (!a.bits) return __half2float(((const __half *)rows)[i * a.width + k]);
    return kvs_dev_qrow_get((const uint8_t *)rows + i * a.row_bytes, (uint32_t)k, (uint32_t)a.bits,
                            (uint32_t)a.group);
}

/* Cosine of row I of arrays X and Y (WIDTH values, decoded as the CPU twin decodes them): fp64 sums
 * in element order (products of two floats are exact in fp64, so a contracted multiply-add rounds
 * as the CPU twin's multiply then add). */
__device__ static double lat_cos(const struct kvs_cuda_lat_cosine &a, const void *x, const void *y, size_t i)
{
    double ab = 0, aa = 0, bb = 0;
    for (int k = 0; k < a.width; k++) {
        double u = (double)lat_elem(a, x, i, k), v = (double)lat_elem(a, y, i, k);
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
    size_t row = (size_t)(a.row0 + i);
    if (!a.adj) {
        a.out[i] = (float)lat_cos(a, a.rows[0], a.rows[a.n_arr - 1], row);
        return;
    }
    double acc = 0;
    for (int l = 0; l + 1 < a.n_arr; l++) acc += lat_cos(a, a.rows[l], a.rows[l + 1], row);
    a.out[i] = (float)(acc / (a.n_arr - 1));
}

int kvs_cuda_lat_cosine(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_cosine *a)
{
    KVS_REQUIRE(a->width > 0 && a->n_arr > 0 && a->n_arr <= KVS_CUDA_LAT_MAX_ARR && a->n >= 0 && a->row0 >= 0 &&
                    (!a->adj || a->n_arr > 1) && (!a->bits || a->row_bytes > 0),
                "lat_cosine: bad shape (width %d, %d arrays, %d rows at %d, adj %d)", a->width, a->n_arr, a->n,
                a->row0, a->adj);
    if (!a->n) return KVS_CUDA_OK;
    KVS_LAUNCH(k_lat_cosine, kvs_grid(a->n, 128), 128, 0, c->stream)(*a);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
