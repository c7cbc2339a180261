/* `kvscope eval`: methods x target compression ratios on several texts, side by side with `full`:
 * each text's prefix is prefilled and compressed once, then the next tokens are scored
 * teacher-forced (KL, top-1, perplexity of both runs) with the CR those positions saw; passkey and
 * multi-key retrieval at several lengths and depths; decode tokens/s; a table or --json.
 * `--similarity` prints the layer-similarity evidence. `kvscope calibrate` measures per-layer key
 * sensitivities for merge weights. */
#include "commands.h"
#include "commonkv.h"
#include "metrics.h"
#include "options.h"
#include "trace.h"

#include <errno.h>
#include <glob.h>
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
          "                    [-f FILE]... [--prefix N] [--score N] [--score-chunk N] [--ctx N] [--decode N]\n"
          "                    [--passkey 2048,4096,8192|none] [--depths N] [--multikey N]\n"
          "                    [--group G] [--rank R] [--rank-ratio X] [--rank-by-similarity] [--merge-share X] [--no-whiten]\n"
          "                    [--merge-floor X] [--profile tuned|paper]\n"
          "                    [--sim adjacent|first-last] [--merge-weights FILE] [--bits B] [--sinks N] [--recent N]\n"
          "                    [--cache-dir DIR | --no-cache] [--ckv-keys auto|bf16|int8|fp32] [-t THREADS]\n"
          "                    [--similarity] [--json] [--svg FILE]\n"
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

#define MAX_TEXTS 8

/* One evaluation text: its tokens, how many are prefilled (then compressed once) and how many
 * after them are scored teacher-forced, and the full run's logits on those. */
struct text {
    char path[512], label[32];
    int32_t *ids;     /* (n) tokens, BOS first when the model adds one */
    int n, prefix, scored;
    float *ref;       /* (scored, n_vocab) logits of the full run on the scored positions */
};

struct row {
    char method[64];
    float target;
    int text;                  /* index into the texts */
    float achieved;            /* CR of the cache after the last scored token */
    float cr_seen;             /* CR of the cache the scored positions attended over, averaged */
    double ppl, ppl_full, kl, top1, tps;
    uint64_t held, full, alloc;
    uint32_t rank_min, rank_max;
    float merged;
    char note[600];
    char plan[300];            /* commonkv/lowrank: the plan and why (candidates and their KL) */
    bool failed;
};

/* Retrieval of one method at one target: per context length, single key at several depths and
 * the multi-key task. */
struct pkrow {
    char method[64];
    float target;
    int ok[MAX_LIST], n[MAX_LIST];
    int mk_ok[MAX_LIST], mk_n[MAX_LIST];
    char note[300];
};

struct evalopt {
    struct kvs_method_config base;  /* knobs applied to every method */
    int n_threads, n_decode, depths, multikey, chunk;
    int n_pk;
    double pk[MAX_LIST];
};

#define MK_KEYS 4 /* needles in the multi-key prompt */

/* The configuration of method SPEC at target CR with the shared knobs of O. */
/* A --methods entry may name its plan profile: "commonkv:paper" or "commonkv:tuned". Copies the
 * method name into NAME and returns the profile (PROFILE when none is named), or -1 for an unknown
 * one. */
static int entry_profile(const char *spec, char *name, size_t cap, uint32_t profile)
{
    const char *colon = strchr(spec, ':');
    snprintf(name, cap, "%.*s", colon ? (int)(colon - spec) : (int)strlen(spec), spec);
    if (!colon) return (int)profile;
    if (!strcmp(colon + 1, "paper")) return KVS_PROFILE_PAPER;
    if (!strcmp(colon + 1, "tuned")) return KVS_PROFILE_TUNED;
    return -1;
}

static enum kvs_status method_config(const struct evalopt *o, const char *spec, float cr,
                                     struct kvs_method_config *mc, char *err, size_t errlen)
{
    *mc = o->base;
    char name[64];
    int prof = entry_profile(spec, name, sizeof name, o->base.profile);
    if (prof < 0) {
        kvs_seterr(err, errlen, "method '%s': profile must be tuned or paper", spec);
        return KVS_ERR_ARG;
    }
    if (kvs_method_parse(mc, name, err, errlen) != KVS_OK) return KVS_ERR_ARG;
    mc->profile = (uint32_t)prof;
    const struct kvs_method_config *b = &o->base;
    mc->group_size = b->group_size;
    mc->rank = b->rank;
    mc->rank_ratio = b->rank_ratio;
    mc->rank_by_similarity = b->rank_by_similarity;
    mc->merge_share = b->merge_share;
    mc->merge_floor = b->merge_floor;
    mc->ckv_keys = b->ckv_keys;
    mc->profile = (uint32_t)prof;
    mc->whiten = b->whiten;
    mc->sim_mode = b->sim_mode;
    mc->sinks = b->sinks;
    mc->recent = b->recent;
    mc->quant_bits = b->quant_bits;
    mc->merge_weights = b->merge_weights;
    memcpy(mc->merge_weights_file, b->merge_weights_file, sizeof mc->merge_weights_file);
    memcpy(mc->cache_dir, b->cache_dir, sizeof mc->cache_dir);
    mc->target_cr = mc->methods == KVS_M_FULL ? -1.0f : cr;
    return KVS_OK;
}

/* A press and a context; N_BATCH is the prefill chunk, so a prefix of N_BATCH tokens is run in one
 * chunk and compressed once after it (the press's end_step). */
