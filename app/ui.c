/* The terminal UI main loop (see ui.h). One thread: drain the source, apply settings after a short
 * debounce, draw when something changed, then wait in getch for at most the rest of the frame.
 * Signal handlers only set flags; every exit path goes through kvs_crt_end before any message.
 * Depends on views/ (curses through them), app/config.h and engine/core/record.h. */
#include "ui.h"

#include "backend.h"
#include "crt.h"
#include "frame.h"
#include "history.h"
#include "settings.h"
#include "theme.h"
#include "view.h"

#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define FRAME_BUSY_MS 50    /* 20 frames/s while records arrive */
#define FRAME_IDLE_MS 500   /* idle: a wake-up twice a second, nothing drawn unless needed */
#define DRAIN_BUDGET_NS 15000000ull
#define APPLY_DELAY_NS 600000000ull

static volatile sig_atomic_t g_quit, g_resize;

static void on_quit(int sig) { g_quit = sig; }
static void on_winch(int sig) { (void)sig; g_resize = 1; }

static const char *methods[] = {"full", "commonkv", "lowrank", "minicache", "quant", "snapkv", "streaming",
                                "commonkv+quant", "commonkv+quant+snapkv"};
#define N_METHODS ((int)(sizeof methods / sizeof methods[0]))

static const struct kvs_help_line help_live[] = {
    {"q Q F10", "quit (from any state, also from this help; in a search only F10)"},
    {"? h F1", "this help; Esc, ?, h or F1 closes it"},
    {"Esc", "close the help or the search prompt, leave zoom"},
    {"/", "search the tokens (next match), or a layer: L12 or 12"},
    {"+ - = _", "raise / lower the target CR by 0.05 (= and _ too)"},
    {"m M", "next / previous method"},
    {"g G", "smaller / larger CommonKV group"},
    {"r R", "lower / raise the rank ratio (0: from CR)"},
    {"s S", "fewer / more attention sinks"},
    {"w W", "smaller / larger recent window"},
    {"c", "quality against full on / off"},
    {"F2", "settings screen: Up/Down pick, Left/Right change, Enter types a value, Esc or F2 closes"},
    {"Enter", "apply changed settings now (else after 0.6 s)"},
    {"e", "run again with the same settings"},
    {"Space p", "pause / follow the newest step"},
    {"Left Right", "one step back / forward (pauses)"},
    {"[ ] S-Left S-Right", "ten steps back / forward"},
    {"Home End", "first step / newest step"},
    {"b", "pin this result as A (compare A/B)"},
    {"f", "run the full cache once and pin it as A"},
    {"B", "clear the pin"},
    {"v", "similarity source: hidden / keys / latent"},
    {"Tab BTab 1-6", "focus a panel"},
    {"z", "zoom the focused panel (Esc: back to the grid)"},
    {"Up Down PgUp PgDn", "scroll the focused panel (Similarity: move the cell cursor)"},
    {"t", "theme: default / mono / projector"},
    {"x", "mouse on / off"},
    {"o", "save settings to the config file"},
    {"mouse", "click focuses, double-click zooms, wheel scrolls"},
};
static const struct kvs_help_line help_replay[] = {
    {"q Q F10", "quit (from any state, also from this help; in a search only F10)"},
    {"? h F1", "this help; Esc, ?, h or F1 closes it"},
    {"Esc", "close the help or the seek prompt, leave zoom"},
    {"/", "search the tokens (next match), or a layer: L12 or 12"},
    {"Space p", "play / pause"},
    {"Left Right", "one step back / forward"},
    {"[ ] S-Left S-Right", "ten steps back / forward"},
    {"< > , .", "slower / faster (0.25x to 16x)"},
    {"Home End", "start / end of the trace"},
    {"{ }", "start of the previous / next run (marked on the scrubber)"},
    {":", "seek: type a step number, t and a token number, or seconds into this run (12.5s), Enter"},
    {"( )", "mark the loop range: in / out at the step shown (marked [ ] on the scrubber)"},
    {"l", "loop play over the marked range on / off"},
    {"b", "pin this result as A (compare A/B)"},
    {"B", "clear the pin"},
    {"F2", "settings screen: the trace's run settings (read-only) and the theme; Esc or F2 closes"},
    {"v", "similarity source: hidden / keys / latent"},
    {"Tab BTab 1-6", "focus a panel"},
    {"z", "zoom the focused panel (Esc: back to the grid)"},
    {"Up Down PgUp PgDn", "scroll the focused panel (Similarity: move the cell cursor)"},
    {"t", "theme: default / mono / projector"},
    {"x", "mouse on / off"},
    {"o", "save theme and view to the config file"},
    {"mouse", "click focuses or seeks, double-click zooms, wheel scrolls"},
};

static const struct kvs_help_line help_lesson[] = {
    {"q", "quit (from any state)"},
    {"? F1", "this help (Esc or ? closes)"},
    {"F2", "settings screen: the run's settings (read-only) and the theme"},
    {"Space Enter Right", "next step of the lesson"},
    {"Left", "previous step"},
    {"v", "similarity: hidden / keys / latent"},
    {"Tab BTab 1-6", "focus a panel"},
    {"z", "zoom the focused panel"},
    {"Up Down PgUp PgDn", "scroll the focused panel"},
    {"t", "theme: default / mono / projector"},
    {"x", "mouse on / off"},
};

struct ui {
    struct kvs_ui_source *src;
    const struct kvs_ui_opts *o;
    bool replay;
    struct kvs_history h;
    struct kvs_hist_pin pin;
    struct kvs_theme theme;
    int theme_id;
    bool mouse;
    struct kvs_view_ctx v;
    struct kvs_panel_state st[KVS_PANEL_COUNT];
    struct kvs_layout lay;
    int focus, zoom;
    bool help;
    int help_scroll;
    int help_scroll_max;    /* from the last frame drawn */
    bool paused;            /* live: the cursor stays where it is */
    uint64_t cursor;
    struct kvs_ui_settings cur, want;
    bool pending;
    uint64_t pending_since;
    char msg[256];
    enum kvs_role msg_role;
    uint64_t msg_until;
    char progress[200];
    bool progress_on;
    unsigned spin;
    bool prompt;            /* ':' seek prompt or '/' search prompt */
    bool search;            /* the prompt is the '/' search */
    char prompt_buf[48];
    int ref_state;          /* 1: running full for a pin, then restore */
    struct kvs_ui_settings ref_restore;
    bool dirty;
    /* live: a new run's records held back until its first step, so the previous run stays on
     * screen (dimmed, labelled) through calibration and factorization */
    struct kvs_record *held[256];
    int n_held;
    bool releasing;
    bool restarting;        /* settings applied; the new run has no step yet */
    char held_method[KVS_REC_NAME_MAX];
    /* replay: a marked range (global steps) that playback loops over with l */
    uint64_t loop_in, loop_out;
    bool has_in, has_out, loop;
    bool loop_armed;        /* playback has reached the range since the last restart */
    /* the settings screen (F2): cursor row, and the value being typed (Enter on a number) */
    bool settings;
    int set_row;
    bool set_edit;
    char set_buf[24];
};

static void say(struct ui *u, enum kvs_role role, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(struct ui *u, enum kvs_role role, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->msg, sizeof u->msg, fmt, ap);
    va_end(ap);
    u->msg_role = role;
    u->msg_until = kvs_now_ns() + 4000000000ull;
    u->dirty = true;
}

static void setup_theme(struct ui *u)
{
    kvs_theme_setup(&u->theme, u->theme_id, has_colors(), COLORS, kvs_crt_utf8());
    u->v.t = &u->theme;
}

