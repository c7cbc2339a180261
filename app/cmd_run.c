/* `kvscope run`: a model, a KV-cache method and a prompt, shown live in the terminal UI (a tty and
 * no --batch) or written as JSON lines of every step record with a summary line last. The live
 * source is an engine session; changing settings in the UI stops it and starts a new one on the
 * same loaded model. With --record every record the UI or the batch output receives also goes to
 * the trace writer (which never blocks), closed on every exit path, signals included (handlers
 * only set flags). Depends on the engine's session/model API, app/ui.h, app/config.h, trace.h. */
#include "commands.h"
#include "config.h"
#include "model.h"
#include "options.h"
#include "batch.h"
#include "session.h"
#include "theme.h"
#include "trace.h"
#include "ui.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_DOC_BYTES 6000 /* the default document is cut here so a run takes seconds */
/* Without -p or -f the model is asked, through its chat template, about the default document: an
 * instruct model answers in plain sentences (SmolLM2-135M-Instruct summarises it), where a bare
 * continuation of the licence repeats licence boilerplate. */
#define DEFAULT_QUESTION "Summarize the text above in three short sentences."

static void usage(FILE *f)
{
    fputs("usage: kvscope run [-m MODEL.gguf] [--method M] [--cr X|none] [--group G] [--rank R] [--rank-ratio X]\n"
          "                   [--profile tuned|paper] [--merge-share X] [--merge-floor X] [--sinks N]\n"
          "                   [--recent N] [-p PROMPT | -f FILE] [--chat] [-n N] [--seed S] [--ctx N] [-t THREADS]\n"
          "                   [--backend cpu|cuda|auto] [--weights auto|bf16|fp16] [--precise]\n"
          "                   [--ckv-keys auto|bf16|int8|fp32]\n"
          "                   [--theme default|mono|projector] [--no-mouse] [--batch] [--record FILE [--force]]\n"
          "                   [--compare-full]\n",
          f);
}

struct live {
    const struct kvs_model *model;
    struct kvs_session_params base; /* prompt, lengths, seed: fixed for the process */
    struct kvs_session *sess;
    struct kvs_queue *q;
    uint32_t run_id;
    struct kvs_trace_writer *w;     /* --record: gets a reference to every record consumed */
    uint32_t ckv_keys;              /* --ckv-keys (enum kvs_ckv_keys), for every run of the process */
    uint32_t profile;               /* --profile: how CommonKV's plan is made */
    struct kvs_opt_split split;     /* --rank, --merge-share, --merge-floor: fixed for the process */
};

/* Set by SIGINT/SIGQUIT/SIGTERM/SIGHUP outside the UI (--batch, engine shutdown); the output loop
 * stops and the writer is closed. */
static volatile sig_atomic_t g_stop;
static void on_stop(int sig) { g_stop = sig; }

/* Hands R (may be NULL) to the trace writer as well; returns R to the caller. */
static struct kvs_record *consumed(struct live *l, struct kvs_record *r)
{
    if (r && l->w) kvs_trace_writer_push(l->w, kvs_record_ref(r));
    return r;
}

static bool make_params(struct live *l, const struct kvs_ui_settings *s, struct kvs_session_params *p, char *err, size_t errlen)
{
    *p = l->base;
    if (kvs_method_parse(&p->method, s->method, err, errlen) != KVS_OK) return false;
    p->method.target_cr = s->cr;
    p->method.group_size = s->group ? s->group : p->method.group_size;
    p->method.rank_ratio = s->rank_ratio;
    p->method.sinks = s->sinks;
    p->method.recent = s->recent;
    p->method.ckv_keys = l->ckv_keys;
    p->method.profile = l->profile;
    kvs_opt_split_apply(&l->split, &p->method);
    p->compare_full = s->compare_full;
    if (!isnan(s->merge_share)) p->method.merge_share = s->merge_share;
    if (!isnan(s->merge_floor)) p->method.merge_floor = s->merge_floor;
    if (s->quant_bits) p->method.quant_bits = s->quant_bits;
    if (s->evict_capacity) p->method.snap_capacity = s->evict_capacity;
    p->n_threads = (int)s->threads;
    p->run_id = ++l->run_id;
    return true;
}

