/* Backend registry (a static array, CPU first, CUDA found at run time), the wrappers that fall back
 * to the CPU path when an optional entry is NULL, and the CPU backend itself: thin adapters over
 * the reference functions of engine/run/infer.c and the CPU twins of engine/cpu/ (attention, K/V
 * pool, latent pool), plus the LAPACK SVD, which are the oracle for kernels/. Depends on libc,
 * BLAS/LAPACKE, engine/ headers; never prints, never exits. */
#include "backend.h"
#include "attention.h"
#include "kv_pool.h"
#include "latent_pool.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "infer.h"
#include "quant.h"
#include "record.h"

/* ---------------------------------------------------------------- CPU references */

enum kvs_status kvs_cpu_svd(const float *a, int m, int n, float *u, float *s, float *vt)
{
    if (m <= 0 || n <= 0) return KVS_ERR_ARG;
    uint64_t cells;
    if (!kvs_mul_ok((uint64_t)m, (uint64_t)n, &cells) || cells > SIZE_MAX / sizeof(float)) return KVS_ERR_ARG;
    float *w = malloc((size_t)cells * sizeof(float));
    if (!w) return KVS_ERR_NOMEM;
    memcpy(w, a, (size_t)cells * sizeof(float));
    int k = KVS_MIN(m, n);
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, w, n, s, u, k, vt, n);
    free(w);
    return info == 0 ? KVS_OK : KVS_ERR_BACKEND;
}

/* ---------------------------------------------------------------- CPU backend */

static void cpu_rmsnorm_rows(float *out, const float *x, const float *w, int T, int n, float eps)
{
    for (int t = 0; t < T; t++) kvs_cpu_rmsnorm(out + (size_t)t * n, x + (size_t)t * n, w, n, eps);
}

static void cpu_rope_rows(float *x, int T, int n_heads, int head_dim, const int32_t *pos, const float *freqs,
                          bool neox)
{
    for (int t = 0; t < T; t++) kvs_cpu_rope(x + (size_t)t * n_heads * head_dim, n_heads, head_dim, pos[t], freqs, neox);
}

static enum kvs_status cpu_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                   float eps)
{
    cpu_rmsnorm_rows(out, x, w, T, n, eps);
    return KVS_OK;
}

static enum kvs_status cpu_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                const int32_t *pos, const float *freqs, bool neox)
{
    cpu_rope_rows(x, T, n_heads, head_dim, pos, freqs, neox);
    return KVS_OK;
}

static enum kvs_status cpu_matmul(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                  float *y, int T)
{
    kvs_cpu_matmul_ex(b->pool, bw->w, x, y, T, b->precise);
    return KVS_OK;
}

static enum kvs_status cpu_attn_latent(struct kvs_backend *b, const struct kvs_attn_latent_args *a, const float *q,
                                       float *out)
{
    return kvs_cpu_attn_latent(b->pool, a, q, out);
}

static enum kvs_status cpu_attn_kv16(struct kvs_backend *b, const struct kvs_attn_kv16_args *a, const float *q,
                                     float *out)
{
    return kvs_cpu_attn_kv16(b->pool, a, q, out);
}

static enum kvs_status cpu_svd(struct kvs_backend *b, const float *a, int m, int n, float *u, float *s, float *vt)
{
    return kvs_cpu_svd(a, m, n, u, s, vt);
}

static enum kvs_status cpu_kv_grow(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int cap)
{
    return kvs_cpu_kv_grow(L, dkv, cap);
}

static enum kvs_status cpu_kv_store(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T,
                                    const int32_t *pos, const float *k, const float *v)
{
    return kvs_cpu_kv_store(L, dkv, T, pos, k, v);
}

static enum kvs_status cpu_kv_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                     const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass)
{
    return kvs_cpu_kv_attend(b->pool, L, a, q, out, mass);
}

static enum kvs_status cpu_kv_compact(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep)
{
    return kvs_cpu_kv_compact(L, dkv, keep);
}