static void settings_text(const struct kvs_ui_settings *s, char *buf, size_t n)
{
    char cr[16], rr[16];
    if (s->cr < 0) snprintf(cr, sizeof cr, "none");
    else snprintf(cr, sizeof cr, "%.2f", (double)s->cr);
    if (s->rank_ratio > 0) snprintf(rr, sizeof rr, "%.2f", (double)s->rank_ratio);
    else snprintf(rr, sizeof rr, "auto");
    int k = snprintf(buf, n, "%s CR %s G%u r %s s%u w%u%s", s->method, cr, s->group, rr, s->sinks, s->recent,
                     s->compare_full ? " +full" : "");
    /* the settings screen's knobs, only where they differ from the method's own */
    if (k < 0 || (size_t)k >= n) return;
    if (!isnan(s->merge_share)) k += snprintf(buf + k, n - (size_t)k, " ms%.2f", (double)s->merge_share);
    if ((size_t)k < n && !isnan(s->merge_floor)) {
        if (s->merge_floor <= -1) k += snprintf(buf + k, n - (size_t)k, " floor none");
        else k += snprintf(buf + k, n - (size_t)k, " floor %.2f", (double)s->merge_floor);
    }
    if ((size_t)k < n && s->quant_bits) k += snprintf(buf + k, n - (size_t)k, " q%u", s->quant_bits);
    if ((size_t)k < n && s->evict_capacity) k += snprintf(buf + k, n - (size_t)k, " cap %u", s->evict_capacity);
    if ((size_t)k < n && s->threads) snprintf(buf + k, n - (size_t)k, " t%u", s->threads);
}

static void apply(struct ui *u)
{
    char err[256] = "";
    u->pending = false;
    if (!u->src->restart) return;
    /* stopping the engine can take one step: show that it is happening */
    say(u, KVS_C_WARN, "restarting the engine…");
    if (!u->src->restart(u->src->ctx, &u->want, err, sizeof err)) {
        say(u, KVS_C_BAD, "restart failed: %s", err);
        u->want = u->cur;
        return;
    }
    u->cur = u->want;
    u->paused = false;
    u->progress_on = false;
    /* the run on screen stays, dimmed and labelled, until the new one has a step */
    u->restarting = u->h.run != NULL && u->h.n_steps > 0;
    snprintf(u->held_method, sizeof u->held_method, "%s", u->cur.method);
    say(u, KVS_C_GOOD, "running %s", u->cur.method);
}

static void change(struct ui *u)
{
    if (u->replay) { say(u, KVS_C_WARN, "replay: the run's settings are fixed"); return; }
    u->pending = true;
    u->pending_since = kvs_now_ns();
    u->dirty = true;
}

static uint64_t last_step(const struct ui *u) { return u->h.n_steps ? u->h.n_steps - 1 : 0; }

/* Moves the view to step S of the current run (live or replay history). */
static void goto_step(struct ui *u, int64_t s)
{
    if (u->replay && u->src->seek) {
        uint64_t n = 0, delivered = 0;
        u->src->position(u->src->ctx, &n, &delivered);
        if (s < 0) s = 0;
        if (n && (uint64_t)s >= n) s = (int64_t)n - 1;
        /* inside the history: just move the cursor; elsewhere: the source seeks */
        uint64_t first = kvs_history_first(&u->h);
        uint64_t base = delivered - u->h.n_steps; /* steps of earlier runs in the trace */
        if (delivered >= u->h.n_steps && (uint64_t)s >= base + first && (uint64_t)s < delivered) {
            u->cursor = (uint64_t)s - base;
            u->paused = u->cursor != last_step(u);
        } else {
            char err[256];
            u->src->set_playing(u->src->ctx, false);
            if (!u->src->seek(u->src->ctx, (uint64_t)s, err, sizeof err)) say(u, KVS_C_BAD, "seek: %s", err);
            u->paused = false;
        }
        u->dirty = true;
        return;
    }
    if (!u->h.n_steps) return;
    uint64_t first = kvs_history_first(&u->h);
    if (s < (int64_t)first) s = (int64_t)first;
    if ((uint64_t)s > last_step(u)) s = (int64_t)last_step(u);
    u->cursor = (uint64_t)s;
    u->paused = u->cursor != last_step(u);
    if (!u->paused) u->paused = false;
    u->dirty = true;
}

static void step_by(struct ui *u, int64_t d)
{
    if (u->replay) {
        uint64_t n = 0, delivered = 0;
        u->src->position(u->src->ctx, &n, &delivered);
        uint64_t base = delivered >= u->h.n_steps ? delivered - u->h.n_steps : 0;
        /* before the run's first step, one step forward is that first step */
        int64_t cur = u->h.n_steps ? (int64_t)(base + (u->paused ? u->cursor : last_step(u))) : (int64_t)base - 1;
        u->src->set_playing(u->src->ctx, false);
        goto_step(u, cur + d);
        return;
    }
    int64_t cur = (int64_t)(u->paused ? u->cursor : last_step(u));
    u->paused = true;
    goto_step(u, cur + d);
    if (d > 0 && u->cursor == last_step(u)) u->paused = true; /* stays paused at the newest step */
}

static void pin_now(struct ui *u)
{
    if (!u->h.run) { say(u, KVS_C_WARN, "nothing to pin yet"); return; }
    kvs_history_pin(&u->h, u->paused ? u->cursor : last_step(u), &u->pin);
    say(u, KVS_C_GOOD, "pinned %s as A; change settings to compare B against it", u->h.run->u.run.method);
}

static void on_record(struct ui *u, struct kvs_record *r);

/* Hands the held records of the new run to the history, in order. */
static void release_held(struct ui *u)
{
    int n = u->n_held;
    u->n_held = 0;
    u->releasing = true;
    for (int i = 0; i < n; i++) on_record(u, u->held[i]);
    u->releasing = false;
}

/* Handles one record before the history takes it (progress, messages, the full-reference pin). */
static void on_record(struct ui *u, struct kvs_record *r)
{
    if (!u->replay && !u->releasing) {
        if (r->type == KVS_REC_STEP || r->type == KVS_REC_END) u->restarting = false;
        bool start = r->type == KVS_REC_RUN && u->h.run && u->h.n_steps > 0 && !u->n_held;
        if (u->n_held && (r->type == KVS_REC_STEP || r->type == KVS_REC_END || r->type == KVS_REC_RUN ||
                          u->n_held == (int)KVS_ARRAY_LEN(u->held))) {
            release_held(u);
        } else if (start || u->n_held) {
            if (start) {
                snprintf(u->held_method, sizeof u->held_method, "%s", r->u.run.method);
                u->restarting = true;
                u->progress_on = false;
            }
            if (r->type == KVS_REC_LOG && r->u.log.level == 0) {
                snprintf(u->progress, sizeof u->progress, "%s", r->u.log.text);
                u->progress_on = true;
            }
            u->held[u->n_held++] = r;
            u->dirty = true;
            return;
        }
    }
    if (r->type == KVS_REC_LOG) {
        const struct kvs_rec_log *l = &r->u.log;
        /* a replayed log line comes from a file: its control bytes are shown, never sent */
        size_t len = strnlen(l->text, sizeof l->text);
        char text[sizeof l->text * 4];
        kvs_escape(text, sizeof text, l->text, len);
        if (l->level == 0) {
            kvs_escape(u->progress, sizeof u->progress, l->text, len);
            u->progress_on = true;
        } else {
            say(u, l->level >= 2 ? KVS_C_BAD : KVS_C_WARN, "%s", text);
            if (l->level >= 2) u->msg_until = kvs_now_ns() + 30000000000ull;
        }
    } else if (r->type == KVS_REC_STEP) {
        u->progress_on = false;
    } else if (r->type == KVS_REC_RUN) {
        u->progress_on = false;
        u->cursor = 0;
        if (!u->replay) u->paused = false;
    }
    if (u->o->lesson) kvs_lesson_observe(u->o->lesson, r);
    /* the history takes our reference and may release R at once (records it does not keep) */
    bool is_end = r->type == KVS_REC_END;
    kvs_history_push(&u->h, r);
    r = NULL;
    if (is_end && u->ref_state == 1 && u->h.run && strcmp(u->h.run->u.run.method, "full") == 0) {
        kvs_history_pin(&u->h, last_step(u), &u->pin);
        u->ref_state = 0;
        u->want = u->ref_restore;
        say(u, KVS_C_GOOD, "full reference pinned as A");
        apply(u);
    }
    u->dirty = true;
}

