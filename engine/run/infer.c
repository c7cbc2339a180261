/* The forward pass, one code path for every backend: embeddings, RMSNorm, RoPE, grouped-query
 * attention through the press, SwiGLU, output head; prefill in chunks, decode one token at a time;
 * sampling. Activations live in backend buffers (host memory on the CPU, the oracle; device memory
 * for CUDA) through every layer; only the logits come back, plus what a host-side press or a layer
 * hook reads, each crossing counted. Depends on model, press, backend and threads; never on curses
 * or CUDA. */
#include "infer.h"
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A layer's small constants in backend memory (pointers into kvs_ctx.consts). */
struct layer_consts {
    const float *attn_norm, *ffn_norm; /* (D) */
    const float *bq, *bk, *bv;         /* (dq), (dkv), (dkv); NULL without biases */
};

struct kvs_ctx {
    const struct kvs_model *m;
    struct kvs_press *press;
    struct kvs_ctx_params p;
    struct kvs_pool *pool;
    struct kvs_backend *be;
    struct kvs_backend_weight *bw; /* per layer: wq wk wv wo gate up down (7 each), then output, embedding */
    bool embd_shared;           /* the embedding is the output head's weight (tied): one device copy */
    int n_past;
    /* backend memory: constants (norm weights, biases, RoPE frequencies) uploaded once */
    struct kvs_buf consts;
    struct layer_consts *lc;    /* (n_layer) */
    const float *output_norm, *freqs_dev;
    /* backend memory: one chunk of at most n_batch tokens */
    struct kvs_buf x, xn, q, k, v, att, tmp, gate, up; /* (B,D) (B,D) (B,dq) (B,dkv) (B,dkv) (B,dq) (B,D) (B,F) (B,F) */
    struct kvs_buf tok, posb;   /* (B) int32 */
    struct kvs_buf logits_dev;  /* (rows, n_vocab), grown when every token's logits are asked for */
    float *freqs;               /* (head_dim/2) host */
    int32_t *pos;               /* (B) host */
    float *logits;              /* (n_vocab) last token, host staging (pinned for CUDA) */
    /* host staging for a press that reads host arrays on a device backend, or a layer hook */
    float *h_x, *h_xn, *h_q, *h_k, *h_v, *h_att;
    struct kvs_ctx_xfer xfer;
    char (*layer_names)[24];    /* (n_layer) "layer L": NVTX range names made once */
    int ranges_open;            /* profiler ranges pushed and not yet popped */
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
    snprintf(p->weights, sizeof p->weights, "auto");
    p->precise = false;
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

/* Uploads the model's norm weights, biases and RoPE frequencies into one buffer of backend memory. */
static enum kvs_status consts_upload(struct kvs_ctx *c)
{
    const struct kvs_model *m = c->m;
    const struct kvs_hparams *hp = &m->hp;
    size_t D = hp->n_embd, dq = (size_t)hp->n_head * hp->head_dim, dkv = (size_t)hp->n_head_kv * hp->head_dim;
    size_t half = hp->head_dim / 2, n = D + half;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const struct kvs_layer *ly = &m->layers[l];
        n += 2 * D + (ly->bq ? dq : 0) + (ly->bk ? dkv : 0) + (ly->bv ? dkv : 0);
    }
    enum kvs_status st = kvs_backend_buf_alloc(c->be, &c->consts, n * sizeof(float));
    if (st != KVS_OK) return st;
    const float *base = c->consts.data;
    size_t off = 0;
#define PUT(dst, src, count)                                                                                    \
    do {                                                                                                        \
        if ((st = kvs_backend_buf_upload(c->be, &c->consts, off * sizeof(float), (src), (count) * sizeof(float))) != \
            KVS_OK)                                                                                             \
            return st;                                                                                          \
        (dst) = base + off;                                                                                     \
        off += (count);                                                                                         \
    } while (0)
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const struct kvs_layer *ly = &m->layers[l];
        struct layer_consts *lc = &c->lc[l];
        PUT(lc->attn_norm, ly->attn_norm, D);
        PUT(lc->ffn_norm, ly->ffn_norm, D);
        if (ly->bq) PUT(lc->bq, ly->bq, dq);
        if (ly->bk) PUT(lc->bk, ly->bk, dkv);
        if (ly->bv) PUT(lc->bv, ly->bv, dkv);
    }
    PUT(c->output_norm, m->output_norm, D);
    PUT(c->freqs_dev, c->freqs, half);
#undef PUT
    return KVS_OK;
}

/* Activation buffers for chunks of B tokens, and host staging when the backend's memory is not the
 * host's. */
