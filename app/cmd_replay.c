/* `kvscope replay FILE`: a recorded trace played into the same views as a live run, with a
 * scrubber (play/pause, step, seek to a step or token, speed 0.25x-16x, start/end), or printed as
 * the same JSON lines as `run --batch` with --batch. The player paces STEP records by their
 * recorded times; seeking backwards restarts from the run that holds the target step (the reader
 * positions there), so the views rebuild their history from records only.
 * Depends on app/ui.h, app/batch.h and the trace reader (traces/trace.h) through a small vtable. */
#include "batch.h"
#include "commands.h"
#include "config.h"
#include "options.h"
#include "theme.h"
#include "trace.h"
#include "ui.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What the player needs from a trace reader. */
struct replay_reader {
    void *ctx;
    /* Next record in file order (caller owns it), NULL at the end. */
    struct kvs_record *(*next)(void *ctx);
    /* Positions the reader so next() returns the RUN record of the run holding global step STEP,
     * and sets *FIRST to the global index of the first STEP record next() will return. */
    bool (*seek)(void *ctx, uint64_t step, uint64_t *first, char *err, size_t errlen);
    uint64_t (*n_steps)(void *ctx);
    /* What the reader could not read: NULL when all was well. A read error mid-file ends next();
     * with LOG_ERRORS set next() first returns it as a LOG record (level 2) so the UI shows it. */
    const char *(*error)(void *ctx);
    /* A truncated trace: what was recovered and where the tail was lost; NULL for a clean one. */
    const char *(*note)(void *ctx);
    void (*log_errors)(void *ctx, bool on);
    /* The global step where each run starts (built by one pass over the file, which leaves the
     * reader rewound); returns how many. Call before playing. */
    size_t (*runs)(void *ctx, const uint64_t **first);
    /* Each step's end time relative to its run's start (ns), by global step, from the same pass as
     * runs(); returns how many (the array stays owned by the reader). */
    size_t (*times)(void *ctx, const uint64_t **t_end);
    void (*close)(void *ctx);
};

struct player {
    struct replay_reader rd;
    struct kvs_record *peek;      /* next record, not yet delivered */
    bool eof;
    bool playing;
    double speed;
    uint64_t delivered;           /* STEP records delivered so far (global) */
    uint64_t target;              /* deliver without pacing while delivered <= target */
    bool ff;                      /* fast-forwarding to target */
    uint64_t run_decoded;         /* decode steps delivered in the current run */
    uint64_t tok_target;          /* deliver without pacing while run_decoded <= tok_target */
    bool ff_tok;                  /* fast-forwarding to a decoded token of the current run */
    uint64_t runs;                /* RUN records delivered */
    uint64_t ref_wall, ref_rec;   /* pacing: wall clock and record time at the last (re)start */
    bool ref_set;
    const uint64_t *run_first;    /* global first step of each run (owned by the reader) */
    size_t n_runs;
};

static struct kvs_record *pl_peek(struct player *p)
{
    if (!p->peek && !p->eof) {
        p->peek = p->rd.next(p->rd.ctx);
        if (!p->peek) p->eof = true;
    }
    return p->peek;
}

static void pl_rebase(struct player *p) { p->ref_set = false; }

/* True while a seek still has records to deliver without pacing. */
static bool pl_seeking(const struct player *p)
{
    return (p->ff && p->delivered <= p->target) || (p->ff_tok && p->run_decoded <= p->tok_target);
}

static struct kvs_record *pl_poll(void *ctx)
{
    struct player *p = ctx;
    struct kvs_record *r = pl_peek(p);
    if (!r) { p->playing = false; p->ff = p->ff_tok = false; return NULL; }
    bool seeking = pl_seeking(p);
    if (r->type == KVS_REC_STEP) {
        if (!seeking) {
            p->ff = p->ff_tok = false;
            if (!p->playing) return NULL;
            uint64_t now = kvs_now_ns();
            if (!p->ref_set) {
                p->ref_wall = now;
                p->ref_rec = r->u.step.t_end_ns;
                p->ref_set = true;
            }
            uint64_t rec = r->u.step.t_end_ns > p->ref_rec ? r->u.step.t_end_ns - p->ref_rec : 0;
            if ((double)(now - p->ref_wall) * p->speed < (double)rec) return NULL;
        }
        p->delivered++;
        if (r->u.step.kind == KVS_STEP_DECODE) p->run_decoded++;
    } else if (r->type == KVS_REC_RUN) {
        if (p->ff_tok && !(p->ff && p->delivered <= p->target)) {
            /* the token is not in this run: stop at its end rather than show the next one */
            p->ff_tok = false;
            seeking = false;
        }
        /* a paused player stays in its run: the next run's RUN record would clear the views */
        if (!seeking && !p->playing && p->runs > 0) return NULL;
        p->runs++;
        p->run_decoded = 0;
        pl_rebase(p); /* step times restart with every run */
    }
    p->peek = NULL;
    return r;
}

