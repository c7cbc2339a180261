/* `kvscope eval`: methods x target compression ratios on one text, side by side with `full`:
 * achieved CR from bytes held, teacher-forced perplexity, mean KL and top-1 agreement against the
 * full run, passkey retrieval at several lengths, decode tokens/s; a table or --json. `--similarity`
 * prints the layer-similarity evidence. `kvscope calibrate` measures per-layer key sensitivities
 * for merge weights. */
#include "commands.h"
#include "commonkv.h"
#include "metrics.h"
#include "options.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_LIST 16

static int mkdir_if(const char *d) { return mkdir(d, 0755); }

static void usage(FILE *f)
{
    fputs("usage: kvscope eval [-m MODEL] [--methods full,commonkv,lowrank,minicache] [--cr 0.3,0.5,0.7]\n"
          "                    [-f FILE] [--ctx N] [--passkey 512,1024] [--passkey-trials N] [--decode N]\n"
          "                    [--group G] [--rank R] [--rank-ratio X] [--rank-by-similarity] [--merge-share X]\n"
          "                    [--merge-floor X] [--no-whiten] [--sim adjacent|first-last]\n"
          "                    [--merge-weights FILE] [--bits B] [--sinks N] [--recent N]\n"
          "                    [--cache-dir DIR | --no-cache] [-t THREADS] [--similarity] [--json]\n"
          "       kvscope calibrate [-m MODEL] [-f FILE] [--ctx N] [--noise X] [-o FILE] [-t THREADS]\n",
          f);
}

static int parse_list(const char *opt, const char *s, double lo, double hi, double *out)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == MAX_LIST) {
            kvs_die_msg("option %s: at most %d values", opt, MAX_LIST);
            return -1;
        }
        if (!strcmp(opt, "--cr") && !strcmp(t, "none")) out[n] = KVS_CR_NONE; /* no target */
        else if (!kvs_opt_float(opt, t, lo, hi, &out[n])) return -1;
        n++;
    }
    return n;
}

static bool progress_cb(void *ud, const char *what, float frac)
{
    bool *quiet = ud;
    if (*quiet) return true;
    if (isatty(2)) {
        fprintf(stderr, "\r  %s %3.0f%%", what, frac * 100);
        if (frac >= 1.0f) fputc('\n', stderr);
    } else if (frac <= 0.0f || frac >= 1.0f) {
        fprintf(stderr, "  %s %s\n", what, frac <= 0.0f ? "..." : "done");
    }
    return true;
}

struct row {
    char method[64];
    float target, achieved;
    double ppl, kl, top1, passkey, tps;
    int pk_ok, pk_n;
    uint64_t held, full, alloc;
    uint32_t rank_min, rank_max;
    float merged;
    char note[600];
    bool failed;
};

struct evalopt {
    struct kvs_method_config base;  /* knobs applied to every method */
    int n_threads, n_decode, trials;
    int n_pk;
    double pk[MAX_LIST];
};

static enum kvs_status make_ctx(const struct kvs_model *m, const struct kvs_method_config *mc, int n_ctx,
                                int n_threads, bool *quiet, struct kvs_press **press, struct kvs_ctx **cx, char *err,
                                size_t errlen)
{
    *press = NULL;
    *cx = NULL;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = n_threads;
    enum kvs_status st = kvs_press_new(press, m, mc, n_ctx, progress_cb, quiet, err, errlen);
    if (st == KVS_OK) st = kvs_ctx_new(cx, m, *press, &cp, err, errlen);
    if (st != KVS_OK) {
        kvs_press_delete(*press);
        *press = NULL;
    }
    return st;
}