static enum kvs_status make_ctx(const struct kvs_model *m, const struct kvs_method_config *mc, int n_ctx,
                                int n_batch, int n_threads, bool *quiet, struct kvs_press **press,
                                struct kvs_ctx **cx, char *err, size_t errlen)
{
    *press = NULL;
    *cx = NULL;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = n_ctx;
    cp.n_batch = KVS_MAX(1, n_batch);
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

static double rec_cr(const struct kvs_rec_step *rec)
{
    return rec->bytes_full ? 1.0 - (double)rec->bytes_held / (double)rec->bytes_full : 0.0;
}

/* One method on one text: prefill the prefix in one chunk (the press compresses once after it),
 * then score TX->scored tokens teacher-forced in chunks of o->chunk; each chunk's queries attend
 * over the compressed cache as the previous chunk left it, whose CR is averaged into cr_seen.
 * REF_OUT (the full run): receives the logits instead of comparing with TX->ref. */
static void score_text(const struct kvs_model *m, const struct evalopt *o, const struct kvs_method_config *mc,
                       const struct text *tx, float *logits, bool ref_out, bool decode, struct row *r, bool *quiet)
{
    char err[512];
    struct kvs_press *press;
    struct kvs_ctx *cx;
    const int P = tx->prefix, N = tx->scored, V = (int)m->hp.n_vocab;
    if (make_ctx(m, mc, P + N + o->n_decode + 4, P, o->n_threads, quiet, &press, &cx, err, sizeof err) != KVS_OK) {
        snprintf(r->note, sizeof r->note, "%s", err);
        r->failed = true;
        return;
    }
    struct kvs_rec_step rec;
    double seen = 0;
    if (kvs_ctx_eval(cx, tx->ids, P, NULL) != KVS_OK) goto ctx_fail;
    for (int i = 0; i < N; i += o->chunk) {
        int T = KVS_MIN(o->chunk, N - i);
        memset(&rec, 0, sizeof rec);
        press->ops->fill_record(press, &rec);
        seen += rec_cr(&rec) * T;
        if (kvs_ctx_eval(cx, tx->ids + P + i, T, logits + (size_t)i * V) != KVS_OK) goto ctx_fail;
    }
    r->cr_seen = (float)(seen / N);
    struct kvs_quality_acc qa = {0};
    for (int i = 0; i < N; i++)
        kvs_quality_add(&qa, logits + (size_t)i * V, ref_out ? NULL : tx->ref + (size_t)i * V, V, tx->ids[P + i + 1]);
    r->ppl = kvs_quality_ppl(&qa);
    r->ppl_full = ref_out ? r->ppl : kvs_quality_ppl_ref(&qa);
    r->kl = ref_out ? 0 : kvs_quality_kl(&qa);
    r->top1 = ref_out ? 1 : kvs_quality_top1(&qa);
    memset(&rec, 0, sizeof rec);
    press->ops->fill_record(press, &rec);
    r->held = rec.bytes_held;
    r->full = rec.bytes_full;
    r->alloc = rec.bytes_alloc;
    r->achieved = (float)rec_cr(&rec);
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
    const struct kvs_ckv_plan *pl = kvs_press_commonkv_plan(press);
    if (pl) {
        char fl[24] = "none";
        if (pl->floor > -1.0f) snprintf(fl, sizeof fl, "%.2f", (double)pl->floor);
        snprintf(r->plan, sizeof r->plan, "rank %u-%u, merge share %.2f, floor %s; %s", pl->rank[0],
                 pl->rank[rec.n_groups ? rec.n_groups - 1 : 0], pl->merge ? (double)pl->merge_frac : 0.0, fl, pl->why);
    }
    r->tps = NAN;
    if (decode && o->n_decode > 0) {
        /* one untimed token first: thread wake-up and first-touch costs are not decode speed */
        char gen[512];
        double secs = 0;
        if (greedy(cx, m, 1, gen, sizeof gen, NULL) != 0 || greedy(cx, m, o->n_decode, gen, sizeof gen, &secs) != 0)
            goto ctx_fail;
        r->tps = secs > 0 ? o->n_decode / secs : NAN;
    }
    kvs_ctx_delete(cx);
    kvs_press_delete(press);
    return;
ctx_fail:
    snprintf(r->note, sizeof r->note, "%s", kvs_ctx_error(cx));
    r->failed = true;
    kvs_ctx_delete(cx);
    kvs_press_delete(press);
}

/* Tokens of TEXT (BOS first when the model wants one); malloc'd, caller frees. */
static int32_t *encode(const struct kvs_model *m, const char *text, bool bos_first, int *n_out)
{
    int64_t cap = (int64_t)strlen(text) + 8;
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!ids) return NULL;
    int off = 0;
    int32_t bos = kvs_tokenizer_bos(m->tok);
    if (bos_first && bos >= 0 && kvs_tokenizer_add_bos(m->tok)) ids[off++] = bos;
    int64_t n = kvs_tokenizer_encode(m->tok, text, strlen(text), false, ids + off, cap - off);
    if (n <= 0) {
        free(ids);
        return NULL;
    }
    *n_out = (int)n + off;
    return ids;
}

/* One retrieval prompt: everything before the question is prefilled in one chunk and compressed
 * once; the question and the answer then run against the compressed cache, so the answer never
 * comes from an uncompressed pass. Returns 1 (exact key), 0 (wrong) or -1 (could not run). */
