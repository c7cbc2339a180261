/* CPU twin of kernels/latent_pool.cu (see latent_pool.h): latent segment rows in host memory,
 * grown by realloc, fp32 -> fp16 (or the row codec of quant_codec.h) on store and back on read, order-keeping
 * compaction, and the merge's weighted sum of a token's per-layer latents (fused multiply-adds in
 * layer order, rounded once: the device computes the same), and cosine scores between arrays (fp64
 * sums in element order, as the device's one thread per row). Depends on backend.h, attention.h (row
 * conversions) and libc. */
#include "latent_pool.h"

#include "attention.h"
#include "quant_codec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool fmt_ok(const struct kvs_lat_fmt *f)
{
    if (f->width <= 0 || f->row_bytes <= 0) return false;
    if (f->codec == KVS_LAT_QROW)
        return (f->bits == 2 || f->bits == 4 || f->bits == 8) && f->group > 0 &&
               (uint32_t)f->row_bytes == kvs_qrow_bytes((uint32_t)f->width, f->bits, f->group);
    return f->codec == KVS_LAT_FP16 && f->row_bytes == 2 * f->width;
}

static bool rows_ok(const struct kvs_lat_rows *L) { return L->n_arr > 0 && L->n_arr <= KVS_LAT_MAX_ARR; }

enum kvs_status kvs_cpu_lat_grow(struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int cap)
{
    if (!fmt_ok(f) || !rows_ok(L) || cap < L->n) return KVS_ERR_ARG;
    if (cap == 0) {
        for (int a = 0; a < L->n_arr; a++) free(L->rows[a]), L->rows[a] = NULL;
        free(L->pos);
        L->pos = NULL;
        L->cap = 0;
        return KVS_OK;
    }
    if ((size_t)cap > SIZE_MAX / (size_t)f->row_bytes) return KVS_ERR_ARG;
    bool ok = true;
    /* a failed realloc leaves its block as it was: every array keeps at least min(old, new) rows
     * valid and the capacity stays the old one */
    void *p = realloc(L->pos, (size_t)cap * sizeof(int32_t));
    if (p) L->pos = p;
    ok &= p != NULL;
    for (int a = 0; a < L->n_arr && ok; a++) {
        void *r = realloc(L->rows[a], (size_t)cap * f->row_bytes);
        if (r) L->rows[a] = r;
        ok &= r != NULL;
    }
    if (!ok) return KVS_ERR_NOMEM;
    L->cap = cap;
    return KVS_OK;
}

enum kvs_status kvs_cpu_lat_store(struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr, int row0, int T,
                                  const float *x, const int32_t *pos)
{
    if (!fmt_ok(f) || !rows_ok(L) || arr < 0 || arr >= L->n_arr || row0 < 0 || T < 0 || row0 > L->cap - T)
        return KVS_ERR_ARG;
    if (!T) return KVS_OK;
    uint8_t *dst = (uint8_t *)L->rows[arr] + (size_t)row0 * f->row_bytes;
    if (f->codec == KVS_LAT_FP16) { /* the rows are contiguous: one conversion for all of them */
        L->clamped += kvs_f32_to_f16_row(x, (uint16_t *)dst, T * f->width); /* saturating, counted */
    } else {
        for (int t = 0; t < T; t++)
            kvs_qrow_encode(x + (size_t)t * f->width, (uint32_t)f->width, f->bits, f->group, dst + (size_t)t * f->row_bytes);
    }
    if (pos) memcpy((int32_t *)L->pos + row0, pos, (size_t)T * sizeof(int32_t));
    return KVS_OK;
}

enum kvs_status kvs_cpu_lat_read(const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr, int row0, int n,
                                 float *x, int32_t *pos)
{
    if (!fmt_ok(f) || !rows_ok(L) || arr < 0 || arr >= L->n_arr || row0 < 0 || n < 0 || row0 > L->n - n)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    const uint8_t *src = (const uint8_t *)L->rows[arr] + (size_t)row0 * f->row_bytes;
    if (f->codec == KVS_LAT_FP16) {
        kvs_f16_to_f32_row((const uint16_t *)src, x, n * f->width);
    } else {
        for (int i = 0; i < n; i++)
            kvs_qrow_decode(src + (size_t)i * f->row_bytes, (uint32_t)f->width, f->bits, f->group, x + (size_t)i * f->width);
    }
    if (pos) memcpy(pos, (const int32_t *)L->pos + row0, (size_t)n * sizeof(int32_t));
    return KVS_OK;
}