static void save_config(struct ui *u)
{
    if (!u->o->config_path) { say(u, KVS_C_WARN, "no config path (set HOME or XDG_CONFIG_HOME)"); return; }
    struct kvs_config c;
    kvs_config_defaults(&c);
    char err[512];
    kvs_config_load(&c, u->o->config_path, err, sizeof err); /* keep what replay cannot change */
    if (!u->replay) {
        snprintf(c.method, sizeof c.method, "%s", u->want.method);
        c.cr = u->want.cr;
        c.group = u->want.group;
        c.rank_ratio = u->want.rank_ratio;
        c.sinks = u->want.sinks;
        c.recent = u->want.recent;
        c.compare_full = u->want.compare_full;
    }
    c.theme = u->theme_id;
    c.mouse = u->mouse;
    c.sim_kind = u->v.sim_kind;
    if (kvs_config_save(&c, u->o->config_path, err, sizeof err)) say(u, KVS_C_GOOD, "saved %s", u->o->config_path);
    else say(u, KVS_C_BAD, "cannot save: %s", err);
}

static int method_index(const char *m)
{
    for (int i = 0; i < N_METHODS; i++)
        if (!strcmp(methods[i], m)) return i;
    return -1;
}

/* Replay: the global step shown. */
static uint64_t replay_pos(const struct ui *u)
{
    uint64_t n = 0, d = 0;
    u->src->position(u->src->ctx, &n, &d);
    uint64_t base = d >= u->h.n_steps ? d - u->h.n_steps : 0;
    return base + (u->paused ? u->cursor : last_step(u));
}

/* Replay, looping: the source starts over at the range's first step and plays on. */
static void loop_restart(struct ui *u)
{
    char err[256];
    if (!u->src->seek(u->src->ctx, u->loop_in, err, sizeof err)) {
        say(u, KVS_C_BAD, "loop: %s", err);
        u->loop = false;
        return;
    }
    u->paused = false;
    u->loop_armed = false;
    u->src->set_playing(u->src->ctx, true);
    u->dirty = true;
}

/* Replay, looping: playback reached the range's end. The last step delivered is the playback
 * position (the views follow it while playing); while the restart fast-forwards to the range's
 * start nothing is due. */
static bool loop_due(struct ui *u)
{
    if (!u->replay || !u->loop || !u->src->playing(u->src->ctx)) return false;
    uint64_t n = 0, d = 0;
    u->src->position(u->src->ctx, &n, &d);
    if (!d) return false;
    if (!u->loop_armed) {
        if (d - 1 < u->loop_in) return false;
        u->loop_armed = true;
    }
    return d - 1 >= u->loop_out;
}

/* Replay: the run (index into the source's runs) holding global step POS, and its steps [*lo, *hi). */
static size_t run_of(const struct ui *u, uint64_t pos, uint64_t *lo, uint64_t *hi)
{
    const uint64_t *first = NULL;
    size_t n = u->src->runs ? u->src->runs(u->src->ctx, &first) : 0;
    uint64_t total = 0, d = 0;
    u->src->position(u->src->ctx, &total, &d);
    size_t k = 0;
    while (k + 1 < n && first[k + 1] <= pos) k++;
    *lo = n ? first[k] : 0;
    *hi = k + 1 < n ? first[k + 1] : total;
    return k;
}

/* Replay: ':' with "12.5s": the first step of the current run that ended at or after that many
 * seconds from the run's start (the time axis of the scrubber). */
static void seek_time(struct ui *u, double secs)
{
    const uint64_t *t = NULL;
    size_t nt = u->src->times ? u->src->times(u->src->ctx, &t) : 0;
    if (!nt) { say(u, KVS_C_WARN, "seek: this trace has no step times"); return; }
    uint64_t lo, hi;
    size_t k = run_of(u, replay_pos(u), &lo, &hi);
    if (hi > nt) hi = nt;
    if (lo >= hi) { say(u, KVS_C_WARN, "seek: run %zu has no steps", k + 1); return; }
    uint64_t want = (uint64_t)llround(secs * 1e9), s = lo;
    while (s < hi && t[s] < want) s++;
    if (s == hi) {
        say(u, KVS_C_WARN, "seek: run %zu lasts %.2f s", k + 1, (double)t[hi - 1] / 1e9);
        return;
    }
    goto_step(u, (int64_t)s);
    say(u, KVS_C_GOOD, "%.2f s into run %zu: step %llu", (double)t[s] / 1e9, k + 1, (unsigned long long)s);
}

static void seek_prompt_done(struct ui *u)
{
    const char *p = u->prompt_buf;
    size_t plen = strlen(p);
    if (plen > 1 && p[plen - 1] == 's') {
        char *e;
        double secs = strtod(p, &e);
        u->prompt = false;
        if (e != p + plen - 1 || !(secs >= 0) || !isfinite(secs)) { say(u, KVS_C_WARN, "seek: seconds look like 12.5s"); return; }
        seek_time(u, secs);
        return;
    }
    bool token = *p == 't';
    if (token) p++;
    char *end;
    unsigned long long n = strtoull(p, &end, 10);
    u->prompt = false;
    if (end == p || *end) { say(u, KVS_C_WARN, "seek: type a step number, or t and a token number"); return; }
    if (!token) { goto_step(u, (int64_t)n); return; }
    /* a token number maps to the step that produced it in the current run */
    if (n < u->h.tok.n) {
        uint64_t base = 0;
        if (u->replay) {
            uint64_t total = 0, delivered = 0;
            u->src->position(u->src->ctx, &total, &delivered);
            base = delivered >= u->h.n_steps ? delivered - u->h.n_steps : 0;
        }
        goto_step(u, (int64_t)(base + u->h.tok.step[n]));
    } else if (u->replay && u->src->seek_token) {
        /* not delivered yet: the source fast-forwards through the current run to it */
        char err[256];
        u->src->set_playing(u->src->ctx, false);
        if (!u->src->seek_token(u->src->ctx, n, err, sizeof err)) say(u, KVS_C_BAD, "seek: %s", err);
        u->paused = false;
    } else {
        say(u, KVS_C_WARN, "token %llu not reached yet (%u tokens so far)", n, u->h.tok.n);
    }
}

/* Replay: to the start of the next run (DIR 1), or of this run, or the previous one when already at
 * its start (DIR -1). */
static void seek_run(struct ui *u, int dir)
{
    const uint64_t *first = NULL;
    size_t n = u->src->runs(u->src->ctx, &first);
    if (!n) { say(u, KVS_C_WARN, "no runs indexed in this trace"); return; }
    uint64_t total = 0, d = 0;
    u->src->position(u->src->ctx, &total, &d);
    uint64_t base = d >= u->h.n_steps ? d - u->h.n_steps : 0;
    uint64_t pos = base + (u->paused ? u->cursor : last_step(u));
    size_t k = 0;
    while (k + 1 < n && first[k + 1] <= pos) k++;
    size_t to = k;
    if (dir > 0) {
        if (k + 1 >= n) { say(u, KVS_C_WARN, "already in the last run (%zu of %zu)", k + 1, n); return; }
        to = k + 1;
    } else if (pos == first[k] && k > 0) {
        to = k - 1;
    }
    goto_step(u, (int64_t)first[to]);
    say(u, KVS_C_GOOD, "run %zu of %zu (step %llu)", to + 1, n, (unsigned long long)first[to]);
}