static int greedy(struct kvs_ctx *cx, const struct kvs_model *m, int n, char *out, size_t cap, double *secs)
{
    size_t len = 0;
    out[0] = 0;
    uint64_t t0 = kvs_now_ns();
    for (int i = 0; i < n; i++) {
        int32_t id = kvs_sample(kvs_ctx_logits(cx), (int)m->hp.n_vocab, 0, 1, NULL);
        if (kvs_tokenizer_is_eog(m->tok, id)) break;
        char piece[64];
        int pl = kvs_tokenizer_piece(m->tok, id, piece, sizeof piece);
        if (pl > 0 && len + (size_t)pl + 1 < cap) {
            memcpy(out + len, piece, (size_t)pl);
            len += (size_t)pl;
            out[len] = 0;
        }
        if (kvs_ctx_eval(cx, &id, 1, NULL) != KVS_OK) return -1;
    }
    if (secs) *secs = (double)(kvs_now_ns() - t0) / 1e9;
    return 0;
}

/* One method at one target: teacher-forced quality on IDS, decode speed, passkey. */
static void eval_one(const struct kvs_model *m, const struct evalopt *o, const char *spec, float cr,
                     const int32_t *ids, int n, const float *ref, float *logits, struct row *r, bool *quiet)
{
    char err[512];
    memset(r, 0, sizeof *r);
    snprintf(r->method, sizeof r->method, "%s", spec);
    r->target = cr;
    r->passkey = NAN;
    struct kvs_method_config mc = o->base;
    if (kvs_method_parse(&mc, spec, err, sizeof err) != KVS_OK) {
        snprintf(r->note, sizeof r->note, "%s", err);
        r->failed = true;
        return;
    }
    /* knobs shared by all methods, then the target */
    struct kvs_method_config b = o->base;
    mc.group_size = b.group_size;
    mc.rank = b.rank;
    mc.rank_ratio = b.rank_ratio;
    mc.rank_by_similarity = b.rank_by_similarity;
    mc.merge_share = b.merge_share;
    mc.merge_floor = b.merge_floor;
    mc.whiten = b.whiten;
    mc.sim_mode = b.sim_mode;
    mc.sinks = b.sinks;
    mc.recent = b.recent;
    mc.quant_bits = b.quant_bits;
    mc.merge_weights = b.merge_weights;
    memcpy(mc.merge_weights_file, b.merge_weights_file, sizeof mc.merge_weights_file);
    memcpy(mc.cache_dir, b.cache_dir, sizeof mc.cache_dir);
    mc.target_cr = mc.methods == KVS_M_FULL ? -1.0f : cr;
    struct kvs_press *press;
    struct kvs_ctx *cx;
    if (make_ctx(m, &mc, n + o->n_decode + 2, o->n_threads, quiet, &press, &cx, err, sizeof err) != KVS_OK) {
        snprintf(r->note, sizeof r->note, "%s", err);
        r->failed = true;
        return;
    }
    int V = (int)m->hp.n_vocab;
    if (kvs_ctx_eval(cx, ids, n, logits) != KVS_OK) {
        snprintf(r->note, sizeof r->note, "%s", kvs_ctx_error(cx));
        r->failed = true;
        goto done;
    }
    struct kvs_quality_acc qa = {0};
    for (int t = 0; t + 1 < n; t++)
        kvs_quality_add(&qa, logits + (size_t)t * V, ref ? ref + (size_t)t * V : NULL, V, ids[t + 1]);
    r->ppl = kvs_quality_ppl(&qa);
    r->kl = ref ? kvs_quality_kl(&qa) : 0;
    r->top1 = ref ? kvs_quality_top1(&qa) : 1;
    struct kvs_rec_step rec;
    memset(&rec, 0, sizeof rec);
    press->ops->fill_record(press, &rec);
    r->held = rec.bytes_held;
    r->full = rec.bytes_full;
    r->alloc = rec.bytes_alloc;
    r->achieved = rec.cr_achieved;
    r->rank_min = UINT32_MAX;
    uint64_t kept = 0, merged = 0;
    for (uint32_t g = 0; g < rec.n_groups; g++) {
        r->rank_min = KVS_MIN(r->rank_min, rec.group_rank[g]);
        r->rank_max = KVS_MAX(r->rank_max, rec.group_rank[g]);
        merged += (uint64_t)lroundf(rec.group_merged[g] * 1000);
        kept += 1000;
    }
    if (!rec.n_groups) r->rank_min = 0;
    r->merged = kept ? (float)merged / kept : 0.0f;
    snprintf(r->note, sizeof r->note, "%s", kvs_press_note(press));
    /* decode speed at this context */
    char gen[512];
    double secs = 0;
    if (o->n_decode > 0) {
        /* one untimed token first: thread wake-up and first-touch costs are not decode speed */
        if (greedy(cx, m, 1, gen, sizeof gen, NULL) != 0 || greedy(cx, m, o->n_decode, gen, sizeof gen, &secs) != 0) {
            snprintf(r->note, sizeof r->note, "decode: %s", kvs_ctx_error(cx));
            r->failed = true;
            goto done;
        }
        r->tps = secs > 0 ? o->n_decode / secs : 0;
    }
    kvs_ctx_delete(cx);
    kvs_press_delete(press);
    cx = NULL;
    press = NULL;
    /* passkey retrieval: fresh contexts, several lengths and depths */
    for (int li = 0; li < o->n_pk; li++) {
        int len = (int)o->pk[li];
        for (int t = 0; t < o->trials; t++) {
            uint32_t key = 10000u + (uint32_t)((len * 7919u + (uint32_t)t * 104729u) % 90000u);
            float depth = o->trials > 1 ? 0.2f + 0.6f * t / (o->trials - 1) : 0.5f;
            char *prompt = kvs_passkey_prompt(m->tok, len, key, depth);
            if (!prompt) continue;
            int64_t cap = (int64_t)strlen(prompt) + 8;
            int32_t *pt = malloc((size_t)cap * sizeof(int32_t));
            int off = 0;
            int32_t bos = kvs_tokenizer_bos(m->tok);
            if (pt && bos >= 0 && kvs_tokenizer_add_bos(m->tok)) pt[off++] = bos;
            int64_t np = pt ? kvs_tokenizer_encode(m->tok, prompt, strlen(prompt), false, pt + off, cap - off) : -1;
            free(prompt);
            if (np <= 0) { free(pt); continue; }
            np += off;
            if (make_ctx(m, &mc, (int)np + 16, o->n_threads, quiet, &press, &cx, err, sizeof err) == KVS_OK &&
                kvs_ctx_eval(cx, pt, (int)np, NULL) == KVS_OK && greedy(cx, m, 8, gen, sizeof gen, NULL) == 0) {
                r->pk_n++;
                r->pk_ok += kvs_passkey_match(gen, key);
            }
            kvs_ctx_delete(cx);
            kvs_press_delete(press);
            cx = NULL;
            press = NULL;
            free(pt);
        }
    }
    if (r->pk_n) r->passkey = (double)r->pk_ok / r->pk_n;
done:
    kvs_ctx_delete(cx);
    kvs_press_delete(press);
}