static int passkey_one(const struct kvs_model *m, const struct evalopt *o, const struct kvs_method_config *mc,
                       char *prompt, uint32_t key, bool *quiet, char *err, size_t errlen)
{
    char *q = strrchr(prompt, '\n');
    if (!q) return -1;
    char *question = strdup(q);
    *q = 0;
    int nc = 0, nq = 0, rc = -1;
    int32_t *ctx_ids = encode(m, prompt, true, &nc), *q_ids = question ? encode(m, question, false, &nq) : NULL;
    struct kvs_press *press = NULL;
    struct kvs_ctx *cx = NULL;
    char gen[256];
    if (ctx_ids && q_ids &&
        make_ctx(m, mc, nc + nq + 16, nc, o->n_threads, quiet, &press, &cx, err, errlen) == KVS_OK) {
        if (kvs_ctx_eval(cx, ctx_ids, nc, NULL) == KVS_OK && kvs_ctx_eval(cx, q_ids, nq, NULL) == KVS_OK &&
            greedy(cx, m, 8, gen, sizeof gen, NULL) == 0)
            rc = kvs_passkey_match(gen, key);
        else
            snprintf(err, errlen, "%s", kvs_ctx_error(cx));
    }
    kvs_ctx_delete(cx);
    kvs_press_delete(press);
    free(ctx_ids);
    free(q_ids);
    free(question);
    return rc;
}

static void passkey_row(const struct kvs_model *m, const struct evalopt *o, const struct kvs_method_config *mc,
                        struct pkrow *r, bool *quiet)
{
    char err[512] = "";
    for (int li = 0; li < o->n_pk; li++) {
        int len = (int)o->pk[li];
        for (int t = 0; t < o->depths; t++) {
            uint32_t key = 10000u + (uint32_t)((len * 7919u + (uint32_t)t * 104729u) % 90000u);
            float depth = o->depths > 1 ? 0.1f + 0.8f * t / (o->depths - 1) : 0.5f;
            char *prompt = kvs_passkey_prompt(m->tok, len, key, depth);
            int ok = prompt ? passkey_one(m, o, mc, prompt, key, quiet, err, sizeof err) : -1;
            free(prompt);
            if (ok < 0) continue;
            r->n[li]++;
            r->ok[li] += ok;
        }
        for (int t = 0; t < o->multikey; t++) {
            uint32_t keys[MK_KEYS];
            for (int k = 0; k < MK_KEYS; k++)
                keys[k] = 10000u + (uint32_t)((len * 7907u + (uint32_t)(t * MK_KEYS + k) * 104723u) % 90000u);
            int ask = (t * 3 + 1 + li) % MK_KEYS;
            char *prompt = kvs_passkey_multi_prompt(m->tok, len, keys, MK_KEYS, ask);
            int ok = prompt ? passkey_one(m, o, mc, prompt, keys[ask], quiet, err, sizeof err) : -1;
            free(prompt);
            if (ok < 0) continue;
            r->mk_n[li]++;
            r->mk_ok[li] += ok;
        }
    }
    if (err[0]) snprintf(r->note, sizeof r->note, "%.*s", (int)sizeof r->note - 1, err);
}

static void fmt_bytes(char *b, size_t cap, uint64_t v)
{
    if (v >= (1u << 20)) snprintf(b, cap, "%.2fM", v / 1048576.0);
    else snprintf(b, cap, "%.1fK", v / 1024.0);
}

static void jstr(const char *s) { kvs_json_string(stdout, s, strlen(s)); }

/* JSON number or null for a metric without data */
static void jnum(const char *key, double v, int prec)
{
    if (isfinite(v)) printf("\"%s\": %.*f, ", key, prec, v);
    else printf("\"%s\": null, ", key);
}

static void print_json(const struct kvs_model *m, const struct text *tx, int n_tx, const struct row *rows, int n,
                       const struct pkrow *pk, int n_pkr, const struct evalopt *o)
{
    printf("{\"model\": ");
    jstr(m->name);
    printf(", \"score_chunk\": %d, \"texts\": [", o->chunk);
    for (int i = 0; i < n_tx; i++) {
        printf("%s{\"label\": ", i ? ", " : "");
        jstr(tx[i].label);
        printf(", \"path\": ");
        jstr(tx[i].path);
        printf(", \"tokens\": %d, \"prefix\": %d, \"scored\": %d}", tx[i].n, tx[i].prefix, tx[i].scored);
    }
    printf("],\n\"rows\": [");
    for (int i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        printf("%s\n {\"method\": ", i ? "," : "");
        jstr(r->method);
        printf(", \"text\": ");
        jstr(tx[r->text].label);
        printf(", ");
        if (r->target >= 0) printf("\"target_cr\": %.3f, ", r->target);
        else printf("\"target_cr\": null, ");
        if (r->failed) {
            printf("\"error\": ");
            jstr(r->note);
            printf("}");
            continue;
        }
        printf("\"cr_seen\": %.4f, \"achieved_cr\": %.4f, \"bytes_full\": %llu, \"bytes_held\": %llu, "
               "\"bytes_alloc\": %llu, \"rank_min\": %u, \"rank_max\": %u, \"merged_frac\": %.4f, ",
               r->cr_seen, r->achieved, (unsigned long long)r->full, (unsigned long long)r->held,
               (unsigned long long)r->alloc, r->rank_min, r->rank_max, r->merged);
        jnum("kl", r->kl, 5);
        jnum("top1", r->top1, 4);
        jnum("ppl", r->ppl, 4);
        jnum("ppl_full", r->ppl_full, 4);
        jnum("decode_tps", r->tps, 2);
        printf("\"n_scored\": %d, \"note\": ", tx[r->text].scored);
        jstr(r->note);
        printf(", \"plan\": ");
        jstr(r->plan);
        printf("}");
    }
    printf("\n],\n\"passkey\": [");
    for (int i = 0; i < n_pkr; i++) {
        const struct pkrow *r = &pk[i];
        printf("%s\n {\"method\": ", i ? "," : "");
        jstr(r->method);
        if (r->target >= 0) printf(", \"target_cr\": %.3f, ", r->target);
        else printf(", \"target_cr\": null, ");
        printf("\"lengths\": [");
        for (int li = 0; li < o->n_pk; li++) {
            printf("%s{\"tokens\": %d, \"single_ok\": %d, \"single_n\": %d, \"multi_ok\": %d, \"multi_n\": %d}",
                   li ? ", " : "", (int)o->pk[li], r->ok[li], r->n[li], r->mk_ok[li], r->mk_n[li]);
        }
        printf("], \"note\": ");
        jstr(r->note);
        printf("}");
    }
    printf("\n]}\n");
}

