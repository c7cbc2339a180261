/* Backend registry (a static array, CPU first, CUDA found at run time), the wrappers that fall back
 * to the CPU path when an optional entry is NULL, and the CPU backend itself: thin adapters over
 * the reference functions of engine/run/infer.c and engine/cpu/ (the SVD) plus CPU attention over
 * latents / fp16 K/V, which are the oracle for kernels/. Depends on libc, engine/ headers;
 * never prints, never exits. */
#include "backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "infer.h"
#include "quant.h"
#include "record.h"
#include "svd.h"

/* ---------------------------------------------------------------- CPU references */

/* Queries per chunk so that the (chunk, n_head, n) score matrix stays near 64 MiB. */
static int attn_chunk(int T, int n_head, int64_t n)
{
    int64_t per_q = (int64_t)n_head * n;
    int64_t tc = per_q > 0 ? ((int64_t)16 << 20) / per_q : T;
    if (tc < 1) tc = 1;
    if (tc > T) tc = T;
    return (int)tc;
}

/* Softmax of one row in place; -inf entries become 0, a fully masked row all 0. */
static void softmax_row(float *x, int64_t n)
{
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof(float));
        return;
    }
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static float dotf(const float *a, const float *b, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Validates the common head shape; returns the total token count in *n_out. */
static enum kvs_status attn_shape(int T, const int32_t *q_pos, int n_head, int n_head_kv, int head_dim,
                                  int n_segs, const int *seg_n, int64_t *n_out)
{
    int64_t n = 0;
    if (T < 0 || (T > 0 && !q_pos) || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv != 0 || head_dim <= 0 ||
        head_dim % 2 != 0 || head_dim > KVS_CUDA_MAX_HEAD_DIM || n_segs < 0)
        return KVS_ERR_ARG;
    for (int s = 0; s < n_segs; s++) {
        if (seg_n[s] < 0) return KVS_ERR_ARG;
        n += seg_n[s];
    }
    if (n > 0x7fffffff) return KVS_ERR_ARG;
    *n_out = n;
    return KVS_OK;
}

struct latent_job {
    const struct kvs_attn_latent_args *a;
    const float *q;           /* (tn, n_head*d) this chunk's queries */
    const int32_t *q_pos;     /* (tn) */
    int tn;
    int64_t n;
    const int64_t *seg_off;   /* (n_segs + 1) first global token of each segment */
    float *scores;            /* (tn, n_head, n) */
    float *pc;                /* (tn, n_head, rank) */
    float *out;               /* (tn, n_head*d) */
};

/* Scores of key K (KV head G, position PJ) against the GQ query heads of G for every query of the
 * chunk, written at column J of SCORES (tn, H, n); masked queries get -inf. */
static void key_scores(const float *q, const int32_t *q_pos, int tn, int H, int gq, int d, float scale, int g,
                       const float *k, int32_t pj, float *scores, int64_t n, int64_t j)
{
    for (int t = 0; t < tn; t++) {
        bool visible = pj <= q_pos[t];
        for (int hh = 0; hh < gq; hh++) {
            int h = g * gq + hh;
            scores[((size_t)t * H + h) * n + j] = visible ? dotf(q + ((size_t)t * H + h) * d, k, d) * scale : -INFINITY;
        }
    }
}

static void seg_find(const int64_t *off, int n_segs, int64_t j, int *s, int *local)
{
    int i = 0;
    while (i + 1 < n_segs && j >= off[i + 1]) i++;
    *s = i;
    *local = (int)(j - off[i]);
}

/* Fused keys: k = RoPE(B_k[g] c_j) one at a time, dotted with every query of the head group. */
static void latent_scores_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct latent_job *jb = ctx;
    const struct kvs_attn_latent_args *a = jb->a;
    int d = a->head_dim, r = a->rank, H = a->n_head, gq = a->n_head / a->n_head_kv;
    float k[KVS_CUDA_MAX_HEAD_DIM];
    for (int64_t j = b; j < e; j++) {
        int s, l;
        seg_find(jb->seg_off, a->n_segs, j, &s, &l);
        const float *cj = a->segs[s].c + (size_t)l * r;
        int32_t pj = a->segs[s].pos[l];
        for (int g = 0; g < a->n_head_kv; g++) {
            for (int i = 0; i < d; i++) k[i] = dotf(a->bk + ((size_t)g * d + i) * r, cj, r);
            kvs_cpu_rope(k, 1, d, pj, a->freqs, a->neox);
            key_scores(jb->q, jb->q_pos, jb->tn, H, gq, d, a->scale, g, k, pj, jb->scores, jb->n, j);
        }
    }
}

