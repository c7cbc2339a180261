/* `kvscope bench`: prefill and decode tokens/s per method at several context lengths, measured on
 * the default document. Baselines (llama.cpp, the full cache) are measured by tests/bench.sh in
 * the same run; this command only measures kvscope. */
#include "commands.h"
#include "infer.h"
#include "options.h"
#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void usage(FILE *f)
{
    fputs("usage: kvscope bench [-m MODEL] [--ctx 512,2048] [--methods full,commonkv] [--cr X|none] [-n DECODE_TOKENS]\n"
          "                     [--rank R] [--merge-share X] [--merge-floor X]\n"
          "                     [-t THREADS] [-f FILE] [--precise] [--json]\n", f);
}

int kvs_cmd_bench(int argc, char **argv)
{
    const char *model_path = NULL, *ctxs = "512,2048", *methods = "full", *file = KVS_DEFAULT_TEXT;
    long n_decode = 64, threads = 0;
    double cr = -1;
    bool json = false, precise = false;
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
        else { kvs_die_msg("bench: unknown option or missing value '%s'", a); return 2; }
    }
    if (!kvs_opt_method_list("--methods", methods)) return 2;
    if (!model_path) model_path = kvs_default_model();
    char *text = kvs_read_text_file(file, 64u << 20);
    if (!text) return 1;
    char err[512];
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, model_path, err, sizeof err) != KVS_OK) { kvs_die_msg("%s", err); free(text); return 1; }
    int64_t cap = (int64_t)strlen(text) + 8, n_text;
    int32_t *doc = malloc((size_t)cap * sizeof(int32_t));
    n_text = doc ? kvs_tokenizer_encode(m->tok, text, strlen(text), false, doc, cap) : -1;
    free(text);
    int rc = 1;
    if (n_text <= 0) { kvs_die_msg("bench: cannot tokenize %s", file); goto out; }
    if (!json) printf("%-22s %7s %12s %12s %14s\n", "method", "ctx", "prefill t/s", "decode t/s", "KV held bytes");
    else printf("[");
    int rows = 0;
    char mbuf[256];
    snprintf(mbuf, sizeof mbuf, "%s", methods);
    char *ms = NULL;
    for (char *mname = strtok_r(mbuf, ",", &ms); mname; mname = strtok_r(NULL, ",", &ms)) {
        struct kvs_method_config mc;
        if (kvs_method_parse(&mc, mname, err, sizeof err) != KVS_OK) { kvs_die_msg("option --methods: %s", err); goto out; }
        mc.target_cr = (float)cr;
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
            if (json) {
                printf("%s{\"method\": ", rows ? ", " : "");
                kvs_json_string(stdout, mc.spec, strlen(mc.spec));
                printf(", \"ctx\": %ld, \"prefill_tps\": ", ctx);
                kvs_json_number(stdout, "%.2f", ctx / pf);
                printf(", \"decode_tps\": ");
                kvs_json_number(stdout, "%.2f", n_decode / dc);
                printf(", \"decode_tokens\": %ld, \"bytes_held\": %llu, \"bytes_full\": %llu, \"threads\": %d}", n_decode,
                       (unsigned long long)rec.bytes_held, (unsigned long long)rec.bytes_full, kvs_pool_size(kvs_ctx_pool(cx)));
            } else
                printf("%-22s %7ld %12.1f %12.1f %14llu\n", mc.spec, ctx, ctx / pf, n_decode / dc, (unsigned long long)rec.bytes_held);
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