/* '/': a layer ("L12" or "12") puts the similarity cursor on that layer's row and scrolls the
 * Memory panel to it; any other text finds the next decoded token (after the one shown, wrapping)
 * whose text contains it, case-insensitively, and moves to the step that produced it. */
static void search_done(struct ui *u)
{
    const char *q = u->prompt_buf;
    u->prompt = u->search = false;
    if (!*q) return;
    const char *d = q + (*q == 'L' || *q == 'l');
    char *end;
    unsigned long layer = strtoul(d, &end, 10);
    if (end != d && !*end) {
        uint32_t nl = u->h.run ? u->h.run->u.run.n_layer : 0;
        if (layer >= nl) { say(u, KVS_C_WARN, "search: no layer %lu (the model has %u)", layer, nl); return; }
        u->st[KVS_PANEL_SIMILARITY].cur_r = (int)layer;
        u->st[KVS_PANEL_MEMORY].sort = 0;
        u->st[KVS_PANEL_MEMORY].scroll = (int)layer;
        u->focus = KVS_PANEL_SIMILARITY;
        say(u, KVS_C_GOOD, "layer %lu: similarity row and memory row", layer);
        return;
    }
    const struct kvs_hist_tokens *tk = &u->h.tok;
    if (!tk->n) { say(u, KVS_C_WARN, "search: no tokens yet"); return; }
    uint32_t from = u->h.n_steps ? kvs_history_tokens_upto(&u->h, u->paused ? u->cursor : last_step(u)) : 0;
    size_t ql = strlen(q);
    for (uint32_t k = 0; k < tk->n; k++) {
        uint32_t i = (from + k) % tk->n;
        /* the match may start in token i and run into the following ones */
        size_t off = tk->off[i], avail = tk->text_len - off;
        if (avail >= ql && strncasecmp(tk->text + off, q, ql) == 0) goto found;
        uint32_t len;
        const char *piece = kvs_hist_tokens_piece(tk, i, &len);
        for (uint32_t c = 1; c < len; c++)
            if (avail - c >= ql && strncasecmp(piece + c, q, ql) == 0) goto found;
        continue;
    found:;
        uint64_t base = 0;
        if (u->replay) {
            uint64_t total = 0, delivered = 0;
            u->src->position(u->src->ctx, &total, &delivered);
            base = delivered >= u->h.n_steps ? delivered - u->h.n_steps : 0;
        }
        goto_step(u, (int64_t)(base + tk->step[i]));
        if (!u->replay) u->paused = true;
        say(u, KVS_C_GOOD, "'%s' at token %u", q, i);
        return;
    }
    say(u, KVS_C_WARN, "search: '%s' is not in the %u tokens", q, tk->n);
}

/* The lesson's step decides which panel is focused (highlighted) and the similarity source. */
static void lesson_sync(struct ui *u)
{
    struct kvs_lesson_state *ls = u->o->lesson;
    int p = kvs_lesson_panel(ls->lesson, ls->step), k = kvs_lesson_sim_kind(ls->lesson, ls->step);
    if (p >= 0 && p < KVS_PANEL_COUNT) {
        u->focus = p;
        if (u->zoom >= 0) u->zoom = p;
    }
    if (k) u->v.sim_kind = k;
}

/* Lesson keys: Space, Enter and Right advance, Left goes back. Returns true when used. */
static bool lesson_key(struct ui *u, int ch)
{
    struct kvs_lesson_state *ls = u->o->lesson;
    switch (ch) {
    case ' ': case '\n': case '\r': case KEY_ENTER: case KEY_RIGHT: kvs_lesson_next(ls); break;
    case KEY_LEFT: kvs_lesson_prev(ls); break;
    default: return false;
    }
    lesson_sync(u);
    return true;
}

/* ---- the settings screen (F2): live, the knobs the keys change and a few more, applied by a new
 * run like the keys (debounced, Enter at once); replay and lessons show the run's RUN record */

enum set_id { SR_METHOD, SR_CR, SR_RANK, SR_GROUP, SR_SHARE, SR_FLOOR, SR_QBITS, SR_CAP, SR_SINKS, SR_RECENT,
              SR_THREADS, SR_FULL, SR_THEME, SR_COUNT };

static const char *set_labels[SR_COUNT] = {"method", "target CR", "rank ratio", "group size", "merge share",
                                           "merge floor", "quant bits", "eviction capacity", "sinks",
                                           "recent window", "threads", "compare with full", "theme"};

static bool set_live(const struct ui *u) { return !u->replay && !u->o->lesson; }

/* Fills ROWS (SR_COUNT) from the wanted settings (live) or the run on screen (replay, lesson). */
static void settings_rows(const struct ui *u, struct kvs_settings_row *rows)
{
    for (int i = 0; i < SR_COUNT; i++) {
        rows[i].label = set_labels[i];
        rows[i].value[0] = 0;
        rows[i].editable = set_live(u) || i == SR_THEME;
        rows[i].hint = rows[i].editable ? "Left/Right change, Enter types a value" : "replay: the trace's RUN record";
    }
    rows[SR_METHOD].hint = set_live(u) ? "Left/Right: next / previous method" : rows[SR_METHOD].hint;
    rows[SR_FULL].hint = set_live(u) ? "Left/Right or Enter: on / off" : "replay: not in the RUN record";
    rows[SR_THEME].hint = "Left/Right or Enter: default / mono / projector (applies at once)";
#define V(i, ...) snprintf(rows[i].value, sizeof rows[i].value, __VA_ARGS__)
    V(SR_THEME, "%s", kvs_theme_name(u->theme_id));
    if (set_live(u)) {
        const struct kvs_ui_settings *w = &u->want;
        V(SR_METHOD, "%s", w->method);
        if (w->cr < 0) V(SR_CR, "none"); else V(SR_CR, "%.2f", (double)w->cr);
        if (w->rank_ratio > 0) V(SR_RANK, "%.2f", (double)w->rank_ratio); else V(SR_RANK, "auto (from CR)");
        V(SR_GROUP, "%u", w->group);
        if (isnan(w->merge_share)) V(SR_SHARE, "plan's"); else V(SR_SHARE, "%.2f", (double)w->merge_share);
        if (isnan(w->merge_floor)) V(SR_FLOOR, "default");
        else if (w->merge_floor <= -1) V(SR_FLOOR, "none");
        else V(SR_FLOOR, "%.2f", (double)w->merge_floor);
        if (w->quant_bits) V(SR_QBITS, "%u", w->quant_bits); else V(SR_QBITS, "default (4)");
        if (w->evict_capacity) V(SR_CAP, "%u tokens", w->evict_capacity); else V(SR_CAP, "default (1024)");
        V(SR_SINKS, "%u", w->sinks);
        V(SR_RECENT, "%u", w->recent);
        if (w->threads) V(SR_THREADS, "%u", w->threads); else V(SR_THREADS, "one per core");
        V(SR_FULL, "%s", w->compare_full ? "on" : "off");
        return;
    }
    const struct kvs_rec_run *r = u->h.run ? &u->h.run->u.run : NULL;
    if (!r) {
        V(SR_METHOD, "n/a (no run yet)");
        for (int i = SR_CR; i < SR_THEME; i++) V(i, "n/a");
        return;
    }
    V(SR_METHOD, "%s", r->method);
    if (r->target_cr < 0) V(SR_CR, "none"); else V(SR_CR, "%.2f", (double)r->target_cr);
    if (r->rank_ratio > 0) V(SR_RANK, "%.2f", (double)r->rank_ratio); else V(SR_RANK, "auto (g0 rank %u)", r->group_rank[0]);
    if (r->group_size) V(SR_GROUP, "%u", r->group_size); else V(SR_GROUP, "n/a");
    if (isfinite(r->plan_merge_share)) V(SR_SHARE, "%.2f", (double)r->plan_merge_share); else V(SR_SHARE, "n/a");
    if (!isfinite(r->plan_merge_floor)) V(SR_FLOOR, "n/a");
    else if (r->plan_merge_floor <= -1) V(SR_FLOOR, "none");
    else V(SR_FLOOR, "%.2f", (double)r->plan_merge_floor);
    if (r->quant_bits) V(SR_QBITS, "%u", r->quant_bits); else V(SR_QBITS, "n/a");
    if (r->evict_capacity) V(SR_CAP, "%u tokens", r->evict_capacity); else V(SR_CAP, "n/a");
    V(SR_SINKS, "%u", r->sinks);
    V(SR_RECENT, "%u", r->recent);
    V(SR_THREADS, "%u", r->n_threads);
    V(SR_FULL, "n/a");
#undef V
}

