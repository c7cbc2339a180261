/* `kvscope generate`: load a model, run a prompt through a KV-cache method and stream the
 * generated text; ends with prompt and decode tokens/s (or one JSON object with --json). */
#include "commands.h"
#include "infer.h"
#include "options.h"
#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fputs("usage: kvscope generate [-m MODEL.gguf] (-p PROMPT | -f FILE) [-n N] [--chat] [--method M] [--cr X|none]\n"
          "                        [--rank R] [--merge-share X] [--merge-floor X]\n"
          "                        [--temp T] [--top-p P] [--seed S] [-t THREADS] [--ctx N] [--batch-size N]\n"
          "                        [--backend cpu|cuda|auto] [--weights auto|bf16|fp16] [--precise]\n"
          "                        [--ckv-keys auto|bf16|int8|fp32] [--json]\n",
          f);
}

int kvs_cmd_generate(int argc, char **argv)
{
    const char *model_path = NULL, *prompt = NULL, *file = NULL, *method = "full", *backend = "cpu",
               *weights = "auto";
    long n_predict = 64, threads = 0, n_ctx = 4096, n_batch = 256;
    double temp = 0, top_p = 0.95, cr = -1;
    uint64_t seed = 42;
    bool chat = false, json = false, precise = false;
    uint32_t ckv_keys = KVS_CKV_KEYS_AUTO;
    struct kvs_opt_split split;
    kvs_opt_split_init(&split);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int got = kvs_opt_split_parse(&split, a, v);
        if (got < 0) return 2;
        if (got > 0) { i++; continue; }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!v) goto needs; model_path = v; i++; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!v) goto needs; prompt = v; i++; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { if (!v) goto needs; file = v; i++; }
        else if (!strcmp(a, "--method")) { if (!v) goto needs; method = v; i++; }
        else if (!strcmp(a, "--backend")) { if (!kvs_opt_backend(a, v, &backend)) return 2; i++; }
        else if (!strcmp(a, "--weights")) { if (!kvs_opt_weights(a, v, &weights)) return 2; i++; }
        else if (!strcmp(a, "-n")) { if (!kvs_opt_int(a, v, 0, 1 << 20, &n_predict)) return 2; i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!kvs_opt_int(a, v, 0, 256, &threads)) return 2; i++; }
        else if (!strcmp(a, "--ctx")) { if (!kvs_opt_int(a, v, 16, 1 << 22, &n_ctx)) return 2; i++; }
        else if (!strcmp(a, "--batch-size")) { if (!kvs_opt_int(a, v, 1, 65536, &n_batch)) return 2; i++; }
        else if (!strcmp(a, "--temp")) { if (!kvs_opt_float(a, v, 0, 100, &temp)) return 2; i++; }
        else if (!strcmp(a, "--top-p")) { if (!kvs_opt_float(a, v, 0, 1, &top_p)) return 2; i++; }
        else if (!strcmp(a, "--cr")) { if (!kvs_opt_cr(a, v, &cr)) return 2; i++; }
        else if (!strcmp(a, "--seed")) { if (!kvs_opt_u64(a, v, &seed)) return 2; i++; }
        else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--precise")) precise = true;
        else if (!strcmp(a, "--ckv-keys")) { if (!kvs_opt_ckv_keys(a, v, &ckv_keys)) return 2; i++; }
        else if (!strcmp(a, "--json")) json = true;
        else { kvs_die_msg("generate: unknown option '%s'", a); return 2; }
        continue;
    needs:
        kvs_die_msg("option %s needs a value", a);
        return 2;
    }
    if (prompt && file) { kvs_die_msg("generate: give -p or -f, not both"); return 2; }
    /* the method is checked before any file is read or the model loaded */
    char err[512];
    struct kvs_method_config mc;
    if (kvs_method_parse(&mc, method, err, sizeof err) != KVS_OK) { kvs_die_msg("option --method: %s", err); return 2; }
    char *text = NULL;
    if (file) {
        if (!(text = kvs_read_text_file(file, 64u << 20))) return 1;
    } else if (prompt) {
        text = strdup(prompt);
    } else {
        kvs_die_msg("generate: no prompt (use -p TEXT or -f FILE)");
        return 2;
    }
    if (!model_path) model_path = kvs_default_model();

    mc.target_cr = (float)cr;
    mc.ckv_keys = ckv_keys;
    kvs_opt_split_apply(&split, &mc);
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, model_path, err, sizeof err) != KVS_OK) { kvs_die_msg("%s", err); free(text); return 1; }
    int rc = 1;
    struct kvs_press *press = NULL;
    struct kvs_ctx *ctx = NULL;
    int32_t *toks = NULL;
    char *chat_text = NULL;
    char *out_text = NULL;
    size_t out_len = 0, out_cap = 0;
    if (kvs_press_new(&press, m, &mc, (int)n_ctx, NULL, NULL, err, sizeof err) != KVS_OK) { kvs_die_msg("%s", err); goto done; }
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = (int)n_ctx;
    cp.n_batch = (int)n_batch;
    cp.n_threads = (int)threads;
    cp.precise = precise;
    snprintf(cp.backend, sizeof cp.backend, "%s", backend);
    snprintf(cp.weights, sizeof cp.weights, "%s", weights);
    if (kvs_ctx_new(&ctx, m, press, &cp, err, sizeof err) != KVS_OK) { kvs_die_msg("%s", err); goto done; }
    uint64_t clamped = 0;
    const char *wtype = kvs_ctx_weights(ctx, &clamped);
    if (clamped) /* never silent: fp16 cannot hold these weights */
        fprintf(stderr, "kvscope: warning: %llu weight values exceed the fp16 range and were clamped to +-65504 "
                "(--weights %s on %s); bf16 keeps them where the GPU supports it\n", (unsigned long long)clamped, wtype,
                kvs_ctx_device(ctx));
    const char *ptext = text;
    if (chat) {
        if (!(chat_text = kvs_tokenizer_chat_format(m->tok, NULL, text))) { kvs_die_msg("generate: the model has no usable chat template"); goto done; }
        ptext = chat_text;
    }
    size_t len = strlen(ptext);
    int64_t cap = (int64_t)len + 8;
    toks = malloc((size_t)cap * sizeof(int32_t));
    if (!toks) { kvs_die_msg("out of memory"); goto done; }
    int64_t n = 0;
    if (kvs_tokenizer_add_bos(m->tok) && kvs_tokenizer_bos(m->tok) >= 0) toks[n++] = kvs_tokenizer_bos(m->tok);
    int64_t got = kvs_tokenizer_encode(m->tok, ptext, len, chat, toks + n, cap - n);
    if (got < 0 || got > cap - n) { kvs_die_msg("generate: the tokenizer failed on the prompt"); goto done; }
    n += got;
    if (n == 0) { kvs_die_msg("generate: empty prompt"); goto done; }
    if (n + n_predict > n_ctx) {
        kvs_die_msg("generate: %lld prompt tokens + %ld new tokens exceed the context of %ld (use --ctx)", (long long)n, n_predict, n_ctx);
        goto done;
    }
    uint64_t t0 = kvs_now_ns();
    if (kvs_ctx_eval(ctx, toks, (int)n, NULL) != KVS_OK) { kvs_die_msg("%s", kvs_ctx_error(ctx)); goto done; }
    double prefill_s = (double)(kvs_now_ns() - t0) / 1e9;
    uint64_t rng = seed;
    int n_gen = 0;
    const int V = (int)m->hp.n_vocab;
    t0 = kvs_now_ns();
    if (json) {
        printf("{\"model\": ");
        kvs_json_string(stdout, m->name, strlen(m->name));
        printf(", \"method\": ");
        kvs_json_string(stdout, mc.spec, strlen(mc.spec));
        printf(", \"tokens\": [");
    }
    for (long i = 0; i < n_predict; i++) {
        int32_t id = kvs_sample(kvs_ctx_logits(ctx), V, (float)temp, (float)top_p, &rng);
        if (kvs_tokenizer_is_eog(m->tok, id)) break;
        char piece[256];
        int pl = kvs_tokenizer_piece(m->tok, id, piece, sizeof piece);
        if (pl > 0) {
            if (json) {
                if (out_len + (size_t)pl > out_cap) {
                    out_cap = (out_len + (size_t)pl) * 2 + 256;
                    char *nb = realloc(out_text, out_cap);
                    if (!nb) { kvs_die_msg("out of memory"); goto done; }
                    out_text = nb;
                }
                memcpy(out_text + out_len, piece, (size_t)pl);
                out_len += (size_t)pl;
            } else {
                fwrite(piece, 1, (size_t)pl, stdout);
                if (fflush(stdout) != 0) { kvs_die_msg("generate: cannot write to stdout: %s", strerror(errno)); goto done; }
            }
        }
        if (json) printf("%s%d", n_gen ? ", " : "", id);
        n_gen++;
        if (kvs_ctx_eval(ctx, &id, 1, NULL) != KVS_OK) { kvs_die_msg("%s", kvs_ctx_error(ctx)); goto done; }
    }
    double decode_s = (double)(kvs_now_ns() - t0) / 1e9;
    uint64_t acts = kvs_ctx_acts_saturated(ctx);
    if (acts) /* never silent: the products saw +-65504 where the model computed more */
        fprintf(stderr, "kvscope: warning: %llu activation values exceeded the fp16 range in the products and were "
                "clamped to +-65504 (--weights %s on %s); bf16 keeps them where the GPU supports it\n",
                (unsigned long long)acts, wtype, kvs_ctx_device(ctx));
    uint64_t cache = kvs_ctx_cache_saturated(ctx);
    if (cache) /* never silent: attention saw +-65504 where the model computed more (or inf) */
        fprintf(stderr, "kvscope: warning: %llu cache values clamped to fp16 range (+-65504) instead of stored as "
                "inf (method %s on %s); the model's keys or values exceed fp16\n", (unsigned long long)cache,
                mc.spec, kvs_ctx_device(ctx));
    double ptps = prefill_s > 0 ? n / prefill_s : 0, dtps = decode_s > 0 ? n_gen / decode_s : 0;
    if (json) {
        printf("], \"text\": ");
        kvs_json_string(stdout, out_text ? out_text : "", out_len);
        printf(", \"prompt_tokens\": %lld, \"generated_tokens\": %d, \"prefill_tps\": ", (long long)n, n_gen);
        kvs_json_number(stdout, "%.2f", ptps);
        printf(", \"decode_tps\": ");
        kvs_json_number(stdout, "%.2f", dtps);
        /* what the method's cache holds at the end, as bench reports it: shows --rank and the merge controls at work */
        struct kvs_rec_step rec;
        memset(&rec, 0, sizeof rec);
        press->ops->fill_record(press, &rec);
        printf(", \"bytes_held\": %llu, \"bytes_full\": %llu", (unsigned long long)rec.bytes_held,
               (unsigned long long)rec.bytes_full);
        printf(", \"threads\": %d, \"precise\": %s}\n", kvs_pool_size(kvs_ctx_pool(ctx)), precise ? "true" : "false");
    } else {
        printf("\n");
        fprintf(stderr, "prompt: %lld tokens, %.1f tok/s; decode: %d tokens, %.1f tok/s (%s, %d threads, method %s)\n",
                (long long)n, ptps, n_gen, dtps, kvs_ctx_backend(ctx), kvs_pool_size(kvs_ctx_pool(ctx)), mc.spec);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        kvs_die_msg("generate: cannot write to stdout: %s", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(out_text);
    free(chat_text);
    free(toks);
    kvs_ctx_delete(ctx);
    kvs_press_delete(press);
    kvs_model_delete(m);
    free(text);
    return rc;
}
