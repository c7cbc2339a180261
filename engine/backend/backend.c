/* Backend registry (a static array, CPU first, CUDA found at run time), the wrappers that fall back
 * to the CPU path when an optional entry is NULL or stage host arrays through backend buffers, and
 * the CPU backend itself: thin adapters over the twins in engine/cpu/ (norm, rope, matmul,
 * embedding, elementwise, attention, K/V pool, latent pool, minicache, svd), which are
 * the oracle for kernels/. Depends on libc, engine/ headers; never prints, never exits. */
#include "backend.h"
#include "attention.h"
#include "kv_pool.h"
#include "kv_quant.h"
#include "latent_attend.h"
#include "latent_pool.h"
#include "minicache.h"
#include "svd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "elementwise.h"
#include "embedding.h"
#include "matmul.h"
#include "norm.h"
#include "quant.h"
#include "rope.h"
#include "record.h"

/* ---------------------------------------------------------------- CPU references */

/* ---------------------------------------------------------------- CPU backend */

static enum kvs_status cpu_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                   float eps)
{
    kvs_cpu_rmsnorm_rows(out, x, w, T, n, eps);
    return KVS_OK;
}

static enum kvs_status cpu_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                const int32_t *pos, const float *freqs, bool neox)
{
    kvs_cpu_rope_rows(x, T, n_heads, head_dim, pos, freqs, neox);
    return KVS_OK;
}

static enum kvs_status cpu_matmul(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                  float *y, int T)
{
    kvs_cpu_matmul_ex(b->pool, bw->w, x, y, T, b->precise);
    return KVS_OK;
}

static enum kvs_status cpu_embed(struct kvs_backend *b, const struct kvs_backend_weight *bw, const int32_t *tokens,
                                 int T, float *out)
{
    kvs_cpu_embedding(bw->w, tokens, T, out);
    return KVS_OK;
}

static enum kvs_status cpu_add_bias(struct kvs_backend *b, float *y, const float *bias, int T, int n)
{
    kvs_cpu_add_bias(y, bias, T, n);
    return KVS_OK;
}

static enum kvs_status cpu_add(struct kvs_backend *b, float *x, const float *y, size_t n)
{
    kvs_cpu_add(x, y, n);
    return KVS_OK;
}

static enum kvs_status cpu_swiglu(struct kvs_backend *b, float *g, const float *u, size_t n)
{
    kvs_cpu_swiglu(g, u, n);
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

static enum kvs_status cpu_lat_copy(struct kvs_backend *b, const struct kvs_lat_rows *src, const struct kvs_lat_fmt *sf,
                                    int sarr, int row0, int n, struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df,
                                    int darr, int drow0, const int32_t *pos)
{
    (void)b;
    return kvs_cpu_lat_copy(src, sf, sarr, row0, n, dst, df, darr, drow0, pos);
}

static enum kvs_status cpu_lat_compact(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      const uint8_t *keep)
{
    return kvs_cpu_lat_compact(L, f, keep);
}

/* The CPU twin of lat_attend on host rows; with A's scores (host memory here) the rows' mass goes
 * there by position (kvs_cpu_lat_mass_add) instead of to MASS. */
static enum kvs_status cpu_lat_attend_scored(struct kvs_pool *pool, const struct kvs_lat_attend_args *a,
                                            const float *q, float *out, float *mass)
{
    if (!a->score) return kvs_cpu_lat_attend(pool, a, q, out, mass);
    int64_t n = 0;
    for (int i = 0; i < a->n_segs && i < KVS_LAT_ATTEND_MAX_SEGS; i++) n += a->segs[i].L ? a->segs[i].L->n : 0;
    float *m = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!m) return KVS_ERR_NOMEM;
    enum kvs_status st = kvs_cpu_lat_attend(pool, a, q, out, m);
    if (st == KVS_OK) kvs_cpu_lat_mass_add(a, m, a->score);
    free(m);
    return st;
}

static enum kvs_status cpu_lat_attend(struct kvs_backend *b, const struct kvs_lat_attend_args *a, const float *q,
                                     float *out, float *mass)
{
    return cpu_lat_attend_scored(b->pool, a, q, out, mass);
}

static bool cpu_lat_codec(const struct kvs_backend *b, uint32_t codec)
{
    (void)b;
    return codec == KVS_LAT_FP16 || codec == KVS_LAT_QROW;
}

static enum kvs_status cpu_lat_merge(struct kvs_backend *b, const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                    const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w)
{
    return kvs_cpu_lat_merge(src, dst, f, idx, m, w);
}

/* MiniCache pairs (twins: engine/cpu/minicache.c) */
static enum kvs_status cpu_mc_grow(struct kvs_backend *b, struct kvs_mc_rows *P, int nkv, int d, int cap)
{
    return kvs_cpu_mc_grow(P, nkv, d, cap);
}