static enum kvs_status bufs_alloc(struct kvs_ctx *c)
{
    const struct kvs_hparams *hp = &c->m->hp;
    size_t B = (size_t)c->p.n_batch, D = hp->n_embd, dq = (size_t)hp->n_head * hp->head_dim;
    size_t dkv = (size_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff, f = sizeof(float);
    struct { struct kvs_buf *b; size_t bytes; } want[] = {
        {&c->x, B * D * f}, {&c->xn, B * D * f}, {&c->q, B * dq * f}, {&c->k, B * dkv * f}, {&c->v, B * dkv * f},
        {&c->att, B * dq * f}, {&c->tmp, B * D * f}, {&c->gate, B * F * f}, {&c->up, B * F * f},
        {&c->tok, B * sizeof(int32_t)}, {&c->posb, B * sizeof(int32_t)}, {&c->logits_dev, (size_t)hp->n_vocab * f},
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(want); i++) {
        enum kvs_status st = kvs_backend_buf_alloc(c->be, want[i].b, want[i].bytes);
        if (st != KVS_OK) return st;
    }
    c->logits = kvs_backend_host_alloc(c->be, (size_t)hp->n_vocab * f);
    if (!c->logits) return KVS_ERR_NOMEM;
    memset(c->logits, 0, (size_t)hp->n_vocab * f);
    if (kvs_backend_host_memory(c->be)) return KVS_OK;
    float **h[] = {&c->h_x, &c->h_xn, &c->h_q, &c->h_k, &c->h_v, &c->h_att};
    size_t n[] = {B * D, B * D, B * dq, B * dkv, B * dkv, B * dq};
    for (size_t i = 0; i < KVS_ARRAY_LEN(h); i++)
        if (!(*h[i] = kvs_backend_host_alloc(c->be, n[i] * f))) return KVS_ERR_NOMEM;
    return KVS_OK;
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
    c->pos = malloc((size_t)p->n_batch * sizeof(int32_t));
    c->lc = calloc(hp->n_layer ? hp->n_layer : 1, sizeof *c->lc);
    c->layer_names = calloc(hp->n_layer ? hp->n_layer : 1, sizeof *c->layer_names);
    if (!c->pool || !c->freqs || !c->pos || !c->lc || !c->layer_names) goto oom;
    for (uint32_t l = 0; l < hp->n_layer; l++) snprintf(c->layer_names[l], sizeof c->layer_names[l], "layer %u", l);
    const char *bname = p->backend[0] ? p->backend : "cpu";
    enum kvs_status bst = kvs_backend_new(&c->be, bname, c->pool, err, errlen);
    if (bst != KVS_OK) {
        kvs_ctx_delete(c);
        return bst;
    }
    c->be->precise = p->precise;
    if ((bst = kvs_backend_set_weights(c->be, p->weights)) != KVS_OK) {
        kvs_seterr(err, errlen, "%s backend: %s", bname, kvs_backend_error(c->be));
        kvs_ctx_delete(c);
        return bst;
    }
    if ((bst = bufs_alloc(c)) != KVS_OK || (bst = consts_upload(c)) != KVS_OK) {
        if (bst == KVS_ERR_NOMEM && !c->be->err[0]) goto oom;
        kvs_seterr(err, errlen, "%s backend: activation buffers for a batch of %d: %s", bname, p->n_batch,
                   c->be->err[0] ? c->be->err : "out of memory");
        kvs_ctx_delete(c);
        return bst;
    }
    size_t nbw = (size_t)hp->n_layer * 7 + 2;
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
    bst = kvs_backend_weight_prepare(c->be, &c->bw[nbw - 2], &model->output);
    if (bst != KVS_OK) {
        kvs_seterr(err, errlen, "%s backend: preparing the output head: %s", bname, kvs_backend_error(c->be));
        kvs_ctx_delete(c);
        return bst;
    }
    /* a tied embedding is the output head's table: one copy serves both */
    c->embd_shared = model->tok_embd.data == model->output.data && model->tok_embd.type == model->output.type;
    if (c->embd_shared) c->bw[nbw - 1] = c->bw[nbw - 2];
    else if ((bst = kvs_backend_table_prepare(c->be, &c->bw[nbw - 1], &model->tok_embd)) != KVS_OK) {
        kvs_seterr(err, errlen, "%s backend: preparing the embedding table: %s", bname, kvs_backend_error(c->be));
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
    if (c->be) {
        size_t nbw = (size_t)c->m->hp.n_layer * 7 + 2;
        if (c->bw) {
            if (c->embd_shared) c->bw[nbw - 1].dev = NULL; /* released as the output head */
            for (size_t i = 0; i < nbw; i++) kvs_backend_weight_release(c->be, &c->bw[i]);
        }
        struct kvs_buf *bufs[] = {&c->consts, &c->x, &c->xn, &c->q, &c->k, &c->v, &c->att, &c->tmp, &c->gate, &c->up,
                                  &c->tok, &c->posb, &c->logits_dev};
        for (size_t i = 0; i < KVS_ARRAY_LEN(bufs); i++) kvs_backend_buf_free(c->be, bufs[i]);
        float *h[] = {c->logits, c->h_x, c->h_xn, c->h_q, c->h_k, c->h_v, c->h_att};
        for (size_t i = 0; i < KVS_ARRAY_LEN(h); i++) kvs_backend_host_free(c->be, h[i]);
    }
    free(c->bw);
    free(c->lc);
    free(c->layer_names);
    kvs_backend_delete(c->be);
    kvs_pool_delete(c->pool);
    free(c->freqs);
    free(c->pos);
    free(c);
}

const float *kvs_ctx_logits(const struct kvs_ctx *c) { return c->logits; }
int kvs_ctx_n_past(const struct kvs_ctx *c) { return c->n_past; }
struct kvs_op_counter *kvs_ctx_counters(struct kvs_ctx *c) { return c->ctr; }
struct kvs_pool *kvs_ctx_pool(struct kvs_ctx *c) { return c->pool; }
const char *kvs_ctx_error(const struct kvs_ctx *c) { return c->err; }
const char *kvs_ctx_backend(const struct kvs_ctx *c) { return kvs_backend_name(c->be); }
uint64_t kvs_ctx_pool_bytes(const struct kvs_ctx *c) { return c->be ? c->be->pool_bytes : 0; }

const char *kvs_ctx_weights(const struct kvs_ctx *c, uint64_t *saturated)
{
    if (saturated) *saturated = c->be ? c->be->weights_saturated : 0;
    return c->be ? c->be->weights : "";
}

bool kvs_ctx_device_mem(const struct kvs_ctx *c, uint64_t *used, uint64_t *total)
{
    return kvs_backend_mem_info(c->be, used, total) == KVS_OK;
}

uint64_t kvs_ctx_acts_saturated(struct kvs_ctx *c)
{
    uint64_t n = 0;
    kvs_backend_acts_saturated(c->be, &n); /* a failed read keeps the last count */
    return n;
}

uint64_t kvs_ctx_cache_saturated(struct kvs_ctx *c)
{
    uint64_t n = 0;
    kvs_backend_cache_saturated(c->be, &n); /* a failed read keeps the last count */
    return n;
}

void kvs_ctx_transfers(const struct kvs_ctx *c, struct kvs_ctx_xfer *out)
{
    *out = c->xfer;
    out->up_bytes = c->be ? c->be->xfer_up_bytes : 0;
    out->down_bytes = c->be ? c->be->xfer_down_bytes : 0;
    out->up_calls = c->be ? c->be->xfer_up_calls : 0;
    out->down_calls = c->be ? c->be->xfer_down_calls : 0;
}
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
    enum kvs_status st = kvs_backend_matmul_buf(c->be, bw, x, y, T);
    ctr_add(c, KVS_OP_MATMUL, t0, (uint64_t)w->rows * w->row_bytes + (uint64_t)T * (w->cols + w->rows) * 4,
            2ull * T * w->rows * w->cols);
    if (st != KVS_OK) kvs_seterr(c->err, sizeof c->err, "%s backend: %s", kvs_backend_name(c->be), kvs_backend_error(c->be));
    return st;
}

/* Host view of COUNT floats of buffer BUF: the buffer itself on a host-memory backend, else a copy
 * downloaded into STAGE (counted as a press-boundary crossing). NULL on failure. */
static float *host_view(struct kvs_ctx *c, const struct kvs_buf *buf, float *stage, size_t count)
{
    if (kvs_backend_host_memory(c->be)) return buf->data;
    if (kvs_backend_buf_download(c->be, stage, buf, 0, count * sizeof(float)) != KVS_OK) return NULL;
    c->xfer.press_bytes += count * sizeof(float);
    c->xfer.press_calls++;
    return stage;
}

static void range_push(struct kvs_ctx *c, const char *name)
{
    kvs_backend_range_push(c->be, name);
    c->ranges_open++;
}

static void range_pop(struct kvs_ctx *c)
{
    if (c->ranges_open <= 0) return;
    kvs_backend_range_pop(c->be);
    c->ranges_open--;
}

/* One chunk of T <= n_batch tokens. */
static enum kvs_status eval_chunk(struct kvs_ctx *c, const int32_t *tokens, int T, float *logits_all)
{
    const struct kvs_model *m = c->m;
    const struct kvs_hparams *hp = &m->hp;
    const int D = (int)hp->n_embd, d = (int)hp->head_dim, nh = (int)hp->n_head, nkv = (int)hp->n_head_kv;
    const int dq = nh * d, dkv = nkv * d, F = (int)hp->n_ff, V = (int)hp->n_vocab;
    struct kvs_press *pr = c->press;
    struct kvs_backend *be = c->be;
    bool need_kv = !pr || (pr->needs & KVS_PRESS_NEEDS_KV) || c->hook;
    /* the press reads our buffers directly when they are host memory or it works on backend memory;
     * otherwise its inputs come to the host and its output goes back (counted) */
    bool direct = kvs_backend_host_memory(be) || (pr && (pr->needs & KVS_PRESS_BACKEND_IO));
    float *x = c->x.data, *xn = c->xn.data, *q = c->q.data, *k = c->k.data, *v = c->v.data, *att = c->att.data;
    float *tmp = c->tmp.data, *gate = c->gate.data, *up = c->up.data;
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= V) {
            kvs_seterr(c->err, sizeof c->err, "token id %d out of range (vocabulary %d)", tokens[t], V);
            return KVS_ERR_ARG;
        }
        c->pos[t] = c->n_past + t;
    }
    enum kvs_status st = KVS_OK;
