/* Calibration for CommonKV, measured on the loaded model itself: (1) Gram matrices X^T X of every
 * group's attention inputs for whitened factorization; (2) per-layer key sensitivity (perplexity
 * rise when one layer's keys are corrupted with noise) for merge weights. Both run the CPU forward
 * pass with the full press over a calibration text that is not the evaluation text.
 * Depends on infer.h, commonkv.h; never prints. */
#include "commonkv_priv.h"
#include "infer.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kvs_status kvs_ckv_calib_tokens(const struct kvs_model *m, const char *path, int n_max, int32_t **ids, int *n,
                                     char *err, size_t errlen)
{
    *ids = NULL;
    *n = 0;
    int fd = kvs_open_regular(path, err, errlen); /* a FIFO would block */
    FILE *fp = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!fp) {
        if (fd >= 0) {
            kvs_seterr(err, errlen, "%s: cannot open calibration text: %s", path, strerror(errno));
            close(fd);
        }
        return KVS_ERR_IO;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len, fp)) > 0) {
        len += got;
        if (len == cap && len < (64u << 20)) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        } else if (len == cap) break;
    }
    fclose(fp);
    if (!buf) {
        kvs_seterr(err, errlen, "out of memory reading %s", path);
        return KVS_ERR_NOMEM;
    }
    int64_t need = kvs_tokenizer_encode(m->tok, buf, len, false, NULL, 0);
    int32_t *t = need > 0 ? malloc((size_t)(need + 1) * sizeof(int32_t)) : NULL;
    if (!t) {
        free(buf);
        kvs_seterr(err, errlen, "%s: no tokens", path);
        return KVS_ERR_FORMAT;
    }
    int off = 0;
    int32_t bos = kvs_tokenizer_bos(m->tok);
    if (bos >= 0 && kvs_tokenizer_add_bos(m->tok)) t[off++] = bos;
    kvs_tokenizer_encode(m->tok, buf, len, false, t + off, need);
    free(buf);
    *n = (int)KVS_MIN((int64_t)n_max, need + off);
    *ids = t;
    return KVS_OK;
}

struct xtx_acc {
    double **xtx;
    uint32_t G, D;
    float *tmp;
};

static void xtx_hook(void *ud, int layer, int T, const int32_t *pos, const float *x, const float *xn, const float *k)
{
    struct xtx_acc *a = ud;
    int D = (int)a->D;
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, D, T, 1.0f, xn, D, 0.0f, a->tmp, D);
    double *dst = a->xtx[(uint32_t)layer / a->G];
    for (int i = 0; i < D; i++)
        for (int j = 0; j <= i; j++) {
            double v = a->tmp[(size_t)i * D + j];
            dst[(size_t)i * D + j] += v;
            if (i != j) dst[(size_t)j * D + i] += v;
        }
}

/* Runs IDS through MODEL with PRESS (NULL: a full cache). PROGRESS (may be NULL) is asked between
 * chunks of the context's batch size (the chunks kvs_ctx_eval would make, so the numbers do not
 * change) and cancels with KVS_ERR_CANCELLED when it returns false. */
