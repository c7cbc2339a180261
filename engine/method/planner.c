/* The measured CommonKV plan: for a target, a handful of candidate splits (merge share, similarity
 * floor, rank spread over groups by singular energy) are each run on a short calibration text
 * that is out of domain from eval's texts (prefill once, compress, score the next tokens
 * teacher-forced) and the one with the lowest KL against the full cache wins. The result is cached
 * per model, factors and settings beside the factors. Deterministic (the forward pass is) and
 * cancellable between runs. Depends on infer.h, metrics.h, commonkv.h; never prints. */
#include "commonkv_priv.h"
#include "infer.h"
#include "method.h"
#include "metrics.h"

#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLAN_MAGIC "kvscope-plan 2"

void kvs_ckv_plan_take(struct kvs_ckv_plan *plan, const struct kvs_ckv_plan *p)
{
    memcpy(plan->rank, p->rank, sizeof plan->rank);
    plan->merge_frac = p->merge_frac;
    plan->cr_rank_only = p->cr_rank_only;
    plan->cr_max = p->cr_max;
    plan->reachable = p->reachable;
    memcpy(plan->note, p->note, sizeof plan->note);
}

/* The plan of candidate CD for LATENT at N tokens: BASE's fixed fields, kvs_ckv_plan's ranks. */
static void cand_plan(const struct kvs_ckv_factors *f, const struct kvs_method_config *latent,
                      const struct kvs_ckv_cand *cd, int n, const struct kvs_ckv_plan *base, struct kvs_ckv_plan *out)
{
    struct kvs_method_config c = *latent;
    c.merge_share = cd->share;
    c.rank_by_similarity = cd->by_sim;
    struct kvs_ckv_plan p;
    kvs_ckv_plan(f, &c, n, &p);
    *out = *base;
    kvs_ckv_plan_take(out, &p);
    out->floor = cd->floor;
    out->merge = base->merge && p.merge_frac > 0;
}

/* Prefills P tokens of IDS through PRESS in one chunk (compressed once after it), then runs the
 * next S teacher-forced into LOGITS (S, n_vocab). */
static enum kvs_status run_text(const struct kvs_model *m, struct kvs_press *press, const int32_t *ids, int P, int S,
                                float *logits, float *cr_seen, char *err, size_t errlen)
{
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = P + S;
    cp.n_batch = P;
    struct kvs_ctx *cx = NULL;
    enum kvs_status st = kvs_ctx_new(&cx, m, press, &cp, err, errlen);
    if (st != KVS_OK) return st;
    st = kvs_ctx_eval(cx, ids, P, NULL);
    if (st == KVS_OK && cr_seen) {
        /* the compression the scored tokens attend over */
        struct kvs_rec_step rec;
        memset(&rec, 0, sizeof rec);
        press->ops->fill_record(press, &rec);
        *cr_seen = rec.bytes_full ? (float)(1.0 - (double)rec.bytes_held / (double)rec.bytes_full) : 0.0f;
    }
    if (st == KVS_OK) st = kvs_ctx_eval(cx, ids + P, S, logits);
    if (st != KVS_OK) kvs_seterr(err, errlen, "plan search: %s", kvs_ctx_error(cx));
    kvs_ctx_delete(cx);
    return st;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Reads a cached search: the magic line with KEY, then "cand SHARE FLOOR BYSIM KL" lines and
 * "chosen I". Anything else, or a value out of range, means "search again". */
static bool cache_load(const char *path, uint64_t key, struct kvs_ckv_plan *plan)
{
    char e[200];
    int fd = kvs_open_regular(path, e, sizeof e);
    FILE *fp = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!fp) {
        if (fd >= 0) close(fd);
        return false;
    }
    char line[200], want[64];
    snprintf(want, sizeof want, "%s %016llx\n", PLAN_MAGIC, (unsigned long long)key);
    bool ok = fgets(line, sizeof line, fp) && !strcmp(line, want);
    int n = 0, chosen = -1;
    while (ok && fgets(line, sizeof line, fp)) {
        float sh, fl, kl, cr;
        int bs, ch;
        char tail;
        if (sscanf(line, "cand %f %f %d %f %f%c", &sh, &fl, &bs, &kl, &cr, &tail) == 6 && tail == '\n' &&
            n < KVS_CKV_PLAN_MAX_CAND && sh >= 0 && sh <= 1 && fl >= -1 && fl <= 1 && (bs == 0 || bs == 1) &&
            isfinite(kl) && kl >= 0 && cr > -10 && cr <= 1) {
            plan->cand[n++] = (struct kvs_ckv_cand){.share = sh, .floor = fl, .by_sim = bs == 1, .kl = kl, .cr = cr};
        } else if (sscanf(line, "chosen %d%c", &ch, &tail) == 2 && tail == '\n' && chosen < 0) {
            chosen = ch;
        } else {
            ok = false;
        }
    }
    fclose(fp);
    if (!ok || n == 0 || chosen < 0 || chosen >= n) return false;
    plan->n_cand = n;
    plan->chosen = chosen;
    return true;
}