static enum kvs_status cpu_mc_score(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                    int nkv, int d, const int32_t *idx, int m, float *dist, double *dots)
{
    return kvs_cpu_mc_score(A, B, nkv, d, idx, m, dist, dots);
}

static enum kvs_status cpu_mc_merge(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                    struct kvs_mc_rows *P, int nkv, int d, float t, const int32_t *idx, int m,
                                    int keep)
{
    return kvs_cpu_mc_merge(A, B, P, nkv, d, t, idx, m, keep);
}

static enum kvs_status cpu_mc_attend(struct kvs_backend *b, const struct kvs_kv_rows *L, const struct kvs_mc_rows *P,
                                     int side, const struct kvs_kv_attend_args *a, const float *q, float *out)
{
    return kvs_cpu_mc_attend(b->pool, L, P, side, a, q, out);
}

static enum kvs_status cpu_mc_read(struct kvs_backend *b, const struct kvs_mc_rows *P, int nkv, int d, int row0,
                                   int n, uint16_t *ek, uint16_t *ev, uint16_t *nrm, int32_t *pos)
{
    return kvs_cpu_mc_read(P, nkv, d, row0, n, ek, ev, nrm, pos);
}

static enum kvs_status cpu_kvq_grow(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                    int tq_cap, size_t kq_cap, int n_score)
{
    return kvs_cpu_kvq_grow(L, f, tq_cap, kq_cap, n_score);
}

static enum kvs_status cpu_kvq_quantize(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f)
{
    return kvs_cpu_kvq_quantize(L, f);
}

static enum kvs_status cpu_kvq_attend(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                      const struct kvs_kv_attend_args *a, const float *q, float *out, bool score)
{
    return kvs_cpu_kvq_attend(b->pool, L, f, a, q, out, score);
}

static enum kvs_status cpu_kvq_compact(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                       const uint8_t *keep)
{
    return kvs_cpu_kvq_compact(L, f, keep);
}

static enum kvs_status cpu_kvq_read(struct kvs_backend *b, const struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                    uint8_t *kq, uint8_t *vq, int32_t *pq)
{
    return kvs_cpu_kvq_read(L, f, kq, vq, pq);
}

static enum kvs_status cpu_kvq_scores(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                      int n_ctx, int kernel, float *pooled)
{
    return kvs_cpu_kvq_scores(L, f, n_ctx, kernel, pooled);
}

static enum kvs_status cpu_lat_cosine(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                     int arr0, int arr1, bool adj, int row0, int n, float *out)
{
    return kvs_cpu_lat_cosine(L, f, arr0, arr1, adj, row0, n, out);
}

static void cpu_destroy(struct kvs_backend *b) {}

static const struct kvs_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .buf_alloc = NULL, /* buffers are host memory */
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .weight_prepare = NULL, /* the CPU reads the model's mapping directly */
    .weight_release = NULL,
    .matmul = cpu_matmul,
    .embed = cpu_embed,
    .add_bias = cpu_add_bias,
    .add = cpu_add,
    .swiglu = cpu_swiglu,
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
    .lat_copy = cpu_lat_copy,
    .lat_compact = cpu_lat_compact,
    .lat_merge = cpu_lat_merge,
    .lat_attend = cpu_lat_attend,
    .mc_grow = cpu_mc_grow,
    .mc_score = cpu_mc_score,
    .mc_merge = cpu_mc_merge,
    .mc_attend = cpu_mc_attend,
    .mc_read = cpu_mc_read,
    .kvq_grow = cpu_kvq_grow,
    .kvq_quantize = cpu_kvq_quantize,
    .kvq_attend = cpu_kvq_attend,
    .kvq_compact = cpu_kvq_compact,
    .kvq_read = cpu_kvq_read,
    .kvq_scores = cpu_kvq_scores,
    .lat_codec = cpu_lat_codec,
    .lat_cosine = cpu_lat_cosine,
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

/* ---- buffers ---- */

bool kvs_backend_host_memory(const struct kvs_backend *b) { return !b || !b->ops->buf_alloc; }

enum kvs_status kvs_backend_buf_alloc(struct kvs_backend *b, struct kvs_buf *buf, size_t bytes)
{
    buf->data = NULL;
    buf->bytes = 0;
    size_t n = bytes ? bytes : 1;
    if (kvs_backend_host_memory(b)) {
        buf->data = malloc(n);
        if (!buf->data) {
            if (b) kvs_seterr(b->err, sizeof b->err, "out of memory for a buffer of %zu bytes", bytes);
            return KVS_ERR_NOMEM;
        }
    } else {
        enum kvs_status st = b->ops->buf_alloc(b, &buf->data, n);
        if (st != KVS_OK) {
            buf->data = NULL;
            return st;
        }
    }
    buf->bytes = bytes;
    return KVS_OK;
}

