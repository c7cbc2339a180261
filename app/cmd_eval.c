/* `kvscope eval`: methods x target compression ratios on one text, side by side with `full`:
 * achieved CR from bytes held, teacher-forced perplexity, mean KL and top-1 agreement against the
 * full run, passkey retrieval at several lengths, decode tokens/s; a table or --json. `--similarity`
 * prints the layer-similarity evidence. `kvscope calibrate` measures per-layer key sensitivities
 * for merge weights. */
#include "commands.h"
#include "commonkv.h"
#include "metrics.h"
#include "options.h"
#include "trace.h"

#include <errno.h>
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
          "                    [--group G] [--rank R] [--rank-ratio X] [--rank-by-similarity] [--merge-share X] [--no-whiten]\n"
          "                    [--sim adjacent|first-last] [--merge-weights FILE] [--bits B] [--sinks N] [--recent N]\n"
          "                    [--cache-dir DIR | --no-cache] [-t THREADS] [--similarity] [--json] [--svg FILE]\n"
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
        if (!kvs_opt_float(opt, t, lo, hi, &out[n])) return -1;
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
    if (!isfinite(r->ppl) || !isfinite(r->kl) || !isfinite(r->top1)) {
        /* NaN or infinite logits (a factorization gone wrong, a corrupt model): a failure, not a number */
        snprintf(r->note, sizeof r->note, "the logits are not finite (perplexity %g, KL %g)", r->ppl, r->kl);
        r->failed = true;
        goto done;
    }
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
        /* strings escaped, non-finite numbers as null: the output must always parse */
        FILE *f = stdout;
        fputs("[", f);
        for (int i = 0; i < n; i++) {
            const struct row *r = &rows[i];
            fprintf(f, "%s\n {\"method\": ", i ? "," : "");
            kvs_json_string(f, r->method, strnlen(r->method, sizeof r->method));
            fputs(", \"target_cr\": ", f);
            if (r->target >= 0) kvs_json_number(f, "%.3f", r->target);
            else fputs("null", f);
            if (r->failed) {
                fputs(", \"error\": ", f);
                kvs_json_string(f, r->note, strnlen(r->note, sizeof r->note));
                fputs("}", f);
                continue;
            }
            fputs(", \"achieved_cr\": ", f);
            kvs_json_number(f, "%.4f", r->achieved);
            fprintf(f, ", \"bytes_full\": %llu, \"bytes_held\": %llu, \"bytes_alloc\": %llu, \"rank_min\": %u, "
                       "\"rank_max\": %u, \"merged_frac\": ",
                    (unsigned long long)r->full, (unsigned long long)r->held, (unsigned long long)r->alloc, r->rank_min,
                    r->rank_max);
            kvs_json_number(f, "%.4f", r->merged);
            fputs(", \"ppl\": ", f);
            kvs_json_number(f, "%.4f", r->ppl);
            fputs(", \"kl\": ", f);
            kvs_json_number(f, "%.5f", r->kl);
            fputs(", \"top1\": ", f);
            kvs_json_number(f, "%.4f", r->top1);
            fputs(", \"passkey_acc\": ", f);
            if (r->pk_n) {
                kvs_json_number(f, "%.3f", r->passkey);
                fprintf(f, ", \"passkey_trials\": %d", r->pk_n);
            } else {
                fputs("null", f);
            }
            fputs(", \"decode_tps\": ", f);
            kvs_json_number(f, "%.2f", r->tps);
            fprintf(f, ", \"n_tokens\": %d, \"note\": ", n_tokens);
            kvs_json_string(f, r->note, strnlen(r->note, sizeof r->note));
            fputs("}", f);
        }
        fputs("\n]\n", f);
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

int kvs_cmd_eval(int argc, char **argv)
{
    const char *model_path = NULL, *methods = "full,commonkv,lowrank,minicache", *file = KVS_DEFAULT_TEXT;
    const char *crs = "0.3,0.5,0.7", *pks = "512,1024";
    long ctx = 1024, n_decode = 16, threads = 0, trials = 2, lv;
    double dv;
    bool json = false, sim = false, quiet = false;
    const char *svg = NULL;
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
    if (!kvs_opt_method_list("--methods", methods)) return 2;
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
        if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
            kvs_die_msg("eval: cannot write the results to stdout: %s", strerror(errno));
            rc = 1;
        }
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
    if (svg && !write_svg(svg, rows, nr, n, m->name)) rc = 1;
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
    long ctx = 256;
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
        kvs_ckv_sensitivity(m, ids, n, (float)noise, sens, &base, progress_cb, &quiet, err, sizeof err) != KVS_OK) {
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