static bool pl_busy(void *ctx)
{
    struct player *p = ctx;
    return (p->playing || pl_seeking(p)) && !p->eof;
}

static void pl_set_playing(void *ctx, bool on)
{
    struct player *p = ctx;
    if (on && p->eof) return;
    p->playing = on;
    pl_rebase(p);
}

static bool pl_playing(void *ctx) { return ((struct player *)ctx)->playing; }

static void pl_set_speed(void *ctx, double s)
{
    struct player *p = ctx;
    p->speed = s < 0.25 ? 0.25 : s > 16 ? 16 : s;
    pl_rebase(p);
}

static double pl_speed(void *ctx) { return ((struct player *)ctx)->speed; }

static void pl_position(void *ctx, uint64_t *n, uint64_t *delivered)
{
    struct player *p = ctx;
    *n = p->rd.n_steps(p->rd.ctx);
    *delivered = p->delivered;
}

static bool pl_seek(void *ctx, uint64_t step, char *err, size_t errlen)
{
    struct player *p = ctx;
    uint64_t n = p->rd.n_steps(p->rd.ctx);
    if (n && step >= n) step = n - 1;
    if (step + 1 <= p->delivered) {
        /* backwards: start over from the run that holds STEP */
        uint64_t first = 0;
        if (!p->rd.seek(p->rd.ctx, step, &first, err, errlen)) return false;
        kvs_record_unref(p->peek);
        p->peek = NULL;
        p->eof = false;
        p->delivered = first;
    }
    p->target = step;
    p->ff = true;
    p->ff_tok = false;
    pl_rebase(p);
    return true;
}

static size_t pl_runs(void *ctx, const uint64_t **first)
{
    struct player *p = ctx;
    *first = p->run_first;
    return p->n_runs;
}

static size_t pl_times(void *ctx, const uint64_t **t_end)
{
    struct player *p = ctx;
    return p->rd.times(p->rd.ctx, t_end);
}

static bool pl_seek_token(void *ctx, uint64_t token, char *err, size_t errlen)
{
    struct player *p = ctx;
    if (token < p->run_decoded) {
        snprintf(err, errlen, "token %llu was already shown", (unsigned long long)token);
        return false;
    }
    p->tok_target = token;
    p->ff_tok = true;
    p->ff = false;
    pl_rebase(p);
    return true;
}

static struct kvs_record *batch_next(void *ctx)
{
    struct replay_reader *rd = ctx;
    return rd->next(rd->ctx);
}

/* Opens FILE with the trace reader. Returns false with a message when it cannot. */
static bool open_reader(const char *file, struct replay_reader *rd, char *err, size_t errlen);

static void usage(FILE *f)
{
    fputs("usage: kvscope replay FILE.kvt [--batch] [--speed X] [--paused] [--theme default|mono|projector] [--no-mouse]\n", f);
}