static bool live_start(struct live *l, const struct kvs_ui_settings *s, char *err, size_t errlen)
{
    struct kvs_session_params p;
    if (!make_params(l, s, &p, err, errlen)) return false;
    return kvs_session_start(&l->sess, l->model, &p, l->q, err, errlen) == KVS_OK;
}

static struct kvs_record *live_poll(void *ctx)
{
    struct live *l = ctx;
    return consumed(l, kvs_queue_pop(l->q, 0));
}

static bool live_busy(void *ctx)
{
    struct live *l = ctx;
    return l->sess && !kvs_session_done(l->sess);
}

static bool live_restart(void *ctx, const struct kvs_ui_settings *s, char *err, size_t errlen)
{
    struct live *l = ctx;
    struct kvs_session_params p;
    /* check the settings before stopping what runs */
    if (!make_params(l, s, &p, err, errlen)) return false;
    l->run_id--;
    kvs_session_stop(l->sess);
    l->sess = NULL;
    /* records of the old run still queued are dropped: the new RUN record resets the views */
    struct kvs_record *r;
    while ((r = kvs_queue_pop(l->q, 0)) != NULL) kvs_record_unref(r);
    return live_start(l, s, err, errlen);
}

/* Reads the default document, cut at a line end near DEFAULT_DOC_BYTES. */
static char *default_doc(void)
{
    char *t = kvs_read_text_file(KVS_DEFAULT_TEXT, 1u << 20);
    if (!t) return NULL;
    size_t n = strlen(t);
    if (n > DEFAULT_DOC_BYTES) {
        char *nl = memchr(t + DEFAULT_DOC_BYTES / 2, '\n', DEFAULT_DOC_BYTES / 2);
        t[nl ? (size_t)(nl - t) + 1 : DEFAULT_DOC_BYTES] = 0;
    }
    return t;
}

/* --batch: records until the session's END (or until it finished without one, or a signal). */
static struct kvs_record *batch_next(void *ctx)
{
    struct live *l = ctx;
    while (!g_stop) {
        struct kvs_record *r = kvs_queue_pop(l->q, 200);
        if (r) return consumed(l, r);
        if (kvs_session_done(l->sess)) return consumed(l, kvs_queue_pop(l->q, 0));
    }
    return NULL;
}

