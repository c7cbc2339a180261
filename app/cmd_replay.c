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
    uint64_t ref_wall, ref_rec;   /* pacing: wall clock and record time at the last (re)start */
    bool ref_set;
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

static struct kvs_record *pl_poll(void *ctx)
{
    struct player *p = ctx;
    struct kvs_record *r = pl_peek(p);
    if (!r) { p->playing = false; return NULL; }
    if (r->type == KVS_REC_STEP) {
        if (p->ff && p->delivered <= p->target) {
            /* seeking: no pacing */
        } else {
            p->ff = false;
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
    } else if (r->type == KVS_REC_RUN) {
        pl_rebase(p); /* step times restart with every run */
    }
    p->peek = NULL;
    return r;
}

static bool pl_busy(void *ctx)
{
    struct player *p = ctx;
    return (p->playing || p->ff) && !p->eof;
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
        else if (a[0] == '-' && a[1]) { kvs_die_msg("replay: unknown option '%s'", a); usage(stderr); return 2; }
        else if (!file) file = a;
        else { kvs_die_msg("replay: one trace file at a time ('%s' and '%s')", file, a); return 2; }
    }
    if (!file) { kvs_die_msg("replay: no trace file"); usage(stderr); return 2; }
    bool tui = !batch && isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
    struct kvs_config cfg;
    kvs_config_defaults(&cfg);
    char cfg_path[1024], err[512];
    bool have_cfg_path = kvs_config_path(cfg_path, sizeof cfg_path);
    if (tui && have_cfg_path && !kvs_config_load(&cfg, cfg_path, err, sizeof err)) { kvs_die_msg("config: %s", err); return 2; }
    if (theme_name) {
        int t = kvs_theme_parse(theme_name);
        if (t < 0) { kvs_die_msg("option --theme: '%s' is not default, mono or projector", theme_name); return 2; }
        cfg.theme = t;
    }
    if (no_mouse) cfg.mouse = false;
    struct replay_reader rd;
    memset(&rd, 0, sizeof rd);
    if (!open_reader(file, &rd, err, sizeof err)) { kvs_die_msg("%s", err); return 1; }
    int rc;
    if (!tui) {
        rc = kvs_batch_print(stdout, batch_next, &rd, false);
    } else {
        struct player p;
        memset(&p, 0, sizeof p);
        p.rd = rd;
        p.playing = !paused;
        p.speed = speed;
        struct kvs_ui_source src = {.ctx = &p, .poll = pl_poll, .busy = pl_busy, .set_playing = pl_set_playing,
                                    .playing = pl_playing, .set_speed = pl_set_speed, .speed = pl_speed,
                                    .position = pl_position, .seek = pl_seek};
        struct kvs_ui_opts o;
        memset(&o, 0, sizeof o);
        o.theme = cfg.theme;
        o.no_mouse = !cfg.mouse;
        o.sim_kind = cfg.sim_kind;
        o.config_path = have_cfg_path ? cfg_path : NULL;
        const char *base = strrchr(file, '/');
        o.title = base ? base + 1 : file;
        rc = kvs_ui_run(&src, &o, err, sizeof err);
        if (rc) kvs_die_msg("%s", err);
        kvs_record_unref(p.peek);
    }
    rd.close(rd.ctx);
    return rc;
}

/* ---- the trace reader behind the vtable ---- */
#if __has_include("trace.h") && defined(KVS_REPLAY_TRACE_ADAPTER)
#include "trace.h"
#else
static bool open_reader(const char *file, struct replay_reader *rd, char *err, size_t errlen)
{
    (void)rd;
    snprintf(err, errlen, "replay %s: this build has no trace reader (traces/trace.h has not landed)", file);
    return false;
}
#endif