static void print_table(const struct text *tx, int n_tx, const struct row *rows, int n, const struct pkrow *pk,
                        int n_pkr, const struct evalopt *o)
{
    printf("%-22s %6s %-8s %7s %7s %9s %-14s %8s %6s %9s %9s %8s\n", "method", "target", "text", "CR seen", "CR end",
           "held", "rank / merged", "KL", "top-1", "ppl", "ppl full", "dec t/s");
    for (int i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        char tgt[16], held[16], rk[32], tps[16];
        if (r->target >= 0) snprintf(tgt, sizeof tgt, "%.2f", r->target);
        else snprintf(tgt, sizeof tgt, "-");
        if (r->failed) {
            printf("%-22s %6s %-8s  failed: %s\n", r->method, tgt, tx[r->text].label, r->note);
            continue;
        }
        fmt_bytes(held, sizeof held, r->held);
        if (r->rank_max == 0) snprintf(rk, sizeof rk, "-");
        else if (r->rank_min == r->rank_max) snprintf(rk, sizeof rk, "r%u / %.0f%%", r->rank_max, r->merged * 100);
        else snprintf(rk, sizeof rk, "r%u-%u / %.0f%%", r->rank_min, r->rank_max, r->merged * 100);
        if (isfinite(r->tps)) snprintf(tps, sizeof tps, "%.1f", r->tps);
        else snprintf(tps, sizeof tps, "n/a");
        printf("%-22s %6s %-8s %7.3f %7.3f %9s %-14s %8.4f %6.3f %9.3f %9.3f %8s\n", r->method, tgt, tx[r->text].label,
               r->cr_seen, r->achieved, held, rk, r->kl, r->top1, r->ppl, r->ppl_full, tps);
        /* after the last text of a method and target: the mean over texts */
        bool last = i + 1 == n || strcmp(rows[i + 1].method, r->method) || rows[i + 1].target != r->target;
        if (last && n_tx > 1) {
            double kl = 0, seen = 0, t1 = 0;
            int k = 0;
            for (int j = i; j >= 0 && !strcmp(rows[j].method, r->method) && rows[j].target == r->target; j--)
                if (!rows[j].failed) { kl += rows[j].kl; seen += rows[j].cr_seen; t1 += rows[j].top1; k++; }
            if (k) printf("%-22s %6s %-8s %7.3f %7s %9s %-14s %8.4f %6.3f\n", r->method, tgt, "mean", seen / k, "", "", "",
                          kl / k, t1 / k);
        }
    }
    for (int i = 0; i < n; i++)
        if (!rows[i].failed && rows[i].note[0] && (i == 0 || strcmp(rows[i].note, rows[i - 1].note)))
            printf("note: %s @ %.2f: %s\n", rows[i].method, rows[i].target, rows[i].note);
    for (int i = 0; i < n; i++)
        if (!rows[i].failed && rows[i].plan[0] && (i == 0 || strcmp(rows[i].plan, rows[i - 1].plan)))
            printf("plan: %s @ %.2f (%s): %s\n", rows[i].method, rows[i].target, tx[rows[i].text].label, rows[i].plan);
    if (!o->n_pk || !n_pkr) return;
    if (o->depths > 1)
        printf("\nretrieval (exact match): single key at %d depths (0.1-0.9)", o->depths);
    else
        printf("\nretrieval (exact match): single key at %d depth%s", o->depths, o->depths ? " (0.5)" : "s");
    printf(", multi-key: %d keys, asked for one (%d per length)\n", MK_KEYS, o->multikey);
    printf("%-22s %6s", "method", "target");
    for (int li = 0; li < o->n_pk; li++) printf("   %5d: single multi", (int)o->pk[li]);
    printf("\n");
    for (int i = 0; i < n_pkr; i++) {
        const struct pkrow *r = &pk[i];
        char tgt[16];
        if (r->target >= 0) snprintf(tgt, sizeof tgt, "%.2f", r->target);
        else snprintf(tgt, sizeof tgt, "-");
        printf("%-22s %6s", r->method, tgt);
        for (int li = 0; li < o->n_pk; li++) {
            char a[16], b[16];
            if (r->n[li]) snprintf(a, sizeof a, "%d/%d", r->ok[li], r->n[li]);
            else snprintf(a, sizeof a, "n/a");
            if (r->mk_n[li]) snprintf(b, sizeof b, "%d/%d", r->mk_ok[li], r->mk_n[li]);
            else snprintf(b, sizeof b, "n/a");
            printf("   %5s  %6s %5s", "", a, b);
        }
        printf("\n");
        if (r->note[0]) printf("  note: %s\n", r->note);
    }
}

/* ---- --svg: the quality/memory curves as a chart for slides and papers ---- */