static void fmt_bytes(char *b, size_t cap, uint64_t v)
{
    if (v >= (1u << 20)) snprintf(b, cap, "%.2fM", v / 1048576.0);
    else snprintf(b, cap, "%.1fK", v / 1024.0);
}

static void print_rows(const struct row *rows, int n, bool json, int n_tokens)
{
    if (json) {
        printf("[");
        for (int i = 0; i < n; i++) {
            const struct row *r = &rows[i];
            printf("%s\n {\"method\": \"%s\", ", i ? "," : "", r->method);
            if (r->target >= 0) printf("\"target_cr\": %.3f, ", r->target);
            else printf("\"target_cr\": null, ");
            if (r->failed) {
                printf("\"error\": \"%s\"}", r->note);
                continue;
            }
            printf("\"achieved_cr\": %.4f, \"bytes_full\": %llu, \"bytes_held\": %llu, \"bytes_alloc\": %llu, "
                   "\"rank_min\": %u, \"rank_max\": %u, \"merged_frac\": %.4f, \"ppl\": %.4f, \"kl\": %.5f, "
                   "\"top1\": %.4f, ",
                   r->achieved, (unsigned long long)r->full, (unsigned long long)r->held, (unsigned long long)r->alloc,
                   r->rank_min, r->rank_max, r->merged, r->ppl, r->kl, r->top1);
            if (r->pk_n) printf("\"passkey_acc\": %.3f, \"passkey_trials\": %d, ", r->passkey, r->pk_n);
            else printf("\"passkey_acc\": null, ");
            printf("\"decode_tps\": %.2f, \"n_tokens\": %d, \"note\": \"%s\"}", r->tps, n_tokens, r->note);
        }
        printf("\n]\n");
        return;
    }
    printf("%-22s %6s %8s %9s %-16s %9s %8s %6s %8s %8s\n", "method", "target", "achieved", "held", "rank / merged",
           "ppl", "KL", "top-1", "passkey", "dec t/s");
    for (int i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        char tgt[16], held[16], rk[32], pk[16];
        if (r->target >= 0) snprintf(tgt, sizeof tgt, "%.2f", r->target);
        else snprintf(tgt, sizeof tgt, "-");
        if (r->failed) {
            printf("%-22s %6s  failed: %s\n", r->method, tgt, r->note);
            continue;
        }
        fmt_bytes(held, sizeof held, r->held);
        if (r->rank_max == 0) snprintf(rk, sizeof rk, "-");
        else if (r->rank_min == r->rank_max) snprintf(rk, sizeof rk, "r%u / %.0f%%", r->rank_max, r->merged * 100);
        else snprintf(rk, sizeof rk, "r%u-%u / %.0f%%", r->rank_min, r->rank_max, r->merged * 100);
        if (r->pk_n) snprintf(pk, sizeof pk, "%d/%d", r->pk_ok, r->pk_n);
        else snprintf(pk, sizeof pk, "n/a");
        printf("%-22s %6s %8.3f %9s %-16s %9.3f %8.4f %6.3f %8s %8.1f\n", r->method, tgt, r->achieved, held, rk, r->ppl,
               r->kl, r->top1, pk, r->tps);
    }
    for (int i = 0; i < n; i++)
        if (!rows[i].failed && rows[i].note[0])
            printf("note: %s @ %.2f: %s\n", rows[i].method, rows[i].target, rows[i].note);
}