static void cache_save(const char *path, uint64_t key, const struct kvs_ckv_plan *plan)
{
    char part[820]; /* path (< 800) + ".part" */
    if ((size_t)snprintf(part, sizeof part, "%.800s.part", path) >= sizeof part) return;
    FILE *fp = fopen(part, "w");
    if (!fp) return; /* the cache is an optimisation: the plan stands without it */
    bool ok = fprintf(fp, "%s %016llx\n", PLAN_MAGIC, (unsigned long long)key) > 0;
    for (int i = 0; i < plan->n_cand && ok; i++)
        ok = fprintf(fp, "cand %.4f %.4f %d %.6f %.4f\n", (double)plan->cand[i].share, (double)plan->cand[i].floor,
                     plan->cand[i].by_sim ? 1 : 0, (double)plan->cand[i].kl, (double)plan->cand[i].cr) > 0;
    ok = ok && fprintf(fp, "chosen %d\n", plan->chosen) > 0;
    if (fclose(fp) != 0) ok = false;
    if (!ok || rename(part, path) != 0) unlink(part);
}

static void calib_path(char *buf, size_t cap)
{
    glob_t g;
    if (glob(KVS_PLAN_CALIB_GLOB, 0, NULL, &g) == 0 && g.gl_pathc > 0)
        snprintf(buf, cap, "%s", g.gl_pathv[g.gl_pathc - 1]);
    else
        snprintf(buf, cap, "%s", KVS_CKV_CALIB_TEXT);
    globfree(&g);
}

/* Is candidate A better than B for TARGET (real bytes, <0: none)? Only a candidate that reaches
 * the target on the calibration text (within 0.02) competes on KL: a floor or share that merges
 * less would otherwise always win by compressing less. Among those that all fall short, the one
 * that compresses most wins. Ties keep the earlier candidate. */
static bool better(const struct kvs_ckv_cand *a, const struct kvs_ckv_cand *b, float target)
{
    bool fa = target < 0 || a->cr >= target - 0.02f, fb = target < 0 || b->cr >= target - 0.02f;
    if (fa != fb) return fa;
    if (!fa) return a->cr > b->cr + 0.005f || (fabsf(a->cr - b->cr) <= 0.005f && a->kl < b->kl);
    return a->kl < b->kl;
}

/* Scores candidate I: a press with the candidate's plan on the calibration tokens, KL vs REF. */
static enum kvs_status score_cand(const struct kvs_model *m, const struct kvs_method_config *cal,
                                  const struct kvs_ckv_factors *f, const struct kvs_ckv_plan *base, int P, int S,
                                  const int32_t *ids, const float *ref, float *logits, struct kvs_ckv_cand *cd,
                                  char *err, size_t errlen)
{
    struct kvs_ckv_plan pl;
    cand_plan(f, cal, cd, P, base, &pl);
    struct kvs_press *press = NULL;
    enum kvs_status st = kvs_press_commonkv_create(&press, m, cal, P + S, (struct kvs_ckv_factors *)f, false, &pl,
                                                   err, errlen);
    if (st != KVS_OK) return st;
    st = run_text(m, press, ids, P, S, logits, &cd->cr, err, errlen);
    kvs_press_delete(press);
    if (st != KVS_OK) return st;
    const int V = (int)m->hp.n_vocab;
    struct kvs_quality_acc qa = {0};
    for (int i = 0; i < S; i++)
        kvs_quality_add(&qa, logits + (size_t)i * V, ref + (size_t)i * V, V, ids[P + i + 1]);
    cd->kl = (float)kvs_quality_kl(&qa);
    return KVS_OK;
}