static float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

/* Left (DIR -1) or Right (DIR 1) on ROW: one step of that setting. */
static void settings_step(struct ui *u, int row, int dir)
{
    if (row == SR_THEME) {
        u->theme_id = (u->theme_id + (dir > 0 ? 1 : KVS_THEME_COUNT - 1)) % KVS_THEME_COUNT;
        setup_theme(u);
        return;
    }
    if (!set_live(u)) { say(u, KVS_C_WARN, "%s: the run's settings are fixed", u->replay ? "replay" : "lesson"); return; }
    struct kvs_ui_settings *w = &u->want;
    switch (row) {
    case SR_METHOD: {
        int i = method_index(w->method);
        i = dir > 0 ? (i + 1) % N_METHODS : (i <= 0 ? N_METHODS - 1 : i - 1);
        snprintf(w->method, sizeof w->method, "%s", methods[i]);
        break;
    }
    case SR_CR:
        if (w->cr < 0) w->cr = dir > 0 ? 0.05f : w->cr;
        else if (dir < 0 && w->cr < 0.0999f) w->cr = -1;
        else w->cr = clampf(w->cr + 0.05f * (float)dir, 0.05f, 0.98f);
        break;
    case SR_RANK:
        w->rank_ratio = dir > 0 ? (w->rank_ratio <= 0 ? 0.1f : clampf(w->rank_ratio + 0.05f, 0, 1))
                                : (w->rank_ratio - 0.05f < 0.049f ? 0 : w->rank_ratio - 0.05f);
        break;
    case SR_GROUP:
        if (dir > 0 && w->group < 16) w->group++;
        if (dir < 0 && w->group > 1) w->group--;
        break;
    case SR_SHARE:
        if (isnan(w->merge_share)) w->merge_share = dir > 0 ? 0.0f : NAN;
        else if (dir < 0 && w->merge_share < 0.0001f) w->merge_share = NAN;
        else w->merge_share = clampf(w->merge_share + 0.05f * (float)dir, 0, 1);
        break;
    case SR_FLOOR: /* default, none, then -0.95 .. 1 */
        if (isnan(w->merge_floor)) w->merge_floor = dir > 0 ? -1.0f : NAN;
        else if (w->merge_floor <= -1) w->merge_floor = dir > 0 ? -0.95f : NAN;
        else if (dir < 0 && w->merge_floor < -0.9499f) w->merge_floor = -1.0f;
        else w->merge_floor = clampf(w->merge_floor + 0.05f * (float)dir, -1, 1);
        break;
    case SR_QBITS: {
        static const uint32_t bits[4] = {0, 2, 4, 8};
        int i = 0;
        while (i < 4 && bits[i] != w->quant_bits) i++;
        i = (i % 4 + (dir > 0 ? 1 : 3)) % 4;
        w->quant_bits = bits[i];
        break;
    }
    case SR_CAP:
        if (!w->evict_capacity) w->evict_capacity = dir > 0 ? 2048 : 512;
        else if (dir > 0) w->evict_capacity = w->evict_capacity < (1u << 20) ? w->evict_capacity * 2 : w->evict_capacity;
        else w->evict_capacity = w->evict_capacity > 16 ? w->evict_capacity / 2 : 16;
        break;
    case SR_SINKS:
        if (dir > 0) w->sinks = w->sinks >= 8 ? (w->sinks < 1024 ? w->sinks * 2 : w->sinks) : w->sinks + 1;
        else w->sinks = w->sinks > 8 ? w->sinks / 2 : w->sinks ? w->sinks - 1 : 0;
        break;
    case SR_RECENT:
        if (dir > 0) w->recent = w->recent ? (w->recent < 65536 ? w->recent * 2 : w->recent) : 16;
        else w->recent = w->recent > 16 ? w->recent / 2 : 0;
        break;
    case SR_THREADS:
        if (dir > 0 && w->threads < 256) w->threads++;
        if (dir < 0 && w->threads > 0) w->threads--;
        break;
    case SR_FULL: w->compare_full = !w->compare_full; break;
    default: return;
    }
    change(u);
}

/* Enter after typing: parses the text for ROW; "none", "auto", "default" and "plan" where they mean
 * something. False with a message when the text is not a value of that row. */
static bool settings_typed(struct ui *u, int row, const char *txt)
{
    struct kvs_ui_settings *w = &u->want;
    char *end;
    double x = strtod(txt, &end);
    bool num = end != txt && *end == 0 && isfinite(x);
    bool word_none = !strcmp(txt, "none"), word_auto = !strcmp(txt, "auto") || !strcmp(txt, "default") || !strcmp(txt, "plan");
    switch (row) {
    case SR_CR:
        if (word_none) w->cr = -1;
        else if (num && x > 0 && x < 1) w->cr = (float)x;
        else return say(u, KVS_C_WARN, "target CR: a number between 0 and 1, or none"), false;
        break;
    case SR_RANK:
        if (word_auto) w->rank_ratio = 0;
        else if (num && x >= 0 && x <= 1) w->rank_ratio = (float)x;
        else return say(u, KVS_C_WARN, "rank ratio: 0 to 1, or auto"), false;
        break;
    case SR_GROUP:
        if (num && x >= 1 && x <= 16 && x == (int)x) w->group = (uint32_t)x;
        else return say(u, KVS_C_WARN, "group size: a whole number from 1 to 16"), false;
        break;
    case SR_SHARE:
        if (word_auto) w->merge_share = NAN;
        else if (num && x >= 0 && x <= 1) w->merge_share = (float)x;
        else return say(u, KVS_C_WARN, "merge share: 0 to 1, or plan"), false;
        break;
    case SR_FLOOR:
        if (word_auto) w->merge_floor = NAN;
        else if (word_none) w->merge_floor = -1;
        else if (num && x >= -1 && x <= 1) w->merge_floor = (float)x;
        else return say(u, KVS_C_WARN, "merge floor: a cosine from -1 to 1, none or default"), false;
        break;
    case SR_QBITS:
        if (word_auto) w->quant_bits = 0;
        else if (num && (x == 2 || x == 4 || x == 8)) w->quant_bits = (uint32_t)x;
        else return say(u, KVS_C_WARN, "quant bits: 2, 4 or 8, or default"), false;
        break;
    case SR_CAP:
        if (word_auto) w->evict_capacity = 0;
        else if (num && x >= 1 && x <= (1 << 20) && x == (int)x) w->evict_capacity = (uint32_t)x;
        else return say(u, KVS_C_WARN, "eviction capacity: 1 to 1048576 tokens, or default"), false;
        break;
    case SR_SINKS: case SR_RECENT:
        if (num && x >= 0 && x <= (row == SR_SINKS ? 4096 : 1 << 20) && x == (int)x) {
            if (row == SR_SINKS) w->sinks = (uint32_t)x; else w->recent = (uint32_t)x;
        } else {
            return say(u, KVS_C_WARN, "%s: a whole number", set_labels[row]), false;
        }
        break;
    case SR_THREADS:
        if (word_auto) w->threads = 0;
        else if (num && x >= 0 && x <= 256 && x == (int)x) w->threads = (uint32_t)x;
        else return say(u, KVS_C_WARN, "threads: 0 to 256 (0: one per core)"), false;
        break;
    default: return false;
    }
    change(u);
    return true;
}