static enum kvs_status cpu_kv_read(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                                   uint16_t *k, uint16_t *v, int32_t *pos)
{
    return kvs_cpu_kv_read(L, dkv, row0, n, k, v, pos);
}

static enum kvs_status cpu_lat_grow(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   int cap)
{
    return kvs_cpu_lat_grow(L, f, cap);
}

static enum kvs_status cpu_lat_store(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                    int arr, int row0, int T, const float *x, const int32_t *pos)
{
    return kvs_cpu_lat_store(L, f, arr, row0, T, x, pos);
}

static enum kvs_status cpu_lat_read(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   int arr, int row0, int n, float *x, int32_t *pos)
{
    return kvs_cpu_lat_read(L, f, arr, row0, n, x, pos);
}

static enum kvs_status cpu_lat_compact(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      const uint8_t *keep)
{
    return kvs_cpu_lat_compact(L, f, keep);
}

static enum kvs_status cpu_lat_merge(struct kvs_backend *b, const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                    const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w)
{
    return kvs_cpu_lat_merge(src, dst, f, idx, m, w);
}

static void cpu_destroy(struct kvs_backend *b) {}

static const struct kvs_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .weight_prepare = NULL, /* the CPU reads the model's mapping directly */
    .weight_release = NULL,
    .matmul = cpu_matmul,
    .attn_latent = cpu_attn_latent,
    .attn_kv16 = cpu_attn_kv16,
    .svd = cpu_svd,
    .kv_grow = cpu_kv_grow,
    .kv_store = cpu_kv_store,
    .kv_attend = cpu_kv_attend,
    .kv_compact = cpu_kv_compact,
    .kv_read = cpu_kv_read,
    .lat_grow = cpu_lat_grow,
    .lat_store = cpu_lat_store,
    .lat_read = cpu_lat_read,
    .lat_compact = cpu_lat_compact,
    .lat_merge = cpu_lat_merge,
};

static const char *cpu_probe(bool *available)
{
    if (available) *available = true;
    return "cpu: always available";
}

static enum kvs_status cpu_create(struct kvs_backend *b, char *err, size_t errlen)
{
    b->ops = &cpu_ops;
    b->ctx = NULL;
    snprintf(b->device, sizeof b->device, "CPU (%d threads)", b->pool ? kvs_pool_size(b->pool) : 1);
    return KVS_OK;
}

/* ---------------------------------------------------------------- registry */

static const struct kvs_backend_entry registry[] = {
    {"cpu", cpu_probe, cpu_create},
    {"cuda", kvs_backend_probe, kvs_backend_cuda_create},
};

int kvs_backend_count(void) { return (int)KVS_ARRAY_LEN(registry); }

const struct kvs_backend_entry *kvs_backend_entry_at(int i)
{
    return i >= 0 && i < (int)KVS_ARRAY_LEN(registry) ? &registry[i] : NULL;
}

enum kvs_status kvs_backend_new(struct kvs_backend **out, const char *name, struct kvs_pool *pool, char *err,
                                size_t errlen)
{
    *out = NULL;
    const char *want = name && *name ? name : "auto";
    const struct kvs_backend_entry *e = NULL;
    bool fallback = false;
    if (!strcmp(want, "auto")) {
        bool gpu = false;
        kvs_backend_probe(&gpu);
        e = &registry[gpu ? 1 : 0];
        fallback = gpu;
    } else {
        for (size_t i = 0; i < KVS_ARRAY_LEN(registry); i++)
            if (!strcmp(registry[i].name, want)) e = &registry[i];
        if (!e) {
            kvs_seterr(err, errlen, "unknown backend '%s' (cpu, cuda or auto)", want);
            return KVS_ERR_ARG;
        }
    }
    struct kvs_backend *b = calloc(1, sizeof *b);
    if (!b) {
        kvs_seterr(err, errlen, "out of memory");
        return KVS_ERR_NOMEM;
    }
    b->pool = pool;
    enum kvs_status st = e->create(b, err, errlen);
    if (st != KVS_OK && fallback) {
        /* auto: a GPU that fails to start leaves a note and the CPU backend */
        char why[sizeof b->err];
        snprintf(why, sizeof why, "%s", err && errlen ? err : "CUDA backend failed to start");
        memset(b, 0, sizeof *b);
        b->pool = pool;
        st = cpu_create(b, err, errlen);
        kvs_seterr(b->err, sizeof b->err, "cuda unavailable (%s); using the CPU", why);
    }
    if (st != KVS_OK) {
        free(b);
        return st;
    }
    *out = b;
    return KVS_OK;
}

