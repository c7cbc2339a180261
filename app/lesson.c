/* `kvscope lesson list | N [--live] [--dir DIR] | N --batch --record DIR`: the workshop lessons.
 * Each lesson is one or more runs with fixed settings (the table below). By default they are
 * played from the shipped traces (lessons/lessonN-K.kvt, made by `make lessons`); --live runs the
 * same settings on a model; --batch --record writes those traces. The overlay text and the step
 * logic live in views/lesson.c; this file only chooses, starts and chains the record sources. */
#include "commands.h"
#include "config.h"
#include "lesson.h"
#include "model.h"
#include "options.h"
#include "session.h"
#include "theme.h"
#include "trace.h"
#include "ui.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RUNS 12
#define DOC_BYTES 6000          /* the default document is cut here, as `kvscope run` does */
#define STEP_GAP_NS 40000000ull /* replay pacing: one step every 40 ms, so a lesson plays in seconds */

/* A good first question for a 135M chat model: it answers it in plain sentences. */
#define CHAT_PROMPT "Why is the sky blue? Answer in two sentences."

struct lesson_run {
    const char *method;
    float cr;               /* < 0: none */
    int n_predict;
    bool chat;              /* CHAT_PROMPT with the chat template; else the default document */
    bool compare_full;
    uint32_t quant_bits, snap_capacity; /* 0: the method's default */
};

static const struct lesson_run runs1[] = {{"full", -1, 96, true, false, 0, 0}};
static const struct lesson_run runs2[] = {{"full", -1, 8, false, false, 0, 0}};
static const struct lesson_run runs3[] = {{"commonkv", 0.5f, 8, false, true, 0, 0}};
static const struct lesson_run runs4[] = {{"commonkv", 0.7f, 16, false, true, 0, 0}};
static const struct lesson_run runs5[] = {
    {"commonkv", 0.3f, 8, false, true, 0, 0},  {"commonkv", 0.5f, 8, false, true, 0, 0},
    {"commonkv", 0.7f, 8, false, true, 0, 0},  {"commonkv", 0.9f, 8, false, true, 0, 0},
    {"lowrank", 0.3f, 8, false, true, 0, 0},   {"lowrank", 0.5f, 8, false, true, 0, 0},
    {"lowrank", 0.7f, 8, false, true, 0, 0},   {"minicache", 0.3f, 8, false, true, 0, 0},
    {"minicache", 0.5f, 8, false, true, 0, 0},
};
static const struct lesson_run runs6[] = {{"commonkv+quant+snapkv", 0.9f, 16, false, true, 4, 384}};

static const struct { const struct lesson_run *r; int n; } plan[KVS_LESSON_COUNT] = {
    {runs1, 1}, {runs2, 1}, {runs3, 1}, {runs4, 1}, {runs5, (int)KVS_ARRAY_LEN(runs5)}, {runs6, 1},
};

static void usage(FILE *f)
{
    fputs("usage: kvscope lesson list\n"
          "       kvscope lesson N [--dir DIR] [--theme default|mono|projector] [--no-mouse]\n"
          "       kvscope lesson N --live [-m MODEL.gguf] [-t THREADS]\n"
          "       kvscope lesson N --batch --record DIR [-m MODEL.gguf] [-t THREADS]\n",
          f);
}