static int similarity(const struct kvs_model *m, const struct kvs_method_config *base, const int32_t *ids, int n,
                      int n_threads, bool json, bool *quiet)
{
    char err[512], warn[300];
    struct kvs_ckv_factors *f = NULL;
    uint32_t G = base->group_size ? base->group_size : 4;
    if (kvs_ckv_factors_get(&f, m, G, base->whiten, base->cache_dir, progress_cb, quiet, warn, sizeof warn, err,
                            sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        return 1;
    }
    struct kvs_method_config pc = *base;
    pc.methods = KVS_M_COMMONKV;
    if (pc.target_cr < 0) pc.target_cr = 0.5f;
    struct kvs_ckv_plan plan;
    kvs_ckv_plan(f, &pc, n, &plan);
    float *H, *K, *L;
    int sn = KVS_MIN(n, 512);
    if (kvs_similarity_layers(m, ids, sn, f, plan.rank, n_threads, &H, &K, &L, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        kvs_ckv_factors_delete(f);
        return 1;
    }
    int N = (int)m->hp.n_layer;
    if (json) {
        printf("{\"tokens\": %d, \"group_size\": %u, \"rank\": %u, \"adjacent\": [", sn, G, plan.rank[0]);
        for (int l = 0; l + 1 < N; l++) {
            float lv = L[l * N + l + 1];
            printf("%s{\"layer\": %d, \"hidden\": %.4f, \"keys\": %.4f, \"latent\": ", l ? ", " : "", l, H[l * N + l + 1],
                   K[l * N + l + 1]);
            if (isnan(lv)) printf("null}");
            else printf("%.4f}", lv);
        }
        printf("]}\n");
    } else {
        printf("layer similarity on %d tokens (mean cosine between layer l and l+1; CommonKV latents at rank %u,\n"
               "groups of %u, only within a group)\n%-8s %8s %8s %8s\n", sn, plan.rank[0], G, "layers", "hidden",
               "raw K", "latent");
        for (int l = 0; l + 1 < N; l++) {
            char lt[16];
            float lv = L[l * N + l + 1];
            if (isnan(lv)) snprintf(lt, sizeof lt, "-");
            else snprintf(lt, sizeof lt, "%.3f", lv);
            printf("%2d-%-5d %8.3f %8.3f %8s\n", l, l + 1, H[l * N + l + 1], K[l * N + l + 1], lt);
        }
        double sh = 0, sk = 0, sl = 0;
        int nl = 0;
        for (int l = 0; l + 1 < N; l++) {
            sh += H[l * N + l + 1];
            sk += K[l * N + l + 1];
            if (!isnan(L[l * N + l + 1])) { sl += L[l * N + l + 1]; nl++; }
        }
        printf("mean     %8.3f %8.3f %8.3f\n", sh / (N - 1), sk / (N - 1), nl ? sl / nl : NAN);
    }
    free(H);
    free(K);
    free(L);
    kvs_ckv_factors_delete(f);
    return 0;
}

static int32_t *read_tokens(const struct kvs_model *m, const char *file, int *n_out)
{
    char *text = kvs_read_text_file(file, 64u << 20);
    if (!text) return NULL;
    int64_t cap = (int64_t)strlen(text) + 8;
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    int off = 0;
    int32_t bos = kvs_tokenizer_bos(m->tok);
    if (ids && bos >= 0 && kvs_tokenizer_add_bos(m->tok)) ids[off++] = bos;
    int64_t n = ids ? kvs_tokenizer_encode(m->tok, text, strlen(text), false, ids + off, cap - off) : -1;
    free(text);
    if (n <= 0) {
        free(ids);
        kvs_die_msg("%s: no tokens", file);
        return NULL;
    }
    *n_out = (int)(n + off);
    return ids;
}

int kvs_cmd_eval(int argc, char **argv)
{
    const char *model_path = NULL, *methods = "full,commonkv,lowrank,minicache", *file = KVS_DEFAULT_TEXT;
    const char *crs = "0.3,0.5,0.7", *pks = "512,1024";
    long ctx = 1024, n_decode = 16, threads = 0, trials = 2, lv;
    double dv;
    bool json = false, sim = false, quiet = false;
    struct evalopt o;
    memset(&o, 0, sizeof o);
    char err[512];
    kvs_method_parse(&o.base, "commonkv", err, sizeof err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) { model_path = v; i++; }
        else if (!strcmp(a, "--methods") && v) { methods = v; i++; }
        else if (!strcmp(a, "--cr") && v) { crs = v; i++; }
        else if (!strcmp(a, "-f") && v) { file = v; i++; }
        else if (!strcmp(a, "--passkey") && v) { pks = v; i++; }
        else if (!strcmp(a, "--ctx")) { if (!kvs_opt_int(a, v, 16, 1 << 20, &ctx)) return 2; i++; }
        else if (!strcmp(a, "--decode")) { if (!kvs_opt_int(a, v, 0, 100000, &n_decode)) return 2; i++; }
        else if (!strcmp(a, "--passkey-trials")) { if (!kvs_opt_int(a, v, 0, 100, &trials)) return 2; i++; }
        else if (!strcmp(a, "-t")) { if (!kvs_opt_int(a, v, 0, 256, &threads)) return 2; i++; }
        else if (!strcmp(a, "--group")) { if (!kvs_opt_int(a, v, 1, KVS_CKV_MAX_G, &lv)) return 2; o.base.group_size = (uint32_t)lv; i++; }
        else if (!strcmp(a, "--rank")) { if (!kvs_opt_int(a, v, 1, 1 << 16, &lv)) return 2; o.base.rank = (uint32_t)lv; i++; }
        else if (!strcmp(a, "--rank-ratio")) { if (!kvs_opt_float(a, v, 0.001, 4, &dv)) return 2; o.base.rank_ratio = (float)dv; i++; }
        else if (!strcmp(a, "--rank-by-similarity")) o.base.rank_by_similarity = true;
        else if (!strcmp(a, "--merge-share")) {
            double x;
            if (!kvs_opt_float(a, v, 0, 1, &x)) return 2;
            o.base.merge_share = (float)x;
            i++;
        }
        else if (!strcmp(a, "--merge-floor")) {
            double x;
            if (!kvs_opt_float(a, v, -1, 1, &x)) return 2;
            o.base.merge_floor = (float)x;
            i++;
        }
        else if (!strcmp(a, "--no-whiten")) o.base.whiten = false;
        else if (!strcmp(a, "--whiten")) o.base.whiten = true;
        else if (!strcmp(a, "--sim") && v) {
            if (!strcmp(v, "adjacent")) o.base.sim_mode = KVS_SIM_ADJ_MEAN;
            else if (!strcmp(v, "first-last")) o.base.sim_mode = KVS_SIM_FIRST_LAST;
            else { kvs_die_msg("option --sim: '%s' is not adjacent or first-last", v); return 2; }
            i++;
        }
        else if (!strcmp(a, "--merge-weights") && v) {
            o.base.merge_weights = KVS_MERGE_SENSITIVITY;
            snprintf(o.base.merge_weights_file, sizeof o.base.merge_weights_file, "%s", v);
            i++;
        }
        else if (!strcmp(a, "--bits")) {
            if (!kvs_opt_int(a, v, 2, 8, &lv) || (lv != 2 && lv != 4 && lv != 8)) { kvs_die_msg("option --bits: 2, 4 or 8"); return 2; }
            o.base.quant_bits = (uint32_t)lv;
            i++;
        }
        else if (!strcmp(a, "--sinks")) { if (!kvs_opt_int(a, v, 0, 1 << 20, &lv)) return 2; o.base.sinks = (uint32_t)lv; i++; }
        else if (!strcmp(a, "--recent")) { if (!kvs_opt_int(a, v, 0, 1 << 20, &lv)) return 2; o.base.recent = (uint32_t)lv; i++; }
        else if (!strcmp(a, "--cache-dir") && v) { snprintf(o.base.cache_dir, sizeof o.base.cache_dir, "%s", v); i++; }
        else if (!strcmp(a, "--no-cache")) o.base.cache_dir[0] = 0;
        else if (!strcmp(a, "--similarity")) sim = true;
        else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = true;
        else { kvs_die_msg("eval: unknown option or missing value '%s'", a); usage(stderr); return 2; }
    }
    double crv[MAX_LIST];
    int n_cr = parse_list("--cr", crs, 0, 0.999, crv);
    o.n_pk = strcmp(pks, "0") && strcmp(pks, "none") ? parse_list("--passkey", pks, 64, 1 << 20, o.pk) : 0;
    if (n_cr <= 0 || o.n_pk < 0) return 2;
    o.n_threads = (int)threads;
    o.n_decode = (int)n_decode;
    o.trials = (int)trials;
    if (json) quiet = true;
    if (!model_path) model_path = kvs_default_model();
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, model_path, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        return 1;
    }
    int n_all = 0, rc = 1;
    int32_t *ids = read_tokens(m, file, &n_all);
    float *ref = NULL, *logits = NULL;
    struct row *rows = NULL;
    if (!ids) goto out;
    int n = (int)KVS_MIN((long)n_all, ctx);
    if (sim) {
        rc = similarity(m, &o.base, ids, n, o.n_threads, json, &quiet);
        goto out;
    }
    size_t V = m->hp.n_vocab;
    ref = malloc((size_t)n * V * sizeof(float));
    logits = malloc((size_t)n * V * sizeof(float));
    rows = calloc((size_t)MAX_LIST * (MAX_LIST + 1), sizeof *rows);
    if (!ref || !logits || !rows) {
        kvs_die_msg("eval: out of memory for %d x %zu logits", n, V);
        goto out;
    }
    if (!json)
        printf("kvscope eval: %s (%u layers, D %u, KV %ux%u), %s: %d tokens, decode %ld tokens, passkey %s x %ld\n",
               m->name, m->hp.n_layer, m->hp.n_embd, m->hp.n_head_kv, m->hp.head_dim, file, n, n_decode,
               o.n_pk ? pks : "none", trials);
    fflush(stdout);
    /* the reference: full, on the same tokens */
    int nr = 0;
    eval_one(m, &o, "full", -1, ids, n, NULL, ref, &rows[nr], &quiet);
    if (rows[nr].failed) {
        kvs_die_msg("eval: full: %s", rows[nr].note);
        goto out;
    }
    rows[nr].kl = 0;
    rows[nr].top1 = 1;
    nr++;
    char mbuf[256];
    snprintf(mbuf, sizeof mbuf, "%s", methods);
    char *ms = NULL;
    for (char *spec = strtok_r(mbuf, ",", &ms); spec; spec = strtok_r(NULL, ",", &ms)) {
        if (!strcmp(spec, "full")) continue;
        for (int c = 0; c < n_cr && nr < MAX_LIST * (MAX_LIST + 1); c++) {
            if (!quiet) fprintf(stderr, "  %s @ CR %.2f ...\n", spec, crv[c]);
            eval_one(m, &o, spec, (float)crv[c], ids, n, ref, logits, &rows[nr], &quiet);
            nr++;
        }
    }
    print_rows(rows, nr, json, n);
    rc = 0;
    for (int i = 0; i < nr; i++) rc |= rows[i].failed;
out:
    free(ref);
    free(logits);
    free(rows);
    free(ids);
    kvs_model_delete(m);
    return rc;
}