void kvs_backend_delete(struct kvs_backend *b)
{
    if (!b) return;
    if (b->ops && b->ops->destroy) b->ops->destroy(b);
    free(b);
}

const char *kvs_backend_name(const struct kvs_backend *b) { return b && b->ops ? b->ops->name : "cpu"; }
const char *kvs_backend_device(const struct kvs_backend *b) { return b ? b->device : "CPU"; }
const char *kvs_backend_error(const struct kvs_backend *b) { return b ? b->err : ""; }

/* ---------------------------------------------------------------- wrappers (b may be NULL: CPU) */

enum kvs_status kvs_backend_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                    float eps)
{
    if (b && b->ops->rmsnorm) return b->ops->rmsnorm(b, out, x, w, T, n, eps);
    cpu_rmsnorm_rows(out, x, w, T, n, eps);
    return KVS_OK;
}

enum kvs_status kvs_backend_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                 const int32_t *pos, const float *freqs, bool neox)
{
    if (b && b->ops->rope) return b->ops->rope(b, x, T, n_heads, head_dim, pos, freqs, neox);
    cpu_rope_rows(x, T, n_heads, head_dim, pos, freqs, neox);
    return KVS_OK;
}

enum kvs_status kvs_backend_weight_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                           const struct kvs_weight *w)
{
    bw->w = w;
    bw->dev = NULL;
    if (b && b->ops->weight_prepare) return b->ops->weight_prepare(b, bw);
    return KVS_OK;
}

void kvs_backend_weight_release(struct kvs_backend *b, struct kvs_backend_weight *bw)
{
    if (b && b->ops->weight_release && bw->dev) b->ops->weight_release(b, bw);
    bw->dev = NULL;
}

enum kvs_status kvs_backend_matmul(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                   float *y, int T)
{
    if (b && b->ops->matmul && (bw->dev || !b->ops->weight_prepare)) return b->ops->matmul(b, bw, x, y, T);
    kvs_cpu_matmul_ex(b ? b->pool : NULL, bw->w, x, y, T, b && b->precise);
    return KVS_OK;
}

enum kvs_status kvs_backend_attn_latent(struct kvs_backend *b, const struct kvs_attn_latent_args *a,
                                        const float *q, float *out)
{
    if (b && b->ops->attn_latent) return b->ops->attn_latent(b, a, q, out);
    return kvs_cpu_attn_latent(b ? b->pool : NULL, a, q, out);
}

enum kvs_status kvs_backend_attn_kv16(struct kvs_backend *b, const struct kvs_attn_kv16_args *a, const float *q,
                                      float *out)
{
    if (b && b->ops->attn_kv16) return b->ops->attn_kv16(b, a, q, out);
    return kvs_cpu_attn_kv16(b ? b->pool : NULL, a, q, out);
}

enum kvs_status kvs_backend_svd(struct kvs_backend *b, const float *a, int m, int n, float *u, float *s, float *vt)
{
    if (b && b->ops->svd) return b->ops->svd(b, a, m, n, u, s, vt);
    return kvs_cpu_svd(a, m, n, u, s, vt);
}

/* ---- K/V pool entries: the backend's set, or the CPU twins on host memory, counted ---- */

bool kvs_backend_kv_native(const struct kvs_backend *b) { return b && b->ops->kv_grow; }

/* Starts timing a fallback call of a backend that lacks the pool entries (not for NULL B). */
static uint64_t fallback_begin(const struct kvs_backend *b)
{
    return b && b->ctr ? kvs_now_ns() : 0;
}

