/* CPU forward pass (the oracle): embeddings, RMSNorm, RoPE, grouped-query attention through the
 * press, SwiGLU, output head; prefill in chunks, decode one token at a time; sampling.
 * Depends on model, quant, press, threads and OpenBLAS; never on curses or CUDA. */
#include "infer.h"
#include "backend.h"
#include "quant.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kvs_ctx {
    const struct kvs_model *m;
    struct kvs_press *press;
    struct kvs_ctx_params p;
    struct kvs_pool *pool;
    struct kvs_backend *be;
    struct kvs_backend_weight *bw; /* per layer: wq wk wv wo gate up down (7 each), then output */
    float *freqs;               /* (head_dim/2) */
    int n_past;
    /* scratch for one chunk of at most n_batch tokens */
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up; /* (B,D) (B,D) (B,dq) (B,dkv) (B,dkv) (B,dq) (B,D) (B,F) (B,F) */
    int32_t *pos;               /* (B) */
    float *logits;              /* (n_vocab) last token */
    struct kvs_op_counter ctr[KVS_OP_COUNT];
    kvs_layer_hook hook;
    void *hook_ud;
    char err[256];
};

void kvs_ctx_params_default(struct kvs_ctx_params *p)
{
    p->n_ctx = 4096;
    p->n_batch = 256;
    p->n_threads = 0;
    snprintf(p->backend, sizeof p->backend, "cpu");
    p->precise = false;
}

/* ---------------------------------------------------------------- building blocks */

void kvs_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

float *kvs_rope_freqs(const struct kvs_hparams *hp)
{
    int half = (int)hp->head_dim / 2;
    float *f = malloc((size_t)half * sizeof(float));
    if (!f) return NULL;
    for (int i = 0; i < half; i++) {
        double inv = pow((double)hp->rope_theta, -2.0 * i / (double)hp->head_dim);
        if (hp->rope_scale_factor > 0) {
            double factor = hp->rope_scale_factor;
            if (hp->rope_low_freq == 0 && hp->rope_high_freq == 0) {
                inv /= factor; /* linear */
            } else {
                double orig = hp->rope_orig_ctx ? hp->rope_orig_ctx : 8192;
                double wavelen = 2 * M_PI / inv;
                double low_wl = orig / hp->rope_low_freq, high_wl = orig / hp->rope_high_freq;
                if (wavelen < high_wl) {
                    /* high frequencies unchanged */
                } else if (wavelen > low_wl) {
                    inv /= factor;
                } else {
                    double smooth = (orig / wavelen - hp->rope_low_freq) / (hp->rope_high_freq - hp->rope_low_freq);
                    inv = (1 - smooth) * inv / factor + smooth * inv;
                }
            }
        }
        if (hp->rope_factors) inv /= hp->rope_factors[i];
        f[i] = (float)inv;
    }
    return f;
}

void kvs_cpu_rope(float *x, int n_heads, int head_dim, int32_t pos, const float *freqs, bool neox)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double ang = (double)pos * freqs[i];
        float c = (float)cos(ang), s = (float)sin(ang);
        for (int h = 0; h < n_heads; h++) {
            float *hx = x + (size_t)h * head_dim;
            int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            float x0 = hx[a], x1 = hx[b];
            hx[a] = x0 * c - x1 * s;
            hx[b] = x0 * s + x1 * c;
        }
    }
}

/* ---------------------------------------------------------------- matrix products */

#define MM_VEC_MAX 4     /* up to this many tokens use quantized dots, beyond it dequant + sgemm */
#define MM_TILE 32       /* weight rows dequantized at once for sgemm */

struct mm_job {
    const struct kvs_weight *w;
    const float *x;
    float *y;
    int T;
    struct kvs_qvec *qx;
};

/* Per-thread scratch (dequantized tiles, quantized activations), freed when its thread exits. */
struct mm_tls {
    float *tile;
    size_t tile_cap;
    struct kvs_qvec q[MM_VEC_MAX];
};
static pthread_key_t mm_key;
static pthread_once_t mm_once = PTHREAD_ONCE_INIT;