enum kvs_status kvs_plan_search(struct kvs_ckv_plan *plan, const struct kvs_ckv_plan *base,
                                const struct kvs_model *m, const struct kvs_method_config *latent,
                                const struct kvs_ckv_factors *f, int n_ctx, kvs_progress_fn progress, void *ud,
                                char *err, size_t errlen)
{
    *plan = *base;
    plan->chosen = -1;
    /* The calibration sequence is short, so its protected window is scaled to leave the same share
     * of mergeable tokens as the real context of n_ctx tokens: the candidates then merge what the
     * real run would. */
    const int P = KVS_PLAN_CAL_PREFIX, S = KVS_PLAN_CAL_SCORED;
    int prot = (int)(latent->sinks + latent->recent);
    double mu = n_ctx > prot ? (double)(n_ctx - prot) / n_ctx : 0.0;
    struct kvs_method_config cal = *latent;
    cal.sinks = KVS_MIN(latent->sinks, (uint32_t)P);
    long rc = lround(P * (1.0 - mu)) - (long)cal.sinks;
    cal.recent = (uint32_t)KVS_MAX(0L, KVS_MIN(rc, (long)latent->recent));
    if (mu <= 0) cal.recent = (uint32_t)(P - (int)cal.sinks); /* nothing can merge, as in the real run */
    bool user_floor = !isnan(latent->merge_floor);
    float floor0 = user_floor ? latent->merge_floor : (float)KVS_CKV_MERGE_FLOOR;
    /* candidates: three merge shares; then the best with the rank spread by similarity; then two
     * other floors. With nothing mergeable the one rank-only plan is measured, to state its cost. */
    struct kvs_ckv_cand cands[KVS_CKV_PLAN_MAX_CAND];
    static const float shares[] = {0.6f, 0.8f, 0.95f}, floors[] = {0.3f, 0.6f};
    int n_stage1 = mu > 0 ? 3 : 1;
    for (int i = 0; i < n_stage1; i++)
        cands[i] = (struct kvs_ckv_cand){.share = mu > 0 ? shares[i] : 0.0f, .floor = floor0,
                                         .by_sim = latent->rank_by_similarity, .kl = NAN, .cr = NAN};
    int n_total = n_stage1 + (mu > 0 && !latent->rank_by_similarity ? 1 : 0) + (mu > 0 && !user_floor ? 2 : 0);

    char path[800] = "", text[600];
    calib_path(text, sizeof text);
    int32_t *ids = NULL;
    int n_ids = 0;
    enum kvs_status st = kvs_ckv_calib_tokens(m, text, P + S + 1, &ids, &n_ids, err, errlen);
    if (st != KVS_OK) return st;
    if (n_ids < P + S + 1) {
        kvs_seterr(err, errlen, "plan search: %s has %d tokens, %d needed", text, n_ids, P + S + 1);
        free(ids);
        return KVS_ERR_FORMAT;
    }
    /* the key covers everything the search depends on */
    uint64_t key = 1469598103934665603ull;
    struct {
        uint64_t model, calib, ids;
        uint32_t G, whiten, methods, bits, qgroup, qres, sinks, recent, snap_cap, snap_win, snap_kern, sim, by_sim,
            P, S, mu_cal, n_total, weights;
        float target, floor0;
    } k = {f->model_key, f->calib_key, kvs_ckv_calib_key(ids, n_ids), f->group_size, f->whitened, latent->methods,
           base->quant_bits, latent->quant_group, latent->quant_residual, cal.sinks, cal.recent, latent->snap_capacity,
           latent->snap_window, latent->snap_kernel, latent->sim_mode, latent->rank_by_similarity, (uint32_t)P,
           (uint32_t)S, mu > 0, (uint32_t)n_total, 0, latent->target_cr, floor0};
    for (uint32_t l = 0; l < f->n_layer; l++) k.weights = (uint32_t)fnv(k.weights, &base->merge_w[l], sizeof(float));
    key = fnv(key, &k, sizeof k);
    if (latent->cache_dir[0]) {
        snprintf(path, sizeof path, "%s/ckv-%016llx.plan", latent->cache_dir, (unsigned long long)key);
        struct kvs_ckv_plan c = *base;
        if (cache_load(path, key, &c) && c.n_cand == n_total) {
            plan->n_cand = c.n_cand;
            plan->chosen = c.chosen;
            memcpy(plan->cand, c.cand, sizeof plan->cand);
            plan->from_cache = true;
        }
    }
    if (!plan->from_cache) {
        const int V = (int)m->hp.n_vocab;
        float *ref = malloc((size_t)S * V * sizeof(float)), *lg = malloc((size_t)S * V * sizeof(float));
        struct kvs_press *full = NULL;
        char what[64];
        snprintf(what, sizeof what, "planning CR %.2f", (double)latent->target_cr);
        int done = 0, steps = 1 + n_total;
        if (!ref || !lg) {
            kvs_seterr(err, errlen, "plan search: out of memory");
            st = KVS_ERR_NOMEM;
            goto out;
        }
#define STEP()                                                                                             \
    do {                                                                                                   \
        if (progress && !progress(ud, what, (float)done / steps)) {                                        \
            kvs_seterr(err, errlen, "cancelled");                                                          \
            st = KVS_ERR_CANCELLED;                                                                        \
            goto out;                                                                                      \
        }                                                                                                  \
        done++;                                                                                            \
    } while (0)
        STEP();
        struct kvs_method_config fc;
        if ((st = kvs_method_parse(&fc, "full", err, errlen)) != KVS_OK) goto out;
        if ((st = kvs_press_full_create(&full, m, &fc, P + S, err, errlen)) != KVS_OK) goto out;
        st = run_text(m, full, ids, P, S, ref, NULL, err, errlen);
        kvs_press_delete(full);
        if (st != KVS_OK) goto out;
        int n = 0, best = 0;
        for (; n < n_stage1; n++) {
            STEP();
            if ((st = score_cand(m, &cal, f, base, P, S, ids, ref, lg, &cands[n], err, errlen)) != KVS_OK) goto out;
            if (better(&cands[n], &cands[best], base->cr_final)) best = n;
        }
        if (mu > 0 && !latent->rank_by_similarity) {
            cands[n] = cands[best];
            cands[n].by_sim = true;
            STEP();
            if ((st = score_cand(m, &cal, f, base, P, S, ids, ref, lg, &cands[n], err, errlen)) != KVS_OK) goto out;
            if (better(&cands[n], &cands[best], base->cr_final)) best = n;
            n++;
        }
        if (mu > 0 && !user_floor) {
            int b = best;
            for (int i = 0; i < 2; i++, n++) {
                cands[n] = cands[b];
                cands[n].floor = floors[i];
                STEP();
                if ((st = score_cand(m, &cal, f, base, P, S, ids, ref, lg, &cands[n], err, errlen)) != KVS_OK)
                    goto out;
                if (better(&cands[n], &cands[best], base->cr_final)) best = n;
            }
        }
        if (progress) progress(ud, what, 1.0f);
        plan->n_cand = n;
        plan->chosen = best;
        memcpy(plan->cand, cands, sizeof cands);
        if (path[0]) cache_save(path, key, plan);
    out:
        free(ref);
        free(lg);
#undef STEP
        if (st != KVS_OK) {
            free(ids);
            return st;
        }
    }
    free(ids);
    /* the chosen split, planned for the real context */
    struct kvs_ckv_plan fin;
    cand_plan(f, latent, &plan->cand[plan->chosen], n_ctx, base, &fin);
    kvs_ckv_plan_take(plan, &fin);
    plan->floor = fin.floor;
    plan->merge = fin.merge;
    plan->cal_tokens = P;
    plan->cal_scored = S;
    const char *b = strrchr(text, '/');
    if (mu <= 0) {
        /* nothing can merge: say what the target costs on the rank alone */
        snprintf(plan->why, sizeof plan->why,
                 "nothing can merge in %d tokens (%u sinks + %u recent protected): rank %u (%.2f D) alone costs KL "
                 "%.3f on %.40s",
                 n_ctx, latent->sinks, latent->recent, plan->rank[0], (double)plan->rank[0] / f->n_embd,
                 (double)plan->cand[plan->chosen].kl, b ? b + 1 : text);
        return KVS_OK;
    }
    int len = snprintf(plan->why, sizeof plan->why, "KL@CR on %.40s (%d+%d tok)%s, share/floor%s:", b ? b + 1 : text, P,
                       S, plan->from_cache ? ", cached" : "", latent->rank_by_similarity ? "" : "/rank");
    for (int i = 0; i < plan->n_cand && len > 0 && (size_t)len < sizeof plan->why; i++) {
        const struct kvs_ckv_cand *c = &plan->cand[i];
        len += snprintf(plan->why + len, sizeof plan->why - (size_t)len, " %.2f/%.2f%s %.3f@%.2f%s", (double)c->share,
                        (double)c->floor, latent->rank_by_similarity ? "" : c->by_sim ? "/e" : "/u", (double)c->kl,
                        (double)c->cr, i == plan->chosen ? "*" : "");
    }
    return KVS_OK;
}