/* Rows (t, h): softmax, then out = (P C) B_vᵀ with P C computed here row by row. */
static void latent_rows_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct latent_job *jb = ctx;
    const struct kvs_attn_latent_args *a = jb->a;
    int d = a->head_dim, r = a->rank, gq = a->n_head / a->n_head_kv;
    for (int64_t row = b; row < e; row++) {
        float *p = jb->scores + (size_t)row * jb->n;
        float *pc = jb->pc + (size_t)row * r;
        softmax_row(p, jb->n);
        memset(pc, 0, (size_t)r * sizeof(float));
        for (int s = 0; s < a->n_segs; s++) {
            const float *ps = p + jb->seg_off[s];
            for (int l = 0; l < a->segs[s].n; l++) {
                float w = ps[l];
                if (w == 0.0f) continue;
                const float *cl = a->segs[s].c + (size_t)l * r;
                for (int x = 0; x < r; x++) pc[x] += w * cl[x];
            }
        }
        int g = (int)(row % a->n_head) / gq;
        float *o = jb->out + (size_t)row * d;
        for (int i = 0; i < d; i++) o[i] = dotf(a->bv + ((size_t)g * d + i) * r, pc, r);
    }
}

enum kvs_status kvs_cpu_attn_latent(struct kvs_pool *pool, const struct kvs_attn_latent_args *a, const float *q,
                                    float *out)
{
    int seg_n_small[16] = {0};
    int *seg_n = a->n_segs <= 16 ? seg_n_small : malloc((size_t)a->n_segs * sizeof(int));
    int64_t *seg_off = malloc(((size_t)(a->n_segs > 0 ? a->n_segs : 0) + 1) * sizeof(int64_t));
    float *scores = NULL, *pc = NULL;
    enum kvs_status st = KVS_ERR_NOMEM;
    int64_t n = 0;
    if (!seg_n || !seg_off) goto done;
    for (int s = 0; s < a->n_segs; s++) seg_n[s] = a->segs[s].n;
    st = attn_shape(a->T, a->q_pos, a->n_head, a->n_head_kv, a->head_dim, a->n_segs, seg_n, &n);
    if (st != KVS_OK) goto done;
    st = KVS_ERR_ARG;
    if (a->rank <= 0 || (n > 0 && (!a->bk || !a->bv || !a->freqs))) goto done;
    seg_off[0] = 0;
    for (int s = 0; s < a->n_segs; s++) seg_off[s + 1] = seg_off[s] + seg_n[s];
    int dq = a->n_head * a->head_dim;
    if (a->T == 0) { st = KVS_OK; goto done; }
    if (n == 0) {
        memset(out, 0, (size_t)a->T * dq * sizeof(float));
        st = KVS_OK;
        goto done;
    }
    int tc = attn_chunk(a->T, a->n_head, n);
    st = KVS_ERR_NOMEM;
    scores = malloc((size_t)tc * a->n_head * (size_t)n * sizeof(float));
    pc = malloc((size_t)tc * a->n_head * (size_t)a->rank * sizeof(float));
    if (!scores || !pc) goto done;
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        struct latent_job jb = {.a = a, .q = q + (size_t)t0 * dq, .q_pos = a->q_pos + t0,
                                .tn = KVS_MIN(tc, a->T - t0), .n = n, .seg_off = seg_off, .scores = scores,
                                .pc = pc, .out = out + (size_t)t0 * dq};
        kvs_pool_for(pool, n, latent_scores_range, &jb);
        kvs_pool_for(pool, (int64_t)jb.tn * a->n_head, latent_rows_range, &jb);
    }
    st = KVS_OK;
done:
    if (seg_n != seg_n_small) free(seg_n);
    free(seg_off);
    free(scores);
    free(pc);
    return st;
}

struct kv16_job {
    const struct kvs_attn_kv16_args *a;
    const float *q;
    const int32_t *q_pos;
    int tn;
    int64_t n;
    const int64_t *seg_off;
    float *scores;
    float *out;
};

