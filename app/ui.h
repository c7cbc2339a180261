/* The interactive terminal UI's main loop over a record source (live session or trace replay):
 * owns the terminal, input and time; drains records into the history; draws frames with the
 * views. Signals only set flags; getch waits with a timeout equal to the time left in the frame.
 * Depends on views/ and app/config.h; knows nothing of the engine beyond records. */
#ifndef KVS_UI_H
#define KVS_UI_H

#include "config.h"
#include "lesson.h"
#include "record.h"

/* What the keys change; a live source restarts its engine with them. */
struct kvs_ui_settings {
    char method[64];
    float cr;               /* < 0: unset */
    uint32_t group;
    float rank_ratio;       /* 0: derived */
    uint32_t sinks, recent;
    bool compare_full;
    /* the settings screen's knobs (F2) */
    float merge_share;      /* share of the mergeable slots merged at most; NAN: the plan's */
    float merge_floor;      /* similarity floor; NAN: the default floor, -1: none */
    uint32_t quant_bits;    /* 2, 4, 8; 0: the method's default */
    uint32_t evict_capacity;/* snapkv tokens kept; 0: the method's default */
    uint32_t threads;       /* engine threads; 0: one per core */
};

/* A producer of records. Live sources set restart; replay sources set the scrubber entries. */
struct kvs_ui_source {
    void *ctx;
    /* Next record due now, or NULL; never blocks. The caller owns the reference. */
    struct kvs_record *(*poll)(void *ctx);
    /* True while records are still coming (engine running / replay playing). */
    bool (*busy)(void *ctx);
    /* Live: stop the engine and start it again with S. False with a message in err. */
    bool (*restart)(void *ctx, const struct kvs_ui_settings *s, char *err, size_t errlen);
    /* Replay: playback control; position is in steps over the whole trace. */
    void (*set_playing)(void *ctx, bool playing);
    bool (*playing)(void *ctx);
    void (*set_speed)(void *ctx, double speed);
    double (*speed)(void *ctx);
    /* Steps in the trace and steps delivered so far. */
    void (*position)(void *ctx, uint64_t *n_steps, uint64_t *delivered);
    /* Make poll deliver records so that exactly STEP+1 steps have been delivered (STEP < delivered:
     * the source starts over with a RUN record, which resets the history). */
    bool (*seek)(void *ctx, uint64_t step, char *err, size_t errlen);
    /* Optional: make poll deliver records without pacing until decoded token TOKEN (0-based) of the
     * current run has been delivered, or the run ends. */
    bool (*seek_token)(void *ctx, uint64_t token, char *err, size_t errlen);
    /* Optional: the global step where each run of the trace starts, in order; returns how many
     * (the array stays owned by the source and valid until it closes). */
    size_t (*runs)(void *ctx, const uint64_t **first);
    /* Optional: each step's end time relative to its run's start (ns), indexed by global step;
     * returns how many (owned by the source, valid until it closes). */
    size_t (*times)(void *ctx, const uint64_t **t_end);
};

struct kvs_ui_opts {
    struct kvs_ui_settings settings; /* what the source started with */
    int theme;
    bool no_mouse;
    int sim_kind;
    const char *config_path;         /* NULL: never saved */
    const char *title;               /* shown in the status line, e.g. a trace file name */
    const char *note;                /* a warning shown at the start (e.g. a recovered trace) */
    uint32_t history;                /* steps kept for scrolling back (0: 16384) */
    /* A lesson (kvscope lesson N): its overlay takes the right-hand columns, its step focuses the
     * panel it talks about, and Space/Enter/Right/Left move through its steps. NULL: none. */
    struct kvs_lesson_state *lesson;
};

/* Runs the UI until the user quits (q, SIGINT, SIGQUIT, SIGTERM, SIGHUP). Returns 0, or 1 with a
 * message in err when the terminal could not be used; the terminal is restored before returning. */
int kvs_ui_run(struct kvs_ui_source *src, const struct kvs_ui_opts *o, char *err, size_t errlen);

#endif