int kvs_cmd_calibrate(int argc, char **argv)
{
    const char *model_path = NULL, *file = KVS_CKV_CALIB_TEXT, *outp = NULL;
    long ctx = 256, threads = 0;
    double noise = 1.0;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) { model_path = v; i++; }
        else if (!strcmp(a, "-f") && v) { file = v; i++; }
        else if (!strcmp(a, "-o") && v) { outp = v; i++; }
        else if (!strcmp(a, "--ctx")) { if (!kvs_opt_int(a, v, 16, 1 << 16, &ctx)) return 2; i++; }
        else if (!strcmp(a, "--noise")) { if (!kvs_opt_float(a, v, 0.01, 100, &noise)) return 2; i++; }
        else if (!strcmp(a, "-t")) { if (!kvs_opt_int(a, v, 0, 256, &threads)) return 2; i++; }
        else if (!strcmp(a, "-q")) quiet = true;
        else { kvs_die_msg("calibrate: unknown option or missing value '%s'", a); usage(stderr); return 2; }
    }
    if (!model_path) model_path = kvs_default_model();
    char err[512];
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, model_path, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        return 1;
    }
    int32_t *ids = NULL;
    int n = 0, rc = 1, N = (int)m->hp.n_layer;
    float *sens = calloc((size_t)N, sizeof(float));
    double base = 0;
    char path[600];
    if (!sens || kvs_ckv_calib_tokens(m, file, (int)ctx, &ids, &n, err, sizeof err) != KVS_OK ||
        kvs_ckv_sensitivity(m, ids, n, (float)noise, (int)threads, sens, &base, progress_cb, &quiet, err, sizeof err) != KVS_OK) {
        kvs_die_msg("calibrate: %s", err);
        goto out;
    }
    if (!outp) {
        char dir[300];
        kvs_ckv_cache_dir_default(dir, sizeof dir);
        snprintf(path, sizeof path, "%s/sens-%016llx.txt", dir, (unsigned long long)kvs_ckv_model_key(m));
        char cmd[400];
        snprintf(cmd, sizeof cmd, "%s", dir);
        for (char *p = cmd + 1; *p; p++)
            if (*p == '/') { *p = 0; (void)!mkdir_if(cmd); *p = '/'; }
        (void)!mkdir_if(cmd);
        outp = path;
    }
    if (kvs_ckv_weights_save(outp, sens, N, m->name, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        goto out;
    }
    printf("layer sensitivity on %s (%d tokens, key noise %.2f x rms), base perplexity %.3f\n", file, n, noise, base);
    for (int l = 0; l < N; l++) printf("  layer %2d  +%.4f\n", l, sens[l]);
    printf("written to %s (use --merge-weights %s)\n", outp, outp);
    rc = 0;
out:
    free(sens);
    free(ids);
    kvs_model_delete(m);
    return rc;
}
