/* `kvscope bench`: prefill and decode tokens/s per method at several context lengths, measured on
 * the default document, on either backend; with a measured bandwidth (and tensor-core rate) each
 * row also gets its decode floor (bench_floor.h), and --svd times every group's SVD on the backend.
 * Baselines (llama.cpp, the full cache, the card's copy bandwidth) are measured by tests/bench.sh
 * and tests/bench_gpu.sh in the same run; this command only measures kvscope. */
#include "backend.h"
#include "bench_floor.h"
#include "commands.h"
#include "infer.h"
#include "options.h"
#include "trace.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void usage(FILE *f)
{
    fputs("usage: kvscope bench [-m MODEL] [--ctx 512,2048] [--methods full,commonkv] [--cr X|none] [-n DECODE_TOKENS]\n"
          "                     [--rank R] [--merge-share X] [--merge-floor X]\n"
          "                     [-t THREADS] [-f FILE] [--precise] [--backend cpu|cuda|auto] [--no-whiten]\n"
          "                     [--ckv-keys auto|bf16|int8|fp32]\n"
          "                     [--bandwidth GB/s [--mac-rate TMAC/s]] [--svd] [--json]\n", f);
}

/* Bytes of weights one decoded token reads on backend BE: every layer matrix and the output head
 * once, as the CUDA backend holds them (2 bytes per element) or as the file packs them (CPU). */
static double weight_bytes_per_token(const struct kvs_model *m, const char *be)
{
    bool dev = !strcmp(be, "cuda");
    double sum = 0;
#define W(w) sum += dev ? (double)(w).rows * (double)(w).cols * 2.0 : (double)(w).rows * (double)(w).row_bytes
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        const struct kvs_layer *L = &m->layers[l];
        W(L->wq); W(L->wk); W(L->wv); W(L->wo); W(L->w_gate); W(L->w_up); W(L->w_down);
    }
    W(m->output);
#undef W
    return sum;
}

/* Multiply-adds the record's latent pools cost to rebuild keys for one decoded token: commonkv's
 * groups of G layers, lowrank's one layer per group; 0 for the methods that cache keys. */
static double rebuild_macs(const struct kvs_model *m, const struct kvs_method_config *mc,
                           const struct kvs_rec_step *rec)
{
    int G = 0;
    if (mc->methods & KVS_M_COMMONKV) G = mc->group_size ? (int)mc->group_size : 4;
    else if (mc->methods & KVS_M_LOWRANK) G = 1;
    if (!G || !rec->n_groups || !rec->group_rank[0]) return 0;
    int n_layer = (int)KVS_MIN(m->hp.n_layer, (uint32_t)KVS_MAX_LAYERS);
    return kvs_bench_rebuild_macs(n_layer, rec->layer_kept, G, rec->group_rank,
                                  (int)(m->hp.n_head_kv * m->hp.head_dim));
}

/* Thin SVD of every group's stacked [W_k; W_v] (2*G*d_kv, D) on backend BE, timed (the
 * factorization CommonKV runs offline, DESIGN.md §3 step 3). Returns 0 or 1 after a message. */