/* Keys while the settings screen is open (q and F10 quit before this). */
static void settings_key(struct ui *u, int ch)
{
    if (u->set_edit) {
        size_t n = strlen(u->set_buf);
        if (ch == 27) u->set_edit = false;
        else if (ch == '\n' || ch == '\r' || ch == KEY_ENTER) u->set_edit = !settings_typed(u, u->set_row, u->set_buf);
        else if ((ch == KEY_BACKSPACE || ch == 127 || ch == 8) && n) u->set_buf[n - 1] = 0;
        else if (((ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || (ch >= 'a' && ch <= 'z')) && n + 1 < sizeof u->set_buf) {
            u->set_buf[n] = (char)ch;
            u->set_buf[n + 1] = 0;
        }
        return;
    }
    switch (ch) {
    case 27: case KEY_F(2): u->settings = false; break;
    case KEY_UP: u->set_row = (u->set_row + SR_COUNT - 1) % SR_COUNT; break;
    case KEY_DOWN: u->set_row = (u->set_row + 1) % SR_COUNT; break;
    case KEY_HOME: u->set_row = 0; break;
    case KEY_END: u->set_row = SR_COUNT - 1; break;
    case KEY_LEFT: case '-': settings_step(u, u->set_row, -1); break;
    case KEY_RIGHT: case '+': settings_step(u, u->set_row, 1); break;
    case '\n': case '\r': case KEY_ENTER:
        if (u->set_row == SR_METHOD || u->set_row == SR_FULL || u->set_row == SR_THEME) settings_step(u, u->set_row, 1);
        else if (!set_live(u)) say(u, KVS_C_WARN, "%s: the run's settings are fixed", u->replay ? "replay" : "lesson");
        else { u->set_edit = true; u->set_buf[0] = 0; }
        break;
    default: break;
    }
}

/* Returns false when the UI should quit. */
static bool on_key(struct ui *u, int ch)
{
    /* q quits from any state but the search prompt, where it is text (F10 quits there too) */
    if (ch == KEY_F(10) || ((ch == 'q' || ch == 'Q') && !(u->prompt && u->search))) return false;
    u->dirty = true;
    if (u->prompt) {
        size_t n = strlen(u->prompt_buf);
        if (ch == 27) u->prompt = false;
        else if (!u->search && (ch == '\n' || ch == '\r' || ch == KEY_ENTER)) seek_prompt_done(u);
        else if ((ch == KEY_BACKSPACE || ch == 127 || ch == 8) && n) u->prompt_buf[n - 1] = 0;
        else if (u->search && (ch == '\n' || ch == '\r' || ch == KEY_ENTER)) search_done(u);
        else if (((ch >= '0' && ch <= '9') || (ch == 't' && n == 0) || ch == '.' || (ch == 's' && n > 0) ||
                  (u->search && ch >= 32 && ch < 127)) &&
                 n + 1 < sizeof u->prompt_buf) {
            u->prompt_buf[n] = (char)ch;
            u->prompt_buf[n + 1] = 0;
        }
        return true;
    }
    if (u->help) {
        if (ch == '?' || ch == 27 || ch == KEY_F(1) || ch == 'h') u->help = false;
        else if (ch == KEY_DOWN) u->help_scroll++;
        else if (ch == KEY_UP) u->help_scroll--;
        else if (ch == KEY_NPAGE) u->help_scroll += 10;
        else if (ch == KEY_PPAGE) u->help_scroll -= 10;
        else if (ch == KEY_HOME) u->help_scroll = 0;
        else if (ch == KEY_END) u->help_scroll = u->help_scroll_max;
        /* stay inside what the last frame could show, so Up works at once after many Downs */
        if (u->help_scroll > u->help_scroll_max) u->help_scroll = u->help_scroll_max;
        if (u->help_scroll < 0) u->help_scroll = 0;
        return true;
    }
    if (u->settings) { settings_key(u, ch); return true; }
    if (ch == KEY_F(2)) { u->settings = true; u->set_edit = false; return true; }
    if (u->o->lesson && lesson_key(u, ch)) return true;
    const struct kvs_panel *fp = kvs_panels[u->focus];
    if (fp->key && fp->key(&u->st[u->focus], ch)) return true;
    struct kvs_ui_settings *w = &u->want;
    switch (ch) {
    case '?': case 'h': case KEY_F(1): u->help = true; u->help_scroll = 0; break;
    case 27: if (u->zoom >= 0) u->zoom = -1; break;
    case '\t': u->focus = (u->focus + 1) % KVS_PANEL_COUNT; if (u->zoom >= 0) u->zoom = u->focus; break;
    case KEY_BTAB: u->focus = (u->focus + KVS_PANEL_COUNT - 1) % KVS_PANEL_COUNT; if (u->zoom >= 0) u->zoom = u->focus; break;
    case '1': case '2': case '3': case '4': case '5': case '6':
        u->focus = ch - '1';
        if (u->zoom >= 0) u->zoom = u->focus;
        break;
    case 'z': u->zoom = u->zoom >= 0 ? -1 : u->focus; break;
    case 'v': u->v.sim_kind = u->v.sim_kind % 3 + 1; break;
    case 't':
        u->theme_id = (u->theme_id + 1) % KVS_THEME_COUNT;
        setup_theme(u);
        say(u, KVS_C_GOOD, "theme %s", kvs_theme_name(u->theme_id));
        break;
    case 'x':
        u->mouse = !u->mouse;
        kvs_crt_mouse(u->mouse);
        say(u, KVS_C_GOOD, "mouse %s", u->mouse ? "on" : "off");
        break;
    case 'o': save_config(u); break;
    case 'b': pin_now(u); break;
    case 'B': kvs_hist_pin_free(&u->pin); say(u, KVS_C_GOOD, "pin cleared"); break;
    case ' ': case 'p':
        if (u->replay) {
            bool on = !u->src->playing(u->src->ctx);
            if (on && u->paused) {
                /* resume from the cursor: drop to the newest step first */
                u->paused = false;
            }
            u->src->set_playing(u->src->ctx, on);
        } else {
            u->paused = !u->paused;
            u->cursor = last_step(u);
            say(u, KVS_C_GOOD, u->paused ? "paused: Left/Right step through history, space follows again" : "following the newest step");
        }
        break;
    case KEY_LEFT: step_by(u, -1); break;
    case KEY_RIGHT: step_by(u, 1); break;
    case '[': case KEY_SLEFT: step_by(u, -10); break;
    case ']': case KEY_SRIGHT: step_by(u, 10); break;
    case KEY_HOME: goto_step(u, 0); break;
    case KEY_END:
        if (u->replay) {
            uint64_t n = 0, d = 0;
            u->src->position(u->src->ctx, &n, &d);
            goto_step(u, n ? (int64_t)n - 1 : 0);
        } else {
            u->paused = false;
        }
        break;
    case '<': case ',':
        if (u->replay) { double s = u->src->speed(u->src->ctx) / 2; u->src->set_speed(u->src->ctx, s < 0.25 ? 0.25 : s); }
        break;
    case '>': case '.':
        if (u->replay) { double s = u->src->speed(u->src->ctx) * 2; u->src->set_speed(u->src->ctx, s > 16 ? 16 : s); }
        break;
    case '{': case '}':
        if (!u->replay || !u->src->runs) { say(u, KVS_C_WARN, "run seek is for replays"); break; }
        seek_run(u, ch == '}' ? 1 : -1);
        break;
    case '(': case ')': {
        if (!u->replay) { say(u, KVS_C_WARN, "loop marks are for replays"); break; }
        uint64_t pos = replay_pos(u);
        if (ch == '(') {
            u->loop_in = pos;
            u->has_in = true;
            if (u->has_out && u->loop_out <= pos) u->has_out = u->loop = false;
        } else {
            if (u->has_in && u->loop_in >= pos) { say(u, KVS_C_WARN, "loop out must come after in (step %llu)", (unsigned long long)u->loop_in); break; }
            u->loop_out = pos;
            u->has_out = true;
        }
        say(u, KVS_C_GOOD, "loop %s at step %llu%s", ch == '(' ? "in" : "out", (unsigned long long)pos,
            u->has_in && u->has_out ? "; l loops" : "");
        break;
    }
    case 'l':
        if (!u->replay) { say(u, KVS_C_WARN, "loop play is for replays"); break; }
        if (!u->has_in || !u->has_out) { say(u, KVS_C_WARN, "mark the range first: ( at its start, ) at its end"); break; }
        u->loop = !u->loop;
        if (u->loop) loop_restart(u);
        say(u, KVS_C_GOOD, u->loop ? "looping steps %llu-%llu" : "loop off (steps %llu-%llu stay marked)",
            (unsigned long long)u->loop_in, (unsigned long long)u->loop_out);
        break;
    case '/': u->prompt = u->search = true; u->prompt_buf[0] = 0; break;
    case ':':
        if (u->replay) { u->prompt = true; u->search = false; u->prompt_buf[0] = 0; }
        else say(u, KVS_C_WARN, "seek is for replays; Left/Right/Home/End move through this run");
        break;
    case '+': case '=':
        w->cr = w->cr < 0 ? 0.5f : w->cr + 0.05f;
        if (w->cr > 0.95f) w->cr = 0.95f;
        change(u);
        break;
    case '-': case '_':
        w->cr = w->cr < 0 ? 0.5f : w->cr - 0.05f;
        if (w->cr < 0.05f) w->cr = 0.05f;
        change(u);
        break;
    case 'm': case 'M': {
        int i = method_index(w->method);
        i = ch == 'm' ? (i + 1) % N_METHODS : (i <= 0 ? N_METHODS - 1 : i - 1);
        snprintf(w->method, sizeof w->method, "%s", methods[i]);
        change(u);
        break;
    }
    case 'g': if (w->group > 1) w->group--; change(u); break;
    case 'G': if (w->group < 16) w->group++; change(u); break;
    case 'r':
        w->rank_ratio = w->rank_ratio - 0.05f < 0.049f ? 0 : w->rank_ratio - 0.05f;
        change(u);
        break;
    case 'R':
        w->rank_ratio = w->rank_ratio <= 0 ? 0.1f : w->rank_ratio + 0.05f;
        if (w->rank_ratio > 1) w->rank_ratio = 1;
        change(u);
        break;
    case 's': w->sinks = w->sinks > 8 ? w->sinks / 2 : w->sinks ? w->sinks - 1 : 0; change(u); break;
    case 'S': w->sinks = w->sinks >= 8 ? (w->sinks < 1024 ? w->sinks * 2 : w->sinks) : w->sinks + 1; change(u); break;
    case 'w': w->recent = w->recent > 16 ? w->recent / 2 : 0; change(u); break;
    case 'W': w->recent = w->recent ? (w->recent < 65536 ? w->recent * 2 : w->recent) : 16; change(u); break;
    case 'c': w->compare_full = !w->compare_full; change(u); break;
    case '\n': case '\r': case KEY_ENTER: /* applies pending settings; zoom is z (Enter doing both surprised) */
        if (u->pending) apply(u);
        break;
    case 'e':
        if (u->replay) say(u, KVS_C_WARN, "replay: Home starts over");
        else apply(u);
        break;
    case 'f':
        if (u->replay) { say(u, KVS_C_WARN, "replay: the run's settings are fixed"); break; }
        u->ref_state = 1;
        u->ref_restore = u->want;
        snprintf(u->want.method, sizeof u->want.method, "full");
        apply(u);
        say(u, KVS_C_WARN, "running the full cache as reference A…");
        break;
    default: u->dirty = false; break;
    }
    return true;
}

static void on_mouse(struct ui *u)
{
    MEVENT ev;
    if (getmouse(&ev) != OK) return;
    u->dirty = true;
    if (u->help) { if (ev.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED)) u->help = false; return; }
    double f = kvs_frame_hit_scrub(&u->lay, ev.x, ev.y);
    if (f >= 0 && u->replay && (ev.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED))) {
        uint64_t n = 0, d = 0;
        u->src->position(u->src->ctx, &n, &d);
        if (n) goto_step(u, (int64_t)llround(f * (double)(n - 1)));
        return;
    }
    int p = kvs_frame_hit_panel(&u->lay, ev.x, ev.y);
    if (p < 0) return;
    if (ev.bstate & BUTTON4_PRESSED) { if (kvs_panels[p]->key) kvs_panels[p]->key(&u->st[p], KEY_UP); return; }
    if (ev.bstate & BUTTON5_PRESSED) { if (kvs_panels[p]->key) kvs_panels[p]->key(&u->st[p], KEY_DOWN); return; }
    if (ev.bstate & BUTTON1_DOUBLE_CLICKED) { u->focus = p; u->zoom = u->zoom >= 0 ? -1 : p; return; }
    if (ev.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED)) u->focus = p;
}

