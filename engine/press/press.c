/* Method registry: parses method specs ("commonkv+quant+snapkv") into a configuration with
 * defaults. Creating the press is the method layer's job (engine/method/method.c), so nothing here
 * runs offline work. Depends on engine/press/press.h and commonkv.h's defaults. */
#include "commonkv_priv.h"
#include "press.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *name; uint32_t bit; } method_names[] = {
    {"full", KVS_M_FULL},         {"commonkv", KVS_M_COMMONKV}, {"lowrank", KVS_M_LOWRANK},
    {"minicache", KVS_M_MINICACHE}, {"quant", KVS_M_QUANT},     {"snapkv", KVS_M_SNAPKV},
    {"streaming", KVS_M_STREAMING},
};

/* The combinations kvs_press_new can build; they depend on the names alone, so a spec is checked
 * before any model is loaded. */
enum kvs_status kvs_method_check_combination(uint32_t m, const char *spec, char *err, size_t errlen)
{
    if ((m & KVS_M_FULL) && m != KVS_M_FULL) {
        kvs_seterr(err, errlen, "method '%s': full does not compose with other methods", spec);
        return KVS_ERR_ARG;
    }
    uint32_t latent = m & (KVS_M_COMMONKV | KVS_M_LOWRANK);
    if (latent == (KVS_M_COMMONKV | KVS_M_LOWRANK)) {
        kvs_seterr(err, errlen, "method '%s': commonkv and lowrank are alternatives, pick one", spec);
        return KVS_ERR_ARG;
    }
    if (latent && (m & (KVS_M_MINICACHE | KVS_M_STREAMING))) {
        kvs_seterr(err, errlen, "method '%s': %s composes with quant and snapkv only", spec,
                   latent == KVS_M_COMMONKV ? "commonkv" : "lowrank");
        return KVS_ERR_ARG;
    }
    if ((m & KVS_M_MINICACHE) && m != KVS_M_MINICACHE) {
        kvs_seterr(err, errlen, "method '%s': minicache does not compose with other methods", spec);
        return KVS_ERR_ARG;
    }
    if ((m & KVS_M_SNAPKV) && (m & KVS_M_STREAMING)) {
        kvs_seterr(err, errlen, "method '%s': snapkv and streaming are both eviction rules, pick one", spec);
        return KVS_ERR_ARG;
    }
    return KVS_OK;
}

enum kvs_status kvs_method_parse(struct kvs_method_config *c, const char *spec, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (!spec) spec = "full";
    if (!*spec) {
        kvs_seterr(err, errlen, "empty method name (known: full, commonkv, lowrank, minicache, quant, snapkv, streaming)");
        return KVS_ERR_ARG;
    }
    size_t len = strlen(spec);
    if (len >= sizeof c->spec) {
        kvs_seterr(err, errlen, "method '%.40s...' is %zu bytes long, the limit is %zu", spec, len, sizeof c->spec - 1);
        return KVS_ERR_ARG;
    }
    snprintf(c->spec, sizeof c->spec, "%s", spec);
    c->target_cr = -1.0f;
    c->merge_share = -1.0f;
    c->merge_floor = NAN; /* the plan chooses */
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
    /* components split on '+' by hand: strtok would skip the empty ones in "a++b", "+a" or "a+" */
    for (const char *tok = spec;;) {
        const char *plus = strchr(tok, '+');
        size_t n = plus ? (size_t)(plus - tok) : strlen(tok);
        if (n == 0) {
            kvs_seterr(err, errlen, "method '%s': empty name around '+'", spec);
            return KVS_ERR_ARG;
        }
        uint32_t bit = 0;
        for (size_t i = 0; i < KVS_ARRAY_LEN(method_names); i++)
            if (strlen(method_names[i].name) == n && memcmp(tok, method_names[i].name, n) == 0) bit = method_names[i].bit;
        if (!bit) {
            kvs_seterr(err, errlen, "unknown method '%.*s' (known: full, commonkv, lowrank, minicache, quant, snapkv, streaming)",
                       (int)n, tok);
            return KVS_ERR_ARG;
        }
        if (c->methods & bit) {
            kvs_seterr(err, errlen, "method '%s': '%.*s' is named twice", spec, (int)n, tok);
            return KVS_ERR_ARG;
        }
        c->methods |= bit;
        if (!plus) break;
        tok = plus + 1;
    }
    return kvs_method_check_combination(c->methods, spec, err, errlen);
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
