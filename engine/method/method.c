/* The method layer (see method.h): creates presses, running every piece of offline work first —
 * factors (calibration, SVD, factor cache), merge weights, the plan (measured by planner.c, or the
 * paper profile's fixed split) and the split of a composition's target over commonkv, quant and
 * snapkv — so press constructors only allocate. Depends on commonkv.h, press.h; never prints. */
#include "commonkv_priv.h"
#include "method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of a packed latent row relative to fp16. */
static double quant_factor(uint32_t r, uint32_t bits, uint32_t group)
{
    return (double)kvs_qrow_bytes(r, bits, group) / (2.0 * r);
}

/* Latent bytes per token (fp16, with positions) at full rank and nothing merged, over full bytes:
 * the least compression a latent cache can have. */
static double latent_share_max(const struct kvs_ckv_factors *f)
{
    double held = 0, full = 0;
    for (uint32_t g = 0; g < f->n_groups; g++) {
        held += (double)f->g_nl[g] * f->r_max[g] * 2 + 4;
        full += f->g_nl[g] * 2.0 * f->d_kv * 2;
    }
    return full > 0 ? held / full : 1.0;
}

/* Splits TARGET (real bytes) of a composition with quant and/or snapkv: quantization shrinks the
 * rows older than its fp16 window by its packing factor; eviction keeps a share of the slots; the
 * latent part (rank and merging, in fp16-equivalent bytes) takes what is left, at most 0.5 when
 * eviction is there to take the rest. When quantization alone would overshoot the target, its
 * bits are raised (2 -> 4 -> 8). Writes the latent target, the bits and a note naming each part. */
static void split_target(const struct kvs_ckv_factors *f, const struct kvs_method_config *c, float target, int n,
                         float *ckv_cr, uint32_t *bits, char *note, size_t cap)
{
    bool quant = (c->methods & KVS_M_QUANT) != 0, evict = (c->methods & KVS_M_SNAPKV) != 0;
    uint32_t win = c->snap_window ? c->snap_window : 32;
    uint32_t res = quant ? (evict ? KVS_MIN(c->quant_residual, win) : c->quant_residual) : 0;
    uint32_t qgroup = c->quant_group ? c->quant_group : 32;
    uint32_t r_guess = KVS_MAX(1u, f->n_embd / 2);
    double K = 1.0 - target, hmax = latent_share_max(f), q = 1.0;
    uint32_t b = *bits, b0 = *bits;
    for (;;) {
        if (!quant) break;
        double qp = quant_factor(r_guess, b, qgroup);
        q = n > (int)res ? ((double)res + (double)(n - (int)res) * qp) / n : 1.0;
        if (K / q <= hmax || b >= 8) break;
        b = b < 4 ? 4 : 8;
    }
    double h = KVS_MIN(K / q, hmax), e = 1.0;
    if (evict && h < 0.5) {
        h = 0.5;
        e = K / (q * h);
    }
    *ckv_cr = (float)(1.0 - h);
    *bits = b;
    double reach = 1.0 - h * q * e;
    int len = snprintf(note, cap, "CR %.2f = latent %.2f", (double)target, 1.0 - h);
    if (quant && len > 0 && (size_t)len < cap)
        len += snprintf(note + len, cap - (size_t)len, ", %u-bit quant x%.2f%s", b, q,
                        b != b0 ? " (bits raised: fewer overshoot)" : "");
    if (evict && len > 0 && (size_t)len < cap)
        len += snprintf(note + len, cap - (size_t)len, ", eviction keeps %.0f%% of slots", e * 100);
    if (reach > target + 0.02 && len > 0 && (size_t)len < cap)
        snprintf(note + len, cap - (size_t)len, "; overshoots: at least CR %.2f", reach);
}