/* Columns the lesson overlay takes at the right of a W-column screen (0: no lesson). */
static int lesson_width(const struct ui *u, int w)
{
    if (!u->o->lesson) return 0;
    int lw = w * 2 / 5;
    if (lw < 34) lw = w < 68 ? w / 2 : 34;
    if (lw > 60) lw = 60;
    return lw;
}

static void draw(struct ui *u)
{
    int lw = lesson_width(u, COLS);
    int w = COLS - lw, h = LINES;
    u->v.h = &u->h;
    u->v.pin = u->pin.set ? &u->pin : NULL;
    u->v.live = !u->paused;
    u->v.cursor = u->paused ? u->cursor : last_step(u);
    struct kvs_layout_req rq;
    kvs_frame_layout_req(&u->v, w, h, u->replay && !u->o->lesson, u->focus, u->zoom, &rq);
    kvs_layout_compute(&rq, &u->lay);
    char settings[160], mode[48], extra[64], prompt[128];
    struct kvs_frame_info fi;
    memset(&fi, 0, sizeof fi);
    uint64_t now = kvs_now_ns();
    bool busy = u->src->busy && u->src->busy(u->src->ctx);
    if (u->replay) {
        uint64_t n = 0, d = 0;
        u->src->position(u->src->ctx, &n, &d);
        uint64_t base = d >= u->h.n_steps ? d - u->h.n_steps : 0;
        fi.playing = u->src->playing(u->src->ctx);
        fi.speed = u->src->speed(u->src->ctx);
        fi.scrub_len = n;
        fi.scrub_pos = base + (u->paused ? u->cursor : last_step(u));
        if (u->src->runs) fi.n_scrub_runs = u->src->runs(u->src->ctx, &fi.scrub_runs);
        if (u->src->times) fi.n_scrub_t = u->src->times(u->src->ctx, &fi.scrub_t);
        fi.loop_in = u->loop_in;
        fi.loop_out = u->loop_out;
        fi.has_in = u->has_in;
        fi.has_out = u->has_out;
        fi.loop = u->loop;
        uint32_t nt = u->h.n_steps ? kvs_history_tokens_upto(&u->h, u->paused ? u->cursor : last_step(u)) : 0;
        int xl = snprintf(extra, sizeof extra, "token %u", nt);
        if (fi.scrub_pos < fi.n_scrub_t && u->h.n_steps && xl > 0 && (size_t)xl < sizeof extra)
            snprintf(extra + xl, sizeof extra - (size_t)xl, " %.2fs", (double)fi.scrub_t[fi.scrub_pos] / 1e9);
        fi.scrub_extra = extra;
        if (u->o->lesson) snprintf(mode, sizeof mode, "LESSON %d", u->o->lesson->lesson);
        else snprintf(mode, sizeof mode, "REPLAY %s", fi.playing ? "playing" : "paused");
        fi.settings = u->o->title;
    } else {
        snprintf(mode, sizeof mode, "%s", u->paused ? "PAUSED" : "LIVE");
        settings_text(&u->want, settings, sizeof settings);
        fi.settings = settings;
        fi.pending = u->pending;
        bool gpu = false;
        kvs_backend_probe(&gpu);
        if (!gpu) fi.gpu_note = kvs_backend_probe_detail(); /* why a live run stays on the CPU */
    }
    fi.mode = mode;
    fi.pinned = u->pin.set;
    fi.busy = busy;
    fi.spin = u->spin;
    fi.progress = u->progress_on ? u->progress : NULL;
    char stale[200];
    if (u->n_held || u->restarting) {
        snprintf(stale, sizeof stale, "previous run (%s), dimmed until the new %s run has data",
                 u->h.run ? u->h.run->u.run.method : "?", u->held_method);
        fi.stale = stale;
    }
    if (u->prompt && u->search) {
        snprintf(prompt, sizeof prompt, "search tokens, or a layer (L12), Enter: %s_", u->prompt_buf);
        fi.message = prompt;
    } else if (u->prompt) {
        snprintf(prompt, sizeof prompt, "seek to step, tN token N, or 12.5s into this run: %s_", u->prompt_buf);
        fi.message = prompt;
        fi.message_role = KVS_C_KEY;
    } else if (u->msg[0] && now < u->msg_until) {
        fi.message = u->msg;
        fi.message_role = u->msg_role;
    }
    fi.help = u->help;
    fi.help_scroll = u->help_scroll;
    fi.help_scroll_max = &u->help_scroll_max;
    fi.help_lines = u->o->lesson ? help_lesson : u->replay ? help_replay : help_live;
    fi.n_help = u->o->lesson ? (int)KVS_ARRAY_LEN(help_lesson)
                : u->replay ? (int)KVS_ARRAY_LEN(help_replay) : (int)KVS_ARRAY_LEN(help_live);
    fi.keys_line = u->replay ? "q quit  ? help  space play/pause  </> speed  Left/Right step  : seek  ( ) l loop  F2 settings  v similarity  z zoom"
                             : "q quit  ? help  +/- CR  m method  g/G group  r/R rank  s/S sinks  w/W recent  space pause  b pin  f full-ref  v sim  z zoom";
    if (u->o->lesson) fi.keys_line = "q quit  Space/Enter/Right next  Left back  ? help  v similarity  z zoom";
    fi.focus = u->focus;
    fi.zoom = u->zoom;
    kvs_frame_draw(stdscr, &u->lay, &u->v, u->st, &fi);
    if (lw && !u->help) kvs_lesson_draw(stdscr, (struct kvs_rect){w, 0, lw, h}, &u->v, u->o->lesson);
    if (u->settings && !u->help) {
        struct kvs_settings_row rows[SR_COUNT];
        settings_rows(u, rows);
        char title[96];
        snprintf(title, sizeof title, "Settings: %s", set_live(u) ? "live run (changes start a new run)"
                                                    : u->replay ? "the trace's run (read-only)" : "the lesson's run (read-only)");
        struct kvs_settings_view sv = {.title = title, .rows = rows, .n_rows = SR_COUNT, .cursor = u->set_row,
                                       .edit = u->set_edit ? u->set_buf : NULL,
                                       .footer = set_live(u) ? "Up/Down row  Left/Right change  Enter type  Esc/F2 close"
                                                             : "Up/Down row  Left/Right theme  Esc/F2 close"};
        kvs_settings_draw(stdscr, &u->theme, COLS, LINES, &sv);
    }
    wnoutrefresh(stdscr);
    doupdate();
    u->dirty = false;
}