/* Header metadata of a recording: what was run, on what, with which shapes. */
static struct kvs_trace_writer *record_open(const char *path, const struct kvs_model *m, const char *model_path,
                                            const struct kvs_session_params *p, const struct kvs_ui_settings *s,
                                            bool tui, bool force, char *err, size_t errlen)
{
    const struct kvs_hparams *hp = &m->hp;
    char v[16][64];
    int n = 0;
#define NUM(fmt, x) (snprintf(v[n], sizeof v[n], fmt, x), v[n++])
    const char *cr = s->cr < 0 ? "none" : NUM("%.3f", (double)s->cr);
    struct kvs_trace_kv meta[] = {
        {"kvscope_version", KVS_VERSION},
        {"model", model_path},
        {"model_name", m->name},
        {"method", s->method},
        {"target_cr", cr},
        {"backend", p->backend},
        {"threads", NUM("%d", p->n_threads)},
        {"n_layer", NUM("%u", hp->n_layer)},
        {"n_embd", NUM("%u", hp->n_embd)},
        {"n_head", NUM("%u", hp->n_head)},
        {"n_head_kv", NUM("%u", hp->n_head_kv)},
        {"head_dim", NUM("%u", hp->head_dim)},
        {"n_ff", NUM("%u", hp->n_ff)},
        {"n_vocab", NUM("%u", hp->n_vocab)},
        {"n_ctx", NUM("%d", p->n_ctx)},
        {"n_predict", NUM("%d", p->n_predict)},
        {"seed", NUM("%llu", (unsigned long long)p->seed)},
        {"mode", tui ? "tui" : "batch"},
    };
#undef NUM
    /* values are one line: a path with a newline in it is written with spaces */
    char path_line[1024];
    snprintf(path_line, sizeof path_line, "%s", model_path);
    for (char *c = path_line; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
    meta[1].value = path_line;
    struct kvs_trace_writer *w = NULL;
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    o.replace = force;
    if (kvs_trace_writer_open(&w, path, meta, KVS_ARRAY_LEN(meta), &o, err, errlen) != KVS_OK) return NULL;
    return w;
}

/* Closes the writer and says what was recorded (on stderr: stdout may hold --batch output).
 * Returns false after printing the error when the trace could not be finished. */
static bool record_close(struct kvs_trace_writer *w, const char *path)
{
    uint64_t dropped = kvs_trace_writer_dropped(w);
    char err[600];
    if (kvs_trace_writer_close(w, err, sizeof err) != KVS_OK) {
        kvs_die_msg("--record %s: %s (what was written is in %s.part; `kvscope trace recover` rescues it)", path, err,
                    path);
        return false;
    }
    /* the footer holds the final counts */
    struct kvs_trace *t;
    if (kvs_trace_open(&t, path, KVS_TRACE_OPEN_FAST, err, sizeof err) != KVS_OK) {
        kvs_die_msg("--record %s: written, but cannot be read back: %s", path, err);
        return false;
    }
    const struct kvs_trace_info *in = kvs_trace_get_info(t);
    if (in->dropped > dropped) dropped = in->dropped;
    fprintf(stderr, "kvscope: recorded %llu records to %s (%llu bytes, %llu dropped)\n", (unsigned long long)in->n_records,
            path, (unsigned long long)in->file_bytes, (unsigned long long)dropped);
    kvs_trace_close(t);
    return true;
}

int kvs_cmd_run(int argc, char **argv)
{
    const char *model_path = NULL, *prompt = NULL, *file = NULL, *record = NULL;
    const char *method = NULL, *theme_name = NULL, *backend = "cpu", *weights = "auto";
    double cr = NAN, rank_ratio = NAN;
    uint32_t profile = KVS_PROFILE_TUNED;
    long group = -1, sinks = -1, recent = -1, n_predict = 64, n_ctx = 2048, threads = 0;
    uint64_t seed = 42;
    bool chat = false, batch = false, no_mouse = false, compare_full = false, precise = false, force = false;
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
        else if (!strcmp(a, "--record")) { if (!v) goto needs; record = v; i++; }
        else if (!strcmp(a, "--backend")) { if (!kvs_opt_backend(a, v, &backend)) return 2; i++; }
        else if (!strcmp(a, "--weights")) { if (!kvs_opt_weights(a, v, &weights)) return 2; i++; }
        else if (!strcmp(a, "--theme")) { if (!v) goto needs; theme_name = v; i++; }
        else if (!strcmp(a, "--cr")) { if (!kvs_opt_cr(a, v, &cr)) return 2; i++; }
        else if (!strcmp(a, "--rank-ratio")) { if (!kvs_opt_float(a, v, 0, 1, &rank_ratio)) return 2; i++; }
        else if (!strcmp(a, "--profile")) { if (!kvs_opt_profile(a, v, &profile)) return 2; i++; }
        else if (!strcmp(a, "--group")) { if (!kvs_opt_int(a, v, 1, 64, &group)) return 2; i++; }
        else if (!strcmp(a, "--sinks")) { if (!kvs_opt_int(a, v, 0, 4096, &sinks)) return 2; i++; }
        else if (!strcmp(a, "--recent")) { if (!kvs_opt_int(a, v, 0, 1 << 20, &recent)) return 2; i++; }
        else if (!strcmp(a, "-n")) { if (!kvs_opt_int(a, v, 0, 1 << 20, &n_predict)) return 2; i++; }
        else if (!strcmp(a, "--ctx")) { if (!kvs_opt_int(a, v, 16, 1 << 22, &n_ctx)) return 2; i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!kvs_opt_int(a, v, 0, 256, &threads)) return 2; i++; }
        else if (!strcmp(a, "--seed")) { if (!kvs_opt_u64(a, v, &seed)) return 2; i++; }
        else if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--precise")) precise = true;
        else if (!strcmp(a, "--ckv-keys")) { if (!kvs_opt_ckv_keys(a, v, &ckv_keys)) return 2; i++; }
        else if (!strcmp(a, "--batch")) batch = true;
        else if (!strcmp(a, "--no-mouse")) no_mouse = true;
        else if (!strcmp(a, "--compare-full")) compare_full = true;
        else if (!strcmp(a, "--force")) force = true;
        else { kvs_die_msg("run: unknown option '%s'", a); return 2; }
        continue;
    needs:
        kvs_die_msg("option %s needs a value", a);
        return 2;
    }
    if (prompt && file) { kvs_die_msg("run: give -p or -f, not both"); return 2; }
    bool tui = !batch && isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
    /* settings: defaults, then the config file (interactive only), then the command line */
    struct kvs_config cfg;
    char cfg_path[1024];
    if (!kvs_opt_ui_config(&cfg, tui, theme_name, no_mouse, cfg_path, sizeof cfg_path)) return 2;
    bool have_cfg_path = cfg_path[0] != 0;
    if (!tui) cfg.compare_full = false; /* batch output does not depend on the config file */
    /* checked whole before it is copied (the settings hold 63 bytes) and before the model loads */
    if (method) {
        if (!kvs_opt_method("--method", method)) return 2;
        snprintf(cfg.method, sizeof cfg.method, "%s", method);
    }
    if (!isnan(cr)) cfg.cr = (float)cr;
    if (!isnan(rank_ratio)) cfg.rank_ratio = (float)rank_ratio;
    if (group >= 0) cfg.group = (uint32_t)group;
    if (sinks >= 0) cfg.sinks = (uint32_t)sinks;
    if (recent >= 0) cfg.recent = (uint32_t)recent;
    if (compare_full) cfg.compare_full = true;
    char err[512];
    {
        struct kvs_method_config mc;
        if (kvs_method_parse(&mc, cfg.method, err, sizeof err) != KVS_OK) {
            kvs_die_msg("config %s: method: %s", have_cfg_path ? cfg_path : "", err);
            return 2;
        }
    }
    if (record) {
        /* where the recording will go is checked before the model loads (and again by the writer) */
        char part[1100];
        snprintf(part, sizeof part, "%s.part", record);
        const char *paths[2] = {record, part};
        for (int i = 0; i < 2; i++) {
            enum kvs_status st = kvs_trace_target_check(paths[i], force, err, sizeof err);
            if (st == KVS_ERR_STATE && i == 1) {
                kvs_die_msg("--record: %s already exists (an interrupted recording? `kvscope trace recover %s %s` "
                            "rescues it; --force replaces it)", part, part, record);
                return 1;
            }
            if (st != KVS_OK) {
                kvs_die_msg("--record: %s%s", err, st == KVS_ERR_STATE ? " (--force replaces it)" : "");
                return 1;
            }
        }
    }
    char *text = NULL;
    if (file) text = kvs_read_text_file(file, 64u << 20);
    else if (prompt) text = strdup(prompt);
    else if ((text = default_doc()) != NULL) {
        size_t n = strlen(text);
        char *q = realloc(text, n + sizeof DEFAULT_QUESTION + 2);
        if (!q) { free(text); kvs_die_msg("out of memory"); return 1; }
        text = q;
        snprintf(text + n, sizeof DEFAULT_QUESTION + 2, "\n%s", DEFAULT_QUESTION);
        chat = true;
    }
    if (!text) { if (prompt) kvs_die_msg("out of memory"); return 1; }
    if (!model_path) model_path = kvs_default_model();
    struct kvs_model *model = NULL;
    if (kvs_model_load(&model, model_path, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        free(text);
        return 1;
    }
    struct live l;
    memset(&l, 0, sizeof l);
    l.model = model;
    l.split = split;
    kvs_session_params_default(&l.base);
    l.base.prompt = text;
    l.base.chat = chat;
    l.base.n_predict = (int)n_predict;
    l.base.n_ctx = (int)n_ctx;
    l.base.n_threads = (int)threads;
    l.base.precise = precise;
    l.ckv_keys = ckv_keys;
    snprintf(l.base.backend, sizeof l.base.backend, "%s", backend);
    snprintf(l.base.weights, sizeof l.base.weights, "%s", weights);
    l.base.seed = seed;
    l.profile = profile;
    l.base.lossless = !tui; /* batch output must not lose records; the TUI must not slow the engine */
    l.q = kvs_queue_new(4096);
    int rc = 1;
    struct sigaction sa, old_int, old_term, old_hup, old_quit, old_pipe;
    bool handlers = false;
    if (!l.q) { kvs_die_msg("out of memory"); goto done; }
    struct kvs_ui_settings s;
    memset(&s, 0, sizeof s);
    snprintf(s.method, sizeof s.method, "%s", cfg.method);
    s.cr = cfg.cr;
    s.group = cfg.group;
    s.rank_ratio = cfg.rank_ratio;
    s.sinks = cfg.sinks;
    s.recent = cfg.recent;
    s.compare_full = cfg.compare_full;
    s.merge_share = s.merge_floor = NAN; /* the method's own until the settings screen changes them */
    s.threads = (uint32_t)threads;
    /* batch output stops at the next record on a signal; the UI sets its own flags while it runs
     * (these cover the moments around it); either way the trace is closed below */
    g_stop = 0;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    sigaction(SIGQUIT, &sa, &old_quit);
    /* a closed stdout is a write error that ends the output, not a death that loses the trace */
    sa.sa_handler = record && !tui ? SIG_IGN : SIG_DFL;
    sigaction(SIGPIPE, &sa, &old_pipe);
    handlers = true;
    if (record && !(l.w = record_open(record, model, model_path, &l.base, &s, tui, force, err, sizeof err))) {
        kvs_die_msg("--record: %s", err);
        goto done;
    }
    if (!live_start(&l, &s, err, sizeof err)) { kvs_die_msg("run: %s", err); goto done; }
    if (!tui) {
        rc = kvs_batch_print(stdout, batch_next, &l, true);
        if (g_stop) rc = 128 + g_stop;
    } else {
        struct kvs_ui_source src = {.ctx = &l, .poll = live_poll, .busy = live_busy, .restart = live_restart};
        struct kvs_ui_opts o;
        memset(&o, 0, sizeof o);
        o.settings = s;
        o.theme = cfg.theme;
        o.no_mouse = !cfg.mouse;
        o.sim_kind = cfg.sim_kind;
        o.config_path = have_cfg_path ? cfg_path : NULL;
        rc = g_stop ? 0 : kvs_ui_run(&src, &o, err, sizeof err);
        /* the terminal is restored by now */
        if (rc) kvs_die_msg("%s", err);
    }
done:
    if (l.sess) kvs_session_stop(l.sess);
    if (l.w && !record_close(l.w, record) && rc == 0) rc = 1;
    if (handlers) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGHUP, &old_hup, NULL);
        sigaction(SIGQUIT, &old_quit, NULL);
        sigaction(SIGPIPE, &old_pipe, NULL);
    }
    kvs_queue_delete(l.q);
    kvs_model_delete(model);
    free(text);
    return rc;
}