/* XML-escapes S into B (method names come from the command line). */
static const char *xml_esc(char *b, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        const char *r = *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;" : *s == '"' ? "&quot;" : NULL;
        if (r) { memcpy(b + o, r, strlen(r)); o += strlen(r); }
        else b[o++] = *s;
    }
    b[o] = 0;
    return b;
}

/* Colours that stay apart for colour-blind readers (Okabe-Ito). */
static const char *svg_colour(int i)
{
    static const char *c[] = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442"};
    return c[i % 8];
}

/* Writes two charts to PATH: KL against achieved CR, one curve per method (points sorted by
 * achieved CR, the full cache at CR 0 and KL 0), and the KV bytes each method holds against the
 * context, drawn through the origin and the bytes held at the N_TOKENS measured (the pools grow
 * in proportion to the tokens held). Every point carries its numbers as data-* attributes.
 * Returns false with a message on stderr when the file cannot be written. */
static bool write_svg(const char *path, const struct row *rows, int n, int n_tokens, const char *model)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        kvs_die_msg("eval: --svg %s: %s", path, strerror(errno));
        return false;
    }
    const double W = 960, H = 420, pw = 380, ph = 300, ox1 = 80, ox2 = 560, oy = 60;
    /* methods in order of first appearance */
    const char *names[MAX_LIST * (MAX_LIST + 1)];
    int nm = 0;
    double kl_max = 0, held_max = 0;
    for (int i = 0; i < n; i++) {
        if (rows[i].failed) continue;
        int k = 0;
        while (k < nm && strcmp(names[k], rows[i].method)) k++;
        if (k == nm) names[nm++] = rows[i].method;
        if (isfinite(rows[i].kl) && rows[i].kl > kl_max) kl_max = rows[i].kl;
        if ((double)rows[i].held > held_max) held_max = (double)rows[i].held;
        if ((double)rows[i].full > held_max) held_max = (double)rows[i].full;
    }
    if (kl_max <= 0) kl_max = 1;
    if (held_max <= 0) held_max = 1;
    char esc[256];
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n"
               "<title>kvscope eval: %s, %d tokens</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H, W, H, xml_esc(esc, sizeof esc, model), n_tokens);
    /* axes and ticks of both charts */
    for (int c = 0; c < 2; c++) {
        double ox = c ? ox2 : ox1;
        fprintf(f, "<g class=\"axes\" id=\"%s-axes\" stroke=\"#444\" fill=\"none\">"
                   "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/></g>\n",
                c ? "memory" : "quality", ox, oy + ph, ox + pw, oy + ph, ox, oy, ox, oy + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"14\">%s</text>\n", ox + pw / 2, oy - 24,
                c ? "KV cache bytes held vs context" : "KL vs full against achieved CR");
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", ox + pw / 2, oy + ph + 36,
                c ? "context (tokens)" : "achieved CR = 1 - held / full fp16 bytes");
        for (int t = 0; t <= 4; t++) {
            double fx = ox + pw * t / 4, fy = oy + ph - ph * t / 4;
            if (c) {
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", fx, oy + ph + 16, n_tokens * t / 4);
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f MiB</text>\n", ox - 4, fy + 4,
                        held_max * t / 4 / 1048576.0);
            } else {
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.2f</text>\n", fx, oy + ph + 16, t / 4.0);
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", ox - 4, fy + 4, kl_max * t / 4);
            }
        }
    }
    /* one curve per method on each chart */
    for (int k = 0; k < nm; k++) {
        int idx[MAX_LIST * (MAX_LIST + 1)], m = 0;
        for (int i = 0; i < n; i++)
            if (!rows[i].failed && !strcmp(rows[i].method, names[k])) idx[m++] = i;
        for (int a = 1; a < m; a++) /* by achieved CR */
            for (int b = a; b > 0 && rows[idx[b]].achieved < rows[idx[b - 1]].achieved; b--) {
                int t = idx[b]; idx[b] = idx[b - 1]; idx[b - 1] = t;
            }
        const char *col = svg_colour(k);
        xml_esc(esc, sizeof esc, names[k]);
        fprintf(f, "<g class=\"curve\" data-chart=\"quality\" data-method=\"%s\" stroke=\"%s\" fill=\"%s\">\n<polyline fill=\"none\" points=\"",
                esc, col, col);
        for (int a = 0; a < m; a++) {
            const struct row *r = &rows[idx[a]];
            fprintf(f, "%s%.1f,%.1f", a ? " " : "", ox1 + pw * r->achieved, oy + ph - ph * (isfinite(r->kl) ? r->kl : 0) / kl_max);
        }
        fprintf(f, "\"/>\n");
        for (int a = 0; a < m; a++) {
            const struct row *r = &rows[idx[a]];
            fprintf(f, "<circle r=\"4\" cx=\"%.1f\" cy=\"%.1f\" data-target-cr=\"%.3f\" data-achieved-cr=\"%.4f\" data-kl=\"%.5f\" "
                       "data-ppl=\"%.4f\" data-top1=\"%.4f\"/>\n",
                    ox1 + pw * r->achieved, oy + ph - ph * (isfinite(r->kl) ? r->kl : 0) / kl_max, r->target, r->achieved,
                    r->kl, r->ppl, r->top1);
        }
        fprintf(f, "</g>\n");
        /* memory: the row with the highest achieved CR of this method, through the origin */
        const struct row *r = &rows[idx[m - 1]];
        fprintf(f, "<g class=\"curve\" data-chart=\"memory\" data-method=\"%s\" stroke=\"%s\" fill=\"%s\">"
                   "<polyline fill=\"none\" points=\"%.1f,%.1f %.1f,%.1f\"/>"
                   "<circle r=\"4\" cx=\"%.1f\" cy=\"%.1f\" data-tokens=\"%d\" data-bytes-held=\"%llu\" data-bytes-full=\"%llu\" "
                   "data-achieved-cr=\"%.4f\"/></g>\n",
                esc, col, col, ox2, oy + ph, ox2 + pw, oy + ph - ph * (double)r->held / held_max, ox2 + pw,
                oy + ph - ph * (double)r->held / held_max, n_tokens, (unsigned long long)r->held,
                (unsigned long long)r->full, r->achieved);
        /* legend */
        fprintf(f, "<g class=\"legend\"><rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\">%s</text></g>\n",
                ox1 + 130.0 * k, H - 30, col, ox1 + 130.0 * k + 16, H - 20, esc);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#444\">memory: bytes held at %d tokens, drawn through 0 (pools grow "
               "with the tokens held)</text>\n</svg>\n",
            ox2, H - 4, n_tokens);
    bool ok = !ferror(f);
    if (fclose(f) != 0) ok = false;
    if (!ok) kvs_die_msg("eval: --svg %s: write failed", path);
    return ok;
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
            printf("%s{\"layer\": %d, \"hidden\": ", l ? ", " : "", l);
            kvs_json_number(stdout, "%.4f", H[l * N + l + 1]);
            printf(", \"keys\": ");
            kvs_json_number(stdout, "%.4f", K[l * N + l + 1]);
            printf(", \"latent\": ");
            kvs_json_number(stdout, "%.4f", lv);
            printf("}");
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