static void mm_tls_free(void *p)
{
    struct mm_tls *t = p;
    free(t->tile);
    for (int i = 0; i < MM_VEC_MAX; i++) kvs_qvec_free(&t->q[i]);
    free(t);
}

static void mm_key_init(void) { pthread_key_create(&mm_key, mm_tls_free); }

static struct mm_tls *mm_tls_get(void)
{
    pthread_once(&mm_once, mm_key_init);
    struct mm_tls *t = pthread_getspecific(mm_key);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) abort(); /* a few bytes; nothing sensible to do without them */
        pthread_setspecific(mm_key, t);
    }
    return t;
}

static void mm_vec_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct mm_job *j = ctx;
    const uint8_t *base = j->w->data;
    for (int64_t r = b; r < e; r++) {
        const void *row = base + (uint64_t)r * j->w->row_bytes;
        for (int t = 0; t < j->T; t++) j->y[(int64_t)t * j->w->rows + r] = kvs_vec_dot(j->w->type, row, &j->qx[t]);
    }
}

/* Tiles [b, e) of MM_TILE weight rows. Tiles start at multiples of MM_TILE whatever the thread
 * count, so every sgemm call, and so every output bit, is the same at any -t. */
static void mm_gemm_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct mm_job *j = ctx;
    const struct kvs_weight *w = j->w;
    int64_t cols = w->cols;
    for (int64_t r0 = b * MM_TILE; r0 < e * MM_TILE && r0 < w->rows; r0 += MM_TILE) {
        int64_t nr = KVS_MIN(MM_TILE, w->rows - r0);
        const float *tile;
        if (w->type == KVS_GGML_F32) {
            tile = (const float *)w->data + r0 * cols;
        } else {
            struct mm_tls *tl = mm_tls_get();
            size_t need = (size_t)(nr * cols);
            if (need > tl->tile_cap) {
                float *nt = realloc(tl->tile, need * sizeof(float));
                if (!nt) abort(); /* scratch of a few hundred KiB; nothing sensible to do without it */
                tl->tile = nt;
                tl->tile_cap = need;
            }
            for (int64_t r = 0; r < nr; r++) kvs_weight_row_f32(w, r0 + r, tl->tile + r * cols);
            tile = tl->tile;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->T, (int)nr, (int)cols, 1.0f, j->x, (int)cols, tile,
                    (int)cols, 0.0f, j->y + r0, (int)w->rows);
    }
}

void kvs_cpu_matmul(struct kvs_pool *pool, const struct kvs_weight *w, const float *x, float *y, int T)
{
    kvs_cpu_matmul_ex(pool, w, x, y, T, false);
}

void kvs_cpu_matmul_ex(struct kvs_pool *pool, const struct kvs_weight *w, const float *x, float *y, int T,
                       bool precise)
{
    struct mm_job j = {.w = w, .x = x, .y = y, .T = T, .qx = NULL};
    if (T <= MM_VEC_MAX && !precise) {
        struct mm_tls *tl = mm_tls_get();
        j.qx = tl->q;
        for (int t = 0; t < T; t++)
            if (kvs_quant_prepare(&tl->q[t], w->type, x + (int64_t)t * w->cols, w->cols) != KVS_OK) abort();
        /* small products cost less than waking the pool */
        if ((int64_t)w->rows * w->cols * T < (1 << 16)) mm_vec_range(&j, 0, w->rows, 0);
        else kvs_pool_for(pool, w->rows, mm_vec_range, &j);
    } else {
        kvs_pool_for(pool, (w->rows + MM_TILE - 1) / MM_TILE, mm_gemm_range, &j);
    }
}

/* ---------------------------------------------------------------- context */

static void ctr_add(struct kvs_ctx *c, enum kvs_op op, uint64_t t0, uint64_t bytes, uint64_t flops)
{
    struct kvs_op_counter *k = &c->ctr[op];
    k->ns += kvs_now_ns() - t0;
    k->bytes += bytes;
    k->flops += flops;
    k->calls++;
}