enum kvs_status kvs_method_prepare(struct kvs_ckv_factors **factors, struct kvs_ckv_plan *plan,
                                   const struct kvs_model *m, const struct kvs_method_config *cfg, int n_ctx,
                                   kvs_progress_fn progress, void *ud, char *err, size_t errlen)
{
    *factors = NULL;
    memset(plan, 0, sizeof *plan);
    struct kvs_method_config c = *cfg;
    bool common = (c.methods & KVS_M_COMMONKV) != 0;
    bool comp = (c.methods & (KVS_M_QUANT | KVS_M_SNAPKV)) != 0;
    uint32_t G = common ? c.group_size : 1;
    bool paper = c.profile == KVS_PROFILE_PAPER;
    if (c.profile > KVS_PROFILE_PAPER) {
        kvs_seterr(err, errlen, "%s: unknown plan profile %u", c.spec, c.profile);
        return KVS_ERR_ARG;
    }
    if (paper) {
        c.whiten = false; /* the paper's SVD is data-free */
        if (!c.rank && !(c.rank_ratio > 0)) c.rank_ratio = KVS_CKV_PAPER_RANK_RATIO;
        if (isnan(c.merge_floor)) c.merge_floor = -1.0f; /* the released code has no floor */
    }
    char warn[300] = "";
    enum kvs_status st = kvs_ckv_factors_get(factors, m, G, c.whiten, c.cache_dir, progress, ud, warn, sizeof warn,
                                             err, errlen);
    if (st != KVS_OK) return st;
    struct kvs_ckv_factors *f = *factors;
    for (int l = 0; l < KVS_MAX_LAYERS; l++) plan->merge_w[l] = 1.0f;
    if (c.merge_weights == KVS_MERGE_SENSITIVITY && c.merge_weights_file[0]) {
        st = kvs_ckv_weights_load(c.merge_weights_file, plan->merge_w, (int)m->hp.n_layer, err, errlen);
        if (st != KVS_OK) goto fail;
    }
    /* a bare commonkv aims at CR 0.5 unless a rank or "no target" is given */
    float target = c.target_cr;
    if (target < 0 && target != KVS_CR_NONE && common && !c.rank && !(c.rank_ratio > 0)) target = 0.5f;
    if (target < 0) target = -1.0f;
    if (paper && common && target < 0 && c.merge_share < 0) c.merge_share = KVS_CKV_PAPER_MERGE_SHARE;
    struct kvs_method_config pc = c; /* the latent part */
    pc.target_cr = target;
    uint32_t bits = c.quant_bits;
    char split[200] = "";
    if (target >= 0 && comp) split_target(f, &c, target, n_ctx, &pc.target_cr, &bits, split, sizeof split);
    bool latent_fixed = target >= 0 && pc.target_cr < 0;
    if (latent_fixed) {
        /* the other parts already remove more than the target: the latent is kept larger than the
         * full cache would be (rank up to full, nothing merged) */
        double h = 1.0 - pc.target_cr, full = 0, fixed = 0, per = 0;
        for (uint32_t g = 0; g < f->n_groups; g++) {
            full += f->g_nl[g] * 2.0 * f->d_kv * 2;
            fixed += 4;
            per += 2.0 * f->g_nl[g];
        }
        pc.rank = (uint32_t)KVS_MAX(1.0, floor((h * full - fixed) / per));
        pc.rank_ratio = 0;
        pc.target_cr = KVS_CR_NONE;
        pc.merge_share = 0;
    }
    plan->cr_final = target;
    plan->cr_merge = pc.target_cr >= 0 ? pc.target_cr : -1.0f;
    plan->quant_bits = bits;
    plan->profile = c.profile;
    plan->floor = isnan(c.merge_floor) ? (float)KVS_CKV_MERGE_FLOOR : c.merge_floor;
    plan->chosen = -1;
    bool merging = common && G > 1;
    plan->merge = merging;
    bool search = !paper && merging && pc.target_cr >= 0 && !pc.rank && !(pc.rank_ratio > 0) && pc.merge_share < 0;
    char unmeasured[200] = "";
    if (search) {
        struct kvs_ckv_plan base = *plan;
        char serr[200];
        st = kvs_plan_search(plan, &base, m, &pc, f, n_ctx, progress, ud, serr, sizeof serr);
        if (st == KVS_ERR_IO || st == KVS_ERR_FORMAT) {
            /* no usable calibration text: the default split, and the reason in the plan */
            *plan = base;
            snprintf(unmeasured, sizeof unmeasured, "not measured (%.150s)", serr);
            search = false;
        } else if (st != KVS_OK) {
            kvs_seterr(err, errlen, "%s", serr);
            goto fail;
        }
    }
    if (!search) {
        struct kvs_ckv_plan p;
        kvs_ckv_plan(f, &pc, n_ctx, &p);
        kvs_ckv_plan_take(plan, &p);
        const uint32_t D = f->n_embd;
        char fl[32] = "no floor";
        if (plan->floor > -1.0f) snprintf(fl, sizeof fl, "floor %.2f", (double)plan->floor);
        if (paper)
            snprintf(plan->why, sizeof plan->why, "paper profile: rank %u (%.2f D), data-free SVD, merge share %.2f (%s), %s",
                     plan->rank[0], (double)plan->rank[0] / D, (double)plan->merge_frac,
                     pc.target_cr >= 0 ? "set by the target" : "the released code keeps 40% apart", fl);
        else if (!merging)
            snprintf(plan->why, sizeof plan->why, "%s: rank %u (%.2f D), no merging: nothing to search",
                     common ? "group size 1" : "lowrank", plan->rank[0], (double)plan->rank[0] / D);
        else if (latent_fixed)
            snprintf(plan->why, sizeof plan->why,
                     "latent part: rank %u (%.2f D), nothing merged: the other parts carry the target", plan->rank[0],
                     (double)plan->rank[0] / D);
        else if (unmeasured[0])
            snprintf(plan->why, sizeof plan->why, "default split, %s", unmeasured);
        else
            snprintf(plan->why, sizeof plan->why,
                     "not searched: %s set by the options (rank %u, merge share %.2f)",
                     pc.target_cr < 0 ? "no target; rank and share" : "rank or merge share", plan->rank[0],
                     (double)plan->merge_frac);
    }
    /* without a target only an explicit merge share merges (up to that share) */
    if (plan->cr_merge < 0 && !(pc.merge_share > 0)) plan->merge = false;
    if (plan->merge_frac <= 0) plan->merge = false;
    if (split[0]) {
        char both[sizeof split + sizeof plan->note + 2];
        snprintf(both, sizeof both, "%s%s%s", split, plan->note[0] ? "; " : "", plan->note);
        memcpy(plan->note, both, sizeof plan->note - 1);
        plan->note[sizeof plan->note - 1] = 0;
    }
    if (warn[0] && !plan->note[0]) snprintf(plan->note, sizeof plan->note, "%.199s", warn);
    return KVS_OK;
fail:
    kvs_ckv_factors_delete(*factors);
    *factors = NULL;
    return st;
}