/* The default texts: a licence, a C header (technical), a Python module (code) and the prose
 * history that opens Python's licence file; all ship with Debian. Missing ones are skipped. */
static int default_texts(struct text *tx)
{
    static const char *const spec[][2] = {
        {"licence", KVS_DEFAULT_TEXT},
        {"header", "/usr/include/stdlib.h"},
        {"code", "/usr/lib/python3.*/textwrap.py"},
        {"prose", "/usr/lib/python3.*/LICENSE.txt"},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        glob_t g;
        if (glob(spec[i][1], 0, NULL, &g) != 0 || g.gl_pathc == 0) {
            fprintf(stderr, "kvscope: eval: no %s text at %s, skipped\n", spec[i][0], spec[i][1]);
            continue;
        }
        snprintf(tx[n].path, sizeof tx[n].path, "%s", g.gl_pathv[g.gl_pathc - 1]);
        snprintf(tx[n].label, sizeof tx[n].label, "%s", spec[i][0]);
        globfree(&g);
        n++;
    }
    return n;
}

static void add_text(struct text *tx, int *n, const char *path)
{
    if (*n == MAX_TEXTS) return;
    snprintf(tx[*n].path, sizeof tx[*n].path, "%s", path);
    const char *b = strrchr(path, '/');
    snprintf(tx[*n].label, sizeof tx[*n].label, "%.8s", b ? b + 1 : path);
    (*n)++;
}