enum kvs_status kvs_ctx_new(struct kvs_ctx **out, const struct kvs_model *model, struct kvs_press *press,
                            const struct kvs_ctx_params *p, char *err, size_t errlen)
{
    *out = NULL;
    if (p->n_ctx <= 0 || p->n_ctx > (1 << 24) || p->n_batch <= 0 || p->n_batch > 65536) {
        kvs_seterr(err, errlen, "context %d / batch %d out of range", p->n_ctx, p->n_batch);
        return KVS_ERR_ARG;
    }
    struct kvs_ctx *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->m = model;
    c->press = press;
    c->p = *p;
    openblas_set_num_threads(1); /* we thread over rows ourselves */
    c->pool = kvs_pool_new(p->n_threads);
    c->freqs = kvs_rope_freqs(&model->hp);
    const struct kvs_hparams *hp = &model->hp;
    size_t B = (size_t)p->n_batch, D = hp->n_embd, dq = (size_t)hp->n_head * hp->head_dim;
    size_t dkv = (size_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
    c->x = malloc(B * D * sizeof(float));
    c->xn = malloc(B * D * sizeof(float));
    c->q = malloc(B * dq * sizeof(float));
    c->k = malloc(B * dkv * sizeof(float));
    c->v = malloc(B * dkv * sizeof(float));
    c->att = malloc(B * dq * sizeof(float));
    c->tmp = malloc(B * D * sizeof(float));
    c->gate = malloc(B * F * sizeof(float));
    c->up = malloc(B * F * sizeof(float));
    c->pos = malloc(B * sizeof(int32_t));
    c->logits = calloc(hp->n_vocab, sizeof(float));
    if (!c->pool || !c->freqs || !c->x || !c->xn || !c->q || !c->k || !c->v || !c->att || !c->tmp || !c->gate ||
        !c->up || !c->pos || !c->logits)
        goto oom;
    const char *bname = p->backend[0] ? p->backend : "cpu";
    enum kvs_status bst = kvs_backend_new(&c->be, bname, c->pool, err, errlen);
    if (bst != KVS_OK) {
        kvs_ctx_delete(c);
        return bst;
    }
    c->be->precise = p->precise;
    size_t nbw = (size_t)hp->n_layer * 7 + 1;
    c->bw = calloc(nbw, sizeof *c->bw);
    if (!c->bw) goto oom;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const struct kvs_layer *ly = &model->layers[l];
        const struct kvs_weight *ws[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        for (int i = 0; i < 7; i++) {
            bst = kvs_backend_weight_prepare(c->be, &c->bw[l * 7 + i], ws[i]);
            if (bst != KVS_OK) {
                kvs_seterr(err, errlen, "%s backend: preparing layer %u weights: %s", bname, l, kvs_backend_error(c->be));
                kvs_ctx_delete(c);
                return bst;
            }
        }
    }
    bst = kvs_backend_weight_prepare(c->be, &c->bw[nbw - 1], &model->output);
    if (bst != KVS_OK) {
        kvs_seterr(err, errlen, "%s backend: preparing the output head: %s", bname, kvs_backend_error(c->be));
        kvs_ctx_delete(c);
        return bst;
    }
    c->be->ctr = c->ctr;
    if (press) {
        press->ops_ctr = c->ctr;
        press->pool = c->pool;
        if (press->be != c->be && press->ops->detach) press->ops->detach(press);
        press->be = c->be;
    }
    *out = c;
    return KVS_OK;
oom:
    kvs_ctx_delete(c);
    kvs_seterr(err, errlen, "out of memory for a context of %d tokens (batch %d)", p->n_ctx, p->n_batch);
    return KVS_ERR_NOMEM;
}

void kvs_ctx_delete(struct kvs_ctx *c)
{
    if (!c) return;
    if (c->press && c->be && c->press->be == c->be) { /* its pools go with the backend */
        if (c->press->ops->detach) c->press->ops->detach(c->press);
        c->press->be = NULL;
    }
    if (c->bw && c->be)
        for (size_t i = 0; i < (size_t)c->m->hp.n_layer * 7 + 1; i++) kvs_backend_weight_release(c->be, &c->bw[i]);
    free(c->bw);
    kvs_backend_delete(c->be);
    kvs_pool_delete(c->pool);
    free(c->freqs);
    free(c->x); free(c->xn); free(c->q); free(c->k); free(c->v);
    free(c->att); free(c->tmp); free(c->gate); free(c->up);
    free(c->pos); free(c->logits);
    free(c);
}

const float *kvs_ctx_logits(const struct kvs_ctx *c) { return c->logits; }
int kvs_ctx_n_past(const struct kvs_ctx *c) { return c->n_past; }
struct kvs_op_counter *kvs_ctx_counters(struct kvs_ctx *c) { return c->ctr; }
struct kvs_pool *kvs_ctx_pool(struct kvs_ctx *c) { return c->pool; }
const char *kvs_ctx_error(const struct kvs_ctx *c) { return c->err; }
const char *kvs_ctx_backend(const struct kvs_ctx *c) { return kvs_backend_name(c->be); }
uint64_t kvs_ctx_pool_bytes(const struct kvs_ctx *c) { return c->be ? c->be->pool_bytes : 0; }
const char *kvs_ctx_device(const struct kvs_ctx *c) { return kvs_backend_device(c->be); }

void kvs_ctx_set_hook(struct kvs_ctx *c, kvs_layer_hook fn, void *ud)
{
    c->hook = fn;
    c->hook_ud = ud;
}

void kvs_ctx_reset(struct kvs_ctx *c)
{
    c->n_past = 0;
    if (c->press && c->press->ops->reset) c->press->ops->reset(c->press);
}

static enum kvs_status matmul_ctr(struct kvs_ctx *c, const struct kvs_backend_weight *bw, const float *x, float *y, int T)
{
    const struct kvs_weight *w = bw->w;
    uint64_t t0 = kvs_now_ns();
    enum kvs_status st = kvs_backend_matmul(c->be, bw, x, y, T);
    ctr_add(c, KVS_OP_MATMUL, t0, (uint64_t)w->rows * w->row_bytes + (uint64_t)T * (w->cols + w->rows) * 4,
            2ull * T * w->rows * w->cols);
    if (st != KVS_OK) kvs_seterr(c->err, sizeof c->err, "%s backend: %s", kvs_backend_name(c->be), kvs_backend_error(c->be));
    return st;
}

static void add_bias(float *y, const float *b, int T, int n)
{
    if (!b) return;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

static void silu_mul(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* One chunk of T <= n_batch tokens. */
static enum kvs_status eval_chunk(struct kvs_ctx *c, const int32_t *tokens, int T, float *logits_all)
{
    const struct kvs_model *m = c->m;
    const struct kvs_hparams *hp = &m->hp;
    const int D = (int)hp->n_embd, d = (int)hp->head_dim, nh = (int)hp->n_head, nkv = (int)hp->n_head_kv;
    const int dq = nh * d, dkv = nkv * d, F = (int)hp->n_ff, V = (int)hp->n_vocab;
    struct kvs_press *pr = c->press;
    bool need_kv = !pr || (pr->needs & KVS_PRESS_NEEDS_KV) || c->hook;
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= V) {
            kvs_seterr(c->err, sizeof c->err, "token id %d out of range (vocabulary %d)", tokens[t], V);
            return KVS_ERR_ARG;
        }
        c->pos[t] = c->n_past + t;
        kvs_weight_row_f32(&m->tok_embd, tokens[t], c->x + (size_t)t * D);
    }
    enum kvs_status st = KVS_OK;
#define TRY(expr) do { if ((st = (expr)) != KVS_OK) { if (!c->err[0]) kvs_seterr(c->err, sizeof c->err, "%s backend: %s", kvs_backend_name(c->be), kvs_backend_error(c->be)); return st; } } while (0)
    c->err[0] = 0;
    for (int l = 0; l < (int)hp->n_layer; l++) {
        const struct kvs_layer *ly = &m->layers[l];
        const struct kvs_backend_weight *bw = &c->bw[l * 7];
        uint64_t t0 = kvs_now_ns();
        TRY(kvs_backend_rmsnorm(c->be, c->xn, c->x, ly->attn_norm, T, D, hp->rms_eps));
        ctr_add(c, KVS_OP_NORM, t0, (uint64_t)T * D * 12, (uint64_t)T * D * 4);
        TRY(matmul_ctr(c, &bw[0], c->xn, c->q, T));
        add_bias(c->q, ly->bq, T, dq);
        if (need_kv) {
            TRY(matmul_ctr(c, &bw[1], c->xn, c->k, T));
            add_bias(c->k, ly->bk, T, dkv);
            TRY(matmul_ctr(c, &bw[2], c->xn, c->v, T));
            add_bias(c->v, ly->bv, T, dkv);
        }
        if (c->hook) c->hook(c->hook_ud, l, T, c->pos, c->x, c->xn, c->k);
        t0 = kvs_now_ns();
        TRY(kvs_backend_rope(c->be, c->q, T, nh, d, c->pos, c->freqs, hp->rope_neox));
        if (need_kv) TRY(kvs_backend_rope(c->be, c->k, T, nkv, d, c->pos, c->freqs, hp->rope_neox));
        ctr_add(c, KVS_OP_ROPE, t0, (uint64_t)T * (dq + dkv) * 8, (uint64_t)T * (dq + dkv) * 3);
        if (!pr) {
            kvs_seterr(c->err, sizeof c->err, "no KV-cache method set");
            return KVS_ERR_STATE;
        }
        t0 = kvs_now_ns();
        st = pr->ops->store(pr, l, T, c->pos, c->xn, need_kv ? c->k : NULL, need_kv ? c->v : NULL);
        ctr_add(c, KVS_OP_STORE, t0, (uint64_t)T * dkv * 2 * 2, 0);
        if (st != KVS_OK) goto press_fail;
        t0 = kvs_now_ns();
        st = pr->ops->attend(pr, l, T, c->pos, c->q, c->att);
        uint64_t ctxlen = (uint64_t)c->n_past + T;
        ctr_add(c, KVS_OP_ATTN, t0, (uint64_t)ctxlen * dkv * 2 * 2 + (uint64_t)T * dq * 8, 4ull * T * nh * d * ctxlen);
        if (st != KVS_OK) goto press_fail;
        TRY(matmul_ctr(c, &bw[3], c->att, c->tmp, T));
        for (size_t i = 0; i < (size_t)T * D; i++) c->x[i] += c->tmp[i];
        t0 = kvs_now_ns();
        TRY(kvs_backend_rmsnorm(c->be, c->xn, c->x, ly->ffn_norm, T, D, hp->rms_eps));
        ctr_add(c, KVS_OP_NORM, t0, (uint64_t)T * D * 12, (uint64_t)T * D * 4);
        TRY(matmul_ctr(c, &bw[4], c->xn, c->gate, T));
        TRY(matmul_ctr(c, &bw[5], c->xn, c->up, T));
        silu_mul(c->gate, c->up, (size_t)T * F);
        TRY(matmul_ctr(c, &bw[6], c->gate, c->tmp, T));
        for (size_t i = 0; i < (size_t)T * D; i++) c->x[i] += c->tmp[i];
    }
    c->n_past += T;
    if (pr->ops->end_step) {
        uint64_t t0 = kvs_now_ns();
        st = pr->ops->end_step(pr, c->n_past);
        ctr_add(c, KVS_OP_MERGE, t0, 0, 0);
        if (st != KVS_OK) goto press_fail;
    }
    /* output head: every token when asked, else the last one */
    uint64_t t0 = kvs_now_ns();
    int first = logits_all ? 0 : T - 1;
    int nt = T - first;
    TRY(kvs_backend_rmsnorm(c->be, c->xn, c->x + (size_t)first * D, m->output_norm, nt, D, hp->rms_eps));
    const struct kvs_backend_weight *ow = &c->bw[(size_t)hp->n_layer * 7];
    if (logits_all) {
        TRY(kvs_backend_matmul(c->be, ow, c->xn, logits_all, nt));
        memcpy(c->logits, logits_all + (size_t)(nt - 1) * V, (size_t)V * sizeof(float));
    } else {
        TRY(kvs_backend_matmul(c->be, ow, c->xn, c->logits, 1));
    }
    ctr_add(c, KVS_OP_LOGITS, t0, (uint64_t)m->output.rows * m->output.row_bytes, 2ull * nt * V * D);
    /* a corrupt model (NaN/Inf weights, bytes that do not match their type) must stop here with its
     * name, not run on to empty or <unk> text */
    int64_t bad = 0;
    for (int64_t i = 0; i < V; i++) bad += !isfinite(c->logits[i]);
    if (bad) {
        kvs_seterr(c->err, sizeof c->err,
                   "%s: the forward pass gave %lld non-finite logits of %lld at position %d: the model's weights "
                   "hold NaN or Inf, or do not match their declared types", m->gguf.path, (long long)bad,
                   (long long)V, c->n_past - 1);
        return KVS_ERR_FORMAT;
    }
    return KVS_OK;
#undef TRY
press_fail:
    kvs_seterr(c->err, sizeof c->err, "%s: %s", pr->ops->name, pr->err[0] ? pr->err : "failed");
    return st;
}

enum kvs_status kvs_ctx_eval(struct kvs_ctx *c, const int32_t *tokens, int n, float *logits)
{
    if (n <= 0) return KVS_OK;
    if ((int64_t)c->n_past + n > c->p.n_ctx) {
        kvs_seterr(c->err, sizeof c->err, "context full: %d + %d tokens exceed the context of %d", c->n_past, n,
                   c->p.n_ctx);
        return KVS_ERR_LIMIT;
    }
    for (int i = 0; i < n; i += c->p.n_batch) {
        int T = KVS_MIN(c->p.n_batch, n - i);
        enum kvs_status st = eval_chunk(c, tokens + i, T, logits ? logits + (size_t)i * c->m->hp.n_vocab : NULL);
        if (st != KVS_OK) return st;
    }
    return KVS_OK;
}

/* ---------------------------------------------------------------- sampling */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

float kvs_logprob(const float *logits, int n_vocab, int32_t id)
{
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double s = 0;
    for (int i = 0; i < n_vocab; i++) s += exp((double)logits[i] - mx);
    return (float)((double)logits[id] - mx - log(s));
}

struct cand { float p; int32_t id; };
static int cand_cmp(const void *a, const void *b)
{
    float pa = ((const struct cand *)a)->p, pb = ((const struct cand *)b)->p;
    return pa < pb ? 1 : pa > pb ? -1 : 0;
}

int32_t kvs_sample(const float *logits, int n_vocab, float temp, float top_p, uint64_t *rng)
{
    int32_t best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (temp <= 0) return best;
    float mx = logits[best];
    /* candidates within e^-20 of the best: the rest cannot matter for any sane top_p */
    struct cand *c = malloc((size_t)n_vocab * sizeof *c);
    if (!c) return best;
    int n = 0;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) {
        float z = (logits[i] - mx) / temp;
        if (z < -20) continue;
        c[n].p = expf(z);
        c[n].id = i;
        sum += c[n].p;
        n++;
    }
    if (n > 1) qsort(c, (size_t)n, sizeof *c, cand_cmp);
    if (top_p <= 0 || top_p > 1) top_p = 1;
    double cum = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
        cum += c[i].p / sum;
        if (cum >= top_p) { keep = i + 1; break; }
    }
    double tot = 0;
    for (int i = 0; i < keep; i++) tot += c[i].p;
    double r = (double)(rng_next(rng) >> 11) / 9007199254740992.0 * tot;
    int32_t id = c[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        r -= c[i].p;
        if (r <= 0) { id = c[i].id; break; }
    }
    free(c);
    return id;
}