void kvs_backend_buf_free(struct kvs_backend *b, struct kvs_buf *buf)
{
    if (buf->data) {
        if (kvs_backend_host_memory(b)) free(buf->data);
        else b->ops->buf_free(b, buf->data);
    }
    buf->data = NULL;
    buf->bytes = 0;
}

enum kvs_status kvs_backend_buf_upload(struct kvs_backend *b, struct kvs_buf *buf, size_t off, const void *src,
                                       size_t bytes)
{
    if (off > buf->bytes || bytes > buf->bytes - off) {
        if (b) kvs_seterr(b->err, sizeof b->err, "upload of %zu bytes at %zu outside a buffer of %zu", bytes, off,
                          buf->bytes);
        return KVS_ERR_ARG;
    }
    if (!bytes) return KVS_OK;
    if (kvs_backend_host_memory(b)) {
        memcpy((char *)buf->data + off, src, bytes);
        return KVS_OK;
    }
    b->xfer_up_bytes += bytes;
    b->xfer_up_calls++;
    return b->ops->buf_upload(b, (char *)buf->data + off, src, bytes);
}

enum kvs_status kvs_backend_buf_download(struct kvs_backend *b, void *dst, const struct kvs_buf *buf, size_t off,
                                         size_t bytes)
{
    if (off > buf->bytes || bytes > buf->bytes - off) {
        if (b) kvs_seterr(b->err, sizeof b->err, "download of %zu bytes at %zu outside a buffer of %zu", bytes, off,
                          buf->bytes);
        return KVS_ERR_ARG;
    }
    if (!bytes) return KVS_OK;
    if (kvs_backend_host_memory(b)) {
        memcpy(dst, (const char *)buf->data + off, bytes);
        return KVS_OK;
    }
    b->xfer_down_bytes += bytes;
    b->xfer_down_calls++;
    return b->ops->buf_download(b, dst, (const char *)buf->data + off, bytes);
}

void *kvs_backend_host_alloc(struct kvs_backend *b, size_t bytes)
{
    if (!b || !b->ops->host_alloc) return malloc(bytes ? bytes : 1);
    void *p = NULL;
    return b->ops->host_alloc(b, &p, bytes ? bytes : 1) == KVS_OK ? p : NULL;
}

void kvs_backend_host_free(struct kvs_backend *b, void *p)
{
    if (!p) return;
    if (!b || !b->ops->host_free) free(p);
    else b->ops->host_free(b, p);
}

void kvs_backend_range_push(struct kvs_backend *b, const char *name)
{
    if (b && b->ops->range_push) b->ops->range_push(b, name);
}

void kvs_backend_range_pop(struct kvs_backend *b)
{
    if (b && b->ops->range_pop) b->ops->range_pop(b);
}

/* ---- per-token operations on backend memory ---- */

enum kvs_status kvs_backend_rmsnorm_buf(struct kvs_backend *b, float *out, const float *x, const float *w, int T,
                                        int n, float eps)
{
    if (b && b->ops->rmsnorm) return b->ops->rmsnorm(b, out, x, w, T, n, eps);
    kvs_cpu_rmsnorm_rows(out, x, w, T, n, eps);
    return KVS_OK;
}

enum kvs_status kvs_backend_rope_buf(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                     const int32_t *pos, const float *freqs, bool neox)
{
    if (b && b->ops->rope) return b->ops->rope(b, x, T, n_heads, head_dim, pos, freqs, neox);
    kvs_cpu_rope_rows(x, T, n_heads, head_dim, pos, freqs, neox);
    return KVS_OK;
}

enum kvs_status kvs_backend_matmul_buf(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                       float *y, int T)
{
    if (b && b->ops->matmul && (bw->dev || !b->ops->weight_prepare)) return b->ops->matmul(b, bw, x, y, T);
    if (!kvs_backend_host_memory(b)) {
        kvs_seterr(b->err, sizeof b->err, "matmul: weight (%lld, %lld) has no copy in %s memory", (long long)bw->w->rows,
                   (long long)bw->w->cols, b->ops->name);
        return KVS_ERR_STATE;
    }
    kvs_cpu_matmul_ex(b ? b->pool : NULL, bw->w, x, y, T, b && b->precise);
    return KVS_OK;
}

enum kvs_status kvs_backend_embed(struct kvs_backend *b, const struct kvs_backend_weight *bw, const int32_t *tokens,
                                  int T, float *out)
{
    if (b && b->ops->embed && (bw->dev || !b->ops->weight_prepare)) return b->ops->embed(b, bw, tokens, T, out);
    if (!kvs_backend_host_memory(b)) {
        kvs_seterr(b->err, sizeof b->err, "embed: the table has no copy in %s memory", b->ops->name);
        return KVS_ERR_STATE;
    }
    kvs_cpu_embedding(bw->w, tokens, T, out);
    return KVS_OK;
}

