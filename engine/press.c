/* Method registry: parses method specs ("commonkv+quant+snapkv") into a configuration with
 * defaults and creates the matching press. Depends on engine/press.h and the press constructors. */
#include "commonkv_priv.h"
#include "press.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_press_full_create(struct kvs_press **out, const struct kvs_model *m,
                                      const struct kvs_method_config *cfg, int n_ctx_max,
                                      char *err, size_t errlen);

static const struct { const char *name; uint32_t bit; } method_names[] = {
    {"full", KVS_M_FULL},         {"commonkv", KVS_M_COMMONKV}, {"lowrank", KVS_M_LOWRANK},
    {"minicache", KVS_M_MINICACHE}, {"quant", KVS_M_QUANT},     {"snapkv", KVS_M_SNAPKV},
    {"streaming", KVS_M_STREAMING},
};

enum kvs_status kvs_method_parse(struct kvs_method_config *c, const char *spec, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (!spec || !*spec) spec = "full";
    if (strlen(spec) >= sizeof c->spec) {
        kvs_seterr(err, errlen, "method '%.40s…': too long", spec);
        return KVS_ERR_ARG;
    }
    snprintf(c->spec, sizeof c->spec, "%s", spec);
    c->target_cr = -1.0f;
    c->merge_share = -1.0f;
    c->merge_floor = KVS_CKV_MERGE_FLOOR;
    c->group_size = 4;
    c->sinks = 4;
    c->recent = 128;
    c->quant_bits = 4;
    c->quant_group = 32;
    c->quant_residual = 128;
    c->snap_capacity = 1024;
    c->snap_window = 32;
    c->snap_kernel = 7;
    c->stream_sinks = 4;
    c->stream_window = 1024;
    c->mc_t = 0.6f;
    c->mc_threshold = 0.05f;
    kvs_ckv_cache_dir_default(c->cache_dir, sizeof c->cache_dir);
    c->whiten = true; /* activation-aware factors: far better quality for commonkv and lowrank */
    char buf[64];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, "+", &save); tok; tok = strtok_r(NULL, "+", &save)) {
        uint32_t bit = 0;
        for (size_t i = 0; i < KVS_ARRAY_LEN(method_names); i++)
            if (strcmp(tok, method_names[i].name) == 0) bit = method_names[i].bit;
        if (!bit) {
            kvs_seterr(err, errlen, "unknown method '%s' (known: full, commonkv, lowrank, minicache, quant, snapkv, streaming)", tok);
            return KVS_ERR_ARG;
        }
        c->methods |= bit;
    }
    if (!c->methods) {
        kvs_seterr(err, errlen, "empty method spec '%s'", spec);
        return KVS_ERR_ARG;
    }
    return KVS_OK;
}

enum kvs_status kvs_press_new(struct kvs_press **out, const struct kvs_model *model,
                              const struct kvs_method_config *cfg, int n_ctx_max,
                              kvs_progress_fn progress, void *progress_ctx, char *err, size_t errlen)
{
    *out = NULL;
    uint32_t m = cfg->methods;
    if (m == KVS_M_FULL)
        return kvs_press_full_create(out, model, cfg, n_ctx_max, err, errlen);
    if (m & KVS_M_FULL) {
        kvs_seterr(err, errlen, "method '%s': full does not compose with other methods", cfg->spec);
        return KVS_ERR_ARG;
    }
    /* latent methods: commonkv or lowrank, optionally with quantized latents and slot eviction */
    uint32_t latent = m & (KVS_M_COMMONKV | KVS_M_LOWRANK);
    if (latent == (KVS_M_COMMONKV | KVS_M_LOWRANK)) {
        kvs_seterr(err, errlen, "method '%s': commonkv and lowrank are alternatives, pick one", cfg->spec);
        return KVS_ERR_ARG;
    }
    if (latent) {
        if (m & (KVS_M_MINICACHE | KVS_M_STREAMING)) {
            kvs_seterr(err, errlen, "method '%s': %s composes with quant and snapkv only", cfg->spec,
                       latent == KVS_M_COMMONKV ? "commonkv" : "lowrank");
            return KVS_ERR_ARG;
        }
        return kvs_press_commonkv_create(out, model, cfg, n_ctx_max, NULL, progress, progress_ctx, err, errlen);
    }
    if (m & KVS_M_MINICACHE) {
        if (m != KVS_M_MINICACHE) {
            kvs_seterr(err, errlen, "method '%s': minicache does not compose with other methods", cfg->spec);
            return KVS_ERR_ARG;
        }
        return kvs_press_minicache_create(out, model, cfg, n_ctx_max, err, errlen);
    }
    if ((m & KVS_M_SNAPKV) && (m & KVS_M_STREAMING)) {
        kvs_seterr(err, errlen, "method '%s': snapkv and streaming are both eviction rules, pick one", cfg->spec);
        return KVS_ERR_ARG;
    }
    /* quant, snapkv, streaming and their pairs keep K/V rows */
    return kvs_press_kv_create(out, model, cfg, n_ctx_max, err, errlen);
}

void kvs_press_delete(struct kvs_press *p)
{
    if (p && p->ops && p->ops->destroy) p->ops->destroy(p);
}

const char *kvs_press_note(const struct kvs_press *p)
{
    if (!p) return "";
    const struct kvs_ckv_plan *plan = kvs_press_commonkv_plan(p);
    if (plan) return plan->note;
    const char *n = kvs_press_minicache_note(p);
    if (!n) n = kvs_press_kv_note(p);
    return n ? n : "";
}