int kvs_cmd_replay(int argc, char **argv)
{
    const char *file = NULL, *theme_name = NULL;
    bool batch = false, no_mouse = false, paused = false;
    double speed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--batch")) batch = true;
        else if (!strcmp(a, "--no-mouse")) no_mouse = true;
        else if (!strcmp(a, "--paused")) paused = true;
        else if (!strcmp(a, "--speed")) { if (!kvs_opt_float(a, v, 0.25, 16, &speed)) return 2; i++; }
        else if (!strcmp(a, "--theme")) { if (!v) { kvs_die_msg("option --theme needs a value"); return 2; } theme_name = v; i++; }
        else if (a[0] == '-' && a[1]) { kvs_die_msg("replay: unknown option '%s'", a); return 2; }
        else if (!file) file = a;
        else { kvs_die_msg("replay: one trace file at a time ('%s' and '%s')", file, a); return 2; }
    }
    if (!file) { kvs_die_msg("replay: no trace file"); return 2; }
    bool tui = !batch && isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
    struct kvs_config cfg;
    char cfg_path[1024], err[1024];
    if (!kvs_opt_ui_config(&cfg, tui, theme_name, no_mouse, cfg_path, sizeof cfg_path)) return 2;
    bool have_cfg_path = cfg_path[0] != 0;
    struct replay_reader rd;
    memset(&rd, 0, sizeof rd);
    if (!open_reader(file, &rd, err, sizeof err)) { kvs_die_msg("replay: %s", err); return 1; }
    const char *note = rd.note(rd.ctx);
    int rc;
    if (!tui) {
        rc = kvs_batch_print(stdout, batch_next, &rd, false);
        /* one line on stderr: the error, or else the recovery note */
        if (rd.error(rd.ctx)) {
            kvs_die_msg("replay: %s", rd.error(rd.ctx));
            rc = 1;
        } else if (note) {
            kvs_die_msg("replay: %s: %s", file, note);
        }
    } else {
        rd.log_errors(rd.ctx, true);
        struct player p;
        memset(&p, 0, sizeof p);
        p.rd = rd;
        p.playing = !paused;
        p.speed = speed;
        /* index the runs once, before playing, so the scrubber can mark them */
        p.n_runs = rd.runs(rd.ctx, &p.run_first);
        struct kvs_ui_source src = {.ctx = &p, .poll = pl_poll, .busy = pl_busy, .set_playing = pl_set_playing,
                                    .playing = pl_playing, .set_speed = pl_set_speed, .speed = pl_speed,
                                    .position = pl_position, .seek = pl_seek,
                                    .seek_token = pl_seek_token, .runs = pl_runs, .times = pl_times};
        struct kvs_ui_opts o;
        memset(&o, 0, sizeof o);
        o.theme = cfg.theme;
        o.no_mouse = !cfg.mouse;
        o.sim_kind = cfg.sim_kind;
        o.config_path = have_cfg_path ? cfg_path : NULL;
        const char *base = strrchr(file, '/');
        char title[256];
        snprintf(title, sizeof title, "%s%s", base ? base + 1 : file, note ? " (recovered prefix)" : "");
        o.title = title;
        o.note = note;
        rc = kvs_ui_run(&src, &o, err, sizeof err);
        if (rc) kvs_die_msg("%s", err);
        else if (rd.error(rd.ctx)) kvs_die_msg("replay: %s", rd.error(rd.ctx));
        kvs_record_unref(p.peek);
    }
    rd.close(rd.ctx);
    return rc;
}

/* ---- the trace reader behind the vtable ---- */

struct trace_rd {
    struct kvs_trace *t;
    /* global index of the first STEP of each run, in file order (built at the first seek) */
    uint64_t *run_first;
    size_t n_runs;
    uint64_t *t_end;        /* (n_t) each step's run-relative end time, by global step */
    size_t n_t;
    bool indexed;
    /* after a seek: skip to the WANT_NTH RUN record (1-based) among those whose step is WANT_STEP */
    bool want;
    uint64_t want_step;
    size_t want_nth, seen;
    bool log_errors, failed, error_logged;
    char err[600];
};

static struct kvs_record *tr_error_record(struct trace_rd *d)
{
    if (!d->log_errors || d->error_logged) return NULL;
    d->error_logged = true;
    struct kvs_record *r = kvs_record_new(KVS_REC_LOG, 0);
    if (!r) return NULL;
    r->u.log.level = 2;
    snprintf(r->u.log.text, sizeof r->u.log.text, "trace: %.150s", d->err);
    return r;
}

static struct kvs_record *tr_next(void *ctx)
{
    struct trace_rd *d = ctx;
    if (d->failed) return tr_error_record(d);
    for (;;) {
        struct kvs_record *r;
        struct kvs_trace_where w;
        if (kvs_trace_next(d->t, &r, &w) != KVS_OK) {
            d->failed = true;
            snprintf(d->err, sizeof d->err, "%s", kvs_trace_error(d->t));
            return tr_error_record(d);
        }
        if (!r) return NULL;
        /* keyframe state repeats earlier records; the player replays whole runs instead, so the
         * views get exactly the records the live run gave them */
        if (w.keyframe) { kvs_record_unref(r); continue; }
        if (d->want) {
            if (r->type == KVS_REC_RUN && w.step == d->want_step && ++d->seen == d->want_nth) {
                d->want = false;
            } else {
                kvs_record_unref(r);
                continue;
            }
        }
        return r;
    }
}

/* One pass over the trace noting where each run starts (its RUN record's step) and when each step
 * ended (the scrubber's time axis). A read error ends the pass: later runs cannot be played anyway. */