static void trace_name(char *buf, size_t n, const char *dir, int lesson, int k)
{
    snprintf(buf, n, "%s/lesson%d-%d.kvt", dir, lesson, k + 1);
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Where the shipped traces are: $KVSCOPE_LESSONS, ./lessons, the source tree of this build, or
 * the installed share folder. */
static const char *lessons_dir(void)
{
    const char *e = getenv("KVSCOPE_LESSONS");
    if (e && *e) return e;
    if (is_dir("lessons")) return "lessons";
    static const char *const cand[] = {KVS_BUILD_DIR "/../lessons", KVS_PREFIX "/share/kvscope/lessons"};
    for (size_t i = 0; i < KVS_ARRAY_LEN(cand); i++)
        if (is_dir(cand[i])) return cand[i];
    return "lessons";
}

/* ---- the shipped traces, played one after the other ---- */

struct chain {
    const char *dir;
    int lesson, k, n;
    struct kvs_trace *t;
    struct kvs_record *pending;  /* a STEP waiting for its turn */
    uint64_t last_step_ns;
    bool done;
    char err[600];
    bool err_sent;
};

static struct kvs_record *chain_log(struct chain *c)
{
    if (c->err_sent) return NULL;
    c->err_sent = true;
    struct kvs_record *r = kvs_record_new(KVS_REC_LOG, 0);
    if (!r) return NULL;
    r->u.log.level = 2;
    snprintf(r->u.log.text, sizeof r->u.log.text, "%.159s", c->err);
    return r;
}

/* Next record of the chain in file order, NULL at the end or after an error (kept in c->err). */
static struct kvs_record *chain_read(struct chain *c)
{
    while (!c->done) {
        if (!c->t) {
            if (c->k >= c->n) { c->done = true; break; }
            char path[1024], err[512];
            trace_name(path, sizeof path, c->dir, c->lesson, c->k);
            if (kvs_trace_open(&c->t, path, 0, err, sizeof err) != KVS_OK) {
                snprintf(c->err, sizeof c->err, "lesson %d: %s (make lessons writes it)", c->lesson, err);
                c->done = true;
                break;
            }
        }
        struct kvs_record *r;
        struct kvs_trace_where w;
        if (kvs_trace_next(c->t, &r, &w) != KVS_OK) {
            snprintf(c->err, sizeof c->err, "lesson %d, trace %d: %s", c->lesson, c->k + 1, kvs_trace_error(c->t));
            kvs_trace_close(c->t);
            c->t = NULL;
            c->done = true;
            break;
        }
        if (!r) {
            kvs_trace_close(c->t);
            c->t = NULL;
            c->k++;
            continue;
        }
        if (w.keyframe) { kvs_record_unref(r); continue; }
        return r;
    }
    return NULL;
}

static struct kvs_record *chain_poll(void *ctx)
{
    struct chain *c = ctx;
    struct kvs_record *r = c->pending ? c->pending : chain_read(c);
    c->pending = NULL;
    if (!r) return c->err[0] ? chain_log(c) : NULL;
    if (r->type == KVS_REC_STEP) {
        /* steps come at a steady pace so the panels move; the rest comes at once */
        uint64_t now = kvs_now_ns();
        if (now - c->last_step_ns < STEP_GAP_NS) { c->pending = r; return NULL; }
        c->last_step_ns = now;
    }
    return r;
}

static bool chain_busy(void *ctx)
{
    struct chain *c = ctx;
    return !c->done || c->pending;
}

/* The UI asks a replay source for playback state; a lesson always plays, at its own pace. */
static void chain_set_playing(void *ctx, bool on) { (void)ctx; (void)on; }
static bool chain_playing(void *ctx) { return chain_busy(ctx); }
static void chain_set_speed(void *ctx, double s) { (void)ctx; (void)s; }
static double chain_speed(void *ctx) { (void)ctx; return 1; }
static void chain_position(void *ctx, uint64_t *n, uint64_t *delivered) { (void)ctx; *n = 0; *delivered = 0; }

/* Checks that every trace of the lesson opens, so a missing file is one line before the screen. */
static bool chain_check(const char *dir, int lesson, int n)
{
    for (int k = 0; k < n; k++) {
        char path[1024], err[512];
        trace_name(path, sizeof path, dir, lesson, k);
        struct kvs_trace *t;
        if (kvs_trace_open(&t, path, KVS_TRACE_OPEN_FAST, err, sizeof err) != KVS_OK) {
            kvs_die_msg("lesson %d: %s (`make lessons` writes the lesson traces; --live runs it on a model)", lesson, err);
            return false;
        }
        kvs_trace_close(t);
    }
    return true;
}

/* ---- live: the lesson's runs on a model, one session after the other ---- */

struct live {
    const struct kvs_model *model;
    const struct lesson_run *runs;
    int n, k, lesson;
    const char *doc;            /* the default document, cut */
    int n_threads;
    bool lossless;
    struct kvs_session *sess;
    struct kvs_queue *q;
    char err[512];
    bool failed, err_sent;
};

static bool live_params(struct live *l, const struct lesson_run *r, struct kvs_session_params *p, char *err, size_t errlen)
{
    kvs_session_params_default(p);
    if (kvs_method_parse(&p->method, r->method, err, errlen) != KVS_OK) return false;
    p->method.target_cr = r->cr;
    if (r->quant_bits) p->method.quant_bits = r->quant_bits;
    if (r->snap_capacity) p->method.snap_capacity = r->snap_capacity;
    p->prompt = r->chat ? CHAT_PROMPT : l->doc;
    p->chat = r->chat;
    p->n_predict = r->n_predict;
    p->n_ctx = 2048;
    p->seed = 42;
    p->compare_full = r->compare_full;
    p->n_threads = l->n_threads;
    p->lossless = l->lossless;
    p->run_id = (uint32_t)l->k + 1;
    snprintf(p->backend, sizeof p->backend, "cpu");
    return true;
}

static bool live_start_next(struct live *l)
{
    if (l->sess) { kvs_session_stop(l->sess); l->sess = NULL; }
    if (l->k >= l->n) return false;
    struct kvs_session_params p;
    if (!live_params(l, &l->runs[l->k], &p, l->err, sizeof l->err) ||
        kvs_session_start(&l->sess, l->model, &p, l->q, l->err, sizeof l->err) != KVS_OK) {
        l->failed = true;
        return false;
    }
    l->k++;
    return true;
}

static struct kvs_record *live_poll(void *ctx)
{
    struct live *l = ctx;
    struct kvs_record *r = kvs_queue_pop(l->q, 0);
    if (r) return r;
    if (l->failed) {
        if (l->err_sent) return NULL;
        l->err_sent = true;
        if (!(r = kvs_record_new(KVS_REC_LOG, 0))) return NULL;
        r->u.log.level = 2;
        snprintf(r->u.log.text, sizeof r->u.log.text, "lesson: %.150s", l->err);
        return r;
    }
    /* a finished session's records are all queued: start the next run */
    if (l->sess && kvs_session_done(l->sess) && !(r = kvs_queue_pop(l->q, 0))) live_start_next(l);
    return r;
}

static bool live_busy(void *ctx)
{
    struct live *l = ctx;
    return l->sess && (!kvs_session_done(l->sess) || l->k < l->n);
}

static bool live_restart(void *ctx, const struct kvs_ui_settings *s, char *err, size_t errlen)
{
    (void)ctx;
    (void)s;
    snprintf(err, errlen, "a lesson's settings are fixed");
    return false;
}

static char *default_doc(void)
{
    char *t = kvs_read_text_file(KVS_DEFAULT_TEXT, 1u << 20);
    if (!t) return NULL;
    size_t n = strlen(t);
    if (n > DOC_BYTES) {
        char *nl = memchr(t + DOC_BYTES / 2, '\n', DOC_BYTES / 2);
        t[nl ? (size_t)(nl - t) + 1 : DOC_BYTES] = 0;
    }
    return t;
}

/* --batch --record DIR: each run of the lesson into DIR/lessonN-K.kvt. Returns the exit status. */
static int record_lesson(struct live *l, const char *dir, const char *model_path)
{
    for (int k = 0; k < l->n; k++) {
        const struct lesson_run *r = &l->runs[k];
        char path[1024], err[600], cr[16], lesson[8], np[16];
        trace_name(path, sizeof path, dir, l->lesson, k);
        snprintf(cr, sizeof cr, r->cr < 0 ? "none" : "%.3f", (double)r->cr);
        snprintf(lesson, sizeof lesson, "%d", l->lesson);
        snprintf(np, sizeof np, "%d", r->n_predict);
        const struct kvs_trace_kv meta[] = {
            {"kvscope_version", KVS_VERSION}, {"model", model_path}, {"model_name", l->model->name},
            {"method", r->method},            {"target_cr", cr},     {"lesson", lesson},
            {"n_predict", np},                {"prompt", r->chat ? CHAT_PROMPT : KVS_DEFAULT_TEXT},
            {"mode", "batch"},
        };
        struct kvs_trace_writer *w = NULL;
        if (kvs_trace_writer_open(&w, path, meta, KVS_ARRAY_LEN(meta), NULL, err, sizeof err) != KVS_OK) {
            kvs_die_msg("--record %s: %s", path, err);
            return 1;
        }
        l->k = k;
        if (!live_start_next(l)) {
            kvs_trace_writer_abort(w);
            kvs_die_msg("lesson %d: %s", l->lesson, l->err);
            return 1;
        }
        uint64_t n_rec = 0;
        for (;;) {
            struct kvs_record *rec = kvs_queue_pop(l->q, 200);
            if (!rec) {
                if (kvs_session_done(l->sess) && !(rec = kvs_queue_pop(l->q, 0))) break;
                if (!rec) continue;
            }
            if (rec->type == KVS_REC_LOG && rec->u.log.level >= 2) kvs_die_msg("lesson %d: %s", l->lesson, rec->u.log.text);
            n_rec++;
            kvs_trace_writer_push(w, rec);
        }
        kvs_session_stop(l->sess);
        l->sess = NULL;
        if (kvs_trace_writer_close(w, err, sizeof err) != KVS_OK) {
            kvs_die_msg("--record %s: %s", path, err);
            return 1;
        }
        struct stat st;
        fprintf(stderr, "kvscope: lesson %d: %s %s -> %s (%llu records, %lld bytes)\n", l->lesson, r->method, cr, path,
                (unsigned long long)n_rec, stat(path, &st) == 0 ? (long long)st.st_size : -1LL);
    }
    return 0;
}

static int list(void)
{
    const char *dir = lessons_dir();
    for (int n = 1; n <= KVS_LESSON_COUNT; n++) {
        int have = 0;
        for (int k = 0; k < plan[n - 1].n; k++) {
            char path[1024];
            trace_name(path, sizeof path, dir, n, k);
            have += access(path, R_OK) == 0;
        }
        printf("%d  %-52s %d step%s, %d run%s%s\n", n, kvs_lesson_title(n), kvs_lesson_steps(n),
               kvs_lesson_steps(n) == 1 ? "" : "s", plan[n - 1].n, plan[n - 1].n == 1 ? "" : "s",
               have == plan[n - 1].n ? "" : " (no trace: --live, or make lessons)");
        printf("   %s\n", kvs_lesson_summary(n));
    }
    printf("traces: %s\n", dir);
    return 0;
}

int kvs_cmd_lesson(int argc, char **argv)
{
    const char *model_path = NULL, *dir = NULL, *record = NULL, *theme_name = NULL;
    bool live = false, batch = false, no_mouse = false;
    long lesson = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "list") && i == 1) return argc == 2 ? list() : (kvs_die_msg("lesson list takes no options"), 2);
        else if (!strcmp(a, "--live")) live = true;
        else if (!strcmp(a, "--batch")) batch = true;
        else if (!strcmp(a, "--no-mouse")) no_mouse = true;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!v) goto needs; model_path = v; i++; }
        else if (!strcmp(a, "--dir")) { if (!v) goto needs; dir = v; i++; }
        else if (!strcmp(a, "--record")) { if (!v) goto needs; record = v; i++; }
        else if (!strcmp(a, "--theme")) { if (!v) goto needs; theme_name = v; i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!kvs_opt_int(a, v, 0, 256, &threads)) return 2; i++; }
        else if (a[0] != '-' && !lesson) {
            if (!kvs_opt_int("lesson", a, 1, KVS_LESSON_COUNT, &lesson)) { usage(stderr); return 2; }
        } else { kvs_die_msg("lesson: unknown option '%s'", a); usage(stderr); return 2; }
        continue;
    needs:
        kvs_die_msg("option %s needs a value", a);
        return 2;
    }
    if (!lesson) { kvs_die_msg("lesson: give a lesson number (kvscope lesson list shows them)"); usage(stderr); return 2; }
    if (batch != (record != NULL)) { kvs_die_msg("lesson: --batch and --record DIR go together (they write the lesson's traces)"); return 2; }
    if (record && !is_dir(record)) { kvs_die_msg("option --record: '%s' is not a directory", record); return 2; }
    if (dir && (live || record)) { kvs_die_msg("lesson: --dir plays traces; it does not go with --live or --record"); return 2; }
    if ((model_path || threads) && !live && !record) { kvs_die_msg("lesson: -m and -t are for --live and --record"); return 2; }
    bool tui = !batch;
    if (tui && !(isatty(STDOUT_FILENO) && isatty(STDIN_FILENO))) {
        kvs_die_msg("lesson: needs a terminal (or --batch --record DIR to write its traces)");
        return 2;
    }
    struct kvs_config cfg;
    char cfg_path[1024], err[1024];
    if (!kvs_opt_ui_config(&cfg, tui, theme_name, no_mouse, cfg_path, sizeof cfg_path)) return 2;
    int n = (int)lesson;
    struct kvs_lesson_state ls;
    kvs_lesson_init(&ls, n);
    struct kvs_ui_opts o;
    memset(&o, 0, sizeof o);
    o.theme = cfg.theme;
    o.no_mouse = !cfg.mouse;
    o.sim_kind = cfg.sim_kind;
    o.lesson = &ls;
    o.title = kvs_lesson_title(n);
    snprintf(o.settings.method, sizeof o.settings.method, "%s", plan[n - 1].r[0].method);
    o.settings.cr = plan[n - 1].r[0].cr;
    int rc = 1;
    if (!live && !record) {
        struct chain c;
        memset(&c, 0, sizeof c);
        c.dir = dir ? dir : lessons_dir();
        c.lesson = n;
        c.n = plan[n - 1].n;
        if (!chain_check(c.dir, n, c.n)) return 1;
        struct kvs_ui_source src = {.ctx = &c, .poll = chain_poll, .busy = chain_busy, .set_playing = chain_set_playing,
                                    .playing = chain_playing, .set_speed = chain_set_speed, .speed = chain_speed,
                                    .position = chain_position};
        rc = kvs_ui_run(&src, &o, err, sizeof err);
        if (rc) kvs_die_msg("%s", err);
        else if (c.err[0]) kvs_die_msg("%s", c.err);
        kvs_record_unref(c.pending);
        if (c.t) kvs_trace_close(c.t);
        return rc;
    }
    if (!model_path) model_path = kvs_default_model();
    struct live l;
    memset(&l, 0, sizeof l);
    l.runs = plan[n - 1].r;
    l.n = plan[n - 1].n;
    l.lesson = n;
    l.n_threads = (int)threads;
    l.lossless = batch;
    char *doc = default_doc();
    if (!doc) return 1;
    l.doc = doc;
    struct kvs_model *model = NULL;
    if (kvs_model_load(&model, model_path, err, sizeof err) != KVS_OK) {
        kvs_die_msg("%s", err);
        free(doc);
        return 1;
    }
    l.model = model;
    if (!(l.q = kvs_queue_new(4096))) { kvs_die_msg("out of memory"); goto done; }
    if (record) {
        rc = record_lesson(&l, record, model_path);
    } else {
        if (!live_start_next(&l)) { kvs_die_msg("lesson %d: %s", n, l.err); goto done; }
        struct kvs_ui_source src = {.ctx = &l, .poll = live_poll, .busy = live_busy, .restart = live_restart};
        rc = kvs_ui_run(&src, &o, err, sizeof err);
        if (rc) kvs_die_msg("%s", err);
    }
done:
    if (l.sess) kvs_session_stop(l.sess);
    if (l.q) {
        struct kvs_record *r;
        while ((r = kvs_queue_pop(l.q, 0)) != NULL) kvs_record_unref(r);
        kvs_queue_delete(l.q);
    }
    kvs_model_delete(model);
    free(doc);
    return rc;
}