static void fallback_end(struct kvs_backend *b, uint64_t t0)
{
    if (!b || !b->ctr) return;
    b->ctr[KVS_OP_FALLBACK].ns += kvs_now_ns() - t0;
    b->ctr[KVS_OP_FALLBACK].calls++;
}

enum kvs_status kvs_backend_kv_grow(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int cap)
{
    if (kvs_backend_kv_native(b)) {
        int old = L->cap;
        enum kvs_status st = b->ops->kv_grow(b, L, dkv, cap);
        uint64_t row = (uint64_t)dkv * 2 * sizeof(uint16_t) + sizeof(int32_t);
        b->pool_bytes = b->pool_bytes - (uint64_t)old * row + (uint64_t)L->cap * row;
        return st;
    }
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kv_grow(L, dkv, cap);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kv_store(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T,
                                     const int32_t *pos, const float *k, const float *v)
{
    if (kvs_backend_kv_native(b)) return b->ops->kv_store(b, L, dkv, T, pos, k, v);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kv_store(L, dkv, T, pos, k, v);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kv_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                      const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass)
{
    if (kvs_backend_kv_native(b)) return b->ops->kv_attend(b, L, a, q, out, mass);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kv_attend(b ? b->pool : NULL, L, a, q, out, mass);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kv_compact(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep)
{
    if (kvs_backend_kv_native(b)) return b->ops->kv_compact(b, L, dkv, keep);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kv_compact(L, dkv, keep);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kv_read(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                                    uint16_t *k, uint16_t *v, int32_t *pos)
{
    if (kvs_backend_kv_native(b)) return b->ops->kv_read(b, L, dkv, row0, n, k, v, pos);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kv_read(L, dkv, row0, n, k, v, pos);
    fallback_end(b, t0);
    return st;
}

/* ---- latent segment entries: the backend's set (fp16 rows), or the CPU twins on host memory ---- */

bool kvs_backend_lat_native(const struct kvs_backend *b, const struct kvs_lat_fmt *f)
{
    /* the CPU backend's own entries cover packed rows too; a device's cover fp16 rows */
    return b && b->ops->lat_grow && (!f->encode || b->ops->lat_grow == cpu_lat_grow);
}

enum kvs_status kvs_backend_lat_grow(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                     int cap)
{
    if (kvs_backend_lat_native(b, f)) {
        int old = L->cap;
        enum kvs_status st = b->ops->lat_grow(b, L, f, cap);
        uint64_t row = (uint64_t)L->n_arr * f->row_bytes + sizeof(int32_t);
        b->pool_bytes = b->pool_bytes - (uint64_t)old * row + (uint64_t)L->cap * row;
        return st;
    }
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_lat_grow(L, f, cap);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_lat_store(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      int arr, int row0, int T, const float *x, const int32_t *pos)
{
    if (kvs_backend_lat_native(b, f)) return b->ops->lat_store(b, L, f, arr, row0, T, x, pos);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_lat_store(L, f, arr, row0, T, x, pos);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_lat_read(struct kvs_backend *b, const struct kvs_lat_rows *L,
                                     const struct kvs_lat_fmt *f, int arr, int row0, int n, float *x, int32_t *pos)
{
    if (kvs_backend_lat_native(b, f)) return b->ops->lat_read(b, L, f, arr, row0, n, x, pos);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_lat_read(L, f, arr, row0, n, x, pos);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_lat_compact(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                        const uint8_t *keep)
{
    if (kvs_backend_lat_native(b, f)) return b->ops->lat_compact(b, L, f, keep);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_lat_compact(L, f, keep);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_lat_merge(struct kvs_backend *b, const struct kvs_lat_rows *src,
                                      struct kvs_lat_rows *dst, const struct kvs_lat_fmt *f, const int32_t *idx,
                                      int m, const float *w)
{
    if (kvs_backend_lat_native(b, f)) return b->ops->lat_merge(b, src, dst, f, idx, m, w);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_lat_merge(src, dst, f, idx, m, w);
    fallback_end(b, t0);
    return st;
}