static int bench_svd(const struct kvs_model *m, const char *be, int G, bool json)
{
    char err[512];
    struct kvs_pool *pool = kvs_pool_new(0);
    struct kvs_backend *b = NULL;
    int n_layer = (int)m->hp.n_layer, D = (int)m->hp.n_embd, dkv = (int)(m->hp.n_head_kv * m->hp.head_dim);
    int rows_max = 2 * G * dkv, k = KVS_MIN(rows_max, D), rc = 1;
    float *M = malloc((size_t)rows_max * D * sizeof(float)), *u = malloc((size_t)rows_max * k * sizeof(float));
    float *s = malloc((size_t)k * sizeof(float)), *vt = malloc((size_t)k * D * sizeof(float));
    if (!pool || !M || !u || !s || !vt) { kvs_die_msg("bench --svd: out of memory"); goto out; }
    if (kvs_backend_new(&b, be, pool, err, sizeof err) != KVS_OK) { kvs_die_msg("bench --svd: %s", err); goto out; }
    double secs = 0;
    int groups = 0;
    for (int l0 = 0; l0 < n_layer; l0 += G, groups++) {
        int nl = KVS_MIN(G, n_layer - l0), rows = 2 * nl * dkv;
        for (int l = 0; l < nl; l++)
            for (int r = 0; r < dkv; r++) {
                kvs_weight_row_f32(&m->layers[l0 + l].wk, r, M + ((size_t)l * dkv + r) * D);
                kvs_weight_row_f32(&m->layers[l0 + l].wv, r, M + ((size_t)(nl + l) * dkv + r) * D);
            }
        uint64_t t0 = kvs_now_ns();
        if (kvs_backend_svd(b, M, rows, D, u, s, vt) != KVS_OK) {
            kvs_die_msg("bench --svd: group %d: %s", groups, kvs_backend_error(b));
            goto out;
        }
        secs += (double)(kvs_now_ns() - t0) / 1e9;
    }
    if (json) {
        printf("[{\"svd\": ");
        kvs_json_string(stdout, kvs_backend_name(b), strlen(kvs_backend_name(b)));
        printf(", \"groups\": %d, \"group_size\": %d, \"rows\": %d, \"cols\": %d, \"seconds\": ", groups, G,
               rows_max, D);
        kvs_json_number(stdout, "%.4f", secs);
        printf("}]\n");
    } else
        printf("SVD of %d groups of (%d x %d) on %s: %.3f s\n", groups, rows_max, D, kvs_backend_name(b), secs);
    rc = 0;
out:
    kvs_backend_delete(b);
    kvs_pool_delete(pool);
    free(M); free(u); free(s); free(vt);
    return rc;
}