static enum kvs_status run_full(const struct kvs_model *m, const int32_t *ids, int n, kvs_layer_hook hook, void *ud,
                                struct kvs_press *press, double *nll, kvs_progress_fn progress, void *pud,
                                const char *what, int n_threads, char *err, size_t errlen)
{
    struct kvs_method_config cfg;
    enum kvs_status st = kvs_method_parse(&cfg, "full", err, errlen);
    struct kvs_press *own = NULL;
    struct kvs_ctx *ctx = NULL;
    float *logits = NULL;
    if (st != KVS_OK) return st;
    if (!press) {
        st = kvs_press_full_create(&own, m, &cfg, n, err, errlen);
        if (st != KVS_OK) return st;
        press = own;
    }
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = n;
    cp.n_threads = n_threads;
    st = kvs_ctx_new(&ctx, m, press, &cp, err, errlen);
    if (st != KVS_OK) goto done;
    if (hook) kvs_ctx_set_hook(ctx, hook, ud);
    if (nll) {
        logits = malloc((size_t)n * m->hp.n_vocab * sizeof(float));
        if (!logits) {
            st = KVS_ERR_NOMEM;
            kvs_seterr(err, errlen, "calibration: out of memory for logits");
            goto done;
        }
    }
    for (int i = 0; i < n; i += cp.n_batch) {
        if (progress && !progress(pud, what, (float)i / n)) {
            kvs_seterr(err, errlen, "calibration: cancelled");
            st = KVS_ERR_CANCELLED;
            goto done;
        }
        int T = KVS_MIN(cp.n_batch, n - i);
        st = kvs_ctx_eval(ctx, ids + i, T, logits ? logits + (size_t)i * m->hp.n_vocab : NULL);
        if (st != KVS_OK) {
            kvs_seterr(err, errlen, "calibration: %s", kvs_ctx_error(ctx));
            goto done;
        }
    }
    if (nll) {
        double s = 0;
        for (int t = 0; t + 1 < n; t++) s -= kvs_logprob(logits + (size_t)t * m->hp.n_vocab, (int)m->hp.n_vocab, ids[t + 1]);
        *nll = s / (n - 1);
    }
done:
    free(logits);
    kvs_ctx_delete(ctx);
    kvs_press_delete(own);
    return st;
}

uint64_t kvs_ckv_calib_key(const int32_t *ids, int n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < n; i++)
        for (int b = 0; b < 4; b++) {
            h ^= (uint8_t)((uint32_t)ids[i] >> (8 * b));
            h *= 0x100000001b3ull;
        }
    return h ? h : 1;
}

enum kvs_status kvs_ckv_calib_xtx(const struct kvs_model *m, uint32_t G, const int32_t *ids, int n, double ***out,
                                  kvs_progress_fn progress, void *ud, char *err, size_t errlen)
{
    *out = NULL;
    uint32_t D = m->hp.n_embd, ng = (m->hp.n_layer + G - 1) / G;
    struct xtx_acc a = {.G = G, .D = D};
    a.xtx = calloc(ng, sizeof(double *));
    a.tmp = malloc((size_t)D * D * sizeof(float));
    enum kvs_status st = KVS_OK;
    if (!a.xtx || !a.tmp) goto oom;
    for (uint32_t g = 0; g < ng; g++) {
        a.xtx[g] = calloc((size_t)D * D, sizeof(double));
        if (!a.xtx[g]) goto oom;
    }
    st = run_full(m, ids, n, xtx_hook, &a, NULL, NULL, progress, ud, "calibrating (whitening statistics)", 0, err, errlen);
    free(a.tmp);
    if (st != KVS_OK) {
        kvs_ckv_calib_free(a.xtx, ng);
        return st;
    }
    *out = a.xtx;
    return KVS_OK;
oom:
    free(a.tmp);
    if (a.xtx) kvs_ckv_calib_free(a.xtx, ng);
    kvs_seterr(err, errlen, "calibration: out of memory");
    return KVS_ERR_NOMEM;
}

void kvs_ckv_calib_free(double **xtx, uint32_t n_groups)
{
    if (!xtx) return;
    for (uint32_t g = 0; g < n_groups; g++) free(xtx[g]);
    free(xtx);
}

/* ---- sensitivity: a full cache whose keys of one layer get Gaussian noise ---- */

struct noisy {
    struct kvs_press base;
    struct kvs_press *inner;
    int layer;
    float rel;          /* noise rms relative to the key's rms */
    uint64_t rng;
    float *buf;
    size_t cap;
};