int kvs_ui_run(struct kvs_ui_source *src, const struct kvs_ui_opts *o, char *err, size_t errlen)
{
    struct ui *u = calloc(1, sizeof *u);
    if (!u) { snprintf(err, errlen, "out of memory"); return 1; }
    u->src = src;
    u->o = o;
    u->replay = src->restart == NULL;
    u->cur = u->want = o->settings;
    u->zoom = -1;
    u->theme_id = o->theme;
    u->mouse = !o->no_mouse;
    u->v.sim_kind = o->sim_kind >= 1 && o->sim_kind <= 3 ? o->sim_kind : KVS_MAT_SIM_HIDDEN;
    if (kvs_history_init(&u->h, o->history ? o->history : 16384) != KVS_OK) {
        free(u);
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    if (!kvs_crt_start(o->no_mouse, err, errlen)) {
        kvs_history_free(&u->h);
        free(u);
        return 1;
    }
    g_quit = g_resize = 0;
    /* Ctrl-\ (SIGQUIT) quits like Ctrl-C: its default action (a core dump) would leave the
     * terminal in the alternate screen with a hidden cursor and the recording as .part */
    struct sigaction sa, old_int, old_term, old_hup, old_quit, old_winch;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_quit;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    sigaction(SIGQUIT, &sa, &old_quit);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, &old_winch);
    setup_theme(u);
    if (o->lesson) lesson_sync(u);
    if (o->note) {
        say(u, KVS_C_WARN, "%s", o->note);
        u->msg_until = kvs_now_ns() + 30000000000ull;
    }
    u->dirty = true;
    uint64_t frame_start = kvs_now_ns(), last_spin = 0;
    for (;;) {
        if (g_quit) break;
        if (g_resize) {
            g_resize = 0;
            kvs_crt_resize();
            u->dirty = true;
        }
        /* drain what is due, within a budget so input stays responsive */
        uint64_t t0 = kvs_now_ns();
        struct kvs_record *r;
        while (kvs_now_ns() - t0 < DRAIN_BUDGET_NS && !loop_due(u) && (r = src->poll(src->ctx)) != NULL) on_record(u, r);
        if (loop_due(u)) loop_restart(u);
        uint64_t now = kvs_now_ns();
        if (u->pending && now - u->pending_since >= APPLY_DELAY_NS) apply(u);
        bool busy = src->busy && src->busy(src->ctx);
        if (busy && now - last_spin >= 100000000ull) {
            u->spin++;
            last_spin = now;
            u->dirty = true;
        }
        if (u->msg[0] && u->msg_until && now >= u->msg_until) {
            u->msg[0] = 0;
            u->dirty = true;
        }
        if (u->dirty) draw(u);
        /* wait for input for the rest of the frame */
        int frame_ms = busy || u->pending ? FRAME_BUSY_MS : FRAME_IDLE_MS;
        uint64_t el = (kvs_now_ns() - frame_start) / 1000000ull;
        int left = el >= (uint64_t)frame_ms ? 0 : frame_ms - (int)el;
        timeout(left);
        int ch = getch();
        if (ch == ERR) {
            frame_start = kvs_now_ns();
            continue;
        }
        if (ch == KEY_RESIZE) { g_resize = 1; continue; }
        if (ch == KEY_MOUSE) { on_mouse(u); continue; }
        if (!on_key(u, ch)) break;
    }
    kvs_crt_end();
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGQUIT, &old_quit, NULL);
    sigaction(SIGWINCH, &old_winch, NULL);
    kvs_hist_pin_free(&u->pin);
    for (int k = 0; k < u->n_held; k++) kvs_record_unref(u->held[k]);
    u->n_held = 0;
    kvs_history_free(&u->h);
    free(u);
    return 0;
}