int kvs_cmd_bench(int argc, char **argv)
{
    const char *model_path = NULL, *ctxs = "512,2048", *methods = "full", *file = KVS_DEFAULT_TEXT, *backend = "cpu";
    long n_decode = 64, threads = 0;
    double cr = -1, bw_gbs = 0, mac_tera = 0;
    bool json = false, precise = false, svd = false, no_whiten = false;
    uint32_t ckv_keys = KVS_CKV_KEYS_AUTO;
    struct kvs_opt_split split;
    kvs_opt_split_init(&split);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int got = kvs_opt_split_parse(&split, a, v);
        if (got < 0) return 2;
        if (got > 0) { i++; continue; }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) { model_path = v; i++; }
        else if (!strcmp(a, "--ctx") && v) { ctxs = v; i++; }
        else if (!strcmp(a, "--methods") && v) { methods = v; i++; }
        else if (!strcmp(a, "-f") && v) { file = v; i++; }
        else if (!strcmp(a, "--cr")) { if (!kvs_opt_cr(a, v, &cr)) return 2; i++; }
        else if (!strcmp(a, "-n")) { if (!kvs_opt_int(a, v, 1, 100000, &n_decode)) return 2; i++; }
        else if (!strcmp(a, "-t")) { if (!kvs_opt_int(a, v, 0, 256, &threads)) return 2; i++; }
        else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "--precise")) precise = true;
        else if (!strcmp(a, "--backend")) { if (!kvs_opt_backend(a, v, &backend)) return 2; i++; }
        else if (!strcmp(a, "--no-whiten")) no_whiten = true;
        else if (!strcmp(a, "--bandwidth")) { if (!kvs_opt_float(a, v, 1e-6, 1e6, &bw_gbs)) return 2; i++; }
        else if (!strcmp(a, "--mac-rate")) { if (!kvs_opt_float(a, v, 1e-9, 1e6, &mac_tera)) return 2; i++; }
        else if (!strcmp(a, "--svd")) svd = true;
        else if (!strcmp(a, "--ckv-keys")) { if (!kvs_opt_ckv_keys(a, v, &ckv_keys)) return 2; i++; }
        else { kvs_die_msg("bench: unknown option or missing value '%s'", a); return 2; }
    }
    if (!kvs_opt_method_list("--methods", methods)) return 2;
    if (mac_tera > 0 && !(bw_gbs > 0)) { kvs_die_msg("bench: --mac-rate needs --bandwidth"); return 2; }
    if (!model_path) model_path = kvs_default_model();
    char *text = kvs_read_text_file(file, 64u << 20);
    if (!text) return 1;
    char err[512];
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, model_path, err, sizeof err) != KVS_OK) { kvs_die_msg("%s", err); free(text); return 1; }
    if (svd) { /* the factorization alone: no context, no decoding */
        free(text);
        int src = bench_svd(m, backend, 4, json);
        kvs_model_delete(m);
        return src;
    }
    int64_t cap = (int64_t)strlen(text) + 8, n_text;
    int32_t *doc = malloc((size_t)cap * sizeof(int32_t));
    n_text = doc ? kvs_tokenizer_encode(m->tok, text, strlen(text), false, doc, cap) : -1;
    free(text);
    int rc = 1;
    if (n_text <= 0) { kvs_die_msg("bench: cannot tokenize %s", file); goto out; }
    if (!json) {
        printf("%-22s %7s %12s %12s %14s", "method", "ctx", "prefill t/s", "decode t/s", "KV held bytes");
        if (bw_gbs > 0) printf(" %10s %10s %8s", "ms/token", "floor ms", "x floor");
        printf("\n");
    } else printf("[");
    int rows = 0;
    char mbuf[256];
    snprintf(mbuf, sizeof mbuf, "%s", methods);
    char *ms = NULL;
    for (char *mname = strtok_r(mbuf, ",", &ms); mname; mname = strtok_r(NULL, ",", &ms)) {
        struct kvs_method_config mc;
        if (kvs_method_parse(&mc, mname, err, sizeof err) != KVS_OK) { kvs_die_msg("option --methods: %s", err); goto out; }
        mc.target_cr = (float)cr;
        if (no_whiten) mc.whiten = false;
        mc.ckv_keys = ckv_keys;
        kvs_opt_split_apply(&split, &mc);
        char cbuf[256];
        snprintf(cbuf, sizeof cbuf, "%s", ctxs);
        char *cs = NULL;
        for (char *c = strtok_r(cbuf, ",", &cs); c; c = strtok_r(NULL, ",", &cs)) {
            long ctx;
            if (!kvs_opt_int("--ctx", c, 8, 1 << 20, &ctx)) goto out;
            int32_t *toks = malloc((size_t)ctx * sizeof(int32_t));
            if (!toks) goto out;
            for (long i = 0; i < ctx; i++) toks[i] = doc[i % n_text]; /* the document, repeated if short */
            struct kvs_press *press = NULL;
            struct kvs_ctx *cx = NULL;
            struct kvs_ctx_params cp;
            kvs_ctx_params_default(&cp);
            cp.n_ctx = (int)(ctx + n_decode + 1);
            cp.n_threads = (int)threads;
            cp.precise = precise;
            snprintf(cp.backend, sizeof cp.backend, "%s", backend);
            if (kvs_press_new(&press, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) != KVS_OK ||
                kvs_ctx_new(&cx, m, press, &cp, err, sizeof err) != KVS_OK) {
                kvs_die_msg("%s", err);
                free(toks);
                kvs_press_delete(press);
                goto out;
            }
            uint64_t t0 = kvs_now_ns();
            enum kvs_status st = kvs_ctx_eval(cx, toks, (int)ctx, NULL);
            double pf = (double)(kvs_now_ns() - t0) / 1e9;
            /* the cache at the start of decoding: with the one at the end, the mean a token reads */
            struct kvs_rec_step rec0;
            memset(&rec0, 0, sizeof rec0);
            if (st == KVS_OK) press->ops->fill_record(press, &rec0);
            uint64_t rng = 1;
            t0 = kvs_now_ns();
            for (long i = 0; i < n_decode && st == KVS_OK; i++) {
                int32_t id = kvs_sample(kvs_ctx_logits(cx), (int)m->hp.n_vocab, 0, 1, &rng);
                st = kvs_ctx_eval(cx, &id, 1, NULL);
            }
            double dc = (double)(kvs_now_ns() - t0) / 1e9;
            if (st != KVS_OK) { kvs_die_msg("%s", kvs_ctx_error(cx)); kvs_ctx_delete(cx); kvs_press_delete(press); free(toks); goto out; }
            struct kvs_rec_step rec;
            memset(&rec, 0, sizeof rec);
            press->ops->fill_record(press, &rec);
            const char *be_used = kvs_ctx_backend(cx); /* "auto" resolved */
            double wbytes = weight_bytes_per_token(m, be_used);
            double cache_mean = 0.5 * ((double)rec0.bytes_held + (double)rec.bytes_held);
            double macs = 0.5 * (rebuild_macs(m, &mc, &rec0) + rebuild_macs(m, &mc, &rec));
            double dec_s = dc / (double)n_decode;
            struct kvs_bench_floor fl = {NAN, NAN, NAN};
            struct kvs_bench_floor_in fin = {wbytes, cache_mean, macs, bw_gbs * 1e9, mac_tera * 1e12};
            bool have_floor = bw_gbs > 0 && (macs == 0 || mac_tera > 0) && kvs_bench_floor_compute(&fin, &fl);
            if (json) {
                printf("%s{\"method\": ", rows ? ", " : "");
                kvs_json_string(stdout, mc.spec, strlen(mc.spec));
                printf(", \"ctx\": %ld, \"prefill_tps\": ", ctx);
                kvs_json_number(stdout, "%.2f", ctx / pf);
                printf(", \"decode_tps\": ");
                kvs_json_number(stdout, "%.2f", n_decode / dc);
                printf(", \"decode_tokens\": %ld, \"bytes_held\": %llu, \"bytes_full\": %llu, \"threads\": %d", n_decode,
                       (unsigned long long)rec.bytes_held, (unsigned long long)rec.bytes_full, kvs_pool_size(kvs_ctx_pool(cx)));
                printf(", \"backend\": ");
                kvs_json_string(stdout, be_used, strlen(be_used));
                printf(", \"prefill_s\": ");
                kvs_json_number(stdout, "%.6f", pf);
                printf(", \"decode_s_per_token\": ");
                kvs_json_number(stdout, "%.9f", dec_s);
                printf(", \"weight_bytes\": %.0f, \"cache_bytes_mean\": %.0f, \"rebuild_macs\": %.0f", wbytes, cache_mean,
                       macs);
                if (have_floor) {
                    printf(", \"floor_bytes_s\": ");
                    kvs_json_number(stdout, "%.9f", fl.bytes_s);
                    printf(", \"floor_macs_s\": ");
                    kvs_json_number(stdout, "%.9f", fl.macs_s);
                    printf(", \"floor_s\": ");
                    kvs_json_number(stdout, "%.9f", fl.total_s);
                    printf(", \"floor_ratio\": ");
                    kvs_json_number(stdout, "%.4f", kvs_bench_floor_ratio(dec_s, fl.total_s));
                }
                printf("}");
            } else {
                printf("%-22s %7ld %12.1f %12.1f %14llu", mc.spec, ctx, ctx / pf, n_decode / dc, (unsigned long long)rec.bytes_held);
                if (have_floor)
                    printf(" %10.3f %10.3f %7.2fx", dec_s * 1e3, fl.total_s * 1e3, kvs_bench_floor_ratio(dec_s, fl.total_s));
                else if (bw_gbs > 0)
                    printf(" %10.3f %10s %8s", dec_s * 1e3, "n/a", "n/a");
                printf("\n");
            }
            fflush(stdout);
            rows++;
            kvs_ctx_delete(cx);
            kvs_press_delete(press);
            free(toks);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (json) printf("]\n");
    else printf("peak RSS %.1f MiB (model file %.1f MiB)\n", ru.ru_maxrss / 1024.0, (double)m->file_bytes / (1 << 20));
    rc = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        kvs_die_msg("bench: cannot write to stdout: %s", strerror(errno));
        rc = 1;
    }
out:
    free(doc);
    kvs_model_delete(m);
    return rc;
}