static float gauss(uint64_t *s)
{
    double u1, u2;
    do {
        *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
        u1 = (double)(*s >> 11) / 9007199254740992.0;
    } while (u1 <= 1e-300);
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    u2 = (double)(*s >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
}

static enum kvs_status noisy_store(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *xn,
                                   const float *k, const float *v)
{
    struct noisy *n = (struct noisy *)p;
    n->inner->pool = p->pool;
    if (layer != n->layer || !k) return n->inner->ops->store(n->inner, layer, T, pos, xn, k, v);
    int dkv = (int)(p->model->hp.n_head_kv * p->model->hp.head_dim);
    size_t need = (size_t)T * dkv;
    if (need > n->cap) {
        float *b = realloc(n->buf, need * sizeof(float));
        if (!b) return KVS_ERR_NOMEM;
        n->buf = b;
        n->cap = need;
    }
    for (int t = 0; t < T; t++) {
        const float *kr = k + (size_t)t * dkv;
        double ss = 0;
        for (int i = 0; i < dkv; i++) ss += (double)kr[i] * kr[i];
        float sd = n->rel * (float)sqrt(ss / dkv);
        for (int i = 0; i < dkv; i++) n->buf[(size_t)t * dkv + i] = kr[i] + sd * gauss(&n->rng);
    }
    return n->inner->ops->store(n->inner, layer, T, pos, xn, n->buf, v);
}

static enum kvs_status noisy_attend(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *q, float *out)
{
    struct noisy *n = (struct noisy *)p;
    n->inner->pool = p->pool;
    return n->inner->ops->attend(n->inner, layer, T, pos, q, out);
}

static enum kvs_status noisy_end(struct kvs_press *p, int n_ctx)
{
    struct noisy *n = (struct noisy *)p;
    return n->inner->ops->end_step(n->inner, n_ctx);
}

static void noisy_fill(const struct kvs_press *p, struct kvs_rec_step *r)
{
    const struct noisy *n = (const struct noisy *)p;
    n->inner->ops->fill_record(n->inner, r);
}

static void noisy_reset(struct kvs_press *p)
{
    struct noisy *n = (struct noisy *)p;
    n->inner->ops->reset(n->inner);
}

static void noisy_destroy(struct kvs_press *p)
{
    struct noisy *n = (struct noisy *)p;
    kvs_press_delete(n->inner);
    free(n->buf);
    free(n);
}

static const struct kvs_press_ops noisy_ops = {
    .name = "full+noise", .store = noisy_store, .attend = noisy_attend, .end_step = noisy_end,
    .fill_record = noisy_fill, .reset = noisy_reset, .destroy = noisy_destroy,
};

enum kvs_status kvs_ckv_sensitivity(const struct kvs_model *m, const int32_t *ids, int n, float noise, int n_threads,
                                    float *sens, double *ppl_base, kvs_progress_fn progress, void *ud, char *err,
                                    size_t errlen)
{
    double base;
    int N = (int)m->hp.n_layer;
    enum kvs_status st = run_full(m, ids, n, NULL, NULL, NULL, &base, progress, ud, "measuring layer sensitivity",
                                  n_threads, err, errlen);
    if (st != KVS_OK) return st;
    if (ppl_base) *ppl_base = exp(base);
    struct kvs_method_config cfg;
    kvs_method_parse(&cfg, "full", err, errlen);
    for (int l = 0; l < N; l++) {
        if (progress && !progress(ud, "measuring layer sensitivity", (float)l / N)) {
            kvs_seterr(err, errlen, "calibration: cancelled");
            return KVS_ERR_CANCELLED;
        }
        struct noisy *nz = calloc(1, sizeof *nz);
        if (!nz) {
            kvs_seterr(err, errlen, "calibration: out of memory");
            return KVS_ERR_NOMEM;
        }
        nz->base.ops = &noisy_ops;
        nz->base.model = m;
        nz->base.cfg = cfg;
        nz->base.needs = KVS_PRESS_NEEDS_KV;
        nz->layer = l;
        nz->rel = noise;
        nz->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(l + 1);
        st = kvs_press_full_create(&nz->inner, m, &cfg, n, err, errlen);
        if (st != KVS_OK) {
            free(nz);
            return st;
        }
        double nll;
        st = run_full(m, ids, n, NULL, NULL, &nz->base, &nll, NULL, NULL, NULL, n_threads, err, errlen);
        kvs_press_delete(&nz->base);
        if (st != KVS_OK) return st;
        /* perplexity rise; a floor keeps every layer's weight positive */
        sens[l] = (float)KVS_MAX(exp(nll) - exp(base), 1e-3 * exp(base));
    }
    if (progress) progress(ud, "measuring layer sensitivity", 1.0f);
    return KVS_OK;
}