enum kvs_status kvs_backend_add_bias(struct kvs_backend *b, float *y, const float *bias, int T, int n)
{
    if (b && b->ops->add_bias) return b->ops->add_bias(b, y, bias, T, n);
    kvs_cpu_add_bias(y, bias, T, n);
    return KVS_OK;
}

enum kvs_status kvs_backend_add(struct kvs_backend *b, float *x, const float *y, size_t n)
{
    if (b && b->ops->add) return b->ops->add(b, x, y, n);
    kvs_cpu_add(x, y, n);
    return KVS_OK;
}

enum kvs_status kvs_backend_swiglu(struct kvs_backend *b, float *g, const float *u, size_t n)
{
    if (b && b->ops->swiglu) return b->ops->swiglu(b, g, u, n);
    kvs_cpu_swiglu(g, u, n);
    return KVS_OK;
}

/* ---- the same on host arrays: direct on host memory, else staged through temporary buffers ---- */

/* Temporary buffers of one staged call, freed together. */
struct staged {
    struct kvs_backend *b;
    struct kvs_buf buf[4];
    int n;
};

/* Buffer of BYTES holding a copy of SRC (NULL: uninitialised); NULL with b->err on failure. */
static void *stage_in(struct staged *s, const void *src, size_t bytes)
{
    struct kvs_buf *bf = &s->buf[s->n];
    if (kvs_backend_buf_alloc(s->b, bf, bytes) != KVS_OK) return NULL;
    s->n++;
    if (src && kvs_backend_buf_upload(s->b, bf, 0, src, bytes) != KVS_OK) return NULL;
    return bf->data;
}

static enum kvs_status stage_out(struct staged *s, void *dst, int idx, size_t bytes)
{
    return kvs_backend_buf_download(s->b, dst, &s->buf[idx], 0, bytes);
}

static void stage_done(struct staged *s)
{
    for (int i = 0; i < s->n; i++) kvs_backend_buf_free(s->b, &s->buf[i]);
}

enum kvs_status kvs_backend_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                    float eps)
{
    if (kvs_backend_host_memory(b)) return kvs_backend_rmsnorm_buf(b, out, x, w, T, n, eps);
    if (T <= 0 || n <= 0) return T == 0 ? KVS_OK : KVS_ERR_ARG;
    struct staged s = {.b = b};
    size_t bytes = (size_t)T * n * sizeof(float);
    float *dx = stage_in(&s, x, bytes), *dw = dx ? stage_in(&s, w, (size_t)n * sizeof(float)) : NULL;
    float *dy = dw ? stage_in(&s, NULL, bytes) : NULL;
    enum kvs_status st = dy ? kvs_backend_rmsnorm_buf(b, dy, dx, dw, T, n, eps) : KVS_ERR_BACKEND;
    if (st == KVS_OK) st = stage_out(&s, out, 2, bytes);
    stage_done(&s);
    return st;
}

enum kvs_status kvs_backend_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                 const int32_t *pos, const float *freqs, bool neox)
{
    if (kvs_backend_host_memory(b)) return kvs_backend_rope_buf(b, x, T, n_heads, head_dim, pos, freqs, neox);
    if (T <= 0 || n_heads <= 0 || head_dim <= 0) return T == 0 ? KVS_OK : KVS_ERR_ARG;
    struct staged s = {.b = b};
    size_t bytes = (size_t)T * n_heads * head_dim * sizeof(float);
    float *dx = stage_in(&s, x, bytes);
    int32_t *dp = dx ? stage_in(&s, pos, (size_t)T * sizeof(int32_t)) : NULL;
    float *df = dp ? stage_in(&s, freqs, (size_t)(head_dim / 2) * sizeof(float)) : NULL;
    enum kvs_status st = df ? kvs_backend_rope_buf(b, dx, T, n_heads, head_dim, dp, df, neox) : KVS_ERR_BACKEND;
    if (st == KVS_OK) st = stage_out(&s, x, 0, bytes);
    stage_done(&s);
    return st;
}

enum kvs_status kvs_backend_set_weights(struct kvs_backend *b, const char *want)
{
    if (!want || !*want) want = "auto";
    if (strcmp(want, "auto") && strcmp(want, "bf16") && strcmp(want, "fp16")) {
        if (b) kvs_seterr(b->err, sizeof b->err, "unknown weights type '%s' (auto, bf16 or fp16)", want);
        return KVS_ERR_ARG;
    }
    if (b && b->ops->set_weights) return b->ops->set_weights(b, want);
    return KVS_OK;
}