enum kvs_status kvs_press_new(struct kvs_press **out, const struct kvs_model *model,
                              const struct kvs_method_config *cfg, int n_ctx_max,
                              kvs_progress_fn progress, void *progress_ctx, char *err, size_t errlen)
{
    *out = NULL;
    uint32_t m = cfg->methods;
    /* a config built by hand (not by kvs_method_parse) is checked too */
    if (!m) {
        kvs_seterr(err, errlen, "method '%s': no method named", cfg->spec);
        return KVS_ERR_ARG;
    }
    enum kvs_status st = kvs_method_check_combination(m, cfg->spec, err, errlen);
    if (st != KVS_OK) return st;
    if (m == KVS_M_FULL)
        return kvs_press_full_create(out, model, cfg, n_ctx_max, err, errlen);
    /* latent methods: commonkv or lowrank, optionally with quantized latents and slot eviction */
    if (m & (KVS_M_COMMONKV | KVS_M_LOWRANK)) {
        struct kvs_ckv_factors *f;
        struct kvs_ckv_plan plan;
        int n_plan = cfg->plan_ctx > 0 ? KVS_MIN(cfg->plan_ctx, n_ctx_max) : n_ctx_max;
        st = kvs_method_prepare(&f, &plan, model, cfg, n_plan, progress, progress_ctx, err, errlen);
        if (st != KVS_OK) return st;
        return kvs_press_commonkv_create(out, model, cfg, n_ctx_max, f, true, &plan, err, errlen);
    }
    if (m & KVS_M_MINICACHE)
        return kvs_press_minicache_create(out, model, cfg, n_ctx_max, err, errlen);
    /* quant, snapkv, streaming and their pairs keep K/V rows */
    return kvs_press_kv_create(out, model, cfg, n_ctx_max, err, errlen);
}