static void kv16_scores_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct kv16_job *jb = ctx;
    const struct kvs_attn_kv16_args *a = jb->a;
    int d = a->head_dim, H = a->n_head, dkv = a->n_head_kv * d, gq = a->n_head / a->n_head_kv;
    float k[KVS_CUDA_MAX_HEAD_DIM];
    for (int64_t j = b; j < e; j++) {
        int s, l;
        seg_find(jb->seg_off, a->n_segs, j, &s, &l);
        int32_t pj = a->segs[s].pos[l];
        for (int g = 0; g < a->n_head_kv; g++) {
            const uint16_t *kj = a->segs[s].k + (size_t)l * dkv + (size_t)g * d;
            for (int i = 0; i < d; i++) k[i] = kvs_fp16_to_fp32(kj[i]);
            key_scores(jb->q, jb->q_pos, jb->tn, H, gq, d, a->scale, g, k, pj, jb->scores, jb->n, j);
        }
    }
}

static void kv16_rows_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct kv16_job *jb = ctx;
    const struct kvs_attn_kv16_args *a = jb->a;
    int d = a->head_dim, dkv = a->n_head_kv * d, gq = a->n_head / a->n_head_kv;
    for (int64_t row = b; row < e; row++) {
        float *p = jb->scores + (size_t)row * jb->n;
        float *o = jb->out + (size_t)row * d;
        int g = (int)(row % a->n_head) / gq;
        softmax_row(p, jb->n);
        memset(o, 0, (size_t)d * sizeof(float));
        for (int s = 0; s < a->n_segs; s++) {
            const float *ps = p + jb->seg_off[s];
            for (int l = 0; l < a->segs[s].n; l++) {
                float w = ps[l];
                if (w == 0.0f) continue;
                const uint16_t *vl = a->segs[s].v + (size_t)l * dkv + (size_t)g * d;
                for (int i = 0; i < d; i++) o[i] += w * kvs_fp16_to_fp32(vl[i]);
            }
        }
    }
}

enum kvs_status kvs_cpu_attn_kv16(struct kvs_pool *pool, const struct kvs_attn_kv16_args *a, const float *q,
                                  float *out)
{
    int seg_n_small[16] = {0};
    int *seg_n = a->n_segs <= 16 ? seg_n_small : malloc((size_t)a->n_segs * sizeof(int));
    int64_t *seg_off = malloc(((size_t)(a->n_segs > 0 ? a->n_segs : 0) + 1) * sizeof(int64_t));
    float *scores = NULL;
    enum kvs_status st = KVS_ERR_NOMEM;
    int64_t n = 0;
    if (!seg_n || !seg_off) goto done;
    for (int s = 0; s < a->n_segs; s++) seg_n[s] = a->segs[s].n;
    st = attn_shape(a->T, a->q_pos, a->n_head, a->n_head_kv, a->head_dim, a->n_segs, seg_n, &n);
    if (st != KVS_OK) goto done;
    seg_off[0] = 0;
    for (int s = 0; s < a->n_segs; s++) seg_off[s + 1] = seg_off[s] + seg_n[s];
    int dq = a->n_head * a->head_dim;
    if (a->T == 0) goto done;
    if (n == 0) {
        memset(out, 0, (size_t)a->T * dq * sizeof(float));
        goto done;
    }
    int tc = attn_chunk(a->T, a->n_head, n);
    scores = malloc((size_t)tc * a->n_head * (size_t)n * sizeof(float));
    if (!scores) {
        st = KVS_ERR_NOMEM;
        goto done;
    }
    for (int t0 = 0; t0 < a->T; t0 += tc) {
        struct kv16_job jb = {.a = a, .q = q + (size_t)t0 * dq, .q_pos = a->q_pos + t0,
                              .tn = KVS_MIN(tc, a->T - t0), .n = n, .seg_off = seg_off, .scores = scores,
                              .out = out + (size_t)t0 * dq};
        kvs_pool_for(pool, n, kv16_scores_range, &jb);
        kvs_pool_for(pool, (int64_t)jb.tn * a->n_head, kv16_rows_range, &jb);
    }
done:
    if (seg_n != seg_n_small) free(seg_n);
    free(seg_off);
    free(scores);
    return st;
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