/* Fills *BW for W as a product operand, an exact factor or a table, and makes the device copy. */
static enum kvs_status weight_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw, const struct kvs_weight *w,
                                      bool table, bool exact)
{
    bw->w = w;
    bw->dev = NULL;
    bw->table = table;
    bw->exact = exact;
    if (b && b->ops->weight_prepare) return b->ops->weight_prepare(b, bw);
    return KVS_OK;
}

enum kvs_status kvs_backend_weight_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                           const struct kvs_weight *w)
{
    return weight_prepare(b, bw, w, false, false);
}

enum kvs_status kvs_backend_factor_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                           const struct kvs_weight *w)
{
    return weight_prepare(b, bw, w, false, true);
}

enum kvs_status kvs_backend_table_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                          const struct kvs_weight *w)
{
    return weight_prepare(b, bw, w, true, false);
}

void kvs_backend_weight_release(struct kvs_backend *b, struct kvs_backend_weight *bw)
{
    if (b && b->ops->weight_release && bw->dev) b->ops->weight_release(b, bw);
    bw->dev = NULL;
}

enum kvs_status kvs_backend_matmul(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                   float *y, int T)
{
    if (kvs_backend_host_memory(b)) return kvs_backend_matmul_buf(b, bw, x, y, T);
    if (T <= 0) return T == 0 ? KVS_OK : KVS_ERR_ARG;
    struct staged s = {.b = b};
    size_t ybytes = (size_t)T * (size_t)bw->w->rows * sizeof(float);
    float *dx = stage_in(&s, x, (size_t)T * (size_t)bw->w->cols * sizeof(float));
    float *dy = dx ? stage_in(&s, NULL, ybytes) : NULL;
    enum kvs_status st = dy ? kvs_backend_matmul_buf(b, bw, dx, dy, T) : KVS_ERR_BACKEND;
    if (st == KVS_OK) st = stage_out(&s, y, 1, ybytes);
    stage_done(&s);
    return st;
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

/* Adds what the CPU twins clamped into host rows during one store (rows' count now minus BEFORE)
 * to B's host count: the CPU backend's own entries and any backend's fallbacks alike. */
static void host_clamped(struct kvs_backend *b, uint64_t before, uint64_t now)
{
    if (b) b->cache_clamped_host += now - before;
}

enum kvs_status kvs_backend_kv_store(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T,
                                     const int32_t *pos, const float *k, const float *v)
{
    uint64_t c0 = L->clamped;
    enum kvs_status st;
    if (kvs_backend_kv_native(b)) {
        st = b->ops->kv_store(b, L, dkv, T, pos, k, v);
    } else if (!kvs_backend_host_memory(b)) { /* the CPU twin cannot read another backend's buffers */
        kvs_seterr(b->err, sizeof b->err, "kv_store: %s has buffers but no K/V pool entries", b->ops->name);
        return KVS_ERR_STATE;
    } else {
        uint64_t t0 = fallback_begin(b);
        st = kvs_cpu_kv_store(L, dkv, T, pos, k, v);
        fallback_end(b, t0);
    }
    host_clamped(b, c0, L->clamped);
    return st;
}

enum kvs_status kvs_backend_kv_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                      const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass)
{
    if (kvs_backend_kv_native(b)) return b->ops->kv_attend(b, L, a, q, out, mass);
    if (!kvs_backend_host_memory(b)) {
        kvs_seterr(b->err, sizeof b->err, "kv_attend: %s has buffers but no K/V pool entries", b->ops->name);
        return KVS_ERR_STATE;
    }
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

enum kvs_status kvs_backend_kv_keys_gather(struct kvs_backend *b, const struct kvs_kv_rows *const *Ls, int n,
                                           int dkv, const int32_t *rows, uint16_t *k)
{
    if (kvs_backend_kv_native(b) && b->ops->kv_keys_gather) return b->ops->kv_keys_gather(b, Ls, n, dkv, rows, k);
    for (int i = 0; i < n; i++) {
        enum kvs_status st = kvs_backend_kv_read(b, Ls[i], dkv, rows[i], 1, k + (size_t)i * dkv, NULL, NULL);
        if (st != KVS_OK) return st;
    }
    return KVS_OK;
}

/* ---- latent segment entries: the backend's set (fp16 rows), or the CPU twins on host memory ---- */

bool kvs_backend_lat_native(const struct kvs_backend *b, const struct kvs_lat_fmt *f)
{
    /* fp16 rows wherever there are lat_* entries; other codecs where the backend says it takes them
     * (for CUDA the loaded library decides, so an older one keeps packed rows on the host) */
    return b && b->ops->lat_grow &&
           (f->codec == KVS_LAT_FP16 || (b->ops->lat_codec && b->ops->lat_codec(b, f->codec)));
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

enum kvs_status kvs_backend_lat_store_buf(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                          int arr, int row0, int T, const float *x, const int32_t *pos)
{
    uint64_t c0 = L->clamped;
    enum kvs_status st;
    if (kvs_backend_lat_native(b, f)) {
        st = b->ops->lat_store(b, L, f, arr, row0, T, x, pos);
    } else {
        uint64_t t0 = fallback_begin(b);
        if (kvs_backend_host_memory(b)) {
            st = kvs_cpu_lat_store(L, f, arr, row0, T, x, pos);
        } else { /* rows the backend keeps on the host (a format it does not take): X comes down first */
            size_t bytes = (size_t)T * f->width * sizeof(float);
            float *h = malloc(bytes ? bytes : 1);
            st = h ? b->ops->buf_download(b, h, x, bytes) : KVS_ERR_NOMEM;
            if (st == KVS_OK) st = kvs_cpu_lat_store(L, f, arr, row0, T, h, pos);
            free(h);
        }
        fallback_end(b, t0);
    }
    host_clamped(b, c0, L->clamped);
    return st;
}

enum kvs_status kvs_backend_lat_store(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      int arr, int row0, int T, const float *x, const int32_t *pos)
{
    bool native = kvs_backend_lat_native(b, f);
    uint64_t c0 = L->clamped;
    enum kvs_status st;
    if (native && kvs_backend_host_memory(b)) {
        st = b->ops->lat_store(b, L, f, arr, row0, T, x, pos);
    } else if (!native) { /* host rows: X is where they are */
        uint64_t t0 = fallback_begin(b);
        st = kvs_cpu_lat_store(L, f, arr, row0, T, x, pos);
        fallback_end(b, t0);
    } else { /* staged through a buffer of the backend's memory */
        struct kvs_buf tmp = {0};
        size_t bytes = (size_t)T * f->width * sizeof(float);
        st = kvs_backend_buf_alloc(b, &tmp, bytes ? bytes : 1);
        if (st == KVS_OK) st = kvs_backend_buf_upload(b, &tmp, 0, x, bytes);
        if (st == KVS_OK) st = b->ops->lat_store(b, L, f, arr, row0, T, tmp.data, pos);
        kvs_backend_buf_free(b, &tmp);
    }
    host_clamped(b, c0, L->clamped);
    return st;
}

enum kvs_status kvs_backend_lat_copy(struct kvs_backend *b, const struct kvs_lat_rows *src,
                                     const struct kvs_lat_fmt *sf, int sarr, int row0, int n,
                                     struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df, int darr, int drow0,
                                     const int32_t *pos)
{
    bool sn = kvs_backend_lat_native(b, sf), dn = kvs_backend_lat_native(b, df);
    uint64_t c0 = dst->clamped;
    enum kvs_status st;
    if (sn && dn && b->ops->lat_copy) {
        st = b->ops->lat_copy(b, src, sf, sarr, row0, n, dst, df, darr, drow0, pos);
    } else if (!sn && !dn) { /* both in host memory */
        uint64_t t0 = fallback_begin(b);
        st = kvs_cpu_lat_copy(src, sf, sarr, row0, n, dst, df, darr, drow0, pos);
        fallback_end(b, t0);
    } else { /* through the host: decoded rows come down and go up again into the destination's format */
        if (sf->width != df->width || n < 0) return KVS_ERR_ARG;
        uint64_t t0 = fallback_begin(b);
        float *h = malloc((size_t)(n ? n : 1) * sf->width * sizeof(float));
        st = h ? kvs_backend_lat_read(b, src, sf, sarr, row0, n, h, NULL) : KVS_ERR_NOMEM;
        if (st == KVS_OK) st = kvs_backend_lat_store(b, dst, df, darr, drow0, n, h, pos);
        free(h);
        fallback_end(b, t0);
        return st; /* kvs_backend_lat_store counted what it clamped */
    }
    host_clamped(b, c0, dst->clamped);
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
    uint64_t c0 = dst->clamped;
    enum kvs_status st;
    if (kvs_backend_lat_native(b, f)) {
        st = b->ops->lat_merge(b, src, dst, f, idx, m, w);
    } else {
        uint64_t t0 = fallback_begin(b);
        st = kvs_cpu_lat_merge(src, dst, f, idx, m, w);
        fallback_end(b, t0);
    }
    host_clamped(b, c0, dst->clamped);
    return st;
}

bool kvs_backend_lat_attend_native(const struct kvs_backend *b, const struct kvs_lat_attend_args *a)
{
    if (!b || !b->ops->lat_attend || !a->f || !kvs_backend_lat_native(b, a->f)) return false;
    for (int i = 0; i < a->n_segs && i < KVS_LAT_ATTEND_MAX_SEGS; i++)
        if (a->seg_f[i] && !kvs_backend_lat_native(b, a->seg_f[i])) return false;
    return true;
}

enum kvs_status kvs_backend_lat_attend(struct kvs_backend *b, const struct kvs_lat_attend_args *a, const float *q,
                                       float *out, float *mass)
{
    if (!a->f) return KVS_ERR_ARG;
    if (kvs_backend_lat_attend_native(b, a)) return b->ops->lat_attend(b, a, q, out, mass);
    if (!kvs_backend_host_memory(b)) {
        kvs_seterr(b->err, sizeof b->err, "lat_attend: %s cannot attend over these latent rows on its buffers",
                   b->ops->name);
        return KVS_ERR_STATE;
    }
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = cpu_lat_attend_scored(b ? b->pool : NULL, a, q, out, mass);
    fallback_end(b, t0);
    return st;
}

/* ---- the card ---- */

enum kvs_status kvs_backend_mem_info(struct kvs_backend *b, uint64_t *used, uint64_t *total)
{
    *used = *total = 0;
    if (!b || !b->ops->mem_info) return KVS_ERR_UNSUPPORTED;
    return b->ops->mem_info(b, used, total);
}

enum kvs_status kvs_backend_acts_saturated(struct kvs_backend *b, uint64_t *count)
{
    *count = 0;
    if (!b || !b->ops->acts_saturated) return KVS_OK;
    enum kvs_status st = b->ops->acts_saturated(b, count);
    if (st == KVS_OK) b->acts_saturated = *count;
    else *count = b->acts_saturated;
    return st;
}

enum kvs_status kvs_backend_cache_saturated(struct kvs_backend *b, uint64_t *count)
{
    *count = 0;
    if (!b) return KVS_OK;
    uint64_t dev = 0;
    enum kvs_status st = KVS_OK;
    if (b->ops->cache_saturated) st = b->ops->cache_saturated(b, &dev);
    if (st == KVS_OK) b->cache_saturated = dev + b->cache_clamped_host;
    *count = b->cache_saturated;
    return st;
}

/* ---- MiniCache pair entries: the backend's set, or the CPU twins on host memory, counted ---- */

bool kvs_backend_mc_native(const struct kvs_backend *b) { return b && b->ops->mc_grow; }

/* The CPU twins read host memory only: on a backend with its own (device) memory the missing
 * entries are an error, not a fallback. */
static bool mc_fallback_ok(struct kvs_backend *b, const char *what)
{
    if (kvs_backend_host_memory(b)) return true;
    kvs_seterr(b->err, sizeof b->err, "%s: %s holds rows in its own memory but has no minicache entries", what,
               b->ops->name);
    return false;
}

enum kvs_status kvs_backend_mc_grow(struct kvs_backend *b, struct kvs_mc_rows *P, int nkv, int d, int cap)
{
    if (kvs_backend_mc_native(b)) {
        int old = P->cap;
        enum kvs_status st = b->ops->mc_grow(b, P, nkv, d, cap);
        uint64_t row = kvs_mc_row_bytes(nkv, d);
        b->pool_bytes = b->pool_bytes - (uint64_t)old * row + (uint64_t)P->cap * row;
        return st;
    }
    if (!mc_fallback_ok(b, "mc_grow")) return KVS_ERR_STATE;
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_mc_grow(P, nkv, d, cap);
    fallback_end(b, t0);
    return st;
}

/* ---- quantized K/V pool entries: the backend's set, or the CPU twins on host memory, counted ---- */

bool kvs_backend_kvq_native(const struct kvs_backend *b) { return b && b->ops->kvq_grow; }

/* Without the entries a backend's quantized pools (their fp16 tier included, see kvq_pool.c) live
 * in host memory, and kvq_attend's q and out are host arrays. */
enum kvs_status kvs_backend_kvq_grow(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                     int tq_cap, size_t kq_cap, int n_score)
{
    if (kvs_backend_kvq_native(b)) {
        uint64_t old = (uint64_t)L->tq_cap * (f->vrow + sizeof(int32_t)) + L->kq_cap +
                       (uint64_t)L->n_score * sizeof(float);
        enum kvs_status st = b->ops->kvq_grow(b, L, f, tq_cap, kq_cap, n_score);
        b->pool_bytes = b->pool_bytes - old + (uint64_t)L->tq_cap * (f->vrow + sizeof(int32_t)) + L->kq_cap +
                        (uint64_t)L->n_score * sizeof(float);
        return st;
    }
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kvq_grow(L, f, tq_cap, kq_cap, n_score);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_mc_score(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                     int nkv, int d, const int32_t *idx, int m, float *dist, double *dots)
{
    if (kvs_backend_mc_native(b)) return b->ops->mc_score(b, A, B, nkv, d, idx, m, dist, dots);
    if (!mc_fallback_ok(b, "mc_score")) return KVS_ERR_STATE;
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_mc_score(A, B, nkv, d, idx, m, dist, dots);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kvq_quantize(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f)
{
    if (kvs_backend_kvq_native(b)) return b->ops->kvq_quantize(b, L, f);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kvq_quantize(L, f);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_mc_merge(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                     struct kvs_mc_rows *P, int nkv, int d, float t, const int32_t *idx, int m,
                                     int keep)
{
    uint64_t c0 = P->clamped;
    enum kvs_status st;
    if (kvs_backend_mc_native(b)) {
        st = b->ops->mc_merge(b, A, B, P, nkv, d, t, idx, m, keep);
    } else {
        if (!mc_fallback_ok(b, "mc_merge")) return KVS_ERR_STATE;
        uint64_t t0 = fallback_begin(b);
        st = kvs_cpu_mc_merge(A, B, P, nkv, d, t, idx, m, keep);
        fallback_end(b, t0);
    }
    host_clamped(b, c0, P->clamped);
    return st;
}

enum kvs_status kvs_backend_kvq_attend(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                       const struct kvs_kv_attend_args *a, const float *q, float *out, bool score)
{
    if (kvs_backend_kvq_native(b)) return b->ops->kvq_attend(b, L, f, a, q, out, score);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kvq_attend(b ? b->pool : NULL, L, f, a, q, out, score);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_mc_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                      const struct kvs_mc_rows *P, int side, const struct kvs_kv_attend_args *a,
                                      const float *q, float *out)
{
    if (kvs_backend_mc_native(b)) return b->ops->mc_attend(b, L, P, side, a, q, out);
    if (!mc_fallback_ok(b, "mc_attend")) return KVS_ERR_STATE;
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_mc_attend(b ? b->pool : NULL, L, P, side, a, q, out);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kvq_compact(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                        const uint8_t *keep)
{
    if (kvs_backend_kvq_native(b)) return b->ops->kvq_compact(b, L, f, keep);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kvq_compact(L, f, keep);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_mc_read(struct kvs_backend *b, const struct kvs_mc_rows *P, int nkv, int d, int row0,
                                    int n, uint16_t *ek, uint16_t *ev, uint16_t *nrm, int32_t *pos)
{
    if (kvs_backend_mc_native(b)) return b->ops->mc_read(b, P, nkv, d, row0, n, ek, ev, nrm, pos);
    if (!mc_fallback_ok(b, "mc_read")) return KVS_ERR_STATE;
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_mc_read(P, nkv, d, row0, n, ek, ev, nrm, pos);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kvq_read(struct kvs_backend *b, const struct kvs_kvq_rows *L,
                                     const struct kvs_kvq_fmt *f, uint8_t *kq, uint8_t *vq, int32_t *pq)
{
    if (kvs_backend_kvq_native(b)) return b->ops->kvq_read(b, L, f, kq, vq, pq);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kvq_read(L, f, kq, vq, pq);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_kvq_scores(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                       int n_ctx, int kernel, float *pooled)
{
    if (kvs_backend_kvq_native(b)) return b->ops->kvq_scores(b, L, f, n_ctx, kernel, pooled);
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_kvq_scores(L, f, n_ctx, kernel, pooled);
    fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_lat_attend_host(struct kvs_backend *b, struct kvs_pool *pool,
                                            const struct kvs_lat_attend_args *a, const float *q, float *out,
                                            float *mass)
{
    bool host = kvs_backend_host_memory(b);
    uint64_t t0 = host ? 0 : fallback_begin(b);
    enum kvs_status st = cpu_lat_attend_scored(b ? b->pool : pool, a, q, out, mass);
    if (!host) fallback_end(b, t0);
    return st;
}

enum kvs_status kvs_backend_lat_cosine(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                       int arr0, int arr1, bool adj, int row0, int n, float *out)
{
    if (b && b->ops->lat_cosine && kvs_backend_lat_native(b, f))
        return b->ops->lat_cosine(b, L, f, arr0, arr1, adj, row0, n, out);
    if (kvs_backend_lat_native(b, f) && !kvs_backend_host_memory(b)) {
        kvs_seterr(b->err, sizeof b->err, "lat_cosine: %s holds these rows but has no lat_cosine entry", b->ops->name);
        return KVS_ERR_STATE;
    }
    uint64_t t0 = fallback_begin(b);
    enum kvs_status st = kvs_cpu_lat_cosine(L, f, arr0, arr1, adj, row0, n, out);
    fallback_end(b, t0);
    return st;
}