enum kvs_status kvs_cpu_lat_copy(const struct kvs_lat_rows *src, const struct kvs_lat_fmt *sf, int sarr, int row0,
                                 int n, struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df, int darr, int drow0,
                                 const int32_t *pos)
{
    if (!fmt_ok(sf) || !fmt_ok(df) || sf->width != df->width || !rows_ok(src) || !rows_ok(dst) || sarr < 0 ||
        sarr >= src->n_arr || darr < 0 || darr >= dst->n_arr || row0 < 0 || n < 0 || row0 > src->n - n ||
        drow0 < 0 || drow0 > dst->cap - n)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    /* a few rows at a time: decode to fp32, encode in the destination's format (the bytes a read
     * followed by a store give) */
    enum { CHUNK = 64 };
    int rows = n < CHUNK ? n : CHUNK;
    float *x = malloc((size_t)rows * sf->width * sizeof(float));
    if (!x) return KVS_ERR_NOMEM;
    for (int i = 0; i < n; i += rows) {
        int k = n - i < rows ? n - i : rows;
        kvs_cpu_lat_read(src, sf, sarr, row0 + i, k, x, NULL);
        kvs_cpu_lat_store(dst, df, darr, drow0 + i, k, x, pos ? pos + i : NULL);
    }
    free(x);
    return KVS_OK;
}

void kvs_cpu_lat_mass_add(const struct kvs_lat_attend_args *a, const float *mass, float *score)
{
    for (int s = 0, off = 0; s < a->n_segs; off += a->segs[s].L->n, s++) {
        const int32_t *pos = a->segs[s].L->pos;
        for (int i = 0; i < a->segs[s].L->n; i++)
            if (pos[i] >= 0 && pos[i] < a->n_score) score[pos[i]] += mass[off + i];
    }
}

enum kvs_status kvs_cpu_lat_compact(struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, const uint8_t *keep)
{
    if (!fmt_ok(f) || !rows_ok(L)) return KVS_ERR_ARG;
    int32_t *P = L->pos;
    size_t rb = (size_t)f->row_bytes;
    int w = 0;
    for (int i = 0; i < L->n; i++) {
        if (!keep[i]) continue;
        if (w != i) {
            P[w] = P[i];
            for (int a = 0; a < L->n_arr; a++) {
                uint8_t *R = L->rows[a];
                memcpy(R + (size_t)w * rb, R + (size_t)i * rb, rb);
            }
        }
        w++;
    }
    L->n = w;
    return KVS_OK;
}

enum kvs_status kvs_cpu_lat_merge(const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                  const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w)
{
    if (!fmt_ok(f) || !rows_ok(src) || !rows_ok(dst) || m < 0 || dst->n > dst->cap - m) return KVS_ERR_ARG;
    for (int i = 0; i < m; i++)
        if (idx[i] < 0 || idx[i] >= src->n) return KVS_ERR_ARG;
    if (!m) return KVS_OK;
    float *row = malloc((size_t)f->width * sizeof(float)), *acc = malloc((size_t)f->width * sizeof(float));
    if (!row || !acc) {
        free(row), free(acc);
        return KVS_ERR_NOMEM;
    }
    for (int i = 0; i < m; i++) {
        for (int x = 0; x < f->width; x++) acc[x] = 0.0f;
        for (int a = 0; a < src->n_arr; a++) {
            kvs_cpu_lat_read(src, f, a, idx[i], 1, row, NULL);
            for (int x = 0; x < f->width; x++) acc[x] = fmaf(w[a], row[x], acc[x]);
        }
        kvs_cpu_lat_store(dst, f, 0, dst->n, 1, acc, (const int32_t *)src->pos + idx[i]);
        dst->n++;
    }
    free(row), free(acc);
    return KVS_OK;
}

/* Cosine of A and B (N floats) summed in fp64 in element order; 0 when either is zero. */
static double cosine(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

enum kvs_status kvs_cpu_lat_cosine(const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr0, int arr1,
                                   bool adj, int row0, int n, float *out)
{
    if (!fmt_ok(f) || !rows_ok(L) || arr0 < 0 || arr1 < arr0 || arr1 >= L->n_arr || (adj && arr1 == arr0) ||
        row0 < 0 || n < 0 || row0 > L->n - n)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    float *buf = malloc((size_t)2 * f->width * sizeof(float));
    if (!buf) return KVS_ERR_NOMEM;
    const int w = f->width;
    for (int i = 0; i < n; i++) {
        if (!adj) {
            kvs_cpu_lat_read(L, f, arr0, row0 + i, 1, buf, NULL);
            kvs_cpu_lat_read(L, f, arr1, row0 + i, 1, buf + w, NULL);
            out[i] = (float)cosine(buf, buf + w, w);
            continue;
        }
        double acc = 0;
        kvs_cpu_lat_read(L, f, arr0, row0 + i, 1, buf, NULL);
        for (int a = arr0 + 1; a <= arr1; a++) {
            float *prev = buf + (size_t)((a - 1 - arr0) & 1) * w, *cur = buf + (size_t)((a - arr0) & 1) * w;
            kvs_cpu_lat_read(L, f, a, row0 + i, 1, cur, NULL);
            acc += cosine(prev, cur, w);
        }
        out[i] = (float)(acc / (arr1 - arr0));
    }
    free(buf);
    return KVS_OK;
}