#define TRY(expr) do { if ((st = (expr)) != KVS_OK) { if (!c->err[0]) kvs_seterr(c->err, sizeof c->err, "%s backend: %s", kvs_backend_name(be), kvs_backend_error(be)); return st; } } while (0)
#define HOST(var, buf, stage, count) do { if (!((var) = host_view(c, &(buf), (stage), (size_t)(count)))) TRY(KVS_ERR_BACKEND); } while (0)
    c->err[0] = 0;
    TRY(kvs_backend_buf_upload(be, &c->tok, 0, tokens, (size_t)T * sizeof(int32_t)));
    TRY(kvs_backend_buf_upload(be, &c->posb, 0, c->pos, (size_t)T * sizeof(int32_t)));
    TRY(kvs_backend_embed(be, &c->bw[(size_t)hp->n_layer * 7 + 1], c->tok.data, T, x));
    if (!pr) {
        kvs_seterr(c->err, sizeof c->err, "no KV-cache method set");
        return KVS_ERR_STATE;
    }
    for (int l = 0; l < (int)hp->n_layer; l++) {
        const struct layer_consts *lc = &c->lc[l];
        const struct kvs_backend_weight *bw = &c->bw[l * 7];
        range_push(c, c->layer_names[l]);
        uint64_t t0 = kvs_now_ns();
        TRY(kvs_backend_rmsnorm_buf(be, xn, x, lc->attn_norm, T, D, hp->rms_eps));
        ctr_add(c, KVS_OP_NORM, t0, (uint64_t)T * D * 12, (uint64_t)T * D * 4);
        TRY(matmul_ctr(c, &bw[0], xn, q, T));
        if (lc->bq) TRY(kvs_backend_add_bias(be, q, lc->bq, T, dq));
        if (need_kv) {
            TRY(matmul_ctr(c, &bw[1], xn, k, T));
            if (lc->bk) TRY(kvs_backend_add_bias(be, k, lc->bk, T, dkv));
            TRY(matmul_ctr(c, &bw[2], xn, v, T));
            if (lc->bv) TRY(kvs_backend_add_bias(be, v, lc->bv, T, dkv));
        }
        if (c->hook) {
            const float *hx, *hxn, *hk;
            HOST(hx, c->x, c->h_x, (size_t)T * D);
            HOST(hxn, c->xn, c->h_xn, (size_t)T * D);
            HOST(hk, c->k, c->h_k, (size_t)T * dkv);
            c->hook(c->hook_ud, l, T, c->pos, hx, hxn, hk);
        }
        t0 = kvs_now_ns();
        TRY(kvs_backend_rope_buf(be, q, T, nh, d, c->posb.data, c->freqs_dev, hp->rope_neox));
        if (need_kv) TRY(kvs_backend_rope_buf(be, k, T, nkv, d, c->posb.data, c->freqs_dev, hp->rope_neox));
        ctr_add(c, KVS_OP_ROPE, t0, (uint64_t)T * (dq + dkv) * 8, (uint64_t)T * (dq + dkv) * 3);
        const float *pxn = xn, *pk = k, *pv = v, *pq = q;
        float *patt = att;
        if (!direct) { /* a press on host arrays (none built in sets it: each keeps its rows in the backend) */
            if (pr->needs & KVS_PRESS_NEEDS_XN) HOST(pxn, c->xn, c->h_xn, (size_t)T * D);
            else pxn = NULL;
            if (need_kv) {
                HOST(pk, c->k, c->h_k, (size_t)T * dkv);
                HOST(pv, c->v, c->h_v, (size_t)T * dkv);
            }
            patt = c->h_att;
        }
        t0 = kvs_now_ns();
        st = pr->ops->store(pr, l, T, c->pos, pxn, need_kv ? pk : NULL, need_kv ? pv : NULL);
        ctr_add(c, KVS_OP_STORE, t0, (uint64_t)T * dkv * 2 * 2, 0);
        if (st != KVS_OK) goto press_fail;
        if (!direct) HOST(pq, c->q, c->h_q, (size_t)T * dq);
        t0 = kvs_now_ns();
        st = pr->ops->attend(pr, l, T, c->pos, pq, patt);
        uint64_t ctxlen = (uint64_t)c->n_past + T;
        ctr_add(c, KVS_OP_ATTN, t0, (uint64_t)ctxlen * dkv * 2 * 2 + (uint64_t)T * dq * 8, 4ull * T * nh * d * ctxlen);
        if (st != KVS_OK) goto press_fail;
        if (!direct) {
            TRY(kvs_backend_buf_upload(be, &c->att, 0, c->h_att, (size_t)T * dq * sizeof(float)));
            c->xfer.press_bytes += (uint64_t)T * dq * sizeof(float);
            c->xfer.press_calls++;
        }
        TRY(matmul_ctr(c, &bw[3], att, tmp, T));
        TRY(kvs_backend_add(be, x, tmp, (size_t)T * D));
        t0 = kvs_now_ns();
        TRY(kvs_backend_rmsnorm_buf(be, xn, x, lc->ffn_norm, T, D, hp->rms_eps));
        ctr_add(c, KVS_OP_NORM, t0, (uint64_t)T * D * 12, (uint64_t)T * D * 4);
        TRY(matmul_ctr(c, &bw[4], xn, gate, T));
        TRY(matmul_ctr(c, &bw[5], xn, up, T));
        TRY(kvs_backend_swiglu(be, gate, up, (size_t)T * F));
        TRY(matmul_ctr(c, &bw[6], gate, tmp, T));
        TRY(kvs_backend_add(be, x, tmp, (size_t)T * D));
        range_pop(c);
    }
    c->n_past += T;
    if (pr->ops->end_step) {
        uint64_t t0 = kvs_now_ns();
        st = pr->ops->end_step(pr, c->n_past);
        ctr_add(c, KVS_OP_MERGE, t0, 0, 0);
        if (st != KVS_OK) goto press_fail;
    }
    /* output head: every token when asked, else the last one; only the logits come back */
    uint64_t t0 = kvs_now_ns();
    int first = logits_all ? 0 : T - 1;
    int nt = T - first;
    TRY(kvs_backend_rmsnorm_buf(be, xn, x + (size_t)first * D, c->output_norm, nt, D, hp->rms_eps));
    const struct kvs_backend_weight *ow = &c->bw[(size_t)hp->n_layer * 7];
    size_t lbytes = (size_t)nt * V * sizeof(float);
    if (c->logits_dev.bytes < lbytes) {
        kvs_backend_buf_free(be, &c->logits_dev);
        TRY(kvs_backend_buf_alloc(be, &c->logits_dev, lbytes));
    }
    TRY(kvs_backend_matmul_buf(be, ow, xn, c->logits_dev.data, nt));
    if (logits_all) {
        TRY(kvs_backend_buf_download(be, logits_all, &c->logits_dev, 0, lbytes));
        memcpy(c->logits, logits_all + (size_t)(nt - 1) * V, (size_t)V * sizeof(float));
    } else {
        TRY(kvs_backend_buf_download(be, c->logits, &c->logits_dev, 0, (size_t)V * sizeof(float)));
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
#undef HOST
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
        /* one range per step (a prefill chunk or a decoded token), one per layer inside it */
        char name[48];
        if (T == 1) snprintf(name, sizeof name, "decode %d", c->n_past);
        else snprintf(name, sizeof name, "prefill %d-%d", c->n_past, c->n_past + T - 1);
        range_push(c, name);
        enum kvs_status st = eval_chunk(c, tokens + i, T, logits ? logits + (size_t)i * c->m->hp.n_vocab : NULL);
        while (c->ranges_open > 0) range_pop(c); /* an error may leave a layer's range open */
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
