/* The `full` press: an fp16 K/V cache per layer, the reference every method is measured against.
 * Its rows live in a cache pool (cache_pool.h) in the backend's memory and are stored, attended and
 * read only through backend entries; the press keeps counts and decides nothing else. Its k, v, q
 * and out are backend memory (KVS_PRESS_BACKEND_IO): a CUDA token's K/V never leave the device.
 * Depends on press.h, cache_pool.h, quant.h. */
#include "cache_pool.h"
#include "press.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FULL_BLOCK 256

struct press_full {
    struct kvs_press base;
    struct kvs_cache_pool *cp;  /* NULL until the first store; on base.be */
    int n_layer, dkv, n_ctx_max;
    uint16_t *last;             /* (n_layer, dkv) scratch: every layer's newest key (similarity) */
};

/* The pool on the press's current backend, made on first use. */
static enum kvs_status full_pool(struct press_full *f)
{
    if (f->cp) return KVS_OK;
    char e[256];
    enum kvs_status st = kvs_cache_pool_new(&f->cp, f->base.be, f->n_layer, f->dkv, FULL_BLOCK, e, sizeof e);
    if (st != KVS_OK) kvs_seterr(f->base.err, sizeof f->base.err, "full: %s", e);
    return st;
}

static enum kvs_status full_store(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *xn,
                                  const float *k, const float *v)
{
    struct press_full *f = (struct press_full *)p;
    if (!k || !v) {
        kvs_seterr(p->err, sizeof p->err, "full: keys/values not computed");
        return KVS_ERR_STATE;
    }
    enum kvs_status st = full_pool(f);
    if (st != KVS_OK) return st;
    int n = kvs_cache_pool_rows(f->cp, layer);
    for (int t = 0; t < T; t++)
        if (pos[t] != n + t) {
            kvs_seterr(p->err, sizeof p->err, "full: token at position %d stored out of order (expected %d)", pos[t], n + t);
            return KVS_ERR_STATE;
        }
    st = kvs_cache_pool_store_buf(f->cp, layer, T, pos, k, v);
    if (st != KVS_OK) kvs_seterr(p->err, sizeof p->err, "full: %s", f->cp->err);
    return st;
}

static enum kvs_status full_attend(struct kvs_press *p, int layer, int T, const int32_t *pos, const float *q, float *out)
{
    struct press_full *f = (struct press_full *)p;
    const struct kvs_hparams *hp = &p->model->hp;
    enum kvs_status st = full_pool(f);
    if (st != KVS_OK) return st;
    st = kvs_cache_pool_attend_buf(f->cp, layer, T, pos, (int)hp->n_head, (int)hp->n_head_kv, (int)hp->head_dim, q, out,
                               NULL);
    if (st != KVS_OK) kvs_seterr(p->err, sizeof p->err, "full: %s", f->cp->err);
    return st;
}

static enum kvs_status full_end_step(struct kvs_press *p, int n_ctx) { return KVS_OK; }

static void full_fill_record(const struct kvs_press *p, struct kvs_rec_step *r)
{
    const struct press_full *f = (const struct press_full *)p;
    uint64_t held = 0, alloc = 0;
    r->n_layer = (uint32_t)f->n_layer;
    r->n_groups = 0;
    bool sim = false;
    /* every layer's newest key in one read (one wait on a device, not two per layer pair) */
    bool keys = f->cp && f->last && kvs_cache_pool_newest_keys(f->cp, f->last) == KVS_OK;
    for (int l = 0; l < f->n_layer && f->cp; l++) {
        int n = kvs_cache_pool_rows(f->cp, l);
        uint64_t b = kvs_cache_pool_bytes_held(f->cp, l);
        r->layer_kept[l] = (uint32_t)n;
        r->layer_bytes_held[l] = b;
        held += b;
        alloc += kvs_cache_pool_bytes_alloc(f->cp, l);
        /* the newest token sits at the same position in both layers, so RoPE rotates both keys
         * alike and their cosine equals that of the unrotated keys */
        if (keys && l + 1 < f->n_layer && n > 0 && kvs_cache_pool_rows(f->cp, l + 1) == n) {
            const uint16_t *a = f->last + (size_t)l * f->dkv, *b2 = a + f->dkv;
            double ab = 0, aa = 0, bb = 0;
            for (int i = 0; i < f->dkv; i++) {
                double x = kvs_fp16_to_fp32(a[i]), y = kvs_fp16_to_fp32(b2[i]);
                ab += x * y; aa += x * x; bb += y * y;
            }
            r->layer_sim[l] = (aa > 0 && bb > 0) ? (float)(ab / sqrt(aa * bb)) : 0.0f;
            sim = true;
        }
    }
    r->bytes_full = held;
    r->bytes_held = held;
    r->bytes_alloc = alloc;
    r->cr_target = p->cfg.target_cr;
    r->cr_achieved = 0.0f;
    r->valid |= KVS_VALID_BYTES | (sim ? KVS_VALID_LAYER_SIM : 0);
}

static void full_reset(struct kvs_press *p)
{
    struct press_full *f = (struct press_full *)p;
    if (f->cp) kvs_cache_pool_reset(f->cp);
}

static void full_detach(struct kvs_press *p)
{
    struct press_full *f = (struct press_full *)p;
    kvs_cache_pool_delete(f->cp);
    f->cp = NULL;
}

static void full_destroy(struct kvs_press *p)
{
    struct press_full *f = (struct press_full *)p;
    kvs_cache_pool_delete(f->cp);
    free(f->last);
    free(f);
}

static const struct kvs_press_ops full_ops = {
    .name = "full", .store = full_store, .attend = full_attend, .end_step = full_end_step,
    .fill_record = full_fill_record, .reset = full_reset, .destroy = full_destroy, .detach = full_detach,
};

enum kvs_status kvs_press_full_create(struct kvs_press **out, const struct kvs_model *m,
                                      const struct kvs_method_config *cfg, int n_ctx_max,
                                      char *err, size_t errlen)
{
    struct press_full *f = calloc(1, sizeof *f);
    size_t dkv = (size_t)m->hp.n_head_kv * m->hp.head_dim;
    if (f) f->last = malloc((size_t)KVS_MAX(m->hp.n_layer, 1u) * (dkv ? dkv : 1) * sizeof(uint16_t));
    if (!f || !f->last) {
        if (f) free(f->last);
        free(f);
        kvs_seterr(err, errlen, "full: out of memory");
        return KVS_ERR_NOMEM;
    }
    f->base.ops = &full_ops;
    f->base.model = m;
    f->base.cfg = *cfg;
    f->base.needs = KVS_PRESS_NEEDS_KV | KVS_PRESS_BACKEND_IO; /* k, v, q, out stay in backend memory */
    f->n_layer = (int)m->hp.n_layer;
    f->dkv = (int)dkv;
    f->n_ctx_max = n_ctx_max;
    *out = &f->base;
    return KVS_OK;
}
