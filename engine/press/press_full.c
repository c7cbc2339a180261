/* The `full` press: an fp16 K/V cache per layer, the reference every method is measured against.
 * Tokens are stored in position order; storage grows in blocks and its bytes are counted exactly.
 * Depends on press.h, attn.h. */
#include "attn.h"
#include "press.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FULL_BLOCK 256

struct full_layer {
    uint16_t *k, *v;    /* (cap, n_kv*d) fp16, keys after RoPE */
    int n, cap;
};

struct press_full {
    struct kvs_press base;
    struct full_layer *layers;
    int n_layer, dkv, n_ctx_max;
};

static enum kvs_status full_store(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *xn,
                                  const float *k, const float *v)
{
    struct press_full *f = (struct press_full *)p;
    struct full_layer *L = &f->layers[layer];
    if (!k || !v) {
        kvs_seterr(p->err, sizeof p->err, "full: keys/values not computed");
        return KVS_ERR_STATE;
    }
    if (L->n + T > L->cap) {
        int cap = ((L->n + T + FULL_BLOCK - 1) / FULL_BLOCK) * FULL_BLOCK;
        uint16_t *nk = realloc(L->k, (size_t)cap * f->dkv * sizeof(uint16_t));
        if (nk) L->k = nk;
        uint16_t *nv = realloc(L->v, (size_t)cap * f->dkv * sizeof(uint16_t));
        if (nv) L->v = nv;
        if (!nk || !nv) {
            kvs_seterr(p->err, sizeof p->err, "full: out of memory growing layer %d to %d tokens", layer, cap);
            return KVS_ERR_NOMEM;
        }
        L->cap = cap;
    }
    for (int t = 0; t < T; t++) {
        if (pos[t] != L->n + t) {
            kvs_seterr(p->err, sizeof p->err, "full: token at position %d stored out of order (expected %d)", pos[t], L->n + t);
            return KVS_ERR_STATE;
        }
        kvs_f32_to_f16_row(k + (size_t)t * f->dkv, L->k + (size_t)(L->n + t) * f->dkv, f->dkv);
        kvs_f32_to_f16_row(v + (size_t)t * f->dkv, L->v + (size_t)(L->n + t) * f->dkv, f->dkv);
    }
    L->n += T;
    return KVS_OK;
}

static enum kvs_status full_attend(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *q, float *out)
{
    struct press_full *f = (struct press_full *)p;
    const struct kvs_hparams *hp = &p->model->hp;
    struct full_layer *L = &f->layers[layer];
    struct kvs_attn_args a = {
        .T = T, .n_head = (int)hp->n_head, .n_head_kv = (int)hp->n_head_kv, .head_dim = (int)hp->head_dim,
        .q = q, .out = out, .qpos = pos, .n_keys = L->n, .k = L->k, .v = L->v, .kpos = NULL,
    };
    if (!kvs_attn_f16(p->pool, &a)) {
        kvs_seterr(p->err, sizeof p->err, "full: out of memory in attention");
        return KVS_ERR_NOMEM;
    }
    return KVS_OK;
}

static enum kvs_status full_end_step(struct kvs_press *p, int n_ctx) { return KVS_OK; }

static void full_fill_record(const struct kvs_press *p, struct kvs_rec_step *r)
{
    const struct press_full *f = (const struct press_full *)p;
    uint64_t held = 0, alloc = 0;
    r->n_layer = (uint32_t)f->n_layer;
    r->n_groups = 0;
    for (int l = 0; l < f->n_layer; l++) {
        const struct full_layer *L = &f->layers[l];
        uint64_t b = (uint64_t)L->n * f->dkv * 2 * sizeof(uint16_t);
        r->layer_kept[l] = (uint32_t)L->n;
        r->layer_bytes_held[l] = b;
        held += b;
        alloc += (uint64_t)L->cap * f->dkv * 2 * sizeof(uint16_t);
        /* the newest token sits at the same position in both layers, so RoPE rotates both keys
         * alike and their cosine equals that of the unrotated keys */
        if (l + 1 < f->n_layer && L->n > 0 && f->layers[l + 1].n == L->n) {
            const uint16_t *a = L->k + (size_t)(L->n - 1) * f->dkv, *b2 = f->layers[l + 1].k + (size_t)(L->n - 1) * f->dkv;
            double ab = 0, aa = 0, bb = 0;
            for (int i = 0; i < f->dkv; i++) {
                double x = kvs_fp16_to_fp32(a[i]), y = kvs_fp16_to_fp32(b2[i]);
                ab += x * y; aa += x * x; bb += y * y;
            }
            r->layer_sim[l] = (aa > 0 && bb > 0) ? (float)(ab / sqrt(aa * bb)) : 0.0f;
        }
    }
    r->bytes_full = held;
    r->bytes_held = held;
    r->bytes_alloc = alloc;
    r->cr_target = p->cfg.target_cr;
    r->cr_achieved = 0.0f;
    r->valid |= KVS_VALID_BYTES | (f->n_layer > 1 && f->layers[0].n > 0 ? KVS_VALID_LAYER_SIM : 0);
}

static void full_reset(struct kvs_press *p)
{
    struct press_full *f = (struct press_full *)p;
    for (int l = 0; l < f->n_layer; l++) f->layers[l].n = 0;
}

static void full_destroy(struct kvs_press *p)
{
    struct press_full *f = (struct press_full *)p;
    if (f->layers)
        for (int l = 0; l < f->n_layer; l++) {
            free(f->layers[l].k);
            free(f->layers[l].v);
        }
    free(f->layers);
    free(f);
}

static const struct kvs_press_ops full_ops = {
    .name = "full", .store = full_store, .attend = full_attend, .end_step = full_end_step,
    .fill_record = full_fill_record, .reset = full_reset, .destroy = full_destroy,
};

enum kvs_status kvs_press_full_create(struct kvs_press **out, const struct kvs_model *m,
                                      const struct kvs_method_config *cfg, int n_ctx_max,
                                      char *err, size_t errlen)
{
    struct press_full *f = calloc(1, sizeof *f);
    if (f) f->layers = calloc(m->hp.n_layer, sizeof *f->layers);
    if (!f || !f->layers) {
        free(f);
        kvs_seterr(err, errlen, "full: out of memory");
        return KVS_ERR_NOMEM;
    }
    f->base.ops = &full_ops;
    f->base.model = m;
    f->base.cfg = *cfg;
    f->base.needs = KVS_PRESS_NEEDS_KV;
    f->n_layer = (int)m->hp.n_layer;
    f->dkv = (int)(m->hp.n_head_kv * m->hp.head_dim);
    f->n_ctx_max = n_ctx_max;
    *out = &f->base;
    return KVS_OK;
}