int kvs_cmd_eval(int argc, char **argv)
{
    const char *model_path = NULL, *methods = "full,commonkv,lowrank,minicache";
    const char *crs = "0.3,0.5,0.7", *pks = "2048";
    long ctx = 0, prefix = 1024, n_score = 128, chunk = 32, n_decode = 8, threads = 0, depths = 5, multikey = 1, lv;
    bool have_prefix = false;
    double dv;
    bool json = false, sim = false, quiet = false;
    const char *svg = NULL;
    struct evalopt o;
    memset(&o, 0, sizeof o);
    struct text tx[MAX_TEXTS];
    memset(tx, 0, sizeof tx);
    int n_tx = 0;
    char err[512];
    kvs_method_parse(&o.base, "commonkv", err, sizeof err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) { model_path = v; i++; }
        else if (!strcmp(a, "--methods") && v) { methods = v; i++; }
        else if (!strcmp(a, "--cr") && v) { crs = v; i++; }
        else if (!strcmp(a, "-f") && v) {
            if (n_tx == MAX_TEXTS) { kvs_die_msg("option -f: at most %d texts", MAX_TEXTS); return 2; }
            add_text(tx, &n_tx, v);
            i++;
        }
        else if (!strcmp(a, "--passkey") && v) { pks = v; i++; }
        else if (!strcmp(a, "--ctx")) { if (!kvs_opt_int(a, v, 16, 1 << 20, &ctx)) return 2; i++; }
        else if (!strcmp(a, "--prefix")) { if (!kvs_opt_int(a, v, 1, 1 << 20, &prefix)) return 2; have_prefix = true; i++; }
        else if (!strcmp(a, "--score")) { if (!kvs_opt_int(a, v, 1, 1 << 16, &n_score)) return 2; i++; }
        else if (!strcmp(a, "--score-chunk")) { if (!kvs_opt_int(a, v, 1, 4096, &chunk)) return 2; i++; }
        else if (!strcmp(a, "--decode")) { if (!kvs_opt_int(a, v, 0, 100000, &n_decode)) return 2; i++; }
        else if (!strcmp(a, "--depths") || !strcmp(a, "--passkey-trials")) { if (!kvs_opt_int(a, v, 0, 100, &depths)) return 2; i++; }
        else if (!strcmp(a, "--multikey")) { if (!kvs_opt_int(a, v, 0, 100, &multikey)) return 2; i++; }
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
        else if (!strcmp(a, "--ckv-keys")) { if (!kvs_opt_ckv_keys(a, v, &o.base.ckv_keys)) return 2; i++; }
        else if (!strcmp(a, "--profile")) { if (!kvs_opt_profile(a, v, &o.base.profile)) return 2; i++; }
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
        else if (!strcmp(a, "--svg") && v) { svg = v; i++; }
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = true;
        else { kvs_die_msg("eval: unknown option or missing value '%s'", a); return 2; }
    }
    {
        /* the names are checked without their :profile suffixes, the suffixes here */
        char plain[256] = "", one[64];
        const char *p = methods;
        size_t len = 0;
        while (p && *p && len < sizeof plain - 1) {
            const char *comma = strchr(p, ',');
            char entry[128];
            snprintf(entry, sizeof entry, "%.*s", comma ? (int)(comma - p) : (int)strlen(p), p);
            if (entry_profile(entry, one, sizeof one, 0) < 0) {
                kvs_die_msg("option --methods: '%s': the profile after ':' must be tuned or paper", entry);
                return 2;
            }
            int w = snprintf(plain + len, sizeof plain - len, "%s%s", len ? "," : "", one);
            if (w > 0) len += (size_t)w;
            p = comma ? comma + 1 : NULL;
        }
        if (!kvs_opt_method_list("--methods", p == methods ? methods : plain)) return 2;
    }
    if (svg) {
        /* fail before minutes of evaluation, not after: the chart's folder must be writable and
         * the name must not be a folder */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", svg);
        char *slash = strrchr(dir, '/');
        if (slash) *(slash == dir ? slash + 1 : slash) = 0;
        else snprintf(dir, sizeof dir, ".");
        struct stat st;
        if (access(dir, W_OK) != 0 || (stat(svg, &st) == 0 && S_ISDIR(st.st_mode))) {
            kvs_die_msg("eval: --svg %s: %s", svg, access(dir, W_OK) != 0 ? strerror(errno) : "is a directory");
            return 2;
        }
        if (sim) { kvs_die_msg("eval: --svg draws the quality rows; it does not apply to --similarity"); return 2; }
    }
    double crv[MAX_LIST];
    int n_cr = parse_list("--cr", crs, 0, 0.999, crv);
    o.n_pk = strcmp(pks, "0") && strcmp(pks, "none") ? parse_list("--passkey", pks, 64, 1 << 20, o.pk) : 0;
    if (n_cr <= 0 || o.n_pk < 0) return 2;
    if (ctx) {
        /* --ctx caps the tokens used per text: prefix + scored + the one token scored last */
        if (n_score > ctx / 2) n_score = ctx / 2;
        if (!have_prefix || prefix > ctx - n_score - 1) prefix = ctx - n_score - 1;
    }
    o.n_threads = (int)threads;
    o.n_decode = (int)n_decode;
    o.depths = (int)depths;
    o.multikey = (int)multikey;
    o.chunk = (int)chunk;
    if (json) quiet = true;
    if (!n_tx) n_tx = default_texts(tx);
    if (!n_tx) {
        kvs_die_msg("eval: no text to score (name one with -f FILE)");
        return 2;
    }
    if (!model_path) model_path = kvs_default_model();
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, model_path, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        return 1;
    }
    int rc = 1, nr = 0, npk = 0;
    float *logits = NULL;
    struct row *rows = NULL;
    struct pkrow *pk = NULL;
    size_t V = m->hp.n_vocab;
    for (int t = 0; t < n_tx; t++) {
        int n_all = 0;
        tx[t].ids = read_tokens(m, tx[t].path, &n_all);
        if (!tx[t].ids) goto out;
        tx[t].n = n_all;
        if (sim) break;
        /* the scored tokens need one more after them; a short text gets a shorter prefix */
        tx[t].scored = (int)KVS_MIN(n_score, (long)(n_all - 1) / 2);
        tx[t].prefix = (int)KVS_MIN(prefix, (long)(n_all - 1 - tx[t].scored));
        if (tx[t].scored < 1 || tx[t].prefix < 1) {
            kvs_die_msg("%s: %d tokens are too few to prefill and score", tx[t].path, n_all);
            goto out;
        }
        tx[t].ref = malloc((size_t)tx[t].scored * V * sizeof(float));
        if (!tx[t].ref) {
            kvs_die_msg("eval: out of memory for %d x %zu logits", tx[t].scored, V);
            goto out;
        }
    }
    if (sim) {
        rc = similarity(m, &o.base, tx[0].ids, (int)KVS_MIN((long)tx[0].n, ctx ? ctx : 1024), o.n_threads, json, &quiet);
        goto out;
    }
    int max_scored = 0;
    for (int t = 0; t < n_tx; t++) max_scored = KVS_MAX(max_scored, tx[t].scored);
    logits = malloc((size_t)max_scored * V * sizeof(float));
    rows = calloc((size_t)MAX_TEXTS * MAX_LIST * (MAX_LIST + 1), sizeof *rows);
    pk = calloc((size_t)MAX_LIST * (MAX_LIST + 1), sizeof *pk);
    if (!logits || !rows || !pk) {
        kvs_die_msg("eval: out of memory for %d x %zu logits", max_scored, V);
        goto out;
    }
    if (!json) {
        printf("kvscope eval: %s (%u layers, D %u, KV %ux%u); per text: prefill a prefix in one pass, compress "
               "once,\nthen score the next tokens teacher-forced in chunks of %d against the full run (KL is the "
               "main metric;\nCR seen = the CR of the cache the scored positions attended over); decode %ld tokens\n",
               m->name, m->hp.n_layer, m->hp.n_embd, m->hp.n_head_kv, m->hp.head_dim, o.chunk, n_decode);
        for (int t = 0; t < n_tx; t++)
            printf("  %-8s %s: %d tokens, prefix %d, scored %d\n", tx[t].label, tx[t].path, tx[t].n, tx[t].prefix,
                   tx[t].scored);
    }
    fflush(stdout);
    struct kvs_method_config mc;
    /* the reference: full, on the same tokens */
    method_config(&o, "full", -1, &mc, err, sizeof err);
    for (int t = 0; t < n_tx; t++) {
        struct row *r = &rows[nr++];
        snprintf(r->method, sizeof r->method, "full");
        r->target = -1;
        r->text = t;
        if (!quiet) fprintf(stderr, "  full on %s ...\n", tx[t].label);
        score_text(m, &o, &mc, &tx[t], tx[t].ref, true, t == 0, r, &quiet);
        if (r->failed) {
            kvs_die_msg("eval: full on %s: %s", tx[t].path, r->note);
            goto out;
        }
    }
    if (o.n_pk) {
        snprintf(pk[npk].method, sizeof pk[npk].method, "full");
        pk[npk].target = -1;
        passkey_row(m, &o, &mc, &pk[npk++], &quiet);
    }
    char mbuf[256];
    snprintf(mbuf, sizeof mbuf, "%s", methods);
    char *ms = NULL;
    for (char *spec = strtok_r(mbuf, ",", &ms); spec; spec = strtok_r(NULL, ",", &ms)) {
        if (!strcmp(spec, "full")) continue;
        for (int c = 0; c < n_cr && npk < MAX_LIST * (MAX_LIST + 1) && nr + n_tx <= MAX_TEXTS * MAX_LIST * (MAX_LIST + 1); c++) {
            if (!quiet) fprintf(stderr, "  %s @ CR %.2f ...\n", spec, crv[c]);
            bool bad = method_config(&o, spec, (float)crv[c], &mc, err, sizeof err) != KVS_OK;
            for (int t = 0; t < n_tx; t++) {
                struct row *r = &rows[nr++];
                snprintf(r->method, sizeof r->method, "%s", spec);
                r->target = (float)crv[c];
                r->text = t;
                if (bad) {
                    snprintf(r->note, sizeof r->note, "%s", err);
                    r->failed = true;
                    continue;
                }
                score_text(m, &o, &mc, &tx[t], logits, false, t == 0, r, &quiet);
            }
            if (!bad && o.n_pk) {
                snprintf(pk[npk].method, sizeof pk[npk].method, "%s", spec);
                pk[npk].target = (float)crv[c];
                passkey_row(m, &o, &mc, &pk[npk++], &quiet);
            }
        }
    }
    if (json) print_json(m, tx, n_tx, rows, nr, pk, npk, &o);
    else print_table(tx, n_tx, rows, nr, pk, npk, &o);
    rc = 0;
    for (int i = 0; i < nr; i++) {
        if (!rows[i].failed) continue;
        /* the exit status says something failed; stderr says what, also when stdout is JSON */
        if (rows[i].target >= 0) kvs_die_msg("eval: %s @ CR %.2f: %s", rows[i].method, rows[i].target, rows[i].note);
        else kvs_die_msg("eval: %s: %s", rows[i].method, rows[i].note);
        rc = 1;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        kvs_die_msg("eval: cannot write the results to stdout: %s", strerror(errno));
        rc = 1;
    }
    if (svg) {
        /* the chart plots each method and target once: the mean over the texts, as the table's
         * "mean" rows (a failed row leaves its method and target out) */
        struct row *mean = calloc((size_t)KVS_MAX(nr, 1), sizeof *mean);
        int nm = 0;
        for (int i = 0; mean && i < nr; i++) {
            int j = 0;
            while (j < nm && !(strcmp(mean[j].method, rows[i].method) == 0 && mean[j].target == rows[i].target)) j++;
            if (j == nm) {
                mean[nm] = rows[i];
                mean[nm].achieved = 0;
                mean[nm].kl = mean[nm].ppl = mean[nm].top1 = 0;
                mean[nm].held = mean[nm].full = 0;
                mean[nm].rank_min = 0; /* counts the texts averaged */
                nm++;
            }
            struct row *a = &mean[j];
            a->failed |= rows[i].failed;
            a->achieved += rows[i].achieved;
            a->kl += rows[i].kl;
            a->ppl += rows[i].ppl;
            a->top1 += rows[i].top1;
            a->held += rows[i].held;
            a->full += rows[i].full;
            a->rank_min++;
        }
        for (int j = 0; j < nm; j++) {
            double k = mean[j].rank_min;
            mean[j].achieved = (float)(mean[j].achieved / k);
            mean[j].kl /= k;
            mean[j].ppl /= k;
            mean[j].top1 /= k;
            mean[j].held = (uint64_t)((double)mean[j].held / k);
            mean[j].full = (uint64_t)((double)mean[j].full / k);
        }
        int n_tok = n_tx ? tx[0].prefix + tx[0].scored : 0;
        if (!mean || !write_svg(svg, mean, nm, n_tok, m->name)) rc = 1;
        free(mean);
    }
out:
    for (int t = 0; t < n_tx; t++) {
        free(tx[t].ids);
        free(tx[t].ref);
    }
    free(logits);
    free(rows);
    free(pk);
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
        else { kvs_die_msg("calibrate: unknown option or missing value '%s'", a); return 2; }
    }
    if (!model_path) model_path = kvs_default_model();
    char err[512];
    /* -o names a file to write, never a device, FIFO or directory (checked before the long work) */
    if (outp && kvs_trace_target_check(outp, true, err, sizeof err) != KVS_OK) {
        kvs_die_msg("option -o: %s", err);
        return 1;
    }
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