static bool tr_index(struct trace_rd *d, char *err, size_t errlen)
{
    size_t cap = 0, cap_t = 0;
    d->n_runs = d->n_t = 0;
    kvs_trace_rewind(d->t);
    struct kvs_record *r;
    struct kvs_trace_where w;
    while (kvs_trace_next(d->t, &r, &w) == KVS_OK && r) {
        bool run = r->type == KVS_REC_RUN && !w.keyframe;
        if (r->type == KVS_REC_STEP && !w.keyframe) {
            if (d->n_t == cap_t) {
                size_t nc = cap_t ? cap_t * 2 : 1024;
                uint64_t *n = realloc(d->t_end, nc * sizeof *n);
                if (!n) { kvs_record_unref(r); snprintf(err, errlen, "out of memory"); return false; }
                d->t_end = n;
                cap_t = nc;
            }
            d->t_end[d->n_t++] = r->u.step.t_end_ns;
        }
        kvs_record_unref(r);
        if (!run) continue;
        if (d->n_runs == cap) {
            size_t nc = cap ? cap * 2 : 16;
            uint64_t *n = realloc(d->run_first, nc * sizeof *n);
            if (!n) { snprintf(err, errlen, "out of memory"); return false; }
            d->run_first = n;
            cap = nc;
        }
        d->run_first[d->n_runs++] = w.step;
    }
    d->indexed = true;
    return true;
}

static bool tr_seek(void *ctx, uint64_t step, uint64_t *first, char *err, size_t errlen)
{
    struct trace_rd *d = ctx;
    if (!d->indexed && !tr_index(d, err, errlen)) return false;
    d->failed = d->error_logged = false;
    d->want = false;
    /* the last run starting at or before STEP (runs without steps share their successor's start) */
    size_t k = 0;
    while (k < d->n_runs && d->run_first[k] <= step) k++;
    if (k == 0) {
        kvs_trace_rewind(d->t);
        *first = 0;
        return true;
    }
    uint64_t f = d->run_first[k - 1];
    size_t nth = 0;
    for (size_t j = 0; j < k; j++) nth += d->run_first[j] == f;
    /* the keyframe at or before the step before the run: its RUN record comes after it */
    enum kvs_status st = f == 0 ? kvs_trace_rewind(d->t) : kvs_trace_seek_step(d->t, f - 1, NULL);
    if (st != KVS_OK) {
        snprintf(err, errlen, "%s", kvs_trace_error(d->t));
        return false;
    }
    d->want = true;
    d->want_step = f;
    d->want_nth = nth;
    d->seen = 0;
    *first = f;
    return true;
}

static uint64_t tr_n_steps(void *ctx) { return kvs_trace_n_steps(((struct trace_rd *)ctx)->t); }
static const char *tr_error(void *ctx) { struct trace_rd *d = ctx; return d->failed ? d->err : NULL; }
static const char *tr_note(void *ctx) { return kvs_trace_note(((struct trace_rd *)ctx)->t); }
static void tr_log_errors(void *ctx, bool on) { ((struct trace_rd *)ctx)->log_errors = on; }

static size_t tr_runs(void *ctx, const uint64_t **first)
{
    struct trace_rd *d = ctx;
    char err[256];
    if (!d->indexed) {
        /* a failed pass leaves what it found; playback starts from the top either way */
        tr_index(d, err, sizeof err);
        d->indexed = true;
        kvs_trace_rewind(d->t);
    }
    *first = d->run_first;
    return d->n_runs;
}

static size_t tr_times(void *ctx, const uint64_t **t_end)
{
    struct trace_rd *d = ctx;
    const uint64_t *first;
    tr_runs(ctx, &first); /* the same pass */
    *t_end = d->t_end;
    return d->n_t;
}

static void tr_close(void *ctx)
{
    struct trace_rd *d = ctx;
    kvs_trace_close(d->t);
    free(d->t_end);
    free(d->run_first);
    free(d);
}

static bool open_reader(const char *file, struct replay_reader *rd, char *err, size_t errlen)
{
    struct trace_rd *d = calloc(1, sizeof *d);
    if (!d) { snprintf(err, errlen, "out of memory"); return false; }
    if (kvs_trace_open(&d->t, file, 0, err, errlen) != KVS_OK) {
        free(d);
        return false;
    }
    /* a trace that holds nothing (cut inside its first chunk) has nothing to show */
    struct kvs_record *r;
    enum kvs_status st = kvs_trace_next(d->t, &r, NULL);
    if (st != KVS_OK || !r) {
        const char *note = kvs_trace_note(d->t);
        if (st != KVS_OK) snprintf(err, errlen, "%s", kvs_trace_error(d->t));
        else snprintf(err, errlen, "%s: no records to replay%s%s", file, note ? ": " : "", note ? note : "");
        kvs_trace_close(d->t);
        free(d);
        return false;
    }
    kvs_record_unref(r);
    kvs_trace_rewind(d->t);
    *rd = (struct replay_reader){.ctx = d, .next = tr_next, .seek = tr_seek, .n_steps = tr_n_steps, .error = tr_error,
                                 .note = tr_note, .log_errors = tr_log_errors, .runs = tr_runs, .times = tr_times, .close = tr_close};
    return true;
}
